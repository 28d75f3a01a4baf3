//! `${...}` interpolation: any template renders or fails with an offset inside it, plain text
//! renders each value verbatim, and a rendered shell script run under `sh` (and `bash`) prints
//! every item value byte for byte in every quoting context and executes none of it.

use std::path::Path;
use std::process::{Command, Stdio};

use prodigy::types::ItemKey;
use prodigy::workflow::{
    Context, InterpolateError, placeholders, render_content, render_shell, render_text,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Item values a payload would use, mixed with arbitrary text: any character but NUL (a value
/// is a JSON string, so text; NUL is refused with an error, tested in the unit tests).
fn hostile_value() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("'"),
        Just("\""),
        Just("`"),
        Just("\\"),
        Just("$"),
        Just("$("),
        Just(")"),
        Just("${"),
        Just("}"),
        Just("$((1+1))"),
        Just("\n"),
        Just("\r"),
        Just("\t"),
        Just(" "),
        Just(";"),
        Just("&"),
        Just("|"),
        Just("*"),
        Just("?"),
        Just("[a]"),
        Just("~"),
        Just("#"),
        Just("!"),
        Just("<<"),
        Just("EOF"),
        Just("\nEOF\n"),
        Just("-n"),
        Just("%s"),
        Just("$HOME"),
        Just("$1"),
        Just("$'\\x41'"),
        Just("$(touch pwned)"),
        Just("`touch pwned`"),
        Just("'; touch pwned; '"),
        Just("\"; touch pwned; \""),
        Just("\ntouch pwned\n"),
        Just("')touch pwned;(echo '"),
    ];
    let part = prop_oneof![
        3 => piece.prop_map(str::to_string),
        1 => "[^\u{0}]{0,12}",
    ];
    prop_oneof![
        4 => proptest::collection::vec(part, 0..12).prop_map(|p| p.concat()),
        // Numbers, for arithmetic; no leading zeros, which shells read as octal.
        1 => "[ ]?[-+]?(0|[1-9][0-9]{0,8})[ \n]?",
    ]
}

/// What a value in `$((...))` must look like to be written there (anything else is refused).
fn integer(value: &str) -> Option<i64> {
    let t = value.trim();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// One statement of a script: how it writes the value of `${item.v<n>}` to the file `o<k>`, and
/// what the file must then hold.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Bare,
    Double,
    Single,
    DollarSingle,
    Assign,
    Substitution,
    Backticks,
    ForLoop,
    HereDoc,
    HereDocTabs,
    QuotedHereDoc,
    Escaped,
    Comment,
    Arithmetic,
}

const SHAPES: [Shape; 14] = [
    Shape::Bare,
    Shape::Double,
    Shape::Single,
    Shape::DollarSingle,
    Shape::Assign,
    Shape::Substitution,
    Shape::Backticks,
    Shape::ForLoop,
    Shape::HereDoc,
    Shape::HereDocTabs,
    Shape::QuotedHereDoc,
    Shape::Escaped,
    Shape::Comment,
    Shape::Arithmetic,
];

/// The statement's template text and the file content it must produce. `None`: a comment, no
/// file. Two expectations where shells differ (dash has no `$'...'`).
fn statement(shape: Shape, v: &str, out: &str, value: &str) -> (String, Vec<Option<String>>) {
    let p = format!("${{item.{v}}}");
    let one = |s: String| vec![Some(s)];
    match shape {
        Shape::Bare => (format!("printf '%s' {p} > {out}\n"), one(value.into())),
        Shape::Double => (
            format!("printf '%s' \"<{p}>\" > {out}\n"),
            one(format!("<{value}>")),
        ),
        Shape::Single => (
            format!("printf '%s' '<{p}>' > {out}\n"),
            one(format!("<{value}>")),
        ),
        Shape::DollarSingle => (
            format!("printf '%s' $'<{p}>' > {out}\n"),
            // dash has no `$'...'`: it prints each `$` and the quotes are plain quotes.
            vec![Some(format!("<{value}>")), Some(format!("$<{value}$>"))],
        ),
        Shape::Assign => (
            format!("x={p}; printf '%s' \"$x\" > {out}\n"),
            one(value.into()),
        ),
        // The trailing `.` keeps command substitution from dropping the value's final newlines.
        Shape::Substitution => (
            format!("printf '%s' \"$(printf '%s' {p}; printf .)\" > {out}\n"),
            one(format!("{value}.")),
        ),
        Shape::Backticks => (
            format!("printf '%s' \"`printf '%s' {p}; printf .`\" > {out}\n"),
            one(format!("{value}.")),
        ),
        Shape::ForLoop => (
            format!("for w in {p}; do printf '%s' \"$w\"; done > {out}\n"),
            one(value.into()),
        ),
        Shape::HereDoc => (
            format!("cat > {out} <<EOF\n<{p}>\nEOF\n"),
            one(format!("<{value}>\n")),
        ),
        Shape::HereDocTabs => (
            format!("cat > {out} <<-EOF\n\t<{p}>\n\tEOF\n"),
            one(format!("<{value}>\n")),
        ),
        Shape::QuotedHereDoc => (
            format!("cat > {out} <<'EOF'\n<{p}>\nEOF\n"),
            one(format!("<{value}>\n")),
        ),
        Shape::Escaped => (
            format!("printf '%s' \\{p} > {out}\n"),
            one(format!("${value}")),
        ),
        Shape::Comment => (format!("# {p} and {p}\n"), vec![None]),
        // Refused unless the value is an integer (checked by the caller).
        Shape::Arithmetic => (
            format!("printf '%s' \"$(( {p} + 0 ))\" > {out}\n"),
            one(integer(value).map_or_else(String::new, |n| n.to_string())),
        ),
    }
}

fn shells() -> Vec<&'static str> {
    ["sh", "bash"]
        .into_iter()
        .filter(|s| Command::new(s).arg("-c").arg("true").status().is_ok())
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A rich context for the no-panic properties.
fn context() -> Context {
    Context::new()
        .with_item(
            &json!({"name": "alpha", "a": {"b": "deep"}, "tags": ["t0"], "n": 7, "none": null, "empty": ""}),
            0,
            1,
            &ItemKey("alpha".into()),
        )
        .with_var("map", json!({"results": "[{\"a\": 1}]"}))
        .with_var("shell.output", json!("out"))
        .with_env("HOME", "/home/u")
}

/// Template-shaped text: placeholders of every form, shell quoting, noise.
fn template_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("${item.name}"),
        Just("${item.a.b}"),
        Just("${item.tags[0]}"),
        Just("${item['a']}"),
        Just("${map.results[0].a}"),
        Just("${shell.output}"),
        Just("${none:-x}"),
        Just("${item.none|default:y}"),
        Just("${item|json}"),
        Just("${item.name|raw}"),
        Just("${env.HOME}"),
        Just("${env:HOME}"),
        Just("${HOME}"),
        Just("${missing}"),
        Just("${item[}"),
        Just("${[0]}"),
        Just("${a|upper}"),
        Just("${}"),
        Just("${"),
        Just("$${"),
        Just("$HOME"),
        Just("$"),
        Just("}"),
        Just("'"),
        Just("\""),
        Just("`"),
        Just("\\"),
        Just("$("),
        Just(")"),
        Just("$(("),
        Just("<<EOF\n"),
        Just("<<'EOF'\n"),
        Just("<<-E\n"),
        Just("EOF\n"),
        Just("\tE\n"),
        Just("#"),
        Just("\n"),
        Just(" "),
        Just("$'"),
        Just("é"),
    ];
    let part = prop_oneof![
        6 => piece.prop_map(str::to_string),
        1 => any::<String>(),
    ];
    proptest::collection::vec(part, 0..20).prop_map(|p| p.concat())
}

fn check_error(template: &str, e: &InterpolateError) -> Result<(), TestCaseError> {
    match e {
        InterpolateError::Malformed {
            template: t,
            offset,
            reason,
        } => {
            prop_assert_eq!(t, template);
            prop_assert!(
                *offset < template.len(),
                "offset {offset} past {template:?}"
            );
            prop_assert!(template.is_char_boundary(*offset));
            prop_assert!(
                template[*offset..].starts_with("${"),
                "offset {offset} of {template:?}"
            );
            prop_assert!(!reason.is_empty());
        }
        InterpolateError::Unresolved { placeholder, root } => {
            prop_assert!(template.contains(placeholder.as_str()), "{placeholder:?}");
            prop_assert!(!root.is_empty());
        }
        InterpolateError::Value {
            placeholder,
            reason,
        } => {
            prop_assert!(template.contains(placeholder.as_str()), "{placeholder:?}");
            prop_assert!(!reason.is_empty());
        }
        InterpolateError::Condition { .. } => prop_assert!(false, "not a condition: {e:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config(1000))]

    #[test]
    fn any_template_renders_or_names_its_placeholder(template in template_text()) {
        let ctx = context();
        for result in [
            render_text(&template, &ctx),
            render_content(&template, &ctx),
            render_shell(&template, &ctx).map(|s| s.script),
        ] {
            if let Err(e) = result {
                check_error(&template, &e)?;
            }
        }
        for ph in placeholders(&template) {
            prop_assert!(ph.start < ph.end && ph.end <= template.len());
            prop_assert_eq!(&template[ph.start..ph.end], format!("${{{}}}", ph.text));
        }
    }

    #[test]
    fn plain_text_renders_values_verbatim(value in hostile_value(), before in "[^$]{0,8}", after in "[^$]{0,8}") {
        let ctx = Context::new().with_var("v", Value::String(value.clone()));
        let want = format!("{before}{value}{after}");
        prop_assert_eq!(render_text(&format!("{before}${{v}}{after}"), &ctx).unwrap(), want.clone());
        prop_assert_eq!(render_content(&format!("{before}${{v}}{after}"), &ctx).unwrap(), want);
    }
}

proptest! {
    // Each case runs a script under every shell: a smaller budget.
    #![proptest_config(crate::config(100))]

    #[test]
    fn shell_scripts_print_values_byte_for_byte_and_run_none(
        statements in proptest::collection::vec(
            (proptest::sample::select(SHAPES.to_vec()), 0usize..3),
            1..6,
        ),
        values in proptest::collection::vec(hostile_value(), 3),
    ) {
        let item: serde_json::Map<String, Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("v{i}"), Value::String(v.clone())))
            .collect();
        let ctx = Context::new().with_item(&Value::Object(item), 0, 1, &ItemKey("k".into()));
        let mut template = String::new();
        let mut expected = Vec::new();
        for (k, (shape, v)) in statements.iter().enumerate() {
            let (text, want) = statement(*shape, &format!("v{v}"), &format!("o{k}"), &values[*v]);
            template.push_str(&text);
            if let Some(Some(_)) = want.first() {
                expected.push((format!("o{k}"), want));
            }
        }
        let used = |shape: Shape, bad: &dyn Fn(&str) -> bool| {
            statements
                .iter()
                .any(|(s, v)| std::mem::discriminant(s) == std::mem::discriminant(&shape) && bad(&values[*v]))
        };
        // The two refusals: a value that is no integer inside `$((...))`, and a value line that
        // would end a quoted here-document.
        let refuse_arithmetic = used(Shape::Arithmetic, &|v| integer(v).is_none());
        let refuse_heredoc = used(Shape::QuotedHereDoc, &|v| v.lines().any(|l| l == "EOF"));
        let script = match render_shell(&template, &ctx) {
            Ok(s) => {
                prop_assert!(!refuse_arithmetic, "a non-integer was written into $((...)): {:?}", s.script);
                prop_assert!(!refuse_heredoc, "a value ends the quoted here-document: {:?}", s.script);
                s
            }
            Err(InterpolateError::Value { reason, .. }) => {
                prop_assert!(
                    (refuse_arithmetic && reason.contains("arithmetic"))
                        || (refuse_heredoc && reason.contains("would end the quoted here-document")),
                    "refused for no reason: {reason}"
                );
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("{template:?}: {e}"))),
        };
        for shell in shells() {
            let dir = tempfile::tempdir().unwrap();
            let out = Command::new(shell)
                .arg("-c")
                .arg(&script.script)
                .envs(script.env.iter().map(|(k, v)| (k, v)))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            prop_assert!(
                out.status.success(),
                "{shell} failed on {:?}: {}", script.script, String::from_utf8_lossy(&out.stderr)
            );
            let mut want_files: Vec<String> = expected.iter().map(|(f, _)| f.clone()).collect();
            want_files.sort();
            want_files.dedup();
            prop_assert_eq!(files_in(dir.path()), want_files, "{} ran part of a value: {:?}", shell, script.script);
            for (file, want) in &expected {
                let got = std::fs::read(dir.path().join(file)).unwrap();
                prop_assert!(
                    want.iter().flatten().any(|w| w.as_bytes() == got.as_slice()),
                    "{shell}: {file} holds {:?}, want {:?}\nscript: {:?}",
                    String::from_utf8_lossy(&got), want, script.script
                );
            }
        }
    }
}

/// Pieces of shell syntax, for scripts that are mostly not well formed.
const FRAGMENTS: &[&str] = &[
    "printf %s ",
    "'",
    "\"",
    "$(",
    "$((",
    "((",
    ")",
    "))",
    "`",
    "\\",
    "#",
    "\n",
    "<<EOF\n",
    "<<'EOF'\n",
    "<<-\"EOF\"\n",
    "EOF\n",
    "$'",
    " ",
    "x",
    ";",
    "${item.v0}",
    "${item.v1}",
    "${item.v0}",
    "$((1<<2))",
    "(",
    "{ ",
    " }",
    "|",
    "&&",
    "case ",
    " in ",
    "esac",
    "=",
];

proptest! {
    #![proptest_config(crate::config(100))]

    /// Whatever the shell makes of a mix of quoting constructs (most are syntax errors), a
    /// value never runs: the marker file its payload would create does not appear.
    #[test]
    fn random_quoting_mixes_never_run_a_value(
        fragments in proptest::collection::vec(proptest::sample::select(FRAGMENTS.to_vec()), 1..16),
        values in proptest::collection::vec(hostile_value(), 2),
    ) {
        let template = fragments.concat();
        let item = json!({"v0": values[0], "v1": values[1]});
        let ctx = Context::new().with_item(&item, 0, 1, &ItemKey("k".into()));
        let Ok(script) = render_shell(&template, &ctx) else {
            return Ok(());
        };
        for shell in shells() {
            let dir = tempfile::tempdir().unwrap();
            // Nothing the fragments can write loops; the timeout of the shell itself is moot.
            let _ = Command::new(shell)
                .arg("-c")
                .arg(&script.script)
                .envs(script.env.iter().map(|(k, v)| (k, v)))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            prop_assert!(
                !dir.path().join("pwned").exists(),
                "{shell} ran a value of {values:?} from {template:?} rendered as {:?}", script.script
            );
        }
    }
}
