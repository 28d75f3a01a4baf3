//! Steps: a list of steps, one step's keys, and its command (`shell`, `claude`, `write_file`,
//! `foreach`). The handlers a step can carry are in [`super::handlers`].

use std::path::{Component, Path};

use super::fields::{Fields, describe};
use super::{Parser, R};
use crate::workflow::model::*;
use crate::workflow::yaml::{Key, Node, Value};

/// The keys that name a step's command.
const COMMANDS: [&str; 4] = ["shell", "claude", "write_file", "foreach"];

impl Parser<'_> {
    pub(super) fn steps(&self, node: &Node, what: &str) -> R<Vec<Step>> {
        match &node.value {
            Value::Seq(items) => items.iter().map(|n| self.step(n)).collect(),
            Value::Null => Ok(Vec::new()),
            _ => self.err_at(
                node,
                format!("{what} must be a list of steps, found {}", node.kind()),
                "write each step as a list entry starting with '- shell:' or '- claude:'",
            ),
        }
    }

    /// One step: a mapping, or upstream's legacy bare `- /command` form.
    pub(super) fn step(&self, node: &Node) -> R<Step> {
        if let Value::Str(s) = &node.value
            && s.starts_with('/')
        {
            return Ok(bare_step(
                Action::Claude(ClaudeCommand {
                    prompt: s.clone(),
                    settings: AgentSettings::default(),
                }),
                node.line,
            ));
        }
        let mut f = self.step_cursor(node)?;
        let step = self.step_fields(&mut f)?;
        f.finish();
        Ok(step)
    }

    /// The cursor for a step's mapping; callers that read their own keys from the same mapping
    /// (a handler written as one step) read them before [`Parser::step_fields`].
    pub(super) fn step_cursor<'s, 'n>(&'s self, node: &'n Node) -> R<Fields<'s, 'n>> {
        self.expect_map(node, "a step")?;
        self.fields(node, "step")
    }

    /// The step keys of `f`; the caller finishes the cursor.
    pub(super) fn step_fields(&self, f: &mut Fields) -> R<Step> {
        let help = "start the step with one of shell:, claude:, write_file: or foreach:";
        let kinds: Vec<&Key> = COMMANDS
            .into_iter()
            .filter_map(|k| f.get(k).and(f.key(k)))
            .collect();
        let action = match kinds.as_slice() {
            [] => return self.err_at(f.node(), "a step needs a command".into(), help),
            [key] => {
                let value = f.node().get(&key.name).unwrap_or(f.node());
                match key.name.as_str() {
                    "shell" => Action::Shell(self.command_text(value, "shell")?),
                    "claude" => Action::Claude(self.claude(value)?),
                    "write_file" => Action::WriteFile(self.write_file(value)?),
                    _ => Action::Foreach(self.foreach(value)?),
                }
            }
            [_, second, ..] => {
                let names: Vec<&str> = kinds.iter().map(|k| k.name.as_str()).collect();
                return self.err_key(
                    second,
                    format!("a step has more than one command ({})", names.join(", ")),
                    "split it into one step per command",
                );
            }
        };
        let kind_name = match &action {
            Action::Shell(_) => "shell",
            Action::Claude(_) => "claude",
            Action::WriteFile(_) => "write_file",
            Action::Foreach(_) => "foreach",
        };

        let mut step = bare_step(action, f.node().line);
        step.id = f.opt_string("id")?;
        step.timeout = f.opt_duration("timeout", "timeout")?;
        if let Some(n) = f.get("when") {
            step.when = Some(self.expression(n, "when")?);
        }
        if let Some(n) = f.get("env") {
            step.env = self.env(n)?;
        }
        step.working_dir = f.opt_string("working_dir")?;
        if let Some(n) = f.get("capture_output") {
            match &n.value {
                Value::Bool(true) => step.capture = Some(format!("{kind_name}.output")),
                Value::Bool(false) | Value::Null => {}
                Value::Str(s) if s == "true" => step.capture = Some(format!("{kind_name}.output")),
                Value::Str(s) if s == "false" => {}
                Value::Str(s) => step.capture = Some(s.clone()),
                _ => {
                    return self.err_at(
                        n,
                        format!(
                            "capture_output must be true, false or a variable name, found {}",
                            n.kind()
                        ),
                        "write capture_output: true, or capture: NAME",
                    );
                }
            }
        }
        if let Some(c) = f.opt_string("capture")? {
            step.capture = Some(c);
        }
        if let Some(n) = f.get("capture_format") {
            let s = self.string(n, "capture_format")?;
            step.capture_format = match s.as_str() {
                "string" => CaptureFormat::String,
                "number" => CaptureFormat::Number,
                "json" => CaptureFormat::Json,
                "lines" => CaptureFormat::Lines,
                "boolean" | "bool" => CaptureFormat::Boolean,
                other => {
                    return self.err_at(
                        n,
                        format!("unknown capture_format '{other}'"),
                        "use string, number, json, lines or boolean",
                    );
                }
            };
        }
        if let Some(n) = f.get("capture_streams") {
            step.capture_streams = self.capture_streams(n)?;
        }
        step.commit_required = f.bool_or("commit_required", false)?;
        step.allow_failure = f.bool_or("allow_failure", false)?;
        if let Some(n) = f.get("on_failure") {
            step.on_failure = self.on_failure(n)?;
        }
        if let Some(n) = f.get("on_success") {
            step.on_success = Some(Box::new(self.step(n)?));
        }
        if let Some(n) = f.get("validate") {
            step.validate = Some(self.validate(n)?);
        }
        Ok(step)
    }

    fn capture_streams(&self, node: &Node) -> R<CaptureStreams> {
        let help = "write stdout, stderr, both, or a mapping such as {stdout: true, stderr: true}";
        let mut cs = CaptureStreams::default();
        match &node.value {
            Value::Str(s) => {
                cs.stdout = false;
                for part in s.split([',', ' ']).filter(|p| !p.is_empty()) {
                    match part {
                        "stdout" => cs.stdout = true,
                        "stderr" => cs.stderr = true,
                        "both" | "all" => {
                            cs.stdout = true;
                            cs.stderr = true;
                        }
                        "exit_code" | "success" | "duration" => {}
                        other => {
                            return self.err_at(
                                node,
                                format!("unknown stream '{other}' in capture_streams"),
                                help,
                            );
                        }
                    }
                }
            }
            Value::Map(entries) => {
                for (key, value) in entries {
                    let b = self.bool(value, &format!("capture_streams.{}", key.name))?;
                    match key.name.as_str() {
                        "stdout" => cs.stdout = b,
                        "stderr" => cs.stderr = b,
                        "exit_code" => cs.exit_code = b,
                        "success" => cs.success = b,
                        "duration" => cs.duration = b,
                        other => {
                            return self.err(
                                key.line,
                                key.column,
                                format!("unknown stream '{other}' in capture_streams"),
                                "use stdout, stderr, exit_code, success, duration",
                            );
                        }
                    }
                }
            }
            _ => {
                return self.err_at(
                    node,
                    format!(
                        "capture_streams must be a string or a mapping, found {}",
                        node.kind()
                    ),
                    help,
                );
            }
        }
        Ok(cs)
    }

    fn write_file(&self, node: &Node) -> R<WriteFile> {
        let mut f = self.fields(node, "write_file")?;
        let Some(path_node) = f.get("path") else {
            return self.err_at(
                node,
                "write_file needs 'path'".into(),
                "name the file to write, relative to the worktree",
            );
        };
        let path = self.string(path_node, "write_file.path")?;
        if let Some(problem) = escaping_path(&path) {
            return self.err_at(
                path_node,
                format!("write_file.path '{path}' {problem}"),
                "use a path relative to the worktree, without '..'",
            );
        }
        let content = match f.get("content") {
            Some(n) if n.value == Value::Null => String::new(),
            Some(n) => match &n.value {
                // Structured content is written as JSON text; `format` then decides the output.
                Value::Map(_) | Value::Seq(_) => n.to_json().to_string(),
                _ => self.string(n, "write_file.content")?,
            },
            None => {
                return self.err_at(
                    node,
                    "write_file needs 'content'".into(),
                    "give the text to write (it may be empty: content: \"\")",
                );
            }
        };
        let format = match f.get("format") {
            Some(n) => match self.string(n, "write_file.format")?.as_str() {
                "text" => WriteFormat::Text,
                "json" => WriteFormat::Json,
                "yaml" | "yml" => WriteFormat::Yaml,
                other => {
                    return self.err_at(
                        n,
                        format!("unknown write_file.format '{other}'"),
                        "use text, json or yaml",
                    );
                }
            },
            None => WriteFormat::Text,
        };
        let create_dirs = f.bool_or("create_dirs", false)?;
        let mode = f.get("mode").map(|n| self.file_mode(n)).transpose()?;
        f.finish();
        Ok(WriteFile {
            path,
            content,
            format,
            create_dirs,
            mode,
        })
    }

    /// `mode: "0644"` (octal text, as upstream writes it) or `mode: 0o644`/`420` (a number, taken as
    /// decimal unless written with a leading 0).
    fn file_mode(&self, node: &Node) -> R<u32> {
        let help = "write the permission bits in octal, e.g. mode: \"0644\"";
        let parsed = match &node.value {
            Value::Str(s) => {
                let t = s.trim();
                let t = t.strip_prefix("0o").unwrap_or(t);
                u32::from_str_radix(t, 8).ok()
            }
            Value::Int(i) => {
                // YAML 1.2 reads 0644 as decimal 644; its digits are what the user meant.
                u32::from_str_radix(&i.to_string(), 8).ok()
            }
            _ => None,
        };
        match parsed {
            Some(m) if m <= 0o7777 => Ok(m),
            _ => self.err_at(node, format!("invalid file mode {}", describe(node)), help),
        }
    }

    fn foreach(&self, node: &Node) -> R<Foreach> {
        let mut f = self.fields(node, "foreach")?;
        let Some((_, input)) = f.first_of(&["foreach", "input", "over", "items"]) else {
            return self.err_at(
                node,
                "foreach needs 'foreach' (or 'input'): the values to iterate over".into(),
                "give a list of values or a command that prints one per line",
            );
        };
        let over = match &input.value {
            Value::Seq(items) => ForeachInput::List(items.iter().map(Node::to_json).collect()),
            Value::Str(s) => ForeachInput::Command(s.clone()),
            _ => {
                return self.err_at(
                    input,
                    format!(
                        "foreach.input must be a list or a command, found {}",
                        input.kind()
                    ),
                    "give a list of values or a command",
                );
            }
        };
        let Some((_, body)) = f.first_of(&["do", "steps"]) else {
            return self.err_at(
                node,
                "foreach needs 'do' with the steps to run per value".into(),
                "add 'do:' with a list of steps",
            );
        };
        let steps = self.steps(body, "foreach.do")?;
        let parallel = match f.get("parallel") {
            Some(n) => match &n.value {
                // Upstream: `parallel: true` uses all available cores.
                Value::Bool(true) => std::thread::available_parallelism().map_or(4, |n| n.get()),
                Value::Bool(false) => 1,
                _ => {
                    let v = self.uint(n, "foreach.parallel")? as usize;
                    if v == 0 {
                        return self.err_at(
                            n,
                            "foreach.parallel must be at least 1".into(),
                            "use 1 (or false) to run sequentially",
                        );
                    }
                    v
                }
            },
            None => 1,
        };
        let continue_on_error = f.bool_or("continue_on_error", false)?;
        let max_items = f
            .opt_uint("max_items", "foreach.max_items")?
            .map(|v| v as usize);
        f.finish();
        Ok(Foreach {
            over,
            parallel,
            continue_on_error,
            max_items,
            steps,
        })
    }
}

fn bare_step(action: Action, line: usize) -> Step {
    Step {
        action,
        id: None,
        line,
        timeout: None,
        when: None,
        env: Vec::new(),
        working_dir: None,
        capture: None,
        capture_format: CaptureFormat::default(),
        capture_streams: CaptureStreams::default(),
        commit_required: false,
        allow_failure: false,
        on_failure: None,
        on_success: None,
        validate: None,
    }
}

/// Why a write_file path would leave the worktree, if it would.
fn escaping_path(path: &str) -> Option<&'static str> {
    if path.trim().is_empty() {
        return Some("is empty");
    }
    let p = Path::new(path);
    if p.is_absolute() || path.starts_with('~') {
        return Some("is absolute; it must stay inside the worktree");
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Some("contains '..'; it must stay inside the worktree");
    }
    None
}

/// Whether a handler's mapping is written as one step (names one of `commands`).
pub(super) fn names_a_command(node: &Node, commands: &[&str]) -> bool {
    commands.iter().any(|k| node.get(k).is_some())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::workflow::{WorkflowKind, parse};

    #[test]
    fn every_unread_step_key_is_warned_about_with_a_suggestion() {
        let text = "- shell: echo\n  timout: 5\n  name: x\n  capture: out\n  frobnicate: 1\n";
        let p = parse(Path::new("s.yml"), text).unwrap();
        let WorkflowKind::Standard { commands } = &p.workflow.kind else {
            panic!("standard")
        };
        assert_eq!(commands[0].capture.as_deref(), Some("out"));
        let w: Vec<_> = p
            .warnings
            .iter()
            .map(|w| (w.line, w.message.as_str()))
            .collect();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].1.contains("did you mean 'timeout'"), "{w:?}");
        assert!(w[1].1.contains("'name' in step has no effect"), "{w:?}");
        assert!(
            w[2].1.contains("unknown key 'frobnicate' in step") && w[2].1.contains("known keys: "),
            "{w:?}"
        );
        assert_eq!((w[0].0, w[1].0, w[2].0), (2, 3, 5));
    }

    #[test]
    fn two_commands_in_one_step_is_an_error_at_the_second() {
        let e = parse(Path::new("s.yml"), "- shell: a\n  claude: /b\n").unwrap_err();
        assert_eq!(e.position(), Some((2, 3)));
    }
}
