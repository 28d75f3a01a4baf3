//! What scripts use: shell completions (`prodigy completions SHELL`) and `--json` on
//! `validate` and `dlq purge`, through the real binary.

mod support;

use support::repo::{Repo, text};

#[test]
fn the_bash_completion_script_loads_and_completes_prodigy() {
    let repo = Repo::new(None);
    let out = repo.prodigy(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let script = repo.out.join("prodigy.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // bash loads it, and its function completes `prodigy ca<TAB>` to `cancel`.
    let check = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && COMP_WORDS=(prodigy ca) && COMP_CWORD=1 && COMP_LINE='prodigy ca' \
             && COMP_POINT=10 && _prodigy prodigy ca prodigy && echo \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .expect("bash runs");
    assert!(check.status.success(), "{}", text(&check));
    let words = String::from_utf8_lossy(&check.stdout).to_string();
    assert_eq!(
        words.split_whitespace().collect::<Vec<_>>(),
        ["cancel"],
        "{}",
        text(&check)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = repo.prodigy(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("dlq"),
            "{shell}"
        );
    }
    let unknown = repo.prodigy(&["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
}

#[test]
fn validate_and_dlq_purge_speak_json() {
    let repo = Repo::new(None);
    repo.write("ok.yml", "- shell: echo hi\n");
    repo.write(
        "unresolved.yml",
        "- shell: echo hi\n- shell: echo ${nope}\n",
    );
    repo.write("bad.yml", "name: x\nbogus: [\n");
    repo.commit_all("workflows");

    let ok = repo.json(&["validate", "ok.yml"]);
    assert_eq!(ok["valid"], true, "{ok}");
    assert_eq!(ok["errors"], serde_json::json!([]), "{ok}");
    let unresolved = repo.prodigy(&["validate", "unresolved.yml", "--json"]);
    assert_eq!(unresolved.status.code(), Some(2), "{}", text(&unresolved));
    let doc: serde_json::Value = serde_json::from_slice(&unresolved.stdout).unwrap();
    assert_eq!(doc["valid"], false, "{doc}");
    assert_eq!(doc["errors"][0]["line"], 2, "{doc}");
    assert!(
        doc["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{doc}"
    );
    let bad = repo.json(&["validate", "bad.yml"]);
    assert_eq!(
        (bad["errors"][0]["line"].as_u64(), bad["kind"].is_null()),
        (Some(2), true),
        "{bad}"
    );

    let run = repo.prodigy(&["run", "ok.yml"]);
    let job = support::repo::job_id(&run);
    let purged = repo.json(&["dlq", "purge", &job]);
    assert_eq!(purged, serde_json::json!({"job": job, "removed": 0}));
}

#[test]
fn status_words_are_coloured_only_when_asked_or_on_a_terminal() {
    let repo = Repo::new(None);
    repo.write("ok.yml", "- shell: echo hi\n");
    repo.commit_all("workflow");
    let run = repo.prodigy(&["run", "ok.yml"]);
    // stdout is a pipe here: `auto` (the default) writes no escapes.
    assert!(!run.stdout.contains(&0x1b), "{}", text(&run));
    let job = support::repo::job_id(&run);

    let coloured = repo.prodigy(&["jobs", "--color", "always"]);
    let table = String::from_utf8_lossy(&coloured.stdout).to_string();
    assert!(table.contains("\x1b[32msucceeded\x1b[0m"), "{table:?}");
    let status = repo
        .command(&["status", &job])
        .env("PRODIGY_COLOR", "always")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("\x1b[32msucceeded"),
        "{}",
        text(&status)
    );
    for args in [
        &["jobs", "--color", "never"][..],
        &["jobs", "--json", "--color", "always"],
    ] {
        let out = repo.prodigy(args);
        assert!(
            !out.stdout.contains(&0x1b),
            "prodigy {args:?}: {}",
            text(&out)
        );
    }
}
