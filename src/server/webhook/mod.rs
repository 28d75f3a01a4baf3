//! Verified GitHub webhook deliveries as an axum extractor.
//!
//! A handler that takes a [`VerifiedEvent`] only ever sees a delivery whose `X-Hub-Signature-256`
//! matched the raw body, parsed into the small internal [`WebhookEvent`] enum. The signature is
//! checked before any byte of the body is interpreted, so an unauthenticated sender cannot reach
//! the JSON parser. The events themselves and their parsing are in `event`.

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

mod event;

pub use event::{
    CheckRunAction, CheckSuiteAction, CommentAction, InstallationAction, PullRequestAction,
};
pub use event::{
    CheckRunEvent, CheckSuiteEvent, InstallationEvent, IssueCommentEvent, PullRequestEvent,
    WebhookEvent, parse_event,
};

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
}
