//! The job page in a real browser: headless Chromium, driven over WebDriver by chromedriver
//! (plain HTTP, with the hyper client already in the tree), loads the page of a running job of
//! the real server (router + runner), sees it turn to done without a reload, opens an item's
//! log, and saves screenshots (running and done, at a phone's width) under
//! `target/screenshots/job-page-{running,done}.png`. Every page it opens logs no console
//! error and needs no sideways scrolling.
//!
//! Skips when `chromium` or `chromedriver` is not on PATH, unless `PRODIGY_REQUIRE_BROWSER=1`
//! (set by `.ci/run`, which installs both), which turns their absence into a failure.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use axum::body::Bytes;
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prodigy::types::JobStatus;
use serde_json::{Value, json};
use support::server::{Ctx, REPO, WAIT, items, job_id_of, job_links, wait_until};

/// A phone's width (CSS pixels), and tall enough for the screenshots to show the items.
const PHONE: (u32, u32) = (412, 1600);

/// `name`'s path on PATH, if any.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium and chromedriver, or None (after saying why) when the test is to be skipped.
fn browser() -> Option<(PathBuf, PathBuf)> {
    // Debian's name first, then other distributions' and Google's build.
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| on_path(n));
    let found = chromium.zip(on_path("chromedriver"));
    if found.is_none() {
        let msg = "chromium and chromedriver are not both on PATH \
                   (Debian: apt-get install chromium chromium-driver; .ci/run installs them)";
        if std::env::var("PRODIGY_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("PRODIGY_REQUIRE_BROWSER=1 but {msg}");
        }
        eprintln!("skipping the browser test: {msg}");
    }
    found
}

/// A running chromedriver; killed when dropped.
struct Driver {
    child: Child,
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(chromedriver: &Path) -> Driver {
        // A free port, released just before chromedriver binds it.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: Client::builder(TokioExecutor::new()).build_http(),
        };
        wait_until("chromedriver to be ready", WAIT, || async {
            let status = driver.try_send("GET", "/status", None).await.ok()?;
            (status["value"]["ready"] == true).then_some(())
        })
        .await;
        driver
    }

    async fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_slice(&bytes.to_bytes()).map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status}: {value}"));
        }
        Ok(value)
    }

    /// A WebDriver command's `value`; panics with the driver's answer on an error.
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_send(method, path, body).await {
            Ok(mut v) => v["value"].take(),
            Err(e) => panic!("WebDriver: {e}"),
        }
    }

    /// A headless Chromium session with a phone-sized window.
    async fn session(&self, chromium: &Path) -> Session<'_> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--hide-scrollbars",
                         format!("--window-size={},{}", PHONE.0, PHONE.1)],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let value = self.send("POST", "/session", Some(caps)).await;
        let id = value["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Session { driver: self, id }
    }
}

struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    async fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}/{what}", self.id);
        self.driver.send(method, &path, body).await
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    async fn js(&self, script: &str) -> Value {
        let body = json!({"script": script, "args": []});
        self.cmd("POST", "execute/sync", Some(body)).await
    }

    /// Saves a PNG screenshot at `path`.
    async fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 text"))
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The page laid out on a phone: no console errors so far, nothing wider than the screen.
    async fn assert_clean(&self, what: &str) {
        let logs = self
            .cmd("POST", "se/log", Some(json!({"type": "browser"})))
            .await;
        let errors: Vec<&Value> = logs
            .as_array()
            .expect("log entries")
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .collect();
        assert!(errors.is_empty(), "console errors on {what}: {errors:?}");
        let widths = self
            .js("return [document.documentElement.scrollWidth, window.innerWidth];")
            .await;
        assert!(
            widths[0].as_u64() <= widths[1].as_u64(),
            "{what} is wider than a phone's screen: {widths}"
        );
    }

    async fn close(self) {
        let path = format!("/session/{}", self.id);
        self.driver.send("DELETE", &path, None).await;
    }
}

/// Where screenshots go: `target/screenshots`.
fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_job_page_goes_live_to_done_in_a_browser_and_shows_an_items_log() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let db = support::db::sqlite_db();
    let ctx = Ctx::with_check_runs(db.url(), "a", 2).await;
    let list = items(&[("quick", "ok"), ("slow", "wait"), ("bad", "fail")]);
    let sha = ctx.push_pr(3, &[("items.json", &list)], false);
    ctx.open_pr(3, &sha).await;
    let link = job_links(&ctx.wait_for_comments(3, 1).await[0])[0].clone();
    let job = job_id_of(&link);
    // The gated item is running: the page will show a job in progress.
    wait_until("the slow item to start", WAIT, || async {
        let items = ctx.server.store.item_counts(job).await.ok()?;
        (items.running > 0 && items.succeeded > 0).then_some(())
    })
    .await;

    let driver = Driver::start(&chromedriver).await;
    let browser = driver.session(&chromium).await;
    browser
        .goto(&format!("http://{}{link}", ctx.server.addr))
        .await;
    let shown = browser
        .js("window.sameDocument = 'yes'; return document.getElementById('status').textContent;")
        .await;
    assert_eq!(shown, "running");
    let text = browser.js("return document.body.innerText;").await;
    assert!(
        text.as_str().unwrap().contains("attempt 1: running"),
        "the gated attempt is not shown running:\n{text}"
    );
    browser.assert_clean("the running job's page").await;
    let dir = screenshots();
    browser.screenshot(&dir.join("job-page-running.png")).await;

    // The job finishes; the page follows without being reloaded (the marker survives).
    ctx.open_gate();
    let state = wait_until("the page to show the job done", WAIT, || async {
        let s = browser
            .js("var m = document.getElementById('live'); \
                 return [m.dataset.status, window.sameDocument || null, \
                         document.getElementById('progress').value, \
                         document.getElementById('progress').max];")
            .await;
        (s[0] != "running" && s[0] != "pending").then_some(s)
    })
    .await;
    let stored = ctx.server.store.get_job(job).await.unwrap();
    assert!(stored.status != JobStatus::Running, "{stored:?}");
    assert_eq!(state[0], stored.status.as_str(), "{state}");
    assert_eq!(state[1], "yes", "the page was reloaded: {state}");
    assert_eq!(
        state[2], state[3],
        "the progress bar is full when done: {state}"
    );
    let text = browser.js("return document.body.innerText;").await;
    let text = text.as_str().unwrap();
    for want in [
        "item slow succeeded",
        "item bad failed",
        "Dead-letter queue",
        "widget bad exploded",
        "pull request",
        "check run",
    ] {
        assert!(text.contains(want), "no {want:?} on the page:\n{text}");
    }
    assert!(
        !text.contains("prodigy dlq"),
        "a CLI hint on the page:\n{text}"
    );
    browser.assert_clean("the finished job's page").await;
    browser.screenshot(&dir.join("job-page-done.png")).await;

    // An item's log, opened from the page with a click.
    let clicked = browser
        .js("var a = Array.from(document.querySelectorAll('a.log'))\
                 .find(function (a) { return a.href.indexOf('/items/slow/') >= 0; });\
             if (!a) { return false; } a.click(); return true;")
        .await;
    assert_eq!(clicked, true, "no log link for the slow item");
    let log = wait_until("the log page", WAIT, || async {
        let t = browser
            .js("var l = document.getElementById('log'); return l ? l.textContent : null;")
            .await;
        t.as_str().map(str::to_string)
    })
    .await;
    assert!(log.contains("slow waited"), "{log}");
    browser.assert_clean("the log page").await;
    browser.close().await;
    ctx.wait_idle().await;
    // The check run the page links to ended as the page said.
    let conclusion = ctx
        .gh
        .wait_for_check_runs(
            REPO,
            &sha,
            "the job's check run to complete",
            WAIT,
            |runs| runs.into_iter().find_map(|r| r.conclusion.clone()),
        )
        .await;
    assert_eq!(conclusion, "failure");
    ctx.finish().await;
}

/// The live endpoint and the log pages answer only with the page's token (404 otherwise, as for
/// an attempt without a log), through the real router; no browser needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_endpoint_and_logs_need_the_pages_token() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let sha = ctx.push_pr(4, &[("items.json", &items(&[("x#1", "ok")]))], false);
    ctx.open_pr(4, &sha).await;
    let link = job_links(&ctx.wait_for_comments(4, 1).await[0])[0].clone();
    let job = job_id_of(&link);
    ctx.wait_status(job, JobStatus::Succeeded).await;
    let token = link.split("token=").nth(1).unwrap();

    let (status, body) = ctx.get(&format!("/jobs/{job}/live?token={token}")).await;
    assert_eq!(status, 200, "{body}");
    let live: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(live["status"], "succeeded", "{live}");
    assert_eq!(live["live"], false, "{live}");
    let log = format!("/jobs/{job}/items/x%231/attempts/1/log?token={token}");
    assert!(live["html"].as_str().unwrap().contains(&log), "{live}");

    let (status, page) = ctx.get(&log).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("item x#1, attempt 1, log"), "{page}");
    let wrong = "0".repeat(64);
    for path in [
        format!("/jobs/{job}/live"),
        format!("/jobs/{job}/live?token={wrong}"),
        format!("/jobs/{job}/items/x%231/attempts/1/log"),
        format!("/jobs/{job}/items/x%231/attempts/1/log?token={wrong}"),
        format!("/jobs/{job}/items/x%231/attempts/2/log?token={token}"),
        format!("/jobs/{job}/items/nope/attempts/1/log?token={token}"),
    ] {
        assert_eq!(ctx.get(&path).await.0, 404, "{path}");
    }
    ctx.wait_idle().await;
    ctx.finish().await;
}
