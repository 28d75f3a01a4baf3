//! Text -> tokens, each with its byte offset.

use serde_json::Value;

use super::Op;
use crate::workflow::interpolate::{Placeholder, parse_placeholder};

#[derive(Debug, Clone)]
pub(super) enum Tok {
    /// A bare word: a name, or text right of an operator.
    Word(String),
    /// A number, `true`, `false` or `null`.
    Lit(Value),
    Quoted(String),
    Placeholder(Placeholder),
    /// `$NAME`: the environment variable.
    Env(String),
    And,
    Or,
    Not,
    In,
    Matches,
    Op(Op),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

pub(super) type Spanned = (usize, Tok);
type Failed = (usize, String);

/// Characters that end a bare word.
const STOP: &str = "!=<>()&|'\",]";

pub(super) fn tokens(text: &str) -> Result<Vec<Spanned>, Failed> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let c = rest.chars().next().unwrap_or(' ');
        if c.is_whitespace() {
            at += c.len_utf8();
            continue;
        }
        let (tok, len) = token(rest).map_err(|m| (at, m))?;
        out.push((at, tok));
        at += len;
    }
    Ok(out)
}

/// The token at the start of `rest` and its length in bytes.
fn token(rest: &str) -> Result<(Tok, usize), String> {
    for (text, tok) in [
        ("&&", Tok::And),
        ("||", Tok::Or),
        ("==", Tok::Op(Op::Eq)),
        ("!=", Tok::Op(Op::Ne)),
        (">=", Tok::Op(Op::Ge)),
        ("<=", Tok::Op(Op::Le)),
    ] {
        if rest.starts_with(text) {
            return Ok((tok, 2));
        }
    }
    if rest.starts_with("${") {
        let close = rest
            .find('}')
            .ok_or("'${' without a closing '}'".to_string())?;
        let ph = parse_placeholder(&rest[2..close], 0, close + 1)?;
        return Ok((Tok::Placeholder(ph), close + 1));
    }
    let c = rest.chars().next().unwrap_or(' ');
    let single = match c {
        '>' => Some(Tok::Op(Op::Gt)),
        '<' => Some(Tok::Op(Op::Lt)),
        '=' => Some(Tok::Op(Op::Eq)),
        '!' => Some(Tok::Not),
        '(' => Some(Tok::LParen),
        ')' => Some(Tok::RParen),
        '[' => Some(Tok::LBracket),
        ']' => Some(Tok::RBracket),
        ',' => Some(Tok::Comma),
        '&' | '|' => return Err(format!("unexpected '{c}'; write {c}{c}")),
        _ => None,
    };
    if let Some(tok) = single {
        return Ok((tok, 1));
    }
    if c == '\'' || c == '"' {
        return quoted(rest, c);
    }
    let len = word_len(rest);
    Ok((word(&rest[..len]), len))
}

/// `'text'` with `\'` for a quote inside.
fn quoted(rest: &str, quote: char) -> Result<(Tok, usize), String> {
    let mut s = String::new();
    let mut chars = rest.char_indices().skip(1);
    while let Some((i, d)) = chars.next() {
        if d == '\\' && rest[i + 1..].starts_with(quote) {
            s.push(quote);
            chars.next();
        } else if d == quote {
            return Ok((Tok::Quoted(s), i + 1));
        } else {
            s.push(d);
        }
    }
    Err(format!("unclosed {quote} quote"))
}

/// A word runs to whitespace, an operator character or `${`; `[digits]` right after a name is an
/// index and belongs to it (`tags[0]`).
fn word_len(rest: &str) -> usize {
    let mut len = 0;
    let mut depth = 0;
    for (i, d) in rest.char_indices() {
        if d == '[' {
            if i > 0 && rest[i + 1..].starts_with(|x: char| x.is_ascii_digit()) {
                depth += 1;
            } else {
                break;
            }
        } else if d == ']' && depth > 0 {
            depth -= 1;
        } else if d.is_whitespace() || STOP.contains(d) || (i > 0 && rest[i..].starts_with("${")) {
            break;
        }
        len = i + d.len_utf8();
    }
    len
}

fn word(w: &str) -> Tok {
    match w.to_ascii_uppercase().as_str() {
        "AND" => return Tok::And,
        "OR" => return Tok::Or,
        "NOT" => return Tok::Not,
        "IN" => return Tok::In,
        "MATCHES" => return Tok::Matches,
        "CONTAINS" => return Tok::Op(Op::Contains),
        "TRUE" => return Tok::Lit(Value::Bool(true)),
        "FALSE" => return Tok::Lit(Value::Bool(false)),
        "NULL" => return Tok::Lit(Value::Null),
        _ => {}
    }
    if let Some(n) = number(w) {
        return Tok::Lit(n);
    }
    if let Some(name) = w.strip_prefix('$')
        && !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Tok::Env(name.to_string());
    }
    Tok::Word(w.to_string())
}

/// `12`, `-3`, `0.5`, `1e3`; not `inf` or `1.2.3`.
fn number(w: &str) -> Option<Value> {
    let digits = w.strip_prefix('-').unwrap_or(w);
    if !digits.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let n: f64 = w.parse().ok()?;
    Some(if n.fract() == 0.0 && n.abs() < 9e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<String> {
        tokens(text)
            .unwrap()
            .into_iter()
            .map(|(at, t)| format!("{at}:{t:?}"))
            .collect()
    }

    #[test]
    fn words_keep_indexes_and_stop_at_operators() {
        let k = kinds("tags[0]=='x' AND a.b>=-2");
        assert_eq!(k.len(), 7, "{k:?}");
        assert!(k[0].starts_with("0:Word(\"tags[0]\")"), "{k:?}");
        assert!(k[2].contains("Quoted(\"x\")"), "{k:?}");
        assert!(k[6].contains("Number(-2)"), "{k:?}");
    }

    #[test]
    fn env_placeholder_and_escaped_quote() {
        let k = kinds("$HOME ${a.b:-x} 'it\\'s' 1.2.3");
        assert!(k[0].contains("Env(\"HOME\")"), "{k:?}");
        assert!(k[1].starts_with("6:Placeholder"), "{k:?}");
        assert!(k[2].contains("Quoted(\"it's\")"), "{k:?}");
        assert!(k[3].contains("Word(\"1.2.3\")"), "{k:?}");
    }

    #[test]
    fn errors_name_the_offset() {
        assert_eq!(tokens("a & b").unwrap_err().0, 2);
        assert_eq!(tokens("x == 'open").unwrap_err().0, 5);
        assert_eq!(tokens("${a").unwrap_err().0, 0);
    }
}
