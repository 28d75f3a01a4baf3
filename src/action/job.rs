//! Running one job in a step: the engine with a check run (the workflow token), the CLI's
//! progress lines, an optional tracking comment, and the marks a re-run needs (the job's
//! `action_run` event and the list of unfinished jobs whose branches are pushed at the end);
//! then the step's outputs, summary and annotations.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use secrecy::SecretString;

use super::branch::Unfinished;
use super::replies::{self as action_replies, Ending};
use super::report::{self, NotRun};
use super::start::Start;
use super::tracking::{TrackedComment, TrackingReporter};
use super::{ActionConfig, ActionRun, StepContext, TokenCheckRuns, commands};
use crate::checks::{CheckRunReporter, Face, FinalRecord, ReportState, ReporterConfig};
use crate::comments::replies::{self, JobLink};
use crate::engine::{
    DlqMode, Engine, NewRun, Progress, Reporter, ResumeRequest, Resumed, RetryRequest,
};
use crate::github::{GitHubClient, RetryPolicy};
use crate::store::{Job, JobEvent};
use crate::types::{CommitSha, JobId, Phase, PrNumber};

/// How often the tracking comment shows progress at most (phase changes go at once).
const TRACKING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// One job to run in this step.
pub(crate) struct JobRequest {
    pub workflow: PathBuf,
    pub start: Start,
    /// Put before the check run's summary.
    pub preface: Option<String>,
    /// The commit the check run (and a new job) is for, and its pull request.
    pub head_sha: String,
    pub pr: Option<PrNumber>,
    /// The comment that follows the job, and the command it answers.
    pub tracking: Option<(TrackedComment, &'static str)>,
}

/// A link to `job` for replies: its check run when it has one, else this workflow run.
pub(crate) fn job_link(step: &StepContext, job: &Job) -> JobLink {
    let url = match job.check_run_id {
        Some(id) => format!("{}/{}/runs/{id}", step.env.server_url, step.env.repository),
        None => step
            .env
            .attempt_url()
            .unwrap_or_else(|| format!("{}/{}", step.env.server_url, step.env.repository)),
    };
    JobLink { id: job.id, url }
}

/// The workflow token's client, when the step has a token.
pub(crate) fn client(
    step: &StepContext,
    config: &ActionConfig,
) -> anyhow::Result<Option<GitHubClient>> {
    let Some(token) = config
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    Ok(Some(GitHubClient::with_token(
        &step.env.api_url,
        SecretString::from(token.to_string()),
        RetryPolicy::default(),
    )?))
}

pub(crate) async fn run_job(
    engine: &Engine,
    step: &StepContext,
    config: &ActionConfig,
    repo: &Path,
    req: JobRequest,
) -> anyhow::Result<ActionRun> {
    let check = match client(step, config)? {
        Some(client) => {
            let sink = TokenCheckRuns::new(client, step.env.repository.clone())
                .with_preface(req.preface.clone());
            let config = ReporterConfig {
                details_url: step.env.run_url(),
                head_sha: Some(req.head_sha.clone()),
                cancel: Some(engine.cancel.clone()),
                face: Face::Action,
                ..ReporterConfig::default()
            };
            Some(CheckRunReporter::spawn(sink, engine.store.clone(), config))
        }
        None => {
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
    let tracking = req.tracking.as_ref().map(|(comment, _)| {
        TrackingReporter::spawn(comment.clone(), engine.store.clone(), TRACKING_INTERVAL)
    });
    let unfinished = Unfinished::new(&engine.state_dir);
    let tee = Arc::new(Tee {
        log: engine.reporter.clone(),
        check: check.clone(),
        tracking: tracking.clone(),
        job: Mutex::new(None),
        marks: Marks {
            store: engine.store.clone(),
            unfinished: unfinished.clone(),
            run_id: step.env.run_id.clone(),
            attempt: step.env.run_attempt,
            url: step.env.attempt_url(),
            recorded: Mutex::new(Vec::new()),
        },
    });
    let eng = Engine {
        reporter: tee.clone(),
        ..engine.clone()
    };
    let result = match &req.start {
        Start::New => eng
            .run(&NewRun {
                repo: repo.to_path_buf(),
                workflow_path: req.workflow.clone(),
                max_parallel: config.max_parallel,
                repo_name: Some(step.env.repository.clone()),
                pr_number: req.pr,
                head_sha: Some(CommitSha(req.head_sha.clone())),
                base_commit: None,
                workflow_text: None,
            })
            .await
            .map(Resumed::Ran),
        Start::Resume { job, budget } => {
            let request = ResumeRequest {
                dlq: DlqMode::Reprocessable,
                max_parallel: config.max_parallel,
                budget: *budget,
            };
            eng.resume(*job, &request).await
        }
        Start::Retry { job, items } => {
            let request = RetryRequest {
                items: items.clone(),
                max_parallel: config.max_parallel,
                ..RetryRequest::default()
            };
            eng.retry(*job, &request).await
        }
    };
    // Always, whatever the engine returned: the check run must not stay "in progress".
    let state = match &check {
        Some(c) => Some(c.finish().await),
        None => None,
    };
    tee.marks.settle().await;
    let job = match (&result, &req.start) {
        (Ok(Resumed::Ran(o)), _) => Some(o.job),
        (_, Start::Resume { job, .. } | Start::Retry { job, .. }) => Some(*job),
        _ => tee.job(),
    };
    let Some(job) = job else {
        // Only an error gets here: the workflow was refused before a job was recorded.
        if let (Some((_, command)), Some(t), Err(e)) = (&req.tracking, &tracking, &result) {
            t.finish(replies::command_failed(command, &format!("{e:#}")))
                .await;
        }
        result?;
        anyhow::bail!("the engine returned without naming a job");
    };
    let record = engine.store.get_job(job).await?;
    if record.phase == Phase::Done {
        let _ = unfinished.remove(job);
    }
    let not_run = match &result {
        Ok(Resumed::Held { holder, since }) => {
            let _ = engine
                .store
                .append_outside_event(
                    job,
                    &JobEvent::ResumeRefused {
                        holder: holder.clone(),
                        since: *since,
                        what: "action".into(),
                    },
                )
                .await;
            println!(
                "{}",
                commands::notice(
                    "prodigy: job held",
                    &format!(
                        "job {job} is being run by {holder} since {since}; that run covers every \
                         pending item, so this step did nothing"
                    ),
                )
            );
            Some(NotRun::Held(format!("{holder} since {since}")))
        }
        Ok(Resumed::AlreadyFinished { .. }) => Some(NotRun::Finished),
        _ => None,
    };
    if let (Some((_, command)), Some(t)) = (&req.tracking, &tracking) {
        let body = final_comment(engine, step, &req, command, &record, &result).await;
        t.finish(body).await;
    }
    let written = write_report(engine, step, job, not_run.as_ref(), state.as_ref(), repo).await;
    let resumed = result?;
    written.context("writing the step's outputs and summary")?;
    Ok(ActionRun { job, resumed })
}

/// The tracking comment's last body.
async fn final_comment(
    engine: &Engine,
    step: &StepContext,
    req: &JobRequest,
    command: &'static str,
    job: &Job,
    result: &anyhow::Result<Resumed>,
) -> String {
    let link = job_link(step, job);
    let tracking = &req.tracking.as_ref().expect("a tracked job").0.tracking;
    match result {
        Ok(Resumed::Held { holder, since }) => replies::resume_held(&link, holder, *since),
        Ok(Resumed::AlreadyFinished { status, dlq }) => {
            replies::already_finished(&link, *status, *dlq)
        }
        Err(e) => replies::command_failed(command, &format!("{e:#}")),
        Ok(Resumed::Ran(_)) => match FinalRecord::load(&engine.store, job.id).await {
            Ok(r) => action_replies::finished(
                tracking,
                &Ending {
                    job: job.id,
                    status: r.job.status,
                    phase: r.job.phase,
                    counts: &r.counts,
                    dlq: &r.dlq,
                    error: r.job.error.as_deref(),
                },
            ),
            Err(e) => replies::command_failed(command, &format!("{e:#}")),
        },
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
        let mut outputs = report::outputs(&record);
        if matches!(not_run, Some(NotRun::Held(_))) {
            for (name, value) in &mut outputs {
                if *name == "status" {
                    *value = "held".into();
                }
            }
        }
        let text = report::outputs_text(&outputs, &commands::output_delimiter())
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

/// What a step notes about each job it starts or continues, for a re-run: the `action_run`
/// event (which run and attempt) and the job on the unfinished list until it is done.
struct Marks {
    store: crate::store::Store,
    unfinished: Unfinished,
    run_id: Option<String>,
    attempt: u32,
    url: Option<String>,
    recorded: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Marks {
    fn job_started(&self, job: JobId) {
        if let Err(e) = self.unfinished.add(job) {
            tracing::warn!(%job, error = %e, "cannot note the job as unfinished");
        }
        let Some(run_id) = self.run_id.clone() else {
            return;
        };
        let (store, event) = (
            self.store.clone(),
            JobEvent::ActionRun {
                run_id,
                attempt: self.attempt,
                url: self.url.clone(),
            },
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let handle = rt.spawn(async move {
            if let Err(e) = store.append_outside_event(job, &event).await {
                tracing::warn!(%job, error = %e, "cannot record the workflow run on the job");
            }
        });
        self.recorded.lock().expect("marks").push(handle);
    }

    /// Waits until every event is written.
    async fn settle(&self) {
        let handles = std::mem::take(&mut *self.recorded.lock().expect("marks"));
        for h in handles {
            let _ = h.await;
        }
    }
}

/// The CLI's progress lines, the check run and the tracking comment, from one stream of events;
/// remembers the job.
struct Tee {
    log: Arc<dyn Reporter>,
    check: Option<CheckRunReporter>,
    tracking: Option<TrackingReporter>,
    job: Mutex<Option<JobId>>,
    marks: Marks,
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
            self.marks.job_started(*job);
        }
        self.log.report(event);
        if let Some(c) = &self.check {
            c.report(event);
        }
        if let Some(t) = &self.tracking {
            t.report(event);
        }
    }
}
