//! Check runs in `prodigy serve` (issue 6): each job run reports to a check run on the pull
//! request's head commit, and GitHub's "Re-run" and the check run's buttons come back as queued
//! work that the runner resumes under the job lock.
//!
//! - [`CheckRunReporters`]: the runner's [`ReporterFactory`]; one [`CheckRunReporter`] per run
//!   (first runs, resumes, DLQ retries, re-runs, orphans resumed after a restart), created when
//!   the engine names the job, so the check run's "Details" link is the job page with its token.
//! - [`route_check_event`] and [`CheckRerunWork`]: what the webhook handler queues for
//!   `check_run.rerequested`, `check_run.requested_action` and `check_suite.rerequested`
//!   (recorded once per delivery, like every other event). The runner's side is in
//!   `runner/reruns.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::checks::rerun::Trigger;
use crate::checks::{AppCheckRuns, CheckRunReporter, ReporterConfig};
use crate::engine::{Progress, Reporter};
use crate::github::GitHubClient;
use crate::store::{Holder, Store};
use crate::types::{JobId, RepoName};

use super::dispatch::{Route, Work};
use super::replies::JobLink;
use super::runner::{JobContext, ReporterFactory};
use super::webhook::{CheckRunAction, CheckSuiteAction, WebhookEvent};

// ---- reporting ---------------------------------------------------------------------------

/// Gives every job run of the server a check run, as the GitHub App.
#[derive(Clone)]
pub struct CheckRunReporters {
    github: GitHubClient,
    store: Store,
    config: ReporterConfig,
}

impl CheckRunReporters {
    pub fn new(github: GitHubClient, store: Store) -> Self {
        Self::with_config(github, store, ReporterConfig::default())
    }

    /// `config`'s `details_url`, `head_sha` and `cancel` are replaced per run; the rest (the
    /// throttle, the final retries) applies to every run.
    pub fn with_config(github: GitHubClient, store: Store, config: ReporterConfig) -> Self {
        CheckRunReporters {
            github,
            store,
            config,
        }
    }
}

impl ReporterFactory for CheckRunReporters {
    fn reporter(&self, job: &JobContext) -> Arc<dyn Reporter> {
        self.run_reporter(job, &CancellationToken::new()).reporter
    }

    fn run_reporter(&self, job: &JobContext, cancel: &CancellationToken) -> RunReporter {
        let lazy = Arc::new(LazyCheckRun {
            factory: self.clone(),
            ctx: job.clone(),
            cancel: cancel.clone(),
            spawned: Mutex::new(None),
        });
        let finishing = lazy.clone();
        RunReporter {
            reporter: lazy,
            finish: Some(Box::pin(async move {
                let reporter = finishing.spawned.lock().expect("reporter").clone();
                if let Some(r) = reporter {
                    let state = r.finish().await;
                    tracing::debug!(job = ?state.job, check_run = ?state.check_run, calls = ?state.calls, "check run finished");
                }
            })),
        }
    }
}

/// One run's reporter, and what to await once the engine has returned: for a check run, the
/// delivery of its final state (so a shutdown or the next run does not overtake it).
pub struct RunReporter {
    pub reporter: Arc<dyn Reporter>,
    pub finish: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl RunReporter {
    /// A reporter with nothing to wait for.
    pub fn immediate(reporter: Arc<dyn Reporter>) -> Self {
        RunReporter {
            reporter,
            finish: None,
        }
    }

    pub async fn finish(self) {
        if let Some(f) = self.finish {
            f.await;
        }
    }
}

/// Starts the check-run reporter when the engine names the job (`JobStarted`): the job page's
/// token is made from the job id, which a fresh run has only then. A run that never starts a
/// job (the lock was held, nothing to resume) makes no GitHub call at all.
struct LazyCheckRun {
    factory: CheckRunReporters,
    ctx: JobContext,
    cancel: CancellationToken,
    spawned: Mutex<Option<CheckRunReporter>>,
}

impl Reporter for LazyCheckRun {
    fn report(&self, event: &Progress) {
        let mut spawned = self.spawned.lock().expect("reporter");
        if spawned.is_none()
            && let Progress::JobStarted { job, .. } = event
        {
            let f = &self.factory;
            let sink = AppCheckRuns {
                client: f.github.clone(),
                installation: self.ctx.installation,
                repo: self.ctx.repo.clone(),
            };
            let config = ReporterConfig {
                details_url: Some(self.ctx.links.job_url(*job)),
                head_sha: self.ctx.head_sha.as_ref().map(ToString::to_string),
                cancel: Some(self.cancel.clone()),
                ..f.config.clone()
            };
            *spawned = Some(CheckRunReporter::spawn(sink, f.store.clone(), config));
        }
        if let Some(r) = spawned.as_ref() {
            r.report(event);
        }
    }
}

// ---- answers ------------------------------------------------------------------------------

/// A re-run of a complete job found that a fresh run, started after the click, covers it.
pub fn fresh_run_covered(old: JobId, newer: &JobLink, asked_by: &str) -> String {
    format!(
        "@{asked_by} job `{old}` was already run again as job [`{}`]({}) after this request \
         arrived; its check run shows the outcome, so this request started nothing.",
        newer.id, newer.url
    )
}

/// A re-run of a complete job arrived while another trigger is starting its fresh run.
pub fn fresh_run_pending(
    old: JobId,
    holder: &Holder,
    since: DateTime<Utc>,
    asked_by: &str,
) -> String {
    format!(
        "@{asked_by} a new run of job `{old}` is being started by {holder} (since {}) for an \
         earlier request; this request started nothing. Its check run appears on the commit.",
        since.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// A re-run that failed before it could run anything.
pub fn rerun_failed(job: JobId, error: &str, asked_by: &str) -> String {
    format!("@{asked_by} the re-run of job `{job}` failed before it ran: {error}")
}

// ---- re-run requests ---------------------------------------------------------------------

/// A re-run or button press, queued for the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRerunWork {
    pub repo: RepoName,
    pub installation: u64,
    pub trigger: RerunTrigger,
    /// The check run's `external_id` (prodigy's job id); `None` for a check suite, whose jobs
    /// are found by `head_sha`.
    pub job: Option<String>,
    pub head_sha: String,
    pub sender: String,
}

/// [`Trigger`] as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "identifier", rename_all = "snake_case")]
pub enum RerunTrigger {
    CheckRunRerequested,
    CheckSuiteRerequested,
    Button(String),
}

impl RerunTrigger {
    pub fn to_trigger(&self) -> Trigger {
        match self {
            RerunTrigger::CheckRunRerequested => Trigger::CheckRunRerequested,
            RerunTrigger::CheckSuiteRerequested => Trigger::CheckSuiteRerequested,
            RerunTrigger::Button(id) => Trigger::Button(id.clone()),
        }
    }
}

impl CheckRerunWork {
    /// The delivery's event and action, for the deliveries table.
    pub fn event_and_action(&self) -> (&'static str, Option<&'static str>) {
        match self.trigger {
            RerunTrigger::CheckRunRerequested => ("check_run", Some("rerequested")),
            RerunTrigger::Button(_) => ("check_run", Some("requested_action")),
            RerunTrigger::CheckSuiteRerequested => ("check_suite", Some("rerequested")),
        }
    }
}

/// Routes a `check_run` or `check_suite` delivery (the allow-list was checked by the caller).
pub fn route_check_event(event: &WebhookEvent) -> Route {
    let ignore = |why: &str| Route::Ignore(why.to_string());
    let work = match event {
        WebhookEvent::CheckRun(e) => {
            let trigger = match (&e.action, &e.requested_action_identifier) {
                (CheckRunAction::Rerequested, _) => RerunTrigger::CheckRunRerequested,
                (CheckRunAction::RequestedAction, Some(id)) => RerunTrigger::Button(id.clone()),
                (CheckRunAction::RequestedAction, None) => {
                    return ignore("check_run.requested_action without an identifier");
                }
                (other, _) => return ignore(&format!("check_run action {other:?}")),
            };
            // GitHub sends re-runs only to the App that made the run; one without a job id is
            // not prodigy's, and there is no job to name in an answer.
            let Some(job) = &e.external_id else {
                return ignore("check run without an external_id: not a prodigy job");
            };
            let Some(installation) = e.installation_id else {
                return ignore("check_run without an installation: not sent to an App");
            };
            CheckRerunWork {
                repo: e.repo.clone(),
                installation: installation.0,
                trigger,
                job: Some(job.clone()),
                head_sha: e.head_sha.0.clone(),
                sender: e.sender_login.clone(),
            }
        }
        WebhookEvent::CheckSuite(e) => {
            if e.action != CheckSuiteAction::Rerequested {
                return ignore(&format!("check_suite action {:?}", e.action));
            }
            let Some(installation) = e.installation_id else {
                return ignore("check_suite without an installation: not sent to an App");
            };
            CheckRerunWork {
                repo: e.repo.clone(),
                installation: installation.0,
                trigger: RerunTrigger::CheckSuiteRerequested,
                job: None,
                head_sha: e.head_sha.0.clone(),
                sender: e.sender_login.clone(),
            }
        }
        _ => return ignore("not a check event"),
    };
    Route::Queue(Work::CheckRerun(work))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::{CheckRunId, CommitSha, InstallationId};
    use crate::server::webhook::{CheckRunEvent, CheckSuiteEvent};

    fn run(action: CheckRunAction, button: Option<&str>, external: Option<&str>) -> WebhookEvent {
        WebhookEvent::CheckRun(CheckRunEvent {
            action,
            external_id: external.map(str::to_string),
            check_run_id: CheckRunId(9),
            requested_action_identifier: button.map(str::to_string),
            head_sha: CommitSha("b".repeat(40)),
            repo: RepoName::new("octo/repo"),
            installation_id: Some(InstallationId(3)),
            sender_login: "dev".into(),
        })
    }

    #[test]
    fn reruns_and_buttons_are_queued_other_check_events_ignored() {
        let job = "0192f5a0-0000-7000-8000-000000000001";
        let Route::Queue(Work::CheckRerun(w)) =
            route_check_event(&run(CheckRunAction::Rerequested, None, Some(job)))
        else {
            panic!("rerequested is queued")
        };
        assert_eq!(w.trigger, RerunTrigger::CheckRunRerequested);
        assert_eq!(w.job.as_deref(), Some(job));
        assert_eq!(w.installation, 3);
        assert_eq!(w.event_and_action(), ("check_run", Some("rerequested")));
        let Route::Queue(Work::CheckRerun(w)) = route_check_event(&run(
            CheckRunAction::RequestedAction,
            Some("retry_failed"),
            Some(job),
        )) else {
            panic!("a button is queued")
        };
        assert_eq!(
            w.trigger.to_trigger(),
            Trigger::Button("retry_failed".into())
        );
        for ignored in [
            run(CheckRunAction::Created, None, Some(job)),
            run(CheckRunAction::Completed, None, Some(job)),
            run(CheckRunAction::RequestedAction, None, Some(job)),
            run(CheckRunAction::Rerequested, None, None),
        ] {
            assert!(
                matches!(route_check_event(&ignored), Route::Ignore(_)),
                "{ignored:?}"
            );
        }
        let suite = |action| {
            WebhookEvent::CheckSuite(CheckSuiteEvent {
                action,
                head_sha: CommitSha("c".repeat(40)),
                repo: RepoName::new("octo/repo"),
                installation_id: Some(InstallationId(3)),
                sender_login: "dev".into(),
            })
        };
        assert!(matches!(
            route_check_event(&suite(CheckSuiteAction::Rerequested)),
            Route::Queue(Work::CheckRerun(CheckRerunWork { job: None, .. }))
        ));
        assert!(matches!(
            route_check_event(&suite(CheckSuiteAction::Requested)),
            Route::Ignore(_)
        ));
    }

    #[test]
    fn queued_work_round_trips() {
        let w = Work::CheckRerun(CheckRerunWork {
            repo: RepoName::new("octo/repo"),
            installation: 1,
            trigger: RerunTrigger::Button("resume".into()),
            job: Some("j".into()),
            head_sha: "a".repeat(40),
            sender: "dev".into(),
        });
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["type"], "check_rerun");
        assert_eq!(serde_json::from_value::<Work>(v).unwrap(), w);
    }
}
