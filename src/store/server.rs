//! State of `prodigy serve`: webhook deliveries (recorded once, so a redelivery is a no-op) and
//! the request queue between the webhook handler and the runners.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::{FromRow, QueryBuilder};

use super::backend::{Pool, PoolExt, on_pool, on_pool_write};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Queued,
    Claimed,
    Done,
    Failed,
}

impl RequestStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestStatus::Queued => "queued",
            RequestStatus::Claimed => "claimed",
            RequestStatus::Done => "done",
            RequestStatus::Failed => "failed",
        }
    }
}

impl std::str::FromStr for RequestStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(RequestStatus::Queued),
            "claimed" => Ok(RequestStatus::Claimed),
            "done" => Ok(RequestStatus::Done),
            "failed" => Ok(RequestStatus::Failed),
            other => Err(format!(
                "unknown request status '{other}': expected queued, claimed, done or failed"
            )),
        }
    }
}

/// One unit of work for a runner, e.g. "resume job X" or "run workflow Y on PR Z".
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    /// The webhook delivery (`X-GitHub-Delivery`) that queued it, if one did.
    pub delivery_id: Option<String>,
    pub status: RequestStatus,
    pub claimed_by: Option<String>,
    pub message: Option<String>,
    /// Times it was claimed, this claim included.
    pub attempts: u32,
    pub enqueued_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct RequestRow {
    id: i64,
    kind: String,
    payload: Value,
    delivery_id: Option<String>,
    status: String,
    claimed_by: Option<String>,
    message: Option<String>,
    attempts: i64,
    enqueued_at: DateTime<Utc>,
    claimed_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<RequestRow> for Request {
    type Error = sqlx::Error;
    fn try_from(r: RequestRow) -> Result<Self, sqlx::Error> {
        Ok(Request {
            id: r.id,
            kind: r.kind,
            payload: r.payload,
            delivery_id: r.delivery_id,
            status: r
                .status
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            claimed_by: r.claimed_by,
            message: r.message,
            attempts: u32::try_from(r.attempts).unwrap_or(u32::MAX),
            enqueued_at: r.enqueued_at,
            claimed_at: r.claimed_at,
            finished_at: r.finished_at,
        })
    }
}

macro_rules! request_columns {
    () => {
        "id, kind, payload, delivery_id, status, claimed_by, message, attempts, enqueued_at, claimed_at, finished_at"
    };
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

    /// Queues a request for a runner; returns its id.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn enqueue_request(&self, kind: &str, payload: &Value) -> Result<i64> {
        Ok(on_pool_write!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO requests (kind, payload, status, enqueued_at) VALUES ($1, $2, 'queued', $3) \
                 RETURNING id",
            )
            .bind(kind)
            .bind(payload)
            .bind(now())
            .fetch_one(pool)
            .await?
        }))
    }

    /// Claims the oldest queued request for `worker`; no two workers ever get the same one
    /// (PostgreSQL skips rows another claimer has locked; SQLite claims in one statement under
    /// the database write lock).
    #[tracing::instrument(level = "debug", skip_all, fields(worker))]
    pub async fn claim_request(&self, worker: &str) -> Result<Option<Request>> {
        self.claim(worker, None).await
    }

    /// Claims the oldest queued request of one kind (a runner without a free job slot still
    /// answers comments).
    #[tracing::instrument(level = "debug", skip_all, fields(worker))]
    pub async fn claim_request_of_kind(&self, worker: &str, kind: &str) -> Result<Option<Request>> {
        self.claim(worker, Some(kind)).await
    }

    async fn claim(&self, worker: &str, kind: Option<&str>) -> Result<Option<Request>> {
        let at = now();
        let row: Option<RequestRow> = match &self.pool {
            Pool::Postgres(pool) => {
                sqlx::query_as(concat!(
                    "UPDATE requests SET status = 'claimed', claimed_by = $1, claimed_at = $2, \
                     attempts = attempts + 1 WHERE id = (SELECT id FROM requests WHERE status = 'queued' \
                     AND ($3::text IS NULL OR kind = $3) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                     RETURNING ",
                    request_columns!()
                ))
                .bind(worker)
                .bind(at)
                .bind(kind)
                .fetch_optional(pool)
                .await?
            }
            Pool::Sqlite(db) => {
                let mut tx = db.begin_write().await?;
                let row = sqlx::query_as(concat!(
                    "UPDATE requests SET status = 'claimed', claimed_by = $1, claimed_at = $2, \
                     attempts = attempts + 1 WHERE id = (SELECT id FROM requests WHERE status = 'queued' \
                     AND ($3 IS NULL OR kind = $3) ORDER BY id LIMIT 1) RETURNING ",
                    request_columns!()
                ))
                .bind(worker)
                .bind(at)
                .bind(kind)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                row
            }
        };
        Ok(row.map(Request::try_from).transpose()?)
    }

    /// Marks a claimed request done (`ok`) or failed, with a message for the operator.
    #[tracing::instrument(level = "debug", skip_all, fields(request = id))]
    pub async fn complete_request(&self, id: i64, ok: bool, message: Option<&str>) -> Result<()> {
        let status = if ok {
            RequestStatus::Done
        } else {
            RequestStatus::Failed
        };
        on_pool_write!(self, pool => {
            sqlx::query("UPDATE requests SET status = $2, message = $3, finished_at = $4 WHERE id = $1")
                .bind(id)
                .bind(status.as_str())
                .bind(message)
                .bind(now())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Puts requests claimed by `worker` back in the queue (a runner restarting after a crash
    /// calls this with its own name). Returns how many.
    #[tracing::instrument(level = "debug", skip_all, fields(worker))]
    pub async fn requeue_claimed(&self, worker: &str) -> Result<u64> {
        Ok(on_pool_write!(self, pool => {
            sqlx::query(
                "UPDATE requests SET status = 'queued', claimed_by = NULL, claimed_at = NULL \
                 WHERE status = 'claimed' AND claimed_by = $1",
            )
            .bind(worker)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(request = id))]
    pub async fn get_request(&self, id: i64) -> Result<Option<Request>> {
        let row: Option<RequestRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!("SELECT ", request_columns!(), " FROM requests WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(Request::try_from).transpose()?)
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

    /// Requests in the queue by status (for tests and operators).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn requests_with_status(&self, status: RequestStatus) -> Result<Vec<Request>> {
        let rows: Vec<RequestRow> = on_pool!(self, pool => {
            sqlx::query_as(concat!("SELECT ", request_columns!(), " FROM requests WHERE status = $1 ORDER BY id"))
                .bind(status.as_str())
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|r| Request::try_from(r).map_err(Into::into))
            .collect()
    }
}
