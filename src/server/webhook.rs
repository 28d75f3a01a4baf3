//! Verified GitHub webhook deliveries as an axum extractor.
//!
//! A handler that takes a [`VerifiedEvent`] only ever sees a delivery whose `X-Hub-Signature-256`
//! matched the raw body, parsed into the small internal [`WebhookEvent`] enum. The signature is
//! checked before any byte of the body is interpreted, so an unauthenticated sender cannot reach
//! the JSON parser.

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

use crate::github::wire::{WireBranch, WireRepo};
use crate::github::{CheckRunId, CommentId, CommitSha, InstallationId, PrNumber};
use crate::types::RepoName;

/// GitHub never sends a delivery larger than 25 MB; anything bigger is not from GitHub.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 25 * 1024 * 1024;

const SIGNATURE_HEADER: &str = "x-hub-signature-256";
const EVENT_HEADER: &str = "x-github-event";
const DELIVERY_HEADER: &str = "x-github-delivery";

/// The webhook secret configured on the GitHub App. Required: the server refuses to start without.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl WebhookSecret {
    /// Refuses an empty secret, since an empty HMAC key would accept anyone's signature.
    pub fn new(secret: SecretString) -> Result<Self, EmptyWebhookSecret> {
        if secret.expose_secret().is_empty() {
            return Err(EmptyWebhookSecret);
        }
        Ok(WebhookSecret(secret))
    }

    /// Checks `header_value` (`sha256=<hex>`) against the HMAC-SHA256 of `body`, in constant time.
    pub fn verify(&self, body: &[u8], header_value: &str) -> bool {
        let Some(hex_digest) = header_value.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(expected) = hex::decode(hex_digest.trim()) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    }

    /// A key for another purpose (e.g. signing job-page links), derived from the secret so the
    /// operator has one secret to keep, and so a leaked page token reveals nothing about it.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(b"prodigy derived key\0");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The `X-Hub-Signature-256` value GitHub would send for `body` (used by tests and tools).
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the webhook secret is empty: set the same non-empty secret in the GitHub App settings and in --webhook-secret"
)]
pub struct EmptyWebhookSecret;

/// A delivery whose signature matched, parsed.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    /// `X-GitHub-Delivery`: unique per delivery, repeated on a redelivery. GitHub always sends it;
    /// `None` only if a sender left it out.
    pub delivery_id: Option<String>,
    pub event: WebhookEvent,
}

/// Why a delivery was refused. Rendered centrally so every refusal has one status and one text.
#[derive(Debug, thiserror::Error)]
pub enum WebhookRejection {
    #[error("missing X-Hub-Signature-256 header: configure a webhook secret on the GitHub App")]
    MissingSignature,
    #[error("X-Hub-Signature-256 does not match the body: check that the webhook secrets agree")]
    BadSignature,
    #[error("webhook body exceeds {MAX_WEBHOOK_BODY_BYTES} bytes; GitHub never sends more")]
    TooLarge,
    #[error("could not read the webhook body: {0}")]
    BodyRead(String),
    #[error("missing X-GitHub-Event header")]
    MissingEvent,
    #[error("malformed `{event}` payload: {reason}")]
    Malformed { event: String, reason: String },
}

impl WebhookRejection {
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookRejection::MissingSignature | WebhookRejection::BadSignature => {
                StatusCode::UNAUTHORIZED
            }
            WebhookRejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookRejection::BodyRead(_)
            | WebhookRejection::MissingEvent
            | WebhookRejection::Malformed { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for WebhookRejection {
    fn into_response(self) -> Response {
        tracing::warn!(status = %self.status(), reason = %self, "webhook refused");
        let (event, reason) = match &self {
            WebhookRejection::MissingSignature => ("unknown", "missing_signature"),
            WebhookRejection::BadSignature => ("unknown", "bad_signature"),
            WebhookRejection::TooLarge => ("unknown", "too_large"),
            WebhookRejection::BodyRead(_) => ("unknown", "body_read"),
            WebhookRejection::MissingEvent => ("unknown", "missing_event"),
            // Signed by GitHub, so the event name is GitHub's (and mapped to a bounded set).
            WebhookRejection::Malformed { event, .. } => {
                (crate::metrics::webhook_event(event), "malformed")
            }
        };
        crate::metrics::webhook(event, "rejected", reason);
        (self.status(), self.to_string()).into_response()
    }
}

impl<S> FromRequest<S> for VerifiedEvent
where
    S: Send + Sync,
    WebhookSecret: FromRef<S>,
{
    type Rejection = WebhookRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let secret = WebhookSecret::from_ref(state);
        let (parts, body) = req.into_parts();
        let body = read_verified_body(&secret, &parts.headers, body).await?;
        let event_name =
            header_str(&parts.headers, EVENT_HEADER).ok_or(WebhookRejection::MissingEvent)?;
        let delivery_id = header_str(&parts.headers, DELIVERY_HEADER).map(str::to_string);
        let event = parse_event(event_name, &body)?;
        Ok(VerifiedEvent { delivery_id, event })
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads the body (bounded) and checks its signature; nothing is parsed before this returns.
async fn read_verified_body(
    secret: &WebhookSecret,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, WebhookRejection> {
    // A declared oversized body is refused without reading it.
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok())
        && len > MAX_WEBHOOK_BODY_BYTES as u64
    {
        return Err(WebhookRejection::TooLarge);
    }
    let signature = header_str(headers, SIGNATURE_HEADER)
        .ok_or(WebhookRejection::MissingSignature)?
        .to_string();
    let bytes = Limited::new(body, MAX_WEBHOOK_BODY_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if is_length_limit(&*err) {
                WebhookRejection::TooLarge
            } else {
                WebhookRejection::BodyRead(err.to_string())
            }
        })?
        .to_bytes();
    if !secret.verify(&bytes, &signature) {
        return Err(WebhookRejection::BadSignature);
    }
    Ok(bytes)
}

/// The limit error may come from our own `Limited` or from a body-limit layer outside the
/// extractor (`tower_http::limit`), wrapped in axum's error: look through the whole chain.
fn is_length_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A body limit for the webhook route: answers 413 before any handler runs when Content-Length
/// already says too much. The extractor enforces the same limit itself, so this is an early exit.
pub fn webhook_body_limit() -> tower_http::limit::RequestBodyLimitLayer {
    tower_http::limit::RequestBodyLimitLayer::new(MAX_WEBHOOK_BODY_BYTES)
}

/// A `TraceLayer` whose span names the GitHub delivery, so one grep follows one delivery.
pub fn webhook_trace_layer() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    fn(&Request) -> tracing::Span,
> {
    fn span(req: &Request) -> tracing::Span {
        let headers = req.headers();
        tracing::info_span!(
            "webhook",
            method = %req.method(),
            path = %req.uri().path(),
            delivery = header_str(headers, DELIVERY_HEADER).unwrap_or("-"),
            event = header_str(headers, EVENT_HEADER).unwrap_or("-"),
        )
    }
    tower_http::trace::TraceLayer::new_for_http().make_span_with(span as fn(&Request) -> _)
}

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
    use super::*;

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::new(SecretString::from(s.to_string())).unwrap()
    }

    #[test]
    fn empty_secret_is_refused() {
        assert!(WebhookSecret::new(SecretString::from(String::new())).is_err());
    }

    #[test]
    fn verify_rejects_wrong_prefix_and_bad_hex() {
        let s = secret("k");
        let good = s.sign(b"body");
        assert!(s.verify(b"body", &good));
        assert!(!s.verify(b"body", &good.replace("sha256=", "sha1=")));
        assert!(!s.verify(b"body", "sha256=zz"));
        assert!(!s.verify(b"body", "sha256="));
        assert!(!s.verify(b"bodx", &good));
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(
            format!("{:?}", secret("hunter2")),
            "WebhookSecret([REDACTED])"
        );
    }

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
