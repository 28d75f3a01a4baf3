//! The dead-letter queue as `prodigy dlq list`, `show` and `export` print it.

use std::path::Path;

use serde_json::json;

use prodigy::store::{DlqItem, Job, Store};
use prodigy::types::{ItemKey, JobId};

use super::{EXIT_USAGE, ExportFormat, print_json};

pub fn dlq_list(rows: &[DlqItem], as_json: bool) -> anyhow::Result<u8> {
    if as_json {
        return print_json(rows);
    }
    if rows.is_empty() {
        out!("the DLQ is empty");
        return Ok(0);
    }
    let ids: Vec<JobId> = rows.iter().map(|r| r.job_id).collect();
    let w = crate::cli::ids::prefix_len(&ids);
    out!(
        "{:<w$}  {:<24}  {:>8}  {:<24}  {:<12}  last message",
        "job",
        "item",
        "failures",
        "error class",
        "signature"
    );
    for r in rows {
        let msg = r.last_message.lines().last().unwrap_or("");
        out!(
            "{:<w$}  {:<24}  {:>8}  {:<24}  {:<12}  {}",
            &r.job_id.to_string()[..w],
            r.key,
            r.failure_count,
            r.error_class,
            &r.signature[..r.signature.len().min(12)],
            msg
        );
    }
    Ok(0)
}

pub async fn dlq_show(
    store: &Store,
    job: &Job,
    key: &ItemKey,
    as_json: bool,
) -> anyhow::Result<u8> {
    let row = store
        .dlq(Some(job.id))
        .await?
        .into_iter()
        .find(|r| &r.key == key);
    let history = store.attempts(job.id, key).await?;
    if history.is_empty() && row.is_none() {
        eout!(
            "job {} has no item '{key}' (see `prodigy dlq list {}`)",
            job.id,
            job.id
        );
        return Ok(EXIT_USAGE);
    }
    if as_json {
        out!(
            "{}",
            serde_json::to_string_pretty(&json!({"dlq": row, "attempts": history}))?
        );
        return Ok(0);
    }
    match &row {
        Some(r) => {
            out!("item        {}", r.key);
            out!(
                "in DLQ      yes ({} failures, reprocessable: {})",
                r.failure_count,
                r.reprocessable
            );
            out!("error class {}", r.error_class);
            out!("signature   {}", r.signature);
            out!("first/last  {} / {}", r.first_failure, r.last_failure);
            out!("data        {}", r.data);
            if let Some(t) = &r.json_log_location {
                out!("transcript  {t}");
            }
            if let Some(s) = &r.session_id {
                out!("session     {s}");
            }
        }
        None => out!("item        {key} (not in the DLQ)"),
    }
    out!("history:");
    for a in &history {
        let outcome = match a.success {
            Some(true) => "succeeded".to_string(),
            Some(false) => format!(
                "failed ({})",
                a.error_class
                    .map_or("unknown".to_string(), |c| c.to_string())
            ),
            None => "running or interrupted".to_string(),
        };
        out!("  attempt {} at {}: {}", a.attempt, a.started_at, outcome);
        if let Some(code) = a.exit_code {
            out!("    exit code {code}");
        }
        if let Some(m) = &a.message {
            for l in m.lines().take(12) {
                out!("    | {l}");
            }
        }
        if let Some(l) = &a.log_path {
            out!("    log: {l}");
        }
        if let Some(w) = &a.worktree {
            out!(
                "    worktree: {w} (branch {})",
                a.branch.as_deref().unwrap_or("-")
            );
        }
    }
    let refs = prodigy::engine::git::git(
        Path::new(&job.repo_path),
        &[
            "for-each-ref",
            "--format=%(refname) %(objectname:short)",
            &format!(
                "refs/prodigy/{}/{}",
                job.id,
                prodigy::engine::worktree::sanitize_ref(&key.0)
            ),
        ],
    )
    .await
    .unwrap_or_default();
    if !refs.is_empty() {
        out!("kept commits of failed attempts (inspect with `git log REF`):");
        for r in refs.lines() {
            out!("  {r}");
        }
    }
    Ok(0)
}

pub async fn dlq_export(store: &Store, job: JobId, format: ExportFormat) -> anyhow::Result<u8> {
    let rows = store.dlq(Some(job)).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let history = store.attempts(job, &r.key).await?;
        out.push(json!({"item": r, "attempts": history}));
    }
    match format {
        ExportFormat::Json => out!("{}", serde_json::to_string_pretty(&out)?),
        ExportFormat::Jsonl => {
            for v in out {
                out!("{}", serde_json::to_string(&v)?);
            }
        }
    }
    Ok(0)
}
