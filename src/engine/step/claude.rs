//! The `claude:` step: the AI CLI in streaming JSON mode, its transcript and its usage.

use serde_json::json;

use crate::engine::agent;
use crate::engine::classify::{FailureFacts, FailureStage};
use crate::workflow::interpolate::{self, Context};
use crate::workflow::{ClaudeCommand, Step};

use super::{
    StepEnv, StepFailure, StepResult, append_log, check_output, describe, record_output,
    render_error, run_command, step_env,
};

/// Runs the AI CLI in streaming JSON mode: the transcript goes to its own file as it arrives,
/// `claude.output` is the result text, and the run's usage is recorded in the scope.
pub(super) async fn run_claude(
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
