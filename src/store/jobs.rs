//! Job rows: creating, finding and listing jobs.

use serde_json::Value;
use sqlx::types::Json;

use super::backend::{on_pool, on_pool_write};
use super::{Job, JobRefs, JobSummary, NewJob, Result, Store, StoreError, now};
use crate::types::{JobId, JobStatus, Phase, PrNumber, RepoName};

/// `SELECT <job columns> FROM jobs` followed by the given literal tail.
macro_rules! select_jobs {
    ($tail:literal) => {
        concat!(
            "SELECT id, workflow_path, workflow_text, workflow_name, repo_path, repo, pr_number, ",
            "head_sha, status, phase, refs, vars, check_run_id, error, lease_epoch, created_at, ",
            "updated_at, finished_at FROM jobs ",
            $tail
        )
    };
}
pub(super) use select_jobs;

impl Store {
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn create_job(&self, new: &NewJob) -> Result<Job> {
        let id = JobId::new();
        let at = now();
        on_pool_write!(self, pool => {
            sqlx::query(
                "INSERT INTO jobs (id, workflow_path, workflow_text, workflow_name, repo_path, repo, \
                 pr_number, head_sha, status, phase, refs, vars, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
            )
            .bind(id)
            .bind(&new.workflow_path)
            .bind(&new.workflow_text)
            .bind(&new.workflow_name)
            .bind(&new.repo_path)
            .bind(&new.repo)
            .bind(new.pr_number)
            .bind(&new.head_sha)
            .bind(JobStatus::Pending)
            .bind(Phase::Setup)
            .bind(Json(JobRefs::default()))
            .bind(Value::Object(Default::default()))
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        self.get_job(id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job = %id))]
    pub async fn get_job(&self, id: JobId) -> Result<Job> {
        let job: Option<Job> = on_pool!(self, pool => {
            sqlx::query_as(select_jobs!("WHERE id = $1")).bind(id).fetch_optional(pool).await?
        });
        job.ok_or_else(|| StoreError::JobNotFound(id.to_string()))
    }

    /// A job by full id or by a unique prefix of its id's text (hyphens optional).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn find_job(&self, id_or_prefix: &str) -> Result<Job> {
        let wanted = id_or_prefix.trim().to_ascii_lowercase();
        if let Ok(id) = wanted.parse::<JobId>() {
            return self.get_job(id).await;
        }
        let Some(prefix) = hyphenated_prefix(&wanted) else {
            return Err(StoreError::JobNotFound(id_or_prefix.to_string()));
        };
        let pattern = format!("{prefix}%");
        let jobs: Vec<Job> = on_pool!(self, pool => {
            sqlx::query_as(select_jobs!("WHERE CAST(id AS TEXT) LIKE $1 ORDER BY id LIMIT 2"))
                .bind(&pattern)
                .fetch_all(pool)
                .await?
        });
        match jobs.len() {
            0 => Err(StoreError::JobNotFound(id_or_prefix.to_string())),
            1 => Ok(jobs.into_iter().next().expect("one job")),
            _ => {
                let count: i64 = on_pool!(self, pool => {
                    sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE CAST(id AS TEXT) LIKE $1")
                        .bind(&pattern)
                        .fetch_one(pool)
                        .await?
                });
                Err(StoreError::AmbiguousJob {
                    prefix: id_or_prefix.to_string(),
                    count: usize::try_from(count).unwrap_or(usize::MAX),
                })
            }
        }
    }

    /// Most recent first.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn list_jobs(&self, limit: u32) -> Result<Vec<JobSummary>> {
        let jobs: Vec<Job> = on_pool!(self, pool => {
            sqlx::query_as(select_jobs!("ORDER BY created_at DESC, id DESC LIMIT $1"))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let counts = self.item_counts(job.id).await?;
            let usage = self.job_usage(job.id).await?.total;
            out.push(JobSummary { job, counts, usage });
        }
        Ok(out)
    }

    /// Jobs of one pull request, most recent first (the server's `/prodigy resume` on a PR).
    #[tracing::instrument(level = "debug", skip_all, fields(%repo))]
    pub async fn find_jobs_by_pr(&self, repo: &RepoName, pr: PrNumber) -> Result<Vec<Job>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(select_jobs!(
                "WHERE repo = $1 AND pr_number = $2 ORDER BY created_at DESC, id DESC"
            ))
            .bind(repo)
            .bind(pr)
            .fetch_all(pool)
            .await?
        }))
    }
}

/// `0192f5a0`, `0192f5a0-00`, `0192f5a000` -> the hyphenated form's prefix; None unless the text
/// can start a UUID (so LIKE never sees a wildcard).
fn hyphenated_prefix(text: &str) -> Option<String> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return None;
    }
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() > 32 {
        return None;
    }
    let mut out = String::with_capacity(36);
    for (i, c) in hex.chars().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(c);
    }
    // A prefix typed with its hyphens must keep them where a UUID has them.
    if text.contains('-') && !out.starts_with(text) {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_the_hyphenated_form() {
        assert_eq!(hyphenated_prefix("0192f5a0").as_deref(), Some("0192f5a0"));
        assert_eq!(
            hyphenated_prefix("0192f5a0ab").as_deref(),
            Some("0192f5a0-ab")
        );
        assert_eq!(
            hyphenated_prefix("0192f5a0-ab").as_deref(),
            Some("0192f5a0-ab")
        );
        assert_eq!(hyphenated_prefix("0192-f5a0"), None);
        assert_eq!(hyphenated_prefix("01%"), None);
        assert_eq!(hyphenated_prefix(""), None);
    }
}
