//! Where a job works: its own branch and worktree, plus a pool of agent worktrees.
//!
//! Agents do not get a fresh `git worktree add` each: that is a full checkout per item. A pool of
//! `max_parallel` worktrees is created once per run, serially (so worktree creation can never
//! race), and each slot is reset to the job's start commit between items, which touches only
//! the files the previous item changed.
//!
//! Jobs of one repository share its `.git/worktrees`, and git does not make `worktree add`,
//! `remove` and `prune` safe against each other: a prune deletes another job's worktree that
//! `add` has made the directory of but not yet filled, and an `add` reading the list fails on a
//! half-written one. Every such command runs under [`RepoLock`], one per repository, across jobs
//! and processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

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
        let _lock = RepoLock::acquire(&self.repo).await?;
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
        let _lock = RepoLock::acquire(&self.repo).await?;
        self.remove_pool_locked().await?;
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
        let _lock = RepoLock::acquire(&self.repo).await?;
        self.remove_pool_locked().await
    }

    /// [`Self::remove_pool`], for a caller that holds the repository's [`RepoLock`].
    async fn remove_pool_locked(&self) -> Result<()> {
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
        let _lock = RepoLock::acquire(&self.repo).await?;
        self.remove_pool_locked().await?;
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

/// Held while a command adds, removes or prunes worktrees of a repository (or lists them, as
/// `git branch -D` does): an async mutex per repository for the jobs of this process, and an
/// exclusive lock on `<common git dir>/prodigy-worktrees.lock` for other prodigy processes.
struct RepoLock {
    _file: std::fs::File,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl RepoLock {
    async fn acquire(repo: &Path) -> Result<RepoLock> {
        // Any work tree of a repository names the same common directory.
        let common = git::common_dir(repo).await?;
        let local = {
            static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
                OnceLock::new();
            let mut locks = LOCKS
                .get_or_init(Mutex::default)
                .lock()
                .expect("worktree lock map");
            locks.entry(common.clone()).or_default().clone()
        };
        let local = local.lock_owned().await;
        let path = common.join("prodigy-worktrees.lock");
        // Only one task of this process waits here at a time (it holds the mutex); a blocking
        // thread waits for another process, and the lock goes with the file if this is dropped.
        let file = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| io_error(&path, e))?;
            file.lock().map_err(|e| io_error(&path, e))?;
            Ok(file)
        })
        .await
        .map_err(|e| GitError {
            args: "(lock worktrees)".into(),
            dir: common.clone(),
            message: format!("the locking task failed: {e}"),
        })??;
        Ok(RepoLock {
            _file: file,
            _local: local,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn git_sync(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .envs(git::quiet_env())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }

    /// Jobs of one repository make and remove their worktrees at the same time, as a server's
    /// jobs of several pull requests do; none may see another's half-made worktree.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn jobs_of_one_repository_make_and_remove_worktrees_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git_sync(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("README.md"), "x\n").unwrap();
        git_sync(&repo, &["add", "-A"]);
        git_sync(
            &repo,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                "init",
            ],
        );
        let state = tmp.path().join("state");
        for _round in 0..3 {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let ws = Workspace::new(&repo, &state, JobId::new());
                tasks.spawn(async move {
                    ws.ensure_job_worktree("main").await?;
                    let slots = ws.create_pool(3, "main").await?;
                    for slot in &slots {
                        slot.prepare("main").await?;
                    }
                    ws.remove_all().await
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap().unwrap();
            }
        }
        let list = git::git(&repo, &["worktree", "list", "--porcelain"])
            .await
            .unwrap();
        assert_eq!(list.matches("worktree ").count(), 1, "{list}");
    }
}
