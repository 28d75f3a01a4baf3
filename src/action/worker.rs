//! The Action's roles for one job over a matrix of runners (README "Many machines"): `role:
//! coordinator` runs the job with workers (its items open to claims once setup is done), and
//! `role: worker` runs `prodigy worker`'s loop ([`crate::worker::run_with`]) on the job this
//! workflow run's coordinator started (or the `job` input), exiting once that job is done.
//!
//! Runners exchange commits through the repository on GitHub: pushes and fetches of the job's
//! refs send the Action's token ([`ActionToken`]) in git's environment, never in the URL stored
//! with the job. The token needs `contents: write`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};

use crate::engine::Engine;
use crate::engine::remote::RemoteAuth;
use crate::store::{BackendKind, Job};
use crate::types::{JobId, JobStatus};
use crate::worker::{Admission, Host, WorkerConfig};

use super::{ActionConfig, BadInput, StepContext};

/// What the runner does with the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// The job, on this runner alone.
    #[default]
    Run,
    /// The job, with runners of `role: worker` claiming its items (PostgreSQL `database-url`).
    Coordinator,
    /// Claims items of this workflow run's coordinator's job (or `job`'s); exits when it is done.
    Worker,
}

/// A worker that finds no job of its run to work on for this long exits (its coordinator
/// failed before opening the job, or finished before the worker started).
pub const IDLE_EXIT: Duration = Duration::from_secs(600);

/// The Action's token for the repositories of its GitHub (`GITHUB_SERVER_URL`).
/// Its configuration is the one prodigy's own fetches from `origin` use
/// ([`super::credentials::auth_config`]): the header actions/checkout persisted is cleared, so
/// exactly one is sent.
pub struct ActionToken {
    server_url: String,
    token: SecretString,
}

impl ActionToken {
    pub fn new(server_url: &str, token: &str) -> Self {
        ActionToken {
            server_url: server_url.trim_end_matches('/').to_string(),
            token: SecretString::from(token.to_string()),
        }
    }

    fn covers(&self, url: &str) -> bool {
        url.strip_prefix(&self.server_url)
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl RemoteAuth for ActionToken {
    fn config<'a>(
        &'a self,
        url: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<crate::engine::remote::GitConfig>>> {
        Box::pin(async move {
            Ok(self.covers(url).then(|| {
                super::credentials::auth_config(&self.server_url, self.token.expose_secret())
            }))
        })
    }
}

/// Checks the role against the store, and lets the job's pushes and fetches use the token.
pub fn prepare(
    engine: &mut Engine,
    step: &StepContext,
    config: &ActionConfig,
) -> Result<(), BadInput> {
    if config.role == Role::Run {
        return Ok(());
    }
    if engine.store.backend() != BackendKind::Postgres {
        return Err(BadInput::Role(format!(
            "`role: {}` needs the PostgreSQL database the runners share: set the action's \
             `database-url` input (a secret, postgres://...) on the coordinator and every worker",
            role_name(config.role)
        )));
    }
    if let Some(token) = config.token.as_deref().filter(|t| !t.is_empty()) {
        crate::engine::remote::add_auth(Arc::new(ActionToken::new(&step.env.server_url, token)));
    }
    if config.role == Role::Coordinator {
        // actions/checkout's remote: the repository's URL, without the token.
        engine.workers.remote = Some("origin".into());
    }
    Ok(())
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Run => "run",
        Role::Coordinator => "coordinator",
        Role::Worker => "worker",
    }
}

/// Which jobs a worker runner serves: the `job` input's, else those this workflow run started.
struct RunJobs {
    store: crate::store::Store,
    run_id: Option<String>,
    by_input: bool,
    seen: Mutex<HashSet<JobId>>,
}

impl Host for RunJobs {
    async fn admit(&self, job: &Job) -> anyhow::Result<Option<Admission>> {
        let ours = self.by_input
            || match &self.run_id {
                Some(run) => super::rerun::started_by_run(&self.store, job.id, run).await?,
                None => false,
            };
        if !ours {
            return Ok(None);
        }
        self.seen.lock().expect("seen jobs").insert(job.id);
        Ok(Some(Admission {
            hold: Box::new(()),
            pass_env: None,
        }))
    }
}

/// `role: worker`: serves the run's job until it is done (or [`IDLE_EXIT`] without one);
/// returns the jobs it worked on.
pub async fn work(
    engine: &Engine,
    step: &StepContext,
    config: &ActionConfig,
) -> anyhow::Result<Vec<JobId>> {
    let host = RunJobs {
        store: engine.store.clone(),
        run_id: step.env.run_id.clone(),
        by_input: config.job.is_some(),
        seen: Mutex::default(),
    };
    let worker = WorkerConfig {
        max_parallel: config.max_parallel.unwrap_or(2).max(1),
        jobs: config.job.iter().cloned().collect(),
        remote: None,
        state_dir: None,
        idle_exit: Some(IDLE_EXIT.as_secs_f64()),
        poll: 1.0,
    };
    let mut eng = engine.clone();
    eng.cancel = engine.cancel.child_token();
    let stop = eng.cancel.clone();
    let ended = tokio_util::sync::CancellationToken::new();
    let seen = || -> Vec<JobId> {
        host.seen
            .lock()
            .expect("seen jobs")
            .iter()
            .copied()
            .collect()
    };
    let (result, ()) = tokio::join!(
        async {
            // Stopped by the watch below, it gives back what it still runs (nothing, once the
            // job is done) and returns.
            let r = crate::worker::run_with(&eng, &worker, &host).await;
            ended.cancel();
            r
        },
        async {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = ended.cancelled() => return,
                }
                for job in seen() {
                    if job_is_done(engine, job).await.unwrap_or(false) {
                        println!("prodigy: job {job} is done; this worker exits");
                        stop.cancel();
                        return;
                    }
                }
            }
        }
    );
    result?;
    let jobs = seen();
    if jobs.is_empty() {
        println!("prodigy: no job of this workflow run to work on; exiting");
    }
    Ok(jobs)
}

/// Done for a worker: finished, or closed to workers with nothing pending or running.
async fn job_is_done(engine: &Engine, job: JobId) -> anyhow::Result<bool> {
    if engine.store.get_job(job).await?.status != JobStatus::Running {
        return Ok(true);
    }
    let open = engine.store.job_remote(job).await?.is_some_and(|r| r.open);
    let counts = engine.store.item_counts(job).await?;
    Ok(!open && counts.pending == 0 && counts.running == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_goes_only_to_the_actions_own_github() {
        let t = ActionToken::new("https://github.com/", "ghs_x");
        for other in [
            "https://github.com.evil.example/o/r",
            "https://gitlab.com/o/r",
            "/srv/git/r.git",
        ] {
            assert!(t.config(other).await.unwrap().is_none(), "{other}");
        }
        let config = t.config("https://github.com/o/r").await.unwrap().unwrap();
        // The persisted header is cleared, then the token's is the one sent.
        assert_eq!(config.len(), 2, "{config:?}");
        assert_eq!(
            config[0],
            ("http.https://github.com/.extraheader".into(), "".into())
        );
        assert_eq!(config[1].0, "http.https://github.com/.extraheader");
    }
}
