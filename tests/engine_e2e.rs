//! The engine end to end: real git repositories, real processes, the real binary.

mod support;

use serde_json::Value;
use support::repo::{Repo, job_id, text};

/// An agent script with one behaviour per item kind.
const AGENT: &str = r#"#!/bin/sh
# usage: agent.sh KIND ID
kind="$1"; id="$2"
case "$kind" in
  ok) echo "item $id fine" ;;
  commit)
    mkdir -p out && echo "$id" > "out/$id.txt"
    git add "out/$id.txt" && git commit -q -m "item $id" ;;
  fail) echo "error: widget exploded in /tmp/work/$id/src/lib.rs:42" >&2; exit 3 ;;
  slow) sleep 41 & sleep 41 ; echo never ;;
  conflict)
    echo "shared line written by $id" > shared.txt
    git add shared.txt && git commit -q -m "item $id edits shared.txt" ;;
esac
"#;

fn items_json() -> String {
    let mut items = Vec::new();
    for i in 0..20 {
        let kind = match i {
            0..=7 => "commit",
            8..=11 => "ok",
            12..=14 => "fail",
            15..=16 => "slow",
            _ => "conflict",
        };
        // 17, 18, 19 are "conflict": all three edit shared.txt, so two of them conflict.
        items.push(serde_json::json!({"id": format!("i{i:02}"), "kind": kind}));
    }
    serde_json::to_string_pretty(&items).unwrap()
}

const WORKFLOW: &str = r#"
name: e2e-mixed
mode: mapreduce
setup:
  - shell: "cp fixtures/items.json items.json && echo setup-done"
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 4
  agent_timeout_secs: 6
  agent_template:
    - claude: "/process ${item.id}"
    - shell: "./agent.sh ${item.kind} ${item.id}"
reduce:
  - shell: "echo reduce saw ${map.successful} ok and ${map.failed} failed of ${map.total} > reduce.txt && git add reduce.txt && git commit -q -m reduce"
"#;

#[test]
fn mapreduce_job_with_failures_timeouts_commits_and_a_conflict() {
    let repo = Repo::new(None);
    repo.write_exec("agent.sh", AGENT);
    repo.write("shared.txt", "original\n");
    repo.write("fixtures/items.json", &items_json());
    repo.write("wf.yml", WORKFLOW);
    repo.commit_all("add workflow");

    let out = repo.prodigy(&["run", "wf.yml"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "items failed, so the job fails:\n{}",
        text(&out)
    );
    let job = job_id(&out);

    // Items: 8 commits + 4 ok + 1 conflict winner merged; 3 fail, 2 time out, 2 conflict.
    let status = repo.json(&["status", &job]);
    let counts = &status["counts"];
    assert_eq!(counts["total"], 20, "{status}");
    assert_eq!(counts["merged"], 13, "{status}");
    assert_eq!(counts["failed"], 7, "{status}");
    assert_eq!(counts["dlq"], 7, "{status}");
    assert_eq!(
        status["job"]["phase"], "done",
        "reduce ran after the map phase: {status}"
    );

    let dlq = repo.json(&["dlq", "list", &job]);
    let rows = dlq.as_array().unwrap();
    let class_of = |id: &str| {
        rows.iter()
            .find(|r| r["key"] == id)
            .map(|r| r["error_class"].as_str().unwrap().to_string())
    };
    for id in ["i12", "i13", "i14"] {
        assert_eq!(class_of(id).as_deref(), Some("command_failed"), "{dlq}");
    }
    for id in ["i15", "i16"] {
        assert_eq!(class_of(id).as_deref(), Some("timeout"), "{dlq}");
    }
    let conflicts = ["i17", "i18", "i19"]
        .iter()
        .filter(|id| class_of(id).as_deref() == Some("merge_conflict"))
        .count();
    assert_eq!(
        conflicts, 2,
        "exactly one of three shared.txt edits merges: {dlq}"
    );
    // The same failure on three items groups under one signature.
    let sigs: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter(|r| r["error_class"] == "command_failed")
        .map(|r| r["signature"].as_str().unwrap())
        .collect();
    assert_eq!(sigs.len(), 1, "{dlq}");

    // The failed item's history has its log, with the agent's stderr in it.
    let show = repo.json(&["dlq", "show", &job, "i12"]);
    let attempt = &show["attempts"][0];
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["exit_code"], 3);
    let log = std::fs::read_to_string(attempt["log_path"].as_str().unwrap()).unwrap();
    assert!(log.contains("widget exploded"), "{log}");

    // The job branch holds each committing item exactly once, plus reduce's commit.
    let branch = format!("prodigy/{job}");
    for i in 0..8 {
        assert_eq!(
            repo.show(&format!("{branch}:out/i{i:02}.txt")),
            format!("i{i:02}")
        );
    }
    let reduce = repo.show(&format!("{branch}:reduce.txt"));
    assert_eq!(reduce, "reduce saw 13 ok and 7 failed of 20");
    let merges = repo.git(&[
        "rev-list",
        "--merges",
        "--count",
        &format!("main..{branch}"),
    ]);
    assert_eq!(
        merges, "9",
        "8 committing items + 1 conflict winner merged with --no-ff"
    );

    // Nothing left behind but the job branch.
    assert_eq!(repo.prodigy_branches(), vec![branch.clone()]);
    assert!(
        repo.extra_worktrees().is_empty(),
        "{:?}",
        repo.extra_worktrees()
    );

    // No sleeping agent survived its timeout.
    let ps = std::process::Command::new("sh")
        // `sleep 41` is this test's own marker: other tests sleep too, at the same time.
        .args(["-c", "ps -eo args | grep -c '[s]leep 41' || true"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "0",
        "timed-out agents were killed with their children"
    );

    // The AI CLI ran once per item with the interpolated command.
    let calls = std::fs::read_to_string(&repo.claude_log).unwrap();
    assert_eq!(calls.lines().count(), 20, "{calls}");
    assert!(
        calls.lines().any(|l| l.ends_with("/process i07")),
        "{calls}"
    );

    // Every transition is in the event log.
    let out = repo.prodigy(&["events", &job, "--json"]);
    let kinds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for k in [
        "job_started",
        "items_loaded",
        "item_started",
        "item_failed",
        "item_merged",
        "job_finished",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| *k == "item_started").count(), 20);

    // Retrying the conflicts one at a time: each starts from the job branch as it is then, so
    // both merge on top of the work already there.
    let out = repo.prodigy(&[
        "dlq",
        "retry",
        &job,
        "--error-class",
        "merge_conflict",
        "--max-parallel",
        "1",
    ]);
    let dlq = repo.json(&["dlq", "list", &job]);
    // The DLQ lists rows by first failure; compare as a set.
    let left: std::collections::BTreeSet<&str> = dlq
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        left,
        ["i12", "i13", "i14", "i15", "i16"].into_iter().collect(),
        "conflicts left the DLQ: {}",
        text(&out)
    );
    assert_eq!(
        repo.git(&[
            "rev-list",
            "--merges",
            "--count",
            &format!("main..{branch}")
        ]),
        "11"
    );
    assert!(repo.extra_worktrees().is_empty());
}

/// Sixteen agents at once never trip over each other creating or resetting worktrees.
#[test]
fn sixteen_parallel_agents_have_no_spurious_failures() {
    let repo = Repo::new(None);
    let items: Vec<Value> = (0..64)
        .map(|i| serde_json::json!({"id": format!("n{i}")}))
        .collect();
    repo.write("items.json", &Value::Array(items).to_string());
    repo.write(
        "wf.yml",
        "mode: mapreduce\nmap:\n  input: items.json\n  json_path: \"$[*]\"\n  max_parallel: 16\n  agent_template:\n    - shell: \"echo ${item.id} > ${item.id}.txt && git add . && git commit -q -m ${item.id}\"\n      commit_required: true\n",
    );
    repo.commit_all("wf");
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = repo.json(&["status", &job_id(&out)]);
    assert_eq!(status["counts"]["merged"], 64, "{status}");
    assert_eq!(status["counts"]["failed"], 0, "{status}");
    assert!(repo.extra_worktrees().is_empty());
    assert_eq!(repo.prodigy_branches().len(), 1);
}

/// Step timeouts, on_failure retries, `when` and captures in a standard workflow.
#[test]
fn step_features_work_for_real() {
    let repo = Repo::new(None);
    let counter = tempfile::tempdir_in(&repo.out).unwrap();
    let c = counter.path().display();
    repo.write(
        "steps.yml",
        &format!(
            r#"
commands:
  - shell: "echo 3"
    capture: n
    capture_format: number
  - shell: "echo '{{\"a\": {{\"b\": [7, 8]}}}}'"
    capture: doc
    capture_format: json
  - shell: "echo ${{doc.a.b[1]}} > picked.txt"
  - shell: "echo skipped > skipped.txt"
    when: "${{n}} > 5"
  - shell: "echo ran > ran.txt"
    when: "${{n}} == 3"
  # Fails twice, then succeeds: on_failure runs after each failed try.
  - shell: "echo x >> {c}/tries; [ $(wc -l < {c}/tries) -ge 3 ]"
    on_failure:
      shell: "echo handled >> {c}/handler"
      max_attempts: 3
  - shell: "git add . && git commit -q -m steps"
"#
        ),
    );
    repo.write("slow.yml", "- shell: \"sleep 30\"\n  timeout: 1\n");
    repo.commit_all("wfs");

    let out = repo.prodigy(&["run", "steps.yml"]);
    assert!(out.status.success(), "{}", text(&out));
    let branch = format!("prodigy/{}", job_id(&out));
    assert_eq!(repo.show(&format!("{branch}:picked.txt")), "8");
    assert_eq!(repo.show(&format!("{branch}:ran.txt")), "ran");
    assert!(
        repo.git(&["ls-tree", "--name-only", &branch])
            .lines()
            .all(|f| f != "skipped.txt")
    );
    let tries = std::fs::read_to_string(counter.path().join("tries")).unwrap();
    let handled = std::fs::read_to_string(counter.path().join("handler")).unwrap();
    assert_eq!((tries.lines().count(), handled.lines().count()), (3, 2));

    let started = std::time::Instant::now();
    let out = repo.prodigy(&["run", "slow.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the step timeout killed sleep"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("timed out"),
        "{}",
        text(&out)
    );
}

#[test]
fn interpolated_values_reach_the_shell_as_data() {
    let repo = Repo::new(None);
    // Where agents may write: the shell, not the sandbox, must be what keeps these files away.
    let trap = tempfile::tempdir_in(&repo.out).unwrap();
    let t = trap.path().display().to_string();
    let names = [
        format!("'; touch {t}/pwned1; echo '"),
        format!("$(touch {t}/pwned2)"),
        format!("`touch {t}/pwned3`"),
        format!("\"; touch {t}/pwned4; echo \""),
    ];
    let items: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"id": format!("x{i}"), "name": n}))
        .collect();
    repo.write("items.json", &Value::Array(items).to_string());
    repo.write(
        "wf.yml",
        r#"
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  agent_template:
    - shell: |
        echo '${item.name}' > single-${item.id}.txt
        echo "${item.name}" > double-${item.id}.txt
        echo ${item.name} > bare-${item.id}.txt
        git add . && git commit -q -m "${item.id}"
"#,
    );
    repo.commit_all("wf");
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert!(out.status.success(), "{}", text(&out));
    let job = job_id(&out);
    let branch = format!("prodigy/{job}");
    for (i, name) in names.iter().enumerate() {
        for form in ["single", "double", "bare"] {
            let got = repo.show(&format!("{branch}:{form}-x{i}.txt"));
            assert_eq!(&got, name, "{form} quoting changed the value");
        }
    }
    let entries: Vec<_> = std::fs::read_dir(trap.path()).unwrap().collect();
    assert!(
        entries.is_empty(),
        "an interpolated value was executed: {entries:?}"
    );
}

#[test]
fn validate_reports_file_line_and_column() {
    let repo = Repo::new(None);
    repo.write("bad.yml", "name: x\nmode: mapreduce\nmap:\n  input: a.json\n  agent_template:\n    - shell: \"echo: ok\n");
    let out = repo.prodigy(&["validate", "bad.yml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yml:"), "{err}");

    repo.write("good.yml", "- shell: echo hi\n  bogus_key: 1\n");
    let out = repo.prodigy(&["validate", "good.yml"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("good.yml:2:") && err.contains("bogus_key"),
        "{err}"
    );
}

#[test]
fn a_broken_filter_or_when_fails_validate_and_run_before_anything_starts() {
    let repo = Repo::new(None);
    repo.write(
        "filter.yml",
        "mode: mapreduce\nsetup:\n  - shell: \"touch setup-ran\"\nmap:\n  input: items.json\n  filter: \"severity == 'high' &&\"\n  agent_template:\n    - shell: \"echo ${item}\"\n",
    );
    let out = repo.prodigy(&["validate", "filter.yml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("filter.yml:6:11: invalid filter expression")
            && err.contains("ends too early")
            && err.contains("at character 22"),
        "{err}"
    );
    let out = repo.prodigy(&["run", "filter.yml"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("filter.yml:6:11"), "{}", text(&out));
    assert!(
        !repo.path.join("setup-ran").exists(),
        "setup ran although the filter is broken"
    );

    repo.write(
        "when.yml",
        "- shell: \"true\"\n- shell: \"touch ran\"\n  when: \"${flag} = = 'x'\"\n",
    );
    let out = repo.prodigy(&["validate", "when.yml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("when.yml:3:9: invalid when expression") && err.contains("expected a value"),
        "{err}"
    );
}

/// `filter:` and `when:` share one truthiness: the text "no" is false in both, and a text that is
/// no boolean stops the run with the reason instead of counting as true or false.
#[test]
fn filter_and_when_share_one_truthiness_at_run_time() {
    let repo = Repo::new(None);
    repo.write(
        "items.json",
        r#"[{"id": "a", "ok": "no"}, {"id": "b", "ok": "yes"}, {"id": "c", "ok": 0}]"#,
    );
    repo.write(
        "wf.yml",
        "mode: mapreduce\nmap:\n  input: items.json\n  filter: \"ok\"\n  agent_template:\n    - shell: \"echo ${item.id} > ${item.id}.txt && git add . && git commit -q -m ${item.id}\"\n      commit_required: true\n",
    );
    repo.write(
        "when.yml",
        "- shell: echo no\n  capture: flag\n- shell: \"touch skipped.txt\"\n  when: \"${flag}\"\n- shell: echo maybe\n  capture: flag\n- shell: \"touch never.txt\"\n  when: \"${flag}\"\n",
    );
    repo.commit_all("wf");
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = repo.json(&["status", &job_id(&out)]);
    assert_eq!(status["counts"]["merged"], 1, "{status}");
    assert_eq!(repo.show(&format!("prodigy/{}:b.txt", job_id(&out))), "b");

    let out = repo.prodigy(&["run", "when.yml"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("'maybe' is not a boolean"),
        "{}",
        text(&out)
    );
    assert!(!repo.path.join("skipped.txt").exists() && !repo.path.join("never.txt").exists());
}

#[test]
fn standard_workflow_runs_steps_in_order_and_reports_a_failing_step() {
    let repo = Repo::new(None);
    repo.write(
        "ok.yml",
        "name: std\ncommands:\n  - shell: \"echo one\"\n    capture: first\n  - shell: \"echo ${first} > two.txt && git add . && git commit -q -m two\"\n    commit_required: true\n",
    );
    repo.write("fail.yml", "- shell: \"echo about to fail\"\n- shell: \"echo bad thing >&2; exit 4\"\n- shell: \"touch never.txt\"\n");
    repo.commit_all("wfs");

    let out = repo.prodigy(&["run", "ok.yml"]);
    assert!(out.status.success(), "{}", text(&out));
    let job = job_id(&out);
    assert_eq!(repo.show(&format!("prodigy/{job}:two.txt")), "one");
    // Following a finished job's events prints them and ends.
    let follow = repo.prodigy(&["events", &job, "--follow"]);
    assert!(follow.status.success(), "{}", text(&follow));
    assert!(
        String::from_utf8_lossy(&follow.stdout).contains("job_finished"),
        "{}",
        text(&follow)
    );
    assert!(repo.extra_worktrees().is_empty());

    let out = repo.prodigy(&["run", "fail.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("line 2") && stdout.contains("exit code 4") && stdout.contains("bad thing"),
        "{stdout}"
    );
}

/// On a machine where git has no identity, agents' commits and merges still work.
#[test]
fn commits_work_without_a_git_identity() {
    let repo = Repo::new(None);
    repo.write(
        "wf.yml",
        "mode: mapreduce\nmap:\n  input: echo '[1, 2]'\n  agent_template:\n    - shell: \"echo ${item} > f${item} && git add . && git commit -qm ${item}\"\n",
    );
    repo.commit_all("wf");
    repo.git(&["config", "--unset", "user.email"]);
    repo.git(&["config", "--unset", "user.name"]);
    let out = repo
        .command(&["run", "wf.yml"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("EMAIL")
        .env_remove("GIT_COMMITTER_EMAIL")
        .env_remove("GIT_AUTHOR_EMAIL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let branch = format!("prodigy/{}", job_id(&out));
    assert_eq!(
        repo.git(&["log", "-1", "--format=%an <%ae>", &branch]),
        "prodigy <prodigy@localhost>"
    );
}

/// A secret env var's value never reaches a log, an error message or the database.
#[test]
fn secret_values_are_masked() {
    let repo = Repo::new(None);
    repo.write(
        "secret.yml",
        "env:\n  API_TOKEN:\n    secret: true\n    value: \"${MY_TOKEN}\"\ncommands:\n  - shell: \"echo using $API_TOKEN; echo bad $API_TOKEN >&2; exit 1\"\n",
    );
    repo.commit_all("wf");
    let out = repo
        .command(&["run", "secret.yml"])
        .env("MY_TOKEN", "tok-9f8e7d6c5b")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        !all.contains("tok-9f8e7d6c5b") && all.contains("bad ***"),
        "{all}"
    );
    let job = job_id(&out);
    let events = repo.prodigy(&["events", &job, "--json"]);
    assert!(
        !text(&events).contains("tok-9f8e7d6c5b"),
        "{}",
        text(&events)
    );
    for entry in walk(&repo.home.join("logs").join(&job)) {
        let log = std::fs::read_to_string(&entry).unwrap();
        assert!(
            !log.contains("tok-9f8e7d6c5b") && log.contains("using ***"),
            "{log}"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    assert!(
        !out.is_empty() || dir.ends_with("items"),
        "no logs under {}",
        dir.display()
    );
    out
}

/// A failing setup or reduce step fails the job, naming the step, the exit code and stderr.
#[test]
fn failing_setup_or_reduce_fails_the_job_with_the_step() {
    let repo = Repo::new(None);
    repo.write(
        "setup.yml",
        "mode: mapreduce\nsetup:\n  - shell: \"echo fine\"\n  - shell: \"echo no input for you >&2; exit 7\"\nmap:\n  input: items.json\n  agent_template:\n    - shell: \"true\"\n",
    );
    repo.write(
        "reduce.yml",
        "mode: mapreduce\nmap:\n  input: echo '[1]'\n  agent_template:\n    - shell: \"true\"\nreduce:\n  - shell: \"echo summary broke >&2; exit 9\"\n",
    );
    repo.commit_all("wfs");
    let out = repo.prodigy(&["run", "setup.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("setup failed")
            && stdout.contains("line 4")
            && stdout.contains("exit code 7")
            && stdout.contains("no input for you"),
        "{stdout}"
    );
    let status = repo.json(&["status", &job_id(&out)]);
    assert_eq!(status["job"]["phase"], "setup", "{status}");

    let out = repo.prodigy(&["run", "reduce.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("reduce failed")
            && stdout.contains("exit code 9")
            && stdout.contains("summary broke"),
        "{stdout}"
    );
    let status = repo.json(&["status", &job_id(&out)]);
    assert_eq!(status["job"]["phase"], "reduce", "{status}");
    assert_eq!(status["counts"]["merged"], 1, "{status}");
}

/// A stub AI CLI that reports $1 per run. `slow-*` items wait (until `quick` exists in `sync`)
/// after saying they started; `fast-*` items wait for a slow one to have started, so the budget
/// runs out while a slow agent is running.
fn budget_stub(sync: &std::path::Path) -> String {
    format!(
        r#"#!/bin/sh
for prompt; do :; done
case "$prompt" in
  *slow*)
    touch "{sync}/slow-started"
    [ -e "{sync}/quick" ] || sleep 300 ;;
  *fast*)
    while [ ! -e "{sync}/slow-started" ]; do sleep 0.05; done ;;
esac
printf '{{"type":"system","subtype":"init","session_id":"s","model":"stub-model"}}\n'
printf '{{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"done","session_id":"s","total_cost_usd":1,"usage":{{"input_tokens":10,"output_tokens":5}}}}\n'
"#,
        sync = sync.display()
    )
}

const BUDGET_WF: &str = r#"
name: budget
mode: mapreduce
budget:
  max_cost_usd: 0.5
  grace: 0.3
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 2
  agent_template:
    - claude: "/process ${item.id}"
"#;

#[test]
fn a_spent_budget_stops_running_agents_after_the_grace_and_leaves_their_items_pending() {
    for (backend, db) in support::repo::backends() {
        let repo = Repo::new(db.as_ref().map(|d| d.url()));
        std::fs::write(repo.claude_bin(), budget_stub(&repo.out)).unwrap();
        repo.write(
            "items.json",
            r#"[{"id":"fast-a"},{"id":"slow-b"},{"id":"c"},{"id":"d"}]"#,
        );
        repo.write("wf.yml", BUDGET_WF);
        repo.commit_all("workflow");

        let out = repo.prodigy(&["run", "wf.yml"]);
        assert_eq!(out.status.code(), Some(3), "[{backend}] {}", text(&out));
        let job = job_id(&out);
        assert!(
            text(&out).contains(&format!("prodigy resume {job} --budget <USD>")),
            "[{backend}] {}",
            text(&out)
        );
        let status = repo.json(&["status", &job]);
        assert_eq!(
            status["job"]["status"], "budget_exhausted",
            "[{backend}] {status}"
        );
        let error = status["job"]["error"].as_str().unwrap();
        assert!(
            error.contains("$1.0000 spent of a $0.50 budget") && error.contains("300 ms"),
            "[{backend}] {error}"
        );
        let c = &status["counts"];
        assert_eq!(c["merged"], 1, "[{backend}] {status}");
        assert_eq!(
            c["pending"], 3,
            "[{backend}] slow-b is pending again: {status}"
        );
        assert_eq!(c["failed"], 0, "[{backend}] {status}");
        assert_eq!(
            c["dlq"], 0,
            "[{backend}] the stopped agent is no failure: {status}"
        );
        let events = repo.events(&job);
        let stopped: Vec<&Value> = events
            .iter()
            .filter(|e| e["kind"] == "item_stopped")
            .collect();
        assert_eq!(stopped.len(), 1, "[{backend}] {events:?}");
        assert_eq!(stopped[0]["data"]["key"], "slow-b", "[{backend}]");
        let exhausted = events
            .iter()
            .find(|e| e["kind"] == "budget_exhausted")
            .expect("a budget_exhausted event");
        assert_eq!(exhausted["data"]["spent"]["cost_usd"], 1.0, "[{backend}]");

        // A resume with a raised budget finishes the job, each item merged once.
        std::fs::write(repo.out.join("quick"), "").unwrap();
        let resumed = repo.prodigy(&["resume", &job, "--budget", "100"]);
        assert!(resumed.status.success(), "[{backend}] {}", text(&resumed));
        let status = repo.json(&["status", &job]);
        assert_eq!(status["job"]["status"], "succeeded", "[{backend}] {status}");
        assert_eq!(status["counts"]["merged"], 4, "[{backend}] {status}");
        // The stopped agent never printed its result, so it reported no cost: one run per item.
        assert_eq!(
            status["usage"]["total"]["cost_usd"], 4.0,
            "[{backend}] {status}"
        );
    }
}

/// `max_duration` stops a job whose agents are all still running: the wall-time limit passes,
/// the grace ends, the agent is stopped and its item is pending.
#[test]
fn the_wall_time_budget_stops_agents_that_are_still_running() {
    let repo = Repo::new(None);
    std::fs::write(repo.claude_bin(), budget_stub(&repo.out)).unwrap();
    repo.write("items.json", r#"[{"id":"slow-x"}]"#);
    repo.write(
        "wf.yml",
        &BUDGET_WF.replace("max_cost_usd: 0.5", "max_duration: 1"),
    );
    repo.commit_all("workflow");
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let job = job_id(&out);
    let status = repo.json(&["status", &job]);
    assert_eq!(status["job"]["status"], "budget_exhausted", "{status}");
    let error = status["job"]["error"].as_str().unwrap();
    assert!(
        error.contains("of wall time used of a 1s budget"),
        "{error}"
    );
    assert_eq!(status["counts"]["pending"], 1, "{status}");
    assert_eq!(status["counts"]["dlq"], 0, "{status}");
}
