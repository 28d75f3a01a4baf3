//! `/prodigy` commands in pull-request comments, end to end through the real router and runner.

mod support;

use prodigy::server::replies;
use prodigy::types::{JobId, JobStatus};
use support::fake_github::Op;
use support::server::{
    Ctx, MAINTAINER, REPO, SLUG, STRANGER, WAIT, items, job_id_of, job_links, wait_until,
};

/// Waits until no one holds the job's lock (the run wrote its last state and let go).
async fn wait_unlocked(ctx: &Ctx, job: JobId) {
    let store = &ctx.server.store;
    wait_until(&format!("job {job}'s lock to be free"), WAIT, || async {
        match store.lock_holder(job).await.ok()? {
            None => Some(()),
            Some(_) => None,
        }
    })
    .await
}

/// Opens PR `pr` with `list` as its items and waits for the job to start; returns its id.
async fn pr_with_job(ctx: &Ctx, pr: u64, list: &[(&str, &str)]) -> JobId {
    let sha = ctx.push_pr(pr, &[("items.json", &items(list))], false);
    ctx.open_pr(pr, &sha).await;
    let c = ctx.wait_for_comments(pr, 1).await;
    job_id_of(&job_links(&c[0])[0])
}

fn reactions_on(ctx: &Ctx, comment: u64) -> Vec<String> {
    ctx.gh
        .world()
        .reactions
        .iter()
        .filter(|r| r.comment_id == comment)
        .map(|r| r.content.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn help_and_status_work_for_everyone_with_one_reply_each() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let job = pr_with_job(&ctx, 1, &[("a", "ok")]).await;
    ctx.wait_status(job, JobStatus::Succeeded).await;

    let id = ctx
        .comment(1, STRANGER, "/prodigy help\n@prodigy-test status")
        .await;
    let c = ctx.wait_for_comments(1, 3).await;
    assert_eq!(reactions_on(&ctx, id), ["eyes"]);
    assert_eq!(c[1], replies::help(Some(SLUG)));
    assert!(c[2].starts_with("| job | workflow |"), "{}", c[2]);
    assert!(c[2].contains(&job.short()), "{}", c[2]);
    assert!(c[2].contains("| succeeded | done | 1 / 1 |"), "{}", c[2]);
    // Every job in the table links to its page with a working token.
    let link = &job_links(&c[2])[0];
    assert_eq!(ctx.get(link).await.0, 200);
    ctx.wait_idle().await;
    assert_eq!(
        ctx.gh.comments_on(REPO, 1).len(),
        3,
        "one reply per command"
    );
    // help and status need no permission check.
    assert_eq!(ctx.gh.count(Op::GetPermission), 0);
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_typos_and_ignored_comments() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let sha = ctx.push_pr(4, &[], false);
    ctx.gh.add_pr(REPO, 4, &sha, Some(REPO));

    // A reader may not run anything: one polite refusal, no job.
    ctx.comment(4, STRANGER, "/prodigy run").await;
    let c = ctx.wait_for_comments(4, 1).await;
    assert_eq!(
        c[0],
        replies::permission_refused(
            STRANGER,
            &prodigy::server::PrCommand::Run { workflow: None }
        )
    );

    // A typo gets the closest command.
    ctx.comment(4, MAINTAINER, "/prodigy resme").await;
    let c = ctx.wait_for_comments(4, 2).await;
    assert_eq!(
        c[1],
        "> /prodigy resme\n\nunknown command `resme`; did you mean `resume`? See `/prodigy help` for the commands."
    );

    // Quoted and fenced commands, bots, edits and deletions: answered 200, nothing happens.
    for text in [
        "> /prodigy run",
        "```\n/prodigy run\n```",
        "I typed `/prodigy run` earlier",
    ] {
        let (body, id) = ctx.comment_payload(4, MAINTAINER, text);
        let (status, answer) = ctx.deliver("issue_comment", body).await;
        assert_eq!(status, 200, "{text}: {answer}");
        assert!(answer.contains("without a command"), "{answer}");
        assert!(reactions_on(&ctx, id).is_empty());
    }
    let (body, _) = ctx.comment_payload(4, "prodigy-test[bot]", "/prodigy run");
    let (status, answer) = ctx.deliver("issue_comment", body).await;
    assert_eq!(
        (status.as_u16(), answer.contains("bot")),
        (200, true),
        "{answer}"
    );
    for action in ["edited", "deleted"] {
        let (body, _) = ctx.comment_payload(4, MAINTAINER, "/prodigy run");
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["action"] = action.into();
        let (status, answer) = ctx
            .deliver("issue_comment", serde_json::to_vec(&v).unwrap())
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    // `workflow=` naming nothing configured.
    ctx.comment(4, MAINTAINER, "/prodigy run workflow=nope")
        .await;
    let c = ctx.wait_for_comments(4, 3).await;
    assert_eq!(
        c[2],
        "No workflow `nope` in this repository's `.prodigy/config.yml`; it lists `.prodigy/fix.yml`."
    );
    ctx.wait_idle().await;
    assert_eq!(ctx.gh.comments_on(REPO, 4).len(), 3);
    assert!(
        ctx.server
            .store
            .find_jobs_by_pr(
                &prodigy::types::RepoName::new(REPO),
                prodigy::types::PrNumber(4)
            )
            .await
            .unwrap()
            .is_empty()
    );
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_of_a_running_job_names_its_holder_and_cancel_stops_it() {
    let db = support::db::sqlite_db();
    // One job slot, taken by the job: commands are still answered at once.
    let ctx = Ctx::with_instance(db.url(), "a", 1).await;
    let job = pr_with_job(&ctx, 5, &[("slow", "wait")]).await;
    ctx.wait_status(job, JobStatus::Running).await;

    ctx.comment(5, MAINTAINER, "/prodigy resume\n/prodigy status")
        .await;
    let c = ctx.wait_for_comments(5, 3).await;
    assert!(c[2].contains("| running |"), "{}", c[2]);
    assert!(
        c[1].starts_with(&format!("Job [`{}`](", job.short())),
        "{}",
        c[1]
    );
    assert!(
        c[1].contains("is already running on server instance a (pid"),
        "{}",
        c[1]
    );
    assert!(c[1].contains("covers every pending item"), "{}", c[1]);

    ctx.comment(
        5,
        MAINTAINER,
        &format!("/prodigy cancel job={}", job.short()),
    )
    .await;
    let c = ctx.wait_for_comments(5, 4).await;
    assert!(c[3].starts_with("Cancelling job"), "{}", c[3]);
    ctx.wait_status(job, JobStatus::Cancelled).await;

    // Cancelling a finished job says so.
    ctx.comment(5, MAINTAINER, "/prodigy cancel").await;
    let c = ctx.wait_for_comments(5, 5).await;
    assert!(
        c[4].ends_with("has already finished (cancelled); nothing to cancel."),
        "{}",
        c[4]
    );
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_and_retry_of_a_failed_job() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let job = pr_with_job(&ctx, 6, &[("good", "ok"), ("bad", "fail")]).await;
    ctx.wait_status(job, JobStatus::Failed).await;
    wait_unlocked(&ctx, job).await;
    let dlq = ctx.server.store.dlq(Some(job)).await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].key.0, "bad");

    // The page groups the DLQ by signature.
    let c = ctx.gh.comments_on(REPO, 6);
    let (_, html) = ctx.get(&job_links(&c[0])[0]).await;
    assert!(html.contains("1 × command_failed"), "{html}");
    assert!(html.contains("widget bad exploded"), "{html}");

    ctx.comment(6, MAINTAINER, "/prodigy retry item=nope").await;
    let c = ctx.wait_for_comments(6, 2).await;
    assert!(
        c[1].starts_with("Item `nope` is not in the dead-letter queue of job"),
        "{}",
        c[1]
    );

    let before = ctx
        .server
        .store
        .attempts(job, &"bad".into())
        .await
        .unwrap()
        .len();
    ctx.comment(6, MAINTAINER, "/prodigy retry item=bad").await;
    let c = ctx.wait_for_comments(6, 3).await;
    assert!(
        c[2].starts_with(&format!(
            "Retrying the dead-letter queue of job [`{}`]",
            job.short()
        )),
        "{}",
        c[2]
    );
    let store = &ctx.server.store;
    wait_until("the retry's attempt", WAIT, || async {
        let n = store.attempts(job, &"bad".into()).await.ok()?.len();
        let j = store.get_job(job).await.ok()?;
        (n > before && j.status == JobStatus::Failed).then_some(())
    })
    .await;
    wait_unlocked(&ctx, job).await;

    ctx.comment(6, MAINTAINER, &format!("/prodigy resume job={job}"))
        .await;
    let c = ctx.wait_for_comments(6, 4).await;
    // Its phases are done: nothing to resume, and the reply points at the DLQ.
    assert!(
        c[3].starts_with(&format!("Job [`{}`](", job.short())),
        "{}",
        c[3]
    );
    assert!(
        c[3].ends_with(&format!(
            "has already finished (failed); nothing to resume. 1 item is in its dead-letter queue: `/prodigy retry job={}` runs it again.",
            job.short()
        )),
        "{}",
        c[3]
    );

    // A job of another pull request's repository is not found by this one's id prefix typo.
    ctx.comment(6, MAINTAINER, "/prodigy resume job=ffffffff")
        .await;
    let c = ctx.wait_for_comments(6, 5).await;
    assert!(
        c[4].starts_with("No job `ffffffff` on this repository."),
        "{}",
        c[4]
    );
    ctx.wait_idle().await;
    ctx.finish().await;
}

/// A job stopped by its budget is resumed with a raised one by a maintainer: `budget=` needs
/// maintain permission (write is refused, saying so), and the resume finishes every item.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_with_a_budget_raises_it_for_maintainers_only() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    ctx.gh.set_permission(REPO, "boss", "maintain");
    // Every agent run costs $1.
    std::fs::write(
        &ctx.claude,
        "#!/bin/sh\nprintf '%s\\n' '{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\
         \"num_turns\":1,\"result\":\"ok\",\"session_id\":\"s\",\"total_cost_usd\":1,\
         \"usage\":{\"input_tokens\":1,\"output_tokens\":1}}'\n",
    )
    .unwrap();
    let workflow = support::server::WORKFLOW
        .replace(
            "mode: mapreduce",
            "mode: mapreduce\nbudget:\n  max_cost_usd: 0.5",
        )
        .replace("max_parallel: 2", "max_parallel: 1");
    let sha = ctx.push_pr(
        9,
        &[
            (
                "items.json",
                &items(&[("a", "ok"), ("b", "ok"), ("c", "ok")]),
            ),
            (".prodigy/fix.yml", &workflow),
        ],
        false,
    );
    ctx.open_pr(9, &sha).await;
    let c = ctx.wait_for_comments(9, 1).await;
    let job = job_id_of(&job_links(&c[0])[0]);
    ctx.wait_status(job, JobStatus::BudgetExhausted).await;
    wait_unlocked(&ctx, job).await;
    let counts = ctx.server.store.item_counts(job).await.unwrap();
    assert_eq!((counts.merged, counts.pending), (1, 2), "{counts:?}");

    ctx.comment(9, MAINTAINER, "/prodigy resume budget=10")
        .await;
    let c = ctx.wait_for_comments(9, 2).await;
    assert!(
        c[1].contains("needs maintain or admin permission"),
        "{}",
        c[1]
    );
    assert_eq!(
        ctx.server.store.get_job(job).await.unwrap().status,
        JobStatus::BudgetExhausted,
        "refused: nothing ran"
    );

    ctx.comment(9, "boss", "/prodigy resume budget=10").await;
    let c = ctx.wait_for_comments(9, 3).await;
    assert!(c[2].starts_with("Resuming job"), "{}", c[2]);
    ctx.wait_status(job, JobStatus::Succeeded).await;
    let counts = ctx.server.store.item_counts(job).await.unwrap();
    assert_eq!((counts.merged, counts.pending), (3, 0), "{counts:?}");
    ctx.wait_idle().await;
    ctx.finish().await;
}

/// The operator's daily cost cap per repository: a job in progress stops as
/// `budget_exhausted` when the repository's agents reach it, and a new run is refused with a
/// reply naming the cap (the stopped job is left as it is).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daily_repository_cap_stops_a_job_and_refuses_new_ones() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::with_daily_cap(db.url(), 1.5).await;
    std::fs::write(
        &ctx.claude,
        "#!/bin/sh\nprintf '%s\\n' '{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\
         \"num_turns\":1,\"result\":\"ok\",\"session_id\":\"s\",\"total_cost_usd\":1,\
         \"usage\":{\"input_tokens\":1,\"output_tokens\":1}}'\n",
    )
    .unwrap();
    let workflow = support::server::WORKFLOW.replace("max_parallel: 2", "max_parallel: 1");
    let sha = ctx.push_pr(
        12,
        &[
            (
                "items.json",
                &items(&[("a", "ok"), ("b", "ok"), ("c", "ok")]),
            ),
            (".prodigy/fix.yml", &workflow),
        ],
        false,
    );
    ctx.open_pr(12, &sha).await;
    let c = ctx.wait_for_comments(12, 1).await;
    let job = job_id_of(&job_links(&c[0])[0]);
    ctx.wait_status(job, JobStatus::BudgetExhausted).await;
    wait_unlocked(&ctx, job).await;
    let j = ctx.server.store.get_job(job).await.unwrap();
    let error = j.error.unwrap_or_default();
    assert!(
        error.contains("$2.0000 spent today (UTC) by the agents of octo/widgets")
            && error.contains("daily cap of $1.50"),
        "{error}"
    );
    let counts = ctx.server.store.item_counts(job).await.unwrap();
    assert_eq!((counts.merged, counts.pending), (2, 1), "{counts:?}");

    ctx.comment(12, MAINTAINER, "/prodigy run").await;
    let c = ctx.wait_for_comments(12, 2).await;
    assert!(
        c[1].contains("could not start") && c[1].contains("daily cap of $1.50 per repository"),
        "{}",
        c[1]
    );
    let repo = prodigy::types::RepoName::new(REPO);
    let jobs = ctx
        .server
        .store
        .find_jobs_by_pr(&repo, prodigy::types::PrNumber(12))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "nothing new started");
    assert_eq!(
        ctx.server.store.get_job(job).await.unwrap().status,
        JobStatus::BudgetExhausted
    );
    ctx.wait_idle().await;
    ctx.finish().await;
}
