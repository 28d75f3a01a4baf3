//! One run of one job, under its lock: setup, map (agents + merge queue), reduce, merge phase.

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

pub(super) struct JobRun<'a> {
    engine: &'a Engine,
    store: &'a Store,
    proof: &'a LockProof,
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
        Ok(JobRun {
            engine,
            store: &engine.store,
            proof,
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
        })
    }

    fn report(&self, p: Progress) {
        self.engine.reporter.report(&p);
    }

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
        self.report(Progress::JobStarted {
            job: self.job.id,
            workflow: self.workflow.name.clone(),
            resumed,
            lease_epoch: self.proof.epoch(),
        });
        let holder = RunHolder::this_process();
        self.event(match &mode {
            Mode::Fresh => JobEvent::JobStarted(holder),
            Mode::Resume(_) => JobEvent::JobResumed(holder),
            Mode::Retry(_) => JobEvent::DlqRetryStarted(holder),
        })
        .await?;
        let phase = self.job.phase;
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

    async fn run_standard(
        &mut self,
        commands: &[workflow::Step],
        base: &str,
    ) -> anyhow::Result<Result<JobStatus, PhaseFailure>> {
        // A standard workflow is one phase: after an interruption it runs again from the base.
        self.ws.reset_job_to(base).await?;
        let phase = PhaseSteps {
            commands: commands.to_vec(),
            timeout: None,
        };
        let mut ctx = self.base_context(&Value::Null);
        if let Err(f) = self.run_phase("commands", &phase, &mut ctx).await? {
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
        if let Mode::Retry(req) = &mode {
            return self.retry(mr, req).await;
        }
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
            if let Some(stop) = self.map(mr, dlq).await? {
                return Ok(Err(stop));
            }
            let map_commit = git::head(&self.ws.job_dir).await?;
            let refs = JobRefs {
                map_commit: Some(map_commit),
                ..self.job.refs.clone()
            };
            self.set_refs(refs).await?;
            self.set_state(JobStatus::Running, Phase::Reduce, None)
                .await?;
        }
        if self.job.phase == Phase::Reduce {
            if let Err(f) = self.reduce(mr).await? {
                return Ok(Err(f));
            }
            self.set_state(JobStatus::Running, Phase::Done, None)
                .await?;
        }
        let counts = self.store.item_counts(self.job.id).await?;
        if counts.failed > 0 && !mr.error_policy.failures_acceptable {
            return Ok(Err(PhaseFailure::new(format!(
                "{} of {} items failed (see `prodigy dlq list {}`)",
                counts.failed, counts.total, self.job.id
            ))));
        }
        Ok(Ok(JobStatus::Succeeded))
    }

    // ---- setup -----------------------------------------------------------------------------

    async fn setup(
        &mut self,
        mr: &MapReduce,
        base: &str,
    ) -> anyhow::Result<Result<(), PhaseFailure>> {
        // Setup not recorded done: whatever an interrupted setup committed is discarded.
        self.ws.reset_job_to(base).await?;
        let mut ctx = self.base_context(&Value::Null);
        if let Some(setup) = &mr.setup
            && let Err(f) = self.run_phase("setup", setup, &mut ctx).await?
        {
            return Ok(Err(f));
        }
        let items = match workflow::input::load_items_in(&mr.map, &self.ws.job_dir, &ctx).await {
            Ok(items) => items,
            Err(e) => {
                return Ok(Err(PhaseFailure::new(format!("map input: {e}"))));
            }
        };
        let mut seen = std::collections::HashSet::new();
        let mut new_items = Vec::with_capacity(items.len());
        let mut duplicates = 0usize;
        for data in items {
            let key = workflow::input::item_key(&data, mr.map.item_id.as_deref());
            if !seen.insert(key.clone()) {
                duplicates += 1;
                continue;
            }
            new_items.push(NewItem {
                key,
                position: new_items.len() as i64,
                data,
            });
        }
        self.store.insert_items(self.proof, &new_items).await?;
        self.event(JobEvent::ItemsLoaded {
            count: new_items.len(),
            duplicates_removed: duplicates,
        })
        .await?;
        if duplicates > 0 {
            tracing::warn!(
                duplicates,
                "map input had items with the same key; the first of each was kept"
            );
        }
        let setup_commit = git::head(&self.ws.job_dir).await?;
        self.store
            .set_job_vars(self.proof, &ctx_captures(&ctx))
            .await?;
        self.job.vars = ctx_captures(&ctx);
        let refs = JobRefs {
            setup_commit: Some(setup_commit),
            ..self.job.refs.clone()
        };
        self.set_refs(refs).await?;
        self.set_state(JobStatus::Running, Phase::Map, None).await?;
        Ok(Ok(()))
    }

    /// Runs a setup/reduce/merge phase's steps in the job worktree.
    async fn run_phase(
        &self,
        name: &str,
        phase: &PhaseSteps,
        ctx: &mut Context,
    ) -> anyhow::Result<Result<(), PhaseFailure>> {
        let log = self.logs.join(format!("{name}.log"));
        let scope = AgentScope::new(self.workflow.agent.clone(), self.engine.agent.clone(), &log);
        let confined = self.confine(&self.ws.job_dir, name)?;
        let env = StepEnv {
            cwd: &self.ws.job_dir,
            log: &log,
            env: &self.env,
            claude_bin: &self.engine.claude_bin,
            cancel: &self.cancel,
            deadline: phase.timeout.map(|t| Instant::now() + t),
            secrets: &self.secrets,
            agent: &scope,
            base_env: &confined.base_env,
            sandbox: confined.plan.as_ref(),
        };
        self.event(JobEvent::PhaseStepsStarted {
            phase: name.to_string(),
            steps: phase.commands.len(),
            log: log.clone(),
        })
        .await?;
        let result = step::run_steps(&phase.commands, ctx, &env).await;
        self.record_agent_runs(name, None, &scope).await?;
        match result {
            Ok(()) => {
                self.event(JobEvent::PhaseStepsFinished {
                    phase: name.to_string(),
                })
                .await?;
                Ok(Ok(()))
            }
            Err(f) => {
                let message = if f.cancelled() {
                    format!(
                        "{name} was interrupted; resume with `prodigy resume {}`",
                        self.job.id
                    )
                } else {
                    format!("{name} failed: {} (log: {})", f.message(), log.display())
                };
                self.event(JobEvent::PhaseStepsFailed {
                    phase: name.to_string(),
                    line: f.line,
                    class: f.class(),
                    message: message.clone(),
                })
                .await?;
                Ok(Err(PhaseFailure::new(message)))
            }
        }
    }

    // ---- map -------------------------------------------------------------------------------

    /// Runs the map phase's remaining items. Returns why it stopped early, if it did.
    async fn map(
        &mut self,
        mr: &MapReduce,
        dlq: Option<DlqMode>,
    ) -> anyhow::Result<Option<PhaseFailure>> {
        self.reconcile().await?;
        let items = self
            .store
            .items(self.job.id, &ItemFilter::default())
            .await?;
        let dlq_rows = self.store.dlq(Some(self.job.id)).await?;
        let candidates = match dlq {
            None => items
                .iter()
                .filter(|i| i.status == ItemStatus::Pending)
                .map(candidate)
                .collect(),
            Some(mode) => {
                let (pending, failed, dlq_list) = plan::build_from_items(&items, &dlq_rows);
                let opts = plan::ResumeOptions {
                    dlq: mode,
                    max_retries: mr.error_policy.max_retries,
                };
                let p = plan::plan(pending, failed, dlq_list, &opts);
                if p.duplicates_removed > 0 {
                    tracing::info!(
                        count = p.duplicates_removed,
                        "resume found items in several sources; each runs once"
                    );
                }
                self.duplicates_removed = p.duplicates_removed;
                self.event(JobEvent::ResumePlanned {
                    to_run: p.run.len(),
                    duplicates_removed: p.duplicates_removed,
                    skipped: p
                        .skipped
                        .iter()
                        .map(|(key, reason)| Skipped {
                            key: key.clone(),
                            reason: format!("{reason:?}"),
                        })
                        .collect(),
                })
                .await?;
                p.run
            }
        };
        self.run_items(mr, candidates).await
    }

    async fn retry(
        &mut self,
        mr: &MapReduce,
        req: &RetryRequest,
    ) -> anyhow::Result<Result<JobStatus, PhaseFailure>> {
        if self.job.refs.setup_commit.is_none() {
            return Ok(Err(PhaseFailure::new(
                "the job never finished setup, so it has no DLQ items to retry; use `prodigy resume`".into(),
            )));
        }
        self.reconcile().await?;
        let rows = self.store.dlq(Some(self.job.id)).await?;
        let positions: std::collections::HashMap<ItemKey, i64> = self
            .store
            .items(self.job.id, &ItemFilter::default())
            .await?
            .into_iter()
            .map(|i| (i.key, i.position))
            .collect();
        let candidates: Vec<Candidate> = rows
            .iter()
            .filter(|r| req.items.is_empty() || req.items.contains(&r.key))
            .filter(|r| req.error_class.is_none_or(|c| c == r.error_class))
            .map(|r| Candidate {
                key: r.key.clone(),
                data: r.data.clone(),
                source: plan::Source::Dlq,
                attempts: r.failure_count,
                position: positions.get(&r.key).copied().unwrap_or(0),
            })
            .collect();
        self.event(JobEvent::DlqRetryPlanned {
            to_run: candidates.len(),
        })
        .await?;
        if let Some(stop) = self.run_items(mr, candidates).await? {
            return Ok(Err(stop));
        }
        let counts = self.store.item_counts(self.job.id).await?;
        if counts.failed > 0 {
            return Ok(Err(PhaseFailure::new(format!(
                "{} items still failing (see `prodigy dlq list {}`)",
                counts.failed, self.job.id
            ))));
        }
        if self.job.phase != Phase::Done {
            // The DLQ is empty, but the job itself stopped before its end.
            return Ok(Err(PhaseFailure::new(format!(
                "the job is not finished (phase {}); run `prodigy resume {}`",
                self.job.phase, self.job.id
            ))));
        }
        // A job that had finished its phases is done when its DLQ is empty again.
        Ok(Ok(JobStatus::Succeeded))
    }

    /// Brings the store in line with the repository after an interruption: attempts left open
    /// are closed, and succeeded items whose commit already reached the job branch are marked
    /// merged, so nothing is merged twice; the rest of the succeeded-unmerged are merged now.
    async fn reconcile(&mut self) -> anyhow::Result<()> {
        let interrupted = self.store.recover_interrupted(self.proof).await?;
        if interrupted > 0 {
            self.event(JobEvent::ItemsInterrupted { count: interrupted })
                .await?;
        }
        let unmerged = self
            .store
            .items(
                self.job.id,
                &ItemFilter {
                    status: Some(ItemStatus::Succeeded),
                    merged: Some(false),
                    keys: None,
                },
            )
            .await?;
        for item in unmerged {
            let Some(commit) = item.commit.clone() else {
                self.store.mark_merged(self.proof, &item.key, None).await?;
                continue;
            };
            if git::is_ancestor(&self.ws.job_dir, &commit, "HEAD")
                .await
                .unwrap_or(false)
            {
                let merged = JobEvent::ItemMerged {
                    key: item.key.clone(),
                    commit: commit.clone(),
                    merge_commit: None,
                    found_on_resume: true,
                };
                self.store
                    .mark_merged(self.proof, &item.key, Some(&merged))
                    .await?;
            } else {
                self.merge(&item.key, item.attempts, &commit).await?;
            }
        }
        Ok(())
    }

    async fn run_items(
        &mut self,
        mr: &MapReduce,
        candidates: Vec<Candidate>,
    ) -> anyhow::Result<Option<PhaseFailure>> {
        let total = self.store.item_counts(self.job.id).await?.total;
        self.report(Progress::ItemsPlanned {
            to_run: candidates.len(),
            total,
        });
        if candidates.is_empty() {
            return Ok(None);
        }
        let start = self
            .job
            .refs
            .setup_commit
            .clone()
            .ok_or_else(|| anyhow!("job {} has no setup commit recorded", self.job.id))?;
        let parallel = self
            .max_parallel
            .unwrap_or(mr.map.max_parallel)
            .clamp(1, candidates.len());
        let slots = self
            .ws
            .create_pool(parallel, &start)
            .await
            .context("cannot create the agent worktrees")?;
        // An item whose last attempt conflicted would conflict again from the setup commit;
        // it starts from the job branch as it is now, on top of the work merged since.
        let conflicted: HashSet<ItemKey> = self
            .store
            .dlq(Some(self.job.id))
            .await?
            .into_iter()
            .filter(|r| r.error_class == ErrorClass::MergeConflict)
            .map(|r| r.key)
            .collect();
        let sched = Scheduler {
            conflicted,
            queue: Mutex::new(candidates.into()),
            total: total as usize,
            failed: AtomicUsize::new(0),
            processed: AtomicUsize::new(0),
            stop: Mutex::new(None),
            budget_hit: CancellationToken::new(),
            first: Mutex::new(Vec::new()),
            merge_lock: tokio::sync::Mutex::new(()),
            start,
        };
        let this = &*self;
        // Agents of this run stop when the job is cancelled, or when the budget's grace ends.
        let agents = self.cancel.child_token();
        let workers = slots
            .iter()
            .map(|slot| this.worker(mr, slot, &sched, &agents));
        let results = tokio::select! {
            results = futures_util::future::join_all(workers) => results,
            () = this.budget_watch(&sched, &agents) => unreachable!("the watch never ends"),
        };
        for r in results {
            r?;
        }
        if self.cancel.is_cancelled() {
            self.store.recover_interrupted(self.proof).await?;
            return Ok(Some(PhaseFailure::new(format!(
                "interrupted; resume with `prodigy resume {}`",
                self.job.id
            ))));
        }
        Ok(sched
            .stop
            .into_inner()
            .expect("no worker panicked holding the lock"))
    }

    /// Waits for the budget to run out (a worker finds it spent, or the wall-time limit passes),
    /// gives running agents the budget's grace period, then stops them. Never returns.
    async fn budget_watch(&self, sched: &Scheduler, agents: &CancellationToken) {
        let budget = self.engine.agent.budget(&self.workflow.budget);
        let wall = budget.max_duration.map(|max| {
            let elapsed = (chrono::Utc::now() - self.job.created_at)
                .to_std()
                .unwrap_or_default();
            tokio::time::Instant::now() + max.saturating_sub(elapsed)
        });
        let wall_time = async {
            match wall {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sched.budget_hit.cancelled() => {}
            () = wall_time => {
                if let Ok(Some(why)) = self.budget_spent().await {
                    sched.stop_for_budget(self.budget_message(&why, budget.grace()));
                }
            }
        }
        if sched.budget_hit.is_cancelled() {
            tokio::time::sleep(budget.grace()).await;
            agents.cancel();
        }
        std::future::pending().await
    }

    /// The job's error when its budget ran out: what was spent, and how to continue.
    fn budget_message(&self, why: &str, grace: std::time::Duration) -> String {
        format!(
            "budget exhausted: {why}. Nothing more was dispatched; agents still running had {} to \
             finish, then were stopped and their items left pending. \
             `prodigy resume {} --budget <USD>` continues with a raised budget",
            readable_duration(grace),
            self.job.id
        )
    }

    async fn worker(
        &self,
        mr: &MapReduce,
        slot: &Slot,
        sched: &Scheduler,
        agents: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            if self.cancel.is_cancelled() || sched.stopped() {
                return Ok(());
            }
            if let Some(why) = self.budget_spent().await? {
                let grace = self.engine.agent.budget(&self.workflow.budget).grace();
                sched.stop_for_budget(self.budget_message(&why, grace));
                return Ok(());
            }
            let Some(c) = sched.next() else {
                return Ok(());
            };
            let span = tracing::info_span!("item", job = %self.job.id, key = %c.key);
            let failed = self
                .run_item(mr, slot, sched, &c, agents)
                .instrument(span)
                .await?;
            let processed = sched.processed.fetch_add(1, Ordering::SeqCst) + 1;
            if failed {
                let failures = sched.failed.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(why) = should_stop(mr, failures, processed) {
                    sched.stop_with(why);
                }
            }
        }
    }

    /// Runs one item in a slot; returns whether it failed.
    async fn run_item(
        &self,
        mr: &MapReduce,
        slot: &Slot,
        sched: &Scheduler,
        c: &Candidate,
        agents: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let key = &c.key;
        let log_of = |attempt: u32| {
            self.logs
                .join("items")
                .join(sanitize_ref(&key.0))
                .join(format!("attempt-{attempt}.log"))
        };
        let attempt = self
            .store
            .start_attempt(
                self.proof,
                key,
                &slot.dir.display().to_string(),
                &slot.branch,
                |attempt| JobEvent::ItemStarted {
                    key: key.clone(),
                    attempt,
                    worktree: slot.dir.clone(),
                    log: log_of(attempt),
                },
            )
            .await?;
        self.report(Progress::ItemStarted {
            key: key.clone(),
            attempt,
        });
        let log = log_of(attempt);
        let scope = AgentScope::new(self.workflow.agent.clone(), self.engine.agent.clone(), &log);

        let start = if sched.conflicted.contains(key) {
            let _serial = sched.merge_lock.lock().await;
            git::head(&self.ws.job_dir).await?
        } else {
            sched.start.clone()
        };
        // Rate limits and overload are the API's state, not the item's: the item runs again
        // after a back-off, in the same attempt.
        let mut transient = 0u32;
        let result = loop {
            let prepared = match slot.prepare(&start).await {
                Err(e) => Err(e.to_string()),
                Ok(()) => self
                    .confine(&slot.dir, &format!("agent-{}", slot.index))
                    .map_err(|e| format!("{e:#}")),
            };
            let tried = match prepared {
                Err(message) => Err(StepFailure {
                    line: mr.map.agent_template_line,
                    what: "prepare the agent worktree".into(),
                    facts: FailureFacts {
                        exit_code: None,
                        signal: None,
                        timed_out: false,
                        message,
                        stage: FailureStage::Worktree,
                    },
                }),
                Ok(confined) => {
                    let mut ctx = self.base_context(&Value::Null).with_item(
                        &c.data,
                        c.position as usize,
                        sched.total,
                        key,
                    );
                    let env = StepEnv {
                        cwd: &slot.dir,
                        log: &log,
                        env: &self.env,
                        claude_bin: &self.engine.claude_bin,
                        cancel: agents,
                        deadline: mr.map.agent_timeout.map(|t| Instant::now() + t),
                        secrets: &self.secrets,
                        agent: &scope,
                        base_env: &confined.base_env,
                        sandbox: confined.plan.as_ref(),
                    };
                    step::run_steps(&mr.map.agent_template, &mut ctx, &env)
                        .await
                        .map(|()| ctx)
                }
            };
            if let Err(f) = &tried
                && let FailureStage::Agent(a) = f.facts.stage
                && a.is_transient()
                && transient < self.engine.api_backoff.max_retries
                && !agents.is_cancelled()
            {
                transient += 1;
                let hint = scope.runs().last().and_then(|r| r.last_retry_delay_ms);
                let delay = self.engine.api_backoff.delay(transient, hint);
                step::append_log(
                    &log,
                    &format!(
                        "== the AI API is {} ({}); running the item again in {:.1}s (back-off {transient} of {}), \
                         which does not count as an attempt\n",
                        if a == classify::AgentFailure::RateLimited {
                            "rate-limiting"
                        } else {
                            "overloaded"
                        },
                        f.facts.message.lines().next().unwrap_or(""),
                        delay.as_secs_f64(),
                        self.engine.api_backoff.max_retries
                    ),
                );
                self.event(JobEvent::AgentBackoff {
                    key: key.clone(),
                    attempt,
                    retry: transient,
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                })
                .await?;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = agents.cancelled() => {}
                }
                continue;
            }
            break tried;
        };
        self.record_agent_runs("map", Some((key, attempt)), &scope)
            .await?;

        match result {
            // Interrupted: left running, reconciled on resume.
            Err(f) if f.cancelled() && self.cancel.is_cancelled() => Ok(false),
            Err(f) if f.cancelled() => {
                // Stopped at the end of the budget's grace: not the item's failure.
                let message = "stopped: the job's budget ran out and the grace period ended";
                step::append_log(&log, &format!("== {message}; the item is pending again\n"));
                let stopped = JobEvent::ItemStopped {
                    key: key.clone(),
                    attempt,
                    reason: "budget_exhausted".into(),
                };
                self.store
                    .release_attempt(self.proof, key, attempt, message, &stopped)
                    .await?;
                Ok(false)
            }
            Err(f) => {
                if let FailureStage::Agent(a) = f.facts.stage
                    && a.stops_the_job()
                {
                    sched.stop_with(format!(
                        "the AI API refused this job's credentials ({}): every item would fail the \
                         same way, so nothing more is dispatched. Check ANTHROPIC_API_KEY (and the \
                         account's billing), then `prodigy resume {}`. Item {key}: {}",
                        if a == classify::AgentFailure::Billing {
                            "billing"
                        } else {
                            "authentication"
                        },
                        self.job.id,
                        f.facts.message.lines().next().unwrap_or("")
                    ));
                }
                sched.finished(
                    mr,
                    Some((f.class(), classify::signature(f.class(), &f.facts.message))),
                );
                self.fail_item(
                    mr,
                    ItemRun {
                        slot,
                        start: &start,
                        key,
                        attempt,
                        log: &log,
                    },
                    &f,
                )
                .await?;
                Ok(true)
            }
            Ok(ctx) => {
                sched.finished(mr, None);
                let head = git::head(&slot.dir).await?;
                let commit = (head != start).then_some(head);
                let dirty = !git::is_clean(&slot.dir).await.unwrap_or(true);
                if dirty {
                    step::append_log(
                        &log,
                        "== note: uncommitted changes in the agent worktree were discarded; only commits are merged\n",
                    );
                }
                let result = json!({
                    "item_id": key,
                    "status": "success",
                    "output": ctx.lookup("shell.output").or_else(|| ctx.lookup("claude.output")),
                    "commit": commit,
                });
                let outcome = AttemptOutcome {
                    success: true,
                    exit_code: Some(0),
                    error_class: None,
                    signature: None,
                    message: None,
                    log_path: Some(log.display().to_string()),
                    commit: commit.clone(),
                    result: Some(result),
                    dlq: None,
                };
                let succeeded = JobEvent::ItemSucceeded {
                    key: key.clone(),
                    attempt,
                    commit: commit.clone(),
                };
                self.store
                    .finish_attempt(self.proof, key, attempt, &outcome, &succeeded)
                    .await?;
                self.report(Progress::ItemSucceeded { key: key.clone() });
                let _serial = sched.merge_lock.lock().await;
                match commit {
                    None => {
                        self.store.mark_merged(self.proof, key, None).await?;
                        self.report(Progress::ItemMerged { key: key.clone() });
                        Ok(false)
                    }
                    Some(commit) => Ok(!self.merge(key, attempt, &commit).await?),
                }
            }
        }
    }

    /// Merges an item's commit into the job branch; a conflict fails the item (MergeConflict)
    /// and leaves the branch as it was. Returns whether it merged. Callers serialize merges.
    async fn merge(&self, key: &ItemKey, attempt: u32, commit: &str) -> anyhow::Result<bool> {
        let message = format!("prodigy: merge item {key}");
        match git::merge_no_ff(&self.ws.job_dir, commit, &message).await? {
            git::Merge::Merged {
                commit: merge_commit,
            } => {
                let merged = JobEvent::ItemMerged {
                    key: key.clone(),
                    commit: commit.to_string(),
                    merge_commit: Some(merge_commit.clone()),
                    found_on_resume: false,
                };
                self.store
                    .mark_merged(self.proof, key, Some(&merged))
                    .await?;
                self.report(Progress::ItemMerged { key: key.clone() });
                Ok(true)
            }
            git::Merge::Conflict { files, message } => {
                let text = format!(
                    "merge conflict in {}: {}",
                    if files.is_empty() {
                        "the work tree".to_string()
                    } else {
                        files.join(", ")
                    },
                    last_line(&message)
                );
                let facts = FailureFacts {
                    exit_code: None,
                    signal: None,
                    timed_out: false,
                    message: text.clone(),
                    stage: FailureStage::Merge,
                };
                let class = classify::classify(&facts);
                let outcome = AttemptOutcome {
                    success: false,
                    exit_code: None,
                    error_class: Some(class),
                    signature: Some(classify::signature(class, &text)),
                    message: Some(text.clone()),
                    log_path: None,
                    commit: Some(commit.to_string()),
                    result: None,
                    dlq: Some(DlqDisposition {
                        reprocessable: classify::is_reprocessable(class),
                    }),
                };
                let failed = JobEvent::ItemFailed {
                    key: key.clone(),
                    attempt,
                    class,
                    message: text.clone(),
                    exit_code: None,
                    log: None,
                    artifact: None,
                };
                self.store
                    .finish_attempt(self.proof, key, attempt, &outcome, &failed)
                    .await?;
                self.report(Progress::ItemFailed {
                    key: key.clone(),
                    class,
                    message: text,
                });
                Ok(false)
            }
        }
    }

    async fn fail_item(
        &self,
        mr: &MapReduce,
        at: ItemRun<'_>,
        f: &StepFailure,
    ) -> anyhow::Result<()> {
        let ItemRun {
            slot,
            start,
            key,
            attempt,
            log,
        } = at;
        let class = f.class();
        let message = f.message();
        step::append_log(log, &format!("== item failed ({class}): {message}\n"));
        // Keep what the agent committed, for `dlq show`, without leaving a branch behind.
        let artifact = match git::head(&slot.dir).await {
            Ok(head) if head != start => self.ws.keep_artifact(slot, &key.0, attempt).await.ok(),
            _ => None,
        };
        let dlq = match mr.error_policy.on_item_failure {
            OnItemFailure::Skip => None,
            OnItemFailure::Dlq | OnItemFailure::Stop => Some(DlqDisposition {
                reprocessable: classify::is_reprocessable(class),
            }),
        };
        let outcome = AttemptOutcome {
            success: false,
            exit_code: f.facts.exit_code,
            error_class: Some(class),
            signature: Some(classify::signature(class, &f.facts.message)),
            message: Some(message.clone()),
            log_path: Some(log.display().to_string()),
            commit: None,
            result: Some(
                json!({"item_id": key, "status": "failed", "error": message, "artifact": artifact}),
            ),
            dlq,
        };
        let failed = JobEvent::ItemFailed {
            key: key.clone(),
            attempt,
            class,
            message: message.clone(),
            exit_code: f.facts.exit_code,
            log: Some(log.to_path_buf()),
            artifact: artifact.clone(),
        };
        self.store
            .finish_attempt(self.proof, key, attempt, &outcome, &failed)
            .await?;
        self.report(Progress::ItemFailed {
            key: key.clone(),
            class,
            message,
        });
        Ok(())
    }

    // ---- reduce ----------------------------------------------------------------------------

    async fn reduce(&mut self, mr: &MapReduce) -> anyhow::Result<Result<(), PhaseFailure>> {
        // Reduce not recorded done: whatever an interrupted reduce committed is discarded.
        let map_commit = self
            .job
            .refs
            .map_commit
            .clone()
            .ok_or_else(|| anyhow!("job {} has no map commit recorded", self.job.id))?;
        self.ws.reset_job_to(&map_commit).await?;
        let items = self
            .store
            .items(self.job.id, &ItemFilter::default())
            .await?;
        let successful = items
            .iter()
            .filter(|i| i.status == ItemStatus::Succeeded)
            .count();
        let failed = items
            .iter()
            .filter(|i| i.status == ItemStatus::Failed)
            .count();
        let results: Vec<Value> = items.iter().filter_map(|i| i.result.clone()).collect();
        let mut ctx = self.base_context(&Value::Null);
        ctx.set_var("map.successful", json!(successful));
        ctx.set_var("map.failed", json!(failed));
        ctx.set_var("map.total", json!(items.len()));
        ctx.set_var("map.results", Value::Array(results));
        if let Some(reduce) = &mr.reduce
            && let Err(f) = self.run_phase("reduce", reduce, &mut ctx).await?
        {
            return Ok(Err(f));
        }
        if let Some(merge) = &mr.merge {
            ctx.set_var("merge.worktree", json!(self.ws.job_dir));
            ctx.set_var("merge.source_branch", json!(self.ws.branch));
            ctx.set_var(
                "merge.target_branch",
                json!(
                    git::git(&self.ws.repo, &["rev-parse", "--abbrev-ref", "HEAD"])
                        .await
                        .unwrap_or_default()
                ),
            );
            ctx.set_var("merge.session_id", json!(self.job.id));
            if let Err(f) = self.run_phase("merge", merge, &mut ctx).await? {
                return Ok(Err(f));
            }
        }
        Ok(Ok(()))
    }

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

    /// Stores the agent runs of a phase or an attempt and announces their usage.
    async fn record_agent_runs(
        &self,
        phase: &str,
        item: Option<(&ItemKey, u32)>,
        scope: &AgentScope,
    ) -> anyhow::Result<()> {
        for run in scope.runs() {
            self.store
                .record_agent_run(
                    self.proof,
                    &NewAgentRun {
                        phase: phase.to_string(),
                        key: item.map(|(k, _)| k.clone()),
                        attempt: item.map(|(_, a)| a),
                        session_id: run.session_id.clone(),
                        model: run.model.clone(),
                        transcript: run.transcript.display().to_string(),
                        subtype: run.result.as_ref().map(|r| r.subtype.clone()),
                        usage: run.usage,
                    },
                )
                .await?;
            self.event(JobEvent::AgentFinished {
                phase: phase.to_string(),
                key: item.map(|(k, _)| k.clone()),
                attempt: item.map(|(_, a)| a),
                session_id: run.session_id.clone(),
                model: run.model.clone(),
                json_log_location: run.transcript.clone(),
                subtype: run.result.as_ref().map(|r| r.subtype.clone()),
                usage: run.usage,
            })
            .await?;
        }
        Ok(())
    }

    /// The environment and sandbox of the commands that run in `worktree`, with a private
    /// temporary directory that is removed when the returned value is dropped.
    fn confine(&self, worktree: &Path, label: &str) -> anyhow::Result<Confined> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("prodigy-{}-{label}-", self.job.id))
            .tempdir()
            .context("cannot create the agent's temporary directory")?;
        let mut base_env: Vec<(String, String)> = self
            .agent_env
            .base
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        base_env.retain(|(k, _)| k != "TMPDIR");
        base_env.push(("TMPDIR".into(), tmp.path().display().to_string()));
        let plan = match self.verdict {
            sandbox::Verdict::Enforced { .. } => {
                let settings = &self.engine.agents.sandbox;
                let home = self.agent_env.base.get("HOME").map(PathBuf::from);
                let paths = sandbox::AgentPaths {
                    worktree,
                    tmp: tmp.path(),
                    home: home.as_deref(),
                    claude_bin: &self.engine.claude_bin,
                    path: self.agent_env.base.get("PATH").map(String::as_str),
                    state_dir: &self.engine.state_dir,
                };
                Some(sandbox::Plan::for_agent(settings, &paths).with_context(|| {
                    format!("cannot plan the sandbox for {}", worktree.display())
                })?)
            }
            _ => None,
        };
        Ok(Confined {
            _tmp: tmp,
            base_env,
            plan,
        })
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

fn candidate(i: &crate::store::WorkItem) -> Candidate {
    Candidate {
        key: i.key.clone(),
        data: i.data.clone(),
        source: plan::Source::Pending,
        attempts: i.attempts,
        position: i.position,
    }
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

/// Every value masked in what a job prints: the workflow's `env` entries marked `secret`
/// (`env` is the resolved workflow env) and the variables the operator passes.
fn secret_values(wf: &Workflow, env: &[(String, String)], agent_env: &AgentEnv) -> Vec<String> {
    // Short values would mask ordinary text everywhere; a secret that short is no secret.
    let mut secrets: Vec<String> = wf
        .env
        .iter()
        .filter(|v| v.secret)
        .filter_map(|v| env.iter().find(|(k, _)| *k == v.name))
        .map(|(_, value)| value.clone())
        .filter(|value| value.len() >= 4)
        .collect();
    secrets.extend(agent_env.secrets.iter().cloned());
    secrets
}

/// The values a job of `workflow_text` will mask, computed before it runs: the Action
/// registers them with `::add-mask::` before it prints anything else.
pub fn masked_values(
    policy: &super::AgentPolicy,
    workflow_path: &Path,
    workflow_text: &str,
) -> anyhow::Result<Vec<String>> {
    let parsed = workflow::parse(workflow_path, workflow_text)?;
    let agent_env = policy.env.build(std::env::vars());
    let env = resolve_env(&parsed.workflow, &agent_env)?;
    Ok(secret_values(&parsed.workflow, &env, &agent_env))
}

/// What one phase or agent runs with: see [`JobRun::confine`].
struct Confined {
    _tmp: tempfile::TempDir,
    base_env: Vec<(String, String)>,
    plan: Option<sandbox::Plan>,
}

/// Resolves workflow env values against what agents may see: a workflow (which a pull request
/// can change) cannot copy prodigy's own secrets into an agent's environment.
fn resolve_env(wf: &Workflow, agent_env: &AgentEnv) -> anyhow::Result<Vec<(String, String)>> {
    let mut ctx = Context::new().with_env_map(&agent_env.visible_map());
    let mut out = Vec::new();
    for var in &wf.env {
        let value = crate::workflow::interpolate::render_text(&var.value, &ctx)
            .with_context(|| format!("workflow env {}", var.name))?;
        ctx.set_env(var.name.clone(), value.clone());
        out.push((var.name.clone(), value));
    }
    Ok(out)
}

/// The error policy's verdict after a failure: stop the map phase, and why.
fn should_stop(mr: &MapReduce, failures: usize, processed: usize) -> Option<String> {
    let p = &mr.error_policy;
    if p.on_item_failure == OnItemFailure::Stop || !p.continue_on_failure {
        return Some("an item failed and the error policy stops the map phase on failure".into());
    }
    if let Some(max) = p.max_failures
        && failures >= max
    {
        return Some(format!(
            "{failures} items failed, reaching error_policy.max_failures ({max})"
        ));
    }
    if let Some(t) = p.failure_threshold {
        let ratio = failures as f64 / processed.max(1) as f64;
        if processed >= 5 && ratio > t {
            return Some(format!(
                "{failures} of {processed} items failed ({:.0}%), above error_policy.failure_threshold ({:.0}%)",
                ratio * 100.0,
                t * 100.0
            ));
        }
    }
    None
}

/// `90s` as people read it: `1m30s`.
fn readable_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// One attempt of one item in one slot.
struct ItemRun<'a> {
    slot: &'a Slot,
    /// The commit the slot started from.
    start: &'a str,
    key: &'a ItemKey,
    attempt: u32,
    log: &'a Path,
}

struct Scheduler {
    /// Items whose last failure was a merge conflict.
    conflicted: HashSet<ItemKey>,
    queue: Mutex<VecDeque<Candidate>>,
    total: usize,
    failed: AtomicUsize,
    processed: AtomicUsize,
    stop: Mutex<Option<PhaseFailure>>,
    /// Cancelled when the budget runs out: the grace period of running agents starts.
    budget_hit: CancellationToken,
    /// How the first attempts of this run ended (None: success), for the circuit breaker.
    first: Mutex<Vec<Option<(ErrorClass, String)>>>,
    /// Merges into the job worktree happen one at a time: the merge queue.
    merge_lock: tokio::sync::Mutex<()>,
    /// The commit every agent starts from.
    start: String,
}

impl Scheduler {
    fn next(&self) -> Option<Candidate> {
        self.queue.lock().expect("queue lock").pop_front()
    }
    fn stopped(&self) -> bool {
        self.stop.lock().expect("stop lock").is_some()
    }
    fn stop_with(&self, why: String) {
        self.stop
            .lock()
            .expect("stop lock")
            .get_or_insert(PhaseFailure::new(why));
    }
    /// Stops dispatching because the budget ran out (unless something else stopped it first).
    fn stop_for_budget(&self, why: String) {
        let mut stop = self.stop.lock().expect("stop lock");
        if stop.is_none() {
            *stop = Some(PhaseFailure {
                message: why,
                status: JobStatus::BudgetExhausted,
            });
            self.budget_hit.cancel();
        }
    }

    /// Notes how an attempt ended; opens the circuit when the first N all failed alike.
    fn finished(&self, mr: &MapReduce, failure: Option<(ErrorClass, String)>) {
        let Some(n) = mr.error_policy.circuit_breaker else {
            return;
        };
        let mut first = self.first.lock().expect("first lock");
        if first.len() >= n {
            return;
        }
        first.push(failure);
        if first.len() == n
            && let Some(Some((class, sig))) = first.first()
            && first
                .iter()
                .all(|f| f.as_ref().is_some_and(|(_, s)| s == sig))
        {
            let why = format!(
                "circuit breaker open: the first {n} finished attempts all failed the same way \
                 ({class}, signature {}), so nothing more is dispatched; fix the cause, then \
                 `prodigy resume`",
                &sig[..sig.len().min(12)]
            );
            drop(first);
            self.stop_with(why);
        }
    }
}
