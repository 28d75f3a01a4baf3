//! The runner's side of check-run re-runs and buttons (queued by `dispatch::route_check_event`).
//!
//! Each trigger goes through `checks::rerun::handle` in a job task, with the run's own
//! check-run reporter: under the job lock it resumes or retries the job, or it answers (the lock
//! is held by a run that covers the trigger, or a run that finished after the trigger arrived
//! covered it). Answers are posted once, as a comment on the job's pull request, by the
//! instance that handled the delivery. A complete job is re-run as a fresh job at the same head
//! commit; the old job's lock is held while the fresh one is created, so duplicate clicks on
//! any instance start one fresh job.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::{JobAction, Runner, Slots, Started, short};
use crate::checks::rerun::{self, Decision, RerunOutcome, RerunRequest};
use crate::engine::{Engine, NewRun, Resumed};
use crate::github::InstallationId;
use crate::server::dispatch::CheckRerunWork;
use crate::server::replies::{self, fresh_run_covered, fresh_run_pending, rerun_failed};
use crate::server::reporting::JobContext;
use crate::store::{Exclusive, Job, StoreError};
use crate::types::CommitSha;

/// `checks::rerun::handle`, split into "the engine ran" and "nothing ran" for the job task.
pub(super) async fn handle(
    engine: &Engine,
    req: &RerunRequest,
) -> anyhow::Result<Result<Resumed, RerunOutcome>> {
    Ok(match rerun::handle(engine, req).await? {
        RerunOutcome::Ran(outcome) => Ok(Resumed::Ran(outcome)),
        other => Err(other),
    })
}

impl Runner {
    pub(super) async fn on_check_rerun(
        &self,
        w: CheckRerunWork,
        requested_at: DateTime<Utc>,
        slots: &mut Slots,
    ) -> anyhow::Result<String> {
        let jobs = match &w.job {
            Some(id) => match self.job_of_repo(&w, id).await? {
                Some(job) => vec![job],
                None => {
                    // The job is not here (another database, another repository): nobody to
                    // answer on a pull request, so the log says it.
                    tracing::info!(repo = %w.repo, job = %id, "re-run of a job this server does not know");
                    return Ok(format!("re-run of unknown job {id}: ignored"));
                }
            },
            None => {
                // "Re-run all checks": the latest job of each workflow at the commit.
                let all = self
                    .p()
                    .store
                    .find_jobs_by_head_sha(&w.repo, &w.head_sha)
                    .await?;
                let mut seen = HashSet::new();
                all.into_iter()
                    .filter(|j| seen.insert(j.workflow_path.clone()))
                    .collect()
            }
        };
        if jobs.is_empty() {
            return Ok(format!("no prodigy job at {}", short(&w.head_sha)));
        }
        let mut done = Vec::new();
        for job in jobs {
            done.push(self.rerun_job(&w, job, requested_at, slots).await?);
        }
        Ok(done.join("; "))
    }

    async fn job_of_repo(&self, w: &CheckRerunWork, id: &str) -> anyhow::Result<Option<Job>> {
        let Some(id) = rerun::job_of_external_id(Some(id)) else {
            return Ok(None);
        };
        match self.p().store.get_job(id).await {
            // A job of another repository is not this check run's to control.
            Ok(job) if job.repo.as_ref() == Some(&w.repo) => Ok(Some(job)),
            Ok(_) | Err(StoreError::JobNotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn rerun_context(&self, w: &CheckRerunWork, job: &Job) -> JobContext {
        JobContext {
            repo: w.repo.clone(),
            pr_number: job.pr_number.map(|n| n.0),
            head_sha: job.head_sha.clone(),
            installation: InstallationId(w.installation),
            workflow: job.workflow_path.clone(),
            links: self.p().links.clone(),
            pass_env: self.recorded_pass_env(job.id).await,
        }
    }

    /// Posts `text` on the job's pull request (a job without one: the log only).
    async fn answer(&self, w: &CheckRerunWork, job: &Job, text: &str) {
        match job.pr_number.map(|n| n.0) {
            Some(pr) => {
                self.comment(InstallationId(w.installation), &w.repo, pr, text)
                    .await
            }
            None => tracing::info!(job = %job.id, answer = %text, "re-run answered"),
        }
    }

    async fn rerun_job(
        &self,
        w: &CheckRerunWork,
        job: Job,
        requested_at: DateTime<Utc>,
        slots: &mut Slots,
    ) -> anyhow::Result<String> {
        let req = RerunRequest {
            trigger: w.trigger.to_trigger(),
            job: Some(job.id.to_string()),
            requested_at,
            sender: w.sender.clone(),
        };
        // Only work that will run needs the commit; the answers need no git at all.
        let counts = self.p().store.item_counts(job.id).await?;
        if matches!(
            rerun::decide(&req.trigger, Ok(&job), &counts, requested_at),
            Decision::Resume { .. } | Decision::RetryFailed { .. } | Decision::RunFresh { .. }
        ) && let Some(sha) = &job.head_sha
        {
            let token = self
                .token_for_git(InstallationId(w.installation), &w.repo)
                .await?;
            let pr = job.pr_number.map(|n| n.0);
            self.p()
                .repos
                .prepare(&w.repo, pr.map(crate::github::PrNumber), sha, token)
                .await?;
        }
        let ctx = self.rerun_context(w, &job).await;
        let permit = slots.take().await;
        let started = self
            .start_job(JobAction::Rerun(Box::new(req)), ctx, permit)
            .await;
        Ok(match started {
            Ok(Started::Running(id)) => format!("re-run of job {id} started"),
            Ok(Started::Ended(Ok(Resumed::Ran(o)))) => {
                format!("re-run of job {} ended {}", o.job, o.status)
            }
            Ok(Started::Ended(Ok(other))) => format!("re-run of job {}: {other:?}", job.id),
            Ok(Started::Ended(Err(e))) => {
                let text = rerun_failed(job.id, &format!("{e:#}"), &w.sender);
                self.answer(w, &job, &text).await;
                return Err(e.context(format!("re-run of job {}", job.id)));
            }
            Ok(Started::Rerun(RerunOutcome::Answered(answer))) => {
                let text = replies::rerun_answer(&answer, &w.sender);
                self.answer(w, &job, &text).await;
                format!("re-run of job {} answered", job.id)
            }
            Ok(Started::Rerun(RerunOutcome::RunFresh { .. })) => {
                self.run_fresh(w, &job, requested_at, slots).await?
            }
            Ok(Started::Rerun(RerunOutcome::Ran(o))) => {
                format!("re-run of job {} ended {}", o.job, o.status)
            }
            Err(_) => anyhow::bail!("the re-run task of job {} stopped", job.id),
        })
    }

    /// A complete job re-run: its workflow as a new job at the same head commit, at most once
    /// per click. The old job's lock serialises the triggers; a job of the same workflow at the
    /// commit created after the trigger arrived already answers it.
    async fn run_fresh(
        &self,
        w: &CheckRerunWork,
        old: &Job,
        requested_at: DateTime<Utc>,
        slots: &mut Slots,
    ) -> anyhow::Result<String> {
        let started = self
            .p()
            .store
            .with_job_lock(old.id, &self.holder(), async |_| {
                self.start_fresh(w, old, requested_at, slots).await
            })
            .await?;
        let result = match started {
            Exclusive::Performed(result) => result,
            Exclusive::Held { holder, since } => {
                let text = fresh_run_pending(old.id, &holder, since, &w.sender);
                self.answer(w, old, &text).await;
                return Ok(format!("fresh run of job {} already being started", old.id));
            }
        };
        let (message, answer) = result;
        if let Some(text) = answer {
            self.answer(w, old, &text).await;
        }
        Ok(message)
    }

    /// Under the old job's lock: (what happened, the answer to post if nothing started).
    async fn start_fresh(
        &self,
        w: &CheckRerunWork,
        old: &Job,
        requested_at: DateTime<Utc>,
        slots: &mut Slots,
    ) -> anyhow::Result<(String, Option<String>)> {
        let sha = old
            .head_sha
            .clone()
            .or_else(|| old.refs.base_commit.clone().map(CommitSha))
            .with_context(|| format!("job {} records no commit to run again", old.id))?;
        let newer = self
            .p()
            .store
            .find_jobs_by_head_sha(&w.repo, &sha)
            .await?
            .into_iter()
            .find(|j| {
                j.id != old.id
                    && j.workflow_path == old.workflow_path
                    && j.created_at >= requested_at
            });
        if let Some(newer) = newer {
            let text = fresh_run_covered(old.id, &self.link(newer.id), &w.sender);
            return Ok((format!("covered by job {}", newer.id), Some(text)));
        }
        let installation = InstallationId(w.installation);
        let pr = old.pr_number.map(|n| n.0);
        let config = match pr {
            Some(pr) => self
                .load_config(installation, &w.repo, pr, &sha)
                .await?
                .ok(),
            None => None,
        };
        let max_parallel = config.as_ref().and_then(|c| c.max_parallel);
        let text = self
            .p()
            .repos
            .read_file(&w.repo, &sha, &old.workflow_path)
            .await?
            .with_context(|| {
                format!(
                    "`{}` does not exist at `{}` any more",
                    old.workflow_path,
                    short(&sha)
                )
            })?;
        let run = NewRun {
            repo: self.p().repos.path(&w.repo),
            workflow_path: PathBuf::from(&old.workflow_path),
            max_parallel,
            repo_name: Some(w.repo.clone()),
            pr_number: old.pr_number,
            head_sha: Some(sha.clone()),
            base_commit: Some(sha.to_string()),
            workflow_text: Some(text),
        };
        let mut ctx = self.rerun_context(w, old).await;
        if let Some(config) = config {
            ctx.pass_env = config.pass_env;
        }
        let permit = slots.take().await;
        Ok(
            match self
                .start_job(JobAction::Run(Box::new(run)), ctx, permit)
                .await
            {
                Ok(Started::Running(id)) => (format!("fresh job {id} started"), None),
                Ok(Started::Ended(Ok(Resumed::Ran(o)))) => {
                    (format!("fresh job {} ended {}", o.job, o.status), None)
                }
                Ok(Started::Ended(Err(e))) => {
                    let text = rerun_failed(old.id, &format!("{e:#}"), &w.sender);
                    (format!("fresh run failed: {e:#}"), Some(text))
                }
                Ok(_) | Err(_) => ("fresh run did not start".into(), None),
            },
        )
    }
}
