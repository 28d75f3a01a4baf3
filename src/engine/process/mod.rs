//! Runs one agent command as a real process.
//!
//! Each command leads its own process group, so a timeout, a cancellation or a caller that gives up
//! (drops the future) ends the whole tree it started, grandchildren included: SIGTERM to the group,
//! then SIGKILL after [`KILL_GRACE`]. Output is read from both pipes at once (a child that fills
//! one pipe while we wait on the other would deadlock), kept in memory up to [`OUTPUT_CAP`] per
//! stream, and appended to the log file as it arrives, so a crash of prodigy loses nothing the
//! command already printed.
//!
//! This module spawns and waits; `group` signals and reaps the process group, `streams` reads
//! the pipes and writes the log.

use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::text::{human_duration, tail_lines};

mod group;
mod streams;

use group::{GroupGuard, terminate_group};
pub use streams::redact;
use streams::{Capture, LogSink, pump};

/// Bytes of each stream kept in memory (the last ones; the log file has everything).
pub const OUTPUT_CAP: usize = 1 << 20;
/// How long a group has to exit after SIGTERM before it gets SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// After the leader exits, how long we keep reading before deciding that what still holds the
/// pipes is a leftover background process rather than output in flight.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);
/// After the group is dead, how long we wait for the pipes to close. Only a process that left
/// the group (setsid) can keep them open that long, and we cannot kill what we cannot name.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(1);
/// How long we wait for a SIGKILLed group to disappear, so the caller can remove the worktree
/// without racing dying processes.
const REAP_WAIT: Duration = Duration::from_millis(500);
/// Between looks at a dying group (each look may scan /proc).
const POLL: Duration = Duration::from_millis(20);

/// What to run and how.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Added to (or overriding) prodigy's own environment.
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    /// Output is appended here as it arrives, after a header line naming the command.
    pub log: Option<PathBuf>,
    /// Fed to the command's stdin, which is closed afterwards; stdin is /dev/null when `None`.
    pub stdin: Option<Vec<u8>>,
    /// Secret values: replaced by `***` in the log and in the captured output. A secret split
    /// across two reads of a pipe reaches the log unmasked; the captured output is always masked.
    pub redact: Vec<String>,
    /// When set, stdout goes here chunk by chunk as it arrives (with back-pressure) instead of
    /// to the log and the captured output: the AI CLI's transcript, which has its own file.
    pub stdout_tap: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// When set, the command starts with exactly these variables (then `env`), not with
    /// prodigy's environment: agents get a built environment ([`super::agent_env`]).
    pub base_env: Option<Vec<(String, String)>>,
    /// The sandbox the command runs in ([`super::sandbox`]); `None` runs it unconfined.
    pub sandbox: Option<super::sandbox::Plan>,
}

impl CommandSpec {
    pub fn new(program: impl Into<String>, cwd: impl Into<PathBuf>) -> Self {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            cwd: cwd.into(),
            env: Vec::new(),
            timeout: None,
            log: None,
            stdin: None,
            redact: Vec::new(),
            stdout_tap: None,
            base_env: None,
            sandbox: None,
        }
    }

    /// `sh -c SCRIPT`.
    pub fn shell(script: impl Into<String>, cwd: impl Into<PathBuf>) -> Self {
        let mut spec = CommandSpec::new("sh", cwd);
        spec.args = vec!["-c".to_string(), script.into()];
        spec
    }

    /// The command line as a user could paste it into a shell.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub exit_code: Option<i32>,
    /// The signal that ended the command's leader process, if one did.
    pub signal: Option<i32>,
    /// Our timeout fired and we killed the group.
    pub timed_out: bool,
    /// The cancellation token fired and we killed the group.
    pub cancelled: bool,
    /// The last [`OUTPUT_CAP`] bytes, with a note in front when earlier bytes were dropped.
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
    /// The limit that applied, so a timeout can be reported as the configured value.
    pub timeout: Option<Duration>,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.cancelled
    }

    /// The last `max_lines` lines of stderr, without trailing blank lines.
    pub fn stderr_tail(&self, max_lines: usize) -> String {
        tail_lines(&self.stderr, max_lines).0
    }

    /// The stderr tail, or the stdout tail when the command wrote nothing to stderr (many tools
    /// report their errors on stdout).
    pub fn failure_tail(&self, max_lines: usize) -> String {
        let tail = self.stderr_tail(max_lines);
        if tail.is_empty() {
            tail_lines(&self.stdout, max_lines).0
        } else {
            tail
        }
    }

    /// "exit code 2", "killed by signal 9 (SIGKILL)", "timed out after 30 s", "cancelled after 1.5 s".
    pub fn describe(&self) -> String {
        if self.timed_out {
            return format!(
                "timed out after {}",
                human_duration(self.timeout.unwrap_or(self.duration))
            );
        }
        if self.cancelled {
            return format!("cancelled after {}", human_duration(self.duration));
        }
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => match signal_name(sig) {
                Some(name) => format!("killed by signal {sig} ({name})"),
                None => format!("killed by signal {sig}"),
            },
            (None, None) => "ended without an exit code or signal".to_string(),
        }
    }
}

/// Runs the command to its end, its timeout, or the cancellation of `cancel`, whichever comes
/// first. `Err` only when the command could not be started or its log file not opened; a
/// command that fails is an `Ok` with its exit code.
pub async fn run(spec: &CommandSpec, cancel: &CancellationToken) -> io::Result<CommandOutput> {
    let mut log = match &spec.log {
        Some(path) => Some(LogSink::open(path, spec).await?),
        None => None,
    };

    // Nothing is started once the caller has given up.
    if cancel.is_cancelled() {
        if let Some(log) = log.as_mut() {
            log.write(b"===== prodigy: cancelled before it started =====\n")
                .await;
        }
        return Ok(CommandOutput {
            cancelled: true,
            timeout: spec.timeout,
            ..CommandOutput::default()
        });
    }

    let mut cmd = Command::new(&spec.program);
    if let Some(base) = &spec.base_env {
        cmd.env_clear().envs(base.iter().map(|(k, v)| (k, v)));
    }
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Rules are opened here, before fork: the child only applies them.
    let sandbox = match &spec.sandbox {
        Some(plan) => Some(plan.prepare().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot sandbox `{}`: {e}", spec.program))
        })?),
        None => None,
    };
    confine(&mut cmd, sandbox);

    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let e = io::Error::new(
                e.kind(),
                format!(
                    "cannot start `{}` in {}: {e} (is it installed and on PATH, and does the directory exist?)",
                    spec.program,
                    spec.cwd.display()
                ),
            );
            if let Some(log) = log.as_mut() {
                log.write(format!("===== prodigy: {e} =====\n").as_bytes())
                    .await;
            }
            return Err(e);
        }
    };
    let pgid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| io::Error::other("the started command has no pid"))?;
    // From here until the group is known dead, leaving this function by any path (an error, or
    // the caller dropping the future) kills the group.
    let mut guard = GroupGuard { pgid, armed: true };

    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let stdin = child.stdin.take().zip(spec.stdin.as_deref());
    let mut out = Capture::default();
    let mut err = Capture::default();

    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let (status, end) = {
        let pump = pump(
            stdout,
            stderr,
            stdin,
            (&mut out, spec.stdout_tap.clone()),
            &mut err,
            log.as_mut(),
        );
        tokio::pin!(pump);
        let mut pumped = false;

        let end = loop {
            tokio::select! {
                status = child.wait() => break End::Exited(status?),
                () = sleep_until(deadline) => break End::TimedOut,
                () = cancel.cancelled() => break End::Cancelled,
                () = &mut pump, if !pumped => pumped = true,
            }
        };

        let status = match end {
            End::Exited(status) => {
                if !pumped {
                    pumped = tokio::time::timeout(DRAIN_AFTER_EXIT, pump.as_mut())
                        .await
                        .is_ok();
                }
                // Whatever the leader left running in the background is a leak now.
                while_pumping(terminate_group(pgid, None), pump.as_mut(), &mut pumped).await?;
                status
            }
            End::TimedOut | End::Cancelled => {
                let status = while_pumping(
                    terminate_group(pgid, Some(&mut child)),
                    pump.as_mut(),
                    &mut pumped,
                )
                .await?;
                status.expect("terminate_group waits for the leader it is given")
            }
        };
        if !pumped
            && tokio::time::timeout(DRAIN_AFTER_KILL, pump.as_mut())
                .await
                .is_err()
        {
            tracing::warn!(
                command = %spec.display(),
                "a process that left the command's process group still holds its output pipes; stopped reading"
            );
        }
        (status, end)
    };
    guard.armed = false;

    let output = CommandOutput {
        exit_code: status.code(),
        signal: status.signal(),
        timed_out: matches!(end, End::TimedOut),
        cancelled: matches!(end, End::Cancelled),
        stdout: redact(out.finish(spec.log.as_deref()), &spec.redact),
        stderr: redact(err.finish(spec.log.as_deref()), &spec.redact),
        duration: started.elapsed(),
        timeout: spec.timeout,
    };
    if let Some(log) = log.as_mut() {
        log.write(
            format!(
                "===== prodigy: {}, ran {} =====\n",
                output.describe(),
                human_duration(output.duration)
            )
            .as_bytes(),
        )
        .await;
    }
    Ok(output)
}

/// What happens in the child between fork and exec.
///
/// The agent's own process group shields it from a Ctrl-C meant for prodigy, but it must not
/// outlive prodigy either. On Linux, if prodigy is killed (kill -9, OOM), the kernel kills the
/// agent too (`PR_SET_PDEATHSIG`), so a resume never races an orphan still writing into a
/// worktree. Elsewhere (macOS) there is no such signal: timeouts, cancellation and a dropped
/// future still kill the whole group (`GroupGuard`, `kill_on_drop`), and a prodigy killed
/// with SIGKILL leaves its agents to finish on their own; a resume then resets their
/// worktrees before reuse.
fn confine(cmd: &mut Command, mut sandbox: Option<super::sandbox::Prepared>) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls: prctl, getppid, raise,
        // capget/capset and the Landlock system calls (`Prepared::enter`).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::raise(libc::SIGKILL);
                }
                if let Some(sandbox) = sandbox.as_mut() {
                    sandbox.enter()?;
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: `Prepared::enter` does nothing on these platforms.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(sandbox) = sandbox.as_mut() {
                    sandbox.enter()?;
                }
                Ok(())
            });
        }
    }
}

enum End {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

/// Sleeps until `deadline`; without one, forever (a `select!` branch that never fires).
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Awaits `fut` while still reading the command's output, so a child that writes while it shuts
/// down never blocks on a full pipe and its last words are kept.
async fn while_pumping<F: Future>(
    fut: F,
    mut pump: Pin<&mut impl Future<Output = ()>>,
    pumped: &mut bool,
) -> F::Output {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            () = pump.as_mut(), if !*pumped => *pumped = true,
        }
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return None,
    })
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn sh(script: &str, dir: &Path) -> CommandSpec {
        CommandSpec::shell(script, dir)
    }

    #[tokio::test]
    async fn secrets_never_reach_the_log_or_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.txt");
        let mut spec = sh("echo token=$TOKEN; echo $TOKEN >&2", dir.path());
        spec.env = vec![("TOKEN".into(), "s3cr3t-value".into())];
        spec.log = Some(log.clone());
        spec.redact = vec!["s3cr3t-value".into()];
        let out = run_ok(&spec).await;
        assert_eq!(out.stdout.trim(), "token=***");
        assert_eq!(out.stderr.trim(), "***");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains("s3cr3t-value") && text.contains("token=***"),
            "{text}"
        );
    }

    async fn run_ok(spec: &CommandSpec) -> CommandOutput {
        run(spec, &CancellationToken::new())
            .await
            .expect("command starts")
    }

    /// Alive and not a zombie: a zombie is dead, only not yet reaped by its parent.
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
            Err(_) => false,
        }
    }

    async fn wait_dead(pid: i32) -> bool {
        for _ in 0..100 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn pids(text: &str) -> Vec<i32> {
        text.split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    }

    #[tokio::test]
    async fn exit_codes_and_output_are_captured() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_ok(&sh("echo out; echo err >&2; exit 3", dir.path())).await;
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.signal, None);
        assert!(!out.success());
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.describe(), "exit code 3");

        let ok = run_ok(&sh("true", dir.path())).await;
        assert!(ok.success());
        assert_eq!(ok.describe(), "exit code 0");
    }

    #[tokio::test]
    async fn cwd_env_and_stdin_reach_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh("pwd; echo \"$PRODIGY_TEST_VAR\"; cat", dir.path());
        spec.env = vec![("PRODIGY_TEST_VAR".into(), "hello there".into())];
        spec.stdin = Some(b"from stdin".to_vec());
        let out = run_ok(&spec).await;
        let expected_dir = dir.path().canonicalize().unwrap();
        assert_eq!(
            out.stdout,
            format!("{}\nhello there\nfrom stdin", expected_dir.display())
        );

        // Without stdin the command reads end of file at once, never our terminal.
        let out = run_ok(&sh("cat; echo done", dir.path())).await;
        assert_eq!(out.stdout, "done\n");
    }

    #[tokio::test]
    async fn a_signal_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_ok(&sh("echo bye; kill -9 $$", dir.path())).await;
        assert_eq!(out.exit_code, None);
        assert_eq!(out.signal, Some(libc::SIGKILL));
        assert!(!out.timed_out && !out.cancelled && !out.success());
        assert_eq!(out.describe(), "killed by signal 9 (SIGKILL)");
        assert_eq!(out.stdout, "bye\n");
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec = CommandSpec::new("prodigy-no-such-program", dir.path());
        let mut spec = spec;
        spec.log = Some(dir.path().join("missing.log"));
        let err = run(&spec, &CancellationToken::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("prodigy-no-such-program"), "{err}");
        let log = std::fs::read_to_string(dir.path().join("missing.log")).unwrap();
        assert!(
            log.lines()
                .nth(1)
                .unwrap()
                .contains("cannot start `prodigy-no-such-program`"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_tree() {
        let dir = tempfile::tempdir().unwrap();
        // A grandchild in the background and one in the foreground of a nested shell.
        let mut spec = sh(
            "sleep 100 & echo $!; sh -c 'echo $$; sleep 100'; echo never",
            dir.path(),
        );
        spec.timeout = Some(Duration::from_millis(300));
        let started = Instant::now();
        let out = run_ok(&spec).await;
        let took = started.elapsed();

        assert!(out.timed_out, "{out:?}");
        assert!(!out.success());
        assert_eq!(out.describe(), "timed out after 300 ms");
        assert_eq!(out.signal, Some(libc::SIGTERM));
        assert!(took < Duration::from_secs(2), "took {took:?}");
        let grandchildren = pids(&out.stdout);
        assert_eq!(grandchildren.len(), 2, "{:?}", out.stdout);
        for pid in grandchildren {
            assert!(
                wait_dead(pid).await,
                "grandchild {pid} survived the timeout"
            );
        }
        assert!(!out.stdout.contains("never"));
    }

    #[tokio::test]
    async fn processes_ignoring_sigterm_get_sigkill_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        // The ignored disposition is inherited by the background sleep.
        let mut spec = sh("trap '' TERM; sleep 100 & echo $!; wait", dir.path());
        spec.timeout = Some(Duration::from_millis(200));
        let started = Instant::now();
        let out = run_ok(&spec).await;
        let took = started.elapsed();
        assert!(out.timed_out);
        assert_eq!(out.signal, Some(libc::SIGKILL));
        assert!(
            took >= KILL_GRACE,
            "SIGKILL came before the grace: {took:?}"
        );
        assert!(took < KILL_GRACE + Duration::from_secs(2), "took {took:?}");
        for pid in pids(&out.stdout) {
            assert!(wait_dead(pid).await, "{pid} survived SIGKILL");
        }
    }

    #[tokio::test]
    async fn cancellation_kills_the_tree_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            trigger.cancel();
        });
        let out = run(&sh("sleep 100 & echo $!; sleep 100", dir.path()), &cancel)
            .await
            .unwrap();
        assert!(out.cancelled && !out.timed_out && !out.success());
        assert!(
            out.describe().starts_with("cancelled after "),
            "{}",
            out.describe()
        );
        assert!(out.duration < Duration::from_secs(2));
        for pid in pids(&out.stdout) {
            assert!(wait_dead(pid).await, "{pid} survived cancellation");
        }
    }

    #[tokio::test]
    async fn nothing_starts_after_cancellation() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let out = run(
            &sh(&format!("touch {}", marker.display()), dir.path()),
            &cancel,
        )
        .await
        .unwrap();
        assert!(out.cancelled && !out.success());
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pids");
        let spec = sh(
            &format!(
                "echo $$ > {p}; sleep 100 & echo $! >> {p}; wait",
                p = pidfile.display()
            ),
            dir.path(),
        );
        let cancel = CancellationToken::new();
        let gave_up = tokio::time::timeout(Duration::from_millis(500), run(&spec, &cancel)).await;
        assert!(
            gave_up.is_err(),
            "the command should still have been running"
        );
        let pids = pids(&std::fs::read_to_string(&pidfile).unwrap());
        assert_eq!(pids.len(), 2);
        for pid in pids {
            assert!(wait_dead(pid).await, "{pid} outlived the dropped future");
        }
    }

    #[tokio::test]
    async fn a_leftover_background_process_neither_hangs_nor_survives() {
        let dir = tempfile::tempdir().unwrap();
        // The daemon holds stdout open: reading to the end of the pipe would wait 100 s.
        let started = Instant::now();
        let out = run_ok(&sh("sleep 100 & echo $!; echo done; exit 4", dir.path())).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out.exit_code, Some(4));
        assert!(!out.timed_out);
        assert!(out.stdout.ends_with("done\n"));
        let daemon = pids(&out.stdout)[0];
        assert!(wait_dead(daemon).await, "leftover {daemon} still runs");

        // One that let go of the pipes is killed too.
        let out = run_ok(&sh("sleep 100 >/dev/null 2>&1 & echo $!", dir.path())).await;
        assert!(out.success());
        let daemon = pids(&out.stdout)[0];
        assert!(wait_dead(daemon).await, "leftover {daemon} still runs");
    }

    #[tokio::test]
    async fn a_finished_orphan_costs_no_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        // The orphan dies at once; where init reaps late it stays a zombie member of the group.
        let started = Instant::now();
        let out = run_ok(&sh("(true &); sleep 0.2; echo ok", dir.path())).await;
        assert!(out.success());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn the_log_gets_every_byte_with_a_header_per_command() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/deeper/agent.log");
        let mut spec = sh("echo first; echo oops >&2", dir.path());
        spec.log = Some(log.clone());
        run_ok(&spec).await;
        let mut spec = sh("printf 'second\\n'; exit 5", dir.path());
        spec.log = Some(log.clone());
        run_ok(&spec).await;

        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(lines[0].starts_with("===== prodigy "));
        assert!(lines[0].ends_with(&format!(
            "$ sh -c 'echo first; echo oops >&2' (in {}) =====",
            dir.path().display()
        )));
        // The two streams interleave in the order they arrived; both are there.
        let mut body = vec![lines[1], lines[2]];
        body.sort();
        assert_eq!(body, ["first", "oops"]);
        assert!(lines[3].starts_with("===== prodigy: exit code 0, ran "));
        assert!(lines[4].contains("$ sh -c 'printf '\\''second\\n'\\''; exit 5'"));
        assert_eq!(lines[5], "second");
        assert!(lines[6].starts_with("===== prodigy: exit code 5, ran "));
    }

    #[tokio::test]
    async fn the_log_has_output_before_the_command_ends() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("live.log");
        let mut spec = sh("echo early; sleep 100", dir.path());
        spec.log = Some(log.clone());
        spec.timeout = Some(Duration::from_secs(5));
        let cancel = CancellationToken::new();
        let running = run(&spec, &cancel);
        tokio::pin!(running);
        let mut seen = false;
        for _ in 0..200 {
            tokio::select! {
                _ = &mut running => panic!("the command ended early"),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("early\n")
            {
                seen = true;
                break;
            }
        }
        assert!(seen, "the log did not get the output while the command ran");
        cancel.cancel();
        assert!(running.await.unwrap().cancelled);
    }

    #[tokio::test]
    async fn ten_megabytes_on_both_streams_neither_deadlock_nor_bloat() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("big.log");
        let size = 10_000_000;
        let mut spec = sh(
            &format!(
                "yes stdout-line | head -c {size} & yes stderr-line | head -c {size} >&2; wait"
            ),
            dir.path(),
        );
        spec.log = Some(log.clone());
        spec.timeout = Some(Duration::from_secs(60));
        let out = run_ok(&spec).await;
        assert!(out.success(), "{}", out.describe());
        for (stream, word) in [(&out.stdout, "stdout-line"), (&out.stderr, "stderr-line")] {
            let (note, kept) = stream.split_once('\n').unwrap();
            assert_eq!(
                note,
                format!(
                    "[prodigy: output truncated, the first {} of {size} bytes are not shown; the full output is in {}]",
                    size - OUTPUT_CAP,
                    log.display()
                )
            );
            assert!(kept.len() <= OUTPUT_CAP && kept.len() > OUTPUT_CAP - 16);
            // Each stream holds only its own lines (head cuts the last one short).
            let other = if word.starts_with("stdout") {
                "stderr"
            } else {
                "stdout"
            };
            assert!(kept.contains(&format!("\n{word}\n{word}\n")) && !kept.contains(other));
        }
        let logged = std::fs::metadata(&log).unwrap().len();
        assert!(logged > 2 * size as u64, "log has {logged} bytes");
    }

    #[tokio::test]
    async fn big_stdin_while_output_flows_back() {
        let dir = tempfile::tempdir().unwrap();
        let input: Vec<u8> = b"0123456789abcdef\n".repeat(200_000);
        let mut spec = sh("cat; cat >&2 </dev/null", dir.path());
        spec.stdin = Some(input.clone());
        spec.timeout = Some(Duration::from_secs(60));
        let out = run_ok(&spec).await;
        assert!(out.success());
        assert!(out.stdout.ends_with("0123456789abcdef\n"));
        assert!(
            out.stdout
                .starts_with("[prodigy: output truncated, the first")
        );
    }

    #[tokio::test]
    async fn input_the_command_never_reads_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh("echo quick", dir.path());
        spec.stdin = Some(vec![b'x'; 10_000_000]);
        spec.timeout = Some(Duration::from_secs(30));
        let out = run_ok(&spec).await;
        assert!(out.success(), "{}", out.describe());
        assert_eq!(out.stdout, "quick\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixteen_trees_at_once_all_end() {
        let dir = tempfile::tempdir().unwrap();
        let runs = (0..16).map(|i| {
            let mut spec = sh(
                &format!("sleep 100 & echo $!; echo item-{i}; sleep 100"),
                dir.path(),
            );
            spec.timeout = Some(Duration::from_millis(500));
            tokio::spawn(async move { run(&spec, &CancellationToken::new()).await })
        });
        let mut leftovers = Vec::new();
        for (i, handle) in runs.collect::<Vec<_>>().into_iter().enumerate() {
            let out = handle.await.unwrap().unwrap();
            assert!(out.timed_out);
            assert!(
                out.stdout.contains(&format!("item-{i}\n")),
                "{:?}",
                out.stdout
            );
            leftovers.extend(pids(&out.stdout));
        }
        assert_eq!(leftovers.len(), 16);
        for pid in leftovers {
            assert!(wait_dead(pid).await, "{pid} survived");
        }
    }

    #[test]
    fn tails_take_the_last_lines() {
        let out = CommandOutput {
            stderr: "a\nb\nc\n\n".into(),
            stdout: "x\ny\n".into(),
            ..Default::default()
        };
        assert_eq!(out.stderr_tail(2), "b\nc");
        assert_eq!(out.stderr_tail(10), "a\nb\nc");
        assert_eq!(out.failure_tail(1), "c");
        let quiet = CommandOutput {
            stdout: "x\ny\n".into(),
            ..Default::default()
        };
        assert_eq!(quiet.failure_tail(1), "y");
    }
}
