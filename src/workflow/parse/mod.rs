//! Upstream Prodigy YAML -> [`Workflow`], with `file:line:col` errors and warnings.
//!
//! The YAML goes through serde-saphyr into a tree that keeps every node's position
//! (`super::yaml`), and this module walks that tree by hand. A typed serde struct would lose
//! positions and silently drop unknown keys; walking the tree lets every key be accounted for: it is
//! used, or it is warned about (unknown, or known upstream but without effect here), or a bad value
//! is an error naming its line and column.
//!
//! Each mapping is read through a field cursor ([`fields::Fields`]): `let mut f =
//! p.fields(node, "step")?; f.opt_string("id")?; ...; f.finish()`. `finish` warns about every key
//! nobody asked for, so the code that reads the keys is the list of known keys. `when:` and
//! `filter:` are compiled here ([`super::expr`]), so a broken expression fails the load.
//!
//! Sections: [`fields`] (the cursor and scalar values), [`steps`] (a step and its command),
//! [`handlers`] (`on_failure`, `validate`, `on_incomplete`), [`agent`] (agent settings, budget),
//! [`mapreduce`] (phases, the map phase and its input), [`error_policy`], [`env`].
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

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::model::*;
use super::yaml::{self, Key, Node, Value};

mod agent;
mod env;
mod error_policy;
mod fields;
mod handlers;
mod mapreduce;
mod steps;

pub use env::env_map;
pub use fields::parse_duration_text;
pub use mapreduce::classify_input;

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
    let p = Parser {
        path: path_for_messages,
        warnings: RefCell::new(Vec::new()),
    };
    let workflow = p.workflow(&root)?;
    let mut warnings = p.warnings.into_inner();
    warnings.sort_by_key(|w| (w.line, w.column));
    Ok(Parsed { workflow, warnings })
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
    if message.contains("budget breached: Depth") || message.contains("recursion limit exceeded") {
        return WorkflowError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message: format!(
                "lists and mappings nest more than {} levels deep",
                yaml::MAX_DEPTH
            ),
            help: "a workflow needs far fewer levels; check the indentation and the brackets here"
                .into(),
        };
    }
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
    warnings: RefCell<Vec<Warning>>,
}

type R<T> = Result<T, WorkflowError>;

impl Parser<'_> {
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

    fn err_key<T>(&self, key: &Key, message: String, help: &str) -> R<T> {
        self.err(key.line, key.column, message, help)
    }

    fn warn(&self, line: usize, column: usize, message: String) {
        self.warnings.borrow_mut().push(Warning {
            line,
            column,
            message,
        });
    }

    // ---- top level ---------------------------------------------------------------------------

    fn workflow(&self, root: &Node) -> R<Workflow> {
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
            Value::Map(_) => self.workflow_map(root, default_name),
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

    fn workflow_map(&self, root: &Node, default_name: String) -> R<Workflow> {
        let is_mapreduce = self.is_mapreduce(root)?;
        let what = if is_mapreduce {
            "a mapreduce workflow"
        } else {
            "a standard workflow"
        };
        let mut f = self.fields(root, what)?;
        let name = f.opt_string("name")?.unwrap_or(default_name);
        f.get("mode");
        let mut env = match f.get("env") {
            Some(n) => self.env(n)?,
            None => Vec::new(),
        };
        if let Some(secrets) = f.get("secrets") {
            env.extend(self.secrets(secrets)?);
        }
        let kind = if is_mapreduce {
            WorkflowKind::MapReduce(Box::new(self.mapreduce(&mut f, &env)?))
        } else {
            let Some(commands) = f.get("commands") else {
                return self.err_at(
                    root,
                    "a standard workflow needs 'commands' (or 'mode: mapreduce' with a 'map' \
                     phase)"
                        .into(),
                    "add 'commands:' with a list of steps, or write the file as a list of steps",
                );
            };
            WorkflowKind::Standard {
                commands: self.steps(commands, "commands")?,
            }
        };
        let agent = match f.get("agent") {
            Some(n) => self.agent_settings(n, "agent")?,
            None => AgentSettings::default(),
        };
        let budget = match f.get("budget") {
            Some(n) => self.budget(n)?,
            None => Budget::default(),
        };
        f.finish();
        Ok(Workflow {
            name,
            env,
            kind,
            agent,
            budget,
        })
    }

    /// `mode: mapreduce`, or no mode and a `map` phase.
    fn is_mapreduce(&self, root: &Node) -> R<bool> {
        let Some(n) = root.get("mode") else {
            return Ok(root.get("map").is_some());
        };
        match self.string(n, "mode")?.as_str() {
            "mapreduce" => Ok(true),
            "standard" => match root.key("map") {
                Some(k) => self.err_key(
                    k,
                    "'map' in a workflow with 'mode: standard'".into(),
                    "set 'mode: mapreduce' or remove the map phase",
                ),
                None => Ok(false),
            },
            m => self.err_at(
                n,
                format!("unknown mode '{m}'"),
                "use 'mode: standard' or 'mode: mapreduce'",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> (usize, usize, String) {
        match parse(Path::new("w.yml"), text) {
            Err(WorkflowError::Invalid {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Found by tests/fuzz (workflow): a few dozen nested block lists, or a few hundred nested
    /// flow lists, overflowed the stack while deserializing (an abort, not an error).
    #[test]
    fn deep_nesting_is_an_error_with_a_position() {
        let block = |n: usize| -> String {
            let items: String = (0..n).map(|i| format!("{}- \n", "  ".repeat(i))).collect();
            format!("x:\n{items}")
        };
        let (line, _, message) = error_of(&block(200));
        assert!(message.contains("nest more than 32 levels"), "{message}");
        assert!((30..=36).contains(&line), "{line}");
        let flow = format!("x: {}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let (line, column, message) = error_of(&flow);
        assert!(message.contains("nest more than 32 levels"), "{message}");
        assert_eq!(line, 1);
        assert!((30..=40).contains(&column), "{column}");
        // Within the limit: parsed, and refused only for what it is (no steps).
        let (_, _, message) = error_of(&block(25));
        assert!(message.contains("needs 'commands'"), "{message}");
    }
}
