//! Whether a step starts a new job or continues one (pure decisions; the caller reads the store
//! and git).
//!
//! `resume: auto` (the default) continues the most recent unfinished job (its phase is not
//! `done`) of the same repository, workflow file and commit that can continue here: it ran in
//! this checkout's directory and, past setup, its branch `prodigy/<job>` is in this checkout.
//! Otherwise a new job starts. `resume: new` always starts one; `resume: <job id>` continues
//! that job or fails saying why it cannot.

use std::path::{Component, Path};
use std::str::FromStr;

use crate::store::Job;
use crate::types::Phase;

/// The `resume` input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResumeMode {
    #[default]
    Auto,
    New,
    /// A job id or a unique prefix of it.
    Job(String),
}

impl FromStr for ResumeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Ok(match s.to_ascii_lowercase().as_str() {
            "" | "auto" => ResumeMode::Auto,
            "new" | "never" | "false" => ResumeMode::New,
            _ if s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') => {
                ResumeMode::Job(s.to_string())
            }
            _ => {
                return Err(format!(
                    "`{s}` is not a resume mode: use `auto` (continue an unfinished job of this \
                     workflow at this commit, else start one), `new`, or a job id"
                ));
            }
        })
    }
}

/// `path` relative to the repository root `repo`, `/`-separated; a relative path is taken as
/// relative to the root already. `None` for a path outside the repository.
pub fn repo_relative(path: &Path, repo: &Path) -> Option<String> {
    let rel = if path.is_absolute() {
        path.strip_prefix(repo).ok()?
    } else {
        path
    };
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The unfinished jobs of `workflow` (repository-relative) among `jobs` (most recent first, all
/// at the step's commit), in that order.
pub fn unfinished_jobs<'a>(jobs: &'a [Job], workflow: &str) -> Vec<&'a Job> {
    jobs_of_workflow(jobs, workflow)
        .into_iter()
        .filter(|j| j.phase != Phase::Done)
        .collect()
}

/// The jobs of `workflow` (repository-relative) among `jobs`, finished or not, in their order.
pub fn jobs_of_workflow<'a>(jobs: &'a [Job], workflow: &str) -> Vec<&'a Job> {
    jobs.iter()
        .filter(|j| {
            repo_relative(Path::new(&j.workflow_path), Path::new(&j.repo_path)).as_deref()
                == Some(workflow)
        })
        .collect()
}

/// Why `job` cannot continue in the checkout at `repo`, if it cannot. `branch_here` is whether
/// its job branch exists in that checkout.
pub fn cannot_continue_here(job: &Job, repo: &Path, branch_here: bool) -> Option<String> {
    if Path::new(&job.repo_path) != repo {
        return Some(format!(
            "it ran in {}, and this checkout is {}",
            job.repo_path,
            repo.display()
        ));
    }
    // Before setup is done the job starts over from its base commit; after it, its work is on
    // its branch, which another runner's checkout does not have.
    if job.phase != Phase::Setup && !branch_here {
        let branch = crate::engine::worktree::job_branch(job.id);
        return Some(format!(
            "its branch {branch} is not in this checkout (it ran on another runner): push it \
             there (`git push origin {branch}`) and fetch it before this step \
             (`git fetch origin {branch}:{branch}`)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobRefs;
    use crate::types::{JobId, JobStatus};
    use chrono::Utc;

    fn job(workflow_path: &str, phase: Phase) -> Job {
        Job {
            id: JobId::new(),
            workflow_path: workflow_path.into(),
            workflow_text: String::new(),
            workflow_name: "review".into(),
            repo_path: "/w/repo".into(),
            repo: None,
            pr_number: None,
            head_sha: None,
            status: JobStatus::Failed,
            phase,
            refs: JobRefs::default(),
            vars: serde_json::Value::Null,
            check_run_id: None,
            error: None,
            lease_epoch: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: None,
        }
    }

    #[test]
    fn resume_modes() {
        assert_eq!("".parse(), Ok(ResumeMode::Auto));
        assert_eq!(" Auto ".parse(), Ok(ResumeMode::Auto));
        assert_eq!("new".parse(), Ok(ResumeMode::New));
        assert_eq!(
            "0192f5a0-59".parse(),
            Ok(ResumeMode::Job("0192f5a0-59".into()))
        );
        let err = "yes please".parse::<ResumeMode>().unwrap_err();
        assert!(err.contains("`auto`"), "{err}");
    }

    #[test]
    fn paths_relative_to_the_repository() {
        let repo = Path::new("/w/repo");
        let rel = |p: &str| repo_relative(Path::new(p), repo);
        assert_eq!(
            rel("/w/repo/.prodigy/review.yml").as_deref(),
            Some(".prodigy/review.yml")
        );
        assert_eq!(
            rel("./.prodigy/x/../review.yml").as_deref(),
            Some(".prodigy/review.yml")
        );
        assert_eq!(rel("/elsewhere/review.yml"), None);
        assert_eq!(rel("../review.yml"), None);
    }

    #[test]
    fn the_unfinished_jobs_of_the_workflow_most_recent_first() {
        let jobs = vec![
            job("/w/repo/.prodigy/other.yml", Phase::Map),
            job("/w/repo/.prodigy/review.yml", Phase::Done),
            job("/w/repo/.prodigy/review.yml", Phase::Map),
            job(".prodigy/review.yml", Phase::Reduce),
        ];
        let found: Vec<JobId> = unfinished_jobs(&jobs, ".prodigy/review.yml")
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(found, [jobs[2].id, jobs[3].id]);
        assert!(unfinished_jobs(&jobs[..2], ".prodigy/review.yml").is_empty());
    }

    #[test]
    fn a_job_continues_only_where_its_work_is() {
        let repo = Path::new("/w/repo");
        assert_eq!(
            cannot_continue_here(&job("x.yml", Phase::Map), repo, true),
            None
        );
        // Setup not done: nothing on the branch to lose.
        assert_eq!(
            cannot_continue_here(&job("x.yml", Phase::Setup), repo, false),
            None
        );
        let why = cannot_continue_here(&job("x.yml", Phase::Map), repo, false).unwrap();
        assert!(why.contains("git fetch origin prodigy/"), "{why}");
        let why =
            cannot_continue_here(&job("x.yml", Phase::Map), Path::new("/other"), true).unwrap();
        assert!(why.contains("it ran in /w/repo"), "{why}");
    }
}
