//! The static check: every `${...}` of a workflow, before a job starts. A placeholder must name a
//! variable its step can see, resolved as the engine resolves it (the longest dotted prefix that
//! is a variable, see [`super::scope`]): built-ins by their exact names (`map.successful`,
//! `shell.output`, `merge.source_branch`, ...), captures and step outputs of earlier steps of
//! the same phase (and of setup), the step's and the workflow's env, this process's environment.
//! With a sample of the map items ([`ItemSample`]), `${item.field}` paths are checked against
//! them too. Each finding names the placeholder's line and column in the file and, when a
//! defined name or field is close, says "did you mean".

use std::collections::BTreeSet;

use serde_json::Value;

use super::Context;
use super::scope::{Segment, parse_path};
use super::template::{Placeholder, placeholders, split};
use crate::suggest::did_you_mean;
use crate::workflow::model::*;

/// What the engine defines in every step: the last step's output (or, in `on_failure`, the failed
/// step's). `env.X` / `env:X` read the environment and are never findings.
const ALWAYS: &[&str] = &[
    "shell.output",
    "shell.stderr",
    "shell.exit_code",
    "claude.output",
    "claude.stderr",
    "claude.exit_code",
    "claude.session_id",
    "claude.json_log_location",
    "claude.cost_usd",
];
/// A map agent's item variables.
const MAP_ITEM: &[&str] = &["item", "item_index", "item_total", "item_json", "item_id"];
/// A `foreach` iteration's variables.
const FOREACH_ITEM: &[&str] = &["item", "item_index", "item_total"];
/// What reduce sees of the map phase.
const MAP_RESULTS: &[&str] = &["map.successful", "map.failed", "map.total", "map.results"];
/// What the merge phase sees.
const MERGE: &[&str] = &[
    "merge.worktree",
    "merge.source_branch",
    "merge.target_branch",
    "merge.session_id",
];
/// Inside `validate:` and its `on_incomplete:`.
const VALIDATION: &[&str] = &[
    "validation.attempt_number",
    "validation.completion",
    "validation.gaps",
];

/// How many of the first map items `${item.field}` is checked against.
pub const ITEM_SAMPLE: usize = 100;

/// One placeholder that can never resolve, at its 1-based line and column in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The first map items (after the input pipeline), and where they came from (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemSample {
    pub source: String,
    pub items: Vec<Value>,
}

impl ItemSample {
    /// At most [`ITEM_SAMPLE`] of `items`.
    pub fn new(source: impl Into<String>, items: &[Value]) -> Self {
        ItemSample {
            source: source.into(),
            items: items[..items.len().min(ITEM_SAMPLE)].to_vec(),
        }
    }
}

/// Every placeholder of `wf` that can never resolve where it is used. `source` is the workflow's
/// text (for columns); with `items`, map agents' `${item.field}` paths are checked against them.
/// Names in this process's environment count as resolvable (steps inherit it).
pub fn check_workflow(wf: &Workflow, source: &str, items: Option<&ItemSample>) -> Vec<Finding> {
    run(wf, source, items, false)
}

/// Only the `${item.field}` findings against `items`: what the engine checks once setup has
/// produced the items, before any agent runs.
pub fn check_item_fields(wf: &Workflow, source: &str, items: &ItemSample) -> Vec<Finding> {
    run(wf, source, Some(items), true)
}

fn run(wf: &Workflow, source: &str, items: Option<&ItemSample>, only_items: bool) -> Vec<Finding> {
    let mut c = Checker {
        source,
        items,
        only_items,
        findings: Vec::new(),
    };
    let mut scope = Scope::default();
    scope.add(ALWAYS);
    scope.env.extend(wf.env.iter().map(|v| v.name.clone()));
    match &wf.kind {
        WorkflowKind::Standard { commands } => c.steps(commands, &mut scope),
        WorkflowKind::MapReduce(mr) => {
            if let Some(setup) = &mr.setup {
                c.steps(&setup.commands, &mut scope);
            }
            let input = match &mr.map.input {
                MapInput::File(s) | MapInput::Command(s) => s,
            };
            // The input is read before the map phase, so locate it from the top of the file.
            c.text(1, input, &scope, "map.input");
            let mut map_scope = scope.clone();
            map_scope.add(MAP_ITEM);
            map_scope.map_items = true;
            c.steps(&mr.map.agent_template, &mut map_scope);
            scope.add(MAP_RESULTS);
            if let Some(reduce) = &mr.reduce {
                c.steps(&reduce.commands, &mut scope);
            }
            if let Some(merge) = &mr.merge {
                scope.add(MERGE);
                c.steps(&merge.commands, &mut scope);
            }
        }
    }
    c.findings.sort_by_key(|f| (f.line, f.column));
    c.findings.dedup();
    c.findings
}

/// The variables a step can see.
#[derive(Debug, Clone, Default)]
struct Scope {
    /// Variable names, dotted as the engine binds them (`map.total`, `build.exit_code`).
    vars: BTreeSet<String>,
    /// Environment names from the workflow and steps' `env:`.
    env: BTreeSet<String>,
    /// `item` is a map item here (not a `foreach` value), so a sample can check its fields.
    map_items: bool,
}

impl Scope {
    fn add(&mut self, names: &[&str]) {
        self.vars.extend(names.iter().map(|s| s.to_string()));
    }

    /// The defined variable the path resolves through (its longest dotted prefix that is one),
    /// and how many of the path's segments name it.
    fn variable(&self, segments: &[Segment]) -> Option<(String, usize)> {
        let keys: Vec<&str> = segments
            .iter()
            .map_while(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect();
        (1..=keys.len())
            .rev()
            .map(|take| (keys[..take].join("."), take))
            .find(|(name, _)| self.vars.contains(name))
    }

    /// The defined name closest to the path's first segments, for "did you mean".
    fn closest(&self, segments: &[Segment]) -> Option<String> {
        let keys: Vec<&str> = segments
            .iter()
            .map_while(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect();
        let names: Vec<&str> = self
            .vars
            .iter()
            .map(String::as_str)
            .chain(self.env.iter().map(String::as_str))
            .collect();
        // Compare like with like: `map.sucessful` with two-part names, `itme` with one-part ones.
        (1..=keys.len())
            .rev()
            .filter_map(|take| {
                let word = keys[..take].join(".");
                let same: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|n| n.split('.').count() == take)
                    .collect();
                let hit = did_you_mean(&word, &same)?;
                let rest = &keys[take..];
                Some((strsim::levenshtein(&word, hit), {
                    let mut s = hit.to_string();
                    for k in rest {
                        s.push('.');
                        s.push_str(k);
                    }
                    s
                }))
            })
            .min_by_key(|(d, _)| *d)
            .map(|(_, s)| s)
    }
}

struct Checker<'a> {
    source: &'a str,
    items: Option<&'a ItemSample>,
    only_items: bool,
    findings: Vec<Finding>,
}

impl Checker<'_> {
    fn steps(&mut self, steps: &[Step], scope: &mut Scope) {
        for step in steps {
            self.step(step, scope);
        }
    }

    fn step(&mut self, step: &Step, scope: &mut Scope) {
        let line = step.line;
        let mut local = scope.clone();
        local.env.extend(step.env.iter().map(|v| v.name.clone()));
        for v in &step.env {
            self.text(line, &v.value, &local, "env");
        }
        if let Some(w) = &step.when {
            self.text(line, w, &local, "when");
        }
        if let Some(d) = &step.working_dir {
            self.text(line, d, &local, "working_dir");
        }
        match &step.action {
            Action::Shell(s) => self.text(line, s, &local, "shell"),
            Action::Claude(s) => self.text(line, &s.prompt, &local, "claude"),
            Action::WriteFile(w) => {
                self.text(line, &w.path, &local, "write_file.path");
                self.text(line, &w.content, &local, "write_file.content");
            }
            Action::Foreach(f) => {
                if let ForeachInput::Command(c) = &f.over {
                    self.text(line, c, &local, "foreach.input");
                }
                let mut inner = local.clone();
                inner.add(FOREACH_ITEM);
                inner.map_items = false;
                self.steps(&f.steps, &mut inner);
            }
        }
        if let Some(v) = &step.validate {
            let mut vs = local.clone();
            vs.add(VALIDATION);
            self.steps(&v.commands, &mut vs);
            if let Some(f) = &v.result_file {
                self.text(line, f, &vs, "validate.result_file");
            }
            if let Some(inc) = &v.on_incomplete {
                self.steps(&inc.commands, &mut vs);
            }
        }
        if let Some(of) = &step.on_failure {
            let mut fs = local.clone();
            self.steps(&of.steps, &mut fs);
        }
        // The step's own outputs are visible to what follows (and to its on_success).
        if let Some(id) = &step.id {
            scope.vars.insert(format!("{id}.output"));
        }
        if let Some(c) = &step.capture {
            scope.vars.insert(c.clone());
            let streams = step.capture_streams;
            for (on, field) in [
                (streams.exit_code, "exit_code"),
                (streams.success, "success"),
                (streams.stderr, "stderr"),
                (streams.duration, "duration"),
            ] {
                if on {
                    scope.vars.insert(format!("{c}.{field}"));
                }
            }
        }
        if let Some(s) = &step.on_success {
            self.step(s, scope);
        }
    }

    fn text(&mut self, line: usize, template: &str, scope: &Scope, field: &str) {
        if let Err(e) = split(template) {
            if !self.only_items {
                self.push(line, None, format!("{field}: {e}"));
            }
            return;
        }
        for ph in placeholders(template) {
            if ph.default.is_some() {
                continue;
            }
            if let Some(message) = self.placeholder(&ph, scope) {
                self.push(line, Some(&ph), format!("{field}: {message}"));
            }
        }
    }

    /// Why `ph` can never resolve in `scope`, or None.
    fn placeholder(&self, ph: &Placeholder, scope: &Scope) -> Option<String> {
        if ph.path.starts_with("env.") || ph.path.starts_with("env:") {
            return None;
        }
        let segments = parse_path(&ph.path).ok()?;
        match scope.variable(&segments) {
            Some((name, take)) => {
                let sample = self.items.filter(|_| scope.map_items && name == "item")?;
                item_field(ph, &segments[take..], sample)
            }
            None if self.only_items => None,
            None => {
                if segments.len() == 1
                    && (scope.env.contains(&ph.root) || std::env::var_os(&ph.root).is_some())
                {
                    return None;
                }
                // A known root (`map`, a step id) suggests only its own names.
                let prefix = format!("{}.", ph.root);
                let under: Vec<&str> = (scope.vars.iter())
                    .filter(|v| v.starts_with(&prefix))
                    .map(String::as_str)
                    .collect();
                let suggestion = if under.is_empty() {
                    scope.closest(&segments)
                } else {
                    did_you_mean(&ph.path, &under).map(str::to_string)
                };
                let hint = match suggestion {
                    Some(name) => format!("did you mean ${{{name}}}? "),
                    None if !under.is_empty() => {
                        let listed: Vec<String> =
                            under.iter().map(|v| format!("${{{v}}}")).collect();
                        format!("'{}' defines only {} here; ", ph.root, listed.join(", "))
                    }
                    None => String::new(),
                };
                Some(format!(
                    "${{{}}} can never resolve here: nothing before this step defines '{}' \
                     (not a capture, step output, env variable or built-in variable); {hint}\
                     capture it in an earlier step, set it in env, give a fallback with \
                     ${{{}|default:VALUE}}, or write $${{{}}} for a variable the shell defines",
                    ph.text, ph.path, ph.path, ph.text
                ))
            }
        }
    }

    /// Records a finding at the placeholder's place in the file: its first occurrence at or after
    /// the step's line (else anywhere), else the step's line.
    fn push(&mut self, line: usize, ph: Option<&Placeholder>, message: String) {
        let (line, column) = ph
            .and_then(|ph| locate(self.source, line, &format!("${{{}}}", ph.text)))
            .unwrap_or((line, 1));
        self.findings.push(Finding {
            line,
            column,
            message,
        });
    }
}

/// Why `${item<rest>}` resolves in none of the sampled items, with the closest field they have.
fn item_field(ph: &Placeholder, rest: &[Segment], sample: &ItemSample) -> Option<String> {
    if rest.is_empty() || sample.items.is_empty() {
        return None;
    }
    let found = |path: &[Segment], item: &Value| {
        Context::new()
            .with_var("item", item.clone())
            .lookup(&path_text(path))
            .is_some()
    };
    if sample.items.iter().any(|item| found(rest, item)) {
        return None;
    }
    // The deepest prefix some item has, and the keys the items have there.
    let depth = (0..rest.len())
        .rev()
        .find(|d| sample.items.iter().any(|item| found(&rest[..*d], item)))
        .unwrap_or(0);
    let mut fields = BTreeSet::new();
    for item in &sample.items {
        let at = if depth == 0 {
            Some(item.clone())
        } else {
            Context::new()
                .with_var("item", item.clone())
                .lookup(&path_text(&rest[..depth]))
        };
        if let Some(Value::Object(m)) = at {
            fields.extend(m.keys().cloned());
        }
    }
    let missing = match &rest[depth] {
        Segment::Key(k) => k.clone(),
        Segment::Index(i) => format!("[{i}]"),
    };
    let names: Vec<&str> = fields.iter().map(String::as_str).collect();
    let hint = match did_you_mean(&missing, &names) {
        Some(field) => {
            let mut fixed = rest.to_vec();
            fixed[depth] = Segment::Key(field.to_string());
            format!(" did you mean ${{{}}}?", path_text(&fixed))
        }
        None => String::new(),
    };
    let listed = if names.is_empty() {
        "they are not objects there".to_string()
    } else {
        let shown: Vec<&str> = names.iter().copied().take(20).collect();
        format!(
            "their fields there: {}{}",
            shown.join(", "),
            if names.len() > 20 { ", ..." } else { "" }
        )
    };
    let which = match sample.items.len() {
        1 => format!("the one item of {} lacks", sample.source),
        n => format!("none of the first {n} items of {} has", sample.source),
    };
    Some(format!(
        "${{{}}} can never resolve: {which} '{missing}' ({listed});{hint} fix the field \
         name, or give a fallback with ${{{}|default:VALUE}}",
        ph.text, ph.path
    ))
}

/// `item` followed by the segments, as placeholder path text.
fn path_text(rest: &[Segment]) -> String {
    let mut s = String::from("item");
    for seg in rest {
        match seg {
            Segment::Key(k)
                if k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) =>
            {
                s.push('.');
                s.push_str(k);
            }
            Segment::Key(k) => s.push_str(&format!("[{}]", serde_json::json!(k))),
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// 1-based line and column of the first `needle` at or after `from_line`, else of the first
/// anywhere in `source`.
fn locate(source: &str, from_line: usize, needle: &str) -> Option<(usize, usize)> {
    let start = source
        .split_inclusive('\n')
        .take(from_line.saturating_sub(1))
        .map(str::len)
        .sum::<usize>();
    let at = source[start.min(source.len())..]
        .find(needle)
        .map(|i| start + i)
        .or_else(|| source.find(needle))?;
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    Some((line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_lines_and_characters() {
        let src = "a: ${x}\nb: é ${x}\n";
        assert_eq!(locate(src, 1, "${x}"), Some((1, 4)));
        assert_eq!(locate(src, 2, "${x}"), Some((2, 6)));
        assert_eq!(locate(src, 9, "${x}"), Some((1, 4)));
        assert_eq!(locate(src, 1, "${y}"), None);
    }

    #[test]
    fn paths_print_as_written() {
        let segs = parse_path("a.b[0][\"c d\"]").unwrap();
        assert_eq!(path_text(&segs), "item.a.b[0][\"c d\"]");
    }
}
