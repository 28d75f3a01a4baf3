//! `prodigy serve` and check runs, end to end: signed deliveries built from GitHub's payload
//! examples through the real router, the runner, real git repositories, the stub AI CLI and the
//! fake GitHub (every request validated against GitHub's schema).
//!
//! - a pull request's job reports to a check run: created in progress, progress, completed with
//!   the conclusion, one annotation per DLQ row, the buttons, GitHub calls within the budget;
//! - "Re-run" on a failed job's check run retries it once its failing item was fixed, reported
//!   on a new check run that concludes success; a complete job re-runs as a fresh job;
//! - twenty concurrent re-run deliveries run the job once and answer every other one, on SQLite
//!   and on PostgreSQL with two server instances sharing the database.

mod support;

use std::path::Path;

use axum::http::StatusCode;
use prodigy::store::{ItemFilter, RequestStatus};
use prodigy::types::{JobId, JobStatus, RepoName};
use serde_json::{Value, json};
use support::fake_github::{CheckRun, Op};
use support::server::{
    Ctx, INSTALLATION, MAINTAINER, REPO, WAIT, items, job_id_of, job_links, wait_until,
};
use support::webhook::fixture_payload;

/// An agent whose `flaky` items fail while `<dir>/broken-<id>` exists and, once fixed, wait for
/// `<dir>/go` (so a test can hold a re-run while it sends more clicks); every execution is
/// appended to `<dir>/runs.txt`.
fn agent(dir: &Path) -> String {
    format!(
        r#"#!/bin/sh
kind="$1"; id="$2"
echo "$id" >> "{dir}/runs.txt"
case "$kind" in
  ok) echo "$id" > "out-$id.txt" && git add "out-$id.txt" && git commit -q -m "item $id" ;;
  fail) echo "error: widget $id exploded" >&2; exit 3 ;;
  flaky)
    if [ -f "{dir}/broken-$id" ]; then echo "error: widget $id is broken" >&2; exit 4; fi
    while [ ! -f "{dir}/go" ]; do sleep 0.05; done
    echo "$id" > "out-$id.txt" && git add "out-$id.txt" && git commit -q -m "item $id" ;;
esac
"#,
        dir = dir.display()
    )
}

fn runs_of(dir: &Path, id: &str) -> usize {
    std::fs::read_to_string(dir.join("runs.txt"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == id)
        .count()
}

/// A `check_run` delivery for prodigy's run `check_run` of `job`: Re-run, or a button.
fn check_run_payload(job: JobId, check_run: u64, sha: &str, button: Option<&str>) -> Vec<u8> {
    let rel = match button {
        Some(_) => "check_run/requested_action.payload.json",
        None => "check_run/rerequested.payload.json",
    };
    let mut v: Value = serde_json::from_slice(&fixture_payload(rel)).unwrap();
    v["check_run"]["id"] = json!(check_run);
    v["check_run"]["external_id"] = json!(job.to_string());
    v["check_run"]["head_sha"] = json!(sha);
    if let Some(b) = button {
        v["requested_action"]["identifier"] = json!(b);
    }
    v["repository"]["full_name"] = json!(REPO);
    v["installation"]["id"] = json!(INSTALLATION);
    v["sender"]["login"] = json!(MAINTAINER);
    serde_json::to_vec(&v).unwrap()
}

fn check_suite_payload(sha: &str) -> Vec<u8> {
    let mut v: Value =
        serde_json::from_slice(&fixture_payload("check_suite/rerequested.payload.json")).unwrap();
    v["check_suite"]["head_sha"] = json!(sha);
    v["repository"]["full_name"] = json!(REPO);
    v["installation"]["id"] = json!(INSTALLATION);
    v["sender"]["login"] = json!(MAINTAINER);
    serde_json::to_vec(&v).unwrap()
}

/// The job the bot's first comment on `pr` links.
async fn job_of_pr(ctx: &Ctx, pr: u64) -> JobId {
    let comments = ctx.wait_for_comments(pr, 1).await;
    job_id_of(&job_links(&comments[0])[0])
}

/// Waits until `n` check runs exist on `sha` and all are completed; returns them, oldest first.
async fn completed_check_runs(ctx: &Ctx, sha: &str, n: usize) -> Vec<CheckRun> {
    ctx.gh
        .wait_for_check_runs(
            REPO,
            sha,
            &format!("{n} completed check runs"),
            WAIT,
            |runs| {
                (runs.len() == n && runs.iter().all(|r| r.status == "completed")).then_some(runs)
            },
        )
        .await
}

/// The bot's answers to re-run clicks on `pr` (they name the person who clicked).
fn answers(ctx: &Ctx, pr: u64) -> Vec<String> {
    ctx.gh
        .comments_on(REPO, pr)
        .into_iter()
        .filter(|c| c.starts_with(&format!("@{MAINTAINER} ")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_request_job_reports_to_a_check_run_within_the_call_budget() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::with_check_runs(db.url(), "a", 2).await;
    let dir = ctx.tmp.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    // 52 failures: two annotation batches (50 + 2).
    let mut list: Vec<(String, &str)> = vec![("ok-1".into(), "ok"), ("ok-2".into(), "ok")];
    list.extend((0..52).map(|i| (format!("bad-{i:02}"), "fail")));
    let list: Vec<(&str, &str)> = list.iter().map(|(id, k)| (id.as_str(), *k)).collect();
    let sha = ctx.push_pr(
        1,
        &[("items.json", &items(&list)), ("agent.sh", &agent(&dir))],
        false,
    );
    ctx.open_pr(1, &sha).await;
    let job = job_of_pr(&ctx, 1).await;
    ctx.wait_status(job, JobStatus::Failed).await;
    let runs = completed_check_runs(&ctx, &sha, 1).await;
    ctx.wait_idle().await;
    let run = &runs[0];

    assert_eq!(run.name, "prodigy: fix");
    assert_eq!(run.head_sha, sha);
    assert_eq!(run.external_id.as_deref(), Some(job.to_string().as_str()));
    assert_eq!(run.conclusion.as_deref(), Some("failure"), "{run:?}");
    let stored = ctx.server.store.get_job(job).await.unwrap();
    assert_eq!(stored.check_run_id, Some(run.id as i64));
    // "Details" is the job page, with its token: it opens.
    let details = run.details_url.clone().expect("a details link");
    let page = details
        .strip_prefix("https://prodigy.test")
        .expect("the public URL");
    assert_eq!(job_id_of(page), job);
    let (status, html) = ctx.get(page).await;
    assert_eq!(status, StatusCode::OK, "{html}");

    // One annotation per DLQ row, naming its item; the Retry failed button.
    let dlq = ctx.server.store.dlq(Some(job)).await.unwrap();
    assert_eq!(dlq.len(), 52);
    // The completion carries the first 50; the last batch is appended right after it.
    let run = ctx
        .gh
        .wait_for_check_runs(
            REPO,
            &sha,
            "every DLQ row as an annotation",
            WAIT,
            |mut runs| {
                let run = runs.remove(0);
                (run.annotations.len() >= dlq.len()).then_some(run)
            },
        )
        .await;
    assert_eq!(run.annotations.len(), dlq.len());
    for row in &dlq {
        assert!(
            run.annotations
                .iter()
                .any(|a| a["title"].as_str().unwrap_or_default().contains(&row.key.0)),
            "no annotation names {}",
            row.key.0
        );
    }
    assert!(
        run.annotations
            .iter()
            .all(|a| a["annotation_level"] == "failure")
    );
    let buttons: Vec<&str> = run
        .actions
        .iter()
        .filter_map(|a| a["identifier"].as_str())
        .collect();
    assert!(buttons.contains(&"retry_failed"), "{buttons:?}");

    // Created in progress, then progress, then the completion and the appended batch.
    let (check_requests, tokens) = {
        let world = ctx.gh.world();
        let checks: Vec<_> = world
            .requests
            .iter()
            .filter(|r| matches!(r.op, Op::CreateCheckRun | Op::UpdateCheckRun))
            .cloned()
            .collect();
        (checks, world.count(Op::CreateAccessToken))
    };
    let first = &check_requests[0];
    assert_eq!(first.op, Op::CreateCheckRun);
    assert_eq!(
        first.body.as_ref().unwrap()["status"],
        "in_progress",
        "{first:?}"
    );
    let progress = check_requests
        .iter()
        .filter(|r| {
            r.op == Op::UpdateCheckRun
                && r.body
                    .as_ref()
                    .is_some_and(|b| b["status"] == "in_progress")
        })
        .count();
    assert!(progress >= 1, "progress is reported while the job runs");
    let batches = dlq.len().div_ceil(50);
    println!(
        "check-run calls: {} ({progress} progress updates) for {} DLQ rows; {tokens} token",
        check_requests.len(),
        dlq.len()
    );
    assert!(
        check_requests.len() <= 3 + batches + progress,
        "{} check-run calls for {} DLQ rows and {progress} progress updates",
        check_requests.len(),
        dlq.len()
    );
    assert!(check_requests.iter().all(|r| r.status.is_success()));
    // One installation token served every call of the job (and the bot's comment).
    assert_eq!(tokens, 1);
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rerun_on_a_failed_check_run_resumes_the_job_once_fixed() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::with_check_runs(db.url(), "a", 2).await;
    let dir = ctx.tmp.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("broken-b"), "").unwrap();
    std::fs::write(dir.join("go"), "").unwrap();
    let sha = ctx.push_pr(
        3,
        &[
            ("items.json", &items(&[("a", "ok"), ("b", "flaky")])),
            ("agent.sh", &agent(&dir)),
        ],
        false,
    );
    ctx.open_pr(3, &sha).await;
    let job = job_of_pr(&ctx, 3).await;
    ctx.wait_status(job, JobStatus::Failed).await;
    let first = completed_check_runs(&ctx, &sha, 1).await.remove(0);
    assert_eq!(first.conclusion.as_deref(), Some("failure"));
    ctx.wait_idle().await;

    // The failing item is fixed; the author presses Re-run on the failed check run.
    std::fs::remove_file(dir.join("broken-b")).unwrap();
    let (status, text) = ctx
        .deliver("check_run", check_run_payload(job, first.id, &sha, None))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    ctx.wait_status(job, JobStatus::Succeeded).await;
    let runs = completed_check_runs(&ctx, &sha, 2).await;
    let second = &runs[1];
    assert_ne!(second.id, first.id, "a re-run reports on a new check run");
    assert_eq!(second.external_id, first.external_id);
    assert_eq!(second.conclusion.as_deref(), Some("success"), "{second:?}");
    assert!(second.annotations.is_empty());
    ctx.wait_idle().await;
    // The re-run ran only the failed item, once.
    assert_eq!((runs_of(&dir, "a"), runs_of(&dir, "b")), (1, 2));
    let items = ctx
        .server
        .store
        .items(job, &ItemFilter::default())
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    assert!(ctx.server.store.dlq(Some(job)).await.unwrap().is_empty());

    // Re-run of the complete job, clicked twice: one fresh job at the same commit, with its own
    // check run; the other click is answered.
    let click = || ctx.deliver("check_run", check_run_payload(job, second.id, &sha, None));
    let (one, two) = tokio::join!(click(), click());
    assert_eq!((one.0, two.0), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    let answer = wait_until("the answer to the second click", WAIT, || async {
        answers(&ctx, 3).pop()
    })
    .await;
    assert!(
        answer.contains("was already run again as job") || answer.contains("is being started by"),
        "{answer}"
    );
    let runs = completed_check_runs(&ctx, &sha, 3).await;
    ctx.wait_idle().await;
    assert_eq!(answers(&ctx, 3).len(), 1);
    let fresh: JobId = runs[2].external_id.as_deref().unwrap().parse().unwrap();
    assert_ne!(fresh, job);
    let fresh_job = ctx.server.store.get_job(fresh).await.unwrap();
    assert_eq!(fresh_job.head_sha.as_deref(), Some(sha.as_str()));
    assert_eq!(fresh_job.refs.base_commit.as_deref(), Some(sha.as_str()));
    assert_eq!(fresh_job.pr_number, Some(prodigy::types::PrNumber(3)));
    assert_eq!(runs[2].conclusion.as_deref(), Some("success"));

    // "Re-run all checks" re-runs the latest job of the workflow at the commit only.
    let (status, _) = ctx.deliver("check_suite", check_suite_payload(&sha)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let runs = completed_check_runs(&ctx, &sha, 4).await;
    ctx.wait_idle().await;
    let newest: JobId = runs[3].external_id.as_deref().unwrap().parse().unwrap();
    assert!(newest != job && newest != fresh);
    let jobs = ctx
        .server
        .store
        .find_jobs_by_pr(&RepoName::new(REPO), prodigy::types::PrNumber(3))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3, "{jobs:?}");

    // A button on a job with nothing to retry is answered.
    let (status, _) = ctx
        .deliver(
            "check_run",
            check_run_payload(newest, runs[3].id, &sha, Some("retry_failed")),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let answer = wait_until("the answer to the button", WAIT, || async {
        let mut a = answers(&ctx, 3);
        (a.len() == 2).then(|| a.pop()).flatten()
    })
    .await;
    assert!(answer.contains("has no failed items to retry"), "{answer}");
    ctx.wait_idle().await;
    assert_eq!(ctx.gh.check_runs_for(REPO, &sha).len(), 4);
    ctx.finish().await;
}

/// Twenty re-run clicks of one failed job (distinct deliveries), spread over `servers`: one
/// retry runs, every other click is answered, and nothing runs twice.
async fn twenty_reruns(ctx: &Ctx, others: &[&prodigy::server::RunningServer]) {
    let dir = ctx.tmp.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("broken-b"), "").unwrap();
    let sha = ctx.push_pr(
        5,
        &[
            ("items.json", &items(&[("a", "ok"), ("b", "flaky")])),
            ("agent.sh", &agent(&dir)),
        ],
        false,
    );
    ctx.open_pr(5, &sha).await;
    let job = job_of_pr(ctx, 5).await;
    ctx.wait_status(job, JobStatus::Failed).await;
    let first = completed_check_runs(ctx, &sha, 1).await.remove(0);
    ctx.wait_idle().await;

    // Fixed, but held at `go` once it runs, so every click arrives while it runs.
    std::fs::remove_file(dir.join("broken-b")).unwrap();
    let mut servers = vec![&ctx.server];
    servers.extend_from_slice(others);
    let sends = (0..20).map(|i| {
        let server = servers[i % servers.len()];
        let body = check_run_payload(job, first.id, &sha, None);
        let delivery = format!("rerun-click-{i}");
        async move { ctx.deliver_as(server, "check_run", &delivery, body).await.0 }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    let answered = wait_until("19 clicks to be answered", WAIT, || async {
        let a = answers(ctx, 5);
        (a.len() >= 19).then_some(a)
    })
    .await;
    // The winner holds the lock from before its agent starts, so wait for the agent.
    wait_until("the retry to reach item b", WAIT, || async {
        (runs_of(&dir, "b") == 2).then_some(())
    })
    .await;
    std::fs::write(dir.join("go"), "").unwrap();
    ctx.wait_status(job, JobStatus::Succeeded).await;
    let runs = completed_check_runs(ctx, &sha, 2).await;
    ctx.wait_idle().await;

    assert_eq!(answered.len(), 19, "{answered:#?}");
    // A redelivery of a click is recognised and answers nothing more.
    let (status, _) = ctx
        .deliver_as(
            &ctx.server,
            "check_run",
            "rerun-click-7",
            check_run_payload(job, first.id, &sha, None),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    ctx.wait_idle().await;
    assert_eq!(answers(ctx, 5).len(), 19, "each loser is answered once");
    for a in &answered {
        assert!(
            a.contains("is already running") || a.contains("was already re-run"),
            "{a}"
        );
    }
    assert_eq!(runs[1].conclusion.as_deref(), Some("success"));
    assert_eq!((runs_of(&dir, "a"), runs_of(&dir, "b")), (1, 2));
    let events = ctx.server.store.events(job, 0, 1000).await.unwrap();
    let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count("job_started"), 1);
    assert_eq!(
        count("dlq_retry_started") + count("job_resumed"),
        1,
        "one re-run"
    );
    let done = ctx
        .server
        .store
        .requests_with_status(RequestStatus::Done)
        .await
        .unwrap();
    let reruns: Vec<_> = done.iter().filter(|r| r.kind == "check_rerun").collect();
    assert_eq!(reruns.len(), 20);
    // Each process fetched one installation token and reused it for every call.
    assert_eq!(ctx.gh.count(Op::CreateAccessToken), servers.len());
    if others.is_empty() {
        return;
    }
    let mut claimers: Vec<_> = reruns.iter().filter_map(|r| r.claimed_by.clone()).collect();
    claimers.sort();
    claimers.dedup();
    assert_eq!(claimers.len(), servers.len(), "every instance took clicks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_reruns_run_once_on_sqlite() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::with_check_runs(db.url(), "a", 2).await;
    twenty_reruns(&ctx, &[]).await;
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_reruns_over_two_instances_run_once_on_postgres() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let ctx = Ctx::with_check_runs(db.url(), "a", 2).await;
    let mut b = ctx.another_instance("b", 2).await;
    twenty_reruns(&ctx, &[&b]).await;
    b.stop().await;
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_the_pull_request_concludes_its_check_run_cancelled() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::with_check_runs(db.url(), "a", 2).await;
    let sha = ctx.push_pr(7, &[("items.json", &items(&[("w", "wait")]))], false);
    ctx.open_pr(7, &sha).await;
    let job = job_of_pr(&ctx, 7).await;
    ctx.gh
        .wait_for_check_runs(
            REPO,
            &sha,
            "the check run to be in progress",
            WAIT,
            |runs| (runs.len() == 1 && runs[0].status == "in_progress").then_some(()),
        )
        .await;
    let (status, text) = ctx
        .deliver("pull_request", ctx.pr_payload(7, &sha, "closed", false))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    ctx.wait_status(job, JobStatus::Cancelled).await;
    let runs = completed_check_runs(&ctx, &sha, 1).await;
    assert_eq!(
        runs[0].conclusion.as_deref(),
        Some("cancelled"),
        "{:?}",
        runs[0]
    );
    ctx.wait_idle().await;
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_resumed_after_a_restart_reports_to_a_new_check_run() {
    let db = support::db::sqlite_db();
    let mut ctx = Ctx::with_check_runs(db.url(), "a", 2).await;
    let sha = ctx.push_pr(8, &[("items.json", &items(&[("w", "wait")]))], false);
    ctx.open_pr(8, &sha).await;
    let job = job_of_pr(&ctx, 8).await;
    ctx.gh
        .wait_for_check_runs(REPO, &sha, "the check run to be created", WAIT, |runs| {
            (runs.len() == 1).then_some(())
        })
        .await;
    // A deploy: the stopped run's check run is completed before the process lets go of it.
    ctx.restart("a", 2).await;
    let stopped = &ctx.gh.check_runs_for(REPO, &sha)[0];
    assert_eq!(stopped.status, "completed", "{stopped:?}");
    ctx.open_gate();
    ctx.wait_status(job, JobStatus::Succeeded).await;
    let runs = completed_check_runs(&ctx, &sha, 2).await;
    assert_eq!(
        runs[1].external_id.as_deref(),
        Some(job.to_string().as_str())
    );
    assert_eq!(runs[1].conclusion.as_deref(), Some("success"));
    ctx.wait_idle().await;
    ctx.finish().await;
}
