//! The texts the Action posts on a pull request about `/prodigy` commands that only the Action
//! has: the tracking comment of a job command (started, progress, outcome) and its refusals.
//! The texts both faces share (help, status, permission, errors) are
//! [`crate::comments::replies`]. Pure functions, snapshot-tested.

use crate::comments::commands::SLASH_PREFIX;
use crate::store::{DlqItem, ItemCounts};
use crate::types::{JobId, JobStatus, Phase};

/// DLQ rows the final comment lists; the check run and the step summary have all of them.
const DLQ_ROWS: usize = 5;

/// What a tracking comment is about: the command line, who asked, and where the run is.
#[derive(Debug, Clone)]
pub struct Tracking {
    /// The command line as written.
    pub line: String,
    pub user: String,
    /// `running`, `resuming`, `retrying the dead-letter queue of`.
    pub doing: &'static str,
    pub workflow: String,
    /// This attempt of the workflow run.
    pub run_url: Option<String>,
}

impl Tracking {
    fn head(&self) -> String {
        format!("> {}\n\n@{} ", self.line, self.user)
    }

    fn run_link(&self) -> String {
        match &self.run_url {
            Some(url) => format!(" ([workflow run]({url}))"),
            None => String::new(),
        }
    }
}

/// The first body: the command was taken and the step is starting the job.
pub fn started(t: &Tracking) -> String {
    format!(
        "{}prodigy is {} `{}`{}; this comment follows it.",
        t.head(),
        t.doing,
        t.workflow,
        t.run_link()
    )
}

/// While the job runs: its phase and counts.
pub fn progress(t: &Tracking, job: JobId, phase: Phase, counts: &ItemCounts) -> String {
    format!(
        "{}prodigy is {} `{}` as job `{}`{}.\n\nPhase **{phase}**: {}",
        t.head(),
        t.doing,
        t.workflow,
        job.short(),
        t.run_link(),
        count_line(counts)
    )
}

fn count_line(c: &ItemCounts) -> String {
    format!(
        "{} of {} items merged, {} failed, {} pending, {} in the dead-letter queue.",
        c.merged, c.total, c.failed, c.pending, c.dlq
    )
}

/// How a job command ended, for [`finished`].
#[derive(Debug, Clone)]
pub struct Ending<'a> {
    pub job: JobId,
    pub status: JobStatus,
    pub phase: Phase,
    pub counts: &'a ItemCounts,
    pub dlq: &'a [DlqItem],
    pub error: Option<&'a str>,
}

/// The last body: the outcome, the DLQ, the job branch and what to comment next.
pub fn finished(t: &Tracking, e: &Ending<'_>) -> String {
    let short = e.job.short();
    let mut out = format!(
        "{}job `{}` of `{}` **{}** (phase {}){}: {}",
        t.head(),
        short,
        t.workflow,
        e.status,
        e.phase,
        t.run_link(),
        count_line(e.counts)
    );
    if let Some(error) = e.error.filter(|_| e.dlq.is_empty()) {
        out.push_str(&format!("\n\n{}", quote_block(error)));
    }
    if !e.dlq.is_empty() {
        out.push_str("\n\n| item | error | last message |\n|---|---|---|\n");
        for d in e.dlq.iter().take(DLQ_ROWS) {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                d.key.0,
                d.error_class,
                table_cell(&d.last_message)
            ));
        }
        if e.dlq.len() > DLQ_ROWS {
            out.push_str(&format!(
                "\n{} more in the check run and the step summary.\n",
                e.dlq.len() - DLQ_ROWS
            ));
        }
    }
    out.truncate(out.trim_end().len());
    out.push_str(&format!(
        "\n\nThe job's work is on the branch `prodigy/{}`.",
        e.job
    ));
    if let Some(next) = next_step(e) {
        out.push_str(&format!(" Next: {next}"));
    }
    out
}

fn next_step(e: &Ending<'_>) -> Option<String> {
    let short = e.job.short();
    Some(match e.status {
        JobStatus::BudgetExhausted => format!(
            "a maintainer continues it with `{SLASH_PREFIX} resume job={short} budget=<USD>`."
        ),
        _ if e.phase != Phase::Done => {
            format!("`{SLASH_PREFIX} resume job={short}` continues it where it stopped.")
        }
        _ if e.counts.dlq > 0 => {
            format!("`{SLASH_PREFIX} retry job={short}` runs the failed items again.")
        }
        _ => return None,
    })
}

fn quote_block(text: &str) -> String {
    text.trim()
        .lines()
        .map(|l| format!("> {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line of a message, safe inside a Markdown table cell.
fn table_cell(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").replace('|', "\\|");
    if line.chars().count() > 120 {
        format!("{}…", line.chars().take(120).collect::<String>())
    } else {
        line
    }
}

/// `run` on a pull request from a fork, asked by someone who is not a maintainer.
pub fn fork_refused(user: &str) -> String {
    format!(
        "@{user}, this pull request comes from a fork. `{SLASH_PREFIX} run` would run its code in \
         this repository's workflow, with its token and secrets, so only a maintainer (maintain \
         or admin permission) can start it, after reviewing the changes."
    )
}

/// A second job command in one comment: one step runs one job.
pub fn one_job_per_comment(line: &str) -> String {
    format!(
        "> {line}\n\nNot run: this step already runs a job for an earlier command of the same \
         comment. Comment it again on its own once that one has finished."
    )
}

/// `run workflow=NAME` for a workflow this step does not run.
pub fn other_workflow(name: &str, ours: &str) -> String {
    format!(
        "No workflow `{name}` here: this workflow runs `{ours}`. Comment `{SLASH_PREFIX} run` \
         to run it, or add a step for the other workflow."
    )
}

/// A job that cannot continue in this checkout.
pub fn cannot_continue(job: JobId, why: &str) -> String {
    format!("Job `{}` cannot continue here: {why}.", job.short())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ErrorClass, ItemKey};
    use chrono::Utc;

    fn tracking() -> Tracking {
        Tracking {
            line: "/prodigy resume".into(),
            user: "octocat".into(),
            doing: "resuming",
            workflow: ".prodigy/review.yml".into(),
            run_url: Some("https://github.com/o/r/actions/runs/7/attempts/1".into()),
        }
    }

    fn job() -> JobId {
        "0192f5a0-0000-7000-8000-000000000001".parse().unwrap()
    }

    #[test]
    fn started_and_progress() {
        insta::assert_snapshot!(started(&tracking()), @r"
        > /prodigy resume

        @octocat prodigy is resuming `.prodigy/review.yml` ([workflow run](https://github.com/o/r/actions/runs/7/attempts/1)); this comment follows it.
        ");
        let counts = ItemCounts {
            total: 3,
            merged: 1,
            pending: 2,
            ..Default::default()
        };
        insta::assert_snapshot!(progress(&tracking(), job(), Phase::Map, &counts), @r"
        > /prodigy resume

        @octocat prodigy is resuming `.prodigy/review.yml` as job `0192f5a0` ([workflow run](https://github.com/o/r/actions/runs/7/attempts/1)).

        Phase **map**: 1 of 3 items merged, 0 failed, 2 pending, 0 in the dead-letter queue.
        ");
    }

    #[test]
    fn the_end_lists_the_dlq_and_what_next() {
        let counts = ItemCounts {
            total: 3,
            merged: 2,
            failed: 1,
            succeeded: 2,
            dlq: 1,
            ..Default::default()
        };
        let dlq = vec![DlqItem {
            job_id: job(),
            key: ItemKey("beta".into()),
            data: serde_json::json!({}),
            first_failure: Utc::now(),
            last_failure: Utc::now(),
            failure_count: 1,
            error_class: ErrorClass::CommandFailed,
            signature: "s".into(),
            last_message: "review: beta | 2 problems\nmore".into(),
            reprocessable: true,
            manual_review: false,
            json_log_location: None,
            session_id: None,
        }];
        let e = Ending {
            job: job(),
            status: JobStatus::Failed,
            phase: Phase::Done,
            counts: &counts,
            dlq: &dlq,
            error: Some("1 of 3 items failed"),
        };
        insta::assert_snapshot!(finished(&tracking(), &e), @r"
        > /prodigy resume

        @octocat job `0192f5a0` of `.prodigy/review.yml` **failed** (phase done) ([workflow run](https://github.com/o/r/actions/runs/7/attempts/1)): 2 of 3 items merged, 1 failed, 0 pending, 1 in the dead-letter queue.

        | item | error | last message |
        |---|---|---|
        | `beta` | command_failed | review: beta \| 2 problems |

        The job's work is on the branch `prodigy/0192f5a0-0000-7000-8000-000000000001`. Next: `/prodigy retry job=0192f5a0` runs the failed items again.
        ");
        let stopped = Ending {
            phase: Phase::Map,
            dlq: &[],
            error: Some("interrupted"),
            ..e
        };
        let text = finished(&tracking(), &stopped);
        assert!(text.contains("\n\n> interrupted\n"), "{text}");
        assert!(
            text.ends_with("`/prodigy resume job=0192f5a0` continues it where it stopped."),
            "{text}"
        );
    }

    #[test]
    fn refusals() {
        insta::assert_snapshot!(fork_refused("octocat"), @"@octocat, this pull request comes from a fork. `/prodigy run` would run its code in this repository's workflow, with its token and secrets, so only a maintainer (maintain or admin permission) can start it, after reviewing the changes.");
    }
}
