//! End-to-end harness: a real git repository in a temp dir, the real `prodigy` binary, a stub
//! AI CLI, and an explicit database URL (so a DATABASE_URL in the environment never leaks in).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use super::db;

pub struct Repo {
    _tmp: TempDir,
    pub path: PathBuf,
    pub home: PathBuf,
    pub db_url: String,
    pub claude_log: PathBuf,
    /// Extra environment for every prodigy this repo runs (e.g. the real AI CLI's settings).
    pub extra_env: std::cell::RefCell<Vec<(String, String)>>,
    /// Outside the repository and the state directory: the one place besides their worktree
    /// that agents may write (`PRODIGY_SANDBOX_WRITE`), for evidence tests read back.
    pub out: PathBuf,
}

/// A stub `claude` for what the real CLI cannot be made to do: records its arguments, one line
/// per call, and succeeds, speaking just enough stream-json (an `init` and a `result` line whose
/// text is "stub claude did: <prompt>") for prodigy to read it.
const CLAUDE_STUB: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$CLAUDE_LOG"
for prompt; do :; done
esc=$(printf '%s' "$prompt" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n' ' ')
printf '{"type":"system","subtype":"init","session_id":"stub-session","model":"stub-model"}\n'
printf '{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"stub claude did: %s","session_id":"stub-session","total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0}}\n' "$esc"
"#;

impl Repo {
    /// A repository with one commit. `db_url` None means the default embedded SQLite.
    pub fn new(db_url: Option<&str>) -> Repo {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("repo");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&path).unwrap();
        // The stub lives outside PRODIGY_HOME: agents may not read prodigy's state directory.
        std::fs::create_dir_all(tmp.path().join("bin")).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let claude = tmp.path().join("bin").join("claude");
        std::fs::write(&claude, CLAUDE_STUB).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db_url = db_url
            .map(str::to_string)
            .unwrap_or_else(|| format!("sqlite://{}", home.join("state.db").display()));
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let repo = Repo {
            extra_env: Default::default(),
            claude_log: out.join("claude.log"),
            out,
            _tmp: tmp,
            path,
            home,
            db_url,
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.email", "test@example.com"]);
        repo.git(&["config", "user.name", "Test"]);
        repo.write("README.md", "test repository\n");
        repo.commit_all("initial");
        repo
    }

    /// The stub AI CLI.
    pub fn claude_bin(&self) -> PathBuf {
        self._tmp.path().join("bin").join("claude")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn write_exec(&self, rel: &str, content: &str) {
        self.write(rel, content);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.path.join(rel), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }

    pub fn commit_all(&self, msg: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
    }

    pub fn git(&self, args: &[&str]) -> String {
        super::git::git(&self.path, args)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_prodigy"));
        cmd.args(args)
            .current_dir(&self.path)
            .env("DATABASE_URL", &self.db_url)
            .env("PRODIGY_HOME", &self.home)
            .env("PRODIGY_CLAUDE_BIN", self.claude_bin())
            .env("CLAUDE_LOG", &self.claude_log)
            .env("PRODIGY_SANDBOX_WRITE", &self.out)
            .env("PRODIGY_LOCK_LEASE_SECS", "3")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (k, v) in self.extra_env.borrow().iter() {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `claude:` steps with the real AI CLI at `claude`, talking to an API at `base_url`
    /// with `env` (see tests/support/fake_anthropic.rs `cli_env`).
    /// Runs `claude:` steps with the real AI CLI, always inside the agent sandbox: where it cannot
    /// be applied the job fails, so these tests prove the sandbox does not break the agent.
    pub fn use_real_claude(&self, claude: &Path, env: Vec<(String, String)>) {
        let mut e = self.extra_env.borrow_mut();
        e.push(("PRODIGY_CLAUDE_BIN".into(), claude.display().to_string()));
        e.push(("PRODIGY_SANDBOX".into(), "required".into()));
        e.extend(env);
    }

    pub fn prodigy(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("prodigy runs")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prodigy starts")
    }

    /// Runs prodigy with `--json` appended and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.prodigy(&a);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "prodigy {a:?} printed no JSON ({e}); status {:?}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Branches whose name starts with `prodigy/`.
    pub fn prodigy_branches(&self) -> Vec<String> {
        self.git(&[
            "for-each-ref",
            "--format=%(refname:short)",
            "refs/heads/prodigy/",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Worktrees other than the main one.
    pub fn extra_worktrees(&self) -> Vec<String> {
        self.git(&["worktree", "list", "--porcelain"])
            .lines()
            .filter_map(|l| l.strip_prefix("worktree "))
            .filter(|p| Path::new(p) != self.path.canonicalize().unwrap())
            .map(str::to_string)
            .collect()
    }

    /// Lines of a file at a ref, e.g. the job branch.
    pub fn show(&self, rev_path: &str) -> String {
        self.git(&["show", rev_path])
    }
}

/// Text of an Output for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The job id printed by `prodigy run` ("... as job <id>" on stderr, or `job <id>:` on stdout).
pub fn job_id(out: &Output) -> String {
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in all.lines() {
        if let Some(rest) = line.split(" as job ").nth(1) {
            return rest.trim().to_string();
        }
    }
    panic!("no job id in output:\n{}", text(out))
}

/// A `prodigy` process started in the background, with its stderr collected by a thread so the
/// test can wait for the job id and then for events.
pub struct Running {
    pub child: Child,
    pub job: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        // SAFETY: kill(2) with a pid we own; the worst outcome is ESRCH.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    pub fn wait(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().expect("wait");
        // The reader thread ends when the pipe closes.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let err = self.stderr.lock().unwrap().clone();
        (status.code(), err)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Repo {
    /// Starts `prodigy ARGS` and waits until it names its job.
    pub fn start(&self, args: &[&str]) -> Running {
        self.start_with(args, &[])
    }

    pub fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> Running {
        use std::io::BufRead;
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("prodigy starts");
        let pipe = child.stderr.take().unwrap();
        let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let b = buf.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if !sent && let Some(id) = line.split(" as job ").nth(1) {
                    let _ = tx.send(id.trim().to_string());
                    sent = true;
                }
                let mut g = b.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let job = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "prodigy {args:?} never named its job; stderr:\n{}",
                    buf.lock().unwrap()
                )
            });
        Running {
            child,
            job,
            stderr: buf,
        }
    }

    /// The job's events as JSON values.
    pub fn events(&self, job: &str) -> Vec<Value> {
        let out = self.prodigy(&["events", job, "--json"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Polls the event log until `pred` holds (panics after 60 s).
    pub fn wait_for_events(&self, job: &str, what: &str, pred: impl Fn(&[Value]) -> bool) {
        let start = std::time::Instant::now();
        loop {
            let ev = self.events(job);
            if pred(&ev) {
                return;
            }
            if start.elapsed() > std::time::Duration::from_secs(60) {
                let kinds: Vec<&str> = ev.iter().filter_map(|e| e["kind"].as_str()).collect();
                panic!("timed out waiting for {what}; events so far: {kinds:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    }
}

/// How many events of `kind` there are.
pub fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

/// The databases each end-to-end test runs against: SQLite always, PostgreSQL when reachable
/// (required when PRODIGY_REQUIRE_POSTGRES=1). Keep the returned guards alive for the test.
pub fn backends() -> Vec<(&'static str, Option<db::TestDb>)> {
    let mut out: Vec<(&'static str, Option<db::TestDb>)> = vec![("sqlite", None)];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if let Some(db) = rt.block_on(db::postgres_db()) {
        out.push(("postgres", Some(db)));
    }
    out
}

/// A MapReduce workflow whose agents leave evidence outside the repository (one line per
/// execution in `$COUNTER_DIR/runs.txt`), fail while `$COUNTER_DIR/fail-<name>` exists, and
/// commit `out/<name>.txt`; reduce records itself too and commits `count.txt`.
pub const RESUMABLE_WF: &str = r#"
name: resumable
mode: mapreduce
setup:
  - shell: |
      echo setup >> "$COUNTER_DIR/runs.txt"
      sleep "${SETUP_SLEEP:-0}"
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 4
  agent_template:
    - shell: |
        echo "${item.name} ${item.v}" >> "$COUNTER_DIR/runs.txt"
        if [ -f "$COUNTER_DIR/fail-${item.name}" ]; then echo "refusing ${item.name}: flag file present" >&2; exit 1; fi
        sleep "${AGENT_SLEEP:-0}"
        mkdir -p out && echo "${item.v}" > "out/${item.name}.txt"
        git add out && git commit -q -m "item ${item.name}"
reduce:
  - shell: |
      echo reduce >> "$COUNTER_DIR/runs.txt"
      sleep "${REDUCE_SLEEP:-0}"
      ls out | wc -l | tr -d ' ' > count.txt && git add count.txt && git commit -q -m reduce
"#;

/// Items `item-0..n`; every third has no id field (its key is then a hash of its content).
pub fn items(n: usize) -> String {
    let v: Vec<Value> = (0..n)
        .map(|i| {
            if i % 3 == 2 {
                serde_json::json!({"name": format!("item-{i}"), "v": i})
            } else {
                serde_json::json!({"id": format!("item-{i}"), "name": format!("item-{i}"), "v": i})
            }
        })
        .collect();
    Value::Array(v).to_string()
}

/// A repository holding RESUMABLE_WF and `n` items, and the counter directory.
pub struct Resumable {
    pub repo: Repo,
    pub counter: TempDir,
}

impl Resumable {
    pub fn new(db_url: Option<&str>, n: usize) -> Resumable {
        let repo = Repo::new(db_url);
        repo.write("wf.yml", RESUMABLE_WF);
        repo.write("items.json", &items(n));
        repo.commit_all("workflow");
        Resumable {
            repo,
            counter: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs the workflow with a policy that stops the map phase at the first failure, with
    /// `failing` failing and one agent at a time: the job stops in the map phase with `failing`
    /// failed (and in the DLQ) and the items after it pending. Returns the job id.
    pub fn run_stopping_at(&self, failing: &str) -> String {
        let wf = RESUMABLE_WF.replace(
            "mode: mapreduce",
            "mode: mapreduce\nerror_policy:\n  continue_on_failure: false",
        );
        self.repo.write("wf.yml", &wf);
        self.repo.commit_all("stop on failure");
        self.fail(failing);
        let out = self.prodigy(&["run", "wf.yml", "--max-parallel", "1"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        job_id(&out)
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("COUNTER_DIR", self.counter.path().display().to_string()),
            (
                "PRODIGY_SANDBOX_WRITE",
                format!(
                    "{}:{}",
                    self.counter.path().display(),
                    self.repo.out.display()
                ),
            ),
        ]
    }

    pub fn fail(&self, name: &str) {
        std::fs::write(self.counter.path().join(format!("fail-{name}")), "").unwrap();
    }

    pub fn unfail(&self, name: &str) {
        let _ = std::fs::remove_file(self.counter.path().join(format!("fail-{name}")));
    }

    /// Lines of runs.txt: one per agent execution (`name v`), plus `setup` and `reduce`.
    pub fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.counter.path().join("runs.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn runs_of(&self, name: &str) -> usize {
        self.runs()
            .iter()
            .filter(|l| l.split(' ').next() == Some(name))
            .count()
    }

    pub fn prodigy(&self, args: &[&str]) -> Output {
        let mut cmd = self.repo.command(args);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        cmd.output().expect("prodigy runs")
    }

    pub fn start(&self, args: &[&str], extra: &[(&str, &str)]) -> Running {
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        self.repo.start_with(args, &all)
    }

    /// Asserts the job branch holds every item's file exactly once and reduce's commit once.
    pub fn assert_each_effect_once(&self, job: &str, n: usize) {
        let branch = format!("prodigy/{job}");
        let log = self
            .repo
            .git(&["log", "--format=%s", &format!("main..{branch}")]);
        for i in 0..n {
            let name = format!("item-{i}");
            let commits = log.lines().filter(|l| *l == format!("item {name}")).count();
            assert_eq!(
                commits, 1,
                "{name} committed {commits} times on the job branch"
            );
            assert_eq!(
                self.repo.show(&format!("{branch}:out/{name}.txt")),
                i.to_string()
            );
        }
        let item_merges = log
            .lines()
            .filter(|l| l.starts_with("prodigy: merge item "))
            .count();
        assert_eq!(item_merges, n, "one merge per item");
        assert_eq!(
            log.lines().filter(|l| *l == "reduce").count(),
            1,
            "reduce committed once"
        );
        assert_eq!(
            self.repo.show(&format!("{branch}:count.txt")),
            n.to_string()
        );
    }
}

/// Runs a future to completion on a runtime of its own (the harness is synchronous).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// Writes a DLQ row straight into the database, as an older run or an interrupted retry could
/// have left it: for tests of what resume does with such state.
pub fn add_stale_dlq_row(url: &str, job: &str, key: &str, data: Value) {
    use sqlx::Connection;
    block_on(async {
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(
                "INSERT INTO dlq_items (job_id, key, data, first_failure, last_failure, failure_count,
                   error_class, signature, last_message, reprocessable, manual_review)
                 VALUES ($1::uuid, $2, $3::jsonb, now(), now(), 1, 'command_failed', 'stale', 'stale failure', TRUE, FALSE)",
            )
            .bind(job)
            .bind(key)
            .bind(data.to_string())
            .execute(&mut c)
            .await
            .unwrap();
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            let now = chrono::Utc::now().to_rfc3339();
            sqlx::query(
                "INSERT INTO dlq_items (job_id, key, data, first_failure, last_failure, failure_count,
                   error_class, signature, last_message, reprocessable, manual_review)
                 VALUES (?1, ?2, ?3, ?4, ?4, 1, 'command_failed', 'stale', 'stale failure', 1, 0)",
            )
            .bind(job)
            .bind(key)
            .bind(data.to_string())
            .bind(now)
            .execute(&mut c)
            .await
            .unwrap();
        }
    })
}

/// The key of the item at `position` of a job.
pub fn item_key_at(url: &str, job: &str, position: i64) -> String {
    use sqlx::{Connection, Row};
    block_on(async {
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query("SELECT key FROM work_items WHERE job_id = $1::uuid AND position = $2")
                .bind(job)
                .bind(position)
                .fetch_one(&mut c)
                .await
                .unwrap()
                .get::<String, _>(0)
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query("SELECT key FROM work_items WHERE job_id = ?1 AND position = ?2")
                .bind(job)
                .bind(position)
                .fetch_one(&mut c)
                .await
                .unwrap()
                .get::<String, _>(0)
        }
    })
}

/// For engines a test builds in process: these agents leave evidence and wait on gate files in
/// temporary directories outside their worktrees, so the sandbox lets them write there
/// (prodigy's state directory stays denied).
pub fn agents_writing_tmp() -> prodigy::engine::AgentPolicy {
    let mut agents = prodigy::engine::AgentPolicy::default();
    agents.sandbox.extra_write = vec![std::env::temp_dir()];
    agents
}
