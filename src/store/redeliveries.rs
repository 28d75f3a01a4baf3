//! Missed-delivery recovery's state: which deliveries `prodigy serve` asked GitHub to redeliver
//! (one row per delivery guid, claimed before asking, so no guid is asked for twice), which
//! guids the webhook handler recorded, and the lock that lets one replica at a time look.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, FromRow};

use super::backend::{Pool, on_pool, on_pool_write};
use super::{Result, Store, now};

/// The advisory lock key of the redelivery pass (PostgreSQL). Job locks use the first 8 bytes
/// of a SHA-256, so a fixed key meets one of them with probability 2^-64. ASCII "prodigyR".
pub const REDELIVERY_LOCK_KEY: i64 = 0x7072_6f64_6967_7952;

/// A redelivery asked for again after it failed this many times in all: no more.
pub const MAX_REDELIVERY_ATTEMPTS: i64 = 3;

/// A claim still `requesting` after this was left by a process that stopped between claiming
/// and recording GitHub's answer: it may be claimed again.
const STALE_CLAIM: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// A missed delivery to claim before asking GitHub to redeliver it.
#[derive(Debug, Clone)]
pub struct NewRedelivery<'a> {
    pub guid: &'a str,
    pub delivery_id: u64,
    pub event: &'a str,
    pub action: Option<&'a str>,
    pub delivered_at: DateTime<Utc>,
    pub requested_by: &'a str,
}

/// A row of `webhook_redeliveries`.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Redelivery {
    pub guid: String,
    pub delivery_id: i64,
    pub event: String,
    pub action: Option<String>,
    pub delivered_at: DateTime<Utc>,
    pub requested_at: DateTime<Utc>,
    pub requested_by: String,
    pub outcome: String,
    pub attempts: i64,
}

/// The redelivery pass's lock, held while it lives (PostgreSQL: a session advisory lock on a
/// connection of its own, freed when that connection closes, also if the process dies).
pub struct RedeliveryLock {
    conn: Option<PgConnection>,
}

impl RedeliveryLock {
    /// Frees the lock.
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            // Closing the session frees its advisory locks.
            let _ = conn.close().await;
        }
    }
}

impl Store {
    /// The lock of the redelivery pass, or None when another process holds it. SQLite: always
    /// taken (one server process per database file runs the pass).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn try_redelivery_lock(&self) -> Result<Option<RedeliveryLock>> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(Some(RedeliveryLock { conn: None })),
            Pool::Postgres(pool) => {
                let pooled = pool.acquire().await?;
                // The session that takes the lock must never go back to the pool holding it.
                let mut conn = pooled.detach();
                let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(REDELIVERY_LOCK_KEY)
                    .fetch_one(&mut conn)
                    .await?;
                if acquired {
                    Ok(Some(RedeliveryLock { conn: Some(conn) }))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
        }
    }

    /// The guids among `guids` the webhook handler recorded (`webhook_deliveries`).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn recorded_deliveries(&self, guids: &[String]) -> Result<HashSet<String>> {
        if guids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<String> = match &self.pool {
            Pool::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT delivery_id FROM webhook_deliveries WHERE delivery_id = ANY($1)",
                )
                .bind(guids)
                .fetch_all(pool)
                .await?
            }
            Pool::Sqlite(db) => {
                // One JSON array parameter instead of a placeholder per guid.
                let list = serde_json::to_string(guids).expect("strings serialize");
                sqlx::query_scalar(
                    "SELECT delivery_id FROM webhook_deliveries \
                     WHERE delivery_id IN (SELECT value FROM json_each($1))",
                )
                .bind(list)
                .fetch_all(&db.pool)
                .await?
            }
        };
        Ok(rows.into_iter().collect())
    }

    /// Claims a missed delivery for redelivery: true when this call may ask GitHub for it, i.e.
    /// it was never claimed, its earlier requests failed fewer than [`MAX_REDELIVERY_ATTEMPTS`]
    /// times, or its claimer stopped before recording GitHub's answer (10 minutes ago). Two
    /// replicas never both get true for one guid.
    #[tracing::instrument(level = "debug", skip_all, fields(guid = d.guid))]
    pub async fn claim_redelivery(&self, d: &NewRedelivery<'_>) -> Result<bool> {
        let delivery_id = i64::try_from(d.delivery_id).unwrap_or(i64::MAX);
        let claimed: Option<String> = on_pool_write!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO webhook_redeliveries (guid, delivery_id, event, action, delivered_at, \
                 requested_at, requested_by, outcome, attempts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'requesting', 1) \
                 ON CONFLICT (guid) DO UPDATE SET delivery_id = excluded.delivery_id, \
                 delivered_at = excluded.delivered_at, requested_at = excluded.requested_at, \
                 requested_by = excluded.requested_by, outcome = 'requesting', \
                 attempts = webhook_redeliveries.attempts + 1 \
                 WHERE ((webhook_redeliveries.outcome LIKE 'failed%' \
                 AND webhook_redeliveries.attempts < $8) \
                 OR (webhook_redeliveries.outcome = 'requesting' \
                 AND webhook_redeliveries.requested_at < $9)) \
                 RETURNING guid",
            )
            .bind(d.guid)
            .bind(delivery_id)
            .bind(d.event)
            .bind(d.action)
            .bind(d.delivered_at)
            .bind(now())
            .bind(d.requested_by)
            .bind(MAX_REDELIVERY_ATTEMPTS)
            .bind(now() - STALE_CLAIM)
            .fetch_optional(pool)
            .await?
        });
        Ok(claimed.is_some())
    }

    /// What came of asking for a claimed redelivery: `requested`, or `failed: <reason>`.
    #[tracing::instrument(level = "debug", skip_all, fields(guid))]
    pub async fn set_redelivery_outcome(&self, guid: &str, outcome: &str) -> Result<()> {
        on_pool_write!(self, pool => {
            sqlx::query("UPDATE webhook_redeliveries SET outcome = $2 WHERE guid = $1")
                .bind(guid)
                .bind(outcome)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Every redelivery asked for, oldest request first (for operators and tests).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn redeliveries(&self) -> Result<Vec<Redelivery>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT guid, delivery_id, event, action, delivered_at, requested_at, requested_by, \
                 outcome, attempts FROM webhook_redeliveries ORDER BY requested_at, guid",
            )
            .fetch_all(pool)
            .await?
        }))
    }
}
