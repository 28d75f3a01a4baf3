//! The real AI CLI (`@anthropic-ai/claude-code`, pinned in tests/agent-cli) against the fake
//! Anthropic API: proves the fake speaks the API well enough for the CLI to run tools, and pins the
//! stream-json format prodigy reads. Skips when the CLI is not installed (see `real_claude`).

mod support;

use std::process::Command;

use serde_json::Value;
use support::fake_anthropic::{FakeAnthropic, Turn, Usage, real_claude};
use support::git::git;

#[test]
fn the_real_cli_runs_a_scripted_bash_tool_that_commits_and_reports_usage() {
    let Some(claude) = real_claude() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["config", "user.email", "t@example.com"]);
    git(&repo, &["config", "user.name", "T"]);
    std::fs::write(repo.join("README.md"), "hi\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "initial"]);

    let first = Usage {
        input_tokens: 1200,
        output_tokens: 80,
        cache_creation_input_tokens: 300,
        cache_read_input_tokens: 0,
    };
    let second = Usage {
        input_tokens: 1500,
        output_tokens: 40,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 300,
    };
    let fake = FakeAnthropic::start(vec![
        Turn::bash("echo agent > agent.txt && git add agent.txt && git commit -q -m 'agent edit'")
            .with_usage(first),
        Turn::text("Committed agent.txt.").with_usage(second),
    ]);

    let out = Command::new(&claude)
        .args([
            "--print",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "acceptEdits",
            "--allowedTools",
            "Bash",
            "--model",
            "claude-sonnet-4-5",
            "Write agent.txt and commit it",
        ])
        .current_dir(&repo)
        .envs(fake.cli_env(&home))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for r in fake.requests() {
        eprintln!(
            "{} {} scripted={} status={} tools={} model={}",
            r.method,
            r.path,
            r.scripted,
            r.status,
            r.body
                .get("tools")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            r.body["model"]
        );
    }
    assert!(
        out.status.success(),
        "claude failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let init = &lines[0];
    assert_eq!(init["type"], "system");
    assert_eq!(init["subtype"], "init");
    assert!(init["session_id"].as_str().is_some_and(|s| !s.is_empty()));
    let result = lines.last().unwrap();
    assert_eq!(result["type"], "result");
    assert_eq!(result["subtype"], "success");
    assert_eq!(result["result"], "Committed agent.txt.");
    assert_eq!(result["num_turns"], 2);
    let usage = &result["usage"];
    assert_eq!(usage["input_tokens"], 2700);
    assert_eq!(usage["output_tokens"], 120);
    assert_eq!(usage["cache_creation_input_tokens"], 300);
    assert_eq!(usage["cache_read_input_tokens"], 300);
    assert!(result["total_cost_usd"].as_f64().unwrap() > 0.0);

    assert_eq!(git(&repo, &["log", "-1", "--format=%s"]), "agent edit");
    assert_eq!(
        std::fs::read_to_string(repo.join("agent.txt")).unwrap(),
        "agent\n"
    );
    assert_eq!(fake.remaining(""), 0, "both scripted turns were played");
}
