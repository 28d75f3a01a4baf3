//! `${...}` placeholders: resolution, safe rendering into shell scripts, `when:` conditions, and a
//! static check that every placeholder can resolve.
//!
//! Syntax: `${path}`, where a path is a root name followed by `.field`, `[index]` or `["key"]`
//! segments (`${item.tags[0]}`, `${map.successful}`). Names resolve by the longest dotted prefix
//! that is a variable (so a variable named `shell.output` and a variable `map` holding
//! `{"results": ...}` both work), then walk into the JSON value; a name that is no variable is
//! looked up in the environment (`${HOME}`, or explicitly `${env.HOME}` / `${env:HOME}`).
//!
//! Modifiers: `${VAR:-fallback}` uses `fallback` when the value is missing, null or empty;
//! `${x|default:fallback}` (upstream's filter) when it is missing or null; `${x|json}` renders the
//! value as JSON (strings quoted); `${x|raw}` see below. `$${` writes a literal `${`.
//! An unresolved placeholder without a fallback is an error, never text handed to a command.
//!
//! Shell safety: [`render_shell`] never splices a value into the script. Each placeholder becomes a
//! reference to an environment variable that carries the value (`__PRODIGY_V0`, ...), written in
//! the form the shell's quoting context at that point needs, so the value is always one literal
//! word whatever quotes surround the placeholder. The opt-out for trusted text is the `raw`
//! filter: `${item.cmd|raw}` is spliced into the script as is and *is executed as shell code*;
//! use it only for values the workflow author controls.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::model::*;
use crate::types::ItemKey;

/// Values larger than this go through a file instead of an environment variable: Linux limits
/// one environment string to 128 KiB (MAX_ARG_STRLEN).
pub const MAX_ENV_VALUE: usize = 100 * 1024;

/// Past this many bytes of values in one script's environment, further values go through files
/// too: the environment and arguments of a process share one limit (ARG_MAX, often 2 MiB).
pub const MAX_ENV_TOTAL: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error(
        "unresolved placeholder ${{{placeholder}}}: no variable or environment variable '{root}' \
         is defined here; define it (capture it in an earlier step, set it in env), give a \
         fallback with ${{{placeholder}|default:VALUE}}, or write $${{{placeholder}}} for a \
         variable the shell itself defines"
    )]
    Unresolved { placeholder: String, root: String },
    #[error("malformed placeholder at byte {offset} of {template:?}: {reason}")]
    Malformed {
        template: String,
        offset: usize,
        reason: String,
    },
    #[error("invalid condition {expr:?}: {reason}")]
    Condition { expr: String, reason: String },
    #[error("cannot pass the value of ${{{placeholder}}} to the shell: {reason}")]
    Value { placeholder: String, reason: String },
}

type R<T> = Result<T, InterpolateError>;

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
enum Segment {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
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

/// One `${...}` in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// Byte range of the whole `${...}` in the template.
    pub start: usize,
    pub end: usize,
    /// The text between `${` and `}`.
    pub text: String,
    /// The path without modifiers, e.g. `item.tags[0]`.
    pub path: String,
    /// The first path segment, e.g. `item` (or `env` for `env.X`).
    pub root: String,
    /// From `:-X` or `|default:X`, with which rule applies.
    pub default: Option<Fallback>,
    pub raw: bool,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub value: String,
    /// `:-` also replaces an empty string (shell semantics); `|default:` only missing/null.
    pub when_empty: bool,
}

enum Piece {
    Text(String),
    Hole(Placeholder),
}

fn split(template: &str) -> R<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    while i < template.len() {
        let rest = &template[i..];
        if rest.starts_with("$${") {
            text.push_str("${");
            i += 3;
            continue;
        }
        if rest.starts_with("${") {
            let Some(close) = rest.find('}') else {
                return Err(InterpolateError::Malformed {
                    template: template.into(),
                    offset: i,
                    reason: "'${' without a closing '}'".into(),
                });
            };
            let inner = &rest[2..close];
            let ph = parse_placeholder(inner, i, i + close + 1).map_err(|reason| {
                InterpolateError::Malformed {
                    template: template.into(),
                    offset: i,
                    reason,
                }
            })?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Hole(ph));
            i += close + 1;
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        text.push(c);
        i += c.len_utf8();
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

pub(crate) fn parse_placeholder(
    inner: &str,
    start: usize,
    end: usize,
) -> Result<Placeholder, String> {
    let mut parts = inner.split('|');
    let head = parts.next().unwrap_or("");
    let (path, mut default) = match head.find(":-") {
        Some(i) => (
            &head[..i],
            Some(Fallback {
                value: head[i + 2..].to_string(),
                when_empty: true,
            }),
        ),
        None => (head, None),
    };
    let mut raw = false;
    let mut json = false;
    for filter in parts {
        let f = filter.trim();
        if f == "raw" {
            raw = true;
        } else if f == "json" {
            json = true;
        } else if let Some(v) = f.strip_prefix("default:") {
            default = Some(Fallback {
                value: v.to_string(),
                when_empty: false,
            });
        } else {
            return Err(format!(
                "unknown filter '{f}' (known: default:VALUE, raw, json)"
            ));
        }
    }
    let segs = parse_path(path)?;
    let root = match &segs[0] {
        Segment::Key(k) => k.clone(),
        Segment::Index(_) => return Err("a placeholder must start with a name".into()),
    };
    Ok(Placeholder {
        start,
        end,
        text: inner.to_string(),
        path: path.trim().to_string(),
        root,
        default,
        raw,
        json,
    })
}

/// Every well-formed placeholder in a template, in order.
pub fn placeholders(template: &str) -> Vec<Placeholder> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = template[i..].find("${") {
        let at = i + pos;
        if at > 0 && template.as_bytes()[at - 1] == b'$' {
            i = at + 2;
            continue;
        }
        let Some(close) = template[at..].find('}') else {
            break;
        };
        if let Ok(ph) = parse_placeholder(&template[at + 2..at + close], at, at + close + 1) {
            out.push(ph);
        }
        i = at + close + 1;
    }
    out
}

/// The value of a placeholder, with its fallback applied.
fn resolve(ph: &Placeholder, ctx: &Context) -> R<Value> {
    apply_fallback(ph, ctx.lookup(&ph.path))
}

/// A looked-up value with the placeholder's fallback applied; missing without one is an error.
pub(crate) fn apply_fallback(ph: &Placeholder, value: Option<Value>) -> R<Value> {
    match (value, &ph.default) {
        (None | Some(Value::Null), Some(d)) => Ok(Value::String(d.value.clone())),
        (Some(Value::String(s)), Some(d)) if s.is_empty() && d.when_empty => {
            Ok(Value::String(d.value.clone()))
        }
        (Some(v), _) => Ok(v),
        (None, None) => Err(InterpolateError::Unresolved {
            placeholder: ph.text.clone(),
            root: ph.root.clone(),
        }),
    }
}

/// A value as text: strings as they are, everything else as compact JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn placeholder_text(ph: &Placeholder, ctx: &Context) -> R<String> {
    let v = resolve(ph, ctx)?;
    Ok(if ph.json {
        v.to_string()
    } else {
        value_text(&v)
    })
}

/// Renders a template as plain text (claude arguments, paths, conditions' operands). `$NAME`
/// (without braces) is replaced too when NAME is in the context's environment, since no shell will
/// expand it (upstream writes `claude: "/cmd --project $PROJECT_NAME"`).
pub fn render_text(template: &str, ctx: &Context) -> R<String> {
    render(template, ctx, true)
}

/// Renders `write_file` content: only `${...}` placeholders are replaced, so a file that contains
/// shell text such as `$HOME` or `$1` is written as it stands.
pub fn render_content(template: &str, ctx: &Context) -> R<String> {
    render(template, ctx, false)
}

fn render(template: &str, ctx: &Context, bare_env: bool) -> R<String> {
    let mut out = String::new();
    for piece in split(template)? {
        match piece {
            Piece::Text(t) if bare_env => out.push_str(&expand_bare_env(&t, ctx)),
            Piece::Text(t) => out.push_str(&t),
            Piece::Hole(ph) => out.push_str(&placeholder_text(&ph, ctx)?),
        }
    }
    Ok(out)
}

fn expand_bare_env(text: &str, ctx: &Context) -> String {
    if !text.contains('$') {
        return text.to_string();
    }
    let mut out = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '$' {
            let rest = &text[i + 1..];
            let len = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..len];
            let starts_ok = name
                .chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_');
            if starts_ok && let Some(v) = ctx.env.get(name) {
                out.push_str(v);
                for _ in 0..name.chars().count() {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// A shell script whose placeholders refer to environment variables.
#[derive(Debug, Clone)]
pub struct ShellScript {
    pub script: String,
    /// Variables to set on the process that runs `script` (in addition to its usual env).
    pub env: Vec<(String, String)>,
    /// Files holding values too large for the environment; removed when the last clone of this
    /// script is dropped, so keep the script alive until its process has exited.
    pub spill_files: Vec<Arc<SpillFile>>,
}

/// A temporary file removed on drop.
#[derive(Debug)]
pub struct SpillFile {
    pub path: PathBuf,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl SpillFile {
    fn create(contents: &str) -> std::io::Result<SpillFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = dir.join(format!(
                "prodigy-value-{}-{n}-{nanos:x}",
                std::process::id()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let file = SpillFile { path };
                    f.write_all(contents.as_bytes())?;
                    return Ok(file);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The shell quoting context at a point of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Q {
    /// Top level, or inside `$(...)` / backticks, where a new quoting level starts.
    Plain {
        close: Closer,
    },
    Double,
    Single,
    DollarSingle,
    Comment,
    /// Body of a here-document; `expand` is false when the delimiter was quoted.
    HereDoc {
        delim: String,
        expand: bool,
        strip_tabs: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Closer {
    Top,
    /// `$(`: closes at the `)` that balances it (`depth` counts open plain parentheses).
    /// `arith` marks `$((`, where `<<` is a shift, not a here-document.
    Paren {
        depth: usize,
        arith: bool,
    },
    Backtick,
}

#[derive(Debug, Clone)]
struct PendingHereDoc {
    delim: String,
    expand: bool,
    strip_tabs: bool,
}

/// Tracks quoting state over the literal text of a script.
struct Scanner {
    stack: Vec<Q>,
    pending: Vec<PendingHereDoc>,
    /// Text of the current here-doc line so far (to find the delimiter line).
    line: String,
    /// The previous literal character, for word-start detection of `#`.
    prev: Option<char>,
    escaped: bool,
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            stack: vec![Q::Plain { close: Closer::Top }],
            pending: Vec::new(),
            line: String::new(),
            prev: None,
            escaped: false,
        }
    }

    fn top(&self) -> &Q {
        self.stack
            .last()
            .unwrap_or(&Q::Plain { close: Closer::Top })
    }

    fn feed(&mut self, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            i += 1;
            if self.escaped {
                self.escaped = false;
                self.prev = Some(c);
                continue;
            }
            match self.top().clone() {
                Q::Plain { close } => match c {
                    '\\' => self.escaped = true,
                    '\'' => self.stack.push(Q::Single),
                    '"' => self.stack.push(Q::Double),
                    '$' if next == Some('\'') => {
                        self.stack.push(Q::DollarSingle);
                        i += 1;
                    }
                    '$' if next == Some('(') => {
                        let arith = chars.get(i + 1) == Some(&'(');
                        self.stack.push(Q::Plain {
                            close: Closer::Paren { depth: 0, arith },
                        });
                        i += 1;
                    }
                    '`' if close == Closer::Backtick => {
                        self.stack.pop();
                    }
                    '`' => self.stack.push(Q::Plain {
                        close: Closer::Backtick,
                    }),
                    '(' => {
                        if let Some(Q::Plain {
                            close: Closer::Paren { depth, .. },
                        }) = self.stack.last_mut()
                        {
                            *depth += 1;
                        }
                    }
                    ')' => match self.stack.last_mut() {
                        Some(Q::Plain {
                            close: Closer::Paren { depth, .. },
                        }) if *depth > 0 => *depth -= 1,
                        Some(Q::Plain {
                            close: Closer::Paren { .. },
                        }) => {
                            self.stack.pop();
                        }
                        _ => {}
                    },
                    '#' if self
                        .prev
                        .is_none_or(|p| p.is_whitespace() || ";&|()".contains(p)) =>
                    {
                        self.stack.push(Q::Comment)
                    }
                    '<' if next == Some('<')
                        && chars.get(i + 1) != Some(&'<')
                        && !matches!(close, Closer::Paren { arith: true, .. }) =>
                    {
                        i += 1;
                        i = self.heredoc_operator(&chars, i);
                        self.prev = Some('<');
                        continue;
                    }
                    '\n' => self.newline(),
                    _ => {}
                },
                Q::Double => match c {
                    '\\' => self.escaped = true,
                    '"' => {
                        self.stack.pop();
                    }
                    '$' if next == Some('(') => {
                        let arith = chars.get(i + 1) == Some(&'(');
                        self.stack.push(Q::Plain {
                            close: Closer::Paren { depth: 0, arith },
                        });
                        i += 1;
                    }
                    '`' => self.stack.push(Q::Plain {
                        close: Closer::Backtick,
                    }),
                    _ => {}
                },
                Q::Single => {
                    if c == '\'' {
                        self.stack.pop();
                    }
                }
                Q::DollarSingle => match c {
                    '\\' => self.escaped = true,
                    '\'' => {
                        self.stack.pop();
                    }
                    _ => {}
                },
                Q::Comment => {
                    if c == '\n' {
                        self.stack.pop();
                        self.newline();
                    }
                }
                Q::HereDoc {
                    delim,
                    expand,
                    strip_tabs,
                } => {
                    if c == '\n' {
                        let line = if strip_tabs {
                            self.line.trim_start_matches('\t')
                        } else {
                            self.line.as_str()
                        };
                        let done = line == delim;
                        self.line.clear();
                        if done {
                            self.stack.pop();
                            self.start_pending_heredoc();
                        }
                    } else if c == '`' && self.in_backticks() {
                        // Old-style substitution ends at the next backtick, here-doc or not.
                        while let Some(q) = self.stack.pop() {
                            if q == (Q::Plain {
                                close: Closer::Backtick,
                            }) {
                                break;
                            }
                        }
                        self.pending.clear();
                        self.line.clear();
                    } else {
                        self.line.push(c);
                        if expand && c == '\\' {
                            self.escaped = true;
                        }
                    }
                }
            }
            self.prev = Some(c);
        }
    }

    fn in_backticks(&self) -> bool {
        self.stack.iter().any(|q| {
            *q == Q::Plain {
                close: Closer::Backtick,
            }
        })
    }

    /// Reads `<<[-] WORD` starting after `<<`; returns the index after the word.
    fn heredoc_operator(&mut self, chars: &[char], mut i: usize) -> usize {
        let strip_tabs = chars.get(i) == Some(&'-');
        if strip_tabs {
            i += 1;
        }
        while chars.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
            i += 1;
        }
        let mut delim = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.get(i) {
            match c {
                '\'' | '"' => {
                    quoted = true;
                    let q = c;
                    i += 1;
                    while let Some(&d) = chars.get(i) {
                        i += 1;
                        if d == q {
                            break;
                        }
                        delim.push(d);
                    }
                }
                '\\' => {
                    quoted = true;
                    i += 1;
                    if let Some(&d) = chars.get(i) {
                        delim.push(d);
                        i += 1;
                    }
                }
                c if c.is_whitespace() || ";&|<>()".contains(c) => break,
                c => {
                    delim.push(c);
                    i += 1;
                }
            }
        }
        if !delim.is_empty() {
            self.pending.push(PendingHereDoc {
                delim,
                expand: !quoted,
                strip_tabs,
            });
        }
        i
    }

    fn newline(&mut self) {
        self.start_pending_heredoc();
    }

    fn start_pending_heredoc(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let h = self.pending.remove(0);
        self.line.clear();
        self.stack.push(Q::HereDoc {
            delim: h.delim,
            expand: h.expand,
            strip_tabs: h.strip_tabs,
        });
    }
}

/// Renders a `shell:` command so every placeholder value reaches the shell as literal data.
/// See the module documentation; `${x|raw}` is the explicit opt-out.
pub fn render_shell(template: &str, ctx: &Context) -> R<ShellScript> {
    let mut scanner = Scanner::new();
    let mut script = String::new();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut spill_files = Vec::new();
    let mut references: BTreeMap<String, String> = BTreeMap::new();
    let mut env_bytes = 0usize;
    for piece in split(template)? {
        match piece {
            Piece::Text(t) => {
                scanner.feed(&t);
                script.push_str(&t);
            }
            Piece::Hole(ph) => {
                let value = placeholder_text(&ph, ctx)?;
                if ph.raw {
                    scanner.feed(&value);
                    script.push_str(&value);
                    continue;
                }
                if value.contains('\0') {
                    return Err(InterpolateError::Value {
                        placeholder: ph.text.clone(),
                        reason: "the value contains a NUL byte, which no shell argument or \
                                 variable can hold"
                            .into(),
                    });
                }
                if scanner.escaped {
                    // `\${x}`: the backslash would escape the first character of the reference
                    // (a quote) and unbalance the script. Give it the `$` it was written for, so
                    // the shell prints a literal `$` before the value.
                    script.push('$');
                    scanner.escaped = false;
                }
                let top = scanner.top().clone();
                if let Q::HereDoc {
                    expand: false,
                    delim,
                    strip_tabs,
                } = &top
                {
                    // A quoted here-doc expands nothing, so the value can only be spliced; it is
                    // safe unless one of its lines would end the here-doc early. Only at the top
                    // level of the script: inside `$(...)` or backticks, shells differ in where
                    // they end the here-doc, and a wrong guess would run the value.
                    if scanner.stack.len() != 2 {
                        return Err(InterpolateError::Value {
                            placeholder: ph.text.clone(),
                            reason: format!(
                                "it is inside a quoted here-document (<<'{delim}') within a \
                                 command substitution, where it cannot be passed safely; use an \
                                 unquoted delimiter (<<{delim}) or move the here-document to the \
                                 top level"
                            ),
                        });
                    }
                    let ends = value.lines().any(|l| {
                        let l = if *strip_tabs {
                            l.trim_start_matches('\t')
                        } else {
                            l
                        };
                        l == delim
                    });
                    if ends {
                        return Err(InterpolateError::Value {
                            placeholder: ph.text.clone(),
                            reason: format!(
                                "it contains the line '{delim}', which would end the quoted \
                                 here-document; use an unquoted delimiter (<<{delim})"
                            ),
                        });
                    }
                    scanner.feed(&value);
                    script.push_str(&value);
                    continue;
                }
                let reference = match references.get(&value) {
                    // The same value used again reuses its variable: the environment stays small.
                    Some(r) => r.clone(),
                    None => {
                        let r = if value.len() > MAX_ENV_VALUE
                            || env_bytes + value.len() > MAX_ENV_TOTAL
                        {
                            let file =
                                SpillFile::create(&value).map_err(|e| InterpolateError::Value {
                                    placeholder: ph.text.clone(),
                                    reason: format!(
                                        "the value is {} bytes, too large for the environment, \
                                         and writing it to a temporary file failed: {e}",
                                        value.len()
                                    ),
                                })?;
                            let name = format!("__PRODIGY_F{}", env.len());
                            let path = file.path.to_string_lossy().into_owned();
                            env_bytes += name.len() + path.len() + 2;
                            env.push((name.clone(), path));
                            spill_files.push(Arc::new(file));
                            // Command substitution drops trailing newlines; that is the one
                            // difference from an environment variable.
                            format!("$(cat \"${{{name}}}\")")
                        } else {
                            let name = format!("__PRODIGY_V{}", env.len());
                            env_bytes += name.len() + value.len() + 2;
                            env.push((name.clone(), value.clone()));
                            format!("${{{name}}}")
                        };
                        references.insert(value, r.clone());
                        r
                    }
                };
                let text = match top {
                    Q::Plain { .. } => format!("\"{reference}\""),
                    Q::Double | Q::HereDoc { .. } => reference,
                    Q::Single => format!("'\"{reference}\"'"),
                    Q::DollarSingle => format!("'\"{reference}\"$'"),
                    // Nothing in a comment runs; keep the reference so the text stays readable.
                    Q::Comment => reference,
                };
                script.push_str(&text);
                // The reference is complete within its context; feed a neutral char so `#` or
                // `<<` detection sees a word character before what follows.
                scanner.prev = Some('x');
            }
        }
    }
    Ok(ShellScript {
        script,
        env,
        spill_files,
    })
}

// ---- static check ------------------------------------------------------------------------------

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
