//! `serve --workers` (README "Many machines"): a replica works on the jobs other replicas run,
//! beside its request loop, with the same loop as `prodigy worker` ([`crate::worker::run_with`]):
//! this module is its [`Host`], deciding which jobs it serves (those of allowed repositories
//! that another replica of this server started and runs) and holding one of the replica's job
//! slots while it does; agents get the environment the job's own replica gave its agents (the
//! operator's `--pass-env`, narrowed by the repository's `pass_env`).
//!
//! The replicas exchange commits through the repository itself; [`PushTokens`] gives git an
//! installation token for it (`contents: write`, through git's environment, never in the URL
//! stored with the job), for the coordinator's pushes and the workers' alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::engine::remote::RemoteAuth;
use crate::github::{GitHubClient, InstallationId};
use crate::store::Job;
use crate::types::RepoName;
use crate::worker::{Admission, Host, WorkerConfig};

use super::Runner;
use crate::server::repos::RepoCache;

/// Installation tokens that may push, per repository URL of this server's repository cache.
pub(crate) struct PushTokens {
    github: GitHubClient,
    repos: RepoCache,
    installs: Mutex<HashMap<String, (RepoName, InstallationId)>>,
}

impl PushTokens {
    pub(crate) fn new(github: GitHubClient, repos: RepoCache) -> Self {
        PushTokens {
            github,
            repos,
            installs: Mutex::default(),
        }
    }

    /// `repo` is reached through `installation`: its URL gets that installation's tokens.
    pub(crate) fn note(&self, repo: &RepoName, installation: InstallationId) {
        self.installs
            .lock()
            .expect("push tokens lock")
            .insert(self.repos.clone_url(repo), (repo.clone(), installation));
    }

    /// The token for `url`: None unless its repository was noted.
    async fn token(&self, url: &str) -> anyhow::Result<Option<SecretString>> {
        let known = self
            .installs
            .lock()
            .expect("push tokens lock")
            .get(url)
            .cloned();
        let Some((repo, installation)) = known else {
            return Ok(None);
        };
        let token = self
            .github
            .repo_push_token(installation, &repo)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot get an installation token that may push to {repo} (does the App \
                     have `contents: write`? `serve --workers` needs it): {e}"
                )
            })?;
        Ok(Some(token))
    }
}

impl RemoteAuth for PushTokens {
    fn config<'a>(
        &'a self,
        url: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<crate::engine::remote::GitConfig>>> {
        Box::pin(async move {
            Ok(self
                .token(url)
                .await?
                .map(|t| crate::engine::remote::token_config(&t)))
        })
    }
}

impl Host for Runner {
    async fn admit(&self, job: &Job) -> anyhow::Result<Option<Admission>> {
        let Some(repo) = &job.repo else {
            return Ok(None);
        };
        if !self.p().allow_repos.contains(repo) || self.is_running_here(job.id) {
            return Ok(None);
        }
        // Jobs this server did not start (a CLI's `run --workers` on the same database) are
        // for `prodigy worker`s: their credentials and agent settings are not the server's.
        let Some((installation, pass_env)) = self.server_context(job.id).await else {
            return Ok(None);
        };
        let Ok(slot) = self.inner.slots.clone().try_acquire_owned() else {
            return Ok(None);
        };
        if let Some(tokens) = &self.inner.push_tokens {
            tokens.note(repo, InstallationId(installation));
        }
        Ok(Some(Admission {
            hold: Box::new(slot),
            pass_env,
        }))
    }
}

impl Runner {
    /// The claim loop beside the request loop, until `shutdown` (its items still running are
    /// given back, pending again for the others).
    pub(super) async fn work_on_others(self, max_parallel: usize, shutdown: CancellationToken) {
        let mut engine = self.p().engine.clone();
        // Its clones and agent worktrees, apart from the jobs this replica runs.
        engine.state_dir = engine.state_dir.join("worker");
        engine.cancel = shutdown;
        let config = WorkerConfig {
            max_parallel,
            jobs: Vec::new(),
            remote: None,
            state_dir: None,
            idle_exit: None,
            poll: self.p().poll.as_secs_f64(),
        };
        tracing::info!(
            max_parallel,
            "--workers: working on other replicas' jobs too"
        );
        if let Err(e) = crate::worker::run_with(&engine, &config, &self).await {
            tracing::warn!(error = %format!("{e:#}"), "the worker loop stopped");
        }
    }
}

/// The token source for `--workers` over HTTPS (None when the repositories need no token).
pub(crate) fn push_tokens(
    github: &GitHubClient,
    repos: &RepoCache,
    workers: bool,
) -> Option<Arc<PushTokens>> {
    (workers && repos.needs_token()).then(|| {
        let tokens = Arc::new(PushTokens::new(github.clone(), repos.clone()));
        crate::engine::remote::add_auth(tokens.clone());
        tokens
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// A repository's URL gets the token of the installation it was noted with; any other URL
    /// (another repository, another host) gets none.
    #[tokio::test]
    async fn push_tokens_go_only_to_the_repositories_noted() {
        let github = GitHubClient::with_token(
            "https://api.github.com",
            SecretString::from("ghs_noted"),
            Default::default(),
        )
        .unwrap();
        let repos = RepoCache::new("/cache".into(), "https://github.com");
        let tokens = PushTokens::new(github, repos);
        let url = "https://github.com/octo/widgets.git";
        assert!(tokens.token(url).await.unwrap().is_none());
        tokens.note(&RepoName::new("octo/widgets"), InstallationId(7));
        let token = tokens.token(url).await.unwrap().expect("a token");
        assert_eq!(token.expose_secret(), "ghs_noted");
        for other in [
            "https://github.com/octo/gadgets.git",
            "https://github.com.evil.example/octo/widgets.git",
        ] {
            assert!(tokens.token(other).await.unwrap().is_none(), "{other}");
        }
    }
}
