//! Stale check runs: a run whose process died (SIGKILL, a lost machine) leaves its check run in
//! progress, and GitHub shows a spinner forever. Whoever next holds the job's lock closes it:
//! the run that continues the job (as soon as it has its own check run, `neutral`, pointing at
//! it), or a starting server for a job nobody continues (`cancelled`, saying how to continue).
//! The store's claim makes each close happen once, whoever looks.

use super::sink::CheckRunSink;
use crate::github::{CheckConclusion, CheckRunId, CheckRunOutput, CheckRunUpdate, CheckStatus};
use crate::store::Store;
use crate::types::JobId;

/// The completion of a check run whose run is gone. `continued_by`: the check run of the run
/// that continues the job; `details_url`: the job's page, where the job goes on.
pub fn closing_update(
    job: JobId,
    continued_by: Option<CheckRunId>,
    details_url: Option<&str>,
) -> CheckRunUpdate {
    let page = details_url.map_or(String::new(), |u| {
        format!(" The [job page]({u}) shows where it stands.")
    });
    let (conclusion, title, summary) = match continued_by {
        Some(next) => (
            CheckConclusion::Neutral,
            "Continued in a new run".to_string(),
            format!(
                "The process running job `{job}` stopped before the job finished. The job \
                 continues in check run {next} (prodigy's newest check run on this commit), which \
                 picks up where this one stopped: nothing done here is done again.{page}"
            ),
        ),
        None => (
            CheckConclusion::Cancelled,
            "Stopped: the server running it went away".to_string(),
            format!(
                "The process running job `{job}` stopped before the job finished, and no run \
                 continues it yet. Comment `/prodigy resume` on the pull request (or run \
                 `prodigy resume {job}`) to continue it where it stopped.{page}"
            ),
        ),
    };
    CheckRunUpdate {
        status: Some(CheckStatus::Completed),
        conclusion: Some(conclusion),
        output: Some(CheckRunOutput {
            title,
            summary,
            text: None,
            annotations: Vec::new(),
        }),
        ..CheckRunUpdate::default()
    }
}

/// Completes with `update` the check runs of `job` left in progress by runs before
/// `lease_epoch` (the caller holds, or held, the job's lock at that epoch, so those runs are
/// gone), recording `continued_by` as their successor. Returns how many were closed; one whose
/// update fails is handed back for a later try.
pub async fn close_stale<S: CheckRunSink>(
    sink: &S,
    store: &Store,
    job: JobId,
    lease_epoch: i64,
    continued_by: Option<CheckRunId>,
    update: &CheckRunUpdate,
) -> anyhow::Result<usize> {
    let next = continued_by.and_then(|id| i64::try_from(id.0).ok());
    let claimed = store.claim_stale_check_runs(job, lease_epoch, next).await?;
    let mut closed = 0;
    for id in claimed {
        let Ok(gh_id) = u64::try_from(id) else {
            continue;
        };
        match sink.update(CheckRunId(gh_id), update).await {
            Ok(()) => {
                tracing::info!(%job, check_run = id, "closed a check run its stopped run left in progress");
                closed += 1;
            }
            Err(e) => {
                tracing::warn!(%job, check_run = id, error = %format!("{e:#}"), "cannot close a stale check run; it is tried again later");
                store.reopen_check_run(job, id).await?;
            }
        }
    }
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continued_run_is_neutral_and_names_its_successor() {
        let job: JobId = "0192f5a0-0000-7000-8000-000000000001".parse().unwrap();
        let u = closing_update(job, Some(CheckRunId(42)), Some("https://p.example/jobs/x"));
        assert_eq!(u.conclusion, Some(CheckConclusion::Neutral));
        let out = u.output.unwrap();
        assert!(out.summary.contains("check run 42"), "{}", out.summary);
        assert!(out.summary.contains("(https://p.example/jobs/x)"));
        let u = closing_update(job, None, None);
        assert_eq!(u.conclusion, Some(CheckConclusion::Cancelled));
        assert!(u.output.unwrap().summary.contains("/prodigy resume"));
    }
}
