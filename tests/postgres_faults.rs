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

/// `prodigy serve` whose network to PostgreSQL is cut (a proxy in the test resets its
/// connections and refuses new ones) while a job waits on its agents: a webhook meanwhile is
/// answered 503 (GitHub records it failed, to be redelivered), `/readyz` says so; once the
/// network is back the job's lock is taken again, the redelivery is accepted, and both jobs
/// finish with each item merged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_cut_off_from_postgres_answers_503_and_its_running_job_finishes() {
    use axum::http::StatusCode;
    use prodigy::types::JobStatus;
    use support::server::{Ctx, items, job_id_of, job_links};

    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let url = db.url();
    let authority = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("postgres://user@host:port/db");
    let proxy = support::tcp_proxy::TcpProxy::start(authority).await;
    let ctx = Ctx::new(&url.replacen(authority, &proxy.addr, 1)).await;
    // The test reads the database directly, never through the proxy.
    let direct = db.store().await;

    let sha1 = ctx.push_pr(
        1,
        &[("items.json", &items(&[("one", "wait"), ("two", "wait")]))],
        false,
    );
    ctx.open_pr(1, &sha1).await;
    let job = job_id_of(&job_links(&ctx.wait_for_comments(1, 1).await[0])[0]);
    wait_until("both items in flight", Duration::from_secs(90), || async {
        let counts = direct.item_counts(job).await.ok()?;
        (counts.running == 2).then_some(())
    })
    .await;

    proxy.cut();
    let sha2 = ctx.push_pr(2, &[("items.json", &items(&[("three", "ok")]))], false);
    let body = ctx.pr_payload(2, &sha2, "opened", false);
    let (status, text) = ctx
        .deliver_as(&ctx.server, "pull_request", "cut-2", body.clone())
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(ctx.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    // The lock's session is gone with the network: PostgreSQL freed the lock.
    wait_until(
        "the lock's session to end",
        Duration::from_secs(90),
        || async { direct.lock_holder(job).await.ok()?.is_none().then_some(()) },
    )
    .await;

    proxy.restore();
    wait_until(
        "the run to hold its lock again",
        Duration::from_secs(90),
        || async { direct.lock_holder(job).await.ok().flatten() },
    )
    .await;
    // GitHub's redelivery of the delivery that got 503.
    let (status, text) = ctx
        .deliver_as(&ctx.server, "pull_request", "cut-2", body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let job2 = job_id_of(&job_links(&ctx.wait_for_comments(2, 1).await[0])[0]);

    ctx.open_gate();
    for j in [job, job2] {
        ctx.wait_status(j, JobStatus::Succeeded).await;
    }
    let counts = direct.item_counts(job).await.unwrap();
    assert_eq!((counts.merged, counts.failed), (2, 0), "{counts:?}");
    let events = direct.events(job, 0, 10_000).await.unwrap();
    // The cut cost nothing: each item ran once (no attempt was lost and run again).
    let started = events.iter().filter(|e| e.kind == "item_started").count();
    assert_eq!(started, 2, "each item ran once");
    ctx.wait_idle().await;
    ctx.finish().await;
}
