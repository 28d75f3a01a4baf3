//! The static check: placeholders whose root nothing before them defines, found before a job
//! starts.

use std::collections::BTreeSet;

use super::template::{placeholders, split};
use crate::workflow::model::*;

/// Roots that the engine always provides.
/// `shell.output`/`claude.output` hold the last step's output (or, in `on_failure`, the failed
/// step's); `env.X` reads the environment.
const ALWAYS: &[&str] = &["shell", "claude", "env"];

/// Placeholders whose root can never resolve where they are used: `(line, message)` per finding.
/// Names in this process's environment count as resolvable (steps inherit it).
pub fn check_workflow(wf: &Workflow) -> Vec<(usize, String)> {
    let mut checker = Checker {
        findings: Vec::new(),
    };
    let mut scope: BTreeSet<String> = ALWAYS.iter().map(|s| s.to_string()).collect();
    scope.extend(wf.env.iter().map(|v| v.name.clone()));
    match &wf.kind {
        WorkflowKind::Standard { commands } => {
            checker.steps(commands, &mut scope);
        }
        WorkflowKind::MapReduce(mr) => {
            if let Some(setup) = &mr.setup {
                checker.steps(&setup.commands, &mut scope);
            }
            let input = match &mr.map.input {
                MapInput::File(s) | MapInput::Command(s) => s,
            };
            checker.text(mr.map.agent_template_line, input, &scope, "map.input");
            let mut map_scope = scope.clone();
            map_scope.extend(
                ["item", "item_index", "item_total", "item_json", "item_id"]
                    .iter()
                    .map(|s| s.to_string()),
            );
            checker.steps(&mr.map.agent_template, &mut map_scope);
            scope.insert("map".into());
            if let Some(reduce) = &mr.reduce {
                checker.steps(&reduce.commands, &mut scope);
            }
            if let Some(merge) = &mr.merge {
                scope.insert("merge".into());
                checker.steps(&merge.commands, &mut scope);
            }
        }
    }
    checker.findings
}

struct Checker {
    findings: Vec<(usize, String)>,
}

impl Checker {
    fn steps(&mut self, steps: &[Step], scope: &mut BTreeSet<String>) {
        for step in steps {
            self.step(step, scope);
        }
    }

    fn step(&mut self, step: &Step, scope: &mut BTreeSet<String>) {
        let line = step.line;
        let mut local = scope.clone();
        local.extend(step.env.iter().map(|v| v.name.clone()));
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
                inner.extend(
                    ["item", "item_index", "item_total"]
                        .iter()
                        .map(|s| s.to_string()),
                );
                self.steps(&f.steps, &mut inner);
            }
        }
        if let Some(v) = &step.validate {
            let mut vs = local.clone();
            // `${validation.gaps}`, `${validation.attempt_number}`: the last check's result.
            vs.insert("validation".into());
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
            scope.insert(id.clone());
        }
        if let Some(c) = &step.capture {
            scope.insert(c.clone());
            if let Some(root) = c.split('.').next() {
                scope.insert(root.to_string());
            }
        }
        if let Some(s) = &step.on_success {
            self.step(s, scope);
        }
    }

    fn text(&mut self, line: usize, template: &str, scope: &BTreeSet<String>, field: &str) {
        if let Err(e) = split(template) {
            self.findings.push((line, format!("{field}: {e}")));
            return;
        }
        for ph in placeholders(template) {
            if ph.default.is_some() || scope.contains(&ph.root) || scope.contains(&ph.path) {
                continue;
            }
            if std::env::var_os(&ph.root).is_some() {
                continue;
            }
            self.findings.push((
                line,
                format!(
                    "{field}: ${{{}}} can never resolve here: nothing before this step defines \
                     '{}' (not a capture, step id, env variable or built-in variable); capture it \
                     in an earlier step, set it in env, give a fallback with \
                     ${{{}|default:VALUE}}, or write $${{{}}} for a variable the shell defines",
                    ph.text, ph.root, ph.path, ph.text
                ),
            ));
        }
    }
}
