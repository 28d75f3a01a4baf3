//! Agents of the real `prodigy serve` binary never see its secrets. The server starts as an
//! operator starts it: the App key and the webhook secret in files, `DATABASE_URL` and a
//! database password in its environment. A pull request's agent writes out its environment,
//! `/proc/$PPID/environ` and `/proc/<server pid>/environ`, tries the key file, the secret file
//! and the database, lists its worktree's parent and writes outside its worktree: none of the
//! secrets appears in anything it saved or the server wrote, the reads and the write fail in the
//! sandbox, and the job's check run reports the agent's failure as any other.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use prodigy::engine::sandbox::{Support, support};
use prodigy::server::WebhookSecret;
use secrecy::SecretString;
use support::server::{Ctx, REPO, SECRET, WAIT};

/// In the server's environment only; no agent may find it.
const DB_PASSWORD: &str = "serve-binary-db-password-9";

const WORKFLOW: &str = r#"name: fix
mode: mapreduce
map:
  json_path: "$[*]"
  input: items.json
  agent_template:
    - shell: "PRODIGY_PID=$PPID sh probe.sh"
"#;

/// Saves what it finds in its worktree (and prints it to its log), then fails.
fn probe(server_pid: u32, key: &Path, secret: &Path, db: &Path, outside: &Path) -> String {
    format!(
        r#"{{
echo "== env"; env
echo "== ppid"; {{ cat /proc/$PRODIGY_PID/environ 2>/dev/null || echo "ppid environ: not readable"; }} | tr '\0' '\n'
echo "== server"; {{ cat /proc/{server_pid}/environ 2>/dev/null || echo "server environ: not readable"; }} | tr '\0' '\n'
echo "== key"; cat "{key}" 2>/dev/null || echo "key: not readable"
echo "== secret"; cat "{secret}" 2>/dev/null || echo "secret: not readable"
echo "== db"; cat "{db}" >/dev/null 2>&1 && echo "db: read" || echo "db: not readable"
echo "== parent"; ls "$(dirname "$PWD")" 2>/dev/null || echo "parent: not listable"
echo "== outside"; touch "{outside}" 2>/dev/null || echo "outside: not writable"
}} > evidence.txt
cat evidence.txt
git add evidence.txt && git commit -q -m evidence
exit 5
"#,
        key = key.display(),
        secret = secret.display(),
        db = db.display(),
        outside = outside.display(),
    )
}

/// The running binary, its stderr collected, stopped with SIGTERM on drop.
struct Server {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(ctx: &Ctx, state: &Path, db: &Path, secret_file: &Path) -> Server {
        let mut child = support::serve_bin::serve_command(ctx, state, secret_file)
            .env("DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("PGPASSWORD", DB_PASSWORD)
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
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
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
        Server {
            child,
            addr,
            stderr,
        }
    }

    /// Posts a signed delivery over HTTP; returns the status line.
    fn deliver(&self, event: &str, body: &[u8]) -> String {
        let secret = WebhookSecret::new(SecretString::from(SECRET.to_string())).unwrap();
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        let head = format!(
            "POST /webhook HTTP/1.1\r\nhost: {}\r\nx-github-event: {event}\r\n\
             x-github-delivery: binary-{}\r\nx-hub-signature-256: {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.addr,
            std::process::id(),
            secret.sign(body),
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer.lines().next().unwrap_or_default().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signals only the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, as text.
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&all_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_binarys_agents_see_no_secret_and_cannot_leave_their_worktree() {
    // The world (remote, fake GitHub, key file); its in-process server only queues, on a
    // database of its own, and is never sent anything.
    let unused = tempfile::tempdir().unwrap();
    let ctx = Ctx::web_only(
        &format!("sqlite://{}", unused.path().join("unused.db").display()),
        "unused",
    )
    .await;
    let tmp = ctx.tmp.path();
    let secret_file = tmp.join("webhook-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let db_dir = tmp.join("db");
    std::fs::create_dir_all(&db_dir).unwrap();
    let db = db_dir.join("serve.db");
    let state = tmp.join("serve-state");
    let server = Server::start(&ctx, &state, &db, &secret_file);

    let outside: PathBuf = tmp.join("escaped");
    let key = tmp.join("app-key.pem");
    let sha = ctx.push_pr(
        1,
        &[
            (".prodigy/fix.yml", WORKFLOW),
            (
                "probe.sh",
                &probe(server.child.id(), &key, &secret_file, &db, &outside),
            ),
            ("items.json", r#"[{"id": "p"}]"#),
        ],
        false,
    );
    let status = server.deliver("pull_request", &ctx.pr_payload(1, &sha, "opened", false));
    assert!(status.contains("202"), "{status}");

    // The job reports the agent's failure as any other: its check run fails.
    let run = ctx
        .gh
        .wait_for_check_runs(
            REPO,
            &sha,
            "the job's check run to complete",
            WAIT,
            |runs| runs.into_iter().find(|r| r.status == "completed"),
        )
        .await;
    assert_eq!(run.conclusion.as_deref(), Some("failure"), "{run:#?}");
    // The pull request's one reply names the job it started.
    let reply = ctx.wait_for_comments(1, 1).await.remove(0);
    assert!(reply.contains("started job"), "{reply}");
    let logs = all_text(&state.join("logs"));
    assert!(logs.contains("exit code 5"), "{logs}");
    // Its commit in the sandbox needed no lock it could not take.
    assert!(!logs.contains("packed-refs.lock"), "{logs}");

    let evidence = logs
        .split("== env")
        .nth(1)
        .unwrap_or_else(|| panic!("no evidence in the logs:\n{logs}"));
    let env = evidence.split("== ppid").next().unwrap();
    assert!(env.contains("TMPDIR=/"), "{env}");
    for absent in [
        "DATABASE_URL",
        "PGPASSWORD",
        "PRODIGY_PRIVATE_KEY",
        "PRODIGY_WEBHOOK_SECRET",
        "CARGO",
    ] {
        assert!(!env.contains(absent), "{absent} reached the agent:\n{env}");
    }
    for denial in ["ppid environ: not readable", "server environ: not readable"] {
        assert!(evidence.contains(denial), "{denial}:\n{evidence}");
    }
    if matches!(support(), Support::Available { .. }) {
        for denial in [
            "key: not readable",
            "secret: not readable",
            "db: not readable",
            "parent: not listable",
            "outside: not writable",
        ] {
            assert!(evidence.contains(denial), "{denial}:\n{evidence}");
        }
        assert!(!outside.exists(), "the agent wrote outside its worktree");
    }

    // Nothing the agent saved (its log, its worktree, the state directory) nor what the server
    // logged or reported holds a secret.
    let everything = format!(
        "{}\n{}\n{:?}",
        all_text(&state),
        server.stderr.lock().unwrap(),
        ctx.gh.check_runs_for(REPO, &sha)
    );
    for (name, value) in [
        ("the webhook secret", SECRET),
        ("the database password", DB_PASSWORD),
        ("the App key", "PRIVATE KEY"),
    ] {
        assert!(!everything.contains(value), "{name} leaked");
    }
    drop(server);
    ctx.finish().await;
}
