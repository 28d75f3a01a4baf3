//! What a step leaves behind for the workflow (pure functions of the job's final record): its
//! outputs, its Markdown summary and its annotations as workflow commands.

use super::commands::{self, STEP_ERROR_ANNOTATIONS};
use crate::checks::FinalRecord;
use crate::checks::render::{self, FinalInput};
use crate::engine::worktree::job_branch;
use crate::github::CheckConclusion;

/// The names of the step's outputs (`action.yml` maps each one).
pub const OUTPUTS: [&str; 8] = [
    "job-id",
    "status",
    "succeeded",
    "failed",
    "dlq",
    "branch",
    "cost-usd",
    "tokens",
];

/// The step's outputs, in the order of [`OUTPUTS`].
pub fn outputs(record: &FinalRecord) -> Vec<(&'static str, String)> {
    let c = &record.counts;
    let values = [
        record.job.id.to_string(),
        record.job.status.to_string(),
        c.succeeded.to_string(),
        c.failed.to_string(),
        c.dlq.to_string(),
        job_branch(record.job.id),
        // The CLI's own cost, to the millionth of a dollar; 0 when no agent ran.
        format!("{:.6}", record.usage.total.cost_usd),
        record.usage.total.tokens().to_string(),
    ];
    OUTPUTS.into_iter().zip(values).collect()
}

/// `$GITHUB_OUTPUT` text for `outputs` under one delimiter.
pub fn outputs_text(outputs: &[(&str, String)], delimiter: &str) -> Result<String, String> {
    outputs
        .iter()
        .map(|(name, value)| commands::output_entry(name, value, delimiter))
        .collect()
}

/// Why this step did not run the job, when it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRun {
    /// Another process holds the job (this text says who, since when).
    Held(String),
    /// The job to resume had finished already.
    Finished,
}

/// The step summary: a heading, then the check run's final summary (or why nothing ran), and a
/// note when no check run could be made.
pub fn step_summary(
    input: &FinalInput,
    not_run: Option<&NotRun>,
    no_check_run: Option<&str>,
) -> String {
    let mut out = format!("## {}\n\n", render::check_run_name(&input.facts.name));
    match not_run {
        Some(NotRun::Held(who)) => out.push_str(&format!(
            "Job `{}` is being run by {who}; that run covers every pending item, so this step did \
             nothing.\n",
            input.job.id
        )),
        Some(NotRun::Finished) => {
            out.push_str(&format!(
                "Job `{}` had already finished; nothing was run.\n\n",
                input.job.id
            ));
            out.push_str(&render::final_summary(input));
            out.push('\n');
        }
        None => {
            out.push_str(&render::final_summary(input));
            out.push('\n');
        }
    }
    if let Some(why) = no_check_run {
        out.push_str(&format!("\n> **No check run:** {why}\n"));
    }
    out
}

/// Workflow commands for the job's failures: the job's own error when no item explains it, and
/// one per DLQ row with the file and lines the check run's annotation has (`::error`, or
/// `::warning` when the workflow accepts failures), as many as a step shows; a plain line counts
/// the rest.
pub fn failure_commands(input: &FinalInput, path_prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let title = render::check_run_name(&input.facts.name);
    if let Some(error) = &input.job.error
        && input.dlq.is_empty()
        && input.conclusion() == CheckConclusion::Failure
    {
        out.push(commands::error(&title, error));
    }
    let accepted = input.conclusion() == CheckConclusion::Neutral;
    let annotations = render::annotations(input);
    let room = STEP_ERROR_ANNOTATIONS.saturating_sub(out.len());
    for a in annotations.iter().take(room) {
        let line = commands::error_annotation(a, path_prefix);
        out.push(if accepted {
            line.replacen("::error ", "::warning ", 1)
        } else {
            line
        });
    }
    let rest = input.dlq.len().saturating_sub(room);
    if rest > 0 {
        out.push(format!(
            "{rest} more failed items are not annotated here (GitHub shows {STEP_ERROR_ANNOTATIONS} \
             per step); the step summary lists them all."
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{Face, WorkflowFacts};
    use crate::store::{DlqItem, ItemCounts, Job, JobRefs};
    use crate::types::{ErrorClass, ItemKey, JobStatus, Phase};
    use chrono::Utc;
    use serde_json::json;

    const WORKFLOW: &str = "name: review\nmode: mapreduce\nmap:\n  input: items.json\n  agent_template:\n    - shell: \"./check.sh ${item.id}\"\n";

    fn record(status: JobStatus, error: Option<&str>, dlq: usize) -> FinalRecord {
        let failed = dlq as u64;
        let job = Job {
            id: "0192f5a0-0000-7000-8000-000000000001".parse().unwrap(),
            workflow_path: "/w/repo/.prodigy/review.yml".into(),
            workflow_text: WORKFLOW.into(),
            workflow_name: "review".into(),
            repo_path: "/w/repo".into(),
            repo: None,
            pr_number: Some(crate::types::PrNumber(2)),
            head_sha: None,
            status,
            phase: Phase::Done,
            refs: JobRefs::default(),
            vars: serde_json::Value::Null,
            check_run_id: None,
            error: error.map(str::to_string),
            lease_epoch: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: Some(Utc::now()),
        };
        let dlq = (0..dlq)
            .map(|i| DlqItem {
                job_id: job.id,
                key: ItemKey(format!("item-{i}")),
                data: if i == 0 {
                    json!({"file": "src/lib.rs", "line": 7})
                } else {
                    json!({})
                },
                first_failure: Utc::now(),
                last_failure: Utc::now(),
                failure_count: 1,
                error_class: ErrorClass::CommandFailed,
                signature: "sig".into(),
                last_message: format!("check failed for item-{i}"),
                reprocessable: true,
                manual_review: false,
                json_log_location: None,
                session_id: None,
            })
            .collect();
        FinalRecord {
            facts: WorkflowFacts::from_job(&job),
            job,
            counts: ItemCounts {
                total: 20,
                succeeded: 20 - failed,
                failed,
                merged: 20 - failed,
                dlq: failed,
                ..ItemCounts::default()
            },
            dlq,
            attempts: Vec::new(),
            usage: crate::store::JobUsage::default(),
        }
    }

    #[test]
    fn outputs_name_the_job_and_its_counts() {
        let r = record(JobStatus::Failed, None, 1);
        let text = outputs_text(&outputs(&r), "D").unwrap();
        insta::assert_snapshot!(text, @r"
        job-id<<D
        0192f5a0-0000-7000-8000-000000000001
        D
        status<<D
        failed
        D
        succeeded<<D
        19
        D
        failed<<D
        1
        D
        dlq<<D
        1
        D
        branch<<D
        prodigy/0192f5a0-0000-7000-8000-000000000001
        D
        cost-usd<<D
        0.000000
        D
        tokens<<D
        0
        D
        ");
    }

    #[test]
    fn failures_become_annotations_up_to_the_step_limit() {
        let r = record(JobStatus::Failed, Some("12 of 20 items failed"), 12);
        let lines = failure_commands(&r.input(false, Face::Action), "");
        assert_eq!(lines.len(), 11, "{lines:#?}");
        assert!(
            lines[0].starts_with(
                "::error file=src/lib.rs,line=7,endLine=7,title=command_failed%3A item-0::check failed for item-0"
            ),
            "{}",
            lines[0]
        );
        // Items naming no file point at the workflow's agent_template line.
        assert!(
            lines[1].starts_with("::error file=.prodigy/review.yml,line=5,"),
            "{}",
            lines[1]
        );
        assert!(
            lines[10].starts_with("2 more failed items"),
            "{}",
            lines[10]
        );
    }

    #[test]
    fn a_job_error_without_items_is_one_error() {
        let r = record(JobStatus::Failed, Some("setup step at line 3 failed"), 0);
        let lines = failure_commands(&r.input(false, Face::Action), "");
        assert_eq!(
            lines,
            vec!["::error title=prodigy%3A review::setup step at line 3 failed".to_string()]
        );
        let ok = record(JobStatus::Succeeded, None, 0);
        assert!(failure_commands(&ok.input(false, Face::Action), "").is_empty());
    }

    #[test]
    fn the_summary_has_a_heading_and_notes() {
        let r = record(JobStatus::Failed, None, 1);
        let input = r.input(false, Face::Action);
        let s = step_summary(&input, None, Some("the token lacks `checks: write`"));
        assert!(
            s.starts_with("## prodigy: review\n\n**Failed: 19 of 20 items succeeded, 1 failed**"),
            "{s}"
        );
        assert!(
            s.contains("`prodigy dlq retry 0192f5a0-0000-7000-8000-000000000001`"),
            "{s}"
        );
        assert!(
            s.ends_with("\n> **No check run:** the token lacks `checks: write`\n"),
            "{s}"
        );
        let held = step_summary(
            &input,
            Some(&NotRun::Held("runner-1 (pid 7) since 2026-01-01".into())),
            None,
        );
        insta::assert_snapshot!(held, @r"
        ## prodigy: review

        Job `0192f5a0-0000-7000-8000-000000000001` is being run by runner-1 (pid 7) since 2026-01-01; that run covers every pending item, so this step did nothing.
        ");
    }
}
