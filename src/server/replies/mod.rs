//! Every text the bot posts about commands, in one place, as small constructor functions.
//! Snapshot-tested, so a change of wording shows up in review.
//!
//! Replies about jobs take what they show (ids, links, holders) as arguments, so the texts stay
//! pure functions and every link comes from the caller, which knows the page token. Replies to
//! the check run's re-run buttons are in `rerun`.

use chrono::{DateTime, Utc};

use super::commands::{COMMANDS, CommandError, PrCommand, SLASH_PREFIX};
use crate::store::{Holder, ItemCounts};
use crate::types::{JobId, JobStatus, Phase};

mod rerun;

pub use rerun::{fresh_run_covered, fresh_run_pending, rerun_answer, rerun_failed};

/// The `help` reply. `app_slug` adds the mention form when the App has one.
pub fn help(app_slug: Option<&str>) -> String {
    let mut out =
        String::from("**prodigy commands** (one per line, in a pull-request comment)\n\n");
    out.push_str("| command | what it does |\n|---|---|\n");
    for c in &COMMANDS {
        out.push_str(&format!("| `{SLASH_PREFIX} {}` | {} |\n", c.usage, c.what));
    }
    let writers: Vec<String> = COMMANDS
        .iter()
        .filter(|c| c.writes)
        .map(|c| format!("`{}`", c.word))
        .collect();
    out.push_str(&format!(
        "\n{} need write, maintain or admin permission on the repository. \
         Without `job=` they act on this pull request's latest job. \
         Commands inside code blocks, inline code and quotes are ignored.",
        and_list(&writers)
    ));
    if let Some(slug) = app_slug {
        out.push_str(&format!(
            "\nYou can also write `@{slug} <command>` instead of `{SLASH_PREFIX} <command>`."
        ));
    }
    out
}

/// `a`, `b` and `c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The reply to a command line that did not parse; quotes the line so the author sees which.
pub fn command_error(line: &str, error: &CommandError) -> String {
    format!("> {line}\n\n{error}")
}

/// The one polite refusal for a user without write access.
pub fn permission_refused(user: &str, command: &PrCommand) -> String {
    if command.needs_maintain_permission() {
        return format!(
            "@{user}, `{SLASH_PREFIX} resume budget=` raises what this job may spend, which needs \
             maintain or admin permission on this repository. `{SLASH_PREFIX} resume` without a \
             budget needs write permission."
        );
    }
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

/// A job as replies show it: short id linked to its page.
#[derive(Debug, Clone)]
pub struct JobLink {
    pub id: JobId,
    pub url: String,
}

impl JobLink {
    fn md(&self) -> String {
        format!("[`{}`]({})", self.id.short(), self.url)
    }
}

/// What became of one workflow asked to run.
#[derive(Debug, Clone)]
pub enum WorkflowStart {
    Started {
        workflow: String,
        job: JobLink,
    },
    /// It ran to its end before the reply was written (or failed to start).
    Ended {
        workflow: String,
        job: Option<JobLink>,
        status: String,
    },
    Failed {
        workflow: String,
        error: String,
    },
    /// Not started, for a reason the reply explains.
    Refused {
        workflow: String,
        why: Refusal,
    },
}

/// Why a workflow was not started.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The operator's daily cost cap for the repository is reached (`why` says how);
    /// `automatic`: asked by a push, which `run` can repeat later.
    OverDailyCap { why: String, automatic: bool },
    /// The configured workflow file is not in the commit.
    MissingWorkflow { head_sha: String },
}

fn refusal(workflow: &str, why: &Refusal) -> String {
    match why {
        Refusal::OverDailyCap {
            why,
            automatic: true,
        } => format!("not started: {why}. `{SLASH_PREFIX} run` starts it once the cap allows"),
        Refusal::OverDailyCap {
            why,
            automatic: false,
        } => format!("not started: {why}"),
        Refusal::MissingWorkflow { head_sha } => {
            format!("`{workflow}` does not exist at `{}`", short_sha(head_sha))
        }
    }
}

fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// The one reply for a pull request's workflows started (automatically or by `run`).
pub fn jobs_started(head_sha: &str, starts: &[WorkflowStart]) -> String {
    let mut out = format!("prodigy on `{}`:\n", short_sha(head_sha));
    for s in starts {
        out.push_str(&match s {
            WorkflowStart::Started { workflow, job } => {
                format!("\n- `{workflow}`: started job {}", job.md())
            }
            WorkflowStart::Ended {
                workflow,
                job: Some(job),
                status,
            } => {
                format!("\n- `{workflow}`: job {} {status}", job.md())
            }
            WorkflowStart::Ended {
                workflow,
                job: None,
                status,
            } => {
                format!("\n- `{workflow}`: {status}")
            }
            WorkflowStart::Failed { workflow, error } => {
                format!(
                    "\n- `{workflow}`: could not start:{}",
                    spaced(&inline_or_block(error))
                )
            }
            WorkflowStart::Refused { workflow, why } => {
                format!(
                    "\n- `{workflow}`: could not start: {}",
                    refusal(workflow, why)
                )
            }
        });
    }
    out
}

/// Errors can span lines (a workflow's validation errors); keep a reply's list readable.
fn inline_or_block(text: &str) -> String {
    let text = text.trim();
    if text.contains('\n') {
        format!("\n  ```\n  {}\n  ```", text.replace('\n', "\n  "))
    } else {
        text.to_string()
    }
}

/// A single-line text after a colon gets a space; a block starts on its own line.
fn spaced(text: &str) -> String {
    if text.starts_with('\n') {
        text.to_string()
    } else {
        format!(" {text}")
    }
}

/// `.prodigy/config.yml` is missing at the head commit.
pub fn no_config(head_sha: &str, config_path: &str) -> String {
    format!(
        "There is no `{config_path}` at `{}`, so prodigy has nothing to run. Add one listing the \
         workflow files, e.g.\n\n```yaml\nworkflows:\n  - .prodigy/fix.yml\n```",
        short_sha(head_sha)
    )
}

/// `.prodigy/config.yml` exists but does not parse.
pub fn bad_config(head_sha: &str, error: &str) -> String {
    format!(
        "prodigy cannot use its configuration at `{}`: {error}",
        short_sha(head_sha)
    )
}

/// `run workflow=NAME` named none of the configured workflows.
pub fn unknown_workflow(name: &str, known: &[String]) -> String {
    let list: Vec<String> = known.iter().map(|w| format!("`{w}`")).collect();
    format!(
        "No workflow `{name}` in this repository's `.prodigy/config.yml`; it lists {}.",
        list.join(", ")
    )
}

/// `job=` named no job of this repository, or the pull request has none yet.
pub fn no_such_job(wanted: Option<&str>) -> String {
    match wanted {
        Some(job) => format!(
            "No job `{job}` on this repository. `{SLASH_PREFIX} status` lists this pull request's jobs."
        ),
        None => format!(
            "This pull request has no prodigy job yet. Start one with `{SLASH_PREFIX} run`."
        ),
    }
}

/// A resume (or retry) started.
pub fn resuming(job: &JobLink, retry: bool) -> String {
    let what = if retry {
        "Retrying the dead-letter queue of"
    } else {
        "Resuming"
    };
    format!("{what} job {}.", job.md())
}

/// The job is held by a running resume, which covers everything this one would do.
pub fn resume_held(job: &JobLink, holder: &Holder, since: DateTime<Utc>) -> String {
    format!(
        "Job {} is already running on {holder} since {} UTC; that run covers every pending item, \
         so nothing new was started.",
        job.md(),
        since.format("%Y-%m-%d %H:%M:%S")
    )
}

/// Nothing to resume: the job has finished.
pub fn already_finished(job: &JobLink, status: JobStatus, dlq: u64) -> String {
    let hint = if dlq > 0 {
        let (items, are, them) = if dlq == 1 {
            ("item", "is", "it")
        } else {
            ("items", "are", "them")
        };
        format!(
            " {dlq} {items} {are} in its dead-letter queue: `{SLASH_PREFIX} retry job={}` runs {them} again.",
            job.id.short()
        )
    } else {
        String::new()
    };
    format!(
        "Job {} has already finished ({status}); nothing to resume.{hint}",
        job.md()
    )
}

/// The resume or retry ran to its end before the reply (quick jobs).
pub fn resume_ended(job: &JobLink, status: JobStatus, counts: &ItemCounts) -> String {
    if status == JobStatus::BudgetExhausted {
        return format!(
            "Job {} ran again and stopped at its budget: {} of {} items merged, {} pending. A \
             maintainer continues it with `{SLASH_PREFIX} resume job={} budget=<USD>`.",
            job.md(),
            counts.merged,
            counts.total,
            counts.pending,
            job.id.short()
        );
    }
    format!(
        "Job {} ran again and {status}: {} of {} items merged, {} in the dead-letter queue.",
        job.md(),
        counts.merged,
        counts.total,
        counts.dlq
    )
}

/// `retry item=KEY` named an item that is not in the job's dead-letter queue.
pub fn not_in_dlq(job: &JobLink, item: &str) -> String {
    format!(
        "Item `{item}` is not in the dead-letter queue of job {}.",
        job.md()
    )
}

/// A command failed for a reason the user cannot fix by rewording (GitHub or the database).
pub fn command_failed(command: &str, error: &str) -> String {
    format!(
        "`{SLASH_PREFIX} {command}` failed:{}",
        spaced(&inline_or_block(error))
    )
}

/// What `cancel` did.
#[derive(Debug, Clone)]
pub enum CancelReply {
    Cancelled,
    /// Running here or on another instance; it stops at its next step.
    Stopping {
        holder: Option<Holder>,
    },
    AlreadyFinished(JobStatus),
}

pub fn cancel(job: &JobLink, outcome: &CancelReply) -> String {
    match outcome {
        CancelReply::Cancelled => format!("Cancelled job {}.", job.md()),
        CancelReply::Stopping { holder: Some(h) } => format!(
            "Cancelling job {}: it runs on {h}, which stops its agents now. \
             `{SLASH_PREFIX} resume job={}` continues it later.",
            job.md(),
            job.id.short()
        ),
        CancelReply::Stopping { holder: None } => format!(
            "Cancelling job {}: its agents stop now. `{SLASH_PREFIX} resume job={}` continues it later.",
            job.md(),
            job.id.short()
        ),
        CancelReply::AlreadyFinished(status) => {
            format!(
                "Job {} has already finished ({status}); nothing to cancel.",
                job.md()
            )
        }
    }
}

/// One row of `status`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub job: JobLink,
    pub workflow: String,
    pub head_sha: Option<String>,
    pub status: JobStatus,
    pub phase: Phase,
    pub counts: ItemCounts,
}

pub fn status(rows: &[StatusRow]) -> String {
    if rows.is_empty() {
        return no_such_job(None);
    }
    let mut out = String::from(
        "| job | workflow | commit | status | phase | merged / total | failed | DLQ |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | `{}` | `{}` | {} | {} | {} / {} | {} | {} |\n",
            r.job.md(),
            r.workflow,
            short_sha(r.head_sha.as_deref().unwrap_or("-")),
            r.status,
            r.phase,
            r.counts.merged,
            r.counts.total,
            r.counts.failed,
            r.counts.dlq
        ));
    }
    out
}

/// Why the runner cancelled a job: recorded on the job, shown on its page and check run.
#[derive(Debug, Clone)]
pub enum CancelReason {
    /// A push to the pull request (its new head commit).
    Pushed {
        head_sha: String,
    },
    /// `run` at the head commit.
    RunCommand {
        head_sha: String,
    },
    /// `cancel` by this user.
    Command {
        user: String,
    },
    PullRequestClosed,
}

pub fn cancel_reason(reason: &CancelReason) -> String {
    match reason {
        CancelReason::Pushed { head_sha } => format!("superseded by {}", short_sha(head_sha)),
        CancelReason::RunCommand { head_sha } => {
            format!(
                "superseded by `{SLASH_PREFIX} run` on {}",
                short_sha(head_sha)
            )
        }
        CancelReason::Command { user } => format!("cancelled by @{user}"),
        CancelReason::PullRequestClosed => "the pull request was closed".into(),
    }
}

/// What a command (or a pull request's push) came to, rendered by [`render`].
#[derive(Debug, Clone)]
pub enum Reply {
    Help {
        app_slug: Option<String>,
    },
    Status(Vec<StatusRow>),
    JobsStarted {
        head_sha: String,
        starts: Vec<WorkflowStart>,
    },
    NoConfig {
        head_sha: String,
        config_path: &'static str,
    },
    BadConfig {
        head_sha: String,
        error: String,
    },
    UnknownWorkflow {
        name: String,
        known: Vec<String>,
    },
    NoSuchJob(Option<String>),
    NotInDlq {
        job: JobLink,
        item: String,
    },
    Cancel {
        job: JobLink,
        outcome: CancelReply,
    },
    Resuming {
        job: JobLink,
        retry: bool,
    },
    ResumeHeld {
        job: JobLink,
        holder: Holder,
        since: DateTime<Utc>,
    },
    AlreadyFinished {
        job: JobLink,
        status: JobStatus,
        dlq: u64,
    },
    ResumeEnded {
        job: JobLink,
        status: JobStatus,
        counts: ItemCounts,
    },
    CommandFailed {
        command: &'static str,
        error: String,
    },
}

/// The text of `reply`.
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Help { app_slug } => help(app_slug.as_deref()),
        Reply::Status(rows) => status(rows),
        Reply::JobsStarted { head_sha, starts } => jobs_started(head_sha, starts),
        Reply::NoConfig {
            head_sha,
            config_path,
        } => no_config(head_sha, config_path),
        Reply::BadConfig { head_sha, error } => bad_config(head_sha, error),
        Reply::UnknownWorkflow { name, known } => unknown_workflow(name, known),
        Reply::NoSuchJob(wanted) => no_such_job(wanted.as_deref()),
        Reply::NotInDlq { job, item } => not_in_dlq(job, item),
        Reply::Cancel { job, outcome } => cancel(job, outcome),
        Reply::Resuming { job, retry } => resuming(job, *retry),
        Reply::ResumeHeld { job, holder, since } => resume_held(job, holder, *since),
        Reply::AlreadyFinished { job, status, dlq } => already_finished(job, *status, *dlq),
        Reply::ResumeEnded {
            job,
            status,
            counts,
        } => resume_ended(job, *status, counts),
        Reply::CommandFailed { command, error } => command_failed(command, error),
    }
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
        | `/prodigy resume [job=ID] [budget=USD]` | continue a stopped or failed job; finished items are not run again; `budget=` (maintainers) raises the cost budget of a job stopped by it |
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
            permission_refused("octocat", &PrCommand::Run { workflow: None }),
            @"@octocat, `/prodigy run` needs write, maintain or admin permission on this repository, which you do not have. `/prodigy status` and `/prodigy help` work for everyone."
        );
        insta::assert_snapshot!(
            fork_not_run_automatically(),
            @"This pull request comes from a fork, so prodigy does not run it automatically (its code would run with this repository's credentials). A maintainer can start it with `/prodigy run` after reviewing the changes."
        );
    }

    fn link() -> JobLink {
        JobLink {
            id: "0192f5a0-0000-7000-8000-000000000001".parse().unwrap(),
            url: "https://p.example/jobs/0192f5a0-0000-7000-8000-000000000001?token=t".into(),
        }
    }

    #[test]
    fn a_resume_stopped_by_its_budget_says_how_to_raise_it() {
        let counts = ItemCounts {
            total: 5,
            merged: 3,
            pending: 2,
            ..Default::default()
        };
        insta::assert_snapshot!(resume_ended(&link(), JobStatus::BudgetExhausted, &counts), @"Job [`0192f5a0`](https://p.example/jobs/0192f5a0-0000-7000-8000-000000000001?token=t) ran again and stopped at its budget: 3 of 5 items merged, 2 pending. A maintainer continues it with `/prodigy resume job=0192f5a0 budget=<USD>`.");
    }

    #[test]
    fn job_replies() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        insta::assert_snapshot!(jobs_started(sha, &[
            WorkflowStart::Started { workflow: ".prodigy/fix.yml".into(), job: link() },
            WorkflowStart::Failed { workflow: ".prodigy/docs.yml".into(), error: "line 1\nline 2".into() },
        ]), @r"
        prodigy on `0123456`:

        - `.prodigy/fix.yml`: started job [`0192f5a0`](https://p.example/jobs/0192f5a0-0000-7000-8000-000000000001?token=t)
        - `.prodigy/docs.yml`: could not start:
          ```
          line 1
          line 2
          ```
        ");
        let holder = Holder {
            id: "h".into(),
            host: "box".into(),
            pid: 42,
            instance: Some("web-1".into()),
        };
        let since = "2026-01-02T03:04:05Z".parse().unwrap();
        insta::assert_snapshot!(resume_held(&link(), &holder, since), @"Job [`0192f5a0`](https://p.example/jobs/0192f5a0-0000-7000-8000-000000000001?token=t) is already running on server instance web-1 (pid 42 on box) since 2026-01-02 03:04:05 UTC; that run covers every pending item, so nothing new was started.");
        insta::assert_snapshot!(already_finished(&link(), JobStatus::Failed, 3), @"Job [`0192f5a0`](https://p.example/jobs/0192f5a0-0000-7000-8000-000000000001?token=t) has already finished (failed); nothing to resume. 3 items are in its dead-letter queue: `/prodigy retry job=0192f5a0` runs them again.");
        insta::assert_snapshot!(cancel(&link(), &CancelReply::Stopping { holder: Some(holder.clone()) }), @"Cancelling job [`0192f5a0`](https://p.example/jobs/0192f5a0-0000-7000-8000-000000000001?token=t): it runs on server instance web-1 (pid 42 on box), which stops its agents now. `/prodigy resume job=0192f5a0` continues it later.");
        insta::assert_snapshot!(no_such_job(None), @"This pull request has no prodigy job yet. Start one with `/prodigy run`.");
        insta::assert_snapshot!(status(&[StatusRow {
            job: link(),
            workflow: ".prodigy/fix.yml".into(),
            head_sha: Some(sha.into()),
            status: JobStatus::Running,
            phase: Phase::Map,
            counts: ItemCounts { total: 10, merged: 4, failed: 1, dlq: 1, ..Default::default() },
        }]), @r"
        | job | workflow | commit | status | phase | merged / total | failed | DLQ |
        |---|---|---|---|---|---|---|---|
        | [`0192f5a0`](https://p.example/jobs/0192f5a0-0000-7000-8000-000000000001?token=t) | `.prodigy/fix.yml` | `0123456` | running | map | 4 / 10 | 1 | 1 |
        ");
    }

    #[test]
    fn cancel_reasons() {
        let sha = "0123456789abcdef0123456789abcdef01234567".to_string();
        let reasons = [
            CancelReason::Pushed {
                head_sha: sha.clone(),
            },
            CancelReason::RunCommand { head_sha: sha },
            CancelReason::Command {
                user: "octocat".into(),
            },
            CancelReason::PullRequestClosed,
        ];
        let texts: Vec<String> = reasons.iter().map(cancel_reason).collect();
        assert_eq!(
            texts,
            [
                "superseded by 0123456",
                "superseded by `/prodigy run` on 0123456",
                "cancelled by @octocat",
                "the pull request was closed",
            ]
        );
    }

    #[test]
    fn refused_workflows_say_why() {
        let refused = |why| WorkflowStart::Refused {
            workflow: ".prodigy/fix.yml".into(),
            why,
        };
        let cap = |automatic| Refusal::OverDailyCap {
            why: "octo/repo spent $12.00 of its $10.00 daily cap".into(),
            automatic,
        };
        insta::assert_snapshot!(jobs_started(&"a".repeat(40), &[
            refused(cap(true)),
            refused(cap(false)),
            refused(Refusal::MissingWorkflow { head_sha: "b".repeat(40) }),
        ]), @r"
        prodigy on `aaaaaaa`:

        - `.prodigy/fix.yml`: could not start: not started: octo/repo spent $12.00 of its $10.00 daily cap. `/prodigy run` starts it once the cap allows
        - `.prodigy/fix.yml`: could not start: not started: octo/repo spent $12.00 of its $10.00 daily cap
        - `.prodigy/fix.yml`: could not start: `.prodigy/fix.yml` does not exist at `bbbbbbb`
        ");
    }
}
