//! Commands of the `prodigy` binary. Every flag also has an environment variable, and `--help`
//! is the reference.

/// `println!` for command output: a closed stdout (`prodigy run wf.yml | head -2`) ends the
/// output quietly instead of panicking, and the command goes on (a run still finishes its job).
macro_rules! out {
    () => {
        $crate::cli::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for progress and messages: a closed stderr (`prodigy run wf.yml 2>&1 | head`)
/// loses them instead of panicking in the middle of a run.
macro_rules! eout {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod cancel;
pub mod color;
mod ids;
mod output;
pub mod phase_output;

/// Set once a write to stdout failed: the reader went away, nothing more is written.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes command output; after a failed write (EPIPE) it writes nothing more.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_fmt(args)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether stdout's reader went away (following commands stop then).
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use prodigy::engine::agent_env::{self, EnvMode};
use prodigy::engine::sandbox::{SandboxMode, SandboxSettings};
use prodigy::engine::{AgentPolicy, DlqMode, Engine, NewRun, ResumeRequest, RetryRequest, git};
use prodigy::store::{Store, redact_url};
use prodigy::types::{ErrorClass, ItemKey, JobStatus};

/// The job ran and failed (items failed, a phase failed) or the command failed.
pub const EXIT_FAILED: u8 = 1;
/// Bad input: an invalid workflow, an unknown job.
pub const EXIT_USAGE: u8 = 2;
/// The job's budget ran out; its remaining items are pending (`prodigy resume --budget`).
pub const EXIT_BUDGET: u8 = 3;
/// Another process holds the job (EX_TEMPFAIL): try again later.
pub use prodigy::store::EXIT_HELD;
/// Interrupted by Ctrl-C or SIGTERM; the job can be resumed.
pub const EXIT_INTERRUPTED: u8 = 130;

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

/// Logs on stderr. The level: RUST_LOG, else `-v` debug, `-vv` trace (SQL statements too), else
/// `info` for the long-running `serve` and `warn` for everything else.
pub fn init_tracing(verbose: u8, format: LogFormat, serve: bool) {
    let default = match (verbose, serve) {
        (0, true) => "info",
        (0, false) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => fmt.with_ansi(ansi).try_init(),
        LogFormat::Json => fmt.json().with_ansi(false).try_init(),
    };
}

/// Where state lives for a repository: `--home`, or `<git common dir>/prodigy`.
async fn state_dir(global: &Global, repo: &Path) -> anyhow::Result<PathBuf> {
    if let Some(home) = &global.home {
        return Ok(home.clone());
    }
    let dir = git::common_dir(repo).await.with_context(|| {
        format!(
            "{} is not inside a git repository; run prodigy in your repository, pass -C DIR, or set PRODIGY_HOME",
            repo.display()
        )
    })?;
    Ok(dir.join("prodigy"))
}

/// The database URL: `--database-url`, or SQLite in the state directory.
async fn store_url(global: &Global) -> anyhow::Result<String> {
    Ok(match &global.database_url {
        Some(url) if !url.trim().is_empty() => url.clone(),
        _ => {
            let dir = state_dir(global, &global.repo).await?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
            format!("sqlite://{}", dir.join("state.db").display())
        }
    })
}

async fn open_store(global: &Global) -> anyhow::Result<Store> {
    let url = store_url(global).await?;
    Store::open(&url)
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&url)))
}

async fn engine(global: &Global, store: Store, repo: &Path) -> anyhow::Result<Engine> {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
        }
        eout!("interrupted: stopping agents; the job can be resumed");
        c.cancel();
    });
    let state_dir = state_dir(global, repo).await?;
    // `prodigy cancel` from another process stops this run as Ctrl-C does; `-v` shows the
    // output of setup and reduce as it happens.
    let show_phases = phase_output::ENABLED.load(std::sync::atomic::Ordering::Relaxed);
    let reporter = cancel::watch(
        store.clone(),
        Arc::new(output::CliReporter::new(std::io::stderr().is_terminal())),
        cancel.clone(),
        show_phases.then(|| state_dir.clone()),
    );
    Ok(Engine {
        store,
        state_dir,
        claude_bin: global.claude_bin.clone(),
        agent: Default::default(),
        api_backoff: Default::default(),
        instance: None,
        reporter,
        cancel,
        agents: global.agent_policy(false, Vec::new())?,
    })
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let g = &cli.global;
    // prodigy holds secrets (the database URL, the App key, tokens): no agent of the same user
    // may read its memory or its /proc/<pid>/environ.
    prodigy::engine::sandbox::make_undumpable().context("prctl(PR_SET_DUMPABLE, 0)")?;
    match cli.command {
        Command::Validate { workflow, json } => output::validate(&workflow, &g.repo, json),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "prodigy", &mut script);
            out!("{}", String::from_utf8_lossy(&script).trim_end());
            Ok(0)
        }
        Command::Serve(config) => {
            let deny = config.secret_files();
            let agents = g.agent_policy(true, deny)?;
            prodigy::server::serve(&config, g.database_url.as_deref(), &g.claude_bin, agents)
                .await?;
            Ok(0)
        }
        Command::Action(config) => action(g, &config).await,
        Command::Migrate => {
            let url = store_url(g).await?;
            let store = Store::open_without_migrating(&url)
                .await
                .with_context(|| format!("cannot open the database {}", redact_url(&url)))?;
            let applied = store.migrate().await?;
            let known = store.known_migrations();
            // Says whether TLS is in use: without sslmode, libpq's `prefer` falls back to plain
            // text silently, and this is where a user can see which one they got.
            let transport = match store.encrypted().await? {
                Some(true) => ", connected over TLS",
                Some(false) => ", connected without TLS",
                None => "",
            };
            out!(
                "database {} is at migration {} ({} applied now: {:?}{transport})",
                redact_url(&url),
                known.last().copied().unwrap_or(0),
                applied.len(),
                applied
            );
            Ok(0)
        }
        Command::Run {
            workflow,
            max_parallel,
            json,
        } => {
            let store = open_store(g).await?;
            let eng = engine(g, store, &g.repo).await?;
            let outcome = eng
                .run(&NewRun {
                    repo: g.repo.clone(),
                    workflow_path: workflow,
                    max_parallel,
                    repo_name: None,
                    pr_number: None,
                    head_sha: None,
                    base_commit: None,
                    workflow_text: None,
                })
                .await?;
            Ok(output::outcome(&outcome, json, eng.cancel.is_cancelled()))
        }
        Command::Resume {
            job,
            no_dlq,
            all_dlq,
            max_parallel,
            budget,
            budget_tokens,
            json,
        } => {
            let store = open_store(g).await?;
            let job = store.find_job(&job).await?;
            let eng = engine(g, store, Path::new(&job.repo_path)).await?;
            if budget.is_some_and(|b| !b.is_finite() || b <= 0.0) {
                eout!("--budget must be a positive amount of USD, e.g. --budget 5");
                return Ok(EXIT_USAGE);
            }
            let budget =
                (budget.is_some() || budget_tokens.is_some()).then(|| prodigy::workflow::Budget {
                    max_cost_usd: budget,
                    max_tokens: budget_tokens,
                    ..Default::default()
                });
            let dlq = if no_dlq {
                DlqMode::None
            } else if all_dlq {
                DlqMode::All
            } else {
                DlqMode::Reprocessable
            };
            let r = eng
                .resume(
                    job.id,
                    &ResumeRequest {
                        dlq,
                        max_parallel,
                        budget,
                    },
                )
                .await?;
            Ok(output::resumed(&eng, job.id, r, json, "resume").await)
        }
        Command::Dlq { command } => dlq(g, command).await,
        Command::Jobs { limit, json } => {
            let store = open_store(g).await?;
            output::jobs(&store.list_jobs(limit).await?, json)
        }
        Command::Status { job, json } => {
            let store = open_store(g).await?;
            let job = store.find_job(&job).await?;
            output::status(&store, &job, json).await
        }
        Command::Cancel { job, reason, json } => {
            let store = open_store(g).await?;
            let job = store.find_job(&job).await?;
            cancel::cancel(&store, &job, &reason, json).await
        }
        Command::Events { job, follow, json } => {
            let store = open_store(g).await?;
            let job = store.find_job(&job).await?;
            output::events(&store, job.id, follow, json).await
        }
        Command::Logs {
            job,
            item,
            attempt,
            follow,
            raw,
        } => {
            let store = open_store(g).await?;
            let job = store.find_job(&job).await?;
            let logs = state_dir(g, Path::new(&job.repo_path))
                .await?
                .join("logs")
                .join(job.id.to_string());
            let req = output::LogsRequest {
                item: item.map(ItemKey),
                attempt,
                follow,
                raw,
            };
            output::logs(&store, &job, &logs, &req).await
        }
        Command::DebugLock { job, hold_secs } => {
            let url = store_url(g).await?;
            let hold = std::time::Duration::from_secs_f64(hold_secs.max(0.0));
            Ok(prodigy::store::debug_lock(&url, &job, hold).await)
        }
    }
}

/// `prodigy action`: bad input (the runner's variables, the event file, the inputs) is exit code
/// 2, and every error is also an `::error` the workflow run shows.
async fn action(g: &Global, config: &prodigy::action::ActionConfig) -> anyhow::Result<u8> {
    use prodigy::action::{BadInput, StepContext, commands};
    // The Action always builds the agent environment; the workflow token reaches an agent
    // only when the workflow's `env` names it.
    let mut agents = g.agent_policy(true, Vec::new())?;
    agents.env.on_request = vec!["GITHUB_TOKEN".into(), "GH_TOKEN".into()];
    // Registered before anything else is printed, so the runner masks them everywhere.
    // The runner masks line by line: a multi-line secret (a PEM) is registered per line.
    for value in action_masks(g, config, &agents) {
        for line in value.lines().map(str::trim).filter(|l| l.len() >= 4) {
            out!("::add-mask::{}", commands::escape_data(line));
        }
    }
    let result = async {
        let step = StepContext::from_process()?;
        let store = open_store(g).await?;
        let mut eng = engine(g, store, &g.repo).await?;
        eng.agents = agents.clone();
        eng.agent = config
            .caps
            .policy()
            .map_err(|e| BadInput::Caps(format!("{e:#}")))?;
        let run = prodigy::action::run(&eng, &step, config, &g.repo).await?;
        Ok::<_, anyhow::Error>(output::resumed(&eng, run.job, run.resumed, false, "action").await)
    }
    .await;
    result.or_else(|e| {
        out!("{}", commands::error("prodigy", &format!("{e:#}")));
        if e.downcast_ref::<BadInput>().is_some() {
            eout!("error: {e:#}");
            Ok(EXIT_USAGE)
        } else {
            Err(e)
        }
    })
}

/// Values the runner must mask: the token, the database URL and its password, the operator's
/// passed variables and the workflow's `secret` env entries (when the workflow parses; a
/// workflow that does not is reported by the run itself).
fn action_masks(
    g: &Global,
    config: &prodigy::action::ActionConfig,
    agents: &AgentPolicy,
) -> Vec<String> {
    let mut values: Vec<String> = config.token.iter().cloned().collect();
    if let Some(url) = g.database_url.as_deref().filter(|u| !u.trim().is_empty()) {
        values.push(url.to_string());
        if let Some(password) = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(auth, _)| auth.split_once(':'))
            .map(|(_, pw)| pw.to_string())
        {
            values.push(password);
        }
    }
    let path = g.repo.join(&config.workflow);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(secrets) = prodigy::engine::masked_values(agents, &path, &text)
    {
        values.extend(secrets);
    }
    values.retain(|v| v.len() >= 4);
    values.sort();
    values.dedup();
    values
}

async fn dlq(g: &Global, command: DlqCommand) -> anyhow::Result<u8> {
    let store = open_store(g).await?;
    match command {
        DlqCommand::List { job, json } => {
            let id = match job {
                Some(j) => Some(store.find_job(&j).await?.id),
                None => None,
            };
            output::dlq_list(&store.dlq(id).await?, json)
        }
        DlqCommand::Show { job, item, json } => {
            let job = store.find_job(&job).await?;
            output::dlq_show(&store, &job, &ItemKey(item), json).await
        }
        DlqCommand::Retry {
            job,
            items,
            error_class,
            max_parallel,
            json,
        } => {
            let job = store.find_job(&job).await?;
            if store.dlq(Some(job.id)).await?.is_empty() {
                out!("job {} has nothing in its DLQ", job.id);
                return Ok(0);
            }
            let eng = engine(g, store, Path::new(&job.repo_path)).await?;
            let req = RetryRequest {
                items: items.into_iter().map(ItemKey).collect(),
                error_class,
                max_parallel,
            };
            let r = eng.retry(job.id, &req).await?;
            Ok(output::resumed(&eng, job.id, r, json, "dlq retry").await)
        }
        DlqCommand::Purge {
            job,
            older_than,
            json,
        } => {
            let job = store.find_job(&job).await?;
            let cutoff = older_than.map(|age| chrono::Utc::now() - age);
            let holder = prodigy::store::Holder::this_process(None);
            let purged = store
                .with_job_lock(job.id, &holder, async |proof| {
                    store.purge_dlq(proof, cutoff).await
                })
                .await?;
            let n = match purged {
                prodigy::store::Exclusive::Performed(n) => n,
                prodigy::store::Exclusive::Held { holder, since } => {
                    eout!(
                        "job {} is held by {holder} since {since}; purge it when that run ends",
                        job.id
                    );
                    return Ok(EXIT_HELD);
                }
            };
            if json {
                out!("{}", serde_json::json!({ "job": job.id, "removed": n }));
            } else {
                out!("removed {} DLQ rows of job {}", n, job.id);
            }
            Ok(0)
        }
        DlqCommand::Export { job, format } => {
            let job = store.find_job(&job).await?;
            output::dlq_export(&store, job.id, format).await
        }
    }
}

/// Exit code for an error a command returned: [`EXIT_USAGE`] when the input was bad (an unknown
/// or ambiguous job, an unknown item, a workflow that is missing, invalid or has placeholders
/// that can never resolve), else [`EXIT_FAILED`].
pub fn exit_for_error(e: &anyhow::Error) -> u8 {
    use prodigy::store::StoreError;
    let bad_input = e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<StoreError>(),
            Some(
                StoreError::JobNotFound(_)
                    | StoreError::AmbiguousJob { .. }
                    | StoreError::ItemNotFound { .. }
            )
        ) || cause
            .downcast_ref::<prodigy::workflow::WorkflowError>()
            .is_some()
            || cause
                .downcast_ref::<prodigy::workflow::interpolate::UnresolvedPlaceholders>()
                .is_some()
    });
    if bad_input { EXIT_USAGE } else { EXIT_FAILED }
}

/// Exit code of a finished run.
pub fn exit_for(status: JobStatus, interrupted: bool) -> u8 {
    if interrupted {
        EXIT_INTERRUPTED
    } else if status == JobStatus::Succeeded {
        0
    } else if status == JobStatus::BudgetExhausted {
        EXIT_BUDGET
    } else {
        EXIT_FAILED
    }
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
