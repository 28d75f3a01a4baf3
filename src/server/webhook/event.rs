//! The webhook events prodigy acts on: the small internal [`WebhookEvent`] enum, the wire
//! payloads it is read from, and `parse_event` (which runs only on a verified body).

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::github::wire::{WireBranch, WireRepo};
use crate::github::{CheckRunId, CommentId, CommitSha, InstallationId, PrNumber};
use crate::types::RepoName;

use super::WebhookRejection;

/// The events prodigy acts on, reduced to the fields it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    PullRequest(PullRequestEvent),
    IssueComment(IssueCommentEvent),
    CheckRun(CheckRunEvent),
    CheckSuite(CheckSuiteEvent),
    Installation(InstallationEvent),
    Ping,
    /// Any other event or payload prodigy does not act on: answered 2xx, nothing else.
    Ignored {
        event: String,
        action: Option<String>,
    },
}

impl WebhookEvent {
    /// The installation the delivery is for, where the payload names one.
    pub fn installation_id(&self) -> Option<InstallationId> {
        match self {
            WebhookEvent::PullRequest(e) => e.installation_id,
            WebhookEvent::IssueComment(e) => e.installation_id,
            WebhookEvent::CheckRun(e) => e.installation_id,
            WebhookEvent::CheckSuite(e) => e.installation_id,
            WebhookEvent::Installation(e) => Some(e.installation_id),
            WebhookEvent::Ping | WebhookEvent::Ignored { .. } => None,
        }
    }

    /// The repository the delivery is about, for the allow-list check.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            WebhookEvent::PullRequest(e) => Some(&e.repo),
            WebhookEvent::IssueComment(e) => Some(&e.repo),
            WebhookEvent::CheckRun(e) => Some(&e.repo),
            WebhookEvent::CheckSuite(e) => Some(&e.repo),
            WebhookEvent::Installation(_) | WebhookEvent::Ping | WebhookEvent::Ignored { .. } => {
                None
            }
        }
    }
}

macro_rules! action_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $name {
            $($variant,)+
            /// An action prodigy does not act on, kept for logs.
            Other(String),
        }

        impl $name {
            fn from_wire(action: &str) -> Self {
                match action {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_string()),
                }
            }
        }
    };
}

action_enum!(
    /// `pull_request` actions.
    PullRequestAction {
        Opened => "opened",
        Synchronize => "synchronize",
        Reopened => "reopened",
        Closed => "closed",
    }
);
action_enum!(
    /// `issue_comment` actions.
    CommentAction {
        Created => "created",
        Edited => "edited",
        Deleted => "deleted",
    }
);
action_enum!(
    /// `check_run` actions.
    CheckRunAction {
        Created => "created",
        Completed => "completed",
        Rerequested => "rerequested",
        RequestedAction => "requested_action",
    }
);
action_enum!(
    /// `check_suite` actions.
    CheckSuiteAction {
        Requested => "requested",
        Rerequested => "rerequested",
        Completed => "completed",
    }
);
action_enum!(
    /// `installation` actions.
    InstallationAction {
        Created => "created",
        Deleted => "deleted",
        Suspend => "suspend",
        Unsuspend => "unsuspend",
    }
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub action: PullRequestAction,
    pub repo: RepoName,
    pub number: PrNumber,
    pub head_sha: CommitSha,
    pub head_ref: String,
    pub base_ref: String,
    /// The head branch lives in another repository (or that repository was deleted): never run
    /// automatically, since its code would run with the App's token.
    pub is_fork: bool,
    pub installation_id: Option<InstallationId>,
    pub sender_login: String,
    pub sender_is_bot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueCommentEvent {
    pub action: CommentAction,
    pub repo: RepoName,
    pub issue_number: PrNumber,
    /// Comments on plain issues arrive as the same event; only PR comments carry commands.
    pub is_pull_request: bool,
    pub comment_id: CommentId,
    pub body: String,
    pub author_login: String,
    pub author_is_bot: bool,
    pub installation_id: Option<InstallationId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunEvent {
    pub action: CheckRunAction,
    /// prodigy sets this to the job id when it creates a run; runs of other apps may have none.
    pub external_id: Option<String>,
    pub check_run_id: CheckRunId,
    /// The button pressed, for `requested_action`.
    pub requested_action_identifier: Option<String>,
    pub head_sha: CommitSha,
    pub repo: RepoName,
    pub installation_id: Option<InstallationId>,
    pub sender_login: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSuiteEvent {
    pub action: CheckSuiteAction,
    pub head_sha: CommitSha,
    pub repo: RepoName,
    pub installation_id: Option<InstallationId>,
    pub sender_login: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallationEvent {
    pub action: InstallationAction,
    pub installation_id: InstallationId,
}

// Small wire structs: only the fields prodigy reads. Anything older payloads may lack is an Option.

#[derive(Deserialize)]
struct WireUser {
    login: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

impl WireUser {
    /// GitHub marks App accounts `type: Bot`; the `[bot]` suffix covers payloads without `type`.
    fn is_bot(&self) -> bool {
        self.kind.as_deref() == Some("Bot") || self.login.ends_with("[bot]")
    }
}

#[derive(Deserialize)]
struct WireInstallationRef {
    id: u64,
}

#[derive(Deserialize)]
struct WirePullRequestPayload {
    action: String,
    number: u64,
    pull_request: WirePullRequest,
    repository: WireRepo,
    #[serde(default)]
    installation: Option<WireInstallationRef>,
    sender: WireUser,
}

#[derive(Deserialize)]
struct WirePullRequest {
    head: WireBranch,
    base: WireBranch,
}

#[derive(Deserialize)]
struct WireIssueCommentPayload {
    action: String,
    issue: WireIssue,
    comment: WireComment,
    repository: WireRepo,
    #[serde(default)]
    installation: Option<WireInstallationRef>,
}

#[derive(Deserialize)]
struct WireIssue {
    number: u64,
    /// Present (an object of links) only when the issue is a pull request.
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireComment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    user: WireUser,
}

#[derive(Deserialize)]
struct WireCheckRunPayload {
    action: String,
    check_run: WireCheckRun,
    #[serde(default)]
    requested_action: Option<WireRequestedAction>,
    repository: WireRepo,
    #[serde(default)]
    installation: Option<WireInstallationRef>,
    sender: WireUser,
}

#[derive(Deserialize)]
struct WireCheckRun {
    id: u64,
    #[serde(default)]
    external_id: Option<String>,
    head_sha: String,
}

#[derive(Deserialize)]
struct WireRequestedAction {
    identifier: String,
}

#[derive(Deserialize)]
struct WireCheckSuitePayload {
    action: String,
    check_suite: WireCheckSuite,
    repository: WireRepo,
    #[serde(default)]
    installation: Option<WireInstallationRef>,
    sender: WireUser,
}

#[derive(Deserialize)]
struct WireCheckSuite {
    head_sha: String,
}

#[derive(Deserialize)]
struct WireInstallationPayload {
    action: String,
    installation: WireInstallationRef,
}

#[derive(Deserialize)]
struct WireAnyAction {
    #[serde(default)]
    action: Option<String>,
}

fn from_json<T: DeserializeOwned>(event: &str, body: &[u8]) -> Result<T, WebhookRejection> {
    serde_json::from_slice(body).map_err(|err| WebhookRejection::Malformed {
        event: event.to_string(),
        reason: err.to_string(),
    })
}

/// Parses a verified body by its `X-GitHub-Event` name. Public so tools can parse stored
/// deliveries without a request.
pub fn parse_event(event: &str, body: &[u8]) -> Result<WebhookEvent, WebhookRejection> {
    let installation = |i: Option<WireInstallationRef>| i.map(|i| InstallationId(i.id));
    Ok(match event {
        "pull_request" => {
            let p: WirePullRequestPayload = from_json(event, body)?;
            let base_repo = p
                .pull_request
                .base
                .repo
                .as_ref()
                .map(|r| r.full_name.to_ascii_lowercase());
            let head_repo = p
                .pull_request
                .head
                .repo
                .as_ref()
                .map(|r| r.full_name.to_ascii_lowercase());
            let is_fork = head_repo.is_none() || head_repo != base_repo;
            WebhookEvent::PullRequest(PullRequestEvent {
                action: PullRequestAction::from_wire(&p.action),
                repo: RepoName::new(&p.repository.full_name),
                number: PrNumber(p.number),
                head_sha: CommitSha(p.pull_request.head.sha),
                head_ref: p.pull_request.head.git_ref,
                base_ref: p.pull_request.base.git_ref,
                is_fork,
                installation_id: installation(p.installation),
                sender_is_bot: p.sender.is_bot(),
                sender_login: p.sender.login,
            })
        }
        "issue_comment" => {
            let p: WireIssueCommentPayload = from_json(event, body)?;
            WebhookEvent::IssueComment(IssueCommentEvent {
                action: CommentAction::from_wire(&p.action),
                repo: RepoName::new(&p.repository.full_name),
                issue_number: PrNumber(p.issue.number),
                is_pull_request: p.issue.pull_request.is_some_and(|v| !v.is_null()),
                comment_id: CommentId(p.comment.id),
                body: p.comment.body.unwrap_or_default(),
                author_is_bot: p.comment.user.is_bot(),
                author_login: p.comment.user.login,
                installation_id: installation(p.installation),
            })
        }
        "check_run" => {
            let p: WireCheckRunPayload = from_json(event, body)?;
            WebhookEvent::CheckRun(CheckRunEvent {
                action: CheckRunAction::from_wire(&p.action),
                external_id: p.check_run.external_id.filter(|s| !s.is_empty()),
                check_run_id: CheckRunId(p.check_run.id),
                requested_action_identifier: p.requested_action.map(|a| a.identifier),
                head_sha: CommitSha(p.check_run.head_sha),
                repo: RepoName::new(&p.repository.full_name),
                installation_id: installation(p.installation),
                sender_login: p.sender.login,
            })
        }
        "check_suite" => {
            let p: WireCheckSuitePayload = from_json(event, body)?;
            WebhookEvent::CheckSuite(CheckSuiteEvent {
                action: CheckSuiteAction::from_wire(&p.action),
                head_sha: CommitSha(p.check_suite.head_sha),
                repo: RepoName::new(&p.repository.full_name),
                installation_id: installation(p.installation),
                sender_login: p.sender.login,
            })
        }
        "installation" => {
            let p: WireInstallationPayload = from_json(event, body)?;
            WebhookEvent::Installation(InstallationEvent {
                action: InstallationAction::from_wire(&p.action),
                installation_id: InstallationId(p.installation.id),
            })
        }
        "ping" => {
            // Still require JSON so a garbage body is a 400 like any other event.
            let _: serde_json::Value = from_json(event, body)?;
            WebhookEvent::Ping
        }
        other => {
            let p: WireAnyAction = from_json(other, body)?;
            WebhookEvent::Ignored {
                event: other.to_string(),
                action: p.action,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn unknown_event_is_ignored_with_its_action() {
        let e = parse_event("star", br#"{"action":"created"}"#).unwrap();
        assert_eq!(
            e,
            WebhookEvent::Ignored {
                event: "star".into(),
                action: Some("created".into())
            }
        );
    }

    #[test]
    fn missing_required_field_is_malformed() {
        let err = parse_event("pull_request", br#"{"action":"opened"}"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("pull_request"), "{err}");
    }
}
