//! `prodigy cancel` end to end with two processes, on each backend: a running `prodigy run`
//! sees the request and stops (exit 130, resumable); a job nothing runs is marked cancelled.

mod support;

use std::path::Path;

use support::repo::{Repo, backends, count, text};

/// The first step leaves a mark (the sync point) and then sleeps while STEP_SLEEP says so.
const SLOW_WF: &str = r#"
- shell: |
    touch "$MARK_DIR/started"
    sleep "${STEP_SLEEP:-0}"
- shell: echo after > after.txt && git add after.txt && git commit -q -m after
"#;

fn wait_for_file(path: &Path) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn cancel_stops_a_running_cli_job_which_then_resumes() {
    for (backend, db) in backends() {
        let repo = Repo::new(db.as_ref().map(|d| d.url()));
        repo.write("wf.yml", SLOW_WF);
        repo.commit_all("workflow");
        let mark = repo.out.display().to_string();
        let run = repo.start_with(
            &["run", "wf.yml"],
            &[("MARK_DIR", &mark), ("STEP_SLEEP", "60")],
        );
        let job = run.job.clone();
        wait_for_file(&repo.out.join("started"));

        let cancel = repo.prodigy(&["cancel", &job, "--reason", "wrong branch"]);
        assert_eq!(
            cancel.status.code(),
            Some(0),
            "{backend}: {}",
            text(&cancel)
        );
        assert!(
            String::from_utf8_lossy(&cancel.stdout).contains("to stop job"),
            "{backend}: {}",
            text(&cancel)
        );
        let (code, stderr) = run.wait();
        assert_eq!(code, Some(130), "{backend}: the run should stop:\n{stderr}");
        assert!(stderr.contains("wrong branch"), "{backend}: {stderr}");

        let status = repo.json(&["status", &job]);
        assert_ne!(status["job"]["phase"], "done", "{backend}: {status}");
        let events = repo.events(&job);
        assert_eq!(count(&events, "cancel_requested"), 1, "{backend}");

        let resumed = repo
            .command(&["resume", &job])
            .env("MARK_DIR", &mark)
            .output()
            .expect("prodigy runs");
        assert_eq!(
            resumed.status.code(),
            Some(0),
            "{backend}: {}",
            text(&resumed)
        );
        assert_eq!(repo.json(&["status", &job])["job"]["status"], "succeeded");
    }
}

#[test]
fn cancel_marks_a_job_nothing_runs_as_cancelled() {
    for (backend, db) in backends() {
        let repo = Repo::new(db.as_ref().map(|d| d.url()));
        repo.write("fails.yml", "- shell: exit 1\n");
        repo.commit_all("workflow");
        let failed = repo.prodigy(&["run", "fails.yml"]);
        assert_eq!(
            failed.status.code(),
            Some(1),
            "{backend}: {}",
            text(&failed)
        );
        let job = support::repo::job_id(&failed);

        let cancel = repo.json(&["cancel", &job]);
        assert_eq!(
            cancel["outcome"]["kind"], "cancelled",
            "{backend}: {cancel}"
        );
        let status = repo.json(&["status", &job]);
        assert_eq!(status["job"]["status"], "cancelled", "{backend}: {status}");
        assert_eq!(count(&repo.events(&job), "cancelled"), 1, "{backend}");

        // Cancelling it again says so and changes nothing.
        let again = repo.json(&["cancel", &job]);
        assert_eq!(
            again["outcome"]["kind"], "already_finished",
            "{backend}: {again}"
        );
        assert_eq!(
            count(&repo.events(&job), "cancel_requested"),
            1,
            "{backend}"
        );
    }
}
