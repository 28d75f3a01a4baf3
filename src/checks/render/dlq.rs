//! The DLQ as a check run shows it: grouped by error signature in the summary, and one
//! annotation per row at the file and line its item names.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde_json::Value;

use crate::github::{Annotation, AnnotationLevel};
use crate::store::{Attempt, DlqItem};
use crate::text::{human_millis, one_line};
use crate::types::ItemKey;

use super::{
    ANNOTATION_CAP, FinalInput, KEYS_PER_SIGNATURE, MESSAGE_TAIL_LINES, WorkflowFacts, inline_code,
    last_line, tail_lines, timestamp,
};

/// The DLQ grouped by error signature, the largest group first.
pub(super) fn dlq_by_signature(dlq: &[DlqItem]) -> String {
    let mut groups: BTreeMap<&str, Vec<&DlqItem>> = BTreeMap::new();
    for row in dlq {
        groups.entry(row.signature.as_str()).or_default().push(row);
    }
    let mut groups: Vec<(&str, Vec<&DlqItem>)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut out = format!(
        "### Dead-letter queue: {} items, {} distinct errors\n\n",
        dlq.len(),
        groups.len()
    );
    for (signature, rows) in groups {
        let first = rows[0];
        let short_sig: String = signature.chars().take(12).collect();
        out.push_str(&format!(
            "**{} × {}** (signature {})\n\n",
            rows.len(),
            inline_code(first.error_class.as_str()),
            inline_code(&short_sig)
        ));
        out.push_str(&format!(
            "> {}\n\n",
            one_line(&last_line(&first.last_message), 200)
        ));
        let keys: Vec<String> = rows
            .iter()
            .take(KEYS_PER_SIGNATURE)
            .map(|r| inline_code(&r.key.0))
            .collect();
        let more = rows.len().saturating_sub(KEYS_PER_SIGNATURE);
        out.push_str(&format!("Items: {}", keys.join(", ")));
        if more > 0 {
            out.push_str(&format!(" and {more} more"));
        }
        out.push_str("\n\n");
    }
    out
}

/// Where an item points in the repository, read from its data (documented mapping):
///
/// 1. `location: {file, line, end_line}`, the shape of debtmap-style items;
/// 2. else a top-level `file` or `path` string with `line` / `end_line` beside it.
///
/// `start_line` is accepted wherever `line` is. A line is a positive integer or a string of one;
/// a file without a usable line points at line 1, and `end_line` below the start is ignored. The
/// path must lie inside the repository: `./` is dropped, an absolute path under `repo_root`
/// becomes relative, and any other absolute path or one with `..` is not used (the annotation
/// then points at the workflow, see [`annotation`]).
pub fn item_location(data: &Value, repo_root: &str) -> Option<(String, u32, u32)> {
    let from = |obj: &Value, file_keys: &[&str]| -> Option<(String, u32, u32)> {
        let file = file_keys
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str))?;
        let path = repo_relative(file, repo_root)?;
        let start = line_of(obj, &["line", "start_line"]).unwrap_or(1);
        let end = line_of(obj, &["end_line"])
            .filter(|e| *e >= start)
            .unwrap_or(start);
        Some((path, start, end))
    };
    data.get("location")
        .filter(|l| l.is_object())
        .and_then(|l| from(l, &["file", "path"]))
        .or_else(|| from(data, &["file", "path"]))
}

fn line_of(obj: &Value, keys: &[&str]) -> Option<u32> {
    keys.iter().find_map(|k| {
        let v = obj.get(*k)?;
        let n = v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))?;
        u32::try_from(n).ok().filter(|n| *n > 0)
    })
}

/// `file` as a path relative to the repository root, if it lies inside it.
pub(super) fn repo_relative(file: &str, repo_root: &str) -> Option<String> {
    let p = Path::new(file.trim());
    let p = if p.is_absolute() {
        p.strip_prefix(repo_root).ok()?
    } else {
        p
    };
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The annotation of one DLQ row; `history` is the item's attempts, oldest first.
pub fn annotation(
    row: &DlqItem,
    history: &[&Attempt],
    facts: &WorkflowFacts,
    repo_root: &str,
) -> Annotation {
    let (path, start_line, end_line) = item_location(&row.data, repo_root).unwrap_or_else(|| {
        let line = facts.agent_template_line.unwrap_or(1);
        (facts.path.clone(), line, line)
    });
    let attempts = if row.failure_count == 1 {
        "1 failed attempt".to_string()
    } else {
        format!("{} failed attempts", row.failure_count)
    };
    let message = format!(
        "{}\n\n({attempts})",
        tail_lines(&row.last_message, MESSAGE_TAIL_LINES)
    );
    Annotation {
        path,
        start_line,
        end_line,
        start_column: None,
        end_column: None,
        annotation_level: AnnotationLevel::Failure,
        message,
        title: Some(format!("{}: {}", row.error_class, row.key)),
        raw_details: Some(failure_history(row, history)),
    }
    .within_limits()
}

fn failure_history(row: &DlqItem, history: &[&Attempt]) -> String {
    let failed: Vec<&&Attempt> = history.iter().filter(|a| a.success != Some(true)).collect();
    if failed.is_empty() {
        // A DLQ row without attempt rows (written by an older run): what the row itself knows.
        return format!(
            "{} failures between {} and {}; last:\n{}",
            row.failure_count,
            timestamp(row.first_failure),
            timestamp(row.last_failure),
            row.last_message
        );
    }
    let mut out = String::new();
    for a in failed {
        let took = a
            .finished_at
            .map(|end| {
                format!(
                    ", {}",
                    human_millis((end - a.started_at).num_milliseconds())
                )
            })
            .unwrap_or_default();
        let class = a.error_class.map_or("unfinished", |c| c.as_str());
        let exit = a
            .exit_code
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "attempt {} at {}{took}: {class}{exit}\n",
            a.attempt,
            timestamp(a.started_at)
        ));
        if let Some(m) = &a.message {
            for line in tail_lines(m, 10).lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
        if let Some(log) = &a.log_path {
            out.push_str(&format!("    log: {log}\n"));
        }
    }
    out
}

/// Annotations for the job's DLQ rows, the first [`ANNOTATION_CAP`] in DLQ order.
pub fn annotations(input: &FinalInput) -> Vec<Annotation> {
    let mut by_key: BTreeMap<&ItemKey, Vec<&Attempt>> = BTreeMap::new();
    for a in input.attempts {
        by_key.entry(&a.key).or_default().push(a);
    }
    input
        .dlq
        .iter()
        .take(ANNOTATION_CAP)
        .map(|row| {
            let history = by_key.get(&row.key).map_or(&[][..], Vec::as_slice);
            annotation(row, history, input.facts, &input.job.repo_path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::render::fixtures::*;
    use crate::checks::render::*;
    use crate::types::{ErrorClass, JobStatus, Phase};
    use serde_json::json;

    #[test]
    fn item_locations_follow_the_documented_mapping() {
        let root = "/srv/repo";
        let loc = |v: Value| item_location(&v, root);
        assert_eq!(
            loc(
                json!({"location": {"file": "src/a.rs", "line": 12, "end_line": 14}, "file": "other.rs"})
            ),
            Some(("src/a.rs".into(), 12, 14))
        );
        assert_eq!(
            loc(json!({"file": "./src/b.rs", "line": "7"})),
            Some(("src/b.rs".into(), 7, 7))
        );
        assert_eq!(
            loc(json!({"path": "docs/x.md"})),
            Some(("docs/x.md".into(), 1, 1))
        );
        assert_eq!(
            loc(json!({"file": "/srv/repo/src/c.rs", "start_line": 3, "end_line": 1})),
            Some(("src/c.rs".into(), 3, 3))
        );
        assert_eq!(loc(json!({"file": "/etc/passwd"})), None);
        assert_eq!(loc(json!({"file": "../outside.rs"})), None);
        assert_eq!(loc(json!({"file": 42})), None);
        assert_eq!(
            loc(json!({"file": "src/d.rs", "line": 0})),
            Some(("src/d.rs".into(), 1, 1))
        );
        assert_eq!(loc(json!({"id": "x"})), None);
    }

    #[test]
    fn annotation_of_a_dlq_row() {
        let facts = WorkflowFacts::from_job(&job(JobStatus::Failed, Phase::Done, None));
        let row = dlq_row(
            "item-3",
            json!({"id": "item-3", "file": "src/lib.rs", "line": 42}),
            ErrorClass::CommandFailed,
            "sig-a",
            "running lint\nlint failed for item-3\n3 problems",
        );
        let a1 = attempt("item-3", 1, 10, 2, false);
        let a2 = attempt("item-3", 2, 15, 3, false);
        let a = annotation(&row, &[&a1, &a2], &facts, "/srv/repo");
        assert_eq!(
            (a.path.as_str(), a.start_line, a.end_line),
            ("src/lib.rs", 42, 42)
        );
        assert_eq!(a.annotation_level, AnnotationLevel::Failure);
        insta::assert_snapshot!(a.title.unwrap(), @"command_failed: item-3");
        insta::assert_snapshot!(a.message, @r"
        running lint
        lint failed for item-3
        3 problems

        (2 failed attempts)
        ");
        insta::assert_snapshot!(a.raw_details.unwrap(), @r"
        attempt 1 at 2027-01-15 08:00:10 UTC, 2.0 s: command_failed (exit 2)
            lint failed for item-3
            3 problems
            log: /state/logs/item-3.log
        attempt 2 at 2027-01-15 08:00:15 UTC, 3.0 s: command_failed (exit 2)
            lint failed for item-3
            3 problems
            log: /state/logs/item-3.log
        ");
        // No file in the item: the workflow's agent_template line.
        let row = dlq_row(
            "item-4",
            json!({"id": "item-4"}),
            ErrorClass::Timeout,
            "sig-b",
            "timed out",
        );
        let a = annotation(&row, &[], &facts, "/srv/repo");
        assert_eq!((a.path.as_str(), a.start_line), (".prodigy/lint.yml", 6));
        assert!(a.raw_details.unwrap().starts_with("2 failures between"));
    }

    #[test]
    fn huge_messages_stay_within_limits() {
        let facts = WorkflowFacts::from_job(&job(JobStatus::Failed, Phase::Done, None));
        let long = "x".repeat(200_000);
        let row = dlq_row(&"k".repeat(400), json!({}), ErrorClass::Unknown, "s", &long);
        let a = annotation(&row, &[], &facts, "/srv/repo");
        assert_eq!(a, a.clone().within_limits());
        assert!(a.title.unwrap().chars().count() <= 255);
        assert!(a.message.len() <= 64 * 1024);
    }
}
