//! What the agents of a job used: one row per AI CLI run (`agent_runs`), summed per attempt,
//! item, phase and job for `status`, the job page, check runs and budgets.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::backend::{fenced, on_pool};
use super::{LockProof, Result, Store, now};
use crate::types::{ItemKey, JobId, RepoName, Usage};

/// One finished run of the AI CLI, to record.
#[derive(Debug, Clone)]
pub struct NewAgentRun {
    /// `setup`, `map`, `reduce`, `merge` or `commands`.
    pub phase: String,
    pub key: Option<ItemKey>,
    pub attempt: Option<u32>,
    pub session_id: Option<String>,
    pub model: Option<String>,
    /// The NDJSON transcript file (unique per job).
    pub transcript: String,
    /// The result message's subtype, None when the CLI ended without one.
    pub subtype: Option<String>,
    pub usage: Usage,
}

/// A recorded run.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AgentRunRow {
    pub phase: String,
    #[sqlx(rename = "item_key")]
    pub key: Option<ItemKey>,
    pub attempt: Option<i64>,
    pub session_id: Option<String>,
    pub model: Option<String>,
    /// Also called `json_log_location` (upstream's name).
    pub transcript: String,
    pub subtype: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cache_read_tokens: i64,
    pub cost_usd: f64,
    pub turns: i64,
    pub api_ms: i64,
    pub duration_ms: i64,
    pub finished_at: DateTime<Utc>,
}

impl AgentRunRow {
    pub fn usage(&self) -> Usage {
        let u = |v: i64| v.max(0) as u64;
        Usage {
            input_tokens: u(self.input_tokens),
            output_tokens: u(self.output_tokens),
            cache_creation_tokens: u(self.cache_creation_tokens),
            cache_read_tokens: u(self.cache_read_tokens),
            cost_usd: self.cost_usd,
            turns: u(self.turns),
            api_ms: u(self.api_ms),
            duration_ms: u(self.duration_ms),
        }
    }
}

/// A job's usage, summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobUsage {
    pub total: Usage,
    /// Agent runs counted in `total`.
    pub runs: u64,
    pub by_phase: BTreeMap<String, Usage>,
    pub by_item: BTreeMap<ItemKey, Usage>,
}

impl JobUsage {
    pub fn from_runs(rows: &[AgentRunRow]) -> JobUsage {
        let mut out = JobUsage::default();
        for r in rows {
            let u = r.usage();
            out.total.add(&u);
            out.runs += 1;
            out.by_phase.entry(r.phase.clone()).or_default().add(&u);
            if let Some(k) = &r.key {
                out.by_item.entry(k.clone()).or_default().add(&u);
            }
        }
        out
    }

    /// The phases that ran an agent, in the order a job runs them (others after, by name).
    pub fn phases(&self) -> Vec<(&str, &Usage)> {
        const ORDER: &[&str] = &["setup", "map", "reduce", "merge", "commands"];
        let rank = |p: &str| ORDER.iter().position(|o| *o == p).unwrap_or(ORDER.len());
        let mut v: Vec<(&str, &Usage)> =
            self.by_phase.iter().map(|(p, u)| (p.as_str(), u)).collect();
        v.sort_by(|a, b| rank(a.0).cmp(&rank(b.0)).then(a.0.cmp(b.0)));
        v
    }

    /// Items by cost, most expensive first (ties by key), at most `n`.
    pub fn most_expensive(&self, n: usize) -> Vec<(&ItemKey, &Usage)> {
        let mut v: Vec<(&ItemKey, &Usage)> = self.by_item.iter().collect();
        v.sort_by(|a, b| b.1.cost_usd.total_cmp(&a.1.cost_usd).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }
}

/// `SELECT <run columns> FROM agent_runs` followed by the given literal tail.
macro_rules! select_runs {
    ($tail:literal) => {
        concat!(
            "SELECT phase, item_key, attempt, session_id, model, transcript, subtype, ",
            "input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, cost_usd, ",
            "turns, api_ms, duration_ms, finished_at FROM agent_runs ",
            $tail
        )
    };
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Inserts (or, for a transcript recorded before, replaces) an agent run in the fenced
/// transaction `$tx`: the lock holder's [`Store::record_agent_run`] or a claim holder's
/// `finish_claimed`.
macro_rules! insert_agent_run {
    ($tx:ident, $job:expr, $run:expr, $at:expr) => {{
        sqlx::query(
            "INSERT INTO agent_runs (job_id, phase, item_key, attempt, session_id, model, \
             transcript, subtype, input_tokens, output_tokens, cache_creation_tokens, \
             cache_read_tokens, cost_usd, turns, api_ms, duration_ms, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (job_id, transcript) DO UPDATE SET subtype = excluded.subtype, \
             input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, \
             cache_creation_tokens = excluded.cache_creation_tokens, \
             cache_read_tokens = excluded.cache_read_tokens, cost_usd = excluded.cost_usd, \
             turns = excluded.turns, api_ms = excluded.api_ms, \
             duration_ms = excluded.duration_ms, finished_at = excluded.finished_at",
        )
        .bind($job)
        .bind(&$run.phase)
        .bind(&$run.key)
        .bind($run.attempt.map(i64::from))
        .bind(&$run.session_id)
        .bind(&$run.model)
        .bind(&$run.transcript)
        .bind(&$run.subtype)
        .bind($crate::store::usage::to_i64($run.usage.input_tokens))
        .bind($crate::store::usage::to_i64($run.usage.output_tokens))
        .bind($crate::store::usage::to_i64(
            $run.usage.cache_creation_tokens,
        ))
        .bind($crate::store::usage::to_i64($run.usage.cache_read_tokens))
        .bind($run.usage.cost_usd)
        .bind($crate::store::usage::to_i64($run.usage.turns))
        .bind($crate::store::usage::to_i64($run.usage.api_ms))
        .bind($crate::store::usage::to_i64($run.usage.duration_ms))
        .bind($at)
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(super) use insert_agent_run;

impl Store {
    /// Records a finished agent run of the locked job. Recording the same transcript again
    /// replaces the row (a run is recorded once; this only makes a retried write harmless).
    #[tracing::instrument(level = "debug", skip_all, fields(job = %proof.job, transcript = %run.transcript))]
    pub async fn record_agent_run(&self, proof: &LockProof, run: &NewAgentRun) -> Result<()> {
        let at = now();
        fenced!(self, proof, tx => {
            insert_agent_run!(tx, proof.job, run, at);
        });
        Ok(())
    }

    /// A job's agent runs in the order they finished; only one item's when `key` is given.
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn agent_runs(&self, job: JobId, key: Option<&ItemKey>) -> Result<Vec<AgentRunRow>> {
        Ok(on_pool!(self, pool => {
            match key {
                Some(key) => sqlx::query_as(select_runs!(
                    "WHERE job_id = $1 AND item_key = $2 ORDER BY finished_at, transcript"
                ))
                .bind(job)
                .bind(key)
                .fetch_all(pool)
                .await?,
                None => sqlx::query_as(select_runs!(
                    "WHERE job_id = $1 ORDER BY finished_at, transcript"
                ))
                .bind(job)
                .fetch_all(pool)
                .await?,
            }
        }))
    }

    /// A job's usage summed per phase and item.
    #[tracing::instrument(level = "debug", skip_all, fields(%job))]
    pub async fn job_usage(&self, job: JobId) -> Result<JobUsage> {
        Ok(JobUsage::from_runs(&self.agent_runs(job, None).await?))
    }

    /// What the agents of a repository's jobs cost since `since` (the server's daily cap).
    #[tracing::instrument(level = "debug", skip_all, fields(%repo))]
    pub async fn repo_cost_since(&self, repo: &RepoName, since: DateTime<Utc>) -> Result<f64> {
        let sum: Option<f64> = on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT SUM(r.cost_usd) FROM agent_runs r JOIN jobs j ON j.id = r.job_id \
                 WHERE j.repo = $1 AND r.finished_at >= $2",
            )
            .bind(repo.as_str())
            .bind(since)
            .fetch_one(pool)
            .await?
        });
        Ok(sum.unwrap_or(0.0))
    }

    /// The total usage of several jobs at once (the `jobs` list), by job.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn usage_totals(&self, jobs: &[JobId]) -> Result<BTreeMap<JobId, Usage>> {
        let mut out = BTreeMap::new();
        // One query per job keeps the SQL identical on both backends; the list is short.
        for job in jobs {
            let rows = self.agent_runs(*job, None).await?;
            let total = JobUsage::from_runs(&rows).total;
            if rows.is_empty() {
                continue;
            }
            out.insert(*job, total);
        }
        Ok(out)
    }
}
