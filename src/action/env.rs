//! The GitHub Actions environment of a `prodigy action` step and the event that started the
//! workflow run: read once, checked, and turned into what prodigy needs (pure functions of the
//! variables and the payload's bytes, so they are tested without a runner).

use std::path::PathBuf;

use serde_json::Value;

use crate::types::RepoName;

/// What the runner tells a step, as prodigy uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionEnv {
    /// `GITHUB_EVENT_NAME`, e.g. `pull_request`, `push`, `workflow_dispatch`.
    pub event_name: String,
    /// `GITHUB_EVENT_PATH`: the event's payload, as the webhook delivered it.
    pub event_path: PathBuf,
    /// `GITHUB_REPOSITORY`, `owner/name`.
    pub repository: RepoName,
    /// `GITHUB_SHA`: the commit the run is for (on `pull_request`, the merge commit).
    pub sha: String,
    /// `GITHUB_WORKSPACE`: where `actions/checkout` puts the repository by default.
    pub workspace: Option<PathBuf>,
    /// `GITHUB_API_URL` (default `https://api.github.com`).
    pub api_url: String,
    /// `GITHUB_SERVER_URL` (default `https://github.com`), for the link to the run.
    pub server_url: String,
    /// `GITHUB_RUN_ID`, for the link to the run.
    pub run_id: Option<String>,
    /// `GITHUB_RUN_ATTEMPT` (default 1): above 1 this is a re-run, which continues the job an
    /// earlier attempt of the same run started.
    pub run_attempt: u32,
    /// `GITHUB_OUTPUT`: the file the step's outputs are appended to.
    pub output: Option<PathBuf>,
    /// `GITHUB_STEP_SUMMARY`: the file the step's Markdown summary is appended to.
    pub step_summary: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error(
        "{name} is not set: `prodigy action` runs as a step of a GitHub Actions job (`uses: <owner>/prodigy@v1`), where the runner sets it; outside GitHub Actions use `prodigy run`"
    )]
    Missing { name: &'static str },
    #[error("{name} is `{value}`, not {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "cannot read the event file {path} named by GITHUB_EVENT_PATH: {reason}; the runner writes it for every job, so check that nothing in the job removed or replaced it"
    )]
    EventUnreadable { path: String, reason: String },
    #[error(
        "the event file {path} named by GITHUB_EVENT_PATH is not a `{event}` event payload: {reason}"
    )]
    EventInvalid {
        path: String,
        event: String,
        reason: String,
    },
}

impl ActionEnv {
    /// Reads the variables through `get` (the process environment in production). Empty values
    /// count as unset, as they do for the runner's own tools.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<ActionEnv, EnvError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| get(name).ok_or(EnvError::Missing { name });
        let repository = required("GITHUB_REPOSITORY")?;
        if !is_owner_and_name(&repository) {
            return Err(EnvError::Invalid {
                name: "GITHUB_REPOSITORY",
                value: repository,
                expected: "`owner/name`",
            });
        }
        let sha = required("GITHUB_SHA")?;
        if !is_commit_sha(&sha) {
            return Err(EnvError::Invalid {
                name: "GITHUB_SHA",
                value: sha,
                expected: "a commit SHA (40 or 64 hex digits)",
            });
        }
        let url = |name: &'static str, default: &str| -> Result<String, EnvError> {
            let value = get(name).unwrap_or_else(|| default.to_string());
            if value.starts_with("https://") || value.starts_with("http://") {
                Ok(value.trim_end_matches('/').to_string())
            } else {
                Err(EnvError::Invalid {
                    name,
                    value,
                    expected: "an http(s) URL",
                })
            }
        };
        let run_attempt = match get("GITHUB_RUN_ATTEMPT") {
            None => 1,
            Some(v) => {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(EnvError::Invalid {
                        name: "GITHUB_RUN_ATTEMPT",
                        value: v,
                        expected: "a number from 1",
                    })?
            }
        };
        Ok(ActionEnv {
            event_name: required("GITHUB_EVENT_NAME")?,
            event_path: PathBuf::from(required("GITHUB_EVENT_PATH")?),
            repository: RepoName::new(&repository),
            sha: sha.to_ascii_lowercase(),
            workspace: get("GITHUB_WORKSPACE").map(PathBuf::from),
            api_url: url("GITHUB_API_URL", "https://api.github.com")?,
            server_url: url("GITHUB_SERVER_URL", "https://github.com")?,
            run_id: get("GITHUB_RUN_ID"),
            run_attempt,
            output: get("GITHUB_OUTPUT").map(PathBuf::from),
            step_summary: get("GITHUB_STEP_SUMMARY").map(PathBuf::from),
        })
    }

    pub fn from_process() -> Result<ActionEnv, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The workflow run's page: the check run's "Details" link.
    pub fn run_url(&self) -> Option<String> {
        let run = self.run_id.as_ref()?;
        Some(format!(
            "{}/{}/actions/runs/{run}",
            self.server_url, self.repository
        ))
    }

    /// This attempt of the workflow run, as lock holders and replies name it.
    pub fn attempt_url(&self) -> Option<String> {
        Some(format!("{}/attempts/{}", self.run_url()?, self.run_attempt))
    }

    /// Reads the event file and takes what prodigy needs from it.
    pub fn read_event(&self) -> Result<EventFacts, EnvError> {
        let bytes = std::fs::read(&self.event_path).map_err(|e| EnvError::EventUnreadable {
            path: self.event_path.display().to_string(),
            reason: e.to_string(),
        })?;
        event_facts(self, &bytes)
    }
}

/// What prodigy takes from the event that started the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFacts {
    /// The commit the check run is attached to and the job is recorded at: a pull request's
    /// head commit (`GITHUB_SHA` is the merge commit there), else `GITHUB_SHA`.
    pub head_sha: String,
    pub pr_number: Option<crate::types::PrNumber>,
}

/// The facts of an event payload. Every event with a `pull_request` object (`pull_request`,
/// `pull_request_target`, reviews, ...) is about that pull request's head commit; the
/// `pull_request*` events must have one.
pub fn event_facts(env: &ActionEnv, payload: &[u8]) -> Result<EventFacts, EnvError> {
    let invalid = |reason: String| EnvError::EventInvalid {
        path: env.event_path.display().to_string(),
        event: env.event_name.clone(),
        reason,
    };
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| invalid(format!("it is not JSON ({e})")))?;
    if !value.is_object() {
        return Err(invalid("it is not a JSON object".into()));
    }
    let Some(pr) = value.get("pull_request").filter(|p| p.is_object()) else {
        if env.event_name.starts_with("pull_request") {
            return Err(invalid("it has no `pull_request` object".into()));
        }
        return Ok(EventFacts {
            head_sha: env.sha.clone(),
            pr_number: None,
        });
    };
    let head_sha = pr
        .pointer("/head/sha")
        .and_then(Value::as_str)
        .filter(|s| is_commit_sha(s))
        .ok_or_else(|| invalid("`pull_request.head.sha` is missing or not a commit SHA".into()))?;
    let pr_number = pr
        .get("number")
        .or_else(|| value.get("number"))
        .and_then(Value::as_u64)
        .map(crate::types::PrNumber)
        .ok_or_else(|| invalid("`pull_request.number` is missing".into()))?;
    Ok(EventFacts {
        head_sha: head_sha.to_ascii_lowercase(),
        pr_number: Some(pr_number),
    })
}

fn is_owner_and_name(s: &str) -> bool {
    matches!(s.split_once('/'), Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/'))
}

fn is_commit_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
    const MERGE: &str = "0000000000000000000000000000000000000abc";

    fn vars(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            ("GITHUB_EVENT_NAME", "pull_request"),
            ("GITHUB_EVENT_PATH", "/runner/_temp/event.json"),
            ("GITHUB_REPOSITORY", "Octo-Org/Hello-World"),
            ("GITHUB_SHA", MERGE),
            ("GITHUB_RUN_ID", "4242"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    fn parse(m: &HashMap<String, String>) -> Result<ActionEnv, EnvError> {
        ActionEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn the_runners_variables_with_defaults() {
        let env = parse(&vars(&[
            ("GITHUB_OUTPUT", "/runner/_temp/out"),
            ("GITHUB_SERVER_URL", "https://ghe.example/"),
        ]))
        .unwrap();
        assert_eq!(env.repository.as_str(), "octo-org/hello-world");
        assert_eq!(env.api_url, "https://api.github.com");
        assert_eq!(env.server_url, "https://ghe.example");
        assert_eq!(env.output, Some(PathBuf::from("/runner/_temp/out")));
        assert_eq!(env.step_summary, None);
        assert_eq!(env.run_attempt, 1);
        assert_eq!(env.workspace, None);
        assert_eq!(
            env.run_url().as_deref(),
            Some("https://ghe.example/octo-org/hello-world/actions/runs/4242")
        );
    }

    #[test]
    fn the_run_attempt() {
        let env = parse(&vars(&[("GITHUB_RUN_ATTEMPT", "3")])).unwrap();
        assert_eq!(env.run_attempt, 3);
        assert_eq!(
            env.attempt_url().as_deref(),
            Some("https://github.com/octo-org/hello-world/actions/runs/4242/attempts/3")
        );
        for bad in ["0", "two", "-1"] {
            let err = parse(&vars(&[("GITHUB_RUN_ATTEMPT", bad)])).unwrap_err();
            assert!(err.to_string().contains("GITHUB_RUN_ATTEMPT"), "{err}");
        }
    }

    #[test]
    fn a_missing_or_empty_variable_is_named() {
        let mut m = vars(&[]);
        m.remove("GITHUB_EVENT_PATH");
        let err = parse(&m).unwrap_err();
        assert_eq!(
            err,
            EnvError::Missing {
                name: "GITHUB_EVENT_PATH"
            }
        );
        assert!(err.to_string().contains("prodigy run"), "{err}");
        let err = parse(&vars(&[("GITHUB_SHA", " ")])).unwrap_err();
        assert_eq!(err, EnvError::Missing { name: "GITHUB_SHA" });
    }

    #[test]
    fn malformed_values_are_refused() {
        let err = parse(&vars(&[("GITHUB_REPOSITORY", "just-a-name")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("GITHUB_REPOSITORY is `just-a-name`, not `owner/name`"),
            "{err}"
        );
        assert!(parse(&vars(&[("GITHUB_SHA", "main")])).is_err());
        assert!(parse(&vars(&[("GITHUB_API_URL", "api.github.com")])).is_err());
    }

    fn payload(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_pull_request_event_names_its_head_commit_not_the_merge_commit() {
        let env = parse(&vars(&[])).unwrap();
        let facts = event_facts(
            &env,
            &payload(serde_json::json!({
                "action": "opened", "number": 2,
                "pull_request": {"number": 2, "head": {"sha": SHA.to_uppercase()}},
            })),
        )
        .unwrap();
        assert_eq!(
            facts,
            EventFacts {
                head_sha: SHA.into(),
                pr_number: Some(crate::types::PrNumber(2))
            }
        );
    }

    #[test]
    fn other_events_use_github_sha() {
        let env = parse(&vars(&[("GITHUB_EVENT_NAME", "push")])).unwrap();
        let facts = event_facts(&env, br#"{"ref": "refs/heads/main", "after": "x"}"#).unwrap();
        assert_eq!(
            facts,
            EventFacts {
                head_sha: MERGE.into(),
                pr_number: None
            }
        );
    }

    #[test]
    fn bad_event_files_say_what_is_wrong_with_them() {
        let env = parse(&vars(&[])).unwrap();
        let err = event_facts(&env, b"not json").unwrap_err().to_string();
        assert!(
            err.contains("/runner/_temp/event.json named by GITHUB_EVENT_PATH"),
            "{err}"
        );
        assert!(err.contains("not JSON"), "{err}");
        let err = event_facts(&env, b"{}").unwrap_err().to_string();
        assert!(err.contains("no `pull_request` object"), "{err}");
        let err = event_facts(
            &env,
            &payload(serde_json::json!({"pull_request": {"number": 1, "head": {}}})),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pull_request.head.sha"), "{err}");
        let missing = ActionEnv {
            event_path: PathBuf::from("/nonexistent/event.json"),
            ..env
        };
        let err = missing.read_event().unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read the event file /nonexistent/event.json"),
            "{err}"
        );
    }
}
