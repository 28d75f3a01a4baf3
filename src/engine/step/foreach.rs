//! The `foreach:` step: nested steps over a list, serially or in parallel.

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};

use crate::workflow::interpolate::{self, Context};
use crate::workflow::{Foreach, ForeachInput, Step};

use super::{StepEnv, StepResult, append_log, check_output, render_error, run_command, run_steps};

pub(super) async fn run_foreach(
    step: &Step,
    f: &Foreach,
    ctx: &mut Context,
    env: &StepEnv<'_>,
) -> StepResult {
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
