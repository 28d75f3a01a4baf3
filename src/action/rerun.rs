//! Re-runs: GitHub's "Re-run jobs" starts the same workflow run again with `GITHUB_RUN_ATTEMPT`
//! one higher. Every job a step starts or continues records which run and attempt it was
//! (a `action_run` event), so a later attempt finds the job an earlier attempt of the same run
//! started and continues it, as the App's re-run does: a job that stopped part-way resumes
//! (pending, then failed, then DLQ items), a finished job with items in its DLQ retries them,
//! and a job that succeeded runs again as a new job.

use crate::store::{Job, JobEvent, Store, StoreError};
use crate::types::{JobId, JobStatus, Phase};

/// What the re-run does with the job an earlier attempt started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerunPlan {
    Resume,
    RetryDlq,
    Fresh,
}

/// The plan for `job`, with `dlq` items in its dead-letter queue.
pub fn plan(job: &Job, dlq: u64) -> RerunPlan {
    if job.phase != Phase::Done {
        RerunPlan::Resume
    } else if dlq > 0 && job.status != JobStatus::Succeeded {
        RerunPlan::RetryDlq
    } else {
        RerunPlan::Fresh
    }
}

/// The latest attempt before `attempt` of run `run_id` that `events` record, if any.
pub fn earlier_attempt(events: &[JobEvent], run_id: &str, attempt: u32) -> Option<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEvent::ActionRun {
                run_id: r,
                attempt: a,
                ..
            } if r == run_id && *a < attempt => Some(*a),
            _ => None,
        })
        .max()
}

/// The job an earlier attempt of this run started, among `jobs` (most recent first), with
/// that attempt's number.
pub async fn find_earlier<'a>(
    store: &Store,
    jobs: &[&'a Job],
    run_id: &str,
    attempt: u32,
) -> Result<Option<(&'a Job, u32)>, StoreError> {
    for job in jobs {
        let events = action_events(store, job.id).await?;
        if let Some(a) = earlier_attempt(&events, run_id, attempt) {
            return Ok(Some((job, a)));
        }
    }
    Ok(None)
}

/// Whether workflow run `run_id` (any attempt) started or continued `job`.
pub async fn started_by_run(store: &Store, job: JobId, run_id: &str) -> Result<bool, StoreError> {
    Ok(action_events(store, job)
        .await?
        .iter()
        .any(|e| matches!(e, JobEvent::ActionRun { run_id: r, .. } if r == run_id)))
}

/// The job's `action_run` events.
async fn action_events(store: &Store, job: JobId) -> Result<Vec<JobEvent>, StoreError> {
    const PAGE: u32 = 1000;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events(job, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        out.extend(
            page.iter()
                .filter(|e| e.kind == "action_run")
                .filter_map(|e| e.event()),
        );
        if page.len() < PAGE as usize {
            break;
        }
    }
    Ok(out)
}

/// The line the new check run's summary starts with: which attempt this continues, linking
/// the earlier attempt's check run when the job recorded one.
pub fn preface(
    server_url: &str,
    repo: &str,
    job: JobId,
    earlier: u32,
    now: u32,
    earlier_check_run: Option<i64>,
    plan: RerunPlan,
) -> String {
    let what = match plan {
        RerunPlan::Resume => "continues",
        RerunPlan::RetryDlq => "retries the dead-letter queue of",
        RerunPlan::Fresh => "runs again",
    };
    let link = earlier_check_run
        .map(|id| format!(" ([its check run]({server_url}/{repo}/runs/{id}))"))
        .unwrap_or_default();
    format!("Re-run, attempt {now}: {what} job `{job}` from attempt {earlier}{link}.\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(run_id: &str, attempt: u32) -> JobEvent {
        JobEvent::ActionRun {
            run_id: run_id.into(),
            attempt,
            url: None,
        }
    }

    #[test]
    fn the_latest_earlier_attempt_of_this_run() {
        let events = [run("7", 1), run("8", 1), run("7", 2), run("7", 3)];
        assert_eq!(earlier_attempt(&events, "7", 3), Some(2));
        assert_eq!(earlier_attempt(&events, "7", 4), Some(3));
        assert_eq!(earlier_attempt(&events, "7", 1), None);
        assert_eq!(earlier_attempt(&events, "9", 2), None);
    }

    #[test]
    fn the_preface_links_the_earlier_check_run() {
        let job: JobId = "0192f5a0-0000-7000-8000-000000000001".parse().unwrap();
        insta::assert_snapshot!(
            preface("https://github.com", "o/r", job, 1, 2, Some(55), RerunPlan::Resume),
            @"Re-run, attempt 2: continues job `0192f5a0-0000-7000-8000-000000000001` from attempt 1 ([its check run](https://github.com/o/r/runs/55))."
        );
    }
}
