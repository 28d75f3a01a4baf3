//! Signed webhook deliveries built from the payload examples in `tests/fixtures/github/webhooks/`.

use axum::body::Body;
use axum::http::Request;
use prodigy::server::WebhookSecret;

use super::fake_github::fixtures_dir;

/// The bytes of a payload example, e.g. `pull_request/opened.payload.json`.
pub fn fixture_payload(rel: &str) -> Vec<u8> {
    let path = fixtures_dir().join("github/webhooks").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A delivery as GitHub sends it: event, delivery id and SHA-256 signature headers.
pub fn signed_request(
    uri: &str,
    event: &str,
    delivery_id: &str,
    body: Vec<u8>,
    secret: &WebhookSecret,
) -> Request<Body> {
    Request::post(uri)
        .header("x-github-event", event)
        .header("x-github-delivery", delivery_id)
        .header("x-hub-signature-256", secret.sign(&body))
        .header("user-agent", "GitHub-Hookshot/test")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// A signed delivery of a payload example; the event name is the example's folder.
pub fn fixture_request(
    uri: &str,
    rel: &str,
    delivery_id: &str,
    secret: &WebhookSecret,
) -> Request<Body> {
    let event = rel.split('/').next().expect("`event/file.json`");
    signed_request(uri, event, delivery_id, fixture_payload(rel), secret)
}
