//! The real `prodigy serve` binary in a [`Ctx`] world: its own state directory, the world's
//! fake GitHub, remote and stub AI CLI, a database URL of the test's choosing; stderr kept
//! for assertions. SIGKILL it ([`ServeBin::kill`]) to drop it as a crash does; dropped, it
//! gets SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use super::server::{Ctx, REPO, SECRET, WAIT};

/// `prodigy serve` as every test world runs it: loopback on any port, polling every 50 ms, the
/// world's repository allowed, its fake GitHub, remotes, App key and stub AI CLI, state in
/// `state`, the webhook secret read from `secret_file`. Callers add the database, logging and
/// their own flags.
pub fn serve_command(ctx: &Ctx, state: &Path, secret_file: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prodigy"));
    cmd.arg("serve")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--poll-ms",
            "50",
            "--allow-repos",
            REPO,
        ])
        .args(["--app-id", &super::fake_github::TEST_APP_ID.to_string()])
        .args(["--github-api-url", &ctx.gh.base_url()])
        .arg("--git-base-url")
        .arg(format!(
            "file://{}",
            ctx.tmp.path().join("remotes").display()
        ))
        .arg("--state-dir")
        .arg(state)
        .arg("--claude-bin")
        .arg(&ctx.claude)
        .env("PRODIGY_PRIVATE_KEY", ctx.tmp.path().join("app-key.pem"))
        .env("PRODIGY_WEBHOOK_SECRET_FILE", secret_file);
    cmd
}

pub struct ServeBin {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    stderr: Arc<Mutex<String>>,
}

impl ServeBin {
    /// Starts `prodigy serve` as `instance` on `db_url` with `extra` flags; returns once it
    /// listens.
    pub fn start(ctx: &Ctx, instance: &str, db_url: &str, extra: &[&str]) -> ServeBin {
        let dir = ctx.tmp.path().join(format!("bin-{instance}"));
        std::fs::create_dir_all(&dir).unwrap();
        let secret_file = dir.join("webhook-secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let mut child = serve_command(ctx, &dir.join("state"), &secret_file)
            .args(["--instance", instance, "--app-slug", super::server::SLUG])
            .args(extra)
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prodigy serve starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if line.contains("prodigy serve listening") {
                    let _ = tx.send(line.clone());
                }
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no `listening` line:\n{}", stderr.lock().unwrap()));
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        ServeBin {
            child,
            addr,
            stderr,
        }
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL, as a crash or an OOM kill: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServeBin {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signals only the child this test started, which has not been reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}
