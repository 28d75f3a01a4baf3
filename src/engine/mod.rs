//! Runs jobs: phases, agents in pooled worktrees, the serial merge queue, timeouts, error
//! classification, DLQ records and resume planning. Every state change goes to the store, under
//! the job lock, as it happens.

pub mod agent;
pub mod agent_env;
pub mod claims;
pub mod classify;
pub mod git;
mod job;
pub mod plan;
pub mod process;
pub mod progress;
pub mod remote;
pub mod sandbox;
pub mod step;
pub mod worktree;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

pub use job::{RunOutcome, WorkerOutcome, masked_values};
pub use progress::{Progress, Reporter, Silent};

use crate::store::{Exclusive, Holder, Job, LockProof, NewJob, Store};
use crate::types::{ErrorClass, ItemKey, JobId, JobStatus, Phase};
use crate::workflow;

/// Which DLQ items a resume picks up.
pub use plan::DlqMode;

/// The engine: one per process, shared by every job it runs.
#[derive(Clone)]
pub struct Engine {
    pub store: Store,
    /// Worktrees and logs live under here (`<state>/worktrees/<job>`, `<state>/logs/<job>`).
    pub state_dir: PathBuf,
    /// The AI CLI run by `claude:` steps.
    pub claude_bin: String,
    /// The operator's agent defaults and caps.
    pub agent: agent::AgentPolicy,
    /// How items hit by API rate limits or overload are run again.
    pub api_backoff: agent::ApiBackoff,
    /// A server instance name for lock holder messages (None for the CLI).
    pub instance: Option<String>,
    pub reporter: Arc<dyn Reporter>,
    /// Cancelling stops scheduling, kills running agents and leaves the job resumable.
    pub cancel: CancellationToken,
    /// How agents are confined: the environment they start with and their sandbox.
    pub agents: AgentPolicy,
    /// How this process takes part in jobs that run on many machines.
    pub workers: WorkerSettings,
}

/// How a process takes part in jobs that run on many machines (README "Many machines").
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// A new job opens its items to workers, exchanging commits through this git remote (a
    /// remote's name or a URL); None: the job runs on this machine alone.
    pub remote: Option<String>,
    /// How long an item claim lasts without a heartbeat (renewed every third of it).
    pub lease: std::time::Duration,
    /// This machine's name in attempts, `prodigy status` and the job page.
    pub machine: String,
    /// Where a resumed job with workers works on this machine, when its own repository is on
    /// another (any clone: the job's refs come from its remote).
    pub repo: Option<PathBuf>,
}

/// The default claim lease: long enough for heartbeats to survive a slow database round trip,
/// short enough that a dead machine's items run elsewhere soon.
pub const DEFAULT_CLAIM_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            remote: None,
            lease: DEFAULT_CLAIM_LEASE,
            machine: crate::store::hostname(),
            repo: None,
        }
    }
}

/// The operator's settings for agents (README, "Security model").
#[derive(Debug, Clone, Default)]
pub struct AgentPolicy {
    pub env: agent_env::AgentEnvSettings,
    pub sandbox: sandbox::SandboxSettings,
}

/// What to run: a workflow file in a repository.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub repo: PathBuf,
    pub workflow_path: PathBuf,
    /// Overrides the workflow's `max_parallel`.
    pub max_parallel: Option<usize>,
    pub repo_name: Option<crate::types::RepoName>,
    pub pr_number: Option<crate::types::PrNumber>,
    pub head_sha: Option<crate::types::CommitSha>,
    /// The commit the job starts from (a SHA or ref in `repo`); None: HEAD of `repo`. The server
    /// starts a pull request's job at its head commit without checking it out.
    pub base_commit: Option<String>,
    /// The workflow's text when it does not come from `workflow_path` on disk (the server reads
    /// it at the pull request's head commit); `workflow_path` then only names it in messages.
    pub workflow_text: Option<String>,
}

/// How to resume: what a plain resume includes from the DLQ.
#[derive(Debug, Clone)]
pub struct ResumeRequest {
    pub dlq: DlqMode,
    pub max_parallel: Option<usize>,
    /// A budget for this run (`prodigy resume --budget`, `/prodigy resume budget=`): its limits
    /// replace the workflow's, under the operator's caps.
    pub budget: Option<workflow::Budget>,
}

/// Which DLQ items `dlq retry` reprocesses.
#[derive(Debug, Clone, Default)]
pub struct RetryRequest {
    pub items: Vec<ItemKey>,
    pub error_class: Option<ErrorClass>,
    pub max_parallel: Option<usize>,
}

/// The answer to resume or retry: contention and "nothing to do" are outcomes, not errors.
#[derive(Debug)]
pub enum Resumed {
    Ran(RunOutcome),
    /// Another process holds the job; it already covers every pending item.
    Held {
        holder: Holder,
        since: DateTime<Utc>,
    },
    /// The job has finished; nothing to resume.
    AlreadyFinished {
        status: JobStatus,
        dlq: u64,
    },
}

impl Exclusive<Resumed> {
    /// A job held elsewhere is one more answer of a resume.
    fn into_resumed(self) -> Resumed {
        match self {
            Exclusive::Performed(resumed) => resumed,
            Exclusive::Held { holder, since } => Resumed::Held { holder, since },
        }
    }
}

/// What a re-run asks for: [`Engine::rerun`].
#[derive(Debug, Clone)]
pub enum RerunWork {
    Resume(ResumeRequest),
    Retry(RetryRequest),
}

/// The answer to [`Engine::rerun`].
#[derive(Debug)]
pub enum Rerun {
    Resumed(Resumed),
    /// A run that finished at `finished_at`, after the trigger arrived, already answered it.
    Covered {
        finished_at: DateTime<Utc>,
    },
}

impl Engine {
    /// Validates the workflow, records a new job and runs it to the end.
    pub async fn run(&self, req: &NewRun) -> anyhow::Result<RunOutcome> {
        let repo = git::toplevel(&req.repo)
            .await
            .with_context(|| format!("{} is not inside a git repository", req.repo.display()))?;
        let text = match &req.workflow_text {
            Some(text) => text.clone(),
            None => std::fs::read_to_string(&req.workflow_path).map_err(|source| {
                workflow::WorkflowError::Read {
                    path: req.workflow_path.clone(),
                    source,
                }
            })?,
        };
        let parsed = workflow::parse(&req.workflow_path, &text)?;
        for w in &parsed.warnings {
            tracing::warn!(
                "{}:{}:{}: {}",
                req.workflow_path.display(),
                w.line,
                w.column,
                w.message
            );
        }
        let problems = workflow::interpolate::check_workflow(&parsed.workflow, &text, None);
        if !problems.is_empty() {
            let list: Vec<String> = problems
                .iter()
                .map(|f| {
                    let path = req.workflow_path.display();
                    format!("{path}:{}:{}: {}", f.line, f.column, f.message)
                })
                .collect();
            return Err(workflow::interpolate::UnresolvedPlaceholders(list).into());
        }
        let base = match &req.base_commit {
            Some(rev) => {
                let spec = format!("{rev}^{{commit}}");
                git::git(&repo, &["rev-parse", "--verify", "-q", &spec])
                    .await
                    .with_context(|| format!("commit {rev} is not in {}", repo.display()))?
            }
            None => git::head(&repo)
                .await
                .context("the repository has no commit to start from")?,
        };
        let remote = match &self.workers.remote {
            None => None,
            Some(name) => {
                if self.store.backend() != crate::store::BackendKind::Postgres {
                    return Err(crate::store::StoreError::NeedsPostgres("--workers").into());
                }
                Some(remote::resolve_url(&repo, name).await?)
            }
        };
        let job = self
            .store
            .create_job(&NewJob {
                workflow_path: req.workflow_path.display().to_string(),
                workflow_text: text,
                workflow_name: parsed.workflow.name.clone(),
                repo_path: repo.display().to_string(),
                repo: req.repo_name.clone(),
                pr_number: req.pr_number,
                head_sha: req.head_sha.clone(),
            })
            .await?;
        let refs = crate::store::JobRefs {
            branch: Some(worktree::job_branch(job.id)),
            base_commit: Some(base),
            ..Default::default()
        };
        let ran = self
            .store
            .with_job_lock(job.id, &self.holder(), async |proof| {
                self.store.set_job_refs(proof, &refs).await?;
                if let Some(url) = &remote {
                    self.store.set_job_remote(proof, url).await?;
                }
                let job = self.store.get_job(job.id).await?;
                self.execute(job, proof, job::Mode::Fresh, req.max_parallel)
                    .await
            })
            .await?;
        match ran {
            Exclusive::Performed(outcome) => Ok(outcome),
            Exclusive::Held { holder, .. } => {
                bail!("job {} was taken by {holder} as it was created", job.id)
            }
        }
    }

    /// Continues a job where it stopped, under its lock.
    pub async fn resume(&self, id: JobId, req: &ResumeRequest) -> anyhow::Result<Resumed> {
        self.store.get_job(id).await?;
        let ran = self
            .store
            .with_job_lock(id, &self.holder(), async |proof| {
                // Read under the lock: the previous holder may have finished it meanwhile.
                let job = self.store.get_job(id).await?;
                if job.phase == Phase::Done {
                    let dlq = self.store.item_counts(id).await?.dlq;
                    return Ok(Resumed::AlreadyFinished {
                        status: job.status,
                        dlq,
                    });
                }
                let mode = job::Mode::Resume(req.dlq);
                self.with_budget(req.budget)
                    .execute(job, proof, mode, req.max_parallel)
                    .await
                    .map(Resumed::Ran)
            })
            .await?;
        Ok(ran.into_resumed())
    }

    /// Reprocesses DLQ items of a job under its lock; items that succeed leave the DLQ.
    pub async fn retry(&self, id: JobId, req: &RetryRequest) -> anyhow::Result<Resumed> {
        self.store.get_job(id).await?;
        let ran = self
            .store
            .with_job_lock(id, &self.holder(), async |proof| {
                let job = self.store.get_job(id).await?;
                let mode = job::Mode::Retry(req.clone());
                self.execute(job, proof, mode, req.max_parallel)
                    .await
                    .map(Resumed::Ran)
            })
            .await?;
        Ok(ran.into_resumed())
    }

    /// Resume or retry on behalf of a trigger received at `requested_at` (a re-run click, a check
    /// run button). Under the lock, a run of the job that finished at or after that time already
    /// covered the trigger, and nothing starts: so duplicate deliveries of one click, handled in
    /// any order by any instance, run the job once.
    pub async fn rerun(
        &self,
        id: JobId,
        work: &RerunWork,
        requested_at: DateTime<Utc>,
    ) -> anyhow::Result<Rerun> {
        let ran = self
            .store
            .with_job_lock(id, &self.holder(), async |proof| {
                let job = self.store.get_job(id).await?;
                if let Some(finished_at) = job.finished_at
                    && job.status != JobStatus::Running
                    && finished_at >= requested_at
                {
                    return Ok(Rerun::Covered { finished_at });
                }
                let budget = match work {
                    RerunWork::Resume(req) => req.budget,
                    RerunWork::Retry(_) => None,
                };
                let (mode, max_parallel) = match work {
                    RerunWork::Resume(req) => {
                        if job.phase == Phase::Done {
                            let dlq = self.store.item_counts(id).await?.dlq;
                            return Ok(Rerun::Resumed(Resumed::AlreadyFinished {
                                status: job.status,
                                dlq,
                            }));
                        }
                        (job::Mode::Resume(req.dlq), req.max_parallel)
                    }
                    RerunWork::Retry(req) => (job::Mode::Retry(req.clone()), req.max_parallel),
                };
                self.with_budget(budget)
                    .execute(job, proof, mode, max_parallel)
                    .await
                    .map(|outcome| Rerun::Resumed(Resumed::Ran(outcome)))
            })
            .await?;
        Ok(match ran {
            Exclusive::Performed(rerun) => rerun,
            Exclusive::Held { holder, since } => Rerun::Resumed(Resumed::Held { holder, since }),
        })
    }

    /// This engine, with a run's own budget when one is given.
    fn with_budget(&self, budget: Option<workflow::Budget>) -> std::borrow::Cow<'_, Engine> {
        match budget {
            None => std::borrow::Cow::Borrowed(self),
            Some(b) => {
                let mut e = self.clone();
                e.agent.budget_override = Some(b);
                std::borrow::Cow::Owned(e)
            }
        }
    }

    fn holder(&self) -> Holder {
        Holder::this_process(self.instance.clone())
    }

    async fn execute(
        &self,
        mut job: Job,
        proof: &LockProof,
        mode: job::Mode,
        max_parallel: Option<usize>,
    ) -> anyhow::Result<RunOutcome> {
        let remote = self.store.job_remote(job.id).await?;
        if remote.is_some()
            && let Some(repo) = &self.workers.repo
        {
            // A job with workers resumed from another clone: its refs come from the remote.
            let here = git::toplevel(repo)
                .await
                .with_context(|| format!("{} is not inside a git repository", repo.display()))?
                .display()
                .to_string();
            if here != job.repo_path {
                self.store.set_job_repo_path(proof, &here).await?;
                job.repo_path = here;
            }
        }
        let remote = remote.map(|r| job::Remote::new(r.url));
        job::JobRun::new(self, job, proof, max_parallel, remote)?
            .run(mode)
            .await
    }

    /// Where the worktrees of `job` live.
    pub fn workspace(&self, repo: &Path, job: JobId) -> worktree::Workspace {
        worktree::Workspace::new(repo, &self.state_dir, job)
    }
}
