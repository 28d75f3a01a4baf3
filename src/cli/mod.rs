//! Commands of the `prodigy` binary. Every flag also has an environment variable, and `--help`
//! is the reference. This module opens the store and the engine, dispatches each command and
//! maps outcomes to exit codes; `args` holds the clap shape, `action` and `dlq` the two
//! commands with more than a few lines of their own, `output` what commands print.

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

mod action;
mod args;
mod cancel;
pub mod color;
mod dlq;
mod ids;
mod output;
pub mod phase_output;

pub use args::{Cli, Command, DlqCommand, ExportFormat, Global, LogFormat};

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
use tokio_util::sync::CancellationToken;

use prodigy::engine::{DlqMode, Engine, NewRun, ResumeRequest, git};
use prodigy::store::{Store, redact_url};
use prodigy::types::{ItemKey, JobStatus};

/// The job ran and failed (items failed, a phase failed) or the command failed.
pub const EXIT_FAILED: u8 = 1;
/// Bad input: an invalid workflow, an unknown job.
pub const EXIT_USAGE: u8 = 2;
/// The job's budget ran out; its remaining items are pending (`prodigy resume --budget`).
pub const EXIT_BUDGET: u8 = 3;
/// Another process holds the job (EX_TEMPFAIL): try again later.
pub use prodigy::store::EXIT_HELD;
/// The database cannot be written: read-only, or the disk is full (EX_IOERR).
pub const EXIT_DB_UNWRITABLE: u8 = 74;
/// Interrupted by Ctrl-C or SIGTERM; the job can be resumed.
pub const EXIT_INTERRUPTED: u8 = 130;

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
pub(super) async fn state_dir(global: &Global, repo: &Path) -> anyhow::Result<PathBuf> {
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
pub(super) async fn store_url(global: &Global) -> anyhow::Result<String> {
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

pub(super) async fn open_store(global: &Global) -> anyhow::Result<Store> {
    let url = store_url(global).await?;
    Store::open(&url)
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&url)))
}

pub(super) async fn engine(global: &Global, store: Store, repo: &Path) -> anyhow::Result<Engine> {
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
        workers: global.worker_settings()?,
    })
}

/// Runs the command. An error that says the SQLite database cannot be written (read-only, full
/// disk) is explained: which file, what to do, and [`EXIT_DB_UNWRITABLE`].
pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let global = cli.global.clone();
    let err = match run_command(cli).await {
        Ok(code) => return Ok(code),
        Err(e) => e,
    };
    let found = err.chain().find_map(|c| {
        let why = c
            .downcast_ref::<prodigy::store::StoreError>()
            .and_then(|s| s.unwritable())
            .or_else(|| {
                c.downcast_ref::<sqlx::Error>()
                    .and_then(prodigy::store::unwritable)
            })?;
        Some((why, c.to_string()))
    });
    let Some((why, cause)) = found else {
        return Err(err);
    };
    let url = store_url(&global).await.unwrap_or_default();
    let file = url.strip_prefix("sqlite://").unwrap_or(&url);
    Err(anyhow::Error::new(DatabaseUnwritable {
        file: redact_url(file),
        cause,
        advice: why.advice(),
    }))
}

/// The database file could not be written; nothing was committed by the write that failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database {file} cannot be written ({cause}): {advice}. The write that failed was not committed; `prodigy resume` continues an interrupted job"
)]
pub struct DatabaseUnwritable {
    file: String,
    cause: String,
    advice: &'static str,
}

async fn run_command(cli: Cli) -> anyhow::Result<u8> {
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
        Command::Action(config) => action::action(g, &config).await,
        Command::Worker(config) => {
            if !g.is_postgres() {
                eout!(
                    "error: prodigy worker needs the PostgreSQL database of the jobs it helps: pass --database-url postgres://... (DATABASE_URL), the URL their `prodigy run --workers` uses"
                );
                return Ok(EXIT_USAGE);
            }
            let store = open_store(g).await?;
            let home = config.state_dir(g.home.as_deref());
            let mut global = g.clone();
            global.home = Some(home.clone());
            std::fs::create_dir_all(&home).with_context(|| {
                format!("cannot create the worker's directory {}", home.display())
            })?;
            let eng = engine(&global, store, &home).await?;
            prodigy::worker::run(&eng, &config).await?;
            Ok(0)
        }
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
            workers,
            remote,
        } => {
            if workers && !g.is_postgres() {
                eout!(
                    "error: --workers needs PostgreSQL, which the machines share: pass --database-url postgres://... (DATABASE_URL), start `prodigy worker` with the same URL on the other machines, or run without --workers on this machine alone (SQLite)"
                );
                return Ok(EXIT_USAGE);
            }
            let store = open_store(g).await?;
            let mut eng = engine(g, store, &g.repo).await?;
            if workers {
                eng.workers.remote = Some(remote);
            }
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
            // A job with workers resumes in this clone: its own may be on another machine.
            let with_workers = store.job_remote(job.id).await?.is_some();
            let repo = if with_workers {
                g.repo.clone()
            } else {
                PathBuf::from(&job.repo_path)
            };
            let mut eng = engine(g, store, &repo).await?;
            if with_workers {
                eng.workers.repo = Some(repo);
            }
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
        Command::Dlq { command } => dlq::dlq(g, command).await,
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
                    | StoreError::NeedsPostgres(_)
            )
        ) || cause
            .downcast_ref::<prodigy::workflow::WorkflowError>()
            .is_some()
            || cause
                .downcast_ref::<prodigy::workflow::interpolate::UnresolvedPlaceholders>()
                .is_some()
    });
    if bad_input {
        EXIT_USAGE
    } else if e.chain().any(|c| c.is::<DatabaseUnwritable>()) {
        EXIT_DB_UNWRITABLE
    } else {
        EXIT_FAILED
    }
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
