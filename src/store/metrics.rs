//! What `/metrics` reads from the database at each scrape: jobs by status, requests by status,
//! and the AI usage recorded for every agent run. Shared by all replicas, so every replica
//! reports the same values.

use super::backend::on_pool;
use super::{Result, Store};

/// Counts and sums over the whole database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// `(status, count)` for every job status that has jobs.
    pub jobs: Vec<(String, i64)>,
    /// `(status, count)` for every request status that has requests.
    pub requests: Vec<(String, i64)>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cache_read_tokens: i64,
    pub cost_usd: f64,
}

impl Store {
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn metrics_snapshot(&self) -> Result<MetricsSnapshot> {
        Ok(on_pool!(self, pool => {
            let jobs: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status",
            )
            .fetch_all(pool)
            .await?;
            let requests: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, COUNT(*) FROM requests GROUP BY status ORDER BY status",
            )
            .fetch_all(pool)
            .await?;
            let (input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, cost_usd):
                (i64, i64, i64, i64, f64) = sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(cache_creation_tokens), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) FROM agent_runs",
            )
            .fetch_one(pool)
            .await?;
            MetricsSnapshot {
                jobs,
                requests,
                input_tokens,
                output_tokens,
                cache_creation_tokens,
                cache_read_tokens,
                cost_usd,
            }
        }))
    }
}
