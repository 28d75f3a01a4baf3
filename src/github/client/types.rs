//! What the client's callers get back: its error (with the status GitHub answered), a
//! permission, a reaction, a pull request.

use axum::http::{Method, StatusCode};

use crate::github::auth::AuthError;
use crate::github::ids::{CommitSha, PrNumber};
use crate::types::RepoName;

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("invalid GitHub API base URL `{url}`: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("{method} {path}: GitHub answered {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
        /// The retry policy found the answer worth retrying (a rate limit, a 5xx) and ran out of
        /// attempts; `false` means GitHub's answer was final on the first look.
        gave_up: bool,
    },
    #[error("{method} {path}: could not reach GitHub: {reason}")]
    Transport {
        method: Method,
        path: String,
        reason: String,
    },
    #[error("{method} {path}: unexpected response body: {reason}")]
    Decode {
        method: Method,
        path: String,
        reason: String,
    },
    #[error("repository name `{0}` is not `owner/name`")]
    RepoName(String),
}

impl GitHubError {
    /// The HTTP status GitHub answered, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GitHubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Asking again later may succeed: GitHub answered a 5xx, a 429 or a rate limit (the retry
    /// policy gave up on it), or could not be reached (connection refused or reset, timeout).
    /// Every other answer (404, 403 permission, 422) says the same thing next time.
    pub fn is_transient(&self) -> bool {
        match self {
            GitHubError::Status {
                status, gave_up, ..
            } => *gave_up || status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
            GitHubError::Transport { .. } => true,
            GitHubError::Auth(_)
            | GitHubError::BaseUrl { .. }
            | GitHubError::Decode { .. }
            | GitHubError::RepoName(_) => false,
        }
    }

    /// GitHub refused the credentials for this call, and asking again will not change that: 401,
    /// 404 (a repository the token cannot see) or a 403 that is not a rate limit (a token
    /// without the permission, e.g. a workflow token without `checks: write`).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            GitHubError::Status { status, gave_up: false, .. }
                if matches!(*status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)
        )
    }
}

/// A repository permission, from the collaborator-permission API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    None,
    Read,
    Triage,
    Write,
    Maintain,
    Admin,
}

impl Permission {
    /// write, maintain or admin: allowed to run commands that start or stop jobs.
    pub fn can_write(self) -> bool {
        self >= Permission::Write
    }

    /// maintain or admin: allowed to raise a job's budget.
    pub fn can_maintain(self) -> bool {
        self >= Permission::Maintain
    }

    pub(super) fn from_wire(role: &str) -> Option<Permission> {
        Some(match role {
            "admin" => Permission::Admin,
            "maintain" => Permission::Maintain,
            "write" | "push" => Permission::Write,
            "triage" => Permission::Triage,
            "read" | "pull" => Permission::Read,
            "none" => Permission::None,
            _ => return None,
        })
    }
}

/// A reaction's content; prodigy only uses `eyes` (seen) but the set is GitHub's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Reaction {
    #[serde(rename = "+1")]
    PlusOne,
    #[serde(rename = "-1")]
    MinusOne,
    #[serde(rename = "laugh")]
    Laugh,
    #[serde(rename = "confused")]
    Confused,
    #[serde(rename = "heart")]
    Heart,
    #[serde(rename = "hooray")]
    Hooray,
    #[serde(rename = "rocket")]
    Rocket,
    #[serde(rename = "eyes")]
    Eyes,
}

/// What prodigy needs to know about a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestInfo {
    pub number: PrNumber,
    pub state: String,
    pub head_sha: CommitSha,
    pub head_ref: String,
    pub base_ref: String,
    /// `owner/name` of the head repository; `None` if the fork was deleted.
    pub head_repo: Option<RepoName>,
    pub is_fork: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_order_and_wire_names() {
        assert!(Permission::Admin.can_write());
        assert!(Permission::Maintain.can_write());
        assert!(Permission::Write.can_write());
        assert!(!Permission::Triage.can_write());
        assert!(!Permission::Read.can_write());
        assert!(!Permission::None.can_write());
        assert_eq!(Permission::from_wire("push"), Some(Permission::Write));
        assert_eq!(Permission::from_wire("weird"), None);
    }

    #[test]
    fn reaction_serializes_as_github_names() {
        assert_eq!(
            serde_json::to_value(Reaction::Eyes).unwrap(),
            serde_json::json!("eyes")
        );
        assert_eq!(
            serde_json::to_value(Reaction::PlusOne).unwrap(),
            serde_json::json!("+1")
        );
    }
}
