//! `${...}` placeholders: resolution, safe rendering into shell scripts, `when:` conditions, and a
//! static check that every placeholder can resolve.
//!
//! Syntax: `${path}`, where a path is a root name followed by `.field`, `[index]` or `["key"]`
//! segments (`${item.tags[0]}`, `${map.successful}`). Names resolve by the longest dotted prefix
//! that is a variable (so a variable named `shell.output` and a variable `map` holding
//! `{"results": ...}` both work), then walk into the JSON value; a name that is no variable is
//! looked up in the environment (`${HOME}`, or explicitly `${env.HOME}` / `${env:HOME}`).
//!
//! Modifiers: `${VAR:-fallback}` uses `fallback` when the value is missing, null or empty;
//! `${x|default:fallback}` (upstream's filter) when it is missing or null; `${x|json}` renders the
//! value as JSON (strings quoted); `${x|raw}` see below. `$${` writes a literal `${`.
//! An unresolved placeholder without a fallback is an error, never text handed to a command.
//!
//! Shell safety: [`render_shell`] never splices a value into the script. Each placeholder becomes a
//! reference to an environment variable that carries the value (`__PRODIGY_V0`, ...), written in
//! the form the shell's quoting context at that point needs, so the value is always one literal
//! word whatever quotes surround the placeholder. The opt-out for trusted text is the `raw`
//! filter: `${item.cmd|raw}` is spliced into the script as is and *is executed as shell code*;
//! use it only for values the workflow author controls.
//!
//! Submodules: [`scope`] (variables and the [`Context`] they resolve against), [`template`]
//! (placeholders and plain-text rendering), [`shell`] (the shell-context renderer), [`check`] (the
//! static check that every placeholder can resolve).

mod check;
mod scope;
mod shell;
mod template;

pub use check::{Finding, ITEM_SAMPLE, ItemSample, check_item_fields, check_workflow};
pub use scope::Context;
pub use shell::{MAX_ENV_TOTAL, MAX_ENV_VALUE, ShellScript, SpillFile, render_shell};
pub use template::{Fallback, Placeholder, placeholders, render_content, render_text, value_text};
pub(crate) use template::{apply_fallback, parse_placeholder};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error(
        "unresolved placeholder ${{{placeholder}}}: no variable or environment variable '{root}' \
         is defined here; define it (capture it in an earlier step, set it in env), give a \
         fallback with ${{{placeholder}|default:VALUE}}, or write $${{{placeholder}}} for a \
         variable the shell itself defines"
    )]
    Unresolved { placeholder: String, root: String },
    #[error("malformed placeholder at byte {offset} of {template:?}: {reason}")]
    Malformed {
        template: String,
        offset: usize,
        reason: String,
    },
    #[error("invalid condition {expr:?}: {reason}")]
    Condition { expr: String, reason: String },
    #[error("cannot pass the value of ${{{placeholder}}} to the shell: {reason}")]
    Value { placeholder: String, reason: String },
}

pub(crate) type R<T> = Result<T, InterpolateError>;

/// A workflow whose static check ([`check_workflow`]) found placeholders that can never
/// resolve: bad input, refused before a job is created. Each finding is `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the workflow has placeholders that can never resolve:\n{}", .0.join("\n"))]
pub struct UnresolvedPlaceholders(pub Vec<String>);
