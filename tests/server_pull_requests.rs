//! `prodigy serve` and pull requests, end to end: signed deliveries through the real router, the
//! runner, real git repositories behind `file://`, the stub AI CLI and the fake GitHub.

mod support;

use prodigy::store::ItemFilter;
use prodigy::types::{JobStatus, RepoName};
use support::git::git;
use support::server::{Ctx, MAINTAINER, REPO, WAIT, items, job_id_of, job_links, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opened_pull_request_runs_its_workflow_and_links_the_page() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let sha = ctx.push_pr(
        1,
        &[(
            "items.json",
            &items(&[("x", "ok"), ("y", "ok"), ("z", "ok")]),
        )],
        false,
    );
    ctx.open_pr(1, &sha).await;

    let comments = ctx.wait_for_comments(1, 1).await;
    assert_eq!(comments.len(), 1, "{comments:?}");
    let reply = &comments[0];
    assert!(
        reply.starts_with(&format!("prodigy on `{}`:", &sha[..7])),
        "{reply}"
    );
    assert!(reply.contains("`.prodigy/fix.yml`: started job"), "{reply}");
    let links = job_links(reply);
    assert_eq!(links.len(), 1, "{reply}");
    assert!(
        reply.contains(&format!("(https://prodigy.test{})", links[0])),
        "links use the public URL: {reply}"
    );
    let job = job_id_of(&links[0]);
    ctx.wait_status(job, JobStatus::Succeeded).await;

    // The job ran at the PR's head commit, for this PR, on the PR's items.
    let stored = ctx.server.store.get_job(job).await.unwrap();
    assert_eq!(stored.repo, Some(RepoName::new(REPO)));
    assert_eq!(stored.pr_number, Some(prodigy::types::PrNumber(1)));
    assert_eq!(stored.head_sha.as_deref(), Some(sha.as_str()));
    assert_eq!(stored.refs.base_commit.as_deref(), Some(sha.as_str()));
    let keys: Vec<String> = ctx
        .server
        .store
        .items(job, &ItemFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key.0)
        .collect();
    assert_eq!(keys, ["x", "y", "z"]);
    // The agents' commits landed on the job branch in the cached clone.
    let clone = std::path::Path::new(&stored.repo_path);
    let files = git(
        clone,
        &["ls-tree", "--name-only", &format!("prodigy/{job}")],
    );
    for f in ["out-x.txt", "out-y.txt", "out-z.txt"] {
        assert!(files.lines().any(|l| l == f), "{f} missing: {files}");
    }

    // The page answers with the token, and only with it.
    let (status, html) = ctx.get(&links[0]).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("succeeded"), "{html}");
    assert!(html.contains("<code>x</code>"), "{html}");
    assert!(html.contains("job finished: succeeded"), "{html}");
    let bare = format!("/jobs/{job}");
    assert_eq!(ctx.get(&bare).await.0, 404);
    let other = links[0].replace("token=", "token=0");
    assert_eq!(ctx.get(&other).await.0, 404);
    let wrong_job = format!(
        "/jobs/{}?{}",
        prodigy::types::JobId::new(),
        links[0].split('?').nth(1).unwrap()
    );
    assert_eq!(ctx.get(&wrong_job).await.0, 404);

    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fork_is_not_run_automatically_but_runs_on_a_maintainers_command() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let sha = ctx.push_pr(2, &[], true);
    let (status, text) = ctx
        .deliver("pull_request", ctx.pr_payload(2, &sha, "opened", true))
        .await;
    assert_eq!(status, 202, "{text}");
    let comments = ctx.wait_for_comments(2, 1).await;
    assert!(comments[0].contains("comes from a fork"), "{comments:?}");
    ctx.wait_idle().await;
    let jobs = ctx
        .server
        .store
        .find_jobs_by_pr(&RepoName::new(REPO), prodigy::types::PrNumber(2))
        .await
        .unwrap();
    assert!(jobs.is_empty(), "a fork ran by itself: {jobs:?}");

    // A push to the fork is not even queued.
    let (status, text) = ctx
        .deliver("pull_request", ctx.pr_payload(2, &sha, "synchronize", true))
        .await;
    assert_eq!(status, 200, "{text}");

    ctx.comment(2, MAINTAINER, "/prodigy run").await;
    let comments = ctx.wait_for_comments(2, 2).await;
    assert!(comments[1].contains("started job"), "{comments:?}");
    let job = job_id_of(&job_links(&comments[1])[0]);
    ctx.wait_status(job, JobStatus::Succeeded).await;
    assert_eq!(
        ctx.server
            .store
            .get_job(job)
            .await
            .unwrap()
            .head_sha
            .as_deref(),
        Some(sha.as_str())
    );
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_push_cancels_the_older_job_and_closing_cleans_up() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    // The first push's job blocks on the gate, so it is still running when the second arrives.
    let first = ctx.push_pr(3, &[("items.json", &items(&[("slow", "wait")]))], false);
    ctx.open_pr(3, &first).await;
    let c = ctx.wait_for_comments(3, 1).await;
    let old = job_id_of(&job_links(&c[0])[0]);
    ctx.wait_status(old, JobStatus::Running).await;

    let second = ctx.push_pr(3, &[("items.json", &items(&[("quick", "ok")]))], false);
    let (status, text) = ctx
        .deliver(
            "pull_request",
            ctx.pr_payload(3, &second, "synchronize", false),
        )
        .await;
    assert_eq!(status, 202, "{text}");
    ctx.wait_status(old, JobStatus::Cancelled).await;
    let c = ctx.wait_for_comments(3, 2).await;
    let new = job_id_of(&job_links(&c[1])[0]);
    ctx.wait_status(new, JobStatus::Succeeded).await;
    let old_job = ctx.server.store.get_job(old).await.unwrap();
    assert!(
        old_job
            .error
            .as_deref()
            .unwrap_or("")
            .contains("superseded"),
        "{old_job:?}"
    );

    // Closing cancels what still runs and removes its worktrees.
    let third = ctx.push_pr(3, &[("items.json", &items(&[("slow2", "wait")]))], false);
    ctx.deliver(
        "pull_request",
        ctx.pr_payload(3, &third, "synchronize", false),
    )
    .await;
    let c = ctx.wait_for_comments(3, 3).await;
    let last = job_id_of(&job_links(&c[2])[0]);
    ctx.wait_status(last, JobStatus::Running).await;
    let worktrees = ctx
        .tmp
        .path()
        .join("state-a/worktrees")
        .join(last.to_string());
    wait_until("the job worktree", WAIT, || async {
        worktrees.exists().then_some(())
    })
    .await;
    let (status, text) = ctx
        .deliver("pull_request", ctx.pr_payload(3, &third, "closed", false))
        .await;
    assert_eq!(status, 202, "{text}");
    ctx.wait_status(last, JobStatus::Cancelled).await;
    wait_until("the worktrees to be removed", WAIT, || async {
        (!worktrees.exists()).then_some(())
    })
    .await;
    ctx.finish().await;
}

/// A push delivered right after `opened`, before the first job exists, still supersedes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_right_after_opening_supersedes_the_first_job() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::with_instance(db.url(), "a", 4).await;
    let first = ctx.push_pr(4, &[("items.json", &items(&[("slow", "wait")]))], false);
    let second = ctx.push_pr(4, &[("items.json", &items(&[("quick", "ok")]))], false);
    ctx.open_pr(4, &first).await;
    let (status, text) = ctx
        .deliver(
            "pull_request",
            ctx.pr_payload(4, &second, "synchronize", false),
        )
        .await;
    assert_eq!(status, 202, "{text}");
    let c = ctx.wait_for_comments(4, 2).await;
    let jobs: Vec<_> = c.iter().map(|c| job_id_of(&job_links(c)[0])).collect();
    let store = &ctx.server.store;
    let mut by_head = std::collections::HashMap::new();
    for job in jobs {
        let j = store.get_job(job).await.unwrap();
        by_head.insert(j.head_sha.clone().unwrap().0, job);
    }
    // The first job waits on the gate: only the cancel can end it.
    ctx.wait_status(by_head[&first], JobStatus::Cancelled).await;
    ctx.wait_status(by_head[&second], JobStatus::Succeeded)
        .await;
    ctx.finish().await;
}

/// Jobs of one repository share its cached clone: their `git worktree add/remove/prune` must not
/// trip over each other's half-made worktrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_requests_opened_together_all_run_in_one_clone() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::with_instance(db.url(), "a", 6).await;
    let prs = [11, 12, 13, 14];
    let shas: Vec<String> = prs
        .iter()
        .map(|&pr| {
            let kinds = [("p", "ok"), ("q", "ok"), ("r", "ok")];
            let list: Vec<(String, &str)> = kinds
                .iter()
                .map(|(k, v)| (format!("{k}{pr}"), *v))
                .collect();
            let list: Vec<(&str, &str)> = list.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            ctx.push_pr(pr, &[("items.json", &items(&list))], false)
        })
        .collect();
    tokio::join!(
        ctx.open_pr(prs[0], &shas[0]),
        ctx.open_pr(prs[1], &shas[1]),
        ctx.open_pr(prs[2], &shas[2]),
        ctx.open_pr(prs[3], &shas[3]),
    );
    let mut jobs = Vec::new();
    for pr in prs {
        let c = ctx.wait_for_comments(pr, 1).await;
        let links = job_links(&c[0]);
        assert_eq!(links.len(), 1, "#{pr}: {c:?}");
        jobs.push(job_id_of(&links[0]));
    }
    for &job in &jobs {
        ctx.wait_status(job, JobStatus::Succeeded).await;
    }
    // Each job's work is on its own branch, and every worktree is gone once its job is done.
    for (&job, pr) in jobs.iter().zip(prs) {
        let stored = ctx.server.store.get_job(job).await.unwrap();
        let clone = std::path::Path::new(&stored.repo_path);
        let files = git(
            clone,
            &["ls-tree", "--name-only", &format!("prodigy/{job}")],
        );
        for k in ["p", "q", "r"] {
            let f = format!("out-{k}{pr}.txt");
            assert!(files.lines().any(|l| l == f), "{f} missing: {files}");
        }
        // Removed just after the final status is written.
        wait_until(
            &format!("the worktrees of {job} to be removed"),
            WAIT,
            || async {
                let list = git(clone, &["worktree", "list", "--porcelain"]);
                (!list.contains(&job.to_string())).then_some(())
            },
        )
        .await;
    }
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_server_resumes_the_jobs_it_was_running() {
    let db = support::db::sqlite_db();
    let mut ctx = Ctx::new(db.url()).await;
    let sha = ctx.push_pr(
        8,
        &[("items.json", &items(&[("done", "ok"), ("slow", "wait")]))],
        false,
    );
    ctx.open_pr(8, &sha).await;
    let c = ctx.wait_for_comments(8, 1).await;
    let job = job_id_of(&job_links(&c[0])[0]);
    let store = ctx.server.store.clone();
    wait_until("item `done` to be merged", WAIT, || async {
        let items = store.items(job, &ItemFilter::default()).await.ok()?;
        items
            .iter()
            .any(|i| i.key.0 == "done" && i.merged)
            .then_some(())
    })
    .await;

    ctx.restart("a", 2).await;
    // The new process picks the job up by itself; the gate lets it finish.
    let store = ctx.server.store.clone();
    wait_until("the job to be resumed", WAIT, || async {
        let events = store.events(job, 0, 1000).await.ok()?;
        events.iter().any(|e| e.kind == "job_resumed").then_some(())
    })
    .await;
    ctx.open_gate();
    ctx.wait_status(job, JobStatus::Succeeded).await;
    // `done` ran once: resume never runs a merged item again.
    let attempts = store.attempts(job, &"done".into()).await.unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    ctx.finish().await;
}
