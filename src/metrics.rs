//! Prometheus metrics of this process: what is recorded where, under which names and labels.
//!
//! Recording goes through the `metrics` facade; with no recorder installed (the CLI) every call
//! is a no-op. `prodigy serve` installs the Prometheus recorder ([`install`]) and its `/metrics`
//! handler (`server::metrics`) renders it together with the gauges read from the database.
//!
//! Every label has a bounded set of values: phases, statuses, error classes, outcome words,
//! GitHub route templates (an unknown route is `other`), HTTP status codes, installation ids.
//! Job ids, item keys, repositories and delivery ids are never labels.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::JobEvent;

/// Seconds: an agent or a phase takes from a second to hours.
const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls return the same
/// handle). Fails only if another recorder was installed first.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    // Two servers started at once in one process (tests): the loser uses the winner's handle.
    if HANDLE.set(handle.clone()).is_err() {
        return Ok(HANDLE.get().expect("set").clone());
    }
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "prodigy_webhook_deliveries_total",
        "Webhook deliveries by event, outcome (accepted, duplicate, ignored, rejected) and reason"
    );
    describe_counter!(
        "prodigy_request_ends_total",
        "Queued requests that failed, by outcome (retried: queued again after a transient error; failed) and reason (github_5xx, github_rate_limit, github_unreachable, database, timeout, permanent)"
    );
    describe_counter!(
        "prodigy_webhook_redeliveries_total",
        "Missed webhook deliveries whose redelivery was asked of GitHub, by outcome (requested, failed)"
    );
    describe_counter!(
        "prodigy_github_requests_total",
        "GitHub API calls (each try) by route template and HTTP status (error: no answer)"
    );
    describe_gauge!(
        "prodigy_github_rate_limit_remaining",
        "x-ratelimit-remaining of the last GitHub answer, by installation (app: the App's JWT)"
    );
    describe_counter!(
        "prodigy_job_lock_attempts_total",
        "Job lock attempts: acquired, or held by another process (contention)"
    );
    describe_counter!(
        "prodigy_item_outcomes_total",
        "Map item attempts that ended, by outcome and error class"
    );
    describe_counter!(
        "prodigy_job_runs_total",
        "Job runs started (start, resume, dlq_retry) and finished (by status)"
    );
    describe_histogram!(
        "prodigy_agent_duration_seconds",
        Unit::Seconds,
        "AI CLI runs by phase, from the usage they reported"
    );
    describe_histogram!(
        "prodigy_phase_duration_seconds",
        Unit::Seconds,
        "Job phases (setup, map, reduce, merge, commands) as this process ran them"
    );
}

/// The rendered metrics of this process, if the recorder is installed.
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

/// What a webhook delivery came to. `event` must be one of [`webhook_event`]'s words.
pub fn webhook(event: &'static str, outcome: &'static str, reason: &'static str) {
    counter!("prodigy_webhook_deliveries_total", "event" => event, "outcome" => outcome, "reason" => reason)
        .increment(1);
}

/// A queued request that failed: `retried` (a transient error, queued again) or `failed`, by
/// reason.
pub fn request_end(outcome: &'static str, reason: &'static str) {
    counter!("prodigy_request_ends_total", "outcome" => outcome, "reason" => reason).increment(1);
}

/// A redelivery of a missed delivery was asked of GitHub: `requested` (GitHub took it) or
/// `failed` (GitHub refused, or could not be reached).
pub fn redelivery(requested: bool) {
    let outcome = if requested { "requested" } else { "failed" };
    counter!("prodigy_webhook_redeliveries_total", "outcome" => outcome).increment(1);
}

/// An `X-GitHub-Event` name as a label: the events prodigy reads, else `other`.
pub fn webhook_event(name: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "pull_request",
        "issue_comment",
        "check_run",
        "check_suite",
        "installation",
        "installation_repositories",
        "ping",
        "push",
    ];
    KNOWN
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or("other")
}

/// One GitHub API call: its route template and status (None: no answer), and the rate limit
/// left that the answer's headers report for `installation` (`app` for the App's own calls).
pub fn github_call(
    method: &str,
    path: &str,
    status: Option<u16>,
    installation: Option<u64>,
    remaining: Option<f64>,
) {
    let route = github_route(method, path);
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    counter!("prodigy_github_requests_total", "route" => route, "status" => status).increment(1);
    if let Some(left) = remaining {
        let who = installation.map_or_else(|| "app".to_string(), |i| i.to_string());
        gauge!("prodigy_github_rate_limit_remaining", "installation" => who).set(left);
    }
}

/// The routes prodigy calls, as templates; anything else is `other`, so the label stays bounded.
const ROUTES: &[&str] = &[
    "POST /app/installations/{id}/access_tokens",
    "POST /repos/{owner}/{repo}/check-runs",
    "PATCH /repos/{owner}/{repo}/check-runs/{id}",
    "POST /repos/{owner}/{repo}/issues/{number}/comments",
    "POST /repos/{owner}/{repo}/issues/comments/{id}/reactions",
    "GET /repos/{owner}/{repo}/collaborators/{user}/permission",
    "GET /repos/{owner}/{repo}/pulls/{number}",
    "GET /repos/{owner}/{repo}/contents/{path}",
    "GET /app/hook/deliveries",
    "POST /app/hook/deliveries/{id}/attempts",
];

/// `METHOD /template` of a concrete path (`/repos/o/r/pulls/7` -> `.../pulls/{number}`).
pub fn github_route(method: &str, path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segs.len());
    let mut i = 0;
    while i < segs.len() {
        let s = segs[i];
        let prev = out.last().copied().unwrap_or("");
        if prev == "repos" && i + 1 < segs.len() {
            out.extend(["{owner}", "{repo}"]);
            i += 2;
            continue;
        }
        out.push(match prev {
            "contents" => {
                out.push("{path}");
                break;
            }
            "collaborators" => "{user}",
            "issues" | "pulls" if s.bytes().all(|b| b.is_ascii_digit()) => "{number}",
            _ if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => "{id}",
            _ => s,
        });
        i += 1;
    }
    let route = format!("{method} /{}", out.join("/"));
    ROUTES
        .iter()
        .find(|r| **r == route)
        .copied()
        .unwrap_or("other")
}

/// A job lock attempt: acquired, or held by someone else.
pub fn lock_attempt(acquired: bool) {
    let outcome = if acquired { "acquired" } else { "held" };
    counter!("prodigy_job_lock_attempts_total", "outcome" => outcome).increment(1);
}

/// How long a phase ran in this process.
pub fn phase_duration(phase: &str, seconds: f64) {
    let phase = match phase {
        "setup" => "setup",
        "map" => "map",
        "reduce" => "reduce",
        "merge" => "merge",
        _ => "commands",
    };
    histogram!("prodigy_phase_duration_seconds", "phase" => phase).record(seconds);
}

/// A job event the lock holder recorded: items, runs and agent durations.
pub fn observe(event: &JobEvent) {
    match event {
        JobEvent::ItemSucceeded { .. } => item("succeeded", "none"),
        JobEvent::ItemFailed { class, .. } => item("failed", class.as_str()),
        JobEvent::ItemMerged { .. } => item("merged", "none"),
        JobEvent::ItemStopped { .. } => item("stopped", "none"),
        JobEvent::JobStarted(_) => run("started", "start"),
        JobEvent::JobResumed(_) => run("started", "resume"),
        JobEvent::DlqRetryStarted(_) => run("started", "dlq_retry"),
        JobEvent::JobFinished { status, .. } => run("finished", status.as_str()),
        JobEvent::AgentFinished { phase, usage, .. } => {
            let phase = match phase.as_str() {
                "setup" | "reduce" | "merge" | "map" => phase.clone(),
                _ => "commands".to_string(),
            };
            histogram!("prodigy_agent_duration_seconds", "phase" => phase)
                .record(usage.duration_ms as f64 / 1000.0);
        }
        _ => {}
    }
}

fn item(outcome: &'static str, class: &'static str) {
    counter!("prodigy_item_outcomes_total", "outcome" => outcome, "error_class" => class)
        .increment(1);
}

fn run(what: &'static str, kind: &'static str) {
    let label = if what == "started" { "kind" } else { "status" };
    counter!("prodigy_job_runs_total", "event" => what, label => kind).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates_or_other() {
        assert_eq!(
            github_route("PATCH", "/repos/o/r/check-runs/42"),
            "PATCH /repos/{owner}/{repo}/check-runs/{id}"
        );
        assert_eq!(
            github_route("GET", "/repos/o/r/contents/.prodigy/a%20b.yml?ref=abc"),
            "GET /repos/{owner}/{repo}/contents/{path}"
        );
        assert_eq!(
            github_route("GET", "/repos/o/r/collaborators/alice/permission"),
            "GET /repos/{owner}/{repo}/collaborators/{user}/permission"
        );
        assert_eq!(
            github_route("POST", "/app/installations/7/access_tokens"),
            "POST /app/installations/{id}/access_tokens"
        );
        assert_eq!(
            github_route("POST", "/repos/o/r/issues/comments/9/reactions"),
            "POST /repos/{owner}/{repo}/issues/comments/{id}/reactions"
        );
        assert_eq!(
            github_route("GET", "/app/hook/deliveries?per_page=100&cursor=v1_9"),
            "GET /app/hook/deliveries"
        );
        assert_eq!(
            github_route("POST", "/app/hook/deliveries/123/attempts"),
            "POST /app/hook/deliveries/{id}/attempts"
        );
        assert_eq!(github_route("GET", "/repos/o/r/anything/else"), "other");
        assert_eq!(webhook_event("pull_request"), "pull_request");
        assert_eq!(webhook_event("made-up\n"), "other");
    }
}
