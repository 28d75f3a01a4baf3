//! Agents of `prodigy serve` never see its secrets: a pull request whose workflow runs an agent
//! that dumps its environment and the server's `/proc/<pid>/environ`, lists its worktree's
//! parent, reads the App key file and the state database, and writes outside its worktree,
//! through the real router, runner and engine with the fake GitHub.
//!
//! The repository configuration's `pass_env` picks which of the operator's passed variables
//! (`serve --pass-env`) its agents get, and a name the operator does not pass is refused with a
//! reply naming it.

mod support;

use prodigy::engine::sandbox::{Support, support};
use prodigy::types::JobStatus;
use support::server::{Ctx, WAIT, job_id_of, job_links, wait_until};

const SERVER_SECRET: &str = "serve-face-secret-value-5";
/// Passed by the operator and picked by the repository's `pass_env`.
const PICKED: (&str, &str) = ("PRODIGY_TEST_PICKED", "picked-by-the-repo-6");
/// Passed by the operator, not picked by the repository: its agents do not get it.
const UNPICKED: (&str, &str) = ("PRODIGY_TEST_UNPICKED", "not-picked-by-the-repo-7");
/// In the server's environment, not passed by the operator.
const NOT_PASSED: (&str, &str) = ("PRODIGY_TEST_NOT_PASSED", "not-passed-by-the-operator-8");

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
    unsafe {
        std::env::set_var("PRODIGY_WEBHOOK_SECRET", SERVER_SECRET);
        for (name, value) in [PICKED, UNPICKED, NOT_PASSED] {
            std::env::set_var(name, value);
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::passing_env(db.url(), &[PICKED.0, UNPICKED.0]).await;
    let config = format!("workflows: [.prodigy/fix.yml]\npass_env: [{}]\n", PICKED.0);
    let sha = ctx.push_pr(
        1,
        &[
            (".prodigy/config.yml", &config),
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
    for absent in [
        "CARGO",
        "DATABASE_URL",
        "PRODIGY_WEBHOOK_SECRET",
        "RUST_",
        UNPICKED.0,
        NOT_PASSED.0,
    ] {
        assert!(!env.contains(absent), "{absent} reached the agent:\n{env}");
    }
    // The picked variable arrived, and its value is masked in the log as a secret is.
    assert!(env.contains(&format!("{}=***", PICKED.0)), "{env}");
    for value in [PICKED.1, UNPICKED.1, NOT_PASSED.1] {
        assert!(!log.contains(value), "{value} in the log:\n{log}");
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

    // A configuration naming a variable the operator does not pass starts no job: the reply
    // names the variable and what to do.
    let refused = format!(
        "workflows: [.prodigy/fix.yml]\npass_env: [{}]\n",
        NOT_PASSED.0
    );
    ctx.push_pr(2, &[(".prodigy/config.yml", &refused)], false);
    ctx.comment(2, support::server::MAINTAINER, "/prodigy run")
        .await;
    let reply = ctx.wait_for_comments(2, 1).await.remove(0);
    assert!(
        reply.contains(&format!("pass_env names `{}`", NOT_PASSED.0))
            && reply.contains("--pass-env")
            && !reply.contains(NOT_PASSED.1),
        "{reply}"
    );
    let repo = prodigy::types::RepoName::new(support::server::REPO);
    let jobs = store
        .find_jobs_by_pr(&repo, prodigy::types::PrNumber(2))
        .await
        .unwrap();
    assert!(jobs.is_empty(), "no job starts: {jobs:?}");
    ctx.finish().await;
}
