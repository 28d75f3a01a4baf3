//! Upstream Prodigy YAML -> [`Workflow`], with `file:line:col` errors and warnings.
//!
//! The YAML goes through serde-saphyr into a tree that keeps every node's position
//! (`super::yaml`), and this module walks that tree by hand. A typed serde struct would lose
//! positions and silently drop unknown keys; walking the tree lets every key be accounted for: it is
//! used, or it is warned about (unknown, or known upstream but without effect here), or a bad value
//! is an error naming its line and column.
//!
//! Map input rule (`map.input`): a string is a **command** when it contains whitespace or one of the
//! shell characters `| ; & < > ( ) \` ' "` (after removing `${...}` placeholders); otherwise it is a
//! **file** path (relative to the job worktree). So `items.json`, `.prodigy/x.json`,
//! `/tmp/items.json` and `${DIR}/items.json` are files, and `find . -name '*.rs'` or
//! `echo '[1,2]'` are commands. A single word is a file, so a one-word command needs an explicit
//! form: `input: {file: PATH}` and `input: {command: CMD}` (or a `shell:`/`command:`/`file:`
//! prefix on the string) settle any doubt.
//! Upstream decides by whether the path exists at run time, which makes a typo in a file name run
//! as a command; deciding from the text keeps `prodigy validate` deterministic.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::model::*;
use super::yaml::{self, Key, Node, Value};

/// A parsed workflow and the non-fatal findings about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub workflow: Workflow,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{}: cannot read the workflow file: {source}\n  help: check the path and that the file is readable", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}\n  help: {help}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        help: String,
    },
}

impl WorkflowError {
    /// `(line, column)` of an invalid workflow, for annotations.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            WorkflowError::Invalid { line, column, .. } => Some((*line, *column)),
            WorkflowError::Read { .. } => None,
        }
    }
}

/// Reads and parses a workflow file.
pub fn load(path: &Path) -> Result<Parsed, WorkflowError> {
    let text = std::fs::read_to_string(path).map_err(|source| WorkflowError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses workflow text; `path_for_messages` names the file in errors and gives the default name.
pub fn parse(path_for_messages: &Path, text: &str) -> Result<Parsed, WorkflowError> {
    let root = yaml::parse_document(text).map_err(|e| yaml_error(path_for_messages, &e))?;
    let mut p = Parser {
        path: path_for_messages,
        warnings: Vec::new(),
    };
    let workflow = p.workflow(&root)?;
    p.warnings.sort_by_key(|w| (w.line, w.column));
    Ok(Parsed {
        workflow,
        warnings: p.warnings,
    })
}

fn yaml_error(path: &Path, e: &serde_saphyr::Error) -> WorkflowError {
    let (line, column) = e
        .location()
        .map_or((1, 1), |l| (l.line() as usize, l.column() as usize));
    // The rendered error starts with "error: line L column C: message" followed by a snippet;
    // the snippet is noise in a one-line diagnostic, so keep only the message.
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or("invalid YAML");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first.find(": ") {
        Some(i) if first.starts_with("line ") => &first[i + 2..],
        _ => first,
    };
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return WorkflowError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message: format!("duplicate key '{key}'"),
            help: "a key may appear once per mapping; remove one of the entries".into(),
        };
    }
    WorkflowError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        message: format!("invalid YAML: {message}"),
        help:
            "fix the YAML syntax here; quote a value that contains ': ' or starts with a special \
               character, and indent a block scalar (`|`) deeper than its key"
                .into(),
    }
}

struct Parser<'a> {
    path: &'a Path,
    warnings: Vec<Warning>,
}

type R<T> = Result<T, WorkflowError>;

/// Keys that upstream Prodigy parses but that have no effect here, with the reason given to users.
const NO_EFFECT: &[(&str, &str)] = &[
    (
        "outputs",
        "step outputs are captured with `capture`/`capture_output` here",
    ),
    ("analysis", "prodigy runs no context analysis"),
    (
        "profiles",
        "environment profiles are not supported; set `env` values directly",
    ),
    (
        "env_files",
        "env files are not loaded; set `env` values directly",
    ),
    ("cache", "prodigy caches nothing between steps"),
    (
        "error_collection",
        "every failure is recorded individually in the store",
    ),
    ("temporary", "step `env` only ever applies to its own step"),
    ("clear_env", "steps always inherit the workflow environment"),
    ("name", "steps are identified by their line in the file"),
    ("description", "it is documentation only"),
    ("backoff", "retries happen on resume, not after a delay"),
    (
        "retry_on",
        "every failed item is retried on resume up to `max_retries`",
    ),
    (
        "collect_metrics",
        "prodigy records every attempt in its store",
    ),
    ("skip_validation", "validation always runs when configured"),
    (
        "ignore_validation_failure",
        "use `on_incomplete.fail_workflow: false` instead",
    ),
    ("auto_commit", "commits are made by the steps themselves"),
    (
        "merge",
        "a custom merge phase runs only in mapreduce workflows",
    ),
];

impl<'a> Parser<'a> {
    fn err<T>(&self, line: usize, column: usize, message: String, help: &str) -> R<T> {
        Err(WorkflowError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
            help: help.to_string(),
        })
    }

    fn err_at<T>(&self, node: &Node, message: String, help: &str) -> R<T> {
        self.err(node.line, node.column, message, help)
    }

    fn warn(&mut self, line: usize, column: usize, message: String) {
        self.warnings.push(Warning {
            line,
            column,
            message,
        });
    }

    /// Checks the keys of a mapping: unknown keys and keys without effect become warnings.
    /// `known` keys are the ones the caller reads.
    fn check_keys(&mut self, node: &Node, what: &str, known: &[&str]) {
        let Some(entries) = node.as_map() else { return };
        for (key, _) in entries {
            if known.contains(&key.name.as_str()) {
                continue;
            }
            if let Some((_, why)) = NO_EFFECT.iter().find(|(k, _)| *k == key.name) {
                self.warn(
                    key.line,
                    key.column,
                    format!("'{}' in {what} has no effect in prodigy: {why}", key.name),
                );
                continue;
            }
            let message = match did_you_mean(&key.name, known) {
                Some(s) => format!(
                    "unknown key '{}' in {what}; did you mean '{s}'? (it is ignored)",
                    key.name
                ),
                None => format!(
                    "unknown key '{}' in {what} (it is ignored); known keys: {}",
                    key.name,
                    known.join(", ")
                ),
            };
            self.warn(key.line, key.column, message);
        }
    }

    fn expect_map<'n>(&self, node: &'n Node, what: &str) -> R<&'n [(Key, Node)]> {
        match node.as_map() {
            Some(m) => Ok(m),
            None => self.err_at(
                node,
                format!("{what} must be a mapping, found {}", node.kind()),
                "write it as `key: value` lines indented under its parent key",
            ),
        }
    }

    fn string(&self, node: &Node, what: &str) -> R<String> {
        match &node.value {
            Value::Str(s) => Ok(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                Ok(node.scalar_text().unwrap_or_default())
            }
            _ => self.err_at(
                node,
                format!("{what} must be a string, found {}", node.kind()),
                "quote the value",
            ),
        }
    }

    fn bool(&self, node: &Node, what: &str) -> R<bool> {
        match &node.value {
            Value::Bool(b) => Ok(*b),
            Value::Str(s) if s == "true" || s == "false" => Ok(s == "true"),
            _ => self.err_at(
                node,
                format!("{what} must be true or false, found {}", node.kind()),
                "write true or false",
            ),
        }
    }

    fn uint(&self, node: &Node, what: &str) -> R<u64> {
        match &node.value {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            Value::Str(s) if s.trim().parse::<u64>().is_ok() => Ok(s.trim().parse().unwrap_or(0)),
            _ => self.err_at(
                node,
                format!(
                    "{what} must be a whole number >= 0, found {}",
                    describe(node)
                ),
                "write a number such as 3",
            ),
        }
    }

    fn float(&self, node: &Node, what: &str) -> R<f64> {
        match &node.value {
            Value::Int(i) => Ok(*i as f64),
            Value::Float(f) => Ok(*f),
            Value::Str(s) if s.trim().parse::<f64>().is_ok() => Ok(s.trim().parse().unwrap_or(0.0)),
            _ => self.err_at(
                node,
                format!("{what} must be a number, found {}", describe(node)),
                "write a number such as 0.5",
            ),
        }
    }

    fn duration(&self, node: &Node, what: &str) -> R<Duration> {
        let help = "write seconds as a number (300) or a duration such as \"30s\", \"5m\", \"1h\"";
        let secs = match &node.value {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            Value::Str(s) => match parse_duration_text(s) {
                Some(d) => d,
                None => {
                    return self.err_at(node, format!("{what} '{s}' is not a duration"), help);
                }
            },
            _ => {
                return self.err_at(
                    node,
                    format!("{what} must be a duration, found {}", node.kind()),
                    help,
                );
            }
        };
        if !secs.is_finite() || secs <= 0.0 {
            return self.err_at(
                node,
                format!("{what} must be positive, found {}", describe(node)),
                help,
            );
        }
        Ok(Duration::from_secs_f64(secs))
    }

    // ---- top level ---------------------------------------------------------------------------

    fn workflow(&mut self, root: &Node) -> R<Workflow> {
        let default_name = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "workflow".into());
        match &root.value {
            Value::Seq(_) => Ok(Workflow {
                name: default_name,
                env: Vec::new(),
                kind: WorkflowKind::Standard {
                    commands: self.steps(root, "workflow")?,
                },
                agent: AgentSettings::default(),
                budget: Budget::default(),
            }),
            Value::Map(_) => {
                let name = match root.get("name") {
                    Some(n) => self.string(n, "name")?,
                    None => default_name,
                };
                let mut env = match root.get("env") {
                    Some(n) => self.env(n)?,
                    None => Vec::new(),
                };
                if let Some(secrets) = root.get("secrets") {
                    env.extend(self.secrets(secrets)?);
                }
                let mode = match root.get("mode") {
                    Some(n) => Some((n, self.string(n, "mode")?)),
                    None => None,
                };
                let is_mapreduce = match &mode {
                    Some((_, m)) if m == "mapreduce" => true,
                    Some((_, m)) if m == "standard" => {
                        if let Some(k) = root.key("map") {
                            return self.err(
                                k.line,
                                k.column,
                                "'map' in a workflow with 'mode: standard'".into(),
                                "set 'mode: mapreduce' or remove the map phase",
                            );
                        }
                        false
                    }
                    Some((n, m)) => {
                        return self.err_at(
                            n,
                            format!("unknown mode '{m}'"),
                            "use 'mode: standard' or 'mode: mapreduce'",
                        );
                    }
                    None => root.get("map").is_some(),
                };
                let kind = if is_mapreduce {
                    WorkflowKind::MapReduce(Box::new(self.mapreduce(root, &env)?))
                } else {
                    self.check_keys(
                        root,
                        "a standard workflow",
                        &[
                            "name", "mode", "env", "secrets", "commands", "agent", "budget",
                        ],
                    );
                    let Some(commands) = root.get("commands") else {
                        return self.err_at(
                            root,
                            "a standard workflow needs 'commands' (or 'mode: mapreduce' with a \
                             'map' phase)"
                                .into(),
                            "add 'commands:' with a list of steps, or write the file as a list \
                             of steps",
                        );
                    };
                    WorkflowKind::Standard {
                        commands: self.steps(commands, "commands")?,
                    }
                };
                let agent = match root.get("agent") {
                    Some(n) => self.agent_settings(n, "agent", &[])?,
                    None => AgentSettings::default(),
                };
                let budget = match root.get("budget") {
                    Some(n) => self.budget(n)?,
                    None => Budget::default(),
                };
                Ok(Workflow {
                    name,
                    env,
                    kind,
                    agent,
                    budget,
                })
            }
            Value::Null => self.err_at(
                root,
                "the workflow file is empty".into(),
                "write a list of steps or a mapping with 'commands' or 'map'",
            ),
            _ => self.err_at(
                root,
                format!(
                    "a workflow must be a list or a mapping, found {}",
                    root.kind()
                ),
                "write a list of steps or a mapping with 'commands' or 'map'",
            ),
        }
    }

    fn env(&mut self, node: &Node) -> R<Vec<EnvVar>> {
        let entries = self.expect_map(node, "env")?;
        let mut vars = Vec::new();
        for (key, value) in entries {
            let name = key.name.clone();
            match &value.value {
                Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                    vars.push(EnvVar {
                        name,
                        value: value.scalar_text().unwrap_or_default(),
                        secret: false,
                    })
                }
                Value::Null => vars.push(EnvVar {
                    name,
                    value: String::new(),
                    secret: false,
                }),
                Value::Map(_) if value.get("value").is_some() => {
                    self.check_keys(value, &format!("env '{name}'"), &["value", "secret"]);
                    let secret = match value.get("secret") {
                        Some(s) => self.bool(s, "secret")?,
                        None => false,
                    };
                    let v = self.string(value.get("value").unwrap_or(value), "value")?;
                    vars.push(EnvVar {
                        name,
                        value: v,
                        secret,
                    });
                }
                Value::Map(_) => {
                    // Upstream's dynamic forms ({command}, {condition, when_true, when_false})
                    // are not evaluated here; the variable is left unset and the user is told.
                    self.warn(
                        key.line,
                        key.column,
                        format!(
                            "env '{name}' uses a dynamic form (command/condition) that prodigy \
                             does not evaluate, so it is not set; give it a plain value or \
                             {{secret, value}}"
                        ),
                    );
                }
                Value::Seq(_) => {
                    return self.err_at(
                        value,
                        format!("env '{name}' must be a string, number, boolean or {{secret, value}}, found a list"),
                        "give the variable a single value",
                    );
                }
            }
        }
        Ok(vars)
    }

    fn secrets(&mut self, node: &Node) -> R<Vec<EnvVar>> {
        let entries = self.expect_map(node, "secrets")?;
        let mut vars = Vec::new();
        for (key, value) in entries {
            let v = match value.get("value").or(value.get("env")) {
                Some(v) => self.string(v, "secret value")?,
                None => self.string(value, &format!("secret '{}'", key.name))?,
            };
            vars.push(EnvVar {
                name: key.name.clone(),
                value: v,
                secret: true,
            });
        }
        Ok(vars)
    }

    // ---- mapreduce ---------------------------------------------------------------------------

    fn mapreduce(&mut self, root: &Node, env: &[EnvVar]) -> R<MapReduce> {
        self.check_keys(
            root,
            "a mapreduce workflow",
            &[
                "name",
                "mode",
                "env",
                "secrets",
                "setup",
                "map",
                "reduce",
                "merge",
                "error_policy",
                "on_item_failure",
                "continue_on_failure",
                "max_failures",
                "failure_threshold",
                "max_retries",
                "retry_config",
                "agent",
                "budget",
            ],
        );
        let setup = match root.get("setup") {
            Some(n) => Some(self.phase(n, "setup", true)?),
            None => None,
        };
        let Some(map_node) = root.get("map") else {
            return self.err_at(
                root,
                "a mapreduce workflow needs a 'map' phase".into(),
                "add 'map:' with 'input' and 'agent_template'",
            );
        };
        let map = self.map_phase(map_node, root.key("map"), env)?;
        let reduce = match root.get("reduce") {
            Some(n) => Some(self.phase(n, "reduce", false)?),
            None => None,
        };
        let merge = match root.get("merge") {
            Some(n) => Some(self.phase(n, "merge", false)?),
            None => None,
        };
        let error_policy = self.error_policy(root)?;
        Ok(MapReduce {
            setup,
            map,
            reduce,
            merge,
            error_policy,
        })
    }

    fn phase(&mut self, node: &Node, what: &str, is_setup: bool) -> R<Phase> {
        match &node.value {
            Value::Seq(_) => Ok(Phase {
                commands: self.steps(node, what)?,
                timeout: None,
            }),
            Value::Map(_) => {
                let mut known = vec!["commands", "timeout"];
                if is_setup {
                    known.push("capture_outputs");
                }
                self.check_keys(node, what, &known);
                let Some(commands) = node.get("commands") else {
                    return self.err_at(
                        node,
                        format!("'{what}' needs 'commands'"),
                        "list the phase's steps under 'commands:'",
                    );
                };
                let mut commands = self.steps(commands, what)?;
                let timeout = match node.get("timeout") {
                    Some(t) => Some(self.duration(t, &format!("{what}.timeout"))?),
                    None => None,
                };
                if let (true, Some(caps)) = (is_setup, node.get("capture_outputs")) {
                    self.capture_outputs(caps, &mut commands)?;
                }
                Ok(Phase { commands, timeout })
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
    fn capture_outputs(&mut self, node: &Node, commands: &mut [Step]) -> R<()> {
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

    fn map_phase(&mut self, node: &Node, key: Option<&Key>, env: &[EnvVar]) -> R<MapPhase> {
        self.expect_map(node, "map")?;
        self.check_keys(
            node,
            "map",
            &[
                "input",
                "json_path",
                "agent_template",
                "max_parallel",
                "filter",
                "sort_by",
                "distinct",
                "offset",
                "max_items",
                "item_id",
                "agent_timeout_secs",
                "timeout_config",
            ],
        );
        let Some(input_node) = node.get("input") else {
            let (line, column) = key.map_or((node.line, node.column), |k| (k.line, k.column));
            return self.err(
                line,
                column,
                "the map phase needs 'input'".into(),
                "set 'input:' to a JSON file or a command that prints the items",
            );
        };
        let input = self.map_input(input_node)?;
        let opt_string = |p: &Self, k: &str| -> R<Option<String>> {
            match node.get(k) {
                Some(n) if n.value == Value::Null => Ok(None),
                Some(n) => p.string(n, k).map(Some),
                None => Ok(None),
            }
        };
        let json_path = opt_string(self, "json_path")?;
        let filter = match node.get("filter") {
            Some(n) if n.value == Value::Null => None,
            Some(n) => Some(self.expression(n, "filter")?),
            None => None,
        };
        let sort_by = opt_string(self, "sort_by")?;
        let distinct = opt_string(self, "distinct")?;
        let item_id = opt_string(self, "item_id")?;
        let opt_usize = |p: &Self, k: &str| -> R<Option<usize>> {
            match node.get(k) {
                Some(n) => p.uint(n, k).map(|v| Some(v as usize)),
                None => Ok(None),
            }
        };
        let offset = opt_usize(self, "offset")?;
        let max_items = opt_usize(self, "max_items")?;
        let max_parallel = match node.get("max_parallel") {
            Some(n) => {
                let resolved = self.resolve_env_scalar(n, env);
                let v = match &resolved {
                    Some(text) => match text.trim().parse::<u64>() {
                        Ok(v) => v,
                        Err(_) => {
                            return self.err_at(
                                n,
                                format!("max_parallel must be a whole number, found '{text}'"),
                                "write a number such as 4 (a ${VAR} must name a workflow env \
                                 variable holding a number)",
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
                v as usize
            }
            None => 10,
        };
        let Some(template_node) = node.get("agent_template") else {
            let (line, column) = key.map_or((node.line, node.column), |k| (k.line, k.column));
            return self.err(
                line,
                column,
                "the map phase needs 'agent_template'".into(),
                "list the steps each agent runs under 'agent_template:'",
            );
        };
        let agent_template_line = node.key("agent_template").map_or(node.line, |k| k.line);
        let agent_template = match &template_node.value {
            Value::Map(_) => {
                self.check_keys(template_node, "agent_template", &["commands"]);
                match template_node.get("commands") {
                    Some(c) => self.steps(c, "agent_template")?,
                    None => {
                        return self.err_at(
                            template_node,
                            "agent_template needs 'commands'".into(),
                            "write agent_template as a list of steps",
                        );
                    }
                }
            }
            _ => self.steps(template_node, "agent_template")?,
        };
        if agent_template.is_empty() {
            return self.err_at(
                template_node,
                "agent_template has no steps".into(),
                "add at least one step for each agent to run",
            );
        }
        let mut agent_timeout = match node.get("agent_timeout_secs") {
            Some(n) => Some(self.duration(n, "agent_timeout_secs")?),
            None => None,
        };
        if let Some(tc) = node.get("timeout_config") {
            self.expect_map(tc, "timeout_config")?;
            self.check_keys(tc, "timeout_config", &["agent_timeout_secs"]);
            if let Some(n) = tc.get("agent_timeout_secs") {
                agent_timeout = Some(self.duration(n, "timeout_config.agent_timeout_secs")?);
            }
        }
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

    /// A scalar that is exactly `${VAR}` or `$VAR` naming a workflow env variable resolves to that
    /// variable's value at parse time (upstream fixtures write `max_parallel: ${MAX_PARALLEL}`).
    fn resolve_env_scalar(&self, node: &Node, env: &[EnvVar]) -> Option<String> {
        let Value::Str(s) = &node.value else {
            return None;
        };
        let s = s.trim();
        let name = s
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .or_else(|| s.strip_prefix('$'))?;
        match env.iter().find(|v| v.name == name) {
            Some(v) => Some(v.value.clone()),
            None => Some(s.to_string()),
        }
    }

    fn map_input(&mut self, node: &Node) -> R<MapInput> {
        match &node.value {
            Value::Map(_) => {
                self.check_keys(node, "map.input", &["file", "command"]);
                match (node.get("file"), node.get("command")) {
                    (Some(f), None) => Ok(MapInput::File(self.string(f, "input.file")?)),
                    (None, Some(c)) => Ok(MapInput::Command(self.string(c, "input.command")?)),
                    _ => self.err_at(
                        node,
                        "map.input as a mapping needs exactly one of 'file' or 'command'".into(),
                        "write `input: {file: items.json}` or `input: {command: \"...\"}`",
                    ),
                }
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

    fn error_policy(&mut self, root: &Node) -> R<ErrorPolicy> {
        let mut policy = ErrorPolicy {
            on_item_failure: OnItemFailure::Dlq,
            continue_on_failure: true,
            max_failures: None,
            failure_threshold: None,
            max_retries: 2,
            failures_acceptable: false,
            circuit_breaker: None,
        };
        // Top-level shortcuts first, then `error_policy:` (upstream merges them the same way).
        self.error_policy_fields(root, &mut policy)?;
        if let Some(n) = root.get("error_policy") {
            self.expect_map(n, "error_policy")?;
            self.check_keys(
                n,
                "error_policy",
                &[
                    "on_item_failure",
                    "continue_on_failure",
                    "max_failures",
                    "failure_threshold",
                    "max_retries",
                    "retry_config",
                    "failures_acceptable",
                    "circuit_breaker",
                ],
            );
            self.error_policy_fields(n, &mut policy)?;
            if let Some(cb) = n.get("circuit_breaker") {
                self.expect_map(cb, "circuit_breaker")?;
                self.check_keys(
                    cb,
                    "circuit_breaker",
                    &[
                        "failure_threshold",
                        "success_threshold",
                        "timeout",
                        "half_open_requests",
                    ],
                );
                for k in ["success_threshold", "timeout", "half_open_requests"] {
                    if let Some(key) = cb.key(k) {
                        self.warn(
                            key.line,
                            key.column,
                            format!(
                                "circuit_breaker.{k} has no effect in prodigy: an open circuit \
                                 stops the run, and `prodigy resume` closes it"
                            ),
                        );
                    }
                }
                if let Some(t) = cb.get("failure_threshold") {
                    let v = self.uint(t, "circuit_breaker.failure_threshold")?;
                    if v == 0 {
                        return self.err_at(
                            t,
                            "circuit_breaker.failure_threshold must be at least 1".into(),
                            "write how many identical first failures open the circuit, e.g. 3",
                        );
                    }
                    policy.circuit_breaker = Some(v as usize);
                }
            }
            if let Some(b) = n.get("failures_acceptable") {
                policy.failures_acceptable = self.bool(b, "failures_acceptable")?;
            }
        }
        Ok(policy)
    }

    fn error_policy_fields(&mut self, node: &Node, policy: &mut ErrorPolicy) -> R<()> {
        if let Some(n) = node.get("on_item_failure") {
            let s = self.string(n, "on_item_failure")?;
            policy.on_item_failure = match s.as_str() {
                "dlq" => OnItemFailure::Dlq,
                "skip" => OnItemFailure::Skip,
                "stop" | "fail" => OnItemFailure::Stop,
                "retry" => {
                    self.warn(
                        n.line,
                        n.column,
                        "on_item_failure 'retry' is treated as 'dlq': failed items are retried \
                         on resume up to max_retries"
                            .into(),
                    );
                    OnItemFailure::Dlq
                }
                other => {
                    return self.err_at(
                        n,
                        format!("unknown on_item_failure '{other}'"),
                        "use dlq, skip or stop",
                    );
                }
            };
        }
        if let Some(n) = node.get("continue_on_failure") {
            policy.continue_on_failure = self.bool(n, "continue_on_failure")?;
        }
        if let Some(n) = node.get("max_failures") {
            policy.max_failures = Some(self.uint(n, "max_failures")? as usize);
        }
        if let Some(n) = node.get("failure_threshold") {
            let v = self.float(n, "failure_threshold")?;
            if !(0.0..=1.0).contains(&v) {
                return self.err_at(
                    n,
                    format!("failure_threshold must be between 0.0 and 1.0, found {v}"),
                    "write a ratio such as 0.2 for 20%",
                );
            }
            policy.failure_threshold = Some(v);
        }
        if let Some(n) = node.get("max_retries") {
            policy.max_retries = self.uint(n, "max_retries")? as u32;
        }
        if let Some(rc) = node.get("retry_config") {
            self.expect_map(rc, "retry_config")?;
            self.check_keys(
                rc,
                "retry_config",
                &["max_attempts", "max_retries", "backoff", "retry_on"],
            );
            if let Some(n) = rc.get("max_attempts").or(rc.get("max_retries")) {
                policy.max_retries = self.uint(n, "retry_config.max_attempts")? as u32;
            }
        }
        Ok(())
    }

    // ---- steps -------------------------------------------------------------------------------

    fn steps(&mut self, node: &Node, what: &str) -> R<Vec<Step>> {
        match &node.value {
            Value::Seq(items) => items.iter().map(|n| self.step(n, &[])).collect(),
            Value::Null => Ok(Vec::new()),
            _ => self.err_at(
                node,
                format!("{what} must be a list of steps, found {}", node.kind()),
                "write each step as a list entry starting with '- shell:' or '- claude:'",
            ),
        }
    }

    /// One step. `extra` keys are read by the caller (e.g. `max_attempts` when a handler is
    /// written as a single step), so they are not warned about.
    fn step(&mut self, node: &Node, extra: &[&str]) -> R<Step> {
        const KEYS: &[&str] = &[
            "shell",
            "claude",
            "write_file",
            "foreach",
            "id",
            "timeout",
            "when",
            "env",
            "working_dir",
            "capture",
            "capture_output",
            "capture_format",
            "capture_streams",
            "commit_required",
            "allow_failure",
            "on_failure",
            "on_success",
            "validate",
        ];
        let help = "start the step with one of shell:, claude:, write_file: or foreach:";
        if let Value::Str(s) = &node.value {
            // Bare strings in a list are upstream's legacy command form: `- /prodigy-lint`.
            if s.starts_with('/') {
                return Ok(bare_step(
                    Action::Claude(ClaudeCommand {
                        prompt: s.clone(),
                        settings: AgentSettings::default(),
                    }),
                    node.line,
                ));
            }
        }
        self.expect_map(node, "a step")?;
        let mut known: Vec<&str> = KEYS.to_vec();
        known.extend_from_slice(extra);
        self.check_keys(node, "step", &known);

        let kinds: Vec<&Key> = ["shell", "claude", "write_file", "foreach"]
            .iter()
            .filter_map(|k| node.key(k))
            .collect();
        let action = match kinds.as_slice() {
            [] => {
                return self.err_at(node, "a step needs a command".into(), help);
            }
            [_] => {
                let key = kinds[0];
                let value = node.get(&key.name).unwrap_or(node);
                match key.name.as_str() {
                    "shell" => Action::Shell(self.command_text(value, "shell")?),
                    "claude" => Action::Claude(self.claude(value)?),
                    "write_file" => Action::WriteFile(self.write_file(value)?),
                    _ => Action::Foreach(self.foreach(value)?),
                }
            }
            [_, second, ..] => {
                return self.err(
                    second.line,
                    second.column,
                    format!(
                        "a step has more than one command ({})",
                        kinds
                            .iter()
                            .map(|k| k.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
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

        let mut step = bare_step(action, node.line);
        if let Some(n) = node.get("id") {
            step.id = Some(self.string(n, "id")?);
        }
        if let Some(n) = node.get("timeout") {
            step.timeout = Some(self.duration(n, "timeout")?);
        }
        if let Some(n) = node.get("when") {
            step.when = Some(self.expression(n, "when")?);
        }
        if let Some(n) = node.get("env") {
            step.env = self.env(n)?;
        }
        if let Some(n) = node.get("working_dir") {
            step.working_dir = Some(self.string(n, "working_dir")?);
        }
        if let Some(n) = node.get("capture_output") {
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
        if let Some(n) = node.get("capture") {
            step.capture = Some(self.string(n, "capture")?);
        }
        if let Some(n) = node.get("capture_format") {
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
        if let Some(n) = node.get("capture_streams") {
            step.capture_streams = self.capture_streams(n)?;
        }
        if let Some(n) = node.get("commit_required") {
            step.commit_required = self.bool(n, "commit_required")?;
        }
        if let Some(n) = node.get("allow_failure") {
            step.allow_failure = self.bool(n, "allow_failure")?;
        }
        if let Some(n) = node.get("on_failure") {
            step.on_failure = self.on_failure(n)?;
        }
        if let Some(n) = node.get("on_success") {
            step.on_success = Some(Box::new(self.step(n, &[])?));
        }
        if let Some(n) = node.get("validate") {
            step.validate = Some(self.validate(n)?);
        }
        Ok(step)
    }

    /// `claude: "/cmd args"` or `claude: {prompt: ..., model: ..., allowed_tools: [...], ...}`.
    fn claude(&mut self, node: &Node) -> R<ClaudeCommand> {
        if node.as_map().is_none() {
            return Ok(ClaudeCommand {
                prompt: join_continuations(&self.command_text(node, "claude")?),
                settings: AgentSettings::default(),
            });
        }
        let prompt_keys: Vec<&Key> = ["prompt", "command"]
            .iter()
            .filter_map(|k| node.key(k))
            .collect();
        let prompt_node = match prompt_keys.as_slice() {
            [] => {
                return self.err_at(
                    node,
                    "a claude step written as a mapping needs 'prompt' (or 'command')".into(),
                    "write claude: {prompt: \"/my-command arg\", model: ...}",
                );
            }
            [k] => node.get(&k.name).unwrap_or(node),
            [_, second, ..] => {
                return self.err(
                    second.line,
                    second.column,
                    "a claude step has both 'prompt' and 'command'".into(),
                    "they are the same thing; keep one",
                );
            }
        };
        let prompt = join_continuations(&self.command_text(prompt_node, "claude")?);
        let settings = self.agent_settings(node, "a claude step", &["prompt", "command"])?;
        Ok(ClaudeCommand { prompt, settings })
    }

    /// An agent settings mapping (`agent:` at the top, or a `claude:` step's keys). Unknown keys
    /// are errors here, not warnings: a misspelt `max_turns` would silently lift a limit.
    fn agent_settings(&mut self, node: &Node, what: &str, extra: &[&str]) -> R<AgentSettings> {
        const KEYS: &[&str] = &[
            "model",
            "allowed_tools",
            "disallowed_tools",
            "max_turns",
            "permission_mode",
            "append_system_prompt",
            "extra_args",
            "dangerously_skip_permissions",
        ];
        let entries = self.expect_map(node, what)?;
        let mut known: Vec<&str> = KEYS.to_vec();
        known.extend_from_slice(extra);
        for (key, _) in entries {
            if !known.contains(&key.name.as_str()) {
                let hint = match did_you_mean(&key.name, &known) {
                    Some(s) => format!("did you mean '{s}'?"),
                    None => format!("known keys: {}", known.join(", ")),
                };
                return self.err(
                    key.line,
                    key.column,
                    format!("unknown key '{}' in {what}", key.name),
                    &hint,
                );
            }
        }
        let mut out = AgentSettings::default();
        if let Some(n) = node.get("model") {
            out.model = Some(self.command_text(n, "model")?);
        }
        if let Some(n) = node.get("allowed_tools") {
            out.allowed_tools = Some(self.tool_list(n, "allowed_tools")?);
        }
        if let Some(n) = node.get("disallowed_tools") {
            out.disallowed_tools = Some(self.tool_list(n, "disallowed_tools")?);
        }
        if let (Some(allowed), Some(denied)) = (&out.allowed_tools, &out.disallowed_tools)
            && let Some(both) = allowed.iter().find(|t| denied.contains(t))
        {
            let k = node.key("disallowed_tools").expect("parsed above");
            return self.err(
                k.line,
                k.column,
                format!("tool '{both}' is both allowed and disallowed in {what}"),
                "list it in one of allowed_tools and disallowed_tools",
            );
        }
        if let Some(n) = node.get("max_turns") {
            let v = self.uint(n, "max_turns")?;
            if v == 0 || v > u64::from(u32::MAX) {
                return self.err_at(
                    n,
                    format!("max_turns must be at least 1, found {v}"),
                    "write the number of model turns the agent may take, e.g. 30",
                );
            }
            out.max_turns = Some(v as u32);
        }
        if let Some(n) = node.get("permission_mode") {
            let m = self.string(n, "permission_mode")?;
            out.permission_mode =
                Some(
                    PermissionMode::parse(&m).ok_or_else(|| WorkflowError::Invalid {
                        path: self.path.to_path_buf(),
                        line: n.line,
                        column: n.column,
                        message: format!("unknown permission_mode '{m}'"),
                        help: format!(
                            "use one of {}",
                            PermissionMode::ALL.map(PermissionMode::as_str).join(", ")
                        ),
                    })?,
                );
        }
        if let Some(n) = node.get("dangerously_skip_permissions") {
            let skip = self.bool(n, "dangerously_skip_permissions")?;
            match (skip, out.permission_mode) {
                (true, Some(m)) if m != PermissionMode::BypassPermissions => {
                    return self.err_at(
                        n,
                        format!(
                            "dangerously_skip_permissions: true conflicts with permission_mode: {}",
                            m.as_str()
                        ),
                        "keep one: dangerously_skip_permissions is permission_mode: bypassPermissions",
                    );
                }
                (true, _) => out.permission_mode = Some(PermissionMode::BypassPermissions),
                (false, Some(PermissionMode::BypassPermissions)) => {
                    return self.err_at(
                        n,
                        "dangerously_skip_permissions: false conflicts with permission_mode: bypassPermissions".into(),
                        "keep one of the two keys",
                    );
                }
                (false, _) => {}
            }
        }
        if let Some(n) = node.get("append_system_prompt") {
            out.append_system_prompt = Some(self.string(n, "append_system_prompt")?);
        }
        if let Some(n) = node.get("extra_args") {
            out.extra_args = Some(self.string_list(n, "extra_args")?);
        }
        Ok(out)
    }

    /// Tool names as a list or a comma/space separated string (the CLI's own forms).
    fn tool_list(&self, node: &Node, what: &str) -> R<Vec<String>> {
        let list = match &node.value {
            Value::Str(s) => split_tools(s),
            Value::Seq(_) => self.string_list(node, what)?,
            _ => {
                return self.err_at(
                    node,
                    format!("{what} must be a list of tool names, found {}", node.kind()),
                    "write e.g. [Bash, Edit, Read]",
                );
            }
        };
        if list.iter().any(|t| t.trim().is_empty()) {
            return self.err_at(
                node,
                format!("{what} has an empty tool name"),
                "write tool names such as Bash, Edit, \"Bash(git *)\"",
            );
        }
        Ok(list)
    }

    fn string_list(&self, node: &Node, what: &str) -> R<Vec<String>> {
        match &node.value {
            Value::Seq(items) => items.iter().map(|n| self.string(n, what)).collect(),
            Value::Str(s) => Ok(vec![s.clone()]),
            _ => self.err_at(
                node,
                format!("{what} must be a list of strings, found {}", node.kind()),
                "write a YAML list: [a, b]",
            ),
        }
    }

    /// `budget: {max_cost_usd, max_tokens, max_duration}`.
    fn budget(&mut self, node: &Node) -> R<Budget> {
        let entries = self.expect_map(node, "budget")?;
        let known = ["max_cost_usd", "max_tokens", "max_duration"];
        for (key, _) in entries {
            if !known.contains(&key.name.as_str()) {
                return self.err(
                    key.line,
                    key.column,
                    format!("unknown key '{}' in budget", key.name),
                    "budget takes max_cost_usd, max_tokens and max_duration",
                );
            }
        }
        let mut b = Budget::default();
        if let Some(n) = node.get("max_cost_usd") {
            let v = self.float(n, "max_cost_usd")?;
            if !v.is_finite() || v <= 0.0 {
                return self.err_at(
                    n,
                    format!("max_cost_usd must be positive, found {v}"),
                    "write a dollar amount such as 5 or 0.50",
                );
            }
            b.max_cost_usd = Some(v);
        }
        if let Some(n) = node.get("max_tokens") {
            let v = self.uint(n, "max_tokens")?;
            if v == 0 {
                return self.err_at(
                    n,
                    "max_tokens must be at least 1".into(),
                    "write a token count such as 2000000",
                );
            }
            b.max_tokens = Some(v);
        }
        if let Some(n) = node.get("max_duration") {
            b.max_duration = Some(self.duration(n, "max_duration")?);
        }
        Ok(b)
    }

    /// A `when:` or `filter:` expression, compiled now so a broken one fails the load.
    fn expression(&self, node: &Node, what: &str) -> R<String> {
        let text = self.string(node, what)?;
        match super::expr::Expr::parse(&text) {
            Ok(_) => Ok(text),
            Err(e) => self.err_at(
                node,
                format!("invalid {what} expression {e}"),
                "see README \"Semantics worth knowing\" for the expression language, e.g. \
                 `score >= 10 && tags contains 'x'`",
            ),
        }
    }

    fn command_text(&self, node: &Node, what: &str) -> R<String> {
        let s = self.string(node, what)?;
        if s.trim().is_empty() {
            return self.err_at(
                node,
                format!("the {what} command is empty"),
                "write the command to run",
            );
        }
        Ok(s)
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

    /// The handler forms: a step, a list of steps, or `{claude|shell|commands, max_attempts,
    /// fail_workflow}`.
    fn on_failure(&mut self, node: &Node) -> R<Option<OnFailure>> {
        let extra = [
            "max_attempts",
            "max_retries",
            "fail_workflow",
            "commands",
            "retry_original",
        ];
        let (steps, map) = match &node.value {
            Value::Seq(_) => (self.steps(node, "on_failure")?, None),
            Value::Map(_) if node.get("commands").is_some() => {
                self.check_keys(node, "on_failure", &extra);
                (
                    self.steps(node.get("commands").unwrap_or(node), "on_failure.commands")?,
                    Some(node),
                )
            }
            Value::Map(_) => {
                let has_command = ["shell", "claude", "write_file", "foreach"]
                    .iter()
                    .any(|k| node.get(k).is_some());
                if has_command {
                    (vec![self.step(node, &extra)?], Some(node))
                } else {
                    // `{max_attempts, fail_workflow}` alone: retry the step with no handler.
                    self.check_keys(node, "on_failure", &extra);
                    (Vec::new(), Some(node))
                }
            }
            Value::Str(s) if s.starts_with('/') => (vec![self.step(node, &[])?], None),
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
        let mut max_attempts = 1;
        let mut fail_workflow = true;
        if let Some(m) = map {
            if let Some(n) = m.get("max_attempts").or(m.get("max_retries")) {
                max_attempts = self.uint(n, "max_attempts")? as u32;
                if max_attempts == 0 {
                    return self.err_at(
                        n,
                        "max_attempts must be at least 1".into(),
                        "use 1 to run the handler once without retrying",
                    );
                }
            }
            if let Some(n) = m.get("fail_workflow") {
                fail_workflow = self.bool(n, "fail_workflow")?;
            }
            if let Some(n) = m.get("retry_original") {
                // Upstream only re-runs the step when asked; attempts count tries of the step.
                if !self.bool(n, "retry_original")? {
                    max_attempts = 1;
                }
            }
        }
        Ok(Some(OnFailure {
            steps,
            max_attempts,
            fail_workflow,
        }))
    }

    fn validate(&mut self, node: &Node) -> R<Validate> {
        self.expect_map(node, "validate")?;
        let extra = ["commands", "result_file", "threshold", "on_incomplete"];
        let commands = match node.get("commands") {
            Some(c) => {
                self.check_keys(node, "validate", &extra);
                self.steps(c, "validate.commands")?
            }
            None => {
                let has_command = ["shell", "claude"].iter().any(|k| node.get(k).is_some());
                if has_command {
                    vec![self.step(node, &extra)?]
                } else {
                    self.check_keys(node, "validate", &extra);
                    Vec::new()
                }
            }
        };
        let result_file = match node.get("result_file") {
            Some(n) => Some(self.string(n, "result_file")?),
            None => None,
        };
        if commands.is_empty() && result_file.is_none() {
            return self.err_at(
                node,
                "validate needs 'commands' (or a claude/shell command) or a 'result_file'".into(),
                "add the command that checks the step's work",
            );
        }
        let threshold = match node.get("threshold") {
            Some(n) => {
                let t = self.float(n, "threshold")?;
                if !(0.0..=100.0).contains(&t) {
                    return self.err_at(
                        n,
                        format!("threshold must be between 0 and 100, found {t}"),
                        "write a percentage such as 75",
                    );
                }
                t
            }
            None => 100.0,
        };
        let on_incomplete = match node.get("on_incomplete") {
            Some(n) => Some(self.on_incomplete(n)?),
            None => None,
        };
        Ok(Validate {
            commands,
            result_file,
            threshold,
            on_incomplete,
        })
    }

    fn on_incomplete(&mut self, node: &Node) -> R<OnIncomplete> {
        let extra = ["commands", "max_attempts", "fail_workflow"];
        let commands = match &node.value {
            Value::Seq(_) => self.steps(node, "on_incomplete")?,
            Value::Map(_) => match node.get("commands") {
                Some(c) => {
                    self.check_keys(node, "on_incomplete", &extra);
                    self.steps(c, "on_incomplete.commands")?
                }
                None => vec![self.step(node, &extra)?],
            },
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
        let mut max_attempts = 1;
        let mut fail_workflow = true;
        if let Some(n) = node.get("max_attempts") {
            max_attempts = self.uint(n, "max_attempts")? as u32;
            if max_attempts == 0 {
                return self.err_at(
                    n,
                    "max_attempts must be at least 1".into(),
                    "use 1 to try once",
                );
            }
        }
        if let Some(n) = node.get("fail_workflow") {
            fail_workflow = self.bool(n, "fail_workflow")?;
        }
        Ok(OnIncomplete {
            commands,
            max_attempts,
            fail_workflow,
        })
    }

    fn write_file(&mut self, node: &Node) -> R<WriteFile> {
        self.expect_map(node, "write_file")?;
        self.check_keys(
            node,
            "write_file",
            &["path", "content", "format", "create_dirs", "mode"],
        );
        let Some(path_node) = node.get("path") else {
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
        let content = match node.get("content") {
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
        let format = match node.get("format") {
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
        let create_dirs = match node.get("create_dirs") {
            Some(n) => self.bool(n, "create_dirs")?,
            None => false,
        };
        let mode = match node.get("mode") {
            Some(n) => Some(self.file_mode(n)?),
            None => None,
        };
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

    fn foreach(&mut self, node: &Node) -> R<Foreach> {
        self.expect_map(node, "foreach")?;
        self.check_keys(
            node,
            "foreach",
            &[
                "foreach",
                "input",
                "over",
                "items",
                "do",
                "steps",
                "parallel",
                "continue_on_error",
                "max_items",
            ],
        );
        let Some(input) = node
            .get("foreach")
            .or(node.get("input"))
            .or(node.get("over"))
            .or(node.get("items"))
        else {
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
        let Some(body) = node.get("do").or(node.get("steps")) else {
            return self.err_at(
                node,
                "foreach needs 'do' with the steps to run per value".into(),
                "add 'do:' with a list of steps",
            );
        };
        let steps = self.steps(body, "foreach.do")?;
        let parallel = match node.get("parallel") {
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
        let continue_on_error = match node.get("continue_on_error") {
            Some(n) => self.bool(n, "continue_on_error")?,
            None => false,
        };
        let max_items = match node.get("max_items") {
            Some(n) => Some(self.uint(n, "foreach.max_items")? as usize),
            None => None,
        };
        Ok(Foreach {
            over,
            parallel,
            continue_on_error,
            max_items,
            steps,
        })
    }
}

/// A `claude:` block written like a shell command (`/cmd \\` newline `--flag x`) has no shell to
/// join its lines, so join them here: the CLI then gets one argument string as written.
fn join_continuations(text: &str) -> String {
    let mut out = String::new();
    let mut joining = false;
    for line in text.trim().lines() {
        let line = if joining { line.trim_start() } else { line };
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                out.push_str(head.trim_end());
                out.push(' ');
                joining = true;
            }
            None => {
                out.push_str(line);
                out.push('\n');
                joining = false;
            }
        }
    }
    out.trim_end().to_string()
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

/// `"Bash, Edit"` or `"Bash Edit"`, keeping `Bash(git *)` whole.
fn split_tools(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' | ' ' if depth == 0 => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
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

/// `"30s"`, `"5m"`, `"1h30m"`, `"2h"`, `"1d"`, `"250ms"` or a plain number of seconds.
pub fn parse_duration_text(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(v) = s.parse::<f64>() {
        return Some(v);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let factor = match unit {
            "ms" => 0.001,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            _ => return None,
        };
        total += number * factor;
        rest = rest[unit_len..].trim_start();
    }
    Some(total)
}

fn describe(node: &Node) -> String {
    match node.scalar_text() {
        Some(t) => format!("'{t}'"),
        None => node.kind().to_string(),
    }
}

/// The closest known key within a small edit distance, for "did you mean".
fn did_you_mean<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < word.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The workflow env as a map (later entries win), for callers that resolve `${VAR}`.
pub fn env_map(env: &[EnvVar]) -> BTreeMap<String, String> {
    env.iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect()
}
