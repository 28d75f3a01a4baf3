//! `prodigy worker`: a machine that helps run other machines' jobs (README "Many machines").
//! It finds jobs open to workers in the shared PostgreSQL database, keeps its own clone of each
//! job's git remote in its state directory, and serves the jobs' item claims one job at a time
//! ([`Engine::work_on`]). SIGTERM or Ctrl-C: it stops claiming, gives back items still running
//! (what finished is pushed and recorded) and exits 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use sha2::{Digest, Sha256};

use crate::engine::claims::Heartbeat;
use crate::engine::{Engine, git, remote, worktree::sanitize_ref};
use crate::store::{Claimer, Job, StoreError};
use crate::types::JobId;

#[derive(Args, Debug, Clone)]
pub struct WorkerConfig {
    /// Agents at once on this machine.
    #[arg(long, env = "PRODIGY_MAX_PARALLEL", default_value_t = 2)]
    pub max_parallel: usize,
    /// Only these jobs: a job id (or a unique prefix of it) or a workflow name; comma
    /// separated or repeated. Default: every job open to workers.
    #[arg(long = "jobs", env = "PRODIGY_WORKER_JOBS", value_delimiter = ',')]
    pub jobs: Vec<String>,
    /// The job's git remote as this machine reaches it (e.g. SSH instead of HTTPS, a mirror),
    /// instead of the URL the job recorded. This machine's own credentials are used.
    #[arg(long, env = "PRODIGY_WORKER_REMOTE")]
    pub remote: Option<String>,
    /// Where the clones, agent worktrees and logs of this worker live. Default: --home
    /// (PRODIGY_HOME) when given, else $XDG_STATE_HOME/prodigy-worker (~/.local/state/...).
    #[arg(long, env = "PRODIGY_WORKER_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Exit 0 after this many seconds without a job to work on (for CI runners and batch
    /// pods); default: wait for jobs until stopped.
    #[arg(long, env = "PRODIGY_WORKER_IDLE_EXIT", value_name = "SECS")]
    pub idle_exit: Option<f64>,
    /// Seconds between looks for open jobs.
    #[arg(
        long,
        env = "PRODIGY_WORKER_POLL",
        default_value_t = 1.0,
        value_name = "SECS"
    )]
    pub poll: f64,
}

impl WorkerConfig {
    /// The state directory: the flag, else `home`, else the XDG state directory.
    pub fn state_dir(&self, home: Option<&Path>) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        if let Some(h) = home {
            return h.to_path_buf();
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("prodigy-worker")
    }
}

/// Where a worker runs, deciding which of the open jobs it may serve now: `prodigy worker`
/// serves any ([`Anywhere`]); a `prodigy serve` replica only its allowed repositories' jobs that
/// another replica runs, each holding one of its job slots (src/server/runner/workers.rs).
pub trait Host: Sync {
    /// Some: serve `job` now, holding the admission until done with it; None: not now.
    fn admit(
        &self,
        job: &Job,
    ) -> impl std::future::Future<Output = anyhow::Result<Option<Admission>>> + Send;
}

/// A host's leave to serve one job.
pub struct Admission {
    /// Held while the worker serves the job (a job slot); dropped after.
    pub hold: Box<dyn std::any::Any + Send>,
    /// The names of the passed variables this job's agents get (None: all of them), as the
    /// job's own machine narrowed them.
    pub pass_env: Option<Vec<String>>,
}

/// `prodigy worker`'s host: every open job its `--jobs` allows, with its own settings.
pub struct Anywhere;

impl Host for Anywhere {
    async fn admit(&self, _job: &Job) -> anyhow::Result<Option<Admission>> {
        Ok(Some(Admission {
            hold: Box::new(()),
            pass_env: None,
        }))
    }
}

/// Runs the worker until it is stopped (`engine.cancel`) or idle for `--idle-exit`.
pub async fn run(engine: &Engine, config: &WorkerConfig) -> anyhow::Result<()> {
    run_with(engine, config, &Anywhere).await
}

/// [`run`] on `host`, which decides which jobs are served when.
pub async fn run_with(
    engine: &Engine,
    config: &WorkerConfig,
    host: &impl Host,
) -> anyhow::Result<()> {
    if engine.store.backend() != crate::store::BackendKind::Postgres {
        return Err(StoreError::NeedsPostgres("prodigy worker").into());
    }
    let stop = engine.cancel.clone();
    let hb = Heartbeat::start(
        engine.store.clone(),
        Claimer::new(&engine.workers.machine),
        engine.workers.lease,
    );
    let poll = Duration::from_secs_f64(config.poll.max(0.05));
    let idle_exit = config
        .idle_exit
        .map(|s| Duration::from_secs_f64(s.max(0.0)));
    let mut idle_since = Instant::now();
    tracing::info!(machine = %engine.workers.machine, "worker started; looking for jobs open to workers");
    while !stop.is_cancelled() {
        let mut worked = false;
        for job in wanted_jobs(engine, &config.jobs).await? {
            if stop.is_cancelled() {
                break;
            }
            match serve_job(engine, config, &hb, job, host).await {
                Ok(n) => worked |= n > 0,
                // One job this machine cannot serve (its remote unreachable, its agents refused
                // here) does not stop the others.
                Err(e) => tracing::warn!(%job, "cannot work on job {job}: {e:#}"),
            }
        }
        if worked {
            idle_since = Instant::now();
        } else if idle_exit.is_some_and(|d| idle_since.elapsed() >= d) {
            tracing::info!(
                "no job to work on for {:?}; exiting",
                idle_exit.unwrap_or_default()
            );
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = stop.cancelled() => {}
        }
    }
    Ok(())
}

/// Open jobs, narrowed to the `--jobs` filters (id prefixes or workflow names).
async fn wanted_jobs(engine: &Engine, filters: &[String]) -> anyhow::Result<Vec<JobId>> {
    let open = engine.store.open_jobs().await?;
    if filters.is_empty() {
        return Ok(open);
    }
    let mut out = Vec::new();
    for id in open {
        let job = engine.store.get_job(id).await?;
        let text = id.to_string();
        if filters.iter().any(|f| {
            let f = f.trim();
            (!f.is_empty() && text.starts_with(&f.to_ascii_lowercase())) || job.workflow_name == f
        }) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Works on one job; returns how many attempts this machine recorded for it.
async fn serve_job(
    engine: &Engine,
    config: &WorkerConfig,
    hb: &Arc<Heartbeat>,
    job: JobId,
    host: &impl Host,
) -> anyhow::Result<usize> {
    let Some(recorded) = engine.store.job_remote(job).await? else {
        return Ok(0);
    };
    let row = engine.store.get_job(job).await?;
    let Some(admission) = host.admit(&row).await? else {
        return Ok(0);
    };
    let mut engine = engine.clone();
    if let Some(names) = &admission.pass_env {
        engine.agents.env.pass.retain(|n| names.contains(n));
    }
    let engine = &engine;
    let url = match &config.remote {
        Some(u) => u.clone(),
        None => recorded.url,
    };
    remote::check_url(&url)?;
    let clone = clone_dir(&engine.state_dir, &url);
    ensure_clone(&clone).await?;
    let outcome = engine
        .work_on(
            job,
            &clone,
            &url,
            hb,
            config.max_parallel.max(1),
            &engine.cancel,
        )
        .await?;
    drop(admission.hold);
    if outcome.recorded + outcome.released + outcome.lost > 0 {
        tracing::info!(
            %job,
            recorded = outcome.recorded,
            failed = outcome.failed,
            released = outcome.released,
            lost = outcome.lost,
            "done with job {job} for now"
        );
    }
    Ok(outcome.recorded)
}

/// `<state>/repos/<name>-<hash>`: one clone per remote URL.
fn clone_dir(state: &Path, url: &str) -> PathBuf {
    let name = url
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo");
    let hash = Sha256::digest(url.as_bytes());
    let hex: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
    state
        .join("repos")
        .join(format!("{}-{hex}", sanitize_ref(name)))
}

/// An empty bare repository the first time; jobs fetch what they need into it.
async fn ensure_clone(dir: &Path) -> anyhow::Result<()> {
    if dir.join("HEAD").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    git::git(dir, &["init", "-q", "--bare"])
        .await
        .with_context(|| format!("cannot create the worker's clone in {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_remote_gets_its_own_clone() {
        let s = Path::new("/s");
        let a = clone_dir(s, "https://github.com/o/widgets.git");
        let b = clone_dir(s, "git@github.com:o/widgets.git");
        assert_ne!(a, b);
        assert!(a.starts_with("/s/repos"));
        assert!(
            a.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("widgets-")
        );
        assert!(
            clone_dir(s, "/srv/git/x.git")
                .to_string_lossy()
                .contains("/x-")
        );
    }

    #[test]
    fn the_state_dir_prefers_the_flag_then_home() {
        let mut c = WorkerConfig {
            max_parallel: 1,
            jobs: vec![],
            remote: None,
            state_dir: Some("/flag".into()),
            idle_exit: None,
            poll: 1.0,
        };
        assert_eq!(c.state_dir(Some(Path::new("/home"))), Path::new("/flag"));
        c.state_dir = None;
        assert_eq!(c.state_dir(Some(Path::new("/home"))), Path::new("/home"));
    }
}
