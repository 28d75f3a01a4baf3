//! Durable state through sqlx, on SQLite (the embedded default) and PostgreSQL, and the job lock.
//!
//! Every write of job state takes a [`LockProof`], which only [`Store::try_lock`] can mint, and is
//! fenced by the lease epoch inside it: a holder that lost its lock without knowing cannot
//! overwrite the new holder's work (the write fails with [`StoreError::Fenced`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

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

#[derive(Debug, Clone, Serialize)]
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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ItemCounts {
    pub total: u64,
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub merged: u64,
    pub dlq: u64,
}

#[derive(Debug, Clone)]
pub struct NewItem {
    pub key: ItemKey,
    /// Position in the map input after the pipeline (0-based).
    pub position: i64,
    pub data: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkItem {
    pub key: ItemKey,
    pub position: i64,
    pub data: Value,
    pub status: ItemStatus,
    /// Attempts started so far, across runs, resumes and retries.
    pub attempts: u32,
    pub merged: bool,
    /// The commit the last successful attempt produced (None: nothing to merge).
    pub commit: Option<String>,
    /// What the agent reported (captured output etc.), for `${map.results}`.
    pub result: Option<Value>,
    pub in_dlq: bool,
    pub reprocessable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub key: ItemKey,
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

#[derive(Debug, Clone, Serialize)]
pub struct DlqItem {
    pub job_id: JobId,
    pub key: ItemKey,
    pub data: Value,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
    pub failure_count: u32,
    pub error_class: ErrorClass,
    pub signature: String,
    pub last_message: String,
    pub reprocessable: bool,
    pub manual_review: bool,
}

#[derive(Debug, Clone, Serialize)]
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

/// A held job lock. Release it with [`JobLock::release`]; if the process dies instead, the lock
/// frees itself (PostgreSQL: with the connection; SQLite: when the heartbeat lease runs out, or
/// at once when the holder pid is gone on the same host).
pub struct JobLock {
    proof: LockProof,
    // backend-specific: the dedicated PgConnection, or the SQLite heartbeat task
}

impl JobLock {
    pub fn proof(&self) -> &LockProof {
        &self.proof
    }

    /// Frees the lock now (PostgreSQL: `pg_advisory_unlock` on the dedicated connection, then
    /// closes it; SQLite: deletes the lock row and stops the heartbeat).
    pub async fn release(self) -> Result<()> {
        todo!()
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
    // SqlitePool or PgPool
}

impl Store {
    /// Opens `sqlite://PATH` (created if missing; WAL, busy timeout) or `postgres://...`, and
    /// applies pending migrations.
    pub async fn open(url: &str) -> Result<Store> {
        todo!("{url}")
    }

    pub fn backend(&self) -> BackendKind {
        todo!()
    }

    /// Applies pending migrations; returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        todo!()
    }

    // ---- jobs -----------------------------------------------------------------------------

    pub async fn create_job(&self, new: &NewJob) -> Result<Job> {
        todo!("{new:?}")
    }

    pub async fn get_job(&self, id: JobId) -> Result<Job> {
        todo!("{id}")
    }

    /// A job by full id or by a unique prefix of its id's text.
    pub async fn find_job(&self, id_or_prefix: &str) -> Result<Job> {
        todo!("{id_or_prefix}")
    }

    /// Most recent first.
    pub async fn list_jobs(&self, limit: u32) -> Result<Vec<JobSummary>> {
        todo!("{limit}")
    }

    pub async fn item_counts(&self, job: JobId) -> Result<ItemCounts> {
        todo!("{job}")
    }

    // ---- the lock -------------------------------------------------------------------------

    pub async fn try_lock(&self, job: JobId, holder: &Holder) -> Result<LockOutcome> {
        todo!("{job} {holder}")
    }

    // ---- writes under the lock (fenced by the proof's epoch) ---------------------------------

    pub async fn set_job_state(
        &self,
        proof: &LockProof,
        status: JobStatus,
        phase: Phase,
        error: Option<&str>,
    ) -> Result<()> {
        todo!("{proof:?} {status} {phase} {error:?}")
    }

    pub async fn set_job_refs(&self, proof: &LockProof, refs: &JobRefs) -> Result<()> {
        todo!("{proof:?} {refs:?}")
    }

    pub async fn set_job_vars(&self, proof: &LockProof, vars: &Value) -> Result<()> {
        todo!("{proof:?} {vars}")
    }

    pub async fn set_check_run_id(&self, proof: &LockProof, id: i64) -> Result<()> {
        todo!("{proof:?} {id}")
    }

    /// Inserts items; a key already present for the job is left as it is. Returns rows inserted.
    pub async fn insert_items(&self, proof: &LockProof, items: &[NewItem]) -> Result<u64> {
        todo!("{proof:?} {}", items.len())
    }

    /// Marks the item running and appends an attempt row; returns its attempt number
    /// (previous attempts + 1, across runs).
    pub async fn start_attempt(
        &self,
        proof: &LockProof,
        key: &ItemKey,
        worktree: &str,
        branch: &str,
    ) -> Result<u32> {
        todo!("{proof:?} {key} {worktree} {branch}")
    }

    /// Completes the attempt row and sets the item's status; on failure with a DLQ disposition
    /// it upserts the DLQ row (count + 1, last failure, class, signature, message) in the same
    /// transaction. On success the item leaves the DLQ.
    pub async fn finish_attempt(
        &self,
        proof: &LockProof,
        key: &ItemKey,
        attempt: u32,
        outcome: &AttemptOutcome,
    ) -> Result<()> {
        todo!("{proof:?} {key} {attempt} {outcome:?}")
    }

    /// The item's commit reached the job branch (or it had nothing to merge).
    pub async fn mark_merged(&self, proof: &LockProof, key: &ItemKey) -> Result<()> {
        todo!("{proof:?} {key}")
    }

    /// Items left `running` by a crashed holder go back to `pending`; their open attempts are
    /// closed as failed with class Unknown and message "interrupted". Returns how many.
    pub async fn recover_interrupted(&self, proof: &LockProof) -> Result<u64> {
        todo!("{proof:?}")
    }

    pub async fn remove_from_dlq(&self, proof: &LockProof, key: &ItemKey) -> Result<()> {
        todo!("{proof:?} {key}")
    }

    /// Deletes DLQ rows (older than the time, when given); the attempts history stays.
    pub async fn purge_dlq(
        &self,
        proof: &LockProof,
        older_than: Option<DateTime<Utc>>,
    ) -> Result<u64> {
        todo!("{proof:?} {older_than:?}")
    }

    pub async fn append_event(&self, proof: &LockProof, kind: &str, data: &Value) -> Result<i64> {
        todo!("{proof:?} {kind} {data}")
    }

    /// For events recorded by a process that does not hold the lock (e.g. a refused resume).
    pub async fn append_event_unlocked(&self, job: JobId, kind: &str, data: &Value) -> Result<i64> {
        todo!("{job} {kind} {data}")
    }

    // ---- reads ----------------------------------------------------------------------------

    /// Items by position.
    pub async fn items(&self, job: JobId, filter: &ItemFilter) -> Result<Vec<WorkItem>> {
        todo!("{job} {filter:?}")
    }

    /// One item's attempts, oldest first: its full failure history.
    pub async fn attempts(&self, job: JobId, key: &ItemKey) -> Result<Vec<Attempt>> {
        todo!("{job} {key}")
    }

    /// DLQ rows of one job, or of all jobs; oldest first failure first.
    pub async fn dlq(&self, job: Option<JobId>) -> Result<Vec<DlqItem>> {
        todo!("{job:?}")
    }

    /// Events with `seq > after`, in order, at most `limit`.
    pub async fn events(&self, job: JobId, after: i64, limit: u32) -> Result<Vec<Event>> {
        todo!("{job} {after} {limit}")
    }
}
