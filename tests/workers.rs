//! One job's agents on many machines (README "Many machines"), through real `prodigy`
//! processes: a bare repository stands for the git remote, each machine is a process with its
//! own clone and state directory, and PostgreSQL (a fresh database per test) is shared. Agents
//! are `sh` scripts that wait for files the test creates (sync points, no sleeps); claims last
//! 3 s (`PRODIGY_CLAIM_LEASE_SECS`) so a dead machine's items move on quickly.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use support::db::TestDb;

/// The agent: waits for `$OUT/$GATE` when GATE is set; the first run of item `$STICKY` notes
/// its machine in `$OUT/claimed-<id>` and waits for `$OUT/release-<id>`; then it commits a file
/// naming the item and the machine (`$MARK`).
const AGENT: &str = r#"#!/bin/sh
set -e
id="$1"
if [ -n "$GATE" ]; then
  while [ ! -f "$OUT/$GATE" ]; do sleep 0.2; done
fi
if [ "$id" = "$STICKY" ] && mkdir "$OUT/first-$id" 2>/dev/null; then
  echo "$MARK" > "$OUT/claimed-$id.tmp" && mv "$OUT/claimed-$id.tmp" "$OUT/claimed-$id"
  while [ ! -f "$OUT/release-$id" ]; do sleep 0.2; done
fi
echo "$id by $MARK" > "$id.txt"
git add "$id.txt"
git commit -q -m "$id"
"#;

const WORKFLOW: &str = r#"name: many
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 2
  agent_template:
    - shell: "./agent.sh ${item.id}"
reduce:
  - shell: "echo ${map.successful} of ${map.total} > reduce.txt && git add reduce.txt && git commit -q -m reduce"
"#;

const WAIT: Duration = Duration::from_secs(240);

/// The tests of this file run one at a time: each starts several machines, and on a small
/// runner two such clusters at once starve heartbeats.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    tmp: tempfile::TempDir,
    remote: PathBuf,
    out: PathBuf,
    db: TestDb,
}

/// A machine's `prodigy` process; killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Proc {
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we own; the worst outcome is ESRCH.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit; its exit code and log.
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit code and log.
    fn stop(self) -> (Option<i32>, String) {
        self.signal(libc::SIGTERM);
        self.wait()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    support::git::git(dir, args)
}

impl Cluster {
    /// A remote holding a repository with the workflow, the agent and `items` items.
    async fn new(items: usize) -> Option<Cluster> {
        let db = support::db::postgres_db().await?;
        let tmp = tempfile::tempdir().unwrap();
        let remote = tmp.path().join("remote.git");
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        git(
            tmp.path(),
            &["init", "-q", "--bare", "-b", "main", "remote.git"],
        );
        let c = Cluster {
            tmp,
            remote,
            out,
            db,
        };
        let seed = c.clone_as("seed");
        let list: Vec<serde_json::Value> = (0..items)
            .map(|i| serde_json::json!({"id": format!("i{i}")}))
            .collect();
        std::fs::write(
            seed.join("items.json"),
            serde_json::to_string(&list).unwrap(),
        )
        .unwrap();
        std::fs::write(seed.join("wf.yml"), WORKFLOW).unwrap();
        std::fs::write(seed.join("agent.sh"), AGENT).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            seed.join("agent.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        git(&seed, &["add", "-A"]);
        git(&seed, &["commit", "-q", "-m", "workflow"]);
        git(&seed, &["push", "-q", "origin", "HEAD:main"]);
        Some(c)
    }

    /// A clone of the remote in its own directory (a machine's checkout).
    fn clone_as(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        git(
            self.tmp.path(),
            &["clone", "-q", self.remote.to_str().unwrap(), name],
        );
        git(&dir, &["config", "user.email", "t@example.com"]);
        git(&dir, &["config", "user.name", "T"]);
        dir
    }

    /// `prodigy ARGS` as machine `name` in `cwd`, with its own state directory.
    fn spawn(&self, name: &str, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let log = self.tmp.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_prodigy"));
        cmd.args(args)
            .current_dir(cwd)
            .env("DATABASE_URL", self.db.url())
            .env("PRODIGY_HOME", self.tmp.path().join(format!("{name}-home")))
            .env("PRODIGY_MACHINE", name)
            .env("PRODIGY_CLAIM_LEASE_SECS", "3")
            .env("PRODIGY_SANDBOX_WRITE", &self.out)
            .env("PRODIGY_WORKER_POLL", "0.2")
            .env("OUT", &self.out)
            .env("MARK", name)
            .env("GIT_AUTHOR_NAME", "T")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "T")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().expect("prodigy starts"),
            log,
            name: name.to_string(),
        }
    }

    fn coordinator(&self, name: &str, max_parallel: &str, env: &[(&str, &str)]) -> Proc {
        let clone = self.clone_as(name);
        self.spawn(
            name,
            &clone,
            &["run", "wf.yml", "--workers", "--max-parallel", max_parallel],
            env,
        )
    }

    fn worker(&self, name: &str, max_parallel: &str, env: &[(&str, &str)]) -> Proc {
        self.spawn(
            name,
            self.tmp.path(),
            &["worker", "--max-parallel", max_parallel],
            env,
        )
    }

    async fn sql_i64(&self, sql: &str) -> i64 {
        self.try_sql_i64(sql).await.unwrap()
    }

    async fn try_sql_i64(&self, sql: &str) -> Result<i64, sqlx::Error> {
        let mut conn = PgConnection::connect(self.db.url()).await?;
        let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        Ok(v)
    }

    async fn sql_rows(&self, sql: &str) -> Vec<(String, i64, Option<String>, Option<bool>)> {
        let mut conn = PgConnection::connect(self.db.url()).await.unwrap();
        let v = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        v
    }

    /// Waits until `sql` (a count) reaches `at_least`; `procs` are shown if it never does.
    async fn wait_count(&self, sql: &str, at_least: i64, procs: &[&Proc]) {
        let deadline = Instant::now() + WAIT;
        loop {
            // (Before the machines created the tables, the query fails: not yet.)
            if self.try_sql_i64(sql).await.is_ok_and(|n| n >= at_least) {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = procs
                    .iter()
                    .map(|p| format!("--- {}\n{}", p.name, p.log()))
                    .collect();
                panic!("never reached {at_least}: {sql}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a file in the shared out directory; its content.
    async fn wait_file(&self, name: &str, procs: &[&Proc]) -> String {
        let path = self.out.join(name);
        let deadline = Instant::now() + WAIT;
        while !path.exists() {
            if Instant::now() > deadline {
                let logs: Vec<String> = procs
                    .iter()
                    .map(|p| format!("--- {}\n{}", p.name, p.log()))
                    .collect();
                panic!("{name} never appeared\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::read_to_string(path).unwrap().trim().to_string()
    }

    fn touch(&self, name: &str) {
        std::fs::write(self.out.join(name), "").unwrap();
    }

    async fn job(&self) -> String {
        let mut conn = PgConnection::connect(self.db.url()).await.unwrap();
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM jobs")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        id.to_string()
    }

    /// The items merged into the job's head on the remote, one entry per merge commit.
    fn merged_on_remote(&self, job: &str) -> Vec<String> {
        let head = format!("refs/prodigy/{job}/head");
        let mut v: Vec<String> = git(&self.remote, &["log", "--merges", "--format=%s", &head])
            .lines()
            .map(|l| l.trim_start_matches("prodigy: merge item ").to_string())
            .collect();
        v.sort();
        v
    }

    fn on_remote(&self, job: &str, file: &str) -> String {
        git(
            &self.remote,
            &["show", &format!("refs/prodigy/{job}/head:{file}")],
        )
    }
}

fn expected_items(n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
    v.sort();
    v
}

/// The coordinator and three workers (one joining after the job began) share 120 items:
/// every item is merged exactly once, the job branch holds every item's file and the reduce
/// sees all of them, and every machine ran some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_and_three_workers_merge_every_item_exactly_once() {
    let _one = ONE_CLUSTER.lock().await;
    let Some(c) = Cluster::new(120).await else {
        return;
    };
    // No lease runs out here, even when a busy runner stalls the machines for seconds.
    let gate = [("GATE", "gate"), ("PRODIGY_CLAIM_LEASE_SECS", "10")];
    let coord = c.coordinator("coord", "2", &gate);
    let w1 = c.worker("w1", "2", &gate);
    let w2 = c.worker("w2", "2", &gate);
    // Every agent waits at the gate: two running per machine.
    let running = "SELECT COUNT(*) FROM work_items WHERE status = 'running'";
    c.wait_count(running, 6, &[&coord, &w1, &w2]).await;
    // A worker started after the job began takes part.
    let w3 = c.worker("w3", "2", &gate);
    c.wait_count(
        "SELECT COUNT(*) FROM attempts WHERE machine = 'w3'",
        2,
        &[&coord, &w3],
    )
    .await;
    c.touch("gate");
    let (code, log) = coord.wait();
    assert_eq!(code, Some(0), "the coordinator:\n{log}");
    let job = c.job().await;
    for w in [w1, w2, w3] {
        let name = w.name.clone();
        let (code, log) = w.stop();
        assert_eq!(code, Some(0), "{name} stops cleanly on SIGTERM:\n{log}");
    }

    assert_eq!(c.merged_on_remote(&job), expected_items(120));
    assert_eq!(c.on_remote(&job, "reduce.txt").trim(), "120 of 120");
    for i in [0, 59, 119] {
        assert!(
            c.on_remote(&job, &format!("i{i}.txt"))
                .starts_with(&format!("i{i} by "))
        );
    }
    let per_machine = c
        .sql_rows(
            "SELECT machine, COUNT(*), NULL::text, NULL::bool FROM attempts GROUP BY machine ORDER BY machine",
        )
        .await;
    let machines: Vec<&str> = per_machine.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(machines, ["coord", "w1", "w2", "w3"], "{per_machine:?}");
    let again = c
        .sql_rows(
            "SELECT key || ' on ' || machine, attempt, message, success FROM attempts \
             WHERE attempt > 1 OR NOT success ORDER BY key, attempt",
        )
        .await;
    assert_eq!(
        per_machine.iter().map(|r| r.1).sum::<i64>(),
        120,
        "one attempt per item; run again: {again:?}"
    );
    assert_eq!(
        c.sql_i64("SELECT COUNT(*) FROM work_items WHERE merged AND status = 'succeeded'")
            .await,
        120
    );
    // Logs of attempts on other machines are in the database.
    assert!(
        c.sql_i64(
            "SELECT COUNT(*) FROM attempt_files f JOIN attempts a USING (job_id, key, attempt) \
             WHERE a.machine = 'w3' AND f.name = 'log'"
        )
        .await
            >= 2
    );
    // The job's own status names the machines.
    let status = Command::new(env!("CARGO_BIN_EXE_prodigy"))
        .args(["status", &job])
        .env("DATABASE_URL", c.db.url())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("machines  4"), "{text}");
    assert!(text.contains("w3"), "{text}");
}

/// A worker killed (-9) in the middle of an item: its claim runs out and another machine runs
/// the item again as a new attempt; nothing is lost or merged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_item_runs_again_elsewhere() {
    let _one = ONE_CLUSTER.lock().await;
    let Some(c) = Cluster::new(8).await else {
        return;
    };
    let sticky = [("STICKY", "i0")];
    // The coordinator runs no agents: the two workers run every item.
    let coord = c.coordinator("coord", "0", &sticky);
    let w1 = c.worker("w1", "1", &sticky);
    let w2 = c.worker("w2", "1", &sticky);
    let victim = c.wait_file("claimed-i0", &[&coord, &w1, &w2]).await;
    let (mut dead, alive) = if victim == "w1" { (w1, w2) } else { (w2, w1) };
    dead.signal(libc::SIGKILL);
    let _ = dead.child.wait();
    let (code, log) = coord.wait();
    c.touch("release-i0");
    assert_eq!(code, Some(0), "the coordinator:\n{log}");
    let job = c.job().await;
    let _ = alive.stop();

    assert_eq!(c.merged_on_remote(&job), expected_items(8));
    assert_eq!(
        c.on_remote(&job, "i0.txt").trim(),
        format!("i0 by {}", if victim == "w1" { "w2" } else { "w1" })
    );
    let attempts = c
        .sql_rows(
            "SELECT machine, attempt, message, success FROM attempts WHERE key = 'i0' ORDER BY attempt",
        )
        .await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].0, victim);
    assert_eq!(attempts[0].3, Some(false));
    assert!(
        attempts[0]
            .2
            .as_deref()
            .unwrap()
            .starts_with("lease expired")
    );
    assert_eq!(attempts[1].3, Some(true));
    assert_eq!(
        c.sql_i64("SELECT COUNT(*) FROM events WHERE kind = 'claim_expired'")
            .await,
        1
    );
}

/// A worker paused (SIGSTOP) past its lease, then continued: the item ran again elsewhere and
/// was merged; the paused worker's result is neither recorded nor merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_cannot_record_or_merge() {
    let _one = ONE_CLUSTER.lock().await;
    let Some(c) = Cluster::new(6).await else {
        return;
    };
    let sticky = [("STICKY", "i0")];
    let coord = c.coordinator("coord", "0", &sticky);
    let w1 = c.worker("w1", "1", &sticky);
    let w2 = c.worker("w2", "1", &sticky);
    let victim = c.wait_file("claimed-i0", &[&coord, &w1, &w2]).await;
    let (paused, alive) = if victim == "w1" { (w1, w2) } else { (w2, w1) };
    paused.signal(libc::SIGSTOP);
    let (code, log) = coord.wait();
    assert_eq!(code, Some(0), "the coordinator:\n{log}");
    let job = c.job().await;
    // The paused worker wakes up and its agent finishes.
    c.touch("release-i0");
    paused.signal(libc::SIGCONT);
    let deadline = Instant::now() + WAIT;
    while !paused.log().contains("is lost") {
        assert!(Instant::now() < deadline, "{}", paused.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, log) = paused.stop();
    assert_eq!(code, Some(0), "{log}");
    let _ = alive.stop();

    assert_eq!(c.merged_on_remote(&job), expected_items(6));
    let survivor = if victim == "w1" { "w2" } else { "w1" };
    assert_eq!(
        c.on_remote(&job, "i0.txt").trim(),
        format!("i0 by {survivor}")
    );
    let head = format!("refs/prodigy/{job}/head");
    let i0_commits = git(&c.remote, &["log", "--format=%s", "--no-merges", &head])
        .lines()
        .filter(|l| *l == "i0")
        .count();
    assert_eq!(i0_commits, 1, "only the live attempt's commit is merged");
    let attempts = c
        .sql_rows(
            "SELECT machine, attempt, message, success FROM attempts WHERE key = 'i0' ORDER BY attempt",
        )
        .await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts[0]
            .2
            .as_deref()
            .unwrap()
            .starts_with("lease expired")
    );
    assert_eq!(
        c.sql_i64(
            "SELECT COUNT(*) FROM events WHERE kind = 'item_succeeded' AND data->>'key' = 'i0'"
        )
        .await,
        1
    );
    assert_eq!(
        c.sql_i64("SELECT COUNT(*) FROM attempt_files WHERE key = 'i0' AND attempt = 1")
            .await,
        0
    );
}

/// The coordinator killed (-9) mid-map: workers go on, and `prodigy resume` in another clone
/// (the first one deleted) becomes the coordinator, merges what was pushed, and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_is_resumed_from_another_clone() {
    let _one = ONE_CLUSTER.lock().await;
    let Some(c) = Cluster::new(20).await else {
        return;
    };
    let sticky = [("STICKY", "i12")];
    let coord = c.coordinator("coord", "1", &sticky);
    let w1 = c.worker("w1", "2", &sticky);
    c.wait_count(
        "SELECT COUNT(*) FROM work_items WHERE merged",
        5,
        &[&coord, &w1],
    )
    .await;
    c.wait_file("claimed-i12", &[&coord, &w1]).await;
    let mut coord = coord;
    coord.signal(libc::SIGKILL);
    let _ = coord.child.wait();
    // Its agents run in their own process groups and outlive it for a moment: a file they
    // write while the tree is removed makes one removal fail, so remove until it is gone.
    remove_tree_of_dead_machine(&c.tmp.path().join("coord"));
    let job = c.job().await;
    let merged_before = c
        .sql_i64("SELECT COUNT(*) FROM work_items WHERE merged")
        .await;
    assert!(merged_before < 20);
    c.touch("release-i12");

    let clone = c.clone_as("again");
    let resumed = c.spawn(
        "again",
        &clone,
        &["resume", &job, "--max-parallel", "1"],
        &sticky,
    );
    let (code, log) = resumed.wait();
    assert_eq!(code, Some(0), "the resume:\n{log}");
    let _ = w1.stop();

    assert_eq!(c.merged_on_remote(&job), expected_items(20));
    assert_eq!(c.on_remote(&job, "reduce.txt").trim(), "20 of 20");
    assert_eq!(
        c.sql_i64("SELECT COUNT(*) FROM work_items WHERE merged")
            .await,
        20
    );
    assert_eq!(
        c.sql_i64("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded' AND phase = 'done'")
            .await,
        1
    );
    // The job now lives in the clone that resumed it.
    let branch = format!("prodigy/{job}");
    assert!(git(&clone, &["show", &format!("{branch}:reduce.txt")]).contains("20 of 20"));
}

/// SQLite is one machine's database: `--workers` and `prodigy worker` say what to use instead.
#[test]
fn workers_need_postgres() {
    let repo = support::repo::Repo::new(None);
    repo.write("wf.yml", WORKFLOW);
    repo.commit_all("wf");
    let out = repo.prodigy(&["run", "wf.yml", "--workers"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::repo::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--workers needs PostgreSQL"), "{err}");
    assert!(err.contains("--database-url postgres://"), "{err}");
    let out = repo.prodigy(&["worker"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::repo::text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs the PostgreSQL database"));
}

/// Removes `dir` although processes of a killed machine may still write into it: each failed
/// removal is retried (a bounded number of times) until the tree is gone.
fn remove_tree_of_dead_machine(dir: &std::path::Path) {
    let mut last = None;
    for _ in 0..200 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("cannot remove {}: {last:?}", dir.display());
}
