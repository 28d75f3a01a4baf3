//! `filter:` and `when:` expressions: any text compiles or fails with an offset inside it,
//! anything that compiles evaluates (to a boolean or an error message) over any item or step
//! context without a panic, and `NOT` / `!=` / `OR` mean what the tables say.

use prodigy::types::ItemKey;
use prodigy::workflow::expr::{Expr, ItemScope};
use prodigy::workflow::{Context, InterpolateError, eval_condition};
use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON for items and variables.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("true".to_string()),
            Just("no".to_string()),
            Just("12".to_string()),
            Just(" 1.5 ".to_string()),
            Just("high".to_string()),
            Just("{\"a\": [1]}".to_string()),
            any::<String>(),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("a".to_string()),
                        Just("tags".to_string()),
                        Just("score".to_string()),
                        "[a-z]{1,3}"
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Expression-shaped text: the language's tokens, names, literals and noise.
pub fn expression_text() -> impl Strategy<Value = String> {
    let tok = prop_oneof![
        Just("a"),
        Just("a.b"),
        Just("tags[0]"),
        Just("item.score"),
        Just("score"),
        Just("x"),
        Just("${a}"),
        Just("${a.b:-1}"),
        Just("${tags|default:[]}"),
        Just("${missing|json}"),
        Just("${"),
        Just("}"),
        Just("$HOME"),
        Just("$"),
        Just("'text'"),
        Just("\"it\\\"s\""),
        Just("'"),
        Just("\""),
        Just("\\"),
        Just("12"),
        Just("-3.5"),
        Just("1e400"),
        Just("true"),
        Just("null"),
        Just("=="),
        Just("="),
        Just("!="),
        Just(">"),
        Just("<"),
        Just(">="),
        Just("<="),
        Just("&&"),
        Just("||"),
        Just("&"),
        Just("|"),
        Just("AND"),
        Just("or"),
        Just("NOT"),
        Just("!"),
        Just("in"),
        Just("not"),
        Just("contains"),
        Just("matches"),
        Just("'^a+$'"),
        Just("'('"),
        Just("["),
        Just("]"),
        Just(","),
        Just("("),
        Just(")"),
        Just(" "),
        Just("\t"),
        Just("é"),
        Just("\u{3000}"),
    ];
    let piece = prop_oneof![
        16 => tok.prop_map(str::to_string),
        2 => any::<String>(),
        // Deep nesting and long chains: the parser and the evaluator must not run out of stack.
        1 => (1usize..400, prop_oneof![Just("("), Just("!"), Just("NOT "), Just("a && "), Just("b || ")])
            .prop_map(|(n, t)| t.repeat(n)),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|p| p.join(" "))
}

fn check_compile_error(
    text: &str,
    e: &prodigy::workflow::expr::ExprError,
) -> Result<(), TestCaseError> {
    prop_assert!(
        e.offset <= text.len(),
        "offset {} past the end of {text:?}",
        e.offset
    );
    prop_assert!(
        text.is_char_boundary(e.offset),
        "offset {} inside a character of {text:?}",
        e.offset
    );
    prop_assert!(!e.message.trim().is_empty());
    let at = format!("(at character {})", e.offset + 1);
    prop_assert!(e.to_string().contains(&at), "{e}");
    Ok(())
}

fn context(vars: &Value) -> Context {
    let mut ctx = Context::new().with_env("HOME", "/home/u");
    if let Value::Object(m) = vars {
        for (k, v) in m {
            ctx.set_var(k.clone(), v.clone());
        }
    }
    ctx.with_item(vars, 0, 1, &ItemKey("k".into()))
}

proptest! {
    #![proptest_config(crate::config(800))]

    #[test]
    fn any_text_compiles_or_names_an_offset(text in any::<String>()) {
        if let Err(e) = Expr::parse(&text) {
            check_compile_error(&text, &e)?;
        }
    }

    #[test]
    fn expressions_evaluate_over_any_item_and_context(text in expression_text(), item in json()) {
        match Expr::parse(&text) {
            Err(e) => check_compile_error(&text, &e)?,
            Ok(expr) => {
                for result in [expr.eval(&ItemScope(&item)), expr.eval(&context(&item))] {
                    if let Err(m) = result {
                        prop_assert!(!m.trim().is_empty(), "{text:?}");
                    }
                }
            }
        }
        match eval_condition(&text, &context(&item)) {
            Ok(_) => {}
            Err(InterpolateError::Condition { expr, reason }) => {
                prop_assert_eq!(&expr, &text);
                prop_assert!(!reason.trim().is_empty());
            }
            Err(other) => prop_assert!(false, "a condition fails as Condition, got {other:?}"),
        }
    }

    #[test]
    fn not_and_or_follow_their_tables(a in expression_text(), b in expression_text(), item in json()) {
        let scope = ItemScope(&item);
        let (Ok(ea), Ok(eb)) = (Expr::parse(&a), Expr::parse(&b)) else { return Ok(()) };
        let (ra, rb) = (ea.eval(&scope), eb.eval(&scope));
        let not = Expr::parse(&format!("NOT ({a})")).expect("NOT of a valid expression compiles");
        match &ra {
            Ok(v) => prop_assert_eq!(not.eval(&scope), Ok(!v)),
            Err(_) => prop_assert!(not.eval(&scope).is_err()),
        }
        let or = Expr::parse(&format!("({a}) || ({b})")).expect("OR of valid expressions compiles");
        match (&ra, &rb) {
            (Ok(true), _) => prop_assert_eq!(or.eval(&scope), Ok(true)),
            (Ok(false), Ok(vb)) => prop_assert_eq!(or.eval(&scope), Ok(*vb)),
            _ => prop_assert!(or.eval(&scope).is_err() || ra.is_ok()),
        }
    }

    #[test]
    fn equal_and_not_equal_are_opposites(left in json(), right in json()) {
        let item = serde_json::json!({"l": left, "r": right});
        let scope = ItemScope(&item);
        let eq = Expr::parse("${l} == ${r}").unwrap().eval(&scope).unwrap();
        let ne = Expr::parse("${l} != ${r}").unwrap().eval(&scope).unwrap();
        prop_assert_ne!(eq, ne);
        let inl = Expr::parse("${l} in [${r}]").unwrap().eval(&scope).unwrap();
        prop_assert_eq!(eq, inl);
    }
}
