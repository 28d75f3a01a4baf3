//! What a check run says, as pure functions of a job's recorded state: its name, the in-progress
//! output, the conclusion, the final summary, the DLQ annotations and the buttons. The reporter
//! (`super::reporter`) only gathers the inputs and sends the results. This module holds the
//! name, progress, conclusion, summary, buttons and Markdown helpers; `dlq` the DLQ section and
//! annotations, `usage` the cost and time tables.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::github::checks::{
    MAX_ANNOTATIONS_PER_REQUEST, MAX_OUTPUT_TEXT_CHARS, truncate_markdown,
};
use crate::github::{
    Annotation, CheckConclusion, CheckRunButton, CheckRunOutput, CheckRunUpdate, CheckStatus,
};
use crate::store::{Attempt, DlqItem, ItemCounts, Job, JobUsage};
use crate::text::{human_millis, one_line};
use crate::types::{ItemKey, JobId, JobStatus, Phase};
use crate::workflow::{self, WorkflowKind};

mod dlq;
#[cfg(test)]
mod fixtures;
mod usage;

pub use dlq::{annotation, annotations, item_location};
use dlq::{dlq_by_signature, repo_relative};
pub use usage::{SlowItem, slowest_items, usage_section};

/// DLQ rows annotated per job at most; the rest are counted in the summary. GitHub keeps every
/// annotation, but past a few hundred nobody reads them and each 50 costs a request.
pub const ANNOTATION_CAP: usize = 500;
/// Rows of the "slowest items" table.
pub const SLOWEST_SHOWN: usize = 5;
/// Rows of the "most expensive items" table.
pub const MOST_EXPENSIVE_SHOWN: usize = 5;
/// Item keys listed per error signature in the summary.
const KEYS_PER_SIGNATURE: usize = 20;
/// The end of the last error kept in an annotation's message: where a failure's reason usually is.
const MESSAGE_TAIL_LINES: usize = 30;

/// The button identifiers; `check_run.requested_action` carries them back.
pub const RESUME_ACTION: &str = "resume";
pub const RETRY_FAILED_ACTION: &str = "retry_failed";

/// Which face runs the job, so the check run names the next steps that exist there: the App has
/// buttons and `/prodigy` comments; a check run made by the Action's workflow token can have no
/// working buttons (their clicks would go to GitHub Actions, not to prodigy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Face {
    #[default]
    App,
    Action,
}

/// What the workflow file says that the check run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowFacts {
    pub name: String,
    /// The workflow file relative to the repository root: annotations of items that name no file
    /// of their own point here.
    pub path: String,
    /// 1-based line of `agent_template:`.
    pub agent_template_line: Option<u32>,
    /// `error_policy.failures_acceptable`: failed items make the conclusion neutral, not failure.
    pub failures_acceptable: bool,
}

impl WorkflowFacts {
    /// Read from the job's snapshot of its workflow (what the job runs, not the file on disk).
    pub fn from_job(job: &Job) -> WorkflowFacts {
        let path = repo_relative(&job.workflow_path, &job.repo_path)
            .unwrap_or_else(|| job.workflow_path.clone());
        let parsed = workflow::parse(Path::new(&job.workflow_path), &job.workflow_text);
        let (agent_template_line, failures_acceptable) = match parsed.map(|p| p.workflow.kind) {
            Ok(WorkflowKind::MapReduce(mr)) => (
                u32::try_from(mr.map.agent_template_line).ok(),
                mr.error_policy.failures_acceptable,
            ),
            // A snapshot that no longer parses still ran (or failed) as a job; report it plainly.
            Ok(WorkflowKind::Standard { .. }) | Err(_) => (None, false),
        };
        WorkflowFacts {
            name: job.workflow_name.clone(),
            path,
            agent_template_line,
            failures_acceptable,
        }
    }
}

pub fn check_run_name(workflow_name: &str) -> String {
    format!("prodigy: {workflow_name}")
}

/// The output while a job runs.
pub fn progress_output(job: JobId, phase: Phase, counts: &ItemCounts) -> CheckRunOutput {
    let remaining = counts.pending + counts.running;
    let title = match phase {
        Phase::Setup => "Setup running".to_string(),
        Phase::Map => format!(
            "Map: {} of {} items succeeded, {} failed, {remaining} to go",
            counts.succeeded, counts.total, counts.failed
        ),
        Phase::Reduce => format!(
            "Reduce running ({} of {} items succeeded, {} failed)",
            counts.succeeded, counts.total, counts.failed
        ),
        Phase::Done => "Finishing".to_string(),
    };
    let mut summary = format!("Job `{job}` is in the **{phase}** phase.\n\n");
    if counts.total > 0 {
        summary.push_str(&counts_table(counts));
    }
    CheckRunOutput {
        title,
        summary,
        text: None,
        annotations: Vec::new(),
    }
}

/// The conclusion of a finished run. `cancelled` is whether the run was stopped on purpose (its
/// cancellation token fired); the engine records such a job as failed-and-resumable.
pub fn conclusion(
    status: JobStatus,
    counts: &ItemCounts,
    failures_acceptable: bool,
    cancelled: bool,
) -> CheckConclusion {
    let items_failed = counts.failed > 0 || counts.dlq > 0;
    match status {
        JobStatus::Succeeded if !items_failed => CheckConclusion::Success,
        JobStatus::Succeeded if failures_acceptable => CheckConclusion::Neutral,
        JobStatus::Cancelled => CheckConclusion::Cancelled,
        // Someone has to raise the budget (or accept the partial work): not a failure, but not
        // done either, so it does not pass a required check.
        JobStatus::BudgetExhausted => CheckConclusion::ActionRequired,
        _ if cancelled => CheckConclusion::Cancelled,
        // Failed, or a job still recorded as running: prodigy stopped before finishing it.
        _ => CheckConclusion::Failure,
    }
}

/// Everything the final report is made from.
#[derive(Debug, Clone, Copy)]
pub struct FinalInput<'a> {
    pub job: &'a Job,
    pub facts: &'a WorkflowFacts,
    pub counts: ItemCounts,
    /// The job's DLQ rows, oldest first failure first.
    pub dlq: &'a [DlqItem],
    /// Every attempt of the job (`Store::job_attempts`).
    pub attempts: &'a [Attempt],
    /// What the job's agents used (`Store::job_usage`); no runs, no usage section.
    pub usage: &'a JobUsage,
    pub cancelled: bool,
    pub face: Face,
}

impl FinalInput<'_> {
    pub fn conclusion(&self) -> CheckConclusion {
        conclusion(
            self.job.status,
            &self.counts,
            self.facts.failures_acceptable,
            self.cancelled,
        )
    }
}

pub fn final_title(input: &FinalInput) -> String {
    let c = &input.counts;
    let items = if c.total > 0 {
        format!(
            ": {} of {} items succeeded, {} failed",
            c.succeeded, c.total, c.failed
        )
    } else {
        String::new()
    };
    let verdict = match input.conclusion() {
        CheckConclusion::Success => "Succeeded",
        CheckConclusion::Neutral => "Finished with accepted failures",
        CheckConclusion::Cancelled => "Cancelled",
        CheckConclusion::ActionRequired => "Budget exhausted",
        _ => "Failed",
    };
    format!("{verdict}{items}")
}

/// The final summary, at most GitHub's 65,535 characters: cut cleanly with a note when longer.
pub fn final_summary(input: &FinalInput) -> String {
    let job = input.job;
    let mut out = format!(
        "**{}** for job `{}` (workflow `{}`, phase {}).\n\n",
        final_title(input),
        job.id,
        input.facts.path,
        job.phase
    );
    if let Some(error) = &job.error {
        out.push_str(&format!("{}\n\n", code_block(error)));
    }
    if input.counts.total > 0 {
        out.push_str(&counts_table(&input.counts));
        out.push('\n');
    }
    out.push_str(&usage_section(input.usage));
    out.push_str(&machines_section(input.attempts));
    let slowest = slowest_items(input.attempts, SLOWEST_SHOWN);
    if !slowest.is_empty() {
        out.push_str(
            "### Slowest items\n\n| item | longest attempt | attempts |\n|---|---:|---:|\n",
        );
        for s in &slowest {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                inline_code(&s.key.0),
                human_millis(s.longest_ms),
                s.attempts
            ));
        }
        out.push('\n');
    }
    if !input.dlq.is_empty() {
        out.push_str(&dlq_by_signature(input.dlq));
        let unannotated = input.dlq.len().saturating_sub(ANNOTATION_CAP);
        if unannotated > 0 {
            out.push_str(&format!(
                "{unannotated} DLQ rows beyond the first {ANNOTATION_CAP} have no annotation; \
                 `prodigy dlq list {}` lists them all.\n\n",
                job.id
            ));
        }
    }
    out.push_str(&next_steps(input));
    let note = format!(
        "_Summary cut at GitHub's limit of {MAX_OUTPUT_TEXT_CHARS} characters; \
         `prodigy status {}` and `prodigy dlq list {}` show everything._",
        job.id, job.id
    );
    truncate_markdown(out.trim_end(), MAX_OUTPUT_TEXT_CHARS, &note)
}

/// How to continue an unfinished job or retry its DLQ, on the face that ran it.
fn next_steps(input: &FinalInput) -> String {
    let job = input.job;
    let unfinished = job.phase != Phase::Done || input.counts.pending + input.counts.running > 0;
    let budget = job.status == JobStatus::BudgetExhausted;
    match (input.face, unfinished) {
        (Face::App, true) if budget => format!(
            "A maintainer continues it with a raised budget: `/prodigy resume job={} budget=<USD>` \
             on the pull request, or `prodigy resume {} --budget <USD>`.\n",
            job.id.short(),
            job.id
        ),
        (Face::Action, true) if budget => format!(
            "Continue with a raised budget: `prodigy resume {} --budget <USD>` on the job's \
             database (the action's `max-cost-usd` input caps it).\n",
            job.id
        ),
        (Face::App, true) => format!(
            "Continue with the **Resume** button, `/prodigy resume job={}` on the pull request, or \
             `prodigy resume {}`.\n",
            job.id.short(),
            job.id
        ),
        (Face::App, false) if !input.dlq.is_empty() => format!(
            "Run the failed items again with the **Retry failed** button, `/prodigy retry job={}` on \
             the pull request, or `prodigy dlq retry {}`.\n",
            job.id.short(),
            job.id
        ),
        (Face::Action, true) => format!(
            "Continue by re-running this workflow at the same commit (the action's default \
             `resume: auto` picks the job up when its database and branch are at hand), with \
             `resume: {}`, or with `prodigy resume {}`.\n",
            job.id, job.id
        ),
        (Face::Action, false) if !input.dlq.is_empty() => format!(
            "Run the failed items again with `prodigy dlq retry {}` on the job's database; \
             re-running this workflow starts a new job.\n",
            job.id
        ),
        _ => String::new(),
    }
}

/// Items a machine row of the check run names before "and N more".
const ITEMS_PER_MACHINE_SHOWN: usize = 10;

/// Jobs with workers: how many machines took part, and which items each ran (the machine of
/// an item's last attempt). Nothing for a job whose attempts name no machine.
fn machines_section(attempts: &[Attempt]) -> String {
    // Attempts come by key, then attempt number: the last one per key wins.
    let mut last: BTreeMap<&ItemKey, &Attempt> = BTreeMap::new();
    for a in attempts {
        last.insert(&a.key, a);
    }
    let mut by_machine: BTreeMap<&str, (usize, Vec<&ItemKey>)> = BTreeMap::new();
    for a in attempts {
        if let Some(m) = &a.machine {
            by_machine.entry(m).or_default().0 += 1;
        }
    }
    for (key, a) in &last {
        if let Some(m) = &a.machine {
            by_machine.entry(m).or_default().1.push(key);
        }
    }
    if by_machine.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "### Machines\n\n{} machine{} ran this job's items.\n\n\
         | machine | attempts | items (last attempt) |\n|---|---:|---|\n",
        by_machine.len(),
        if by_machine.len() == 1 { "" } else { "s" }
    );
    for (machine, (n, keys)) in &by_machine {
        let mut names: Vec<String> = keys
            .iter()
            .take(ITEMS_PER_MACHINE_SHOWN)
            .map(|k| inline_code(&k.0))
            .collect();
        if keys.len() > ITEMS_PER_MACHINE_SHOWN {
            names.push(format!("and {} more", keys.len() - ITEMS_PER_MACHINE_SHOWN));
        }
        out.push_str(&format!(
            "| {} | {n} | {} |\n",
            inline_code(machine),
            names.join(", ")
        ));
    }
    out.push('\n');
    out
}

fn counts_table(c: &ItemCounts) -> String {
    format!(
        "| items | count |\n|---|---:|\n| total | {} |\n| succeeded | {} |\n| merged | {} |\n\
         | failed | {} |\n| running | {} |\n| pending | {} |\n| in the DLQ | {} |\n",
        c.total, c.succeeded, c.merged, c.failed, c.running, c.pending, c.dlq
    )
}

/// "Resume" while the job is unfinished (a phase not done, items pending or interrupted),
/// "Retry failed" while the DLQ holds items. A finished job's failed items are only reachable by
/// a retry (resume answers "finished"), so it shows no "Resume".
pub fn buttons(phase: Phase, counts: &ItemCounts) -> Vec<CheckRunButton> {
    let mut out = Vec::new();
    if phase != Phase::Done || counts.pending + counts.running > 0 {
        out.push(CheckRunButton {
            label: "Resume".into(),
            description: "Continue the job where it stopped".into(),
            identifier: RESUME_ACTION.into(),
        });
    }
    if counts.dlq > 0 {
        out.push(CheckRunButton {
            label: "Retry failed".into(),
            description: "Run the dead-letter queue items again".into(),
            identifier: RETRY_FAILED_ACTION.into(),
        });
    }
    out
}

/// The requests that complete a check run: the completion (conclusion, summary, buttons on the
/// App's check runs, and the first 50 annotations), then one appending update per further 50.
pub fn completion_updates(input: &FinalInput) -> Vec<CheckRunUpdate> {
    let title = final_title(input);
    let summary = final_summary(input);
    let annotations = annotations(input);
    let mut batches = annotations.chunks(MAX_ANNOTATIONS_PER_REQUEST);
    let output = |annotations: &[Annotation]| CheckRunOutput {
        title: title.clone(),
        summary: summary.clone(),
        text: None,
        annotations: annotations.to_vec(),
    };
    let mut out = vec![CheckRunUpdate {
        status: Some(CheckStatus::Completed),
        conclusion: Some(input.conclusion()),
        output: Some(output(batches.next().unwrap_or_default())),
        actions: match input.face {
            Face::App => Some(buttons(input.job.phase, &input.counts)),
            Face::Action => None,
        },
        ..CheckRunUpdate::default()
    }];
    out.extend(batches.map(|batch| CheckRunUpdate {
        output: Some(output(batch)),
        ..CheckRunUpdate::default()
    }));
    out
}

// ---- Markdown helpers ----

/// `text` as inline code, whatever backticks it holds, on one line.
fn inline_code(text: &str) -> String {
    let text = one_line(text, 200);
    let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run + 1);
    if longest_run == 0 {
        format!("{fence}{text}{fence}")
    } else {
        format!("{fence} {text} {fence}")
    }
}

fn code_block(text: &str) -> String {
    let longest_run = text
        .lines()
        .map(|l| l.trim_start().chars().take_while(|c| *c == '`').count())
        .max()
        .unwrap_or(0);
    let fence = "`".repeat(longest_run.max(2) + 1);
    format!("{fence}\n{}\n{fence}", text.trim_end())
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}
fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The last `n` lines of `text`, after a "…(N earlier lines)" line when some were cut.
fn tail_lines(text: &str, n: usize) -> String {
    match crate::text::tail_lines(text, n) {
        (tail, 0) => tail,
        (tail, cut) => format!("…({cut} earlier lines)\n{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::types::ErrorClass;
    use serde_json::json;

    #[test]
    fn facts_come_from_the_job_snapshot() {
        let f = WorkflowFacts::from_job(&job(JobStatus::Running, Phase::Map, None));
        assert_eq!(
            f,
            WorkflowFacts {
                name: "lint-fix".into(),
                path: ".prodigy/lint.yml".into(),
                agent_template_line: Some(6),
                failures_acceptable: false,
            }
        );
        assert_eq!(check_run_name(&f.name), "prodigy: lint-fix");
    }

    #[test]
    fn progress_output_shows_phase_and_counts() {
        let c = ItemCounts {
            total: 120,
            succeeded: 40,
            failed: 3,
            running: 8,
            pending: 69,
            merged: 38,
            dlq: 3,
        };
        let out = progress_output(job(JobStatus::Running, Phase::Map, None).id, Phase::Map, &c);
        insta::assert_snapshot!(out.title, @"Map: 40 of 120 items succeeded, 3 failed, 77 to go");
        insta::assert_snapshot!(out.summary, @r"
        Job `0192f5a0-0000-7000-8000-000000000001` is in the **map** phase.

        | items | count |
        |---|---:|
        | total | 120 |
        | succeeded | 40 |
        | merged | 38 |
        | failed | 3 |
        | running | 8 |
        | pending | 69 |
        | in the DLQ | 3 |
        ");
        let setup = progress_output(
            job(JobStatus::Running, Phase::Setup, None).id,
            Phase::Setup,
            &ItemCounts::default(),
        );
        assert_eq!(setup.title, "Setup running");
        assert!(
            !setup.summary.contains("| total"),
            "no table before items exist"
        );
    }

    #[test]
    fn conclusions() {
        let ok = counts(10, 10, 0);
        let bad = counts(10, 7, 3);
        assert_eq!(
            conclusion(JobStatus::Succeeded, &ok, false, false),
            CheckConclusion::Success
        );
        assert_eq!(
            conclusion(JobStatus::Succeeded, &bad, true, false),
            CheckConclusion::Neutral
        );
        // Succeeded with failures but no policy allowing them: not quietly a success.
        assert_eq!(
            conclusion(JobStatus::Succeeded, &bad, false, false),
            CheckConclusion::Failure
        );
        assert_eq!(
            conclusion(JobStatus::Failed, &bad, false, false),
            CheckConclusion::Failure
        );
        // Setup or reduce failed: no item failed, still a failure.
        assert_eq!(
            conclusion(JobStatus::Failed, &ok, true, false),
            CheckConclusion::Failure
        );
        assert_eq!(
            conclusion(JobStatus::Failed, &ok, false, true),
            CheckConclusion::Cancelled
        );
        assert_eq!(
            conclusion(JobStatus::Cancelled, &ok, false, false),
            CheckConclusion::Cancelled
        );
        assert_eq!(
            conclusion(JobStatus::Running, &ok, false, false),
            CheckConclusion::Failure
        );
    }

    #[test]
    fn buttons_follow_what_is_left() {
        let ids = |b: Vec<CheckRunButton>| b.into_iter().map(|b| b.identifier).collect::<Vec<_>>();
        assert_eq!(
            ids(buttons(Phase::Done, &counts(10, 10, 0))),
            Vec::<String>::new()
        );
        assert_eq!(
            ids(buttons(Phase::Done, &counts(10, 7, 3))),
            ["retry_failed"]
        );
        assert_eq!(
            ids(buttons(Phase::Map, &counts(10, 7, 3))),
            ["resume", "retry_failed"]
        );
        assert_eq!(ids(buttons(Phase::Reduce, &counts(10, 10, 0))), ["resume"]);
        for b in buttons(Phase::Map, &counts(10, 7, 3)) {
            assert!(b.identifier.chars().count() <= 20);
            assert!(b.label.chars().count() <= 20);
            assert!(b.description.chars().count() <= 40, "{}", b.description);
        }
    }

    /// A job with workers names its machines, each with its attempts and the items whose last
    /// attempt it ran; a job on one machine (no machine recorded) has no such section.
    #[test]
    fn the_summary_says_which_machine_ran_each_item() {
        let on = |key: &str, n: u32, machine: &str| Attempt {
            machine: Some(machine.into()),
            ..attempt(key, n, 0, 1, true)
        };
        // i1's first attempt ran on w2, which died; the coordinator ran it again.
        let attempts = vec![
            on("i1", 1, "w2"),
            on("i1", 2, "coordinator"),
            on("i2", 1, "w1"),
            on("i3", 1, "w2"),
        ];
        insta::assert_snapshot!(machines_section(&attempts), @r"
        ### Machines

        3 machines ran this job's items.

        | machine | attempts | items (last attempt) |
        |---|---:|---|
        | `coordinator` | 1 | `i1` |
        | `w1` | 1 | `i2` |
        | `w2` | 2 | `i3` |
        ");
        let many: Vec<Attempt> = (0..12).map(|i| on(&format!("k{i:02}"), 1, "w")).collect();
        assert!(
            machines_section(&many).contains("`k09`, and 2 more |"),
            "{}",
            machines_section(&many)
        );
        assert_eq!(machines_section(&[attempt("i1", 1, 0, 1, true)]), "");
    }

    #[test]
    fn final_summary_text() {
        let j = job(
            JobStatus::Failed,
            Phase::Done,
            Some(
                "2 of 6 items failed (see `prodigy dlq list 0192f5a0-0000-7000-8000-000000000001`)",
            ),
        );
        let facts = WorkflowFacts::from_job(&j);
        let dlq = vec![
            dlq_row(
                "item-1",
                json!({}),
                ErrorClass::CommandFailed,
                "sig-lint",
                "lint failed for item-1\n3 problems",
            ),
            dlq_row(
                "item-5",
                json!({}),
                ErrorClass::CommandFailed,
                "sig-lint",
                "lint failed for item-5\n3 problems",
            ),
            dlq_row(
                "item|6",
                json!({}),
                ErrorClass::Timeout,
                "sig-time",
                "agent timed out after 300 s",
            ),
        ];
        let attempts = vec![
            attempt("item-1", 1, 0, 5, false),
            attempt("item-2", 1, 0, 40, true),
            attempt("item-3", 1, 0, 7, true),
            attempt("item-4", 1, 0, 1, true),
            attempt("item-4", 2, 0, 90, true),
        ];
        let input = FinalInput {
            job: &j,
            facts: &facts,
            counts: counts(6, 3, 3),
            dlq: &dlq,
            attempts: &attempts,
            usage: no_usage(),
            cancelled: false,
            face: Face::App,
        };
        assert_eq!(input.conclusion(), CheckConclusion::Failure);
        insta::assert_snapshot!(final_summary(&input), @r"
        **Failed: 3 of 6 items succeeded, 3 failed** for job `0192f5a0-0000-7000-8000-000000000001` (workflow `.prodigy/lint.yml`, phase done).

        ```
        2 of 6 items failed (see `prodigy dlq list 0192f5a0-0000-7000-8000-000000000001`)
        ```

        | items | count |
        |---|---:|
        | total | 6 |
        | succeeded | 3 |
        | merged | 3 |
        | failed | 3 |
        | running | 0 |
        | pending | 0 |
        | in the DLQ | 3 |

        ### Slowest items

        | item | longest attempt | attempts |
        |---|---:|---:|
        | `item-4` | 1 min 30 s | 2 |
        | `item-2` | 40 s | 1 |
        | `item-3` | 7.0 s | 1 |
        | `item-1` | 5.0 s | 1 |

        ### Dead-letter queue: 3 items, 2 distinct errors

        **2 × `command_failed`** (signature `sig-lint`)

        > 3 problems

        Items: `item-1`, `item-5`

        **1 × `timeout`** (signature `sig-time`)

        > agent timed out after 300 s

        Items: `item¦6`

        Run the failed items again with the **Retry failed** button, `/prodigy retry job=0192f5a0` on the pull request, or `prodigy dlq retry 0192f5a0-0000-7000-8000-000000000001`.
        ");
    }

    #[test]
    fn the_action_face_names_its_own_next_steps_and_has_no_buttons() {
        let dlq = vec![dlq_row(
            "item-1",
            json!({"file": "src/lib.rs", "line": 4}),
            ErrorClass::CommandFailed,
            "sig-lint",
            "lint failed",
        )];
        let finished = job(JobStatus::Failed, Phase::Done, None);
        let facts = WorkflowFacts::from_job(&finished);
        let input = |job, face| FinalInput {
            job,
            facts: &facts,
            counts: counts(2, 1, 1),
            dlq: &dlq,
            attempts: &[],
            usage: no_usage(),
            cancelled: false,
            face,
        };
        let action = input(&finished, Face::Action);
        let summary = final_summary(&action);
        assert!(
            summary.ends_with(
                "Run the failed items again with `prodigy dlq retry \
                 0192f5a0-0000-7000-8000-000000000001` on the job's database; re-running this \
                 workflow starts a new job."
            ),
            "{summary}"
        );
        assert!(!summary.contains("/prodigy"), "{summary}");
        let updates = completion_updates(&action);
        assert_eq!(
            updates[0].actions, None,
            "no buttons on the Action's check run"
        );
        assert_eq!(updates[0].output.as_ref().unwrap().annotations.len(), 1);
        // The App's check run of the same job keeps its button.
        let app = completion_updates(&input(&finished, Face::App));
        assert_eq!(app[0].actions.as_ref().map(Vec::len), Some(1));

        let stopped = job(JobStatus::Failed, Phase::Map, None);
        let summary = final_summary(&input(&stopped, Face::Action));
        insta::assert_snapshot!(summary.lines().last().unwrap(), @"Continue by re-running this workflow at the same commit (the action's default `resume: auto` picks the job up when its database and branch are at hand), with `resume: 0192f5a0-0000-7000-8000-000000000001`, or with `prodigy resume 0192f5a0-0000-7000-8000-000000000001`.");
    }

    #[test]
    fn a_spent_budget_asks_for_action_and_says_how_to_continue() {
        let j = job(
            JobStatus::BudgetExhausted,
            Phase::Map,
            Some("budget exhausted: $5.0000 spent of a $5.00 budget"),
        );
        let facts = WorkflowFacts::from_job(&j);
        let input = |face| FinalInput {
            job: &j,
            facts: &facts,
            counts: counts(4, 2, 0),
            dlq: &[],
            attempts: &[],
            cancelled: false,
            face,
            usage: no_usage(),
        };
        let app = input(Face::App);
        assert_eq!(app.conclusion(), CheckConclusion::ActionRequired);
        assert!(final_title(&app).starts_with("Budget exhausted"));
        let summary = final_summary(&app);
        assert!(
            summary.contains("$5.0000 spent of a $5.00 budget"),
            "{summary}"
        );
        insta::assert_snapshot!(summary.lines().last().unwrap(), @"A maintainer continues it with a raised budget: `/prodigy resume job=0192f5a0 budget=<USD>` on the pull request, or `prodigy resume 0192f5a0-0000-7000-8000-000000000001 --budget <USD>`.");
        let action = final_summary(&input(Face::Action));
        assert!(
            action.ends_with(
                "`prodigy resume 0192f5a0-0000-7000-8000-000000000001 --budget <USD>` on the \
                 job's database (the action's `max-cost-usd` input caps it)."
            ),
            "{action}"
        );
    }

    #[test]
    fn completion_splits_annotations_into_batches_of_50_and_caps_them() {
        let j = job(JobStatus::Failed, Phase::Done, Some("items failed"));
        let facts = WorkflowFacts::from_job(&j);
        let dlq: Vec<DlqItem> = (0..620)
            .map(|i| {
                dlq_row(
                    &format!("item-{i:04}"),
                    json!({"file": format!("src/f{i}.rs")}),
                    ErrorClass::CommandFailed,
                    &format!("sig-{}", i % 7),
                    &format!("failure number {i}\n{}", "detail line\n".repeat(20)),
                )
            })
            .collect();
        let input = FinalInput {
            job: &j,
            facts: &facts,
            counts: counts(700, 80, 620),
            dlq: &dlq,
            attempts: &[],
            usage: no_usage(),
            cancelled: false,
            face: Face::App,
        };
        let updates = completion_updates(&input);
        assert_eq!(
            updates.len(),
            ANNOTATION_CAP / 50,
            "500 annotations in batches of 50"
        );
        let first = &updates[0];
        assert_eq!(first.status, Some(CheckStatus::Completed));
        assert_eq!(first.conclusion, Some(CheckConclusion::Failure));
        assert_eq!(first.actions.as_ref().unwrap().len(), 1);
        for u in &updates[1..] {
            assert_eq!(
                (u.status, u.conclusion, &u.actions),
                (None, None, &None),
                "appending only"
            );
        }
        let all: Vec<&Annotation> = updates
            .iter()
            .flat_map(|u| &u.output.as_ref().unwrap().annotations)
            .collect();
        assert!(
            updates
                .iter()
                .all(|u| u.output.as_ref().unwrap().annotations.len() <= 50)
        );
        assert_eq!(all.len(), ANNOTATION_CAP);
        assert_eq!(all[0].title.as_deref(), Some("command_failed: item-0000"));
        assert_eq!(all[499].title.as_deref(), Some("command_failed: item-0499"));
        let summary = &first.output.as_ref().unwrap().summary;
        assert!(
            summary.contains("120 DLQ rows beyond the first 500 have no annotation"),
            "{summary}"
        );
    }

    #[test]
    fn a_summary_over_the_limit_is_cut_cleanly() {
        let j = job(JobStatus::Failed, Phase::Done, Some("items failed"));
        let facts = WorkflowFacts::from_job(&j);
        // Every row its own signature with a long message: far more than 65,535 characters.
        let dlq: Vec<DlqItem> = (0..3000)
            .map(|i| {
                dlq_row(
                    &format!("item-{i}"),
                    json!({}),
                    ErrorClass::CommandFailed,
                    &format!("signature-{i:05}"),
                    &format!("error {i}: {}", "y".repeat(150)),
                )
            })
            .collect();
        let input = FinalInput {
            job: &j,
            facts: &facts,
            counts: counts(3000, 0, 3000),
            dlq: &dlq,
            attempts: &[],
            usage: no_usage(),
            cancelled: false,
            face: Face::App,
        };
        let summary = final_summary(&input);
        assert!(summary.chars().count() <= MAX_OUTPUT_TEXT_CHARS);
        assert!(
            summary.ends_with("show everything._"),
            "{}",
            &summary[summary.len() - 300..]
        );
        // Cut between blocks, not inside an item list line.
        let before_note = summary.rsplit_once("\n\n_Summary cut").unwrap().0;
        assert!(!before_note.ends_with(','), "cut mid-line");
        assert!(summary.starts_with("**Failed: 0 of 3000 items succeeded"));
    }

    #[test]
    fn inline_code_survives_backticks() {
        assert_eq!(inline_code("a`b"), "`` a`b ``");
        assert_eq!(inline_code("plain"), "`plain`");
    }
}
