//! How each job run of the server reports its progress: [`ReporterFactory`] builds one
//! [`RunReporter`] per run from the run's [`JobContext`]. `prodigy serve` uses
//! [`CheckRunReporters`] (a check run on the pull request's head commit per run: first runs,
//! resumes, DLQ retries, re-runs, orphans resumed after a restart, created when the engine names
//! the job, so the check run's "Details" link is the job page with its token); [`LogReporters`]
//! only logs.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::checks::{AppCheckRuns, CheckRunReporter, ReporterConfig};
use crate::engine::{Progress, Reporter};
use crate::github::{GitHubClient, InstallationId};
use crate::store::Store;
use crate::types::RepoName;

use super::pages::PageLinks;

/// What a per-job reporter is told about the job it reports on.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub repo: RepoName,
    pub pr_number: Option<u64>,
    pub head_sha: Option<crate::types::CommitSha>,
    pub installation: InstallationId,
    /// The workflow file, as configured.
    pub workflow: String,
    /// Mints the job page's link (the check run's `details_url`) once the job id is known
    /// (`Progress::JobStarted`).
    pub links: PageLinks,
    /// The repository configuration's `pass_env`: which of the operator's passed variables
    /// this job's agents get (None: all of them).
    pub pass_env: Option<Vec<String>>,
}

/// Builds the reporter of one job run: `prodigy serve` uses check runs
/// ([`CheckRunReporters`]); [`LogReporters`] only logs.
pub trait ReporterFactory: Send + Sync {
    fn reporter(&self, job: &JobContext) -> Arc<dyn Reporter>;

    /// The reporter of one run, told the run's cancel token, with what the runner awaits once
    /// the engine returned (the check run's final state). Default: `reporter`, nothing to await.
    fn run_reporter(&self, job: &JobContext, _cancel: &CancellationToken) -> RunReporter {
        RunReporter::immediate(self.reporter(job))
    }
}

/// Logs each transition with the job's repository and pull request.
pub struct LogReporters;

impl ReporterFactory for LogReporters {
    fn reporter(&self, job: &JobContext) -> Arc<dyn Reporter> {
        Arc::new(LogReporter(job.clone()))
    }
}

struct LogReporter(JobContext);

impl Reporter for LogReporter {
    fn report(&self, event: &Progress) {
        tracing::info!(repo = %self.0.repo, pr = ?self.0.pr_number, workflow = %self.0.workflow, ?event, "job progress");
    }
}

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
