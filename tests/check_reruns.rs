//! Re-runs from the check run through the library (`checks::rerun::handle` on the real engine):
//! a re-run of a failed job retries it under the lock, reported as a new check run; twenty
//! concurrent deliveries of one click, split over two "instances" (engines with their own store
//! pools), run it exactly once and every other delivery gets an answer. SQLite and PostgreSQL.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prodigy::checks::rerun::{self, RerunOutcome, RerunRequest, Trigger};
use prodigy::checks::{AppCheckRuns, CheckRunReporter, ReporterConfig};
use prodigy::engine::{Engine, NewRun, Rerun, RerunWork, RetryRequest};
use prodigy::github::{GitHubClient, InstallationId};
use prodigy::store::Store;
use prodigy::types::{JobStatus, RepoName};
use serde_json::{Value, json};
use support::fake_github::{self, FakeGitHub, Op};
use support::repo::Repo;
use tokio_util::sync::CancellationToken;

const INSTALLATION: u64 = 55;
const REPO: &str = "octo-org/reruns";

/// Agents record each execution and fail while a flag file for their item exists.
fn workflow(counter: &Path) -> String {
    format!(
        r#"name: rerun-me
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 4
  agent_template:
    - shell: |
        echo "${{item.id}}" >> {dir}/runs.txt
        sleep 0.2
        if [ -f {dir}/fail-${{item.id}} ]; then echo "flaky dependency for ${{item.id}}" >&2; exit 1; fi
        echo ok
reduce:
  - shell: "echo reduce >> {dir}/runs.txt"
"#,
        dir = counter.display()
    )
}

fn engine(store: Store, repo: &Repo, instance: &str, reporter: CheckRunReporter) -> Engine {
    Engine {
        store,
        state_dir: repo.home.join("state"),
        claude_bin: "claude".into(),
        agent: Default::default(),
        api_backoff: Default::default(),
        instance: Some(instance.into()),
        reporter: Arc::new(reporter),
        cancel: CancellationToken::new(),
        agents: support::repo::agents_writing_tmp(),
    }
}

fn runs(counter: &Path) -> Vec<String> {
    std::fs::read_to_string(counter.join("runs.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_reruns_of_a_failed_job_retry_it_once() {
    let mut backends = vec![("sqlite", None)];
    if let Some(db) = support::db::postgres_db().await {
        backends.push(("postgres", Some(db)));
    }
    for (backend, db) in backends {
        let fake = FakeGitHub::start(INSTALLATION, &[REPO]).await;
        let counter = tempfile::tempdir().unwrap();
        let repo = Repo::new(db.as_ref().map(|d| d.url()));
        repo.write("wf.yml", &workflow(counter.path()));
        let items: Vec<Value> = (0..8).map(|i| json!({"id": format!("it-{i}")})).collect();
        repo.write("items.json", &Value::Array(items).to_string());
        repo.commit_all("workflow");
        let sha = repo.git(&["rev-parse", "HEAD"]);
        for i in [1, 4, 6] {
            std::fs::write(counter.path().join(format!("fail-it-{i}")), "").unwrap();
        }
        let client = GitHubClient::new(
            &fake.base_url(),
            fake_github::test_app_auth(),
            fake_github::test_retry_policy(),
        )
        .unwrap();
        let reporter = || {
            let sha = sha.clone();
            let sink = AppCheckRuns {
                client: client.clone(),
                installation: InstallationId(INSTALLATION),
                repo: RepoName::new(REPO),
            };
            move |store: Store| {
                CheckRunReporter::spawn(
                    sink,
                    store,
                    ReporterConfig {
                        head_sha: Some(sha.clone()),
                        min_interval: Duration::from_secs(60),
                        ..ReporterConfig::default()
                    },
                )
            }
        };
        // Each instance has its own store pool, as two server processes would.
        let store_a = Store::open(&repo.db_url).await.unwrap();
        let store_b = Store::open(&repo.db_url).await.unwrap();

        // The first run: 3 of 8 items fail, the job fails with them in the DLQ.
        let first = reporter()(store_a.clone());
        let outcome = engine(store_a.clone(), &repo, "a", first.clone())
            .run(&NewRun {
                repo: repo.path.clone(),
                workflow_path: repo.path.join("wf.yml"),
                max_parallel: None,
                repo_name: Some(RepoName::new(REPO)),
                pr_number: Some(prodigy::types::PrNumber(3)),
                head_sha: Some(prodigy::types::CommitSha(sha.clone())),
                base_commit: None,
                workflow_text: None,
            })
            .await
            .unwrap();
        let first_state = first.finish().await;
        assert_eq!(outcome.status, JobStatus::Failed, "{backend}");
        assert_eq!(outcome.counts.dlq, 3, "{backend}");
        let first_run = first_state.check_run.expect("a check run");
        // A check suite names the commit: the job is found by it.
        let by_sha = store_b
            .find_jobs_by_head_sha(&RepoName::new(REPO), &sha)
            .await
            .unwrap();
        assert_eq!(
            by_sha.iter().map(|j| j.id).collect::<Vec<_>>(),
            [outcome.job]
        );

        // The dependency is fixed; twenty deliveries of one "Re-run" click arrive at once.
        for i in [1, 4, 6] {
            std::fs::remove_file(counter.path().join(format!("fail-it-{i}"))).unwrap();
        }
        let requested_at = Utc::now();
        let deliver = |n: usize| {
            let store = if n.is_multiple_of(2) {
                &store_a
            } else {
                &store_b
            };
            let reporter = reporter()(store.clone());
            let engine = engine(
                store.clone(),
                &repo,
                if n.is_multiple_of(2) { "a" } else { "b" },
                reporter.clone(),
            );
            let request = RerunRequest {
                trigger: if n.is_multiple_of(3) {
                    Trigger::Button("retry_failed".into())
                } else {
                    Trigger::CheckRunRerequested
                },
                job: Some(outcome.job.to_string()),
                requested_at,
                sender: format!("user{n}"),
            };
            tokio::spawn(async move {
                let result = rerun::handle(&engine, &request).await;
                let state = reporter.finish().await;
                (result.expect("handle answers"), state)
            })
        };
        // Ten are handled at once; the other ten were queued behind them and are handled after
        // the run they arrived during has finished.
        let mut results = Vec::new();
        for t in (0..10).map(deliver).collect::<Vec<_>>() {
            results.push(t.await.unwrap());
        }
        for t in (10..20).map(deliver).collect::<Vec<_>>() {
            results.push(t.await.unwrap());
        }
        let mut ran = 0;
        let mut answers = Vec::new();
        for (result, state) in results {
            match result {
                RerunOutcome::Ran(o) => {
                    ran += 1;
                    assert_eq!(o.status, JobStatus::Succeeded, "{backend}: {o:?}");
                    assert_eq!(o.counts.dlq, 0, "{backend}");
                    assert_eq!(
                        state.conclusion.map(|c| format!("{c:?}")).as_deref(),
                        Some("Success")
                    );
                }
                RerunOutcome::Answered(answer) => {
                    let text = prodigy::server::replies::rerun_answer(&answer, "user");
                    assert!(
                        state.check_run.is_none(),
                        "{backend}: a loser made a check run"
                    );
                    answers.push(text);
                }
                other => panic!("{backend}: unexpected {other:?}"),
            }
        }
        assert_eq!(
            ran, 1,
            "{backend}: exactly one delivery runs the job; answers: {answers:#?}"
        );
        assert_eq!(answers.len(), 19, "{backend}");
        let held = answers
            .iter()
            .filter(|a| a.contains("is already running on server instance"))
            .count();
        let covered = answers
            .iter()
            .filter(|a| a.contains("was already re-run when this request arrived"))
            .count();
        assert_eq!(held + covered, 19, "{backend}: {answers:#?}");
        assert!(
            covered >= 10,
            "{backend}: the late ten are covered by the finished run"
        );
        // Each failed item ran once more, the others not again; reduce ran once per run.
        let r = runs(counter.path());
        for i in 0..8 {
            let expected = if [1, 4, 6].contains(&i) { 2 } else { 1 };
            let n = r.iter().filter(|l| **l == format!("it-{i}")).count();
            assert_eq!(n, expected, "{backend}: it-{i} ran {n} times: {r:?}");
        }
        // Two check runs on the commit: the failed first run and the successful re-run.
        let check_runs = fake.check_runs_for(REPO, &sha);
        let mut conclusions: Vec<(u64, Option<String>)> = check_runs
            .iter()
            .map(|r| (r.id, r.conclusion.clone()))
            .collect();
        conclusions.sort();
        assert_eq!(conclusions.len(), 2, "{backend}: {conclusions:?}");
        assert_eq!(conclusions[0], (first_run.0, Some("failure".into())));
        assert_eq!(conclusions[1].1.as_deref(), Some("success"));
        let job = store_a.get_job(outcome.job).await.unwrap();
        assert_eq!(job.check_run_id, Some(conclusions[1].0 as i64), "{backend}");
        // 21 reporters, two store pools, one client: one installation token.
        assert_eq!(fake.count(Op::CreateAccessToken), 1, "{backend}");
        fake.assert_no_violations();

        // The engine itself refuses a covered trigger under the lock (the decision above was made
        // on a read without it, which a run may finish right after).
        let direct = engine(store_b.clone(), &repo, "b", reporter()(store_b.clone()));
        match direct
            .rerun(
                outcome.job,
                &RerunWork::Retry(RetryRequest::default()),
                requested_at,
            )
            .await
            .unwrap()
        {
            Rerun::Covered { finished_at } => assert!(finished_at >= requested_at),
            other => panic!("{backend}: expected covered, got {other:?}"),
        }

        // The check-run id write is fenced: an epoch that no longer holds the lock is refused.
        let stale = store_a
            .set_check_run_id_at_epoch(outcome.job, job.lease_epoch - 1, 1)
            .await;
        assert!(
            matches!(stale, Err(prodigy::store::StoreError::Fenced { .. })),
            "{backend}: {stale:?}"
        );

        // A later click, after that run finished, finds the job complete: a fresh job is due.
        let late = RerunRequest {
            trigger: Trigger::CheckRunRerequested,
            job: Some(outcome.job.to_string()),
            requested_at: Utc::now(),
            sender: "late".into(),
        };
        let silent = engine(store_a.clone(), &repo, "a", reporter()(store_a.clone()));
        match rerun::handle(&silent, &late).await.unwrap() {
            RerunOutcome::RunFresh { job, head_sha, .. } => {
                assert_eq!(job, outcome.job);
                assert_eq!(head_sha.as_deref(), Some(sha.as_str()));
            }
            other => panic!("{backend}: expected a fresh run, got {other:?}"),
        }
        eprintln!(
            "{backend}: 20 re-run deliveries -> 1 ran, {held} answered 'already running', \
             {covered} answered 'already covered'"
        );
    }
}

/// "Retry failed" on a finished job: the retry's check run reports the map phase with live
/// counts (not "Finishing" with the old ones), then reduce, which runs again on the updated
/// branch and counts every merged item. SQLite and PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_failed_reports_its_phases_and_runs_reduce_again() {
    let mut backends = vec![("sqlite", None)];
    if let Some(db) = support::db::postgres_db().await {
        backends.push(("postgres", Some(db)));
    }
    for (backend, db) in backends {
        let fake = FakeGitHub::start(INSTALLATION, &[REPO]).await;
        let counter = tempfile::tempdir().unwrap();
        let repo = Repo::new(db.as_ref().map(|d| d.url()));
        let wf =
            workflow(counter.path()).replace("echo reduce >>", "echo reduce ${map.successful} >>");
        repo.write("wf.yml", &wf);
        let items: Vec<Value> = (0..8).map(|i| json!({"id": format!("it-{i}")})).collect();
        repo.write("items.json", &Value::Array(items).to_string());
        repo.commit_all("workflow");
        let sha = repo.git(&["rev-parse", "HEAD"]);
        for i in [2, 5] {
            std::fs::write(counter.path().join(format!("fail-it-{i}")), "").unwrap();
        }
        let client = GitHubClient::new(
            &fake.base_url(),
            fake_github::test_app_auth(),
            fake_github::test_retry_policy(),
        )
        .unwrap();
        let store = Store::open(&repo.db_url).await.unwrap();
        let reporter = || {
            CheckRunReporter::spawn(
                AppCheckRuns {
                    client: client.clone(),
                    installation: InstallationId(INSTALLATION),
                    repo: RepoName::new(REPO),
                },
                store.clone(),
                ReporterConfig {
                    head_sha: Some(sha.clone()),
                    // Every change is sent: the test reads the whole sequence.
                    min_interval: Duration::ZERO,
                    ..ReporterConfig::default()
                },
            )
        };
        let first = reporter();
        let outcome = engine(store.clone(), &repo, "a", first.clone())
            .run(&NewRun {
                repo: repo.path.clone(),
                workflow_path: repo.path.join("wf.yml"),
                max_parallel: None,
                repo_name: Some(RepoName::new(REPO)),
                pr_number: Some(prodigy::types::PrNumber(3)),
                head_sha: Some(prodigy::types::CommitSha(sha.clone())),
                base_commit: None,
                workflow_text: None,
            })
            .await
            .unwrap();
        first.finish().await;
        assert_eq!(outcome.status, JobStatus::Failed, "{backend}");
        assert!(runs(counter.path()).contains(&"reduce 6".to_string()));

        for i in [2, 5] {
            std::fs::remove_file(counter.path().join(format!("fail-it-{i}"))).unwrap();
        }
        let before = fake.world().requests.len();
        let retry = reporter();
        let request = RerunRequest {
            trigger: Trigger::Button("retry_failed".into()),
            job: Some(outcome.job.to_string()),
            requested_at: Utc::now(),
            sender: "maintainer".into(),
        };
        let answer = rerun::handle(&engine(store.clone(), &repo, "a", retry.clone()), &request)
            .await
            .unwrap();
        let state = retry.finish().await;
        match answer {
            RerunOutcome::Ran(o) => {
                assert_eq!(o.status, JobStatus::Succeeded, "{backend}: {o:?}");
                assert_eq!(o.counts.merged, 8, "{backend}");
            }
            other => panic!("{backend}: expected a run, got {other:?}"),
        }
        // Reduce ran again on the branch with all eight items merged.
        let r = runs(counter.path());
        let reduces: Vec<&String> = r.iter().filter(|l| l.starts_with("reduce")).collect();
        assert_eq!(reduces, ["reduce 6", "reduce 8"], "{backend}: {r:?}");

        // The retry's check run, request by request: created in the map phase, live counts while
        // the two items run, reduce, then the completion. Never "Finishing".
        let id = state.check_run.expect("the retry's check run").0;
        let titles: Vec<String> = fake.world().requests[before..]
            .iter()
            .filter(|q| {
                q.op == Op::CreateCheckRun
                    || (q.op == Op::UpdateCheckRun
                        && q.path.ends_with(&format!("/check-runs/{id}")))
            })
            .filter_map(|q| {
                q.body.as_ref()?["output"]["title"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(
            titles.first().map(String::as_str),
            Some("Map: 6 of 8 items succeeded, 2 failed, 0 to go"),
            "{backend}: the retry's check run starts in the map phase with the current counts: {titles:#?}"
        );
        for live in [
            "Map: 6 of 8 items succeeded, 0 failed, 2 to go",
            "Map: 8 of 8 items succeeded, 0 failed, 0 to go",
        ] {
            assert!(
                titles.iter().any(|t| t == live),
                "{backend}: no {live:?} in {titles:#?}"
            );
        }
        assert!(
            titles
                .iter()
                .any(|t| t.starts_with("Reduce running (8 of 8")),
            "{backend}: {titles:#?}"
        );
        // ("Finishing" may flash between reduce and the completion, as on any run.)
        assert!(
            !titles
                .iter()
                .take_while(|t| !t.starts_with("Reduce"))
                .any(|t| t.contains("Finishing")),
            "{backend}: {titles:#?}"
        );
        let runs_now = fake.check_runs_for(REPO, &sha);
        let retry_run = runs_now.iter().find(|r| r.id == id).unwrap();
        assert_eq!(
            retry_run.conclusion.as_deref(),
            Some("success"),
            "{backend}"
        );
        fake.assert_no_violations();
    }
}
