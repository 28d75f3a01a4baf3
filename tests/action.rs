//! `prodigy action` end to end: the real binary as a GitHub Actions step, with the runner's
//! variables pointing at the fake GitHub (every request validated against GitHub's schema), an
//! event file made from GitHub's `pull_request.opened` example, a real git repository and the
//! runner's output and summary files.
//!
//! - a pull request's job reports a check run on the PR's head commit (not the merge commit in
//!   GITHUB_SHA) with its conclusion and a DLQ annotation, and writes outputs, summary, `::error`;
//! - a token without `checks: write` warns once, makes no further check-run calls, and the step
//!   still writes its outputs and summary;
//! - a missing or broken event file is named in a clear error, exit code 2;
//! - `resume: auto` continues an unfinished job at the same commit (SQLite and PostgreSQL), starts
//!   a new one once it finished or when the job cannot continue in this checkout.

mod support;

use std::path::Path;
use support::action_step::*;
use support::fake_anthropic::{FakeAnthropic, Turn, Usage, first_user_text, real_claude};

use serde_json::{Value, json};
use support::fake_github::Op;
use support::repo::text;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_run_reports_a_check_run_outputs_summary_and_annotations() {
    let step = Step::new(None, false, true).await;
    step.fail("beta");
    let ran = step.run(&[]).await;
    assert_eq!(
        ran.code(),
        Some(1),
        "a failed job fails the step\n{}",
        text(&ran.out)
    );

    let job = ran.output("job-id").to_string();
    assert_eq!(ran.output("status"), "failed");
    assert_eq!(ran.output("succeeded"), "2");
    assert_eq!(ran.output("failed"), "1");
    assert_eq!(ran.output("dlq"), "1");
    assert_eq!(ran.output("branch"), format!("prodigy/{job}"));
    // No agent ran: nothing spent, and the summary has no usage section.
    assert_eq!(ran.output("cost-usd"), "0.000000");
    assert_eq!(ran.output("tokens"), "0");
    assert!(!ran.summary.contains("Agent usage"), "{}", ran.summary);
    assert_eq!(ran.outputs.len(), 8, "{:?}", ran.outputs);

    // One check run, on the pull request's head commit, none on the merge commit.
    assert!(step.fake.check_runs_for(REPO, MERGE_SHA).is_empty());
    let runs = step.check_runs_on_head();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(run.name, "prodigy: review");
    assert_eq!(run.external_id.as_deref(), Some(job.as_str()));
    assert_eq!(
        run.details_url.as_deref(),
        Some("https://github.example/octo-org/pipelines/actions/runs/4242")
    );
    assert_eq!(
        (run.status.as_str(), run.conclusion.as_deref()),
        ("completed", Some("failure"))
    );
    assert_eq!(run.annotations.len(), 1, "{:#?}", run.annotations);
    let a = &run.annotations[0];
    assert_eq!(a["path"], "src/beta.rs");
    assert_eq!(
        (a["start_line"].as_u64(), a["end_line"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(a["annotation_level"], "failure");
    assert_eq!(a["title"], "command_failed: beta");
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .contains("review: beta has 2 problems"),
        "{a:#}"
    );
    assert!(
        run.actions.is_empty(),
        "no buttons on the Action's check run: {:?}",
        run.actions
    );
    let summary = run.summary.as_deref().unwrap();
    assert!(
        summary.contains(&format!("`prodigy dlq retry {job}`")),
        "{summary}"
    );
    assert!(
        !summary.contains("/prodigy"),
        "the App's commands do not apply: {summary}"
    );
    // Created in progress first, then completed.
    {
        let world = step.fake.world();
        let create = world
            .requests
            .iter()
            .find(|r| r.op == Op::CreateCheckRun)
            .unwrap();
        let body = create.body.as_ref().unwrap();
        assert_eq!(body["status"], "in_progress");
        assert_eq!(body["head_sha"], step.head.as_str());
    }
    assert_eq!(step.fake.count(Op::CreateCheckRun), 1);
    assert_eq!(
        step.fake.count(Op::CreateAccessToken),
        0,
        "the workflow token, no App JWT"
    );
    step.fake.assert_no_violations();

    // The step summary is the check run's final summary under a heading.
    assert!(
        ran.summary.starts_with("## prodigy: review\n\n"),
        "{}",
        ran.summary
    );
    assert!(ran.summary.contains(summary), "{}", ran.summary);
    assert!(
        ran.summary
            .contains("**Failed: 2 of 3 items succeeded, 1 failed**")
    );

    // The DLQ row as an error annotation of the step, escaped for a workflow command.
    let stdout = ran.stdout();
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("::error"))
        .collect();
    assert_eq!(errors.len(), 1, "{stdout}");
    assert!(
        errors[0].starts_with(
            "::error file=src/beta.rs,line=4,endLine=4,title=command_failed%3A beta::"
        ),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("review: beta has 2 problems%0A"),
        "{}",
        errors[0]
    );

    // The job is recorded at the pull request's head commit, with its number.
    let status = step.repo.json(&["status", &job]);
    assert_eq!(status["job"]["head_sha"], step.head.as_str());
    assert_eq!(status["job"]["pr_number"], 2);
    assert_eq!(status["job"]["repo"], REPO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_checks_write_warns_once_and_the_step_still_reports() {
    let step = Step::new(None, false, false).await;
    let ran = step.run(&[]).await;
    assert_eq!(ran.code(), Some(0), "the job succeeded\n{}", text(&ran.out));
    assert_eq!(ran.output("status"), "succeeded");
    assert_eq!(ran.output("succeeded"), "3");
    assert_eq!(ran.output("dlq"), "0");
    assert!(
        ran.summary
            .contains("**Succeeded: 3 of 3 items succeeded, 0 failed**"),
        "{}",
        ran.summary
    );
    assert!(
        ran.summary.contains("> **No check run:** GitHub refused"),
        "{}",
        ran.summary
    );
    assert!(ran.summary.contains("checks: write"), "{}", ran.summary);

    let stdout = ran.stdout();
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("::warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "warned once: {stdout}");
    assert!(
        warnings[0].starts_with("::warning title=prodigy%3A no check run::"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].contains("permissions: { checks: write }"),
        "{}",
        warnings[0]
    );

    // One refused create and nothing after it: no progress updates, no final retries.
    let calls: Vec<(Op, u16)> = step
        .fake
        .world()
        .requests
        .iter()
        .map(|r| (r.op, r.status.as_u16()))
        .collect();
    assert_eq!(calls, vec![(Op::CreateCheckRun, 403)]);
    assert!(step.check_runs_on_head().is_empty());
    step.fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_broken_event_file_is_named_and_exits_2() {
    let step = Step::new(None, false, true).await;
    let ran = step.run(&[("GITHUB_EVENT_PATH", "")]).await;
    assert_eq!(ran.code(), Some(2), "{}", text(&ran.out));
    assert!(
        ran.stderr().contains("error: GITHUB_EVENT_PATH is not set"),
        "{}",
        text(&ran.out)
    );
    // The first line after the masks.
    assert!(
        ran.stdout()
            .lines()
            .find(|l| !l.starts_with("::add-mask::"))
            .is_some_and(|l| l.starts_with("::error title=prodigy::GITHUB_EVENT_PATH is not set")),
        "{}",
        text(&ran.out)
    );

    let broken = step.runner.path().join("broken.json");
    std::fs::write(&broken, "{\"action\": \"opened\", ").unwrap();
    let ran = step
        .run(&[("GITHUB_EVENT_PATH", broken.to_str().unwrap())])
        .await;
    assert_eq!(ran.code(), Some(2), "{}", text(&ran.out));
    let err = ran.stderr();
    assert!(
        err.contains(&format!(
            "the event file {} named by GITHUB_EVENT_PATH",
            broken.display()
        )),
        "{err}"
    );
    assert!(err.contains("not JSON"), "{err}");

    let gone = step.runner.path().join("gone.json");
    let ran = step
        .run(&[("GITHUB_EVENT_PATH", gone.to_str().unwrap())])
        .await;
    assert_eq!(ran.code(), Some(2), "{}", text(&ran.out));
    assert!(
        ran.stderr().contains(&format!(
            "cannot read the event file {} named by GITHUB_EVENT_PATH",
            gone.display()
        )),
        "{}",
        text(&ran.out)
    );

    // Nothing ran, nothing was written, GitHub was not called.
    assert!(ran.outputs.is_empty() && ran.summary.is_empty());
    assert_eq!(step.repo.json(&["jobs"]), json!([]));
    assert!(step.fake.world().requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_workflow_file_or_unknown_job_is_named_and_exits_2() {
    let step = Step::new(None, false, true).await;
    let ran = step
        .run(&[("PRODIGY_RESUME", "0192f5a0-0000-7000-8000-00000000dead")])
        .await;
    assert_eq!(ran.code(), Some(2), "{}", text(&ran.out));
    assert!(
        ran.stderr().contains(
            "the action's `resume` input names job `0192f5a0-0000-7000-8000-00000000dead`, but no job matches"
        ),
        "{}",
        text(&ran.out)
    );
    assert!(ran.stderr().contains("database-url"), "{}", text(&ran.out));

    std::fs::remove_file(step.repo.path.join(WORKFLOW_FILE)).unwrap();
    let ran = step.run(&[]).await;
    assert_eq!(ran.code(), Some(2), "{}", text(&ran.out));
    assert!(
        ran.stderr().contains(&format!(
            "the workflow file {WORKFLOW_FILE} does not exist (the action's `workflow` input is relative to its `working-directory`"
        )),
        "{}",
        text(&ran.out)
    );
    assert!(ran.outputs.is_empty());
    assert!(step.fake.world().requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_auto_continues_an_unfinished_job_at_the_same_commit() {
    let pg = support::db::postgres_db().await;
    let backends = [("sqlite", None)]
        .into_iter()
        .chain(pg.as_ref().map(|db| ("postgres", Some(db.url()))));
    for (backend, url) in backends {
        eprintln!("-- on {backend}");
        resume_auto_on(url).await;
    }
}

async fn resume_auto_on(db_url: Option<&str>) {
    let step = Step::new(db_url, true, true).await;
    step.fail("beta");
    let first = step.run(&[]).await;
    assert_eq!(first.code(), Some(1), "{}", text(&first.out));
    let job = first.output("job-id").to_string();
    assert_eq!(first.output("status"), "failed");
    assert!(
        first.summary.contains(&format!("`resume: {job}`")),
        "an unfinished job says how to continue it: {}",
        first.summary
    );

    // Another checkout of the same commit (another runner) sharing the database: the job's
    // work is not there, so a new job starts, with a warning saying why.
    let elsewhere = tempfile::tempdir().unwrap();
    let clone = elsewhere.path().join("checkout");
    step.repo
        .git(&["clone", "-q", ".", clone.to_str().unwrap()]);
    let other = step.run_in(&clone, &[]).await;
    assert_eq!(other.code(), Some(1), "{}", text(&other.out));
    assert_ne!(other.output("job-id"), job);
    assert!(
        other.stdout().lines().any(|l| l
            .starts_with("::warning title=prodigy%3A starting a new job::")
            && l.contains(&format!(
                "job {job} of this workflow at this commit is unfinished, but it ran in"
            ))),
        "{}",
        text(&other.out)
    );
    // Naming the job there is refused, saying why.
    let named = step.run_in(&clone, &[("PRODIGY_RESUME", &job)]).await;
    assert_eq!(named.code(), Some(2), "{}", text(&named.out));
    assert!(
        named.stderr().contains(&format!(
            "the action's `resume` input names job `{job}`, but job {job} cannot continue here"
        )),
        "{}",
        text(&named.out)
    );

    // Here, with beta fixed, the re-run continues the first job to the end.
    step.unfail("beta");
    let second = step.run(&[]).await;
    assert_eq!(second.code(), Some(0), "{}", text(&second.out));
    assert_eq!(second.output("job-id"), job);
    assert_eq!(second.output("status"), "succeeded");
    assert_eq!(second.output("succeeded"), "3");
    assert!(
        second
            .stderr()
            .contains(&format!("resume: auto: continuing job {job}")),
        "{}",
        text(&second.out)
    );
    for id in ["alpha", "beta", "gamma"] {
        assert_eq!(step.repo.show(&format!("prodigy/{job}:out-{id}.txt")), id);
    }
    // Each run has its own check run: failure, then success.
    let mut ours: Vec<_> = step
        .check_runs_on_head()
        .into_iter()
        .filter(|r| r.external_id.as_deref() == Some(job.as_str()))
        .collect();
    ours.sort_by_key(|r| r.id);
    let conclusions: Vec<Option<&str>> = ours.iter().map(|r| r.conclusion.as_deref()).collect();
    assert_eq!(conclusions, [Some("failure"), Some("success")]);

    // A finished job is not resumed: the next run is a new job; naming it says it finished.
    let third = step.run(&[]).await;
    assert_eq!(third.code(), Some(0), "{}", text(&third.out));
    assert_ne!(third.output("job-id"), job);
    let finished = step.run(&[("PRODIGY_RESUME", &job)]).await;
    assert_eq!(finished.code(), Some(0), "{}", text(&finished.out));
    assert_eq!(finished.output("job-id"), job);
    assert_eq!(finished.output("status"), "succeeded");
    assert!(
        finished
            .summary
            .contains("had already finished; nothing was run"),
        "{}",
        finished.summary
    );
    step.fake.assert_no_violations();
}

/// `action.yml` maps every output the step writes, passes every input to the step, and runs
/// `prodigy action` from the action's own source.
#[test]
fn action_yml_matches_the_binary() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("action.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let yml: Value = serde_saphyr::from_str(&text).unwrap();
    let outputs: Vec<&str> = yml["outputs"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut written = prodigy::action::report::OUTPUTS.to_vec();
    written.sort_unstable();
    let mut mapped = outputs.clone();
    mapped.sort_unstable();
    assert_eq!(mapped, written);
    for name in outputs {
        assert_eq!(
            yml["outputs"][name]["value"],
            format!("${{{{ steps.run.outputs.{name} }}}}"),
            "output {name}"
        );
    }
    assert_eq!(yml["runs"]["using"], "composite");
    let steps = yml["runs"]["steps"].as_array().unwrap();
    let scripts: String = steps.iter().map(|s| s.to_string()).collect();
    for input in yml["inputs"].as_object().unwrap().keys() {
        assert!(
            scripts.contains(&format!("inputs.{input}")),
            "input {input} is not used"
        );
    }
    assert_eq!(yml["inputs"]["token"]["default"], "${{ github.token }}");
    assert!(
        scripts.contains("cargo install --locked --path"),
        "{scripts}"
    );
    let run = steps.iter().find(|s| s["id"] == "run").unwrap();
    assert!(
        run["run"]
            .as_str()
            .unwrap()
            .contains("\"$PRODIGY_BIN\" action")
    );
    // Inputs reach the script through `env`, never spliced into its text.
    assert!(
        !run["run"].as_str().unwrap().contains("${{"),
        "{}",
        run["run"]
    );
}

/// An agent that asks for the token by name, echoes it and a `secret: true` value, dumps its
/// environment and prodigy's `/proc/<pid>/environ`, then tries to read the state database.
const THIEF: &str = r#"name: thief
mode: mapreduce
env:
  GITHUB_TOKEN: ${GITHUB_TOKEN}
  API_KEY:
    value: workflow-secret-value-123
    secret: true
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 1
  agent_template:
    - shell: |
        env > env.txt
        cat /proc/$PPID/environ > proc.txt 2>&1 || true
        echo "token is $GITHUB_TOKEN and key $API_KEY" >&2
        echo "inherited: ${FLAGS:-no} ${ACTIONS_RUNTIME_TOKEN:-no} ${INPUT_DATABASE_URL:-no}" >&2
        cat "$STATE_DB" > stolen.txt
        exit 7
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_first_and_stay_out_of_every_report() {
    let step = Step::with_workflow(None, THIEF, true).await;
    let state_db = step.repo.home.join("state.db");
    let state_db = state_db.display().to_string();
    let runtime_token = "actions-runtime-token-value";
    let ran = step
        .run(&[
            ("STATE_DB", &state_db),
            ("PRODIGY_PASS_ENV", "STATE_DB"),
            ("ACTIONS_RUNTIME_TOKEN", runtime_token),
        ])
        .await;
    assert_eq!(ran.code(), Some(1), "{}", text(&ran.out));

    // Every mask comes before any other line the step prints.
    let stdout = ran.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    let masks = lines
        .iter()
        .take_while(|l| l.starts_with("::add-mask::"))
        .count();
    assert!(
        !lines[masks..].iter().any(|l| l.starts_with("::add-mask::")),
        "{stdout}"
    );
    let masked: Vec<&str> = lines[..masks]
        .iter()
        .map(|l| l.trim_start_matches("::add-mask::"))
        .collect();
    assert!(masked.contains(&step.token.as_str()), "{masked:?}");
    assert!(masked.contains(&"workflow-secret-value-123"), "{masked:?}");

    // The agent's failure is reported normally: every item failed reading the database.
    let runs = step.check_runs_on_head();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(run.conclusion.as_deref(), Some("failure"), "{run:#?}");
    let reports = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        lines[masks..].join("\n"),
        ran.stderr(),
        ran.summary,
        run.summary.clone().unwrap_or_default(),
        run.text.clone().unwrap_or_default(),
        serde_json::to_string(&run.annotations).unwrap()
    );
    for secret in [
        step.token.as_str(),
        "workflow-secret-value-123",
        runtime_token,
    ] {
        assert!(!reports.contains(secret), "`{secret}` leaked:\n{reports}");
    }
    let annotations = serde_json::to_string(&run.annotations).unwrap();
    assert!(
        annotations.contains("token is *** and key ***"),
        "{annotations}"
    );
    assert!(
        annotations.contains("inherited: no no no"),
        "the runner's variables reached the agent: {annotations}"
    );
    if sandboxed() {
        assert!(annotations.contains("Permission denied"), "{annotations}");
    }
}

/// Each item's agent runs the real AI CLI: a Bash call that commits a file, then a final text.
const AGENTS: &str = r#"name: review
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 1
  agent_template:
    - claude: "Review item ${item.id}"
      commit_required: true
"#;

/// The fake model's scripts for AGENTS, item `i` (from 1) using `1000 * i` input tokens first.
fn script_reviews(fake: &FakeAnthropic, ids: &'static [&'static str]) {
    for (i, id) in ids.iter().enumerate() {
        let n = i as u64 + 1;
        fake.script(
            id,
            vec![
                Turn::bash(&format!(
                    "echo {id} > out-{id}.txt && git add . && git commit -q -m 'review {id}'"
                ))
                .with_usage(Usage {
                    input_tokens: 1000 * n,
                    output_tokens: 50,
                    cache_creation_input_tokens: 200,
                    cache_read_input_tokens: 0,
                }),
                Turn::text(format!("{id} reviewed")).with_usage(Usage {
                    input_tokens: 1000 * n + 100,
                    output_tokens: 30,
                    cache_creation_input_tokens: 0,
                    cache_read_input_tokens: 200,
                }),
            ],
        );
    }
    fake.route_by(move |body| {
        let asked = first_user_text(body);
        ids.iter()
            .find(|id| asked.contains(&format!("item {id}")))
            .map(|id| id.to_string())
            .unwrap_or_default()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_and_step_summary_carry_the_usage_the_fake_model_reported() {
    const IDS: &[&str] = &["alpha", "beta", "gamma"];
    let Some(claude) = real_claude() else {
        return;
    };
    let fake = FakeAnthropic::empty();
    script_reviews(&fake, IDS);
    let step = Step::with_workflow(None, AGENTS, true).await;
    let home = step.repo.home.join("cli-home");
    std::fs::create_dir_all(&home).unwrap();
    let env = fake.cli_env(&home);
    // The Action builds its agents' environment: the CLI's variables are passed on purpose.
    let pass: Vec<&str> = env
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "HOME")
        .collect();
    let pass = pass.join(",");
    step.repo.use_real_claude(&claude, env);
    let ran = step.run(&[("PRODIGY_PASS_ENV", &pass)]).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    assert_eq!(ran.output("succeeded"), "3");

    // What the fake reported, summed over the three agents' two turns each, and what the CLI
    // made of it: the sum of its result lines' cost.
    let input: u64 = (1..=3).map(|n| 2000 * n + 100).sum();
    let tokens = input + 80 * 3 + 200 * 3 + 200 * 3;
    assert_eq!(ran.output("tokens"), tokens.to_string());
    let job = ran.output("job-id");
    let logs = step.repo.home.join("logs").join(job).join("items");
    let cost: f64 = IDS
        .iter()
        .map(|id| {
            let t = std::fs::read_to_string(logs.join(id).join("attempt-1.claude-1.jsonl"))
                .unwrap_or_else(|e| panic!("{id}'s transcript: {e}"));
            let last: Value = serde_json::from_str(t.lines().last().unwrap()).unwrap();
            last["total_cost_usd"].as_f64().unwrap()
        })
        .sum();
    assert!(cost > 0.0);
    let output: f64 = ran.output("cost-usd").parse().unwrap();
    assert!((output - cost).abs() < 1e-6, "{output} vs {cost}");

    // The step summary has the check run's usage table, with the same totals.
    let job_row = ran
        .summary
        .lines()
        .find(|l| l.starts_with("| **job** |"))
        .unwrap_or_else(|| panic!("no usage table:\n{}", ran.summary));
    assert!(
        job_row.starts_with(&format!(
            "| **job** | {input} | 240 | 600 | 600 | {tokens} | ${cost:.4} | 6 |"
        )),
        "{job_row}"
    );
    assert!(ran.summary.contains("### Most expensive items"));
    let run = &step.check_runs_on_head()[0];
    assert!(
        run.summary.as_deref().unwrap_or("").contains(job_row),
        "{run:#?}"
    );
}

/// Whether this kernel sandboxes agents (Landlock): the tests that prove a denial need it.
fn sandboxed() -> bool {
    matches!(
        prodigy::engine::sandbox::support(),
        prodigy::engine::sandbox::Support::Available { .. }
    )
}

/// The operator's caps as the action's inputs: a default model reaches the agent, and a cost cap
/// per job ends a job without a budget of its own as `budget_exhausted` (exit code 3, check run
/// `action_required`, saying how to continue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cap_inputs_set_the_model_and_stop_a_job_at_the_cost_cap() {
    const WF: &str = r#"name: review
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 1
  agent_template:
    - claude: "/review ${item.id}"
"#;
    let step = Step::with_workflow(None, WF, true).await;
    // Each agent run costs $1 and logs its arguments.
    // (Agents of the Action get a built environment: the log's path is written into the stub.)
    let stub = format!(
        r#"#!/bin/sh
printf '%s\n' "$*" >> "{}"
printf '{{"type":"system","subtype":"init","session_id":"s","model":"m"}}\n'
printf '{{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"ok","session_id":"s","total_cost_usd":1,"usage":{{"input_tokens":1,"output_tokens":1}}}}\n'
"#,
        step.repo.claude_log.display()
    );
    std::fs::write(step.repo.claude_bin(), stub).unwrap();
    let ran = step
        .run(&[
            ("PRODIGY_DEFAULT_MODEL", "claude-cap-model"),
            ("PRODIGY_MAX_COST_USD", "0.5"),
        ])
        .await;
    assert_eq!(ran.code(), Some(3), "{}", text(&ran.out));
    assert_eq!(ran.output("status"), "budget_exhausted");
    let calls = std::fs::read_to_string(&step.repo.claude_log).unwrap();
    assert_eq!(calls.lines().count(), 1, "one agent ran: {calls}");
    assert!(calls.contains("--model claude-cap-model"), "{calls}");
    let runs = step.check_runs_on_head();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].conclusion.as_deref(), Some("action_required"));
    let summary = runs[0].summary.as_deref().unwrap();
    assert!(
        summary.contains("$1.0000 spent of a $0.50 budget") && summary.contains("--budget <USD>"),
        "{summary}"
    );
    step.fake.assert_no_violations();

    let bad = step.run(&[("PRODIGY_MAX_COST_USD", "-2")]).await;
    assert_eq!(bad.code(), Some(2), "{}", text(&bad.out));
    assert!(bad.stdout().contains("max-cost-usd"), "{}", text(&bad.out));
}

/// `workflow_dispatch` from the Actions tab, with the inputs a workflow maps to the action's
/// (`resume: <job id>`, `retry: true`): the DLQ of the named job runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_dispatch_retries_the_dlq_of_a_named_job() {
    let step = Step::new(None, false, true).await;
    step.fail("beta");
    let first = step.run(&[]).await;
    assert_eq!(first.code(), Some(1), "{}", text(&first.out));
    let job = first.output("job-id").to_string();
    assert_eq!(first.output("dlq"), "1");

    let mut v: Value = serde_json::from_slice(&support::webhook::fixture_payload(
        "workflow_dispatch/event.payload.json",
    ))
    .unwrap();
    v["inputs"] = json!({"workflow": WORKFLOW_FILE, "job": job, "retry": "true"});
    v["repository"]["full_name"] = json!(REPO);
    let event = step.runner.path().join("dispatch.json");
    std::fs::write(&event, serde_json::to_vec(&v).unwrap()).unwrap();
    let vars = [
        ("GITHUB_EVENT_NAME", "workflow_dispatch"),
        ("GITHUB_EVENT_PATH", event.to_str().unwrap()),
        ("GITHUB_SHA", step.head.as_str()),
        ("PRODIGY_RESUME", job.as_str()),
        ("PRODIGY_RETRY", "true"),
    ];
    // Without a job to retry, `retry` says what it needs.
    let refused = step
        .run(&[
            vars[0],
            vars[1],
            vars[2],
            ("PRODIGY_RESUME", "new"),
            vars[4],
        ])
        .await;
    assert_eq!(refused.code(), Some(2), "{}", text(&refused.out));
    assert!(
        refused.stderr().contains("`retry: true` needs a job"),
        "{}",
        text(&refused.out)
    );

    step.unfail("beta");
    let ran = step.run(&vars).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    assert_eq!(ran.output("job-id"), job);
    assert_eq!(ran.output("status"), "succeeded");
    assert_eq!(ran.output("dlq"), "0");
    assert_eq!(
        step.repo.show(&format!("prodigy/{job}:out-beta.txt")),
        "beta"
    );
    let conclusions: Vec<Option<String>> = step
        .check_runs_on_head()
        .into_iter()
        .filter(|r| r.external_id.as_deref() == Some(job.as_str()))
        .map(|r| r.conclusion)
        .collect();
    assert_eq!(
        conclusions,
        [Some("failure".to_string()), Some("success".to_string())]
    );
    step.fake.assert_no_violations();
}

/// `actions/checkout` persists its token in the checkout's git configuration (`.git/config`, or
/// a file it includes): agents must not read it, and the step puts the file back as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_persisted_by_checkout_are_hidden_from_agents_and_put_back() {
    let workflow = r#"name: review
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 1
  agent_template:
    - shell: |
        git config --show-origin --get-regexp 'extraheader' > "seen-${item.id}.txt" 2>&1 || true
        git add . && git commit -q -m "item ${item.id}"
"#;
    let step = Step::with_workflow(None, workflow, true).await;
    // What actions/checkout v4 writes, and what v6 writes (an include of a file under RUNNER_TEMP).
    let header = "AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46Z2hzX3BlcnNpc3RlZA==";
    step.repo.git(&[
        "config",
        "--local",
        "http.https://github.example/.extraheader",
        header,
    ]);
    let included = step.runner.path().join("git-credentials-1234.config");
    std::fs::write(
        &included,
        format!("[http \"https://github.example/\"]\n\textraheader = {header}\n"),
    )
    .unwrap();
    let gitdir = step.repo.path.join(".git");
    for pattern in [
        format!("includeIf.gitdir:{}.path", gitdir.display()),
        format!("includeIf.gitdir:{}/worktrees/*.path", gitdir.display()),
    ] {
        step.repo
            .git(&["config", "--local", &pattern, included.to_str().unwrap()]);
    }
    let config = gitdir.join("config");
    let before = std::fs::read(&config).unwrap();

    let ran = step.run(&[]).await;
    assert_eq!(ran.code(), Some(0), "{}", text(&ran.out));
    let job = ran.output("job-id").to_string();
    for id in ["alpha", "beta", "gamma"] {
        let seen = step
            .repo
            .git(&["show", &format!("prodigy/{job}:seen-{id}.txt")]);
        assert!(
            !seen.contains("extraheader") && !seen.contains("AUTHORIZATION"),
            "agent {id} read the persisted token: {seen}"
        );
    }
    assert!(
        ran.stdout().lines().any(|l| l.starts_with("::notice")
            && l.contains("http.https://github.example/.extraheader")
            && l.contains("set aside")),
        "{}",
        ran.stdout()
    );
    assert!(
        !ran.stdout().contains("eC1hY2Nlc3MtdG9rZW46"),
        "{}",
        ran.stdout()
    );
    assert_eq!(
        String::from_utf8(std::fs::read(&config).unwrap()).unwrap(),
        String::from_utf8(before).unwrap(),
        "the checkout's configuration is put back byte for byte"
    );
}
