//! The git CLI, run as a child process. The engine needs exactly the operations git itself is
//! best at (worktrees, checkouts, merges with git's own conflict handling), and agents run the
//! same `git`, so both see one repository format and one configuration.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("`git {args}` in {dir} failed: {message}")]
pub struct GitError {
    pub args: String,
    pub dir: PathBuf,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, GitError>;

/// Environment for every git process prodigy starts, and for agents: automatic gc would repack
/// under agents running in parallel worktrees, and a pager or editor would hang a headless run.
pub fn quiet_env() -> [(&'static str, &'static str); 6] {
    [
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", "gc.auto"),
        ("GIT_CONFIG_VALUE_0", "0"),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_EDITOR", "true"),
        ("GIT_PAGER", "cat"),
    ]
}

/// The author and committer prodigy uses when git has no identity configured (a fresh machine
/// or CI runner): without one every agent commit and every merge would fail. Set once per
/// process by [`ensure_identity`]; empty when git has an identity of its own.
static FALLBACK_IDENTITY: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Checks that git can name a committer in `repo`; when it cannot, prodigy's git commands and
/// agents get `prodigy <prodigy@localhost>` through the environment. Returns those variables.
pub async fn ensure_identity(repo: &Path) -> Vec<(String, String)> {
    if let Some(v) = FALLBACK_IDENTITY.get() {
        return v.clone();
    }
    // `git var GIT_COMMITTER_IDENT` would answer with a guessed `user@host.(none)` that
    // `git commit` then refuses; ask for the configured e-mail instead.
    let configured = matches!(
        git_output(repo, &["config", "--get", "user.email"]).await,
        Ok(out) if out.status.success()
    );
    let from_env = ["GIT_COMMITTER_EMAIL", "EMAIL"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    let has_identity = configured || from_env;
    let vars = if has_identity {
        Vec::new()
    } else {
        tracing::warn!(
            "git has no user.name/user.email here; commits are made as prodigy <prodigy@localhost>"
        );
        ["AUTHOR", "COMMITTER"]
            .iter()
            .flat_map(|who| {
                [
                    (format!("GIT_{who}_NAME"), "prodigy".to_string()),
                    (format!("GIT_{who}_EMAIL"), "prodigy@localhost".to_string()),
                ]
            })
            .collect()
    };
    FALLBACK_IDENTITY.get_or_init(|| vars).clone()
}

/// Runs `git args` in `dir`; returns stdout with the trailing newline trimmed.
pub async fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = git_output(dir, args).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(error(dir, args, &out))
    }
}

/// Runs git and reports whether it exited 0 (for questions like `merge-base --is-ancestor`).
pub async fn git_ok(dir: &Path, args: &[&str]) -> Result<bool> {
    let out = git_output(dir, args).await?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(error(dir, args, &out)),
    }
}

/// Git directories prodigy trusts (its repositories' common dirs) and the directories holding
/// the worktrees it manages. Agents can rewrite their worktree's `.git` file to point at a git
/// directory of their own, whose configuration (`core.fsmonitor`, filter drivers) would run
/// commands in prodigy's own, unsandboxed git; so git in a managed worktree runs with
/// `GIT_DIR`, `GIT_COMMON_DIR` and `GIT_WORK_TREE` pinned to the trusted repository.
#[derive(Default)]
struct Trusted {
    common_dirs: Vec<PathBuf>,
    managed_roots: Vec<PathBuf>,
}

static TRUSTED: std::sync::Mutex<Trusted> = std::sync::Mutex::new(Trusted {
    common_dirs: Vec::new(),
    managed_roots: Vec::new(),
});

/// Trusts `repo`'s common git directory and treats every worktree under `managed_root` as
/// prodigy's: git there only ever uses that repository's configuration.
pub async fn trust(repo: &Path, managed_root: &Path) -> Result<()> {
    let common = common_dir(repo).await?;
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (common, root) = (canonical(&common), canonical(managed_root));
    let mut t = TRUSTED.lock().expect("trusted git dirs lock");
    if !t.common_dirs.contains(&common) {
        t.common_dirs.push(common);
    }
    if !t.managed_roots.contains(&root) {
        t.managed_roots.push(root);
    }
    Ok(())
}

/// The pinned environment for git in `dir`; `Err` for a managed worktree whose `.git` no
/// longer leads into a trusted repository.
fn pinned_env(dir: &Path) -> std::result::Result<Vec<(&'static str, PathBuf)>, String> {
    let t = TRUSTED.lock().expect("trusted git dirs lock");
    let Ok(real) = dir.canonicalize() else {
        return Ok(Vec::new());
    };
    let Some(root) = t.managed_roots.iter().find(|r| real.starts_with(r)) else {
        return Ok(Vec::new());
    };
    // The worktree's top: the first directory below a job's directory (`<root>/<job>/<name>`).
    let rel = real.strip_prefix(root).unwrap_or(&real);
    let top: PathBuf = root.join(rel.iter().take(2).collect::<PathBuf>());
    let admin = std::fs::read_to_string(top.join(".git"))
        .ok()
        .and_then(|text| {
            let gitdir = text.trim().strip_prefix("gitdir:")?.trim().to_string();
            top.join(gitdir).canonicalize().ok()
        });
    let pinned = admin.and_then(|admin| {
        let common = t
            .common_dirs
            .iter()
            .find(|c| admin.starts_with(c.join("worktrees")))?;
        Some(vec![
            ("GIT_DIR", admin.clone()),
            ("GIT_COMMON_DIR", common.clone()),
            ("GIT_WORK_TREE", top.clone()),
        ])
    });
    pinned.ok_or_else(|| {
        format!(
            "the worktree {}'s .git no longer leads into the repository (changed by an agent?); prodigy runs no git there",
            top.display()
        )
    })
}

/// Runs git and returns its whole output, whatever the exit status.
pub async fn git_output(dir: &Path, args: &[&str]) -> Result<std::process::Output> {
    output_with_config(dir, args, &[]).await
}

/// `git args` with `config` (key, value) added to git's configuration through its environment
/// (`GIT_CONFIG_KEY_n`), for values that must never be in an argument list or a file an agent
/// reads (a token's header). Stdout trimmed, as [`git`].
pub async fn git_with_config(
    dir: &Path,
    args: &[&str],
    config: &[(String, String)],
) -> Result<String> {
    let out = output_with_config(dir, args, config).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(error(dir, args, &out))
    }
}

async fn output_with_config(
    dir: &Path,
    args: &[&str],
    config: &[(String, String)],
) -> Result<std::process::Output> {
    let pinned = pinned_env(dir).map_err(|message| GitError {
        args: args.join(" "),
        dir: dir.to_path_buf(),
        message,
    })?;
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .envs(quiet_env())
        .envs(
            FALLBACK_IDENTITY
                .get()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v)),
        )
        .env_remove("GIT_DIR")
        .env_remove("GIT_COMMON_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .envs(pinned);
    if !config.is_empty() {
        // quiet_env's entries stay first (index 0); these follow.
        let base = quiet_env()
            .iter()
            .filter(|(k, _)| k.starts_with("GIT_CONFIG_KEY_"))
            .count();
        cmd.env("GIT_CONFIG_COUNT", (base + config.len()).to_string());
        for (i, (k, v)) in config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{}", base + i), k)
                .env(format!("GIT_CONFIG_VALUE_{}", base + i), v);
        }
    }
    cmd.output().await.map_err(|e| GitError {
        args: args.join(" "),
        dir: dir.to_path_buf(),
        message: format!("could not start git ({e}); is git installed and on PATH?"),
    })
}

fn error(dir: &Path, args: &[&str], out: &std::process::Output) -> GitError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    GitError {
        args: args.join(" "),
        dir: dir.to_path_buf(),
        message: text.trim().to_string(),
    }
}

/// The top of the work tree that contains `dir`.
pub async fn toplevel(dir: &Path) -> Result<PathBuf> {
    git(dir, &["rev-parse", "--show-toplevel"])
        .await
        .map(PathBuf::from)
}

/// The repository's common git directory (shared by all its worktrees), absolute.
pub async fn common_dir(dir: &Path) -> Result<PathBuf> {
    let p = git(
        dir,
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    )
    .await?;
    Ok(PathBuf::from(p))
}

pub async fn head(dir: &Path) -> Result<String> {
    git(dir, &["rev-parse", "HEAD"]).await
}

/// Whether `commit` names a commit object in the repository.
pub async fn commit_exists(dir: &Path, commit: &str) -> Result<bool> {
    let spec = format!("{commit}^{{commit}}");
    let out = git_output(dir, &["cat-file", "-e", &spec]).await?;
    Ok(out.status.success())
}

pub async fn is_ancestor(dir: &Path, ancestor: &str, of: &str) -> Result<bool> {
    git_ok(dir, &["merge-base", "--is-ancestor", ancestor, of]).await
}

pub async fn branch_exists(dir: &Path, branch: &str) -> Result<bool> {
    let r = format!("refs/heads/{branch}");
    let out = git_output(dir, &["show-ref", "--verify", "--quiet", &r]).await?;
    Ok(out.status.success())
}

/// Whether the work tree has no changes to tracked files and no untracked, unignored files.
pub async fn is_clean(dir: &Path) -> Result<bool> {
    Ok(git(dir, &["status", "--porcelain"]).await?.is_empty())
}

/// The outcome of a merge: expected contention is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    Merged { commit: String },
    Conflict { files: Vec<String>, message: String },
}

/// Merges `commit` into the branch checked out in `dir` with a merge commit (`--no-ff`). On a
/// conflict the merge is aborted, so the branch and work tree are as they were.
pub async fn merge_no_ff(dir: &Path, commit: &str, message: &str) -> Result<Merge> {
    let out = git_output(
        dir,
        &["merge", "--no-ff", "--no-edit", "-m", message, commit],
    )
    .await?;
    if out.status.success() {
        return Ok(Merge::Merged {
            commit: head(dir).await?,
        });
    }
    let files = git(dir, &["diff", "--name-only", "--diff-filter=U"])
        .await
        .unwrap_or_default();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Abort whatever the merge left (conflict markers, MERGE_HEAD); fall back to a hard reset
    // when git refuses to abort because no merge was started (e.g. an unknown commit).
    if git(dir, &["merge", "--abort"]).await.is_err() {
        git(dir, &["reset", "--hard", "-q", "HEAD"]).await?;
    }
    let files: Vec<String> = files.lines().map(str::to_string).collect();
    if files.is_empty() && !text.contains("CONFLICT") {
        return Err(GitError {
            args: format!("merge --no-ff {commit}"),
            dir: dir.to_path_buf(),
            message: text.trim().to_string(),
        });
    }
    Ok(Merge::Conflict {
        files,
        message: text.trim().to_string(),
    })
}

/// Brings a work tree back to its HEAD: aborts an interrupted merge, drops changes to tracked
/// files. Untracked files stay (setup may have left inputs there that reduce still reads).
pub async fn reset_to_head(dir: &Path) -> Result<()> {
    remove_stale_index_lock(dir).await?;
    let merge_head = git(dir, &["rev-parse", "--git-path", "MERGE_HEAD"]).await?;
    if dir.join(&merge_head).exists() || Path::new(&merge_head).exists() {
        let _ = git(dir, &["merge", "--abort"]).await;
    }
    git(dir, &["reset", "--hard", "-q", "HEAD"]).await?;
    Ok(())
}

/// A git process killed mid-write (a crash of prodigy kills its children too) leaves
/// `index.lock` behind, and every later git command in that work tree then refuses to run.
/// Only call this while holding the job lock: no other process works in the job's worktrees.
pub async fn remove_stale_index_lock(dir: &Path) -> Result<()> {
    let lock = git(
        dir,
        &[
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "index.lock",
        ],
    )
    .await?;
    match std::fs::remove_file(&lock) {
        Ok(()) => {
            tracing::warn!(path = %lock, "removed a stale git index lock left by an interrupted run");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GitError {
            args: "rm index.lock".into(),
            dir: dir.to_path_buf(),
            message: format!("cannot remove stale {lock}: {e}"),
        }),
    }
}
