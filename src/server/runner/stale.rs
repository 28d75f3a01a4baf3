//! At start, after orphaned jobs were resumed: check runs still in progress whose run is gone
//! and that no run here continues are completed, under the job's lock (a job held elsewhere is
//! alive, and its run closes them). A finished job's check run gets the job's real outcome (its
//! run died before delivering it); an unfinished one is `cancelled`, saying how to continue.

use crate::checks::render::{self, Face};
use crate::checks::stale::{close_stale, closing_update};
use crate::checks::{AppCheckRuns, FinalRecord};
use crate::store::Exclusive;
use crate::types::{JobId, JobStatus};

use super::Runner;

impl Runner {
    pub(super) async fn close_stale_check_runs(&self) {
        let jobs = match self.p().store.jobs_with_open_check_runs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list open check runs");
                return;
            }
        };
        for job in jobs {
            if self.is_running_here(job) {
                // Its run here closes the check runs it continues.
                continue;
            }
            match self.close_stale_of(job).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(%job, closed = n, "closed check runs a stopped run left in progress")
                }
                Err(e) => {
                    tracing::warn!(%job, error = %format!("{e:#}"), "cannot close the job's stale check runs")
                }
            }
        }
    }

    async fn close_stale_of(&self, id: JobId) -> anyhow::Result<usize> {
        let store = &self.p().store;
        let job = store.get_job(id).await?;
        let Some(ctx) = self.context_of(&job).await else {
            // Not a job this server started (the Action's, in a shared database): not ours.
            return Ok(0);
        };
        let sink = AppCheckRuns {
            client: self.p().github.clone(),
            installation: ctx.installation,
            repo: ctx.repo.clone(),
        };
        let details = self.p().links.job_url(id);
        let held = store
            .with_job_lock(id, &self.holder(), async |proof| {
                let job = store.get_job(id).await?;
                let update = match job.status {
                    JobStatus::Pending | JobStatus::Running => {
                        closing_update(id, None, Some(&details))
                    }
                    _ => {
                        let record = FinalRecord::load(store, id).await?;
                        render::completion_updates(&record.input(false, Face::App))
                            .into_iter()
                            .next()
                            .expect("a completion update")
                    }
                };
                close_stale(&sink, store, id, proof.epoch(), None, &update).await
            })
            .await?;
        Ok(match held {
            Exclusive::Performed(n) => n,
            Exclusive::Held { .. } => 0,
        })
    }
}
