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
//! ```
//!
//! `/prodigy run workflow=NAME` picks one of them: NAME is the file's path as written, or its
//! file name with or without `.yml`/`.yaml` (`fix-lints` above). Pull requests from forks never
//! run automatically, whatever `auto_run` says; a maintainer's `/prodigy run` runs them. The
//! server runs only repositories on its allow-list (`--allow-repos`).

use serde::Deserialize;

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
        Ok(config)
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
    fn selects_by_path_file_name_or_stem() {
        let c = RepoConfig::parse("workflows: [.prodigy/fix.yml, .prodigy/docs.yaml]\n").unwrap();
        assert_eq!(c.select(None).len(), 2);
        assert_eq!(c.select(Some("fix")), vec![".prodigy/fix.yml"]);
        assert_eq!(c.select(Some("docs.yaml")), vec![".prodigy/docs.yaml"]);
        assert_eq!(c.select(Some(".prodigy/fix.yml")), vec![".prodigy/fix.yml"]);
        assert!(c.select(Some("nope")).is_empty());
    }
}
