//! The request queue between `prodigy serve`'s webhook handler and its runners (README
//! "Reliability").
//!
//! A claim is a lease: the claimer's heartbeat renews it ([`Store::renew_requests`]) while it
//! handles the request, and a claim whose lease ran out (its instance died, or was cut off from
//! the database) is taken back by any instance as a new attempt. Every claim bumps `attempts`,
//! which fences the holder's last write ([`Store::finish_request`]): an instance whose claim
//! was taken back records nothing. Leases are judged by the database's clock on PostgreSQL
//! (claims skip rows another claimer is taking, `FOR UPDATE SKIP LOCKED`), by the one process's
//! clock on SQLite (claims run under the database write lock).
//!
//! A request that failed on a transient error goes back to the queue, not to be claimed before
//! `not_before` (exponential backoff); one that used up its attempts, or failed on a permanent
//! error, is failed with the reason.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::FromRow;

use super::backend::{Pool, PoolExt, on_pool, on_pool_write};
use super::{Result, Store, now};

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

/// How the queue treats claims and failures (`prodigy serve --request-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPolicy {
    /// How long a claim lasts without a heartbeat (renewed every third of it).
    pub lease: Duration,
    /// Claims of one request in all, the first included: a request whose attempts are used up
    /// is failed (a transient error, or a claim taken back from an instance that died).
    pub max_attempts: u32,
    /// The wait before the second attempt after a transient error; doubled for each later one.
    pub backoff: Duration,
    /// No wait exceeds this.
    pub max_backoff: Duration,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        RequestPolicy {
            lease: Duration::from_secs(60),
            max_attempts: 8,
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
        }
    }
}

impl RequestPolicy {
    /// The wait after attempt `attempt` (1-based) failed on a transient error.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)));
        doubled.min(self.max_backoff)
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
    /// How it ended (done or failed), for the operator.
    pub message: Option<String>,
    /// Times it was claimed, this claim included; a claim's fence.
    pub attempts: u32,
    pub enqueued_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When the current claim runs out unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// A request waiting after a transient error is not claimed before this.
    pub not_before: Option<DateTime<Utc>>,
    /// Why the last attempt did not finish (a transient error, a lease that ran out), or why
    /// the request failed.
    pub last_error: Option<String>,
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
    lease_expires_at: Option<DateTime<Utc>>,
    not_before: Option<DateTime<Utc>>,
    last_error: Option<String>,
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
            lease_expires_at: r.lease_expires_at,
            not_before: r.not_before,
            last_error: r.last_error,
        })
    }
}

macro_rules! request_columns {
    () => {
        "id, kind, payload, delivery_id, status, claimed_by, message, attempts, enqueued_at, \
         claimed_at, finished_at, lease_expires_at, not_before, last_error"
    };
}

/// What [`Store::finish_request`] records.
#[derive(Debug, Clone, Copy)]
pub enum RequestEnd<'a> {
    /// Handled; `message` says what was done.
    Done { message: &'a str },
    /// Failed for good (a permanent error, or the attempts are used up).
    Failed { reason: &'a str },
    /// Failed on a transient error: queued again, claimable after `after`.
    Retry { after: Duration, error: &'a str },
}

/// Why a claim taken back ended, in `last_error`.
const LEASE_EXPIRED: &str = "the claim's lease ran out: instance ";
const STOPPED_RENEWING: &str = " stopped renewing it (it died, or lost the database)";

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64().max(0.001)
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Store {
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

    /// Claims the oldest claimable request for `worker`, for `policy.lease`: a queued one
    /// whose `not_before` has passed, or a claimed one whose lease ran out (taken back as a new
    /// attempt). No two workers ever get the same one. A claim that ran out with its attempts
    /// used up is failed here instead, with the reason.
    #[tracing::instrument(level = "debug", skip_all, fields(worker))]
    pub async fn claim_request(
        &self,
        worker: &str,
        policy: &RequestPolicy,
    ) -> Result<Option<Request>> {
        self.claim(worker, None, policy).await
    }

    /// Claims the oldest claimable request of one kind (a runner without a free job slot
    /// still answers comments).
    #[tracing::instrument(level = "debug", skip_all, fields(worker))]
    pub async fn claim_request_of_kind(
        &self,
        worker: &str,
        kind: &str,
        policy: &RequestPolicy,
    ) -> Result<Option<Request>> {
        self.claim(worker, Some(kind), policy).await
    }

    async fn claim(
        &self,
        worker: &str,
        kind: Option<&str>,
        policy: &RequestPolicy,
    ) -> Result<Option<Request>> {
        let at = now();
        let max = i64::from(policy.max_attempts.max(1));
        let row: Option<RequestRow> = match &self.pool {
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "UPDATE requests SET status = 'failed', finished_at = $1, \
                     last_error = $3::text || COALESCE(claimed_by, '?') || $4::text, \
                     message = 'gave up after ' || attempts || ' attempts; the last: ' \
                     || $3::text || COALESCE(claimed_by, '?') || $4::text \
                     WHERE id IN (SELECT id FROM requests WHERE status = 'claimed' \
                     AND lease_expires_at < now() AND attempts >= $2 FOR UPDATE SKIP LOCKED)",
                )
                .bind(at)
                .bind(max)
                .bind(LEASE_EXPIRED)
                .bind(STOPPED_RENEWING)
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query_as(concat!(
                    "UPDATE requests r SET status = 'claimed', claimed_by = $1, claimed_at = $2, \
                     attempts = r.attempts + 1, not_before = NULL, \
                     lease_expires_at = now() + make_interval(secs => $4), \
                     last_error = CASE WHEN r.status = 'claimed' \
                     THEN $6::text || COALESCE(r.claimed_by, '?') || $7::text ELSE r.last_error END \
                     WHERE r.id = (SELECT id FROM requests WHERE \
                     ((status = 'queued' AND (not_before IS NULL OR not_before <= now())) \
                     OR (status = 'claimed' AND lease_expires_at < now() AND attempts < $5)) \
                     AND ($3::text IS NULL OR kind = $3) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                     RETURNING ",
                    request_columns!()
                ))
                .bind(worker)
                .bind(at)
                .bind(kind)
                .bind(seconds(policy.lease))
                .bind(max)
                .bind(LEASE_EXPIRED)
                .bind(STOPPED_RENEWING)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                row
            }
            Pool::Sqlite(db) => {
                let until = at + chrono_of(policy.lease);
                let mut tx = db.begin_write().await?;
                sqlx::query(
                    "UPDATE requests SET status = 'failed', finished_at = $1, \
                     last_error = $3 || COALESCE(claimed_by, '?') || $4, \
                     message = 'gave up after ' || attempts || ' attempts; the last: ' \
                     || $3 || COALESCE(claimed_by, '?') || $4 \
                     WHERE status = 'claimed' AND lease_expires_at < $1 AND attempts >= $2",
                )
                .bind(at)
                .bind(max)
                .bind(LEASE_EXPIRED)
                .bind(STOPPED_RENEWING)
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query_as(concat!(
                    "UPDATE requests SET status = 'claimed', claimed_by = $1, claimed_at = $2, \
                     attempts = attempts + 1, not_before = NULL, lease_expires_at = $4, \
                     last_error = CASE WHEN status = 'claimed' \
                     THEN $6 || COALESCE(claimed_by, '?') || $7 ELSE last_error END \
                     WHERE id = (SELECT id FROM requests WHERE \
                     ((status = 'queued' AND (not_before IS NULL OR not_before <= $2)) \
                     OR (status = 'claimed' AND lease_expires_at < $2 AND attempts < $5)) \
                     AND ($3 IS NULL OR kind = $3) ORDER BY id LIMIT 1) RETURNING ",
                    request_columns!()
                ))
                .bind(worker)
                .bind(at)
                .bind(kind)
                .bind(until)
                .bind(max)
                .bind(LEASE_EXPIRED)
                .bind(STOPPED_RENEWING)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                row
            }
        };
        Ok(row.map(Request::try_from).transpose()?)
    }

    /// Extends the leases of the claims `worker` holds among `held` (request id and attempt);
    /// returns those renewed. A claim missing from the answer is lost: its lease ran out
    /// (whether or not another instance took it back), and its holder must stop.
    #[tracing::instrument(level = "debug", skip_all, fields(worker, n = held.len()))]
    pub async fn renew_requests(
        &self,
        worker: &str,
        held: &[(i64, u32)],
        lease: Duration,
    ) -> Result<Vec<(i64, u32)>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = held.iter().map(|(id, _)| *id).collect();
        let renewed: Vec<(i64, i64)> = match &self.pool {
            Pool::Postgres(pool) => {
                sqlx::query_as(
                    "UPDATE requests SET lease_expires_at = now() + make_interval(secs => $3) \
                     WHERE id = ANY($2) AND status = 'claimed' AND claimed_by = $1 \
                     AND lease_expires_at >= now() RETURNING id, attempts",
                )
                .bind(worker)
                .bind(&ids)
                .bind(seconds(lease))
                .fetch_all(pool)
                .await?
            }
            Pool::Sqlite(db) => {
                let at = now();
                let _queued = db.writer.lock().await;
                sqlx::query_as(
                    "UPDATE requests SET lease_expires_at = $4 \
                     WHERE id IN (SELECT value FROM json_each($2)) AND status = 'claimed' \
                     AND claimed_by = $1 AND lease_expires_at >= $3 RETURNING id, attempts",
                )
                .bind(worker)
                .bind(serde_json::to_string(&ids).expect("ids encode"))
                .bind(at)
                .bind(at + chrono_of(lease))
                .fetch_all(&db.pool)
                .await?
            }
        };
        Ok(held
            .iter()
            .filter(|(id, attempt)| {
                renewed
                    .iter()
                    .any(|(rid, ra)| rid == id && *ra == i64::from(*attempt))
            })
            .copied()
            .collect())
    }

    /// Records how a claimed request ended, only while `request`'s claim is the current one
    /// (same holder, same attempt): returns false, writing nothing, when it was taken back.
    /// A claim whose lease ran out but that nobody took back yet still records its end.
    #[tracing::instrument(level = "debug", skip_all, fields(request = request.id))]
    pub async fn finish_request(&self, request: &Request, end: RequestEnd<'_>) -> Result<bool> {
        let at = now();
        let attempt = i64::from(request.attempts);
        let holder = request.claimed_by.as_deref().unwrap_or_default();
        let n = match end {
            RequestEnd::Done { message } | RequestEnd::Failed { reason: message } => {
                let (status, error) = match end {
                    RequestEnd::Done { .. } => (RequestStatus::Done, None),
                    _ => (RequestStatus::Failed, Some(message)),
                };
                on_pool_write!(self, pool => {
                    sqlx::query(
                        "UPDATE requests SET status = $4, message = $5, finished_at = $6, \
                         lease_expires_at = NULL, last_error = COALESCE($7, last_error) \
                         WHERE id = $1 AND claimed_by = $2 AND attempts = $3 AND status = 'claimed'",
                    )
                    .bind(request.id)
                    .bind(holder)
                    .bind(attempt)
                    .bind(status.as_str())
                    .bind(message)
                    .bind(at)
                    .bind(error)
                    .execute(pool)
                    .await?
                    .rows_affected()
                })
            }
            RequestEnd::Retry { after, error } => match &self.pool {
                Pool::Postgres(pool) => sqlx::query(
                    "UPDATE requests SET status = 'queued', claimed_by = NULL, \
                     lease_expires_at = NULL, last_error = $4, \
                     not_before = now() + make_interval(secs => $5) \
                     WHERE id = $1 AND claimed_by = $2 AND attempts = $3 AND status = 'claimed'",
                )
                .bind(request.id)
                .bind(holder)
                .bind(attempt)
                .bind(error)
                .bind(seconds(after))
                .execute(pool)
                .await?
                .rows_affected(),
                Pool::Sqlite(db) => {
                    let _queued = db.writer.lock().await;
                    sqlx::query(
                        "UPDATE requests SET status = 'queued', claimed_by = NULL, \
                         lease_expires_at = NULL, last_error = $4, not_before = $5 \
                         WHERE id = $1 AND claimed_by = $2 AND attempts = $3 AND status = 'claimed'",
                    )
                    .bind(request.id)
                    .bind(holder)
                    .bind(attempt)
                    .bind(error)
                    .bind(at + chrono_of(after))
                    .execute(&db.pool)
                    .await?
                    .rows_affected()
                }
            },
        };
        Ok(n == 1)
    }

    /// Puts requests claimed by `worker` back in the queue (a runner restarting after a crash
    /// calls this with its own name, so they need not wait for their leases). Returns how many.
    #[tracing::instrument(level = "debug", skip_all, fields(worker))]
    pub async fn requeue_claimed(&self, worker: &str) -> Result<u64> {
        Ok(on_pool_write!(self, pool => {
            sqlx::query(
                "UPDATE requests SET status = 'queued', claimed_by = NULL, claimed_at = NULL, \
                 lease_expires_at = NULL, last_error = 'instance ' || $1 || ' restarted while handling it' \
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let p = RequestPolicy {
            lease: Duration::from_secs(1),
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let waits: Vec<u128> = (1..=5).map(|a| p.backoff_after(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(p.backoff_after(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn the_lease_message_reads_as_one_sentence() {
        assert_eq!(
            format!("{LEASE_EXPIRED}a{STOPPED_RENEWING}"),
            "the claim's lease ran out: instance a stopped renewing it (it died, or lost the database)"
        );
    }
}
