//! A closed stdout (`prodigy run wf.yml | head -2` once head has exited) ends the output
//! quietly: no panic (exit 101), and the job still runs to its end.

mod support;

use std::process::Stdio;

use support::repo::{Repo, text};

/// A pipe whose reading end is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Stdio::from(writer)
}

/// Runs `prodigy ARGS` with stdout a closed pipe.
fn with_closed_stdout(repo: &Repo, args: &[&str]) -> std::process::Output {
    repo.command(args)
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .expect("prodigy runs")
}

#[test]
fn a_run_whose_reader_went_away_finishes_its_job_quietly() {
    let repo = Repo::new(None);
    repo.write(
        "wf.yml",
        "- shell: seq 1 100\n- shell: echo done > done.txt && git add done.txt && git commit -q -m done\n",
    );
    repo.commit_all("workflow");
    for args in [&["run", "wf.yml"][..], &["run", "wf.yml", "--json"]] {
        let out = with_closed_stdout(&repo, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "prodigy {args:?}\n{}",
            text(&out)
        );
        assert!(
            !err.contains("panicked"),
            "prodigy {args:?}\n{}",
            text(&out)
        );
        let job = support::repo::job_id(&out);
        let status = repo.json(&["status", &job]);
        assert_eq!(status["job"]["status"], "succeeded", "{status}");
        assert_eq!(status["job"]["phase"], "done", "{status}");
    }
    // Listing commands end quietly too.
    for args in [&["jobs"][..], &["jobs", "--json"]] {
        let out = with_closed_stdout(&repo, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "prodigy {args:?}\n{}",
            text(&out)
        );
        assert!(out.stderr.is_empty(), "prodigy {args:?}\n{}", text(&out));
    }
}

#[test]
fn a_run_with_stdout_and_stderr_closed_still_finishes_its_job() {
    let repo = Repo::new(None);
    repo.write("wf.yml", "- shell: seq 1 100\n- shell: echo second\n");
    repo.commit_all("workflow");
    let status = repo
        .command(&["run", "wf.yml"])
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .status()
        .expect("prodigy runs");
    assert_eq!(status.code(), Some(0));
    let jobs = repo.json(&["jobs"]);
    assert_eq!(jobs[0]["job"]["status"], "succeeded", "{jobs}");
    // An error said to a closed stderr keeps its exit code.
    let status = repo
        .command(&["status", "0123abcd"])
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .status()
        .expect("prodigy runs");
    assert_eq!(status.code(), Some(2));
}
