//! The one GitHub client prodigy uses: typed calls over octocrab's raw transport, authenticated as
//! an App installation (the server) or with one given token (the Action's workflow token), each
//! call through the [`RetryPolicy`].
//!
//! octocrab's typed builders are not used: prodigy needs its own token cache (shared with git
//! clones), its own retry policy on every call, and request bodies it controls exactly (the tests'
//! fake GitHub checks them against GitHub's schema). Its transport, TLS and base-URL handling are.
//!
//! This module holds the client, its credentials and the REST calls, each through one of
//! `repo_call`, `repo_get`, `repo_get_unless_404`; `deliveries` the App's webhook delivery log;
//! `transport` sends and retries, `path` builds the request paths, `types` holds what callers
//! get back.

use std::time::{Duration, SystemTime};

use axum::http::{Method, StatusCode};
use base64::Engine;
use chrono::{DateTime, Utc};
use octocrab::Octocrab;
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::{
    AppAuth, AuthError, InstallationToken, TokenCache, TokenScope, access_token_request,
};
use super::checks::{CheckRunUpdate, NewCheckRun};
use super::ids::{CheckRunId, CommentId, CommitSha, InstallationId, PrNumber};
use super::retry::RetryPolicy;
use super::wire::WireBranch;
use crate::types::RepoName;

mod deliveries;
mod path;
mod transport;
mod types;

pub use deliveries::{DeliveryPage, HookDelivery};
use path::{encode_segment, repo_path};
pub use types::{GitHubError, Permission, PullRequestInfo, Reaction};

/// GitHub's REST API version this client speaks.
const API_VERSION: &str = "2022-11-28";

/// The `installation` argument of the repository calls of a [`GitHubClient::with_token`] client:
/// its token already says who it acts as, so the argument is not used.
pub const TOKEN_INSTALLATION: InstallationId = InstallationId(0);

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
    /// As the App itself (JWT): minting installation tokens, the App's webhook delivery log.
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
            push: false,
        })
        .await
    }

    /// [`Self::repo_token`] with `contents: write`, for pushing a job's refs to the repository
    /// (`serve --workers`: replicas exchange commits through it). Never given to agents.
    pub async fn repo_push_token(
        &self,
        installation: InstallationId,
        repo: &RepoName,
    ) -> Result<SecretString, GitHubError> {
        self.scoped_token(TokenScope {
            installation,
            repo: Some(repo.as_str().to_string()),
            push: true,
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
            .repo_call(Method::POST, installation, repo, &path, Some(to_json(run)))
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
            .repo_call(
                Method::PATCH,
                installation,
                repo,
                &path,
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
            .repo_call(
                Method::POST,
                installation,
                repo,
                &path,
                Some(serde_json::json!({ "body": body })),
            )
            .await?;
        Ok(CommentId(wire.id))
    }

    /// Replaces the body of an issue or pull-request comment (the Action's tracking reply).
    pub async fn update_comment(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        comment: CommentId,
        body: &str,
    ) -> Result<(), GitHubError> {
        let path = format!("/repos/{}/issues/comments/{comment}", repo_path(repo)?);
        let _: WireId = self
            .call_json(
                Method::PATCH,
                &path,
                Auth::Installation(installation, repo),
                Some(serde_json::json!({ "body": body })),
            )
            .await?;
        Ok(())
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
            .repo_call(
                Method::POST,
                installation,
                repo,
                &path,
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
        // GitHub answers 404 for a user that is not a collaborator (or does not exist).
        let Some(wire) = self
            .repo_get_unless_404::<WirePermission>(installation, repo, &path)
            .await?
        else {
            return Ok(Permission::None);
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
        let wire: WirePull = self.repo_get(installation, repo, &path).await?;
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
        let Some(wire) = self
            .repo_get_unless_404::<WireContent>(installation, repo, &path)
            .await?
        else {
            return Ok(None);
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

    /// A call on a repository with an installation token narrowed to it, the answer decoded.
    async fn repo_call<T: DeserializeOwned>(
        &self,
        method: Method,
        installation: InstallationId,
        repo: &RepoName,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, GitHubError> {
        self.call_json(method, path, Auth::Installation(installation, repo), body)
            .await
    }

    /// A GET on a repository.
    async fn repo_get<T: DeserializeOwned>(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        path: &str,
    ) -> Result<T, GitHubError> {
        self.repo_call(Method::GET, installation, repo, path, None)
            .await
    }

    /// A GET on a repository; `None` when GitHub answers 404 (no such thing, or not visible).
    async fn repo_get_unless_404<T: DeserializeOwned>(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        path: &str,
    ) -> Result<Option<T>, GitHubError> {
        match self.repo_get(installation, repo, path).await {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            other => other.map(Some),
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("request bodies are plain data and always serialize")
}
