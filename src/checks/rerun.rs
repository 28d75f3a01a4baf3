//! Re-runs and button presses on a check run: what they ask for, decided from the job's recorded
//! state alone, and why a trigger started nothing ([`RerunAnswer`]; its text is in
//! `server::replies`). The server wires it: it finds the job (by the
//! check run's `external_id`, or by repository and head commit for a check suite), calls
//! [`decide`], and runs the decision through the same path as `/prodigy resume`, under the lock.
//!
//! Exactly once: a trigger is *covered* by any run of the job that was still going when the
//! trigger was received. While such a run holds the lock, the engine answers `Resumed::Held`; once
//! it has finished, its `finished_at` is at or after the trigger's time, and [`decide`] answers
//! [`Decision::Covered`]. So twenty deliveries of one click start one run, whichever instance
//! handles them and in whatever order.

use chrono::{DateTime, Utc};

use super::render::{RESUME_ACTION, RETRY_FAILED_ACTION};
use crate::engine::{
    DlqMode, Engine, Rerun, RerunWork, ResumeRequest, Resumed, RetryRequest, RunOutcome,
};
use crate::store::{Holder, ItemCounts, Job, StoreError};
use crate::types::{JobId, JobStatus, Phase};

/// What asked for a re-run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// "Re-run" on prodigy's check run (`check_run.rerequested`).
    CheckRunRerequested,
    /// "Re-run all checks" (`check_suite.rerequested`), for each prodigy job of the commit.
    CheckSuiteRerequested,
    /// One of prodigy's buttons (`check_run.requested_action`), by identifier.
    Button(String),
}

/// What to do about a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `engine.resume(job, ResumeRequest { dlq, .. })` under the lock.
    Resume { job: JobId, dlq: DlqMode },
    /// `engine.retry(job, RetryRequest::default())`: every DLQ item again.
    RetryFailed { job: JobId },
    /// The job is complete: run its workflow again as a new job on the same head commit.
    RunFresh {
        job: JobId,
        workflow_path: String,
        head_sha: Option<String>,
    },
    /// A run that was still going when the trigger arrived has answered it already.
    Covered {
        job: JobId,
        finished_at: DateTime<Utc>,
    },
    /// Nothing to do; the reason is told to whoever asked.
    Ignore(Ignored),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// The check run has no prodigy job id (another App's run, or one from before prodigy).
    NotAProdigyRun,
    /// The job id is not in this server's database.
    UnknownJob(String),
    UnknownButton(String),
    /// "Retry failed" with an empty DLQ.
    NothingToRetry {
        job: JobId,
    },
    /// "Resume" on a job with nothing left.
    NothingToResume {
        job: JobId,
    },
}

/// The job id a check run's `external_id` names, if it names one.
pub fn job_of_external_id(external_id: Option<&str>) -> Option<JobId> {
    external_id?.parse().ok()
}

/// Decides what `trigger`, received at `requested_at`, asks of `job` (`None`: not found, with
/// the id that was looked up). `counts` are the job's item counts.
pub fn decide(
    trigger: &Trigger,
    job: Result<&Job, Option<&str>>,
    counts: &ItemCounts,
    requested_at: DateTime<Utc>,
) -> Decision {
    let job = match job {
        Ok(job) => job,
        Err(None) => return Decision::Ignore(Ignored::NotAProdigyRun),
        Err(Some(id)) => return Decision::Ignore(Ignored::UnknownJob(id.to_string())),
    };
    if let Some(finished_at) = job.finished_at
        && job.status != JobStatus::Running
        && finished_at >= requested_at
    {
        return Decision::Covered {
            job: job.id,
            finished_at,
        };
    }
    let unfinished = job.phase != Phase::Done;
    let resume = Decision::Resume {
        job: job.id,
        dlq: DlqMode::Reprocessable,
    };
    let retry = Decision::RetryFailed { job: job.id };
    match trigger {
        Trigger::Button(id) if id == RESUME_ACTION => {
            if unfinished {
                resume
            } else if counts.dlq > 0 {
                // A finished job's failed items are in its DLQ; resume would only say "finished".
                retry
            } else {
                Decision::Ignore(Ignored::NothingToResume { job: job.id })
            }
        }
        Trigger::Button(id) if id == RETRY_FAILED_ACTION => {
            if counts.dlq > 0 {
                retry
            } else {
                Decision::Ignore(Ignored::NothingToRetry { job: job.id })
            }
        }
        Trigger::Button(other) => Decision::Ignore(Ignored::UnknownButton(other.clone())),
        Trigger::CheckRunRerequested | Trigger::CheckSuiteRerequested => {
            if unfinished {
                resume
            } else if counts.dlq > 0 {
                retry
            } else {
                Decision::RunFresh {
                    job: job.id,
                    workflow_path: job.workflow_path.clone(),
                    head_sha: job.head_sha.as_ref().map(ToString::to_string),
                }
            }
        }
    }
}

/// A re-run trigger as the server received it.
#[derive(Debug, Clone)]
pub struct RerunRequest {
    pub trigger: Trigger,
    /// The check run's `external_id` (prodigy sets the job id), or for a check suite the id of
    /// the job found by repository and head commit. `None`: not a prodigy run.
    pub job: Option<String>,
    /// When the delivery was received (its queued request's `enqueued_at`). Runs that finish
    /// after this moment cover the trigger.
    pub requested_at: DateTime<Utc>,
    /// Who clicked, named in the answer.
    pub sender: String,
}

/// What came of a re-run trigger.
#[derive(Debug)]
pub enum RerunOutcome {
    /// This trigger ran the job (resume or DLQ retry), under its lock, to the end.
    Ran(RunOutcome),
    /// The job is complete: the caller starts a new job of the same workflow at the same head
    /// commit (it owns the checkout; see `Engine::run`).
    RunFresh {
        job: JobId,
        workflow_path: String,
        head_sha: Option<String>,
    },
    /// Nothing started; post its text (`server::replies::rerun_answer`) to the sender as a PR
    /// comment, so no click goes unanswered.
    Answered(RerunAnswer),
}

/// Why a trigger started nothing, as told to whoever asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerunAnswer {
    Ignored(Ignored),
    /// A run that has since finished (at `finished_at`) covered the trigger.
    Covered {
        job: JobId,
        finished_at: DateTime<Utc>,
    },
    /// A running resume holds the job and covers the trigger (the engine said `Held`).
    Running {
        job: JobId,
        holder: Holder,
        since: DateTime<Utc>,
    },
    /// The job turned out finished once the lock was taken.
    AlreadyFinished {
        job: JobId,
        status: JobStatus,
        dlq: u64,
    },
}

/// Handles one trigger: finds the job, decides, and resumes or retries it through the engine
/// under the job lock ([`Engine::rerun`]). Give `engine` the reporter of the check run to
/// update (a new one per trigger); it only hears from the engine if this trigger runs the job.
pub async fn handle(engine: &Engine, req: &RerunRequest) -> anyhow::Result<RerunOutcome> {
    let answer = |a: RerunAnswer| Ok(RerunOutcome::Answered(a));
    let ignored = |why: Ignored| answer(RerunAnswer::Ignored(why));
    let Some(id_text) = req.job.as_deref() else {
        return ignored(Ignored::NotAProdigyRun);
    };
    let Some(id) = job_of_external_id(Some(id_text)) else {
        return ignored(Ignored::NotAProdigyRun);
    };
    let job = match engine.store.get_job(id).await {
        Ok(job) => job,
        Err(StoreError::JobNotFound(_)) => {
            return ignored(Ignored::UnknownJob(id_text.into()));
        }
        Err(e) => return Err(e.into()),
    };
    let counts = engine.store.item_counts(id).await?;
    let work = match decide(&req.trigger, Ok(&job), &counts, req.requested_at) {
        Decision::Resume { dlq, .. } => RerunWork::Resume(ResumeRequest {
            dlq,
            max_parallel: None,
            budget: None,
        }),
        Decision::RetryFailed { .. } => RerunWork::Retry(RetryRequest::default()),
        Decision::RunFresh {
            job,
            workflow_path,
            head_sha,
        } => {
            return Ok(RerunOutcome::RunFresh {
                job,
                workflow_path,
                head_sha,
            });
        }
        Decision::Covered { job, finished_at } => {
            return answer(RerunAnswer::Covered { job, finished_at });
        }
        Decision::Ignore(reason) => return ignored(reason),
    };
    // Decided on a read without the lock; the engine checks "covered" again under it.
    Ok(match engine.rerun(id, &work, req.requested_at).await? {
        Rerun::Resumed(Resumed::Ran(outcome)) => RerunOutcome::Ran(outcome),
        Rerun::Resumed(Resumed::Held { holder, since }) => {
            RerunOutcome::Answered(RerunAnswer::Running {
                job: id,
                holder,
                since,
            })
        }
        Rerun::Resumed(Resumed::AlreadyFinished { status, dlq }) => {
            RerunOutcome::Answered(RerunAnswer::AlreadyFinished {
                job: id,
                status,
                dlq,
            })
        }
        Rerun::Covered { finished_at } => RerunOutcome::Answered(RerunAnswer::Covered {
            job: id,
            finished_at,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobRefs;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn job(phase: Phase, status: JobStatus, finished_at: Option<DateTime<Utc>>) -> Job {
        Job {
            id: "0192f5a0-0000-7000-8000-000000000001".parse().unwrap(),
            workflow_path: ".prodigy/review.yml".into(),
            workflow_text: String::new(),
            workflow_name: "review".into(),
            repo_path: "/srv/repo".into(),
            repo: None,
            pr_number: Some(crate::types::PrNumber(7)),
            head_sha: Some(crate::types::CommitSha("a".repeat(40))),
            status,
            phase,
            refs: JobRefs::default(),
            vars: serde_json::Value::Null,
            check_run_id: Some(1001),
            error: None,
            lease_epoch: 1,
            created_at: t(0),
            updated_at: t(10),
            finished_at,
        }
    }

    fn counts(dlq: u64) -> ItemCounts {
        ItemCounts {
            total: 10,
            succeeded: 10 - dlq,
            failed: dlq,
            merged: 10 - dlq,
            dlq,
            ..ItemCounts::default()
        }
    }

    #[test]
    fn rerun_resumes_an_unfinished_job_and_retries_a_finished_one_with_failures() {
        let j = job(Phase::Map, JobStatus::Failed, Some(t(10)));
        assert_eq!(
            decide(&Trigger::CheckRunRerequested, Ok(&j), &counts(0), t(20)),
            Decision::Resume {
                job: j.id,
                dlq: DlqMode::Reprocessable
            }
        );
        let j = job(Phase::Done, JobStatus::Failed, Some(t(10)));
        assert_eq!(
            decide(&Trigger::CheckSuiteRerequested, Ok(&j), &counts(3), t(20)),
            Decision::RetryFailed { job: j.id }
        );
    }

    #[test]
    fn rerun_of_a_complete_job_starts_a_fresh_one_on_the_same_commit() {
        let j = job(Phase::Done, JobStatus::Succeeded, Some(t(10)));
        assert_eq!(
            decide(&Trigger::CheckRunRerequested, Ok(&j), &counts(0), t(20)),
            Decision::RunFresh {
                job: j.id,
                workflow_path: ".prodigy/review.yml".into(),
                head_sha: Some("a".repeat(40)),
            }
        );
    }

    #[test]
    fn a_trigger_received_before_the_last_run_finished_is_covered() {
        let j = job(Phase::Done, JobStatus::Failed, Some(t(30)));
        for trigger in [
            Trigger::CheckRunRerequested,
            Trigger::Button(RETRY_FAILED_ACTION.into()),
            Trigger::Button(RESUME_ACTION.into()),
        ] {
            assert_eq!(
                decide(&trigger, Ok(&j), &counts(3), t(20)),
                Decision::Covered {
                    job: j.id,
                    finished_at: t(30)
                },
                "{trigger:?}"
            );
        }
        // A job recorded as running is the lock's business (the engine answers Held).
        let j = job(Phase::Map, JobStatus::Running, Some(t(30)));
        assert!(matches!(
            decide(&Trigger::CheckRunRerequested, Ok(&j), &counts(0), t(20)),
            Decision::Resume { .. }
        ));
    }

    #[test]
    fn buttons() {
        let done = job(Phase::Done, JobStatus::Failed, Some(t(10)));
        assert_eq!(
            decide(
                &Trigger::Button("resume".into()),
                Ok(&done),
                &counts(2),
                t(20)
            ),
            Decision::RetryFailed { job: done.id }
        );
        assert_eq!(
            decide(
                &Trigger::Button("retry_failed".into()),
                Ok(&done),
                &counts(0),
                t(20)
            ),
            Decision::Ignore(Ignored::NothingToRetry { job: done.id })
        );
        let ok = job(Phase::Done, JobStatus::Succeeded, Some(t(10)));
        assert_eq!(
            decide(
                &Trigger::Button("resume".into()),
                Ok(&ok),
                &counts(0),
                t(20)
            ),
            Decision::Ignore(Ignored::NothingToResume { job: ok.id })
        );
        assert_eq!(
            decide(
                &Trigger::Button("deploy".into()),
                Ok(&ok),
                &counts(0),
                t(20)
            ),
            Decision::Ignore(Ignored::UnknownButton("deploy".into()))
        );
        let mid = job(Phase::Reduce, JobStatus::Failed, Some(t(10)));
        assert!(matches!(
            decide(
                &Trigger::Button("resume".into()),
                Ok(&mid),
                &counts(0),
                t(20)
            ),
            Decision::Resume { .. }
        ));
    }

    #[test]
    fn runs_that_are_not_prodigy_jobs_are_ignored() {
        assert_eq!(job_of_external_id(None), None);
        assert_eq!(job_of_external_id(Some("ci-123")), None);
        assert!(job_of_external_id(Some("0192f5a0-0000-7000-8000-000000000001")).is_some());
        assert_eq!(
            decide(&Trigger::CheckRunRerequested, Err(None), &counts(0), t(0)),
            Decision::Ignore(Ignored::NotAProdigyRun)
        );
    }
}
