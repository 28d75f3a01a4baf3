//! Webhook deliveries through the real router (`prodigy::server::app::router`, SQLite and
//! PostgreSQL): arbitrary bytes and headers, unsigned, wrongly signed and signed, and signed
//! mutations of GitHub's payload examples. Never a panic or a 5xx; an unsigned or wrongly signed
//! delivery is always 401 before anything is parsed; a refused payload names the position (or
//! the field) that is wrong.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use prodigy::server::app::{AppState, router};
use prodigy::server::pages::PageLinks;
use prodigy::server::webhook::parse_event;
use prodigy::server::{WebhookRejection, WebhookSecret};
use prodigy::types::RepoName;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::json_mutation::{apply, mutation};
use proptest::test_runner::TestRunner;
use secrecy::SecretString;
use serde_json::Value;
use tower::ServiceExt;

#[path = "../support/db.rs"]
#[allow(dead_code)]
mod db;

const SECRET: &str = "fuzz webhook secret";

/// GitHub's payload examples (tests/fixtures/github/webhooks/<event>/*.json): (event, body).
fn examples() -> Vec<(String, Value)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github/webhooks");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        let event = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !dir.is_dir() || event == "schemas" || event == "github-openapi" {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let body: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            out.push((event.clone(), body));
        }
    }
    out.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.to_string().cmp(&b.1.to_string()))
    });
    out
}

fn payload_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        Just(serde_json::json!({"login": "x[bot]", "id": 1})),
        Just(Value::String(
            "/prodigy run\n@prodigy-bot cancel job=zz".into()
        )),
        Just(Value::String("nul \u{0} inside".into())),
        Just(Value::String("/prodigy help \u{0}".into())),
    ]
}

#[derive(Debug, Clone)]
enum Signature {
    Absent,
    Valid,
    /// Signed with another secret.
    WrongSecret,
    /// Any header text.
    Text(String),
}

#[derive(Debug, Clone)]
struct Delivery {
    event: Option<String>,
    delivery_id: Option<String>,
    signature: Signature,
    body: Vec<u8>,
}

/// A header value: visible ASCII, spaces and tabs, or bytes a client might send anyway.
fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pull_request".to_string()),
        Just("issue_comment".to_string()),
        Just("check_run".to_string()),
        Just("check_suite".to_string()),
        Just("installation".to_string()),
        Just("ping".to_string()),
        "[\\x20-\\x7e\\t]{0,40}",
    ]
}

fn delivery(examples: Arc<Vec<(String, Value)>>) -> impl Strategy<Value = Delivery> {
    let n = examples.len();
    let body = prop_oneof![
        // A payload example with a few mutations, and maybe its bytes cut or one byte changed.
        3 => (0..n, proptest::collection::vec(mutation(payload_scalar().boxed()), 0..4), proptest::option::of((any::<Index>(), any::<u8>())), any::<bool>())
            .prop_map(move |(e, muts, byte, cut)| {
                let (event, mut doc) = examples[e].clone();
                for m in &muts {
                    apply(&mut doc, m);
                }
                let mut bytes = serde_json::to_vec(&doc).unwrap();
                if let Some((at, b)) = byte {
                    let i = at.index(bytes.len());
                    if cut { bytes.truncate(i) } else { bytes[i] = b }
                }
                (Some(event), bytes)
            }),
        1 => (proptest::option::of(header_text()), proptest::collection::vec(any::<u8>(), 0..300)),
        1 => (proptest::option::of(header_text()), any::<String>().prop_map(String::into_bytes)),
    ];
    let signature = prop_oneof![
        1 => Just(Signature::Absent),
        6 => Just(Signature::Valid),
        1 => Just(Signature::WrongSecret),
        1 => prop_oneof![
            "sha256=[0-9a-f]{64}",
            "sha256=[0-9a-fA-F ]{0,70}",
            "sha1=[0-9a-f]{40}",
            "[\\x20-\\x7e]{0,80}",
        ].prop_map(Signature::Text),
    ];
    (
        body,
        any::<bool>(),
        signature,
        proptest::option::of("[\\x20-\\x7e]{0,40}"),
    )
        .prop_map(
            |((event, body), keep_event, signature, delivery_id)| Delivery {
                event: event.filter(|_| keep_event),
                delivery_id,
                signature,
                body,
            },
        )
}

fn secret(s: &str) -> WebhookSecret {
    WebhookSecret::new(SecretString::from(s.to_string())).unwrap()
}

fn request(d: &Delivery) -> Request<Body> {
    let mut req = Request::post("/webhook").header("content-type", "application/json");
    if let Some(e) = &d.event {
        req = req.header("x-github-event", e.as_str());
    }
    if let Some(id) = &d.delivery_id {
        req = req.header("x-github-delivery", id.as_str());
    }
    let sig = match &d.signature {
        Signature::Absent => None,
        Signature::Valid => Some(secret(SECRET).sign(&d.body)),
        Signature::WrongSecret => Some(secret("another secret").sign(&d.body)),
        Signature::Text(t) => Some(t.clone()),
    };
    if let Some(sig) = sig {
        req = req.header("x-hub-signature-256", sig);
    }
    req.body(Body::from(d.body.clone())).unwrap()
}

/// `line L column C` in a refusal: where in the body it went wrong.
fn names_position(text: &str) -> bool {
    let Some(at) = text.find("line ") else {
        return false;
    };
    let rest = &text[at + 5..];
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && rest[digits..].starts_with(" column ")
}

#[test]
fn deliveries_of_any_bytes_and_headers_are_answered_and_refusals_say_why() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let examples = Arc::new(examples());
    let allow: Vec<RepoName> = examples
        .iter()
        .filter_map(|(_, b)| b["repository"]["full_name"].as_str())
        .map(RepoName::new)
        .collect();
    let (routers, _dbs): (Vec<(&str, Router)>, Vec<db::TestDb>) = rt.block_on(async {
        let mut dbs = vec![db::sqlite_db()];
        dbs.extend(db::postgres_db().await);
        let mut routers = Vec::new();
        for d in &dbs {
            let state = AppState::new(
                d.store().await,
                secret(SECRET),
                PageLinks::new("http://127.0.0.1", &secret(SECRET)),
                None,
                allow.clone(),
                Some("prodigy-bot".into()),
                Arc::new(tokio::sync::Notify::new()),
            );
            routers.push((d.backend, router(state, "/webhook")));
        }
        (routers, dbs)
    });
    let mut runner = TestRunner::new(crate::config(250));
    let result = runner.run(&delivery(examples.clone()), |d| {
        for (backend, app) in &routers {
            let (status, text) = rt.block_on(async {
                let res = app.clone().oneshot(request(&d)).await.unwrap();
                let status = res.status();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            });
            let signed = matches!(d.signature, Signature::Valid);
            prop_assert!(
                !status.is_server_error(),
                "{backend}: {status} {text:?} for {d:?}"
            );
            if !signed {
                prop_assert_eq!(status, StatusCode::UNAUTHORIZED, "{}: {:?}", backend, text);
                continue;
            }
            prop_assert!(
                [
                    StatusCode::OK,
                    StatusCode::ACCEPTED,
                    StatusCode::BAD_REQUEST
                ]
                .contains(&status),
                "{backend}: {status} {text:?}"
            );
            if status == StatusCode::BAD_REQUEST {
                let names_header =
                    text.contains("X-GitHub-Event") || text.contains("X-GitHub-Delivery");
                prop_assert!(
                    names_header || names_position(&text),
                    "{backend}: a refusal names no position or field: {text:?}"
                );
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(crate::config(3000))]

    /// `parse_event` is public for tools reading stored deliveries: any event name and bytes.
    #[test]
    fn any_event_and_bytes_parse_or_name_a_position(
        event in header_text(),
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            any::<String>().prop_map(String::into_bytes),
            "\\{(\"[a-z_]{1,8}\": ?(null|1|\"x\"|\\{\\}|\\[\\]),? ?){0,6}\\}".prop_map(String::into_bytes),
        ],
    ) {
        match parse_event(&event, &body) {
            Ok(_) => {}
            Err(WebhookRejection::Malformed { event: e, reason }) => {
                prop_assert_eq!(e, event);
                prop_assert!(names_position(&reason), "{reason:?}");
            }
            Err(other) => prop_assert!(false, "parse_event refused with {other:?}"),
        }
    }
}

/// The case the property found on PostgreSQL, pinned: a command comment carrying a NUL is
/// queued (202), not refused by the database (503) on every redelivery.
#[test]
fn a_comment_with_a_nul_is_queued_on_every_backend() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_, mut body) = examples()
        .into_iter()
        .find(|(event, b)| {
            event == "issue_comment" && b["action"] == "created" && b.get("installation").is_some()
        })
        .expect("an issue_comment.created example with an installation");
    body["issue"]["pull_request"] = serde_json::json!({"url": "https://example.invalid/pr/1"});
    body["comment"]["body"] = Value::String("/prodigy help \u{0}".into());
    let repo = RepoName::new(body["repository"]["full_name"].as_str().unwrap());
    let bytes = serde_json::to_vec(&body).unwrap();
    rt.block_on(async {
        let mut dbs = vec![db::sqlite_db()];
        dbs.extend(db::postgres_db().await);
        for d in &dbs {
            let state = AppState::new(
                d.store().await,
                secret(SECRET),
                PageLinks::new("http://127.0.0.1", &secret(SECRET)),
                None,
                vec![repo.clone()],
                Some("prodigy-bot".into()),
                Arc::new(tokio::sync::Notify::new()),
            );
            let delivery = Delivery {
                event: Some("issue_comment".into()),
                delivery_id: Some("nul-1".into()),
                signature: Signature::Valid,
                body: bytes.clone(),
            };
            let res = router(state, "/webhook")
                .oneshot(request(&delivery))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::ACCEPTED, "{}", d.backend);
        }
    });
}
