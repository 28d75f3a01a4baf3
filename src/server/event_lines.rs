//! A job's events as one readable line each, for the job page: "item a failed (attempt 2,
//! agent): widget exploded" rather than the stored JSON. Kinds this build does not know are
//! shown by name with their data, so nothing is hidden.

use crate::store::{Event, JobEvent};
use crate::text::{human_millis, one_line};

/// The longest message a line shows; the DLQ and the item's log have the rest.
const MAX_MESSAGE: usize = 300;

/// One line for people describing `event`.
pub fn describe(event: &Event) -> String {
    let Some(typed) = event.event() else {
        return format!(
            "{} {}",
            event.kind,
            one_line(&event.data.to_string(), MAX_MESSAGE)
        );
    };
    let msg = |m: &str| one_line(m, MAX_MESSAGE);
    match typed {
        JobEvent::JobStarted(h) => format!("job started on {} (pid {})", h.holder, h.pid),
        JobEvent::JobResumed(h) => format!("job resumed on {} (pid {})", h.holder, h.pid),
        JobEvent::DlqRetryStarted(h) => {
            format!("DLQ retry started on {} (pid {})", h.holder, h.pid)
        }
        JobEvent::Phase { phase, status } => format!("phase {phase} ({status})"),
        JobEvent::JobError { message } => format!("job error: {}", msg(&message)),
        JobEvent::JobFinished {
            status,
            phase,
            error,
            counts,
        } => {
            let mut line = format!(
                "job finished: {status} in phase {phase}; {} succeeded, {} failed, {} in the DLQ",
                counts.succeeded, counts.failed, counts.dlq
            );
            if let Some(e) = error {
                line.push_str(&format!(": {}", msg(&e)));
            }
            line
        }
        JobEvent::Sandbox {
            enforced,
            warning,
            refused,
            ..
        } => {
            let mut line = format!(
                "agent sandbox {}",
                if enforced { "enforced" } else { "not enforced" }
            );
            for note in [warning, refused].into_iter().flatten() {
                line.push_str(&format!(": {}", msg(&note)));
            }
            line
        }
        JobEvent::ItemsLoaded {
            count,
            duplicates_removed,
        } => format!("{count} items loaded ({duplicates_removed} duplicates removed)"),
        JobEvent::PhaseStepsStarted { phase, steps, .. } => {
            format!("{phase}: {steps} steps started")
        }
        JobEvent::PhaseStepsFinished { phase } => format!("{phase}: steps finished"),
        JobEvent::PhaseStepsFailed {
            phase,
            line,
            class,
            message,
        } => format!(
            "{phase}: step at line {line} failed ({class}): {}",
            msg(&message)
        ),
        JobEvent::ResumePlanned {
            to_run, skipped, ..
        } => format!("resume planned: {to_run} to run, {} skipped", skipped.len()),
        JobEvent::DlqRetryPlanned { to_run } => format!("DLQ retry planned: {to_run} to run"),
        JobEvent::ReduceRerun { merged } => {
            format!("reduce runs again: items were merged after it ran ({merged} merged now)")
        }
        JobEvent::ReduceSkipped { reason } => format!("reduce not run again: {}", msg(&reason)),
        JobEvent::StepCompleted { index, line, .. } => {
            format!("step {} (line {line}) completed", index + 1)
        }
        JobEvent::StepsResumed { index, of } => {
            format!("resumed at step {} of {of}", index + 1)
        }
        JobEvent::ItemsInterrupted { count } => {
            format!("{count} interrupted items put back to pending")
        }
        JobEvent::ItemStarted { key, attempt, .. } => {
            format!("item {key} started (attempt {attempt})")
        }
        JobEvent::AgentBackoff {
            key,
            attempt,
            retry,
            delay_ms,
        } => format!(
            "item {key} (attempt {attempt}): AI API busy, try {retry} in {}",
            human_millis(delay_ms as i64)
        ),
        JobEvent::ItemSucceeded {
            key,
            attempt,
            commit,
        } => match commit {
            Some(c) => format!(
                "item {key} succeeded (attempt {attempt}), commit {}",
                short(&c)
            ),
            None => format!("item {key} succeeded (attempt {attempt}), nothing to commit"),
        },
        JobEvent::ItemMerged { key, commit, .. } => {
            format!("item {key} merged (commit {})", short(&commit))
        }
        JobEvent::ItemFailed {
            key,
            attempt,
            class,
            message,
            ..
        } => format!(
            "item {key} failed (attempt {attempt}, {class}): {}",
            msg(&message)
        ),
        JobEvent::AgentFinished {
            phase, key, usage, ..
        } => {
            let whose = key.map(|k| format!(" for item {k}")).unwrap_or_default();
            format!(
                "agent finished in {phase}{whose}: {} tokens, ${:.4}",
                usage.tokens(),
                usage.cost_usd
            )
        }
        JobEvent::Cancelled { reason } => format!("cancelled: {}", msg(&reason)),
        JobEvent::BudgetExhausted { message, .. } => format!(
            "budget exhausted{}",
            message
                .map(|m| format!(": {}", msg(&m)))
                .unwrap_or_default()
        ),
        JobEvent::ItemStopped {
            key,
            attempt,
            reason,
        } => format!("item {key} stopped (attempt {attempt}): {}", msg(&reason)),
        JobEvent::CancelRequested { reason, by, .. } => format!(
            "cancel requested{}: {}",
            by.map(|b| format!(" by {b}")).unwrap_or_default(),
            msg(&reason)
        ),
        JobEvent::ServerContext { pr, workflow, .. } => match pr {
            Some(pr) => format!("started by the server for pull request #{pr} ({workflow})"),
            None => format!("started by the server ({workflow})"),
        },
        JobEvent::ResumeRefused { holder, what, .. } => {
            format!(
                "{what} refused: the job is held by {} (pid {})",
                holder.host, holder.pid
            )
        }
    }
}

/// The first 12 characters of a commit id.
fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ErrorClass, ItemKey};

    fn stored(e: &JobEvent) -> Event {
        let v = serde_json::to_value(e).unwrap();
        Event {
            seq: 1,
            at: chrono::Utc::now(),
            kind: v["kind"].as_str().unwrap().to_string(),
            data: v["data"].clone(),
        }
    }

    #[test]
    fn known_events_read_as_sentences_and_unknown_ones_by_name() {
        let failed = JobEvent::ItemFailed {
            key: ItemKey::from("a"),
            attempt: 2,
            class: ErrorClass::CommandFailed,
            message: "widget\nexploded".into(),
            exit_code: Some(3),
            log: None,
            artifact: None,
        };
        assert_eq!(
            describe(&stored(&failed)),
            "item a failed (attempt 2, command_failed): widget exploded"
        );
        let merged = JobEvent::ItemMerged {
            key: ItemKey::from("b"),
            commit: "0123456789abcdef".into(),
            merge_commit: None,
            found_on_resume: false,
        };
        assert_eq!(
            describe(&stored(&merged)),
            "item b merged (commit 0123456789ab)"
        );
        let unknown = Event {
            seq: 2,
            at: chrono::Utc::now(),
            kind: "from_the_future".into(),
            data: serde_json::json!({"x": 1}),
        };
        assert_eq!(describe(&unknown), r#"from_the_future {"x":1}"#);
    }
}
