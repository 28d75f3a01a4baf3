//! The job's event log, typed: every event is a [`JobEvent`], written by the engine (under the
//! job's lock) or, for the few requests from outside it, by the server and the CLI; read back by
//! the server (cancel requests, the server context), the CLI's `events` and the job page.
//!
//! Stored as a `kind` text and a JSON `data` object (serde's adjacent tagging), which is also the
//! shape `prodigy events --json` prints. A row whose kind this build does not know (written by a
//! newer build) is still shown raw; [`Event::event`] is then None.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Holder, ItemCounts};
use crate::types::{ErrorClass, ItemKey, JobStatus, Phase, Usage};

/// One thing that happened to a job. Field names are the event log's JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum JobEvent {
    JobStarted(RunHolder),
    JobResumed(RunHolder),
    DlqRetryStarted(RunHolder),
    /// The job entered `phase`.
    Phase {
        phase: Phase,
        status: JobStatus,
    },
    /// Infrastructure trouble ended the run (database, git).
    JobError {
        message: String,
    },
    JobFinished {
        status: JobStatus,
        phase: Phase,
        error: Option<String>,
        counts: ItemCounts,
    },
    /// How the job's agents are confined (README, "Security model").
    Sandbox {
        enforced: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        landlock_abi: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    ItemsLoaded {
        count: usize,
        duplicates_removed: usize,
    },
    /// A phase's steps (setup, reduce) started; `log` is their log file.
    PhaseStepsStarted {
        phase: String,
        steps: usize,
        log: PathBuf,
    },
    PhaseStepsFinished {
        phase: String,
    },
    PhaseStepsFailed {
        phase: String,
        line: usize,
        class: ErrorClass,
        message: String,
    },
    ResumePlanned {
        to_run: usize,
        duplicates_removed: usize,
        skipped: Vec<Skipped>,
    },
    DlqRetryPlanned {
        to_run: usize,
    },
    /// Reduce runs again: a retry or resume merged items after it had run (`merged` items are
    /// on the branch now).
    ReduceRerun {
        merged: u64,
    },
    /// Reduce had run and does not run again, and why.
    ReduceSkipped {
        reason: String,
    },
    /// Step `index` (0-based) of a standard workflow completed; recorded with the step count,
    /// the branch head and the captured variables, so a resume continues after it.
    StepCompleted {
        index: usize,
        line: usize,
        commit: String,
    },
    /// A resume of a standard workflow continues at step `index`, with the variables of the
    /// steps before restored.
    StepsResumed {
        index: usize,
        of: usize,
    },
    /// Items a crashed run left `running`, put back to pending.
    ItemsInterrupted {
        count: u64,
    },
    ItemStarted {
        key: ItemKey,
        attempt: u32,
        worktree: PathBuf,
        log: PathBuf,
    },
    /// The AI API was rate limiting or overloaded; the item runs again after `delay_ms`.
    AgentBackoff {
        key: ItemKey,
        attempt: u32,
        #[serde(rename = "try")]
        retry: u32,
        delay_ms: u64,
    },
    ItemSucceeded {
        key: ItemKey,
        attempt: u32,
        commit: Option<String>,
    },
    ItemMerged {
        key: ItemKey,
        commit: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        merge_commit: Option<String>,
        /// Merged by an earlier run that crashed before recording it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        found_on_resume: bool,
    },
    ItemFailed {
        key: ItemKey,
        attempt: u32,
        class: ErrorClass,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log: Option<PathBuf>,
        /// The ref keeping the failed attempt's commits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        artifact: Option<String>,
    },
    /// One AI CLI run ended; its usage and transcript.
    AgentFinished {
        phase: String,
        key: Option<ItemKey>,
        attempt: Option<u32>,
        session_id: Option<String>,
        model: Option<String>,
        json_log_location: PathBuf,
        subtype: Option<String>,
        usage: Usage,
    },
    Cancelled {
        reason: String,
    },
    /// The job's budget ran out: what was spent, the limits in force and the grace period.
    BudgetExhausted {
        message: Option<String>,
        spent: Usage,
        max_cost_usd: Option<f64>,
        max_tokens: Option<u64>,
        max_duration_secs: Option<f64>,
        grace_secs: f64,
    },
    /// prodigy stopped a running agent (its budget's grace ended); the item is pending again.
    ItemStopped {
        key: ItemKey,
        attempt: u32,
        reason: String,
    },

    // ---- requests and notes from outside the lock -------------------------------------------
    /// Someone asked to cancel the job; the instance running it sees this and stops it.
    CancelRequested {
        reason: String,
        cleanup: bool,
        by: Option<String>,
    },
    /// The server started the job for this installation and pull request (what a restarted
    /// server needs to report on it).
    ServerContext {
        installation: u64,
        pr: Option<u64>,
        workflow: String,
        instance: String,
        /// The repository configuration's `pass_env` (None: all the operator passes).
        #[serde(default)]
        pass_env: Option<Vec<String>>,
    },
    /// A resume or retry found the job held and did nothing.
    ResumeRefused {
        holder: Holder,
        since: DateTime<Utc>,
        what: String,
    },
}

/// The process that started or resumed a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHolder {
    pub holder: String,
    pub pid: u32,
}

impl RunHolder {
    pub fn this_process() -> Self {
        RunHolder {
            holder: super::hostname(),
            pid: std::process::id(),
        }
    }
}

/// An item a resume leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub key: ItemKey,
    pub reason: String,
}

impl JobEvent {
    /// Whether the event may be written without the job's lock: requests and notes about a job
    /// that another process may be running.
    pub fn from_outside(&self) -> bool {
        matches!(
            self,
            JobEvent::CancelRequested { .. }
                | JobEvent::ServerContext { .. }
                | JobEvent::ResumeRefused { .. }
        )
    }

    /// The stored form: the kind and the data object.
    pub(super) fn to_row(&self) -> (String, Value) {
        let mut value = serde_json::to_value(self).expect("events serialize");
        let kind = value["kind"].as_str().expect("tagged").to_string();
        let data = value
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Object(Default::default()));
        (kind, data)
    }
}

/// A stored event: its sequence number, time and raw kind and data (as printed).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Event {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub data: Value,
}

impl Event {
    /// The typed event; None for a kind this build does not know.
    pub fn event(&self) -> Option<JobEvent> {
        let tagged = serde_json::json!({"kind": self.kind, "data": self.data});
        serde_json::from_value(tagged).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let events = [
            JobEvent::ItemMerged {
                key: ItemKey::from("a"),
                commit: "c0ffee".into(),
                merge_commit: None,
                found_on_resume: true,
            },
            JobEvent::CancelRequested {
                reason: "stop".into(),
                cleanup: true,
                by: Some("i-1".into()),
            },
            JobEvent::AgentBackoff {
                key: ItemKey::from("b"),
                attempt: 1,
                retry: 2,
                delay_ms: 40,
            },
        ];
        for e in events {
            let (kind, data) = e.to_row();
            let stored = Event {
                seq: 1,
                at: Utc::now(),
                kind,
                data,
            };
            assert_eq!(stored.event(), Some(e));
        }
    }

    #[test]
    fn the_stored_shape_is_the_documented_one() {
        let (kind, data) = JobEvent::ItemMerged {
            key: ItemKey::from("a"),
            commit: "c0ffee".into(),
            merge_commit: Some("m".into()),
            found_on_resume: false,
        }
        .to_row();
        assert_eq!(kind, "item_merged");
        assert_eq!(
            data,
            serde_json::json!({"key": "a", "commit": "c0ffee", "merge_commit": "m"})
        );
        let (kind, data) = JobEvent::AgentBackoff {
            key: ItemKey::from("b"),
            attempt: 1,
            retry: 2,
            delay_ms: 40,
        }
        .to_row();
        assert_eq!(kind, "agent_backoff");
        assert_eq!(data["try"], 2);
    }

    #[test]
    fn an_unknown_kind_is_kept_raw() {
        let e = Event {
            seq: 1,
            at: Utc::now(),
            kind: "from_a_newer_build".into(),
            data: serde_json::json!({"x": 1}),
        };
        assert_eq!(e.event(), None);
    }
}
