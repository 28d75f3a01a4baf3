//! What a step tells the runner: workflow commands on stdout (`::error file=..::message`) and the
//! step's outputs in `$GITHUB_OUTPUT`. Escaping follows GitHub's reference implementation
//! (actions/toolkit `command.ts`): in the message `%`, `\r`, `\n` are percent-encoded; in a
//! property value `:` and `,` are too.

use std::path::Path;

use crate::github::Annotation;

/// Error annotations a step shows at most; further ones are dropped by GitHub.
pub const STEP_ERROR_ANNOTATIONS: usize = 10;

pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// `::name key=value,...::message`; properties with empty values are left out.
pub fn command(name: &str, properties: &[(&str, String)], message: &str) -> String {
    let props: Vec<String> = properties
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", escape_property(v)))
        .collect();
    let head = if props.is_empty() {
        name.to_string()
    } else {
        format!("{name} {}", props.join(","))
    };
    format!("::{head}::{}", escape_data(message))
}

pub fn warning(title: &str, message: &str) -> String {
    command("warning", &[("title", title.to_string())], message)
}

pub fn notice(title: &str, message: &str) -> String {
    command("notice", &[("title", title.to_string())], message)
}

pub fn error(title: &str, message: &str) -> String {
    command("error", &[("title", title.to_string())], message)
}

/// An `::error` on the file and lines of a check-run annotation. `prefix` is where the
/// repository lies inside the workspace (see [`workspace_prefix`]).
pub fn error_annotation(a: &Annotation, prefix: &str) -> String {
    let file = if prefix.is_empty() {
        a.path.clone()
    } else {
        format!("{prefix}/{}", a.path)
    };
    command(
        "error",
        &[
            ("file", file),
            ("line", a.start_line.to_string()),
            ("endLine", a.end_line.to_string()),
            ("title", a.title.clone().unwrap_or_default()),
        ],
        &a.message,
    )
}

/// The repository's place inside `GITHUB_WORKSPACE`, as a prefix for annotation paths (which
/// GitHub reads relative to the workspace): empty when the repository is the workspace, as
/// with a plain `actions/checkout`, or lies outside it.
pub fn workspace_prefix(repo_root: &Path, workspace: Option<&Path>) -> String {
    let Some(rel) = workspace.and_then(|w| repo_root.strip_prefix(w).ok()) else {
        return String::new();
    };
    rel.components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect::<Vec<_>>()
        .join("/")
}

/// One output in `$GITHUB_OUTPUT`'s multiline form:
/// `name<<DELIMITER\nvalue\nDELIMITER\n`, safe for any value the delimiter does not occur in.
pub fn output_entry(name: &str, value: &str, delimiter: &str) -> Result<String, String> {
    if name.contains(delimiter) || value.contains(delimiter) {
        return Err(format!(
            "the output `{name}` contains its delimiter `{delimiter}`"
        ));
    }
    Ok(format!("{name}<<{delimiter}\n{value}\n{delimiter}\n"))
}

/// A delimiter no value of ours can contain by accident (the runner's own tools do the same).
pub fn output_delimiter() -> String {
    format!("ghadelimiter_{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::AnnotationLevel;

    #[test]
    fn data_and_properties_are_escaped_like_the_toolkit() {
        assert_eq!(escape_data("50% done\r\nnext"), "50%25 done%0D%0Anext");
        assert_eq!(escape_data("a:b,c"), "a:b,c", "the message keeps : and ,");
        assert_eq!(
            escape_property("src/a,b.rs: 100%\n"),
            "src/a%2Cb.rs%3A 100%25%0A"
        );
        // `%` first, so an escape is not escaped again.
        assert_eq!(escape_property("%0A"), "%250A");
    }

    #[test]
    fn commands_leave_out_empty_properties() {
        assert_eq!(
            command(
                "error",
                &[("file", String::new()), ("title", "t:1".into())],
                "m"
            ),
            "::error title=t%3A1::m"
        );
        assert_eq!(command("warning", &[], "plain"), "::warning::plain");
        assert_eq!(
            warning("prodigy", "no check run: 403\nsee the summary"),
            "::warning title=prodigy::no check run: 403%0Asee the summary"
        );
    }

    fn annotation(path: &str, title: Option<&str>) -> Annotation {
        Annotation {
            path: path.into(),
            start_line: 3,
            end_line: 5,
            start_column: None,
            end_column: None,
            annotation_level: AnnotationLevel::Failure,
            message: "lint: 3 problems\n\n(1 failed attempt)".into(),
            title: title.map(str::to_string),
            raw_details: None,
        }
    }

    #[test]
    fn an_annotation_becomes_an_error_command() {
        insta::assert_snapshot!(
            error_annotation(&annotation("src/lib.rs", Some("command_failed: item,1")), ""),
            @"::error file=src/lib.rs,line=3,endLine=5,title=command_failed%3A item%2C1::lint: 3 problems%0A%0A(1 failed attempt)"
        );
        assert_eq!(
            error_annotation(&annotation("a.rs", None), "sub/dir"),
            "::error file=sub/dir/a.rs,line=3,endLine=5::lint: 3 problems%0A%0A(1 failed attempt)"
        );
    }

    #[test]
    fn the_repository_inside_the_workspace() {
        let p = |repo: &str, ws: Option<&str>| workspace_prefix(Path::new(repo), ws.map(Path::new));
        assert_eq!(p("/w/repo", Some("/w/repo")), "");
        assert_eq!(p("/w/repo/sub/dir", Some("/w/repo")), "sub/dir");
        assert_eq!(p("/elsewhere", Some("/w/repo")), "");
        assert_eq!(p("/w/repo", None), "");
    }

    #[test]
    fn outputs_use_the_multiline_form() {
        assert_eq!(
            output_entry("job-id", "0192f5a0", "EOF_x").unwrap(),
            "job-id<<EOF_x\n0192f5a0\nEOF_x\n"
        );
        assert_eq!(
            output_entry("text", "two\nlines", "EOF_x").unwrap(),
            "text<<EOF_x\ntwo\nlines\nEOF_x\n"
        );
        assert!(output_entry("x", "a\nEOF_x\nb", "EOF_x").is_err());
        let d = output_delimiter();
        assert!(d.starts_with("ghadelimiter_") && d.len() > 30, "{d}");
        assert_ne!(d, output_delimiter());
    }
}
