//! Workflow YAML: arbitrary text, and mutations of upstream Prodigy's example workflows (lines
//! deleted, duplicated, re-indented, keys inserted; nodes deleted, retyped, duplicated) parse or
//! fail with a `file:line:col` inside the file, and every warning has a position too.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prodigy::workflow::{WorkflowError, check_workflow, parse};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use crate::json_mutation::{apply, mutation};

/// Upstream's example workflows and this repository's, read once: (file name, text).
fn fixtures() -> &'static [(String, String)] {
    static FIXTURES: OnceLock<Vec<(String, String)>> = OnceLock::new();
    FIXTURES.get_or_init(read_fixtures)
}

/// The fixtures as trees (a fixture that is not plain YAML, as upstream has one, has none).
fn trees() -> &'static [Value] {
    static TREES: OnceLock<Vec<Value>> = OnceLock::new();
    TREES.get_or_init(|| {
        fixtures()
            .iter()
            .filter_map(|(_, text)| serde_saphyr::from_str::<Value>(text).ok())
            .collect()
    })
}

fn read_fixtures() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["tests/fixtures/prodigy-workflows", "examples"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    assert!(out.len() >= 10, "workflow fixtures missing: {}", out.len());
    out
}

/// The outcome must be a workflow or an error at a position inside `text`.
fn check(text: &str) -> Result<(), TestCaseError> {
    let path = Path::new("fuzz.yml");
    let last_line = text.split('\n').count();
    match parse(path, text) {
        Ok(parsed) => {
            for w in &parsed.warnings {
                prop_assert!(
                    (1..=last_line).contains(&w.line) && w.column >= 1,
                    "warning at {}:{} outside the text: {}",
                    w.line,
                    w.column,
                    w.message
                );
                prop_assert!(!w.message.is_empty());
            }
            for f in check_workflow(&parsed.workflow, text, None) {
                prop_assert!(
                    (1..=last_line).contains(&f.line) && f.column >= 1,
                    "finding at {}:{} outside the text: {}",
                    f.line,
                    f.column,
                    f.message
                );
            }
        }
        Err(e @ WorkflowError::Invalid { .. }) => {
            let WorkflowError::Invalid {
                line,
                column,
                ref message,
                ref help,
                ..
            } = e
            else {
                unreachable!()
            };
            prop_assert!(
                (1..=last_line).contains(&line) && column >= 1,
                "error at {line}:{column} outside the text ({last_line} lines): {message}"
            );
            prop_assert!(!message.is_empty() && !help.is_empty());
            let at = format!("fuzz.yml:{line}:{column}: ");
            prop_assert!(e.to_string().starts_with(&at), "{e}");
        }
        Err(other) => prop_assert!(false, "parsing text cannot fail to read: {other}"),
    }
    Ok(())
}

/// YAML-shaped text: the workflow keys, indentation, flow and block syntax, noise.
fn yaml_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n"),
        Just("  "),
        Just("- "),
        Just(": "),
        Just("name"),
        Just("mode"),
        Just("mapreduce"),
        Just("setup"),
        Just("map"),
        Just("reduce"),
        Just("input"),
        Just("json_path"),
        Just("agent_template"),
        Just("commands"),
        Just("claude"),
        Just("shell"),
        Just("on_failure"),
        Just("validate"),
        Just("when"),
        Just("filter"),
        Just("max_parallel"),
        Just("timeout"),
        Just("env"),
        Just("secrets"),
        Just("capture_output"),
        Just("commit_required"),
        Just("foreach"),
        Just("write_file"),
        Just("goal_seek"),
        Just("error_policy"),
        Just("budget"),
        Just("agent"),
        Just("${item.x}"),
        Just("${"),
        Just("'"),
        Just("\""),
        Just("|"),
        Just(">-"),
        Just("&a"),
        Just("*a"),
        Just("<<: *a"),
        Just("!!str"),
        Just("!tag"),
        Just("["),
        Just("]"),
        Just("{"),
        Just("}"),
        Just(","),
        Just("#"),
        Just("---"),
        Just("..."),
        Just("~"),
        Just("null"),
        Just("true"),
        Just("yes"),
        Just("0644"),
        Just("1e999"),
        Just("-1"),
        Just("99999999999999999999"),
        Just("30s"),
        Just("\t"),
        Just("?"),
        Just("%YAML 1.2"),
        Just("é"),
    ];
    let part = prop_oneof![
        16 => piece.prop_map(str::to_string),
        2 => any::<String>(),
        // Deep nesting, block and flow: the parser must not run out of stack.
        1 => (1usize..120).prop_map(|n| {
            (0..n).map(|i| format!("{}- \n", "  ".repeat(i))).collect::<String>()
        }),
        1 => (1usize..400, prop_oneof![Just("["), Just("{a: ")]).prop_map(|(n, t)| t.repeat(n)),
    ];
    proptest::collection::vec(part, 0..40).prop_map(|p| p.concat())
}

/// A line-level change to a fixture.
#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Indent(Index, usize),
    Dedent(Index),
    InsertLine(Index, String),
    /// Replace what follows the first `: ` of a line.
    Revalue(Index, String),
    Cut(Index),
}

fn yaml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("~".to_string()),
        Just("42".to_string()),
        Just("-3".to_string()),
        Just("0.5".to_string()),
        Just("true".to_string()),
        Just("\"${item.missing}\"".to_string()),
        Just("'a == 1 &&'".to_string()),
        Just("|".to_string()),
        Just("[a, {b: c}]".to_string()),
        Just("*undefined".to_string()),
        "[a-z ${}.:-]{0,20}",
        any::<String>().prop_map(|s| s.replace('\n', " ")),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::DeleteLine),
        any::<Index>().prop_map(Edit::DuplicateLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (any::<Index>(), 1usize..5).prop_map(|(i, n)| Edit::Indent(i, n)),
        any::<Index>().prop_map(Edit::Dedent),
        (any::<Index>(), "[ ]{0,6}[a-z_]{1,16}", yaml_value())
            .prop_map(|(i, k, v)| Edit::InsertLine(i, format!("{k}: {v}"))),
        (any::<Index>(), yaml_value()).prop_map(|(i, v)| Edit::Revalue(i, v)),
        any::<Index>().prop_map(Edit::Cut),
    ]
}

fn edit_text(text: &str, e: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match e {
        Edit::DeleteLine(i) => {
            lines.remove(i.index(n));
        }
        Edit::DuplicateLine(i) => {
            let l = lines[i.index(n)].clone();
            lines.insert(i.index(n), l);
        }
        Edit::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        Edit::Indent(i, k) => lines[i.index(n)].insert_str(0, &" ".repeat(*k)),
        Edit::Dedent(i) => {
            let l = &mut lines[i.index(n)];
            *l = l.trim_start().to_string();
        }
        Edit::InsertLine(i, l) => lines.insert(i.index(n + 1), l.clone()),
        Edit::Revalue(i, v) => {
            let l = &mut lines[i.index(n)];
            if let Some(at) = l.find(": ") {
                l.truncate(at + 2);
                l.push_str(v);
            }
        }
        Edit::Cut(i) => {
            let joined = lines.join("\n");
            let mut at = i.index(joined.len() + 1);
            while !joined.is_char_boundary(at) {
                at -= 1;
            }
            return joined[..at].to_string();
        }
    }
    lines.join("\n") + "\n"
}

fn workflow_scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        Just(serde_json::json!({"shell": "echo ${item.x}"})),
        Just(serde_json::json!([{"claude": "/x ${item}"}])),
        Just(Value::String("${map.results}".into())),
        Just(Value::String("a >= ".into())),
        Just(Value::String("5m".into())),
        any::<String>().prop_map(Value::String),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config(300))]

    #[test]
    fn any_text_parses_or_fails_at_a_position(text in yaml_text()) {
        check(&text)?;
    }

    #[test]
    fn edited_fixtures_parse_or_fail_at_a_position(
        which in any::<Index>(),
        edits in proptest::collection::vec(edit(), 1..5),
    ) {
        let all = fixtures();
        let (_, text) = &all[which.index(all.len())];
        let mut text = text.clone();
        for e in &edits {
            text = edit_text(&text, e);
        }
        check(&text)?;
    }

    #[test]
    fn mutated_fixture_trees_parse_or_fail_at_a_position(
        which in any::<Index>(),
        mutations in proptest::collection::vec(mutation(workflow_scalar()), 1..5),
    ) {
        let mut doc = trees()[which.index(trees().len())].clone();
        for m in &mutations {
            apply(&mut doc, m);
        }
        let yaml = serde_saphyr::to_string(&doc).unwrap();
        check(&yaml)?;
        // JSON is YAML too: the same tree in flow style.
        check(&serde_json::to_string_pretty(&doc).unwrap())?;
    }
}
