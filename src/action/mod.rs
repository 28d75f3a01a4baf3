//! The GitHub Action face: `prodigy action` runs a workflow as one step of a GitHub Actions job,
//! with the same engine, store and job lock as `prodigy run`.
//!
//! - in: the runner's environment and the event file ([`env`]), the action's inputs
//!   ([`ActionConfig`]), and whether to continue an unfinished job ([`plan`]);
//! - while it runs: a check run on the event's head commit through the same reporter as the App's,
//!   with the workflow token ([`sink`]);
//! - out: the step's outputs, its summary and annotations as workflow commands ([`report`],
//!   [`commands`]). Exit codes are the CLI's.

pub mod commands;
pub mod env;
pub mod plan;
pub mod report;
pub mod sink;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Args;
use secrecy::SecretString;

use crate::checks::{CheckRunReporter, Face, FinalRecord, ReportState, ReporterConfig};
use crate::engine::worktree::job_branch;
use crate::engine::{DlqMode, Engine, NewRun, Progress, Reporter, ResumeRequest, Resumed, git};
use crate::github::{GitHubClient, RetryPolicy};
use crate::store::StoreError;
use crate::types::{JobId, Phase};

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

/// Runs the step: picks the job, runs it with a check run, writes the outputs, the summary and
/// the annotations. `engine` is the CLI's (store, state directory, progress lines, Ctrl-C);
/// `dir` is the repository's directory.
pub async fn run(
    engine: &Engine,
    step: &StepContext,
    config: &ActionConfig,
    dir: &Path,
) -> anyhow::Result<ActionRun> {
    let repo = git::toplevel(dir).await.with_context(|| {
        format!(
            "{} is not inside a git repository: check the repository out first \
             (`actions/checkout`) or set the action's `working-directory`",
            dir.display()
        )
    })?;
    let (workflow, workflow_rel) = resolve_workflow(&config.workflow, &repo)?;
    let start = choose_start(engine, step, config, &repo, &workflow_rel).await?;

    let check = match &config.token {
        Some(token) if !token.trim().is_empty() => {
            let client = GitHubClient::with_token(
                &step.env.api_url,
                SecretString::from(token.trim().to_string()),
                RetryPolicy::default(),
            )?;
            let sink = TokenCheckRuns::new(client, step.env.repository.clone());
            let config = ReporterConfig {
                details_url: step.env.run_url(),
                head_sha: Some(step.event.head_sha.clone()),
                cancel: Some(engine.cancel.clone()),
                face: Face::Action,
                ..ReporterConfig::default()
            };
            Some(CheckRunReporter::spawn(sink, engine.store.clone(), config))
        }
        _ => {
            println!(
                "{}",
                commands::warning(
                    "prodigy: no check run",
                    "no token: pass the action's `token` input (default `${{ github.token }}`) \
                     or set GITHUB_TOKEN to get a check run; the job runs without one"
                )
            );
            None
        }
    };
    let tee = Arc::new(Tee {
        log: engine.reporter.clone(),
        check: check.clone(),
        job: Mutex::new(None),
    });
    let eng = Engine {
        reporter: tee.clone(),
        ..engine.clone()
    };
    let result = match start {
        Start::New => eng
            .run(&NewRun {
                repo: repo.clone(),
                workflow_path: workflow,
                max_parallel: config.max_parallel,
                repo_name: Some(step.env.repository.clone()),
                pr_number: step.event.pr_number,
                head_sha: Some(crate::types::CommitSha(step.event.head_sha.clone())),
                base_commit: None,
                workflow_text: None,
            })
            .await
            .map(Resumed::Ran),
        Start::Resume(id) => {
            let request = ResumeRequest {
                dlq: DlqMode::Reprocessable,
                max_parallel: config.max_parallel,
                budget: None,
            };
            eng.resume(id, &request).await
        }
    };
    // Always, whatever the engine returned: the check run must not stay "in progress".
    let state = match &check {
        Some(c) => Some(c.finish().await),
        None => None,
    };
    let job = match (&result, start) {
        (Ok(Resumed::Ran(o)), _) => Some(o.job),
        (_, Start::Resume(id)) => Some(id),
        _ => tee.job(),
    };
    let Some(job) = job else {
        // Only an error gets here: the workflow was refused before a job was recorded.
        result?;
        anyhow::bail!("the engine returned without naming a job");
    };
    let not_run = match &result {
        Ok(Resumed::Held { holder, since }) => {
            Some(NotRun::Held(format!("{holder} since {since}")))
        }
        Ok(Resumed::AlreadyFinished { .. }) => Some(NotRun::Finished),
        _ => None,
    };
    let written = write_report(engine, step, job, not_run.as_ref(), state.as_ref(), &repo).await;
    let resumed = result?;
    written.context("writing the step's outputs and summary")?;
    Ok(ActionRun { job, resumed })
}

#[derive(Debug, Clone, Copy)]
enum Start {
    New,
    Resume(JobId),
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

async fn choose_start(
    engine: &Engine,
    step: &StepContext,
    config: &ActionConfig,
    repo: &Path,
    workflow: &str,
) -> anyhow::Result<Start> {
    match &config.resume {
        ResumeMode::New => Ok(Start::New),
        ResumeMode::Job(given) => {
            let job = match engine.store.find_job(given).await {
                Ok(job) => job,
                Err(e @ (StoreError::JobNotFound(_) | StoreError::AmbiguousJob { .. })) => {
                    return Err(BadInput::Resume {
                        job: given.clone(),
                        reason: format!(
                            "{e}. A runner's own SQLite database starts empty in every run; \
                             jobs outlive a run in a shared database (`database-url`)"
                        ),
                    }
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            if job.phase != Phase::Done {
                let branch_here = git::branch_exists(repo, &job_branch(job.id)).await?;
                if let Some(why) = plan::cannot_continue_here(&job, repo, branch_here) {
                    return Err(BadInput::Resume {
                        job: given.clone(),
                        reason: format!("job {} cannot continue here: {why}", job.id),
                    }
                    .into());
                }
            }
            Ok(Start::Resume(job.id))
        }
        ResumeMode::Auto => {
            let jobs = engine
                .store
                .find_jobs_by_head_sha(&step.env.repository, &step.event.head_sha)
                .await?;
            let mut first_refusal = None;
            for job in plan::unfinished_jobs(&jobs, workflow) {
                let branch_here = git::branch_exists(repo, &job_branch(job.id)).await?;
                match plan::cannot_continue_here(job, repo, branch_here) {
                    None => {
                        eprintln!(
                            "resume: auto: continuing job {} (unfinished, phase {}) of this workflow at this commit",
                            job.id, job.phase
                        );
                        return Ok(Start::Resume(job.id));
                    }
                    Some(why) => {
                        first_refusal.get_or_insert((job.id, why));
                    }
                }
            }
            if let Some((job, why)) = first_refusal {
                println!(
                    "{}",
                    commands::warning(
                        "prodigy: starting a new job",
                        &format!(
                            "job {job} of this workflow at this commit is unfinished, but {why}; \
                             a new job starts instead"
                        ),
                    )
                );
            }
            Ok(Start::New)
        }
    }
}

/// Appends the outputs and the summary to the runner's files and prints the annotations.
async fn write_report(
    engine: &Engine,
    step: &StepContext,
    job: JobId,
    not_run: Option<&NotRun>,
    check: Option<&ReportState>,
    repo: &Path,
) -> anyhow::Result<()> {
    let record = FinalRecord::load(&engine.store, job).await?;
    let input = record.input(engine.cancel.is_cancelled(), Face::Action);
    if let Some(path) = &step.env.output {
        let text = report::outputs_text(&report::outputs(&record), &commands::output_delimiter())
            .map_err(anyhow::Error::msg)?;
        append(path, "GITHUB_OUTPUT", &text)?;
    }
    if let Some(path) = &step.env.step_summary {
        let refused = check.and_then(|s| s.refused.as_deref());
        append(
            path,
            "GITHUB_STEP_SUMMARY",
            &report::step_summary(&input, not_run, refused),
        )?;
    }
    if !matches!(not_run, Some(NotRun::Held(_))) {
        let workspace = step
            .env
            .workspace
            .as_ref()
            .map(|w| w.canonicalize().unwrap_or_else(|_| w.clone()));
        let prefix = commands::workspace_prefix(repo, workspace.as_deref());
        let mut out = std::io::stdout().lock();
        for line in report::failure_commands(&input, &prefix) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

fn append(path: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {name} ({})", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {name} ({})", path.display()))
}

/// The CLI's progress lines and the check run, from one stream of events; remembers the job.
struct Tee {
    log: Arc<dyn Reporter>,
    check: Option<CheckRunReporter>,
    job: Mutex<Option<JobId>>,
}

impl Tee {
    fn job(&self) -> Option<JobId> {
        *self.job.lock().expect("job lock")
    }
}

impl Reporter for Tee {
    fn report(&self, event: &Progress) {
        if let Progress::JobStarted { job, .. } = event {
            *self.job.lock().expect("job lock") = Some(*job);
        }
        self.log.report(event);
        if let Some(c) = &self.check {
            c.report(event);
        }
    }
}
