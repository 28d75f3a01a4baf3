//! The App's webhook in the fake GitHub: it delivers webhooks to the server's URL, signed with
//! the webhook secret, and keeps GitHub's delivery log (every attempt, its guid, status and
//! payload). The App lists the log (`GET /app/hook/deliveries`, newest first, paged with a
//! `cursor` in the `link` header) and asks for a redelivery
//! (`POST /app/hook/deliveries/{id}/attempts`), which this fake then really makes: the stored
//! payload, sent again with the original `X-GitHub-Delivery` guid, as GitHub does. Both answers
//! are checked against GitHub's response schemas (`app-hook-deliveries.openapi.json`).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use super::{Call, FakeGitHub, Op, Shared, World, error, openapi_doc};

/// GitHub keeps 3 days of deliveries and redelivers none older.
const KEPT: chrono::TimeDelta = chrono::TimeDelta::days(3);

/// GitHub waits this long for the receiver's answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One attempt to deliver a webhook.
#[derive(Debug, Clone)]
pub struct HookAttempt {
    pub id: u64,
    pub guid: String,
    pub delivered_at: DateTime<Utc>,
    pub redelivery: bool,
    pub duration: f64,
    pub status: String,
    pub status_code: u16,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<u64>,
    pub repository_id: Option<u64>,
    pub payload: Vec<u8>,
}

impl HookAttempt {
    pub fn ok(&self) -> bool {
        self.status == "OK"
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "guid": self.guid,
            "delivered_at": self.delivered_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "redelivery": self.redelivery,
            "duration": self.duration,
            "status": self.status,
            "status_code": self.status_code,
            "event": self.event,
            "action": self.action,
            "installation_id": self.installation_id,
            "repository_id": self.repository_id,
            "throttled_at": null,
        })
    }
}

/// The App's webhook: its URL and secret, and the delivery log.
#[derive(Debug, Default)]
pub struct HookLog {
    target: Option<(String, String)>,
    pub attempts: Vec<HookAttempt>,
    next_id: u64,
}

impl HookLog {
    /// The attempts of one delivery, oldest first.
    pub fn of(&self, guid: &str) -> Vec<&HookAttempt> {
        self.attempts.iter().filter(|a| a.guid == guid).collect()
    }
}

/// What a delivery attempt came to: GitHub's status text and the receiver's HTTP status.
struct Outcome {
    status: String,
    status_code: u16,
    duration: f64,
}

impl FakeGitHub {
    /// Where the App's webhook delivers (`http://host:port/webhook`) and its secret.
    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.world().hooks.target = Some((url.to_string(), secret.to_string()));
    }

    /// GitHub delivers `payload` as `event` to the App's webhook now, with a new guid: the
    /// attempt is logged with what the server answered ("failed to connect" when it is down).
    /// Returns the guid.
    pub async fn deliver_webhook(&self, event: &str, payload: Vec<u8>) -> String {
        let guid = uuid::Uuid::now_v7().to_string();
        attempt(&self.world, &guid, event, payload, false).await;
        guid
    }

    /// Logs a delivery attempt made at `delivered_at` without sending anything: to `guid` (a
    /// new one if None), failed ("failed to connect") or OK. Returns the guid.
    pub fn log_delivery(
        &self,
        guid: Option<&str>,
        event: &str,
        payload: Vec<u8>,
        delivered_at: DateTime<Utc>,
        ok: bool,
    ) -> String {
        let guid = guid.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string);
        let outcome = if ok {
            Outcome {
                status: "OK".into(),
                status_code: 202,
                duration: 0.01,
            }
        } else {
            Outcome {
                status: "failed to connect".into(),
                status_code: 0,
                duration: 0.0,
            }
        };
        let redelivery = self.world().hooks.attempts.iter().any(|a| a.guid == guid);
        log(
            &mut self.world(),
            &guid,
            event,
            payload,
            redelivery,
            delivered_at,
            outcome,
        );
        guid
    }

    /// The attempts of one delivery, oldest first.
    pub fn hook_attempts(&self, guid: &str) -> Vec<HookAttempt> {
        self.world().hooks.of(guid).into_iter().cloned().collect()
    }
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends one attempt to the App's webhook (outside the world lock) and logs it.
async fn attempt(world: &Shared, guid: &str, event: &str, payload: Vec<u8>, redelivery: bool) {
    let target = world.lock().unwrap().hooks.target.clone();
    let started = std::time::Instant::now();
    let outcome = match target {
        None => Outcome {
            status: "no webhook URL".into(),
            status_code: 0,
            duration: 0.0,
        },
        Some((url, secret)) => {
            let (status, status_code) = send(&url, &secret, guid, event, &payload).await;
            Outcome {
                status,
                status_code,
                duration: started.elapsed().as_secs_f64(),
            }
        }
    };
    let mut w = world.lock().unwrap();
    log(
        &mut w,
        guid,
        event,
        payload,
        redelivery,
        Utc::now(),
        outcome,
    );
    w.answered.notify_waiters();
}

fn log(
    w: &mut World,
    guid: &str,
    event: &str,
    payload: Vec<u8>,
    redelivery: bool,
    delivered_at: DateTime<Utc>,
    outcome: Outcome,
) {
    let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
    w.hooks.next_id += 1;
    let id = 900_000_000 + w.hooks.next_id;
    w.hooks.attempts.push(HookAttempt {
        id,
        guid: guid.to_string(),
        delivered_at,
        redelivery,
        duration: outcome.duration,
        status: outcome.status,
        status_code: outcome.status_code,
        event: event.to_string(),
        action: v["action"].as_str().map(str::to_string),
        installation_id: v["installation"]["id"].as_u64(),
        repository_id: v["repository"]["id"].as_u64(),
        payload,
    });
}

/// POSTs the delivery as GitHub does; GitHub's status text and the HTTP status (0: none).
async fn send(url: &str, secret: &str, guid: &str, event: &str, payload: &[u8]) -> (String, u16) {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<axum::body::Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = axum::http::Request::post(url)
        .header("x-github-event", event)
        .header("x-github-delivery", guid)
        .header("x-github-hook-id", "4242001")
        .header("x-hub-signature-256", signature(secret, payload))
        .header("user-agent", "GitHub-Hookshot/fake")
        .header("content-type", "application/json")
        .body(Full::new(axum::body::Bytes::copy_from_slice(payload)))
        .expect("a valid request");
    match tokio::time::timeout(DELIVERY_TIMEOUT, client.request(request)).await {
        Err(_) => ("timed out".into(), 0),
        Ok(Err(e)) if e.is_connect() => ("failed to connect".into(), 0),
        Ok(Err(e)) => (format!("failed: {e}"), 0),
        Ok(Ok(response)) => {
            let code = response.status().as_u16();
            // GitHub reads the answer within the same 10 seconds.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            if (200..300).contains(&code) {
                ("OK".into(), code)
            } else {
                (format!("Invalid HTTP Response: {code}"), code)
            }
        }
    }
}

// ---- the endpoints ----

/// An answer checked against GitHub's response schema for `op` and `status`; a mismatch is a
/// schema violation (the fake would be lying to the client about GitHub).
fn checked(w: &mut World, op: Op, status: StatusCode, body: Value) -> Response {
    let errors = response_errors(op, status, &body);
    if !errors.is_empty() {
        w.schema_violations.push(format!(
            "the fake's own {status} answer to {op:?} does not match GitHub's schema: {}",
            errors.join("; ")
        ));
    }
    (status, axum::Json(body)).into_response()
}

pub(super) async fn list(
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    call: Call,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    call.answer(Op::ListHookDeliveries, |w, _, _| {
        let per_page = match query.get("per_page").map(|p| p.parse::<usize>()) {
            None => 30,
            Some(Ok(n)) if (1..=100).contains(&n) => n,
            Some(_) => return error(StatusCode::UNPROCESSABLE_ENTITY, "per_page must be 1..100"),
        };
        // Newest first; GitHub forgets what is older than it keeps.
        let horizon = Utc::now() - KEPT - chrono::TimeDelta::days(1);
        let mut log: Vec<&HookAttempt> = w
            .hooks
            .attempts
            .iter()
            .filter(|a| a.delivered_at > horizon)
            .collect();
        log.sort_by_key(|a| std::cmp::Reverse((a.delivered_at, a.id)));
        let start = match query.get("cursor") {
            None => 0,
            Some(c) => {
                let id = c.strip_prefix("v1_").and_then(|n| n.parse::<u64>().ok());
                match id.and_then(|id| log.iter().position(|a| a.id == id)) {
                    Some(i) => i,
                    None => return error(StatusCode::BAD_REQUEST, "invalid cursor"),
                }
            }
        };
        let page: Vec<Value> = log.iter().skip(start).take(per_page).map(|a| a.json()).collect();
        let next = log.get(start + per_page).map(|a| a.id);
        let mut response = checked(w, Op::ListHookDeliveries, StatusCode::OK, Value::Array(page));
        if let Some(next) = next {
            let link = format!(
                "<http://{host}/app/hook/deliveries?per_page={per_page}&cursor=v1_{next}>; rel=\"next\""
            );
            response
                .headers_mut()
                .insert(header::LINK, HeaderValue::from_str(&link).unwrap());
        }
        response
    })
}

pub(super) async fn redeliver(
    State(world): State<Shared>,
    Path(id): Path<u64>,
    call: Call,
) -> Response {
    let mut to_send = None;
    let response = call.answer(Op::RedeliverHookDelivery, |w, _, _| {
        let Some(a) = w.hooks.attempts.iter().find(|a| a.id == id) else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        if a.delivered_at < Utc::now() - KEPT {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
        }
        to_send = Some((a.guid.clone(), a.event.clone(), a.payload.clone()));
        checked(
            w,
            Op::RedeliverHookDelivery,
            StatusCode::ACCEPTED,
            json!({}),
        )
    });
    // GitHub answers at once and delivers a moment later.
    if let Some((guid, event, payload)) = to_send {
        tokio::spawn(async move { attempt(&world, &guid, &event, payload, true).await });
    }
    response
}

// ---- response schemas ----

type ResponseValidators = HashMap<(Op, u16), jsonschema::Validator>;

/// The errors of `body` against GitHub's schema of `op`'s `status` answer.
fn response_errors(op: Op, status: StatusCode, body: &Value) -> Vec<String> {
    static VALIDATORS: OnceLock<ResponseValidators> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| {
        let mut out = HashMap::new();
        for op in [Op::ListHookDeliveries, Op::RedeliverHookDelivery] {
            let doc = openapi_doc(op.openapi_file());
            let (method, route) = op.openapi();
            let responses = doc["paths"][route][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {route} has responses"));
            for (code, response) in responses {
                let response = match response["$ref"].as_str() {
                    Some(r) => doc
                        .pointer(r.trim_start_matches('#'))
                        .unwrap_or_else(|| panic!("{r} resolves"))
                        .clone(),
                    None => response.clone(),
                };
                let Some(mut schema) = response
                    .pointer("/content/application~1json/schema")
                    .cloned()
                else {
                    continue;
                };
                schema["components"] = doc["components"].clone();
                let validator = jsonschema::draft4::new(&schema)
                    .unwrap_or_else(|e| panic!("{code} schema of {method} {route} compiles: {e}"));
                out.insert((op, code.parse().expect("a status code")), validator);
            }
        }
        out
    });
    match validators.get(&(op, status.as_u16())) {
        Some(v) => v
            .iter_errors(body)
            .map(|e| format!("at `{}`: {e}", e.instance_path()))
            .collect(),
        None => vec![format!(
            "GitHub's description has no {status} answer for {op:?}"
        )],
    }
}
