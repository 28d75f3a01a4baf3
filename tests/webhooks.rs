//! Signed webhook deliveries through a real axum router using the `VerifiedEvent` extractor:
//! GitHub's signature vector, every payload example in the fixtures, and each refusal.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, State};
use axum::http::{Request, StatusCode};
use axum::routing::post;
use prodigy::github::{CommitSha, InstallationId, PrNumber};
use prodigy::server::webhook::{
    CheckRunAction, CommentAction, InstallationAction, MAX_WEBHOOK_BODY_BYTES, PullRequestAction,
};
use prodigy::server::{VerifiedEvent, WebhookEvent, WebhookSecret};
use prodigy::types::RepoName;
use secrecy::SecretString;
use serde_json::Value;
use tower::ServiceExt;

const TEST_SECRET: &str = "test webhook secret";

#[derive(Clone)]
struct AppState {
    secret: WebhookSecret,
    seen: Arc<Mutex<Vec<VerifiedEvent>>>,
}

impl FromRef<AppState> for WebhookSecret {
    fn from_ref(state: &AppState) -> WebhookSecret {
        state.secret.clone()
    }
}

async fn handle(State(state): State<AppState>, event: VerifiedEvent) -> StatusCode {
    state.seen.lock().unwrap().push(event);
    StatusCode::OK
}

fn secret(s: &str) -> WebhookSecret {
    WebhookSecret::new(SecretString::from(s.to_string())).unwrap()
}

fn router() -> (Router, Arc<Mutex<Vec<VerifiedEvent>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = AppState {
        secret: secret(TEST_SECRET),
        seen: seen.clone(),
    };
    let app = Router::new()
        .route("/webhook", post(handle))
        .with_state(state);
    (app, seen)
}

fn delivery(event: &str, body: Vec<u8>, signature: Option<String>) -> Request<Body> {
    let mut req = Request::post("/webhook")
        .header("x-github-event", event)
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("user-agent", "GitHub-Hookshot/044aadd")
        .header("content-type", "application/json");
    if let Some(sig) = signature {
        req = req.header("x-hub-signature-256", sig);
    }
    req.body(Body::from(body)).unwrap()
}

fn signed(event: &str, body: Vec<u8>) -> Request<Body> {
    support::webhook::signed_request(
        "/webhook",
        event,
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        body,
        &secret(TEST_SECRET),
    )
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn webhook_fixtures() -> PathBuf {
    support::fake_github::fixtures_dir().join("github/webhooks")
}

#[test]
fn githubs_signature_vector() {
    let text =
        std::fs::read_to_string(webhook_fixtures().join("signature-test-vector.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let s = secret(v["secret"].as_str().unwrap());
    let payload = v["payload"].as_str().unwrap().as_bytes();
    let expected = v["expected_header_value"].as_str().unwrap();
    assert_eq!(s.sign(payload), expected);
    assert!(s.verify(payload, expected));
    // One flipped byte of the body, the digest or the secret fails.
    let mut flipped = payload.to_vec();
    flipped[0] ^= 1;
    assert!(!s.verify(&flipped, expected));
    let mut bad_digest = expected.to_string();
    let last = bad_digest.pop().unwrap();
    bad_digest.push(if last == '0' { '1' } else { '0' });
    assert!(!s.verify(payload, &bad_digest));
    assert!(!secret("It's a Secret to Everybody!").verify(payload, expected));
}

#[tokio::test]
async fn signature_vector_through_the_router_verifies_then_fails_parsing() {
    // "Hello, World!" is not JSON: a valid signature gets past the 401 and stops at 400.
    let text =
        std::fs::read_to_string(webhook_fixtures().join("signature-test-vector.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/webhook", post(handle))
        .with_state(AppState {
            secret: secret(v["secret"].as_str().unwrap()),
            seen: seen.clone(),
        });
    let body = v["payload"].as_str().unwrap().as_bytes().to_vec();
    let sig = v["expected_header_value"].as_str().unwrap().to_string();
    let (status, _) = send(&app, delivery("ping", body.clone(), Some(sig))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(
        &app,
        delivery("ping", body, Some(format!("sha256={}", "0".repeat(64)))),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(seen.lock().unwrap().is_empty());
}

fn repo_of(raw: &Value) -> RepoName {
    RepoName::new(raw["repository"]["full_name"].as_str().unwrap())
}

fn installation_of(raw: &Value) -> Option<InstallationId> {
    raw["installation"]["id"].as_u64().map(InstallationId)
}

/// Checks the parsed event against the raw payload it came from.
fn check_event(folder: &str, file: &Path, raw: &Value, event: &WebhookEvent) {
    let what = file.display();
    let action = raw["action"].as_str();
    match (folder, event) {
        ("pull_request", WebhookEvent::PullRequest(e)) => {
            let pr = &raw["pull_request"];
            assert_eq!(e.repo, repo_of(raw), "{what}");
            assert_eq!(
                e.number,
                PrNumber(raw["number"].as_u64().unwrap()),
                "{what}"
            );
            assert_eq!(
                e.head_sha,
                CommitSha::from(pr["head"]["sha"].as_str().unwrap())
            );
            assert_eq!(e.head_ref, pr["head"]["ref"].as_str().unwrap());
            assert_eq!(e.base_ref, pr["base"]["ref"].as_str().unwrap());
            assert_eq!(e.installation_id, installation_of(raw), "{what}");
            assert_eq!(e.sender_login, raw["sender"]["login"].as_str().unwrap());
            let fork = pr["head"]["repo"]["full_name"] != pr["base"]["repo"]["full_name"];
            assert_eq!(e.is_fork, fork, "{what}");
            let expected = match action.unwrap() {
                "opened" => PullRequestAction::Opened,
                "synchronize" => PullRequestAction::Synchronize,
                "reopened" => PullRequestAction::Reopened,
                "closed" => PullRequestAction::Closed,
                other => PullRequestAction::Other(other.into()),
            };
            assert_eq!(e.action, expected, "{what}");
        }
        ("issue_comment", WebhookEvent::IssueComment(e)) => {
            assert_eq!(e.repo, repo_of(raw));
            assert_eq!(
                e.issue_number,
                PrNumber(raw["issue"]["number"].as_u64().unwrap())
            );
            assert_eq!(
                e.is_pull_request,
                raw["issue"]["pull_request"].is_object(),
                "{what}"
            );
            assert_eq!(e.comment_id.0, raw["comment"]["id"].as_u64().unwrap());
            assert_eq!(e.body, raw["comment"]["body"].as_str().unwrap_or(""));
            assert_eq!(
                e.author_login,
                raw["comment"]["user"]["login"].as_str().unwrap()
            );
            assert_eq!(
                e.author_is_bot,
                raw["comment"]["user"]["type"].as_str() == Some("Bot"),
                "{what}"
            );
            assert_eq!(e.installation_id, installation_of(raw), "{what}");
            let expected = match action.unwrap() {
                "created" => CommentAction::Created,
                "edited" => CommentAction::Edited,
                "deleted" => CommentAction::Deleted,
                other => CommentAction::Other(other.into()),
            };
            assert_eq!(e.action, expected, "{what}");
        }
        ("check_run", WebhookEvent::CheckRun(e)) => {
            let run = &raw["check_run"];
            assert_eq!(e.check_run_id.0, run["id"].as_u64().unwrap());
            assert_eq!(
                e.head_sha,
                CommitSha::from(run["head_sha"].as_str().unwrap())
            );
            assert_eq!(
                e.external_id.as_deref(),
                run["external_id"].as_str().filter(|s| !s.is_empty())
            );
            assert_eq!(
                e.requested_action_identifier.as_deref(),
                raw["requested_action"]["identifier"].as_str()
            );
            assert_eq!(e.repo, repo_of(raw));
            assert_eq!(e.installation_id, installation_of(raw), "{what}");
            let expected = match action.unwrap() {
                "created" => CheckRunAction::Created,
                "completed" => CheckRunAction::Completed,
                "rerequested" => CheckRunAction::Rerequested,
                "requested_action" => CheckRunAction::RequestedAction,
                other => CheckRunAction::Other(other.into()),
            };
            assert_eq!(e.action, expected, "{what}");
        }
        ("check_suite", WebhookEvent::CheckSuite(e)) => {
            assert_eq!(
                e.head_sha,
                CommitSha::from(raw["check_suite"]["head_sha"].as_str().unwrap())
            );
            assert_eq!(e.repo, repo_of(raw));
            assert_eq!(e.installation_id, installation_of(raw), "{what}");
        }
        ("installation", WebhookEvent::Installation(e)) => {
            assert_eq!(e.installation_id, installation_of(raw).unwrap());
            let expected = match action.unwrap() {
                "created" => InstallationAction::Created,
                "deleted" => InstallationAction::Deleted,
                other => InstallationAction::Other(other.into()),
            };
            assert_eq!(e.action, expected, "{what}");
        }
        ("ping", WebhookEvent::Ping) => {}
        (
            "installation_repositories"
            | "pull_request_review_comment"
            | "push"
            | "workflow_dispatch"
            | "workflow_run",
            WebhookEvent::Ignored { event, action: a },
        ) => {
            assert_eq!(event, folder);
            assert_eq!(a.as_deref(), action, "{what}");
        }
        _ => panic!("{what}: `{folder}` parsed as {event:?}"),
    }
}

#[tokio::test]
async fn every_payload_example_is_routed_or_ignored() {
    let (app, seen) = router();
    let mut folders: Vec<PathBuf> = std::fs::read_dir(webhook_fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let mut count = 0;
    for folder in folders {
        let event = folder.file_name().unwrap().to_str().unwrap().to_string();
        // Not deliveries: JSON schemas and GitHub's OpenAPI description of the payloads.
        if event == "schemas" || event == "github-openapi" {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            let raw: Value = serde_json::from_slice(&bytes).unwrap();
            let (status, text) = send(&app, signed(&event, bytes)).await;
            assert_eq!(status, StatusCode::OK, "{}: {text}", file.display());
            let parsed = seen.lock().unwrap().pop().expect("the handler saw it");
            assert_eq!(
                parsed.delivery_id.as_deref(),
                Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
            );
            check_event(&event, &file, &raw, &parsed.event);
            if matches!(
                parsed.event,
                WebhookEvent::Ignored { .. } | WebhookEvent::Ping
            ) {
                assert_eq!(parsed.event.repo(), None);
            } else {
                assert_eq!(parsed.event.installation_id(), installation_of(&raw));
                if event != "installation" {
                    assert_eq!(parsed.event.repo(), Some(&repo_of(&raw)));
                }
            }
            count += 1;
        }
    }
    // SOURCE.md lists 53 payload examples of octokit/webhooks and the `workflow_dispatch` one
    // of its npm package; fewer means the walk missed some.
    assert_eq!(count, 54);
}

#[tokio::test]
async fn spot_checks_of_known_payloads() {
    let (app, seen) = router();
    let parse = async |rel: &str| {
        let req = support::webhook::fixture_request("/webhook", rel, "d-1", &secret(TEST_SECRET));
        let (status, _) = send(&app, req).await;
        assert_eq!(status, StatusCode::OK);
        seen.lock().unwrap().pop().unwrap().event
    };
    let WebhookEvent::CheckRun(e) = parse("check_run/requested_action.payload.json").await else {
        panic!()
    };
    assert_eq!(e.action, CheckRunAction::RequestedAction);
    assert_eq!(e.requested_action_identifier.as_deref(), Some("lgtm|26764"));
    assert_eq!(e.installation_id, Some(InstallationId(690857)));
    let WebhookEvent::Installation(e) = parse("installation/deleted.payload.json").await else {
        panic!()
    };
    assert_eq!(e.action, InstallationAction::Deleted);
    let WebhookEvent::PullRequest(e) = parse("pull_request/opened.with-null-body.json").await
    else {
        panic!()
    };
    assert_eq!(e.action, PullRequestAction::Opened);
    assert!(!e.is_fork);
    assert!(!e.sender_is_bot);
}

#[tokio::test]
async fn missing_signature_is_401() {
    let (app, seen) = router();
    let (status, text) = send(&app, delivery("ping", b"{}".to_vec(), None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("X-Hub-Signature-256"), "{text}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn wrong_signature_is_401() {
    let (app, seen) = router();
    let body = b"{\"zen\":\"x\"}".to_vec();
    let other = secret("another secret").sign(&body);
    assert_eq!(
        send(&app, delivery("ping", body.clone(), Some(other)))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // The legacy SHA-1 form is not accepted in place of SHA-256.
    let sha1 = format!("sha1={}", "a".repeat(40));
    assert_eq!(
        send(&app, delivery("ping", body.clone(), Some(sha1)))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // A signature of a different body.
    let sig = secret(TEST_SECRET).sign(b"{}");
    assert_eq!(
        send(&app, delivery("ping", body, Some(sig))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_json_with_valid_signature_is_400() {
    let (app, seen) = router();
    for (event, body) in [
        ("pull_request", &b"{not json"[..]),
        ("pull_request", &b"{\"action\":\"opened\"}"[..]),
        ("issue_comment", &b"[]"[..]),
        ("push", &b""[..]),
    ] {
        let (status, text) = send(&app, signed(event, body.to_vec())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{event} {body:?}: {text}");
        assert!(text.contains(event), "{text}");
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn missing_event_header_is_400() {
    let (app, _) = router();
    let body = b"{}".to_vec();
    let sig = secret(TEST_SECRET).sign(&body);
    let req = Request::post("/webhook")
        .header("x-hub-signature-256", sig)
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let (app, seen) = router();
    let body = vec![b' '; MAX_WEBHOOK_BODY_BYTES + 1];
    let sig = secret(TEST_SECRET).sign(&body);
    // Declared by Content-Length: refused before reading.
    let mut req = delivery("push", body.clone(), Some(sig.clone()));
    req.headers_mut()
        .insert("content-length", body.len().to_string().parse().unwrap());
    assert_eq!(send(&app, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // Undeclared: refused while reading, even with a valid signature.
    assert_eq!(
        send(&app, delivery("push", body, Some(sig))).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Without a signature an undeclared body is not even read: 401.
    let big = vec![b' '; MAX_WEBHOOK_BODY_BYTES + 1];
    assert_eq!(
        send(&app, delivery("push", big, None)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn body_of_exactly_the_limit_is_accepted() {
    let (app, seen) = router();
    let mut body = b"{\"pad\":\"".to_vec();
    body.resize(MAX_WEBHOOK_BODY_BYTES - 2, b'x');
    body.extend_from_slice(b"\"}");
    assert_eq!(body.len(), MAX_WEBHOOK_BODY_BYTES);
    let (status, text) = send(&app, signed("push", body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(matches!(
        seen.lock().unwrap().pop().unwrap().event,
        WebhookEvent::Ignored { ref event, action: None } if event == "push"
    ));
}

#[tokio::test]
async fn limit_and_trace_layers_keep_the_answers() {
    let (app, seen) = router();
    let app = app
        .layer(prodigy::server::webhook::webhook_body_limit())
        .layer(prodigy::server::webhook::webhook_trace_layer());
    let body = vec![b' '; MAX_WEBHOOK_BODY_BYTES + 1];
    let sig = secret(TEST_SECRET).sign(&body);
    let mut declared = delivery("push", body.clone(), Some(sig.clone()));
    declared
        .headers_mut()
        .insert("content-length", body.len().to_string().parse().unwrap());
    assert_eq!(send(&app, declared).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // The layer's own limit error reaches the extractor wrapped; it is still a 413.
    assert_eq!(
        send(&app, delivery("push", body, Some(sig))).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let bytes = std::fs::read(webhook_fixtures().join("ping/payload.json")).unwrap();
    assert_eq!(send(&app, signed("ping", bytes)).await.0, StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// A figure, not a check: `cargo test --test webhooks measure -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn measure_verify_and_parse_through_the_router() {
    let (app, seen) = router();
    let body = support::webhook::fixture_payload("pull_request/opened.payload.json");
    const N: u32 = 2000;
    let started = std::time::Instant::now();
    for _ in 0..N {
        let (status, _) = send(&app, signed("pull_request", body.clone())).await;
        assert_eq!(status, StatusCode::OK);
    }
    let per = started.elapsed() / N;
    assert_eq!(seen.lock().unwrap().len(), N as usize);
    println!(
        "pull_request/opened ({} bytes): sign + route + verify + parse = {per:?} per delivery",
        body.len()
    );
}
