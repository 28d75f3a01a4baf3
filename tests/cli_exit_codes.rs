//! README "Exit codes", command by command through the real binary: bad input is exit 2 (a
//! missing, invalid or unresolvable workflow; an unknown job or item), a job that ran is 0 or 1.

mod support;

use support::repo::{Repo, text};

/// Runs `prodigy ARGS` and asserts its exit code and that it said why on stderr.
fn expect(repo: &Repo, args: &[&str], code: i32, stderr_has: &str) {
    let out = repo.prodigy(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "prodigy {args:?}\n{}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(stderr_has),
        "prodigy {args:?} should say {stderr_has:?}\n{}",
        text(&out)
    );
}

#[test]
fn bad_input_is_exit_2_for_every_command() {
    let repo = Repo::new(None);
    repo.write("bad.yml", "name: x\nbogus: [\n");
    repo.write("unresolved.yml", "- shell: echo ${nope}\n");
    repo.write("ok.yml", "- shell: echo hi\n");
    repo.write("fails.yml", "- shell: exit 1\n");
    repo.commit_all("workflows");

    expect(
        &repo,
        &["run", "missing.yml"],
        2,
        "cannot read the workflow file",
    );
    expect(&repo, &["run", "bad.yml"], 2, "bad.yml:2:");
    expect(&repo, &["validate", "bad.yml"], 2, "bad.yml:2:");
    expect(&repo, &["validate", "missing.yml"], 2, "missing.yml");
    expect(&repo, &["run", "unresolved.yml"], 2, "can never resolve");

    let unknown = "0123abcd";
    for args in [
        vec!["status", unknown],
        vec!["resume", unknown],
        vec!["events", unknown],
        vec!["logs", unknown],
        vec!["dlq", "list", unknown],
        vec!["dlq", "show", unknown, "item"],
        vec!["dlq", "retry", unknown],
        vec!["dlq", "purge", unknown],
        vec!["dlq", "export", unknown],
        vec!["cancel", unknown],
    ] {
        expect(&repo, &args, 2, "no job matches '0123abcd'");
    }

    // A job that ran: 0 when it succeeded, 1 when it failed; an unknown item of it is bad input.
    let ok = repo.prodigy(&["run", "ok.yml"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let job = support::repo::job_id(&ok);
    expect(
        &repo,
        &["dlq", "show", &job, "no-such-item"],
        2,
        "no-such-item",
    );
    let failed = repo.prodigy(&["run", "fails.yml"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let ok_status = repo.prodigy(&["status", &job]);
    assert_eq!(ok_status.status.code(), Some(0), "{}", text(&ok_status));
}

/// Misspelt placeholders (issue 15): `validate` names each at file:line:col with "did you mean"
/// and exit 2; `run` refuses a reduce typo before any job exists, and an item field that none of
/// the items setup wrote has fails the job before any agent runs.
#[test]
fn misspelt_placeholders_fail_before_anything_runs() {
    let repo = Repo::new(None);
    repo.write("items.json", r#"[{"name": "a"}, {"name": "b"}]"#);
    let map = "mode: mapreduce\nmap:\n  input: items.json\n  agent_template:\n";
    repo.write(
        "typos.yml",
        &format!(
            "{map}    - shell: echo ${{item.nmae}}\nreduce:\n  - shell: echo ${{map.sucessful}}\n"
        ),
    );
    repo.write(
        "reduce_typo.yml",
        &format!(
            "{map}    - shell: echo ${{item.name}}\nreduce:\n  - shell: echo ${{map.sucessful}}\n"
        ),
    );
    repo.write(
        "generated.yml",
        "mode: mapreduce\nsetup:\n  - shell: \"echo '[{\\\"name\\\": 1}]' > gen.json\"\n\
         map:\n  input: gen.json\n  agent_template:\n    - shell: echo ${item.nmae}\n",
    );
    repo.commit_all("workflows");

    let out = repo.prodigy(&["validate", "typos.yml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typos.yml:5:19: error: shell: ${item.nmae} can never resolve")
            && err.contains("did you mean ${item.name}?"),
        "{err}"
    );
    assert!(
        err.contains("typos.yml:7:17: error: shell: ${map.sucessful} can never resolve")
            && err.contains("did you mean ${map.successful}?"),
        "{err}"
    );
    let doc = repo.json(&["validate", "typos.yml"]);
    assert_eq!(doc["valid"], false, "{doc}");
    assert_eq!(doc["errors"][0]["column"], 19, "{doc}");

    // The reduce typo is refused before a job is created, so the map never ran.
    expect(
        &repo,
        &["run", "reduce_typo.yml"],
        2,
        "reduce_typo.yml:7:17: shell: ${map.sucessful} can never resolve",
    );
    assert_eq!(repo.json(&["jobs"]), serde_json::json!([]));

    // Items that only setup writes: validate cannot know them; the run stops after setup.
    let ok = repo.prodigy(&["validate", "generated.yml"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let run = repo.prodigy(&["run", "generated.yml"]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(
        text(&run).contains("did you mean ${item.name}?"),
        "{}",
        text(&run)
    );
    let job = support::repo::job_id(&run);
    let status = repo.json(&["status", &job]);
    assert_eq!(status["job"]["status"], "failed", "{status}");
    assert_eq!(
        status["counts"]["total"], 0,
        "no item was recorded or run: {status}"
    );
}
