//! What the CLI prints: progress, outcomes, tables and JSON.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use prodigy::engine::{Engine, Progress, Reporter, Resumed, RunOutcome};
use prodigy::store::{DlqItem, Job, JobSummary, Store};
use prodigy::types::{ItemKey, JobId, JobStatus, Phase};

use super::{EXIT_HELD, EXIT_USAGE, ExportFormat, exit_for};

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

pub fn jobs(list: &[JobSummary], as_json: bool) -> anyhow::Result<u8> {
    if as_json {
        return print_json(list);
    }
    if list.is_empty() {
        out!("no jobs yet: start one with `prodigy run WORKFLOW.yml`");
        return Ok(0);
    }
    let ids: Vec<JobId> = list.iter().map(|s| s.job.id).collect();
    let shown = super::ids::unique_prefixes(&ids);
    let w = shown.first().map_or(8, String::len);
    out!(
        "{:<w$}  {:<16}  {:<7}  {:>6}  {:>6}  {:>6}  {:>4}  {:>9}  {:<19}  workflow",
        "job",
        "status",
        "phase",
        "items",
        "merged",
        "failed",
        "dlq",
        "cost",
        "created"
    );
    for (s, id) in list.iter().zip(&shown) {
        let j = &s.job;
        let c = &s.counts;
        out!(
            "{:<w$}  {}  {:<7}  {:>6}  {:>6}  {:>6}  {:>4}  {:>9}  {:<19}  {}",
            id,
            super::color::status(&j.status.to_string(), 16),
            j.phase,
            c.total,
            c.merged,
            c.failed,
            c.dlq,
            format!("${:.4}", s.usage.cost_usd),
            j.created_at.format("%Y-%m-%d %H:%M:%S"),
            j.workflow_name
        );
    }
    Ok(0)
}

pub async fn status(store: &Store, job: &Job, as_json: bool) -> anyhow::Result<u8> {
    let counts = store.item_counts(job.id).await?;
    let usage = store.job_usage(job.id).await?;
    if as_json {
        out!(
            "{}",
            serde_json::to_string_pretty(&json!({"job": job, "counts": counts, "usage": usage}))?
        );
        return Ok(0);
    }
    out!("job       {}", job.id);
    out!("workflow  {} ({})", job.workflow_name, job.workflow_path);
    out!("repo      {}", job.repo_path);
    out!(
        "status    {}",
        super::color::status(&job.status.to_string(), 0)
    );
    out!("phase     {}", job.phase);
    if let Some(b) = &job.refs.branch {
        out!("branch    {b}");
    }
    out!("created   {}", job.created_at);
    out!("updated   {}", job.updated_at);
    if let Some(e) = &job.error {
        out!("error     {e}");
    }
    out!(
        "items     {} total: {} pending, {} running, {} succeeded, {} failed; {} merged; {} in DLQ",
        counts.total,
        counts.pending,
        counts.running,
        counts.succeeded,
        counts.failed,
        counts.merged,
        counts.dlq
    );
    print_usage(&usage);
    Ok(0)
}

/// Tokens and cost of a job's agents: the total, per phase, and the most expensive items.
fn print_usage(u: &prodigy::store::JobUsage) {
    if u.runs == 0 {
        return;
    }
    out!("usage     {}", usage_line(&u.total));
    for (phase, p) in &u.by_phase {
        out!("  {phase:<8}{}", usage_line(p));
    }
    let top = u.most_expensive(5);
    if !top.is_empty() {
        out!("most expensive items:");
        for (key, p) in top {
            out!("  {key:<24}  {}", usage_line(p));
        }
    }
}

pub fn usage_line(u: &prodigy::types::Usage) -> String {
    format!(
        "{}, {} turns, {:.1}s API",
        u.cost_and_tokens(),
        u.turns,
        u.api_ms as f64 / 1000.0
    )
}

pub async fn events(store: &Store, job: JobId, follow: bool, as_json: bool) -> anyhow::Result<u8> {
    let mut after = 0i64;
    loop {
        let batch = store.events(job, after, 1000).await?;
        for e in &batch {
            after = e.seq;
            print_event(e, as_json)?;
        }
        if batch.len() == 1000 {
            continue;
        }
        if !follow || super::stdout_closed() {
            return Ok(0);
        }
        let running = store.get_job(job).await?.status == prodigy::types::JobStatus::Running;
        // A job recorded as running with nobody holding it was interrupted: nothing will come.
        let orphaned = running && store.lock_holder(job).await?.is_none();
        if orphaned {
            eout!(
                "job {job} is not running anywhere (interrupted?); `prodigy resume {job}` continues it"
            );
        }
        if !running || orphaned {
            // One more read: events written between the last read and the status change.
            for e in &store.events(job, after, 1000).await? {
                print_event(e, as_json)?;
            }
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_event(e: &prodigy::store::Event, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        out!("{}", serde_json::to_string(e)?);
    } else {
        out!(
            "{:>6}  {}  {:<20}  {}",
            e.seq,
            e.at.format("%H:%M:%S%.3f"),
            e.kind,
            e.data
        );
    }
    Ok(())
}

fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<u8> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(0)
}

pub fn dlq_list(rows: &[DlqItem], as_json: bool) -> anyhow::Result<u8> {
    if as_json {
        return print_json(rows);
    }
    if rows.is_empty() {
        out!("the DLQ is empty");
        return Ok(0);
    }
    let ids: Vec<JobId> = rows.iter().map(|r| r.job_id).collect();
    let w = super::ids::prefix_len(&ids);
    out!(
        "{:<w$}  {:<24}  {:>8}  {:<24}  {:<12}  last message",
        "job",
        "item",
        "failures",
        "error class",
        "signature"
    );
    for r in rows {
        let msg = r.last_message.lines().last().unwrap_or("");
        out!(
            "{:<w$}  {:<24}  {:>8}  {:<24}  {:<12}  {}",
            &r.job_id.to_string()[..w],
            r.key,
            r.failure_count,
            r.error_class,
            &r.signature[..r.signature.len().min(12)],
            msg
        );
    }
    Ok(0)
}

pub async fn dlq_show(
    store: &Store,
    job: &Job,
    key: &ItemKey,
    as_json: bool,
) -> anyhow::Result<u8> {
    let row = store
        .dlq(Some(job.id))
        .await?
        .into_iter()
        .find(|r| &r.key == key);
    let history = store.attempts(job.id, key).await?;
    if history.is_empty() && row.is_none() {
        eout!(
            "job {} has no item '{key}' (see `prodigy dlq list {}`)",
            job.id,
            job.id
        );
        return Ok(EXIT_USAGE);
    }
    if as_json {
        out!(
            "{}",
            serde_json::to_string_pretty(&json!({"dlq": row, "attempts": history}))?
        );
        return Ok(0);
    }
    match &row {
        Some(r) => {
            out!("item        {}", r.key);
            out!(
                "in DLQ      yes ({} failures, reprocessable: {})",
                r.failure_count,
                r.reprocessable
            );
            out!("error class {}", r.error_class);
            out!("signature   {}", r.signature);
            out!("first/last  {} / {}", r.first_failure, r.last_failure);
            out!("data        {}", r.data);
            if let Some(t) = &r.json_log_location {
                out!("transcript  {t}");
            }
            if let Some(s) = &r.session_id {
                out!("session     {s}");
            }
        }
        None => out!("item        {key} (not in the DLQ)"),
    }
    out!("history:");
    for a in &history {
        let outcome = match a.success {
            Some(true) => "succeeded".to_string(),
            Some(false) => format!(
                "failed ({})",
                a.error_class
                    .map_or("unknown".to_string(), |c| c.to_string())
            ),
            None => "running or interrupted".to_string(),
        };
        out!("  attempt {} at {}: {}", a.attempt, a.started_at, outcome);
        if let Some(code) = a.exit_code {
            out!("    exit code {code}");
        }
        if let Some(m) = &a.message {
            for l in m.lines().take(12) {
                out!("    | {l}");
            }
        }
        if let Some(l) = &a.log_path {
            out!("    log: {l}");
        }
        if let Some(w) = &a.worktree {
            out!(
                "    worktree: {w} (branch {})",
                a.branch.as_deref().unwrap_or("-")
            );
        }
    }
    let refs = prodigy::engine::git::git(
        Path::new(&job.repo_path),
        &[
            "for-each-ref",
            "--format=%(refname) %(objectname:short)",
            &format!(
                "refs/prodigy/{}/{}",
                job.id,
                prodigy::engine::worktree::sanitize_ref(&key.0)
            ),
        ],
    )
    .await
    .unwrap_or_default();
    if !refs.is_empty() {
        out!("kept commits of failed attempts (inspect with `git log REF`):");
        for r in refs.lines() {
            out!("  {r}");
        }
    }
    Ok(0)
}

pub async fn dlq_export(store: &Store, job: JobId, format: ExportFormat) -> anyhow::Result<u8> {
    let rows = store.dlq(Some(job)).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let history = store.attempts(job, &r.key).await?;
        out.push(json!({"item": r, "attempts": history}));
    }
    match format {
        ExportFormat::Json => out!("{}", serde_json::to_string_pretty(&out)?),
        ExportFormat::Jsonl => {
            for v in out {
                out!("{}", serde_json::to_string(&v)?);
            }
        }
    }
    Ok(0)
}

/// What `prodigy logs` shows.
pub struct LogsRequest {
    pub item: Option<ItemKey>,
    pub attempt: Option<u32>,
    pub follow: bool,
    pub raw: bool,
}

/// The transcripts under a job's log directory that the request names, oldest first. Files, not
/// the store: a running agent's transcript is there before its run is recorded.
fn transcripts(logs: &Path, req: &LogsRequest) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.to_string_lossy().ends_with(".jsonl") {
                out.push(p);
            }
        }
    }
    let root = match &req.item {
        Some(key) => logs
            .join("items")
            .join(prodigy::engine::worktree::sanitize_ref(&key.0)),
        None => logs.to_path_buf(),
    };
    let mut found = Vec::new();
    walk(&root, &mut found);
    if let Some(n) = req.attempt {
        let prefix = format!("attempt-{n}.");
        found.retain(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&prefix))
        });
    }
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    found.sort_by(|a, b| modified(a).cmp(&modified(b)).then(a.cmp(b)));
    found
}

pub async fn logs(store: &Store, job: &Job, logs: &Path, req: &LogsRequest) -> anyhow::Result<u8> {
    use std::collections::HashMap;
    use std::io::{BufRead, Seek};
    // Bytes of each transcript already printed (for --follow).
    let mut printed: HashMap<std::path::PathBuf, u64> = HashMap::new();
    let mut any = false;
    loop {
        for path in transcripts(logs, req) {
            let offset = printed.entry(path.clone()).or_insert(0);
            let Ok(mut file) = std::fs::File::open(&path) else {
                continue;
            };
            if *offset == 0 {
                if !req.raw {
                    out!("=== {}", path.display());
                }
                any = true;
            }
            file.seek(std::io::SeekFrom::Start(*offset))?;
            let mut reader = std::io::BufReader::new(file);
            let mut line = String::new();
            // Only whole lines: a line still being written is read on the next round.
            while reader.read_line(&mut line)? > 0 && line.ends_with('\n') {
                *offset += line.len() as u64;
                if req.raw {
                    crate::cli::write_out(format_args!("{line}"));
                } else if let Some(text) = prodigy::engine::agent::render_line(line.trim_end()) {
                    out!("{text}");
                }
                line.clear();
            }
        }
        if !req.follow || super::stdout_closed() {
            break;
        }
        let running = store.get_job(job.id).await?.status == prodigy::types::JobStatus::Running;
        if !running || store.lock_holder(job.id).await?.is_none() {
            if req.follow && !any {
                break;
            }
            // One more round for lines written as the job stopped.
            let before: u64 = printed.values().sum();
            let after: u64 = transcripts(logs, req)
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
                .sum();
            if after == before {
                break;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if !any && !req.follow {
        let what = match &req.item {
            Some(k) => format!("item '{k}'"),
            None => "this job".to_string(),
        };
        eout!(
            "no agent transcripts for {what} of job {} under {} (claude: steps write them; see `prodigy status {}`)",
            job.id,
            logs.display(),
            job.id
        );
        return Ok(EXIT_USAGE);
    }
    Ok(0)
}
