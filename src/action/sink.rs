//! Check runs with the workflow's token: the same reporter as the App's, another sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;

use super::commands;
use crate::checks::{CheckRunSink, Refused};
/// GitHub's limit on a check run's summary, in characters.
const SUMMARY_LIMIT: usize = 65_535;

use crate::github::{
    CheckRunId, CheckRunOutput, CheckRunUpdate, GitHubClient, GitHubError, NewCheckRun,
    TOKEN_INSTALLATION,
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
    /// Markdown put before every summary (a re-run names the attempt it continues).
    preface: Option<String>,
}

impl TokenCheckRuns {
    pub fn new(client: GitHubClient, repo: RepoName) -> Self {
        TokenCheckRuns {
            client,
            repo,
            warned: Arc::new(AtomicBool::new(false)),
            preface: None,
        }
    }

    pub fn with_preface(mut self, preface: Option<String>) -> Self {
        self.preface = preface;
        self
    }

    /// `output` with the preface before its summary, within GitHub's 65,535 characters.
    fn prefaced(&self, output: Option<&CheckRunOutput>) -> Option<CheckRunOutput> {
        let (Some(preface), Some(output)) = (&self.preface, output) else {
            return None;
        };
        let mut output = output.clone();
        let room = SUMMARY_LIMIT.saturating_sub(preface.chars().count());
        let summary: String = output.summary.chars().take(room).collect();
        output.summary = format!("{preface}{summary}");
        Some(output)
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
        let prefaced = self
            .prefaced(run.output.as_ref())
            .map(|output| NewCheckRun {
                output: Some(output),
                ..run.clone()
            });
        self.client
            .create_check_run(
                TOKEN_INSTALLATION,
                &self.repo,
                prefaced.as_ref().unwrap_or(run),
            )
            .await
            .map_err(|e| self.map_error(e))
    }

    async fn update(&self, id: CheckRunId, update: &CheckRunUpdate) -> anyhow::Result<()> {
        // Appended annotation batches carry no summary of their own to preface.
        let prefaced = self
            .prefaced(update.output.as_ref().filter(|o| !o.summary.is_empty()))
            .map(|output| CheckRunUpdate {
                output: Some(output),
                ..update.clone()
            });
        self.client
            .update_check_run(
                TOKEN_INSTALLATION,
                &self.repo,
                id,
                prefaced.as_ref().unwrap_or(update),
            )
            .await
            .map_err(|e| self.map_error(e))
    }
}
