//! Standard workflows resume per step: SIGKILL the real binary while step 3 of 4 runs, resume,
//! and only steps 3 and 4 run again, with what step 1 captured still visible in step 4.

mod support;

use support::repo::{Repo, backends, count, text};

/// Each step leaves one line in `$OUT/runs.txt`; step 3 announces itself in `$OUT/at-3` and
/// waits for `$OUT/go` (the test's sync point); steps 2 and 4 commit.
const WORKFLOW: &str = r#"
name: four-steps
commands:
  - shell: "echo step1 >> \"$OUT/runs.txt\"; echo captured-in-step-1"
    capture: first
  - shell: "echo step2 >> \"$OUT/runs.txt\"; echo two > two.txt && git add two.txt && git commit -q -m two"
  - shell: "echo step3 >> \"$OUT/runs.txt\"; echo partial > partial.txt; touch \"$OUT/at-3\"; while [ ! -f \"$OUT/go\" ]; do sleep 0.05; done"
  - shell: "echo \"step4 ${first}\" >> \"$OUT/runs.txt\"; echo four > four.txt && git add four.txt && git commit -q -m four"
"#;

fn wait_for(path: &std::path::Path, what: &str) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_resume_continues_at_the_first_step_not_completed_with_its_captures() {
    for (backend, db) in backends() {
        let repo = Repo::new(db.as_ref().map(|d| d.url()));
        repo.write("wf.yml", WORKFLOW);
        repo.commit_all("workflow");
        let out_dir = repo.out.display().to_string();
        let env = [("OUT", out_dir.as_str())];
        let runs = || {
            std::fs::read_to_string(repo.out.join("runs.txt"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };

        let mut first = repo.start_with(&["run", "wf.yml"], &env);
        let job = first.job.clone();
        wait_for(&repo.out.join("at-3"), "step 3 to start");
        first.kill9();
        let events = repo.events(&job);
        assert_eq!(
            count(&events, "step_completed"),
            2,
            "{backend}: steps 1 and 2 were recorded before step 3 started: {events:?}"
        );

        // The orphaned step-3 shell sees `go` too and ends; it runs no further step.
        std::fs::write(repo.out.join("go"), "").unwrap();
        let mut cmd = repo.command(&["resume", &job]);
        cmd.env("OUT", &out_dir);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{backend}: {}", text(&out));

        assert_eq!(
            runs(),
            [
                "step1",
                "step2",
                "step3",
                "step3",
                "step4 captured-in-step-1"
            ],
            "{backend}: the resume ran steps 3 and 4 only, step 4 saw step 1's capture"
        );
        let branch = format!("prodigy/{job}");
        let log = repo.git(&["log", "--format=%s", &format!("main..{branch}")]);
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            ["four", "two"],
            "{backend}: step 2 committed once, step 4 on top of it"
        );
        let events = repo.events(&job);
        let resumed: Vec<_> = events
            .iter()
            .filter(|e| e["kind"] == "steps_resumed")
            .collect();
        assert_eq!(resumed.len(), 1, "{backend}: {events:?}");
        assert_eq!(resumed[0]["data"]["index"], 2);
        assert_eq!(resumed[0]["data"]["of"], 4);
        assert_eq!(count(&events, "step_completed"), 4, "{backend}");
        let status = repo.json(&["status", &job]);
        assert_eq!(status["job"]["status"], "succeeded", "{backend}: {status}");
        assert_eq!(status["job"]["phase"], "done", "{backend}: {status}");
    }
}

/// A step that fails stops the job there; after the cause is fixed, `prodigy resume` runs that
/// step and the rest, not the steps that had passed.
#[test]
fn a_failed_step_is_where_the_resume_starts() {
    let repo = Repo::new(None);
    repo.write(
        "wf.yml",
        r#"
commands:
  - shell: "echo once >> \"$OUT/runs.txt\"; echo v1"
    capture: version
  - shell: "test -f \"$OUT/fixed\" && echo \"second ${version}\" >> \"$OUT/runs.txt\""
"#,
    );
    repo.commit_all("workflow");
    let out_dir = repo.out.display().to_string();
    let run = |args: &[&str]| {
        let mut cmd = repo.command(args);
        cmd.env("OUT", &out_dir);
        cmd.output().unwrap()
    };
    let out = run(&["run", "wf.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let job = support::repo::job_id(&out);
    std::fs::write(repo.out.join("fixed"), "").unwrap();
    let out = run(&["resume", &job]);
    assert!(out.status.success(), "{}", text(&out));
    let runs = std::fs::read_to_string(repo.out.join("runs.txt")).unwrap();
    assert_eq!(runs, "once\nsecond v1\n");
}
