//! Durable state through sqlx, on SQLite (the embedded default) and PostgreSQL, and the job lock.
//!
//! Every write of job state takes a [`LockProof`], which only [`Store::try_lock`] can mint, and is
//! fenced by the lease epoch inside it: a holder that lost its lock without knowing cannot
//! overwrite the new holder's work (the write fails with [`StoreError::Fenced`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Sqlite, Transaction};

use crate::types::{ErrorClass, ItemKey, ItemStatus, JobId, JobStatus, Phase, RepoName};

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
    #[error("no job matches '{0}' (see `prodigy jobs`)")]
    JobNotFound(String),
    #[error("'{prefix}' matches {count} jobs; give more characters of the id")]
    AmbiguousJob { prefix: String, count: usize },
    #[error("job {job} has no item '{key}'")]
    ItemNotFound { job: JobId, key: ItemKey },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

/// Everything needed to create a job row.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub workflow_path: String,
    /// The workflow file's text when the job was created: resume runs this, not the file on disk.
    pub workflow_text: String,
    pub workflow_name: String,
    /// The repository checkout the job runs in (absolute path).
    pub repo_path: String,
    pub repo: Option<RepoName>,
    pub pr_number: Option<i64>,
    pub head_sha: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: JobId,
    pub workflow_path: String,
    pub workflow_text: String,
    pub workflow_name: String,
    pub repo_path: String,
    pub repo: Option<RepoName>,
    pub pr_number: Option<i64>,
    pub head_sha: Option<String>,
    pub status: JobStatus,
    pub phase: Phase,
    /// Git refs and commits of the job (branch, base commit, map-done commit).
    #[sqlx(json)]
    pub refs: JobRefs,
    /// Variables captured by setup, available to map and reduce after a resume.
    pub vars: Value,
    pub check_run_id: Option<i64>,
    pub error: Option<String>,
    pub lease_epoch: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct JobRefs {
    /// The branch all merged work lands on, e.g. `prodigy/<job-id>`.
    pub branch: Option<String>,
    /// The commit the job started from; agents start from the job branch after setup.
    pub base_commit: Option<String>,
    /// The job branch head once setup finished: every agent starts here.
    pub setup_commit: Option<String>,
    /// The job branch head once the map phase finished: reduce starts here (again after a crash).
    pub map_commit: Option<String>,
}

/// A job with its item counts, for `prodigy jobs` and pages.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub job: Job,
    pub counts: ItemCounts,
    /// What the job's agents used so far.
    pub usage: crate::types::Usage,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ItemCounts {
    #[sqlx(try_from = "i64")]
    pub total: u64,
    #[sqlx(try_from = "i64")]
    pub pending: u64,
    #[sqlx(try_from = "i64")]
    pub running: u64,
    #[sqlx(try_from = "i64")]
    pub succeeded: u64,
    #[sqlx(try_from = "i64")]
    pub failed: u64,
    #[sqlx(try_from = "i64")]
    pub merged: u64,
    #[sqlx(try_from = "i64")]
    pub dlq: u64,
}

#[derive(Debug, Clone)]
pub struct NewItem {
    pub key: ItemKey,
    /// Position in the map input after the pipeline (0-based).
    pub position: i64,
    pub data: Value,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkItem {
    pub key: ItemKey,
    pub position: i64,
    pub data: Value,
    pub status: ItemStatus,
    /// Attempts started so far, across runs, resumes and retries.
    #[sqlx(try_from = "i64")]
    pub attempts: u32,
    pub merged: bool,
    /// The commit the last successful attempt produced (None: nothing to merge).
    #[sqlx(rename = "commit_sha")]
    pub commit: Option<String>,
    /// What the agent reported (captured output etc.), for `${map.results}`.
    pub result: Option<Value>,
    /// Filled in from the DLQ table by [`Store::items`], not a column of the item row.
    #[sqlx(default)]
    pub in_dlq: bool,
    #[sqlx(default)]
    pub reprocessable: bool,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Attempt {
    pub key: ItemKey,
    #[sqlx(try_from = "i64")]
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub success: Option<bool>,
    pub exit_code: Option<i32>,
    pub error_class: Option<ErrorClass>,
    pub signature: Option<String>,
    pub message: Option<String>,
    pub log_path: Option<String>,
    pub worktree: Option<String>,
    pub branch: Option<String>,
    #[sqlx(rename = "commit_sha")]
    pub commit: Option<String>,
}

/// How an attempt ended, written by [`Store::finish_attempt`].
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub success: bool,
    pub exit_code: Option<i32>,
    pub error_class: Option<ErrorClass>,
    pub signature: Option<String>,
    pub message: Option<String>,
    pub log_path: Option<String>,
    pub commit: Option<String>,
    pub result: Option<Value>,
    /// On failure: put (or keep) the item in the DLQ, and whether a plain resume may pick it up.
    pub dlq: Option<DlqDisposition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DlqDisposition {
    pub reprocessable: bool,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DlqItem {
    pub job_id: JobId,
    pub key: ItemKey,
    pub data: Value,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
    #[sqlx(try_from = "i64")]
    pub failure_count: u32,
    pub error_class: ErrorClass,
    pub signature: String,
    pub last_message: String,
    pub reprocessable: bool,
    pub manual_review: bool,
    /// The transcript of the agent run of the failing attempt (upstream's name for it).
    #[sqlx(default)]
    pub json_log_location: Option<String>,
    #[sqlx(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Event {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub data: Value,
}

/// Who holds (or wants) a job lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Holder {
    /// Unique per acquisition attempt (uuid).
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// A server instance name, when the holder is `prodigy serve`.
    pub instance: Option<String>,
}

impl Holder {
    /// This process, on this host.
    pub fn this_process(instance: Option<String>) -> Self {
        Holder {
            id: uuid::Uuid::now_v7().to_string(),
            host: hostname(),
            pid: std::process::id(),
            instance,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.instance {
            Some(i) => write!(f, "server instance {i} (pid {} on {})", self.pid, self.host),
            None => write!(f, "pid {} on {}", self.pid, self.host),
        }
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The answer of [`Store::try_lock`]: contention is an outcome, not an error.
#[derive(Debug)]
pub enum LockOutcome {
    Acquired(JobLock),
    Held {
        holder: Holder,
        since: DateTime<Utc>,
    },
}

/// Proof that the bearer holds a job's lock at `epoch`. Only the store creates it.
#[derive(Debug)]
pub struct LockProof {
    job: JobId,
    epoch: i64,
}

impl LockProof {
    pub fn job(&self) -> JobId {
        self.job
    }
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}

/// Filter for [`Store::items`].
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    pub status: Option<ItemStatus>,
    pub merged: Option<bool>,
    pub keys: Option<Vec<ItemKey>>,
}

/// The one handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// SQLite lock lease: a lock row whose heartbeat is older than this is taken over.
    lease: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqliteDb),
    Postgres(PgPool),
}

#[derive(Clone)]
struct SqliteDb {
    pool: SqlitePool,
    /// Shared by every store of this process on the same file: write transactions queue here,
    /// in order, instead of polling SQLite's busy handler (whose back-off reaches 100 ms sleeps
    /// and makes tail latency under contention seconds long). Other processes still meet the
    /// busy timeout.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// One connection (opened on first use) for webhook ingest: the same connection every
    /// time keeps its page cache, where the pool's would be stale after the others' writes.
    ingest: SqlitePool,
}

/// The write queue of each SQLite file this process has open (see [`SqliteDb::writer`]).
fn sqlite_writer(file: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static WRITERS: LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    // Keyed by the canonical directory: the file itself may not exist yet on the first open.
    let key = match (file.parent(), file.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .map(|dir| dir.join(name))
        .unwrap_or_else(|_| file.to_path_buf()),
        _ => file.to_path_buf(),
    };
    let mut writers = WRITERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    writers.entry(key).or_default().clone()
}

/// Runs `$body` once per backend with `$pool` bound to that backend's pool. Most queries are the
/// same text on both (`$N` placeholders work on SQLite too); the body is compiled once per backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite(db) => {
                let $pool = &db.pool;
                $body
            }
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}

/// `on_pool!` for one autocommit write: on SQLite it first takes this process's place in the
/// file's write queue (see [`SqliteDb::writer`]), so it never polls the busy handler against
/// another task of this process.
macro_rules! on_pool_write {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite(db) => {
                let _queued = db.writer.lock().await;
                let $pool = &db.pool;
                $body
            }
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}

/// Like `on_pool!`, with `$db` bound to something that implements [`PoolExt`].
macro_rules! on_db {
    ($store:expr, $db:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($db) => $body,
            $crate::store::Pool::Postgres($db) => $body,
        }
    };
}

/// Runs `$body` in a transaction opened by [`PoolExt::begin_fenced`]: the proof's epoch is
/// checked first and cannot change until the commit.
macro_rules! fenced {
    ($store:expr, $proof:expr, $tx:ident => $body:expr) => {
        on_db!($store, db => {
            #[allow(unused_mut)]
            let mut $tx = $crate::store::PoolExt::begin_fenced(db, $proof).await?;
            let out = $body;
            $tx.commit().await?;
            out
        })
    };
}

/// What differs between the backends when a write transaction starts.
trait PoolExt {
    type Db: sqlx::Database;

    /// A transaction that will write: SQLite takes the write lock up front (`BEGIN IMMEDIATE`),
    /// so it waits its turn under the busy timeout instead of failing on a lock upgrade.
    fn begin_write(&self) -> impl Future<Output = Result<WriteTx<Self::Db>>> + Send;

    /// A write transaction that first checks the proof's epoch against the job row and keeps it
    /// from changing until commit: SQLite holds the database write lock; PostgreSQL share-locks
    /// the job row, which a takeover's epoch bump has to wait for.
    fn begin_fenced(
        &self,
        proof: &LockProof,
    ) -> impl Future<Output = Result<WriteTx<Self::Db>>> + Send;
}

/// A write transaction, holding its place in the SQLite write queue until it ends.
struct WriteTx<DB: sqlx::Database> {
    tx: Transaction<'static, DB>,
    _queued: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<DB: sqlx::Database> WriteTx<DB> {
    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }

    async fn rollback(self) -> Result<()> {
        Ok(self.tx.rollback().await?)
    }
}

impl<DB: sqlx::Database> std::ops::Deref for WriteTx<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.tx
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for WriteTx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}

impl PoolExt for SqliteDb {
    type Db = Sqlite;

    async fn begin_write(&self) -> Result<WriteTx<Sqlite>> {
        let queued = self.writer.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx {
            tx,
            _queued: Some(queued),
        })
    }

    async fn begin_fenced(&self, proof: &LockProof) -> Result<WriteTx<Sqlite>> {
        let mut tx = self.begin_write().await?;
        let epoch: Option<i64> = sqlx::query_scalar("SELECT lease_epoch FROM jobs WHERE id = $1")
            .bind(proof.job)
            .fetch_optional(&mut *tx)
            .await?;
        check_epoch(proof, epoch)?;
        Ok(tx)
    }
}

impl PoolExt for PgPool {
    type Db = Postgres;

    async fn begin_write(&self) -> Result<WriteTx<Postgres>> {
        Ok(WriteTx {
            tx: self.begin().await?,
            _queued: None,
        })
    }

    async fn begin_fenced(&self, proof: &LockProof) -> Result<WriteTx<Postgres>> {
        let mut tx = self.begin_write().await?;
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT lease_epoch FROM jobs WHERE id = $1 FOR SHARE")
                .bind(proof.job)
                .fetch_optional(&mut *tx)
                .await?;
        check_epoch(proof, epoch)?;
        Ok(tx)
    }
}

mod debug;
mod lock;
mod pg_tls;
mod sql_types;
mod writes;

pub use debug::{EXIT_HELD, debug_lock};
pub use lock::JobLock;
pub use server::{Accepted, DeliveryOutcome, NewDelivery, Request, RequestStatus};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Default SQLite lock lease; `PRODIGY_LOCK_LEASE_SECS` overrides it.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(30);

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// `SELECT <job columns> FROM jobs` followed by the given literal tail.
macro_rules! select_jobs {
    ($tail:literal) => {
        concat!(
            "SELECT id, workflow_path, workflow_text, workflow_name, repo_path, repo, pr_number, ",
            "head_sha, status, phase, refs, vars, check_run_id, error, lease_epoch, created_at, ",
            "updated_at, finished_at FROM jobs ",
            $tail
        )
    };
}

// After `select_jobs!`, which they use.
mod reporting;
mod server;
mod usage;

pub use usage::{AgentRunRow, JobUsage, NewAgentRun};

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

/// The lease from `PRODIGY_LOCK_LEASE_SECS` (seconds, fractions allowed), else the default.
fn lease_from_env() -> Duration {
    std::env::var("PRODIGY_LOCK_LEASE_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_LOCK_LEASE)
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

impl Store {
    /// Opens `sqlite://PATH` (created if missing; WAL, busy timeout) or `postgres://...`, and
    /// applies pending migrations.
    pub async fn open(url: &str) -> Result<Store> {
        let store = Store::open_without_migrating(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the database without touching its schema (for `prodigy migrate` and the
    /// migration tests).
    pub async fn open_without_migrating(url: &str) -> Result<Store> {
        let pool = if url.starts_with("sqlite:") {
            let mut options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            let in_memory = options.get_filename() == Path::new(":memory:");
            if in_memory {
                // Each connection to `:memory:` is its own database: keep exactly one.
                options = options.shared_cache(true);
            } else if let Some(dir) = options.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Db(sqlx::Error::Configuration(
                        format!(
                            "cannot create the directory {} for the SQLite database: {e}",
                            dir.display()
                        )
                        .into(),
                    ))
                })?;
            }
            let file = if in_memory {
                PathBuf::from(format!(":memory:{}", uuid::Uuid::now_v7()))
            } else {
                options.get_filename().to_path_buf()
            };
            let writer = sqlite_writer(&file);
            // The first connection to a fresh file switches it to WAL, which takes the file
            // exclusively and is refused at once ("database is locked") to a concurrent open:
            // queue it with this process's writers.
            let first_open = writer.lock().await;
            // A connection to a local file does not go stale: no ping before each use (each
            // would be a round trip to the connection's thread).
            let pool = SqlitePoolOptions::new()
                .max_connections(if in_memory { 1 } else { 8 })
                .test_before_acquire(false)
                .connect_with(options.clone())
                .await?;
            drop(first_open);
            let ingest = if in_memory {
                pool.clone()
            } else {
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .connect_lazy_with(options)
            };
            Pool::Sqlite(SqliteDb {
                writer,
                pool,
                ingest,
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (options, tls) = pg_tls::connect_options(url)?;
            let host = options.get_host().to_string();
            let pool = PgPoolOptions::new()
                .max_connections(10)
                // Keeps a connection ready after a job lock detaches one from the pool.
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(|e| pg_tls::connect_error(e, &tls, &host))?;
            Pool::Postgres(pool)
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        Ok(Store {
            pool,
            lease: lease_from_env(),
        })
    }

    /// The same store with another SQLite lock lease (tests use short ones).
    pub fn with_lock_lease(mut self, lease: Duration) -> Store {
        self.lease = lease;
        self
    }

    pub fn lock_lease(&self) -> Duration {
        self.lease
    }

    pub fn backend(&self) -> BackendKind {
        match self.pool {
            Pool::Sqlite(_) => BackendKind::Sqlite,
            Pool::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Whether the connection to PostgreSQL is encrypted (`pg_stat_ssl`, as the server sees
    /// it); `None` for SQLite, which has no connection to encrypt.
    pub async fn encrypted(&self) -> Result<Option<bool>> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(None),
            Pool::Postgres(pool) => {
                let ssl: Option<bool> =
                    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                        .fetch_optional(pool)
                        .await?;
                Ok(Some(ssl.unwrap_or(false)))
            }
        }
    }

    /// Closes the pool's connections (waits for checked-out ones to come back).
    pub async fn close(&self) {
        if let Pool::Sqlite(db) = &self.pool {
            db.ingest.close().await;
        }
        on_pool!(self, pool => pool.close().await)
    }

    fn migrator(&self) -> &'static Migrator {
        match self.pool {
            Pool::Sqlite(_) => &SQLITE_MIGRATOR,
            Pool::Postgres(_) => &POSTGRES_MIGRATOR,
        }
    }

    /// Versions of the migrations this build knows, in order.
    pub fn known_migrations(&self) -> Vec<i64> {
        self.migrator().iter().map(|m| m.version).collect()
    }

    /// Versions already applied to the database, in order.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>> {
        match &self.pool {
            Pool::Postgres(pool) => self.applied_on(pool).await,
            Pool::Sqlite(db) => {
                // Creating the bookkeeping table is a write: queue with this process's writers.
                let _queued = db.writer.lock().await;
                self.applied_on(&db.pool).await
            }
        }
    }

    async fn applied_on<DB>(&self, pool: &sqlx::Pool<DB>) -> Result<Vec<i64>>
    where
        DB: sqlx::Database,
        DB::Connection: sqlx::migrate::Migrate,
    {
        let table = &self.migrator().table_name;
        let mut conn = pool.acquire().await?;
        conn.ensure_migrations_table(table).await?;
        let mut versions: Vec<i64> = conn
            .list_applied_migrations(table)
            .await?
            .into_iter()
            .map(|m| m.version)
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Applies pending migrations; returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        self.migrate_up_to(i64::MAX).await
    }

    /// Applies pending migrations up to and including `version`; returns the versions applied now.
    pub async fn migrate_up_to(&self, version: i64) -> Result<Vec<i64>> {
        let migrator = self.migrator();
        let (before, after) = match &self.pool {
            // PostgreSQL: sqlx serialises migrators with an advisory lock.
            Pool::Postgres(pool) => {
                let before = self.applied_on(pool).await?;
                migrator.run_to(version, pool).await?;
                (before, self.applied_on(pool).await?)
            }
            // SQLite has no such lock: queue behind this process's writers for the whole of it,
            // and when another process applied the same migration first (ours then fails on
            // "table already exists"), look again at what is applied and go on from there.
            Pool::Sqlite(db) => {
                let _queued = db.writer.lock().await;
                let before = self.applied_on(&db.pool).await?;
                let mut tries = 0;
                loop {
                    match migrator.run_to(version, &db.pool).await {
                        Ok(()) => break,
                        Err(
                            e @ (MigrateError::Execute(_) | MigrateError::ExecuteMigration(..)),
                        ) if tries < 3 => {
                            tracing::debug!(error = %e, "migration raced another process; retrying");
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                (before, self.applied_on(&db.pool).await?)
            }
        };
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }

    // ---- jobs -----------------------------------------------------------------------------

    pub async fn create_job(&self, new: &NewJob) -> Result<Job> {
        let id = JobId::new();
        let at = now();
        on_pool_write!(self, pool => {
            sqlx::query(
                "INSERT INTO jobs (id, workflow_path, workflow_text, workflow_name, repo_path, repo, \
                 pr_number, head_sha, status, phase, refs, vars, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
            )
            .bind(id)
            .bind(&new.workflow_path)
            .bind(&new.workflow_text)
            .bind(&new.workflow_name)
            .bind(&new.repo_path)
            .bind(&new.repo)
            .bind(new.pr_number)
            .bind(&new.head_sha)
            .bind(JobStatus::Pending)
            .bind(Phase::Setup)
            .bind(Json(JobRefs::default()))
            .bind(Value::Object(Default::default()))
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        self.get_job(id).await
    }

    pub async fn get_job(&self, id: JobId) -> Result<Job> {
        let job: Option<Job> = on_pool!(self, pool => {
            sqlx::query_as(select_jobs!("WHERE id = $1")).bind(id).fetch_optional(pool).await?
        });
        job.ok_or_else(|| StoreError::JobNotFound(id.to_string()))
    }

    /// A job by full id or by a unique prefix of its id's text (hyphens optional).
    pub async fn find_job(&self, id_or_prefix: &str) -> Result<Job> {
        let wanted = id_or_prefix.trim().to_ascii_lowercase();
        if let Ok(id) = wanted.parse::<JobId>() {
            return self.get_job(id).await;
        }
        let Some(prefix) = hyphenated_prefix(&wanted) else {
            return Err(StoreError::JobNotFound(id_or_prefix.to_string()));
        };
        let pattern = format!("{prefix}%");
        let jobs: Vec<Job> = on_pool!(self, pool => {
            sqlx::query_as(select_jobs!("WHERE CAST(id AS TEXT) LIKE $1 ORDER BY id LIMIT 2"))
                .bind(&pattern)
                .fetch_all(pool)
                .await?
        });
        match jobs.len() {
            0 => Err(StoreError::JobNotFound(id_or_prefix.to_string())),
            1 => Ok(jobs.into_iter().next().expect("one job")),
            _ => {
                let count: i64 = on_pool!(self, pool => {
                    sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE CAST(id AS TEXT) LIKE $1")
                        .bind(&pattern)
                        .fetch_one(pool)
                        .await?
                });
                Err(StoreError::AmbiguousJob {
                    prefix: id_or_prefix.to_string(),
                    count: usize::try_from(count).unwrap_or(usize::MAX),
                })
            }
        }
    }

    /// Most recent first.
    pub async fn list_jobs(&self, limit: u32) -> Result<Vec<JobSummary>> {
        let jobs: Vec<Job> = on_pool!(self, pool => {
            sqlx::query_as(select_jobs!("ORDER BY created_at DESC, id DESC LIMIT $1"))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let counts = self.item_counts(job.id).await?;
            let usage = self.job_usage(job.id).await?.total;
            out.push(JobSummary { job, counts, usage });
        }
        Ok(out)
    }

    /// Jobs of one pull request, most recent first (the server's `/prodigy resume` on a PR).
    pub async fn find_jobs_by_pr(&self, repo: &RepoName, pr: i64) -> Result<Vec<Job>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(select_jobs!(
                "WHERE repo = $1 AND pr_number = $2 ORDER BY created_at DESC, id DESC"
            ))
            .bind(repo)
            .bind(pr)
            .fetch_all(pool)
            .await?
        }))
    }

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

/// `0192f5a0`, `0192f5a0-00`, `0192f5a000` -> the hyphenated form's prefix; None unless the text
/// can start a UUID (so LIKE never sees a wildcard).
fn hyphenated_prefix(text: &str) -> Option<String> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return None;
    }
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() > 32 {
        return None;
    }
    let mut out = String::with_capacity(36);
    for (i, c) in hex.chars().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(c);
    }
    // A prefix typed with its hyphens must keep them where a UUID has them.
    if text.contains('-') && !out.starts_with(text) {
        return None;
    }
    Some(out)
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

    #[test]
    fn prefixes_match_the_hyphenated_form() {
        assert_eq!(hyphenated_prefix("0192f5a0").as_deref(), Some("0192f5a0"));
        assert_eq!(
            hyphenated_prefix("0192f5a0ab").as_deref(),
            Some("0192f5a0-ab")
        );
        assert_eq!(
            hyphenated_prefix("0192f5a0-ab").as_deref(),
            Some("0192f5a0-ab")
        );
        assert_eq!(hyphenated_prefix("0192-f5a0"), None);
        assert_eq!(hyphenated_prefix("01%"), None);
        assert_eq!(hyphenated_prefix(""), None);
    }
}
