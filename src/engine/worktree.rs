//! Where a job works: its own branch and worktree, plus a pool of agent worktrees.
//!
//! Agents do not get a fresh `git worktree add` each: that is a full checkout per item. A pool of
//! `max_parallel` worktrees is created once per run, serially (so worktree creation can never
//! race), and each slot is reset to the job's start commit between items, which touches only
//! the files the previous item changed.

use std::path::{Path, PathBuf};

use super::git::{self, GitError};
use crate::types::JobId;

pub type Result<T> = std::result::Result<T, GitError>;

#[derive(Debug, Clone)]
pub struct Workspace {
    /// The user's repository (any work tree of it).
    pub repo: PathBuf,
    /// `<state>/worktrees/<job id>`: everything of this job's that is not a branch.
    pub root: PathBuf,
    /// The job worktree: setup, merges and reduce happen here.
    pub job_dir: PathBuf,
    /// The job branch, `prodigy/<job id>`; it stays after the job, for the user to merge.
    pub branch: String,
    job: JobId,
}

/// One agent worktree of the pool, with its own branch.
#[derive(Debug, Clone)]
pub struct Slot {
    pub index: usize,
    pub dir: PathBuf,
    pub branch: String,
}

impl Workspace {
    pub fn new(repo: &Path, state_dir: &Path, job: JobId) -> Self {
        let root = state_dir.join("worktrees").join(job.to_string());
        Workspace {
            repo: repo.to_path_buf(),
            job_dir: root.join("job"),
            root,
            branch: job_branch(job),
            job,
        }
    }

    /// Makes sure the job worktree exists on the job branch and is at its HEAD, clean of
    /// half-done git operations. The branch is created at `base` when it does not exist yet.
    pub async fn ensure_job_worktree(&self, base: &str) -> Result<()> {
        let managed = self.root.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(managed).map_err(|e| io_error(managed, e))?;
        git::trust(&self.repo, managed).await?;
        if !git::branch_exists(&self.repo, &self.branch).await? {
            git::git(&self.repo, &["branch", &self.branch, base]).await?;
        }
        if self.job_dir.join(".git").exists() {
            git::reset_to_head(&self.job_dir).await?;
            return Ok(());
        }
        // A directory without a worktree link (or a worktree git forgot) is left over from a
        // crash mid-creation: start over.
        git::git(&self.repo, &["worktree", "prune"]).await?;
        if self.job_dir.exists() {
            remove_dir(&self.job_dir)?;
        }
        std::fs::create_dir_all(&self.root).map_err(|e| io_error(&self.root, e))?;
        let dir = self.job_dir.to_string_lossy().to_string();
        git::git(&self.repo, &["worktree", "add", "-q", &dir, &self.branch]).await?;
        Ok(())
    }

    /// Moves the job branch (checked out in the job worktree) to `commit`, dropping changes to
    /// tracked files. Untracked files stay: setup may have left inputs that reduce reads.
    pub async fn reset_job_to(&self, commit: &str) -> Result<()> {
        git::reset_to_head(&self.job_dir).await?;
        git::git(&self.job_dir, &["reset", "--hard", "-q", commit]).await?;
        Ok(())
    }

    /// Creates `n` agent worktrees at `start`, one after another. Slots left by an earlier,
    /// interrupted run of this job are removed first.
    pub async fn create_pool(&self, n: usize, start: &str) -> Result<Vec<Slot>> {
        self.remove_pool().await?;
        let mut slots = Vec::with_capacity(n);
        for index in 0..n {
            let slot = Slot {
                index,
                dir: self.root.join(format!("agent-{index}")),
                branch: format!("{}-agent-{index}", self.branch),
            };
            let dir = slot.dir.to_string_lossy().to_string();
            git::git(
                &self.repo,
                &[
                    "worktree",
                    "add",
                    "-q",
                    "-f",
                    "-B",
                    &slot.branch,
                    &dir,
                    start,
                ],
            )
            .await?;
            slots.push(slot);
        }
        Ok(slots)
    }

    /// Removes every agent worktree and agent branch of this job (also those a crash left).
    pub async fn remove_pool(&self) -> Result<()> {
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with("agent-") {
                    let dir = entry.path();
                    let d = dir.to_string_lossy().to_string();
                    if git::git(
                        &self.repo,
                        &["worktree", "remove", "--force", "--force", &d],
                    )
                    .await
                    .is_err()
                    {
                        remove_dir(&dir)?;
                    }
                }
            }
        }
        git::git(&self.repo, &["worktree", "prune"]).await?;
        let pattern = format!("refs/heads/{}-agent-*", self.branch);
        let branches = git::git(
            &self.repo,
            &["for-each-ref", "--format=%(refname)", &pattern],
        )
        .await?;
        // `update-ref -d`, not `branch -D`: deleting a branch rewrites .git/config (a new
        // file), and agents of other jobs running meanwhile hold a sandbox rule for the old
        // one, so their git would stop reading its configuration.
        for branch in branches.lines().filter(|l| !l.is_empty()) {
            git::git(&self.repo, &["update-ref", "-d", branch]).await?;
        }
        Ok(())
    }

    /// Removes the job worktree (the job branch stays) and the job's directory.
    pub async fn remove_all(&self) -> Result<()> {
        self.remove_pool().await?;
        if self.job_dir.exists() {
            let d = self.job_dir.to_string_lossy().to_string();
            if git::git(
                &self.repo,
                &["worktree", "remove", "--force", "--force", &d],
            )
            .await
            .is_err()
            {
                remove_dir(&self.job_dir)?;
            }
        }
        git::git(&self.repo, &["worktree", "prune"]).await?;
        if self.root.exists() {
            remove_dir(&self.root)?;
        }
        Ok(())
    }

    /// Keeps a failed attempt's commits reachable without leaving a branch behind:
    /// `refs/prodigy/<job>/<item>/attempt-<n>`, listed by `prodigy dlq show`.
    pub async fn keep_artifact(&self, slot: &Slot, item: &str, attempt: u32) -> Result<String> {
        let name = format!(
            "refs/prodigy/{}/{}/attempt-{attempt}",
            self.job,
            sanitize_ref(item)
        );
        git::git(&slot.dir, &["update-ref", &name, "HEAD"]).await?;
        Ok(name)
    }
}

impl Slot {
    /// Puts the slot at `start` on its branch with no trace of the previous item: tracked
    /// changes are reset and untracked and ignored files removed.
    pub async fn prepare(&self, start: &str) -> Result<()> {
        git::remove_stale_index_lock(&self.dir).await?;
        git::git(&self.dir, &["reset", "--hard", "-q", start]).await?;
        git::git(&self.dir, &["clean", "-q", "-ffdx"]).await?;
        Ok(())
    }
}

pub fn job_branch(job: JobId) -> String {
    format!("prodigy/{job}")
}

/// A string usable as one component of a git ref name.
pub fn sanitize_ref(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(80);
    if out.is_empty() {
        out.push('_');
    }
    out
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(dir, e)),
    }
}

fn io_error(dir: &Path, e: std::io::Error) -> GitError {
    GitError {
        args: "(filesystem)".into(),
        dir: dir.to_path_buf(),
        message: e.to_string(),
    }
}
