//! The repository cache: one clone per repository under `<checkout dir>/<owner>/<name>`, reused
//! across jobs. Clones and fetches run the git CLI (over HTTPS with the installation token as
//! the password of `x-access-token`, as GitHub documents for Apps); git2 reads commits and
//! files in process. The git CLI brings its own TLS, so the binary links no OpenSSL.
//!
//! A job needs only its commit in the clone: the engine starts the job branch at that commit in
//! its own worktree, so the clone's working tree is never checked out per job and jobs of
//! different pull requests run side by side. Fetches of one repository are serialized by an
//! async mutex per repository: two fetches into one clone race for the same ref locks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// A git command for the cache. The installation token travels as an HTTP header through
/// git's environment (`GIT_CONFIG_COUNT`, git 2.31 or later), so it never appears in an
/// argument list (`ps` shows those), in a clone's `.git/config` or in a URL an error repeats.
fn git_command(cwd: &Path, token: Option<&SecretString>) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        // A refused token must fail the fetch, never wait for someone to type a password.
        .env("GIT_TERMINAL_PROMPT", "0")
        // A stalled transfer (under 1 KB/s for a minute) fails instead of holding the job.
        .env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
        .env("GIT_HTTP_LOW_SPEED_TIME", "60");
    if let Some(token) = token {
        let (key, value) = crate::engine::git::auth_header(token);
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", key)
            .env("GIT_CONFIG_VALUE_0", value);
    }
    cmd
}

/// Runs a git command; on failure, git's own words with the token blanked out (git does not
/// print headers, but a message must not be the one place that ever does), plus what to do
/// when the remote refused the credentials.
fn run_git(mut cmd: Command, token: Option<&SecretString>) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run git (is it installed and on PATH?): {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if let Some(token) = token {
        message = message.replace(token.expose_secret(), "***");
    }
    let refused = [
        "could not read Username",
        "Authentication failed",
        "returned error: 401",
        "returned error: 403",
    ]
    .iter()
    .any(|m| message.contains(m));
    if refused {
        message.push_str(match token {
            Some(_) => {
                "; the installation token was refused: does the App have `contents: read` on this repository?"
            }
            None => "; the remote asks for credentials, but no installation token is available",
        });
    }
    Err(message)
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

/// The refspec that brings `sha` into the clone: the pull request's head, else the branches.
fn refspec_for(pr: Option<PrNumber>) -> String {
    match pr {
        Some(n) => format!("+refs/pull/{n}/head:refs/prodigy/pull/{n}"),
        None => "+refs/heads/*:refs/remotes/origin/*".to_string(),
    }
}

fn clone_command(dir: &Path, url: &str, token: Option<&SecretString>) -> Command {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let mut cmd = git_command(parent, token);
    cmd.args(["clone", "--quiet", "--no-tags", "--", url])
        .arg(dir);
    cmd
}

fn fetch_command(dir: &Path, url: &str, refspec: &str, token: Option<&SecretString>) -> Command {
    let mut cmd = git_command(dir, token);
    // The URL, not the `origin` remote: the fetch does not depend on what the clone stored.
    // No auto-maintenance: a `gc --auto` repacking while agents commit in worktrees of this
    // clone is what `engine::git::quiet_env` keeps out of the engine's own git calls.
    cmd.args([
        "fetch",
        "--quiet",
        "--no-auto-maintenance",
        "--no-tags",
        "--no-write-fetch-head",
        "--",
        url,
        refspec,
    ]);
    cmd
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
            run_git(clone_command(dir, url, token), token).map_err(|message| RepoError::Clone {
                url: url.to_string(),
                dir: dir.to_path_buf(),
                message,
            })?;
            let repo = git2::Repository::open(dir).map_err(|e| RepoError::Cache {
                dir: dir.to_path_buf(),
                message: format!("git cloned, but the clone does not open: {}", e.message()),
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
    let refspec = refspec_for(pr);
    run_git(fetch_command(dir, url, &refspec, token), token).map_err(|message| {
        RepoError::Fetch {
            url: url.to_string(),
            refspec: refspec.clone(),
            message,
        }
    })?;
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

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64_STANDARD;

    use super::*;

    const TOKEN: &str = "ghs_unit-test-token";

    fn env_of<'a>(cmd: &'a Command, key: &str) -> Option<&'a OsStr> {
        cmd.get_envs()
            .find(|(k, _)| *k == OsStr::new(key))
            .and_then(|(_, v)| v)
    }

    #[test]
    fn the_token_travels_in_the_environment_never_in_the_arguments() {
        let token = SecretString::from(TOKEN);
        let url = "https://github.com/octo/widgets.git";
        for cmd in [
            clone_command(Path::new("/cache/octo/widgets"), url, Some(&token)),
            fetch_command(
                Path::new("/cache/octo/widgets"),
                url,
                "+refs/pull/1/head:x",
                Some(&token),
            ),
        ] {
            let encoded = BASE64_STANDARD.encode(format!("x-access-token:{TOKEN}"));
            for arg in cmd.get_args() {
                let arg = arg.to_string_lossy();
                assert!(!arg.contains(TOKEN) && !arg.contains(&encoded), "{arg}");
            }
            assert_eq!(env_of(&cmd, "GIT_CONFIG_COUNT"), Some(OsStr::new("1")));
            assert_eq!(
                env_of(&cmd, "GIT_CONFIG_KEY_0"),
                Some(OsStr::new("http.extraHeader"))
            );
            let header = format!("Authorization: Basic {encoded}");
            assert_eq!(
                env_of(&cmd, "GIT_CONFIG_VALUE_0"),
                Some(OsStr::new(&header))
            );
            assert_eq!(env_of(&cmd, "GIT_TERMINAL_PROMPT"), Some(OsStr::new("0")));
        }
    }

    #[test]
    fn without_a_token_no_header_is_configured() {
        let cmd = fetch_command(
            Path::new("/c"),
            "file:///r.git",
            "+refs/heads/*:refs/x/*",
            None,
        );
        assert_eq!(env_of(&cmd, "GIT_CONFIG_COUNT"), None);
        assert_eq!(env_of(&cmd, "GIT_CONFIG_VALUE_0"), None);
    }

    #[test]
    fn refspecs_fetch_the_pull_request_head_or_the_branches() {
        assert_eq!(
            refspec_for(Some(PrNumber(12))),
            "+refs/pull/12/head:refs/prodigy/pull/12"
        );
        assert_eq!(refspec_for(None), "+refs/heads/*:refs/remotes/origin/*");
    }
}
