//! Stale check runs are closed: the real `prodigy serve` is SIGKILLed while a pull request's job
//! runs (its check run left "in progress"); the next server start closes that check run exactly
//! once: `neutral`, naming the new run, when the job is resumed; `cancelled`, saying how to
//! continue, when it cannot be. SQLite and PostgreSQL, fake GitHub.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use prodigy::server::WebhookSecret;
use secrecy::SecretString;
use support::fake_github::{CheckRun, Op};
use support::server::{Ctx, REPO, SECRET, WAIT, items, wait_until};

/// `prodigy serve` as an operator runs it, on `db_url`, with its state in `dir`.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn start(ctx: &Ctx, dir: &Path, db_url: &str) -> Serve {
        std::fs::create_dir_all(dir).unwrap();
        let secret_file = dir.join("webhook-secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let log = dir.join(format!("serve-{}.log", std::process::id()));
        let log = unique(&log);
        let child = support::serve_bin::serve_command(ctx, &dir.join("state"), &secret_file)
            .args(["--instance", "a"])
            .env("DATABASE_URL", db_url)
            .env("PRODIGY_LOCK_LEASE_SECS", "3")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prodigy serve starts");
        Serve { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn addr(&self) -> String {
        let line = wait_until("the listening line", WAIT, || async {
            self.log()
                .lines()
                .find(|l| l.contains("prodigy serve listening"))
                .map(str::to_string)
        })
        .await;
        let after = line.split("addr=").nth(1).expect("an address");
        after.split(['"', ' ']).next().unwrap().to_string()
    }

    /// Waits until the runner has done its start work (resumed orphans, closed stale runs).
    async fn ready(&self) {
        wait_until("the runner to be ready", WAIT, || async {
            self.log().contains("runner ready").then_some(())
        })
        .await;
    }

    fn deliver(addr: &str, event: &str, delivery: &str, body: &[u8]) -> String {
        let secret = WebhookSecret::new(SecretString::from(SECRET.to_string())).unwrap();
        let head = format!(
            "POST /webhook HTTP/1.1\r\nhost: {addr}\r\nx-github-event: {event}\r\n\
             x-github-delivery: {delivery}\r\nx-hub-signature-256: {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            secret.sign(body),
            body.len()
        );
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer.lines().next().unwrap_or_default().to_string()
    }

    fn kill9(&mut self) {
        // SAFETY: signals only the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: signals only the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// `path`, or `path` with a counter before its extension when it exists (one log per start).
fn unique(path: &Path) -> PathBuf {
    let mut n = 0;
    let mut p = path.to_path_buf();
    while p.exists() {
        n += 1;
        p = path.with_extension(format!("{n}.log"));
    }
    p
}

/// Completions sent to check run `id` (PATCHes with `status: completed`).
fn completions(ctx: &Ctx, id: u64) -> usize {
    ctx.gh
        .world()
        .requests
        .iter()
        .filter(|q| {
            q.op == Op::UpdateCheckRun
                && q.path.ends_with(&format!("/check-runs/{id}"))
                && q.body.as_ref().is_some_and(|b| b["status"] == "completed")
        })
        .count()
}

/// Starts a server, opens a PR whose job blocks on the gate, waits for its check run in
/// progress and SIGKILLs the server. Returns the head commit and the check run left behind.
async fn kill_mid_job(ctx: &Ctx, dir: &Path, db_url: &str) -> (String, CheckRun) {
    let mut first = Serve::start(ctx, dir, db_url);
    let addr = first.addr().await;
    let sha = ctx.push_pr(
        1,
        &[("items.json", &items(&[("a", "ok"), ("b", "wait")]))],
        false,
    );
    let answer = Serve::deliver(
        &addr,
        "pull_request",
        "delivery-1",
        &ctx.pr_payload(1, &sha, "opened", false),
    );
    assert!(answer.contains("202"), "{answer}");
    let stale = ctx
        .gh
        .wait_for_check_runs(
            REPO,
            &sha,
            "the job's check run in progress",
            WAIT,
            |runs| {
                runs.into_iter().find(|r| {
                    r.status == "in_progress"
                        && r.title.as_deref().is_some_and(|t| t.starts_with("Map"))
                })
            },
        )
        .await;
    first.kill9();
    (sha, stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_closes_the_check_run_its_dead_server_left_in_progress() {
    for (backend, db) in support::db::test_stores().await {
        let unused = tempfile::tempdir().unwrap();
        let ctx = Ctx::web_only(
            &format!("sqlite://{}", unused.path().join("unused.db").display()),
            "unused",
        )
        .await;
        let dir = ctx.tmp.path().join("serve");
        let (sha, stale) = kill_mid_job(&ctx, &dir, db.url()).await;

        // The next start resumes the job: its new check run continues the old one, which is
        // completed once, pointing at the new one.
        ctx.open_gate();
        let second = Serve::start(&ctx, &dir, db.url());
        let runs = ctx
            .gh
            .wait_for_check_runs(REPO, &sha, "the resumed run's success", WAIT, |runs| {
                let old = runs.iter().find(|r| r.id == stale.id)?;
                let new = runs
                    .iter()
                    .find(|r| r.id != stale.id && r.conclusion.as_deref() == Some("success"))?;
                (old.status == "completed").then(|| (old.clone(), new.clone()))
            })
            .await;
        let (old, new) = runs;
        assert_eq!(
            old.conclusion.as_deref(),
            Some("neutral"),
            "{backend}: {old:?}"
        );
        assert_eq!(
            old.title.as_deref(),
            Some("Continued in a new run"),
            "{backend}"
        );
        let summary = old.summary.clone().unwrap_or_default();
        assert!(
            summary.contains(&format!("check run {}", new.id)),
            "{backend}: the summary names the run that continues it: {summary}"
        );
        assert!(
            summary.contains("/jobs/"),
            "{backend}: links the job page: {summary}"
        );
        assert_eq!(completions(&ctx, stale.id), 1, "{backend}");
        drop(second);

        // Another start finds nothing left open: the old run is not closed again.
        let third = Serve::start(&ctx, &dir, db.url());
        third.ready().await;
        drop(third);
        assert_eq!(
            completions(&ctx, stale.id),
            1,
            "{backend}: closed exactly once"
        );
        ctx.gh.assert_no_violations();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_nobody_can_resume_gets_its_check_run_cancelled_at_start() {
    for (backend, db) in support::db::test_stores().await {
        let unused = tempfile::tempdir().unwrap();
        let ctx = Ctx::web_only(
            &format!("sqlite://{}", unused.path().join("unused.db").display()),
            "unused",
        )
        .await;
        let dir = ctx.tmp.path().join("serve");
        let (sha, stale) = kill_mid_job(&ctx, &dir, db.url()).await;
        // The machine's disk is gone: the job's checkout with it, so no start can resume it.
        ctx.open_gate();
        std::fs::remove_dir_all(dir.join("state")).unwrap();

        let second = Serve::start(&ctx, &dir, db.url());
        let old = ctx
            .gh
            .wait_for_check_runs(REPO, &sha, "the stale check run closed", WAIT, |runs| {
                runs.into_iter()
                    .find(|r| r.id == stale.id && r.status == "completed")
            })
            .await;
        assert_eq!(
            old.conclusion.as_deref(),
            Some("cancelled"),
            "{backend}: {old:?}"
        );
        let summary = old.summary.unwrap_or_default();
        assert!(summary.contains("/prodigy resume"), "{backend}: {summary}");
        assert_eq!(completions(&ctx, stale.id), 1, "{backend}");
        drop(second);
        let third = Serve::start(&ctx, &dir, db.url());
        third.ready().await;
        drop(third);
        assert_eq!(
            completions(&ctx, stale.id),
            1,
            "{backend}: closed exactly once"
        );
        assert_eq!(ctx.gh.check_runs_for(REPO, &sha).len(), 1, "{backend}");
        ctx.gh.assert_no_violations();
    }
}
