//! Check runs with the workflow's token: the same reporter as the App's, another sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;

use super::commands;
use crate::checks::{CheckRunSink, Refused};
use crate::github::{
    CheckRunId, CheckRunUpdate, GitHubClient, GitHubError, NewCheckRun, TOKEN_INSTALLATION,
};
use crate::types::RepoName;

/// Check runs of `repo` made with a [`GitHubClient::with_token`] client. When GitHub refuses the
/// token for good (no `checks: write`, as for a pull request from a fork), it warns the step's
/// log once and answers [`Refused`], so the reporter stops and the job runs on.
#[derive(Debug, Clone)]
pub struct TokenCheckRuns {
    client: GitHubClient,
    repo: RepoName,
    warned: Arc<AtomicBool>,
}

impl TokenCheckRuns {
    pub fn new(client: GitHubClient, repo: RepoName) -> Self {
        TokenCheckRuns {
            client,
            repo,
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    fn map_error(&self, e: GitHubError) -> anyhow::Error {
        if !e.is_refusal() {
            return e.into();
        }
        let text = refusal_text(&e, &self.repo);
        if !self.warned.swap(true, Ordering::SeqCst) {
            println!("{}", commands::warning("prodigy: no check run", &text));
        }
        Refused(text).into()
    }
}

/// What the user reads when the token is refused, with what to change.
pub fn refusal_text(e: &GitHubError, repo: &RepoName) -> String {
    let fix = if e.status() == Some(StatusCode::FORBIDDEN) {
        "the token lacks `checks: write`: give the job `permissions: { checks: write }` (a pull \
         request from a fork gets a read-only token and cannot have it)"
            .to_string()
    } else {
        format!("the token cannot reach {repo}: pass the workflow's `github.token` as `token`")
    };
    format!(
        "GitHub refused to create or update the check run ({e}); {fix}. The job runs on; its \
         outcome is in this step's summary and outputs."
    )
}

impl CheckRunSink for TokenCheckRuns {
    async fn create(&self, run: &NewCheckRun) -> anyhow::Result<CheckRunId> {
        self.client
            .create_check_run(TOKEN_INSTALLATION, &self.repo, run)
            .await
            .map_err(|e| self.map_error(e))
    }

    async fn update(&self, id: CheckRunId, update: &CheckRunUpdate) -> anyhow::Result<()> {
        self.client
            .update_check_run(TOKEN_INSTALLATION, &self.repo, id, update)
            .await
            .map_err(|e| self.map_error(e))
    }
}
