//! The check runs a job's runs created, and which are still in progress on GitHub. A run whose
//! process died leaves its check run spinning; the next run of the job, or the next server
//! start, closes it. Closing claims the row first (`in_progress` -> `closed` in one statement),
//! so however many processes look, each stale check run is closed exactly once.

use super::backend::{on_pool, on_pool_write};
use super::{Result, Store, now};
use crate::types::JobId;

impl Store {
    /// A run at `lease_epoch` created check run `id` for `job`: it is in progress.
    #[tracing::instrument(level = "debug", skip_all, fields(%job, id))]
    pub async fn record_check_run(&self, job: JobId, id: i64, lease_epoch: i64) -> Result<()> {
        on_pool_write!(self, pool => {
            sqlx::query(
                "INSERT INTO check_runs (job_id, id, lease_epoch, status, created_at) \
                 VALUES ($1, $2, $3, 'in_progress', $4) ON CONFLICT (job_id, id) DO NOTHING",
            )
            .bind(job)
            .bind(id)
            .bind(lease_epoch)
            .bind(now())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Check run `id` was completed by its own run.
    #[tracing::instrument(level = "debug", skip_all, fields(%job, id))]
    pub async fn check_run_completed(&self, job: JobId, id: i64) -> Result<()> {
        on_pool_write!(self, pool => {
            sqlx::query(
                "UPDATE check_runs SET status = 'completed', closed_at = $3 \
                 WHERE job_id = $1 AND id = $2 AND status = 'in_progress'",
            )
            .bind(job)
            .bind(id)
            .bind(now())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Claims the check runs of `job` still in progress that runs before `lease_epoch` created
    /// (their runs are gone: the caller holds the job's lock at that epoch, or did): they are
    /// `closed`, continued by `continued_by` when given. Returns their ids; the caller completes
    /// them on GitHub, or hands them back with [`Store::reopen_check_run`].
    #[tracing::instrument(level = "debug", skip_all, fields(%job, lease_epoch))]
    pub async fn claim_stale_check_runs(
        &self,
        job: JobId,
        lease_epoch: i64,
        continued_by: Option<i64>,
    ) -> Result<Vec<i64>> {
        let at = now();
        Ok(on_pool_write!(self, pool => {
            sqlx::query_scalar(
                "UPDATE check_runs SET status = 'closed', continued_by = $3, closed_at = $4 \
                 WHERE job_id = $1 AND status = 'in_progress' AND lease_epoch < $2 RETURNING id",
            )
            .bind(job)
            .bind(lease_epoch)
            .bind(continued_by)
            .bind(at)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Closing a claimed check run on GitHub failed: it is in progress again, for a later try.
    #[tracing::instrument(level = "debug", skip_all, fields(%job, id))]
    pub async fn reopen_check_run(&self, job: JobId, id: i64) -> Result<()> {
        on_pool_write!(self, pool => {
            sqlx::query(
                "UPDATE check_runs SET status = 'in_progress', continued_by = NULL, closed_at = NULL \
                 WHERE job_id = $1 AND id = $2 AND status = 'closed'",
            )
            .bind(job)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Jobs with a check run still in progress, oldest first.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn jobs_with_open_check_runs(&self) -> Result<Vec<JobId>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT job_id FROM check_runs WHERE status = 'in_progress' \
                 GROUP BY job_id ORDER BY MIN(created_at)",
            )
            .fetch_all(pool)
            .await?
        }))
    }
}
