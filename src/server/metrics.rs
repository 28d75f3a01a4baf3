//! `GET /metrics`: this process's Prometheus metrics ([`crate::metrics`]) followed by gauges and
//! counters read from the database at each scrape (jobs and queued requests by status, the AI
//! usage of every recorded agent run). Served on the main listener, or only on
//! `--metrics-listen` when that is given.

use std::fmt::Write as _;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::store::{MetricsSnapshot, RequestStatus, Store};
use crate::types::JobStatus;

use super::webhook::WebhookEvent;

/// A scrape waits this long for the database, then answers without its part.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `/metrics` route alone, for the main router or a listener of its own.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(store)
}

async fn scrape(State(store): State<Store>) -> Response {
    let mut text = crate::metrics::render().unwrap_or_default();
    let snapshot = tokio::time::timeout(DATABASE_TIMEOUT, store.metrics_snapshot()).await;
    match snapshot {
        Ok(Ok(s)) => {
            text.push_str(&render_snapshot(&s));
            text.push_str(&database_up(true));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: cannot read the database");
            text.push_str(&database_up(false));
        }
        Err(_) => {
            tracing::warn!("metrics: the database did not answer in time");
            text.push_str(&database_up(false));
        }
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn database_up(up: bool) -> String {
    format!(
        "# HELP prodigy_database_up Whether the last scrape could read the database\n\
         # TYPE prodigy_database_up gauge\nprodigy_database_up {}\n",
        u8::from(up)
    )
}

/// The database part of the exposition. Every status is listed, with 0 when no row has it, so
/// a series never disappears.
pub fn render_snapshot(s: &MetricsSnapshot) -> String {
    let count = |rows: &[(String, i64)], status: &str| {
        rows.iter()
            .find(|(st, _)| st == status)
            .map_or(0, |(_, n)| *n)
    };
    let mut out = String::new();
    out.push_str("# HELP prodigy_jobs Jobs in the database by status\n# TYPE prodigy_jobs gauge\n");
    for status in JobStatus::ALL {
        let n = count(&s.jobs, status.as_str());
        let _ = writeln!(out, "prodigy_jobs{{status=\"{}\"}} {n}", status.as_str());
    }
    out.push_str(
        "# HELP prodigy_requests Queued work (webhooks to act on) by status\n\
         # TYPE prodigy_requests gauge\n",
    );
    for status in [
        RequestStatus::Queued,
        RequestStatus::Claimed,
        RequestStatus::Done,
        RequestStatus::Failed,
    ] {
        let n = count(&s.requests, status.as_str());
        let _ = writeln!(
            out,
            "prodigy_requests{{status=\"{}\"}} {n}",
            status.as_str()
        );
    }
    out.push_str(
        "# HELP prodigy_ai_tokens_total Tokens of every recorded agent run, by kind\n\
         # TYPE prodigy_ai_tokens_total counter\n",
    );
    for (kind, n) in [
        ("input", s.input_tokens),
        ("output", s.output_tokens),
        ("cache_creation", s.cache_creation_tokens),
        ("cache_read", s.cache_read_tokens),
    ] {
        let _ = writeln!(out, "prodigy_ai_tokens_total{{kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP prodigy_ai_cost_usd_total What every recorded agent run cost, in US dollars\n\
         # TYPE prodigy_ai_cost_usd_total counter\nprodigy_ai_cost_usd_total {}",
        s.cost_usd
    );
    out
}

/// A verified delivery's event as a label.
pub fn event_label(event: &WebhookEvent) -> &'static str {
    match event {
        WebhookEvent::PullRequest(_) => "pull_request",
        WebhookEvent::IssueComment(_) => "issue_comment",
        WebhookEvent::CheckRun(_) => "check_run",
        WebhookEvent::CheckSuite(_) => "check_suite",
        WebhookEvent::Installation(_) => "installation",
        WebhookEvent::Ping => "ping",
        WebhookEvent::Ignored { event, .. } => crate::metrics::webhook_event(event),
    }
}
