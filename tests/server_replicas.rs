//! Two `prodigy serve` instances on one PostgreSQL database share the queue: each pull request
//! is handled by exactly one of them, once, and a delivery sent to both is handled once. A
//! web-only instance (`--no-runner`) queues what a runner instance runs, on both backends.
//! PostgreSQL tests are skipped (with a message) when no PostgreSQL is reachable, unless
//! PRODIGY_REQUIRE_POSTGRES=1.

mod support;

use prodigy::store::RequestStatus;
use prodigy::types::{JobStatus, RepoName};
use support::server::{Ctx, REPO, WAIT, items, job_id_of, job_links, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_process_one_pull_request_each_without_overlap() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    // One job slot each: an instance busy with one job leaves the next request to the other.
    let ctx = Ctx::with_instance(db.url(), "a", 1).await;
    let mut b = ctx.another_instance("b", 1).await;

    let sha1 = ctx.push_pr(1, &[("items.json", &items(&[("one", "wait")]))], false);
    let sha2 = ctx.push_pr(2, &[("items.json", &items(&[("two", "wait")]))], false);
    // Both deliveries reach instance a; each is also redelivered to b (the same delivery id,
    // as when a load balancer retries): only one of each pair is queued.
    for (pr, sha) in [(1, &sha1), (2, &sha2)] {
        let body = ctx.pr_payload(pr, sha, "opened", false);
        let id = format!("replicas-{pr}");
        let (first, _) = ctx
            .deliver_as(&ctx.server, "pull_request", &id, body.clone())
            .await;
        let (second, _) = ctx.deliver_as(&b, "pull_request", &id, body).await;
        assert_eq!((first.as_u16(), second.as_u16()), (202, 200));
    }

    let c1 = ctx.wait_for_comments(1, 1).await;
    let c2 = ctx.wait_for_comments(2, 1).await;
    let job1 = job_id_of(&job_links(&c1[0])[0]);
    let job2 = job_id_of(&job_links(&c2[0])[0]);
    let store = &ctx.server.store;
    // Both run at the same time, so each instance holds one.
    wait_until("both jobs to run at once", WAIT, || async {
        let a = store.get_job(job1).await.ok()?.status;
        let b = store.get_job(job2).await.ok()?.status;
        (a == JobStatus::Running && b == JobStatus::Running).then_some(())
    })
    .await;
    let instance_of = |job| async move {
        let events = store.events(job, 0, 100).await.unwrap();
        let ctx_event = events
            .iter()
            .find(|e| e.kind == "server_context")
            .expect("the server records its context");
        ctx_event.data["instance"].as_str().unwrap().to_string()
    };
    let mut holders = vec![instance_of(job1).await, instance_of(job2).await];
    holders.sort();
    assert_eq!(holders, ["a", "b"], "one pull request each");

    ctx.open_gate();
    for job in [job1, job2] {
        wait_until(&format!("job {job} to succeed"), WAIT, || async {
            (store.get_job(job).await.ok()?.status == JobStatus::Succeeded).then_some(())
        })
        .await;
    }
    ctx.wait_idle().await;
    let done = store
        .requests_with_status(RequestStatus::Done)
        .await
        .unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    let mut claimers: Vec<_> = done.iter().map(|r| r.claimed_by.clone().unwrap()).collect();
    claimers.sort();
    assert_eq!(claimers, ["a", "b"]);
    assert!(done.iter().all(|r| r.attempts == 1), "{done:?}");
    for (pr, job) in [(1, job1), (2, job2)] {
        let jobs = store
            .find_jobs_by_pr(&RepoName::new(REPO), prodigy::types::PrNumber(pr))
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "PR {pr}: {jobs:?}");
        let events = store.events(job, 0, 1000).await.unwrap();
        let starts = events.iter().filter(|e| e.kind == "job_started").count();
        assert_eq!(starts, 1, "job {job} started {starts} times");
        assert_eq!(ctx.gh.comments_on(REPO, pr).len(), 1);
    }
    ctx.gh.assert_no_violations();
    b.stop().await;
    ctx.finish().await;
}

/// `--no-runner`: a web-only instance answers and queues but runs nothing; a runner instance
/// on the same database runs the queued work, once.
async fn web_only_instance_queues_what_a_runner_instance_runs(db_url: &str) {
    let ctx = Ctx::web_only(db_url, "web").await;
    let sha = ctx.push_pr(1, &[("items.json", &items(&[("one", "ok")]))], false);
    let body = ctx.pr_payload(1, &sha, "opened", false);
    let (status, text) = ctx
        .deliver_as(&ctx.server, "pull_request", "web-only-1", body)
        .await;
    assert_eq!(status.as_u16(), 202, "{text}");
    // Several runner poll periods pass: nothing is claimed, nothing is said on the PR.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let store = &ctx.server.store;
    let queued = store
        .requests_with_status(RequestStatus::Queued)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].delivery_id.as_deref(), Some("web-only-1"));
    assert!(ctx.gh.comments_on(REPO, 1).is_empty());

    let mut worker = ctx.another_instance("worker", 1).await;
    let comments = ctx.wait_for_comments(1, 1).await;
    let job = job_id_of(&job_links(&comments[0])[0]);
    ctx.open_gate();
    wait_until(&format!("job {job} to succeed"), WAIT, || async {
        (store.get_job(job).await.ok()?.status == JobStatus::Succeeded).then_some(())
    })
    .await;
    let done = wait_until("the request to be done", WAIT, || async {
        let done = store.requests_with_status(RequestStatus::Done).await.ok()?;
        (!done.is_empty()).then_some(done)
    })
    .await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].claimed_by.as_deref(), Some("worker"));
    assert_eq!(done[0].attempts, 1);
    worker.stop().await;
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn web_only_instance_on_sqlite() {
    let db = support::db::sqlite_db();
    web_only_instance_queues_what_a_runner_instance_runs(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn web_only_instance_on_postgres() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    web_only_instance_queues_what_a_runner_instance_runs(db.url()).await;
}

/// `serve --workers`: two replicas on one PostgreSQL database run one pull request's job
/// together. The replica that started the job coordinates it; the other's claim loop takes the
/// items the coordinator's own agents leave (every agent waits at the gate until both machines
/// hold claims), and its commits reach the coordinator through the repository's refs. Every
/// item is merged once, and the attempts name both machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_with_workers_run_one_jobs_items_together() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let ctx = Ctx::with_workers(db.url(), "a", 1).await;
    let ids = ["w1", "w2", "w3", "w4", "w5", "w6"];
    let list: Vec<(&str, &str)> = ids.iter().map(|id| (*id, "gated")).collect();
    let sha = ctx.push_pr(1, &[("items.json", &items(&list))], false);
    ctx.open_pr(1, &sha).await;
    let comments = ctx.wait_for_comments(1, 1).await;
    let job = job_id_of(&job_links(&comments[0])[0]);
    let store = &ctx.server.store;
    // Started only now: the job is running on a, so b's claim loop is what helps it.
    wait_until("the job to open its items to workers", WAIT, || async {
        store
            .job_remote(job)
            .await
            .ok()?
            .filter(|r| r.open)
            .map(|_| ())
    })
    .await;
    let mut b = ctx.another_instance("b", 1).await;
    // The coordinator's two agents wait at the gate, so the pending items are b's to take.
    wait_until("both replicas to run items of the job", WAIT, || async {
        let machines = store.item_machines(job).await.ok()?;
        let on = |m: &str| machines.iter().any(|(_, _, x)| x == m);
        (on("a") && on("b")).then_some(())
    })
    .await;
    ctx.open_gate();
    ctx.wait_status(job, JobStatus::Succeeded).await;

    let remote = store
        .job_remote(job)
        .await
        .unwrap()
        .expect("a job with workers");
    assert!(
        remote.url.starts_with("file://") && !remote.url.contains('@'),
        "the stored remote is the repository's URL, no credentials: {}",
        remote.url
    );
    let head = format!("refs/prodigy/{job}/head");
    let mut merged: Vec<String> =
        support::git::git(&ctx.remote, &["log", "--merges", "--format=%s", &head])
            .lines()
            .map(|l| l.trim_start_matches("prodigy: merge item ").to_string())
            .collect();
    merged.sort();
    assert_eq!(merged, ids, "every item merged once into the job's head");
    for id in ids {
        let text = support::git::git(&ctx.remote, &["show", &format!("{head}:out-{id}.txt")]);
        assert_eq!(text.trim(), id);
    }
    let machines: Vec<String> = store
        .machines(job)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.machine)
        .collect();
    assert!(
        machines.contains(&"a".to_string()) && machines.contains(&"b".to_string()),
        "attempts ran on both replicas: {machines:?}"
    );
    let items = store
        .items(job, &prodigy::store::ItemFilter::default())
        .await
        .unwrap();
    assert_eq!(items.len(), ids.len());
    assert!(items.iter().all(|i| i.merged), "{items:?}");
    // The job page names both machines and the one that ran each attempt.
    let (status, page) = ctx.get(&job_links(&comments[0])[0]).await;
    assert_eq!(status.as_u16(), 200, "{page}");
    assert!(
        page.contains(r#"<dd id="machines">2: <code>a</code>"#),
        "{page}"
    );
    for m in ["a", "b"] {
        assert!(page.contains(&format!(" on <code>{m}</code>: ")), "{page}");
    }
    b.stop().await;
    ctx.wait_idle().await;
    ctx.finish().await;
}
