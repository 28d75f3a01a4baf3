//! Evaluation: the truthiness and comparison tables of the module documentation.

use std::cmp::Ordering;

use serde_json::Value;

use super::{Node, Op, Operand, Scope};
use crate::workflow::interpolate::value_text;

type R<T> = Result<T, String>;

pub(super) fn node(n: &Node, scope: &dyn Scope) -> R<bool> {
    match n {
        Node::And(all) => {
            for n in all {
                if !node(n, scope)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Node::Or(any) => {
            for n in any {
                if node(n, scope)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Node::Not(a) => Ok(!node(a, scope)?),
        Node::Truthy(o) => truthy(&operand(o, scope)?),
        Node::Cmp(l, op, r) => compare(&operand(l, scope)?, *op, &operand(r, scope)?),
        Node::In(l, list) => {
            let v = operand(l, scope)?;
            for item in list {
                if equal(&v, &operand(item, scope)?) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Node::Matches(l, re) => match operand(l, scope)? {
            Value::Null => Ok(false),
            v => Ok(re.is_match(&value_text(&v))),
        },
    }
}

fn operand(o: &Operand, scope: &dyn Scope) -> R<Value> {
    match o {
        Operand::Name(path) => scope.name(path),
        Operand::Lit(v) => Ok(v.clone()),
        Operand::Quoted(s) => scope.text(s).map(Value::String),
        Operand::Placeholder(ph) => scope.placeholder(ph),
        Operand::Env(name) => Ok(Value::String(
            scope.env(name).unwrap_or_else(|| format!("${name}")),
        )),
    }
}

/// The truthiness table.
pub(super) fn truthy(v: &Value) -> R<bool> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" | "" => Ok(false),
            other => Err(format!(
                "'{other}' is not a boolean (true/false, yes/no, 1/0); compare it explicitly, \
                 e.g. ${{x}} == 'value'"
            )),
        },
        Value::Array(a) => Ok(!a.is_empty()),
        Value::Object(o) => Ok(!o.is_empty()),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok().filter(|f: &f64| f.is_finite()),
        _ => None,
    }
}

/// `==`: null equals only null; numbers numerically; otherwise the trimmed texts.
pub(super) fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => value_text(a).trim() == value_text(b).trim(),
        },
    }
}

fn compare(l: &Value, op: Op, r: &Value) -> R<bool> {
    let ordered =
        |want: fn(Ordering) -> bool| -> R<bool> { Ok(order(l, op, r)?.is_some_and(want)) };
    match op {
        Op::Eq => Ok(equal(l, r)),
        Op::Ne => Ok(!equal(l, r)),
        Op::Gt => ordered(|o| o == Ordering::Greater),
        Op::Lt => ordered(|o| o == Ordering::Less),
        Op::Ge => ordered(|o| o != Ordering::Less),
        Op::Le => ordered(|o| o != Ordering::Greater),
        Op::Contains => contains(l, r),
    }
}

/// `None` when a side is null (the comparison is false).
fn order(l: &Value, op: Op, r: &Value) -> R<Option<Ordering>> {
    if l.is_null() || r.is_null() {
        return Ok(None);
    }
    if let (Some(a), Some(b)) = (number(l), number(r)) {
        return Ok(a.partial_cmp(&b));
    }
    match (l, r) {
        (Value::String(a), Value::String(b)) => Ok(Some(a.trim().cmp(b.trim()))),
        _ => Err(format!(
            "'{}' compares two numbers or two texts, found {} and {}",
            op.as_str(),
            l,
            r
        )),
    }
}

fn contains(l: &Value, r: &Value) -> R<bool> {
    match l {
        Value::Null => Ok(false),
        Value::Array(items) => Ok(items.iter().any(|e| equal(e, r))),
        Value::String(s) => Ok(s.contains(value_text(r).as_str())),
        other => Err(format!(
            "'contains' needs a list or a text on the left, found {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn truthiness_table() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(""),
            json!(" No "),
            json!([]),
        ] {
            assert_eq!(truthy(&v), Ok(false), "{v}");
        }
        for v in [
            json!(true),
            json!(2),
            json!("YES"),
            json!("1"),
            json!({"a": 1}),
        ] {
            assert_eq!(truthy(&v), Ok(true), "{v}");
        }
        assert!(
            truthy(&json!("maybe"))
                .unwrap_err()
                .contains("not a boolean")
        );
    }

    #[test]
    fn comparison_table() {
        assert!(equal(&json!("12"), &json!(12.0)));
        assert!(equal(&json!(true), &json!("true")));
        assert!(equal(&json!("main\n"), &json!("main")));
        assert!(!equal(&json!(null), &json!("null")));
        assert!(equal(&json!(null), &json!(null)));
        let gt = |a, b| compare(&a, Op::Gt, &b);
        assert_eq!(gt(json!("12"), json!(10)), Ok(true));
        assert_eq!(gt(json!("b"), json!("a")), Ok(true));
        assert_eq!(gt(json!(null), json!(1)), Ok(false));
        assert_eq!(compare(&json!(null), Op::Le, &json!(1)), Ok(false));
        assert!(gt(json!("main"), json!(3)).unwrap_err().contains("'>'"));
        assert!(gt(json!(true), json!(false)).is_err());
        assert_eq!(contains(&json!(["x", 1]), &json!("1")), Ok(true));
        assert_eq!(contains(&json!("abc"), &json!("bc")), Ok(true));
        assert_eq!(contains(&json!(null), &json!("a")), Ok(false));
        assert!(contains(&json!(3), &json!(3)).is_err());
    }
}
