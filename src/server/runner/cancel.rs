//! Cancelling reaches a job wherever it runs: the request is written to the job's events
//! (`cancel_requested`), a job running here is stopped at once, and every runner watches the
//! events of the jobs it runs for requests written by other instances.

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Runner;
use crate::store::{Exclusive, Holder, Job, JobEvent};
use crate::types::{JobId, JobStatus};

/// What [`Runner::cancel_job`] did.
pub(super) enum CancelOutcome {
    Cancelled,
    Stopping(Option<Holder>),
    AlreadyFinished(JobStatus),
}

impl Runner {
    /// Stops `job` wherever it runs, or marks it cancelled when nothing runs it.
    pub(super) async fn cancel_job(
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
    pub(super) fn signal_local(&self, job: JobId, reason: &str, cleanup: bool) -> bool {
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
    pub(super) async fn finish_cancelled(
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
    pub(super) async fn cancel_locked(
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

    pub(super) async fn remove_worktrees(&self, job: &Job) {
        let ws = self
            .p()
            .engine
            .workspace(std::path::Path::new(&job.repo_path), job.id);
        if let Err(e) = ws.remove_all().await {
            tracing::warn!(job = %job.id, error = %e, "cannot remove the job's worktrees");
        }
    }

    /// Watches the events of the jobs running here for cancel requests from any instance.
    pub(super) async fn watch_cancellations(self, shutdown: CancellationToken) {
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
}
