//! The HTTP face: webhooks in, job pages and probes out.
//!
//! - `POST <webhook path>`: verified by the [`VerifiedEvent`] extractor (401/413/400 before any
//!   handler code); ignored events -> 200; otherwise the delivery id is recorded and the work
//!   queued in one transaction -> 202, a redelivery -> 200 and nothing else; a database error
//!   -> 503 so GitHub marks the delivery failed and it can be redelivered.
//! - `GET /jobs/<id>?token=...`: the job page; no or a wrong token -> 404.
//! - `GET /jobs/<id>/live?token=...`: the changing part of the job page as JSON
//!   (`{"status", "live", "html"}`), which the page's script polls while the job runs.
//! - `GET /jobs/<id>/items/<key>/attempts/<n>/transcript?token=...`: that attempt's agent
//!   transcripts, rendered; the job page's token, else 404 (as for an attempt without any).
//! - `GET /jobs/<id>/items/<key>/attempts/<n>/log?token=...`: the end of that attempt's log;
//!   the same token, else 404 (as for an attempt without a log).
//! - `GET /healthz` (the process answers), `GET /readyz` (the database answers, else 503).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::github::GitHubClient;
use crate::store::{Accepted, ItemFilter, Job, Store, StoreError};
use crate::types::{ItemKey, JobId, RepoName};

use super::dispatch::{Route, RouteRules, Work, route};
use super::ingest::Ingest;
use super::pages::{self, AttemptView, JobPage, PageLinks};
use super::webhook::{VerifiedEvent, WebhookSecret, webhook_body_limit, webhook_trace_layer};

/// GitHub gives a delivery 10 seconds; a database that does not answer within this is down
/// for the purpose of a webhook (503, redelivered later) or a readiness probe.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

struct AppInner {
    store: Store,
    ingest: Ingest,
    secret: WebhookSecret,
    links: PageLinks,
    github: Option<GitHubClient>,
    allow_repos: Vec<RepoName>,
    app_slug: Option<String>,
    /// Wakes this process's runner when work was queued, so it need not wait for its poll.
    wake: Arc<Notify>,
}

impl FromRef<AppState> for WebhookSecret {
    fn from_ref(state: &AppState) -> WebhookSecret {
        state.inner.secret.clone()
    }
}

impl AppState {
    /// `github` is used only to forget an uninstalled installation's token; `wake` is notified
    /// after every queued request. Starts the ingest writer, so call it inside the runtime.
    pub fn new(
        store: Store,
        secret: WebhookSecret,
        links: PageLinks,
        github: Option<GitHubClient>,
        allow_repos: Vec<RepoName>,
        app_slug: Option<String>,
        wake: Arc<Notify>,
    ) -> Self {
        AppState {
            inner: Arc::new(AppInner {
                ingest: Ingest::start(store.clone()),
                store,
                secret,
                links,
                github,
                allow_repos,
                app_slug,
                wake,
            }),
        }
    }
}

/// The server's routes, with the webhook at `webhook_path`.
pub fn router(state: AppState, webhook_path: &str) -> Router {
    let webhook = Router::new()
        .route(webhook_path, post(webhook))
        .layer(webhook_body_limit())
        .layer(webhook_trace_layer());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/live", get(job_live))
        .route(
            "/jobs/{id}/items/{key}/attempts/{attempt}/log",
            get(log_page),
        )
        .route(
            "/jobs/{id}/items/{key}/attempts/{attempt}/transcript",
            get(transcript_page),
        )
        .merge(webhook)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// One info line per request handled: method, path (never the query, which carries page
/// tokens), status and milliseconds.
async fn log_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = std::time::Instant::now();
    let res = next.run(req).await;
    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(%method, %path, status = res.status().as_u16(), ms, "request");
    res
}

async fn webhook(State(state): State<AppState>, delivery: VerifiedEvent) -> Response {
    let s = &state.inner;
    let label = super::metrics::event_label(&delivery.event);
    let count = |outcome, reason| crate::metrics::webhook(label, outcome, reason);
    let rules = RouteRules {
        allow_repos: &s.allow_repos,
        app_slug: s.app_slug.as_deref(),
    };
    let work = match route(&delivery.event, &rules) {
        Route::Ignore(why) => {
            tracing::debug!(reason = %why, "delivery ignored");
            count("ignored", "none");
            return (StatusCode::OK, format!("ignored: {why}")).into_response();
        }
        Route::Forget(installation) => {
            if let Some(github) = &s.github {
                github.forget_installation(installation);
            }
            tracing::info!(%installation, "installation deleted: its token is forgotten");
            count("accepted", "none");
            return (StatusCode::OK, "installation forgotten").into_response();
        }
        Route::Queue(work) => work,
    };
    // Without the id a redelivery could not be told from a new delivery; GitHub always sends it.
    let Some(delivery_id) = delivery.delivery_id.as_deref().filter(|d| !d.is_empty()) else {
        count("rejected", "missing_delivery_id");
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Delivery header: deliveries are deduplicated by it",
        )
            .into_response();
    };
    let payload = match work.payload() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode queued work");
            count("rejected", "encode");
            return (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the work").into_response();
        }
    };
    let (event, action) = event_and_action(&work);
    let accepted = tokio::time::timeout(
        DATABASE_TIMEOUT,
        s.ingest
            .accept(delivery_id, event, action, work.kind(), payload),
    )
    .await
    .unwrap_or_else(|_| Err("the database did not answer in time".to_string()));
    match accepted {
        Ok(Accepted::Queued(id)) => {
            s.wake.notify_one();
            tracing::info!(request = id, kind = work.kind(), "queued");
            count("accepted", "none");
            (StatusCode::ACCEPTED, format!("queued request {id}")).into_response()
        }
        Ok(Accepted::Duplicate) => {
            tracing::info!("duplicate delivery: already handled");
            count("duplicate", "none");
            (StatusCode::OK, "duplicate delivery: already handled").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record the delivery");
            count("rejected", "database");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable; GitHub can redeliver this delivery",
            )
                .into_response()
        }
    }
}

/// The delivery's event and action names for the deliveries table.
fn event_and_action(work: &Work) -> (&'static str, Option<&str>) {
    match work {
        Work::PullRequest(w) => ("pull_request", Some(w.action.as_str())),
        Work::PullRequestClosed { .. } => ("pull_request", Some("closed")),
        Work::Comment(_) => ("issue_comment", Some("created")),
        Work::CheckRerun(w) => w.event_and_action(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let ping = tokio::time::timeout(DATABASE_TIMEOUT, state.inner.store.ping())
        .await
        .unwrap_or_else(|_| Err(StoreError::Db(sqlx::Error::PoolTimedOut)));
    match ping {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

#[derive(Deserialize)]
struct PageQuery {
    token: Option<String>,
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such job page").into_response()
}

/// A page request whose token is its job's: the job and the token. Any other is answered 404,
/// as a job that does not exist, and the token is checked before the database is asked, so an
/// unauthorised request learns nothing, not even whether the job exists.
struct PageAccess {
    job: JobId,
    token: String,
}

impl FromRequestParts<AppState> for PageAccess {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Query(query) = Query::<PageQuery>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let job = params
            .get("id")
            .and_then(|id| id.parse::<JobId>().ok())
            .ok_or_else(not_found)?;
        let token = query.token.unwrap_or_default();
        if state.inner.links.verify(job, &token) {
            Ok(PageAccess { job, token })
        } else {
            Err(not_found())
        }
    }
}

/// The job, or None when there is no such job (a page answers 404 for it).
async fn job_or_none(store: &Store, id: JobId) -> crate::store::Result<Option<Job>> {
    match store.get_job(id).await {
        Ok(job) => Ok(Some(job)),
        Err(crate::store::StoreError::JobNotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn job_page(State(state): State<AppState>, access: PageAccess) -> Response {
    let page = load_page(&state.inner.store, access.job).await;
    let html = page.map(|p| p.map(|p| pages::render_job(&p.view(&access.token))));
    page_response(access.job, html)
}

/// The live part of the job page as JSON, for the page's script.
async fn job_live(State(state): State<AppState>, access: PageAccess) -> Response {
    let PageAccess { job: job_id, token } = access;
    match load_page(&state.inner.store, job_id).await {
        Ok(Some(p)) => {
            let body = serde_json::json!({
                "status": p.job.status.as_str(),
                "live": pages::is_live(&p.job),
                "html": pages::render_live(&p.view(&token)),
            });
            ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
        }
        other => page_response(job_id, other.map(|_| None)),
    }
}

/// A rendered page as a private, uncached answer; None -> 404; a database error -> 503.
fn page_response(job: JobId, rendered: crate::store::Result<Option<String>>) -> Response {
    match rendered {
        Ok(Some(html)) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            Html(html),
        )
            .into_response(),
        Ok(None) => not_found(),
        Err(e) => {
            tracing::error!(job = %job, error = %e, "cannot render the job page");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable",
            )
                .into_response()
        }
    }
}

async fn transcript_page(
    state: State<AppState>,
    path: Path<(String, String, i64)>,
    access: PageAccess,
) -> Response {
    attempt_page(state, path, access, AttemptPage::Transcript).await
}

async fn log_page(
    state: State<AppState>,
    path: Path<(String, String, i64)>,
    access: PageAccess,
) -> Response {
    attempt_page(state, path, access, AttemptPage::Log).await
}

/// The two pages of one attempt of an item.
#[derive(Clone, Copy)]
enum AttemptPage {
    Transcript,
    Log,
}

async fn attempt_page(
    State(state): State<AppState>,
    Path((_, key, attempt)): Path<(String, String, i64)>,
    PageAccess { job, token }: PageAccess,
    page: AttemptPage,
) -> Response {
    let store = &state.inner.store;
    let key = ItemKey(key);
    let html = match job_or_none(store, job).await {
        Ok(Some(job)) => match page {
            AttemptPage::Transcript => render_transcript(store, &job, &key, attempt, &token).await,
            AttemptPage::Log => render_log(store, &job, &key, attempt, &token).await,
        },
        other => other.map(|_| None),
    };
    page_response(job, html)
}

async fn render_transcript(
    store: &Store,
    job: &Job,
    key: &ItemKey,
    attempt: i64,
    token: &str,
) -> crate::store::Result<Option<String>> {
    let id = job.id;
    let files: Vec<String> = store
        .agent_runs(id, Some(key))
        .await?
        .into_iter()
        .filter(|r| r.attempt == Some(attempt))
        .map(|r| r.transcript)
        .collect();
    if files.is_empty() {
        return Ok(None);
    }
    // Files are read off the runtime: a transcript can be long.
    let rendered = tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|f| {
                let path = std::path::Path::new(&f);
                let text = pages::render_transcript_file(path)
                    .unwrap_or_else(|e| format!("cannot read {f}: {e}"));
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(f);
                (name, text)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    Ok(Some(pages::render_transcript(
        job, key, attempt, token, &rendered,
    )))
}

/// What a job page shows, read from the store.
struct PageData {
    job: Job,
    counts: crate::store::ItemCounts,
    items: Vec<crate::store::WorkItem>,
    attempts: Vec<AttemptView>,
    dlq: Vec<crate::store::DlqItem>,
    events: Vec<crate::store::Event>,
    runs: Vec<crate::store::AgentRunRow>,
    usage: crate::store::JobUsage,
}

impl PageData {
    fn view<'a>(&'a self, token: &'a str) -> JobPage<'a> {
        JobPage {
            job: &self.job,
            counts: self.counts,
            items: &self.items,
            attempts: &self.attempts,
            dlq: &self.dlq,
            events: &self.events,
            runs: &self.runs,
            usage: &self.usage,
            token,
            now: chrono::Utc::now(),
        }
    }
}

async fn load_page(store: &Store, id: JobId) -> crate::store::Result<Option<PageData>> {
    let Some(job) = job_or_none(store, id).await? else {
        return Ok(None);
    };
    let counts = store.item_counts(id).await?;
    let items = store.items(id, &ItemFilter::default()).await?;
    let dlq = store.dlq(Some(id)).await?;
    let runs = store.agent_runs(id, None).await?;
    let usage = crate::store::JobUsage::from_runs(&runs);
    let (events, logs) = recent_events_and_logs(store, id).await?;
    let attempts = store
        .job_attempts(id)
        .await?
        .into_iter()
        .map(|a| AttemptView {
            has_log: a.log_path.is_some() || logs.contains_key(&(a.key.clone(), a.attempt)),
            attempt: i64::from(a.attempt),
            key: a.key,
            started_at: a.started_at,
            finished_at: a.finished_at,
            success: a.success,
            message: a.message,
            machine: a.machine,
        })
        .collect();
    Ok(Some(PageData {
        job,
        counts,
        items,
        attempts,
        dlq,
        events,
        runs,
        usage,
    }))
}

/// Each attempt's log file, by item and attempt number, from the `item_started` events.
type AttemptLogs = std::collections::HashMap<(ItemKey, u32), std::path::PathBuf>;

/// The most recent events (oldest first) and the log file of every attempt started so far
/// (known from its start, before the attempt's row records it at the end).
async fn recent_events_and_logs(
    store: &Store,
    id: JobId,
) -> crate::store::Result<(Vec<crate::store::Event>, AttemptLogs)> {
    let mut events = Vec::new();
    let mut logs = AttemptLogs::new();
    let mut after = 0;
    loop {
        let page = store.events(id, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            if let Some(crate::store::JobEvent::ItemStarted {
                key, attempt, log, ..
            }) = e.event()
            {
                logs.insert((key, attempt), log);
            }
        }
        events.extend(page);
        if events.len() > pages::RECENT_EVENTS {
            events.drain(..events.len() - pages::RECENT_EVENTS);
        }
    }
    Ok((events, logs))
}

async fn render_log(
    store: &Store,
    job: &Job,
    key: &ItemKey,
    attempt: i64,
    token: &str,
) -> crate::store::Result<Option<String>> {
    let id = job.id;
    let Ok(n) = u32::try_from(attempt) else {
        return Ok(None);
    };
    let recorded = store
        .attempts(id, key)
        .await?
        .into_iter()
        .find(|a| a.attempt == n)
        .and_then(|a| a.log_path)
        .map(std::path::PathBuf::from);
    let path = match recorded {
        Some(p) => p,
        None => match recent_events_and_logs(store, id)
            .await?
            .1
            .remove(&(key.clone(), n))
        {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let tail = tokio::task::spawn_blocking(move || {
        pages::read_log_tail(&path).unwrap_or_else(|e| pages::LogTail {
            text: format!("cannot read the log {}: {e}", path.display()),
            cut: 0,
        })
    })
    .await
    .unwrap_or_else(|e| pages::LogTail {
        text: format!("cannot read the log: {e}"),
        cut: 0,
    });
    Ok(Some(pages::render_log(job, key, attempt, token, &tail)))
}
