//! What a step can carry besides its command: `on_failure`, `validate` and its `on_incomplete`.
//!
//! A handler is a list of steps, a mapping with `commands`, or one step written with the
//! handler's own keys beside its command (`on_failure: {shell: ..., max_attempts: 3}`); its
//! retry limits (`max_attempts`, `fail_workflow`) are read by [`Parser::retry_limits`] for all
//! of them.

use super::fields::Fields;
use super::steps::names_a_command;
use super::{Parser, R};
use crate::workflow::model::*;
use crate::workflow::yaml::{Node, Value};

impl Parser<'_> {
    /// `max_attempts` (or the first of `attempt_keys` present) and `fail_workflow`.
    fn retry_limits(&self, f: &mut Fields, attempt_keys: &[&'static str]) -> R<(u32, bool)> {
        let mut max_attempts = 1;
        if let Some((_, n)) = f.first_of(attempt_keys) {
            max_attempts = self.uint(n, "max_attempts")? as u32;
            if max_attempts == 0 {
                return self.err_at(
                    n,
                    "max_attempts must be at least 1".into(),
                    "use 1 to try once without retrying",
                );
            }
        }
        let fail_workflow = f.bool_or("fail_workflow", true)?;
        Ok((max_attempts, fail_workflow))
    }

    /// A handler mapping: its `commands`, or itself as one step when it names one of
    /// `commands_keys` (always, when that is empty); `own` reads the handler's own keys first.
    /// No steps when it has neither.
    fn handler<'n, T>(
        &self,
        node: &'n Node,
        what: &str,
        commands_keys: &[&str],
        own: impl FnOnce(&mut Fields<'_, 'n>) -> R<T>,
    ) -> R<(Vec<Step>, T)> {
        let one_step = node.get("commands").is_none()
            && (commands_keys.is_empty() || names_a_command(node, commands_keys));
        let mut f = if one_step {
            self.step_cursor(node)?
        } else {
            self.fields(node, what)?
        };
        let mine = own(&mut f)?;
        let steps = match f.get("commands") {
            Some(c) => self.steps(c, &format!("{what}.commands"))?,
            None if one_step => vec![self.step_fields(&mut f)?],
            None => Vec::new(),
        };
        f.finish();
        Ok((steps, mine))
    }

    /// The handler forms: a step, a list of steps, or `{claude|shell|commands, max_attempts,
    /// fail_workflow}`.
    pub(super) fn on_failure(&self, node: &Node) -> R<Option<OnFailure>> {
        let (steps, (max_attempts, fail_workflow)) = match &node.value {
            Value::Seq(_) => (self.steps(node, "on_failure")?, (1, true)),
            Value::Map(_) => self.handler(
                node,
                "on_failure",
                &["shell", "claude", "write_file", "foreach"],
                |f| {
                    let (mut attempts, fail) =
                        self.retry_limits(f, &["max_attempts", "max_retries"])?;
                    // Upstream only re-runs the step when asked; attempts count tries of the step.
                    if f.opt_bool("retry_original")? == Some(false) {
                        attempts = 1;
                    }
                    Ok((attempts, fail))
                },
            )?,
            Value::Str(s) if s.starts_with('/') => (vec![self.step(node)?], (1, true)),
            _ => {
                return self.err_at(
                    node,
                    format!(
                        "on_failure must be a step, a list of steps or a mapping, found {}",
                        node.kind()
                    ),
                    "write on_failure: {shell: \"...\"} or a list of steps",
                );
            }
        };
        Ok(Some(OnFailure {
            steps,
            max_attempts,
            fail_workflow,
        }))
    }

    pub(super) fn validate(&self, node: &Node) -> R<Validate> {
        self.expect_map(node, "validate")?;
        let (commands, (result_file, threshold, on_incomplete)) =
            self.handler(node, "validate", &["shell", "claude"], |f| {
                let result_file = f.opt_string("result_file")?;
                let threshold = match f.get("threshold") {
                    Some(n) => self.threshold(n)?,
                    None => 100.0,
                };
                Ok((result_file, threshold, f.get("on_incomplete")))
            })?;
        if commands.is_empty() && result_file.is_none() {
            return self.err_at(
                node,
                "validate needs 'commands' (or a claude/shell command) or a 'result_file'".into(),
                "add the command that checks the step's work",
            );
        }
        let on_incomplete = on_incomplete.map(|n| self.on_incomplete(n)).transpose()?;
        Ok(Validate {
            commands,
            result_file,
            threshold,
            on_incomplete,
        })
    }

    fn threshold(&self, n: &Node) -> R<f64> {
        let t = self.float(n, "threshold")?;
        if !(0.0..=100.0).contains(&t) {
            return self.err_at(
                n,
                format!("threshold must be between 0 and 100, found {t}"),
                "write a percentage such as 75",
            );
        }
        Ok(t)
    }

    fn on_incomplete(&self, node: &Node) -> R<OnIncomplete> {
        let (commands, (max_attempts, fail_workflow)) = match &node.value {
            Value::Seq(_) => (self.steps(node, "on_incomplete")?, (1, true)),
            // Without `commands`, the mapping is one step (which then needs a command).
            Value::Map(_) => self.handler(node, "on_incomplete", &[], |f| {
                self.retry_limits(f, &["max_attempts"])
            })?,
            _ => {
                return self.err_at(
                    node,
                    format!(
                        "on_incomplete must be a mapping or a list of steps, found {}",
                        node.kind()
                    ),
                    "write on_incomplete: {claude: \"...\", max_attempts: 3}",
                );
            }
        };
        Ok(OnIncomplete {
            commands,
            max_attempts,
            fail_workflow,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::workflow::{Step, WorkflowKind, parse};

    fn step(yaml: &str) -> Result<Step, String> {
        let p = parse(Path::new("h.yml"), yaml).map_err(|e| e.to_string())?;
        let WorkflowKind::Standard { commands } = p.workflow.kind else {
            panic!("standard")
        };
        Ok(commands[0].clone())
    }

    #[test]
    fn one_step_handlers_carry_their_retry_limits() {
        let s =
            step("- shell: a\n  on_failure: {shell: b, max_attempts: 3, fail_workflow: false}\n")
                .unwrap();
        let of = s.on_failure.unwrap();
        assert_eq!(
            (of.steps.len(), of.max_attempts, of.fail_workflow),
            (1, 3, false)
        );
        let s =
            step("- shell: a\n  on_failure: {max_retries: 2, retry_original: false}\n").unwrap();
        let of = s.on_failure.unwrap();
        assert_eq!((of.steps.len(), of.max_attempts), (0, 1));
        let s = step(
            "- shell: a\n  validate:\n    shell: v\n    on_incomplete: {claude: /fix, max_attempts: 2}\n",
        )
        .unwrap();
        let inc = s.validate.unwrap().on_incomplete.unwrap();
        assert_eq!(
            (inc.commands.len(), inc.max_attempts, inc.fail_workflow),
            (1, 2, true)
        );
    }

    #[test]
    fn zero_attempts_and_an_empty_validate_are_errors() {
        let e = step("- shell: a\n  on_failure: {shell: b, max_attempts: 0}\n").unwrap_err();
        assert!(
            e.contains("h.yml:2:40: max_attempts must be at least 1"),
            "{e}"
        );
        let e = step("- shell: a\n  validate: {threshold: 5}\n").unwrap_err();
        assert!(e.contains("validate needs 'commands'"), "{e}");
    }
}
