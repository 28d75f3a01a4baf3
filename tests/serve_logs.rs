//! What `prodigy serve` logs when its stderr goes to a file, as an operator runs it (no
//! RUST_LOG, no NO_COLOR): info by default with the "listening" line, one line per request,
//! the job's start and end naming the job, repository, pull request and delivery; no ANSI
//! escapes; and with `--log-format json` every line is a JSON object.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use prodigy::server::WebhookSecret;
use secrecy::SecretString;
use support::serve_bin::serve_command;
use support::server::{Ctx, REPO, SECRET, WAIT, wait_until};

/// The binary, its stderr in `log`, stopped with SIGTERM on drop.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn start(ctx: &Ctx, dir: &Path, extra: &[&str]) -> Serve {
        std::fs::create_dir_all(dir).unwrap();
        let secret_file = dir.join("webhook-secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let log = dir.join("serve.log");
        let child = serve_command(ctx, &dir.join("state"), &secret_file)
            .args(extra)
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", dir.join("serve.db").display()),
            )
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env_remove("PRODIGY_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prodigy serve starts");
        Serve { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a log line contains `what`; returns that line.
    async fn line(&self, what: &str) -> String {
        wait_until(&format!("a log line with {what:?}"), WAIT, || async {
            self.log()
                .lines()
                .find(|l| l.contains(what))
                .map(str::to_string)
        })
        .await
    }

    /// The address from the listening line (text: `addr=...`; json: `"addr":"..."`).
    async fn addr(&self) -> String {
        let line = self.line("prodigy serve listening").await;
        let after = line
            .split("addr=")
            .nth(1)
            .or_else(|| line.split("\"addr\":\"").nth(1))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        after.split(['"', ' ']).next().unwrap().to_string()
    }

    fn get(addr: &str, path: &str) -> String {
        Serve::http(
            addr,
            &format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
            b"",
        )
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
        Serve::http(addr, &head, body)
    }

    fn http(addr: &str, head: &str, body: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer.lines().next().unwrap_or_default().to_string()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: signals only the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_info_without_ansi_and_json_on_request() {
    let unused = tempfile::tempdir().unwrap();
    let ctx = Ctx::web_only(
        &format!("sqlite://{}", unused.path().join("unused.db").display()),
        "unused",
    )
    .await;

    // Text: the listening line, a request line, a job's start and end with their fields.
    let text = Serve::start(&ctx, &ctx.tmp.path().join("text"), &[]);
    let addr = text.addr().await;
    assert!(Serve::get(&addr, "/healthz?token=hidden").contains("200"));
    let request = text.line("path=/healthz").await;
    assert!(request.contains("status=200"), "{request}");
    let sha = ctx.push_pr(1, &[(".prodigy/fix.yml", "- shell: echo hi\n")], false);
    let answer = Serve::deliver(
        &addr,
        "pull_request",
        "delivery-77",
        &ctx.pr_payload(1, &sha, "opened", false),
    );
    assert!(answer.contains("202"), "{answer}");
    let finished = text.line("job finished").await;
    for field in [
        "delivery=delivery-77",
        &format!("repo={REPO}"),
        "pr=1",
        "job=0",
    ] {
        assert!(finished.contains(field), "{field} missing in {finished:?}");
    }
    let started = text.line("job started").await;
    assert!(started.contains("delivery=delivery-77"), "{started}");
    let log = text.log();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log}"
    );
    assert!(!log.contains("hidden"), "the query reached the log:\n{log}");
    assert!(
        !log.to_lowercase().contains("select "),
        "SQL at info level:\n{log}"
    );
    drop(text);

    // JSON: every line is an object; the listening and request lines carry their fields.
    let json = Serve::start(
        &ctx,
        &ctx.tmp.path().join("json"),
        &["--log-format", "json"],
    );
    let addr = json.addr().await;
    assert!(Serve::get(&addr, "/healthz").contains("200"));
    json.line("/healthz").await;
    let lines: Vec<serde_json::Value> = json
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "prodigy serve listening"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["path"] == "/healthz" && l["fields"]["status"] == 200),
        "{lines:#?}"
    );
    drop(json);

    // --metrics-listen: /metrics there (Prometheus text), and not on the main listener.
    let own = Serve::start(
        &ctx,
        &ctx.tmp.path().join("metrics"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let addr = own.addr().await;
    let line = own.line("metrics listening").await;
    let metrics_addr = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(
        Serve::get(metrics_addr, "/metrics").contains("200"),
        "{line}"
    );
    assert!(Serve::get(&addr, "/metrics").contains("404"));
}
