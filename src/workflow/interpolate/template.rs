//! Templates: finding `${...}` placeholders, their modifiers and fallbacks, and rendering a
//! template as plain text (`render_text`, `render_content`).

use serde_json::Value;

use super::scope::{Segment, parse_path};
use super::{Context, InterpolateError, R};

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

pub(super) enum Piece {
    Text(String),
    Hole(Placeholder),
}

pub(super) fn split(template: &str) -> R<Vec<Piece>> {
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

pub(super) fn placeholder_text(ph: &Placeholder, ctx: &Context) -> R<String> {
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
            if starts_ok && let Some(v) = ctx.env().get(name) {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn modifiers_and_fallbacks() {
        let ctx = Context::new()
            .with_var("e", json!(""))
            .with_var("o", json!({"k": [1]}))
            .with_env("P", "demo");
        let r = |t: &str| render_text(t, &ctx).unwrap();
        assert_eq!(r("${e:-x}|${e|default:y}|${o|json}"), "x||{\"k\":[1]}");
        assert_eq!(r("$${not} $P ${o.k[0]}"), "${not} demo 1");
        assert_eq!(render_content("$P", &ctx).unwrap(), "$P");
        let ph = &placeholders("a ${o.k|raw} b")[0];
        assert_eq!(
            (ph.root.as_str(), ph.raw, ph.start, ph.end),
            ("o", true, 2, 12)
        );
        assert!(render_text("${o|upper}", &ctx).is_err());
    }
}
