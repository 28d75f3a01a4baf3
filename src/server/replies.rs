//! Every text the bot posts about commands, in one place, as small constructor functions.
//! Snapshot-tested, so a change of wording shows up in review.
//!
//! Replies about jobs (started, finished, links) belong beside the runner that knows the job; the
//! ones here need nothing but the comment and the parser.

use super::commands::{COMMAND_WORDS, Command, CommandError, SLASH_PREFIX};

/// The `help` reply. `app_slug` adds the mention form when the App has one.
pub fn help(app_slug: Option<&str>) -> String {
    let mut out =
        String::from("**prodigy commands** (one per line, in a pull-request comment)\n\n");
    out.push_str("| command | what it does |\n|---|---|\n");
    for word in COMMAND_WORDS {
        let (usage, what) = describe(word);
        out.push_str(&format!("| `{SLASH_PREFIX} {usage}` | {what} |\n"));
    }
    out.push_str(
        "\n`run`, `resume`, `retry` and `cancel` need write, maintain or admin permission on the repository. \
         Without `job=` they act on this pull request's latest job. \
         Commands inside code blocks, inline code and quotes are ignored.",
    );
    if let Some(slug) = app_slug {
        out.push_str(&format!(
            "\nYou can also write `@{slug} <command>` instead of `{SLASH_PREFIX} <command>`."
        ));
    }
    out
}

fn describe(word: &str) -> (&'static str, &'static str) {
    match word {
        "run" => (
            "run [workflow=NAME]",
            "run the repository's workflows (or one of them) on the head commit",
        ),
        "resume" => (
            "resume [job=ID]",
            "continue a stopped or failed job; finished items are not run again",
        ),
        "retry" => (
            "retry [job=ID] [item=KEY]",
            "retry the failed items (dead-letter queue), or one of them",
        ),
        "cancel" => ("cancel [job=ID]", "stop a running job"),
        "status" => ("status", "show the jobs of this pull request"),
        "help" => ("help", "show this message"),
        other => unreachable!("COMMAND_WORDS has `{other}` without a description"),
    }
}

/// The reply to a command line that did not parse; quotes the line so the author sees which.
pub fn command_error(line: &str, error: &CommandError) -> String {
    format!("> {line}\n\n{error}")
}

/// The one polite refusal for a user without write access.
pub fn permission_refused(user: &str, command: &Command) -> String {
    format!(
        "@{user}, `{SLASH_PREFIX} {}` needs write, maintain or admin permission on this repository, \
         which you do not have. `{SLASH_PREFIX} status` and `{SLASH_PREFIX} help` work for everyone.",
        command.name()
    )
}

/// Posted once when a pull request from a fork is opened: it is not run automatically.
pub fn fork_not_run_automatically() -> String {
    format!(
        "This pull request comes from a fork, so prodigy does not run it automatically \
         (its code would run with this repository's credentials). A maintainer can start it with \
         `{SLASH_PREFIX} run` after reviewing the changes."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::commands::parse_comment;

    #[test]
    fn help_text() {
        insta::assert_snapshot!(help(Some("prodigy-bot")), @r"
        **prodigy commands** (one per line, in a pull-request comment)

        | command | what it does |
        |---|---|
        | `/prodigy run [workflow=NAME]` | run the repository's workflows (or one of them) on the head commit |
        | `/prodigy resume [job=ID]` | continue a stopped or failed job; finished items are not run again |
        | `/prodigy retry [job=ID] [item=KEY]` | retry the failed items (dead-letter queue), or one of them |
        | `/prodigy cancel [job=ID]` | stop a running job |
        | `/prodigy status` | show the jobs of this pull request |
        | `/prodigy help` | show this message |

        `run`, `resume`, `retry` and `cancel` need write, maintain or admin permission on the repository. Without `job=` they act on this pull request's latest job. Commands inside code blocks, inline code and quotes are ignored.
        You can also write `@prodigy-bot <command>` instead of `/prodigy <command>`.
        ");
        assert!(!help(None).contains('@'));
    }

    #[test]
    fn command_error_quotes_the_line() {
        let parsed = parse_comment("/prodigy resme job=1", None);
        let err = parsed[0].result.clone().unwrap_err();
        insta::assert_snapshot!(command_error(&parsed[0].line, &err), @r"
        > /prodigy resme job=1

        unknown command `resme`; did you mean `resume`? See `/prodigy help` for the commands.
        ");
    }

    #[test]
    fn refusal_and_fork_texts() {
        insta::assert_snapshot!(
            permission_refused("octocat", &Command::Run { workflow: None }),
            @"@octocat, `/prodigy run` needs write, maintain or admin permission on this repository, which you do not have. `/prodigy status` and `/prodigy help` work for everyone."
        );
        insta::assert_snapshot!(
            fork_not_run_automatically(),
            @"This pull request comes from a fork, so prodigy does not run it automatically (its code would run with this repository's credentials). A maintainer can start it with `/prodigy run` after reviewing the changes."
        );
    }
}
