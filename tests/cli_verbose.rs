//! `-v` shows the output of a workflow's commands (setup, reduce) on stderr as it happens: a
//! line is visible while its step still runs.

mod support;

use support::repo::{Repo, text};

const GATED_WF: &str = r#"
- shell: |
    echo early-line
    while [ ! -f "$GATE_DIR/open" ]; do sleep 0.05; done
    echo after-line
"#;

#[test]
fn verbose_shows_step_output_while_the_step_runs() {
    let repo = Repo::new(None);
    repo.write("wf.yml", GATED_WF);
    repo.commit_all("workflow");
    let gate = repo.out.display().to_string();
    let run = repo.start_with(
        &["-v", "run", "wf.yml"],
        &[("GATE_DIR", &gate), ("RUST_LOG", "warn")],
    );
    let start = std::time::Instant::now();
    // The step waits for the gate, so seeing its first line now means it was shown live.
    let has = |text: &str, line: &str| text.lines().any(|l| l == line);
    while !has(&run.stderr(), "commands | early-line") {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no live output:\n{}",
            run.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !has(&run.stderr(), "commands | after-line"),
        "{}",
        run.stderr()
    );
    std::fs::write(repo.out.join("open"), "").unwrap();
    let (code, stderr) = run.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(has(&stderr, "commands | after-line"), "{stderr}");

    // Without -v the output stays in the log.
    let quiet = repo
        .command(&["run", "wf.yml"])
        .env("GATE_DIR", &gate)
        .output()
        .unwrap();
    assert_eq!(quiet.status.code(), Some(0), "{}", text(&quiet));
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("early-line"),
        "{}",
        text(&quiet)
    );
}
