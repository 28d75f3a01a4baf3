//! GitHub App authentication: the App's JWT and the per-installation token cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::ids::{AppId, InstallationId};

/// GitHub refuses an App JWT whose lifetime exceeds 10 minutes; 9 leaves room for clock skew.
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);
/// Backdating `iat` absorbs a server clock that runs slightly ahead of GitHub's (GitHub's advice).
const JWT_BACKDATE: Duration = Duration::from_secs(60);
/// Refresh a cached installation token this long before GitHub says it expires, so a request
/// started with it cannot outlive it.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the GitHub App private key is not an RSA PEM key ({0}); download a new one from the App's settings page"
    )]
    BadKey(jsonwebtoken::errors::Error),
    #[error("could not sign the App JWT: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error(
        "this GitHub client has a plain token, not App credentials: App calls (installation tokens) need `prodigy serve`'s App id and key"
    )]
    NotAnApp,
}

#[derive(Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

/// The App's identity: its id and private key. Mints short-lived JWTs.
#[derive(Clone)]
pub struct AppAuth {
    app_id: AppId,
    key: EncodingKey,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth")
            .field("app_id", &self.app_id)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl AppAuth {
    /// `private_key_pem` is the PEM GitHub hands out (PKCS#1 `RSA PRIVATE KEY` or PKCS#8).
    pub fn new(app_id: AppId, private_key_pem: &SecretString) -> Result<Self, AuthError> {
        let key = EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes())
            .map_err(AuthError::BadKey)?;
        Ok(AppAuth { app_id, key })
    }

    pub fn app_id(&self) -> AppId {
        self.app_id
    }

    /// A JWT valid from `now - 60 s` to `now + 9 min`, signed RS256, `iss` = App id.
    pub fn jwt(&self, now: SystemTime) -> Result<SecretString, AuthError> {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims {
            iat: (secs.saturating_sub(JWT_BACKDATE)).as_secs(),
            exp: (secs + JWT_LIFETIME).as_secs(),
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(SecretString::from)
            .map_err(AuthError::Sign)
    }
}

/// An installation access token and when GitHub said it expires.
#[derive(Clone)]
pub struct InstallationToken {
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for InstallationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationToken")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl InstallationToken {
    /// Usable at `now` if it stays valid for at least the refresh margin.
    pub fn is_fresh(&self, now: DateTime<Utc>) -> bool {
        let margin = chrono::Duration::from_std(TOKEN_REFRESH_MARGIN).expect("small duration");
        now + margin < self.expires_at
    }
}

/// Installation tokens, one slot per installation. Each slot has its own async lock so concurrent
/// callers of one installation wait for a single token request instead of each fetching one.
#[derive(Default, Clone)]
pub struct TokenCache {
    slots: Arc<Mutex<HashMap<TokenScope, Slot>>>,
}

/// What a token is for: an installation, narrowed to one repository when the caller names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenScope {
    pub installation: InstallationId,
    /// `owner/name`.
    pub repo: Option<String>,
    /// `contents: write` instead of read: pushing the refs of a job with workers
    /// (`serve --workers`), never given to agents.
    pub push: bool,
}

impl From<InstallationId> for TokenScope {
    fn from(installation: InstallationId) -> Self {
        TokenScope {
            installation,
            repo: None,
            push: false,
        }
    }
}

/// What a job needs of GitHub, and no more: check runs, PR comments and reactions, reading
/// the pull request, the repository's contents (clone, `.prodigy/config.yml`) and
/// collaborator permissions. The App's settings must grant at least these (README).
pub const JOB_PERMISSIONS: &[(&str, &str)] = &[
    ("checks", "write"),
    ("contents", "read"),
    ("issues", "write"),
    ("metadata", "read"),
    ("pull_requests", "read"),
];

/// The body of `POST /app/installations/{id}/access_tokens`: the permissions a job needs and,
/// for a repository's calls, only that repository (by name, without the owner).
pub fn access_token_request(scope: &TokenScope) -> serde_json::Value {
    let permissions: serde_json::Map<String, serde_json::Value> = JOB_PERMISSIONS
        .iter()
        .map(|(k, v)| match (*k, scope.push) {
            ("contents", true) => (k.to_string(), serde_json::Value::from("write")),
            _ => (k.to_string(), serde_json::Value::from(*v)),
        })
        .collect();
    let mut body = serde_json::json!({ "permissions": permissions });
    if let Some(repo) = &scope.repo {
        let name = repo.rsplit('/').next().unwrap_or(repo);
        body["repositories"] = serde_json::json!([name]);
    }
    body
}

type Slot = Arc<tokio::sync::Mutex<Option<InstallationToken>>>;

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, scope: TokenScope) -> Slot {
        self.slots
            .lock()
            .expect("token cache lock poisoned")
            .entry(scope)
            .or_default()
            .clone()
    }

    /// The cached token if still fresh, else the result of `fetch` (cached on success).
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        scope: impl Into<TokenScope>,
        fetch: F,
    ) -> Result<SecretString, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<InstallationToken, E>>,
    {
        let slot = self.slot(scope.into());
        let mut guard = slot.lock().await;
        if let Some(token) = guard.as_ref().filter(|t| t.is_fresh(Utc::now())) {
            return Ok(token.token.clone());
        }
        let fresh = fetch().await?;
        let token = fresh.token.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    /// Drops the token of an installation (App uninstalled, or GitHub answered 401 with it).
    /// Drops every token of the installation, whatever repository it was narrowed to.
    pub fn forget(&self, installation: InstallationId) {
        self.slots
            .lock()
            .expect("token cache lock poisoned")
            .retain(|scope, _| scope.installation != installation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_respects_margin() {
        let now = Utc::now();
        let token = |mins: i64| InstallationToken {
            token: SecretString::from("t".to_string()),
            expires_at: now + chrono::Duration::minutes(mins),
        };
        assert!(token(60).is_fresh(now));
        assert!(!token(4).is_fresh(now));
        assert!(!token(-1).is_fresh(now));
    }

    #[test]
    fn a_repositorys_token_request_names_it_and_the_job_permissions() {
        let mut scope = TokenScope {
            installation: InstallationId(7),
            repo: Some("octo/widgets".into()),
            push: false,
        };
        assert_eq!(
            access_token_request(&scope),
            serde_json::json!({
                "repositories": ["widgets"],
                "permissions": {"checks": "write", "contents": "read", "issues": "write",
                                "metadata": "read", "pull_requests": "read"}
            })
        );
        // Pushing a job's refs (serve --workers) asks for contents: write, nothing more.
        scope.push = true;
        assert_eq!(
            access_token_request(&scope)["permissions"],
            serde_json::json!({"checks": "write", "contents": "write", "issues": "write",
                               "metadata": "read", "pull_requests": "read"})
        );
        assert!(access_token_request(&InstallationId(7).into())["repositories"].is_null());
    }

    #[test]
    fn bad_key_names_the_fix() {
        let err = AppAuth::new(AppId(1), &SecretString::from("not a key".to_string())).unwrap_err();
        assert!(err.to_string().contains("App's settings"), "{err}");
    }

    #[tokio::test]
    async fn cache_fetches_once_until_forgotten() {
        let cache = TokenCache::new();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(InstallationToken {
                token: SecretString::from("tok".to_string()),
                expires_at: Utc::now() + chrono::Duration::hours(1),
            })
        };
        for _ in 0..3 {
            cache.get_or_fetch(InstallationId(7), fetch).await.unwrap();
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        cache.forget(InstallationId(7));
        cache.get_or_fetch(InstallationId(7), fetch).await.unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
