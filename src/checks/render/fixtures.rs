//! Jobs, DLQ rows, attempts and agent runs for the unit tests of what a check run says.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use crate::store::{AgentRunRow, Attempt, DlqItem, ItemCounts, Job, JobRefs, JobUsage};
use crate::types::{ErrorClass, ItemKey, JobStatus, Phase};

pub(crate) const WORKFLOW: &str = "name: lint-fix\nmode: mapreduce\nmap:\n  input: items.json\n  json_path: \"$[*]\"\n  agent_template:\n    - shell: \"./fix.sh ${item.id}\"\nerror_policy:\n  failures_acceptable: false\n";

pub(crate) fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

pub(crate) fn job(status: JobStatus, phase: Phase, error: Option<&str>) -> Job {
    Job {
        id: "0192f5a0-0000-7000-8000-000000000001".parse().unwrap(),
        workflow_path: "/srv/repo/.prodigy/lint.yml".into(),
        workflow_text: WORKFLOW.into(),
        workflow_name: "lint-fix".into(),
        repo_path: "/srv/repo".into(),
        repo: None,
        pr_number: Some(crate::types::PrNumber(7)),
        head_sha: Some(crate::types::CommitSha("a".repeat(40))),
        status,
        phase,
        refs: JobRefs::default(),
        vars: Value::Null,
        check_run_id: None,
        error: error.map(str::to_string),
        lease_epoch: 1,
        created_at: t(0),
        updated_at: t(100),
        finished_at: Some(t(100)),
    }
}

pub(crate) fn dlq_row(key: &str, data: Value, class: ErrorClass, sig: &str, msg: &str) -> DlqItem {
    DlqItem {
        job_id: "0192f5a0-0000-7000-8000-000000000001".parse().unwrap(),
        key: ItemKey::from(key),
        data,
        first_failure: t(10),
        last_failure: t(20),
        failure_count: 2,
        error_class: class,
        signature: sig.into(),
        last_message: msg.into(),
        reprocessable: true,
        manual_review: false,
        json_log_location: None,
        session_id: None,
    }
}

pub(crate) fn attempt(key: &str, n: u32, start: i64, secs: i64, ok: bool) -> Attempt {
    Attempt {
        key: ItemKey::from(key),
        attempt: n,
        started_at: t(start),
        finished_at: Some(t(start + secs)),
        success: Some(ok),
        exit_code: Some(if ok { 0 } else { 2 }),
        error_class: (!ok).then_some(ErrorClass::CommandFailed),
        signature: None,
        message: (!ok).then(|| format!("lint failed for {key}\n3 problems")),
        log_path: Some(format!("/state/logs/{key}.log")),
        worktree: None,
        branch: None,
        commit: None,
        machine: None,
    }
}

pub(crate) fn counts(total: u64, succeeded: u64, failed: u64) -> ItemCounts {
    ItemCounts {
        total,
        succeeded,
        failed,
        merged: succeeded,
        dlq: failed,
        ..ItemCounts::default()
    }
}

pub(crate) fn no_usage() -> &'static JobUsage {
    static NONE: std::sync::LazyLock<JobUsage> = std::sync::LazyLock::new(JobUsage::default);
    &NONE
}

pub(crate) fn run(
    phase: &str,
    key: Option<&str>,
    input: i64,
    cost: f64,
    turns: i64,
) -> AgentRunRow {
    AgentRunRow {
        phase: phase.into(),
        key: key.map(ItemKey::from),
        attempt: key.map(|_| 1),
        session_id: None,
        model: None,
        transcript: format!("/logs/{phase}-{}.jsonl", key.unwrap_or("")),
        subtype: Some("success".into()),
        input_tokens: input,
        output_tokens: 10,
        cache_creation_tokens: 100,
        cache_read_tokens: 1,
        cost_usd: cost,
        turns,
        api_ms: 1500,
        duration_ms: 2000,
        finished_at: t(5),
    }
}
