//! The runner: claims queued requests and acts on them, at most `max_jobs` jobs at once.
//!
//! Several `prodigy serve` processes on one PostgreSQL database share the queue: a process
//! claims a request only when it has a free job slot, and the claim itself skips rows another
//! process holds (`FOR UPDATE SKIP LOCKED`), so no request is handled twice. Jobs take the job
//! lock as always, so no job runs twice either. A job is durable once it started: a request is
//! complete when its jobs started and its replies were posted; if the process dies, the next
//! start resumes its running jobs (lock free, status `running`).
//!
//! Cancelling reaches a job wherever it runs: the request is written to the job's events
//! (`cancel_requested`), and every runner watches the events of the jobs it runs.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::engine::{
    DlqMode, Engine, NewRun, Progress, Reporter, ResumeRequest, Resumed, RetryRequest, RunOutcome,
};
use crate::github::{CommentId, GitHubClient, InstallationId, PrNumber, Reaction};
use crate::store::{Exclusive, Holder, Job, JobEvent, Request, Store, StoreError};
use crate::types::{ItemKey, JobId, JobStatus, RepoName};

use super::check_runs::RunReporter;
use super::commands::{Command, JobRef, parse_comment};
use super::dispatch::{CommentWork, PullRequestWork, Work};
use super::pages::PageLinks;
use super::replies::{self, CancelReply, JobLink, StatusRow, WorkflowStart};
use super::repo_config::{CONFIG_PATH, RepoConfig};
use super::repos::RepoCache;

mod reruns;

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
/// ([`super::CheckRunReporters`]); [`LogReporters`] only logs.
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

/// The runner's parts.
pub struct RunnerParts {
    pub store: Store,
    /// The base engine: its reporter is replaced per job and its cancel token is the parent of
    /// every job's (cancelling it stops all jobs, leaving them resumable).
    pub engine: Engine,
    pub github: GitHubClient,
    pub repos: RepoCache,
    pub links: PageLinks,
    pub reporters: Arc<dyn ReporterFactory>,
    pub instance: String,
    pub app_slug: Option<String>,
    pub max_jobs: usize,
    pub poll: Duration,
    pub wake: Arc<Notify>,
}

/// A job this process runs.
struct RunningJob {
    cancel: CancellationToken,
    /// Remove the job's worktrees once it stopped (the pull request was closed).
    cleanup: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<String>>>,
    /// Cancel requests older than this were for an earlier run: when this run was asked for,
    /// so one written while the engine created the job and took its lock still counts.
    started: DateTime<Utc>,
    /// The last event seen by the watcher.
    seen_seq: i64,
}

#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    parts: RunnerParts,
    slots: Arc<Semaphore>,
    /// Requests handled at once (comments are claimed even when every job slot is taken).
    handlers: Arc<Semaphore>,
    running: Mutex<HashMap<JobId, RunningJob>>,
    /// One per pull request: see [`PrTurn`].
    pr_locks: Mutex<HashMap<(RepoName, u64), PrLock>>,
}

type PrLock = Arc<tokio::sync::Mutex<()>>;
type PrGuard = tokio::sync::OwnedMutexGuard<()>;

/// A place in one pull request's line. Requests that cancel and start a pull request's jobs
/// (a push, a close, `/prodigy run`) are handled one at a time per pull request in this process,
/// in the order they joined: otherwise a push right after `opened` lists the pull request's jobs
/// before the first handler created its job, and that job is never superseded (or a close
/// misses a job still starting). Tokio's mutex serves waiters in the order they first polled,
/// so joining polls once.
enum PrTurn {
    Mine(PrGuard),
    Waiting(Pin<Box<dyn Future<Output = PrGuard> + Send>>),
}

impl PrTurn {
    async fn join(lock: PrLock) -> PrTurn {
        let mut waiting = Box::pin(lock.lock_owned());
        match std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await {
            Poll::Ready(guard) => PrTurn::Mine(guard),
            Poll::Pending => PrTurn::Waiting(waiting),
        }
    }

    /// A request that must wait gives its job slot back meanwhile, so the one it waits for can
    /// start its jobs.
    async fn wait(self, slots: &mut Slots) -> PrGuard {
        match self {
            PrTurn::Mine(guard) => guard,
            PrTurn::Waiting(waiting) => {
                slots.spare = None;
                waiting.await
            }
        }
    }
}

async fn wait_turn(turn: Option<PrTurn>, slots: &mut Slots) -> Option<PrGuard> {
    match turn {
        Some(turn) => Some(turn.wait(slots).await),
        None => None,
    }
}

/// What a job run tells its starter: it started (the job id is known), or it ended before
/// (contention, nothing to do, an error).
enum Started {
    Running(JobId),
    Ended(anyhow::Result<Resumed>),
    /// A re-run that started nothing: answered, or asking for a fresh job.
    Rerun(crate::checks::rerun::RerunOutcome),
}

enum JobAction {
    Run(Box<NewRun>),
    Resume(JobId, ResumeRequest),
    Retry(JobId, RetryRequest),
    /// A check-run re-run or button: `checks::rerun::handle`, under the job lock.
    Rerun(Box<crate::checks::rerun::RerunRequest>),
}

/// The job slot of the request being handled; further jobs of the same request wait for more.
struct Slots {
    spare: Option<OwnedSemaphorePermit>,
    all: Arc<Semaphore>,
}

impl Slots {
    async fn take(&mut self) -> OwnedSemaphorePermit {
        match self.spare.take() {
            Some(p) => p,
            None => self
                .all
                .clone()
                .acquire_owned()
                .await
                .expect("the job semaphore is never closed"),
        }
    }
}

impl Runner {
    pub fn new(parts: RunnerParts) -> Self {
        let slots = Arc::new(Semaphore::new(parts.max_jobs.max(1)));
        Runner {
            inner: Arc::new(Inner {
                handlers: Arc::new(Semaphore::new(parts.max_jobs.max(1) + MAX_COMMENT_HANDLERS)),
                parts,
                slots,
                running: Mutex::default(),
                pr_locks: Mutex::default(),
            }),
        }
    }

    /// The job slots: a slot is taken for each running job (and each request being handled).
    pub fn slots(&self) -> Arc<Semaphore> {
        self.inner.slots.clone()
    }

    fn p(&self) -> &RunnerParts {
        &self.inner.parts
    }

    /// Runs until `shutdown` is cancelled: resumes orphaned jobs, then claims requests.
    pub async fn run(self, shutdown: CancellationToken) {
        let requeued = self.p().store.requeue_claimed(&self.p().instance).await;
        match requeued {
            Ok(n) if n > 0 => tracing::info!(n, "requeued requests this instance had claimed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot requeue this instance's claimed requests"),
        }
        self.resume_orphans().await;
        let watcher = tokio::spawn(self.clone().watch_cancellations(shutdown.clone()));
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // With a free job slot any request may be claimed; without one, only those that
            // need none, so `/prodigy status` is answered while long jobs run, and pull requests
            // wait for this instance or go to another one with room.
            let slot = self.inner.slots.clone().try_acquire_owned().ok();
            let handler = self.inner.handlers.clone().try_acquire_owned().ok();
            let claimed = match (&slot, &handler) {
                (_, None) => Ok(None),
                (Some(_), Some(_)) => self.p().store.claim_request(&self.p().instance).await,
                (None, Some(_)) => self.claim_slotless().await,
            };
            match claimed {
                Ok(Some(request)) => {
                    let this = self.clone();
                    let handler = handler.expect("claimed only with a handler slot");
                    // Joined here, in the order requests are claimed, not when the task runs.
                    let turn = self.pr_turn(&request).await;
                    tokio::spawn(async move {
                        this.handle(request, slot, turn).await;
                        drop(handler);
                    });
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot claim a request; retrying"),
            }
            drop(slot);
            drop(handler);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.p().wake.notified() => {}
                _ = tokio::time::sleep(self.p().poll) => {}
            }
        }
        watcher.abort();
    }

    /// Claims a request that needs no job slot to be handled: comments and closed pull requests.
    async fn claim_slotless(&self) -> crate::store::Result<Option<Request>> {
        for kind in SLOTLESS_KINDS {
            if let Some(r) = self
                .p()
                .store
                .claim_request_of_kind(&self.p().instance, kind)
                .await?
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Jobs left `running` by a runner that died: resume those whose lock is free.
    async fn resume_orphans(&self) {
        let jobs = match self.p().store.pr_jobs_with_status(JobStatus::Running).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list running jobs to resume");
                return;
            }
        };
        for job in jobs {
            if self.is_running_here(job.id) || !PathBuf::from(&job.repo_path).exists() {
                continue;
            }
            let Some(ctx) = self.context_of(&job).await else {
                continue;
            };
            let permit = self
                .inner
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let action = JobAction::Resume(
                job.id,
                ResumeRequest {
                    dlq: DlqMode::default(),
                    max_parallel: None,
                    budget: None,
                },
            );
            let started = self.start_job(action, ctx, permit);
            match started.await {
                Ok(Started::Running(id)) => tracing::info!(job = %id, "resumed an orphaned job"),
                Ok(Started::Ended(Ok(Resumed::Held { holder, .. }))) => {
                    tracing::debug!(job = %job.id, %holder, "orphan candidate is held elsewhere")
                }
                Ok(Started::Ended(other)) => {
                    tracing::info!(job = %job.id, outcome = ?other.map(|_| ()), "orphan not resumed")
                }
                Ok(Started::Rerun(_)) | Err(_) => {}
            }
        }
    }

    /// The reporter context of a stored job, from the `server_context` event recorded when
    /// it started here; None for jobs the server did not start.
    async fn context_of(&self, job: &Job) -> Option<JobContext> {
        let (installation, pass_env) = self.server_context(job.id).await?;
        Some(JobContext {
            repo: job.repo.clone()?,
            pr_number: job.pr_number.map(|n| n.0),
            head_sha: job.head_sha.clone(),
            installation: InstallationId(installation),
            workflow: job.workflow_path.clone(),
            links: self.p().links.clone(),
            pass_env,
        })
    }

    /// The installation and `pass_env` recorded when `job` first started here; None for jobs
    /// the server did not start.
    async fn server_context(&self, job: JobId) -> Option<(u64, Option<Vec<String>>)> {
        let events = self.p().store.events(job, 0, 1000).await.ok()?;
        events.iter().find_map(|e| match e.event() {
            Some(JobEvent::ServerContext {
                installation,
                pass_env,
                ..
            }) => Some((installation, pass_env)),
            _ => None,
        })
    }

    /// The `pass_env` recorded when `job` first started here (None: all the operator passes).
    pub(super) async fn recorded_pass_env(&self, job: JobId) -> Option<Vec<String>> {
        self.server_context(job).await?.1
    }

    fn is_running_here(&self, job: JobId) -> bool {
        self.inner
            .running
            .lock()
            .expect("running map")
            .contains_key(&job)
    }

    async fn handle(
        self,
        request: Request,
        permit: Option<OwnedSemaphorePermit>,
        turn: Option<PrTurn>,
    ) {
        let span = tracing::info_span!(
            "request",
            id = request.id,
            kind = %request.kind,
            delivery = %request.delivery_id.as_deref().unwrap_or("-")
        );
        let mut slots = Slots {
            spare: permit,
            all: self.inner.slots.clone(),
        };
        let result = async {
            let work: Work = serde_json::from_value(request.payload.clone())
                .with_context(|| format!("request {} has an unreadable payload", request.id))?;
            match work {
                Work::PullRequest(w) => {
                    let _turn = wait_turn(turn, &mut slots).await;
                    self.on_pull_request(w, &mut slots).await
                }
                Work::PullRequestClosed { repo, number } => {
                    let _turn = wait_turn(turn, &mut slots).await;
                    self.on_closed(&repo, number).await
                }
                Work::Comment(w) => self.on_comment(w, &mut slots).await,
                Work::CheckRerun(w) => {
                    self.on_check_rerun(w, request.enqueued_at, &mut slots)
                        .await
                }
            }
        }
        .instrument(span)
        .await;
        let (ok, message) = match result {
            Ok(message) => (true, message),
            Err(e) => {
                tracing::warn!(request = request.id, error = %format!("{e:#}"), "request failed");
                (false, format!("{e:#}"))
            }
        };
        if let Err(e) = self
            .p()
            .store
            .complete_request(request.id, ok, Some(&message))
            .await
        {
            tracing::warn!(request = request.id, error = %e, "cannot mark the request complete");
        }
    }

    /// The line of `repo#number`'s requests.
    fn pr_lock(&self, repo: &RepoName, number: u64) -> PrLock {
        let mut locks = self.inner.pr_locks.lock().expect("pull request locks");
        // A lock only the map holds guards nothing: forget it, so the map stays small.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry((repo.clone(), number)).or_default().clone()
    }

    /// A place in its pull request's line for a push or a close (None for other requests).
    async fn pr_turn(&self, request: &Request) -> Option<PrTurn> {
        let (repo, number) = match serde_json::from_value(request.payload.clone()).ok()? {
            Work::PullRequest(w) => (w.repo, w.number),
            Work::PullRequestClosed { repo, number } => (repo, number),
            Work::Comment(_) | Work::CheckRerun(_) => return None,
        };
        Some(PrTurn::join(self.pr_lock(&repo, number)).await)
    }

    /// A token for fetching `repo` only (never the whole installation).
    async fn token_for_git(
        &self,
        installation: InstallationId,
        repo: &RepoName,
    ) -> anyhow::Result<Option<secrecy::SecretString>> {
        if !self.p().repos.needs_token() {
            return Ok(None);
        }
        Ok(Some(
            self.p()
                .github
                .repo_token(installation, repo)
                .await
                .context("cannot get an installation token to fetch the repository")?,
        ))
    }

    async fn comment(&self, installation: InstallationId, repo: &RepoName, pr: u64, body: &str) {
        if let Err(e) = self
            .p()
            .github
            .create_comment(installation, repo, PrNumber(pr), body)
            .await
        {
            tracing::warn!(%repo, pr, error = %e, "cannot post a comment");
        }
    }

    fn link(&self, job: JobId) -> JobLink {
        JobLink {
            id: job,
            url: self.p().links.job_url(job),
        }
    }

    // ---- pull requests -------------------------------------------------------------------

    async fn on_pull_request(
        &self,
        w: PullRequestWork,
        slots: &mut Slots,
    ) -> anyhow::Result<String> {
        let installation = InstallationId(w.installation);
        if w.is_fork {
            if w.action != "synchronize" {
                self.comment(
                    installation,
                    &w.repo,
                    w.number,
                    &replies::fork_not_run_automatically(),
                )
                .await;
            }
            return Ok("fork pull request: not run automatically".into());
        }
        // A new push makes the older jobs of this pull request pointless.
        let reason = format!("superseded by {}", short(&w.head_sha));
        for job in self.jobs_of_pr(&w.repo, w.number).await? {
            if job.head_sha.as_deref() != Some(&w.head_sha) && !job.status.is_finished() {
                self.cancel_job(&job, &reason, true).await?;
            }
        }
        let config = match self
            .load_config(installation, &w.repo, w.number, &w.head_sha)
            .await?
        {
            Ok(config) => config,
            Err(reply) => {
                // No configuration is how a repository says "not using prodigy": stay quiet.
                tracing::info!(repo = %w.repo, pr = w.number, "{reply}");
                return Ok(format!("not run: no usable {CONFIG_PATH}"));
            }
        };
        if !config.auto_run {
            return Ok("auto_run is false: waiting for `/prodigy run`".into());
        }
        // A workflow that already runs or ran well at this commit (a reopened pull request,
        // the same push announced twice) is not started again.
        let existing = self.jobs_of_pr(&w.repo, w.number).await?;
        let workflows: Vec<String> = config
            .workflows
            .iter()
            .filter(|wf| {
                !existing.iter().any(|j| {
                    j.head_sha.as_deref() == Some(w.head_sha.as_str())
                        && &j.workflow_path == *wf
                        && matches!(
                            j.status,
                            JobStatus::Pending | JobStatus::Running | JobStatus::Succeeded
                        )
                })
            })
            .cloned()
            .collect();
        if workflows.is_empty() {
            return Ok(format!(
                "every workflow already ran at {}",
                short(&w.head_sha)
            ));
        }
        let starts = self
            .start_workflows(
                installation,
                &w.repo,
                w.number,
                &w.head_sha,
                &config,
                &workflows,
                slots,
            )
            .await;
        self.comment(
            installation,
            &w.repo,
            w.number,
            &replies::jobs_started(&w.head_sha, &starts),
        )
        .await;
        Ok(format!("{} workflows started", starts.len()))
    }

    async fn on_closed(&self, repo: &RepoName, number: u64) -> anyhow::Result<String> {
        let mut n = 0;
        for job in self.jobs_of_pr(repo, number).await? {
            if job.status.is_finished() {
                continue;
            }
            self.cancel_job(&job, "the pull request was closed", true)
                .await?;
            n += 1;
        }
        Ok(format!("closed: {n} jobs cancelled"))
    }

    async fn jobs_of_pr(&self, repo: &RepoName, number: u64) -> anyhow::Result<Vec<Job>> {
        let n = i64::try_from(number).context("pull request number out of range")?;
        Ok(self.p().store.find_jobs_by_pr(repo, n).await?)
    }

    /// The repository's configuration at `sha` (fetching it first). `Ok(Err(reply))`: there is
    /// none usable, with the reply that says so.
    async fn load_config(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        pr: u64,
        sha: &str,
    ) -> anyhow::Result<Result<RepoConfig, String>> {
        let token = self.token_for_git(installation, repo).await?;
        self.p()
            .repos
            .prepare(repo, Some(PrNumber(pr)), sha, token)
            .await?;
        let Some(text) = self.p().repos.read_file(repo, sha, CONFIG_PATH).await? else {
            return Ok(Err(replies::no_config(sha, CONFIG_PATH)));
        };
        let offered = &self.p().engine.agents.env.pass;
        Ok(RepoConfig::parse(&text)
            .and_then(|c| c.check_pass_env(offered).map(|()| c))
            .map_err(|e| replies::bad_config(sha, &e.to_string())))
    }

    /// Why new jobs of `repo` may not start today (the operator's daily cost cap), if so.
    async fn repo_over_daily_cap(&self, repo: &RepoName) -> Option<String> {
        let cap = self.p().engine.agent.repo_daily_cost_usd?;
        let since = crate::engine::agent::utc_midnight(chrono::Utc::now());
        match self.p().store.repo_cost_since(repo, since).await {
            Ok(spent) => crate::engine::agent::repo_daily_spent(repo.as_str(), spent, cap),
            Err(e) => Some(format!(
                "cannot read what {repo} spent today, which the daily cost cap needs: {e}"
            )),
        }
    }

    /// Starts each workflow as a job at `sha` and waits until each has started (or ended).
    #[allow(clippy::too_many_arguments)]
    async fn start_workflows(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        pr: u64,
        sha: &str,
        config: &RepoConfig,
        workflows: &[String],
        slots: &mut Slots,
    ) -> Vec<WorkflowStart> {
        let mut waiting = Vec::new();
        let mut out = Vec::new();
        let over_cap = self.repo_over_daily_cap(repo).await;
        for workflow in workflows {
            if let Some(why) = &over_cap {
                out.push(WorkflowStart::Failed {
                    workflow: workflow.clone(),
                    error: format!(
                        "not started: {why}. `/prodigy run` starts it once the cap allows"
                    ),
                });
                continue;
            }
            let text = match self.p().repos.read_file(repo, sha, workflow).await {
                Ok(Some(text)) => text,
                Ok(None) => {
                    out.push(WorkflowStart::Failed {
                        workflow: workflow.clone(),
                        error: format!("`{workflow}` does not exist at `{}`", short(sha)),
                    });
                    continue;
                }
                Err(e) => {
                    out.push(WorkflowStart::Failed {
                        workflow: workflow.clone(),
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            let run = NewRun {
                repo: self.p().repos.path(repo),
                workflow_path: PathBuf::from(workflow),
                max_parallel: config.max_parallel,
                repo_name: Some(repo.clone()),
                pr_number: Some(PrNumber(pr)),
                head_sha: Some(crate::types::CommitSha(sha.to_string())),
                base_commit: Some(sha.to_string()),
                workflow_text: Some(text),
            };
            let ctx = JobContext {
                repo: repo.clone(),
                pr_number: Some(pr),
                head_sha: Some(crate::types::CommitSha(sha.to_string())),
                installation,
                workflow: workflow.clone(),
                links: self.p().links.clone(),
                pass_env: config.pass_env.clone(),
            };
            let permit = slots.take().await;
            let rx = self.start_job(JobAction::Run(Box::new(run)), ctx, permit);
            waiting.push((workflow.clone(), rx));
        }
        for (workflow, rx) in waiting {
            out.push(match rx.await {
                Ok(Started::Running(id)) => WorkflowStart::Started {
                    workflow,
                    job: self.link(id),
                },
                Ok(Started::Ended(Ok(Resumed::Ran(o)))) => WorkflowStart::Ended {
                    workflow,
                    job: Some(self.link(o.job)),
                    status: o.status.to_string(),
                },
                Ok(Started::Ended(Ok(_))) => WorkflowStart::Ended {
                    workflow,
                    job: None,
                    status: "did not run".into(),
                },
                Ok(Started::Ended(Err(e))) => WorkflowStart::Failed {
                    workflow,
                    error: format!("{e:#}"),
                },
                Ok(Started::Rerun(_)) => WorkflowStart::Failed {
                    workflow,
                    error: "the job task answered as a re-run".into(),
                },
                Err(_) => WorkflowStart::Failed {
                    workflow,
                    error: "the job task stopped unexpectedly".into(),
                },
            });
        }
        out
    }

    /// Runs `action` in its own task, holding `permit` until it ends. The receiver answers as
    /// soon as the job started (or ended without starting).
    fn start_job(
        &self,
        action: JobAction,
        ctx: JobContext,
        permit: OwnedSemaphorePermit,
    ) -> oneshot::Receiver<Started> {
        let (outer_tx, outer_rx) = oneshot::channel();
        let (tx, rx) = oneshot::channel();
        // Records the job's installation before the starter hears of it, so even a job whose
        // first reply was never posted can be resumed with its reporter after a crash.
        let store = self.p().store.clone();
        let context = JobEvent::ServerContext {
            installation: ctx.installation.0,
            pr: ctx.pr_number,
            workflow: ctx.workflow.clone(),
            instance: self.p().instance.clone(),
            pass_env: ctx.pass_env.clone(),
        };
        tokio::spawn(async move {
            let Ok(started) = rx.await else { return };
            if let Started::Running(job) = &started
                && let Err(e) = store.append_outside_event(*job, &context).await
            {
                tracing::warn!(%job, error = %e, "cannot record the job's server context");
            }
            let _ = outer_tx.send(started);
        });
        let this = self.clone();
        let asked = Utc::now();
        // Every log line of the job names it (the request's span adds the delivery id).
        let span = tracing::info_span!("job", repo = %ctx.repo, pr = ctx.pr_number, workflow = %ctx.workflow);
        let task = async move {
            let shutdown = this.p().engine.cancel.clone();
            let cancel = shutdown.child_token();
            let run_reporter = this.p().reporters.run_reporter(&ctx, &cancel);
            let tracker = Arc::new(Tracker {
                inner: run_reporter.reporter.clone(),
                started: Mutex::new(Some(tx)),
                job: Mutex::new(None),
                runner: Arc::downgrade(&this.inner),
                cancel: cancel.clone(),
                cleanup: Arc::new(AtomicBool::new(false)),
                reason: Arc::default(),
                asked,
            });
            let mut engine = this.p().engine.clone();
            if let Some(names) = &ctx.pass_env {
                engine.agents.env.pass.retain(|n| names.contains(n));
            }
            engine.reporter = tracker.clone();
            engine.cancel = cancel.clone();
            let result = match action {
                JobAction::Run(run) => engine.run(&run).await.map(Resumed::Ran),
                JobAction::Resume(id, req) => engine.resume(id, &req).await,
                JobAction::Retry(id, req) => engine.retry(id, &req).await,
                JobAction::Rerun(req) => match reruns::handle(&engine, &req).await {
                    Ok(Ok(resumed)) => Ok(resumed),
                    Ok(Err(not_run)) => {
                        if let Some(tx) = tracker.started.lock().expect("tracker").take() {
                            let _ = tx.send(Started::Rerun(not_run));
                        }
                        // Nothing ran: nothing below applies (no job registered here).
                        drop(permit);
                        return;
                    }
                    Err(e) => Err(e),
                },
            };
            let job = *tracker.job.lock().expect("tracker");
            if let Some(job) = job {
                this.inner.running.lock().expect("running map").remove(&job);
                if shutdown.is_cancelled() {
                    if let Err(e) = this.mark_orphaned(job).await {
                        tracing::warn!(%job, error = %format!("{e:#}"), "cannot leave the job for the next start");
                    }
                } else if cancel.is_cancelled() {
                    let reason = tracker
                        .reason
                        .lock()
                        .expect("reason")
                        .clone()
                        .unwrap_or_else(|| "cancelled".into());
                    let cleanup = tracker.cleanup.load(Ordering::SeqCst);
                    if let Err(e) = this.finish_cancelled(job, &reason, cleanup).await {
                        tracing::warn!(%job, error = %format!("{e:#}"), "cannot record the cancellation");
                    }
                }
            }
            if let Err(e) = &result {
                tracing::warn!(job = ?job, error = %format!("{e:#}"), "job run failed");
            }
            // After the status is final (cancelled, orphaned), and before the slot is free.
            run_reporter.finish().await;
            if let Some(tx) = tracker.started.lock().expect("tracker").take() {
                let _ = tx.send(Started::Ended(result));
            }
            drop(permit);
        };
        tokio::spawn(task.instrument(span));
        outer_rx
    }

    /// The server is shutting down and stopped this job: mark it `running` again without a
    /// holder, which is what the next start resumes.
    async fn mark_orphaned(&self, job: JobId) -> anyhow::Result<()> {
        let store = &self.p().store;
        // Held: another instance took the job over; it is not orphaned.
        let _ = store
            .with_job_lock(job, &self.holder(), async |proof| {
                let current = store.get_job(job).await?;
                if current.status == JobStatus::Failed {
                    store
                        .set_job_state(
                            proof,
                            JobStatus::Running,
                            current.phase,
                            Some("interrupted by a server shutdown; resumed when a server starts"),
                        )
                        .await?;
                }
                anyhow::Ok(())
            })
            .await?;
        Ok(())
    }

    /// This instance, as a lock holder.
    pub(super) fn holder(&self) -> Holder {
        Holder::this_process(Some(self.p().instance.clone()))
    }

    // ---- cancelling ----------------------------------------------------------------------

    /// Stops `job` wherever it runs, or marks it cancelled when nothing runs it.
    async fn cancel_job(
        &self,
        job: &Job,
        reason: &str,
        cleanup: bool,
    ) -> anyhow::Result<CancelOutcome> {
        if job.status.is_finished() {
            return Ok(CancelOutcome::AlreadyFinished(job.status));
        }
        self.p()
            .store
            .append_outside_event(
                job.id,
                &JobEvent::CancelRequested {
                    reason: reason.to_string(),
                    cleanup,
                    by: Some(self.p().instance.clone()),
                },
            )
            .await?;
        if self.signal_local(job.id, reason, cleanup) {
            return Ok(CancelOutcome::Stopping(None));
        }
        match self
            .cancel_locked(job.id, reason, cleanup, |s| s.is_finished())
            .await?
        {
            Exclusive::Performed(()) => Ok(CancelOutcome::Cancelled),
            // Another instance runs it; its watcher sees the request within a poll interval.
            Exclusive::Held { holder, .. } => Ok(CancelOutcome::Stopping(Some(holder))),
        }
    }

    /// Cancels a job running in this process; false if it does not run here.
    fn signal_local(&self, job: JobId, reason: &str, cleanup: bool) -> bool {
        let running = self.inner.running.lock().expect("running map");
        let Some(r) = running.get(&job) else {
            return false;
        };
        *r.reason.lock().expect("reason") = Some(reason.to_string());
        if cleanup {
            r.cleanup.store(true, Ordering::SeqCst);
        }
        r.cancel.cancel();
        true
    }

    /// After a cancelled run stopped: record the status (it ended `failed`, resumable) and clean up.
    async fn finish_cancelled(
        &self,
        job: JobId,
        reason: &str,
        cleanup: bool,
    ) -> anyhow::Result<()> {
        // Held: another holder took the job over and records its own outcome.
        let _ = self
            .cancel_locked(job, reason, cleanup, |s| s == JobStatus::Succeeded)
            .await?;
        Ok(())
    }

    /// Under the job's lock: records the job as cancelled (unless `stands(status)` says its
    /// status is final) and removes its worktrees when asked.
    async fn cancel_locked(
        &self,
        job: JobId,
        reason: &str,
        cleanup: bool,
        stands: fn(JobStatus) -> bool,
    ) -> anyhow::Result<Exclusive<()>> {
        let store = &self.p().store;
        store
            .with_job_lock(job, &self.holder(), async |proof| {
                let current = store.get_job(job).await?;
                if !stands(current.status) {
                    store
                        .set_job_state(proof, JobStatus::Cancelled, current.phase, Some(reason))
                        .await?;
                    store
                        .append_event(
                            proof,
                            &JobEvent::Cancelled {
                                reason: reason.to_string(),
                            },
                        )
                        .await?;
                }
                if cleanup {
                    self.remove_worktrees(&current).await;
                }
                anyhow::Ok(())
            })
            .await
    }

    async fn remove_worktrees(&self, job: &Job) {
        let ws = self
            .p()
            .engine
            .workspace(std::path::Path::new(&job.repo_path), job.id);
        if let Err(e) = ws.remove_all().await {
            tracing::warn!(job = %job.id, error = %e, "cannot remove the job's worktrees");
        }
    }

    /// Watches the events of the jobs running here for cancel requests from any instance.
    async fn watch_cancellations(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.p().poll) => {}
            }
            let jobs: Vec<(JobId, i64, DateTime<Utc>)> = {
                let running = self.inner.running.lock().expect("running map");
                running
                    .iter()
                    .filter(|(_, r)| !r.cancel.is_cancelled())
                    .map(|(id, r)| (*id, r.seen_seq, r.started))
                    .collect()
            };
            for (job, seen, started) in jobs {
                let events = match self.p().store.events(job, seen, 1000).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::debug!(%job, error = %e, "cannot read events");
                        continue;
                    }
                };
                let last = events.last().map(|e| e.seq).unwrap_or(seen);
                let request = events
                    .iter()
                    .rev()
                    .filter(|e| e.at >= started)
                    .find_map(|e| match e.event() {
                        Some(JobEvent::CancelRequested {
                            reason, cleanup, ..
                        }) => Some((reason, cleanup)),
                        _ => None,
                    });
                if let Some((reason, cleanup)) = request {
                    self.signal_local(job, &reason, cleanup);
                }
                if let Some(r) = self
                    .inner
                    .running
                    .lock()
                    .expect("running map")
                    .get_mut(&job)
                {
                    r.seen_seq = last;
                }
            }
        }
    }

    // ---- comments ------------------------------------------------------------------------

    async fn on_comment(&self, w: CommentWork, slots: &mut Slots) -> anyhow::Result<String> {
        let installation = InstallationId(w.installation);
        let github = &self.p().github;
        if let Err(e) = github
            .create_reaction(
                installation,
                &w.repo,
                CommentId(w.comment_id),
                Reaction::Eyes,
            )
            .await
        {
            tracing::warn!(error = %e, "cannot add the eyes reaction");
        }
        let mut permission = None;
        let mut replied = 0;
        for line in parse_comment(&w.body, self.p().app_slug.as_deref()) {
            let reply = match &line.result {
                Err(e) => replies::command_error(&line.line, e),
                Ok(command) => {
                    if command.needs_write_permission() {
                        let p = match permission {
                            Some(p) => p,
                            None => {
                                let p = github
                                    .collaborator_permission(installation, &w.repo, &w.author)
                                    .await
                                    .context("cannot check the commenter's permission")?;
                                permission = Some(p);
                                p
                            }
                        };
                        let allowed = if command.needs_maintain_permission() {
                            p.can_maintain()
                        } else {
                            p.can_write()
                        };
                        if !allowed {
                            self.comment(
                                installation,
                                &w.repo,
                                w.number,
                                &replies::permission_refused(&w.author, command),
                            )
                            .await;
                            replied += 1;
                            continue;
                        }
                    }
                    match self.execute(command, &w, slots).await {
                        Ok(text) => text,
                        Err(e) => replies::command_failed(command.name(), &format!("{e:#}")),
                    }
                }
            };
            self.comment(installation, &w.repo, w.number, &reply).await;
            replied += 1;
        }
        Ok(format!("{replied} commands answered"))
    }

    async fn execute(
        &self,
        command: &Command,
        w: &CommentWork,
        slots: &mut Slots,
    ) -> anyhow::Result<String> {
        let installation = InstallationId(w.installation);
        match command {
            Command::Help => Ok(replies::help(self.p().app_slug.as_deref())),
            Command::Status => self.status(&w.repo, w.number).await,
            Command::Run { workflow } => {
                let pr = self
                    .p()
                    .github
                    .pull_request(installation, &w.repo, PrNumber(w.number))
                    .await
                    .context("cannot read the pull request")?;
                let sha = pr.head_sha.0;
                let config = match self
                    .load_config(installation, &w.repo, w.number, &sha)
                    .await?
                {
                    Ok(c) => c,
                    Err(reply) => return Ok(reply),
                };
                let selected = config.select(workflow.as_deref());
                if selected.is_empty() {
                    return Ok(replies::unknown_workflow(
                        workflow.as_deref().unwrap_or(""),
                        &config.workflows,
                    ));
                }
                // Over the daily cap nothing starts, so nothing is superseded either.
                if let Some(why) = self.repo_over_daily_cap(&w.repo).await {
                    let refused: Vec<WorkflowStart> = selected
                        .iter()
                        .map(|workflow| WorkflowStart::Failed {
                            workflow: workflow.clone(),
                            error: format!("not started: {why}"),
                        })
                        .collect();
                    return Ok(replies::jobs_started(&sha, &refused));
                }
                // An explicit command supersedes older jobs as a push does.
                let turn = PrTurn::join(self.pr_lock(&w.repo, w.number)).await;
                let _turn = turn.wait(slots).await;
                let reason = format!("superseded by `/prodigy run` on {}", short(&sha));
                for job in self.jobs_of_pr(&w.repo, w.number).await? {
                    let same_workflow = selected.contains(&job.workflow_path);
                    if same_workflow && !job.status.is_finished() {
                        self.cancel_job(&job, &reason, false).await?;
                    }
                }
                let starts = self
                    .start_workflows(
                        installation,
                        &w.repo,
                        w.number,
                        &sha,
                        &config,
                        &selected,
                        slots,
                    )
                    .await;
                Ok(replies::jobs_started(&sha, &starts))
            }
            Command::Resume { job, .. } | Command::Retry { job, .. } | Command::Cancel { job } => {
                let job = match self.resolve(&w.repo, w.number, job.as_ref()).await? {
                    Ok(job) => job,
                    Err(reply) => return Ok(reply),
                };
                let link = self.link(job.id);
                if let Command::Cancel { .. } = command {
                    let outcome = self
                        .cancel_job(&job, &format!("cancelled by @{}", w.author), false)
                        .await?;
                    return Ok(replies::cancel(
                        &link,
                        match &outcome {
                            CancelOutcome::Cancelled => CancelReply::Cancelled,
                            CancelOutcome::Stopping(h) => {
                                CancelReply::Stopping { holder: h.as_ref() }
                            }
                            CancelOutcome::AlreadyFinished(s) => CancelReply::AlreadyFinished(*s),
                        },
                    ));
                }
                let retry = matches!(command, Command::Retry { .. });
                let action = match command {
                    Command::Retry { item, .. } => {
                        let items: Vec<ItemKey> = item.iter().map(|i| ItemKey(i.clone())).collect();
                        if let Some(key) = items.first() {
                            let dlq = self.p().store.dlq(Some(job.id)).await?;
                            if !dlq.iter().any(|d| &d.key == key) {
                                return Ok(replies::not_in_dlq(&link, &key.0));
                            }
                        }
                        JobAction::Retry(
                            job.id,
                            RetryRequest {
                                items,
                                ..Default::default()
                            },
                        )
                    }
                    Command::Resume { budget, .. } => JobAction::Resume(
                        job.id,
                        ResumeRequest {
                            dlq: DlqMode::default(),
                            max_parallel: None,
                            budget: budget.map(|usd| crate::workflow::Budget {
                                max_cost_usd: Some(usd.get()),
                                ..Default::default()
                            }),
                        },
                    ),
                    _ => unreachable!("cancel returned above"),
                };
                // The clone may be gone (a new disk, a cleaned cache): fetch the job's commit.
                if let Some(sha) = &job.head_sha {
                    let token = self.token_for_git(installation, &w.repo).await?;
                    self.p()
                        .repos
                        .prepare(&w.repo, Some(PrNumber(w.number)), sha, token)
                        .await?;
                }
                let ctx = JobContext {
                    repo: w.repo.clone(),
                    pr_number: Some(w.number),
                    head_sha: job.head_sha.clone(),
                    installation,
                    workflow: job.workflow_path.clone(),
                    links: self.p().links.clone(),
                    pass_env: self.recorded_pass_env(job.id).await,
                };
                // A job held by a running resume is answered at once, without waiting for a
                // job slot of this instance.
                if let Some((holder, since)) = self.p().store.lock_holder(job.id).await? {
                    return Ok(replies::resume_held(&link, &holder, since));
                }
                let permit = slots.take().await;
                let started = self.start_job(action, ctx, permit).await;
                Ok(match started {
                    Ok(Started::Running(_)) => replies::resuming(&link, retry),
                    Ok(Started::Ended(Ok(Resumed::Held { holder, since }))) => {
                        replies::resume_held(&link, &holder, since)
                    }
                    Ok(Started::Ended(Ok(Resumed::AlreadyFinished { status, dlq }))) => {
                        replies::already_finished(&link, status, dlq)
                    }
                    Ok(Started::Ended(Ok(Resumed::Ran(o)))) => ended_reply(&link, &o),
                    Ok(Started::Ended(Err(e))) => {
                        replies::command_failed(command.name(), &format!("{e:#}"))
                    }
                    Ok(Started::Rerun(_)) | Err(_) => {
                        replies::command_failed(command.name(), "the job task stopped")
                    }
                })
            }
        }
    }

    /// The job a command names (`job=` prefix, of this repository), or the pull request's
    /// latest. `Ok(Err(reply))` when there is none.
    async fn resolve(
        &self,
        repo: &RepoName,
        pr: u64,
        wanted: Option<&JobRef>,
    ) -> anyhow::Result<Result<Job, String>> {
        let Some(wanted) = wanted else {
            let latest = self.jobs_of_pr(repo, pr).await?.into_iter().next();
            return Ok(latest.ok_or_else(|| replies::no_such_job(None)));
        };
        match self.p().store.find_job(wanted.as_str()).await {
            // A job of another repository is not this comment's to control.
            Ok(job) if job.repo.as_ref() == Some(repo) => Ok(Ok(job)),
            Ok(_) | Err(StoreError::JobNotFound(_)) | Err(StoreError::AmbiguousJob { .. }) => {
                Ok(Err(replies::no_such_job(Some(wanted.as_str()))))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn status(&self, repo: &RepoName, pr: u64) -> anyhow::Result<String> {
        let jobs = self.jobs_of_pr(repo, pr).await?;
        let mut counts = Vec::with_capacity(jobs.len());
        for job in &jobs {
            counts.push(self.p().store.item_counts(job.id).await?);
        }
        let rows: Vec<StatusRow<'_>> = jobs
            .iter()
            .zip(counts)
            .map(|(job, counts)| StatusRow {
                job: self.link(job.id),
                workflow: &job.workflow_path,
                head_sha: job.head_sha.as_deref(),
                status: job.status,
                phase: job.phase,
                counts,
            })
            .collect();
        Ok(replies::status(&rows))
    }
}

fn ended_reply(link: &JobLink, o: &RunOutcome) -> String {
    replies::resume_ended(link, o.status, &o.counts)
}

/// What [`Runner::cancel_job`] did.
enum CancelOutcome {
    Cancelled,
    Stopping(Option<Holder>),
    AlreadyFinished(JobStatus),
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// Queue kinds (see `Work::kind`) handled without a job slot: answering a comment or cancelling
/// a closed pull request's jobs must not wait for long jobs to end. A comment that starts a job
/// waits for a slot then.
const SLOTLESS_KINDS: [&str; 2] = ["comment", "pull_request_closed"];

/// Comment requests handled at once beyond the job slots.
const MAX_COMMENT_HANDLERS: usize = 4;

/// Wraps a job's reporter: learns the job id when it starts, registers the job as running here,
/// and tells the starter.
struct Tracker {
    inner: Arc<dyn Reporter>,
    started: Mutex<Option<oneshot::Sender<Started>>>,
    job: Mutex<Option<JobId>>,
    runner: std::sync::Weak<Inner>,
    cancel: CancellationToken,
    cleanup: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<String>>>,
    /// When the runner was asked to start this run.
    asked: DateTime<Utc>,
}

impl Reporter for Tracker {
    fn report(&self, event: &Progress) {
        if let Progress::JobFinished { counts, error } = event {
            let job = self.job.lock().expect("tracker").map(|j| j.to_string());
            tracing::info!(job = %job.unwrap_or_default(), items = counts.total, merged = counts.merged, failed = counts.failed, dlq = counts.dlq, error = %error.as_deref().unwrap_or("-"), "job finished");
        }
        if let Progress::JobStarted { job, resumed, .. } = event {
            tracing::info!(%job, resumed, "job started");
            *self.job.lock().expect("tracker") = Some(*job);
            if let Some(runner) = self.runner.upgrade() {
                runner.running.lock().expect("running map").insert(
                    *job,
                    RunningJob {
                        cancel: self.cancel.clone(),
                        cleanup: self.cleanup.clone(),
                        reason: self.reason.clone(),
                        started: self.asked,
                        seen_seq: 0,
                    },
                );
            }
            if let Some(tx) = self.started.lock().expect("tracker").take() {
                let _ = tx.send(Started::Running(*job));
            }
        }
        self.inner.report(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_job_keeps_the_pass_env_its_first_run_recorded() {
        let stored = |data: serde_json::Value| crate::store::Event {
            seq: 1,
            at: Utc::now(),
            kind: "server_context".into(),
            data,
        };
        let pass_env = |data| match stored(data).event() {
            Some(JobEvent::ServerContext { pass_env, .. }) => pass_env,
            other => panic!("not a server context: {other:?}"),
        };
        let context =
            serde_json::json!({"installation": 1, "pr": 2, "workflow": "w.yml", "instance": "i"});
        let mut with = context.clone();
        with["pass_env"] = serde_json::json!(["ANTHROPIC_API_KEY"]);
        assert_eq!(pass_env(with), Some(vec!["ANTHROPIC_API_KEY".to_string()]));
        // Recorded before the key existed, or without one: all the operator passes.
        assert_eq!(pass_env(context.clone()), None);
        let mut null = context;
        null["pass_env"] = serde_json::Value::Null;
        assert_eq!(pass_env(null), None);
    }
}
