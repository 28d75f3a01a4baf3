//! What a step does with git beyond the engine: fetching a job's branch that an earlier run
//! pushed, checking out a pull request's head for `/prodigy run`, and the list of jobs this
//! checkout left unfinished, whose branches `scripts/action-state.sh save` pushes at the end of
//! the job (also after a crash or a cancellation).

use std::path::{Path, PathBuf};

use super::credentials;
use crate::engine::git;
use crate::engine::worktree::job_branch;
use crate::types::JobId;

/// The file listing the jobs this checkout started or continued and has not finished, one id
/// per line, in the state directory. `scripts/action-state.sh` reads it (keep the name in step).
pub const UNFINISHED_FILE: &str = "action-unfinished-jobs";

/// The jobs of [`UNFINISHED_FILE`] under `state_dir`.
#[derive(Debug, Clone)]
pub struct Unfinished {
    path: PathBuf,
}

impl Unfinished {
    pub fn new(state_dir: &Path) -> Unfinished {
        Unfinished {
            path: state_dir.join(UNFINISHED_FILE),
        }
    }

    pub fn jobs(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn write(&self, jobs: &[String]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = jobs.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(&self.path, text)
    }

    /// Adds `job` (once).
    pub fn add(&self, job: JobId) -> std::io::Result<()> {
        let mut jobs = self.jobs();
        let id = job.to_string();
        if !jobs.contains(&id) {
            jobs.push(id);
        }
        self.write(&jobs)
    }

    pub fn remove(&self, job: JobId) -> std::io::Result<()> {
        let id = job.to_string();
        let jobs: Vec<String> = self.jobs().into_iter().filter(|j| *j != id).collect();
        self.write(&jobs)
    }
}

/// Fetches `prodigy/<job>` from `origin` when this checkout lacks it (an earlier run pushed it),
/// with the step's token ([`credentials::origin_auth`]). `Err` says, for the user, why the
/// branch is not here.
pub async fn fetch_job_branch(repo: &Path, job: JobId) -> Result<(), String> {
    let auth = credentials::origin_auth();
    let branch = job_branch(job);
    if git::branch_exists(repo, &branch).await.unwrap_or(false) {
        return Ok(());
    }
    let spec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    match git::git_with_config(
        repo,
        &["fetch", "--quiet", "--no-tags", "origin", &spec],
        auth,
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "its branch {branch} is not in this checkout and fetching it from origin failed ({e})"
        )),
    }
}

/// Checks out `sha`, the head commit of pull request `pr`, fetched from `origin`
/// (`refs/pull/<pr>/head`) with the step's token as [`fetch_job_branch`], detached. The working
/// tree must be clean.
pub async fn checkout_pull_request(repo: &Path, pr: u64, sha: &str) -> anyhow::Result<()> {
    let auth = credentials::origin_auth();
    let spec = format!("+refs/pull/{pr}/head:refs/remotes/origin/pr/{pr}");
    git::git_with_config(
        repo,
        &["fetch", "--quiet", "--no-tags", "origin", &spec],
        auth,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot fetch pull request #{pr} from origin ({e}); the step needs the repository \
                 checked out with `actions/checkout` and `contents: read`"
        )
    })?;
    if !git::commit_exists(repo, sha).await? {
        anyhow::bail!(
            "pull request #{pr}'s head {sha} is not what origin has for it (pushed again since the \
             comment?); comment again to run the new head"
        );
    }
    git::git(repo, &["checkout", "--quiet", "--detach", sha]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unfinished_list_adds_once_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let list = Unfinished::new(&dir.path().join("state"));
        assert!(list.jobs().is_empty());
        let (a, b) = (JobId::new(), JobId::new());
        list.add(a).unwrap();
        list.add(b).unwrap();
        list.add(a).unwrap();
        assert_eq!(list.jobs(), [a.to_string(), b.to_string()]);
        list.remove(a).unwrap();
        assert_eq!(list.jobs(), [b.to_string()]);
        list.remove(b).unwrap();
        assert!(list.jobs().is_empty());
    }
}
