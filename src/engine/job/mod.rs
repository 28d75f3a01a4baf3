//! One run of one job, under its lock: the job's state and events, and the phases in order.
//!
//! The phases are split by subject: `steps` (setup and reduce: a phase's steps in the job
//! worktree), `map` (the scheduler, its workers, budgets and the error policy), `item` (one
//! attempt of one item: the agent, its commit, the merge queue, failures into the DLQ); `agents`
//! holds what the agents of a run get (environment, sandbox) and leave (their runs and usage).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod agents;
mod claimed;
mod item;
mod map;
mod steps;
mod worker;
mod workers;

pub use agents::masked_values;
use agents::{resolve_env, secret_values};
use map::{ItemRun, Scheduler, should_stop};
pub use worker::WorkerOutcome;
pub use workers::Remote;

use super::agent::AgentScope;
use super::agent_env::AgentEnv;
use super::classify::{self, FailureFacts, FailureStage};
use super::git;
use super::plan::{self, Candidate, DlqMode};
use super::progress::Progress;
use super::sandbox;
use super::step::{self, StepEnv, StepFailure};
use super::worktree::{Slot, Workspace, sanitize_ref};
use super::{Engine, RetryRequest};
use crate::store::{
    AttemptOutcome, DlqDisposition, ItemCounts, ItemFilter, Job, JobEvent, JobRefs, LockProof,
    NewAgentRun, NewItem, RunHolder, Skipped, Store,
};
use crate::types::{ErrorClass, ItemKey, ItemStatus, JobId, JobStatus, Phase};
use crate::workflow::interpolate::Context;
use crate::workflow::{self, MapReduce, OnItemFailure, PhaseSteps, Workflow, WorkflowKind};

pub(super) enum Mode {
    Fresh,
    Resume(DlqMode),
    Retry(RetryRequest),
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub job: JobId,
    pub status: JobStatus,
    pub phase: Phase,
    pub counts: ItemCounts,
    pub error: Option<String>,
    /// The branch holding the job's merged work.
    pub branch: String,
    /// Items found in more than one resume source and run once.
    pub duplicates_removed: usize,
}

/// One run of a job under its lock: the job's [`JobCore`] and the proof every job write takes.
pub(super) struct JobRun<'a> {
    core: JobCore<'a>,
    proof: &'a LockProof,
    /// The job's git remote when it runs with workers (README "Many machines").
    remote: Option<workers::Remote>,
}

impl<'a> std::ops::Deref for JobRun<'a> {
    type Target = JobCore<'a>;
    fn deref(&self) -> &JobCore<'a> {
        &self.core
    }
}

impl std::ops::DerefMut for JobRun<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.core
    }
}

/// What running a job's steps and agents needs, without its lock: the lock holder's run
/// ([`JobRun`]) and a worker serving the job's claims share it.
pub(super) struct JobCore<'a> {
    engine: &'a Engine,
    store: &'a Store,
    job: Job,
    workflow: Workflow,
    ws: Workspace,
    logs: PathBuf,
    env: Vec<(String, String)>,
    /// Values of the workflow's secret env vars and of the variables the operator passes.
    secrets: Vec<String>,
    /// The environment agents start with (before the workflow's `env`).
    agent_env: AgentEnv,
    /// Whether agents of this run are sandboxed, decided once per run.
    verdict: sandbox::Verdict,
    max_parallel: Option<usize>,
    cancel: CancellationToken,
    duplicates_removed: usize,
    /// This run is a retry of a job that had finished its phases.
    reentered: bool,
}

/// Why a phase stopped the job (setup, reduce, merge, the map input, or a spent budget), and the
/// status the job ends with.
struct PhaseFailure {
    message: String,
    status: JobStatus,
}

impl PhaseFailure {
    /// A failure: the job ends `failed`.
    fn new(message: String) -> Self {
        PhaseFailure {
            message,
            status: JobStatus::Failed,
        }
    }
}

impl<'a> JobRun<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        job: Job,
        proof: &'a LockProof,
        max_parallel: Option<usize>,
        remote: Option<workers::Remote>,
    ) -> anyhow::Result<Self> {
        Ok(JobRun {
            core: JobCore::new(engine, job, max_parallel)?,
            proof,
            remote,
        })
    }
}

impl<'a> JobCore<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        job: Job,
        max_parallel: Option<usize>,
    ) -> anyhow::Result<Self> {
        let parsed = workflow::parse(Path::new(&job.workflow_path), &job.workflow_text)
            .context("the job's workflow snapshot no longer parses")?;
        super::agent::check_workflow(
            &parsed.workflow,
            &engine.agent,
            super::agent::running_as_root(),
        )
        .map_err(|e| anyhow!("{}: {e}", job.workflow_path))?;
        let ws = engine.workspace(Path::new(&job.repo_path), job.id);
        let logs = engine.state_dir.join("logs").join(job.id.to_string());
        let agent_env = engine.agents.env.build(std::env::vars());
        let env = resolve_env(&parsed.workflow, &agent_env)?;
        let secrets = secret_values(&parsed.workflow, &env, &agent_env);
        let verdict = sandbox::verdict(engine.agents.sandbox.mode);
        Ok(JobCore {
            engine,
            store: &engine.store,
            ws,
            logs,
            env,
            secrets,
            agent_env,
            verdict,
            workflow: parsed.workflow,
            job,
            max_parallel,
            cancel: engine.cancel.child_token(),
            duplicates_removed: 0,
            reentered: false,
        })
    }

    fn report(&self, p: Progress) {
        self.engine.reporter.report(&p);
    }
}

impl JobRun<'_> {
    async fn event(&self, event: JobEvent) -> anyhow::Result<()> {
        self.store.append_event(self.proof, &event).await?;
        Ok(())
    }

    async fn set_state(
        &mut self,
        status: JobStatus,
        phase: Phase,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        self.store
            .set_job_state(self.proof, status, phase, error)
            .await?;
        if phase != self.job.phase {
            self.event(JobEvent::Phase { phase, status }).await?;
            self.report(Progress::PhaseStarted { phase });
        }
        self.job.status = status;
        self.job.phase = phase;
        Ok(())
    }

    async fn set_refs(&mut self, refs: JobRefs) -> anyhow::Result<()> {
        self.store.set_job_refs(self.proof, &refs).await?;
        self.job.refs = refs;
        Ok(())
    }

    pub(super) async fn run(mut self, mode: Mode) -> anyhow::Result<RunOutcome> {
        let resumed = !matches!(mode, Mode::Fresh);
        let holder = RunHolder::this_process();
        self.event(match &mode {
            Mode::Fresh => JobEvent::JobStarted(holder),
            Mode::Resume(_) => JobEvent::JobResumed(holder),
            Mode::Retry(_) => JobEvent::DlqRetryStarted(holder),
        })
        .await?;
        // A retry of a finished MapReduce job re-enters the map phase: its check run reports
        // it as one, and an interrupted retry resumes there (then reduce runs again).
        let phase = match (&mode, self.job.phase, &self.workflow.kind) {
            (Mode::Retry(_), Phase::Done, WorkflowKind::MapReduce(_)) => {
                self.reentered = true;
                Phase::Map
            }
            (_, phase, _) => phase,
        };
        // Stored before the run is announced, so a check run created for it shows this phase.
        self.store
            .set_job_state(self.proof, JobStatus::Running, phase, None)
            .await?;
        self.report(Progress::JobStarted {
            job: self.job.id,
            workflow: self.workflow.name.clone(),
            resumed,
            lease_epoch: self.proof.epoch(),
        });
        self.set_state(JobStatus::Running, phase, None).await?;

        let span = tracing::info_span!("job", job = %self.job.id);
        let result = self.drive(mode).instrument(span).await;
        let (status, error) = match result {
            Ok(Ok(status)) => (status, None),
            Ok(Err(f)) => (f.status, Some(f.message)),
            Err(e) => {
                // Infrastructure trouble (database, git): record it when we still can.
                let message = format!("{e:#}");
                let phase = self.job.phase;
                let _ = self
                    .set_state(JobStatus::Failed, phase, Some(&message))
                    .await;
                let _ = self.event(JobEvent::JobError { message }).await;
                return Err(e);
            }
        };
        let phase = self.job.phase;
        self.set_state(status, phase, error.as_deref()).await?;
        if status == JobStatus::BudgetExhausted {
            let budget = self.engine.agent.budget(&self.workflow.budget);
            let used = self.store.job_usage(self.job.id).await?.total;
            self.event(JobEvent::BudgetExhausted {
                message: error.clone(),
                spent: used,
                max_cost_usd: budget.max_cost_usd,
                max_tokens: budget.max_tokens,
                max_duration_secs: budget.max_duration.map(|d| d.as_secs_f64()),
                grace_secs: budget.grace().as_secs_f64(),
            })
            .await?;
        }
        let counts = self.store.item_counts(self.job.id).await?;
        self.event(JobEvent::JobFinished {
            status,
            phase,
            error: error.clone(),
            counts,
        })
        .await?;
        if phase == Phase::Done {
            self.ws.remove_all().await?;
        } else {
            // An unfinished job keeps its worktree for resume: setup may have left inputs there
            // that reduce reads. Agent worktrees are never needed again.
            self.ws.remove_pool().await?;
        }
        self.report(Progress::JobFinished {
            counts,
            error: error.clone(),
        });
        Ok(RunOutcome {
            job: self.job.id,
            status,
            phase,
            counts,
            error,
            branch: self.ws.branch.clone(),
            duplicates_removed: self.duplicates_removed,
        })
    }

    /// Runs the phases that are not done yet. The outer error is infrastructure; the inner is a
    /// job failure with its message.
    async fn drive(&mut self, mode: Mode) -> anyhow::Result<Result<JobStatus, PhaseFailure>> {
        let base = self
            .job
            .refs
            .base_commit
            .clone()
            .ok_or_else(|| anyhow!("job {} has no base commit recorded", self.job.id))?;
        match self.verdict.clone() {
            sandbox::Verdict::Enforced { abi } => {
                self.event(JobEvent::Sandbox {
                    enforced: true,
                    landlock_abi: Some(abi),
                    warning: None,
                    refused: None,
                })
                .await?;
            }
            sandbox::Verdict::Unconfined { warning } => {
                tracing::warn!(job = %self.job.id, "{warning}");
                self.event(JobEvent::Sandbox {
                    enforced: false,
                    landlock_abi: None,
                    warning: Some(warning),
                    refused: None,
                })
                .await?;
            }
            sandbox::Verdict::Refused { reason } => {
                self.event(JobEvent::Sandbox {
                    enforced: false,
                    landlock_abi: None,
                    warning: None,
                    refused: Some(reason.clone()),
                })
                .await?;
                return Ok(Err(PhaseFailure::new(reason)));
            }
        }
        let identity = git::ensure_identity(&self.ws.repo).await;
        self.env.extend(identity);
        if self.remote.is_some() {
            self.sync_from_remote(&base).await?;
        }
        self.ws
            .ensure_job_worktree(&base)
            .await
            .context("cannot prepare the job worktree")?;
        let kind = self.workflow.kind.clone();
        match kind {
            WorkflowKind::Standard { commands } => self.run_standard(&commands, &base).await,
            WorkflowKind::MapReduce(mr) => self.run_mapreduce(&mr, mode, &base).await,
        }
    }

    /// A standard workflow: its steps in order. Each completed step is recorded with the
    /// branch head after it and the variables captured so far, so a resume continues at the
    /// first step not completed, from that commit, with those variables.
    async fn run_standard(
        &mut self,
        commands: &[workflow::Step],
        base: &str,
    ) -> anyhow::Result<Result<JobStatus, PhaseFailure>> {
        let done = self.job.refs.steps_done.unwrap_or(0).min(commands.len());
        let from = match &self.job.refs.step_commit {
            Some(commit) if done > 0 => commit.clone(),
            _ => base.to_string(),
        };
        // Whatever an interrupted step changed is discarded: it runs again from the start.
        self.ws.reset_job_to(&from).await?;
        if done > 0 {
            self.event(JobEvent::StepsResumed {
                index: done,
                of: commands.len(),
            })
            .await?;
        }
        let phase = PhaseSteps {
            commands: commands.to_vec(),
            timeout: None,
            rerun: true,
        };
        let mut ctx = self.base_context(&Value::Null);
        let refs = self.job.refs.clone();
        let ran = self
            .run_phase_from("commands", &phase, &mut ctx, done, Some(&refs))
            .await?;
        // The store has the steps' record; the job row read here catches up with it.
        self.job = self.store.get_job(self.job.id).await?;
        if let Err(f) = ran {
            return Ok(Err(f));
        }
        self.set_state(JobStatus::Running, Phase::Done, None)
            .await?;
        Ok(Ok(JobStatus::Succeeded))
    }

    async fn run_mapreduce(
        &mut self,
        mr: &MapReduce,
        mode: Mode,
        base: &str,
    ) -> anyhow::Result<Result<JobStatus, PhaseFailure>> {
        let retrying = matches!(mode, Mode::Retry(_));
        if let Mode::Retry(req) = &mode {
            if let Some(stop) = self.retry(mr, req).await? {
                return Ok(Err(stop));
            }
            if !self.reentered {
                // The DLQ is empty, but the job itself stopped before its end.
                return Ok(Err(PhaseFailure::new(format!(
                    "the job is not finished (phase {}); run `prodigy resume {}`",
                    self.job.phase, self.job.id
                ))));
            }
        } else {
            if self.job.phase == Phase::Setup
                && let Err(f) = self.setup(mr, base).await?
            {
                return Ok(Err(f));
            }
            if self.job.phase == Phase::Map {
                let dlq = match mode {
                    Mode::Resume(d) => Some(d),
                    _ => None,
                };
                let started = std::time::Instant::now();
                let stopped = self.map(mr, dlq).await?;
                crate::metrics::phase_duration("map", started.elapsed().as_secs_f64());
                if let Some(stop) = stopped {
                    return Ok(Err(stop));
                }
            }
        }
        if self.job.phase == Phase::Map {
            self.end_map(mr).await?;
        }
        if self.job.phase == Phase::Reduce {
            if let Err(f) = self.reduce(mr).await? {
                return Ok(Err(f));
            }
            if self.remote.is_some() {
                self.push_head().await?;
            }
            // Reduce saw every item merged so far: `map.successful` and `map.results` read
            // the store, and the branch it ran on holds their commits.
            let refs = JobRefs {
                reduce_merged: Some(self.store.item_counts(self.job.id).await?.merged),
                ..self.job.refs.clone()
            };
            self.set_refs(refs).await?;
            self.set_state(JobStatus::Running, Phase::Done, None)
                .await?;
        }
        let counts = self.store.item_counts(self.job.id).await?;
        if retrying && counts.failed > 0 {
            return Ok(Err(PhaseFailure::new(format!(
                "{} items still failing (see `prodigy dlq list {}`)",
                counts.failed, self.job.id
            ))));
        }
        if counts.failed > 0 && !mr.error_policy.failures_acceptable {
            return Ok(Err(PhaseFailure::new(format!(
                "{} of {} items failed (see `prodigy dlq list {}`)",
                counts.failed, counts.total, self.job.id
            ))));
        }
        Ok(Ok(JobStatus::Succeeded))
    }

    /// The map phase is over: reduce starts on the branch as it is now. When reduce already
    /// ran (a retry or resume re-entered the map phase after it), it runs again only if more
    /// items were merged since and the workflow allows it (`reduce: {rerun: false}` does not).
    async fn end_map(&mut self, mr: &MapReduce) -> anyhow::Result<()> {
        let head = git::head(&self.ws.job_dir).await?;
        let merged = self.store.item_counts(self.job.id).await?.merged;
        let skip = match self.job.refs.reduce_merged {
            None => None,
            Some(seen) if merged <= seen => Some("nothing was merged since reduce ran"),
            Some(_) if !mr.reduce.as_ref().is_none_or(|r| r.rerun) => {
                Some("the workflow sets `reduce: {rerun: false}`")
            }
            Some(_) => None,
        };
        if let Some(reason) = skip {
            self.event(JobEvent::ReduceSkipped {
                reason: reason.to_string(),
            })
            .await?;
            return self.set_state(JobStatus::Running, Phase::Done, None).await;
        }
        let again = self.job.refs.reduce_merged.is_some();
        let refs = JobRefs {
            map_commit: Some(head),
            ..self.job.refs.clone()
        };
        self.set_refs(refs).await?;
        if again {
            self.event(JobEvent::ReduceRerun { merged }).await?;
        }
        self.set_state(JobStatus::Running, Phase::Reduce, None)
            .await
    }
}

impl JobCore<'_> {
    /// Whether the job's budget is spent (usage so far from the store, time since creation),
    /// or its repository's daily cost cap.
    async fn budget_spent(&self) -> anyhow::Result<Option<String>> {
        if let (Some(cap), Some(repo)) = (self.engine.agent.repo_daily_cost_usd, &self.job.repo) {
            let since = super::agent::utc_midnight(chrono::Utc::now());
            let spent = self.store.repo_cost_since(repo, since).await?;
            if let Some(why) = super::agent::repo_daily_spent(repo.as_str(), spent, cap) {
                return Ok(Some(why));
            }
        }
        let budget = self.engine.agent.budget(&self.workflow.budget);
        if budget.is_empty() {
            return Ok(None);
        }
        let used = self.store.job_usage(self.job.id).await?.total;
        let elapsed = (chrono::Utc::now() - self.job.created_at)
            .to_std()
            .unwrap_or_default();
        Ok(super::agent::budget_spent(&budget, &used, elapsed))
    }

    /// Workflow env, the agent environment and what setup captured.
    fn base_context(&self, _extra: &Value) -> Context {
        let mut ctx = Context::new().with_env_map(&self.agent_env.visible_map());
        for (k, v) in &self.env {
            ctx.set_env(k.clone(), v.clone());
        }
        if let Value::Object(vars) = &self.job.vars {
            for (k, v) in vars {
                ctx.set_var(k.clone(), v.clone());
            }
        }
        ctx
    }
}

/// The rows and events that record a scope's agent runs.
fn agent_runs(
    phase: &str,
    item: Option<(&ItemKey, u32)>,
    scope: &AgentScope,
) -> Vec<(NewAgentRun, JobEvent)> {
    scope
        .runs()
        .into_iter()
        .map(|run| {
            let row = NewAgentRun {
                phase: phase.to_string(),
                key: item.map(|(k, _)| k.clone()),
                attempt: item.map(|(_, a)| a),
                session_id: run.session_id.clone(),
                model: run.model.clone(),
                transcript: run.transcript.display().to_string(),
                subtype: run.result.as_ref().map(|r| r.subtype.clone()),
                usage: run.usage,
            };
            let event = JobEvent::AgentFinished {
                phase: phase.to_string(),
                key: item.map(|(k, _)| k.clone()),
                attempt: item.map(|(_, a)| a),
                session_id: run.session_id.clone(),
                model: run.model.clone(),
                json_log_location: run.transcript.clone(),
                subtype: run.result.as_ref().map(|r| r.subtype.clone()),
                usage: run.usage,
            };
            (row, event)
        })
        .collect()
}

fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// The variables setup captured, stored with the job so a resumed map/reduce sees them.
fn ctx_captures(ctx: &Context) -> Value {
    Value::Object(
        ctx.vars()
            .iter()
            .filter(|(k, _)| !k.starts_with("shell.") && !k.starts_with("claude."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}
