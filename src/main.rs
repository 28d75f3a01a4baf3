//! The `prodigy` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A file size limit (`ulimit -f`) reached is a failed write (EFBIG) that prodigy reports,
    // not a signal that kills it in the middle of a write.
    // SAFETY: setting a signal's disposition to "ignore" before any thread starts.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let args = cli::Cli::parse();
    let serve = matches!(args.command, cli::Command::Serve(_));
    cli::init_tracing(args.verbose, args.log_format, serve);
    cli::color::init(args.color);
    cli::phase_output::ENABLED.store(args.verbose > 0, std::sync::atomic::Ordering::Relaxed);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say_error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(cli::EXIT_FAILED);
        }
    };
    match runtime.block_on(cli::dispatch(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            say_error(&render_error(&e));
            ExitCode::from(cli::exit_for_error(&e))
        }
    }
}

/// `error: ...` on stderr; a closed stderr loses it rather than panicking.
fn say_error(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "error: {text}");
}

/// The error and its causes, each said once: many errors (sqlx's among them) repeat their
/// source in their own message, and printing the whole chain would say it two or three times.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render_error;

    #[derive(Debug, thiserror::Error)]
    #[error("database error: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::other("TLS upgrade required");
        let e = anyhow::Error::new(Repeats(io)).context("cannot open the database");
        assert_eq!(
            render_error(&e),
            "cannot open the database: database error: TLS upgrade required"
        );
    }

    #[test]
    fn causes_that_add_something_are_kept() {
        let e = anyhow::anyhow!("no such file").context("cannot read items.json");
        assert_eq!(render_error(&e), "cannot read items.json: no such file");
    }
}
