//! State of `prodigy serve`: webhook deliveries (recorded once, so a redelivery is a no-op), each
//! queued with its request in one step (the queue itself: `requests`).

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::QueryBuilder;

use super::backend::{Pool, on_pool, on_pool_write};
use super::jobs::select_jobs;
use super::{Result, Store, StoreError, now};

/// The answer of [`Store::record_delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// First time this delivery id is seen: handle it.
    Recorded,
    /// Seen before (GitHub redelivered it): do nothing.
    Duplicate,
}

impl Store {
    /// Records a webhook delivery by its `X-GitHub-Delivery` id; a second call with the same id
    /// answers Duplicate and changes nothing.
    #[tracing::instrument(level = "debug", skip_all, fields(delivery = delivery_id, event))]
    pub async fn record_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        action: Option<&str>,
    ) -> Result<DeliveryOutcome> {
        let inserted = on_pool_write!(self, pool => {
            sqlx::query(
                "INSERT INTO webhook_deliveries (delivery_id, event, action, received_at, outcome) \
                 VALUES ($1, $2, $3, $4, 'received') ON CONFLICT (delivery_id) DO NOTHING",
            )
            .bind(delivery_id)
            .bind(event)
            .bind(action)
            .bind(now())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(if inserted == 1 {
            DeliveryOutcome::Recorded
        } else {
            DeliveryOutcome::Duplicate
        })
    }

    /// What became of a delivery (e.g. "ignored: edited comment", "queued request 12").
    #[tracing::instrument(level = "debug", skip_all, fields(delivery = delivery_id))]
    pub async fn set_delivery_outcome(&self, delivery_id: &str, outcome: &str) -> Result<()> {
        on_pool_write!(self, pool => {
            sqlx::query("UPDATE webhook_deliveries SET outcome = $2 WHERE delivery_id = $1")
                .bind(delivery_id)
                .bind(outcome)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// The recorded outcome of a delivery, if it was seen.
    #[tracing::instrument(level = "debug", skip_all, fields(delivery = delivery_id))]
    pub async fn delivery_outcome(&self, delivery_id: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT outcome FROM webhook_deliveries WHERE delivery_id = $1")
                .bind(delivery_id)
                .fetch_optional(pool)
                .await?
        }))
    }
}

/// One delivery for [`Store::accept_deliveries`].
#[derive(Debug, Clone, Copy)]
pub struct NewDelivery<'a> {
    pub delivery_id: &'a str,
    pub event: &'a str,
    pub action: Option<&'a str>,
    /// The queued request's kind and payload.
    pub kind: &'a str,
    pub payload: &'a RawValue,
}

/// The answer of [`Store::accept_delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// First time this delivery id is seen; its work is queued as this request.
    Queued(i64),
    /// Seen before (GitHub redelivered it): nothing was queued.
    Duplicate,
}

impl Store {
    /// Records a delivery and queues its request, so a delivery is either recorded with its
    /// work queued or not at all (and GitHub's redelivery is handled).
    pub async fn accept_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        action: Option<&str>,
        kind: &str,
        payload: &Value,
    ) -> Result<Accepted> {
        let payload = serde_json::value::to_raw_value(payload)
            .map_err(|e| StoreError::Db(sqlx::Error::Encode(e.into())))?;
        let one = NewDelivery {
            delivery_id,
            event,
            action,
            kind,
            payload: &payload,
        };
        let answers = self.accept_deliveries(&[one]).await?;
        Ok(answers[0])
    }

    /// [`Store::accept_delivery`] for many deliveries at once, answered in order. A crash can
    /// never queue a delivery twice nor record it without its work:
    /// - PostgreSQL: one statement records the deliveries and queues the work of those it
    ///   recorded (one round trip, atomic).
    /// - SQLite: one call to the connection's thread runs two autocommit statements: the
    ///   first queues the work of every delivery neither recorded before nor queued (the unique
    ///   `requests.delivery_id` decides), the second records the deliveries.
    ///
    /// A delivery id repeated within the batch is queued at its first place only.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn accept_deliveries(&self, batch: &[NewDelivery<'_>]) -> Result<Vec<Accepted>> {
        let mut seen = HashSet::with_capacity(batch.len());
        let firsts: Vec<&NewDelivery<'_>> = batch
            .iter()
            .filter(|d| seen.insert(d.delivery_id))
            .collect();
        if firsts.is_empty() {
            return Ok(Vec::new());
        }
        let at = now();
        let queued: Vec<(i64, String)> = match &self.pool {
            Pool::Sqlite(db) => {
                let mut q = QueryBuilder::new("WITH v (delivery_id, kind, payload) AS (");
                q.push_values(&firsts, |mut row, d| {
                    row.push_bind(d.delivery_id)
                        .push_bind(d.kind)
                        .push_bind(d.payload.get());
                });
                q.push(
                    ") INSERT INTO requests (delivery_id, kind, payload, status, enqueued_at) \
                     SELECT delivery_id, kind, payload, 'queued', ",
                );
                q.push_bind(at);
                q.push(
                    " FROM v WHERE NOT EXISTS \
                     (SELECT 1 FROM webhook_deliveries d WHERE d.delivery_id = v.delivery_id) \
                     ON CONFLICT (delivery_id) DO NOTHING RETURNING id, delivery_id; \
                     INSERT INTO webhook_deliveries (delivery_id, event, action, received_at, outcome) ",
                );
                q.push_values(&firsts, |mut row, d| {
                    row.push_bind(d.delivery_id)
                        .push_bind(d.event)
                        .push_bind(d.action)
                        .push_bind(at)
                        .push_bind("queued");
                });
                q.push(" ON CONFLICT (delivery_id) DO NOTHING");
                // Two autocommit statements in one call to the connection's thread: the first
                // alone decides (see the doc above), so they need no transaction around them.
                let _queued = db.writer.lock().await;
                q.build_query_as().fetch_all(&db.ingest).await?
            }
            Pool::Postgres(pool) => {
                let ids: Vec<&str> = firsts.iter().map(|d| d.delivery_id).collect();
                let events: Vec<&str> = firsts.iter().map(|d| d.event).collect();
                let actions: Vec<Option<&str>> = firsts.iter().map(|d| d.action).collect();
                let kinds: Vec<&str> = firsts.iter().map(|d| d.kind).collect();
                let payloads: Vec<&str> = firsts.iter().map(|d| d.payload.get()).collect();
                sqlx::query_as(
                    // The deliveries insert decides what is new (its RETURNING), with index
                    // lookups whatever the plan; an anti-join against the whole table would
                    // grow with it.
                    "WITH v AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
                     $5::text[]) AS t (delivery_id, event, action, kind, payload)), \
                     d AS (INSERT INTO webhook_deliveries (delivery_id, event, action, received_at, outcome) \
                     SELECT delivery_id, event, action, $6, 'queued' FROM v \
                     ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id) \
                     INSERT INTO requests (delivery_id, kind, payload, status, enqueued_at) \
                     SELECT v.delivery_id, v.kind, v.payload::jsonb, 'queued', $6 FROM v JOIN d USING (delivery_id) \
                     ON CONFLICT (delivery_id) DO NOTHING RETURNING id, delivery_id",
                )
                .bind(&ids)
                .bind(&events)
                .bind(&actions)
                .bind(&kinds)
                .bind(&payloads)
                .bind(at)
                .fetch_all(pool)
                .await?
            }
        };
        let mut ids: HashMap<String, i64> = queued
            .into_iter()
            .map(|(id, delivery)| (delivery, id))
            .collect();
        Ok(batch
            .iter()
            .map(|d| match ids.remove(d.delivery_id) {
                Some(id) => Accepted::Queued(id),
                None => Accepted::Duplicate,
            })
            .collect())
    }

    /// Answers when the database takes a query (for readiness probes).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Jobs of pull requests (repo set) whose status is `status`, oldest first: the server
    /// resumes `running` ones whose runner died.
    pub async fn pr_jobs_with_status(
        &self,
        status: crate::types::JobStatus,
    ) -> Result<Vec<super::Job>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(select_jobs!(
                "WHERE status = $1 AND repo IS NOT NULL ORDER BY created_at, id"
            ))
            .bind(status)
            .fetch_all(pool)
            .await?
        }))
    }
}
