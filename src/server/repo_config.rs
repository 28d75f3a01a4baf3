//! Which workflows run on a repository's pull requests: `.prodigy/config.yml`, read at the pull
//! request's head commit (so a PR can change it, and review sees the change).
//!
//! ```yaml
//! # .prodigy/config.yml
//! # The workflow files prodigy runs on this repository's pull requests (paths from the
//! # repository root). Each one becomes its own job with its own page.
//! workflows:
//!   - .prodigy/fix-lints.yml
//!   - .prodigy/docs.yml
//! # Run them when a pull request is opened, reopened or pushed to (default: true).
//! # With `false` they run only on a maintainer's `/prodigy run` comment.
//! auto_run: true
//! # Optional: at most this many agents at once per job, overriding the workflows' max_parallel.
//! max_parallel: 4
//! # Optional: which of the variables the server's operator passes to agents
//! # (`serve --pass-env`) this repository's agents get (default: all of them).
//! pass_env: [ANTHROPIC_API_KEY]
//! ```
//!
//! `/prodigy run workflow=NAME` picks one of them: NAME is the file's path as written, or its
//! file name with or without `.yml`/`.yaml` (`fix-lints` above). Pull requests from forks never
//! run automatically, whatever `auto_run` says; a maintainer's `/prodigy run` runs them. The
//! server runs only repositories on its allow-list (`--allow-repos`).
//!
//! `pass_env` can only narrow what the operator decided: the configuration comes from the pull
//! request, so a name the operator does not pass (or one of prodigy's own secrets) is refused,
//! naming it, and no job starts.

use serde::Deserialize;

use crate::engine::agent_env::{self, PassEnvError};

/// Where the file lives in the repository.
pub const CONFIG_PATH: &str = ".prodigy/config.yml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub workflows: Vec<String>,
    #[serde(default = "yes")]
    pub auto_run: bool,
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// Of the operator's passed variables, the ones this repository's agents get (None: all).
    #[serde(default)]
    pub pass_env: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum RepoConfigError {
    #[error("{CONFIG_PATH} is not valid: {0}")]
    Invalid(String),
    #[error("{CONFIG_PATH} lists no workflows; add `workflows: [.prodigy/NAME.yml]`")]
    NoWorkflows,
    #[error(
        "{CONFIG_PATH}: workflow path `{0}` must be relative to the repository root and stay inside it"
    )]
    BadPath(String),
    #[error("{CONFIG_PATH}: pass_env: {0}")]
    PassEnv(#[from] PassEnvError),
    #[error(
        "{CONFIG_PATH}: pass_env names `{name}`, which this server's operator does not pass to agents ({offered}); remove it, or ask the operator to add it to `prodigy serve --pass-env` (PRODIGY_PASS_ENV)"
    )]
    NotOffered { name: String, offered: String },
}

impl RepoConfig {
    pub fn parse(text: &str) -> Result<RepoConfig, RepoConfigError> {
        let config: RepoConfig =
            serde_saphyr::from_str(text).map_err(|e| RepoConfigError::Invalid(e.to_string()))?;
        if config.workflows.is_empty() {
            return Err(RepoConfigError::NoWorkflows);
        }
        for w in &config.workflows {
            let escapes = w.split('/').any(|part| part == "..");
            if w.trim().is_empty() || w.starts_with('/') || escapes {
                return Err(RepoConfigError::BadPath(w.clone()));
            }
        }
        let pass_env = match &config.pass_env {
            Some(names) => Some(agent_env::check_pass_names(names)?),
            None => None,
        };
        Ok(RepoConfig { pass_env, ..config })
    }

    /// Refuses a `pass_env` name the operator does not pass (`offered`, from `--pass-env`);
    /// the ordinary variables every agent gets anyway (PATH, HOME, ...) may be named too.
    pub fn check_pass_env(&self, offered: &[String]) -> Result<(), RepoConfigError> {
        let names = self.pass_env.as_deref().unwrap_or_default();
        let refused = names
            .iter()
            .find(|n| !offered.contains(n) && !agent_env::is_ordinary(n));
        match refused {
            None => Ok(()),
            Some(name) => Err(RepoConfigError::NotOffered {
                name: name.clone(),
                offered: if offered.is_empty() {
                    "it passes none".into()
                } else {
                    format!("it passes {}", offered.join(", "))
                },
            }),
        }
    }

    /// The workflows `name` selects (all of them for `None`).
    pub fn select(&self, name: Option<&str>) -> Vec<String> {
        match name {
            None => self.workflows.clone(),
            Some(name) => self
                .workflows
                .iter()
                .filter(|w| workflow_matches(w, name))
                .cloned()
                .collect(),
        }
    }
}

fn workflow_matches(path: &str, name: &str) -> bool {
    let path = path.trim_start_matches("./");
    let name = name.trim_start_matches("./");
    if path == name {
        return true;
    }
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".yml")
        .or_else(|| file.strip_suffix(".yaml"))
        .unwrap_or(file);
    file == name || stem == name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let c = RepoConfig::parse("workflows: [.prodigy/fix.yml]\n").unwrap();
        assert!(c.auto_run);
        assert_eq!(c.max_parallel, None);
        let c = RepoConfig::parse(
            "workflows:\n  - .prodigy/a.yml\n  - b.yaml\nauto_run: false\nmax_parallel: 3\n",
        )
        .unwrap();
        assert!(!c.auto_run);
        assert_eq!(c.max_parallel, Some(3));
    }

    #[test]
    fn refuses_typos_empty_lists_and_escaping_paths() {
        assert!(matches!(
            RepoConfig::parse("workflows: [a.yml]\nauto-run: true\n"),
            Err(RepoConfigError::Invalid(_))
        ));
        assert!(matches!(
            RepoConfig::parse("workflows: []\n"),
            Err(RepoConfigError::NoWorkflows)
        ));
        for bad in ["/etc/passwd", "../x.yml", "a/../../x.yml"] {
            assert!(
                matches!(
                    RepoConfig::parse(&format!("workflows: ['{bad}']\n")),
                    Err(RepoConfigError::BadPath(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn pass_env_refuses_secrets_and_what_the_operator_does_not_pass() {
        let c =
            RepoConfig::parse("workflows: [a.yml]\npass_env: [ANTHROPIC_API_KEY, PATH]\n").unwrap();
        assert_eq!(
            c.pass_env.as_deref().unwrap(),
            ["ANTHROPIC_API_KEY", "PATH"]
        );
        assert!(c.check_pass_env(&["ANTHROPIC_API_KEY".into()]).is_ok());
        let err = c.check_pass_env(&["OTHER".into()]).unwrap_err().to_string();
        assert!(
            err.contains("`ANTHROPIC_API_KEY`") && err.contains("it passes OTHER"),
            "{err}"
        );
        let err = c.check_pass_env(&[]).unwrap_err().to_string();
        assert!(err.contains("it passes none"), "{err}");
        let err = RepoConfig::parse("workflows: [a.yml]\npass_env: [DATABASE_URL]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pass_env")
                && err.contains("`DATABASE_URL` is one of prodigy's own secrets"),
            "{err}"
        );
        let c = RepoConfig::parse("workflows: [a.yml]\n").unwrap();
        assert!(c.pass_env.is_none() && c.check_pass_env(&[]).is_ok());
    }

    #[test]
    fn selects_by_path_file_name_or_stem() {
        let c = RepoConfig::parse("workflows: [.prodigy/fix.yml, .prodigy/docs.yaml]\n").unwrap();
        assert_eq!(c.select(None).len(), 2);
        assert_eq!(c.select(Some("fix")), vec![".prodigy/fix.yml"]);
        assert_eq!(c.select(Some("docs.yaml")), vec![".prodigy/docs.yaml"]);
        assert_eq!(c.select(Some(".prodigy/fix.yml")), vec![".prodigy/fix.yml"]);
        assert!(c.select(Some("nope")).is_empty());
    }
}
