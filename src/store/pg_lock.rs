//! The keeper of a PostgreSQL job lock: the task that owns the session holding the advisory
//! lock. It checks the session every [`KEEP_EVERY`]; when the connection dropped (the server
//! restarted, the backend was terminated, the network cut), the server has freed the lock, and
//! the keeper takes it again on a new session, but only while the job's lease epoch is still
//! this holder's: if another process took the lock meanwhile, this holder's writes are fenced
//! (`StoreError::Fenced`) and the keeper stops trying. Release goes through the keeper too; a
//! release that finds the session gone succeeds, since the lock went with it.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Result;
use crate::types::JobId;

/// How often the session is checked.
pub(super) const KEEP_EVERY: Duration = Duration::from_secs(1);

type ReleaseReply = oneshot::Sender<Result<()>>;

/// Owns the lock's session through its task; dropping it closes the session (and frees the
/// lock).
pub(super) struct PgKeeper {
    release: Option<oneshot::Sender<ReleaseReply>>,
    _task: JoinHandle<()>,
}

/// What the keeper holds.
struct Kept {
    pool: PgPool,
    key: i64,
    job: JobId,
    epoch: i64,
}

impl PgKeeper {
    pub(super) fn start(
        pool: PgPool,
        conn: PgConnection,
        key: i64,
        job: JobId,
        epoch: i64,
    ) -> PgKeeper {
        let (tx, rx) = oneshot::channel();
        let kept = Kept {
            pool,
            key,
            job,
            epoch,
        };
        PgKeeper {
            release: Some(tx),
            _task: tokio::spawn(keep(kept, conn, rx)),
        }
    }

    /// Unlocks and closes the session (clearing the holder record first).
    pub(super) async fn release(mut self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let Some(tx) = self.release.take() else {
            return Ok(());
        };
        if tx.send(reply).is_err() {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }
}

async fn keep(kept: Kept, conn: PgConnection, mut release: oneshot::Receiver<ReleaseReply>) {
    let job = kept.job;
    let mut conn = Some(conn);
    // Another process took the lock while the session was gone: nothing more to keep.
    let mut taken_over = false;
    loop {
        tokio::select! {
            asked = &mut release => {
                match asked {
                    Ok(reply) => {
                        let _ = reply.send(kept.release(conn.take()).await);
                    }
                    // The JobLock was dropped: closing the session frees the lock.
                    Err(_) => drop(conn.take()),
                }
                return;
            }
            _ = tokio::time::sleep(KEEP_EVERY) => {}
        }
        if taken_over {
            continue;
        }
        if let Some(c) = conn.as_mut()
            && c.ping().await.is_err()
        {
            tracing::warn!(%job, "the session holding the lock of job {job} dropped; taking the lock again");
            conn = None;
        }
        if conn.is_none() {
            match kept.take_again().await {
                Ok(Again::Taken(c)) => {
                    tracing::info!(%job, "the lock of job {job} is held again on a new session");
                    conn = Some(c);
                }
                Ok(Again::TakenOver) => {
                    tracing::warn!(
                        %job,
                        "another process took the lock of job {job} while its session was gone; this process's writes to it are refused (fenced)"
                    );
                    taken_over = true;
                }
                Err(e) => {
                    tracing::warn!(%job, error = %e, "cannot take the lock of job {job} again yet; retrying");
                }
            }
        }
    }
}

enum Again {
    Taken(PgConnection),
    TakenOver,
}

impl Kept {
    /// The advisory lock on a new session, if the job's epoch is still this holder's.
    async fn take_again(&self) -> Result<Again> {
        let mut pooled = self.pool.acquire().await?;
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut *pooled)
            .await?;
        if !acquired {
            return Ok(Again::TakenOver);
        }
        let mut conn = pooled.detach();
        let mine = sqlx::query(
            "UPDATE jobs SET lock_holder = jsonb_set(lock_holder, '{backend_pid}', \
             to_jsonb(pg_backend_pid())) WHERE id = $1 AND lease_epoch = $2 \
             AND lock_holder IS NOT NULL",
        )
        .bind(self.job)
        .bind(self.epoch)
        .execute(&mut conn)
        .await?
        .rows_affected()
            == 1;
        if mine {
            Ok(Again::Taken(conn))
        } else {
            // Someone held it in between (the epoch moved on): give it back.
            let _ = conn.close().await;
            Ok(Again::TakenOver)
        }
    }

    async fn release(&self, conn: Option<PgConnection>) -> Result<()> {
        if let Some(mut conn) = conn {
            let done: Result<()> = async {
                self.clear_holder(&mut conn).await?;
                let _was_held: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(self.key)
                    .fetch_one(&mut conn)
                    .await?;
                conn.close().await?;
                Ok(())
            }
            .await;
            match done {
                Ok(()) => return Ok(()),
                // The session dropped: the server freed the lock with it.
                Err(e) if e.is_transient() => {
                    tracing::warn!(job = %self.job, error = %e, "the lock's session dropped before its release; the lock went with it");
                }
                Err(e) => return Err(e),
            }
        }
        // No session holds the lock: clear the record if it is still this holder's (a stale
        // record is harmless, its backend is gone, but a clear one reads better).
        let mut conn = match self.pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(job = %self.job, error = %e, "cannot clear the job's lock record; it names a session that is gone");
                return Ok(());
            }
        };
        if let Err(e) = self.clear_holder(&mut conn).await {
            tracing::warn!(job = %self.job, error = %e, "cannot clear the job's lock record; it names a session that is gone");
        }
        Ok(())
    }

    /// Clears the holder before unlocking, so the next holder's record is never erased.
    async fn clear_holder(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET lock_holder = NULL, locked_since = NULL \
             WHERE id = $1 AND lease_epoch = $2",
        )
        .bind(self.job)
        .bind(self.epoch)
        .execute(conn)
        .await?;
        Ok(())
    }
}
