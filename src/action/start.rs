//! Which job a `pull_request`, `push` or `workflow_dispatch` step runs: the `resume` and `retry`
//! inputs, and on a re-run (`GITHUB_RUN_ATTEMPT` above 1) the job an earlier attempt of the same
//! run started ([`super::rerun`]).

use std::path::Path;

use super::{ActionConfig, BadInput, ResumeMode, StepContext, branch, commands, plan, rerun};
use crate::engine::worktree::job_branch;
use crate::engine::{Engine, git};
use crate::store::{Job, StoreError};
use crate::types::{JobId, Phase};

/// How a step starts.
#[derive(Debug, Clone)]
pub(crate) enum Start {
    New,
    Resume {
        job: JobId,
        budget: Option<crate::workflow::Budget>,
    },
    Retry {
        job: JobId,
        items: Vec<crate::types::ItemKey>,
    },
}

/// A start and the note the check run's summary begins with (a re-run names what it continues).
pub(crate) struct Chosen {
    pub start: Start,
    pub preface: Option<String>,
}

impl From<Start> for Chosen {
    fn from(start: Start) -> Self {
        Chosen {
            start,
            preface: None,
        }
    }
}

/// Why `job` cannot continue in the checkout at `repo`, if it cannot. Its branch, when missing
/// here, is fetched from `origin` first (an earlier run pushed it, `scripts/action-state.sh`).
pub(crate) async fn cannot_continue(repo: &Path, job: &Job) -> anyhow::Result<Option<String>> {
    let mut branch_here = git::branch_exists(repo, &job_branch(job.id)).await?;
    let mut fetch_error = None;
    if !branch_here && job.phase != Phase::Setup && Path::new(&job.repo_path) == repo {
        match branch::fetch_job_branch(repo, job.id).await {
            Ok(()) => branch_here = true,
            Err(e) => fetch_error = Some(e),
        }
    }
    Ok(
        plan::cannot_continue_here(job, repo, branch_here).map(|why| match fetch_error {
            Some(e) => format!(
                "{e}; an earlier run pushes it when its token may (`permissions: contents: write`)"
            ),
            None => why,
        }),
    )
}

pub(crate) async fn choose(
    engine: &Engine,
    step: &StepContext,
    config: &ActionConfig,
    repo: &Path,
    workflow: &str,
) -> anyhow::Result<Chosen> {
    match &config.resume {
        ResumeMode::New if config.retry => Err(BadInput::Retry(
            "needs a job: set `resume` to the job's id, or to `auto` for this workflow's latest job at this commit".into(),
        )
        .into()),
        ResumeMode::New => Ok(Start::New.into()),
        ResumeMode::Job(given) => named(engine, config, repo, given).await,
        ResumeMode::Auto if config.retry => latest_with_dlq(engine, step, workflow).await,
        ResumeMode::Auto => {
            let jobs = engine
                .store
                .find_jobs_by_head_sha(&step.env.repository, &step.event.head_sha)
                .await?;
            if let Some(chosen) = rerun_of_earlier_attempt(engine, step, repo, workflow, &jobs).await? {
                return Ok(chosen);
            }
            auto(repo, workflow, &jobs).await
        }
    }
}

async fn named(
    engine: &Engine,
    config: &ActionConfig,
    repo: &Path,
    given: &str,
) -> anyhow::Result<Chosen> {
    let job = match engine.store.find_job(given).await {
        Ok(job) => job,
        Err(e @ (StoreError::JobNotFound(_) | StoreError::AmbiguousJob { .. })) => {
            return Err(BadInput::Resume {
                job: given.to_string(),
                reason: format!(
                    "{e}. A runner's own SQLite database starts empty in every run; \
                     jobs outlive a run in a shared database (`database-url`)"
                ),
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    if (job.phase != Phase::Done || config.retry)
        && let Some(why) = cannot_continue(repo, &job).await?
    {
        return Err(BadInput::Resume {
            job: given.to_string(),
            reason: format!("job {} cannot continue here: {why}", job.id),
        }
        .into());
    }
    Ok(if config.retry {
        Start::Retry {
            job: job.id,
            items: Vec::new(),
        }
    } else {
        Start::Resume {
            job: job.id,
            budget: None,
        }
    }
    .into())
}

/// `retry: true` with `resume: auto`: this workflow's latest job at this commit with items in its
/// dead-letter queue.
async fn latest_with_dlq(
    engine: &Engine,
    step: &StepContext,
    workflow: &str,
) -> anyhow::Result<Chosen> {
    let jobs = engine
        .store
        .find_jobs_by_head_sha(&step.env.repository, &step.event.head_sha)
        .await?;
    for job in plan::jobs_of_workflow(&jobs, workflow) {
        if engine.store.item_counts(job.id).await?.dlq > 0 {
            return Ok(Start::Retry {
                job: job.id,
                items: Vec::new(),
            }
            .into());
        }
    }
    Err(BadInput::Retry(format!(
        "found no job of {workflow} at {} with items in its dead-letter queue; name one in `resume`",
        step.event.head_sha
    ))
    .into())
}

/// A re-run continues the job an earlier attempt of this run started, when there is one.
pub(crate) async fn rerun_of_earlier_attempt(
    engine: &Engine,
    step: &StepContext,
    repo: &Path,
    workflow: &str,
    jobs: &[Job],
) -> anyhow::Result<Option<Chosen>> {
    let (Some(run_id), attempt) = (&step.env.run_id, step.env.run_attempt) else {
        return Ok(None);
    };
    if attempt < 2 {
        return Ok(None);
    }
    let ours = plan::jobs_of_workflow(jobs, workflow);
    let Some((job, earlier)) = rerun::find_earlier(&engine.store, &ours, run_id, attempt).await?
    else {
        eprintln!(
            "re-run (attempt {attempt}): no job of an earlier attempt of this run is in the database \
             (its state did not survive: see the action's state cache, or set `database-url`)"
        );
        return Ok(None);
    };
    let dlq = engine.store.item_counts(job.id).await?.dlq;
    let what = rerun::plan(job, dlq);
    let preface = rerun::preface(
        &step.env.server_url,
        step.env.repository.as_str(),
        job.id,
        earlier,
        attempt,
        job.check_run_id,
        what,
    );
    let start = match what {
        rerun::RerunPlan::Fresh => Start::New,
        rerun::RerunPlan::Resume | rerun::RerunPlan::RetryDlq => {
            if let Some(why) = cannot_continue(repo, job).await? {
                println!(
                    "{}",
                    commands::notice(
                        "prodigy: re-run starts a new job",
                        &format!(
                            "job {} of attempt {earlier} cannot continue here: {why}; a new job starts",
                            job.id
                        ),
                    )
                );
                return Ok(Some(Start::New.into()));
            }
            if what == rerun::RerunPlan::Resume {
                Start::Resume {
                    job: job.id,
                    budget: None,
                }
            } else {
                Start::Retry {
                    job: job.id,
                    items: Vec::new(),
                }
            }
        }
    };
    eprintln!("re-run (attempt {attempt}): {}", preface.trim());
    Ok(Some(Chosen {
        start,
        preface: Some(preface),
    }))
}

/// `resume: auto`: the newest unfinished job of this workflow at this commit that can continue
/// here, else a new job.
async fn auto(repo: &Path, workflow: &str, jobs: &[Job]) -> anyhow::Result<Chosen> {
    let mut first_refusal = None;
    for job in plan::unfinished_jobs(jobs, workflow) {
        match cannot_continue(repo, job).await? {
            None => {
                eprintln!(
                    "resume: auto: continuing job {} (unfinished, phase {}) of this workflow at this commit",
                    job.id, job.phase
                );
                return Ok(Start::Resume {
                    job: job.id,
                    budget: None,
                }
                .into());
            }
            Some(why) => {
                first_refusal.get_or_insert((job.id, why));
            }
        }
    }
    if let Some((job, why)) = first_refusal {
        println!(
            "{}",
            commands::warning(
                "prodigy: starting a new job",
                &format!(
                    "job {job} of this workflow at this commit is unfinished, but {why}; \
                     a new job starts instead"
                ),
            )
        );
    }
    Ok(Start::New.into())
}
