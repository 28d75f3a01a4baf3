//! Setup and reduce: a phase's steps, run in the job worktree.

use super::*;

impl JobRun<'_> {
    pub(super) async fn setup(
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
        // Before any agent runs: `${item.field}` paths that none of the first items has.
        let label = match &mr.map.input {
            workflow::MapInput::File(f) | workflow::MapInput::Command(f) => f.clone(),
        };
        let sample = workflow::interpolate::ItemSample::new(label, &items);
        let wrong = workflow::interpolate::check_item_fields(
            &self.workflow,
            &self.job.workflow_text,
            &sample,
        );
        if !wrong.is_empty() {
            let list: Vec<String> = wrong
                .iter()
                .map(|f| {
                    let path = &self.job.workflow_path;
                    format!("{path}:{}:{}: {}", f.line, f.column, f.message)
                })
                .collect();
            return Ok(Err(PhaseFailure::new(format!(
                "map input: the agent template uses item fields the items do not have:\n{}",
                list.join("\n")
            ))));
        }
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
    pub(super) async fn run_phase(
        &self,
        name: &str,
        phase: &PhaseSteps,
        ctx: &mut Context,
    ) -> anyhow::Result<Result<(), PhaseFailure>> {
        self.run_phase_from(name, phase, ctx, 0, None).await
    }

    /// Runs a phase's steps from step `first` (0-based) on. With `record` (the job's refs),
    /// each step that succeeds is recorded before the next one starts: [`JobRun::record_step`].
    pub(super) async fn run_phase_from(
        &self,
        name: &str,
        phase: &PhaseSteps,
        ctx: &mut Context,
        first: usize,
        record: Option<&JobRefs>,
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
        let started = Instant::now();
        let mut result = Ok(());
        for (i, one) in phase.commands.iter().enumerate().skip(first) {
            result = step::run_steps(std::slice::from_ref(one), ctx, &env).await;
            if result.is_err() {
                break;
            }
            if let Some(refs) = record
                && let Err(e) = self.record_step(refs, i, one.line, ctx).await
            {
                self.record_agent_runs(name, None, &scope).await?;
                return Err(e);
            }
        }
        crate::metrics::phase_duration(name, started.elapsed().as_secs_f64());
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

    /// Step `index` of a standard workflow completed: the store gets the steps done, the
    /// branch head and every variable so far, with the event, in one transaction.
    async fn record_step(
        &self,
        refs: &JobRefs,
        index: usize,
        line: usize,
        ctx: &Context,
    ) -> anyhow::Result<()> {
        let commit = git::head(&self.ws.job_dir).await?;
        let refs = JobRefs {
            steps_done: Some(index + 1),
            step_commit: Some(commit.clone()),
            ..refs.clone()
        };
        let vars = Value::Object(
            ctx.vars()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        let event = JobEvent::StepCompleted {
            index,
            line,
            commit,
        };
        self.store
            .complete_step(self.proof, &refs, &vars, &event)
            .await?;
        Ok(())
    }

    pub(super) async fn reduce(
        &mut self,
        mr: &MapReduce,
    ) -> anyhow::Result<Result<(), PhaseFailure>> {
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
}
