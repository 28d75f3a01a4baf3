//! The HTTP face: webhooks in, job pages and probes out.
//!
//! - `POST <webhook path>`: verified by the [`VerifiedEvent`] extractor (401/413/400 before any
//!   handler code); ignored events -> 200; otherwise the delivery id is recorded and the work
//!   queued in one transaction -> 202, a redelivery -> 200 and nothing else; a database error
//!   -> 503 so GitHub marks the delivery failed and it can be redelivered.
//! - `GET /jobs/<id>?token=...`: the job page; no or a wrong token -> 404.
//! - `GET /jobs/<id>/items/<key>/attempts/<n>/transcript?token=...`: that attempt's agent
//!   transcripts, rendered; the job page's token, else 404 (as for an attempt without any).
//! - `GET /healthz` (the process answers), `GET /readyz` (the database answers, else 503).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::github::GitHubClient;
use crate::store::{Accepted, ItemFilter, Store, StoreError};
use crate::types::{ItemKey, JobId, RepoName};

use super::dispatch::{Route, RouteRules, Work, route};
use super::ingest::Ingest;
use super::pages::{self, JobPage, PageLinks};
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
    let rules = RouteRules {
        allow_repos: &s.allow_repos,
        app_slug: s.app_slug.as_deref(),
    };
    let work = match route(&delivery.event, &rules) {
        Route::Ignore(why) => {
            tracing::debug!(reason = %why, "delivery ignored");
            return (StatusCode::OK, format!("ignored: {why}")).into_response();
        }
        Route::Forget(installation) => {
            if let Some(github) = &s.github {
                github.forget_installation(installation);
            }
            tracing::info!(%installation, "installation deleted: its token is forgotten");
            return (StatusCode::OK, "installation forgotten").into_response();
        }
        Route::Queue(work) => work,
    };
    // Without the id a redelivery could not be told from a new delivery; GitHub always sends it.
    let Some(delivery_id) = delivery.delivery_id.as_deref().filter(|d| !d.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Delivery header: deliveries are deduplicated by it",
        )
            .into_response();
    };
    let payload = match serde_json::value::to_raw_value(&work) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode queued work");
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
            (StatusCode::ACCEPTED, format!("queued request {id}")).into_response()
        }
        Ok(Accepted::Duplicate) => {
            tracing::info!("duplicate delivery: already handled");
            (StatusCode::OK, "duplicate delivery: already handled").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record the delivery");
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

async fn job_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    let s = &state.inner;
    let Ok(job_id) = id.parse::<JobId>() else {
        return not_found();
    };
    // The token is checked before the database is asked, so an unauthorised request learns
    // nothing, not even whether the job exists.
    let token = query.token.unwrap_or_default();
    if !s.links.verify(job_id, &token) {
        return not_found();
    }
    page_response(job_id, render(&s.store, job_id, &token).await)
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
    State(state): State<AppState>,
    Path((id, key, attempt)): Path<(String, String, i64)>,
    Query(query): Query<PageQuery>,
) -> Response {
    let s = &state.inner;
    let Ok(job_id) = id.parse::<JobId>() else {
        return not_found();
    };
    let token = query.token.unwrap_or_default();
    if !s.links.verify(job_id, &token) {
        return not_found();
    }
    let key = ItemKey(key);
    page_response(
        job_id,
        render_transcript(&s.store, job_id, &key, attempt, &token).await,
    )
}

async fn render_transcript(
    store: &Store,
    id: JobId,
    key: &ItemKey,
    attempt: i64,
    token: &str,
) -> crate::store::Result<Option<String>> {
    let job = match store.get_job(id).await {
        Ok(job) => job,
        Err(crate::store::StoreError::JobNotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
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
    let (job_id, key2) = (job.id, key.clone());
    // Files are read off the runtime: a transcript can be long.
    let rendered = tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|f| {
                let path = std::path::Path::new(&f);
                let text = pages::render_transcript_file(path, job_id, &key2, attempt)
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
        &job, key, attempt, token, &rendered,
    )))
}

async fn render(store: &Store, id: JobId, token: &str) -> crate::store::Result<Option<String>> {
    let job = match store.get_job(id).await {
        Ok(job) => job,
        Err(crate::store::StoreError::JobNotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let counts = store.item_counts(id).await?;
    let items = store.items(id, &ItemFilter::default()).await?;
    let dlq = store.dlq(Some(id)).await?;
    let runs = store.agent_runs(id, None).await?;
    let usage = crate::store::JobUsage::from_runs(&runs);
    // Events come oldest first; keep reading pages and keep the most recent.
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events(id, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        events.extend(page);
        if events.len() > pages::RECENT_EVENTS {
            events.drain(..events.len() - pages::RECENT_EVENTS);
        }
    }
    Ok(Some(pages::render_job(&JobPage {
        job: &job,
        counts,
        items: &items,
        dlq: &dlq,
        events: &events,
        runs: &runs,
        usage: &usage,
        token,
    })))
}
