//! `GET /metrics` of `prodigy serve`, through the real router: webhooks (accepted, duplicate,
//! refused), a pull request's job with a passing and a failing item against the fake GitHub,
//! and recorded AI usage move the counters; the page parses as the Prometheus text format
//! (a strict parser below) and no label carries a job id or an item key.
//! One test in this binary: the metrics recorder is process-wide.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use prodigy::store::{Exclusive, Holder, NewAgentRun};
use prodigy::types::{JobStatus, Usage};
use secrecy::SecretString;
use support::server::{Ctx, items, job_id_of, job_links};

/// A series: metric name and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// Parses the text exposition format strictly: every sample belongs to a family declared by
/// `# TYPE` before it (histograms as `_bucket`, `_sum`, `_count`; a bucket has `le`), names
/// and labels are well formed, label values are quoted with valid escapes, values are numbers,
/// no series appears twice. Panics naming the line otherwise.
fn parse(text: &str) -> BTreeMap<Series, f64> {
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap(), parts.next().expect(&at));
            assert!(name_ok(name), "{at}");
            if kw == "TYPE" {
                let t = parts.next().expect(&at);
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{at}"
                );
                assert!(
                    types.insert(name.into(), t.into()).is_none(),
                    "TYPE twice: {at}"
                );
            } else {
                assert_eq!(kw, "HELP", "{at}");
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{at}");
        let (series, value) = line.rsplit_once(' ').expect(&at);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value: {at}")),
        };
        let (name, labels) = match series.find('{') {
            None => (series, BTreeMap::new()),
            Some(i) => {
                let body = series[i + 1..].strip_suffix('}').expect(&at);
                (&series[..i], parse_labels(body, &at))
            }
        };
        assert!(name_ok(name), "{at}");
        let family = [("_bucket", "histogram"), ("_sum", ""), ("_count", "")]
            .iter()
            .find_map(|(suffix, _)| {
                let base = name.strip_suffix(suffix)?;
                matches!(
                    types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                )
                .then_some(base)
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "no TYPE before the sample: {at}"
        );
        if name.ends_with("_bucket") && family != name {
            assert!(labels.contains_key("le"), "{at}");
        }
        assert!(
            out.insert((name.to_string(), labels), value).is_none(),
            "series twice: {at}"
        );
    }
    out
}

fn parse_labels(body: &str, at: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let eq = rest.find("=\"").expect(at);
        let key = &rest[..eq];
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{at}"
        );
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let end = loop {
            match chars.next().expect(at) {
                (i, '"') => break eq + 2 + i + 1,
                (_, '\\') => match chars.next().expect(at).1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c}: {at}"),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(labels.insert(key.to_string(), value).is_none(), "{at}");
        rest = &rest[end..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

fn get(m: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.get(&(name.to_string(), want)).copied().unwrap_or(0.0)
}

/// The sum over every series of `name` whose labels include `labels`.
fn sum(m: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(ctx: &Ctx) -> BTreeMap<Series, f64> {
    let (status, text) = ctx.get("/metrics").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    parse(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_webhooks_jobs_items_github_calls_and_usage() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let before = scrape(&ctx).await;
    assert_eq!(get(&before, "prodigy_database_up", &[]), 1.0);
    assert_eq!(get(&before, "prodigy_jobs", &[("status", "failed")]), 0.0);

    let sha = ctx.push_pr(
        1,
        &[("items.json", &items(&[("good", "ok"), ("bad", "fail")]))],
        false,
    );
    // One delivery accepted, then redelivered (duplicate); one with a wrong signature.
    let body = ctx.pr_payload(1, &sha, "opened", false);
    let (status, text) = ctx
        .deliver_as(&ctx.server, "pull_request", "metrics-1", body.clone())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let (status, text) = ctx
        .deliver_as(&ctx.server, "pull_request", "metrics-1", body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let wrong = prodigy::server::WebhookSecret::new(SecretString::from("not the secret")).unwrap();
    let req = support::webhook::signed_request("/webhook", "pull_request", "m-2", body, &wrong);
    assert_eq!(support::server::send(&ctx.server, req).await.0, 401);

    let comments = ctx.wait_for_comments(1, 1).await;
    let job = job_id_of(&job_links(&comments[0])[0]);
    ctx.wait_status(job, JobStatus::Failed).await;
    ctx.wait_idle().await;

    // Usage recorded for the job (as the engine records each AI CLI run) is what /metrics sums.
    let store = &ctx.server.store;
    let holder = Holder::this_process(Some("metrics-test".into()));
    let usage = Usage {
        input_tokens: 1200,
        output_tokens: 340,
        cache_creation_tokens: 50,
        cache_read_tokens: 7,
        cost_usd: 0.25,
        ..Default::default()
    };
    let run = NewAgentRun {
        phase: "map".into(),
        key: None,
        attempt: None,
        session_id: None,
        model: None,
        transcript: "metrics-test.ndjson".into(),
        subtype: None,
        usage,
    };
    // The runner lets go of the job's lock just after recording its end.
    support::server::wait_until("the job's lock", support::server::WAIT, || async {
        let done = store
            .with_job_lock(job, &holder, async |proof| {
                store.record_agent_run(proof, &run).await
            })
            .await
            .unwrap();
        matches!(done, Exclusive::Performed(())).then_some(())
    })
    .await;

    let m = scrape(&ctx).await;
    let deliveries = "prodigy_webhook_deliveries_total";
    let pr = |outcome, reason| {
        get(
            &m,
            deliveries,
            &[
                ("event", "pull_request"),
                ("outcome", outcome),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(pr("accepted", "none"), 1.0);
    assert_eq!(pr("duplicate", "none"), 1.0);
    let refused = [
        ("event", "unknown"),
        ("outcome", "rejected"),
        ("reason", "bad_signature"),
    ];
    assert_eq!(get(&m, deliveries, &refused), 1.0);

    // The job: one item succeeded (and was merged), one failed with its class; the run failed.
    let items_total = "prodigy_item_outcomes_total";
    let ok = [("outcome", "succeeded"), ("error_class", "none")];
    assert_eq!(get(&m, items_total, &ok), 1.0);
    assert_eq!(sum(&m, items_total, &[("outcome", "failed")]), 1.0);
    assert_eq!(sum(&m, items_total, &[("outcome", "merged")]), 1.0);
    let finished = [("event", "finished"), ("status", "failed")];
    assert_eq!(get(&m, "prodigy_job_runs_total", &finished), 1.0);
    assert_eq!(get(&m, "prodigy_jobs", &[("status", "failed")]), 1.0);
    assert_eq!(get(&m, "prodigy_requests", &[("status", "done")]), 1.0);
    assert_eq!(get(&m, "prodigy_requests", &[("status", "queued")]), 0.0);
    assert!(
        get(
            &m,
            "prodigy_job_lock_attempts_total",
            &[("outcome", "acquired")]
        ) >= 2.0
    );

    // Phase durations are histograms with buckets; the map phase ran once.
    let map = [("phase", "map")];
    assert_eq!(get(&m, "prodigy_phase_duration_seconds_count", &map), 1.0);
    let inf = [("phase", "map"), ("le", "+Inf")];
    assert_eq!(get(&m, "prodigy_phase_duration_seconds_bucket", &inf), 1.0);

    // GitHub calls by route template; the comment was posted (201) and the rate limit seen.
    let comments_route = "POST /repos/{owner}/{repo}/issues/{number}/comments";
    let calls = "prodigy_github_requests_total";
    assert!(get(&m, calls, &[("route", comments_route), ("status", "201")]) >= 1.0);
    let left: Vec<f64> = m
        .iter()
        .filter(|((n, _), _)| n == "prodigy_github_rate_limit_remaining")
        .map(|(_, v)| *v)
        .collect();
    assert!(
        !left.is_empty() && left.iter().all(|v| *v > 0.0 && *v < 5000.0),
        "{left:?}"
    );

    // AI usage: the recorded run's tokens and cost.
    let tokens = "prodigy_ai_tokens_total";
    assert_eq!(get(&m, tokens, &[("kind", "input")]), 1200.0);
    assert_eq!(get(&m, tokens, &[("kind", "output")]), 340.0);
    assert_eq!(get(&m, tokens, &[("kind", "cache_read")]), 7.0);
    assert_eq!(get(&m, "prodigy_ai_cost_usd_total", &[]), 0.25);

    // Bounded labels: no job id, item key, delivery id or repository anywhere.
    let values: BTreeSet<&str> = m
        .keys()
        .flat_map(|(_, l)| l.values().map(String::as_str))
        .collect();
    let job_text = job.to_string();
    for v in &values {
        assert!(
            !v.contains(&job_text[..8]) && !["good", "bad", "metrics-1"].contains(v),
            "{v}"
        );
        assert!(
            !v.contains("octo") && !v.contains('/') || v.contains('{'),
            "{v}"
        );
    }
    ctx.finish().await;
}
