//! A worker's share of one job (README "Many machines"): agent slots in the worker's own clone
//! of the job's remote, each claiming items and running them as the coordinator's own slots do
//! (`run_claimed`), until the job has nothing left to claim or closes, or the worker stops.

use std::sync::Arc;

use super::claimed::Claimed;
use super::*;
use crate::engine::claims::Heartbeat;
use crate::engine::remote;

/// How often an idle slot looks for items again (a lease that runs out gives one back).
const POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// What a worker did for one job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkerOutcome {
    pub job: Option<JobId>,
    /// Attempts recorded (succeeded or failed).
    pub recorded: usize,
    pub failed: usize,
    /// Items given back unfinished because the worker was stopping.
    pub released: usize,
    /// Attempts whose claim ran out before they were recorded (nothing recorded).
    pub lost: usize,
}

impl Engine {
    /// Serves claims of `job` from this machine with `slots` agents, working in `repo` (this
    /// machine's clone; the job's refs come from `url`), until nothing is left to claim and
    /// nothing runs, the job closes, or `stop` is cancelled (running items are given back).
    pub async fn work_on(
        &self,
        job: JobId,
        repo: &Path,
        url: &str,
        hb: &Arc<Heartbeat>,
        slots: usize,
        stop: &CancellationToken,
    ) -> anyhow::Result<WorkerOutcome> {
        let mut row = self.store.get_job(job).await?;
        row.repo_path = repo.display().to_string();
        let mut core = JobCore::new(self, row, Some(slots))?;
        let WorkflowKind::MapReduce(mr) = core.workflow.kind.clone() else {
            anyhow::bail!("job {job} is not a MapReduce workflow; it has no items to share");
        };
        if let sandbox::Verdict::Refused { reason } = &core.verdict {
            anyhow::bail!("agents of job {job} cannot run on this machine: {reason}");
        }
        let identity = git::ensure_identity(repo).await;
        core.env.extend(identity);
        let base = remote::base_ref(job);
        remote::fetch(repo, url, std::slice::from_ref(&base))
            .await
            .with_context(|| format!("cannot fetch job {job}'s base from {url}"))?;
        let start = git::git(repo, &["rev-parse", &base]).await?;
        if core.job.refs.setup_commit.as_deref() != Some(start.as_str()) {
            anyhow::bail!(
                "job {job}'s base on {url} is {start}, not its setup commit {:?}: is this the job's remote?",
                core.job.refs.setup_commit
            );
        }
        let managed = core.ws.root.parent().unwrap_or(&core.ws.root).to_path_buf();
        std::fs::create_dir_all(&managed)
            .with_context(|| format!("cannot create {}", managed.display()))?;
        git::trust(repo, &managed).await?;
        let pool = core
            .ws
            .create_pool(slots.max(1), &start)
            .await
            .context("cannot create the agent worktrees")?;
        let conflicted: HashSet<ItemKey> = self
            .store
            .dlq(Some(job))
            .await?
            .into_iter()
            .filter(|r| r.error_class == ErrorClass::MergeConflict)
            .map(|r| r.key)
            .collect();
        let total = self.store.item_counts(job).await?.total;
        let sched = Scheduler {
            conflicted,
            queue: Mutex::new(VecDeque::new()),
            total: total as usize,
            failed: AtomicUsize::new(0),
            processed: AtomicUsize::new(0),
            stop: Mutex::new(None),
            budget_hit: CancellationToken::new(),
            first: Mutex::new(Vec::new()),
            merge_lock: tokio::sync::Mutex::new(()),
            start,
        };
        let core = &core;
        let outcome = Mutex::new(WorkerOutcome {
            job: Some(job),
            ..Default::default()
        });
        let runs = pool.iter().map(|slot| async {
            loop {
                if stop.is_cancelled() || sched.stopped() {
                    return Ok::<_, anyhow::Error>(());
                }
                let claim = self
                    .store
                    .claim_items(job, hb.claimer(), 1, hb.lease())
                    .await?
                    .into_iter()
                    .next();
                let Some(claim) = claim else {
                    let counts = self.store.item_counts(job).await?;
                    let open = self.store.job_remote(job).await?.is_some_and(|r| r.open);
                    if !open || (counts.pending == 0 && counts.running == 0) {
                        return Ok(());
                    }
                    tokio::select! {
                        () = tokio::time::sleep(POLL) => {}
                        () = stop.cancelled() => {}
                    }
                    continue;
                };
                let ended = core
                    .run_claimed(&mr, slot, &sched, &claim, hb, stop, url)
                    .await?;
                let mut o = outcome.lock().expect("outcome lock");
                match ended {
                    Claimed::Recorded { failed } => {
                        o.recorded += 1;
                        o.failed += usize::from(failed);
                    }
                    Claimed::Released => o.released += 1,
                    Claimed::Lost => o.lost += 1,
                }
            }
        });
        let results = futures_util::future::join_all(runs).await;
        core.ws.remove_all().await?;
        for r in results {
            r?;
        }
        Ok(outcome.into_inner().expect("outcome lock"))
    }
}
