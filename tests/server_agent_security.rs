//! Agents of `prodigy serve` never see its secrets: a pull request whose workflow runs an agent
//! that dumps its environment and the server's `/proc/<pid>/environ`, lists its worktree's
//! parent, reads the App key file and the state database, and writes outside its worktree,
//! through the real router, runner and engine with the fake GitHub.

mod common;
mod support;

use prodigy::engine::sandbox::{Support, support};
use prodigy::types::JobStatus;
use support::server::{Ctx, WAIT, job_id_of, job_links, wait_until};

const SERVER_SECRET: &str = "serve-face-secret-value-5";

/// One item, one agent (the default parallelism is plenty).
const WORKFLOW: &str = r#"name: fix
mode: mapreduce
map:
  json_path: "$[*]"
  input: items.json
  agent_template:
    - shell: "PRODIGY_PID=$PPID sh probe.sh"
"#;

fn probe(ctx: &Ctx) -> String {
    let tmp = ctx.tmp.path().display();
    format!(
        r#"echo "== env"; env
echo "== proc"; {{ cat /proc/$PRODIGY_PID/environ 2>/dev/null || echo "environ: not readable"; }} | tr '\0' '\n'
echo "== key"; cat "{tmp}/app-key.pem" 2>/dev/null || echo "key: not readable"
echo "== db"; cat "{tmp}/state-a/prodigy.db" >/dev/null 2>&1 || echo "db: not readable"
echo "== parent"; ls "$(dirname "$PWD")" >/dev/null 2>&1 || echo "parent: not listable"
echo "== outside"; touch "{tmp}/escaped" 2>/dev/null || echo "outside: not writable"
exit 5
"#
    )
}

#[test]
fn serve_face_agents_see_no_secret_and_cannot_leave_their_worktree() {
    // SAFETY: set before any other thread of this test binary (its only test) starts.
    unsafe { std::env::set_var("PRODIGY_WEBHOOK_SECRET", SERVER_SECRET) };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let db = common::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let sha = ctx.push_pr(
        1,
        &[
            (".prodigy/fix.yml", WORKFLOW),
            ("probe.sh", &probe(&ctx)),
            ("items.json", r#"[{"id": "p"}]"#),
        ],
        false,
    );
    ctx.open_pr(1, &sha).await;
    let comments = ctx.wait_for_comments(1, 1).await;
    let job = job_id_of(&job_links(&comments[0])[0]);
    let store = ctx.server.store.clone();
    wait_until("the job to fail", WAIT, || async {
        let j = store.get_job(job).await.ok()?;
        (j.status == JobStatus::Failed).then_some(())
    })
    .await;

    // The agent failed as any agent fails.
    let dlq = store.dlq(Some(job)).await.unwrap();
    assert_eq!(dlq.len(), 1);
    let log = std::fs::read_to_string(
        ctx.tmp
            .path()
            .join(format!("state-a/logs/{job}/items/p/attempt-1.log")),
    )
    .unwrap();
    assert!(log.contains("exit code 5"), "{log}");

    // A built environment: the allow-list, not the server's.
    let env = log
        .split("== env")
        .nth(1)
        .and_then(|s| s.split("== proc").next())
        .unwrap();
    assert!(env.contains("TMPDIR=/"), "{env}");
    for absent in ["CARGO", "DATABASE_URL", "PRODIGY_WEBHOOK_SECRET", "RUST_"] {
        assert!(!env.contains(absent), "{absent} reached the agent:\n{env}");
    }
    assert!(log.contains("environ: not readable"), "{log}");
    assert!(!log.contains(SERVER_SECRET), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    if matches!(support(), Support::Available { .. }) {
        for denial in [
            "key: not readable",
            "db: not readable",
            "parent: not listable",
            "outside: not writable",
        ] {
            assert!(log.contains(denial), "{denial}:\n{log}");
        }
        assert!(!ctx.tmp.path().join("escaped").exists());
    }
    ctx.finish().await;
}
