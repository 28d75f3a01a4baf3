//! `validate:` after a step: check commands, the completion threshold, `on_incomplete` and
//! repeats.

use serde_json::{Value, json};

use crate::engine::classify::FailureStage;
use crate::workflow::interpolate::{self, Context};
use crate::workflow::{Step, Validate};

use super::{StepEnv, StepFailure, StepResult, append_log, inside, render_error, run_steps};

/// `validate:` after a successful step: the check commands write a result file whose
/// `completion_percentage` must reach the threshold; below it, `on_incomplete` runs and the
/// check repeats, up to `max_attempts`.
pub(super) async fn run_validate(
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
