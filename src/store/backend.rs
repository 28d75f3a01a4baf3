//! The two backends behind one [`Store`]: opening and migrating the database, and the macros
//! that run one query text on whichever pool the store has. Queries name these macros by path
//! (`use super::backend::{on_pool, fenced};`), so module order does not matter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Postgres, Sqlite, Transaction};

use super::{LockProof, Result, Store, StoreError, check_epoch, pg_tls};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub(super) enum Pool {
    Sqlite(SqliteDb),
    Postgres(PgPool),
}

#[derive(Clone)]
pub(super) struct SqliteDb {
    pub(super) pool: SqlitePool,
    /// Shared by every store of this process on the same file: write transactions queue here,
    /// in order, instead of polling SQLite's busy handler (whose back-off reaches 100 ms sleeps
    /// and makes tail latency under contention seconds long). Other processes still meet the
    /// busy timeout.
    pub(super) writer: Arc<tokio::sync::Mutex<()>>,
    /// One connection (opened on first use) for webhook ingest: the same connection every
    /// time keeps its page cache, where the pool's would be stale after the others' writes.
    pub(super) ingest: SqlitePool,
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
            $crate::store::backend::Pool::Sqlite(db) => {
                let $pool = &db.pool;
                $body
            }
            $crate::store::backend::Pool::Postgres($pool) => $body,
        }
    };
}

/// `on_pool!` for one autocommit write: on SQLite it first takes this process's place in the
/// file's write queue (see [`SqliteDb::writer`]), so it never polls the busy handler against
/// another task of this process.
macro_rules! on_pool_write {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::backend::Pool::Sqlite(db) => {
                let _queued = db.writer.lock().await;
                let $pool = &db.pool;
                $body
            }
            $crate::store::backend::Pool::Postgres($pool) => $body,
        }
    };
}

/// Like `on_pool!`, with `$db` bound to something that implements [`PoolExt`].
macro_rules! on_db {
    ($store:expr, $db:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::backend::Pool::Sqlite($db) => $body,
            $crate::store::backend::Pool::Postgres($db) => $body,
        }
    };
}

/// Runs `$body` in a transaction opened by [`PoolExt::begin_fenced`]: the proof's epoch is
/// checked first and cannot change until the commit.
macro_rules! fenced {
    ($store:expr, $proof:expr, $tx:ident => $body:expr) => {
        $crate::store::backend::on_db!($store, db => {
            #[allow(unused_mut)]
            let mut $tx = $crate::store::backend::PoolExt::begin_fenced(db, $proof).await?;
            let out = $body;
            $tx.commit().await?;
            out
        })
    };
}

pub(super) use {fenced, on_db, on_pool, on_pool_write};

/// What differs between the backends when a write transaction starts.
pub(super) trait PoolExt {
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
pub(super) struct WriteTx<DB: sqlx::Database> {
    tx: Transaction<'static, DB>,
    _queued: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<DB: sqlx::Database> WriteTx<DB> {
    pub(super) async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }

    pub(super) async fn rollback(self) -> Result<()> {
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

/// Whether a released SQLite connection may be reused: not when it is still inside a
/// transaction once the rollback a dropped transaction queued has run (a COMMIT that failed on
/// a full disk or a read-only file leaves it so, since SQLite already rolled back and the
/// queued ROLLBACK fails too). Such a connection is closed; the pool opens a fresh one.
fn out_of_transaction(
    conn: &mut sqlx::SqliteConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, std::result::Result<bool, sqlx::Error>> {
    use sqlx::Connection as _;
    Box::pin(async move {
        if !conn.is_in_transaction() {
            return Ok(true);
        }
        // Commands run in order: after the ping, a queued rollback has run.
        conn.ping().await?;
        Ok(!conn.is_in_transaction())
    })
}

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Default SQLite lock lease; `PRODIGY_LOCK_LEASE_SECS` overrides it.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(30);

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The lease from `PRODIGY_LOCK_LEASE_SECS` (seconds, fractions allowed), else the default.
fn lease_from_env() -> Duration {
    std::env::var("PRODIGY_LOCK_LEASE_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_LOCK_LEASE)
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
                .foreign_keys(true)
                // Every statement only at trace level: `-v` (debug) is for prodigy's own logs.
                .log_statements(log::LevelFilter::Trace);
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
                .after_release(out_of_transaction)
                .connect_with(options.clone())
                .await?;
            drop(first_open);
            let ingest = if in_memory {
                pool.clone()
            } else {
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .after_release(out_of_transaction)
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
            // PostgreSQL: sqlx serialises migrators with an advisory lock, but creates its
            // bookkeeping table before taking it; machines starting together on a fresh
            // database (a coordinator and its workers) race there. The loser looks again.
            Pool::Postgres(pool) => {
                let mut tries = 0;
                loop {
                    let run = async {
                        let before = self.applied_on(pool).await?;
                        migrator.run_to(version, pool).await?;
                        Ok::<_, StoreError>((before, self.applied_on(pool).await?))
                    }
                    .await;
                    match run {
                        Ok(done) => break done,
                        Err(e) if tries < 5 && raced_creating(&e) => {
                            tracing::debug!(error = %e, "migration raced another process; retrying");
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
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
}

/// Whether a PostgreSQL migration failed because another process created the same object at
/// the same moment (a unique violation in the catalog, or "already exists").
fn raced_creating(e: &StoreError) -> bool {
    let text = e.to_string();
    text.contains("duplicate key value") || text.contains("already exists")
}
