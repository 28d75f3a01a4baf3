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
//!
//! Here: the [`Runner`], its run loop and the handling of one request. The rest, by concern:
//! `queue` (claiming, the pull request's line, orphans), `jobs` (the job task and its slot),
//! `cancel`, `pull_requests`, `comments` (the commands), `reruns` (check-run re-runs) and
//! `stale` (check runs a dead run left in progress).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::engine::Engine;
use crate::github::{GitHubClient, InstallationId, PrNumber};
use crate::store::{Holder, Request, RequestEnd, RequestPolicy, Store};
use crate::types::{JobId, RepoName};

use super::dispatch::Work;
use super::pages::PageLinks;
use super::replies::JobLink;
use super::reporting::ReporterFactory;
use super::repos::RepoCache;

mod cancel;
mod comments;
mod jobs;
mod leases;
mod pull_requests;
mod queue;
mod reruns;
mod stale;
mod workers;

use cancel::CancelOutcome;
use jobs::{JobAction, Slots, Started};
use leases::{Failure, RequestLeases, classify};
use queue::{MAX_COMMENT_HANDLERS, PrTurn, wait_turn};

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
    /// `--workers`: agents at once on another replica's job (None: no claim loop here).
    pub workers: Option<usize>,
    /// The repositories this server acts on: the only ones whose jobs its claim loop serves.
    pub allow_repos: Vec<RepoName>,
    /// Claims' leases, attempts and backoff.
    pub requests: RequestPolicy,
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
    /// The claims of the requests being handled here, kept alive.
    leases: Arc<RequestLeases>,
    /// One per pull request: see [`PrTurn`].
    pr_locks: Mutex<HashMap<(RepoName, u64), PrLock>>,
    /// `--workers` over HTTPS: the tokens git pushes and fetches job refs with.
    push_tokens: Option<Arc<workers::PushTokens>>,
}

type PrLock = Arc<tokio::sync::Mutex<()>>;
type PrGuard = tokio::sync::OwnedMutexGuard<()>;

impl Runner {
    pub fn new(parts: RunnerParts) -> Self {
        let slots = Arc::new(Semaphore::new(parts.max_jobs.max(1)));
        let push_tokens =
            workers::push_tokens(&parts.github, &parts.repos, parts.workers.is_some());
        let leases = RequestLeases::start(
            parts.store.clone(),
            parts.instance.clone(),
            parts.requests.lease,
        );
        Runner {
            inner: Arc::new(Inner {
                push_tokens,
                leases,
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
        self.close_stale_check_runs().await;
        tracing::info!(instance = %self.p().instance, "runner ready: claiming requests");
        let watcher = tokio::spawn(self.clone().watch_cancellations(shutdown.clone()));
        let claims = self
            .p()
            .workers
            .map(|n| tokio::spawn(self.clone().work_on_others(n, shutdown.clone())));
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
                (Some(_), Some(_)) => {
                    let p = self.p();
                    p.store.claim_request(&p.instance, &p.requests).await
                }
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
        if let Some(claims) = claims {
            // It gives back the items it still runs, so the other replicas take them at once.
            let _ = claims.await;
        }
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
        let lost = self.inner.leases.hold(&request);
        let work = async {
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
        .instrument(span);
        let result = tokio::select! {
            r = work => r,
            // The claim is lost: another instance may be handling the request now.
            _ = lost.cancelled() => return,
        };
        self.inner.leases.release(&request);
        self.finish(&request, result).await;
    }

    /// Records how a request ended: done, failed for good, or queued again after a transient
    /// error while it has attempts left.
    async fn finish(&self, request: &Request, result: anyhow::Result<String>) {
        let policy = &self.p().requests;
        let text = match &result {
            Ok(message) => message.clone(),
            Err(e) => format!("{e:#}"),
        };
        let failure = result.as_ref().err().map(classify);
        let gave_up;
        let end = match failure {
            None => RequestEnd::Done { message: &text },
            Some(Failure::Permanent) => {
                tracing::warn!(request = request.id, error = %text, "request failed");
                crate::metrics::request_end("failed", "permanent");
                RequestEnd::Failed { reason: &text }
            }
            Some(Failure::Transient(reason)) if request.attempts < policy.max_attempts => {
                let after = policy.backoff_after(request.attempts);
                tracing::warn!(
                    request = request.id, attempt = request.attempts, error = %text,
                    retry_in_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                    "request failed on a transient error; retrying later"
                );
                crate::metrics::request_end("retried", reason);
                RequestEnd::Retry {
                    after,
                    error: &text,
                }
            }
            Some(Failure::Transient(reason)) => {
                gave_up = format!(
                    "gave up after {} attempts; the last: {text}",
                    request.attempts
                );
                tracing::warn!(request = request.id, error = %gave_up, "request failed");
                crate::metrics::request_end("failed", reason);
                RequestEnd::Failed { reason: &gave_up }
            }
        };
        match self.p().store.finish_request(request, end).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                request = request.id,
                "the request was taken back by another instance; its end here is not recorded"
            ),
            Err(e) => {
                tracing::warn!(request = request.id, error = %e, "cannot record how the request ended")
            }
        }
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

    /// This instance, as a lock holder.
    pub(super) fn holder(&self) -> Holder {
        Holder::this_process(Some(self.p().instance.clone()))
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}
