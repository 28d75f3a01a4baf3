//! Item claims: how the machines of one job share its map phase (README "Many machines").
//!
//! A claimer (a `prodigy worker`, or an agent slot of the coordinator) takes pending items with
//! `FOR UPDATE SKIP LOCKED`. Each claim is a lease, renewed by heartbeat ([`Store::renew_claims`]),
//! and carries the item's claim epoch: every claim and every take-back bumps it, and a claim
//! holder's writes ([`Store::finish_claimed`], [`Store::release_claim`],
//! [`Store::append_claim_event`]) happen only while its epoch is current and its lease has not
//! run out, judged by the database's clock. Otherwise they fail with
//! [`StoreError::ClaimLost`] and record nothing: a worker paused past its lease cannot
//! overwrite the attempt that took its place. An item whose lease ran out is claimed again as
//! a new attempt.
//!
//! PostgreSQL only: SQLite is one machine's database (`StoreError::NeedsPostgres`).
//!
//! Lock order: every transaction here takes the job row first (as the lock holder's writes
//! do), then item rows, so claimers and the coordinator never deadlock.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnection, PgPool};

use super::backend::Pool;
use super::usage::insert_agent_run;
use super::writes::close_attempt;
use super::{
    AttemptOutcome, JobEvent, LockProof, NewAgentRun, Result, Store, StoreError, check_epoch, now,
};
use crate::types::{ErrorClass, ItemKey, ItemStatus, JobId};

/// Who claims: one process (`id`, unique per process) on one machine (`machine`, a name people
/// read in `prodigy status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimer {
    pub id: String,
    pub machine: String,
}

impl Claimer {
    /// A new claimer identity for this process, on `machine`.
    pub fn new(machine: &str) -> Self {
        Claimer {
            id: uuid::Uuid::now_v7().to_string(),
            machine: machine.to_string(),
        }
    }
}

/// A held claim on one item: the attempt it runs. Only the store creates one.
#[derive(Debug, Clone)]
pub struct Claim {
    job: JobId,
    key: ItemKey,
    attempt: u32,
    epoch: i64,
    claimer: Claimer,
    position: i64,
    data: Value,
}

impl Claim {
    pub fn job(&self) -> JobId {
        self.job
    }
    pub fn key(&self) -> &ItemKey {
        &self.key
    }
    /// The attempt number this claim runs (previous attempts + 1).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
    pub fn claimer(&self) -> &Claimer {
        &self.claimer
    }
    /// The item's position in the map input.
    pub fn position(&self) -> i64 {
        self.position
    }
    /// The item's data.
    pub fn data(&self) -> &Value {
        &self.data
    }
}

/// A job's git remote and whether workers may claim its items now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRemote {
    pub url: String,
    pub open: bool,
}

/// How many attempts one machine ran for a job, and how many of them succeeded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct MachineCount {
    pub machine: String,
    pub attempts: i64,
    pub succeeded: i64,
}

/// What a claim holder records when its attempt ends, in one transaction.
#[derive(Debug, Clone)]
pub struct ClaimedEnd<'a> {
    pub outcome: &'a AttemptOutcome,
    /// The attempt's agent runs (usage, transcripts).
    pub runs: &'a [NewAgentRun],
    /// Text files of the attempt (name, content): its log and transcripts, for the machines
    /// that do not have them.
    pub files: &'a [(String, String)],
    /// Events in order: the agents' runs, then the item's end.
    pub events: &'a [JobEvent],
}

fn seconds(lease: Duration) -> f64 {
    lease.as_secs_f64().max(0.001)
}

impl Store {
    fn postgres(&self, what: &'static str) -> Result<&PgPool> {
        match &self.pool {
            Pool::Postgres(pool) => Ok(pool),
            Pool::Sqlite(_) => Err(StoreError::NeedsPostgres(what)),
        }
    }

    /// Records the job's git remote and opens its items to workers (the coordinator, under the
    /// job's lock, once the job's base is on the remote).
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn open_to_workers(&self, proof: &LockProof, remote_url: &str) -> Result<()> {
        let pool = self.postgres("running a job with workers")?;
        let mut tx = pool.begin().await?;
        lock_job_fenced(&mut tx, proof).await?;
        sqlx::query("UPDATE jobs SET remote_url = $2, open_to_workers = TRUE WHERE id = $1")
            .bind(proof.job)
            .bind(remote_url)
            .execute(&mut *tx)
            .await?;
        let event = JobEvent::WorkersOpened {
            remote: remote_url.to_string(),
        };
        insert_events(&mut tx, proof.job, std::slice::from_ref(&event)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the job's git remote without opening it: a job that runs with workers from the
    /// start (a resume anywhere then coordinates it the same way).
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn set_job_remote(&self, proof: &LockProof, remote_url: &str) -> Result<()> {
        let pool = self.postgres("running a job with workers")?;
        let mut tx = pool.begin().await?;
        lock_job_fenced(&mut tx, proof).await?;
        sqlx::query("UPDATE jobs SET remote_url = $2 WHERE id = $1")
            .bind(proof.job)
            .bind(remote_url)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Workers claim nothing more of the job (its map phase ended, stopped or was interrupted);
    /// claims held go on until they end or run out.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn close_to_workers(&self, proof: &LockProof) -> Result<()> {
        let pool = self.postgres("running a job with workers")?;
        let mut tx = pool.begin().await?;
        lock_job_fenced(&mut tx, proof).await?;
        let was_open: bool = sqlx::query_scalar("SELECT open_to_workers FROM jobs WHERE id = $1")
            .bind(proof.job)
            .fetch_one(&mut *tx)
            .await?;
        if was_open {
            sqlx::query("UPDATE jobs SET open_to_workers = FALSE WHERE id = $1")
                .bind(proof.job)
                .execute(&mut *tx)
                .await?;
            insert_events(&mut tx, proof.job, &[JobEvent::WorkersClosed {}]).await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(())
    }

    /// The job's repository path on this machine changes (a resume of a job with workers from
    /// another clone: the job's own repository is on another machine).
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn set_job_repo_path(&self, proof: &LockProof, repo_path: &str) -> Result<()> {
        let pool = self.postgres("running a job with workers")?;
        let mut tx = pool.begin().await?;
        lock_job_fenced(&mut tx, proof).await?;
        sqlx::query("UPDATE jobs SET repo_path = $2 WHERE id = $1")
            .bind(proof.job)
            .bind(repo_path)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The job's git remote, when it runs with workers (None: it runs on one machine; always
    /// None on SQLite).
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn job_remote(&self, job: JobId) -> Result<Option<JobRemote>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        let row: Option<(Option<String>, bool)> =
            sqlx::query_as("SELECT remote_url, open_to_workers FROM jobs WHERE id = $1")
                .bind(job)
                .fetch_optional(pool)
                .await?;
        match row {
            None => Err(StoreError::JobNotFound(job.to_string())),
            Some((url, open)) => Ok(url.map(|url| JobRemote { url, open })),
        }
    }

    /// Jobs open to workers now, oldest first.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn open_jobs(&self) -> Result<Vec<JobId>> {
        let pool = self.postgres("prodigy worker")?;
        Ok(
            sqlx::query_scalar("SELECT id FROM jobs WHERE open_to_workers ORDER BY created_at, id")
                .fetch_all(pool)
                .await?,
        )
    }

    /// Puts failed items of a job with workers back to pending, so claimers take them (a
    /// resume's plan: failed items below the retry limit, DLQ items). Returns how many.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job, keys = keys.len()))]
    pub async fn requeue_items(&self, proof: &LockProof, keys: &[ItemKey]) -> Result<u64> {
        let pool = self.postgres("running a job with workers")?;
        let mut tx = pool.begin().await?;
        lock_job_fenced(&mut tx, proof).await?;
        let keys: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let n = sqlx::query(
            "UPDATE work_items SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL, \
             claim_epoch = claim_epoch + 1 WHERE job_id = $1 AND key = ANY($2) AND status = 'failed'",
        )
        .bind(proof.job)
        .bind(&keys)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// After a coordinator stopped: items left `running` without a live claim (no claim, or a
    /// lease that ran out) go back to pending and their open attempts are closed; items whose
    /// claims are still alive are left to the workers running them. Returns how many.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job))]
    pub async fn recover_unclaimed(&self, proof: &LockProof) -> Result<u64> {
        let pool = self.postgres("running a job with workers")?;
        let mut tx = pool.begin().await?;
        lock_job_fenced(&mut tx, proof).await?;
        let keys: Vec<String> = sqlx::query_scalar(
            "UPDATE work_items SET status = 'pending', claim_epoch = claim_epoch + 1, \
             claimed_by = NULL, lease_expires_at = NULL WHERE job_id = $1 AND status = 'running' \
             AND (claimed_by IS NULL OR lease_expires_at IS NULL OR lease_expires_at < now()) \
             RETURNING key",
        )
        .bind(proof.job)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE attempts SET finished_at = $3, success = FALSE, error_class = $4, \
             message = 'interrupted' WHERE job_id = $1 AND key = ANY($2) AND finished_at IS NULL",
        )
        .bind(proof.job)
        .bind(&keys)
        .bind(now())
        .bind(ErrorClass::Unknown)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(keys.len() as u64)
    }

    /// Claims up to `n` items of an open job for `claimer`, each for `lease` (a new attempt per
    /// item). Pending items come first by position; an item whose claim's lease ran out is
    /// taken back: its open attempt is closed as failed ("lease expired") and it runs again as
    /// a new attempt. Rows another claimer is taking right now are skipped, not waited for.
    /// Empty when the job is not open or nothing is left to claim.
    #[tracing::instrument(level = "debug", skip_all, fields(%job, machine = %claimer.machine, n))]
    pub async fn claim_items(
        &self,
        job: JobId,
        claimer: &Claimer,
        n: u32,
        lease: Duration,
    ) -> Result<Vec<Claim>> {
        let pool = self.postgres("claiming items")?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut tx = pool.begin().await?;
        let open: Option<bool> =
            sqlx::query_scalar("SELECT open_to_workers FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(job)
                .fetch_optional(&mut *tx)
                .await?;
        match open {
            None => return Err(StoreError::JobNotFound(job.to_string())),
            Some(false) => return Ok(Vec::new()),
            Some(true) => {}
        }
        let picked: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, status FROM work_items WHERE job_id = $1 \
             AND (status = 'pending' OR (status = 'running' AND lease_expires_at < now())) \
             ORDER BY position, key LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(job)
        .bind(i64::from(n))
        .fetch_all(&mut *tx)
        .await?;
        if picked.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = picked.iter().map(|(k, _)| k.as_str()).collect();
        let at = now();
        // Attempts of claims whose lease ran out end here; who ran them is in their row.
        let expired: Vec<(String, i64, Option<String>)> = sqlx::query_as(
            "UPDATE attempts SET finished_at = $3, success = FALSE, error_class = $4, \
             message = 'lease expired: the machine running this attempt stopped renewing its claim; \
             the item runs again' \
             WHERE job_id = $1 AND key = ANY($2) AND finished_at IS NULL \
             RETURNING key, attempt, machine",
        )
        .bind(job)
        .bind(&keys)
        .bind(at)
        .bind(ErrorClass::Unknown)
        .fetch_all(&mut *tx)
        .await?;
        let rows: Vec<(String, i64, Value, i64, i64)> = sqlx::query_as(
            "UPDATE work_items SET status = 'running', attempts = attempts + 1, \
             claim_epoch = claim_epoch + 1, claimed_by = $3, \
             lease_expires_at = now() + make_interval(secs => $4) \
             WHERE job_id = $1 AND key = ANY($2) \
             RETURNING key, position, data, attempts, claim_epoch",
        )
        .bind(job)
        .bind(&keys)
        .bind(&claimer.id)
        .bind(seconds(lease))
        .fetch_all(&mut *tx)
        .await?;
        let mut claims: Vec<Claim> = rows
            .into_iter()
            .map(|(key, position, data, attempts, epoch)| Claim {
                job,
                key: ItemKey(key),
                attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                epoch,
                claimer: claimer.clone(),
                position,
                data,
            })
            .collect();
        claims.sort_by_key(|c| c.position);
        let c_keys: Vec<&str> = claims.iter().map(|c| c.key.0.as_str()).collect();
        let attempts: Vec<i64> = claims.iter().map(|c| i64::from(c.attempt)).collect();
        sqlx::query(
            "INSERT INTO attempts (job_id, key, attempt, started_at, machine) \
             SELECT $1, k, a, $4, $5 FROM UNNEST($2::text[], $3::bigint[]) AS t(k, a)",
        )
        .bind(job)
        .bind(&c_keys)
        .bind(&attempts)
        .bind(at)
        .bind(&claimer.machine)
        .execute(&mut *tx)
        .await?;
        let mut events = Vec::with_capacity(expired.len() + claims.len());
        for (key, attempt, machine) in expired {
            events.push(JobEvent::ClaimExpired {
                key: ItemKey(key),
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                machine,
            });
        }
        for c in &claims {
            events.push(JobEvent::ItemClaimed {
                key: c.key.clone(),
                attempt: c.attempt,
                machine: claimer.machine.clone(),
            });
        }
        insert_events(&mut tx, job, &events).await?;
        tx.commit().await?;
        Ok(claims)
    }

    /// Extends the leases of the claims `claimer` still holds on `job`; returns them (key and
    /// epoch). A claim missing from the answer is lost: its lease ran out (whether or not
    /// someone took the item back), and its holder must stop and record nothing.
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn renew_claims(
        &self,
        job: JobId,
        claimer: &Claimer,
        lease: Duration,
    ) -> Result<Vec<(ItemKey, i64)>> {
        let pool = self.postgres("claiming items")?;
        Ok(sqlx::query_as(
            "UPDATE work_items SET lease_expires_at = now() + make_interval(secs => $3) \
             WHERE job_id = $1 AND claimed_by = $2 AND status = 'running' \
             AND lease_expires_at >= now() RETURNING key, claim_epoch",
        )
        .bind(job)
        .bind(&claimer.id)
        .bind(seconds(lease))
        .fetch_all(pool)
        .await?)
    }

    /// Records how a claimed attempt ended: the attempt row, the item's status, commit and
    /// result, the DLQ, the agent runs, the attempt's files and its events, all in one
    /// transaction, and only while the claim is held ([`StoreError::ClaimLost`] otherwise, and
    /// nothing is written). The item's claim ends.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %claim.job, key = %claim.key, attempt = claim.attempt))]
    pub async fn finish_claimed(&self, claim: &Claim, end: &ClaimedEnd<'_>) -> Result<()> {
        let pool = self.postgres("claiming items")?;
        let mut tx = pool.begin().await?;
        lock_claim(&mut tx, claim).await?;
        let at = now();
        let outcome = end.outcome;
        let status = if outcome.success {
            ItemStatus::Succeeded
        } else {
            ItemStatus::Failed
        };
        let job = claim.job;
        let key = &claim.key;
        close_attempt!(tx, job, key, claim.attempt, outcome, at, status);
        sqlx::query(
            "UPDATE work_items SET claimed_by = NULL, lease_expires_at = NULL \
             WHERE job_id = $1 AND key = $2",
        )
        .bind(job)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        for run in end.runs {
            insert_agent_run!(tx, job, run, at);
        }
        for (name, content) in end.files {
            sqlx::query(
                "INSERT INTO attempt_files (job_id, key, attempt, name, content) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id, key, attempt, name) \
                 DO UPDATE SET content = excluded.content",
            )
            .bind(job)
            .bind(key)
            .bind(i64::from(claim.attempt))
            .bind(name)
            .bind(content)
            .execute(&mut *tx)
            .await?;
        }
        insert_events(&mut tx, job, end.events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives a claimed item back without counting the attempt against it (its holder is
    /// stopping: SIGTERM, a spent budget): the attempt is closed with `message`, the item is
    /// pending again for any claimer, and the claim ends.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %claim.job, key = %claim.key))]
    pub async fn release_claim(&self, claim: &Claim, message: &str) -> Result<()> {
        let pool = self.postgres("claiming items")?;
        let mut tx = pool.begin().await?;
        lock_claim(&mut tx, claim).await?;
        sqlx::query(
            "UPDATE attempts SET finished_at = $4, success = FALSE, message = $5 \
             WHERE job_id = $1 AND key = $2 AND attempt = $3",
        )
        .bind(claim.job)
        .bind(&claim.key)
        .bind(i64::from(claim.attempt))
        .bind(now())
        .bind(message)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE work_items SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL, \
             claim_epoch = claim_epoch + 1 WHERE job_id = $1 AND key = $2",
        )
        .bind(claim.job)
        .bind(&claim.key)
        .execute(&mut *tx)
        .await?;
        let event = JobEvent::ClaimReleased {
            key: claim.key.clone(),
            attempt: claim.attempt,
            machine: claim.claimer.machine.clone(),
            reason: message.to_string(),
        };
        insert_events(&mut tx, claim.job, std::slice::from_ref(&event)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An event of a claimed attempt while it runs (an API back-off), written only while the
    /// claim is held.
    #[tracing::instrument(level = "debug", skip_all, fields(job = %claim.job, key = %claim.key))]
    pub async fn append_claim_event(&self, claim: &Claim, event: &JobEvent) -> Result<()> {
        let pool = self.postgres("claiming items")?;
        let mut tx = pool.begin().await?;
        lock_claim(&mut tx, claim).await?;
        insert_events(&mut tx, claim.job, std::slice::from_ref(event)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A text file an attempt on another machine stored (`log`, or a transcript's path).
    #[tracing::instrument(level = "debug", skip_all, fields(%job, %key, attempt))]
    pub async fn attempt_file(
        &self,
        job: JobId,
        key: &ItemKey,
        attempt: u32,
        name: &str,
    ) -> Result<Option<String>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        Ok(sqlx::query_scalar(
            "SELECT content FROM attempt_files WHERE job_id = $1 AND key = $2 AND attempt = $3 \
             AND name = $4",
        )
        .bind(job)
        .bind(key)
        .bind(i64::from(attempt))
        .bind(name)
        .fetch_optional(pool)
        .await?)
    }

    /// A stored file by name alone (a transcript path is unique per job), with its item.
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn attempt_file_named(&self, job: JobId, name: &str) -> Result<Option<String>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        Ok(sqlx::query_scalar(
            "SELECT content FROM attempt_files WHERE job_id = $1 AND name = $2 \
             ORDER BY attempt DESC LIMIT 1",
        )
        .bind(job)
        .bind(name)
        .fetch_optional(pool)
        .await?)
    }

    /// The machines that ran the job's attempts, most attempts first (empty when no attempt
    /// recorded a machine: a job on one machine).
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn machines(&self, job: JobId) -> Result<Vec<MachineCount>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query_as(
            "SELECT machine, COUNT(*) AS attempts, COUNT(*) FILTER (WHERE success) AS succeeded \
             FROM attempts WHERE job_id = $1 AND machine IS NOT NULL \
             GROUP BY machine ORDER BY COUNT(*) DESC, machine",
        )
        .bind(job)
        .fetch_all(pool)
        .await?)
    }

    /// The machine of each item's last attempt (items whose attempts recorded one).
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn item_machines(&self, job: JobId) -> Result<Vec<(ItemKey, u32, String)>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        let rows: Vec<(ItemKey, i64, String)> = sqlx::query_as(
            "SELECT DISTINCT ON (key) key, attempt, machine FROM attempts \
             WHERE job_id = $1 AND machine IS NOT NULL ORDER BY key, attempt DESC",
        )
        .bind(job)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(k, a, m)| (k, u32::try_from(a).unwrap_or(u32::MAX), m))
            .collect())
    }
}

/// Locks the job row (the lock order of every job write) and checks the proof's epoch.
async fn lock_job_fenced(tx: &mut PgConnection, proof: &LockProof) -> Result<()> {
    let epoch: Option<i64> =
        sqlx::query_scalar("SELECT lease_epoch FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(proof.job)
            .fetch_optional(&mut *tx)
            .await?;
    check_epoch(proof, epoch)
}

/// Locks the job row, then checks that the claim is held: its epoch is current, its lease has
/// not run out by the database's clock, and the item is still running under it.
async fn lock_claim(tx: &mut PgConnection, claim: &Claim) -> Result<()> {
    let job: Option<i64> =
        sqlx::query_scalar("SELECT event_seq FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(claim.job)
            .fetch_optional(&mut *tx)
            .await?;
    if job.is_none() {
        return Err(StoreError::JobNotFound(claim.job.to_string()));
    }
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT claim_epoch FROM work_items WHERE job_id = $1 AND key = $2 AND claim_epoch = $3 \
         AND claimed_by = $4 AND status = 'running' AND lease_expires_at >= now() FOR UPDATE",
    )
    .bind(claim.job)
    .bind(&claim.key)
    .bind(claim.epoch)
    .bind(&claim.claimer.id)
    .fetch_optional(&mut *tx)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::ClaimLost {
            job: claim.job,
            key: claim.key.clone(),
            attempt: claim.attempt,
        }),
    }
}

/// Appends events in order; the caller holds the job row's lock.
async fn insert_events(tx: &mut PgConnection, job: JobId, events: &[JobEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let last: i64 = sqlx::query_scalar(
        "UPDATE jobs SET event_seq = event_seq + $2 WHERE id = $1 RETURNING event_seq",
    )
    .bind(job)
    .bind(events.len() as i64)
    .fetch_one(&mut *tx)
    .await?;
    let first = last - events.len() as i64 + 1;
    let at = now();
    for (i, event) in events.iter().enumerate() {
        let (kind, data) = event.to_row();
        sqlx::query("INSERT INTO events (job_id, seq, at, kind, data) VALUES ($1, $2, $3, $4, $5)")
            .bind(job)
            .bind(first + i as i64)
            .bind(at)
            .bind(kind)
            .bind(data)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
