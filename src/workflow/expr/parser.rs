//! Tokens -> [`Node`]: `or := and (OR and)*`, `and := unary (AND unary)*`,
//! `unary := NOT unary | ( or ) | operand [op value | [NOT] IN list | MATCHES pattern]`.

use serde_json::Value;

use super::lexer::{Spanned, Tok};
use super::{Node, Operand};

type Failed = (usize, String);

/// How deep parentheses and `NOT` may nest. The parser and the evaluator recurse once per level,
/// so without a bound a `when:` of a few thousand `(` overflows the stack and aborts the process.
pub(super) const MAX_NESTING: usize = 32;

pub(super) fn parse(toks: &[Spanned], end: usize) -> Result<Node, Failed> {
    if toks.is_empty() {
        return Err((0, "the expression is empty".into()));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end,
        depth: 0,
    };
    let node = p.or()?;
    if let Some((at, t)) = toks.get(p.pos) {
        return Err((*at, format!("unexpected {}", describe(t))));
    }
    Ok(node)
}

struct Parser<'t> {
    toks: &'t [Spanned],
    pos: usize,
    /// The offset reported for "ends too early".
    end: usize,
    /// Parentheses and `NOT`s open at this point.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(at, _)| *at)
    }

    fn fail<T>(&self, message: String) -> Result<T, Failed> {
        Err((self.at(), message))
    }

    fn or(&mut self) -> Result<Node, Failed> {
        let mut any = vec![self.and()?];
        while matches!(self.peek(), Some(Tok::Or)) {
            self.pos += 1;
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Node::Or(any)
        })
    }

    fn and(&mut self) -> Result<Node, Failed> {
        let mut all = vec![self.unary()?];
        while matches!(self.peek(), Some(Tok::And)) {
            self.pos += 1;
            all.push(self.unary()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Node::And(all)
        })
    }

    fn unary(&mut self) -> Result<Node, Failed> {
        let nested = matches!(self.peek(), Some(Tok::Not | Tok::LParen));
        if nested && self.depth == MAX_NESTING {
            return self.fail(format!(
                "parentheses and NOT nest more than {MAX_NESTING} deep; simplify the condition"
            ));
        }
        self.depth += usize::from(nested);
        let n = self.nested_unary();
        self.depth -= usize::from(nested);
        n
    }

    fn nested_unary(&mut self) -> Result<Node, Failed> {
        match self.peek() {
            Some(Tok::Not) => {
                self.pos += 1;
                Ok(Node::Not(Box::new(self.unary()?)))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let n = self.or()?;
                if !matches!(self.peek(), Some(Tok::RParen)) {
                    return self.fail("missing ')'".into());
                }
                self.pos += 1;
                Ok(n)
            }
            _ => self.comparison(),
        }
    }

    fn comparison(&mut self) -> Result<Node, Failed> {
        let left = self.operand(true)?;
        let negate = matches!(self.peek(), Some(Tok::Not))
            && matches!(self.toks.get(self.pos + 1), Some((_, Tok::In)));
        if negate {
            self.pos += 1;
        }
        match self.peek().cloned() {
            Some(Tok::In) => {
                self.pos += 1;
                let n = Node::In(left, self.list()?);
                Ok(if negate { Node::Not(Box::new(n)) } else { n })
            }
            Some(Tok::Op(op)) => {
                self.pos += 1;
                Ok(Node::Cmp(left, op, self.operand(false)?))
            }
            Some(Tok::Matches) => {
                self.pos += 1;
                let at = self.at();
                let pattern = match self.peek() {
                    Some(Tok::Quoted(s) | Tok::Word(s)) => s.clone(),
                    _ => return self.fail("'matches' needs a quoted regular expression".into()),
                };
                self.pos += 1;
                let re = regex::Regex::new(&pattern)
                    .map_err(|e| (at, format!("invalid regular expression '{pattern}': {e}")))?;
                Ok(Node::Matches(left, re))
            }
            _ => Ok(Node::Truthy(left)),
        }
    }

    /// A value; a bare word is a name on the left and text on the right.
    fn operand(&mut self, left: bool) -> Result<Operand, Failed> {
        let o = match self.peek() {
            Some(Tok::Word(w)) if left => Operand::Name(w.clone()),
            Some(Tok::Word(w)) => Operand::Lit(Value::String(w.clone())),
            Some(Tok::Lit(v)) => Operand::Lit(v.clone()),
            Some(Tok::Quoted(s)) => Operand::Quoted(s.clone()),
            Some(Tok::Placeholder(ph)) => Operand::Placeholder(ph.clone()),
            Some(Tok::Env(n)) => Operand::Env(n.clone()),
            Some(t) => return self.fail(format!("expected a value, found {}", describe(t))),
            None => return self.fail("the expression ends too early; a value is missing".into()),
        };
        self.pos += 1;
        Ok(o)
    }

    fn list(&mut self) -> Result<Vec<Operand>, Failed> {
        if !matches!(self.peek(), Some(Tok::LBracket)) {
            return self.fail("'in' needs a list: in ['a', 'b']".into());
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::RBracket) => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(Tok::Comma) => self.pos += 1,
                None => return self.fail("the list has no closing ']'".into()),
                Some(_) => out.push(self.operand(false)?),
            }
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Lit(v) => format!("'{v}'"),
        Tok::Quoted(s) => format!("'{s}'"),
        Tok::Placeholder(ph) => format!("'${{{}}}'", ph.text),
        Tok::Env(n) => format!("'${n}'"),
        Tok::And => "'&&'".into(),
        Tok::Or => "'||'".into(),
        Tok::Not => "'!'".into(),
        Tok::In => "'in'".into(),
        Tok::Matches => "'matches'".into(),
        Tok::Op(op) => format!("'{}'", op.as_str()),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::Comma => "','".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Expr;

    fn offset(text: &str) -> (usize, String) {
        let e = Expr::parse(text).unwrap_err();
        (e.offset, e.message)
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        assert_eq!(offset("severity ==").0, 11);
        assert_eq!(offset("(a == 1").0, 7);
        assert_eq!(offset("a == 1 b").0, 7);
        assert_eq!(offset("a in 'x'").0, 5);
        assert_eq!(offset("a matches '('").0, 10);
        assert!(offset("").1.contains("empty"));
        assert!(offset("a == )").1.contains("')'"));
    }

    /// Found by tests/fuzz (expr): `((((...a...))))` or `!!!!...a` a few thousand deep overflowed
    /// the stack (an abort, not an error), and so did evaluating or dropping `a && a && ...`.
    #[test]
    fn deep_nesting_is_an_error_and_long_chains_cost_no_stack() {
        use serde_json::json;

        use super::super::ItemScope;
        use super::MAX_NESTING;

        let ok = format!("{}a{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(Expr::parse(&ok).is_ok());
        let deep = format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(offset(&deep).0, MAX_NESTING);
        assert!(offset(&deep).1.contains("nest more than"));
        assert_eq!(offset(&format!("{}a", "!".repeat(100_000))).0, MAX_NESTING);
        let item = json!({"a": true, "b": false});
        let chain = format!("{}a", "a && ".repeat(200_000));
        assert_eq!(
            Expr::parse(&chain).unwrap().eval(&ItemScope(&item)),
            Ok(true)
        );
        let chain = format!("{}a", "b || ".repeat(200_000));
        assert_eq!(
            Expr::parse(&chain).unwrap().eval(&ItemScope(&item)),
            Ok(true)
        );
    }

    #[test]
    fn precedence_and_not_in() {
        assert!(Expr::parse("NOT a == 1 OR b in [1, 2] AND c not in ['x']").is_ok());
        assert!(Expr::parse("!(a) && (b || c)").is_ok());
    }
}
