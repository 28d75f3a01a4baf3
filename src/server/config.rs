//! `prodigy serve` settings. Every setting is a flag with an environment variable; `--help` is
//! the reference.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use secrecy::SecretString;

use crate::github::{AppAuth, AppId};
use crate::types::RepoName;

use super::webhook::WebhookSecret;

#[derive(Args, Clone)]
pub struct ServeConfig {
    /// The GitHub App's id (App settings, "About").
    #[arg(long, env = "PRODIGY_APP_ID")]
    pub app_id: u64,
    /// The App's private key: a path to the PEM file, or the PEM text itself.
    #[arg(long, env = "PRODIGY_PRIVATE_KEY", hide_env_values = true)]
    pub private_key: String,
    /// The webhook secret set in the App settings. Required: deliveries are verified with it.
    #[arg(long, env = "PRODIGY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// A file holding the webhook secret (instead of --webhook-secret): keeps the secret out
    /// of the process environment.
    #[arg(
        long,
        env = "PRODIGY_WEBHOOK_SECRET_FILE",
        conflicts_with = "webhook_secret"
    )]
    pub webhook_secret_file: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "PRODIGY_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,
    /// Serve Prometheus metrics (GET /metrics) on this address only, e.g. 127.0.0.1:9464;
    /// without it the main listener serves /metrics.
    #[arg(long, env = "PRODIGY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The server's public base URL, used in the links the bot posts (default: http://<listen>).
    #[arg(long, env = "PRODIGY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// GitHub's REST API (GitHub Enterprise: https://HOST/api/v3).
    #[arg(long, env = "GITHUB_API_URL", default_value = "https://api.github.com")]
    pub github_api_url: String,
    /// Where repositories are cloned from: <git-base-url>/<owner>/<name>.git
    /// (GitHub Enterprise: https://HOST; tests: file:///path).
    #[arg(
        long,
        env = "PRODIGY_GIT_BASE_URL",
        default_value = "https://github.com"
    )]
    pub git_base_url: String,
    /// The server's state: worktrees, logs, and the SQLite database `<state-dir>/prodigy.db`
    /// unless --database-url names another (PostgreSQL for several replicas).
    #[arg(long, env = "PRODIGY_STATE_DIR", default_value = "prodigy-state")]
    pub state_dir: PathBuf,
    /// The repository cache, reused across jobs (default: <state-dir>/repos).
    #[arg(long, env = "PRODIGY_CHECKOUT_DIR")]
    pub checkout_dir: Option<PathBuf>,
    /// Jobs this process runs at once; further requests wait in the queue (and another
    /// instance on the same PostgreSQL database may take them).
    #[arg(long, env = "PRODIGY_MAX_JOBS", default_value_t = 2)]
    pub max_jobs: usize,
    /// The path GitHub posts webhooks to.
    #[arg(long, env = "PRODIGY_WEBHOOK_PATH", default_value = "/webhook")]
    pub webhook_path: String,
    /// The App's slug, so `@<slug> <command>` works as well as `/prodigy <command>`.
    #[arg(long, env = "PRODIGY_APP_SLUG")]
    pub app_slug: Option<String>,
    /// This instance's name in lock holder messages and the request queue (default: host:pid).
    /// Give each replica a stable name so a restart picks up the requests it had claimed.
    #[arg(long, env = "PRODIGY_INSTANCE")]
    pub instance: Option<String>,
    /// Repositories prodigy may act on, `owner/name`, comma separated. Empty: none.
    #[arg(long, env = "PRODIGY_ALLOW_REPOS", value_delimiter = ',')]
    pub allow_repos: Vec<String>,
    /// How often an idle runner looks for queued requests (milliseconds); a webhook received
    /// by this process wakes it at once.
    #[arg(long, env = "PRODIGY_POLL_MS", default_value_t = 1000)]
    pub poll_ms: u64,
    /// Accept and queue webhooks but run nothing here: a web-only replica in front of
    /// runner replicas on the same PostgreSQL database. With SQLite, queued work waits until
    /// a `prodigy serve` without this flag starts on the same database file.
    #[arg(long, env = "PRODIGY_NO_RUNNER")]
    pub no_runner: bool,
    /// How often to look for webhook deliveries GitHub could not make (this server was down or
    /// answered an error) and ask GitHub to deliver them again, e.g. 5m, 30s; also at start.
    /// 0 turns it off. One replica at a time looks (an advisory lock on PostgreSQL).
    #[arg(long, env = "PRODIGY_REDELIVER_EVERY", default_value = "5m")]
    pub redeliver_every: String,
    /// Redeliveries asked for per look at most; the rest wait for the next.
    #[arg(long, env = "PRODIGY_REDELIVER_MAX", default_value_t = 50)]
    pub redeliver_max: usize,
    /// The operator's agent defaults and caps per job.
    #[command(flatten)]
    pub caps: crate::engine::agent::AgentCaps,
    /// Cost cap per repository per UTC day in USD: the agents of a repository's jobs since
    /// midnight UTC. When reached, new jobs of that repository are refused with a reply saying
    /// so, and a job in progress stops as `budget_exhausted`.
    #[arg(long, env = "PRODIGY_REPO_DAILY_COST_USD")]
    pub repo_daily_cost_usd: Option<f64>,
    /// Replicas work on each other's jobs (PostgreSQL only; every replica with this flag): the
    /// jobs this one starts open their items to the others, and it claims items of theirs.
    /// Commits travel through the repository (refs/prodigy/...), pushed with an installation
    /// token that may write contents: the App needs `contents: write` (README "Many machines").
    #[arg(long, env = "PRODIGY_WORKERS")]
    pub workers: bool,
    /// Agents at once when this replica works on another's job (--workers); each such job
    /// also takes one of --max-jobs while it does.
    #[arg(long, env = "PRODIGY_WORKER_MAX_PARALLEL", default_value_t = 2)]
    pub worker_max_parallel: usize,
    /// Seconds a claimed request's lease lasts without its instance's heartbeat (renewed every
    /// third of it): the claim of an instance that died is taken back by any instance after it.
    #[arg(long, env = "PRODIGY_REQUEST_LEASE_SECS", default_value_t = 60)]
    pub request_lease_secs: u64,
    /// Attempts of one request in all (after transient GitHub or database errors, or claims
    /// taken back); then it is failed with the reason.
    #[arg(long, env = "PRODIGY_REQUEST_ATTEMPTS", default_value_t = 8)]
    pub request_attempts: u32,
    /// Milliseconds before a request that failed on a transient error is tried again; doubled
    /// for each later attempt, at most an hour.
    #[arg(long, env = "PRODIGY_REQUEST_BACKOFF_MS", default_value_t = 30_000)]
    pub request_backoff_ms: u64,
}

/// Secrets stay out of debug output (clap's error paths and `-vv` logs print it).
impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("app_id", &self.app_id)
            .field("private_key", &"[REDACTED]")
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("webhook_secret_file", &self.webhook_secret_file)
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("public_url", &self.public_url)
            .field("github_api_url", &self.github_api_url)
            .field("git_base_url", &self.git_base_url)
            .field("state_dir", &self.state_dir)
            .field("checkout_dir", &self.checkout_dir)
            .field("max_jobs", &self.max_jobs)
            .field("webhook_path", &self.webhook_path)
            .field("app_slug", &self.app_slug)
            .field("instance", &self.instance)
            .field("allow_repos", &self.allow_repos)
            .field("poll_ms", &self.poll_ms)
            .field("no_runner", &self.no_runner)
            .field("redeliver_every", &self.redeliver_every)
            .field("redeliver_max", &self.redeliver_max)
            .field("caps", &self.caps)
            .field("repo_daily_cost_usd", &self.repo_daily_cost_usd)
            .field("workers", &self.workers)
            .field("worker_max_parallel", &self.worker_max_parallel)
            .field("request_lease_secs", &self.request_lease_secs)
            .field("request_attempts", &self.request_attempts)
            .field("request_backoff_ms", &self.request_backoff_ms)
            .finish()
    }
}

/// The validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub app_id: AppId,
    pub private_key: SecretString,
    pub webhook_secret: WebhookSecret,
    pub database_url: String,
    pub listen: SocketAddr,
    /// Where `/metrics` is served: None, on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    pub public_url: String,
    pub github_api_url: String,
    pub git_base_url: String,
    pub state_dir: PathBuf,
    pub checkout_dir: PathBuf,
    pub max_jobs: usize,
    pub webhook_path: String,
    pub app_slug: Option<String>,
    pub instance: String,
    pub allow_repos: Vec<RepoName>,
    pub poll: std::time::Duration,
    pub claude_bin: String,
    /// Whether this process claims and runs queued work (`--no-runner` turns it off).
    pub runner: bool,
    /// How often missed deliveries are looked for (`--redeliver-every`); None: never.
    pub redeliver_every: Option<std::time::Duration>,
    /// Redeliveries asked for per look at most (`--redeliver-max`).
    pub redeliver_max: usize,
    /// How agents are confined. `settings` gives the safe default (built environment,
    /// sandbox where the kernel has one); `prodigy serve` fills it from the global flags.
    pub agents: crate::engine::AgentPolicy,
    /// The operator's agent defaults and caps (`--default-model`, `--max-cost-usd`,
    /// `--repo-daily-cost-usd`, ...).
    pub agent: crate::engine::agent::AgentPolicy,
    /// `--workers`: agents at once on another replica's job (`--worker-max-parallel`); None:
    /// jobs run on the replica that started them alone.
    pub workers: Option<usize>,
    /// The request queue's leases, attempts and backoff (`--request-*`).
    pub requests: crate::store::RequestPolicy,
    /// How GitHub calls are retried within one attempt of a request (tests shorten it).
    pub github_retry: crate::github::RetryPolicy,
}

impl ServeConfig {
    /// Checks the settings and fills the defaults that depend on others. `database_url` and
    /// `claude_bin` come from the global flags.
    pub fn settings(
        &self,
        database_url: Option<&str>,
        claude_bin: &str,
    ) -> anyhow::Result<Settings> {
        let from_file = match &self.webhook_secret_file {
            Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read the webhook secret file {} (--webhook-secret-file)",
                    path.display()
                )
            })?),
            None => None,
        };
        let secret = from_file
            .as_deref()
            .map(|s| s.trim_end_matches(['\r', '\n']))
            .or(self.webhook_secret.as_deref())
            .filter(|s| !s.trim().is_empty())
            .context(
                "no webhook secret: prodigy serve refuses to accept unverified webhooks. \
                 Set the same secret in the GitHub App settings (Webhook secret) and in \
                 --webhook-secret or PRODIGY_WEBHOOK_SECRET",
            )?;
        let webhook_secret = WebhookSecret::new(SecretString::from(secret.to_string()))?;
        let private_key = read_private_key(&self.private_key)?;
        // Fail at start, not at the first webhook, when the key is unusable.
        AppAuth::new(AppId(self.app_id), &private_key)
            .context("the App private key (--private-key) is not a usable RSA PEM key")?;
        let mut agent = self.caps.policy()?;
        agent.repo_daily_cost_usd = self.repo_daily_cost_usd;
        if let Some(v) = self.repo_daily_cost_usd
            && (!v.is_finite() || v <= 0.0)
        {
            bail!(
                "--repo-daily-cost-usd (PRODIGY_REPO_DAILY_COST_USD) must be a positive amount of USD, e.g. 20; found {v}"
            );
        }
        let redeliver_every = parse_redeliver_every(&self.redeliver_every)?;
        if self.max_jobs == 0 {
            bail!("--max-jobs must be at least 1");
        }
        if self.request_lease_secs == 0 || self.request_attempts == 0 {
            bail!(
                "--request-lease-secs and --request-attempts must be at least 1 (found {} and {})",
                self.request_lease_secs,
                self.request_attempts
            );
        }
        if !self.webhook_path.starts_with('/') {
            bail!("--webhook-path `{}` must start with `/`", self.webhook_path);
        }
        let mut allow_repos = Vec::new();
        for entry in self
            .allow_repos
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
        {
            let valid = entry.split('/').count() == 2 && entry.split('/').all(|p| !p.is_empty());
            if !valid {
                bail!("--allow-repos entry `{entry}` is not `owner/name`");
            }
            allow_repos.push(RepoName::new(entry));
        }
        let database_url = match database_url.map(str::trim).filter(|u| !u.is_empty()) {
            Some(url) => url.to_string(),
            None => {
                std::fs::create_dir_all(&self.state_dir).with_context(|| {
                    format!(
                        "cannot create the state directory {}",
                        self.state_dir.display()
                    )
                })?;
                format!("sqlite://{}", self.state_dir.join("prodigy.db").display())
            }
        };
        if self.workers && !database_url.starts_with("postgres") {
            bail!(
                "--workers (PRODIGY_WORKERS) needs the PostgreSQL database the replicas share: \
                 pass --database-url postgres://... (DATABASE_URL) to every replica, or drop --workers"
            );
        }
        if self.workers && self.worker_max_parallel == 0 {
            bail!("--worker-max-parallel must be at least 1");
        }
        let state_dir = absolute(&self.state_dir)?;
        let checkout_dir = match &self.checkout_dir {
            Some(dir) => absolute(dir)?,
            None => state_dir.join("repos"),
        };
        let public_url = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string();
        Ok(Settings {
            app_id: AppId(self.app_id),
            private_key,
            webhook_secret,
            database_url,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            public_url,
            github_api_url: self.github_api_url.clone(),
            git_base_url: self.git_base_url.trim_end_matches('/').to_string(),
            state_dir,
            checkout_dir,
            max_jobs: self.max_jobs,
            webhook_path: self.webhook_path.clone(),
            app_slug: self
                .app_slug
                .clone()
                .map(|s| s.trim().trim_start_matches('@').to_string())
                .filter(|s| !s.is_empty()),
            instance: self
                .instance
                .clone()
                .unwrap_or_else(|| format!("{}:{}", crate::store::hostname(), std::process::id())),
            allow_repos,
            poll: std::time::Duration::from_millis(self.poll_ms.max(10)),
            claude_bin: claude_bin.to_string(),
            runner: !self.no_runner,
            redeliver_every,
            redeliver_max: self.redeliver_max,
            agents: crate::engine::AgentPolicy {
                env: crate::engine::agent_env::AgentEnvSettings {
                    mode: crate::engine::agent_env::EnvMode::Clean,
                    ..Default::default()
                },
                sandbox: crate::engine::sandbox::SandboxSettings {
                    deny: self.secret_files(),
                    ..Default::default()
                },
            },
            agent,
            workers: self.workers.then_some(self.worker_max_parallel),
            requests: crate::store::RequestPolicy {
                lease: std::time::Duration::from_secs(self.request_lease_secs),
                max_attempts: self.request_attempts,
                backoff: std::time::Duration::from_millis(self.request_backoff_ms),
                ..Default::default()
            },
            github_retry: Default::default(),
        })
    }
}

impl ServeConfig {
    /// Files holding the server's secrets: no agent may read them, whatever directory they
    /// are in.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if !self.private_key.contains("-----BEGIN") {
            files.push(PathBuf::from(&self.private_key));
        }
        files.extend(self.webhook_secret_file.clone());
        files
    }
}

impl Settings {
    pub fn is_allowed(&self, repo: &RepoName) -> bool {
        self.allow_repos.contains(repo)
    }
}

/// `--redeliver-every`: a duration (`5m`, `30s`, `1h`, or seconds); 0 turns recovery off.
fn parse_redeliver_every(text: &str) -> anyhow::Result<Option<std::time::Duration>> {
    let seconds = crate::workflow::parse::parse_duration_text(text)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .with_context(|| {
            format!(
                "--redeliver-every (PRODIGY_REDELIVER_EVERY) `{text}` is not a duration: write e.g. 5m, 30s or 0 to turn it off"
            )
        })?;
    if seconds == 0.0 {
        return Ok(None);
    }
    if seconds < 1.0 {
        bail!(
            "--redeliver-every (PRODIGY_REDELIVER_EVERY) must be at least 1s (or 0 to turn it off); found `{text}`"
        );
    }
    Ok(Some(std::time::Duration::from_secs_f64(seconds)))
}

/// A PEM given inline, or the path of a PEM file.
fn read_private_key(value: &str) -> anyhow::Result<SecretString> {
    if value.contains("-----BEGIN") {
        // Environment variables often carry the PEM with literal `\n`.
        return Ok(SecretString::from(value.replace("\\n", "\n")));
    }
    let text = std::fs::read_to_string(value).with_context(|| {
        format!(
            "cannot read the App private key file `{value}`: give the path of the .pem file \
             downloaded from the App settings, or the PEM text itself"
        )
    })?;
    Ok(SecretString::from(text))
}

fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("cannot create the directory {}", path.display()))?;
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    fn key() -> String {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/test-app-key.TEST-ONLY.pem"
        )
        .into()
    }

    fn parse(extra: &[&str]) -> ServeConfig {
        let dir = std::env::temp_dir().join(format!("prodigy-config-{}", std::process::id()));
        let mut args = vec!["x", "--app-id", "7", "--private-key"];
        let key = key();
        args.push(&key);
        let dir = dir.display().to_string();
        args.extend(["--state-dir", &dir]);
        args.extend(extra);
        Cli::try_parse_from(args).unwrap().serve
    }

    #[test]
    fn refuses_to_start_without_a_webhook_secret() {
        let err = parse(&[]).settings(None, "claude").unwrap_err().to_string();
        assert!(err.contains("no webhook secret"), "{err}");
        let err = parse(&["--webhook-secret", "  "])
            .settings(None, "claude")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no webhook secret"), "{err}");
    }

    #[test]
    fn defaults_and_allow_list() {
        let s = parse(&["--webhook-secret", "s", "--allow-repos", "Octo/A, octo/b"])
            .settings(None, "claude")
            .unwrap();
        assert_eq!(
            s.allow_repos,
            [RepoName::new("octo/a"), RepoName::new("octo/b")]
        );
        assert!(
            s.database_url.starts_with("sqlite://"),
            "{}",
            s.database_url
        );
        assert!(s.database_url.ends_with("prodigy.db"));
        assert_eq!(s.checkout_dir, s.state_dir.join("repos"));
        assert_eq!(s.public_url, "http://0.0.0.0:3000");
        assert_eq!(s.webhook_path, "/webhook");
        assert!(s.instance.contains(':'));
        assert_eq!(s.redeliver_every, Some(std::time::Duration::from_secs(300)));
        assert_eq!(s.redeliver_max, 50);
        let off = parse(&["--webhook-secret", "s", "--redeliver-every", "0"]);
        assert_eq!(off.settings(None, "claude").unwrap().redeliver_every, None);
        for bad in ["soon", "5 parsecs", "100ms"] {
            let err = parse(&["--webhook-secret", "s", "--redeliver-every", bad])
                .settings(None, "claude")
                .unwrap_err()
                .to_string();
            assert!(err.contains("--redeliver-every"), "{err}");
        }
        let err = parse(&["--webhook-secret", "s", "--allow-repos", "justname"])
            .settings(None, "claude")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not `owner/name`"), "{err}");
        let mut c = parse(&["--webhook-secret", "s"]);
        c.private_key = "/nonexistent.pem".into();
        let err = c.settings(None, "claude").unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read the App private key"),
            "{err:#}"
        );
    }

    #[test]
    fn agent_caps_become_the_engine_policy() {
        let s = parse(&[
            "--webhook-secret",
            "s",
            "--default-model",
            "claude-x",
            "--max-turns-cap",
            "7",
            "--max-cost-usd",
            "2.5",
            "--max-tokens",
            "1000",
            "--forbid-bypass-permissions",
            "--repo-daily-cost-usd",
            "20",
        ])
        .settings(None, "claude")
        .unwrap();
        assert_eq!(s.agent.defaults.model.as_deref(), Some("claude-x"));
        assert_eq!(s.agent.max_turns_cap, Some(7));
        assert_eq!(s.agent.budget_cap.max_cost_usd, Some(2.5));
        assert_eq!(s.agent.budget_cap.max_tokens, Some(1000));
        assert!(s.agent.forbid_bypass_permissions);
        assert_eq!(s.agent.repo_daily_cost_usd, Some(20.0));
        let err = parse(&["--webhook-secret", "s", "--max-cost-usd", "0"])
            .settings(None, "claude")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--max-cost-usd"), "{err}");
        let err = parse(&["--webhook-secret", "s", "--repo-daily-cost-usd=-1"])
            .settings(None, "claude")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--repo-daily-cost-usd"), "{err}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = parse(&["--webhook-secret", "hunter2"]);
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(".pem"), "{text}");
    }
}
