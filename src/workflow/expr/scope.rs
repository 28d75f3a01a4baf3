//! The two scopes: a map item (`filter:`) and a step's [`Context`] (`when:`).

use serde_json::Value;

use super::{Expr, Scope};
use crate::workflow::interpolate::{
    Context, InterpolateError, Placeholder, apply_fallback, render_text,
};

/// A map item: names are its fields (`item.` optional), a missing field is null; quoted text is
/// taken as written and there is no environment.
pub struct ItemScope<'v>(pub &'v Value);

impl ItemScope<'_> {
    fn field(&self, path: &str) -> Option<Value> {
        let path = path.trim();
        let path = path.strip_prefix("item.").unwrap_or(path);
        field(self.0, path).cloned()
    }
}

impl Scope for ItemScope<'_> {
    fn name(&self, path: &str) -> Result<Value, String> {
        Ok(self.field(path).unwrap_or(Value::Null))
    }

    fn placeholder(&self, ph: &Placeholder) -> Result<Value, String> {
        apply_fallback(ph, self.field(&ph.path)).map_err(|e| e.to_string())
    }

    fn env(&self, _name: &str) -> Option<String> {
        None
    }

    fn text(&self, quoted: &str) -> Result<String, String> {
        Ok(quoted.to_string())
    }
}

/// A step's variables: a bare name is its own text (`${branch} == main`), placeholders and quoted
/// templates resolve as everywhere else, `$NAME` reads the context's environment.
impl Scope for Context {
    fn name(&self, path: &str) -> Result<Value, String> {
        Ok(Value::String(path.to_string()))
    }

    fn placeholder(&self, ph: &Placeholder) -> Result<Value, String> {
        apply_fallback(ph, self.lookup(&ph.path)).map_err(|e| e.to_string())
    }

    fn env(&self, name: &str) -> Option<String> {
        Context::env(self).get(name).cloned()
    }

    fn text(&self, quoted: &str) -> Result<String, String> {
        render_text(quoted, self).map_err(|e| e.to_string())
    }
}

/// Compiles and evaluates a `when:` condition against `ctx`.
pub fn eval_condition(expr: &str, ctx: &Context) -> Result<bool, InterpolateError> {
    let bad = |reason: String| InterpolateError::Condition {
        expr: expr.to_string(),
        reason,
    };
    let compiled = Expr::parse(expr)
        .map_err(|e| bad(format!("{} (at character {})", e.message, e.offset + 1)))?;
    compiled.eval(ctx).map_err(bad)
}

/// `a.b[0].c` relative to an item; a missing field is None.
pub fn field<'v>(item: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = item;
    let path = path.trim();
    let path = path.strip_prefix("$.").unwrap_or(path);
    if path.is_empty() || path == "$" {
        return Some(item);
    }
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            cur = cur.as_object()?.get(name)?;
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let close = stripped.find(']')?;
            let idx: usize = stripped[..close].trim().parse().ok()?;
            cur = cur.as_array()?.get(idx)?;
            rest = &stripped[close + 1..];
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn item_scope_reads_fields_and_placeholders() {
        let item = json!({"a": {"b": 2}, "t": ["x"]});
        let s = ItemScope(&item);
        let e = |t: &str| Expr::parse(t).unwrap().eval(&s);
        assert_eq!(e("item.a.b == 2"), Ok(true));
        assert_eq!(e("${item.a.b} > 1 && t[0] == x"), Ok(true));
        assert_eq!(e("${missing|default:3} == 3 && !missing"), Ok(true));
        assert_eq!(e("'$HOME' == $HOME"), Ok(true));
    }

    #[test]
    fn context_scope_short_circuits() {
        let ctx = Context::new().with_var("x", json!("maybe"));
        assert_eq!(eval_condition("true || ${x}", &ctx), Ok(true));
        assert!(eval_condition("${x}", &ctx).is_err());
        assert_eq!(eval_condition("${x} contains ayb", &ctx), Ok(true));
    }
}
