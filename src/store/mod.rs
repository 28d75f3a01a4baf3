//! Durable state through sqlx, on SQLite (the embedded default) and PostgreSQL, and the job lock.
//!
//! Every write of job state takes a [`LockProof`], which only [`Store::try_lock`] can mint, and is
//! fenced by the lease epoch inside it: a holder that lost its lock without knowing cannot
//! overwrite the new holder's work (the write fails with [`StoreError::Fenced`]).
//!
//! The store is split by subject: [`model`] (the rows), `backend` (opening, migrating, the
//! per-backend macros), `jobs`, `items` (reads), `writes` (fenced writes), `lock` (the job
//! lock), `usage` (agent runs), `server` (webhook deliveries), `requests` (the request queue:
//! leases, retries), `reporting` (what check runs read), `check_runs` (which check runs are
//! still open), `claims` (items shared by the machines of a job: claims, leases, their
//! fencing), `faults` (which database errors pass), `redeliveries` (missed webhook deliveries
//! asked for again) and `metrics` (what `/metrics` counts).

use chrono::{DateTime, SubsecRound, Utc};

use crate::types::{ItemKey, JobId};

mod backend;
mod cancel;
mod check_runs;
mod claims;
mod debug;
mod event;
mod faults;
mod items;
mod jobs;
mod lock;
mod metrics;
mod model;
mod pg_lock;
mod pg_tls;
mod redeliveries;
mod reporting;
mod requests;
mod server;
mod sql_types;
mod usage;
mod writes;

pub use backend::{BackendKind, DEFAULT_LOCK_LEASE};
pub use cancel::CancelOutcome;
pub use claims::{Claim, ClaimedEnd, Claimer, JobRemote, MachineCount};
pub use debug::{EXIT_HELD, debug_lock};
pub use event::{Event, JobEvent, RunHolder, Skipped};
pub use faults::{Unwritable, is_transient_db, unwritable};
pub use lock::{Exclusive, Holder, JobLock, LockOutcome, LockProof, hostname};
pub use metrics::MetricsSnapshot;
pub use model::*;
pub use redeliveries::{
    MAX_REDELIVERY_ATTEMPTS, NewRedelivery, REDELIVERY_LOCK_KEY, Redelivery, RedeliveryLock,
};
pub use requests::{Request, RequestEnd, RequestPolicy, RequestStatus};
pub use server::{Accepted, DeliveryOutcome, NewDelivery};
pub use usage::{AgentRunRow, JobUsage, NewAgentRun};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "job {job} was taken over by another holder (lease epoch {epoch} is no longer current); this process stops writing to it"
    )]
    Fenced { job: JobId, epoch: i64 },
    /// A claim holder's write after its claim was lost (its lease ran out; the item may have
    /// been taken back): nothing was written.
    #[error(
        "the claim on item {key} (attempt {attempt}) of job {job} is lost: its lease ran out and the item may run elsewhere; this attempt records nothing"
    )]
    ClaimLost {
        job: JobId,
        key: ItemKey,
        attempt: u32,
    },
    /// Workers and claims need a database several machines share.
    #[error(
        "{0} needs PostgreSQL, which several machines can share: pass --database-url postgres://... (or DATABASE_URL); with SQLite run the job on one machine, without --workers"
    )]
    NeedsPostgres(&'static str),
    #[error("no job matches '{0}' (see `prodigy jobs`)")]
    JobNotFound(String),
    #[error("'{prefix}' matches {count} jobs; give more characters of the id")]
    AmbiguousJob { prefix: String, count: usize },
    #[error("job {job} has no item '{key}'")]
    ItemNotFound { job: JobId, key: ItemKey },
    /// A bug: an event only the lock's holder may write, offered as a request from outside.
    #[error("the {0} event may only be written under the job's lock")]
    NeedsLock(String),
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://...")]
    BadUrl(String),
    /// A PostgreSQL URL refused before connecting (callers name the URL in their context).
    #[error("{0}")]
    BadPostgresUrl(String),
    /// The TLS handshake failed; `detail` is sqlx's (and rustls's) words, `hint` what to do.
    #[error("cannot connect to PostgreSQL over TLS: {detail}; {hint}")]
    Tls { detail: String, hint: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: backend::Pool,
    /// SQLite lock lease: a lock row whose heartbeat is older than this is taken over.
    lease: std::time::Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// The current time at the precision both backends keep (microseconds), so a value written and
/// read back compares equal.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn check_epoch(proof: &LockProof, current: Option<i64>) -> Result<()> {
    match current {
        None => Err(StoreError::JobNotFound(proof.job.to_string())),
        Some(epoch) if epoch == proof.epoch => Ok(()),
        Some(_) => Err(StoreError::Fenced {
            job: proof.job,
            epoch: proof.epoch,
        }),
    }
}
/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_lose_only_their_password() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/prodigy"),
            "postgres://app:***@db:5432/prodigy"
        );
        assert_eq!(
            redact_url("postgres://app@db/prodigy"),
            "postgres://app@db/prodigy"
        );
        assert_eq!(
            redact_url("sqlite:///srv/a@b/state.db"),
            "sqlite:///srv/a@b/state.db"
        );
    }
}
