//! Re-runs and concurrent resumes of the Action, with the real binary, the fake GitHub and the
//! state script the composite action runs around the step (`scripts/action-state.sh`, with a
//! local directory standing in for `actions/cache`):
//!
//! - attempt 1 of a workflow run is killed (SIGKILL) in the middle of the map phase; the script
//!   saves its state and pushes the job branch, a fresh checkout of the same path gets the state
//!   back, and attempt 2 continues the same job: every item merged exactly once, no item that
//!   had merged run again, a new check run that links the earlier one;
//! - two steps resuming one job at once on PostgreSQL: one runs it, the other ends at once,
//!   green, with `status: held` and a notice naming the holder (its run) and since when.

mod support;

use std::path::Path;
use std::time::Duration;

use support::action_step::*;
use support::repo::text;

/// One agent at a time; beta waits for `$OUT/release` (and says its pid in `$OUT/beta.pid`),
/// items in `$FLAGS/fail-<id>` fail; every agent run is a line in `$OUT/runs.log`.
const BLOCKING: &str = r#"name: review
mode: mapreduce
error_policy:
  continue_on_failure: false
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 1
  agent_template:
    - shell: |
        echo "${item.id}" >> "$OUT/runs.log"
        if [ -f "$FLAGS/fail-${item.id}" ]; then echo "review: ${item.id} has 2 problems" >&2; exit 3; fi
        if [ "${item.id}" = beta ]; then
          echo $$ > "$OUT/beta.pid"
          while [ ! -f "$OUT/release" ]; do sleep 0.05; done
        fi
        echo "${item.id}" > "out-${item.id}.txt" && git add . && git commit -q -m "item ${item.id}"
"#;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/action-state.sh")
}

/// `scripts/action-state.sh MODE DIR` in `repo` with `home` as the state directory.
fn state_script(mode: &str, dir: &Path, repo: &Path, home: &Path) -> String {
    let out = std::process::Command::new("bash")
        .arg(script())
        .args([mode, dir.to_str().unwrap()])
        .current_dir(repo)
        .env("PRODIGY_HOME", home)
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "state script {mode}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (a file is the sync point) until `path` exists.
async fn wait_for_file(path: &Path, what: &str) {
    for _ in 0..1200 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what} ({})", path.display());
}

fn agent_env(step: &Step) -> Vec<(&'static str, String)> {
    vec![
        ("OUT", step.repo.out.display().to_string()),
        ("PRODIGY_PASS_ENV", "FLAGS,OUT".into()),
    ]
}

fn refs<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn runs_of(step: &Step, id: &str) -> usize {
    std::fs::read_to_string(step.repo.out.join("runs.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == id)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_a_killed_attempt_continues_the_job_from_the_saved_state() {
    let step = Step::with_workflow(None, BLOCKING, true).await;
    let origin = step.add_origin();
    let cache = step.runner.path().join("cache");
    let mut vars = agent_env(&step);
    vars.push(("GITHUB_RUN_ATTEMPT", "1".into()));

    // Attempt 1: alpha merges, beta is in flight when the step is killed.
    let attempt1 = step.start(&refs(&vars));
    wait_for_file(&step.repo.out.join("beta.pid"), "beta to start").await;
    let agent: i32 = std::fs::read_to_string(step.repo.out.join("beta.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    attempt1.kill9();
    // The runner tears the whole job down: the agent goes too.
    // SAFETY: kill(2) on the agent's pid, which this test read from the agent itself.
    unsafe {
        libc::kill(agent, libc::SIGKILL);
    }
    let jobs = step.repo.json(&["jobs"]);
    let job = jobs[0]["job"]["id"].as_str().unwrap().to_string();
    let first_check = step
        .check_runs_on_head()
        .into_iter()
        .find(|r| r.external_id.as_deref() == Some(job.as_str()))
        .expect("attempt 1's check run");
    assert_eq!(
        first_check.status, "in_progress",
        "killed, it never completed"
    );
    let merged = step
        .repo
        .git(&["log", "--format=%s", &format!("prodigy/{job}")]);
    assert!(merged.contains("item alpha"), "{merged}");

    // The composite's `if: always()` step: state into the cache, the job branch to origin.
    let saved = state_script("save", &cache, &step.repo.path, &step.repo.home);
    assert!(
        saved.contains(&format!("pushed prodigy/{job} to origin")),
        "{saved}"
    );
    assert!(cache.join("state.db").exists());

    // A fresh runner: a new checkout at the same path, no state; the cache is restored.
    std::fs::remove_dir_all(&step.repo.home).unwrap();
    std::fs::create_dir_all(&step.repo.home).unwrap();
    std::fs::remove_dir_all(&step.repo.path).unwrap();
    support::git::git(
        step.runner.path(),
        &[
            "clone",
            "-q",
            origin.to_str().unwrap(),
            step.repo.path.to_str().unwrap(),
        ],
    );
    step.repo.git(&["config", "user.email", "test@example.com"]);
    step.repo.git(&["config", "user.name", "Test"]);
    let restored = state_script("restore", &cache, &step.repo.path, &step.repo.home);
    assert!(restored.contains("restored the job database"), "{restored}");

    // Attempt 2 of the same run continues the job.
    std::fs::write(step.repo.out.join("release"), "").unwrap();
    let mut vars = agent_env(&step);
    vars.push(("GITHUB_RUN_ATTEMPT", "2".into()));
    let ran = step.run(&refs(&vars)).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    assert_eq!(ran.output("job-id"), job);
    assert_eq!(ran.output("status"), "succeeded");
    assert_eq!(ran.output("succeeded"), "3");
    assert!(
        ran.stderr()
            .contains("re-run (attempt 2): Re-run, attempt 2: continues job"),
        "{}",
        text(&ran.out)
    );

    // Every item merged exactly once; alpha, merged before the kill, never ran again.
    let log = step
        .repo
        .git(&["log", "--format=%s", &format!("prodigy/{job}")]);
    for id in ["alpha", "beta", "gamma"] {
        let commits = log.lines().filter(|l| *l == format!("item {id}")).count();
        assert_eq!(commits, 1, "item {id} in\n{log}");
        assert_eq!(step.repo.show(&format!("prodigy/{job}:out-{id}.txt")), id);
    }
    assert_eq!(runs_of(&step, "alpha"), 1);
    assert_eq!(
        runs_of(&step, "beta"),
        2,
        "in flight at the kill, so run again"
    );
    assert_eq!(runs_of(&step, "gamma"), 1);

    // A new check run, linking attempt 1's.
    let second = step
        .check_runs_on_head()
        .into_iter()
        .filter(|r| r.external_id.as_deref() == Some(job.as_str()))
        .find(|r| r.id != first_check.id)
        .expect("attempt 2's check run");
    assert_eq!(second.conclusion.as_deref(), Some("success"));
    let summary = second.summary.unwrap_or_default();
    assert!(
        summary.starts_with(&format!(
            "Re-run, attempt 2: continues job `{job}` from attempt 1 ([its check run](https://github.example/{REPO}/runs/{}))",
            first_check.id
        )),
        "{summary}"
    );
    step.fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_steps_resuming_one_job_on_postgres_run_it_once() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let step = Step::with_workflow(Some(db.url()), BLOCKING, true).await;
    step.fail("beta");
    let first = step.run(&refs(&agent_env(&step))).await;
    assert_eq!(first.code(), Some(1), "{}", text(&first.out));
    let job = first.output("job-id").to_string();
    step.unfail("beta");

    // Two runs resume it at once: a re-run of this run and another run (a comment's, say).
    let start = |run_id: &str, attempt: &str| {
        let mut vars = agent_env(&step);
        vars.push(("GITHUB_RUN_ID", run_id.into()));
        vars.push(("GITHUB_RUN_ATTEMPT", attempt.into()));
        vars.push(("PRODIGY_RESUME", job.clone()));
        step.start(&refs(&vars))
    };
    let mut a = start("4242", "2");
    let mut b = start("5151", "1");
    // One of them holds the job: its beta waits for the release.
    wait_for_file(&step.repo.out.join("beta.pid"), "the winner's beta").await;
    let mut loser = None;
    for _ in 0..1200 {
        if a.has_ended() {
            loser = Some(true);
            break;
        }
        if b.has_ended() {
            loser = Some(false);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_lost = loser.expect("one step ended while the other runs the job");
    let (mut winner, held, held_run) = if a_lost {
        (b, a, "4242/attempts/2")
    } else {
        (a, b, "5151/attempts/1")
    };
    assert!(
        !winner.has_ended(),
        "the winner still runs (its beta waits)"
    );
    let held = held.wait().await;
    assert_eq!(
        held.code(),
        Some(0),
        "held is not a failure\n{}",
        text(&held.out)
    );
    assert_eq!(held.output("job-id"), job);
    assert_eq!(held.output("status"), "held");
    let notice = held
        .stdout()
        .lines()
        .find(|l| l.starts_with("::notice title=prodigy%3A job held::"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no held notice\n{}", text(&held.out)));
    let winner_run = if a_lost {
        "5151/attempts/1"
    } else {
        "4242/attempts/2"
    };
    assert!(
        notice.contains(&format!(
            "is being run by https://github.example/{REPO}/actions/runs/{winner_run} (pid"
        )) && notice.contains(" since "),
        "{notice}"
    );
    assert!(
        held.summary.contains("this step did nothing"),
        "{}",
        held.summary
    );
    let _ = held_run;

    std::fs::write(step.repo.out.join("release"), "").unwrap();
    let won = winner.wait().await;
    assert_eq!(won.code(), Some(0), "{}", text(&won.out));
    assert_eq!(won.output("status"), "succeeded");
    assert_eq!(
        runs_of(&step, "beta"),
        2,
        "failed once, then run by the winner only"
    );
    assert_eq!(runs_of(&step, "gamma"), 1);
    step.fake.assert_no_violations();
}

/// Without a pushable origin the save step says what a re-run will do; a restore never
/// overwrites a state that is already there (a self-hosted runner that kept its checkout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_script_says_when_it_cannot_push_and_never_restores_over_a_state() {
    let step = Step::with_workflow(None, BLOCKING, true).await;
    step.fail("beta");
    let first = step.run(&refs(&agent_env(&step))).await;
    assert_eq!(first.code(), Some(1), "{}", text(&first.out));
    let job = first.output("job-id").to_string();
    let cache = step.runner.path().join("cache");
    let saved = state_script("save", &cache, &step.repo.path, &step.repo.home);
    assert!(
        saved.contains(&format!(
            "::notice title=prodigy%3A job branch not pushed::cannot push prodigy/{job} to origin ("
        )) && saved.contains("permissions: contents: write"),
        "{saved}"
    );
    let restored = state_script("restore", &cache, &step.repo.path, &step.repo.home);
    assert!(restored.contains("is not restored over it"), "{restored}");
}

/// The save step pushes with the workflow token through git's environment: the remote receives
/// it as the Authorization header, and neither the checkout's configuration nor git's arguments
/// ever hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_script_pushes_with_the_token_through_the_environment_only() {
    use std::io::{BufRead, BufReader, Write};
    let step = Step::with_workflow(None, BLOCKING, true).await;
    step.fail("beta");
    let first = step.run(&refs(&agent_env(&step))).await;
    assert_eq!(first.code(), Some(1), "{}", text(&first.out));
    // An HTTP "remote" that records the first request's headers and refuses it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
            headers.push(line.trim().to_string());
        }
        let mut stream = stream;
        let _ = stream
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        headers
    });
    step.repo.git(&[
        "remote",
        "add",
        "origin",
        &format!("{server}/octo-org/pipelines.git"),
    ]);
    let out = std::process::Command::new("bash")
        .arg(script())
        .args(["save", step.runner.path().join("cache").to_str().unwrap()])
        .current_dir(&step.repo.path)
        .env("PRODIGY_HOME", &step.repo.home)
        .env("GITHUB_TOKEN", "ghs_pushtoken")
        .env("GITHUB_SERVER_URL", &server)
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{}", text(&out));
    let headers = seen.join().unwrap();
    let auth = headers
        .iter()
        .find_map(|h| {
            h.strip_prefix("Authorization: ")
                .or(h.strip_prefix("AUTHORIZATION: "))
        })
        .unwrap_or_else(|| panic!("no Authorization header: {headers:?}"));
    let basic = auth
        .strip_prefix("basic ")
        .or(auth.strip_prefix("Basic "))
        .unwrap();
    use base64::Engine as _;
    let decoded = base64::prelude::BASE64_STANDARD.decode(basic).unwrap();
    assert_eq!(decoded, b"x-access-token:ghs_pushtoken");
    let config = std::fs::read_to_string(step.repo.path.join(".git/config")).unwrap();
    assert!(
        !config.contains("extraheader") && !config.contains("ghs_"),
        "{config}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("ghs_pushtoken"), "{stdout}");
    assert!(stdout.contains("job branch not pushed"), "{stdout}");
}
