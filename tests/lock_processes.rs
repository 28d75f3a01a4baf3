//! The job lock between real `prodigy` processes: one winner, the loser told who holds it, and a
//! lock freed when its holder is killed (PostgreSQL: at once; SQLite: at once when the holder's
//! pid is gone on this host, else within one lease).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use prodigy::store::NewJob;
use prodigy::types::JobId;
use serde_json::Value;
use support::db::{TestDb, sqlite_db, test_stores};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const HELD_EXIT: i32 = 75;

struct LockProcess {
    child: Child,
    line: Value,
}

impl LockProcess {
    fn pid(&self) -> u32 {
        self.child.id().expect("running child has a pid")
    }

    fn outcome(&self) -> &str {
        self.line["outcome"].as_str().unwrap_or("?")
    }

    /// SIGKILL, then reap: a zombie would still answer `kill(pid, 0)`.
    async fn kill_hard(mut self) {
        self.child.kill().await.expect("kill -9 the holder");
    }

    async fn exit_code(mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("debug-lock exits")
            .unwrap();
        status.code().expect("exited normally")
    }
}

/// Starts `prodigy debug-lock` and waits for its one JSON line.
async fn debug_lock(
    db: &TestDb,
    job: JobId,
    hold_secs: u32,
    lease_secs: Option<f64>,
) -> LockProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prodigy"));
    cmd.args([
        "debug-lock",
        "--database-url",
        db.url(),
        "--job",
        &job.to_string(),
    ])
    .args(["--hold-secs", &hold_secs.to_string()])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .kill_on_drop(true);
    match lease_secs {
        Some(secs) => cmd.env("PRODIGY_LOCK_LEASE_SECS", secs.to_string()),
        None => cmd.env_remove("PRODIGY_LOCK_LEASE_SECS"),
    };
    let mut child = cmd.spawn().expect("start prodigy debug-lock");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(20),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("debug-lock answers within 20 s")
    .unwrap()
    .unwrap_or_else(|| panic!("debug-lock printed nothing (exit: {:?})", child.try_wait()));
    let line: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
    LockProcess { child, line }
}

async fn new_job(db: &TestDb) -> JobId {
    let store = db.store().await;
    let job = store
        .create_job(&NewJob {
            workflow_path: "wf.yml".into(),
            workflow_text: "name: lock\n".into(),
            workflow_name: "lock".into(),
            repo_path: "/repo".into(),
            repo: None,
            pr_number: None,
            head_sha: None,
        })
        .await
        .unwrap();
    store.close().await;
    job.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_wins_and_a_killed_holder_frees_the_lock() {
    for (backend, db) in test_stores().await {
        eprintln!("-- processes on {backend}");
        let job = new_job(&db).await;

        let holder = debug_lock(&db, job, 60, None).await;
        assert_eq!(holder.outcome(), "acquired", "{}", holder.line);
        assert_eq!(holder.line["holder"]["pid"], holder.pid());

        let loser = debug_lock(&db, job, 0, None).await;
        assert_eq!(loser.outcome(), "held", "{}", loser.line);
        assert_eq!(
            loser.line["holder"]["pid"],
            holder.pid(),
            "the loser names the holder"
        );
        assert_eq!(loser.line["holder"]["id"], holder.line["holder"]["id"]);
        assert!(loser.line["since"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(loser.exit_code().await, HELD_EXIT);

        let killed_epoch = holder.line["epoch"].as_i64().unwrap();
        holder.kill_hard().await;
        // PostgreSQL frees the lock with the session; SQLite sees the holder pid is gone.
        // Allow the server a moment to notice the closed socket, no more.
        let started = Instant::now();
        let next = loop {
            let next = debug_lock(&db, job, 0, None).await;
            if next.outcome() == "acquired" || started.elapsed() > Duration::from_secs(2) {
                break next;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            next.outcome(),
            "acquired",
            "after kill -9 of the holder: {}",
            next.line
        );
        assert_eq!(next.line["epoch"].as_i64().unwrap(), killed_epoch + 1);
        assert_eq!(next.exit_code().await, 0);
        eprintln!("   freed {:?} after the kill", started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lease_keeps_a_live_holder_and_frees_a_stopped_one() {
    let db = sqlite_db();
    let job = new_job(&db).await;
    let lease = 1.0;

    let holder = debug_lock(&db, job, 60, Some(lease)).await;
    assert_eq!(holder.outcome(), "acquired", "{}", holder.line);
    // A live holder renews its heartbeat: still held after several leases.
    tokio::time::sleep(Duration::from_secs_f64(lease * 2.5)).await;
    let loser = debug_lock(&db, job, 0, Some(lease)).await;
    assert_eq!(loser.outcome(), "held", "{}", loser.line);
    assert_eq!(loser.line["holder"]["pid"], holder.pid());
    assert_eq!(loser.exit_code().await, HELD_EXIT);

    // A paused holder (pid alive, no heartbeat) loses the lock once the lease runs out.
    let pid = libc::pid_t::try_from(holder.pid()).unwrap();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    let early = debug_lock(&db, job, 0, Some(lease)).await;
    if stopped.elapsed() < Duration::from_secs_f64(lease * 0.5) {
        assert_eq!(
            early.outcome(),
            "held",
            "a fresh heartbeat is respected: {}",
            early.line
        );
    }
    drop(early);
    tokio::time::sleep(Duration::from_secs_f64(lease * 1.2)).await;
    let next = debug_lock(&db, job, 0, Some(lease)).await;
    assert_eq!(
        next.outcome(),
        "acquired",
        "a lapsed lease is taken over: {}",
        next.line
    );
    assert!(next.line["epoch"].as_i64() > holder.line["epoch"].as_i64());
    assert_eq!(next.exit_code().await, 0);
    holder.kill_hard().await;
}
