//! `claude:` steps driven by the real AI CLI against the fake Anthropic API, through the real
//! `prodigy` binary: agents commit in their worktrees, their commits merge, transcripts and usage
//! are recorded. Skips when the CLI is not installed (see `real_claude`).

mod support;

use serde_json::Value;
use support::fake_anthropic::{FakeAnthropic, Turn, Usage, first_user_text, real_claude};
use support::repo::{Repo, job_id, text};

const ITEMS: &[&str] = &["alpha", "beta", "gamma"];

/// Each item's agent: one Bash call that writes `out/<item>.txt` and commits, then a final text.
fn script_items(fake: &FakeAnthropic) {
    for (i, item) in ITEMS.iter().enumerate() {
        let n = i as u64 + 1;
        fake.script(
            item,
            vec![
                Turn::bash(&format!(
                    "mkdir -p out && echo {item} > out/{item}.txt && git add out && git commit -q -m 'agent: {item}'"
                ))
                .with_usage(Usage {
                    input_tokens: 1000 * n,
                    output_tokens: 50,
                    cache_creation_input_tokens: 200,
                    cache_read_input_tokens: 0,
                }),
                Turn::text(format!("{item} is done")).with_usage(Usage {
                    input_tokens: 1100 * n,
                    output_tokens: 30,
                    cache_creation_input_tokens: 0,
                    cache_read_input_tokens: 200,
                }),
            ],
        );
    }
    fake.route_by(|body| {
        let asked = first_user_text(body);
        ITEMS
            .iter()
            .find(|i| asked.contains(&format!("item {i}")))
            .map(|i| i.to_string())
            .unwrap_or_default()
    });
}

const WORKFLOW: &str = r#"
name: real-agents
mode: mapreduce
agent:
  model: claude-sonnet-4-5
  max_turns: 10
setup:
  - shell: "printf '[{\"id\":\"alpha\"},{\"id\":\"beta\"},{\"id\":\"gamma\"}]' > items.json"
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 2
  agent_template:
    - claude:
        prompt: "Handle item ${item.id}"
        allowed_tools: [Bash, Edit, Write, Read]
      commit_required: true
    - shell: "test '${claude.output}' = '${item.id} is done'"
"#;

/// Runs WORKFLOW with the real CLI against the scripted fake: the repository and the job id.
fn run_scripted(fake: &FakeAnthropic) -> Option<(Repo, String)> {
    let repo = real_repo(fake)?;
    script_items(fake);
    repo.write("wf.yml", WORKFLOW);
    repo.commit_all("workflow");
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert!(out.status.success(), "{}", text(&out));
    let job = job_id(&out);
    Some((repo, job))
}

fn real_repo(fake: &FakeAnthropic) -> Option<Repo> {
    let claude = real_claude()?;
    let repo = Repo::new(None);
    let cli_home = repo.home.join("cli-home");
    std::fs::create_dir_all(&cli_home).unwrap();
    repo.use_real_claude(&claude, fake.cli_env(&cli_home));
    Some(repo)
}

#[test]
fn real_agents_commit_in_their_worktrees_and_their_commits_merge() {
    let fake = FakeAnthropic::empty();
    let Some((repo, job)) = run_scripted(&fake) else {
        return;
    };
    let branch = format!("prodigy/{job}");
    for item in ITEMS {
        assert_eq!(repo.show(&format!("{branch}:out/{item}.txt")), *item);
    }
    for item in ITEMS {
        assert_eq!(
            fake.remaining(item),
            0,
            "{item}'s agent played its whole script"
        );
    }
    // Every conversation request carried the step's model and the test key.
    for r in fake.conversation() {
        assert_eq!(r.body["model"], "claude-sonnet-4-5");
        assert_eq!(
            r.api_key.as_deref(),
            Some(support::fake_anthropic::TEST_API_KEY)
        );
    }

    // Each attempt has a transcript beside its log, with the CLI's init and result lines.
    let logs = repo.home.join("logs").join(&job).join("items");
    for item in ITEMS {
        let t = logs.join(item).join("attempt-1.claude-1.jsonl");
        let lines: Vec<Value> = std::fs::read_to_string(&t)
            .unwrap_or_else(|e| panic!("{}: {e}", t.display()))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["subtype"], "init");
        let last = lines.last().unwrap();
        assert_eq!(last["type"], "result");
        assert_eq!(last["result"], format!("{item} is done"));
    }

    // `prodigy logs` renders a transcript for people, `--raw` gives the NDJSON.
    let shown = repo.prodigy(&["logs", &job, "alpha"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("-> Bash {\"command\":\"mkdir -p out && echo alpha"),
        "{shown}"
    );
    assert!(shown.contains("assistant: alpha is done"), "{shown}");
    assert!(shown.contains("= success after 2 turns: $"), "{shown}");
    let raw = repo.prodigy(&["logs", &job, "alpha", "--attempt", "1", "--raw"]);
    let file =
        std::fs::read_to_string(logs.join("alpha").join("attempt-1.claude-1.jsonl")).unwrap();
    assert_eq!(String::from_utf8_lossy(&raw.stdout), file);
    let all = String::from_utf8_lossy(&repo.prodigy(&["logs", &job]).stdout).to_string();
    assert_eq!(all.matches("=== ").count(), 3, "{all}");
    let none = repo.prodigy(&["logs", &job, "alpha", "--attempt", "2"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no agent transcripts"));
}

/// An ordinary user to run prodigy as: None when this test already runs as one (not root);
/// as root, `prodigy-test` (created by `.ci/run`) or else `nobody`. Skips (or fails, with
/// `PRODIGY_REQUIRE_CLAUDE=1`) when root has neither.
fn ordinary_user() -> Option<Option<(u32, u32)>> {
    // SAFETY: plain libc queries; getpwnam's result is read before any other call.
    unsafe {
        if libc::geteuid() != 0 {
            return Some(None);
        }
        for name in [c"prodigy-test", c"nobody"] {
            let pw = libc::getpwnam(name.as_ptr());
            if !pw.is_null() && (*pw).pw_uid != 0 {
                return Some(Some(((*pw).pw_uid, (*pw).pw_gid)));
            }
        }
    }
    let msg = "running as root, and neither a `prodigy-test` nor a `nobody` user exists to run \
               prodigy as an ordinary user: `useradd prodigy-test`";
    if std::env::var("PRODIGY_REQUIRE_CLAUDE").is_ok_and(|v| v == "1") {
        panic!("PRODIGY_REQUIRE_CLAUDE=1 but {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Gives `dir` and everything in it to `uid:gid`.
fn chown_tree(dir: &std::path::Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
    if dir.is_symlink() || !dir.is_dir() {
        return;
    }
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        chown_tree(&entry.path(), uid, gid);
    }
}

/// The sandbox must not break the agent when prodigy runs as an ordinary user either: the real
/// CLI (its HOME, repository and state owned by that user) uses its Bash tool and commits in
/// its worktree, and the commits merge.
#[test]
fn real_agents_commit_and_merge_when_prodigy_runs_as_an_ordinary_user() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let fake = FakeAnthropic::empty();
    let Some(repo) = real_repo(&fake) else {
        return;
    };
    let Some(user) = ordinary_user() else {
        return;
    };
    script_items(&fake);
    repo.write("wf.yml", WORKFLOW);
    repo.commit_all("workflow");
    // The repository, prodigy's home and the CLI's HOME all live in this directory.
    let world = repo.path.parent().unwrap();
    let mut cmd = repo.command(&["run", "wf.yml"]);
    if let Some((uid, gid)) = user {
        chown_tree(world, uid, gid);
        cmd.uid(uid).gid(gid);
    }
    let out = cmd.output().unwrap();
    let uid = user.map_or_else(|| unsafe { libc::geteuid() }, |(uid, _)| uid);
    let db_owner = std::fs::metadata(repo.home.join("state.db")).unwrap().uid();
    if user.is_some() {
        // Back to the test's own user, whose git refuses a repository owned by another.
        chown_tree(world, 0, 0);
    }
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(db_owner, uid, "prodigy ran as the ordinary user");
    let branch = format!("prodigy/{}", job_id(&out));
    for item in ITEMS {
        assert_eq!(repo.show(&format!("{branch}:out/{item}.txt")), *item);
        assert_eq!(fake.remaining(item), 0, "{item}'s agent played its script");
    }
}

#[test]
fn usage_in_status_is_the_sum_the_fake_model_reported_priced_as_the_cli_prices_it() {
    let fake = FakeAnthropic::empty();
    let Some((repo, job)) = run_scripted(&fake) else {
        return;
    };

    let status = repo.json(&["status", &job]);
    let total = &status["usage"]["total"];
    // What the fake reported, summed over the three items' two turns each.
    let (input, output, cache_write, cache_read) = (2100 * (1 + 2 + 3), 80 * 3, 200 * 3, 200 * 3);
    assert_eq!(total["input_tokens"], input, "{status}");
    assert_eq!(total["output_tokens"], output);
    assert_eq!(total["cache_creation_tokens"], cache_write);
    assert_eq!(total["cache_read_tokens"], cache_read);
    assert_eq!(total["turns"], 6);
    // The cost is the CLI's own: the sum of the result lines' total_cost_usd ...
    let logs = repo.home.join("logs").join(&job).join("items");
    let cli_cost: f64 = ITEMS
        .iter()
        .map(|item| {
            let t =
                std::fs::read_to_string(logs.join(item).join("attempt-1.claude-1.jsonl")).unwrap();
            let last: Value = serde_json::from_str(t.lines().last().unwrap()).unwrap();
            last["total_cost_usd"].as_f64().unwrap()
        })
        .sum();
    let cost = total["cost_usd"].as_f64().unwrap();
    assert!((cost - cli_cost).abs() < 1e-9, "{cost} vs {cli_cost}");
    // ... which is the model's list price for these tokens.
    let list = (input as f64 * 3.0
        + output as f64 * 15.0
        + cache_write as f64 * 3.75
        + cache_read as f64 * 0.3)
        / 1e6;
    assert!((cost - list).abs() < 1e-9, "{cost} vs {list}");
    assert_eq!(status["usage"]["by_phase"]["map"]["turns"], 6);
    assert_eq!(status["usage"]["by_item"].as_object().unwrap().len(), 3);

    // The human forms show it too.
    let human = repo.prodigy(&["status", &job]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains(&format!("${cost:.4}")),
        "{}",
        text(&human)
    );
    let jobs = repo.prodigy(&["jobs"]);
    assert!(
        String::from_utf8_lossy(&jobs.stdout).contains(&format!("${cost:.4}")),
        "{}",
        text(&jobs)
    );
    let listed = repo.json(&["jobs"]);
    assert!((listed[0]["usage"]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    // And each agent's usage is an event.
    let events = repo.prodigy(&["events", &job, "--json"]);
    let finished = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter(|l| l.contains("\"agent_finished\""))
        .count();
    assert_eq!(finished, 3);
}

/// A workflow whose items run one at a time, so "after the first failure" is well defined.
const SERIAL: &str = r#"
name: serial-agents
mode: mapreduce
setup:
  - shell: "printf '[{\"id\":\"alpha\"},{\"id\":\"beta\"},{\"id\":\"gamma\"}]' > items.json"
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 1
  agent_template:
    - claude: "Handle item ${item.id}"
      commit_required: true
"#;

/// The real CLI with its own API retries off, so one scripted error reaches prodigy.
fn no_cli_retries(repo: &Repo) {
    repo.extra_env
        .borrow_mut()
        .push(("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()));
    repo.extra_env
        .borrow_mut()
        .push(("PRODIGY_API_BACKOFF_MS".into(), "50".into()));
}

/// Runs wf.yml expecting the job to fail: its id, `status --json` and its error.
fn run_failing(repo: &Repo) -> (String, Value, String) {
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert!(!out.status.success(), "{}", text(&out));
    let job = job_id(&out);
    let status = repo.json(&["status", &job]);
    let error = status["job"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (job, status, error)
}

#[test]
fn an_invalid_key_stops_the_job_after_the_first_failure_with_one_clear_error() {
    let fake = FakeAnthropic::empty();
    let Some(repo) = real_repo(&fake) else { return };
    no_cli_retries(&repo);
    repo.extra_env
        .borrow_mut()
        .push(("ANTHROPIC_API_KEY".into(), "sk-wrong-key".into()));
    script_items(&fake);
    repo.write("wf.yml", SERIAL);
    repo.commit_all("workflow");

    let (job, status, error) = run_failing(&repo);
    assert!(error.contains("ANTHROPIC_API_KEY"), "{status}");
    assert_eq!(status["counts"]["failed"], 1, "{status}");
    assert_eq!(
        status["counts"]["pending"], 2,
        "nothing more was dispatched: {status}"
    );
    let dlq = repo.json(&["dlq", "list", &job]);
    assert_eq!(dlq[0]["error_class"], "api_auth", "{dlq}");
    // Every request the CLI made carried the wrong key and was refused.
    assert!(fake.requests().iter().all(|r| r.status == 401));
}

#[test]
fn rate_limited_and_overloaded_items_succeed_after_back_off_without_using_attempts() {
    let fake = FakeAnthropic::empty();
    let Some(repo) = real_repo(&fake) else { return };
    no_cli_retries(&repo);
    fake.script("alpha", vec![Turn::rate_limited(1)]);
    fake.script("beta", vec![Turn::overloaded()]);
    script_items(&fake);
    repo.write("wf.yml", SERIAL);
    repo.commit_all("workflow");

    let out = repo.prodigy(&["run", "wf.yml"]);
    assert!(out.status.success(), "{}", text(&out));
    let job = job_id(&out);
    for item in ITEMS {
        assert_eq!(repo.show(&format!("prodigy/{job}:out/{item}.txt")), *item);
        let shown = repo.json(&["dlq", "show", &job, item]);
        assert_eq!(
            shown["attempts"].as_array().unwrap().len(),
            1,
            "{item}: {shown}"
        );
    }
    let events =
        String::from_utf8_lossy(&repo.prodigy(&["events", &job, "--json"]).stdout).to_string();
    assert_eq!(events.matches("\"agent_backoff\"").count(), 2, "{events}");
    assert!(fake.requests().iter().any(|r| r.status == 429));
    assert!(fake.requests().iter().any(|r| r.status == 529));
}

#[test]
fn max_turns_is_its_own_class_and_the_dlq_row_names_the_transcript_and_session() {
    let fake = FakeAnthropic::empty();
    let Some(repo) = real_repo(&fake) else { return };
    fake.script(
        "",
        vec![
            Turn::bash("echo one"),
            Turn::bash("echo two"),
            Turn::bash("echo three"),
        ],
    );
    fake.fallback_text("never reached");
    repo.write(
        "wf.yml",
        r#"
mode: mapreduce
setup:
  - shell: "echo '[{\"id\":\"only\"}]' > items.json"
map:
  input: items.json
  json_path: "$[*]"
  agent_template:
    - claude:
        prompt: "Loop forever on ${item.id}"
        max_turns: 2
"#,
    );
    repo.commit_all("workflow");
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert!(!out.status.success(), "{}", text(&out));
    let job = job_id(&out);
    let dlq = repo.json(&["dlq", "list", &job]);
    let row = &dlq[0];
    assert_eq!(row["error_class"], "max_turns", "{dlq}");
    let transcript = row["json_log_location"].as_str().expect("a transcript");
    assert!(
        transcript.ends_with("items/only/attempt-1.claude-1.jsonl"),
        "{transcript}"
    );
    let session = row["session_id"].as_str().expect("a session");
    let last: Value = serde_json::from_str(
        std::fs::read_to_string(transcript)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["subtype"], "error_max_turns");
    assert_eq!(last["session_id"], session);
    let human = repo.prodigy(&["dlq", "show", &job, "only"]);
    let shown = String::from_utf8_lossy(&human.stdout);
    assert!(
        shown.contains(transcript) && shown.contains(session),
        "{shown}"
    );
}

#[test]
fn a_spent_budget_stops_dispatching_and_a_resume_with_a_raised_budget_finishes_the_job() {
    let fake = FakeAnthropic::empty();
    let Some(repo) = real_repo(&fake) else { return };
    script_items(&fake);
    // alpha alone costs about $0.008 at the CLI's prices: the budget is spent after it.
    repo.write(
        "wf.yml",
        &SERIAL.replace(
            "mode: mapreduce",
            "mode: mapreduce\nbudget:\n  max_cost_usd: 0.005",
        ),
    );
    repo.commit_all("workflow");

    let (job, status, error) = run_failing(&repo);
    assert!(error.contains("budget exhausted"), "{status}");
    assert!(
        error.contains("--budget"),
        "the error says how to continue: {error}"
    );
    assert_eq!(status["counts"]["merged"], 1, "{status}");
    assert_eq!(status["counts"]["pending"], 2, "{status}");

    let resumed = repo.prodigy(&["resume", &job, "--budget", "1"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let branch = format!("prodigy/{job}");
    for item in ITEMS {
        assert_eq!(repo.show(&format!("{branch}:out/{item}.txt")), *item);
        assert_eq!(fake.remaining(item), 0);
    }
    let merges = repo.git(&["log", "--format=%s", &branch]);
    for item in ITEMS {
        assert_eq!(
            merges
                .matches(&format!("prodigy: merge item {item}"))
                .count(),
            1,
            "{item} merged once: {merges}"
        );
    }
}

#[test]
fn bypass_permissions_is_refused_up_front_as_root_with_the_reason() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: not running as root");
        return;
    }
    let repo = Repo::new(None);
    repo.write(
        "wf.yml",
        "- claude:\n    prompt: /do-it\n    permission_mode: bypassPermissions\n",
    );
    repo.commit_all("workflow");
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("root"), "{err}");
    assert!(!repo.claude_log.exists(), "the CLI never ran");
}
