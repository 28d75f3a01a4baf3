//! The repository cache: one clone per repository under `<checkout dir>/<owner>/<name>`, reused
//! across jobs and fetched with git2 (over HTTPS with the installation token as the password of
//! `x-access-token`, as GitHub documents for Apps).
//!
//! A job needs only its commit in the clone: the engine starts the job branch at that commit in
//! its own worktree, so the clone's working tree is never checked out per job and jobs of
//! different pull requests run side by side. Fetches of one repository are serialized by an
//! async mutex per repository, since libgit2 does not expect two fetches into one clone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretString};

use crate::github::PrNumber;
use crate::types::RepoName;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("cannot clone {url} into {dir}: {message}")]
    Clone {
        url: String,
        dir: PathBuf,
        message: String,
    },
    #[error("cannot fetch {refspec} from {url}: {message}")]
    Fetch {
        url: String,
        refspec: String,
        message: String,
    },
    #[error(
        "commit {sha} is not in {repo} after fetching {refspec}; was the pull request pushed again?"
    )]
    MissingCommit {
        repo: RepoName,
        sha: String,
        refspec: String,
    },
    #[error("{path} at {sha}: {message}")]
    Read {
        path: String,
        sha: String,
        message: String,
    },
    #[error("the repository cache {dir}: {message}")]
    Cache { dir: PathBuf, message: String },
}

/// The cache of clones.
#[derive(Clone)]
pub struct RepoCache {
    root: PathBuf,
    git_base_url: String,
    locks: Arc<Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for RepoCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoCache")
            .field("root", &self.root)
            .field("git_base_url", &self.git_base_url)
            .finish_non_exhaustive()
    }
}

impl RepoCache {
    /// `git_base_url` is `https://github.com` (or a GitHub Enterprise host, or `file:///dir` in
    /// tests); a repository's URL is `<git_base_url>/<owner>/<name>.git`.
    pub fn new(root: PathBuf, git_base_url: &str) -> Self {
        RepoCache {
            root,
            git_base_url: git_base_url.trim_end_matches('/').to_string(),
            locks: Arc::default(),
        }
    }

    /// Where `repo`'s clone lives.
    pub fn path(&self, repo: &RepoName) -> PathBuf {
        self.root.join(repo.as_str())
    }

    pub fn clone_url(&self, repo: &RepoName) -> String {
        format!("{}/{}.git", self.git_base_url, repo.as_str())
    }

    /// Whether fetching needs credentials (an installation token).
    pub fn needs_token(&self) -> bool {
        self.git_base_url.starts_with("http")
    }

    fn lock_of(&self, repo: &RepoName) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("repo lock map")
            .entry(repo.clone())
            .or_default()
            .clone()
    }

    /// Makes the clone of `repo` hold commit `sha` (fetching the pull request's head ref when
    /// `pr` is given, else the branches) and returns the clone's path.
    pub async fn prepare(
        &self,
        repo: &RepoName,
        pr: Option<PrNumber>,
        sha: &str,
        token: Option<SecretString>,
    ) -> Result<PathBuf, RepoError> {
        let lock = self.lock_of(repo);
        let _guard = lock.lock().await;
        let dir = self.path(repo);
        let url = self.clone_url(repo);
        let repo = repo.clone();
        let sha = sha.to_string();
        tokio::task::spawn_blocking(move || {
            prepare_blocking(&dir, &url, &repo, pr, &sha, token.as_ref())?;
            Ok(dir)
        })
        .await
        .map_err(|e| RepoError::Cache {
            dir: self.root.clone(),
            message: format!("the git task failed: {e}"),
        })?
    }

    /// A file's text at `sha` in the clone; `None` when the commit has no such file.
    pub async fn read_file(
        &self,
        repo: &RepoName,
        sha: &str,
        path: &str,
    ) -> Result<Option<String>, RepoError> {
        let dir = self.path(repo);
        let sha = sha.to_string();
        let path = path.to_string();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || read_file_blocking(&dir, &sha, &path))
            .await
            .map_err(|e| RepoError::Cache {
                dir: root,
                message: format!("the git task failed: {e}"),
            })?
    }
}

fn fetch_options(token: Option<&SecretString>) -> git2::FetchOptions<'_> {
    let mut callbacks = git2::RemoteCallbacks::new();
    let mut asked = 0;
    callbacks.credentials(move |_url, _user, _allowed| {
        asked += 1;
        // libgit2 asks again after a refused credential; asking forever would hang the job.
        match token {
            Some(token) if asked == 1 => {
                git2::Cred::userpass_plaintext("x-access-token", token.expose_secret())
            }
            Some(_) => Err(git2::Error::from_str(
                "the installation token was refused; does the App have `contents: read` on this repository?",
            )),
            None => Err(git2::Error::from_str(
                "the remote asks for credentials, but no installation token is available",
            )),
        }
    });
    let mut options = git2::FetchOptions::new();
    options.remote_callbacks(callbacks);
    options.download_tags(git2::AutotagOption::None);
    options
}

/// Agents and the merge queue commit in worktrees of this clone; a server's account often has
/// no git identity, and git refuses to commit without one.
fn set_identity(repo: &git2::Repository) -> Result<(), git2::Error> {
    let mut config = repo.config()?.open_level(git2::ConfigLevel::Local)?;
    config.set_str("user.name", "prodigy")?;
    config.set_str("user.email", "prodigy@users.noreply.github.com")?;
    Ok(())
}

fn has_commit(repo: &git2::Repository, sha: &str) -> bool {
    git2::Oid::from_str(sha)
        .ok()
        .and_then(|oid| repo.find_commit(oid).ok())
        .is_some()
}

fn prepare_blocking(
    dir: &Path,
    url: &str,
    name: &RepoName,
    pr: Option<PrNumber>,
    sha: &str,
    token: Option<&SecretString>,
) -> Result<(), RepoError> {
    let repo = match git2::Repository::open(dir) {
        Ok(repo) => repo,
        Err(_) => {
            // Anything at the path that is not a repository is a clone a crash cut short.
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|e| RepoError::Cache {
                    dir: dir.to_path_buf(),
                    message: format!("cannot remove a broken clone: {e}"),
                })?;
            }
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| RepoError::Cache {
                    dir: parent.to_path_buf(),
                    message: e.to_string(),
                })?;
            }
            let repo = git2::build::RepoBuilder::new()
                .fetch_options(fetch_options(token))
                .clone(url, dir)
                .map_err(|e| RepoError::Clone {
                    url: url.to_string(),
                    dir: dir.to_path_buf(),
                    message: e.message().to_string(),
                })?;
            set_identity(&repo).map_err(|e| RepoError::Cache {
                dir: dir.to_path_buf(),
                message: format!("cannot set the committer identity: {}", e.message()),
            })?;
            repo
        }
    };
    if has_commit(&repo, sha) {
        return Ok(());
    }
    let refspec = match pr {
        Some(n) => format!("+refs/pull/{n}/head:refs/prodigy/pull/{n}"),
        None => "+refs/heads/*:refs/remotes/origin/*".to_string(),
    };
    let fetch_err = |e: git2::Error| RepoError::Fetch {
        url: url.to_string(),
        refspec: refspec.clone(),
        message: e.message().to_string(),
    };
    let mut remote = repo.remote_anonymous(url).map_err(fetch_err)?;
    remote
        .fetch(&[refspec.as_str()], Some(&mut fetch_options(token)), None)
        .map_err(fetch_err)?;
    if !has_commit(&repo, sha) {
        return Err(RepoError::MissingCommit {
            repo: name.clone(),
            sha: sha.to_string(),
            refspec,
        });
    }
    Ok(())
}

fn read_file_blocking(dir: &Path, sha: &str, path: &str) -> Result<Option<String>, RepoError> {
    let err = |message: String| RepoError::Read {
        path: path.to_string(),
        sha: sha.to_string(),
        message,
    };
    let repo = git2::Repository::open(dir).map_err(|e| err(e.message().to_string()))?;
    let oid = git2::Oid::from_str(sha).map_err(|e| err(e.message().to_string()))?;
    let commit = repo
        .find_commit(oid)
        .map_err(|e| err(e.message().to_string()))?;
    let tree = commit.tree().map_err(|e| err(e.message().to_string()))?;
    let entry = match tree.get_path(Path::new(path)) {
        Ok(entry) => entry,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(err(e.message().to_string())),
    };
    let object = entry
        .to_object(&repo)
        .map_err(|e| err(e.message().to_string()))?;
    let Some(blob) = object.as_blob() else {
        return Err(err("is a directory, not a file".to_string()));
    };
    String::from_utf8(blob.content().to_vec())
        .map(Some)
        .map_err(|_| err("is not UTF-8 text".to_string()))
}
