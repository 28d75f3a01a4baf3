//! The one GitHub client prodigy uses: typed calls over octocrab's raw transport, authenticated as
//! an App installation (the server) or with one given token (the Action's workflow token), each
//! call through the [`RetryPolicy`].
//!
//! octocrab's typed builders are not used: prodigy needs its own token cache (shared with git
//! clones), its own retry policy on every call, and request bodies it controls exactly (the tests'
//! fake GitHub checks them against GitHub's schema). Its transport, TLS and base-URL handling are.

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{self, HeaderMap, Method, StatusCode, header};
use base64::Engine;
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::{
    AppAuth, AuthError, InstallationToken, TokenCache, TokenScope, access_token_request,
};
use super::checks::{CheckRunUpdate, NewCheckRun};
use super::ids::{CheckRunId, CommentId, CommitSha, InstallationId, PrNumber};
use super::retry::{RetryDecision, RetryPolicy};
use super::wire::WireBranch;
use crate::types::RepoName;

/// GitHub's REST API version this client speaks.
const API_VERSION: &str = "2022-11-28";

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

/// The `installation` argument of the repository calls of a [`GitHubClient::with_token`] client:
/// its token already says who it acts as, so the argument is not used.
pub const TOKEN_INSTALLATION: InstallationId = InstallationId(0);

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

    fn from_wire(role: &str) -> Option<Permission> {
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

#[derive(Deserialize)]
struct WireId {
    id: u64,
}

#[derive(Deserialize)]
struct WireAccessToken {
    token: String,
    expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct WirePermission {
    permission: String,
    #[serde(default)]
    role_name: Option<String>,
}

#[derive(Deserialize)]
struct WirePull {
    number: u64,
    state: String,
    head: WireBranch,
    base: WireBranch,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    message: String,
}

/// How a request is authenticated.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// As the App itself (JWT): only for minting installation tokens.
    App,
    /// With an installation token narrowed to this repository (`owner/name`).
    Installation(InstallationId, &'a RepoName),
}

/// Who the client acts as.
#[derive(Clone)]
enum Credentials {
    /// A GitHub App: JWTs for its own calls, installation tokens (cached) for the rest.
    App { app: AppAuth, tokens: TokenCache },
    /// One token sent as is on every call (a GitHub Actions workflow token): no JWT, nothing to
    /// refresh.
    Token(SecretString),
}

/// The GitHub client. Cheap to clone; clones share the token cache.
#[derive(Clone)]
pub struct GitHubClient {
    octo: Octocrab,
    credentials: Credentials,
    retry: RetryPolicy,
}

impl std::fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("GitHubClient");
        match &self.credentials {
            Credentials::App { app, .. } => d.field("app", app),
            Credentials::Token(_) => d.field("token", &"[REDACTED]"),
        };
        d.field("retry", &self.retry).finish_non_exhaustive()
    }
}

impl GitHubClient {
    /// `base_url` is `https://api.github.com` for github.com, `https://HOST/api/v3` for GitHub
    /// Enterprise, or a test server's address.
    pub fn new(base_url: &str, app: AppAuth, retry: RetryPolicy) -> Result<Self, GitHubError> {
        let credentials = Credentials::App {
            app,
            tokens: TokenCache::new(),
        };
        Self::with_credentials(base_url, credentials, retry)
    }

    /// A client that sends `token` on every call, e.g. the `GITHUB_TOKEN` of a GitHub Actions
    /// run. Its repository calls ignore their `installation` argument (pass
    /// [`TOKEN_INSTALLATION`]), and [`GitHubClient::installation_token`] answers with the token.
    pub fn with_token(
        base_url: &str,
        token: SecretString,
        retry: RetryPolicy,
    ) -> Result<Self, GitHubError> {
        Self::with_credentials(base_url, Credentials::Token(token), retry)
    }

    fn with_credentials(
        base_url: &str,
        credentials: Credentials,
        retry: RetryPolicy,
    ) -> Result<Self, GitHubError> {
        let bad = |reason: String| GitHubError::BaseUrl {
            url: base_url.to_string(),
            reason,
        };
        // Without timeouts a stalled connection would hold a webhook's work forever; a timeout is a
        // transport error, which the retry policy retries.
        let octo = Octocrab::builder()
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(60)))
            .set_write_timeout(Some(Duration::from_secs(60)))
            .base_uri(base_url.trim_end_matches('/'))
            .map_err(|e| bad(e.to_string()))?
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(GitHubClient {
            octo,
            credentials,
            retry,
        })
    }

    /// The App's identity; `None` for a [`GitHubClient::with_token`] client.
    pub fn app(&self) -> Option<&AppAuth> {
        match &self.credentials {
            Credentials::App { app, .. } => Some(app),
            Credentials::Token(_) => None,
        }
    }

    /// Drops the cached token of an installation (on `installation.deleted`).
    pub fn forget_installation(&self, installation: InstallationId) {
        if let Credentials::App { tokens, .. } = &self.credentials {
            tokens.forget(installation);
        }
    }

    /// The installation's access token (cached), e.g. for cloning over HTTPS. A token client
    /// answers with its token.
    pub async fn installation_token(
        &self,
        installation: InstallationId,
    ) -> Result<SecretString, GitHubError> {
        self.scoped_token(installation.into()).await
    }

    /// A token for `repo` only, with the permissions a job needs ([`super::auth::JOB_PERMISSIONS`]);
    /// cached per repository. A token client answers with its token.
    pub async fn repo_token(
        &self,
        installation: InstallationId,
        repo: &RepoName,
    ) -> Result<SecretString, GitHubError> {
        self.scoped_token(TokenScope {
            installation,
            repo: Some(repo.as_str().to_string()),
        })
        .await
    }

    async fn scoped_token(&self, scope: TokenScope) -> Result<SecretString, GitHubError> {
        match &self.credentials {
            Credentials::App { tokens, .. } => {
                tokens
                    .get_or_fetch(scope.clone(), || self.fetch_installation_token(&scope))
                    .await
            }
            Credentials::Token(token) => Ok(token.clone()),
        }
    }

    /// A JWT for the App's own calls.
    fn app_jwt(&self) -> Result<SecretString, GitHubError> {
        match &self.credentials {
            Credentials::App { app, .. } => Ok(app.jwt(SystemTime::now())?),
            Credentials::Token(_) => Err(AuthError::NotAnApp.into()),
        }
    }

    async fn fetch_installation_token(
        &self,
        scope: &TokenScope,
    ) -> Result<InstallationToken, GitHubError> {
        let path = format!("/app/installations/{}/access_tokens", scope.installation);
        let body = access_token_request(scope);
        // Boxed: `call` reaches this through `installation_token`, and async recursion needs a box.
        let wire: WireAccessToken =
            Box::pin(self.call_json(Method::POST, &path, Auth::App, Some(body))).await?;
        Ok(InstallationToken {
            token: SecretString::from(wire.token),
            expires_at: wire.expires_at,
        })
    }

    pub async fn create_check_run(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        run: &NewCheckRun,
    ) -> Result<CheckRunId, GitHubError> {
        let path = format!("/repos/{}/check-runs", repo_path(repo)?);
        let wire: WireId = self
            .call_json(
                Method::POST,
                &path,
                Auth::Installation(installation, repo),
                Some(to_json(run)),
            )
            .await?;
        Ok(CheckRunId(wire.id))
    }

    pub async fn update_check_run(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        id: CheckRunId,
        update: &CheckRunUpdate,
    ) -> Result<(), GitHubError> {
        let path = format!("/repos/{}/check-runs/{id}", repo_path(repo)?);
        let _: WireId = self
            .call_json(
                Method::PATCH,
                &path,
                Auth::Installation(installation, repo),
                Some(to_json(update)),
            )
            .await?;
        Ok(())
    }

    /// Comments on an issue or pull request.
    pub async fn create_comment(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        issue: PrNumber,
        body: &str,
    ) -> Result<CommentId, GitHubError> {
        let path = format!("/repos/{}/issues/{issue}/comments", repo_path(repo)?);
        let wire: WireId = self
            .call_json(
                Method::POST,
                &path,
                Auth::Installation(installation, repo),
                Some(serde_json::json!({ "body": body })),
            )
            .await?;
        Ok(CommentId(wire.id))
    }

    pub async fn create_reaction(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        comment: CommentId,
        reaction: Reaction,
    ) -> Result<(), GitHubError> {
        let path = format!(
            "/repos/{}/issues/comments/{comment}/reactions",
            repo_path(repo)?
        );
        let _: WireId = self
            .call_json(
                Method::POST,
                &path,
                Auth::Installation(installation, repo),
                Some(serde_json::json!({ "content": reaction })),
            )
            .await?;
        Ok(())
    }

    /// The user's permission on the repository; `Permission::None` for a non-collaborator.
    pub async fn collaborator_permission(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        user: &str,
    ) -> Result<Permission, GitHubError> {
        let path = format!(
            "/repos/{}/collaborators/{}/permission",
            repo_path(repo)?,
            encode_segment(user)
        );
        let result: Result<WirePermission, _> = self
            .call_json(
                Method::GET,
                &path,
                Auth::Installation(installation, repo),
                None,
            )
            .await;
        let wire = match result {
            // GitHub answers 404 for a user that is not a collaborator (or does not exist).
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Ok(Permission::None),
            other => other?,
        };
        // `role_name` tells maintain and triage apart; `permission` folds them into write/read.
        let role = wire.role_name.as_deref().and_then(Permission::from_wire);
        role.or_else(|| Permission::from_wire(&wire.permission))
            .ok_or_else(|| GitHubError::Decode {
                method: Method::GET,
                path,
                reason: format!("unknown permission `{}`", wire.permission),
            })
    }

    pub async fn pull_request(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        number: PrNumber,
    ) -> Result<PullRequestInfo, GitHubError> {
        let path = format!("/repos/{}/pulls/{number}", repo_path(repo)?);
        let wire: WirePull = self
            .call_json(
                Method::GET,
                &path,
                Auth::Installation(installation, repo),
                None,
            )
            .await?;
        let head_repo = wire.head.repo.map(|r| RepoName::new(&r.full_name));
        let base_repo = wire.base.repo.map(|r| RepoName::new(&r.full_name));
        Ok(PullRequestInfo {
            number: PrNumber(wire.number),
            state: wire.state,
            head_sha: CommitSha(wire.head.sha),
            head_ref: wire.head.git_ref,
            base_ref: wire.base.git_ref,
            is_fork: head_repo.is_none() || head_repo != base_repo,
            head_repo,
        })
    }

    /// A file's bytes at `git_ref`; `None` if the file (or the ref) does not exist.
    pub async fn file_contents(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        file: &str,
        git_ref: &str,
    ) -> Result<Option<Vec<u8>>, GitHubError> {
        let encoded_path: Vec<String> = file
            .trim_start_matches('/')
            .split('/')
            .map(encode_segment)
            .collect();
        let path = format!(
            "/repos/{}/contents/{}?ref={}",
            repo_path(repo)?,
            encoded_path.join("/"),
            encode_segment(git_ref)
        );
        let result: Result<WireContent, _> = self
            .call_json(
                Method::GET,
                &path,
                Auth::Installation(installation, repo),
                None,
            )
            .await;
        let wire = match result {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Ok(None),
            other => other?,
        };
        let decode_err = |reason: String| GitHubError::Decode {
            method: Method::GET,
            path: path.clone(),
            reason,
        };
        if wire.kind != "file" {
            return Err(decode_err(format!(
                "`{file}` is a {}, not a file",
                wire.kind
            )));
        }
        if wire.encoding.as_deref() != Some("base64") {
            return Err(decode_err(format!(
                "`{file}` came with encoding {:?}; files over 1 MB are not supported",
                wire.encoding
            )));
        }
        // GitHub wraps the base64 text at 60 columns.
        let text: String = wire
            .content
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Some)
            .map_err(|e| decode_err(format!("bad base64 content: {e}")))
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<T, GitHubError> {
        let bytes = self.call(method.clone(), path, auth, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| GitHubError::Decode {
            method,
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// One call with retries; a 401 with an installation token drops that token and fetches a new
    /// one once (it may have been revoked early).
    async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes, GitHubError> {
        let body = body.map(|b| b.to_string());
        let mut refreshed_token = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let bearer = match auth {
                Auth::App => self.app_jwt()?,
                Auth::Installation(id, repo) => self.repo_token(id, repo).await?,
            };
            let outcome = self.send_once(&method, path, &bearer, body.clone()).await;
            let remaining = outcome.as_ref().ok().and_then(|(_, headers, _)| {
                headers
                    .get("x-ratelimit-remaining")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<f64>().ok())
            });
            let installation = match auth {
                Auth::App => None,
                Auth::Installation(id, _) => Some(id.0),
            };
            let status = outcome.as_ref().ok().map(|(s, _, _)| s.as_u16());
            crate::metrics::github_call(method.as_str(), path, status, installation, remaining);
            let decision = match &outcome {
                Ok((status, headers, _)) => {
                    if *status == StatusCode::UNAUTHORIZED
                        && let Auth::Installation(id, _) = auth
                        && let Credentials::App { tokens, .. } = &self.credentials
                        && !refreshed_token
                    {
                        refreshed_token = true;
                        tokens.forget(id);
                        continue;
                    }
                    self.retry
                        .decide(attempt, *status, headers, SystemTime::now())
                }
                Err(_) => self.retry.decide_transport_error(attempt),
            };
            match (decision, outcome) {
                (RetryDecision::RetryAfter(wait), outcome) => {
                    tracing::warn!(
                        %method, path, attempt, wait_ms = wait.as_millis() as u64,
                        status = ?outcome.as_ref().ok().map(|o| o.0),
                        "GitHub call failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                (_, Err(reason)) => {
                    return Err(GitHubError::Transport {
                        method,
                        path: path.to_string(),
                        reason,
                    });
                }
                (_, Ok((status, _, bytes))) if status.is_success() => return Ok(bytes),
                (decision, Ok((status, _, bytes))) => {
                    let message = serde_json::from_slice::<WireMessage>(&bytes)
                        .map(|m| m.message)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                    return Err(GitHubError::Status {
                        method,
                        path: path.to_string(),
                        status,
                        message,
                        gave_up: decision == RetryDecision::GiveUp,
                    });
                }
            }
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        bearer: &SecretString,
        body: Option<String>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let mut auth = http::HeaderValue::from_str(&format!("Bearer {}", bearer.expose_secret()))
            .map_err(|_| "the token is not a valid header value".to_string())?;
        auth.set_sensitive(true);
        let builder = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::AUTHORIZATION, auth)
            .header(header::ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION);
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(octocrab::OctoBody::from(body)),
            None => builder.body(octocrab::OctoBody::empty()),
        }
        .map_err(|e| e.to_string())?;
        let response = self
            .octo
            .execute(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }
}

/// An error and its sources, so "client error (Connect)" also says "Connection refused".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("request bodies are plain data and always serialize")
}

fn repo_path(repo: &RepoName) -> Result<String, GitHubError> {
    match repo.as_str().split_once('/') {
        Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => Ok(
            format!("{}/{}", encode_segment(owner), encode_segment(name)),
        ),
        _ => Err(GitHubError::RepoName(repo.to_string())),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for one path segment or query value.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    fn segments_are_encoded() {
        assert_eq!(encode_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode_segment("feature/x"), "feature%2Fx");
        assert_eq!(encode_segment("dependabot[bot]"), "dependabot%5Bbot%5D");
    }

    #[test]
    fn repo_path_needs_owner_and_name() {
        assert_eq!(
            repo_path(&RepoName::new("Octo/Hello")).unwrap(),
            "octo/hello"
        );
        assert!(repo_path(&RepoName::new("nope")).is_err());
        assert!(repo_path(&RepoName::new("a/b/c")).is_err());
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
