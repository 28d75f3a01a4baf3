//! Claiming requests and what decides their order: the pull request's line ([`PrTurn`]), the
//! kinds claimed without a job slot, and jobs left `running` by a runner that died (orphans),
//! resumed at start with the reporter context recorded when they first started.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use crate::engine::{DlqMode, ResumeRequest, Resumed};
use crate::github::InstallationId;
use crate::store::{Job, JobEvent, Request};
use crate::types::{JobId, JobStatus, RepoName};

use super::{JobAction, PrGuard, PrLock, Runner, Slots, Started};
use crate::server::dispatch::Work;
use crate::server::reporting::JobContext;

/// A place in one pull request's line. Requests that cancel and start a pull request's jobs
/// (a push, a close, `/prodigy run`) are handled one at a time per pull request in this process,
/// in the order they joined: otherwise a push right after `opened` lists the pull request's jobs
/// before the first handler created its job, and that job is never superseded (or a close
/// misses a job still starting). Tokio's mutex serves waiters in the order they first polled,
/// so joining polls once.
pub(super) enum PrTurn {
    Mine(PrGuard),
    Waiting(Pin<Box<dyn Future<Output = PrGuard> + Send>>),
}

impl PrTurn {
    pub(super) async fn join(lock: PrLock) -> PrTurn {
        let mut waiting = Box::pin(lock.lock_owned());
        match std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await {
            Poll::Ready(guard) => PrTurn::Mine(guard),
            Poll::Pending => PrTurn::Waiting(waiting),
        }
    }

    /// A request that must wait gives its job slot back meanwhile, so the one it waits for can
    /// start its jobs.
    pub(super) async fn wait(self, slots: &mut Slots) -> PrGuard {
        match self {
            PrTurn::Mine(guard) => guard,
            PrTurn::Waiting(waiting) => {
                slots.spare = None;
                waiting.await
            }
        }
    }
}

pub(super) async fn wait_turn(turn: Option<PrTurn>, slots: &mut Slots) -> Option<PrGuard> {
    match turn {
        Some(turn) => Some(turn.wait(slots).await),
        None => None,
    }
}

impl Runner {
    /// Claims a request that needs no job slot to be handled: comments and closed pull requests.
    pub(super) async fn claim_slotless(&self) -> crate::store::Result<Option<Request>> {
        for kind in SLOTLESS_KINDS {
            if let Some(r) = self
                .p()
                .store
                .claim_request_of_kind(&self.p().instance, kind, &self.p().requests)
                .await?
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Jobs left `running` by a runner that died: resume those whose lock is free.
    pub(super) async fn resume_orphans(&self) {
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
    pub(super) async fn context_of(&self, job: &Job) -> Option<JobContext> {
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
    pub(super) async fn server_context(&self, job: JobId) -> Option<(u64, Option<Vec<String>>)> {
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

    pub(super) fn is_running_here(&self, job: JobId) -> bool {
        self.inner
            .running
            .lock()
            .expect("running map")
            .contains_key(&job)
    }

    /// The line of `repo#number`'s requests.
    pub(super) fn pr_lock(&self, repo: &RepoName, number: u64) -> PrLock {
        let mut locks = self.inner.pr_locks.lock().expect("pull request locks");
        // A lock only the map holds guards nothing: forget it, so the map stays small.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry((repo.clone(), number)).or_default().clone()
    }

    /// A place in its pull request's line for a push or a close (None for other requests).
    pub(super) async fn pr_turn(&self, request: &Request) -> Option<PrTurn> {
        let (repo, number) = match serde_json::from_value(request.payload.clone()).ok()? {
            Work::PullRequest(w) => (w.repo, w.number),
            Work::PullRequestClosed { repo, number } => (repo, number),
            Work::Comment(_) | Work::CheckRerun(_) => return None,
        };
        Some(PrTurn::join(self.pr_lock(&repo, number)).await)
    }
}

/// Queue kinds (see `Work::kind`) handled without a job slot: answering a comment or cancelling
/// a closed pull request's jobs must not wait for long jobs to end. A comment that starts a job
/// waits for a slot then.
pub(super) const SLOTLESS_KINDS: [&str; 2] = ["comment", "pull_request_closed"];

/// Comment requests handled at once beyond the job slots.
pub(super) const MAX_COMMENT_HANDLERS: usize = 4;

#[cfg(test)]
mod tests {
    use crate::store::JobEvent;
    use chrono::Utc;

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
