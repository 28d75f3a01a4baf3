//! Reads of a job's items, attempts, DLQ rows and events.

use std::collections::HashMap;

use sqlx::QueryBuilder;

use super::backend::on_pool;
use super::{Attempt, DlqItem, Event, ItemCounts, ItemFilter, Result, Store, WorkItem};
use crate::types::{ItemKey, JobId};

/// The transcript and session of a DLQ row's failing attempt (its item's last attempt), as the
/// columns `json_log_location` and `session_id`; `d` is the `dlq_items` row.
macro_rules! dlq_agent_run {
    () => {
        concat!(
            "(SELECT a.transcript FROM agent_runs a WHERE a.job_id = d.job_id AND a.item_key = d.key ",
            "AND a.attempt = (SELECT MAX(t.attempt) FROM attempts t WHERE t.job_id = d.job_id AND t.key = d.key) ",
            "ORDER BY a.finished_at DESC, a.transcript DESC LIMIT 1) AS json_log_location, ",
            "(SELECT a.session_id FROM agent_runs a WHERE a.job_id = d.job_id AND a.item_key = d.key ",
            "AND a.attempt = (SELECT MAX(t.attempt) FROM attempts t WHERE t.job_id = d.job_id AND t.key = d.key) ",
            "ORDER BY a.finished_at DESC, a.transcript DESC LIMIT 1) AS session_id"
        )
    };
}

impl Store {
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn item_counts(&self, job: JobId) -> Result<ItemCounts> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT COUNT(*) AS total, \
                 COUNT(*) FILTER (WHERE status = 'pending') AS pending, \
                 COUNT(*) FILTER (WHERE status = 'running') AS running, \
                 COUNT(*) FILTER (WHERE status = 'succeeded') AS succeeded, \
                 COUNT(*) FILTER (WHERE status = 'failed') AS failed, \
                 COUNT(*) FILTER (WHERE merged) AS merged, \
                 (SELECT COUNT(*) FROM dlq_items WHERE job_id = $1) AS dlq \
                 FROM work_items WHERE job_id = $1",
            )
            .bind(job)
            .fetch_one(pool)
            .await?
        }))
    }

    // ---- reads ----------------------------------------------------------------------------

    /// Items by position.
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn items(&self, job: JobId, filter: &ItemFilter) -> Result<Vec<WorkItem>> {
        // SQLite allows 32766 bound values per statement; ask for keys in slices well below it.
        const KEYS_PER_QUERY: usize = 10_000;
        let key_chunks: Vec<Option<&[ItemKey]>> = match &filter.keys {
            None => vec![None],
            Some(keys) if keys.is_empty() => return Ok(Vec::new()),
            Some(keys) => keys.chunks(KEYS_PER_QUERY).map(Some).collect(),
        };
        let mut items = Vec::new();
        for keys in key_chunks {
            let mut rows: Vec<WorkItem> = on_pool!(self, pool => {
                let mut q = QueryBuilder::new(
                    "SELECT w.key, w.position, w.data, w.status, w.attempts, w.merged, w.commit_sha, \
                     w.result FROM work_items w WHERE w.job_id = ",
                );
                q.push_bind(job);
                if let Some(status) = filter.status {
                    q.push(" AND w.status = ").push_bind(status);
                }
                if let Some(merged) = filter.merged {
                    q.push(" AND w.merged = ").push_bind(merged);
                }
                if let Some(keys) = keys {
                    q.push(" AND w.key IN (");
                    let mut list = q.separated(", ");
                    for key in keys {
                        list.push_bind(key);
                    }
                    q.push(")");
                }
                q.push(" ORDER BY w.position, w.key");
                q.build_query_as().fetch_all(pool).await?
            });
            items.append(&mut rows);
        }
        if filter
            .keys
            .as_ref()
            .is_some_and(|k| k.len() > KEYS_PER_QUERY)
        {
            items.sort_by(|a, b| (a.position, &a.key).cmp(&(b.position, &b.key)));
        }
        // The DLQ flags come from a second, small query: joining them in costs an index probe
        // per item, which on 100k items is most of the load time.
        let dlq: Vec<(ItemKey, bool)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT key, reprocessable FROM dlq_items WHERE job_id = $1")
                .bind(job)
                .fetch_all(pool)
                .await?
        });
        if !dlq.is_empty() {
            let dlq: HashMap<ItemKey, bool> = dlq.into_iter().collect();
            for item in &mut items {
                if let Some(&reprocessable) = dlq.get(&item.key) {
                    item.in_dlq = true;
                    item.reprocessable = reprocessable;
                }
            }
        }
        Ok(items)
    }

    /// One item's attempts, oldest first: its full failure history.
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn attempts(&self, job: JobId, key: &ItemKey) -> Result<Vec<Attempt>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT key, attempt, started_at, finished_at, success, exit_code, error_class, \
                 signature, message, log_path, worktree, branch, commit_sha \
                 FROM attempts WHERE job_id = $1 AND key = $2 ORDER BY attempt",
            )
            .bind(job)
            .bind(key)
            .fetch_all(pool)
            .await?
        }))
    }

    /// DLQ rows of one job, or of all jobs; oldest first failure first.
    #[tracing::instrument(level = "debug", skip_all, fields(job = ?job))]
    pub async fn dlq(&self, job: Option<JobId>) -> Result<Vec<DlqItem>> {
        Ok(on_pool!(self, pool => {
            match job {
                Some(job) => sqlx::query_as(concat!(
                    "SELECT job_id, key, data, first_failure, last_failure, failure_count, error_class, \
                     signature, last_message, reprocessable, manual_review, ",
                    dlq_agent_run!(),
                    " FROM dlq_items d WHERE job_id = $1 ORDER BY first_failure, key"),
                )
                .bind(job)
                .fetch_all(pool)
                .await?,
                None => sqlx::query_as(concat!(
                    "SELECT job_id, key, data, first_failure, last_failure, failure_count, error_class, \
                     signature, last_message, reprocessable, manual_review, ",
                    dlq_agent_run!(),
                    " FROM dlq_items d ORDER BY first_failure, job_id, key"),
                )
                .fetch_all(pool)
                .await?,
            }
        }))
    }

    /// Events with `seq > after`, in order, at most `limit`.
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn events(&self, job: JobId, after: i64, limit: u32) -> Result<Vec<Event>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT seq, at, kind, data FROM events WHERE job_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
            )
            .bind(job)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        }))
    }
}
