//! The lint that CI runs over what GitHub and Docker execute (`.ci/lint`): it passes on the
//! repository's workflows, action metadata and Dockerfile, and fails on deliberately broken ones
//! (tests/fixtures/lint), naming each mistake. The linters come from PyPI
//! (`pip install -r .ci/requirements-lint.txt`); without them these tests say they skip, unless
//! PRODIGY_REQUIRE_TOOLS=1 (set by .ci/run) makes that a failure.

use std::path::Path;
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `.ci/lint ARGS`, or `None` when the linters are not installed (and not required).
fn lint(args: &[&str]) -> Option<Output> {
    let missing: Vec<&str> = ["actionlint", "check-jsonschema", "hadolint", "shellcheck"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "{} not on PATH: install the linters with `pip install -r .ci/requirements-lint.txt`",
            missing.join(", ")
        );
        if std::env::var("PRODIGY_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{msg} (PRODIGY_REQUIRE_TOOLS=1 makes this a failure)");
        }
        eprintln!("skipping the lint tests: {msg}");
        return None;
    }
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join(".ci/lint"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap();
    Some(out)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_repository_passes_its_lint() {
    let Some(out) = lint(&[]) else { return };
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    for checked in [
        "actionlint",
        "action.yml",
        "hadolint: Dockerfile",
        "shellcheck",
    ] {
        assert!(text.contains(checked), "{checked} did not run: {text}");
    }
    assert!(text.contains("lint: all checks passed"), "{text}");
}

#[test]
fn a_broken_workflow_fails_the_lint_naming_each_mistake() {
    let Some(out) = lint(&["--workflow", "tests/fixtures/lint/broken-workflow.yml"]) else {
        return;
    };
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for mistake in [
        "broken-workflow.yml:7:5: unexpected key \"type\" for \"pull_request\" section",
        "broken-workflow.yml:10:11: \"writ\" is invalid as permission of scope \"checks\"",
        "broken-workflow.yml:21:24: property \"prodgy\" is not defined",
        "broken-workflow.yml:22:9: unexpected key \"timeout-minute\"",
        "broken-workflow.yml:24:24: \"github.event.pull_request.title\" is potentially untrusted",
    ] {
        assert!(text.contains(mistake), "not reported: {mistake}\n{text}");
    }
}

#[test]
fn broken_action_metadata_fails_the_lint() {
    let Some(out) = lint(&["--action", "tests/fixtures/lint/broken-action.yml"]) else {
        return;
    };
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("$.inputs.workflow.required: 'yes-please' is not of type 'boolean'"),
        "{text}"
    );
    assert!(text.contains("$.runs"), "{text}");
}

#[test]
fn a_broken_dockerfile_fails_the_lint() {
    let Some(out) = lint(&["--dockerfile", "tests/fixtures/lint/broken.Dockerfile"]) else {
        return;
    };
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for rule in ["DL3007", "DL3003", "DL3014", "DL3025"] {
        assert!(text.contains(rule), "{rule} not reported: {text}");
    }
}

/// The manifest a user creates the App from asks for exactly what the README lists.
#[test]
fn the_app_manifest_asks_for_the_permissions_and_events_the_readme_lists() {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("app-manifest.json")).unwrap(),
    )
    .expect("app-manifest.json is JSON");
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let permissions = manifest["default_permissions"].as_object().unwrap();
    let listed = [
        ("checks", "write", "Checks: write"),
        ("contents", "read", "Contents: read"),
        ("issues", "write", "Issues: write"),
        ("pull_requests", "read", "Pull requests: read"),
        ("metadata", "read", "Metadata: read"),
    ];
    assert_eq!(permissions.len(), listed.len(), "{permissions:?}");
    for (key, level, words) in listed {
        assert_eq!(permissions[key], level, "{key}");
        assert!(
            readme.contains(&format!("*{words}*")),
            "README lacks {words}"
        );
    }
    let events: Vec<&str> = manifest["default_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["pull_request", "issue_comment", "check_run", "check_suite"]
    );
    for words in [
        "*Pull request*",
        "*Issue comment*",
        "*Check\nrun*",
        "*Check suite*",
    ] {
        assert!(
            readme.contains(words) || readme.contains(&words.replace('\n', " ")),
            "README lacks {words}"
        );
    }
    assert!(
        manifest["hook_attributes"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/webhook")
    );
}
