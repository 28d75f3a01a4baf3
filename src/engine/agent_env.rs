//! The environment an agent starts with: built, not inherited.
//!
//! An agent runs text that whoever opened the pull request controls, so it must not find
//! prodigy's own secrets (the App's private key, the webhook secret, the database URL, tokens)
//! in its environment. `prodigy serve` and `prodigy action` always build the agent environment
//! from an allow-list ([`EnvMode::Clean`]); `prodigy run` on a laptop inherits the user's shell
//! environment minus prodigy's own secrets by default ([`EnvMode::Inherit`]), and
//! `--agent-env clean` gives it the allow-list too.
//!
//! On top of the base built here, each command gets the workflow's own `env`, prodigy's agent
//! variables (`PRODIGY_AUTOMATION` for `claude:` steps), git's quiet settings and `TMPDIR`
//! pointing at the agent's private temporary directory.

use std::collections::BTreeMap;
use std::str::FromStr;

/// Ordinary variables every agent gets (when set): what a shell and its tools need.
pub const ALLOWED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ",
];

/// Variables allowed by prefix: the locale.
pub const ALLOWED_PREFIXES: &[&str] = &["LC_"];

/// The proxy variables, both spellings.
pub const PROXY: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// prodigy's own secrets and the runner's credentials: never passed to an agent, whatever the
/// mode, and refused in `pass_env`.
pub const NEVER: &[&str] = &[
    "DATABASE_URL",
    "PGPASSWORD",
    "PGPASSFILE",
    "PRODIGY_PRIVATE_KEY",
    "PRODIGY_PRIVATE_KEY_FILE",
    "PRODIGY_WEBHOOK_SECRET",
    "PRODIGY_WEBHOOK_SECRET_FILE",
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
];

/// Prefixes of [`NEVER`]: the Action's inputs (`INPUT_GITHUB-TOKEN`, `INPUT_DATABASE-URL`).
pub const NEVER_PREFIXES: &[&str] = &["INPUT_"];

/// How the base of the agent environment is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnvMode {
    /// prodigy's own environment minus [`NEVER`]: what a user on a laptop expects.
    #[default]
    Inherit,
    /// Only [`ALLOWED`], the locale, the proxy variables and the operator's `pass_env`.
    Clean,
}

impl FromStr for EnvMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inherit" => Ok(EnvMode::Inherit),
            "clean" => Ok(EnvMode::Clean),
            other => Err(format!(
                "unknown agent environment mode `{other}`: use `clean` (allow-list) or `inherit`"
            )),
        }
    }
}

/// What the operator decided about agent environments.
#[derive(Debug, Clone, Default)]
pub struct AgentEnvSettings {
    pub mode: EnvMode,
    /// Variables passed on purpose (e.g. `ANTHROPIC_API_KEY`): added to the base in both modes
    /// and masked in everything prodigy prints.
    pub pass: Vec<String>,
    /// Variables an agent gets only when the workflow's `env` asks for them by name
    /// (`GITHUB_TOKEN: ${GITHUB_TOKEN}`): the Action's token.
    pub on_request: Vec<String>,
}

/// Why a `pass_env` entry is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassEnvError {
    #[error(
        "`{0}` is one of prodigy's own secrets and is never passed to agents; give agents a separate credential under another name"
    )]
    Secret(String),
    #[error("`{0}` is not a variable name (letters, digits and `_`, not starting with a digit)")]
    BadName(String),
}

/// Checks operator-given variable names (`--pass-env`, the Action's `pass-env` input).
pub fn check_pass_names(names: &[String]) -> Result<Vec<String>, PassEnvError> {
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(PassEnvError::BadName(name.to_string()));
        }
        if is_never(name) {
            return Err(PassEnvError::Secret(name.to_string()));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

fn is_never(name: &str) -> bool {
    NEVER.contains(&name) || NEVER_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether every agent gets `name` anyway (the allow-list, the locale, the proxy variables).
pub fn is_ordinary(name: &str) -> bool {
    ALLOWED.contains(&name)
        || PROXY.contains(&name)
        || ALLOWED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The agent environment of one job, before the workflow's `env`.
#[derive(Debug, Clone, Default)]
pub struct AgentEnv {
    /// What every agent command starts with.
    pub base: BTreeMap<String, String>,
    /// Values a workflow may ask for by name; not in `base`.
    pub on_request: BTreeMap<String, String>,
    /// Values of passed and requestable variables: masked wherever prodigy prints text.
    pub secrets: Vec<String>,
}

impl AgentEnv {
    /// What `${NAME}` in a workflow may see: the base and the requestable values. prodigy's
    /// secrets are not here, so a workflow cannot copy them into an agent's `env` either.
    pub fn visible_map(&self) -> BTreeMap<String, String> {
        self.base
            .iter()
            .chain(self.on_request.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl AgentEnvSettings {
    /// Builds the agent environment from prodigy's own environment `process`.
    pub fn build(&self, process: impl IntoIterator<Item = (String, String)>) -> AgentEnv {
        let mut out = AgentEnv::default();
        for (name, value) in process {
            if is_never(&name) {
                continue;
            }
            let passed = self.pass.contains(&name);
            if self.on_request.contains(&name) && !passed {
                out.secrets.push(value.clone());
                out.on_request.insert(name, value);
                continue;
            }
            let keep = passed
                || match self.mode {
                    EnvMode::Inherit => true,
                    EnvMode::Clean => is_ordinary(&name),
                };
            if keep {
                if passed {
                    out.secrets.push(value.clone());
                }
                out.base.insert(name, value);
            }
        }
        // Short values would mask ordinary text everywhere; a secret that short is no secret.
        out.secrets.retain(|s| s.len() >= 4);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> Vec<(String, String)> {
        [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/u"),
            ("LC_ALL", "C.UTF-8"),
            ("https_proxy", "http://proxy:3128"),
            ("DATABASE_URL", "postgres://u:pw@db/x"),
            ("PRODIGY_PRIVATE_KEY", "-----BEGIN RSA"),
            ("PRODIGY_WEBHOOK_SECRET", "hook-secret"),
            ("INPUT_GITHUB-TOKEN", "ghs_input"),
            ("GITHUB_TOKEN", "ghs_token"),
            ("ANTHROPIC_API_KEY", "sk-ant-123"),
            ("EDITOR", "vim"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn names(env: &AgentEnv) -> Vec<&str> {
        env.base.keys().map(String::as_str).collect()
    }

    #[test]
    fn clean_keeps_the_allow_list_and_what_the_operator_passes() {
        let settings = AgentEnvSettings {
            mode: EnvMode::Clean,
            pass: vec!["ANTHROPIC_API_KEY".into()],
            on_request: vec!["GITHUB_TOKEN".into()],
        };
        let env = settings.build(process());
        assert_eq!(
            names(&env),
            ["ANTHROPIC_API_KEY", "HOME", "LC_ALL", "PATH", "https_proxy"]
        );
        assert_eq!(env.on_request["GITHUB_TOKEN"], "ghs_token");
        assert_eq!(env.secrets, ["ghs_token", "sk-ant-123"]);
    }

    #[test]
    fn inherit_drops_only_prodigys_secrets() {
        let env = AgentEnvSettings::default().build(process());
        assert_eq!(
            names(&env),
            [
                "ANTHROPIC_API_KEY",
                "EDITOR",
                "GITHUB_TOKEN",
                "HOME",
                "LC_ALL",
                "PATH",
                "https_proxy"
            ]
        );
        assert!(env.secrets.is_empty());
    }

    #[test]
    fn prodigys_secrets_cannot_be_passed() {
        assert_eq!(
            check_pass_names(&["DATABASE_URL".into()]),
            Err(PassEnvError::Secret("DATABASE_URL".into()))
        );
        assert_eq!(
            check_pass_names(&["INPUT_GITHUB-TOKEN".into()]),
            Err(PassEnvError::BadName("INPUT_GITHUB-TOKEN".into()))
        );
        assert_eq!(
            check_pass_names(&[" A ".into(), "".into(), "A".into(), "B_2".into()]).unwrap(),
            ["A", "B_2"]
        );
        assert!(
            check_pass_names(&["2X".into()])
                .unwrap_err()
                .to_string()
                .contains("not a variable name")
        );
    }
}
