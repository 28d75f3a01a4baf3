//! The field cursor over a YAML mapping, and the scalar values every section reads.

use std::collections::HashSet;
use std::time::Duration;

use super::{Parser, R};
use crate::suggest::did_you_mean;
use crate::workflow::yaml::{Key, Node, Value};

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

/// Reads the keys of one mapping and remembers which ones the code asked for; [`Fields::finish`]
/// then reports every other key, so the reading code is the list of known keys.
pub(super) struct Fields<'p, 'n> {
    p: &'p Parser<'p>,
    node: &'n Node,
    entries: &'n [(Key, Node)],
    what: String,
    asked: Vec<&'static str>,
}

impl<'p, 'n> Fields<'p, 'n> {
    /// The mapping itself (for errors about it as a whole).
    pub fn node(&self) -> &'n Node {
        self.node
    }

    /// The value of `key`, if present; asking makes `key` known.
    pub fn get(&mut self, key: &'static str) -> Option<&'n Node> {
        if !self.asked.contains(&key) {
            self.asked.push(key);
        }
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// Where `key` is written (for errors about the key rather than its value).
    pub fn key(&self, key: &str) -> Option<&'n Key> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| k)
    }

    /// The first of `keys` present, with its name (aliases such as `do`/`steps`).
    pub fn first_of(&mut self, keys: &[&'static str]) -> Option<(&'static str, &'n Node)> {
        let found: Vec<_> = keys
            .iter()
            .filter_map(|k| Some((*k, self.get(k)?)))
            .collect();
        found.into_iter().next()
    }

    pub fn opt_string(&mut self, key: &'static str) -> R<Option<String>> {
        self.get(key).map(|n| self.p.string(n, key)).transpose()
    }

    /// Like [`Fields::opt_string`], but `key: ~` counts as absent.
    pub fn opt_string_or_null(&mut self, key: &'static str) -> R<Option<String>> {
        match self.get(key) {
            Some(n) if n.value == Value::Null => Ok(None),
            Some(n) => self.p.string(n, key).map(Some),
            None => Ok(None),
        }
    }

    pub fn opt_bool(&mut self, key: &'static str) -> R<Option<bool>> {
        self.get(key).map(|n| self.p.bool(n, key)).transpose()
    }

    pub fn bool_or(&mut self, key: &'static str, default: bool) -> R<bool> {
        Ok(self.opt_bool(key)?.unwrap_or(default))
    }

    pub fn opt_uint(&mut self, key: &'static str, what: &str) -> R<Option<u64>> {
        self.get(key).map(|n| self.p.uint(n, what)).transpose()
    }

    pub fn opt_duration(&mut self, key: &'static str, what: &str) -> R<Option<Duration>> {
        self.get(key).map(|n| self.p.duration(n, what)).transpose()
    }

    /// Warns about every key nobody asked for: without effect here (with the reason), or unknown
    /// (with the closest known key).
    pub fn finish(self) {
        let what = &self.what;
        for key in self.unasked() {
            if let Some((_, why)) = NO_EFFECT.iter().find(|(k, _)| *k == key.name) {
                self.p.warn(
                    key.line,
                    key.column,
                    format!("'{}' in {what} has no effect in prodigy: {why}", key.name),
                );
                continue;
            }
            let message = match did_you_mean(&key.name, &self.asked) {
                Some(s) => format!(
                    "unknown key '{}' in {what}; did you mean '{s}'? (it is ignored)",
                    key.name
                ),
                None => format!(
                    "unknown key '{}' in {what} (it is ignored); known keys: {}",
                    key.name,
                    self.asked.join(", ")
                ),
            };
            self.p.warn(key.line, key.column, message);
        }
    }

    /// Like [`Fields::finish`], but an unknown key is an error: for settings where a misspelt
    /// key would silently lift a limit.
    pub fn finish_strict(self) -> R<()> {
        if let Some(key) = self.unasked().next() {
            let hint = match did_you_mean(&key.name, &self.asked) {
                Some(s) => format!("did you mean '{s}'?"),
                None => format!("known keys: {}", self.asked.join(", ")),
            };
            return self.p.err_key(
                key,
                format!("unknown key '{}' in {}", key.name, self.what),
                &hint,
            );
        }
        Ok(())
    }

    fn unasked(&self) -> impl Iterator<Item = &'n Key> + '_ {
        let asked: HashSet<&str> = self.asked.iter().copied().collect();
        self.entries
            .iter()
            .map(|(k, _)| k)
            .filter(move |k| !asked.contains(k.name.as_str()))
    }
}

impl Parser<'_> {
    /// A cursor over the mapping `node`; an error when it is not a mapping.
    pub(super) fn fields<'s, 'n>(&'s self, node: &'n Node, what: &str) -> R<Fields<'s, 'n>> {
        let entries = self.expect_map(node, what)?;
        Ok(Fields {
            p: self,
            node,
            entries,
            what: what.to_string(),
            asked: Vec::new(),
        })
    }

    pub(super) fn expect_map<'n>(&self, node: &'n Node, what: &str) -> R<&'n [(Key, Node)]> {
        match node.as_map() {
            Some(m) => Ok(m),
            None => self.err_at(
                node,
                format!("{what} must be a mapping, found {}", node.kind()),
                "write it as `key: value` lines indented under its parent key",
            ),
        }
    }

    pub(super) fn string(&self, node: &Node, what: &str) -> R<String> {
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

    pub(super) fn bool(&self, node: &Node, what: &str) -> R<bool> {
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

    pub(super) fn uint(&self, node: &Node, what: &str) -> R<u64> {
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

    pub(super) fn float(&self, node: &Node, what: &str) -> R<f64> {
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

    pub(super) fn duration(&self, node: &Node, what: &str) -> R<Duration> {
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

    /// A `when:` or `filter:` expression, compiled now so a broken one fails the load.
    pub(super) fn expression(&self, node: &Node, what: &str) -> R<String> {
        let text = self.string(node, what)?;
        match crate::workflow::expr::Expr::parse(&text) {
            Ok(_) => Ok(text),
            Err(e) => self.err_at(
                node,
                format!("invalid {what} expression {e}"),
                "see README \"Semantics worth knowing\" for the expression language, e.g. \
                 `score >= 10 && tags contains 'x'`",
            ),
        }
    }

    pub(super) fn command_text(&self, node: &Node, what: &str) -> R<String> {
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

    pub(super) fn string_list(&self, node: &Node, what: &str) -> R<Vec<String>> {
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

pub(super) fn describe(node: &Node) -> String {
    match node.scalar_text() {
        Some(t) => format!("'{t}'"),
        None => node.kind().to_string(),
    }
}
