//! The rows the store reads and writes, as the rest of prodigy sees them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::types::{
    CommitSha, ErrorClass, ItemKey, ItemStatus, JobId, JobStatus, Phase, PrNumber, RepoName,
};

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
    pub pr_number: Option<PrNumber>,
    pub head_sha: Option<CommitSha>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: JobId,
    pub workflow_path: String,
    pub workflow_text: String,
    pub workflow_name: String,
    pub repo_path: String,
    pub repo: Option<RepoName>,
    pub pr_number: Option<PrNumber>,
    pub head_sha: Option<CommitSha>,
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
    /// How many items were merged when reduce (and `merge`) last finished: a retry or resume
    /// that merges more runs reduce again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_merged: Option<u64>,
    /// A standard workflow: how many of its steps completed, recorded with each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_done: Option<usize>,
    /// A standard workflow: the job branch head when its last completed step ended; a resume
    /// continues from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_commit: Option<String>,
}

/// A job with its item counts, for `prodigy jobs` and pages.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub job: Job,
    pub counts: ItemCounts,
    /// What the job's agents used so far.
    pub usage: crate::types::Usage,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, sqlx::FromRow,
)]
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
    /// The machine that ran it (jobs with workers; None: the job's own process).
    #[sqlx(default)]
    pub machine: Option<String>,
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

/// Filter for [`Store::items`].
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    pub status: Option<ItemStatus>,
    pub merged: Option<bool>,
    pub keys: Option<Vec<ItemKey>>,
}
