//! The command line's shape: the commands, their flags and the global options (clap), with the
//! value parsers they use. Every flag also has an environment variable.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use prodigy::engine::AgentPolicy;
use prodigy::engine::agent_env::{self, EnvMode};
use prodigy::engine::sandbox::{SandboxMode, SandboxSettings};
use prodigy::types::ErrorClass;

use super::color;

#[derive(Parser, Debug)]
#[command(
    name = "prodigy",
    version,
    about = "Reproducible AI-agent pipelines: run upstream Prodigy workflows (setup, map over work items in parallel git worktrees, reduce) with durable state, resume and a dead-letter queue.",
    after_help = "State lives in an embedded SQLite database at $PRODIGY_HOME/state.db, where PRODIGY_HOME defaults to <repository's git dir>/prodigy. Set --database-url (DATABASE_URL) to postgres://... to share state between machines."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// More logging (-v debug, -vv trace; RUST_LOG overrides). With `run`, `resume` and
    /// `dlq retry`, -v also shows the output of setup, reduce and commands as it happens.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines as `text` (colour only on a terminal, without NO_COLOR) or `json` (one object
    /// per line, for log collectors).
    #[arg(long, env = "PRODIGY_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Colour status words on stdout: `auto` (a terminal, unless NO_COLOR is set), `always` or
    /// `never`.
    #[arg(long, env = "PRODIGY_COLOR", global = true, value_enum, default_value_t = color::ColorChoice::Auto)]
    pub color: color::ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Database: sqlite://PATH or postgres://USER@HOST/DB. Default: SQLite at $PRODIGY_HOME/state.db.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory for the SQLite database, worktrees and logs. Default: <git dir>/prodigy of the repository.
    #[arg(long, env = "PRODIGY_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// The repository to work in (default: the current directory).
    #[arg(
        short = 'C',
        long,
        env = "PRODIGY_REPO",
        global = true,
        default_value = "."
    )]
    pub repo: PathBuf,
    /// The AI CLI that `claude:` steps run.
    #[arg(
        long,
        env = "PRODIGY_CLAUDE_BIN",
        global = true,
        default_value = "claude"
    )]
    pub claude_bin: String,
    /// The environment agents start with: `inherit` (prodigy's own minus its secrets; the
    /// default of run, resume and dlq retry) or `clean` (an allow-list: PATH, HOME, USER,
    /// LOGNAME, SHELL, LANG, LC_*, TERM, TZ, the proxy variables, plus --pass-env).
    /// `serve` and `action` always use `clean`.
    #[arg(long, env = "PRODIGY_AGENT_ENV", global = true, default_value = "inherit", value_parser = parse_env_mode)]
    pub agent_env: EnvMode,
    /// Variables passed to agents on purpose (e.g. ANTHROPIC_API_KEY), comma separated; their
    /// values are masked in logs, events and reports.
    #[arg(long, env = "PRODIGY_PASS_ENV", global = true, value_delimiter = ',')]
    pub pass_env: Vec<String>,
    /// The agent sandbox (Linux Landlock): `auto` where the kernel supports it, `required`
    /// (a job that cannot be sandboxed fails), or `off`.
    #[arg(long, env = "PRODIGY_SANDBOX", global = true, default_value = "auto", value_parser = parse_sandbox)]
    pub sandbox: SandboxMode,
    /// Extra paths agents may read, `:` separated.
    #[arg(
        long,
        env = "PRODIGY_SANDBOX_READ",
        global = true,
        value_delimiter = ':'
    )]
    pub sandbox_read: Vec<PathBuf>,
    /// Extra paths agents may write, `:` separated (e.g. a shared build cache).
    #[arg(
        long,
        env = "PRODIGY_SANDBOX_WRITE",
        global = true,
        value_delimiter = ':'
    )]
    pub sandbox_write: Vec<PathBuf>,
}

fn parse_env_mode(s: &str) -> Result<EnvMode, String> {
    s.parse()
}

fn parse_sandbox(s: &str) -> Result<SandboxMode, String> {
    s.parse()
}

impl Global {
    /// The agent policy for a face; `clean` forces the allow-list (serve, action). `deny`:
    /// files no agent may reach besides the state directory (key files).
    pub fn agent_policy(&self, clean: bool, deny: Vec<PathBuf>) -> anyhow::Result<AgentPolicy> {
        let pass =
            agent_env::check_pass_names(&self.pass_env).context("--pass-env (PRODIGY_PASS_ENV)")?;
        let mut deny = deny;
        if let Some(path) = self
            .database_url
            .as_deref()
            .and_then(|u| u.strip_prefix("sqlite://"))
        {
            deny.push(PathBuf::from(path.split('?').next().unwrap_or(path)));
        }
        Ok(AgentPolicy {
            env: agent_env::AgentEnvSettings {
                mode: if clean {
                    EnvMode::Clean
                } else {
                    self.agent_env
                },
                pass,
                on_request: Vec::new(),
            },
            sandbox: SandboxSettings {
                mode: self.sandbox,
                extra_read: self.sandbox_read.clone(),
                extra_write: self.sandbox_write.clone(),
                deny,
            },
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a workflow file as a new job.
    Run {
        /// The workflow YAML (upstream Prodigy format).
        workflow: PathBuf,
        /// Agents at once, overriding the workflow's map.max_parallel.
        #[arg(long, env = "PRODIGY_MAX_PARALLEL")]
        max_parallel: Option<usize>,
        /// Print the final outcome as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Continue a job where it stopped: pending items, then failed ones below the retry limit, then the DLQ.
    Resume {
        /// Job id or a unique prefix of it.
        job: String,
        /// Leave DLQ items out.
        #[arg(long, conflicts_with = "all_dlq")]
        no_dlq: bool,
        /// Include DLQ items that are not marked reprocessable too.
        #[arg(long)]
        all_dlq: bool,
        /// Agents at once, overriding the workflow's map.max_parallel.
        #[arg(long, env = "PRODIGY_MAX_PARALLEL")]
        max_parallel: Option<usize>,
        /// Raise (or set) the job's cost budget in USD for this run, e.g. after it stopped with
        /// "budget exhausted". Operator caps still apply.
        #[arg(long, value_name = "USD")]
        budget: Option<f64>,
        /// Raise (or set) the job's token budget for this run.
        #[arg(long, value_name = "TOKENS")]
        budget_tokens: Option<u64>,
        /// Print the final outcome as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The dead-letter queue: items that failed, with their full history.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Recent jobs with status and item counts.
    Jobs {
        /// How many jobs, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The jobs with their counts and usage as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One job: phase, status, items by status, DLQ count.
    Status {
        /// Job id or a unique prefix of it.
        job: String,
        /// The job, its counts and usage as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A job's event log.
    Events {
        /// Job id or a unique prefix of it.
        job: String,

        /// Keep printing new events until the job finishes (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// An agent transcript for people: what the AI said, the tools it called, the result and
    /// its usage. Without ITEM: every agent run of the job (setup, items, reduce) in order.
    Logs {
        /// Job id or a unique prefix of it.
        job: String,

        /// A work item's key.
        item: Option<String>,
        /// Only this attempt of the item (default: every attempt).
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing new transcript lines until the job stops running (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
        /// The NDJSON lines as the AI CLI printed them.
        #[arg(long)]
        raw: bool,
    },
    /// Stop a job: the process running it stops as on Ctrl-C (the job can be resumed); a job
    /// that nothing runs is marked cancelled.
    Cancel {
        /// Job id or a unique prefix of it.
        job: String,
        /// Why, recorded in the job's events.
        #[arg(long, default_value = "cancelled with prodigy cancel")]
        reason: String,
        /// Print the outcome as JSON: {"job": ID, "outcome": {"kind": ..., "detail": ...}}.
        #[arg(long)]
        json: bool,
    },
    /// Check a workflow file: errors with file:line:col, warnings for unknown keys.
    Validate {
        /// The workflow YAML to check.
        workflow: PathBuf,
        /// Print the findings as JSON: {"valid": bool, "errors": [...], "warnings": [...]}, each
        /// with file, line, column and message.
        #[arg(long)]
        json: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Run the GitHub App server: webhooks in, jobs per pull request, `/prodigy` comment commands.
    Serve(Box<prodigy::server::ServeConfig>),
    /// Run a workflow as a GitHub Actions step: a check run, the step's outputs and summary.
    Action(Box<prodigy::action::ActionConfig>),
    /// Print a shell completion script, e.g. `prodigy completions bash > ~/.local/share/bash-completion/completions/prodigy`.
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Try to take a job's lock and hold it (for operators and tests).
    #[command(hide = true)]
    DebugLock {
        /// Job id or a unique prefix of it.
        #[arg(long)]
        job: String,
        /// Hold the lock this many seconds before releasing it.
        #[arg(long, default_value_t = 0.0)]
        hold_secs: f64,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// DLQ rows: item, attempts, error class, signature, last message.
    List {
        /// A job id (prefix); all jobs when absent.
        job: Option<String>,
        /// The rows as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One item's full failure history, log locations and kept commits.
    Show {
        /// Job id or a unique prefix of it.
        job: String,
        /// The work item's key (as `prodigy dlq list` prints it).
        item: String,
        /// The row and its history as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reprocess DLQ items under the job lock; items that succeed leave the DLQ and are merged.
    Retry {
        /// Job id or a unique prefix of it.
        job: String,

        /// Only this item (repeatable).
        #[arg(long = "item")]
        items: Vec<String>,
        /// Only items that failed with this error class.
        #[arg(long, value_parser = parse_class)]
        error_class: Option<ErrorClass>,
        /// Agents at once, overriding the workflow's map.max_parallel.
        #[arg(long, env = "PRODIGY_MAX_PARALLEL")]
        max_parallel: Option<usize>,
        /// Print the final outcome as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete DLQ rows (the attempt history stays).
    Purge {
        /// Job id or a unique prefix of it.
        job: String,
        /// Only rows whose last failure is older than this, e.g. 7d, 12h, 30m.
        #[arg(long, value_parser = parse_age)]
        older_than: Option<chrono::Duration>,
        /// Print {"job": ID, "removed": N} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a job's DLQ rows with their histories.
    Export {
        /// Job id or a unique prefix of it.
        job: String,
        /// `json` (one document) or `jsonl` (one row per line).
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ExportFormat {
    Json,
    Jsonl,
}

fn parse_class(s: &str) -> Result<ErrorClass, String> {
    s.parse()
}

fn parse_age(s: &str) -> Result<chrono::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not an age: use a number and a unit, e.g. 7d, 12h, 30m"))?;
    match unit {
        "d" => Ok(chrono::Duration::days(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "s" | "" => Ok(chrono::Duration::seconds(n)),
        _ => Err(format!("unknown unit in '{s}': use d, h, m or s")),
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every argument of every command, with the command path that has it.
    fn args(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, bool)>) {
        for arg in cmd.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            out.push((
                path.to_string(),
                arg.get_id().to_string(),
                !help.trim().is_empty(),
            ));
        }
        for sub in cmd.get_subcommands() {
            args(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_flag_and_argument_has_help() {
        let cmd = super::Cli::command();
        let mut all = Vec::new();
        args(&cmd, "prodigy", &mut all);
        let missing: Vec<String> = all
            .iter()
            .filter(|(_, _, has)| !has)
            .map(|(path, id, _)| format!("{path}: {id}"))
            .collect();
        assert!(
            all.len() > 50,
            "the walk found only {} arguments",
            all.len()
        );
        assert!(
            missing.is_empty(),
            "arguments without help:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn every_command_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "prodigy", &mut missing);
        assert!(missing.is_empty(), "commands without help: {missing:?}");
    }
}
