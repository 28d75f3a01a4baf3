//! Jobs as `prodigy jobs`, `status` and `events` print them: tables, usage and the event log.

use std::time::Duration;

use serde_json::json;

use prodigy::store::{Job, JobSummary, Store};
use prodigy::types::JobId;

use super::print_json;

pub fn jobs(list: &[JobSummary], as_json: bool) -> anyhow::Result<u8> {
    if as_json {
        return print_json(list);
    }
    if list.is_empty() {
        out!("no jobs yet: start one with `prodigy run WORKFLOW.yml`");
        return Ok(0);
    }
    let ids: Vec<JobId> = list.iter().map(|s| s.job.id).collect();
    let shown = crate::cli::ids::unique_prefixes(&ids);
    let w = shown.first().map_or(8, String::len);
    out!(
        "{:<w$}  {:<16}  {:<7}  {:>6}  {:>6}  {:>6}  {:>4}  {:>9}  {:<19}  workflow",
        "job",
        "status",
        "phase",
        "items",
        "merged",
        "failed",
        "dlq",
        "cost",
        "created"
    );
    for (s, id) in list.iter().zip(&shown) {
        let j = &s.job;
        let c = &s.counts;
        out!(
            "{:<w$}  {}  {:<7}  {:>6}  {:>6}  {:>6}  {:>4}  {:>9}  {:<19}  {}",
            id,
            crate::cli::color::status(&j.status.to_string(), 16),
            j.phase,
            c.total,
            c.merged,
            c.failed,
            c.dlq,
            format!("${:.4}", s.usage.cost_usd),
            j.created_at.format("%Y-%m-%d %H:%M:%S"),
            j.workflow_name
        );
    }
    Ok(0)
}

pub async fn status(store: &Store, job: &Job, as_json: bool) -> anyhow::Result<u8> {
    let counts = store.item_counts(job.id).await?;
    let usage = store.job_usage(job.id).await?;
    let remote = store.job_remote(job.id).await?;
    let machines = store.machines(job.id).await?;
    if as_json {
        let mut doc = json!({"job": job, "counts": counts, "usage": usage});
        if let Some(r) = &remote {
            // Which machine ran each item (its last attempt).
            let items: Vec<serde_json::Value> = store
                .item_machines(job.id)
                .await?
                .into_iter()
                .map(|(key, attempt, machine)| {
                    json!({"key": key, "attempt": attempt, "machine": machine})
                })
                .collect();
            doc["workers"] =
                json!({"remote": r.url, "open": r.open, "machines": machines, "items": items});
        }
        out!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    out!("job       {}", job.id);
    out!("workflow  {} ({})", job.workflow_name, job.workflow_path);
    out!("repo      {}", job.repo_path);
    out!(
        "status    {}",
        crate::cli::color::status(&job.status.to_string(), 0)
    );
    out!("phase     {}", job.phase);
    if let Some(b) = &job.refs.branch {
        out!("branch    {b}");
    }
    out!("created   {}", job.created_at);
    out!("updated   {}", job.updated_at);
    if let Some(e) = &job.error {
        out!("error     {e}");
    }
    out!(
        "items     {} total: {} pending, {} running, {} succeeded, {} failed; {} merged; {} in DLQ",
        counts.total,
        counts.pending,
        counts.running,
        counts.succeeded,
        counts.failed,
        counts.merged,
        counts.dlq
    );
    if let Some(r) = &remote {
        out!(
            "workers   {} via {}",
            if r.open { "open" } else { "closed" },
            r.url
        );
    }
    if !machines.is_empty() {
        let list: Vec<String> = machines
            .iter()
            .map(|m| {
                format!(
                    "{} ({} attempts, {} succeeded)",
                    m.machine, m.attempts, m.succeeded
                )
            })
            .collect();
        out!("machines  {}: {}", machines.len(), list.join(", "));
    }
    print_usage(&usage);
    Ok(0)
}

/// Tokens and cost of a job's agents: the total, per phase, and the most expensive items.
fn print_usage(u: &prodigy::store::JobUsage) {
    if u.runs == 0 {
        return;
    }
    out!("usage     {}", usage_line(&u.total));
    for (phase, p) in &u.by_phase {
        out!("  {phase:<8}{}", usage_line(p));
    }
    let top = u.most_expensive(5);
    if !top.is_empty() {
        out!("most expensive items:");
        for (key, p) in top {
            out!("  {key:<24}  {}", usage_line(p));
        }
    }
}

pub fn usage_line(u: &prodigy::types::Usage) -> String {
    format!(
        "{}, {} turns, {:.1}s API",
        u.cost_and_tokens(),
        u.turns,
        u.api_ms as f64 / 1000.0
    )
}

pub async fn events(store: &Store, job: JobId, follow: bool, as_json: bool) -> anyhow::Result<u8> {
    let mut after = 0i64;
    loop {
        let batch = store.events(job, after, 1000).await?;
        for e in &batch {
            after = e.seq;
            print_event(e, as_json)?;
        }
        if batch.len() == 1000 {
            continue;
        }
        if !follow || crate::cli::stdout_closed() {
            return Ok(0);
        }
        let running = store.get_job(job).await?.status == prodigy::types::JobStatus::Running;
        // A job recorded as running with nobody holding it was interrupted: nothing will come.
        let orphaned = running && store.lock_holder(job).await?.is_none();
        if orphaned {
            eout!(
                "job {job} is not running anywhere (interrupted?); `prodigy resume {job}` continues it"
            );
        }
        if !running || orphaned {
            // One more read: events written between the last read and the status change.
            for e in &store.events(job, after, 1000).await? {
                print_event(e, as_json)?;
            }
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_event(e: &prodigy::store::Event, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        out!("{}", serde_json::to_string(e)?);
    } else {
        out!(
            "{:>6}  {}  {:<20}  {}",
            e.seq,
            e.at.format("%H:%M:%S%.3f"),
            e.kind,
            e.data
        );
    }
    Ok(())
}
