//! Domain identifiers and states shared by the engine, the store and the faces.
//!
//! Every identifier is a newtype so a job id can never be passed where an item key is wanted; each
//! one also speaks sqlx so the database sees the same type on both backends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A pull request's (or issue's) number within its repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrNumber(pub u64);

impl fmt::Display for PrNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A commit SHA as git or GitHub reports it (kept as given).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommitSha(pub String);

impl CommitSha {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A commit is passed to git and GitHub as text.
impl std::ops::Deref for CommitSha {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job's id: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }

    /// The first 8 hex digits: enough to tell jobs apart in branch names and tables.
    pub fn short(&self) -> String {
        self.0.simple().to_string()[..8].to_string()
    }

    /// A 64-bit key for PostgreSQL advisory locks: the first 8 bytes of SHA-256 of the id.
    pub fn lock_key(&self) -> i64 {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.0.as_bytes());
        i64::from_be_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0.to_string())
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim()).map(JobId)
    }
}

/// A work item's stable key within its job (see `engine::item_key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ItemKey(pub String);

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl From<&str> for ItemKey {
    fn from(s: &str) -> Self {
        ItemKey(s.to_string())
    }
}

/// `owner/name`, lower-cased, since GitHub treats repository names case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RepoName(String);

impl RepoName {
    pub fn new(name: &str) -> Self {
        RepoName(name.trim().to_ascii_lowercase())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} '{}': expected one of {}",
                        stringify!($name), other, [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum! {
    /// Where a job stands. `Running` means some process holds (or held, before it died) the job.
    JobStatus {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        // The job's budget ran out: its remaining items are pending, and a resume with a raised
        // budget continues it.
        BudgetExhausted => "budget_exhausted",
    }
}

impl JobStatus {
    pub fn is_finished(&self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Cancelled)
    }
}

string_enum! {
    /// The phase a job is in; recorded so resume knows what is already done.
    Phase {
        Setup => "setup",
        Map => "map",
        Reduce => "reduce",
        Done => "done",
    }
}

string_enum! {
    /// A work item's state. `Succeeded` items have a commit (or nothing to merge) waiting for the
    /// merge queue; `merged` on the item row says whether it reached the job branch.
    ItemStatus {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
    }
}

string_enum! {
    /// Why an attempt failed (DESIGN.md "Resume and the dead-letter queue").
    ErrorClass {
        Timeout => "timeout",
        MergeConflict => "merge_conflict",
        WorktreeError => "worktree_error",
        ValidationFailed => "validation_failed",
        ResourceExhausted => "resource_exhausted",
        CommitValidationFailed => "commit_validation_failed",
        CommandFailed => "command_failed",
        // The AI API refused the key or the account (401/403, billing): every item would fail.
        ApiAuth => "api_auth",
        // The AI API rate-limited or was overloaded after the CLI's own retries.
        ApiRateLimited => "api_rate_limited",
        // Another error of the AI API (5xx, invalid request).
        ApiError => "api_error",
        // The agent used all of its `max_turns`.
        MaxTurns => "max_turns",
        Unknown => "unknown",
    }
}

/// Tokens, cost and time of one or more agent runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cache_read_tokens: u64,
    /// As the CLI computed it (`total_cost_usd`).
    pub cost_usd: f64,
    pub turns: u64,
    /// Time spent waiting on the API (`duration_api_ms`).
    pub api_ms: u64,
    /// Wall time of the runs (`duration_ms`).
    pub duration_ms: u64,
}

impl Usage {
    /// Every token the runs used, of every kind.
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_creation_tokens + self.cache_read_tokens
    }

    /// Cost and tokens by kind, as people read them: `$0.0123, 4567 tokens (1200 in, 300 out,
    /// 3000 cache write, 67 cache read)`.
    pub fn cost_and_tokens(&self) -> String {
        format!(
            "${:.4}, {} tokens ({} in, {} out, {} cache write, {} cache read)",
            self.cost_usd,
            self.tokens(),
            self.input_tokens,
            self.output_tokens,
            self.cache_creation_tokens,
            self.cache_read_tokens
        )
    }

    pub fn add(&mut self, o: &Usage) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_creation_tokens += o.cache_creation_tokens;
        self.cache_read_tokens += o.cache_read_tokens;
        self.cost_usd += o.cost_usd;
        self.turns += o.turns;
        self.api_ms += o.api_ms;
        self.duration_ms += o.duration_ms;
    }

    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_is_stable_and_differs_between_jobs() {
        let a: JobId = "0192f5a0-0000-7000-8000-000000000001".parse().unwrap();
        let b: JobId = "0192f5a0-0000-7000-8000-000000000002".parse().unwrap();
        assert_eq!(a.lock_key(), a.lock_key());
        assert_ne!(a.lock_key(), b.lock_key());
    }

    #[test]
    fn enums_round_trip_through_text() {
        for c in ErrorClass::ALL {
            assert_eq!(c.as_str().parse::<ErrorClass>().unwrap(), *c);
        }
        assert!(
            "nope"
                .parse::<JobStatus>()
                .unwrap_err()
                .contains("expected one of")
        );
    }

    #[test]
    fn repo_names_are_lower_case() {
        assert_eq!(RepoName::new("Octo/Hello").as_str(), "octo/hello");
    }
}
