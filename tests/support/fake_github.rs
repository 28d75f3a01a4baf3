//! A fake GitHub for tests: an in-process axum server on 127.0.0.1 with a small world model.
//!
//! It serves the REST endpoints prodigy's client uses, authenticates like GitHub (App JWT verified
//! with the test App's public key -> installation tokens -> repository calls), records every
//! request, can be told to fail the next calls of an endpoint, and validates every request body
//! against GitHub's OpenAPI schema (`tests/fixtures/github/rest/checks-and-comments.openapi.json`,
//! `app-hook-deliveries.openapi.json`). A body that does not match is answered 422 and recorded
//! in `schema_violations`, which a test asserts is empty at its end
//! (`FakeGitHub::assert_no_violations`). The App's webhook delivery log (`deliveries`) also
//! checks its own answers against GitHub's response schemas, and really delivers webhooks to
//! the server, signed, as GitHub does.

// Handlers bail out with a ready `Response`; boxing it would only add noise to a test server.
#![allow(clippy::result_large_err)]

mod deliveries;

#[allow(unused_imports)]
pub use deliveries::HookAttempt;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use base64::Engine;
use chrono::{DateTime, Utc};
use prodigy::github::{AppAuth, AppId, RetryPolicy};
use secrecy::SecretString;
use serde_json::{Value, json};

/// The test App's id.
pub const TEST_APP_ID: u64 = 4242;

/// The repository's test fixtures (`tests/fixtures`: GitHub's payloads and schemas, upstream
/// Prodigy's workflows; provenance and licences in `tests/fixtures/README.md`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn test_key_path(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// The test App's private key (test-only, see tests/fixtures/README.md).
pub fn test_private_key() -> SecretString {
    SecretString::from(
        std::fs::read_to_string(test_key_path("test-app-key.TEST-ONLY.pem"))
            .expect("test key present"),
    )
}

pub fn test_app_auth() -> AppAuth {
    AppAuth::new(AppId(TEST_APP_ID), &test_private_key()).expect("test key parses")
}

/// Fast retries for tests; `max_delay` still lets a 1 s `retry-after` be honoured.
pub fn test_retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: std::time::Duration::from_millis(10),
        max_delay: std::time::Duration::from_secs(2),
    }
}

/// The endpoints the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    CreateAccessToken,
    CreateCheckRun,
    UpdateCheckRun,
    CreateComment,
    UpdateComment,
    CreateReaction,
    GetPermission,
    GetPull,
    GetContents,
    ListHookDeliveries,
    RedeliverHookDelivery,
}

impl Op {
    /// The operation in GitHub's OpenAPI document, for request bodies.
    fn openapi(self) -> (&'static str, &'static str) {
        match self {
            Op::CreateAccessToken => ("post", "/app/installations/{installation_id}/access_tokens"),
            Op::CreateCheckRun => ("post", "/repos/{owner}/{repo}/check-runs"),
            Op::UpdateCheckRun => ("patch", "/repos/{owner}/{repo}/check-runs/{check_run_id}"),
            Op::CreateComment => (
                "post",
                "/repos/{owner}/{repo}/issues/{issue_number}/comments",
            ),
            Op::UpdateComment => (
                "patch",
                "/repos/{owner}/{repo}/issues/comments/{comment_id}",
            ),
            Op::CreateReaction => (
                "post",
                "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions",
            ),
            Op::GetPermission => (
                "get",
                "/repos/{owner}/{repo}/collaborators/{username}/permission",
            ),
            Op::GetPull => ("get", "/repos/{owner}/{repo}/pulls/{pull_number}"),
            Op::GetContents => ("get", "/repos/{owner}/{repo}/contents/{path}"),
            Op::ListHookDeliveries => ("get", "/app/hook/deliveries"),
            Op::RedeliverHookDelivery => ("post", "/app/hook/deliveries/{delivery_id}/attempts"),
        }
    }

    /// The fixture holding the operation (`tests/fixtures/github/rest/`).
    fn openapi_file(self) -> &'static str {
        match self {
            Op::ListHookDeliveries | Op::RedeliverHookDelivery => {
                "app-hook-deliveries.openapi.json"
            }
            _ => "checks-and-comments.openapi.json",
        }
    }

    const ALL: [Op; 11] = [
        Op::CreateAccessToken,
        Op::CreateCheckRun,
        Op::UpdateCheckRun,
        Op::CreateComment,
        Op::UpdateComment,
        Op::CreateReaction,
        Op::GetPermission,
        Op::GetPull,
        Op::GetContents,
        Op::ListHookDeliveries,
        Op::RedeliverHookDelivery,
    ];
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub op: Op,
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
    pub status: StatusCode,
}

#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub installation: u64,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    /// `checks: write`; without it check-run calls are answered 403, as GitHub does.
    pub checks_write: bool,
    /// The repositories (`owner/name`, lower case) the token was narrowed to; `None`: all of
    /// its installation's.
    pub repositories: Option<Vec<String>>,
    /// The permissions asked for, as sent.
    pub permissions: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct PullRequest {
    pub number: u64,
    pub state: String,
    pub head_sha: String,
    pub head_ref: String,
    pub base_ref: String,
    /// `owner/name` the head branch lives in; differs from the repo for a fork.
    pub head_repo: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Repo {
    pub prs: BTreeMap<u64, PullRequest>,
    /// login -> GitHub's `role_name` (admin, maintain, write, triage, read).
    pub permissions: HashMap<String, String>,
    /// (git ref, path) -> bytes.
    pub files: HashMap<(String, String), Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    pub repo: String,
    pub issue: u64,
    pub body: String,
    pub author: String,
    /// Every earlier body, oldest first (the comment was edited in place this often).
    pub history: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ReactionRecord {
    pub repo: String,
    pub comment_id: u64,
    pub content: String,
}

#[derive(Debug, Clone, Default)]
pub struct CheckRun {
    pub id: u64,
    pub repo: String,
    pub name: String,
    pub head_sha: String,
    pub external_id: Option<String>,
    pub details_url: Option<String>,
    pub status: String,
    pub conclusion: Option<String>,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub text: Option<String>,
    /// Appended across requests, as GitHub does.
    pub annotations: Vec<Value>,
    pub actions: Vec<Value>,
    pub updates: usize,
}

#[derive(Debug, Clone)]
struct InjectedFailure {
    status: StatusCode,
    headers: Vec<(String, String)>,
}

/// The world the fake serves; tests read and arrange it through [`FakeGitHub::world`].
#[derive(Debug, Default)]
pub struct World {
    /// installation id -> `owner/name` repositories it covers (lower case).
    pub installations: HashMap<u64, Vec<String>>,
    pub token_lifetime: chrono::Duration,
    pub tokens: Vec<IssuedToken>,
    pub repos: HashMap<String, Repo>,
    pub comments: Vec<Comment>,
    pub reactions: Vec<ReactionRecord>,
    pub check_runs: BTreeMap<u64, CheckRun>,
    pub requests: Vec<RecordedRequest>,
    pub schema_violations: Vec<String>,
    failures: HashMap<Op, VecDeque<InjectedFailure>>,
    /// Calls of these operations wait (unanswered, unrecorded) until [`FakeGitHub::release`].
    held: HashMap<Op, Arc<tokio::sync::Semaphore>>,
    /// Calls that arrived while their operation was held, by operation.
    held_arrivals: HashMap<Op, usize>,
    next_id: u64,
    /// What tests read through [`FakeGitHub::comments_on`] and [`FakeGitHub::check_runs_for`]:
    /// comment ids, and per check run how many updates it had then.
    seen_comments: HashSet<u64>,
    seen_check_runs: HashMap<u64, usize>,
    /// Woken after every answered call, for [`FakeGitHub::wait_for`].
    answered: Arc<tokio::sync::Notify>,
    /// The App's webhook: where it delivers and its delivery log.
    pub hooks: deliveries::HookLog,
}

impl World {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn repo_mut(&mut self, repo: &str) -> &mut Repo {
        self.repos.entry(repo.to_ascii_lowercase()).or_default()
    }

    pub fn count(&self, op: Op) -> usize {
        self.requests.iter().filter(|r| r.op == op).count()
    }

    /// The comments posted on `repo`#`issue`, oldest first.
    pub fn comments_on(&self, repo: &str, issue: u64) -> Vec<&Comment> {
        let repo = repo.to_ascii_lowercase();
        self.comments
            .iter()
            .filter(|c| c.repo == repo && c.issue == issue)
            .collect()
    }

    /// The check runs of `repo` for `head_sha`.
    pub fn check_runs_for(&self, repo: &str, head_sha: &str) -> Vec<&CheckRun> {
        let repo = repo.to_ascii_lowercase();
        self.check_runs
            .values()
            .filter(|r| r.repo == repo && r.head_sha == head_sha)
            .collect()
    }

    /// What the bot posted that no test read: comments, and check runs updated since read.
    fn unseen(&self) -> Vec<String> {
        let comments = self
            .comments
            .iter()
            .filter(|c| !self.seen_comments.contains(&c.id))
            .map(|c| format!("comment on {}#{}: {}", c.repo, c.issue, c.body));
        let runs = self
            .check_runs
            .values()
            .filter(|r| self.seen_check_runs.get(&r.id) != Some(&r.updates))
            .map(|r| {
                format!(
                    "check run {} {:?} after {} updates: {} {:?} {:?}",
                    r.id, r.name, r.updates, r.status, r.conclusion, r.title
                )
            });
        comments.chain(runs).collect()
    }
}

pub struct FakeGitHub {
    addr: SocketAddr,
    world: Arc<Mutex<World>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Shared = Arc<Mutex<World>>;

impl FakeGitHub {
    /// A fake with one installation (`installation`) covering `repos`; tokens live an hour.
    pub async fn start(installation: u64, repos: &[&str]) -> FakeGitHub {
        let mut world = World {
            token_lifetime: chrono::Duration::hours(1),
            next_id: 1000,
            ..World::default()
        };
        world.installations.insert(
            installation,
            repos.iter().map(|r| r.to_ascii_lowercase()).collect(),
        );
        for repo in repos {
            world.repo_mut(repo);
        }
        let world = Arc::new(Mutex::new(world));
        let app = Router::new()
            .route(
                "/app/installations/{id}/access_tokens",
                post(create_access_token),
            )
            .route("/repos/{owner}/{repo}/check-runs", post(create_check_run))
            .route(
                "/repos/{owner}/{repo}/check-runs/{id}",
                patch(update_check_run),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{number}/comments",
                post(create_comment),
            )
            .route(
                "/repos/{owner}/{repo}/issues/comments/{id}",
                patch(update_comment),
            )
            .route(
                "/repos/{owner}/{repo}/issues/comments/{id}/reactions",
                post(create_reaction),
            )
            .route(
                "/repos/{owner}/{repo}/collaborators/{user}/permission",
                get(get_permission),
            )
            .route("/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
            .route("/repos/{owner}/{repo}/contents/{*path}", get(get_contents))
            .route("/app/hook/deliveries", get(deliveries::list))
            .route(
                "/app/hook/deliveries/{id}/attempts",
                post(deliveries::redeliver),
            )
            .fallback(unknown_endpoint)
            .layer(axum::middleware::from_fn(rate_limit_headers))
            .with_state(world.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake GitHub on loopback");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake GitHub serves");
        });
        // Compile the schemas now, so a broken fixture fails here and not inside a request.
        validators();
        FakeGitHub {
            addr,
            world,
            server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The world, locked. Keep the guard short: the server needs the lock to answer.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().expect("fake GitHub world lock")
    }

    /// The next `n` calls of `op` are answered `status` with `headers` (and change nothing).
    pub fn fail_next(&self, op: Op, n: usize, status: u16, headers: &[(&str, &str)]) {
        let failure = InjectedFailure {
            status: StatusCode::from_u16(status).unwrap(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut world = self.world();
        let queue = world.failures.entry(op).or_default();
        queue.extend(std::iter::repeat_n(failure, n));
    }

    /// Calls of `op` from now on wait, unanswered, until [`FakeGitHub::release`] (a sync point:
    /// the caller is known to be inside the call, see [`FakeGitHub::held_arrivals`]).
    pub fn hold(&self, op: Op) {
        self.world()
            .held
            .insert(op, Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Answers the held calls of `op`, and later ones at once.
    pub fn release(&self, op: Op) {
        if let Some(gate) = self.world().held.remove(&op) {
            gate.close();
        }
    }

    /// How many calls of `op` arrived while it was held.
    pub fn held_arrivals(&self, op: Op) -> usize {
        self.world().held_arrivals.get(&op).copied().unwrap_or(0)
    }

    /// Adds (or replaces) an open pull request; `head_repo` other than `repo` makes it a fork.
    pub fn add_pr(&self, repo: &str, number: u64, head_sha: &str, head_repo: Option<&str>) {
        self.world().repo_mut(repo).prs.insert(
            number,
            PullRequest {
                number,
                state: "open".into(),
                head_sha: head_sha.into(),
                head_ref: format!("pr-{number}"),
                base_ref: "main".into(),
                head_repo: head_repo.map(str::to_string),
            },
        );
    }

    /// Gives `user` a role (admin, maintain, write, triage, read) on `repo`.
    pub fn set_permission(&self, repo: &str, user: &str, role: &str) {
        self.world()
            .repo_mut(repo)
            .permissions
            .insert(user.to_ascii_lowercase(), role.into());
    }

    /// Puts a file at `git_ref` (a SHA or branch name, as the client asks for it).
    pub fn add_file(&self, repo: &str, git_ref: &str, path: &str, bytes: &[u8]) {
        self.world()
            .repo_mut(repo)
            .files
            .insert((git_ref.into(), path.into()), bytes.to_vec());
    }

    /// The bodies of the comments posted on `repo`#`issue`, oldest first; marks them read.
    pub fn comments_on(&self, repo: &str, issue: u64) -> Vec<String> {
        let mut w = self.world();
        let (ids, bodies): (Vec<u64>, Vec<String>) = w
            .comments_on(repo, issue)
            .into_iter()
            .map(|c| (c.id, c.body.clone()))
            .unzip();
        w.seen_comments.extend(ids);
        bodies
    }

    /// The check runs of `repo` for `head_sha`; marks them read as they are now.
    pub fn check_runs_for(&self, repo: &str, head_sha: &str) -> Vec<CheckRun> {
        let mut w = self.world();
        let runs: Vec<CheckRun> = w
            .check_runs_for(repo, head_sha)
            .into_iter()
            .cloned()
            .collect();
        w.seen_check_runs
            .extend(runs.iter().map(|r| (r.id, r.updates)));
        runs
    }

    /// A GitHub Actions workflow token (`GITHUB_TOKEN`) for `repo`: an installation token of its
    /// own installation covering only that repository, valid for the test, with or without
    /// `checks: write` (`permissions:` in the workflow decide that on GitHub).
    pub fn issue_workflow_token(&self, repo: &str, checks_write: bool) -> String {
        let mut w = self.world();
        let installation = w.next_id();
        w.installations
            .insert(installation, vec![repo.to_ascii_lowercase()]);
        let token = format!("ghs_workflow{}", uuid::Uuid::now_v7().simple());
        w.tokens.push(IssuedToken {
            token: token.clone(),
            installation,
            expires_at: Utc::now() + chrono::Duration::hours(6),
            revoked: false,
            checks_write,
            repositories: Some(vec![repo.to_ascii_lowercase()]),
            permissions: None,
        });
        token
    }

    /// Every token issued so far stops working (as when GitHub revokes them).
    pub fn revoke_tokens(&self) {
        for t in &mut self.world().tokens {
            t.revoked = true;
        }
    }

    pub fn count(&self, op: Op) -> usize {
        self.world().count(op)
    }

    /// Waits until `f` finds what it looks for in the world, checking after every call the fake
    /// answers (no polling); panics naming `what` after `timeout`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: std::time::Duration,
        mut f: impl FnMut(&World) -> Option<T>,
    ) -> T {
        self.wait_for_mut(what, timeout, |world| f(world)).await
    }

    /// Waits until `f` accepts the check runs of `repo` for `head_sha` (as
    /// [`FakeGitHub::wait_for`]); the runs it accepted count as read.
    pub async fn wait_for_check_runs<T>(
        &self,
        repo: &str,
        head_sha: &str,
        what: &str,
        timeout: std::time::Duration,
        mut f: impl FnMut(Vec<CheckRun>) -> Option<T>,
    ) -> T {
        let what = format!("{what} (check runs of {repo} at {head_sha})");
        self.wait_for_mut(&what, timeout, |world| {
            let runs: Vec<CheckRun> = world
                .check_runs_for(repo, head_sha)
                .into_iter()
                .cloned()
                .collect();
            let seen: Vec<(u64, usize)> = runs.iter().map(|r| (r.id, r.updates)).collect();
            let found = f(runs)?;
            world.seen_check_runs.extend(seen);
            Some(found)
        })
        .await
    }

    async fn wait_for_mut<T>(
        &self,
        what: &str,
        timeout: std::time::Duration,
        mut f: impl FnMut(&mut World) -> Option<T>,
    ) -> T {
        let answered = self.world().answered.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so a call answered in between still wakes us.
            let next = answered.notified();
            tokio::pin!(next);
            next.as_mut().enable();
            if let Some(found) = f(&mut self.world()) {
                return found;
            }
            if tokio::time::timeout_at(deadline, next).await.is_err() {
                panic!("timed out after {timeout:?} waiting for {what} on the fake GitHub");
            }
        }
    }

    /// Panics with every comment and check-run update the bot posted that the test never read
    /// (through [`FakeGitHub::comments_on`] or [`FakeGitHub::check_runs_for`]): what the bot
    /// says is behaviour, and a test that does not look at it does not pin it.
    pub fn assert_all_seen(&self) {
        let unseen = self.world().unseen();
        assert!(
            unseen.is_empty(),
            "the bot posted what the test never read:\n{}",
            unseen.join("\n")
        );
    }

    /// Panics with every request body that did not match GitHub's schema.
    pub fn assert_no_violations(&self) {
        let violations = self.world().schema_violations.clone();
        assert!(
            violations.is_empty(),
            "requests that GitHub would reject:\n{}",
            violations.join("\n")
        );
    }
}

// ---- schemas ----

/// OpenAPI 3.0's `nullable` is not JSON Schema: rewrite it to a `null` type (and enum member).
fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".into(), json!([t, "null"]));
                }
                if let Some(Value::Array(members)) = map.get_mut("enum")
                    && !members.contains(&Value::Null)
                {
                    members.push(Value::Null);
                }
            }
            for v in map.values_mut() {
                rewrite_nullable(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        _ => {}
    }
}

/// An operation's request-body schema and whether the body is required.
struct BodySchema {
    validator: jsonschema::Validator,
    required: bool,
}

/// An OpenAPI fixture of `tests/fixtures/github/rest/`, `nullable` rewritten.
fn openapi_doc(file: &str) -> Value {
    let path = fixtures_dir().join("github/rest").join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut doc: Value = serde_json::from_str(&text).expect("OpenAPI fixture is JSON");
    rewrite_nullable(&mut doc);
    doc
}

fn validators() -> &'static HashMap<Op, BodySchema> {
    static VALIDATORS: OnceLock<HashMap<Op, BodySchema>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let mut docs: HashMap<&str, Value> = HashMap::new();
        let mut out = HashMap::new();
        for op in Op::ALL {
            let doc = docs
                .entry(op.openapi_file())
                .or_insert_with(|| openapi_doc(op.openapi_file()));
            let (method, route) = op.openapi();
            let operation = &doc["paths"][route][method];
            assert!(
                operation.is_object(),
                "{method} {route} missing from the OpenAPI fixture"
            );
            let Some(schema) = operation
                .pointer("/requestBody/content/application~1json/schema")
                .cloned()
            else {
                continue;
            };
            // `$ref: #/components/...` resolves against the schema's own root.
            let mut schema = schema;
            schema["components"] = doc["components"].clone();
            let validator = jsonschema::draft4::new(&schema)
                .unwrap_or_else(|e| panic!("schema of {method} {route} compiles: {e}"));
            let required = operation["requestBody"]["required"].as_bool() == Some(true);
            out.insert(
                op,
                BodySchema {
                    validator,
                    required,
                },
            );
        }
        out
    })
}

/// Limits GitHub documents for annotations in prose but not in the schema.
fn documented_limit_errors(op: Op, body: &Value) -> Vec<String> {
    if !matches!(op, Op::CreateCheckRun | Op::UpdateCheckRun) {
        return vec![];
    }
    let mut errors = vec![];
    let annotations = body
        .pointer("/output/annotations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, a) in annotations.iter().enumerate() {
        let text = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("");
        if text("title").chars().count() > 255 {
            errors.push(format!("annotation {i}: title over 255 characters"));
        }
        for k in ["message", "raw_details"] {
            if text(k).len() > 64 * 1024 {
                errors.push(format!("annotation {i}: {k} over 64 KB"));
            }
        }
        let has_columns = a.get("start_column").is_some() || a.get("end_column").is_some();
        if has_columns && a.get("start_line") != a.get("end_line") {
            errors.push(format!(
                "annotation {i}: columns given but start_line != end_line"
            ));
        }
    }
    errors
}

/// The request body's schema errors, if the operation has a body schema.
fn schema_errors(op: Op, body: &Value) -> Vec<String> {
    let documented = documented_limit_errors(op, body);
    if !documented.is_empty() {
        return documented;
    }
    match validators().get(&op) {
        Some(schema) => schema
            .validator
            .iter_errors(body)
            .map(|e| format!("at `{}`: {e}", e.instance_path()))
            .collect(),
        None => vec![],
    }
}

// ---- request plumbing ----

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

/// Records the request, applies injected failures, validates the body. `Err` is the answer.
fn admit(
    world: &mut World,
    op: Op,
    method: Method,
    path: String,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<Value>, Response> {
    if headers.get("accept").and_then(|v| v.to_str().ok()) != Some("application/vnd.github+json") {
        world.schema_violations.push(format!(
            "{method} {path}: no `accept: application/vnd.github+json` header (GitHub's recommended media type)"
        ));
    }
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => Some(v),
            Err(e) => {
                world
                    .schema_violations
                    .push(format!("{method} {path}: body is not JSON: {e}"));
                return Err(error(StatusCode::BAD_REQUEST, "Problems parsing JSON"));
            }
        }
    };
    let mut record = RecordedRequest {
        op,
        method: method.clone(),
        path: path.clone(),
        body: parsed.clone(),
        status: StatusCode::OK,
    };
    let answer = (|| {
        if let Some(failure) = world.failures.get_mut(&op).and_then(|q| q.pop_front()) {
            let mut response = error(failure.status, "injected failure");
            for (k, v) in failure.headers {
                response.headers_mut().insert(
                    HeaderName::try_from(k).unwrap(),
                    HeaderValue::try_from(v).unwrap(),
                );
            }
            return Err(response);
        }
        if let Some(body) = &parsed {
            let errors = schema_errors(op, body);
            // GitHub ignores a JSON body sent without the JSON content type.
            if headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_none_or(|v| !v.starts_with("application/json"))
            {
                world.schema_violations.push(format!(
                    "{method} {path}: body without `content-type: application/json`"
                ));
                return Err(error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Unsupported Media Type",
                ));
            }
            if !errors.is_empty() {
                world.schema_violations.push(format!(
                    "{method} {path}: {}\nbody: {}",
                    errors.join("; "),
                    truncate(&body.to_string(), 500)
                ));
                return Err(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("Invalid request.\n\n{}", errors.join("\n")),
                ));
            }
        } else if validators().get(&op).is_some_and(|s| s.required) {
            world
                .schema_violations
                .push(format!("{method} {path}: a body is required"));
            return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "Body required"));
        }
        Ok(parsed.clone())
    })();
    record.status = match &answer {
        Ok(_) => StatusCode::OK,
        Err(r) => r.status(),
    };
    world.requests.push(record);
    answer
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("token "))
}

/// The installation token must be live, cover `repo` and, for check runs, hold `checks: write`.
fn authorize_repo(world: &World, op: Op, headers: &HeaderMap, repo: &str) -> Result<(), Response> {
    let Some(token) = bearer(headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "Requires authentication"));
    };
    let now = Utc::now();
    let Some(issued) = world
        .tokens
        .iter()
        .find(|t| t.token == token && !t.revoked && t.expires_at > now)
    else {
        return Err(error(StatusCode::UNAUTHORIZED, "Bad credentials"));
    };
    let covered = world
        .installations
        .get(&issued.installation)
        .is_some_and(|repos| repos.iter().any(|r| r == repo));
    let narrowed_out = issued
        .repositories
        .as_ref()
        .is_some_and(|repos| !repos.iter().any(|r| r == repo));
    if !covered || narrowed_out {
        return Err(error(StatusCode::NOT_FOUND, "Not Found"));
    }
    if matches!(op, Op::CreateCheckRun | Op::UpdateCheckRun) && !issued.checks_write {
        // GitHub's answer to a token without the permission: a 403 without rate-limit headers.
        return Err(error(
            StatusCode::FORBIDDEN,
            "Resource not accessible by integration",
        ));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct JwtClaims {
    iat: i64,
    exp: i64,
    iss: String,
}

fn verify_app_jwt(headers: &HeaderMap) -> Result<(), String> {
    let token = bearer(headers).ok_or("no bearer JWT")?;
    let public = std::fs::read(test_key_path("test-app-key.TEST-ONLY.pub.pem")).unwrap();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.set_issuer(&[TEST_APP_ID.to_string()]);
    let data = jsonwebtoken::decode::<JwtClaims>(token, &key, &validation)
        .map_err(|e| format!("JWT rejected: {e}"))?;
    let now = Utc::now().timestamp();
    let claims = data.claims;
    if claims.iss != TEST_APP_ID.to_string() {
        return Err(format!("iss {} is not the App id", claims.iss));
    }
    if claims.iat > now {
        return Err("iat is in the future".into());
    }
    if claims.exp > now + 600 {
        return Err("exp is more than 10 minutes ahead".into());
    }
    Ok(())
}

fn lower_repo(owner: &str, repo: &str) -> String {
    format!("{owner}/{repo}").to_ascii_lowercase()
}

// ---- the call every endpoint shares ----

/// One request to the fake as an endpoint receives it. [`Call::answer`] is the path every
/// endpoint shares: record it, apply injected failures, validate the body, authenticate (an
/// installation token covering the repository, or the App's JWT for the App's own endpoint),
/// then run the endpoint's own logic under the world lock and record the status it answered.
struct Call {
    world: Shared,
    method: Method,
    path: String,
    /// `owner/name` in lower case from the route's `{owner}` and `{repo}`; `None` for the App's
    /// own endpoint.
    repo: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

impl FromRequest<Shared> for Call {
    type Rejection = Response;

    async fn from_request(request: Request, world: &Shared) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, world)
            .await
            .map_err(IntoResponse::into_response)?;
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        };
        let repo = param("owner")
            .zip(param("repo"))
            .map(|(owner, repo)| lower_repo(&owner, &repo));
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body unreadable: {e}")))?;
        Ok(Call {
            world: world.clone(),
            method: parts.method,
            path: parts.uri.path().to_string(),
            repo,
            headers: parts.headers,
            body,
        })
    }
}

impl Call {
    /// Waits while `op` is held ([`FakeGitHub::hold`]).
    async fn wait_if_held(&self, op: Op) {
        let gate = {
            let mut w = self.world.lock().unwrap();
            let gate = w.held.get(&op).cloned();
            if gate.is_some() {
                *w.held_arrivals.entry(op).or_default() += 1;
            }
            gate
        };
        if let Some(gate) = gate {
            // Closed by `release`: every waiter goes on.
            let _ = gate.acquire().await;
        }
    }

    /// Admits the call as `op` and answers it with `logic(world, repo, body)` (the body parsed,
    /// `Null` when there is none; `repo` empty for the App's endpoint).
    fn answer(self, op: Op, logic: impl FnOnce(&mut World, &str, Value) -> Response) -> Response {
        let mut w = self.world.lock().unwrap();
        let body = match admit(
            &mut w,
            op,
            self.method,
            self.path,
            &self.headers,
            &self.body,
        ) {
            Ok(body) => body.unwrap_or_default(),
            Err(refused) => return refused,
        };
        let index = w.requests.len() - 1;
        let authorized = match &self.repo {
            Some(repo) => authorize_repo(&w, op, &self.headers, repo),
            None => verify_app_jwt(&self.headers)
                .map_err(|reason| error(StatusCode::UNAUTHORIZED, &reason)),
        };
        let response = match authorized {
            Ok(()) => logic(&mut w, self.repo.as_deref().unwrap_or_default(), body),
            Err(refused) => refused,
        };
        w.requests[index].status = response.status();
        w.answered.notify_waiters();
        response
    }
}

// ---- endpoints ----

async fn create_access_token(Path(id): Path<u64>, call: Call) -> Response {
    call.answer(Op::CreateAccessToken, |w, _, request| {
        let Some(covered) = w.installations.get(&id).cloned() else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        // `repositories` narrows the token to repositories of the installation, by name; GitHub
        // answers 422 for one the installation does not cover.
        let mut repositories = None;
        if let Some(names) = request.get("repositories").and_then(Value::as_array) {
            let mut full = Vec::new();
            for name in names.iter().filter_map(Value::as_str) {
                let name = name.to_ascii_lowercase();
                match covered
                    .iter()
                    .find(|r| r.rsplit('/').next() == Some(name.as_str()))
                {
                    Some(repo) => full.push(repo.clone()),
                    None => {
                        return error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "There is at least one repository that does not exist or is not accessible to the parent installation.",
                        );
                    }
                }
            }
            repositories = Some(full);
        }
        let permissions = request.get("permissions").cloned();
        let checks_write = permissions
            .as_ref()
            .is_none_or(|p| p.get("checks").and_then(Value::as_str) == Some("write"));
        let n = w.tokens.len();
        // Lengths vary on purpose: clients must not assume a token's size or shape.
        let token = format!(
            "ghs_fake{}{}",
            "x".repeat(n % 7),
            uuid::Uuid::now_v7().simple()
        );
        let expires_at = Utc::now() + w.token_lifetime;
        w.tokens.push(IssuedToken {
            token: token.clone(),
            installation: id,
            expires_at,
            revoked: false,
            checks_write,
            repositories,
            permissions,
        });
        (
            StatusCode::CREATED,
            axum::Json(json!({
                "token": token,
                "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "permissions": { "checks": "write", "issues": "write", "pull_requests": "read", "contents": "read" },
                "repository_selection": "selected",
            })),
        )
            .into_response()
    })
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn apply_check_run_fields(run: &mut CheckRun, body: &Value) {
    if let Some(v) = str_field(body, "name") {
        run.name = v;
    }
    if let Some(v) = str_field(body, "external_id") {
        run.external_id = Some(v);
    }
    if let Some(v) = str_field(body, "details_url") {
        run.details_url = Some(v);
    }
    if let Some(v) = str_field(body, "status") {
        run.status = v;
    }
    if let Some(v) = str_field(body, "conclusion") {
        // GitHub marks a run completed when a conclusion is given.
        run.conclusion = Some(v);
        run.status = "completed".into();
    }
    if let Some(output) = body.get("output") {
        if let Some(v) = str_field(output, "title") {
            run.title = Some(v);
        }
        if let Some(v) = str_field(output, "summary") {
            run.summary = Some(v);
        }
        if let Some(v) = str_field(output, "text") {
            run.text = Some(v);
        }
        if let Some(Value::Array(a)) = output.get("annotations") {
            run.annotations.extend(a.iter().cloned());
        }
    }
    if let Some(Value::Array(a)) = body.get("actions") {
        run.actions = a.clone();
    }
}

fn check_run_json(run: &CheckRun) -> Value {
    json!({
        "id": run.id,
        "name": run.name,
        "head_sha": run.head_sha,
        "external_id": run.external_id,
        "details_url": run.details_url,
        "status": run.status,
        "conclusion": run.conclusion,
        "output": {
            "title": run.title, "summary": run.summary, "text": run.text,
            "annotations_count": run.annotations.len(),
        },
    })
}

async fn create_check_run(call: Call) -> Response {
    call.answer(Op::CreateCheckRun, |w, repo, body| {
        let id = w.next_id();
        let mut run = CheckRun {
            id,
            repo: repo.to_string(),
            head_sha: str_field(&body, "head_sha").unwrap_or_default(),
            status: "queued".into(),
            ..CheckRun::default()
        };
        apply_check_run_fields(&mut run, &body);
        let out = check_run_json(&run);
        w.check_runs.insert(id, run);
        (StatusCode::CREATED, axum::Json(out)).into_response()
    })
}

async fn update_check_run(Path((_, _, id)): Path<(String, String, u64)>, call: Call) -> Response {
    call.answer(Op::UpdateCheckRun, |w, repo, body| {
        let Some(run) = w.check_runs.get_mut(&id).filter(|r| r.repo == repo) else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        apply_check_run_fields(run, &body);
        run.updates += 1;
        (StatusCode::OK, axum::Json(check_run_json(run))).into_response()
    })
}

async fn create_comment(Path((_, _, number)): Path<(String, String, u64)>, call: Call) -> Response {
    call.answer(Op::CreateComment, |w, repo, body| {
        let id = w.next_id();
        let text = str_field(&body, "body").unwrap_or_default();
        w.comments.push(Comment {
            id,
            repo: repo.to_string(),
            issue: number,
            body: text.clone(),
            author: "prodigy-test[bot]".into(),
            history: Vec::new(),
        });
        (
            StatusCode::CREATED,
            axum::Json(json!({ "id": id, "body": text, "user": { "login": "prodigy-test[bot]", "type": "Bot" } })),
        )
            .into_response()
    })
}

async fn update_comment(Path((_, _, id)): Path<(String, String, u64)>, call: Call) -> Response {
    call.answer(Op::UpdateComment, |w, repo, body| {
        let Some(comment) = w
            .comments
            .iter_mut()
            .find(|c| c.id == id && c.repo == repo)
        else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        let text = str_field(&body, "body").unwrap_or_default();
        let old = std::mem::replace(&mut comment.body, text.clone());
        comment.history.push(old);
        // An edited comment is new to the test again.
        w.seen_comments.remove(&id);
        axum::Json(json!({ "id": id, "body": text, "user": { "login": "prodigy-test[bot]", "type": "Bot" } }))
            .into_response()
    })
}

async fn create_reaction(
    Path((_, _, comment_id)): Path<(String, String, u64)>,
    call: Call,
) -> Response {
    call.answer(Op::CreateReaction, |w, repo, body| {
        let id = w.next_id();
        let content = str_field(&body, "content").unwrap_or_default();
        w.reactions.push(ReactionRecord {
            repo: repo.to_string(),
            comment_id,
            content: content.clone(),
        });
        (
            StatusCode::CREATED,
            axum::Json(json!({ "id": id, "content": content })),
        )
            .into_response()
    })
}

async fn get_permission(
    Path((_, _, user)): Path<(String, String, String)>,
    call: Call,
) -> Response {
    call.wait_if_held(Op::GetPermission).await;
    call.answer(Op::GetPermission, |w, repo, _| {
        let role = w
            .repos
            .get(repo)
            .and_then(|r| r.permissions.get(&user.to_ascii_lowercase()))
            .cloned();
        let Some(role) = role else {
            return error(StatusCode::NOT_FOUND, &format!("{user} is not a user"));
        };
        // `permission` is the legacy field: maintain folds into write, triage into read.
        let legacy = match role.as_str() {
            "maintain" => "write",
            "triage" => "read",
            other => other,
        };
        axum::Json(json!({
            "permission": legacy,
            "role_name": role,
            "user": { "login": user },
        }))
        .into_response()
    })
}

async fn get_pull(Path((_, _, number)): Path<(String, String, u64)>, call: Call) -> Response {
    call.answer(Op::GetPull, |w, repo, _| {
        let pr = w.repos.get(repo).and_then(|r| r.prs.get(&number)).cloned();
        let Some(pr) = pr else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        axum::Json(json!({
            "number": pr.number,
            "state": pr.state,
            "head": {
                "sha": pr.head_sha, "ref": pr.head_ref,
                "repo": pr.head_repo.as_ref().map(|r| json!({ "full_name": r })),
            },
            "base": { "sha": "0000000000000000000000000000000000000000", "ref": pr.base_ref, "repo": { "full_name": repo } },
        }))
        .into_response()
    })
}

async fn get_contents(
    Path((_, _, file)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    call: Call,
) -> Response {
    call.answer(Op::GetContents, |w, repo, _| {
        let git_ref = query.get("ref").cloned().unwrap_or_else(|| "main".into());
        let bytes = w
            .repos
            .get(repo)
            .and_then(|r| r.files.get(&(git_ref, file.clone())))
            .cloned();
        let Some(bytes) = bytes else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        // GitHub wraps base64 content at 60 columns with newlines.
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let wrapped: Vec<String> = encoded
            .as_bytes()
            .chunks(60)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        axum::Json(json!({
            "type": "file",
            "encoding": "base64",
            "size": bytes.len(),
            "name": file.rsplit('/').next().unwrap_or(&file),
            "path": file,
            "content": wrapped.join("\n") + "\n",
        }))
        .into_response()
    })
}

async fn unknown_endpoint(
    State(world): State<Shared>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    world.lock().unwrap().schema_violations.push(format!(
        "{method} {uri}: the fake GitHub does not serve this endpoint"
    ));
    error(StatusCode::NOT_FOUND, "Not Found")
}

/// GitHub reports the rate limit left on every answer; here it goes down by one per call.
async fn rate_limit_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    static LEFT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(5000);
    let left = LEFT
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
        .max(1)
        - 1;
    let mut res = next.run(req).await;
    // An injected answer (an exhausted limit) keeps its own headers.
    let headers = res.headers_mut();
    if !headers.contains_key("x-ratelimit-remaining") {
        headers.insert("x-ratelimit-limit", HeaderValue::from_static("5000"));
        headers.insert("x-ratelimit-remaining", left.into());
    }
    res
}
