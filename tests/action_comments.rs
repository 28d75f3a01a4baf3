//! `prodigy action` on `issue_comment`: the real binary as the step of a workflow that a
//! `/prodigy` comment started, against the fake GitHub (every request checked against GitHub's
//! schema), with event files made from GitHub's `issue_comment.created` example.
//!
//! - `/prodigy status` from a read user: an eyes reaction and one reply; `resume` from a read
//!   user is refused; from a write user it resumes the pull request's unfinished job, followed
//!   by one tracking comment that is created once and updated in place; a typo gets "did you
//!   mean"; an edited comment is ignored;
//! - `/prodigy run` on a pull request from a fork: refused for a read user (permission) and a
//!   write user (only maintainers vouch for a fork's code), run for a maintainer, at the pull
//!   request's head, which the step checks out itself.

mod support;

use support::action_step::*;
use support::fake_github::Op;
use support::repo::text;

fn reactions(step: &Step) -> Vec<(u64, String)> {
    step.fake
        .world()
        .reactions
        .iter()
        .map(|r| (r.comment_id, r.content.clone()))
        .collect()
}

/// The comment id GitHub's example carries (the comment the step reacts to).
const COMMENT_ID: u64 = 492700400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_answer_status_refuse_readers_and_resume_for_writers() {
    let step = Step::new(None, true, true).await;
    step.fake.add_pr(REPO, 2, &step.head, Some(REPO));
    step.fake.set_permission(REPO, "reader", "read");
    step.fake.set_permission(REPO, "writer", "write");
    let main = step.head.clone();

    // The pull request's run stops at beta: an unfinished job.
    step.fail("beta");
    let first = step.run(&[]).await;
    assert_eq!(first.code(), Some(1), "{}", text(&first.out));
    let job = first.output("job-id").to_string();
    let short = &job.replace('-', "")[..8];

    let comment = |body: &str, user: &str, association: &str| {
        let path = step.comment_event(body, user, association, 2);
        vec![
            ("GITHUB_EVENT_NAME", "issue_comment".to_string()),
            ("GITHUB_EVENT_PATH", path.display().to_string()),
            ("GITHUB_SHA", main.clone()),
        ]
    };
    let run = |vars: Vec<(&'static str, String)>| {
        let step = &step;
        async move {
            let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            step.run(&refs).await
        }
    };

    // status, from a read user: eyes and one reply with the job.
    let ran = run(comment("/prodigy status", "reader", "NONE")).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    assert_eq!(reactions(&step), [(COMMENT_ID, "eyes".to_string())]);
    let replies = step.fake.comments_on(REPO, 2);
    assert_eq!(replies.len(), 1, "{replies:#?}");
    assert!(
        replies[0].contains(&format!("[`{short}`]")),
        "{}",
        replies[0]
    );
    assert!(replies[0].contains("| failed | map |"), "{}", replies[0]);
    assert_eq!(
        step.fake.count(Op::GetPermission),
        0,
        "status is for everyone"
    );

    // resume, from a read user: refused, nothing runs.
    let checks_before = step.fake.count(Op::CreateCheckRun);
    let ran = run(comment("/prodigy resume", "reader", "CONTRIBUTOR")).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    let replies = step.fake.comments_on(REPO, 2);
    assert_eq!(replies.len(), 2);
    assert_eq!(
        replies[1],
        "@reader, `/prodigy resume` needs write, maintain or admin permission on this repository, which you do not have. `/prodigy status` and `/prodigy help` work for everyone."
    );
    assert_eq!(step.fake.count(Op::CreateCheckRun), checks_before);

    // A typo gets "did you mean"; an edit of a comment is not a new command.
    let ran = run(comment("Thanks!\n/prodigy resme", "writer", "MEMBER")).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    let replies = step.fake.comments_on(REPO, 2);
    assert_eq!(
        replies[2],
        "> /prodigy resme\n\nunknown command `resme`; did you mean `resume`? See `/prodigy help` for the commands."
    );
    let mut edited = comment("/prodigy resume", "writer", "MEMBER");
    let path = edited[1].1.clone();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["action"] = "edited".into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    edited[1].1 = path;
    let requests = step.fake.world().requests.len();
    let ran = run(edited).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    assert!(
        ran.stderr().contains("an edited or deleted comment"),
        "{}",
        text(&ran.out)
    );
    assert_eq!(
        step.fake.world().requests.len(),
        requests,
        "no call for an edit"
    );

    // resume, from a write user: the job continues to its end, followed by one comment.
    step.unfail("beta");
    let (creates, updates) = (
        step.fake.count(Op::CreateComment),
        step.fake.count(Op::UpdateComment),
    );
    let ran = run(comment("/prodigy resume", "writer", "MEMBER")).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    assert_eq!(ran.output("job-id"), job);
    assert_eq!(ran.output("status"), "succeeded");
    assert_eq!(step.fake.count(Op::CreateComment), creates + 1, "one reply");
    let tracking: Vec<(u64, Vec<String>, String)> = {
        let w = step.fake.world();
        w.comments
            .iter()
            .skip(3)
            .map(|c| (c.id, c.history.clone(), c.body.clone()))
            .collect()
    };
    assert_eq!(tracking.len(), 1, "{tracking:#?}");
    let (id, history, last) = &tracking[0];
    let edits = step.fake.count(Op::UpdateComment) - updates;
    assert!(
        edits >= 2,
        "updated while it ran and at the end: {history:#?}"
    );
    assert_eq!(history.len(), edits, "every update edits the one comment");
    {
        let w = step.fake.world();
        let patched: Vec<&str> = w
            .requests
            .iter()
            .filter(|r| r.op == Op::UpdateComment)
            .map(|r| r.path.as_str())
            .collect();
        let expected = format!("/repos/{REPO}/issues/comments/{id}");
        assert!(patched.iter().all(|p| *p == expected), "{patched:?}");
    }
    assert!(
        history[0]
            .starts_with("> /prodigy resume\n\n@writer prodigy is resuming `.prodigy/review.yml`"),
        "{history:#?}"
    );
    assert!(
        history
            .iter()
            .any(|b| b.contains(&format!("as job `{short}`")) && b.contains("Phase **")),
        "progress shown: {history:#?}"
    );
    assert!(
        last.contains(&format!(
            "job `{short}` of `.prodigy/review.yml` **succeeded** (phase done)"
        )),
        "{last}"
    );
    assert!(last.contains("3 of 3 items merged"), "{last}");
    assert!(last.contains(&format!("`prodigy/{job}`")), "{last}");
    assert!(
        last.contains("https://github.example/octo-org/pipelines/actions/runs/4242/attempts/1"),
        "{last}"
    );
    for id in ["alpha", "beta", "gamma"] {
        assert_eq!(step.repo.show(&format!("prodigy/{job}:out-{id}.txt")), id);
    }
    // The job's check run for this resume, on the pull request's head.
    let runs: Vec<_> = step
        .check_runs_on_head()
        .into_iter()
        .filter(|r| r.external_id.as_deref() == Some(job.as_str()))
        .collect();
    assert_eq!(
        runs.iter()
            .map(|r| r.conclusion.as_deref())
            .collect::<Vec<_>>(),
        [Some("failure"), Some("success")]
    );
    assert_eq!(
        reactions(&step).len(),
        4,
        "every new command comment got eyes"
    );
    step.fake.assert_no_violations();
}

/// The pull request's head: a commit the default branch does not have, with other items.
const PR_ITEMS: &str = r#"[{"id": "delta"}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_runs_only_when_a_maintainer_asks() {
    let step = Step::new(None, false, true).await;
    step.add_origin();
    let main = step.head.clone();
    step.repo.git(&["checkout", "-q", "-b", "fork-work"]);
    step.repo.write("items.json", PR_ITEMS);
    step.repo.commit_all("fork: other items");
    let pr_head = step.repo.git(&["rev-parse", "HEAD"]);
    step.repo
        .git(&["push", "-q", "origin", "HEAD:refs/pull/2/head"]);
    // The workflow of an `issue_comment` runs on the default branch.
    step.repo.git(&["checkout", "-q", "main"]);
    step.repo.git(&["branch", "-q", "-D", "fork-work"]);
    step.fake
        .add_pr(REPO, 2, &pr_head, Some("forker/pipelines"));
    step.fake.set_permission(REPO, "reader", "read");
    step.fake.set_permission(REPO, "writer", "write");
    step.fake.set_permission(REPO, "maint", "maintain");

    let comment = |user: &str| {
        let path = step.comment_event("/prodigy run", user, "CONTRIBUTOR", 2);
        [
            ("GITHUB_EVENT_NAME", "issue_comment".to_string()),
            ("GITHUB_EVENT_PATH", path.display().to_string()),
            ("GITHUB_SHA", main.clone()),
        ]
    };
    let run = |vars: [(&'static str, String); 3]| {
        let step = &step;
        async move {
            let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            step.run(&refs).await
        }
    };

    let ran = run(comment("reader")).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    let ran = run(comment("writer")).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    let replies = step.fake.comments_on(REPO, 2);
    assert_eq!(replies.len(), 2, "{replies:#?}");
    assert!(
        replies[0].starts_with("@reader, `/prodigy run` needs write"),
        "{}",
        replies[0]
    );
    assert!(
        replies[1].starts_with("@writer, this pull request comes from a fork.")
            && replies[1].contains("only a maintainer (maintain or admin permission)"),
        "{}",
        replies[1]
    );
    assert_eq!(step.fake.count(Op::CreateCheckRun), 0, "nothing ran");
    assert_eq!(
        step.repo.git(&["rev-parse", "HEAD"]),
        main,
        "nothing checked out"
    );

    let ran = run(comment("maint")).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    let job = ran.output("job-id").to_string();
    assert_eq!(ran.output("status"), "succeeded");
    assert_eq!(ran.output("succeeded"), "1", "the pull request's items");
    assert_eq!(
        step.repo.show(&format!("prodigy/{job}:out-delta.txt")),
        "delta"
    );
    let status = step.repo.json(&["status", &job]);
    assert_eq!(status["job"]["head_sha"], pr_head.as_str());
    assert_eq!(status["job"]["pr_number"], 2);
    let runs = step.fake.check_runs_for(REPO, &pr_head);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].conclusion.as_deref(), Some("success"));
    let replies = step.fake.comments_on(REPO, 2);
    assert_eq!(replies.len(), 3, "{replies:#?}");
    assert!(
        replies[2].contains("**succeeded** (phase done)") && replies[2].contains("@maint"),
        "{}",
        replies[2]
    );
    step.fake.assert_no_violations();
}
