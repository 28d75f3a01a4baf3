//! A fake of the Anthropic Messages API for driving the real AI CLI (`claude`) in tests.
//!
//! It serves `POST /v1/messages` on 127.0.0.1 with streaming server-sent events the way the API
//! does (`message_start`, `content_block_start`, `content_block_delta` with `text_delta` or
//! `input_json_delta`, `content_block_stop`, `message_delta` with `stop_reason` and usage,
//! `message_stop`), or plain JSON when the request does not ask for a stream. Each test scripts
//! the replies of the conversation: a queue of [`Turn`]s consumed by the requests that carry tools
//! (the agent's own conversation). The CLI's side requests (titles, quota probes: no tools) and
//! `count_tokens` get a short sensible answer and are recorded too.
//!
//! The server runs on its own thread with its own runtime, so sync tests (which drive the
//! `prodigy` binary with `std::process`) and async tests use it alike. Self-contained on purpose:
//! it needs only axum, tokio and serde_json.
//!
//! Run the CLI with [`FakeAnthropic::cli_env`]: the base URL, a test key, no non-essential
//! traffic, and a temporary HOME so the CLI's own settings and transcripts stay in the test.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The key tests give the CLI; the fake answers 401 to any other unless told to accept all.
pub const TEST_API_KEY: &str = "test-key";

/// Tokens the fake reports for one reply (the CLI prices them with its own table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            input_tokens: 100,
            output_tokens: 20,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
        }
    }
}

/// One scripted answer to a conversation request.
#[derive(Debug, Clone)]
pub enum Turn {
    /// A final text answer (`stop_reason: end_turn`).
    Text { text: String, usage: Usage },
    /// The model calls one tool (`stop_reason: tool_use`); the CLI runs it and asks again.
    Tool {
        name: String,
        input: Value,
        usage: Usage,
    },
    /// An HTTP error the API gives, e.g. 401 `authentication_error`, 429 `rate_limit_error` with
    /// a `retry-after`, 529 `overloaded_error`.
    Error {
        status: u16,
        kind: String,
        message: String,
        retry_after: Option<u64>,
    },
}

impl Turn {
    pub fn text(text: impl Into<String>) -> Turn {
        Turn::Text {
            text: text.into(),
            usage: Usage::default(),
        }
    }

    pub fn tool(name: &str, input: Value) -> Turn {
        Turn::Tool {
            name: name.to_string(),
            input,
            usage: Usage::default(),
        }
    }

    /// The Bash tool running `command`.
    pub fn bash(command: &str) -> Turn {
        Turn::tool(
            "Bash",
            json!({"command": command, "description": "scripted by the test"}),
        )
    }

    pub fn with_usage(mut self, u: Usage) -> Turn {
        match &mut self {
            Turn::Text { usage, .. } | Turn::Tool { usage, .. } => *usage = u,
            Turn::Error { .. } => {}
        }
        self
    }

    pub fn unauthorized() -> Turn {
        Turn::Error {
            status: 401,
            kind: "authentication_error".into(),
            message: "invalid x-api-key".into(),
            retry_after: None,
        }
    }

    pub fn rate_limited(retry_after: u64) -> Turn {
        Turn::Error {
            status: 429,
            kind: "rate_limit_error".into(),
            message: "Number of request tokens has exceeded your per-minute rate limit".into(),
            retry_after: Some(retry_after),
        }
    }

    pub fn overloaded() -> Turn {
        Turn::Error {
            status: 529,
            kind: "overloaded_error".into(),
            message: "Overloaded".into(),
            retry_after: None,
        }
    }
}

/// What the fake saw.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub api_key: Option<String>,
    pub body: Value,
    /// Whether the request took a scripted turn (a conversation request) and which status it got.
    pub scripted: bool,
    pub status: u16,
}

impl Request {
    /// The text of the last user message, to tell conversations apart in a shared fake.
    pub fn last_user_text(&self) -> String {
        last_user_text(&self.body)
    }
}

/// Picks the script for a conversation request: lets one fake serve several agents at once
/// (e.g. one queue per work item, chosen by a word in the prompt).
pub type RouteFn = Arc<dyn Fn(&Value) -> String + Send + Sync>;

struct World {
    /// Queues of turns by conversation key; the key comes from `route` (default: one queue "").
    scripts: std::collections::HashMap<String, VecDeque<Turn>>,
    /// When a queue is empty: answer with this text (None: a 500 that names the missing turn).
    fallback: Option<String>,
    route: Option<RouteFn>,
    requests: Vec<Request>,
    accept_any_key: bool,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<World>>);

pub struct FakeAnthropic {
    pub addr: std::net::SocketAddr,
    world: Arc<Mutex<World>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAnthropic {
    /// A fake whose single conversation answers with `turns` in order.
    pub fn start(turns: Vec<Turn>) -> FakeAnthropic {
        let fake = FakeAnthropic::empty();
        fake.script("", turns);
        fake
    }

    /// A fake with no script yet; add queues with [`FakeAnthropic::script`] and choose them with
    /// [`FakeAnthropic::route_by`].
    pub fn empty() -> FakeAnthropic {
        let world = Arc::new(Mutex::new(World {
            scripts: Default::default(),
            fallback: None,
            route: None,
            requests: Vec::new(),
            accept_any_key: false,
        }));
        let shared = Shared(world.clone());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for the fake Anthropic API");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the fake Anthropic API");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new().fallback(handle).with_state(shared);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("fake Anthropic API serves");
            });
        });
        let addr = addr_rx.recv().expect("fake Anthropic API started");
        FakeAnthropic {
            addr,
            world,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Appends turns to the conversation queue `key`.
    pub fn script(&self, key: &str, turns: Vec<Turn>) {
        let mut w = self.world.lock().unwrap();
        w.scripts.entry(key.to_string()).or_default().extend(turns);
    }

    /// Chooses a conversation's queue from the request body (e.g. by a word in the first user
    /// message); unknown keys fall back to the default queue "".
    pub fn route_by(&self, f: impl Fn(&Value) -> String + Send + Sync + 'static) {
        self.world.lock().unwrap().route = Some(Arc::new(f));
    }

    /// Answers with `text` when a queue runs out, instead of failing the request.
    pub fn fallback_text(&self, text: &str) {
        self.world.lock().unwrap().fallback = Some(text.to_string());
    }

    /// Accepts any API key (by default only [`TEST_API_KEY`], anything else is a 401).
    pub fn accept_any_key(&self) {
        self.world.lock().unwrap().accept_any_key = true;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.world.lock().unwrap().requests.clone()
    }

    /// The conversation requests (those that took a scripted turn).
    pub fn conversation(&self) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.scripted).collect()
    }

    /// Turns left unplayed in queue `key`.
    pub fn remaining(&self, key: &str) -> usize {
        self.world
            .lock()
            .unwrap()
            .scripts
            .get(key)
            .map_or(0, VecDeque::len)
    }

    /// The environment for the real CLI: this fake as its API, the test key, no other traffic,
    /// and `home` as HOME (the CLI writes its settings and session transcripts there).
    pub fn cli_env(&self, home: &Path) -> Vec<(String, String)> {
        vec![
            ("ANTHROPIC_BASE_URL".into(), self.base_url()),
            ("ANTHROPIC_API_KEY".into(), TEST_API_KEY.into()),
            (
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
                "1".into(),
            ),
            ("DISABLE_AUTOUPDATER".into(), "1".into()),
            ("DISABLE_TELEMETRY".into(), "1".into()),
            ("DISABLE_ERROR_REPORTING".into(), "1".into()),
            ("HOME".into(), home.display().to_string()),
        ]
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the real CLI is: `PRODIGY_TEST_CLAUDE`, else `tests/agent-cli/node_modules/.bin/claude`
/// (installed by `.ci/install-agent-cli`). None (and a message on stderr saying how to install it)
/// when absent, unless `PRODIGY_REQUIRE_CLAUDE=1`, which turns absence into a test failure.
pub fn real_claude() -> Option<PathBuf> {
    let path = std::env::var_os("PRODIGY_TEST_CLAUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/agent-cli/node_modules/.bin/claude")
        });
    if path.is_file() {
        return Some(path);
    }
    let required = std::env::var("PRODIGY_REQUIRE_CLAUDE").is_ok_and(|v| v == "1");
    let msg = format!(
        "the real AI CLI is not at {}: run `.ci/install-agent-cli` (npm ci --prefix tests/agent-cli) \
         or set PRODIGY_TEST_CLAUDE",
        path.display()
    );
    if required {
        panic!("PRODIGY_REQUIRE_CLAUDE=1 but {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn last_user_text(body: &Value) -> String {
    let Some(msgs) = body.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    msgs.iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .find_map(|m| match m.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(parts)) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                (!texts.is_empty()).then(|| texts.join("\n"))
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// The first user message's text: what the agent was asked.
pub fn first_user_text(body: &Value) -> String {
    let Some(first) = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.first())
    else {
        return String::new();
    };
    match first.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

async fn handle(
    State(Shared(world)): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        });
    let mut w = world.lock().unwrap();
    let mut record = Request {
        method: method.clone(),
        path: path.clone(),
        api_key: api_key.clone(),
        body: body.clone(),
        scripted: false,
        status: 200,
    };
    let key_ok = w.accept_any_key || api_key.as_deref() == Some(TEST_API_KEY);
    let response = if !key_ok {
        record.status = 401;
        error_response(401, "authentication_error", "invalid x-api-key", None)
    } else if method == Method::POST && path == "/v1/messages/count_tokens" {
        let n = serde_json::to_string(&body).map_or(0, |s| s.len() / 4);
        Json(json!({"input_tokens": n})).into_response()
    } else if method == Method::POST && path == "/v1/messages" {
        let has_tools = body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty());
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("claude-sonnet-4-5")
            .to_string();
        let turn = if has_tools {
            record.scripted = true;
            let key = w.route.as_ref().map(|r| r(&body)).unwrap_or_default();
            let key = if w.scripts.contains_key(&key) {
                key
            } else {
                String::new()
            };
            match w.scripts.get_mut(&key).and_then(VecDeque::pop_front) {
                Some(t) => t,
                None => match &w.fallback {
                    Some(text) => Turn::text(text.clone()),
                    None => Turn::Error {
                        status: 500,
                        kind: "api_error".into(),
                        message: format!(
                            "the fake Anthropic API has no scripted turn left for conversation {key:?}"
                        ),
                        retry_after: None,
                    },
                },
            }
        } else {
            // Side requests (titles, topic detection, quota probes): a short answer.
            Turn::Text {
                text: "Scripted side answer".into(),
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 3,
                    ..Usage::default()
                },
            }
        };
        if let Turn::Error { status, .. } = &turn {
            record.status = *status;
        }
        reply(turn, &model, stream)
    } else {
        record.status = 404;
        error_response(404, "not_found_error", &format!("{method} {path}"), None)
    };
    w.requests.push(record);
    response
}

struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [("content-type", "application/json")],
            serde_json::to_string(&self.0).unwrap(),
        )
            .into_response()
    }
}

fn error_response(status: u16, kind: &str, message: &str, retry_after: Option<u64>) -> Response {
    let mut resp = Json(json!({
        "type": "error",
        "error": {"type": kind, "message": message},
    }))
    .into_response();
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    resp.headers_mut()
        .insert("request-id", "req_fake".parse().unwrap());
    resp
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_id(prefix: &str) -> String {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_fake{n:020}")
}

fn reply(turn: Turn, model: &str, stream: bool) -> Response {
    let (content, stop_reason, usage) = match turn {
        Turn::Error {
            status,
            kind,
            message,
            retry_after,
        } => return error_response(status, &kind, &message, retry_after),
        Turn::Text { text, usage } => (json!({"type": "text", "text": text}), "end_turn", usage),
        Turn::Tool { name, input, usage } => (
            json!({"type": "tool_use", "id": next_id("toolu"), "name": name, "input": input}),
            "tool_use",
            usage,
        ),
    };
    let id = next_id("msg");
    if !stream {
        return Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [content],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage_json(&usage),
        }))
        .into_response();
    }
    let mut sse = String::new();
    let mut event = |name: &str, data: Value| {
        sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {
                "input_tokens": usage.input_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
                "output_tokens": 1,
            },
        }}),
    );
    match content.get("type").and_then(Value::as_str) {
        Some("text") => {
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}}),
            );
            let text = content["text"].as_str().unwrap_or_default();
            // Several deltas, the way the API streams a long answer.
            for chunk in chunks(text, 200) {
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": chunk}}),
                );
            }
        }
        _ => {
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {
                    "type": "tool_use", "id": content["id"], "name": content["name"], "input": {},
                }}),
            );
            let partial = content["input"].to_string();
            for chunk in chunks(&partial, 40) {
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "input_json_delta", "partial_json": chunk}}),
                );
            }
        }
    }
    event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    event(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": usage_json(&usage)}),
    );
    event("message_stop", json!({"type": "message_stop"}));
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("request-id", "req_fake")
        .body(Body::from(sse))
        .unwrap()
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
    })
}

/// Splits at char boundaries into pieces of about `n` bytes.
fn chunks(s: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        cur.push(c);
        if cur.len() >= n {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}
