//! The command language of PR comments: `/prodigy <command> [key=value...]` or `@<app-slug> <command>`.
//!
//! Rules (documented for users in the `help` reply):
//! - One command per line; the prefix must start the line (up to 3 spaces of indent allowed).
//! - Ignored: fenced code blocks (``` or ~~~, closed by a fence of the same character at least as
//!   long), indented code (4+ spaces or a tab: Markdown renders it as code, so the author is quoting),
//!   `>` block quotes with the lines that continue them up to a blank line, and inline `code` spans.
//! - Arguments are `key=value`; a key the command does not take is an error, as is a repeated key.
//! - An unknown word gets an error carrying the closest command, and every error points at `help`.
//!
//! The parser is a list of small functions, each claiming its command word or passing; errors are
//! one enum rendered in one place ([`CommandError`]'s `Display`).

use std::fmt;

/// The prefix of the slash form.
pub const SLASH_PREFIX: &str = "/prodigy";

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrCommand {
    Run {
        workflow: Option<String>,
    },
    Resume {
        job: Option<JobRef>,
        /// `budget=5`: the job's cost budget in USD for this resume (maintainers only).
        budget: Option<Usd>,
    },
    Retry {
        job: Option<JobRef>,
        item: Option<String>,
    },
    Cancel {
        job: Option<JobRef>,
    },
    Status,
    Help,
}

impl PrCommand {
    /// `help` and `status` only read; anything else needs write, maintain or admin permission
    /// ([`CommandRow::writes`]).
    pub fn needs_write_permission(&self) -> bool {
        COMMANDS.iter().any(|c| c.word == self.name() && c.writes)
    }

    /// Raising a budget spends the repository's money: maintain or admin permission.
    pub fn needs_maintain_permission(&self) -> bool {
        matches!(
            self,
            PrCommand::Resume {
                budget: Some(_),
                ..
            }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            PrCommand::Run { .. } => "run",
            PrCommand::Resume { .. } => "resume",
            PrCommand::Retry { .. } => "retry",
            PrCommand::Cancel { .. } => "cancel",
            PrCommand::Status => "status",
            PrCommand::Help => "help",
        }
    }
}

/// An amount of US dollars given in a command: positive and finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usd(f64);

impl Eq for Usd {}

impl Usd {
    pub fn parse(text: &str) -> Option<Usd> {
        let v: f64 = text.trim_start_matches('$').parse().ok()?;
        (v.is_finite() && v > 0.0).then_some(Usd(v))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// A job named in a command: a full job id or a prefix of one (the short form shown in replies).
/// Resolving it to a job is the store's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef(String);

impl JobRef {
    /// Accepts hex digits and dashes, at least 8 characters (the short form), at most a full UUID.
    pub fn parse(text: &str) -> Option<JobRef> {
        let ok = (8..=36).contains(&text.len())
            && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        ok.then(|| JobRef(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One command of the language: its word, how `help` shows it, who may use it, its parser.
/// [`COMMANDS`] is the one list; `help`, the parser and "did you mean" all read it.
pub struct CommandRow {
    pub word: &'static str,
    /// What follows the prefix in `help`, e.g. `cancel [job=ID]`.
    pub usage: &'static str,
    /// What it does, for `help`.
    pub what: &'static str,
    /// Needs write, maintain or admin permission (`help` and `status` only read).
    pub writes: bool,
    parse: fn(&[&str]) -> Result<PrCommand, CommandError>,
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: [CommandRow; 6] = [
    CommandRow {
        word: "run",
        usage: "run [workflow=NAME]",
        what: "run the repository's workflows (or one of them) on the head commit",
        writes: true,
        parse: parse_run,
    },
    CommandRow {
        word: "resume",
        usage: "resume [job=ID] [budget=USD]",
        what: "continue a stopped or failed job; finished items are not run again; `budget=` \
               (maintainers) raises the cost budget of a job stopped by it",
        writes: true,
        parse: parse_resume,
    },
    CommandRow {
        word: "retry",
        usage: "retry [job=ID] [item=KEY]",
        what: "retry the failed items (dead-letter queue), or one of them",
        writes: true,
        parse: parse_retry,
    },
    CommandRow {
        word: "cancel",
        usage: "cancel [job=ID]",
        what: "stop a running job",
        writes: true,
        parse: parse_cancel,
    },
    CommandRow {
        word: "status",
        usage: "status",
        what: "show the jobs of this pull request",
        writes: false,
        parse: parse_status,
    },
    CommandRow {
        word: "help",
        usage: "help",
        what: "show this message",
        writes: false,
        parse: parse_help,
    },
];

/// Every command word, in the order `help` lists them (the words of [`COMMANDS`]).
pub const COMMAND_WORDS: [&str; COMMANDS.len()] = {
    let mut words = [""; COMMANDS.len()];
    let mut i = 0;
    while i < COMMANDS.len() {
        words[i] = COMMANDS[i].word;
        i += 1;
    }
    words
};

/// What went wrong with one command line. `Display` is the text the bot replies with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// The prefix alone, with no command word.
    MissingCommand,
    UnknownCommand {
        word: String,
        suggestion: Option<&'static str>,
    },
    UnknownArgument {
        command: &'static str,
        key: String,
        allowed: &'static [&'static str],
    },
    /// A bare word where only `key=value` fits.
    NotAnArgument {
        command: &'static str,
        word: String,
    },
    DuplicateArgument {
        command: &'static str,
        key: String,
    },
    EmptyValue {
        command: &'static str,
        key: String,
    },
    BadJob {
        value: String,
    },
    BadBudget {
        value: String,
    },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.write_reason(&mut text)?;
        let stop = if text.ends_with('?') { "" } else { "." };
        write!(
            f,
            "{text}{stop} See `{SLASH_PREFIX} help` for the commands."
        )
    }
}

impl CommandError {
    fn write_reason(&self, f: &mut impl fmt::Write) -> fmt::Result {
        match self {
            CommandError::MissingCommand => write!(f, "`{SLASH_PREFIX}` needs a command"),
            CommandError::UnknownCommand {
                word,
                suggestion: Some(s),
            } => write!(f, "unknown command `{word}`; did you mean `{s}`?"),
            CommandError::UnknownCommand {
                word,
                suggestion: None,
            } => write!(f, "unknown command `{word}`"),
            CommandError::UnknownArgument {
                command,
                key,
                allowed: [],
            } => write!(f, "`{command}` takes no arguments, but got `{key}=`"),
            CommandError::UnknownArgument {
                command,
                key,
                allowed,
            } => {
                let list: Vec<String> = allowed.iter().map(|k| format!("`{k}=`")).collect();
                write!(
                    f,
                    "`{command}` does not take `{key}=`; it takes {}",
                    list.join(", ")
                )
            }
            CommandError::NotAnArgument { command, word } => write!(
                f,
                "`{command}` takes arguments as `key=value`, not `{word}`"
            ),
            CommandError::DuplicateArgument { command, key } => {
                write!(f, "`{command}` got `{key}=` twice")
            }
            CommandError::EmptyValue { command, key } => {
                write!(f, "`{command}` got `{key}=` without a value")
            }
            CommandError::BadBudget { value } => write!(
                f,
                "`budget={value}` is not an amount of USD: write a positive number such as `budget=5`"
            ),
            CommandError::BadJob { value } => write!(
                f,
                "`{value}` is not a job id: give the id (or its first 8 characters) from a prodigy reply"
            ),
        }
    }
}

impl std::error::Error for CommandError {}

/// One command line found in a comment: the command or why it was refused, and the line it came from
/// (so a reply can quote it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLine {
    pub line: String,
    pub result: Result<PrCommand, CommandError>,
}

/// Finds every command line in a comment body, in order. `app_slug` enables the `@slug` form.
pub fn parse_comment(body: &str, app_slug: Option<&str>) -> Vec<ParsedLine> {
    command_lines(body)
        .into_iter()
        .filter_map(|line| {
            let rest = strip_prefix(&line, app_slug)?;
            Some(ParsedLine {
                result: parse_command(rest),
                line: line.trim().to_string(),
            })
        })
        .collect()
}

/// The lines of `body` that Markdown renders as prose, with inline code removed.
fn command_lines(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    // Markdown continues a quote's paragraph on the following non-blank lines ("lazy
    // continuation"), so those render inside the quote too.
    let mut in_quote = false;
    for raw in body.lines() {
        let indent = raw.len() - raw.trim_start_matches(' ').len();
        let trimmed = raw.trim_start();
        if let Some((ch, len)) = fence {
            if fence_of(trimmed).is_some_and(|(c, l)| c == ch && l >= len)
                && trimmed.trim_start_matches(ch).trim().is_empty()
            {
                fence = None;
            }
            continue;
        }
        if indent <= 3
            && let Some(open) = fence_of(trimmed)
        {
            fence = Some(open);
            continue;
        }
        if trimmed.is_empty() {
            in_quote = false;
            continue;
        }
        if indent <= 3 && trimmed.starts_with('>') {
            in_quote = true;
            continue;
        }
        if in_quote || indent >= 4 || raw.starts_with('\t') {
            continue;
        }
        out.push(strip_inline_code(trimmed));
    }
    out
}

/// ``` or ~~~ (three or more) opens or closes a fence.
fn fence_of(line: &str) -> Option<(char, usize)> {
    let ch = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = line.chars().take_while(|c| *c == ch).count();
    (len >= 3).then_some((ch, len))
}

/// Removes `code` spans (any run length of backticks, closed by the same run).
fn strip_inline_code(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let run = rest[start..].chars().take_while(|c| *c == '`').count();
        let after = &rest[start + run..];
        let closer = "`".repeat(run);
        match after.find(&closer) {
            Some(end) => rest = &after[end + run..],
            // An unclosed run is literal text in Markdown.
            None => {
                out.push_str(&rest[start..start + run]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text after `/prodigy` or `@slug`, if the line starts with either as a whole word.
fn strip_prefix<'a>(line: &'a str, app_slug: Option<&str>) -> Option<&'a str> {
    let line = line.trim();
    let word_end = line.find(char::is_whitespace).unwrap_or(line.len());
    let (first, rest) = line.split_at(word_end);
    let is_slash = first.eq_ignore_ascii_case(SLASH_PREFIX);
    let is_mention = app_slug.is_some_and(|slug| {
        first
            .strip_prefix('@')
            .is_some_and(|m| m.eq_ignore_ascii_case(slug))
    });
    (is_slash || is_mention).then_some(rest)
}

fn parse_command(rest: &str) -> Result<PrCommand, CommandError> {
    let mut words = rest.split_whitespace();
    let Some(word) = words.next() else {
        return Err(CommandError::MissingCommand);
    };
    let word = word.to_ascii_lowercase();
    let args: Vec<&str> = words.collect();
    match COMMANDS.iter().find(|c| c.word == word) {
        Some(command) => (command.parse)(&args),
        None => Err(CommandError::UnknownCommand {
            suggestion: closest_command(&word),
            word,
        }),
    }
}

/// The command word closest to `word` (see [`crate::suggest`]).
fn closest_command(word: &str) -> Option<&'static str> {
    crate::suggest::did_you_mean(word, &COMMAND_WORDS)
}

/// `key=value` pairs, checked against the keys `command` takes.
fn parse_args<'a>(
    command: &'static str,
    allowed: &'static [&'static str],
    args: &[&'a str],
) -> Result<Vec<(&'static str, &'a str)>, CommandError> {
    let mut out: Vec<(&'static str, &'a str)> = Vec::new();
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(CommandError::NotAnArgument {
                command,
                word: arg.to_string(),
            });
        };
        let key_lower = key.to_ascii_lowercase();
        let Some(known) = allowed.iter().find(|k| **k == key_lower) else {
            return Err(CommandError::UnknownArgument {
                command,
                key: key.to_string(),
                allowed,
            });
        };
        if value.is_empty() {
            return Err(CommandError::EmptyValue {
                command,
                key: key.to_string(),
            });
        }
        if out.iter().any(|(k, _)| k == known) {
            return Err(CommandError::DuplicateArgument {
                command,
                key: key.to_string(),
            });
        }
        out.push((known, value));
    }
    Ok(out)
}

fn arg<'a>(args: &[(&'static str, &'a str)], key: &str) -> Option<&'a str> {
    args.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn job_arg(args: &[(&'static str, &str)]) -> Result<Option<JobRef>, CommandError> {
    arg(args, "job")
        .map(|v| {
            JobRef::parse(v).ok_or_else(|| CommandError::BadJob {
                value: v.to_string(),
            })
        })
        .transpose()
}

fn parse_run(args: &[&str]) -> Result<PrCommand, CommandError> {
    let args = parse_args("run", &["workflow"], args)?;
    Ok(PrCommand::Run {
        workflow: arg(&args, "workflow").map(str::to_string),
    })
}

fn parse_resume(args: &[&str]) -> Result<PrCommand, CommandError> {
    let args = parse_args("resume", &["job", "budget"], args)?;
    let budget = arg(&args, "budget")
        .map(|v| {
            Usd::parse(v).ok_or_else(|| CommandError::BadBudget {
                value: v.to_string(),
            })
        })
        .transpose()?;
    Ok(PrCommand::Resume {
        job: job_arg(&args)?,
        budget,
    })
}

fn parse_retry(args: &[&str]) -> Result<PrCommand, CommandError> {
    let args = parse_args("retry", &["job", "item"], args)?;
    Ok(PrCommand::Retry {
        job: job_arg(&args)?,
        item: arg(&args, "item").map(str::to_string),
    })
}

fn parse_cancel(args: &[&str]) -> Result<PrCommand, CommandError> {
    let args = parse_args("cancel", &["job"], args)?;
    Ok(PrCommand::Cancel {
        job: job_arg(&args)?,
    })
}

fn parse_status(args: &[&str]) -> Result<PrCommand, CommandError> {
    parse_args("status", &[], args).map(|_| PrCommand::Status)
}

fn parse_help(args: &[&str]) -> Result<PrCommand, CommandError> {
    parse_args("help", &[], args).map(|_| PrCommand::Help)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Vec<Result<PrCommand, CommandError>> {
        parse_comment(body, Some("prodigy-bot"))
            .into_iter()
            .map(|p| p.result)
            .collect()
    }

    #[test]
    fn every_command_of_the_table_parses_to_its_own_word() {
        for c in &COMMANDS {
            let parsed = one(&format!("/prodigy {}", c.word)).expect(c.word);
            assert_eq!(parsed.name(), c.word);
            assert_eq!(parsed.needs_write_permission(), c.writes, "{}", c.word);
            assert!(c.usage.starts_with(c.word), "{}", c.usage);
        }
        assert_eq!(COMMAND_WORDS.len(), COMMANDS.len());
    }

    fn one(body: &str) -> Result<PrCommand, CommandError> {
        let mut all = parse(body);
        assert_eq!(all.len(), 1, "expected one command in {body:?}: {all:?}");
        all.remove(0)
    }

    const JOB: &str = "0192f0c4-5b6a-7c3d-8e9f-0a1b2c3d4e5f";

    #[test]
    fn run_without_and_with_workflow() {
        assert_eq!(one("/prodigy run"), Ok(PrCommand::Run { workflow: None }));
        assert_eq!(
            one("/prodigy run workflow=lint"),
            Ok(PrCommand::Run {
                workflow: Some("lint".into())
            })
        );
    }

    #[test]
    fn resume_takes_a_budget_in_usd() {
        let c = one("/prodigy resume budget=5").unwrap();
        assert_eq!(
            c,
            PrCommand::Resume {
                job: None,
                budget: Usd::parse("5")
            }
        );
        assert!(c.needs_maintain_permission());
        assert!(!one("/prodigy resume").unwrap().needs_maintain_permission());
        assert_eq!(
            one("/prodigy resume job=0192F0C4 budget=$2.50"),
            Ok(PrCommand::Resume {
                job: Some(JobRef("0192f0c4".into())),
                budget: Some(Usd(2.5))
            })
        );
        for bad in ["0", "-3", "five", "NaN", "inf"] {
            let err = one(&format!("/prodigy resume budget={bad}")).unwrap_err();
            assert_eq!(
                err,
                CommandError::BadBudget {
                    value: bad.to_string()
                }
            );
            assert!(
                err.to_string()
                    .contains("is not an amount of USD: write a positive number"),
                "{err}"
            );
        }
        assert!(matches!(
            one("/prodigy retry budget=5"),
            Err(CommandError::UnknownArgument { .. })
        ));
    }

    #[test]
    fn resume_retry_cancel_take_jobs() {
        assert_eq!(
            one("/prodigy resume"),
            Ok(PrCommand::Resume {
                job: None,
                budget: None
            })
        );
        assert_eq!(
            one(&format!("/prodigy resume job={JOB}")),
            Ok(PrCommand::Resume {
                job: JobRef::parse(JOB),
                budget: None
            })
        );
        assert_eq!(
            one("/prodigy retry job=0192F0C4 item=src/a.rs"),
            Ok(PrCommand::Retry {
                job: Some(JobRef("0192f0c4".into())),
                item: Some("src/a.rs".into())
            })
        );
        assert_eq!(
            one("/prodigy retry item=k"),
            Ok(PrCommand::Retry {
                job: None,
                item: Some("k".into())
            })
        );
        assert_eq!(one("/prodigy cancel"), Ok(PrCommand::Cancel { job: None }));
    }

    #[test]
    fn status_and_help() {
        assert_eq!(one("/prodigy status"), Ok(PrCommand::Status));
        assert_eq!(one("/prodigy help"), Ok(PrCommand::Help));
        assert!(!PrCommand::Status.needs_write_permission());
        assert!(!PrCommand::Help.needs_write_permission());
        assert!(PrCommand::Run { workflow: None }.needs_write_permission());
    }

    #[test]
    fn mention_form_and_case() {
        assert_eq!(one("@prodigy-bot status"), Ok(PrCommand::Status));
        assert_eq!(one("@Prodigy-Bot HELP"), Ok(PrCommand::Help));
        assert_eq!(one("/PRODIGY Status"), Ok(PrCommand::Status));
        // Another app's mention is not ours.
        assert!(parse("@other-bot status").is_empty());
        // Without a configured slug only the slash form counts.
        assert!(parse_comment("@prodigy-bot status", None).is_empty());
    }

    #[test]
    fn prefix_must_be_a_whole_word_at_line_start() {
        assert!(parse("/prodigyrun").is_empty());
        assert!(parse("please /prodigy run").is_empty());
        assert_eq!(one("   /prodigy status"), Ok(PrCommand::Status));
    }

    #[test]
    fn one_command_per_line_in_order() {
        let all = parse("Thanks!\n/prodigy run\nsome text\n/prodigy status\n");
        assert_eq!(
            all,
            vec![Ok(PrCommand::Run { workflow: None }), Ok(PrCommand::Status)]
        );
    }

    #[test]
    fn fenced_code_is_ignored() {
        let body = "```\n/prodigy run\n```\n~~~sh\n/prodigy cancel\n~~~\n/prodigy status";
        assert_eq!(parse(body), vec![Ok(PrCommand::Status)]);
        // A shorter or different fence does not close the block.
        let body = "````\n```\n/prodigy run\n~~~\n````\n/prodigy help";
        assert_eq!(parse(body), vec![Ok(PrCommand::Help)]);
        // An unclosed fence swallows the rest, as Markdown renders it.
        assert!(parse("```\n/prodigy run").is_empty());
    }

    #[test]
    fn indented_code_is_ignored() {
        assert!(parse("    /prodigy run").is_empty());
        assert!(parse("\t/prodigy run").is_empty());
    }

    #[test]
    fn quotes_are_ignored() {
        assert!(parse("> /prodigy run").is_empty());
        assert!(parse(">> /prodigy run").is_empty());
        assert_eq!(
            parse("> /prodigy run\n\n/prodigy status"),
            vec![Ok(PrCommand::Status)]
        );
    }

    #[test]
    fn lines_continuing_a_quote_are_quoted() {
        assert!(parse("> earlier comment\n/prodigy run").is_empty());
        assert_eq!(
            parse("> earlier comment\n/prodigy run\n\n/prodigy help"),
            vec![Ok(PrCommand::Help)]
        );
    }

    #[test]
    fn inline_code_is_ignored() {
        assert!(parse("`/prodigy run`").is_empty());
        assert!(parse("``/prodigy run``").is_empty());
        assert_eq!(
            one("/prodigy run `ignored=1` workflow=x"),
            Ok(PrCommand::Run {
                workflow: Some("x".into())
            })
        );
    }

    #[test]
    fn unknown_word_suggests_closest() {
        assert_eq!(
            one("/prodigy resme"),
            Err(CommandError::UnknownCommand {
                word: "resme".into(),
                suggestion: Some("resume")
            })
        );
        assert_eq!(
            one("/prodigy stauts"),
            Err(CommandError::UnknownCommand {
                word: "stauts".into(),
                suggestion: Some("status")
            })
        );
        assert_eq!(
            one("/prodigy deploy"),
            Err(CommandError::UnknownCommand {
                word: "deploy".into(),
                suggestion: None
            })
        );
    }

    #[test]
    fn argument_errors() {
        assert!(matches!(
            one("/prodigy run flavour=x"),
            Err(CommandError::UnknownArgument { key, .. }) if key == "flavour"
        ));
        assert!(matches!(
            one("/prodigy status job=1"),
            Err(CommandError::UnknownArgument { allowed: [], .. })
        ));
        assert!(matches!(
            one("/prodigy run now"),
            Err(CommandError::NotAnArgument { word, .. }) if word == "now"
        ));
        assert!(matches!(
            one("/prodigy run workflow=a workflow=b"),
            Err(CommandError::DuplicateArgument { .. })
        ));
        assert!(matches!(
            one("/prodigy run workflow="),
            Err(CommandError::EmptyValue { .. })
        ));
        assert!(matches!(
            one("/prodigy resume job=nothex!"),
            Err(CommandError::BadJob { .. })
        ));
        assert_eq!(one("/prodigy"), Err(CommandError::MissingCommand));
    }

    #[test]
    fn error_texts_point_at_help() {
        let texts: Vec<String> = [
            "/prodigy resme",
            "/prodigy deploy",
            "/prodigy run flavour=x",
            "/prodigy status x=1",
            "/prodigy run now",
            "/prodigy",
            "/prodigy cancel job=zz",
        ]
        .iter()
        .map(|b| one(b).unwrap_err().to_string())
        .collect();
        insta::assert_snapshot!(texts.join("\n"), @r"
        unknown command `resme`; did you mean `resume`? See `/prodigy help` for the commands.
        unknown command `deploy`. See `/prodigy help` for the commands.
        `run` does not take `flavour=`; it takes `workflow=`. See `/prodigy help` for the commands.
        `status` takes no arguments, but got `x=`. See `/prodigy help` for the commands.
        `run` takes arguments as `key=value`, not `now`. See `/prodigy help` for the commands.
        `/prodigy` needs a command. See `/prodigy help` for the commands.
        `zz` is not a job id: give the id (or its first 8 characters) from a prodigy reply. See `/prodigy help` for the commands.
        ");
    }

    #[test]
    fn parsed_line_keeps_the_source() {
        let parsed = parse_comment("  /prodigy run workflow=a  ", None);
        assert_eq!(parsed[0].line, "/prodigy run workflow=a");
    }
}
