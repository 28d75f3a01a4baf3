//! The one expression language of workflows: map `filter:` and step `when:`.
//!
//! An expression is compiled once ([`Expr::parse`], which the workflow parser calls at load time so
//! a broken expression is a `file:line:col` error) and evaluated over a [`Scope`]: the map item for
//! a `filter:`, the step's variables for a `when:`.
//!
//! **Syntax.** `a OR b` / `a || b`, `a AND b` / `a && b`, `NOT a` / `!a`, parentheses; comparisons
//! `== != > < >= <=` (a single `=` means `==`), `contains`, `matches 'regex'`, `in [..]`,
//! `not in [..]`. Keywords are case-insensitive. Operands:
//! - a **name** (`File.score`, `tags[0]`, `item.path`): left of an operator or alone, the scope
//!   resolves it (an item field for `filter:`, a missing field is null; in `when:` a name is its
//!   own text, so `${branch} == main` and `yes` work);
//! - a bare word right of an operator is text (`severity == high`), unless it is a number,
//!   `true`, `false` or `null`;
//! - `'text'` or `"text"` (a backslash escapes the quote); in `when:` `${...}` inside it is
//!   rendered;
//! - `${path}` (with `:-` / `|default:` fallbacks) is one value, never re-read as expression text;
//! - `$NAME` is the environment variable NAME, or the text `$NAME` when it is not set.
//!
//! **Truthiness** (an operand alone, or under `!`):
//!
//! | value                         | truthy |
//! |-------------------------------|--------|
//! | null, missing field           | false  |
//! | `true` / `false`              | itself |
//! | number                        | not 0  |
//! | text `true`, `yes`, `1`       | true (trimmed, any case) |
//! | text `false`, `no`, `0`, `""` | false  |
//! | any other text                | error: compare it explicitly |
//! | list, object                  | not empty |
//!
//! **Comparison:**
//!
//! | operator          | rule |
//! |-------------------|------|
//! | `==` `!=` `in`    | null equals only null; two numbers (or numeric texts) compare as numbers; otherwise both sides as text (strings as they are, other values as JSON), trimmed |
//! | `<` `>` `<=` `>=` | false when a side is null; two numbers (or numeric texts) as numbers; two texts by bytes; anything else is an error |
//! | `contains`        | a list holds an element equal (`==`) to the right side; a text holds the right side's text; null is false |
//! | `matches`         | the left side's text matches the regular expression (compiled at load time); null is false |
//!
//! An error while evaluating (a non-boolean text alone, `'main' > 3`) fails the step or the map
//! input; it never counts as false.

mod eval;
mod lexer;
mod parser;
mod scope;

use serde_json::Value;

use super::interpolate::Placeholder;
pub use scope::{ItemScope, eval_condition, field};

/// What an expression's names, placeholders, `$NAME`s and quoted texts resolve against.
pub trait Scope {
    /// A bare name (`File.score`); `Ok(Value::Null)` when it is missing.
    fn name(&self, path: &str) -> Result<Value, String>;
    /// A `${...}` placeholder, with its fallback applied.
    fn placeholder(&self, ph: &Placeholder) -> Result<Value, String>;
    /// The environment variable `name`, if it is set.
    fn env(&self, name: &str) -> Option<String>;
    /// A quoted text (templates are rendered where the scope has variables).
    fn text(&self, quoted: &str) -> Result<String, String>;
}

/// A compile error: where in the expression (byte offset) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{source_text}': {message} (at character {})", offset + 1)]
pub struct ExprError {
    pub source_text: String,
    pub offset: usize,
    pub message: String,
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expr {
    source: String,
    root: Node,
}

impl Expr {
    /// Compiles `text`; see the module documentation for the language.
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        let err = |offset: usize, message: String| ExprError {
            source_text: text.to_string(),
            offset,
            message,
        };
        let toks = lexer::tokens(text).map_err(|(at, m)| err(at, m))?;
        let root = parser::parse(&toks, text.len()).map_err(|(at, m)| err(at, m))?;
        Ok(Expr {
            source: text.to_string(),
            root,
        })
    }

    /// Evaluates against `scope`; errors follow the tables in the module documentation.
    pub fn eval(&self, scope: &dyn Scope) -> Result<bool, String> {
        eval::node(&self.root, scope)
    }

    /// The text the expression was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Contains,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Lt => "<",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Contains => "contains",
        }
    }
}

#[derive(Debug, Clone)]
enum Operand {
    Name(String),
    Lit(Value),
    Quoted(String),
    Placeholder(Placeholder),
    Env(String),
}

/// `a && b && c` is one `And` of three, not a chain of pairs, so a long condition costs no stack;
/// parentheses and `NOT` nest at most [`parser::MAX_NESTING`] deep.
#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Truthy(Operand),
    Cmp(Operand, Op, Operand),
    In(Operand, Vec<Operand>),
    Matches(Operand, regex::Regex),
}
