//! Variables and the scope placeholders resolve against: a [`Context`] of JSON variables and an
//! environment, and the path syntax (`a.b[0]["k"]`) that walks into them.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::types::ItemKey;
use crate::workflow::model::Vars;

/// What placeholders resolve against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    vars: Vars,
    env: BTreeMap<String, String>,
}

impl Context {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_var(mut self, name: impl Into<String>, value: Value) -> Self {
        self.set_var(name, value);
        self
    }

    pub fn set_var(&mut self, name: impl Into<String>, value: Value) {
        self.vars.insert(name.into(), value);
    }

    pub fn with_vars(mut self, vars: &Vars) -> Self {
        self.vars
            .extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_env(name, value);
        self
    }

    pub fn set_env(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.env.insert(name.into(), value.into());
    }

    pub fn with_env_map(mut self, env: &BTreeMap<String, String>) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    /// The whole environment of this process (lower precedence than later `with_env` calls).
    pub fn with_process_env(mut self) -> Self {
        for (k, v) in std::env::vars() {
            self.env.entry(k).or_insert(v);
        }
        self
    }

    /// Binds a map item: `item`, `item_index`, `item_total`, `item_json` and `item_id` (its key).
    pub fn with_item(mut self, item: &Value, index: usize, total: usize, key: &ItemKey) -> Self {
        self.set_var("item", item.clone());
        self.set_var("item_index", Value::from(index));
        self.set_var("item_total", Value::from(total));
        self.set_var("item_json", Value::String(item.to_string()));
        self.set_var("item_id", Value::String(key.0.clone()));
        self
    }

    pub fn vars(&self) -> &Vars {
        &self.vars
    }

    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Resolves a placeholder path (without modifiers) to a value.
    pub fn lookup(&self, path: &str) -> Option<Value> {
        let segments = parse_path(path).ok()?;
        self.lookup_segments(path, &segments)
    }

    fn lookup_segments(&self, path: &str, segments: &[Segment]) -> Option<Value> {
        if let Some(name) = path
            .strip_prefix("env.")
            .or_else(|| path.strip_prefix("env:"))
        {
            return self.env.get(name).map(|v| Value::String(v.clone()));
        }
        // Longest run of leading `.name` segments that names a variable.
        let keys = segments
            .iter()
            .take_while(|s| matches!(s, Segment::Key(_)))
            .count();
        for take in (1..=keys).rev() {
            let name = segments[..take]
                .iter()
                .map(|s| match s {
                    Segment::Key(k) => k.as_str(),
                    Segment::Index(_) => "",
                })
                .collect::<Vec<_>>()
                .join(".");
            if let Some(root) = self.vars.get(&name) {
                return walk(root, &segments[take..]);
            }
        }
        if segments.len() == 1
            && let Segment::Key(name) = &segments[0]
        {
            return self.env.get(name).map(|v| Value::String(v.clone()));
        }
        None
    }
}

fn walk(value: &Value, segments: &[Segment]) -> Option<Value> {
    let mut cur = value;
    // Captured JSON sometimes arrives as a string holding JSON; walking into it is what the
    // workflow author meant by `${capture.field}`.
    let mut parsed;
    for seg in segments {
        if let Value::String(s) = cur
            && let Ok(v) = serde_json::from_str::<Value>(s)
            && (v.is_object() || v.is_array())
        {
            parsed = v;
            cur = &parsed;
        }
        cur = match (seg, cur) {
            (Segment::Key(k), Value::Object(m)) => m.get(k)?,
            (Segment::Index(i), Value::Array(a)) => a.get(*i)?,
            (Segment::Key(k), Value::Array(a)) => a.get(k.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur.clone())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
}

pub(super) fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let path = path.trim();
    if let Some(name) = path
        .strip_prefix("env:")
        .or_else(|| path.strip_prefix("env."))
    {
        if name.is_empty() {
            return Err("empty environment variable name".into());
        }
        return Ok(vec![Segment::Key("env".into()), Segment::Key(name.into())]);
    }
    let bytes = path.as_bytes();
    let mut segs = Vec::new();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    while i < bytes.len() {
        match bytes[i] {
            b'.' if !segs.is_empty() => i += 1,
            b'[' => {
                let close = path[i..].find(']').ok_or("unclosed '['")? + i;
                let inner = path[i + 1..close].trim();
                let seg = if let Ok(n) = inner.parse::<usize>() {
                    Segment::Index(n)
                } else if inner.len() >= 2
                    && ((inner.starts_with('"') && inner.ends_with('"'))
                        || (inner.starts_with('\'') && inner.ends_with('\'')))
                {
                    Segment::Key(inner[1..inner.len() - 1].to_string())
                } else {
                    return Err(format!("'[{inner}]' is not an index or a quoted key"));
                };
                segs.push(seg);
                i = close + 1;
                continue;
            }
            _ => {}
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "unexpected character '{}'",
                path[i..].chars().next().unwrap_or(' ')
            ));
        }
        segs.push(Segment::Key(path[start..i].to_string()));
    }
    if segs.is_empty() {
        return Err("empty placeholder".into());
    }
    Ok(segs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn longest_variable_prefix_then_json_then_environment() {
        let ctx = Context::new()
            .with_var("shell.output", json!("out"))
            .with_var("map", json!({"results": "[{\"a\": 1}]"}))
            .with_env("HOME", "/h");
        assert_eq!(ctx.lookup("shell.output"), Some(json!("out")));
        assert_eq!(ctx.lookup("map.results[0].a"), Some(json!(1)));
        assert_eq!(ctx.lookup("map['results']"), Some(json!("[{\"a\": 1}]")));
        assert_eq!(ctx.lookup("HOME"), Some(json!("/h")));
        assert_eq!(ctx.lookup("env:HOME"), Some(json!("/h")));
        assert_eq!(ctx.lookup("nothing.here"), None);
        assert!(parse_path("a[x]").is_err());
    }
}
