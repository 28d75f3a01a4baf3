//! Asking for a job to stop from outside it (`prodigy cancel`, the Action's `/prodigy cancel`):
//! a `cancel_requested` event that the process running the job sees within a second, or, when
//! nothing runs it, the job marked `cancelled` under its lock.

use super::{Exclusive, Holder, Job, JobEvent, Store, StoreError};
use crate::types::JobStatus;

/// What [`Store::request_cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    AlreadyFinished(JobStatus),
    /// Nothing was running it: it is `cancelled` now.
    Cancelled,
    /// This holder runs it; it sees the request and stops (the job stays resumable).
    Stopping(Holder),
}

impl Store {
    /// Asks whoever runs `job` to stop (`by` names the asker in the event), or marks it
    /// cancelled when nothing runs it.
    pub async fn request_cancel(
        &self,
        job: &Job,
        reason: &str,
        by: &str,
        holder: &Holder,
    ) -> Result<CancelOutcome, StoreError> {
        if job.status.is_finished() {
            return Ok(CancelOutcome::AlreadyFinished(job.status));
        }
        let request = JobEvent::CancelRequested {
            reason: reason.to_string(),
            cleanup: false,
            by: Some(by.to_string()),
        };
        self.append_outside_event(job.id, &request).await?;
        let marked = self
            .with_job_lock(job.id, holder, async |proof| {
                // Read under the lock: a run may have finished it meanwhile.
                let current = self.get_job(job.id).await?;
                if current.status.is_finished() {
                    return Ok::<_, StoreError>(CancelOutcome::AlreadyFinished(current.status));
                }
                self.set_job_state(proof, JobStatus::Cancelled, current.phase, Some(reason))
                    .await?;
                let cancelled = JobEvent::Cancelled {
                    reason: reason.to_string(),
                };
                self.append_event(proof, &cancelled).await?;
                Ok(CancelOutcome::Cancelled)
            })
            .await?;
        Ok(match marked {
            Exclusive::Performed(outcome) => outcome,
            Exclusive::Held { holder, .. } => CancelOutcome::Stopping(holder),
        })
    }
}
