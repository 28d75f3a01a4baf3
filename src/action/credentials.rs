//! The workflow token and the checkout's git configuration.
//!
//! `actions/checkout` persists the token it fetched with (unless `persist-credentials: false`)
//! as an `http.<server>/.extraheader` entry in the checkout's `.git/config`, or (v6) in a file
//! under `$RUNNER_TEMP` that `.git/config` includes with `includeIf.gitdir:...`. Every agent's
//! git reads that configuration, so an agent could read the token and, with `contents: write`,
//! push with it. [`set_aside`] removes those entries for the step and [`SetAside`] puts the file
//! back byte for byte when the step ends; prodigy's own fetches and pushes to `origin` carry the
//! token through git's environment instead ([`auth_config`]), never in an argument or a file an
//! agent can read.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;

use crate::engine::git;

/// The checkout's configuration as it was before [`set_aside`] removed the persisted
/// credentials. Dropping it writes the file back, when nothing else changed it meanwhile.
#[derive(Debug)]
pub struct SetAside {
    config: PathBuf,
    original: Vec<u8>,
    scrubbed: Vec<u8>,
    /// The configuration keys removed (no values: those hold the token).
    pub removed: Vec<String>,
}

/// Removes the credentials `actions/checkout` persisted from `repo`'s configuration: every
/// `http.*.extraheader` entry, and every `includeIf.*.path` whose file sets one. Returns None when
/// there are none (a checkout with `persist-credentials: false`, or not a checkout at all).
pub async fn set_aside(repo: &Path) -> anyhow::Result<Option<SetAside>> {
    let mut removed: Vec<String> = local_keys(repo, r"^http\..*\.extraheader$")
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    for (key, path) in local_keys(repo, r"^includeif\..*\.path$").await? {
        let included = git::git_ok(
            repo,
            &["config", "--file", &path, "--get-regexp", r"\.extraheader$"],
        )
        .await
        .unwrap_or(false);
        if included {
            removed.push(key);
        }
    }
    removed.dedup();
    if removed.is_empty() {
        return Ok(None);
    }
    let config = git::common_dir(repo).await?.join("config");
    let original = std::fs::read(&config)?;
    for key in &removed {
        git::git(repo, &["config", "--local", "--unset-all", key]).await?;
    }
    let scrubbed = std::fs::read(&config)?;
    Ok(Some(SetAside {
        config,
        original,
        scrubbed,
        removed,
    }))
}

/// `(key, value)` of the repository's own configuration entries whose name matches `pattern`.
async fn local_keys(repo: &Path, pattern: &str) -> anyhow::Result<Vec<(String, String)>> {
    let out = git::git_output(repo, &["config", "--local", "--get-regexp", pattern]).await?;
    // Exit code 1: no such key.
    if out.status.code() == Some(1) {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        anyhow::bail!(
            "cannot read the checkout's git configuration: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect())
}

impl SetAside {
    /// Writes the original configuration back, unless the file changed since the credentials
    /// were removed (then it stays as it is and the answer says why).
    fn put_back(&self) -> Result<(), String> {
        let now = std::fs::read(&self.config)
            .map_err(|e| format!("cannot read {}: {e}", self.config.display()))?;
        if now != self.scrubbed {
            return Err(format!(
                "{} changed during the step, so the removed entries ({}) were not put back",
                self.config.display(),
                self.removed.join(", ")
            ));
        }
        // Written beside it and renamed over it, so a crash leaves one whole file or the other.
        let tmp = self.config.with_extension("prodigy-restore");
        std::fs::write(&tmp, &self.original)
            .and_then(|()| std::fs::rename(&tmp, &self.config))
            .map_err(|e| format!("cannot write {}: {e}", self.config.display()))
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        match self.put_back() {
            Ok(()) => tracing::info!(
                "put back the credentials actions/checkout persisted in {}",
                self.config.display()
            ),
            Err(why) => println!(
                "{}",
                super::commands::warning(
                    "prodigy: checkout credentials not put back",
                    &format!(
                        "{why}; later steps that push with the persisted token must check out again"
                    ),
                )
            ),
        }
    }
}

/// The configuration [`auth_config`] made for this step's `origin`, set once at its start.
static ORIGIN_AUTH: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Makes prodigy's own fetches from `origin` in this process authenticate with `token`.
pub fn use_token_for_origin(server_url: &str, token: &str) {
    let _ = ORIGIN_AUTH.set(auth_config(server_url, token));
}

/// What [`use_token_for_origin`] set (empty without a token): for [`git::git_with_config`].
pub fn origin_auth() -> &'static [(String, String)] {
    ORIGIN_AUTH.get().map(Vec::as_slice).unwrap_or(&[])
}

/// git configuration that authenticates requests to `server_url` (`https://github.com`) with
/// `token`: the persisted header for that server is cleared first, so exactly one is sent. For
/// git's environment (`GIT_CONFIG_KEY_n`), never its arguments.
pub fn auth_config(server_url: &str, token: &str) -> Vec<(String, String)> {
    let key = format!("http.{}/.extraheader", server_url.trim_end_matches('/'));
    let basic = BASE64_STANDARD.encode(format!("x-access-token:{token}"));
    vec![
        (key.clone(), String::new()),
        (key, format!("AUTHORIZATION: basic {basic}")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_resets_the_persisted_one_then_sets_one() {
        let c = auth_config("https://github.example/", "ghs_secret");
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0],
            ("http.https://github.example/.extraheader".into(), "".into())
        );
        assert_eq!(c[1].0, "http.https://github.example/.extraheader");
        let b64 = c[1].1.strip_prefix("AUTHORIZATION: basic ").unwrap();
        let decoded = BASE64_STANDARD.decode(b64).unwrap();
        assert_eq!(decoded, b"x-access-token:ghs_secret");
    }
}
