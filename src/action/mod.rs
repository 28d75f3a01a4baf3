//! The GitHub Action face: `prodigy action` runs a workflow as one step of a GitHub Actions job,
//! with the same engine, store and job lock as `prodigy run`.
//!
//! - in: the runner's environment and the event file ([`env`]), the action's inputs
//!   ([`ActionConfig`]), and whether to continue an unfinished job ([`plan`]; a re-run of the
//!   workflow run continues the job an earlier attempt started, [`rerun`]);
//! - `issue_comment`: `/prodigy` commands, answered as the App answers them ([`comment`]), a job
//!   command followed by one tracking comment ([`tracking`], [`replies`]);
//! - while it runs: a check run on the event's head commit through the same reporter as the App's,
//!   with the workflow token ([`sink`]);
//! - out: the step's outputs, its summary and annotations as workflow commands ([`report`],
//!   [`commands`]). Exit codes are the CLI's.

pub mod branch;
pub mod commands;
pub mod comment;
pub mod credentials;
pub mod env;
mod job;
pub mod plan;
pub mod replies;
pub mod report;
pub mod rerun;
pub mod sink;
mod start;
pub mod tracking;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::engine::{Engine, Resumed, git};
use crate::types::JobId;

pub use env::{ActionEnv, EnvError, EventFacts};
pub use plan::ResumeMode;
pub use report::NotRun;
pub use sink::TokenCheckRuns;

/// The action's inputs. The runner's own variables (`GITHUB_EVENT_PATH`, ...) are read from
/// the environment, see [`ActionEnv`].
#[derive(Args, Clone)]
#[command(
    after_help = "Run inside a GitHub Actions job (README: \"The GitHub Action\"). Read \
    from the runner: GITHUB_EVENT_PATH, GITHUB_EVENT_NAME, GITHUB_REPOSITORY, GITHUB_SHA, \
    GITHUB_WORKSPACE, GITHUB_API_URL, GITHUB_SERVER_URL, GITHUB_RUN_ID, GITHUB_OUTPUT, \
    GITHUB_STEP_SUMMARY. Outputs: job-id, status, succeeded, failed, dlq, branch."
)]
pub struct ActionConfig {
    /// The workflow file, relative to the working directory.
    #[arg(env = "PRODIGY_WORKFLOW")]
    pub workflow: PathBuf,
    /// `auto`: continue the most recent unfinished job of this workflow at this commit when it
    /// can continue here, else start a new one; `new`: always a new job; or a job id to continue.
    #[arg(long, env = "PRODIGY_RESUME", default_value = "auto")]
    pub resume: ResumeMode,
    /// Agents at once, overriding the workflow's map.max_parallel.
    #[arg(long, env = "PRODIGY_MAX_PARALLEL")]
    pub max_parallel: Option<usize>,
    /// The token the check run is made with: the workflow's `github.token`, with
    /// `checks: write`. Without one the job runs without a check run.
    #[arg(long, env = "GITHUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The mention that also starts a command in a comment, e.g. `@prodigy-bot` (besides
    /// `/prodigy`, which always does).
    #[arg(long, env = "PRODIGY_TRIGGER")]
    pub trigger: Option<String>,
    /// Retry the dead-letter queue of the job `resume` names (or of this workflow's latest job
    /// at this commit) instead of resuming it.
    #[arg(long, env = "PRODIGY_RETRY")]
    pub retry: bool,
    /// The operator's agent defaults and caps (the action's `model`, `max-turns`,
    /// `max-cost-usd`, `max-tokens`, `forbid-bypass-permissions` inputs).
    #[command(flatten)]
    pub caps: crate::engine::agent::AgentCaps,
}

impl std::fmt::Debug for ActionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionConfig")
            .field("workflow", &self.workflow)
            .field("resume", &self.resume)
            .field("max_parallel", &self.max_parallel)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("trigger", &self.trigger)
            .field("retry", &self.retry)
            .field("caps", &self.caps)
            .finish()
    }
}

/// Input the step cannot run with; the CLI answers it with its "bad input" exit code.
#[derive(Debug, thiserror::Error)]
pub enum BadInput {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(
        "the workflow file {path} does not exist (the action's `workflow` input is relative to its `working-directory`, here {dir})"
    )]
    NoWorkflow { path: String, dir: String },
    #[error("the workflow file {path} lies outside the repository {repo}")]
    WorkflowOutside { path: String, repo: String },
    #[error("an agent cap input of the action (model, max-turns, max-cost-usd, max-tokens): {0}")]
    Caps(String),
    #[error("the action's `resume` input names job `{job}`, but {reason}")]
    Resume { job: String, reason: String },
    #[error("`retry: true` {0}")]
    Retry(String),
}

/// The runner's environment and the event, read before anything else happens.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub env: ActionEnv,
    pub event: EventFacts,
}

impl StepContext {
    pub fn from_process() -> Result<StepContext, BadInput> {
        let env = ActionEnv::from_process()?;
        let event = env.read_event()?;
        Ok(StepContext { env, event })
    }
}

/// What the step did: the job it ran (or found held or finished), as `prodigy resume` reports it.
#[derive(Debug)]
pub struct ActionRun {
    pub job: JobId,
    pub resumed: Resumed,
}

/// What the step came to.
#[derive(Debug)]
pub enum StepOutcome {
    /// It ran a job, or found it held or finished.
    Ran(ActionRun),
    /// It answered a comment without running a job (help, status, a refusal), or ignored it.
    Answered,
}

/// Runs the step: answers a comment (`issue_comment`), or picks the job, runs it with a check
/// run, writes the outputs, the summary and the annotations. `engine` is the CLI's (store, state
/// directory, progress lines, Ctrl-C); `dir` is the repository's directory.
pub async fn run(
    engine: &Engine,
    step: &StepContext,
    config: &ActionConfig,
    dir: &Path,
) -> anyhow::Result<StepOutcome> {
    let repo = git::toplevel(dir).await.with_context(|| {
        format!(
            "{} is not inside a git repository: check the repository out first \
             (`actions/checkout`) or set the action's `working-directory`",
            dir.display()
        )
    })?;
    if let Some(token) = config.token.as_deref() {
        credentials::use_token_for_origin(&step.env.server_url, token);
    }
    // Held until the step ends: agents never read the token actions/checkout persisted.
    let _aside = credentials::set_aside(&repo).await?;
    if let Some(aside) = &_aside {
        println!(
            "{}",
            commands::notice(
                "prodigy",
                &format!(
                    "the credentials actions/checkout persisted ({}) are set aside while agents \
                     run, and put back when the step ends; check out with \
                     `persist-credentials: false` to leave none at all",
                    aside.removed.join(", ")
                )
            )
        );
    }
    if step.env.event_name == "issue_comment" {
        return comment::answer(engine, step, config, &repo).await;
    }
    let (workflow, workflow_rel) = resolve_workflow(&config.workflow, &repo)?;
    let chosen = start::choose(engine, step, config, &repo, &workflow_rel).await?;
    let request = job::JobRequest {
        workflow,
        start: chosen.start,
        preface: chosen.preface,
        head_sha: step.event.head_sha.clone(),
        pr: step.event.pr_number,
        tracking: None,
    };
    job::run_job(engine, step, config, &repo, request)
        .await
        .map(StepOutcome::Ran)
}

/// The workflow file as an absolute path (so the job records where it is) and relative to the
/// repository (so later runs find the job by it).
fn resolve_workflow(given: &Path, repo: &Path) -> Result<(PathBuf, String), BadInput> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let path = cwd
        .join(given)
        .canonicalize()
        .map_err(|_| BadInput::NoWorkflow {
            path: given.display().to_string(),
            dir: cwd.display().to_string(),
        })?;
    let rel = plan::repo_relative(&path, repo).ok_or_else(|| BadInput::WorkflowOutside {
        path: path.display().to_string(),
        repo: repo.display().to_string(),
    })?;
    Ok((path, rel))
}
