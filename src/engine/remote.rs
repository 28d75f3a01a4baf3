//! The git remote of a job that runs on many machines (README "Many machines"): the refs the
//! machines exchange, and pushes and fetches that ride out a remote that is briefly unreachable.
//!
//! The coordinator publishes the job's base (`refs/prodigy/<job>/base`, the job branch after
//! setup) and its merged work (`refs/prodigy/<job>/head`, pushed before items are recorded
//! merged, so what the database calls merged is always on the remote); every attempt's commits
//! go to `refs/prodigy/<job>/items/<key>/attempt-<n>`. The git CLI does the transport with the
//! machine's own credentials (credential helper, SSH key), or with a token a [`RemoteAuth`] of
//! this process gives for the URL (the server's installation tokens, the Action's token), sent
//! in an HTTP header through git's environment: never in the URL stored with the job.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::SecretString;

use sha2::{Digest, Sha256};

use super::git::{self, GitError};
use super::worktree::sanitize_ref;
use crate::types::{ItemKey, JobId};

/// Tries of a push or fetch before it fails; the waits between them double from
/// [`FIRST_BACKOFF`] (0.5 s, 1 s, 2 s, 4 s, 8 s).
const TRIES: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// git configuration entries (key, value), set through git's environment.
pub type GitConfig = Vec<(String, String)>;

/// A source of credentials for the remotes this process pushes to and fetches from.
pub trait RemoteAuth: Send + Sync {
    /// The git configuration that authenticates requests to `url` (e.g.
    /// [`git::auth_header`] of a token); None for a URL this source has nothing for.
    fn config<'a>(&'a self, url: &'a str) -> BoxFuture<'a, anyhow::Result<Option<GitConfig>>>;
}

/// A token as a [`RemoteAuth`] answer: the configuration that sends it.
pub fn token_config(token: &SecretString) -> GitConfig {
    vec![git::auth_header(token)]
}

static AUTH: Mutex<Vec<Arc<dyn RemoteAuth>>> = Mutex::new(Vec::new());

/// Adds a source of credentials for this process's pushes and fetches (asked in order).
pub fn add_auth(auth: Arc<dyn RemoteAuth>) {
    AUTH.lock().expect("remote auth lock").push(auth);
}

/// The configuration the first source with an answer gives for `url` (empty: none has one).
async fn config_for(url: &str) -> anyhow::Result<GitConfig> {
    let sources: Vec<Arc<dyn RemoteAuth>> = AUTH.lock().expect("remote auth lock").clone();
    for source in sources {
        if let Some(config) = source.config(url).await? {
            return Ok(config);
        }
    }
    Ok(Vec::new())
}

/// `refs/prodigy/<job>/base`: the job branch after setup; every attempt starts here.
pub fn base_ref(job: JobId) -> String {
    format!("refs/prodigy/{job}/base")
}

/// `refs/prodigy/<job>/head`: the job branch with everything merged so far.
pub fn head_ref(job: JobId) -> String {
    format!("refs/prodigy/{job}/head")
}

/// `refs/prodigy/<job>/items/<key>/attempt-<n>`: one attempt's commits. A key that is not a
/// valid ref component as it is gets a hash of itself appended, so two keys never share a ref.
pub fn attempt_ref(job: JobId, key: &ItemKey, attempt: u32) -> String {
    let clean = sanitize_ref(&key.0);
    let component = if clean == key.0 {
        clean
    } else {
        let hash = Sha256::digest(key.0.as_bytes());
        let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!("{clean}-{hex}")
    };
    format!("refs/prodigy/{job}/items/{component}/attempt-{attempt}")
}

/// The URL of `remote` in `repo`: a remote's name (`origin`) is looked up, anything else (a
/// URL or a path) is taken as it is. A URL that carries a password is refused: the URL is
/// stored with the job and every worker reads it, and workers bring their own credentials.
pub async fn resolve_url(repo: &Path, remote: &str) -> anyhow::Result<String> {
    let remote = remote.trim();
    let is_name = !remote.is_empty()
        && remote
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !remote.starts_with('.');
    let url = if is_name {
        git::git(repo, &["remote", "get-url", remote])
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "the repository has no git remote '{remote}' ({}): workers exchange commits \
                     through it; add it (`git remote add {remote} URL`) or pass --remote URL",
                    e.message
                )
            })?
    } else {
        remote.to_string()
    };
    check_url(&url)?;
    Ok(url)
}

/// Refuses a remote URL with a password in it (`https://user:token@host/...`).
pub fn check_url(url: &str) -> anyhow::Result<()> {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
            && matches!(scheme, "http" | "https" | "ssh" | "git" | "ftp" | "ftps")
        {
            anyhow::bail!(
                "the remote URL {scheme}://{}:***@... carries a password; it would be stored with \
                 the job for every worker to read. Give the URL without it: each machine uses its \
                 own credentials (a credential helper, a deploy key, the Action's token)",
                userinfo.split(':').next().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// A push's answer when the remote refused it (not a transport problem): another coordinator
/// moved the job's head, so this one lost the job.
#[derive(Debug, thiserror::Error)]
#[error("the remote refused to update {reference}: {message}")]
pub struct Rejected {
    pub reference: String,
    pub message: String,
}

/// Pushes `updates` (source, destination ref) to `url` in one `git push`. `lease`: the
/// destination value the push expects (`--force-with-lease`; Some("") means the ref must not
/// exist yet); without one the destination is overwritten. Transport failures are tried again
/// with backoff; a rejected lease is [`Rejected`] at once.
pub async fn push(
    repo: &Path,
    url: &str,
    updates: &[(String, String)],
    lease: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let mut args: Vec<String> = vec!["push".into(), "--quiet".into(), "--no-verify".into()];
    match lease {
        Some((reference, expected)) => {
            args.push(format!("--force-with-lease={reference}:{expected}"))
        }
        None => args.push("--force".into()),
    }
    args.push(url.to_string());
    args.extend(updates.iter().map(|(src, dst)| format!("{src}:{dst}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    retry("push", repo, url, &args, |e| {
        let m = &e.message;
        let rejected = m.contains("stale info") || m.contains("[rejected]") || m.contains("! [");
        rejected.then(|| {
            anyhow::Error::new(Rejected {
                reference: lease.map(|(r, _)| r).unwrap_or("").to_string(),
                message: m.lines().find(|l| l.contains('!')).unwrap_or(m).to_string(),
            })
        })
    })
    .await
}

/// Fetches `refs` from `url` into the same names in `repo` (forced). A ref missing on the
/// remote fails the fetch.
pub async fn fetch(repo: &Path, url: &str, refs: &[String]) -> anyhow::Result<()> {
    if refs.is_empty() {
        return Ok(());
    }
    let mut args: Vec<String> = vec![
        "fetch".into(),
        "--quiet".into(),
        "--no-tags".into(),
        "--no-write-fetch-head".into(),
        url.to_string(),
    ];
    args.extend(refs.iter().map(|r| format!("+{r}:{r}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    retry("fetch", repo, url, &args, |e| {
        let m = &e.message;
        (m.contains("couldn't find remote ref") || m.contains("not our ref"))
            .then(|| anyhow::anyhow!("{e}"))
    })
    .await
}

/// The value of `reference` on the remote, None when it does not exist there.
pub async fn remote_value(
    repo: &Path,
    url: &str,
    reference: &str,
) -> anyhow::Result<Option<String>> {
    let out = retry_output("ls-remote", repo, url, &["ls-remote", url, reference]).await?;
    Ok(out.lines().find_map(|l| {
        l.split_once('\t')
            .filter(|(_, r)| *r == reference)
            .map(|(sha, _)| sha.to_string())
    }))
}

async fn retry_output(what: &str, repo: &Path, url: &str, args: &[&str]) -> anyhow::Result<String> {
    let config = config_for(url).await?;
    let mut wait = FIRST_BACKOFF;
    for n in 1..=TRIES {
        match git::git_with_config(repo, args, &config).await {
            Ok(out) => return Ok(out),
            Err(e) if n < TRIES => {
                tracing::warn!(error = %e.message, try_ = n, "git {what} failed; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("git {what} failed {TRIES} times"))
                );
            }
        }
    }
    unreachable!("the last try returns")
}

/// Runs git until it succeeds, `fatal` turns its error into a final one, or the tries run out.
async fn retry(
    what: &str,
    repo: &Path,
    url: &str,
    args: &[&str],
    fatal: impl Fn(&GitError) -> Option<anyhow::Error>,
) -> anyhow::Result<()> {
    let config = config_for(url).await?;
    let mut wait = FIRST_BACKOFF;
    for n in 1..=TRIES {
        match git::git_with_config(repo, args, &config).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                if let Some(f) = fatal(&e) {
                    return Err(f);
                }
                if n == TRIES {
                    return Err(anyhow::Error::new(e).context(format!(
                        "git {what} failed {TRIES} times; is the remote reachable?"
                    )));
                }
                tracing::warn!(error = %e.message, try_ = n, "git {what} failed; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    unreachable!("the last try returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_are_not_ref_components_keep_distinct_refs() {
        let job: JobId = "0192f5a0-0000-7000-8000-000000000000".parse().unwrap();
        let a = attempt_ref(job, &ItemKey::from("src/a.rs"), 1);
        let b = attempt_ref(job, &ItemKey::from("src_a_rs"), 1);
        assert_ne!(a, b);
        assert_eq!(
            b,
            "refs/prodigy/0192f5a0-0000-7000-8000-000000000000/items/src_a_rs/attempt-1"
        );
        assert!(a.starts_with("refs/prodigy/0192f5a0-0000-7000-8000-000000000000/items/src_a_rs-"));
    }

    #[test]
    fn urls_with_passwords_are_refused_and_others_pass() {
        assert!(check_url("https://x-access-token:ghs_abc@github.com/o/r.git").is_err());
        let e = check_url("https://me:pw@host/r").unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
        for ok in [
            "https://github.com/o/r.git",
            "git@github.com:o/r.git",
            "ssh://git@host/r",
            "/srv/git/r.git",
            "file:///srv/git/r.git",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
    }
}
