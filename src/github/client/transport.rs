//! One call to GitHub: the bearer token, the headers, octocrab's transport, and the retry loop
//! (with one token refresh after a 401).

use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::{self, HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::github::retry::RetryDecision;

use super::{API_VERSION, Auth, Credentials, GitHubClient, GitHubError, WireMessage};

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

impl GitHubClient {
    pub(super) async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<T, GitHubError> {
        let (_, bytes) = self.call(method.clone(), path, auth, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| GitHubError::Decode {
            method,
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// [`Self::call_json`] that also gives the answer's headers (e.g. `link` for pagination).
    pub(super) async fn call_json_with_headers<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<(HeaderMap, T), GitHubError> {
        let (headers, bytes) = self.call(method.clone(), path, auth, body).await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| GitHubError::Decode {
            method,
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        Ok((headers, value))
    }

    /// One call with retries; a 401 with an installation token drops that token and fetches a new
    /// one once (it may have been revoked early).
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<serde_json::Value>,
    ) -> Result<(HeaderMap, Bytes), GitHubError> {
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
                (_, Ok((status, headers, bytes))) if status.is_success() => {
                    return Ok((headers, bytes));
                }
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
