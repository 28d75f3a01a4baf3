//! What the CLI prints: progress, outcomes, tables and JSON. This module holds the progress
//! reporter, `validate` and run outcomes; `jobs`, `dlq` and `logs` what those commands print.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use prodigy::engine::{Engine, Progress, Reporter, Resumed, RunOutcome};
use prodigy::types::{JobId, JobStatus, Phase};

use super::{EXIT_HELD, EXIT_USAGE, ExportFormat, exit_for};

mod dlq;
mod jobs;
mod logs;

pub use dlq::{dlq_export, dlq_list, dlq_show};
pub use jobs::{events, jobs, status};
pub use logs::{LogsRequest, logs};

/// Progress on stderr: a bar on a terminal, one plain line per transition otherwise.
pub struct CliReporter {
    bar: Option<Mutex<Option<ProgressBar>>>,
}

impl CliReporter {
    pub fn new(tty: bool) -> Self {
        CliReporter {
            bar: tty.then(|| Mutex::new(None)),
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => match bar.lock().expect("progress bar lock").as_ref() {
                Some(b) => b.println(text),
                None => eout!("{text}"),
            },
            None => eout!("{text}"),
        }
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = &self.bar
            && let Some(b) = bar.lock().expect("progress bar lock").as_ref()
        {
            f(b);
        }
    }
}

impl Reporter for CliReporter {
    fn report(&self, event: &Progress) {
        match event {
            Progress::JobStarted {
                job,
                workflow,
                resumed,
                ..
            } => {
                let verb = if *resumed { "resuming" } else { "running" };
                self.line(format!("{verb} {workflow} as job {job}"));
            }
            Progress::PhaseStarted { phase } => self.line(format!("phase: {phase}")),
            Progress::ItemsPlanned { to_run, total } => {
                self.line(format!("map: {to_run} items to run ({total} in the job)"));
                if let Some(bar) = &self.bar {
                    let b = ProgressBar::new(*to_run as u64);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{bar:40} {pos}/{len} items  {msg}  [{elapsed_precise}]",
                        )
                        .expect("a valid template"),
                    );
                    b.enable_steady_tick(Duration::from_millis(200));
                    *bar.lock().expect("progress bar lock") = Some(b);
                }
            }
            Progress::ItemStarted { key, attempt } => {
                if self.bar.is_none() {
                    eout!("item {key}: started (attempt {attempt})");
                }
            }
            Progress::ItemSucceeded { .. } => {}
            Progress::ItemMerged { key } => {
                self.with_bar(|b| b.inc(1));
                if self.bar.is_none() {
                    eout!("item {key}: merged");
                }
            }
            Progress::ItemFailed {
                key,
                class,
                message,
            } => {
                self.with_bar(|b| b.inc(1));
                let first = message.lines().next().unwrap_or("");
                let last = message
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                let text = if first == last {
                    format!("item {key}: FAILED ({class}) {first}")
                } else {
                    format!("item {key}: FAILED ({class}) {first}\n    {last}")
                };
                self.line(text);
            }
            Progress::Note(text) => self.line(text.clone()),
            Progress::JobFinished { .. } => {
                if let Some(bar) = &self.bar
                    && let Some(b) = bar.lock().expect("progress bar lock").take()
                {
                    b.finish_and_clear();
                }
            }
        }
    }
}

/// `prodigy validate`: warnings and errors with file:line:col on stderr, or with `--json` one
/// document on stdout: `{"workflow", "valid", "kind", "errors": [...], "warnings": [...]}`,
/// each finding `{"line", "column", "message"}` (line and column null when unknown).
pub fn validate(path: &Path, repo: &Path, as_json: bool) -> anyhow::Result<u8> {
    use prodigy::workflow::{self, WorkflowError, WorkflowKind};
    let finding = |line: Option<usize>, column: Option<usize>, message: &str| json!({ "line": line, "column": column, "message": message });
    let loaded = std::fs::read_to_string(path)
        .map_err(|source| WorkflowError::Read {
            path: path.to_path_buf(),
            source,
        })
        .and_then(|text| Ok((workflow::parse(path, &text)?, text)));
    let (kind, warnings, errors) = match loaded {
        Ok((parsed, text)) => {
            let mut warnings: Vec<_> = parsed
                .warnings
                .iter()
                .map(|w| finding(Some(w.line), Some(w.column), &w.message))
                .collect();
            // `${item.field}` is checked against the map input when it is a file there now, in
            // the repository the job would run in.
            let sample = match &parsed.workflow.kind {
                WorkflowKind::MapReduce(mr) => {
                    let root = git2::Repository::discover(repo)
                        .ok()
                        .and_then(|r| r.workdir().map(Path::to_path_buf))
                        .unwrap_or_else(|| repo.to_path_buf());
                    match workflow::input::sample_file_items(&mr.map, &root) {
                        Some(Err(e)) => {
                            let m = format!("${{item...}} fields not checked: {e}");
                            warnings.push(finding(Some(mr.map.agent_template_line), None, &m));
                            None
                        }
                        found => found.and_then(Result::ok),
                    }
                }
                WorkflowKind::Standard { .. } => None,
            };
            let errors: Vec<_> =
                workflow::interpolate::check_workflow(&parsed.workflow, &text, sample.as_ref())
                    .iter()
                    .map(|f| finding(Some(f.line), Some(f.column), &f.message))
                    .collect();
            (Some(describe(&parsed.workflow)), warnings, errors)
        }
        Err(e) => {
            let (line, column) = e.position().unzip();
            (
                None,
                Vec::new(),
                vec![finding(line, column, &e.to_string())],
            )
        }
    };
    let valid = errors.is_empty();
    if as_json {
        let doc = json!({
            "workflow": path.display().to_string(),
            "valid": valid,
            "kind": kind,
            "errors": errors,
            "warnings": warnings,
        });
        out!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_findings(path, &warnings, "warning");
        print_findings(path, &errors, "error");
        if let Some(kind) = kind.filter(|_| valid) {
            out!(
                "{}: ok ({kind}, {} warnings)",
                path.display(),
                warnings.len()
            );
        }
    }
    Ok(if valid { 0 } else { EXIT_USAGE })
}

/// Findings as `file:line[:col]: what: message` on stderr; a parse error already names its place.
fn print_findings(path: &Path, findings: &[serde_json::Value], what: &str) {
    for f in findings {
        let message = f["message"].as_str().unwrap_or_default();
        match (f["line"].as_u64(), f["column"].as_u64()) {
            _ if message.starts_with(&path.display().to_string()) => eout!("error: {message}"),
            (Some(line), Some(col)) => eout!("{}:{line}:{col}: {what}: {message}", path.display()),
            (Some(line), None) => eout!("{}:{line}: {what}: {message}", path.display()),
            _ => eout!("{what}: {message}"),
        }
    }
}

fn describe(wf: &prodigy::workflow::Workflow) -> String {
    match &wf.kind {
        prodigy::workflow::WorkflowKind::Standard { commands } => {
            format!("standard workflow, {} steps", commands.len())
        }
        prodigy::workflow::WorkflowKind::MapReduce(mr) => format!(
            "mapreduce workflow: {} setup steps, {} agent steps, max_parallel {}, {} reduce steps",
            mr.setup.as_ref().map_or(0, |p| p.commands.len()),
            mr.map.agent_template.len(),
            mr.map.max_parallel,
            mr.reduce.as_ref().map_or(0, |p| p.commands.len()),
        ),
    }
}

pub fn outcome(o: &RunOutcome, as_json: bool, interrupted: bool) -> u8 {
    if as_json {
        out!(
            "{}",
            serde_json::to_string_pretty(o).expect("outcome serializes")
        );
    } else {
        let c = &o.counts;
        let status = super::color::status(&o.status.to_string(), 0);
        out!("job {}: {status} (phase {})", o.job, o.phase);
        if c.total > 0 {
            out!(
                "items: {} total, {} merged, {} failed, {} pending, {} in DLQ",
                c.total,
                c.merged,
                c.failed,
                c.pending,
                c.dlq
            );
        }
        if let Some(e) = &o.error {
            out!("error: {e}");
        }
        if o.duplicates_removed > 0 {
            out!("{} duplicate items were run once", o.duplicates_removed);
        }
        out!(
            "branch: {} (merge it with `git merge {}`)",
            o.branch,
            o.branch
        );
        if o.status == JobStatus::BudgetExhausted {
            out!(
                "next: `prodigy status {}` shows what was spent; `prodigy resume {} --budget <USD>` continues it with a raised budget",
                o.job,
                o.job
            );
        } else if o.phase != Phase::Done {
            out!(
                "next: `prodigy status {}` shows where it stopped; `prodigy resume {}` continues it",
                o.job,
                o.job
            );
        } else if c.dlq > 0 {
            out!(
                "next: `prodigy dlq list {}` shows what failed; `prodigy dlq retry {}` runs it again",
                o.job,
                o.job
            );
        }
    }
    exit_for(o.status, interrupted)
}

pub async fn resumed(engine: &Engine, job: JobId, r: Resumed, as_json: bool, what: &str) -> u8 {
    match r {
        Resumed::Ran(o) => outcome(&o, as_json, engine.cancel.is_cancelled()),
        Resumed::Held { holder, since } => {
            let text = format!(
                "job {job} is already being resumed by {holder} since {since}; that run already covers every pending item, so this {what} does nothing. Check it with `prodigy status {job}`."
            );
            let _ = engine
                .store
                .append_outside_event(
                    job,
                    &prodigy::store::JobEvent::ResumeRefused {
                        holder: holder.clone(),
                        since,
                        what: what.to_string(),
                    },
                )
                .await;
            if as_json {
                out!(
                    "{}",
                    json!({"outcome": "held", "job": job, "holder": holder, "since": since, "message": text})
                );
            } else {
                eout!("{text}");
            }
            EXIT_HELD
        }
        Resumed::AlreadyFinished { status, dlq } => {
            let text = if dlq > 0 {
                format!(
                    "job {job} has already finished ({status}); {dlq} items are in its DLQ: `prodigy dlq retry {job}` reprocesses them"
                )
            } else {
                format!("job {job} has already finished ({status}); nothing to resume")
            };
            if as_json {
                out!(
                    "{}",
                    json!({"outcome": "finished", "job": job, "status": status, "dlq": dlq, "message": text})
                );
            } else {
                out!("{text}");
            }
            0
        }
    }
}

fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<u8> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(0)
}
