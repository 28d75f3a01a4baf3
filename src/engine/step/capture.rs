//! What a step leaves for the next: `shell.output`, `claude.output`, the step id's output
//! and `capture:` converted by `capture_format`.

use serde_json::{Value, json};

use crate::engine::classify::FailureStage;
use crate::engine::process::CommandOutput;
use crate::workflow::interpolate::Context;
use crate::workflow::{CaptureFormat, Step};

use super::{StepFailure, StepResult};

/// Sets `shell.output` / `claude.output` (and the step id's output) and the step's capture.
pub(super) fn record_output(
    step: &Step,
    ctx: &mut Context,
    kind: &str,
    out: &CommandOutput,
) -> StepResult {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
