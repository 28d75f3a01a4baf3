//! Writes of job state. Each one takes a [`LockProof`] and is fenced by its epoch: a single
//! `UPDATE jobs ... WHERE lease_epoch = $epoch` for the job row itself, the `fenced!`
//! transaction for everything else.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::QueryBuilder;
use sqlx::types::Json;

use super::backend::{Pool, PoolExt, fenced, on_db, on_pool, on_pool_write};
use super::{
    AttemptOutcome, JobEvent, JobRefs, LockProof, NewItem, Result, Store, StoreError, check_epoch,
    now,
};
use crate::types::{ErrorClass, ItemKey, ItemStatus, JobId, JobStatus, Phase};

/// Rows per multi-row INSERT on SQLite: 5 bound values a row stays far below its 32766 limit.
const SQLITE_ROWS_PER_INSERT: usize = 2_000;
/// Rows per UNNEST insert on PostgreSQL: big enough to amortise the round trip, small enough to
/// keep one message's size modest.
const POSTGRES_ROWS_PER_INSERT: usize = 10_000;

/// Sets one column of the job row, fenced by the proof's epoch in the same statement.
macro_rules! set_job_column {
    ($store:expr, $proof:expr, $column:literal, $value:expr) => {{
        let done = on_pool_write!($store, pool => {
            sqlx::query(concat!(
                "UPDATE jobs SET ", $column, " = $3, updated_at = $4 WHERE id = $1 AND lease_epoch = $2"
            ))
            .bind($proof.job)
            .bind($proof.epoch)
            .bind($value)
            .bind(now())
            .execute(pool)
            .await?
            .rows_affected()
        });
        if done == 0 {
            return Err($store.job_write_refused($proof).await);
        }
        Ok(())
    }};
}

/// Runs `$body` in a write transaction that also appends the event `$event` (evaluated after
/// the body, with the body's value as `$out`), so a state change and its event commit
/// together or not at all. The fence is the event's sequence update, `WHERE lease_epoch =
/// $epoch`: it row-locks the job, so a takeover's epoch bump waits for the commit (a share lock
/// as in `fenced!` would have to be upgraded here, which deadlocks two such writers).
macro_rules! with_event {
    ($store:expr, $proof:expr, $tx:ident => $body:expr, $out:ident => $event:expr) => {
        on_db!($store, db => {
            let mut $tx = db.begin_write().await?;
            let seq: Option<i64> = sqlx::query_scalar(
                "UPDATE jobs SET event_seq = event_seq + 1 WHERE id = $1 AND lease_epoch = $2 \
                 RETURNING event_seq",
            )
            .bind($proof.job)
            .bind($proof.epoch)
            .fetch_optional(&mut *$tx)
            .await?;
            let Some(seq) = seq else {
                $tx.rollback().await?;
                return Err($store.job_write_refused($proof).await);
            };
            let $out = $body;
            let event: &JobEvent = &$event;
            let (kind, data) = event.to_row();
            sqlx::query("INSERT INTO events (job_id, seq, at, kind, data) VALUES ($1, $2, $3, $4, $5)")
                .bind($proof.job)
                .bind(seq)
                .bind(now())
                .bind(kind)
                .bind(data)
                .execute(&mut *$tx)
                .await?;
            $tx.commit().await?;
            $crate::metrics::observe(event);
            $out
        })
    };
}

/// Completes an attempt row and sets its item's status, commit and result; on failure with a DLQ
/// disposition it upserts the DLQ row, on success the item leaves the DLQ. Shared by the lock
/// holder's [`Store::finish_attempt`] and a claim holder's `finish_claimed`: `$tx` is a fenced
/// transaction of either.
macro_rules! close_attempt {
    ($tx:ident, $job:expr, $key:expr, $attempt:expr, $outcome:expr, $at:expr, $status:expr) => {{
        let closed = sqlx::query(
            "UPDATE attempts SET finished_at = $4, success = $5, exit_code = $6, error_class = $7, \
             signature = $8, message = $9, log_path = $10, commit_sha = $11 \
             WHERE job_id = $1 AND key = $2 AND attempt = $3",
        )
        .bind($job)
        .bind($key)
        .bind(i64::from($attempt))
        .bind($at)
        .bind($outcome.success)
        .bind($outcome.exit_code)
        .bind($outcome.error_class)
        .bind(&$outcome.signature)
        .bind(&$outcome.message)
        .bind(&$outcome.log_path)
        .bind(&$outcome.commit)
        .execute(&mut *$tx)
        .await?
        .rows_affected();
        if closed == 0 {
            return Err(StoreError::ItemNotFound { job: $job, key: $key.clone() });
        }
        // A failure keeps the commit of an earlier success (it may be merged already).
        sqlx::query(
            "UPDATE work_items SET status = $3, \
             commit_sha = CASE WHEN $4 THEN $5 ELSE commit_sha END, \
             result = COALESCE($6, result) \
             WHERE job_id = $1 AND key = $2",
        )
        .bind($job)
        .bind($key)
        .bind($status)
        .bind($outcome.success)
        .bind(&$outcome.commit)
        .bind(&$outcome.result)
        .execute(&mut *$tx)
        .await?;
        if $outcome.success {
            sqlx::query("DELETE FROM dlq_items WHERE job_id = $1 AND key = $2")
                .bind($job)
                .bind($key)
                .execute(&mut *$tx)
                .await?;
        } else if let Some(dlq) = $outcome.dlq {
            // What cannot be reprocessed automatically needs a person to look at it.
            sqlx::query(
                "INSERT INTO dlq_items (job_id, key, data, first_failure, last_failure, failure_count, \
                 error_class, signature, last_message, reprocessable, manual_review) \
                 SELECT job_id, key, data, $3, $3, 1, $4, $5, $6, $7, $8 FROM work_items \
                 WHERE job_id = $1 AND key = $2 \
                 ON CONFLICT (job_id, key) DO UPDATE SET last_failure = excluded.last_failure, \
                 failure_count = dlq_items.failure_count + 1, error_class = excluded.error_class, \
                 signature = excluded.signature, last_message = excluded.last_message, \
                 reprocessable = excluded.reprocessable, manual_review = excluded.manual_review",
            )
            .bind($job)
            .bind($key)
            .bind($at)
            .bind($outcome.error_class.unwrap_or(ErrorClass::Unknown))
            .bind($outcome.signature.as_deref().unwrap_or(""))
            .bind($outcome.message.as_deref().unwrap_or(""))
            .bind(dlq.reprocessable)
            .bind(!dlq.reprocessable)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}
pub(super) use close_attempt;

impl Store {
    /// After a fenced `UPDATE jobs` touched no row: tells a vanished job from a lost lease.
    async fn job_write_refused(&self, proof: &LockProof) -> StoreError {
        let current: std::result::Result<Option<i64>, sqlx::Error> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT lease_epoch FROM jobs WHERE id = $1")
                .bind(proof.job)
                .fetch_optional(pool)
                .await
        });
        match current {
            Err(e) => StoreError::Db(e),
            Ok(current) => match check_epoch(proof, current) {
                Err(e) => e,
                // The epoch matches now, so it did not when the UPDATE ran: fenced by then.
                Ok(()) => StoreError::Fenced {
                    job: proof.job,
                    epoch: proof.epoch,
                },
            },
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job, %status, %phase))]
    pub async fn set_job_state(
        &self,
        proof: &LockProof,
        status: JobStatus,
        phase: Phase,
        error: Option<&str>,
    ) -> Result<()> {
        let at = now();
        let finished_at: Option<DateTime<Utc>> = match status {
            JobStatus::Succeeded
            | JobStatus::Failed
            | JobStatus::Cancelled
            | JobStatus::BudgetExhausted => Some(at),
            JobStatus::Pending | JobStatus::Running => None,
        };
        let done = on_pool_write!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET status = $3, phase = $4, error = $5, updated_at = $6, finished_at = $7 \
                 WHERE id = $1 AND lease_epoch = $2",
            )
            .bind(proof.job)
            .bind(proof.epoch)
            .bind(status)
            .bind(phase)
            .bind(error)
            .bind(at)
            .bind(finished_at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if done == 0 {
            return Err(self.job_write_refused(proof).await);
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn set_job_refs(&self, proof: &LockProof, refs: &JobRefs) -> Result<()> {
        set_job_column!(self, proof, "refs", Json(refs))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn set_job_vars(&self, proof: &LockProof, vars: &Value) -> Result<()> {
        set_job_column!(self, proof, "vars", vars)
    }

    /// A standard workflow's step completed: its refs (steps done, the branch head) and the
    /// variables captured so far, with `event`, in one transaction.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn complete_step(
        &self,
        proof: &LockProof,
        refs: &JobRefs,
        vars: &Value,
        event: &JobEvent,
    ) -> Result<()> {
        let at = now();
        with_event!(self, proof, tx => {
            sqlx::query("UPDATE jobs SET refs = $2, vars = $3, updated_at = $4 WHERE id = $1")
                .bind(proof.job)
                .bind(Json(refs))
                .bind(vars)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }, _done => event);
        Ok(())
    }

    /// Inserts items; a key already present for the job is left as it is. Returns rows inserted.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job, items = items.len()))]
    pub async fn insert_items(&self, proof: &LockProof, items: &[NewItem]) -> Result<u64> {
        if items.is_empty() {
            // Still answer Fenced/JobNotFound, so an empty input does not hide a lost lock.
            return fenced!(self, proof, _tx => Ok(0));
        }
        match &self.pool {
            Pool::Sqlite(db) => {
                let mut tx = db.begin_fenced(proof).await?;
                let mut inserted = 0;
                for chunk in items.chunks(SQLITE_ROWS_PER_INSERT) {
                    let mut q = QueryBuilder::new(
                        "INSERT INTO work_items (job_id, key, position, data, status) ",
                    );
                    q.push_values(chunk, |mut row, item| {
                        row.push_bind(proof.job)
                            .push_bind(&item.key)
                            .push_bind(item.position)
                            .push_bind(&item.data)
                            .push_bind(ItemStatus::Pending);
                    });
                    q.push(" ON CONFLICT (job_id, key) DO NOTHING");
                    inserted += q.build().execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
                Ok(inserted)
            }
            Pool::Postgres(db) => {
                let mut tx = db.begin_fenced(proof).await?;
                let mut inserted = 0;
                for chunk in items.chunks(POSTGRES_ROWS_PER_INSERT) {
                    let keys: Vec<&str> = chunk.iter().map(|i| i.key.0.as_str()).collect();
                    let positions: Vec<i64> = chunk.iter().map(|i| i.position).collect();
                    let data: Vec<&Value> = chunk.iter().map(|i| &i.data).collect();
                    inserted += sqlx::query(
                        "INSERT INTO work_items (job_id, key, position, data, status) \
                         SELECT $1, k, p, d, 'pending' FROM UNNEST($2::text[], $3::bigint[], $4::jsonb[]) AS t(k, p, d) \
                         ON CONFLICT (job_id, key) DO NOTHING",
                    )
                    .bind(proof.job)
                    .bind(&keys)
                    .bind(&positions)
                    .bind(&data)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
                Ok(inserted)
            }
        }
    }

    /// Marks the item running and appends an attempt row; returns its attempt number
    /// (previous attempts + 1, across runs).
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job, %key))]
    pub async fn start_attempt(
        &self,
        proof: &LockProof,
        key: &ItemKey,
        worktree: &str,
        branch: &str,
        event: impl FnOnce(u32) -> JobEvent,
    ) -> Result<u32> {
        let at = now();
        let attempt: i64 = with_event!(self, proof, tx => {
            let attempt: Option<i64> = sqlx::query_scalar(
                "UPDATE work_items SET status = 'running', attempts = attempts + 1 \
                 WHERE job_id = $1 AND key = $2 RETURNING attempts",
            )
            .bind(proof.job)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(attempt) = attempt else {
                return Err(StoreError::ItemNotFound { job: proof.job, key: key.clone() });
            };
            sqlx::query(
                "INSERT INTO attempts (job_id, key, attempt, started_at, worktree, branch) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(proof.job)
            .bind(key)
            .bind(attempt)
            .bind(at)
            .bind(worktree)
            .bind(branch)
            .execute(&mut *tx)
            .await?;
            attempt
        }, attempt => event(u32::try_from(attempt).unwrap_or(u32::MAX)));
        Ok(u32::try_from(attempt).unwrap_or(u32::MAX))
    }

    /// Completes the attempt row and sets the item's status; on failure with a DLQ disposition
    /// it upserts the DLQ row (count + 1, last failure, class, signature, message) in the same
    /// transaction. On success the item leaves the DLQ.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job, %key, attempt, success = outcome.success))]
    pub async fn finish_attempt(
        &self,
        proof: &LockProof,
        key: &ItemKey,
        attempt: u32,
        outcome: &AttemptOutcome,
        event: &JobEvent,
    ) -> Result<()> {
        let at = now();
        let status = if outcome.success {
            ItemStatus::Succeeded
        } else {
            ItemStatus::Failed
        };
        with_event!(self, proof, tx => {
            close_attempt!(tx, proof.job, key, attempt, outcome, at, status);
        }, _done => event);
        Ok(())
    }

    /// The item's commit reached the job branch (or it had nothing to merge), recorded with
    /// `event` when there is one.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job, %key))]
    pub async fn mark_merged(
        &self,
        proof: &LockProof,
        key: &ItemKey,
        event: Option<&JobEvent>,
    ) -> Result<()> {
        macro_rules! set_merged {
            ($tx:ident) => {{
                let done = sqlx::query(
                    "UPDATE work_items SET merged = TRUE WHERE job_id = $1 AND key = $2",
                )
                .bind(proof.job)
                .bind(key)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
                if done == 0 {
                    return Err(StoreError::ItemNotFound {
                        job: proof.job,
                        key: key.clone(),
                    });
                }
            }};
        }
        match event {
            Some(event) => with_event!(self, proof, tx => set_merged!(tx), _done => event),
            None => fenced!(self, proof, tx => set_merged!(tx)),
        }
        Ok(())
    }

    /// Items left `running` by a crashed holder go back to `pending`; their open attempts are
    /// closed as failed with class Unknown and message "interrupted". Returns how many.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn recover_interrupted(&self, proof: &LockProof) -> Result<u64> {
        let at = now();
        Ok(fenced!(self, proof, tx => {
            sqlx::query(
                "UPDATE attempts SET finished_at = $2, success = FALSE, error_class = $3, message = 'interrupted' \
                 WHERE job_id = $1 AND finished_at IS NULL",
            )
            .bind(proof.job)
            .bind(at)
            .bind(ErrorClass::Unknown)
            .execute(&mut *tx)
            .await?;
            // A claim on such an item is void: its epoch moves on, so a worker still running it
            // records nothing.
            sqlx::query(
                "UPDATE work_items SET status = 'pending', claim_epoch = claim_epoch + 1, \
                 claimed_by = NULL, lease_expires_at = NULL WHERE job_id = $1 AND status = 'running'",
            )
            .bind(proof.job)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        }))
    }

    /// Closes an attempt that prodigy stopped (the job's budget ran out) without counting it as
    /// a failure: the attempt row says why, the item is pending again and stays out of the DLQ.
    pub async fn release_attempt(
        &self,
        proof: &LockProof,
        key: &ItemKey,
        attempt: u32,
        message: &str,
        event: &JobEvent,
    ) -> Result<()> {
        let at = now();
        with_event!(self, proof, tx => {
            sqlx::query(
                "UPDATE attempts SET finished_at = $4, success = FALSE, message = $5 \
                 WHERE job_id = $1 AND key = $2 AND attempt = $3",
            )
            .bind(proof.job)
            .bind(key)
            .bind(i64::from(attempt))
            .bind(at)
            .bind(message)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE work_items SET status = 'pending' WHERE job_id = $1 AND key = $2")
                .bind(proof.job)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }, _done => event);
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn remove_from_dlq(&self, proof: &LockProof, key: &ItemKey) -> Result<()> {
        fenced!(self, proof, tx => {
            sqlx::query("DELETE FROM dlq_items WHERE job_id = $1 AND key = $2")
                .bind(proof.job)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }

    /// Deletes DLQ rows (older than the time, when given); the attempts history stays.
    pub async fn purge_dlq(
        &self,
        proof: &LockProof,
        older_than: Option<DateTime<Utc>>,
    ) -> Result<u64> {
        Ok(fenced!(self, proof, tx => {
            match older_than {
                Some(t) => sqlx::query("DELETE FROM dlq_items WHERE job_id = $1 AND last_failure < $2")
                    .bind(proof.job)
                    .bind(t)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                None => sqlx::query("DELETE FROM dlq_items WHERE job_id = $1")
                    .bind(proof.job)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
            }
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn append_event(&self, proof: &LockProof, event: &JobEvent) -> Result<i64> {
        let (kind, data) = event.to_row();
        match self
            .insert_event(proof.job, Some(proof.epoch), &kind, &data)
            .await?
        {
            Some(seq) => {
                crate::metrics::observe(event);
                Ok(seq)
            }
            None => Err(self.job_write_refused(proof).await),
        }
    }

    /// A request or note about a job from a process that does not hold its lock (a cancel
    /// request, the server context, a refused resume: [`JobEvent::from_outside`]); any other
    /// event is refused.
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn append_outside_event(&self, job: JobId, event: &JobEvent) -> Result<i64> {
        let (kind, data) = event.to_row();
        if !event.from_outside() {
            return Err(StoreError::NeedsLock(kind));
        }
        self.insert_event(job, None, &kind, &data)
            .await?
            .ok_or_else(|| StoreError::JobNotFound(job.to_string()))
    }

    /// Takes the job's next sequence number (the row lock orders concurrent appends) and inserts
    /// the event in the same transaction. None: no job row (at that epoch, when given).
    async fn insert_event(
        &self,
        job: JobId,
        epoch: Option<i64>,
        kind: &str,
        data: &Value,
    ) -> Result<Option<i64>> {
        let at = now();
        Ok(on_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let seq: Option<i64> = sqlx::query_scalar(
                "UPDATE jobs SET event_seq = event_seq + 1 \
                 WHERE id = $1 AND ($2 IS NULL OR lease_epoch = $2) RETURNING event_seq",
            )
            .bind(job)
            .bind(epoch)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(seq) = seq {
                sqlx::query("INSERT INTO events (job_id, seq, at, kind, data) VALUES ($1, $2, $3, $4, $5)")
                    .bind(job)
                    .bind(seq)
                    .bind(at)
                    .bind(kind)
                    .bind(data)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            seq
        }))
    }
}
