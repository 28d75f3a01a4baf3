//! Replies to a check run's re-run buttons (`Re-run`, `Resume`, `Retry failed`): what the
//! press started, or why it started nothing.

use chrono::{DateTime, Utc};

use crate::checks::rerun::{Ignored, RerunAnswer};
use crate::server::commands::SLASH_PREFIX;
use crate::store::Holder;
use crate::types::{JobId, JobStatus};

use super::JobLink;

/// A re-run of a complete job found that a fresh run, started after the click, covers it.
pub fn fresh_run_covered(old: JobId, newer: &JobLink, asked_by: &str) -> String {
    format!(
        "@{asked_by} job `{old}` was already run again as job [`{}`]({}) after this request \
         arrived; its check run shows the outcome, so this request started nothing.",
        newer.id, newer.url
    )
}

/// A re-run of a complete job arrived while another trigger is starting its fresh run.
pub fn fresh_run_pending(
    old: JobId,
    holder: &Holder,
    since: DateTime<Utc>,
    asked_by: &str,
) -> String {
    format!(
        "@{asked_by} a new run of job `{old}` is being started by {holder} (since {}) for an \
         earlier request; this request started nothing. Its check run appears on the commit.",
        since.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// A re-run that failed before it could run anything.
pub fn rerun_failed(job: JobId, error: &str, asked_by: &str) -> String {
    format!("@{asked_by} the re-run of job `{job}` failed before it ran: {error}")
}

/// Why a check-run re-run or button started nothing, told to `asked_by`.
pub fn rerun_answer(answer: &RerunAnswer, asked_by: &str) -> String {
    match answer {
        RerunAnswer::Ignored(why) => rerun_ignored(why, asked_by),
        RerunAnswer::Covered { job, finished_at } => rerun_covered(*job, *finished_at, asked_by),
        RerunAnswer::Running { job, holder, since } => {
            rerun_running(*job, holder, *since, asked_by)
        }
        RerunAnswer::AlreadyFinished { job, status, dlq } => {
            rerun_finished(*job, *status, *dlq, asked_by)
        }
    }
}

/// The answer when the job turned out finished once the lock was taken.
fn rerun_finished(job: JobId, status: JobStatus, dlq: u64, asked_by: &str) -> String {
    let rest = if dlq > 0 {
        format!(" {dlq} items are in its dead-letter queue: press **Retry failed** to run them.")
    } else {
        String::new()
    };
    format!("@{asked_by} job `{job}` has already finished ({status}); nothing was resumed.{rest}")
}

/// The answer to a trigger that a running resume already covers (the engine said `Held`).
fn rerun_running(job: JobId, holder: &Holder, since: DateTime<Utc>, asked_by: &str) -> String {
    format!(
        "@{asked_by} job `{job}` is already running on {holder}, since {}. That run covers every \
         pending item, so this request started nothing; the check run shows its outcome. If items \
         are left when it finishes, press **Re-run** again.",
        since.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// The answer to a trigger that a run which has since finished already covered.
fn rerun_covered(job: JobId, finished_at: DateTime<Utc>, asked_by: &str) -> String {
    format!(
        "@{asked_by} job `{job}` was already re-run when this request arrived; that run finished \
         at {} and its check run shows the outcome. Press **Re-run** again to run once more.",
        finished_at.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// The answer to an ignored trigger.
fn rerun_ignored(reason: &Ignored, asked_by: &str) -> String {
    let why = match reason {
        Ignored::NotAProdigyRun => {
            "this check run was not created by prodigy, so there is no job to re-run".to_string()
        }
        Ignored::UnknownJob(id) => format!(
            "no job `{id}` is known to this server (its database may have been reset); \
             start a new one with `{SLASH_PREFIX} run`"
        ),
        Ignored::UnknownButton(id) => format!(
            "the button `{id}` is not one prodigy offers; use **Resume** or **Retry failed**"
        ),
        Ignored::NothingToRetry { job } => {
            format!("job `{job}` has no failed items to retry")
        }
        Ignored::NothingToResume { job } => {
            format!("job `{job}` has finished and nothing is left to run")
        }
    };
    format!("@{asked_by} {why}.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn rerun_answers() {
        let id: JobId = "0192f5a0-0000-7000-8000-000000000001".parse().unwrap();
        let t = |secs: i64| Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap();
        let holder = Holder {
            id: "h".into(),
            host: "runner-1".into(),
            pid: 4242,
            instance: Some("prodigy-a".into()),
        };
        insta::assert_snapshot!(rerun_answer(&RerunAnswer::Running { job: id, holder, since: t(5) }, "octocat"), @"@octocat job `0192f5a0-0000-7000-8000-000000000001` is already running on server instance prodigy-a (pid 4242 on runner-1), since 2027-01-15 08:00:05 UTC. That run covers every pending item, so this request started nothing; the check run shows its outcome. If items are left when it finishes, press **Re-run** again.");
        insta::assert_snapshot!(rerun_answer(&RerunAnswer::Covered { job: id, finished_at: t(65) }, "octocat"), @"@octocat job `0192f5a0-0000-7000-8000-000000000001` was already re-run when this request arrived; that run finished at 2027-01-15 08:01:05 UTC and its check run shows the outcome. Press **Re-run** again to run once more.");
        insta::assert_snapshot!(rerun_answer(&RerunAnswer::AlreadyFinished { job: id, status: JobStatus::Failed, dlq: 3 }, "octocat"), @"@octocat job `0192f5a0-0000-7000-8000-000000000001` has already finished (failed); nothing was resumed. 3 items are in its dead-letter queue: press **Retry failed** to run them.");
        insta::assert_snapshot!(rerun_answer(&RerunAnswer::Ignored(Ignored::UnknownJob("0192".into())), "octocat"), @"@octocat no job `0192` is known to this server (its database may have been reset); start a new one with `/prodigy run`.");
    }
}
