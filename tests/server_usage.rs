//! Usage and cost where a person looks, through `prodigy serve`: a pull request's agents run the
//! real AI CLI against the fake model API; the check run's summary (fake GitHub) shows a usage
//! table whose totals are the sums the fake model reported, priced as the CLI priced them, and
//! the most expensive items; the job page (real router) shows the cost and links each attempt
//! to its transcript, which needs the page's token and shows a secret masked.
//! Skips when the real CLI is not installed (see `real_claude`).

mod support;

use axum::http::StatusCode;
use prodigy::types::JobStatus;
use serde_json::Value;
use support::fake_anthropic::{FakeAnthropic, Turn, Usage, first_user_text, real_claude};
use support::server::{Ctx, REPO, WAIT, job_id_of, job_links};

const SECRET: &str = "usage-secret-value-42";

const WORKFLOW: &str = r#"name: fix
mode: mapreduce
env:
  API_KEY:
    value: usage-secret-value-42
    secret: true
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 2
  agent_template:
    - claude: "Handle item ${item.id}"
      commit_required: true
"#;

/// (item key, its files' name, input tokens of its first turn): alpha is the cheaper one; the
/// other's key needs encoding in a link.
const ITEMS: &[(&str, &str, u64)] = &[("alpha", "alpha", 1000), ("lib/beta 2", "beta", 3000)];

/// Each item's agent: a Bash call that prints the secret and commits a file, then a final text.
fn script(fake: &FakeAnthropic) {
    for (item, name, input) in ITEMS {
        fake.script(
            item,
            vec![
                Turn::bash(&format!(
                    "echo \"key $API_KEY\" && echo {name} > out-{name}.txt && git add . && git commit -q -m 'agent: {name}'"
                ))
                .with_usage(Usage {
                    input_tokens: *input,
                    output_tokens: 40,
                    cache_creation_input_tokens: 300,
                    cache_read_input_tokens: 0,
                }),
                Turn::text(format!("{item} is done")).with_usage(Usage {
                    input_tokens: input + 100,
                    output_tokens: 20,
                    cache_creation_input_tokens: 0,
                    cache_read_input_tokens: 300,
                }),
            ],
        );
    }
    fake.route_by(|body| {
        let asked = first_user_text(body);
        ITEMS
            .iter()
            .find(|(i, _, _)| asked.contains(&format!("item {i}")))
            .map(|(i, _, _)| i.to_string())
            .unwrap_or_default()
    });
}

/// The cells of the Markdown table row starting with `| <label> |`.
fn row<'a>(summary: &'a str, label: &str) -> Vec<&'a str> {
    let line = summary
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no row {label} in:\n{summary}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_agents_usage_reaches_the_check_run_and_the_job_page_with_transcripts() {
    let Some(claude) = real_claude() else {
        return;
    };
    let fake = FakeAnthropic::empty();
    script(&fake);
    let db = support::db::sqlite_db();
    let ctx = Ctx::with_real_claude(db.url(), &claude, |home| fake.cli_env(home)).await;
    let sha = ctx.push_pr(
        1,
        &[
            (".prodigy/fix.yml", WORKFLOW),
            ("items.json", r#"[{"id": "alpha"}, {"id": "lib/beta 2"}]"#),
        ],
        false,
    );
    ctx.open_pr(1, &sha).await;
    let comments = ctx.wait_for_comments(1, 1).await;
    let link = job_links(&comments[0])[0].clone();
    let job = job_id_of(&link);
    let run = ctx
        .gh
        .wait_for_check_runs(REPO, &sha, "the completed check run", WAIT, |runs| {
            runs.into_iter().find(|r| r.status == "completed")
        })
        .await;
    ctx.wait_idle().await;
    let stored = ctx.server.store.get_job(job).await.unwrap();
    let dlq = ctx.server.store.dlq(Some(job)).await.unwrap();
    assert_eq!(stored.status, JobStatus::Succeeded, "{dlq:#?}");
    assert_eq!(run.conclusion.as_deref(), Some("success"), "{run:?}");

    // What the fake model reported, and what the CLI made of it (each result line's cost).
    let sum = |f: fn(u64) -> u64| ITEMS.iter().map(|(_, _, i)| f(*i)).sum::<u64>();
    let input = sum(|i| 2 * i + 100);
    let (output, cache_write, cache_read) = (60 * 2, 300 * 2, 300 * 2);
    let tokens = input + output + cache_write + cache_read;
    let logs = ctx.tmp.path().join(format!("state-a/logs/{job}/items"));
    let cost_of = |item: &str| -> f64 {
        let dir = logs.join(prodigy::engine::worktree::sanitize_ref(item));
        let t = std::fs::read_to_string(dir.join("attempt-1.claude-1.jsonl")).unwrap();
        let last: Value = serde_json::from_str(t.lines().last().unwrap()).unwrap();
        last["total_cost_usd"].as_f64().unwrap()
    };
    let cost: f64 = ITEMS.iter().map(|(i, _, _)| cost_of(i)).sum();
    assert!(cost > 0.0);

    // The check run's summary: the job's totals, the map phase, the items by cost.
    let summary = run.summary.clone().unwrap_or_default();
    assert!(summary.contains("### Agent usage"), "{summary}");
    let expected = [
        "**job**".to_string(),
        input.to_string(),
        output.to_string(),
        cache_write.to_string(),
        cache_read.to_string(),
        tokens.to_string(),
        format!("${cost:.4}"),
        "4".to_string(),
    ];
    assert_eq!(row(&summary, "**job**")[..8], expected, "{summary}");
    assert_eq!(row(&summary, "map")[..8], {
        let mut m = expected.clone();
        m[0] = "map".into();
        m
    });
    let costly = summary.split("### Most expensive items").nth(1).unwrap();
    let beta = costly.find("`lib/beta 2`").unwrap();
    let alpha = costly.find("`alpha`").unwrap();
    assert!(beta < alpha, "beta cost more:\n{costly}");
    assert_eq!(
        row(costly, "`lib/beta 2`"),
        [
            "`lib/beta 2`".to_string(),
            format!("${:.4}", cost_of("lib/beta 2")),
            (2 * 3000 + 100 + 60 + 600).to_string(),
            "2".to_string()
        ]
    );
    assert!(!summary.contains(SECRET));

    // The job page (real router): the cost, and a link to each attempt's transcript.
    let (status, page) = ctx.get(&link).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<h2>Agent usage</h2>"), "{page}");
    assert!(page.contains(&format!("${cost:.4}")), "{page}");
    assert!(
        page.contains(&format!(
            "<td data-label=\"cost\">${:.4}</td>",
            cost_of("alpha")
        )),
        "{page}"
    );
    let token = link.split("token=").nth(1).unwrap();
    let transcript = format!("/jobs/{job}/items/alpha/attempts/1/transcript?token={token}");
    assert!(
        page.contains(&transcript.replace('&', "&amp;")),
        "no link {transcript} in:\n{page}"
    );
    let (status, shown) = ctx.get(&transcript).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert!(shown.contains("assistant: alpha is done"), "{shown}");
    assert!(shown.contains("-&gt; Bash {"), "{shown}");
    assert!(shown.contains("= success after 2 turns: $"), "{shown}");
    // The agent printed the workflow's secret; the transcript holds it masked.
    assert!(shown.contains("key ***"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");

    let encoded = format!("/jobs/{job}/items/lib%2Fbeta%202/attempts/1/transcript?token={token}");
    assert!(page.contains(&encoded), "no link {encoded} in:\n{page}");
    let (status, shown) = ctx.get(&encoded).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert!(shown.contains("assistant: lib/beta 2 is done"), "{shown}");

    // Without the token, with a wrong one, or for an attempt that ran no agent: 404.
    let bare = format!("/jobs/{job}/items/alpha/attempts/1/transcript");
    assert_eq!(ctx.get(&bare).await.0, StatusCode::NOT_FOUND);
    let wrong = format!("{bare}?token={}", "0".repeat(64));
    assert_eq!(ctx.get(&wrong).await.0, StatusCode::NOT_FOUND);
    let other = format!("/jobs/{job}/items/alpha/attempts/2/transcript?token={token}");
    assert_eq!(ctx.get(&other).await.0, StatusCode::NOT_FOUND);
    ctx.finish().await;
}
