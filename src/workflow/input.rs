//! The map input pipeline, in upstream's order: load (file or command) -> `json_path` -> `filter`
//! -> `sort_by` -> `distinct` -> `offset` -> `max_items`.
//!
//! - `json_path` is RFC 9535 JSONPath (`$`, `.f`, `['f']`, `[n]`, `[*]`, `..`, `[?(@.f > 1 && @.g
//!   == 'x')]`), evaluated by the `serde_json_path` crate; a path without `$` is relative to the
//!   root, and a singular path (names and indexes only) that selects an array (`$.items`) gives
//!   its elements. Without
//!   `json_path`, a JSON array gives its elements and any other value is one item.
//! - `filter` is upstream's item filter in the workflow expression language ([`super::expr`]):
//!   comparisons between a field path (`File.score`, `tags[0]`) and a value (`10`, `'high'`,
//!   `true`, `null`), `in [...]`, `not in [...]`, `contains`, `matches 'regex'`, combined with
//!   `AND`/`&&`, `OR`/`||`, `NOT`/`!` and parentheses. A missing field is null; null is only
//!   equal to null and never greater or smaller than anything, so `File.score >= 10` is false
//!   for items without it.
//! - `sort_by` is `path [ASC|DESC] [NULLS FIRST|NULLS LAST], ...`; nulls (missing fields) sort
//!   last unless `NULLS FIRST` says otherwise; the sort is stable.
//! - `distinct` keeps the first item for each value of the field path; items without the field
//!   are all kept (an item is never dropped for lacking a field).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use super::expr::field;
use super::expr::{Expr, ItemScope};
use super::interpolate::{self, Context};
use super::model::{MapInput, MapPhase};
use crate::types::ItemKey;

/// A failed stage of the map input pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("map input {input}: {stage}: {message}")]
pub struct InputError {
    /// The file path or command, as written.
    pub input: String,
    /// `load`, `json_path`, `filter`, `sort_by`, `distinct`.
    pub stage: &'static str,
    pub message: String,
}

fn stage_err(stage: &'static str, message: impl Into<String>) -> InputError {
    InputError {
        input: "(items)".into(),
        stage,
        message: message.into(),
    }
}

/// Loads the items of a map phase, resolving placeholders in `input` against this process's
/// environment only. Engines with workflow env or setup captures use [`load_items_in`].
pub async fn load_items(map: &MapPhase, dir: &Path) -> Result<Vec<Value>, InputError> {
    load_items_in(map, dir, &Context::new().with_process_env()).await
}

/// Loads the items of a map phase: `input` is rendered against `ctx` (a file path as text, a
/// command shell-safely with its environment from `ctx`), loaded in `dir`, then run through the
/// pipeline.
pub async fn load_items_in(
    map: &MapPhase,
    dir: &Path,
    ctx: &Context,
) -> Result<Vec<Value>, InputError> {
    let label = match &map.input {
        MapInput::File(f) => format!("file '{f}'"),
        MapInput::Command(c) => format!("command `{c}`"),
    };
    let relabel = |mut e: InputError| {
        e.input = label.clone();
        e
    };
    let value = load_value(&map.input, dir, ctx).await.map_err(relabel)?;
    apply_pipeline(value, map).map_err(relabel)
}

async fn load_value(input: &MapInput, dir: &Path, ctx: &Context) -> Result<Value, InputError> {
    match input {
        MapInput::File(f) => {
            let rendered =
                interpolate::render_text(f, ctx).map_err(|e| stage_err("load", e.to_string()))?;
            let path = dir.join(&rendered);
            let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
                stage_err(
                    "load",
                    format!(
                        "cannot read {}: {e}; check that setup writes it, or that the path is \
                         relative to the worktree",
                        path.display()
                    ),
                )
            })?;
            serde_json::from_str(&text).map_err(|e| {
                stage_err(
                    "load",
                    format!(
                        "{} is not valid JSON: {e}; the input file must hold a JSON value",
                        path.display()
                    ),
                )
            })
        }
        MapInput::Command(c) => {
            let script =
                interpolate::render_shell(c, ctx).map_err(|e| stage_err("load", e.to_string()))?;
            let output = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&script.script)
                .envs(ctx.env().iter())
                .envs(script.env.iter().map(|(k, v)| (k, v)))
                .current_dir(dir)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| stage_err("load", format!("cannot start sh: {e}")))?;
            drop(script);
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(stage_err(
                    "load",
                    format!(
                        "the command failed ({}): {}",
                        output.status,
                        tail.join(" | ")
                    ),
                ));
            }
            let stdout = String::from_utf8(output.stdout)
                .map_err(|_| stage_err("load", "the command's output is not UTF-8 text"))?;
            Ok(parse_command_output(&stdout))
        }
    }
}

/// The first items of a map phase whose input is a file that exists now in `dir` (for `prodigy
/// validate`, which runs no commands): None for a command input, a path with placeholders this
/// process cannot resolve, or a file that is not there (setup may write it).
pub fn sample_file_items(
    map: &MapPhase,
    dir: &Path,
) -> Option<Result<interpolate::ItemSample, InputError>> {
    let MapInput::File(f) = &map.input else {
        return None;
    };
    let rendered = interpolate::render_text(f, &Context::new().with_process_env()).ok()?;
    let text = std::fs::read_to_string(dir.join(&rendered)).ok()?;
    let relabel = |mut e: InputError| {
        e.input = format!("file '{f}'");
        e
    };
    let value = serde_json::from_str(&text)
        .map_err(|e| stage_err("load", format!("{rendered} is not valid JSON: {e}")))
        .map_err(relabel);
    Some(
        value
            .and_then(|v| apply_pipeline(v, map).map_err(relabel))
            .map(|items| interpolate::ItemSample::new(rendered.clone(), &items)),
    )
}

/// Command output: a JSON document if it is one, else its non-empty lines as strings.
pub fn parse_command_output(stdout: &str) -> Value {
    let trimmed = stdout.trim();
    if let Ok(v) = serde_json::from_str::<Value>(trimmed)
        && !trimmed.is_empty()
    {
        return v;
    }
    Value::Array(
        stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| Value::String(l.to_string()))
            .collect(),
    )
}

/// Every stage after loading, in order.
pub fn apply_pipeline(value: Value, map: &MapPhase) -> Result<Vec<Value>, InputError> {
    let mut items = match &map.json_path {
        Some(p) => select_json_path(&value, p)?,
        None => match value {
            Value::Array(a) => a,
            other => vec![other],
        },
    };
    if let Some(f) = &map.filter {
        items = filter_items(items, f)?;
    }
    if let Some(s) = &map.sort_by {
        sort_items(&mut items, s)?;
    }
    if let Some(d) = &map.distinct {
        items = distinct_items(items, d)?;
    }
    if let Some(o) = map.offset {
        items = items.into_iter().skip(o).collect();
    }
    if let Some(m) = map.max_items {
        items.truncate(m);
    }
    Ok(items)
}

/// The values a JSONPath selects, in document order.
/// A path without the leading `$` (`items[*]`, `.items[*]`) is taken as relative to the root.
pub fn select_json_path(value: &Value, path: &str) -> Result<Vec<Value>, InputError> {
    let trimmed = path.trim();
    let rooted = if trimmed.starts_with('$') {
        trimmed.to_string()
    } else if trimmed.starts_with('.') || trimmed.starts_with('[') {
        format!("${trimmed}")
    } else {
        format!("$.{trimmed}")
    };
    let parsed = serde_json_path::JsonPath::parse(&rooted).map_err(|e| {
        stage_err(
            "json_path",
            format!("'{path}' is not a valid JSONPath: {e}; write e.g. $.items[*]"),
        )
    })?;
    let mut found: Vec<Value> = parsed.query(value).all().into_iter().cloned().collect();
    // A singular path (`$.items`) naming an array means its elements, as `$.items[*]` would;
    // otherwise one agent would silently get the whole list. `$[*]` on `[[1, 2]]` keeps `[1, 2]`.
    let singular = !["*", "?", "..", ":", ","]
        .iter()
        .any(|t| rooted.contains(t));
    if singular
        && found.len() == 1
        && found[0].is_array()
        && let Some(Value::Array(elements)) = found.pop()
    {
        return Ok(elements);
    }
    Ok(found)
}

// ---- field paths -------------------------------------------------------------------------------

fn valid_field_path(path: &str) -> bool {
    !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_alphanumeric() || "_-.[]$".contains(c))
}

// ---- filter ------------------------------------------------------------------------------------

/// A compiled `filter:` expression (the language of [`super::expr`], over the item's fields).
#[derive(Debug, Clone)]
pub struct Filter(Expr);

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, InputError> {
        Expr::parse(text)
            .map(Filter)
            .map_err(|e| stage_err("filter", e.to_string()))
    }

    /// Whether `item` passes; an error (e.g. a field holding text used as a condition) names why.
    pub fn matches(&self, item: &Value) -> Result<bool, String> {
        self.0.eval(&ItemScope(item))
    }
}

pub fn filter_items(items: Vec<Value>, filter: &str) -> Result<Vec<Value>, InputError> {
    let f = Filter::parse(filter)?;
    let mut kept = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let keep = f.matches(&item).map_err(|m| {
            stage_err(
                "filter",
                format!("'{filter}': item {i} ({}): {m}", short(&item)),
            )
        })?;
        if keep {
            kept.push(item);
        }
    }
    Ok(kept)
}

/// An item's JSON, cut to fit in an error message.
fn short(item: &Value) -> String {
    let text = item.to_string();
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

// ---- sort, distinct ----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub path: String,
    pub descending: bool,
    pub nulls_first: bool,
}

pub fn parse_sort_by(text: &str) -> Result<Vec<SortKey>, InputError> {
    let mut keys = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let words: Vec<&str> = part.split_whitespace().collect();
        let path = words[0]
            .strip_prefix("item.")
            .unwrap_or(words[0])
            .to_string();
        if !valid_field_path(&path) {
            return Err(stage_err(
                "sort_by",
                format!("'{path}' is not a field path"),
            ));
        }
        let mut key = SortKey {
            path,
            descending: false,
            nulls_first: false,
        };
        let upper: Vec<String> = words[1..].iter().map(|w| w.to_ascii_uppercase()).collect();
        let mut i = 0;
        while i < upper.len() {
            match upper[i].as_str() {
                "ASC" => key.descending = false,
                "DESC" => key.descending = true,
                "NULLS" => {
                    match upper.get(i + 1).map(String::as_str) {
                        Some("FIRST") => key.nulls_first = true,
                        Some("LAST") => key.nulls_first = false,
                        _ => {
                            return Err(stage_err(
                                "sort_by",
                                format!("'{part}': NULLS must be followed by FIRST or LAST"),
                            ));
                        }
                    }
                    i += 1;
                }
                other => {
                    return Err(stage_err(
                        "sort_by",
                        format!(
                            "'{part}': unknown word '{other}'; write e.g. `score DESC NULLS LAST, name`"
                        ),
                    ));
                }
            }
            i += 1;
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(stage_err("sort_by", "no field to sort by"));
    }
    Ok(keys)
}

fn type_rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

fn total_order(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ if type_rank(a) != type_rank(b) => type_rank(a).cmp(&type_rank(b)),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

pub fn sort_items(items: &mut [Value], sort_by: &str) -> Result<(), InputError> {
    let keys = parse_sort_by(sort_by)?;
    items.sort_by(|a, b| {
        for k in &keys {
            let va = field(a, &k.path).filter(|v| !v.is_null());
            let vb = field(b, &k.path).filter(|v| !v.is_null());
            let o = match (va, vb) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => {
                    if k.nulls_first {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                (Some(_), None) => {
                    if k.nulls_first {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (Some(x), Some(y)) => {
                    let o = total_order(x, y);
                    if k.descending { o.reverse() } else { o }
                }
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    Ok(())
}

pub fn distinct_items(items: Vec<Value>, path: &str) -> Result<Vec<Value>, InputError> {
    let path = path.trim();
    let path = path.strip_prefix("item.").unwrap_or(path);
    if !valid_field_path(path) {
        return Err(stage_err(
            "distinct",
            format!("'{path}' is not a field path"),
        ));
    }
    let mut seen = HashSet::new();
    Ok(items
        .into_iter()
        .filter(|item| match field(item, path) {
            None | Some(Value::Null) => true,
            Some(v) => seen.insert(canonical_json(v)),
        })
        .collect())
}

// ---- item keys ---------------------------------------------------------------------------------

/// JSON with object keys sorted at every level, so equal items hash equally.
pub fn canonical_json(v: &Value) -> String {
    // serde_json's map keeps keys sorted unless its `preserve_order` feature is on; sorting here
    // keeps keys stable even if some dependency turns that feature on.
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// An item's stable key: its `id`, `item_id` or `_id` field (or the field `item_id_field` names),
/// as text when it is a non-empty string or a number; otherwise `h-` and the first 16 hex digits
/// of the SHA-256 of its canonical JSON.
pub fn item_key(item: &Value, item_id_field: Option<&str>) -> ItemKey {
    let candidates: Vec<&str> = match item_id_field {
        Some(f) => vec![f],
        None => vec!["id", "item_id", "_id"],
    };
    for c in candidates {
        match field(item, c) {
            Some(Value::String(s)) if !s.trim().is_empty() => return ItemKey(s.clone()),
            Some(Value::Number(n)) => return ItemKey(n.to_string()),
            _ => {}
        }
    }
    // A plain string or number item (`["a.rs", "b.rs"]`) is its own key: stable, and what a
    // person types in `prodigy dlq show JOB a.rs`. Long text is hashed like any other value.
    match item {
        Value::String(s) if !s.trim().is_empty() && s.len() <= 200 && !s.contains('\n') => {
            return ItemKey(s.clone());
        }
        Value::Number(n) => return ItemKey(n.to_string()),
        _ => {}
    }
    let digest = Sha256::digest(canonical_json(item).as_bytes());
    ItemKey(format!("h-{}", &hex::encode(digest)[..16]))
}
