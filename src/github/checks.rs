//! Check-run request bodies, shaped as GitHub's OpenAPI schema has them.
//!
//! The client sends these as given; keeping within GitHub's limits (the constants below) is the
//! reporter's job, since only it knows how to split or truncate without losing meaning.

use serde::Serialize;

use super::ids::CommitSha;

/// `output.annotations`: at most this many per request; further PATCHes append.
pub const MAX_ANNOTATIONS_PER_REQUEST: usize = 50;
/// `output.summary` and `output.text`: at most this many characters.
pub const MAX_OUTPUT_TEXT_CHARS: usize = 65_535;
/// `actions`: at most this many buttons.
pub const MAX_ACTIONS: usize = 3;
/// An action's `identifier`.
pub const MAX_ACTION_IDENTIFIER_CHARS: usize = 20;
/// An action's `label`.
pub const MAX_ACTION_LABEL_CHARS: usize = 20;
/// An action's `description`.
pub const MAX_ACTION_DESCRIPTION_CHARS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Queued,
    InProgress,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckConclusion {
    Success,
    Failure,
    Neutral,
    Cancelled,
    TimedOut,
    ActionRequired,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotationLevel {
    Notice,
    Warning,
    Failure,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    /// Only valid when `start_line == end_line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_column: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_column: Option<u32>,
    pub annotation_level: AnnotationLevel,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_details: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRunOutput {
    pub title: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
}

/// A button on the check run; pressing it sends `check_run.requested_action` with `identifier`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRunButton {
    pub label: String,
    pub description: String,
    pub identifier: String,
}

/// `POST /repos/{owner}/{repo}/check-runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewCheckRun {
    pub name: String,
    pub head_sha: CommitSha,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    /// Required by GitHub when `status` is `completed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<CheckConclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CheckRunOutput>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<CheckRunButton>,
}

/// `PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}`: only the fields set are changed.
/// `actions: None` leaves the buttons as they are; `Some(vec![])` removes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckRunUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<CheckConclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CheckRunOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<CheckRunButton>>,
}
