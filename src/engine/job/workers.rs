//! The map phase of a job with workers, on its coordinator (README "Many machines"). The lock
//! holder publishes the job's base on the remote, opens the job's items to claims, lets its
//! own agent slots claim them as any worker does, and merges what every machine recorded in
//! one serial queue: it fetches attempt refs it does not have, merges them, pushes the job's
//! head, and only then records the items merged, so the database never calls merged what the
//! remote does not hold. Reduce runs here when every item is done.

use std::sync::Arc;

use super::claimed::Claimed;
use super::*;
use crate::engine::claims::Heartbeat;
use crate::engine::remote;
use crate::store::Claimer;

/// How often idle claim slots and the merge queue look at the database again.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// A job's git remote, and the head this coordinator last saw there: its next push expects to
/// find it (`--force-with-lease`), so a coordinator that lost the job cannot overwrite the
/// head its successor pushed.
pub struct Remote {
    pub(super) url: String,
    head: Mutex<Option<String>>,
}

impl Remote {
    pub fn new(url: String) -> Self {
        Remote {
            url,
            head: Mutex::new(None),
        }
    }
}

impl JobRun<'_> {
    fn remote(&self) -> anyhow::Result<&Remote> {
        self.remote
            .as_ref()
            .ok_or_else(|| anyhow!("job {} does not run with workers", self.job.id))
    }

    /// Before the job worktree is made: takes the job branch from the remote's head (a resume
    /// on another machine, or after a crash between a push and the database), or, on a new job,
    /// publishes its start commit there.
    pub(super) async fn sync_from_remote(&mut self, base: &str) -> anyhow::Result<()> {
        let (url, head_ref) = (self.remote()?.url.clone(), remote::head_ref(self.job.id));
        let repo = self.ws.repo.clone();
        match remote::remote_value(&repo, &url, &head_ref).await? {
            Some(head) => {
                let mut refs = vec![head_ref.clone()];
                if self.job.refs.setup_commit.is_some() {
                    refs.push(remote::base_ref(self.job.id));
                }
                remote::fetch(&repo, &url, &refs).await?;
                let branch = format!("refs/heads/{}", self.ws.branch);
                let local = git::git(&repo, &["rev-parse", "-q", "--verify", &branch])
                    .await
                    .ok();
                let keep_local = match &local {
                    Some(l) => git::is_ancestor(&repo, &head, l).await.unwrap_or(false),
                    None => false,
                };
                if !keep_local {
                    git::git(&repo, &["update-ref", &branch, &head]).await?;
                }
                *self.remote()?.head.lock().expect("head lock") = Some(head);
            }
            None => {
                remote::push(
                    &repo,
                    &url,
                    &[(base.to_string(), head_ref.clone())],
                    Some((&head_ref, "")),
                )
                .await?;
                *self.remote()?.head.lock().expect("head lock") = Some(base.to_string());
            }
        }
        Ok(())
    }

    /// Pushes the job worktree's HEAD as the job's head on the remote, expecting the head this
    /// coordinator last saw there.
    pub(super) async fn push_head(&self) -> anyhow::Result<()> {
        let r = self.remote()?;
        let head_ref = remote::head_ref(self.job.id);
        let head = git::head(&self.ws.job_dir).await?;
        let expected = r
            .head
            .lock()
            .expect("head lock")
            .clone()
            .unwrap_or_default();
        if expected == head {
            return Ok(());
        }
        remote::push(
            &self.ws.job_dir,
            &r.url,
            &[(head.clone(), head_ref.clone())],
            Some((&head_ref, &expected)),
        )
        .await
        .context("cannot publish the job's merged work on its remote")?;
        *r.head.lock().expect("head lock") = Some(head);
        Ok(())
    }

    /// The map phase with workers: `candidates` are what this run plans (failed and DLQ items of
    /// a resume are put back to pending); every machine claims from the pending items.
    pub(super) async fn map_with_workers(
        &mut self,
        mr: &MapReduce,
        candidates: Vec<Candidate>,
    ) -> anyhow::Result<Option<PhaseFailure>> {
        let start = self
            .job
            .refs
            .setup_commit
            .clone()
            .ok_or_else(|| anyhow!("job {} has no setup commit recorded", self.job.id))?;
        let requeue: Vec<ItemKey> = candidates
            .iter()
            .filter(|c| c.source != plan::Source::Pending)
            .map(|c| c.key.clone())
            .collect();
        if !requeue.is_empty() {
            self.store.requeue_items(self.proof, &requeue).await?;
        }
        let url = self.remote()?.url.clone();
        remote::push(
            &self.ws.repo,
            &url,
            &[(start.clone(), remote::base_ref(self.job.id))],
            None,
        )
        .await
        .context("cannot publish the job's base on its remote")?;
        self.push_head().await?;
        self.store.open_to_workers(self.proof, &url).await?;
        let counts = self.store.item_counts(self.job.id).await?;
        self.report(Progress::ItemsPlanned {
            to_run: (counts.pending + counts.running) as usize,
            total: counts.total,
        });

        let settings = &self.engine.workers;
        let hb = Heartbeat::start(
            self.store.clone(),
            Claimer::new(&settings.machine),
            settings.lease,
        );
        let parallel = self.max_parallel.unwrap_or(mr.map.max_parallel);
        let slots = if parallel == 0 {
            Vec::new()
        } else {
            self.ws
                .create_pool(parallel, &start)
                .await
                .context("cannot create the agent worktrees")?
        };
        let sched = self
            .scheduler(VecDeque::new(), counts.total as usize, start)
            .await?;
        let this = &*self;
        let agents = self.cancel.child_token();
        let done = CancellationToken::new();
        let wake = tokio::sync::Notify::new();
        let locals = slots
            .iter()
            .map(|slot| this.claim_slot(mr, slot, &sched, &hb, &agents, &done, &wake, &url));
        let work = async {
            let (locals, merged) = tokio::join!(
                futures_util::future::join_all(locals),
                this.merge_queue(mr, &sched, &done, &wake, counts)
            );
            for r in locals {
                r?;
            }
            merged
        };
        let result = tokio::select! {
            result = work => result,
            () = this.budget_watch(&sched, &agents) => unreachable!("the watch never ends"),
        };
        let closed = self.store.close_to_workers(self.proof).await;
        result?;
        closed?;
        drop(hb);
        if self.cancel.is_cancelled() {
            self.store.recover_unclaimed(self.proof).await?;
        }
        Ok(self.map_outcome(sched))
    }

    /// One of the coordinator's own agent slots: claims items as a worker does until the map
    /// phase is done or stops.
    #[allow(clippy::too_many_arguments)]
    async fn claim_slot(
        &self,
        mr: &MapReduce,
        slot: &Slot,
        sched: &Scheduler,
        hb: &Arc<Heartbeat>,
        agents: &CancellationToken,
        done: &CancellationToken,
        wake: &tokio::sync::Notify,
        url: &str,
    ) -> anyhow::Result<()> {
        loop {
            if self.cancel.is_cancelled() || sched.stopped() || done.is_cancelled() {
                return Ok(());
            }
            if let Some(why) = self.budget_spent().await? {
                let grace = self.engine.agent.budget(&self.workflow.budget).grace();
                sched.stop_for_budget(self.budget_message(&why, grace));
                return Ok(());
            }
            let claim = self
                .store
                .claim_items(self.job.id, hb.claimer(), 1, hb.lease())
                .await?
                .into_iter()
                .next();
            let Some(claim) = claim else {
                // Nothing to claim now; a lease that runs out gives an item back.
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = done.cancelled() => {}
                    () = self.cancel.cancelled() => {}
                }
                continue;
            };
            let ended = self
                .run_claimed(mr, slot, sched, &claim, hb, agents, url)
                .await?;
            if ended != Claimed::Lost {
                wake.notify_one();
            }
        }
    }

    /// The serial merge queue of a job with workers: merges what any machine recorded, until
    /// nothing is pending, running or left to merge, or the phase stops. Applies the error
    /// policy to the failures every machine records.
    async fn merge_queue(
        &self,
        mr: &MapReduce,
        sched: &Scheduler,
        done: &CancellationToken,
        wake: &tokio::sync::Notify,
        at_start: ItemCounts,
    ) -> anyhow::Result<()> {
        let ended = |c: &ItemCounts| c.succeeded + c.failed;
        loop {
            // Counted before the merge list is read: when nothing is pending or running at
            // this point, no item can succeed after it, so an empty list below means nothing
            // is left to merge. (Read the other way round, an item recorded in between would
            // be left succeeded but never merged.)
            let counts = self.store.item_counts(self.job.id).await?;
            let ready = self
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
            if !ready.is_empty() {
                let _serial = sched.merge_lock.lock().await;
                self.merge_batch(&ready).await?;
                continue;
            }
            let failures = counts.failed.saturating_sub(at_start.failed) as usize;
            let processed = ended(&counts).saturating_sub(ended(&at_start)) as usize;
            if failures > 0
                && let Some(why) = should_stop(mr, failures, processed)
            {
                sched.stop_with(why);
            }
            let finished = counts.pending == 0 && counts.running == 0;
            if finished || sched.stopped() || self.cancel.is_cancelled() {
                // Nothing more is claimed; claims held end as they will (a resume merges them).
                self.store.close_to_workers(self.proof).await?;
                done.cancel();
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = wake.notified() => {}
                () = self.cancel.cancelled() => {}
            }
        }
    }

    /// Merges recorded items in order: fetches the attempt refs this machine lacks, merges each
    /// (a conflict fails the item), pushes the job's head, then records them merged.
    async fn merge_batch(&self, ready: &[crate::store::WorkItem]) -> anyhow::Result<()> {
        let url = self.remote()?.url.clone();
        let mut fetch = Vec::new();
        for item in ready {
            if let Some(commit) = &item.commit
                && !git::commit_exists(&self.ws.repo, commit).await?
            {
                fetch.push(remote::attempt_ref(self.job.id, &item.key, item.attempts));
            }
        }
        remote::fetch(&self.ws.repo, &url, &fetch)
            .await
            .context("cannot fetch the items' commits from the job's remote")?;
        let mut merged = Vec::new();
        for item in ready {
            match &item.commit {
                None => {
                    self.store.mark_merged(self.proof, &item.key, None).await?;
                    self.report(Progress::ItemMerged {
                        key: item.key.clone(),
                    });
                }
                Some(commit) => {
                    if let Some(m) = self.merge_only(&item.key, item.attempts, commit).await? {
                        merged.push((item.key.clone(), commit.clone(), m));
                    }
                }
            }
        }
        if merged.is_empty() {
            return Ok(());
        }
        self.push_head().await?;
        for (key, commit, merge_commit) in merged {
            self.record_merged(&key, &commit, merge_commit).await?;
        }
        Ok(())
    }
}
