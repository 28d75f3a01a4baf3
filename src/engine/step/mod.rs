//! Runs the steps of a phase or an agent: `shell`, `claude`, `write_file` and `foreach`, with
//! `when`, timeouts, captures, `commit_required`, `on_failure`, `on_success` and `validate`.
//! This module dispatches a step, runs its commands and says how it failed; each kind of step
//! with more than a few lines has its own part (`claude`, `write_file`, `foreach`, `validate`),
//! and `capture` records what a step leaves for the next.

use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::agent::AgentScope;
use super::classify::{FailureFacts, FailureStage, classify};
use super::git;
use super::process::{self, CommandOutput, CommandSpec};
use crate::types::ErrorClass;
use crate::workflow::interpolate::{self, Context};
use crate::workflow::{Action, OnFailure, Step};

mod capture;
mod claude;
mod foreach;
mod validate;
mod write_file;

use capture::record_output;
use claude::run_claude;
use foreach::run_foreach;
use validate::run_validate;

pub use capture::convert;
pub use write_file::inside;

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
        Action::WriteFile(w) => write_file::write_file(step, w, ctx, env),
        Action::Foreach(f) => run_foreach(step, f, ctx, env).await,
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
