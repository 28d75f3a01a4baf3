//! Requests survive the instance that claimed them and the GitHub outages they meet (README
//! "Reliability"):
//! - two `prodigy serve` binaries on one PostgreSQL database: instance a claims a `/prodigy
//!   run` and is SIGKILLed inside it; instance b takes the claim back once its lease ran out
//!   and handles it once (one job, one reply);
//! - GitHub answering 502 past the client's own retries: the request waits its backoff and is
//!   tried again until it succeeds; a 404 fails it at once; a 502 storm longer than its
//!   attempts fails it with the reason.
//!
//! PostgreSQL tests are skipped (with a message) when no PostgreSQL is reachable, unless
//! PRODIGY_REQUIRE_POSTGRES=1.

mod support;

use prodigy::store::{Request, RequestStatus, Store};
use prodigy::types::{JobStatus, PrNumber, RepoName};
use support::fake_github::Op;
use support::serve_bin::ServeBin;
use support::server::{
    Ctx, MAINTAINER, REPO, ServerOptions, WAIT, items, job_id_of, job_links, wait_until,
};

/// The first request queued after request `after` (0: any), once it is done or failed.
async fn ended(store: &Store, after: i64) -> Request {
    wait_until(
        &format!("the request after {after} to end"),
        WAIT,
        || async {
            let mut all = store.requests_with_status(RequestStatus::Done).await.ok()?;
            all.extend(
                store
                    .requests_with_status(RequestStatus::Failed)
                    .await
                    .ok()?,
            );
            all.into_iter()
                .filter(|r| r.id > after)
                .min_by_key(|r| r.id)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instances_claim_is_taken_back_and_handled_once() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    // This process only receives webhooks and queues them; the binaries run them.
    let ctx = Ctx::web_only(db.url(), "web").await;
    let store = &ctx.server.store;
    let sha = ctx.push_pr(1, &[("items.json", &items(&[("one", "ok")]))], false);
    let lease = ["--request-lease-secs", "2"];

    // Instance a claims the comment and is inside its permission check when it dies.
    ctx.gh.hold(Op::GetPermission);
    let mut a = ServeBin::start(&ctx, "a", db.url(), &lease);
    ctx.comment(1, MAINTAINER, "/prodigy run").await;
    wait_until("instance a to be inside the request", WAIT, || async {
        (ctx.gh.held_arrivals(Op::GetPermission) == 1).then_some(())
    })
    .await;
    let claimed = store
        .requests_with_status(RequestStatus::Claimed)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(
        (claimed[0].claimed_by.as_deref(), claimed[0].attempts),
        (Some("a"), 1)
    );
    a.kill();
    ctx.gh.release(Op::GetPermission);

    // Instance b (another name: the claim is not its own) takes it back after the lease.
    let b = ServeBin::start(&ctx, "b", db.url(), &lease);
    let request = ended(store, 0).await;
    assert_eq!(request.status, RequestStatus::Done, "{request:?}");
    assert_eq!(
        (request.claimed_by.as_deref(), request.attempts),
        (Some("b"), 2),
        "{request:?}"
    );
    let why = request.last_error.clone().unwrap_or_default();
    assert!(why.contains("instance a stopped renewing"), "{why}");

    // Handled once: one job for the pull request, started once, and one reply.
    let comments = ctx.wait_for_comments(1, 1).await;
    assert_eq!(comments.len(), 1, "{comments:?}");
    let job = job_id_of(&job_links(&comments[0])[0]);
    ctx.wait_status(job, JobStatus::Succeeded).await;
    let jobs = store
        .find_jobs_by_pr(&RepoName::new(REPO), PrNumber(1))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let events = store.events(job, 0, 1000).await.unwrap();
    let starts = events.iter().filter(|e| e.kind == "job_started").count();
    assert_eq!(starts, 1);
    let instance = events
        .iter()
        .find(|e| e.kind == "server_context")
        .map(|e| e.data["instance"].clone());
    assert_eq!(instance, Some(serde_json::json!("b")));
    // a's call never got its answer (a died holding it); b's did.
    assert_eq!(ctx.gh.held_arrivals(Op::GetPermission), 1);
    assert_eq!(ctx.gh.count(Op::GetPermission), 1);
    assert_eq!(ctx.gh.comments_on(REPO, 1).len(), 1);
    // The binary reports to a check run: one, completed.
    let runs = ctx
        .gh
        .wait_for_check_runs(
            REPO,
            &sha,
            "the job's check run to complete",
            WAIT,
            |runs| {
                (!runs.is_empty() && runs.iter().all(|r| r.status == "completed")).then_some(runs)
            },
        )
        .await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].conclusion.as_deref(), Some("success"));
    assert!(
        b.stderr().contains("request"),
        "instance b logged its work:\n{}",
        b.stderr()
    );
    drop(b);
    ctx.finish().await;
}

/// A comment request meets GitHub failures: 502s past the client's retries are retried with
/// backoff until it succeeds; a 404 fails it at once; 502s past its attempts fail it.
async fn transient_and_permanent_github_failures(db_url: &str) {
    let options = ServerOptions {
        request_attempts: 3,
        request_backoff_ms: 200,
        ..ServerOptions::default()
    };
    let ctx = Ctx::with_options(db_url, "a", 1, options).await;
    let store = &ctx.server.store;
    // The server's GitHub client tries each call 4 times (tests' retry policy), so 8 502s
    // fail two attempts of the request; the third succeeds.
    let tries = support::fake_github::test_retry_policy().max_attempts as usize;
    ctx.gh.fail_next(Op::GetPermission, 2 * tries, 502, &[]);
    ctx.comment(1, MAINTAINER, "/prodigy cancel").await;
    let r = ended(store, 0).await;
    assert_eq!((r.status, r.attempts), (RequestStatus::Done, 3), "{r:?}");
    let last = r.last_error.clone().unwrap_or_default();
    assert!(last.contains("502"), "{last}");
    // Two backoffs passed between its first claim and its last: 200 ms, then 400 ms.
    let waited = r.claimed_at.unwrap() - r.enqueued_at;
    assert!(
        waited >= chrono::Duration::milliseconds(600),
        "claimed again after {waited}"
    );
    assert_eq!(ctx.gh.count(Op::GetPermission), 2 * tries + 1);
    let replies = ctx.wait_for_comments(1, 1).await;
    assert_eq!(replies.len(), 1, "answered once: {replies:?}");

    // A permanent refusal (a 403 that is no rate limit: the App lacks the permission): no
    // retry, failed with GitHub's answer.
    ctx.gh.fail_next(Op::GetPermission, 1, 403, &[]);
    ctx.comment(2, MAINTAINER, "/prodigy cancel").await;
    let r = ended(store, r.id).await;
    assert_eq!((r.status, r.attempts), (RequestStatus::Failed, 1), "{r:?}");
    let message = r.message.clone().unwrap_or_default();
    assert!(
        message.contains("cannot check the commenter's permission") && message.contains("403"),
        "{message}"
    );
    assert_eq!(r.last_error, r.message);
    assert_eq!(ctx.gh.count(Op::GetPermission), 2 * tries + 2);

    // A command meeting a 404 (the pull request is gone) is answered at once with the reason,
    // not retried.
    ctx.gh.fail_next(Op::GetPull, 1, 404, &[]);
    ctx.comment(4, MAINTAINER, "/prodigy run").await;
    let r = ended(store, r.id).await;
    assert_eq!((r.status, r.attempts), (RequestStatus::Done, 1), "{r:?}");
    let reply = ctx.wait_for_comments(4, 1).await;
    assert!(
        reply[0].contains("cannot read the pull request") && reply[0].contains("404"),
        "{reply:?}"
    );
    assert_eq!(ctx.gh.count(Op::GetPull), 1);

    // The same command meeting 502s past the client's retries is retried, then answered once.
    ctx.push_pr(5, &[("items.json", &items(&[("five", "ok")]))], false);
    ctx.gh.fail_next(Op::GetPull, tries, 502, &[]);
    ctx.comment(5, MAINTAINER, "/prodigy run").await;
    let r = ended(store, r.id).await;
    assert_eq!((r.status, r.attempts), (RequestStatus::Done, 2), "{r:?}");
    let replies = ctx.wait_for_comments(5, 1).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].contains("started"), "{replies:?}");
    let job = job_id_of(&job_links(&replies[0])[0]);
    ctx.wait_status(job, JobStatus::Succeeded).await;

    // More 502s than its attempts can outlast: failed with the reason.
    ctx.gh.fail_next(Op::GetPermission, 3 * tries, 502, &[]);
    ctx.comment(3, MAINTAINER, "/prodigy cancel").await;
    let r = ended(store, r.id).await;
    assert_eq!((r.status, r.attempts), (RequestStatus::Failed, 3), "{r:?}");
    let message = r.message.clone().unwrap_or_default();
    assert!(
        message.starts_with("gave up after 3 attempts; the last: ") && message.contains("502"),
        "{message}"
    );
    assert!(ctx.gh.comments_on(REPO, 2).is_empty());
    assert!(ctx.gh.comments_on(REPO, 3).is_empty());

    // Each retry is counted by reason.
    let (_, metrics) = ctx.get("/metrics").await;
    let retried = metrics
        .lines()
        .find(|l| {
            l.starts_with("prodigy_request_ends_total")
                && l.contains("outcome=\"retried\"")
                && l.contains("reason=\"github_5xx\"")
        })
        .unwrap_or_else(|| panic!("no retry counter in:\n{metrics}"));
    let n: f64 = retried.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 4.0, "{retried}");
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_failures_on_sqlite() {
    let db = support::db::sqlite_db();
    transient_and_permanent_github_failures(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_failures_on_postgres() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    transient_and_permanent_github_failures(db.url()).await;
}
