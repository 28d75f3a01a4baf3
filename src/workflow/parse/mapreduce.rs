//! A mapreduce workflow: `setup`, `map` (its input and pipeline keys), `reduce`, `merge`.

use super::fields::Fields;
use super::{Parser, R};
use crate::workflow::model::*;
use crate::workflow::yaml::{Key, Node, Value};

impl Parser<'_> {
    /// The phases of a mapreduce workflow, read from the top-level cursor.
    pub(super) fn mapreduce(&self, f: &mut Fields, env: &[EnvVar]) -> R<MapReduce> {
        let setup = match f.get("setup") {
            Some(n) => Some(self.phase(n, "setup", true)?),
            None => None,
        };
        let Some(map_node) = f.get("map") else {
            return self.err_at(
                f.node(),
                "a mapreduce workflow needs a 'map' phase".into(),
                "add 'map:' with 'input' and 'agent_template'",
            );
        };
        let map = self.map_phase(map_node, f.key("map"), env)?;
        let reduce = match f.get("reduce") {
            Some(n) => Some(self.phase(n, "reduce", false)?),
            None => None,
        };
        let merge = match f.get("merge") {
            Some(n) => Some(self.phase(n, "merge", false)?),
            None => None,
        };
        let error_policy = self.error_policy(f)?;
        Ok(MapReduce {
            setup,
            map,
            reduce,
            merge,
            error_policy,
        })
    }

    fn phase(&self, node: &Node, what: &str, is_setup: bool) -> R<PhaseSteps> {
        match &node.value {
            Value::Seq(_) => Ok(PhaseSteps {
                commands: self.steps(node, what)?,
                timeout: None,
                rerun: true,
            }),
            Value::Map(_) => {
                let mut f = self.fields(node, what)?;
                let Some(commands) = f.get("commands") else {
                    return self.err_at(
                        node,
                        format!("'{what}' needs 'commands'"),
                        "list the phase's steps under 'commands:'",
                    );
                };
                let mut commands = self.steps(commands, what)?;
                let timeout = f.opt_duration("timeout", &format!("{what}.timeout"))?;
                // Only reduce is run again after a retry; elsewhere the key is unknown.
                let rerun = if what == "reduce" {
                    f.bool_or("rerun", true)?
                } else {
                    true
                };
                if is_setup && let Some(caps) = f.get("capture_outputs") {
                    self.capture_outputs(caps, &mut commands)?;
                }
                f.finish();
                Ok(PhaseSteps {
                    commands,
                    timeout,
                    rerun,
                })
            }
            _ => self.err_at(
                node,
                format!(
                    "'{what}' must be a list of steps or a mapping with 'commands', found {}",
                    node.kind()
                ),
                "write the phase as a list of steps",
            ),
        }
    }

    /// `capture_outputs: {VAR: INDEX}` (or `{VAR: {command_index: INDEX}}`) names the output of
    /// setup command INDEX; it becomes that step's `capture`.
    fn capture_outputs(&self, node: &Node, commands: &mut [Step]) -> R<()> {
        let entries = self.expect_map(node, "capture_outputs")?;
        for (key, value) in entries {
            let index_node = value.get("command_index").unwrap_or(value);
            let index = self.uint(index_node, &format!("capture_outputs.{}", key.name))? as usize;
            let Some(step) = commands.get_mut(index) else {
                return self.err_at(
                    index_node,
                    format!(
                        "capture_outputs.{} names command {index}, but setup has {} commands",
                        key.name,
                        commands.len()
                    ),
                    "command indexes start at 0",
                );
            };
            step.capture = Some(key.name.clone());
        }
        Ok(())
    }

    fn map_phase(&self, node: &Node, key: Option<&Key>, env: &[EnvVar]) -> R<MapPhase> {
        let mut f = self.fields(node, "map")?;
        let Some(input_node) = f.get("input") else {
            let (line, column) = key.map_or((node.line, node.column), |k| (k.line, k.column));
            return self.err(
                line,
                column,
                "the map phase needs 'input'".into(),
                "set 'input:' to a JSON file or a command that prints the items",
            );
        };
        let input = self.map_input(input_node)?;
        let json_path = f.opt_string_or_null("json_path")?;
        let filter = match f.get("filter") {
            Some(n) if n.value == Value::Null => None,
            Some(n) => Some(self.expression(n, "filter")?),
            None => None,
        };
        let sort_by = f.opt_string_or_null("sort_by")?;
        let distinct = f.opt_string_or_null("distinct")?;
        let item_id = f.opt_string_or_null("item_id")?;
        let offset = f.opt_uint("offset", "offset")?.map(|v| v as usize);
        let max_items = f.opt_uint("max_items", "max_items")?.map(|v| v as usize);
        let max_parallel = match f.get("max_parallel") {
            Some(n) => self.max_parallel(n, env)?,
            None => 10,
        };
        let Some(template_node) = f.get("agent_template") else {
            let (line, column) = key.map_or((node.line, node.column), |k| (k.line, k.column));
            return self.err(
                line,
                column,
                "the map phase needs 'agent_template'".into(),
                "list the steps each agent runs under 'agent_template:'",
            );
        };
        let agent_template_line = f.key("agent_template").map_or(node.line, |k| k.line);
        let agent_template = self.agent_template(template_node)?;
        let mut agent_timeout = f.opt_duration("agent_timeout_secs", "agent_timeout_secs")?;
        if let Some(tc) = f.get("timeout_config") {
            let mut t = self.fields(tc, "timeout_config")?;
            if let Some(d) =
                t.opt_duration("agent_timeout_secs", "timeout_config.agent_timeout_secs")?
            {
                agent_timeout = Some(d);
            }
            t.finish();
        }
        f.finish();
        Ok(MapPhase {
            input,
            json_path,
            filter,
            sort_by,
            distinct,
            offset,
            max_items,
            item_id,
            max_parallel,
            agent_template,
            agent_template_line,
            agent_timeout,
        })
    }

    /// A number, or `${VAR}` naming a workflow env variable that holds one; at least 1.
    fn max_parallel(&self, n: &Node, env: &[EnvVar]) -> R<usize> {
        let v = match self.resolve_env_scalar(n, env) {
            Some(text) => match text.trim().parse::<u64>() {
                Ok(v) => v,
                Err(_) => {
                    return self.err_at(
                        n,
                        format!("max_parallel must be a whole number, found '{text}'"),
                        "write a number such as 4 (a ${VAR} must name a workflow env variable \
                         holding a number)",
                    );
                }
            },
            None => self.uint(n, "max_parallel")?,
        };
        if v == 0 {
            return self.err_at(
                n,
                "max_parallel must be at least 1".into(),
                "use 1 to run agents one at a time",
            );
        }
        Ok(v as usize)
    }

    /// `agent_template:` as a list of steps or `{commands: [...]}`; never empty.
    fn agent_template(&self, node: &Node) -> R<Vec<Step>> {
        let steps = match &node.value {
            Value::Map(_) => {
                let mut f = self.fields(node, "agent_template")?;
                let Some(c) = f.get("commands") else {
                    return self.err_at(
                        node,
                        "agent_template needs 'commands'".into(),
                        "write agent_template as a list of steps",
                    );
                };
                let steps = self.steps(c, "agent_template")?;
                f.finish();
                steps
            }
            _ => self.steps(node, "agent_template")?,
        };
        if steps.is_empty() {
            return self.err_at(
                node,
                "agent_template has no steps".into(),
                "add at least one step for each agent to run",
            );
        }
        Ok(steps)
    }

    fn map_input(&self, node: &Node) -> R<MapInput> {
        match &node.value {
            Value::Map(_) => {
                let mut f = self.fields(node, "map.input")?;
                let input = match (f.get("file"), f.get("command")) {
                    (Some(file), None) => MapInput::File(self.string(file, "input.file")?),
                    (None, Some(c)) => MapInput::Command(self.string(c, "input.command")?),
                    _ => {
                        return self.err_at(
                            node,
                            "map.input as a mapping needs exactly one of 'file' or 'command'"
                                .into(),
                            "write `input: {file: items.json}` or `input: {command: \"...\"}`",
                        );
                    }
                };
                f.finish();
                Ok(input)
            }
            Value::Str(s) => {
                let trimmed = s.trim();
                if trimmed.is_empty() {
                    return self.err_at(
                        node,
                        "map.input is empty".into(),
                        "name a JSON file or a command",
                    );
                }
                Ok(classify_input(trimmed))
            }
            _ => self.err_at(
                node,
                format!("map.input must be a string, found {}", node.kind()),
                "name a JSON file (items.json) or a command (\"find . -name '*.rs'\")",
            ),
        }
    }
}

/// See the module documentation for the rule.
pub fn classify_input(input: &str) -> MapInput {
    let input = input.trim();
    for prefix in ["shell:", "command:", "cmd:"] {
        if let Some(rest) = input.strip_prefix(prefix) {
            return MapInput::Command(rest.trim().to_string());
        }
    }
    if let Some(rest) = input.strip_prefix("file:") {
        return MapInput::File(rest.trim().to_string());
    }
    let without_placeholders = strip_placeholders(input);
    let shellish = without_placeholders
        .chars()
        .any(|c| c.is_whitespace() || "|;&<>()`'\"".contains(c));
    if shellish {
        MapInput::Command(input.to_string())
    } else {
        MapInput::File(input.to_string())
    }
}

fn strip_placeholders(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => rest = &rest[start + end + 1..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::classify_input;
    use crate::workflow::{MapInput, WorkflowKind, parse};

    const MAP: &str = "mode: mapreduce\nmap:\n  input: items.json\n  max_parallel: ${N}\n";

    #[test]
    fn map_keys_env_max_parallel_and_a_compiled_filter() {
        let text = format!(
            "env: {{N: 3}}\n{MAP}  filter: \"score >= 2\"\n  sort_by: ~\n  agent_template:\n    - shell: x\n"
        );
        let p = parse(Path::new("m.yml"), &text).unwrap();
        let WorkflowKind::MapReduce(mr) = &p.workflow.kind else {
            panic!("mapreduce")
        };
        assert_eq!(mr.map.max_parallel, 3);
        assert_eq!(mr.map.filter.as_deref(), Some("score >= 2"));
        assert_eq!(mr.map.sort_by, None);
        let broken = text.replace("score >= 2", "score >=");
        let e = parse(Path::new("m.yml"), &broken).unwrap_err();
        assert_eq!(e.position(), Some((6, 11)));
        assert!(e.to_string().contains("invalid filter expression"), "{e}");
    }

    #[test]
    fn input_text_decides_file_or_command() {
        assert_eq!(
            classify_input("${D}/a.json"),
            MapInput::File("${D}/a.json".into())
        );
        assert_eq!(classify_input("ls -1"), MapInput::Command("ls -1".into()));
        assert_eq!(classify_input("shell:gen"), MapInput::Command("gen".into()));
    }
}
