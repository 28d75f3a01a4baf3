//! Runs the steps of a phase or an agent: `shell`, `claude`, `write_file` and `foreach`, with
//! `when`, timeouts, captures, `commit_required`, `on_failure`, `on_success` and `validate`.

use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::agent::{self, AgentScope};
use super::classify::{FailureFacts, FailureStage, classify};
use super::git;
use super::process::{self, CommandOutput, CommandSpec};
use crate::types::ErrorClass;
use crate::workflow::interpolate::{self, Context};
use crate::workflow::{
    Action, CaptureFormat, ClaudeCommand, Foreach, ForeachInput, OnFailure, Step, Validate,
    WriteFile, WriteFormat,
};

/// Where and how steps run.
pub struct StepEnv<'a> {
    /// The worktree the steps run in.
    pub cwd: &'a Path,
    /// Every command's output is appended here.
    pub log: &'a Path,
    /// Workflow and phase environment, already resolved.
    pub env: &'a [(String, String)],
    pub claude_bin: &'a str,
    pub cancel: &'a CancellationToken,
    /// The agent's or phase's deadline: no command runs past it.
    pub deadline: Option<Instant>,
    /// Values of secret env vars, masked in logs and captured output.
    pub secrets: &'a [String],
    /// Settings and tallies shared by the `claude:` steps.
    pub agent: &'a AgentScope,
    /// The agent's built environment: every command starts with exactly this, then the
    /// workflow's and the step's variables.
    pub base_env: &'a [(String, String)],
    /// The sandbox every command runs in; `None` when it is off or missing.
    pub sandbox: Option<&'a super::sandbox::Plan>,
}

/// Why a step failed, with what classification needs.
#[derive(Debug, Clone)]
pub struct StepFailure {
    /// 1-based line of the failing step in the workflow file.
    pub line: usize,
    /// What ran, e.g. "shell `cargo test`".
    pub what: String,
    pub facts: FailureFacts,
}

impl StepFailure {
    pub fn class(&self) -> ErrorClass {
        classify(&self.facts)
    }

    /// One paragraph for a job error, a DLQ row or an annotation.
    pub fn message(&self) -> String {
        let tail = self.facts.message.trim();
        let how = describe_facts(&self.facts);
        if tail.is_empty() {
            format!("step at line {} ({}) {how}", self.line, self.what)
        } else {
            format!("step at line {} ({}) {how}:\n{tail}", self.line, self.what)
        }
    }

    fn new(step: &Step, stage: FailureStage, message: String) -> Self {
        StepFailure {
            line: step.line,
            what: describe(step),
            facts: FailureFacts {
                exit_code: None,
                signal: None,
                timed_out: false,
                message,
                stage,
            },
        }
    }

    fn from_output(step: &Step, out: &CommandOutput) -> Self {
        let mut tail = out.stderr_tail(20);
        if tail.trim().is_empty() {
            tail = last_lines(&out.stdout, 20);
        }
        StepFailure {
            line: step.line,
            what: describe(step),
            facts: FailureFacts {
                exit_code: out.exit_code,
                signal: out.signal,
                timed_out: out.timed_out,
                message: tail,
                stage: FailureStage::Command,
            },
        }
    }

    pub fn cancelled(&self) -> bool {
        self.facts.message == CANCELLED
    }
}

const CANCELLED: &str = "cancelled";

fn describe_facts(f: &FailureFacts) -> String {
    if f.timed_out {
        "timed out".to_string()
    } else if let Some(code) = f.exit_code {
        format!("failed with exit code {code}")
    } else if let Some(sig) = f.signal {
        format!("was killed by signal {sig}")
    } else {
        "failed".to_string()
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A short description of a step for messages.
pub fn describe(step: &Step) -> String {
    fn short(s: &str) -> String {
        let first = s
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let mut out: String = first.chars().take(60).collect();
        if first.chars().count() > 60 || s.trim().lines().count() > 1 {
            out.push_str(" ...");
        }
        out
    }
    match &step.action {
        Action::Shell(c) => format!("shell `{}`", short(c)),
        Action::Claude(c) => format!("claude `{}`", short(&c.prompt)),
        Action::WriteFile(w) => format!("write_file `{}`", w.path),
        Action::Foreach(_) => "foreach".to_string(),
    }
}

type StepResult = Result<(), StepFailure>;
type BoxFut<'a> = Pin<Box<dyn Future<Output = StepResult> + Send + 'a>>;

/// Runs steps in order; the first failure that nothing recovers stops the list.
pub fn run_steps<'a>(steps: &'a [Step], ctx: &'a mut Context, env: &'a StepEnv<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        for step in steps {
            run_step(step, ctx, env).await?;
        }
        Ok(())
    })
}

fn run_step<'a>(step: &'a Step, ctx: &'a mut Context, env: &'a StepEnv<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        if let Some(cond) = &step.when {
            let go = crate::workflow::eval_condition(cond, ctx).map_err(|e| {
                StepFailure::new(
                    step,
                    FailureStage::Validation,
                    format!("`when: {cond}`: {e}"),
                )
            })?;
            if !go {
                append_log(
                    env.log,
                    &format!("== skipped {} (when: {cond} is false)\n", describe(step)),
                );
                return Ok(());
            }
        }
        let head_before = if step.commit_required {
            Some(head(step, env.cwd).await?)
        } else {
            None
        };

        let mut tries = 1u32;
        loop {
            match attempt_step(step, ctx, env).await {
                Ok(()) => break,
                Err(failure) if failure.cancelled() => return Err(failure),
                Err(failure) => {
                    let Some(handler) = &step.on_failure else {
                        if step.allow_failure {
                            append_log(
                                env.log,
                                &format!("== allowed failure: {}\n", failure.message()),
                            );
                            return Ok(());
                        }
                        return Err(failure);
                    };
                    run_handler(step, handler, ctx, env).await?;
                    if tries < handler.max_attempts {
                        tries += 1;
                        append_log(
                            env.log,
                            &format!(
                                "== retrying {} (try {tries} of {})\n",
                                describe(step),
                                handler.max_attempts
                            ),
                        );
                        continue;
                    }
                    if handler.fail_workflow {
                        return Err(failure);
                    }
                    append_log(
                        env.log,
                        &format!("== recovered by on_failure: {}\n", failure.message()),
                    );
                    return Ok(());
                }
            }
        }

        if let Some(before) = head_before {
            let after = head(step, env.cwd).await?;
            if after == before {
                return Err(StepFailure::new(
                    step,
                    FailureStage::CommitCheck,
                    format!(
                        "commit_required: {} made no commit (HEAD is still {before})",
                        describe(step)
                    ),
                ));
            }
        }
        if let Some(v) = &step.validate {
            run_validate(step, v, ctx, env).await?;
        }
        if let Some(next) = &step.on_success {
            run_step(next, ctx, env).await?;
        }
        Ok(())
    })
}

async fn run_handler(
    step: &Step,
    handler: &OnFailure,
    ctx: &mut Context,
    env: &StepEnv<'_>,
) -> StepResult {
    append_log(env.log, &format!("== on_failure of {}\n", describe(step)));
    run_steps(&handler.steps, ctx, env).await.map_err(|mut f| {
        f.what = format!("on_failure handler of {}: {}", describe(step), f.what);
        f
    })
}

async fn head(step: &Step, cwd: &Path) -> Result<String, StepFailure> {
    git::head(cwd)
        .await
        .map_err(|e| StepFailure::new(step, FailureStage::CommitCheck, e.to_string()))
}

/// One try of the step's action, with its capture.
async fn attempt_step(step: &Step, ctx: &mut Context, env: &StepEnv<'_>) -> StepResult {
    if env.cancel.is_cancelled() {
        return Err(StepFailure::new(
            step,
            FailureStage::Command,
            CANCELLED.into(),
        ));
    }
    match &step.action {
        Action::Shell(template) => {
            let script =
                interpolate::render_shell(template, ctx).map_err(|e| render_error(step, e))?;
            let mut vars: Vec<(String, String)> = script.env.clone();
            vars.extend(step_env(step, ctx)?);
            let out = run_command(
                step,
                env,
                "sh",
                vec!["-c".into(), script.script],
                vars,
                None,
            )
            .await?;
            record_output(step, ctx, "shell", &out)?;
            check_output(step, &out)
        }
        Action::Claude(cmd) => run_claude(step, cmd, ctx, env).await,
        Action::WriteFile(w) => write_file(step, w, ctx, env),
        Action::Foreach(f) => run_foreach(step, f, ctx, env).await,
    }
}

/// Runs the AI CLI in streaming JSON mode: the transcript goes to its own file as it arrives,
/// `claude.output` is the result text, and the run's usage is recorded in the scope.
async fn run_claude(
    step: &Step,
    cmd: &ClaudeCommand,
    ctx: &mut Context,
    env: &StepEnv<'_>,
) -> StepResult {
    let prompt = interpolate::render_text(&cmd.prompt, ctx).map_err(|e| render_error(step, e))?;
    let settings = agent::resolve(&cmd.settings, &env.agent.workflow, &env.agent.policy);
    agent::check_runnable(&settings, &env.agent.policy, agent::running_as_root())
        .map_err(|m| StepFailure::new(step, FailureStage::Validation, m))?;
    let args = agent::args(&settings, prompt.trim());
    let mut vars = vec![("PRODIGY_AUTOMATION".to_string(), "true".to_string())];
    vars.extend(step_env(step, ctx)?);
    let transcript = env.agent.next_transcript();
    // Bounded: a slow disk slows the reader, which slows the CLI, instead of filling memory.
    let (tap, chunks) = tokio::sync::mpsc::channel(64);
    let (out, run) = tokio::join!(
        run_command(step, env, env.claude_bin, args, vars, Some(tap)),
        agent::consume(chunks, &transcript, env.secrets),
    );
    let out = out?;
    let run = run.map_err(|e| {
        StepFailure::new(
            step,
            FailureStage::Command,
            format!("cannot write the transcript {}: {e}", transcript.display()),
        )
    })?;
    append_log(
        env.log,
        &format!(
            "== claude session {} ({}): {} tokens, ${:.4}, {} turns; transcript {}\n",
            run.session_id.as_deref().unwrap_or("unknown"),
            run.result
                .as_ref()
                .map_or("no result", |r| r.subtype.as_str()),
            run.usage.tokens(),
            run.usage.cost_usd,
            run.usage.turns,
            transcript.display()
        ),
    );
    let failure = run.failure(out.success());
    let mut shown = out.clone();
    shown.stdout = run
        .result
        .as_ref()
        .map(|r| r.text.clone())
        .unwrap_or_default();
    ctx.set_var("claude.session_id", json!(run.session_id));
    ctx.set_var("claude.json_log_location", json!(transcript));
    ctx.set_var("claude.cost_usd", json!(run.usage.cost_usd));
    env.agent.record(run.clone());
    record_output(step, ctx, "claude", &shown)?;
    match failure {
        Some(a) if !out.timed_out => {
            let mut message = run.describe_failure();
            let tail = out.stderr_tail(10);
            if !tail.trim().is_empty() {
                message.push('\n');
                message.push_str(&tail);
            }
            Err(StepFailure {
                line: step.line,
                what: describe(step),
                facts: FailureFacts {
                    exit_code: out.exit_code,
                    signal: out.signal,
                    timed_out: false,
                    message,
                    stage: FailureStage::Agent(a),
                },
            })
        }
        _ if !out.success() && !out.timed_out && out.stderr.trim().is_empty() => {
            let mut f = StepFailure::from_output(step, &out);
            f.facts.message = run.describe_failure();
            Err(f)
        }
        _ => check_output(step, &out),
    }
}

fn render_error(step: &Step, e: impl std::fmt::Display) -> StepFailure {
    StepFailure::new(
        step,
        FailureStage::Validation,
        format!("cannot interpolate: {e}"),
    )
}

fn step_env(step: &Step, ctx: &Context) -> Result<Vec<(String, String)>, StepFailure> {
    step.env
        .iter()
        .map(|v| {
            interpolate::render_text(&v.value, ctx)
                .map(|val| (v.name.clone(), val))
                .map_err(|e| render_error(step, format!("env {}: {e}", v.name)))
        })
        .collect()
}

async fn run_command(
    step: &Step,
    env: &StepEnv<'_>,
    program: &str,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    stdout_tap: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
) -> Result<CommandOutput, StepFailure> {
    let cwd = match &step.working_dir {
        Some(dir) => {
            inside(env.cwd, dir).map_err(|m| StepFailure::new(step, FailureStage::Validation, m))?
        }
        None => env.cwd.to_path_buf(),
    };
    let timeout = remaining(step.timeout, env.deadline);
    if timeout == Some(Duration::ZERO) {
        return Err(StepFailure {
            line: step.line,
            what: describe(step),
            facts: FailureFacts {
                exit_code: None,
                signal: None,
                timed_out: true,
                message: "the time limit was reached before this step started".into(),
                stage: FailureStage::Command,
            },
        });
    }
    let mut all_env: Vec<(String, String)> = git::quiet_env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all_env.extend(env.env.iter().cloned());
    all_env.extend(vars);
    let spec = CommandSpec {
        program: program.to_string(),
        args,
        cwd,
        env: all_env,
        timeout,
        log: Some(env.log.to_path_buf()),
        stdin: None,
        redact: env.secrets.to_vec(),
        stdout_tap,
        base_env: Some(env.base_env.to_vec()),
        sandbox: env.sandbox.cloned(),
    };
    let out = process::run(&spec, env.cancel).await.map_err(|e| {
        StepFailure::new(
            step,
            FailureStage::Command,
            format!("cannot start `{program}`: {e}"),
        )
    })?;
    if out.cancelled {
        return Err(StepFailure::new(
            step,
            FailureStage::Command,
            CANCELLED.into(),
        ));
    }
    Ok(out)
}

/// The smaller of the step's own limit and what is left before the deadline.
fn remaining(step: Option<Duration>, deadline: Option<Instant>) -> Option<Duration> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match (step, left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn check_output(step: &Step, out: &CommandOutput) -> StepResult {
    if out.success() {
        Ok(())
    } else {
        Err(StepFailure::from_output(step, out))
    }
}

/// Sets `shell.output` / `claude.output` (and the step id's output) and the step's capture.
fn record_output(step: &Step, ctx: &mut Context, kind: &str, out: &CommandOutput) -> StepResult {
    let stdout = out.stdout.trim_end_matches('\n').to_string();
    ctx.set_var(format!("{kind}.output"), Value::String(stdout.clone()));
    ctx.set_var(format!("{kind}.stderr"), Value::String(out.stderr.clone()));
    ctx.set_var(format!("{kind}.exit_code"), json!(out.exit_code));
    if let Some(id) = &step.id {
        ctx.set_var(format!("{id}.output"), Value::String(stdout.clone()));
    }
    let Some(name) = &step.capture else {
        return Ok(());
    };
    let streams = step.capture_streams;
    let text = match (streams.stdout, streams.stderr) {
        (true, true) => format!("{stdout}{}", out.stderr),
        (false, true) => out.stderr.clone(),
        _ => stdout,
    };
    let value = convert(&text, step.capture_format).map_err(|m| {
        StepFailure::new(
            step,
            FailureStage::Validation,
            format!("capture `{name}`: {m}"),
        )
    })?;
    ctx.set_var(name, value);
    if streams.exit_code {
        ctx.set_var(format!("{name}.exit_code"), json!(out.exit_code));
    }
    if streams.success {
        ctx.set_var(format!("{name}.success"), json!(out.success()));
    }
    if streams.stderr {
        ctx.set_var(format!("{name}.stderr"), Value::String(out.stderr.clone()));
    }
    if streams.duration {
        ctx.set_var(
            format!("{name}.duration"),
            json!(out.duration.as_secs_f64()),
        );
    }
    Ok(())
}

/// Turns captured text into the value `capture_format` asks for.
pub fn convert(text: &str, format: CaptureFormat) -> Result<Value, String> {
    let t = text.trim();
    match format {
        CaptureFormat::String => Ok(Value::String(text.trim_end_matches('\n').to_string())),
        CaptureFormat::Number => t
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| t.parse::<f64>().map(Value::from))
            .map_err(|_| format!("expected a number, got {t:?}")),
        CaptureFormat::Boolean => match t.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" | "" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {t:?}")),
        },
        CaptureFormat::Json => serde_json::from_str(t).map_err(|e| format!("expected JSON: {e}")),
        CaptureFormat::Lines => Ok(Value::Array(
            t.lines()
                .filter(|l| !l.is_empty())
                .map(|l| Value::String(l.into()))
                .collect(),
        )),
    }
}

/// Resolves `rel` inside `root`, refusing absolute paths and `..` that would leave it.
pub fn inside(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    let mut out = root.to_path_buf();
    let mut depth = 0usize;
    for c in p.components() {
        match c {
            Component::Normal(s) => {
                out.push(s);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => {
                out.pop();
                depth -= 1;
            }
            _ => {
                return Err(format!(
                    "path `{rel}` leaves the worktree; use a path relative to the worktree without leading `/` or `..`"
                ));
            }
        }
    }
    Ok(out)
}

fn write_file(step: &Step, w: &WriteFile, ctx: &Context, env: &StepEnv<'_>) -> StepResult {
    let fail = |m: String| StepFailure::new(step, FailureStage::Command, m);
    let rel = interpolate::render_text(&w.path, ctx).map_err(|e| render_error(step, e))?;
    let path =
        inside(env.cwd, &rel).map_err(|m| StepFailure::new(step, FailureStage::Validation, m))?;
    let text = interpolate::render_content(&w.content, ctx).map_err(|e| render_error(step, e))?;
    let body = match w.format {
        WriteFormat::Text => text,
        WriteFormat::Json => {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| fail(format!("write_file {rel}: content is not valid JSON: {e}")))?;
            serde_json::to_string_pretty(&v).expect("a JSON value serializes") + "\n"
        }
        WriteFormat::Yaml => {
            serde_saphyr::from_str::<serde_json::Value>(&text)
                .map_err(|e| fail(format!("write_file {rel}: content is not valid YAML: {e}")))?;
            text
        }
    };
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        if w.create_dirs {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("write_file {rel}: {e}")))?;
        } else {
            return Err(fail(format!(
                "write_file {rel}: directory {} does not exist; set `create_dirs: true`",
                parent.display()
            )));
        }
    }
    std::fs::write(&path, body).map_err(|e| fail(format!("write_file {rel}: {e}")))?;
    if let Some(mode) = w.mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(format!("write_file {rel}: chmod {mode:o}: {e}")))?;
    }
    append_log(env.log, &format!("== wrote {rel}\n"));
    Ok(())
}

async fn run_foreach(step: &Step, f: &Foreach, ctx: &mut Context, env: &StepEnv<'_>) -> StepResult {
    let mut values = match &f.over {
        ForeachInput::List(v) => v.clone(),
        ForeachInput::Command(cmd) => {
            let script = interpolate::render_shell(cmd, ctx).map_err(|e| render_error(step, e))?;
            let out = run_command(
                step,
                env,
                "sh",
                vec!["-c".into(), script.script],
                script.env,
                None,
            )
            .await?;
            check_output(step, &out)?;
            match serde_json::from_str::<Value>(out.stdout.trim()) {
                Ok(Value::Array(a)) => a,
                _ => out
                    .stdout
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| Value::String(l.to_string()))
                    .collect(),
            }
        }
    };
    if let Some(max) = f.max_items {
        values.truncate(max);
    }
    let total = values.len();
    let base = ctx.clone();
    let results: Vec<StepResult> = stream::iter(values.into_iter().enumerate())
        .map(|(i, value)| {
            let mut local = base.clone();
            local.set_var("item", value);
            local.set_var("item_index", json!(i));
            local.set_var("item_total", json!(total));
            async move { run_steps_owned(&f.steps, local, env).await }
        })
        .buffered(f.parallel.max(1))
        .collect()
        .await;
    for r in results {
        match r {
            Err(failure) if !f.continue_on_error || failure.cancelled() => return Err(failure),
            Err(failure) => append_log(
                env.log,
                &format!(
                    "== foreach item failed, continuing: {}\n",
                    failure.message()
                ),
            ),
            Ok(()) => {}
        }
    }
    Ok(())
}

async fn run_steps_owned(steps: &[Step], mut ctx: Context, env: &StepEnv<'_>) -> StepResult {
    run_steps(steps, &mut ctx, env).await
}

/// `validate:` after a successful step: the check commands write a result file whose
/// `completion_percentage` must reach the threshold; below it, `on_incomplete` runs and the
/// check repeats, up to `max_attempts`.
async fn run_validate(
    step: &Step,
    v: &Validate,
    ctx: &mut Context,
    env: &StepEnv<'_>,
) -> StepResult {
    let max = v
        .on_incomplete
        .as_ref()
        .map_or(1, |o| o.max_attempts.max(1));
    let mut attempt = 1u32;
    loop {
        ctx.set_var("validation.attempt_number", json!(attempt));
        run_steps(&v.commands, ctx, env).await?;
        let (score, gaps) = match &v.result_file {
            None => (100.0, Value::Array(vec![])),
            Some(file) => read_validation(step, file, ctx, env)?,
        };
        ctx.set_var("validation.completion", json!(score));
        ctx.set_var("validation.gaps", gaps.clone());
        if score >= v.threshold {
            return Ok(());
        }
        let message = format!(
            "validation scored {score:.1}% (threshold {:.1}%) after {attempt} attempt(s); gaps: {gaps}",
            v.threshold
        );
        match &v.on_incomplete {
            Some(inc) if attempt < max => {
                append_log(env.log, &format!("== incomplete: {message}\n"));
                run_steps(&inc.commands, ctx, env).await?;
                attempt += 1;
            }
            Some(inc) if !inc.fail_workflow => {
                append_log(
                    env.log,
                    &format!("== accepting incomplete validation: {message}\n"),
                );
                return Ok(());
            }
            _ => return Err(StepFailure::new(step, FailureStage::Validation, message)),
        }
    }
}

fn read_validation(
    step: &Step,
    file: &str,
    ctx: &Context,
    env: &StepEnv<'_>,
) -> Result<(f64, Value), StepFailure> {
    let rel = interpolate::render_text(file, ctx).map_err(|e| render_error(step, e))?;
    let path =
        inside(env.cwd, &rel).map_err(|m| StepFailure::new(step, FailureStage::Validation, m))?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        StepFailure::new(
            step,
            FailureStage::Validation,
            format!("validation result file {rel}: {e}"),
        )
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        StepFailure::new(
            step,
            FailureStage::Validation,
            format!("validation result file {rel} is not JSON: {e}"),
        )
    })?;
    let score = ["completion_percentage", "completion", "score"]
        .iter()
        .find_map(|k| v.get(k).and_then(Value::as_f64))
        .ok_or_else(|| {
            StepFailure::new(
                step,
                FailureStage::Validation,
                format!("validation result file {rel} has no numeric `completion_percentage`"),
            )
        })?;
    let gaps = v
        .get("gaps")
        .or_else(|| v.get("missing"))
        .cloned()
        .unwrap_or(Value::Array(vec![]));
    Ok((score, gaps))
}

/// Best effort: a log line that cannot be written must not fail the agent.
pub fn append_log(log: &Path, text: &str) {
    use std::io::Write;
    if let Some(parent) = log.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_worktree() {
        let root = Path::new("/w");
        assert_eq!(inside(root, "a/b.txt").unwrap(), Path::new("/w/a/b.txt"));
        assert_eq!(inside(root, "a/../b.txt").unwrap(), Path::new("/w/b.txt"));
        assert!(inside(root, "../x").is_err());
        assert!(inside(root, "a/../../x").is_err());
        assert!(inside(root, "/etc/passwd").is_err());
    }

    #[test]
    fn captures_convert_by_format() {
        assert_eq!(convert("42\n", CaptureFormat::Number).unwrap(), json!(42));
        assert_eq!(convert("1.5", CaptureFormat::Number).unwrap(), json!(1.5));
        assert!(convert("abc", CaptureFormat::Number).is_err());
        assert_eq!(
            convert("true\n", CaptureFormat::Boolean).unwrap(),
            json!(true)
        );
        assert_eq!(
            convert("a\nb\n", CaptureFormat::Lines).unwrap(),
            json!(["a", "b"])
        );
        assert_eq!(
            convert("{\"a\":1}", CaptureFormat::Json).unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            convert("x y\n", CaptureFormat::String).unwrap(),
            json!("x y")
        );
    }

    #[test]
    fn the_earlier_limit_wins() {
        let soon = Instant::now() + Duration::from_secs(5);
        let r = remaining(Some(Duration::from_secs(60)), Some(soon)).unwrap();
        assert!(r <= Duration::from_secs(5));
        assert_eq!(
            remaining(Some(Duration::from_secs(3)), None),
            Some(Duration::from_secs(3))
        );
        assert_eq!(remaining(None, None), None);
    }
}
