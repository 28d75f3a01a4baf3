//! PostgreSQL going away under a running job (README "Reliability"): every session of prodigy's
//! database is terminated (`pg_terminate_backend`, as an administrator or a failover does; the
//! shared server keeps running) while `prodigy run --database-url` has items in flight. The run
//! reconnects, takes its job lock again on a new session (a contender is refused the lock
//! meanwhile: it is never held twice), and finishes with every item merged once.
//!
//! Skipped (with a message) when no PostgreSQL is reachable, unless PRODIGY_REQUIRE_POSTGRES=1.

mod support;

use std::time::Duration;

use prodigy::types::JobId;
use support::repo::{Repo, count, text};
use support::server::wait_until;

const ITEMS: [&str; 4] = ["a", "b", "c", "d"];

fn workflow(gate: &std::path::Path) -> String {
    format!(
        r#"name: gated
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 2
  agent_template:
    - shell: "while [ ! -f {gate} ]; do sleep 0.05; done; echo ${{item.id}} > out-${{item.id}}.txt && git add . && git commit -qm ${{item.id}}"
reduce:
  - shell: "echo reduced"
"#,
        gate = gate.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_sessions_mid_job_the_run_reconnects_keeps_its_lock_and_merges_once() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let repo = Repo::new(Some(db.url()));
    let gate = repo.out.join("gate");
    repo.write("wf.yml", &workflow(&gate));
    let items: Vec<String> = ITEMS.iter().map(|i| format!(r#"{{"id":"{i}"}}"#)).collect();
    repo.write("items.json", &format!("[{}]", items.join(",")));
    repo.commit_all("workflow");

    let run = repo.start(&["run", "wf.yml"]);
    let job = run.job.clone();
    repo.wait_for_events(&job, "two items in flight", |ev| {
        count(ev, "item_started") == 2
    });
    let store = db.store().await;
    let id: JobId = job.parse().unwrap();
    let session = || async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
            .await
            .ok()?;
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT lock_holder ->> 'backend_pid' FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .ok()
        .flatten()
    };
    let before = session().await.expect("the run records its lock's session");
    let killed = db.terminate_sessions().await;
    assert!(killed >= 1, "prodigy had sessions on its database");

    // The run takes its lock again on a new session: the holder record names a live one.
    wait_until(
        "the run to hold its lock again",
        Duration::from_secs(60),
        || async {
            let now = session().await?;
            let live = store.lock_holder(id).await.ok().flatten()?;
            (now != before).then_some(live)
        },
    )
    .await;
    // A contender is refused: the lock is held once.
    let contender = repo.prodigy(&["resume", &job]);
    assert_eq!(contender.status.code(), Some(75), "{}", text(&contender));

    std::fs::write(&gate, "go").unwrap();
    let (code, err) = run.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("taking the lock again"), "{err}");

    let status = repo.json(&["status", &job]);
    assert_eq!(status["job"]["status"], "succeeded", "{status}");
    assert_eq!(status["counts"]["merged"], ITEMS.len(), "{status}");
    let events = repo.events(&job);
    assert_eq!(
        count(&events, "item_merged"),
        ITEMS.len(),
        "merged once each"
    );
    let log = repo.git(&["log", "--format=%s", &format!("prodigy/{job}")]);
    for item in ITEMS {
        assert_eq!(
            log.lines().filter(|l| *l == item).count(),
            1,
            "{item}:\n{log}"
        );
    }
}
