//! Where check-run requests go: GitHub through the App client for `prodigy serve`, or another
//! client (the Action's workflow token) implementing the same two calls.

use std::future::Future;

use crate::github::{CheckRunId, CheckRunUpdate, GitHubClient, InstallationId, NewCheckRun};
use crate::types::RepoName;

/// Creates and updates check runs of one repository. Implementations retry transient failures
/// themselves (GitHub's client does, through its `RetryPolicy`); an error here is final for that
/// request. An error that is a [`Refused`] is final for every request: the reporter stops
/// sending.
pub trait CheckRunSink: Send + Sync + 'static {
    fn create(&self, run: &NewCheckRun) -> impl Future<Output = anyhow::Result<CheckRunId>> + Send;

    fn update(
        &self,
        id: CheckRunId,
        update: &CheckRunUpdate,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A sink's error saying that every further request would be refused the same way (a token
/// without `checks: write`), so the reporter stops instead of trying each update again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Check runs as the GitHub App, on one installation's repository.
#[derive(Debug, Clone)]
pub struct AppCheckRuns {
    pub client: GitHubClient,
    pub installation: InstallationId,
    pub repo: RepoName,
}

impl CheckRunSink for AppCheckRuns {
    async fn create(&self, run: &NewCheckRun) -> anyhow::Result<CheckRunId> {
        Ok(self
            .client
            .create_check_run(self.installation, &self.repo, run)
            .await?)
    }

    async fn update(&self, id: CheckRunId, update: &CheckRunUpdate) -> anyhow::Result<()> {
        Ok(self
            .client
            .update_check_run(self.installation, &self.repo, id, update)
            .await?)
    }
}
