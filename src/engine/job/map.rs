//! The map phase: the scheduler, its workers, budgets and the error policy.

use super::*;

impl JobRun<'_> {
    /// Runs the map phase's remaining items. Returns why it stopped early, if it did.
    pub(super) async fn map(
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

    /// Runs the job's DLQ items that `req` selects. Returns why it stopped early, if it did.
    pub(super) async fn retry(
        &mut self,
        mr: &MapReduce,
        req: &RetryRequest,
    ) -> anyhow::Result<Option<PhaseFailure>> {
        if self.job.refs.setup_commit.is_none() {
            return Ok(Some(PhaseFailure::new(
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
        self.run_items(mr, candidates).await
    }

    /// Brings the store in line with the repository after an interruption: attempts left open
    /// are closed, and succeeded items whose commit already reached the job branch are marked
    /// merged, so nothing is merged twice; the rest of the succeeded-unmerged are merged now.
    pub(super) async fn reconcile(&mut self) -> anyhow::Result<()> {
        // With workers, items whose claims are alive stay with the machines running them.
        let interrupted = if self.remote.is_some() {
            self.store.recover_unclaimed(self.proof).await?
        } else {
            self.store.recover_interrupted(self.proof).await?
        };
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
            } else if self.remote.is_none() {
                // (With workers the merge queue fetches and merges it.)
                self.merge(&item.key, item.attempts, &commit).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn run_items(
        &mut self,
        mr: &MapReduce,
        candidates: Vec<Candidate>,
    ) -> anyhow::Result<Option<PhaseFailure>> {
        if self.remote.is_some() {
            return self.map_with_workers(mr, candidates).await;
        }
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
        let sched = self
            .scheduler(candidates.into(), total as usize, start)
            .await?;
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
        }
        Ok(self.map_outcome(sched))
    }

    /// Waits for the budget to run out (a worker finds it spent, or the wall-time limit passes),
    /// gives running agents the budget's grace period, then stops them. Never returns.
    pub(super) async fn budget_watch(&self, sched: &Scheduler, agents: &CancellationToken) {
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
    pub(super) fn budget_message(&self, why: &str, grace: std::time::Duration) -> String {
        format!(
            "budget exhausted: {why}. Nothing more was dispatched; agents still running had {} to \
             finish, then were stopped and their items left pending. \
             `prodigy resume {} --budget <USD>` continues with a raised budget",
            crate::text::human_duration(grace),
            self.job.id
        )
    }

    pub(super) async fn worker(
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
}

pub(super) fn candidate(i: &crate::store::WorkItem) -> Candidate {
    Candidate {
        key: i.key.clone(),
        data: i.data.clone(),
        source: plan::Source::Pending,
        attempts: i.attempts,
        position: i.position,
    }
}

/// The error policy's verdict after a failure: stop the map phase, and why.
pub(super) fn should_stop(mr: &MapReduce, failures: usize, processed: usize) -> Option<String> {
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

/// One attempt of one item in one slot.
pub(super) struct ItemRun<'a> {
    pub(super) slot: &'a Slot,
    /// The commit the slot started from.
    pub(super) start: &'a str,
    pub(super) key: &'a ItemKey,
    pub(super) attempt: u32,
    pub(super) log: &'a Path,
}

pub(super) struct Scheduler {
    /// Items whose last failure was a merge conflict.
    pub(super) conflicted: HashSet<ItemKey>,
    pub(super) queue: Mutex<VecDeque<Candidate>>,
    pub(super) total: usize,
    pub(super) failed: AtomicUsize,
    pub(super) processed: AtomicUsize,
    pub(super) stop: Mutex<Option<PhaseFailure>>,
    /// Cancelled when the budget runs out: the grace period of running agents starts.
    pub(super) budget_hit: CancellationToken,
    /// How the first attempts of this run ended (None: success), for the circuit breaker.
    pub(super) first: Mutex<Vec<Option<(ErrorClass, String)>>>,
    /// Merges into the job worktree happen one at a time: the merge queue.
    pub(super) merge_lock: tokio::sync::Mutex<()>,
    /// The commit every agent starts from.
    pub(super) start: String,
}

impl JobCore<'_> {
    /// How a run of the map phase ended once its agents stopped: interrupted (the job was
    /// cancelled; its items were put back), or the stop its scheduler recorded, if any.
    pub(super) fn map_outcome(&self, sched: Scheduler) -> Option<PhaseFailure> {
        if self.cancel.is_cancelled() {
            return Some(PhaseFailure::new(format!(
                "interrupted; resume with `prodigy resume {}`",
                self.job.id
            )));
        }
        sched
            .stop
            .into_inner()
            .expect("no worker panicked holding the lock")
    }

    /// The scheduler of one run of the map phase over `queue` (of `total` items), its agents
    /// starting from `start`.
    pub(super) async fn scheduler(
        &self,
        queue: VecDeque<Candidate>,
        total: usize,
        start: String,
    ) -> anyhow::Result<Scheduler> {
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
        Ok(Scheduler {
            conflicted,
            queue: Mutex::new(queue),
            total,
            failed: AtomicUsize::new(0),
            processed: AtomicUsize::new(0),
            stop: Mutex::new(None),
            budget_hit: CancellationToken::new(),
            first: Mutex::new(Vec::new()),
            merge_lock: tokio::sync::Mutex::new(()),
            start,
        })
    }
}

impl Scheduler {
    pub(super) fn next(&self) -> Option<Candidate> {
        self.queue.lock().expect("queue lock").pop_front()
    }
    pub(super) fn stopped(&self) -> bool {
        self.stop.lock().expect("stop lock").is_some()
    }
    pub(super) fn stop_with(&self, why: String) {
        self.stop
            .lock()
            .expect("stop lock")
            .get_or_insert(PhaseFailure::new(why));
    }
    /// Stops dispatching because the budget ran out (unless something else stopped it first).
    pub(super) fn stop_for_budget(&self, why: String) {
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
    pub(super) fn finished(&self, mr: &MapReduce, failure: Option<(ErrorClass, String)>) {
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
