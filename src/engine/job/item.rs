//! One attempt of one item: the agent in its slot, its commit, the merge queue, and failures
//! into the DLQ.

use super::*;
use crate::store::Claim;

impl JobRun<'_> {
    /// Runs one item in a slot; returns whether it failed.
    pub(super) async fn run_item(
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
        let result = self
            .run_agent(
                mr,
                slot,
                c,
                sched.total,
                &start,
                &log,
                &scope,
                agents,
                Authority::Lock(self.proof),
                attempt,
            )
            .await?;
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
                self.note_failure(mr, sched, key, &f);
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
                note_discarded(&slot.dir, &log).await;
                let (outcome, succeeded) = success(key, attempt, &ctx, commit.clone(), &log);
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
    pub(super) async fn merge(
        &self,
        key: &ItemKey,
        attempt: u32,
        commit: &str,
    ) -> anyhow::Result<bool> {
        match self.merge_only(key, attempt, commit).await? {
            Some(merge_commit) => {
                self.record_merged(key, commit, merge_commit).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Records an item merged (its commit `commit`, merged as `merge_commit`).
    pub(super) async fn record_merged(
        &self,
        key: &ItemKey,
        commit: &str,
        merge_commit: String,
    ) -> anyhow::Result<()> {
        let merged = JobEvent::ItemMerged {
            key: key.clone(),
            commit: commit.to_string(),
            merge_commit: Some(merge_commit),
            found_on_resume: false,
        };
        self.store
            .mark_merged(self.proof, key, Some(&merged))
            .await?;
        self.report(Progress::ItemMerged { key: key.clone() });
        Ok(())
    }

    /// Merges an item's commit into the job branch without recording it merged; returns the
    /// merge commit. A conflict fails the item (MergeConflict), leaves the branch as it was and
    /// returns None. Callers serialize merges.
    pub(super) async fn merge_only(
        &self,
        key: &ItemKey,
        attempt: u32,
        commit: &str,
    ) -> anyhow::Result<Option<String>> {
        let message = format!("prodigy: merge item {key}");
        match git::merge_no_ff(&self.ws.job_dir, commit, &message).await? {
            git::Merge::Merged {
                commit: merge_commit,
            } => Ok(Some(merge_commit)),
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
                Ok(None)
            }
        }
    }

    pub(super) async fn fail_item(
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
        step::append_log(log, &format!("== item failed ({class}): {}\n", f.message()));
        // Keep what the agent committed, for `dlq show`, without leaving a branch behind.
        let artifact = match git::head(&slot.dir).await {
            Ok(head) if head != start => self.ws.keep_artifact(slot, &key.0, attempt).await.ok(),
            _ => None,
        };
        let (outcome, failed) = failure(mr, key, attempt, f, log, artifact);
        self.store
            .finish_attempt(self.proof, key, attempt, &outcome, &failed)
            .await?;
        self.report(Progress::ItemFailed {
            key: key.clone(),
            class,
            message: f.message(),
        });
        Ok(())
    }
}

/// Who may write an attempt's records: the job's lock holder, or the holder of the item's claim.
#[derive(Clone, Copy)]
pub(super) enum Authority<'r> {
    Lock(&'r LockProof),
    Claim(&'r Claim),
}

impl JobCore<'_> {
    /// An event of a running attempt, under `auth`.
    pub(super) async fn record_event(
        &self,
        auth: Authority<'_>,
        event: JobEvent,
    ) -> anyhow::Result<()> {
        match auth {
            Authority::Lock(proof) => {
                self.store.append_event(proof, &event).await?;
            }
            Authority::Claim(claim) => self.store.append_claim_event(claim, &event).await?,
        }
        Ok(())
    }

    /// Runs an item's agent template in `slot` from `start`; rate limits and overload of the AI
    /// API run it again after a back-off, in the same attempt. Agents stop when `agents` is
    /// cancelled. Shared by the lock holder's items and claimed ones (`auth` records back-offs).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_agent(
        &self,
        mr: &MapReduce,
        slot: &Slot,
        c: &Candidate,
        total: usize,
        start: &str,
        log: &Path,
        scope: &AgentScope,
        agents: &CancellationToken,
        auth: Authority<'_>,
        attempt: u32,
    ) -> anyhow::Result<Result<Context, StepFailure>> {
        let key = &c.key;
        // Rate limits and overload are the API's state, not the item's: the item runs again
        // after a back-off, in the same attempt.
        let mut transient = 0u32;
        let result = loop {
            let prepared = match slot.prepare(start).await {
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
                        total,
                        key,
                    );
                    let env = StepEnv {
                        cwd: &slot.dir,
                        log,
                        env: &self.env,
                        claude_bin: &self.engine.claude_bin,
                        cancel: agents,
                        deadline: mr.map.agent_timeout.map(|t| Instant::now() + t),
                        secrets: &self.secrets,
                        agent: scope,
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
                    log,
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
                self.record_event(
                    auth,
                    JobEvent::AgentBackoff {
                        key: key.clone(),
                        attempt,
                        retry: transient,
                        delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    },
                )
                .await?;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = agents.cancelled() => {}
                }
                continue;
            }
            break tried;
        };
        Ok(result)
    }
}

impl JobCore<'_> {
    /// Notes a failed attempt for the scheduler: the circuit breaker, and a stop when the AI API
    /// refused the job's credentials (every item would fail the same way).
    pub(super) fn note_failure(
        &self,
        mr: &MapReduce,
        sched: &Scheduler,
        key: &ItemKey,
        f: &StepFailure,
    ) {
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
    }
}

/// Says in the log when the agent left changes it did not commit: only commits are merged.
pub(super) async fn note_discarded(dir: &Path, log: &Path) {
    if !git::is_clean(dir).await.unwrap_or(true) {
        step::append_log(
            log,
            "== note: uncommitted changes in the agent worktree were discarded; only commits are merged\n",
        );
    }
}

/// How a successful attempt is recorded: its outcome and event.
pub(super) fn success(
    key: &ItemKey,
    attempt: u32,
    ctx: &Context,
    commit: Option<String>,
    log: &Path,
) -> (AttemptOutcome, JobEvent) {
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
    let event = JobEvent::ItemSucceeded {
        key: key.clone(),
        attempt,
        commit,
    };
    (outcome, event)
}

/// How a failed attempt is recorded: its outcome (and DLQ disposition, by the error policy)
/// and event; `artifact` is the ref keeping its commits.
pub(super) fn failure(
    mr: &MapReduce,
    key: &ItemKey,
    attempt: u32,
    f: &StepFailure,
    log: &Path,
    artifact: Option<String>,
) -> (AttemptOutcome, JobEvent) {
    let class = f.class();
    let message = f.message();
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
    let event = JobEvent::ItemFailed {
        key: key.clone(),
        attempt,
        class,
        message,
        exit_code: f.facts.exit_code,
        log: Some(log.to_path_buf()),
        artifact,
    };
    (outcome, event)
}
