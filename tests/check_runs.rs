//! The check-run reporter end to end: the real engine runs a MapReduce job in a real git
//! repository through the library, the reporter sends the check run to the fake GitHub, which
//! checks every request against GitHub's schema.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prodigy::checks::{AppCheckRuns, CheckRunReporter, ReportState, ReporterConfig};
use prodigy::engine::{Engine, NewRun, RunOutcome};
use prodigy::github::{GitHubClient, InstallationId};
use prodigy::store::Store;
use prodigy::types::{JobStatus, RepoName};
use serde_json::{Value, json};
use support::fake_github::{self, CheckRun, FakeGitHub, Op};
use support::repo::Repo;
use tokio_util::sync::CancellationToken;

const INSTALLATION: u64 = 31;
const REPO: &str = "octo-org/pipelines";

/// Items whose `fail` is true exit 2 with a lint-like error; some of them name a file.
const WORKFLOW: &str = r#"name: lint-fix
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 8
  agent_template:
    - shell: |
        sleep "${item.sleep}"
        if [ "${item.fail}" = "true" ]; then echo "lint: 3 problems in ${item.id}" >&2; exit 2; fi
        echo "fixed ${item.id}"
reduce:
  - shell: "echo reduce saw ${map.successful} ok and ${map.failed} failed"
"#;

/// `n` items, every odd one failing; every fourth names a file (`file`/`line`), the rest not.
fn items(n: usize, sleep: f64) -> String {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            let mut item =
                json!({"id": format!("item-{i:03}"), "fail": i % 2 == 1, "sleep": sleep});
            if i % 4 == 1 {
                item["file"] = json!(format!("src/mod{i}.rs"));
                item["line"] = json!(i);
            }
            item
        })
        .collect();
    Value::Array(items).to_string()
}

struct World {
    fake: FakeGitHub,
    repo: Repo,
    store: Store,
    sha: String,
}

impl World {
    async fn new(workflow: &str, items_json: &str) -> World {
        let fake = FakeGitHub::start(INSTALLATION, &[REPO]).await;
        let repo = Repo::new(None);
        repo.write("wf.yml", workflow);
        repo.write("items.json", items_json);
        repo.commit_all("workflow and items");
        let sha = repo.git(&["rev-parse", "HEAD"]);
        let store = Store::open(&repo.db_url).await.expect("store opens");
        World {
            fake,
            repo,
            store,
            sha,
        }
    }

    fn reporter(&self, config: ReporterConfig) -> CheckRunReporter {
        let client = GitHubClient::new(
            &self.fake.base_url(),
            fake_github::test_app_auth(),
            fake_github::test_retry_policy(),
        )
        .unwrap();
        let sink = AppCheckRuns {
            client,
            installation: InstallationId(INSTALLATION),
            repo: RepoName::new(REPO),
        };
        CheckRunReporter::spawn(sink, self.store.clone(), config)
    }

    fn config(&self, min_interval: Duration) -> ReporterConfig {
        ReporterConfig {
            details_url: Some("https://prodigy.example/jobs/{job}".into()),
            head_sha: Some(self.sha.clone()),
            min_interval,
            final_retry_delay: Duration::from_millis(50),
            ..ReporterConfig::default()
        }
    }

    /// Runs the workflow through the engine with `reporter`, then waits for the reporter.
    async fn run(&self, reporter: &CheckRunReporter) -> (RunOutcome, ReportState, Duration) {
        self.run_with_cancel(reporter, CancellationToken::new())
            .await
    }

    async fn run_with_cancel(
        &self,
        reporter: &CheckRunReporter,
        cancel: CancellationToken,
    ) -> (RunOutcome, ReportState, Duration) {
        let engine = Engine {
            store: self.store.clone(),
            state_dir: self.repo.home.join("state"),
            claude_bin: "claude".into(),
            agent: Default::default(),
            api_backoff: Default::default(),
            instance: None,
            reporter: Arc::new(reporter.clone()),
            cancel,
            agents: support::repo::agents_writing_tmp(),
            workers: Default::default(),
        };
        let start = Instant::now();
        let outcome = engine
            .run(&NewRun {
                repo: self.repo.path.clone(),
                workflow_path: self.repo.path.join("wf.yml"),
                max_parallel: None,
                repo_name: Some(RepoName::new(REPO)),
                pr_number: Some(prodigy::types::PrNumber(7)),
                head_sha: Some(prodigy::types::CommitSha(self.sha.clone())),
                base_commit: None,
                workflow_text: None,
            })
            .await
            .expect("the engine runs the job");
        let state = reporter.finish().await;
        (outcome, state, start.elapsed())
    }

    fn only_check_run(&self) -> CheckRun {
        let runs = self.fake.check_runs_for(REPO, &self.sha);
        assert_eq!(runs.len(), 1, "one check run per job: {runs:#?}");
        runs.into_iter().next().unwrap()
    }

    /// Bodies of the successful check-run PATCHes, in order.
    fn updates(&self) -> Vec<Value> {
        self.fake
            .world()
            .requests
            .iter()
            .filter(|r| r.op == Op::UpdateCheckRun && r.status.is_success())
            .map(|r| r.body.clone().unwrap_or_default())
            .collect()
    }
}

fn annotations_in(body: &Value) -> usize {
    body["output"]["annotations"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_60_failures_of_120_reports_progress_annotations_and_buttons() {
    let world = World::new(WORKFLOW, &items(120, 0.05)).await;
    let interval = Duration::from_millis(400);
    let reporter = world.reporter(world.config(interval));
    let (outcome, state, elapsed) = world.run(&reporter).await;
    assert_eq!(outcome.status, JobStatus::Failed, "{outcome:?}");
    assert_eq!((outcome.counts.total, outcome.counts.dlq), (120, 60));

    let run = world.only_check_run();
    assert_eq!(run.name, "prodigy: lint-fix");
    assert_eq!(
        run.external_id.as_deref(),
        Some(outcome.job.to_string().as_str())
    );
    assert_eq!(
        run.details_url,
        Some(format!("https://prodigy.example/jobs/{}", outcome.job))
    );
    assert_eq!(run.status, "completed");
    assert_eq!(run.conclusion.as_deref(), Some("failure"));
    assert_eq!(
        state.conclusion.map(|c| format!("{c:?}")).as_deref(),
        Some("Failure")
    );
    assert_eq!(state.check_run.map(|c| c.0), Some(run.id));
    // The job row points at its check run.
    let job = world.store.get_job(outcome.job).await.unwrap();
    assert_eq!(job.check_run_id, Some(run.id as i64));

    // One create, in progress, with the job's identity.
    let creates: Vec<Value> = world
        .fake
        .world()
        .requests
        .iter()
        .filter(|r| r.op == Op::CreateCheckRun)
        .map(|r| r.body.clone().unwrap())
        .collect();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0]["status"], "in_progress");
    assert_eq!(creates[0]["head_sha"], world.sha.as_str());

    // Annotations: 60, in requests of at most 50, the completion carrying the first batch.
    let updates = world.updates();
    let completion_at = updates
        .iter()
        .position(|u| u.get("conclusion").is_some())
        .expect("a completion");
    let finals = &updates[completion_at..];
    let batches: Vec<usize> = finals.iter().map(annotations_in).collect();
    assert_eq!(batches, [50, 10], "completion + one appending update");
    assert!(
        updates[..completion_at]
            .iter()
            .all(|u| annotations_in(u) == 0)
    );
    assert_eq!(run.annotations.len(), 60);
    assert_eq!(state.annotations, 60);
    let titles: std::collections::BTreeSet<String> = run
        .annotations
        .iter()
        .map(|a| a["title"].as_str().unwrap().to_string())
        .collect();
    let expected: std::collections::BTreeSet<String> = (0..120)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("command_failed: item-{i:03}"))
        .collect();
    assert_eq!(titles, expected);
    for a in &run.annotations {
        assert_eq!(a["annotation_level"], "failure");
        let title = a["title"].as_str().unwrap();
        let i: usize = title.rsplit('-').next().unwrap().parse().unwrap();
        if i % 4 == 1 {
            assert_eq!(a["path"], format!("src/mod{i}.rs").as_str(), "{a}");
            assert_eq!(a["start_line"], i, "{a}");
        } else {
            // No file in the item: the workflow file at `agent_template:` (line 7).
            assert_eq!(a["path"], "wf.yml", "{a}");
            assert_eq!(a["start_line"], 7, "{a}");
        }
        let message = a["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("lint: 3 problems in item-{i:03}")),
            "{message}"
        );
        assert!(message.contains("1 failed attempt"), "{message}");
        assert!(
            a["raw_details"].as_str().unwrap().contains("attempt 1 at"),
            "{a}"
        );
    }

    // Buttons: the job finished its phases, so only the DLQ retry is offered.
    let identifiers: Vec<&str> = run
        .actions
        .iter()
        .map(|a| a["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(identifiers, ["retry_failed"]);

    // The summary: counts table, slowest items, DLQ grouped by signature.
    let summary = run.summary.clone().unwrap();
    assert!(summary.contains("| in the DLQ | 60 |"), "{summary}");
    assert!(summary.contains("### Slowest items"), "{summary}");
    assert!(summary.contains("**60 × `command_failed`**"), "{summary}");

    // Throttled progress: at most one per interval, plus one per phase change (map, reduce; done
    // is followed by the completion instead), and at least one while 120 items ran.
    let progress = state.calls.progress_updates as usize;
    let allowed = (elapsed.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 2;
    assert!(
        (1..=allowed).contains(&progress),
        "{progress} progress updates in {elapsed:?} (allowed {allowed})"
    );
    assert_eq!(
        updates.len(),
        progress + 2,
        "progress + completion + one batch"
    );

    eprintln!(
        "120 items, 60 failed, {elapsed:?}: {progress} progress updates (interval {interval:?}), \
         {} GitHub check-run calls, {} token requests",
        world.fake.count(Op::CreateCheckRun) + world.fake.count(Op::UpdateCheckRun),
        world.fake.count(Op::CreateAccessToken)
    );
    // GitHub calls for the job: at most 3 + ceil(DLQ / 50) + progress updates, one token.
    let calls = world.fake.count(Op::CreateCheckRun) + world.fake.count(Op::UpdateCheckRun);
    assert!(
        calls <= 3 + 60usize.div_ceil(50) + progress,
        "{calls} calls"
    );
    assert_eq!(calls as u32, state.calls.total());
    assert_eq!(
        world.fake.count(Op::CreateAccessToken),
        1,
        "one installation token"
    );
    assert_eq!(state.calls.failed, 0, "{:?}", state.last_error);
    world.fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_over_the_limit_is_cut_cleanly() {
    // Reduce fails with 20 lines of 5,000 characters on stderr: the job's error alone is ~100 KB.
    let workflow = r#"name: loud-reduce
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  agent_template:
    - shell: "echo ok ${item.id}"
reduce:
  - shell: |
      for i in $(seq 1 20); do printf 'reduce exploded %s %0*d\n' "$i" 5000 0 >&2; done
      exit 1
"#;
    let world = World::new(workflow, &items(3, 0.0)).await;
    let reporter = world.reporter(world.config(Duration::from_secs(60)));
    let (outcome, state, _) = world.run(&reporter).await;
    assert_eq!(outcome.status, JobStatus::Failed);
    let run = world.only_check_run();
    assert_eq!(run.conclusion.as_deref(), Some("failure"), "{state:?}");
    let summary = run.summary.unwrap();
    assert!(summary.chars().count() <= 65_535, "{}", summary.len());
    assert!(summary.chars().count() > 60_000, "the budget is used");
    assert!(
        summary.ends_with("show everything._"),
        "{}",
        &summary[summary.len() - 200..]
    );
    // The error's code block is closed before the note, so the Markdown still renders.
    let fences = summary.lines().filter(|l| l.starts_with("```")).count();
    assert_eq!(fences % 2, 0, "unbalanced code fences");
    // Setup/reduce failures leave the job resumable: the Resume button.
    let ids: Vec<&str> = run
        .actions
        .iter()
        .map(|a| a["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["resume"]);
    world.fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_502_then_secondary_rate_limit_on_updates_is_ridden_out() {
    let world = World::new(WORKFLOW, &items(10, 0.0)).await;
    // Every check-run update first meets a 502, then a 403 secondary rate limit asking for 1 s.
    world.fake.fail_next(Op::UpdateCheckRun, 1, 502, &[]);
    world.fake.fail_next(
        Op::UpdateCheckRun,
        1,
        403,
        &[("retry-after", "1"), ("x-github-request-id", "ABCD")],
    );
    let reporter = world.reporter(world.config(Duration::from_secs(60)));
    let (outcome, state, _) = world.run(&reporter).await;
    assert_eq!(outcome.counts.dlq, 5);
    let run = world.only_check_run();
    assert_eq!(run.conclusion.as_deref(), Some("failure"), "{state:?}");
    assert_eq!(run.annotations.len(), 5);
    let requests = world.fake.world().requests.clone();
    let statuses: Vec<u16> = requests
        .iter()
        .filter(|r| r.op == Op::UpdateCheckRun)
        .map(|r| r.status.as_u16())
        .collect();
    assert_eq!(&statuses[..3], [502, 403, 200], "{statuses:?}");
    assert_eq!(state.calls.failed, 0, "the client's retries absorbed both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_outage_on_the_completion_is_retried_by_the_reporter() {
    // Reduce waits for a go-file, so the test can break GitHub exactly for the final requests.
    let gate = tempfile::tempdir().unwrap();
    let started = gate.path().join("reduce-started");
    let go = gate.path().join("go");
    let workflow = WORKFLOW.replace(
        "  - shell: \"echo reduce saw ${map.successful} ok and ${map.failed} failed\"\n",
        &format!(
            "  - shell: \"touch {}; while [ ! -f {} ]; do sleep 0.05; done\"\n",
            started.display(),
            go.display()
        ),
    );
    assert_ne!(workflow, WORKFLOW);
    let world = World::new(&workflow, &items(4, 0.0)).await;
    let reporter = world.reporter(ReporterConfig {
        final_attempts: 3,
        ..world.config(Duration::from_secs(60))
    });
    let fake = &world.fake;
    let breaker = async {
        // Once reduce runs and its phase update has arrived, every further update fails 8 times:
        // two full rounds of the client's 4 tries.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let reduce_shown = fake
                .world()
                .check_runs
                .values()
                .any(|r| r.title.as_deref().is_some_and(|t| t.starts_with("Reduce")));
            if reduce_shown && started.exists() {
                break;
            }
            assert!(Instant::now() < deadline, "reduce never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fake.fail_next(Op::UpdateCheckRun, 8, 502, &[]);
        std::fs::write(&go, "").unwrap();
    };
    let ((outcome, state, _), ()) = tokio::join!(world.run(&reporter), breaker);
    assert_eq!(outcome.counts.dlq, 2);
    let run = world.only_check_run();
    assert_eq!(run.conclusion.as_deref(), Some("failure"), "{state:?}");
    assert_eq!(run.annotations.len(), 2);
    assert!(state.calls.failed >= 1, "{state:?}");
    let failed_updates = world
        .fake
        .world()
        .requests
        .iter()
        .filter(|r| r.op == Op::UpdateCheckRun && r.status.as_u16() == 502)
        .count();
    assert_eq!(failed_updates, 8);
    world.fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_failures_conclude_neutral() {
    let workflow = WORKFLOW.replace(
        "reduce:",
        "error_policy:\n  failures_acceptable: true\nreduce:",
    );
    let world = World::new(&workflow, &items(6, 0.0)).await;
    let reporter = world.reporter(world.config(Duration::from_secs(60)));
    let (outcome, state, _) = world.run(&reporter).await;
    assert_eq!(outcome.status, JobStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.counts.dlq, 3);
    let run = world.only_check_run();
    assert_eq!(run.conclusion.as_deref(), Some("neutral"), "{state:?}");
    assert_eq!(run.annotations.len(), 3);
    assert!(
        run.title
            .unwrap()
            .starts_with("Finished with accepted failures")
    );
    world.fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_concludes_cancelled_and_offers_resume() {
    // Slow agents, so the cancel lands while items run.
    let world = World::new(WORKFLOW, &items(16, 1.0)).await;
    let cancel = CancellationToken::new();
    let reporter = world.reporter(ReporterConfig {
        cancel: Some(cancel.clone()),
        ..world.config(Duration::from_secs(60))
    });
    let canceller = {
        let cancel = cancel.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cancel.cancel();
        }
    };
    let ((outcome, state, _), ()) =
        tokio::join!(world.run_with_cancel(&reporter, cancel.clone()), canceller);
    assert_ne!(outcome.status, JobStatus::Succeeded, "{outcome:?}");
    assert!(
        outcome.counts.pending > 0,
        "the cancel stopped the map: {outcome:?}"
    );
    let run = world.only_check_run();
    assert_eq!(run.conclusion.as_deref(), Some("cancelled"), "{state:?}");
    let ids: Vec<&str> = run
        .actions
        .iter()
        .map(|a| a["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "resume", "{ids:?}");
    world.fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_run_that_could_not_be_created_at_the_start_is_created_at_the_end() {
    let world = World::new(WORKFLOW, &items(4, 0.2)).await;
    // Every create until the end fails after the client's 4 tries: at the start, and on each
    // phase change (map, reduce) where the reporter tries again.
    world.fake.fail_next(Op::CreateCheckRun, 12, 502, &[]);
    let reporter = world.reporter(ReporterConfig {
        final_attempts: 3,
        ..world.config(Duration::from_secs(60))
    });
    let (outcome, state, _) = world.run(&reporter).await;
    let run = world.only_check_run();
    assert_eq!(run.status, "completed", "{state:?}");
    assert_eq!(run.conclusion.as_deref(), Some("failure"));
    assert_eq!(run.external_id, Some(outcome.job.to_string()));
    assert_eq!(run.annotations.len(), 2);
    assert_eq!(
        world.store.get_job(outcome.job).await.unwrap().check_run_id,
        Some(run.id as i64)
    );
    assert!(state.calls.failed >= 2, "{state:?}");
    world.fake.assert_no_violations();
}
