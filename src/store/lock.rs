//! The job lock: a PostgreSQL session advisory lock on a dedicated connection, or a SQLite lock
//! row kept alive by a heartbeat. Each acquisition bumps the job's lease epoch, which fences every
//! later write of the previous holder (see the module docs of `store`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::types::Json;
use sqlx::{Connection, Executor, FromRow, Sqlite};
use tokio::task::JoinHandle;

use serde::Serialize;

use super::backend::{Pool, PoolExt, SqliteDb};
use super::{Result, Store, StoreError, now};
use crate::types::JobId;

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
            // A GitHub Actions step names itself by its run's address.
            Some(i) if i.contains("://") => write!(f, "{i} (pid {} on {})", self.pid, self.host),
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
    pub(super) job: JobId,
    pub(super) epoch: i64,
}

impl LockProof {
    pub fn job(&self) -> JobId {
        self.job
    }
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}

/// How often a PostgreSQL loser looks again when the winner has not yet recorded itself.
const HOLDER_RETRY: Duration = Duration::from_millis(10);
const HOLDER_RETRIES: u32 = 200;

/// `jobs.lock_holder`, `jobs.locked_since`, and whether that holder's session holds the lock.
type HolderRecord = (Option<Json<Holder>>, Option<DateTime<Utc>>, bool);

/// A held job lock. Release it with [`JobLock::release`]; if the process dies instead, the lock
/// frees itself (PostgreSQL: with the connection; SQLite: when the heartbeat lease runs out, or
/// at once when the holder pid is gone on the same host).
pub struct JobLock {
    proof: LockProof,
    holder: Holder,
    /// None once released.
    held: Option<Held>,
}

enum Held {
    /// The task owning the session that holds the advisory lock (and takes it again when the
    /// session drops); closing the session frees the lock.
    Postgres(super::pg_lock::PgKeeper),
    Sqlite {
        db: SqliteDb,
        heartbeat: JoinHandle<()>,
    },
}

impl JobLock {
    pub fn proof(&self) -> &LockProof {
        &self.proof
    }

    /// Who holds it: this process.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Frees the lock now (PostgreSQL: `pg_advisory_unlock` on the dedicated connection, then
    /// closes it; a connection that dropped took the lock with it, and releasing succeeds; SQLite: deletes the lock row and stops the heartbeat). A lock that was taken
    /// over meanwhile is left to its new holder.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %self.proof.job))]
    pub async fn release(mut self) -> Result<()> {
        let job = self.proof.job;
        let epoch = self.proof.epoch;
        match self.held.take() {
            None => Ok(()),
            Some(Held::Postgres(keeper)) => keeper.release().await,
            Some(Held::Sqlite { db, heartbeat }) => {
                heartbeat.abort();
                let mut tx = db.begin_write().await?;
                sqlx::query("DELETE FROM job_locks WHERE job_id = $1 AND holder_id = $2")
                    .bind(job)
                    .bind(&self.holder.id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE jobs SET lock_holder = NULL, locked_since = NULL \
                     WHERE id = $1 AND lease_epoch = $2",
                )
                .bind(job)
                .bind(epoch)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock")
            .field("proof", &self.proof)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        // PostgreSQL: dropping the connection closes it, and the server frees the lock.
        // SQLite: without heartbeats the row goes stale and is taken over after one lease.
        if let Some(Held::Sqlite { heartbeat, .. }) = &self.held {
            heartbeat.abort();
        }
    }
}

#[derive(FromRow)]
struct LockRow {
    holder_id: String,
    host: String,
    pid: i64,
    instance: Option<String>,
    acquired_at: DateTime<Utc>,
    heartbeat_at: DateTime<Utc>,
}

impl LockRow {
    fn holder(&self) -> Holder {
        Holder {
            id: self.holder_id.clone(),
            host: self.host.clone(),
            pid: u32::try_from(self.pid).unwrap_or(0),
            instance: self.instance.clone(),
        }
    }
}

/// Whether a process with this pid exists on this host (`kill(pid, 0)`: only ESRCH means gone).
fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 performs the existence and permission checks only; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The answer of [`Store::with_job_lock`]: the work ran under the lock, or someone else holds it.
#[derive(Debug)]
#[must_use]
pub enum Exclusive<R> {
    Performed(R),
    Held {
        holder: Holder,
        since: DateTime<Utc>,
    },
}

impl Store {
    /// Runs `work` holding the job's lock, and releases the lock whatever `work` returns. `work`
    /// gets the [`LockProof`] every write of job state takes. Contention is an answer
    /// ([`Exclusive::Held`]), not an error, and nothing waits for the holder. A release that
    /// fails after `work` failed is logged and `work`'s error returned; a lock whose release
    /// failed frees itself (PostgreSQL: with its connection; SQLite: when its lease runs out).
    ///
    /// This is the one way application code holds a job: reads (`lock_holder`) never take it.
    pub async fn with_job_lock<R, E>(
        &self,
        job: JobId,
        holder: &Holder,
        work: impl AsyncFnOnce(&LockProof) -> std::result::Result<R, E>,
    ) -> std::result::Result<Exclusive<R>, E>
    where
        E: From<StoreError>,
    {
        #[allow(clippy::disallowed_methods)] // the one caller in application code
        let lock = match self.try_lock(job, holder).await? {
            LockOutcome::Acquired(lock) => lock,
            LockOutcome::Held { holder, since } => return Ok(Exclusive::Held { holder, since }),
        };
        let result = work(lock.proof()).await;
        let released = lock.release().await;
        match (result, released) {
            (Ok(out), Ok(())) => Ok(Exclusive::Performed(out)),
            (Ok(_), Err(e)) => Err(e.into()),
            (Err(e), released) => {
                if let Err(r) = released {
                    tracing::warn!(%job, error = %r, "cannot release the job lock after a failure");
                }
                Err(e)
            }
        }
    }

    /// Who holds the job's lock now and since when, without trying to take it (status pages).
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn lock_holder(&self, job: JobId) -> Result<Option<(Holder, DateTime<Utc>)>> {
        match &self.pool {
            Pool::Postgres(pool) => match pg_holder_record(pool, job, false).await? {
                None => Err(StoreError::JobNotFound(job.to_string())),
                Some((Some(Json(holder)), Some(since), true)) => Ok(Some((holder, since))),
                Some(_) => Ok(None),
            },
            Pool::Sqlite(db) => {
                let Some(row) = lock_row(&db.pool, job).await? else {
                    // No lock row: free, or no such job.
                    self.get_job(job).await?;
                    return Ok(None);
                };
                Ok(live_holder(&row, self.lease, now()).map(|h| (h, row.acquired_at)))
            }
        }
    }

    /// Takes the job's lock for `holder`, or says who holds it since when. Never waits for the
    /// holder to finish.
    ///
    /// Low level: the store's conformance tests and benchmark hold a lock across steps with it. Application code uses [`Store::with_job_lock`], which always
    /// releases; clippy refuses this method elsewhere (`clippy.toml`).
    #[tracing::instrument(level = "debug", skip_all, fields(%job, holder = %holder))]
    pub async fn try_lock(&self, job: JobId, holder: &Holder) -> Result<LockOutcome> {
        let outcome = match &self.pool {
            Pool::Postgres(pool) => try_lock_postgres(pool, job, holder).await,
            Pool::Sqlite(db) => try_lock_sqlite(db, self.lease, job, holder).await,
        };
        if let Ok(o) = &outcome {
            crate::metrics::lock_attempt(matches!(o, LockOutcome::Acquired(_)));
        }
        outcome
    }
}

macro_rules! holder_record_sql {
    () => {
        "SELECT j.lock_holder, j.locked_since, EXISTS (SELECT 1 FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND l.classid::bigint = $2 AND l.objid::bigint = $3 \
         AND l.pid = (j.lock_holder ->> 'backend_pid')::int) \
         FROM jobs j WHERE j.id = $1"
    };
}

/// The job's `lock_holder` record, `locked_since`, and whether that holder's session holds the
/// advisory lock now (a record left by a holder that died is not). None: no such job.
/// `wait` share-locks the job row, so a winner's record being written is waited for.
async fn pg_holder_record(pool: &PgPool, job: JobId, wait: bool) -> Result<Option<HolderRecord>> {
    // pg_locks shows a bigint advisory key as its high half in classid, its low half in objid,
    // objsubid 1.
    let key_bits = job.lock_key() as u64;
    let query = if wait {
        concat!(holder_record_sql!(), " FOR SHARE OF j")
    } else {
        holder_record_sql!()
    };
    Ok(sqlx::query_as(query)
        .bind(job)
        .bind((key_bits >> 32) as i64)
        .bind((key_bits & 0xffff_ffff) as i64)
        .fetch_optional(pool)
        .await?)
}

async fn try_lock_postgres(pool: &PgPool, job: JobId, holder: &Holder) -> Result<LockOutcome> {
    let key = job.lock_key();
    for _ in 0..HOLDER_RETRIES {
        // Try on a pooled connection: setting up a connection per attempt would dominate the
        // latency under contention. No pooled connection ever holds a job lock, because a
        // winner's connection is detached below.
        let mut pooled = pool.acquire().await?;
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *pooled)
            .await?;
        if acquired {
            // The session holds the lock now: its connection leaves the pool for good and
            // belongs to the JobLock alone, so it is never handed to anyone else.
            let mut conn: PgConnection = pooled.detach();
            // The record carries this session's backend pid, so a loser can tell it from the
            // record of an earlier holder that died before clearing it.
            let epoch: Option<i64> = sqlx::query_scalar(
                "UPDATE jobs SET lease_epoch = lease_epoch + 1, \
                 lock_holder = jsonb_set($2::jsonb, '{backend_pid}', to_jsonb(pg_backend_pid())), \
                 locked_since = $3 WHERE id = $1 RETURNING lease_epoch",
            )
            .bind(job)
            .bind(Json(holder))
            .bind(now())
            .fetch_optional(&mut conn)
            .await?;
            let Some(epoch) = epoch else {
                // Closing the connection frees the lock on a job that does not exist.
                conn.close().await?;
                return Err(StoreError::JobNotFound(job.to_string()));
            };
            return Ok(LockOutcome::Acquired(JobLock {
                proof: LockProof { job, epoch },
                holder: holder.clone(),
                held: Some(Held::Postgres(super::pg_lock::PgKeeper::start(
                    pool.clone(),
                    conn,
                    key,
                    job,
                    epoch,
                ))),
            }));
        }
        drop(pooled);
        // FOR SHARE waits for a winner whose record is being written right now.
        let row = pg_holder_record(pool, job, true).await?;
        match row {
            None => return Err(StoreError::JobNotFound(job.to_string())),
            Some((Some(Json(holder)), Some(since), true)) => {
                return Ok(LockOutcome::Held { holder, since });
            }
            // The winner has not recorded itself yet, or released in between: look again.
            Some(_) => tokio::time::sleep(HOLDER_RETRY).await,
        }
    }
    Err(StoreError::Db(sqlx::Error::Protocol(format!(
        "the lock of job {job} is held, but its holder never recorded itself; try again"
    ))))
}

/// The lock row's holder while it is live: heartbeat within the lease and, on this host, its
/// process still there.
fn live_holder(row: &LockRow, lease: Duration, at: DateTime<Utc>) -> Option<Holder> {
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let expired = at - row.heartbeat_at > lease;
    let gone = row.host == hostname() && !pid_alive(row.pid);
    if expired || gone {
        tracing::info!(
            previous = %row.holder(),
            reason = if gone { "holder process is gone" } else { "heartbeat older than the lease" },
            "job lock is stale"
        );
        return None;
    }
    Some(row.holder())
}

async fn lock_row<'e, E>(executor: E, job: JobId) -> Result<Option<LockRow>>
where
    E: Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT holder_id, host, pid, instance, acquired_at, heartbeat_at FROM job_locks \
         WHERE job_id = $1",
    )
    .bind(job)
    .fetch_optional(executor)
    .await?)
}

async fn try_lock_sqlite(
    db: &SqliteDb,
    lease: Duration,
    job: JobId,
    holder: &Holder,
) -> Result<LockOutcome> {
    // A live holder is answered from a plain read, without queueing for the write lock behind
    // the holder's own writes.
    if let Some(row) = lock_row(&db.pool, job).await?
        && let Some(current) = live_holder(&row, lease, now())
    {
        return Ok(LockOutcome::Held {
            holder: current,
            since: row.acquired_at,
        });
    }
    let mut tx = db.begin_write().await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT lease_epoch FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::JobNotFound(job.to_string()));
    }
    let at = now();
    if let Some(row) = lock_row(&mut *tx, job).await?
        && let Some(current) = live_holder(&row, lease, at)
    {
        tx.rollback().await?;
        return Ok(LockOutcome::Held {
            holder: current,
            since: row.acquired_at,
        });
    }
    sqlx::query(
        "INSERT INTO job_locks (job_id, holder_id, host, pid, instance, acquired_at, heartbeat_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) \
         ON CONFLICT (job_id) DO UPDATE SET holder_id = excluded.holder_id, host = excluded.host, \
         pid = excluded.pid, instance = excluded.instance, acquired_at = excluded.acquired_at, \
         heartbeat_at = excluded.heartbeat_at",
    )
    .bind(job)
    .bind(&holder.id)
    .bind(&holder.host)
    .bind(i64::from(holder.pid))
    .bind(&holder.instance)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let epoch: i64 = sqlx::query_scalar(
        "UPDATE jobs SET lease_epoch = lease_epoch + 1, lock_holder = $2, locked_since = $3 \
         WHERE id = $1 RETURNING lease_epoch",
    )
    .bind(job)
    .bind(Json(holder))
    .bind(at)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let heartbeat = tokio::spawn(heartbeat(db.clone(), lease, job, holder.id.clone()));
    Ok(LockOutcome::Acquired(JobLock {
        proof: LockProof { job, epoch },
        holder: holder.clone(),
        held: Some(Held::Sqlite {
            db: db.clone(),
            heartbeat,
        }),
    }))
}

/// Renews the lock row every third of the lease until the lock is released, dropped, or found
/// taken over (then the holder's writes are already fenced; renewing would be wrong).
async fn heartbeat(db: SqliteDb, lease: Duration, job: JobId, holder_id: String) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let queued = db.writer.lock().await;
        let renewed = db
            .pool
            .execute(
                sqlx::query(
                    "UPDATE job_locks SET heartbeat_at = $3 WHERE job_id = $1 AND holder_id = $2",
                )
                .bind(job)
                .bind(&holder_id)
                .bind(now()),
            )
            .await;
        drop(queued);
        match renewed {
            Ok(r) if r.rows_affected() == 0 => {
                tracing::warn!(%job, "job lock was taken over by another holder; heartbeat stops");
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%job, error = %e, "could not renew the job lock; retrying"),
        }
    }
}
