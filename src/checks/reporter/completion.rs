//! The end of a run: the completion built from the job's recorded state (with annotations in
//! batches) and delivered with retries, creating the check run completed if it never started.

use tokio_util::sync::CancellationToken;

use crate::checks::render::{self, Face, FinalInput, WorkflowFacts};
use crate::checks::sink::CheckRunSink;
use crate::github::{
    CheckConclusion, CheckRunId, CheckRunOutput, CheckRunUpdate, CheckStatus, NewCheckRun,
};
use crate::store::{Attempt, DlqItem, ItemCounts, Job, JobUsage, Store};
use crate::types::JobId;

use super::Task;

impl<S: CheckRunSink> Task<S> {
    pub(super) async fn finalize(&mut self) {
        if self.finalized {
            return;
        }
        self.finalized = true;
        let Some(started) = self.started else { return };
        if self.refused() {
            return;
        }
        let updates = match self.final_updates(started.job).await {
            Ok(u) => u,
            Err(e) => {
                self.note_error("reading the final state", &e, false);
                vec![unreadable_final_state(started.job, &e)]
            }
        };
        let mut updates = updates.into_iter();
        let completion = updates.next().expect("a completion update");
        let delivered = match self.check_run {
            Some(id) => {
                self.final_request(FinalRequest::Update(id, &completion))
                    .await
            }
            None => {
                let Some((job, _)) = self.read_job(started.job).await else {
                    return;
                };
                let Some(run) = self.completed_check_run(&job, &completion) else {
                    return;
                };
                self.final_request(FinalRequest::Create(&run)).await
            }
        };
        if !delivered {
            return;
        }
        self.record_delivered(&completion);
        if let Some(id) = self.check_run
            && let Ok(stored) = i64::try_from(id.0)
            && let Err(e) = self.store.check_run_completed(started.job, stored).await
        {
            // Left open in the store, a later run of the job would close it again.
            tracing::warn!(job = %started.job, check_run = id.0, error = %e, "could not record the check run as completed");
        }
        let Some(id) = self.check_run else { return };
        for update in updates {
            if !self.final_request(FinalRequest::Update(id, &update)).await {
                return;
            }
            self.record_delivered(&update);
        }
    }

    fn record_delivered(&self, update: &CheckRunUpdate) {
        let mut s = self.state();
        if let Some(c) = update.conclusion {
            s.conclusion = Some(c);
        }
        s.annotations += update.output.as_ref().map_or(0, |o| o.annotations.len());
    }

    async fn final_updates(&self, job_id: JobId) -> anyhow::Result<Vec<CheckRunUpdate>> {
        let record = FinalRecord::load(&self.store, job_id).await?;
        let cancelled = self
            .config
            .cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled);
        Ok(render::completion_updates(
            &record.input(cancelled, self.config.face),
        ))
    }

    /// The check run created already completed (creating it at the start failed).
    fn completed_check_run(&self, job: &Job, completion: &CheckRunUpdate) -> Option<NewCheckRun> {
        let output = completion.output.clone()?;
        let mut run = self.new_check_run(job, output)?;
        run.status = Some(CheckStatus::Completed);
        run.conclusion = completion.conclusion;
        run.actions = completion.actions.clone().unwrap_or_default();
        Some(run)
    }

    /// Sends one final request, up to `final_attempts` times.
    async fn final_request(&mut self, request: FinalRequest<'_>) -> bool {
        let attempts = self.config.final_attempts.max(1);
        for attempt in 1..=attempts {
            self.state().calls.final_updates += 1;
            let result = match request {
                FinalRequest::Create(run) => self.sink.create(run).await.map(Some),
                FinalRequest::Update(id, update) => {
                    self.sink.update(id, update).await.map(|()| None)
                }
            };
            match result {
                Ok(created) => {
                    if let Some(id) = created {
                        self.adopt(id).await;
                    }
                    return true;
                }
                Err(e) => {
                    self.note_error("final update", &e, true);
                    if self.refused() {
                        break;
                    }
                    if attempt < attempts {
                        tokio::time::sleep(self.config.final_retry_delay).await;
                    }
                }
            }
        }
        tracing::error!("check run: the final state could not be delivered; it stays as it was");
        false
    }
}

/// A finished run's recorded state, as the final report is made from it (the check run's
/// completion here; the Action's step summary and annotations too).
#[derive(Debug, Clone)]
pub struct FinalRecord {
    pub job: Job,
    pub facts: WorkflowFacts,
    pub counts: ItemCounts,
    pub dlq: Vec<DlqItem>,
    pub attempts: Vec<Attempt>,
    pub usage: JobUsage,
}

impl FinalRecord {
    pub async fn load(store: &Store, job: JobId) -> anyhow::Result<FinalRecord> {
        let job = store.get_job(job).await?;
        let counts = store.item_counts(job.id).await?;
        let dlq = store.dlq(Some(job.id)).await?;
        let attempts = store.job_attempts(job.id).await?;
        let usage = store.job_usage(job.id).await?;
        let facts = WorkflowFacts::from_job(&job);
        Ok(FinalRecord {
            job,
            facts,
            counts,
            dlq,
            attempts,
            usage,
        })
    }

    /// The renderer's input; `cancelled` says whether the run was stopped on purpose.
    pub fn input(&self, cancelled: bool, face: Face) -> FinalInput<'_> {
        FinalInput {
            job: &self.job,
            facts: &self.facts,
            counts: self.counts,
            dlq: &self.dlq,
            attempts: &self.attempts,
            usage: &self.usage,
            cancelled,
            face,
        }
    }
}

#[derive(Clone, Copy)]
enum FinalRequest<'a> {
    /// Creating at the start failed: create the run completed.
    Create(&'a NewCheckRun),
    Update(CheckRunId, &'a CheckRunUpdate),
}

/// The completion when the store cannot be read: the run ended, its outcome is unknown here.
fn unreadable_final_state(job: JobId, e: &anyhow::Error) -> CheckRunUpdate {
    CheckRunUpdate {
        status: Some(CheckStatus::Completed),
        conclusion: Some(CheckConclusion::Failure),
        output: Some(CheckRunOutput {
            title: "Outcome unknown".into(),
            summary: format!(
                "prodigy could not read the final state of job `{job}`: {e:#}\n\n\
                 `prodigy status {job}` shows it once the database is reachable."
            ),
            text: None,
            annotations: Vec::new(),
        }),
        ..CheckRunUpdate::default()
    }
}
