//! What check runs need of the store: reads for the final report and for re-runs, and the one
//! write a reporter makes. A reporter runs beside the engine, not under its lock, so it cannot
//! hold a [`super::LockProof`]; what it writes is fenced by the epoch the engine announced when the run
//! started (`Progress::JobStarted::lease_epoch`) instead.

use super::backend::{on_pool, on_pool_write};
use super::jobs::select_jobs;
use super::{Attempt, Job, Result, Store, StoreError, now};
use crate::types::{JobId, RepoName};

impl Store {
    /// Records the job's check-run id if the lock is still held at `lease_epoch`. A holder that
    /// took the job over since then has its own check run, so the write is refused with
    /// [`super::StoreError::Fenced`] rather than pointing the job at a stale one.
    pub async fn set_check_run_id_at_epoch(
        &self,
        job: JobId,
        lease_epoch: i64,
        check_run_id: i64,
    ) -> Result<()> {
        // The epoch in the WHERE clause is the fence, as for the writes under the lock.
        let done = on_pool_write!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET check_run_id = $3, updated_at = $4 WHERE id = $1 AND lease_epoch = $2",
            )
            .bind(job)
            .bind(lease_epoch)
            .bind(check_run_id)
            .bind(now())
            .execute(pool)
            .await?
            .rows_affected()
        });
        if done == 0 {
            // No such job, or another holder's epoch.
            self.get_job(job).await?;
            return Err(StoreError::Fenced {
                job,
                epoch: lease_epoch,
            });
        }
        Ok(())
    }

    /// Every attempt of every item of a job, by item key then attempt number: failure histories
    /// and item durations for a report, in one query.
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn job_attempts(&self, job: JobId) -> Result<Vec<Attempt>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT key, attempt, started_at, finished_at, success, exit_code, error_class, \
                 signature, message, log_path, worktree, branch, commit_sha, machine \
                 FROM attempts WHERE job_id = $1 ORDER BY key, attempt",
            )
            .bind(job)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Jobs of one commit of a repository, most recent first (`check_suite.rerequested` names the
    /// commit, not the job; the Action's `resume: auto` looks for an unfinished run here).
    #[tracing::instrument(level = "debug", skip_all, fields(%repo))]
    pub async fn find_jobs_by_head_sha(&self, repo: &RepoName, head_sha: &str) -> Result<Vec<Job>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(select_jobs!(
                "WHERE repo = $1 AND head_sha = $2 ORDER BY created_at DESC, id DESC"
            ))
            .bind(repo)
            .bind(head_sha)
            .fetch_all(pool)
            .await?
        }))
    }
}
