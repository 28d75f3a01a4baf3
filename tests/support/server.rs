//! A world for `prodigy serve` tests: the fake GitHub, a bare git repository as the remote
//! (served through `--git-base-url file://...`), a working clone to push pull requests from,
//! the stub AI CLI, and the real server (router + runner) on a given database.
//!
//! Tests read like a story: `ctx.push_pr(..)`, `ctx.open_pr(..)`, `ctx.comment(..)`, then wait
//! on the world (never a fixed sleep) and read the bot's comments.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use prodigy::server::{LogReporters, RunningServer, ServeConfig, WebhookSecret};
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

use super::fake_github::FakeGitHub;
use super::git::git;
use super::webhook::{fixture_payload, signed_request};

pub const REPO: &str = "octo/widgets";
pub const INSTALLATION: u64 = 77;
pub const SECRET: &str = "server test secret";
pub const SLUG: &str = "prodigy-test";
/// Has write permission.
pub const MAINTAINER: &str = "maintainer";
/// Has read permission only.
pub const STRANGER: &str = "stranger";

/// A stub `claude`: prints what it was asked and succeeds.
const CLAUDE_STUB: &str = "#!/bin/sh\necho \"stub claude did: $*\"\n";

/// The agent: `ok` commits a file, `fail` fails, `wait` blocks until the gate file exists,
/// `gated` waits for it and then commits a file.
fn agent_script(gate: &Path) -> String {
    format!(
        r#"#!/bin/sh
kind="$1"; id="$2"
case "$kind" in
  ok) echo "$id" > "out-$id.txt" && git add "out-$id.txt" && git commit -q -m "item $id" ;;
  fail) echo "error: widget $id exploded" >&2; exit 3 ;;
  wait) while [ ! -f "{gate}" ]; do sleep 0.05; done; echo "$id waited" ;;
  gated) while [ ! -f "{gate}" ]; do sleep 0.05; done
         echo "$id" > "out-$id.txt" && git add "out-$id.txt" && git commit -q -m "item $id" ;;
esac
"#,
        gate = gate.display()
    )
}

pub const WORKFLOW: &str = r#"name: fix
mode: mapreduce
setup:
  - shell: "echo setup"
map:
  input: items.json
  json_path: "$[*]"
  max_parallel: 2
  agent_template:
    - claude: "/fix ${item.id}"
    - shell: "sh agent.sh ${item.kind} ${item.id}"
reduce:
  - shell: "echo reduced"
"#;

pub const CONFIG: &str = "workflows:\n  - .prodigy/fix.yml\n";

/// `[{"id":..,"kind":..}]` for the map phase.
pub fn items(list: &[(&str, &str)]) -> String {
    let v: Vec<Value> = list
        .iter()
        .map(|(id, kind)| json!({"id": id, "kind": kind}))
        .collect();
    serde_json::to_string(&v).unwrap()
}

pub struct Ctx {
    pub gh: FakeGitHub,
    pub server: RunningServer,
    pub tmp: TempDir,
    pub remote: PathBuf,
    pub work: PathBuf,
    pub gate: PathBuf,
    pub claude: PathBuf,
    pub db_url: String,
    /// The server's settings, for every instance this world starts.
    pub options: ServerOptions,
    secret: WebhookSecret,
    deliveries: AtomicU64,
    comment_ids: AtomicU64,
}

/// What `prodigy serve`'s flags would say, for the test server's instances.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Jobs report to check runs (`start_with_check_runs`) instead of the log.
    pub check_runs: bool,
    /// The instance claims and runs queued work (`--no-runner` turns it off).
    pub runner: bool,
    /// Directories agents may read besides the defaults (the real AI CLI's package).
    pub agent_read: Vec<PathBuf>,
    /// What the operator passes to agents (`serve --pass-env`).
    pub pass_env: Vec<String>,
    /// `--repo-daily-cost-usd`.
    pub daily_cap: Option<f64>,
    /// `--workers`: replicas work on each other's jobs.
    pub workers: bool,
    /// `--request-lease-secs`, `--request-attempts`, `--request-backoff-ms`.
    pub request_lease_secs: u64,
    pub request_attempts: u32,
    pub request_backoff_ms: u64,
    /// `--redeliver-every`: off ("0") unless a test is about missed deliveries.
    pub redeliver_every: String,
    /// `--listen`: any free port on loopback unless given.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            check_runs: false,
            runner: true,
            agent_read: Vec::new(),
            pass_env: Vec::new(),
            daily_cap: None,
            workers: false,
            request_lease_secs: 60,
            request_attempts: 8,
            request_backoff_ms: 30_000,
            redeliver_every: "0".into(),
            listen: None,
        }
    }
}

/// Polls `f` every 25 ms until it yields, for at most `timeout`; panics naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(90);

impl Ctx {
    /// The world with one server instance on `db_url`, main holding the workflow and config.
    pub async fn new(db_url: &str) -> Ctx {
        Ctx::with_instance(db_url, "a", 2).await
    }

    pub async fn with_instance(db_url: &str, instance: &str, max_jobs: usize) -> Ctx {
        Ctx::build(db_url, instance, max_jobs, ServerOptions::default()).await
    }

    /// A world whose server reports each job run to a check run, as `prodigy serve` does.
    pub async fn with_check_runs(db_url: &str, instance: &str, max_jobs: usize) -> Ctx {
        let options = ServerOptions {
            check_runs: true,
            ..ServerOptions::default()
        };
        Ctx::build(db_url, instance, max_jobs, options).await
    }

    /// A world whose server caps what a repository's agents cost per UTC day
    /// (`--repo-daily-cost-usd`).
    pub async fn with_daily_cap(db_url: &str, cap_usd: f64) -> Ctx {
        let options = ServerOptions {
            daily_cap: Some(cap_usd),
            ..ServerOptions::default()
        };
        Ctx::build(db_url, "a", 2, options).await
    }

    /// A world whose replicas work on each other's jobs (`serve --workers`); start the others
    /// with [`Ctx::another_instance`].
    pub async fn with_workers(db_url: &str, instance: &str, max_jobs: usize) -> Ctx {
        let options = ServerOptions {
            workers: true,
            ..ServerOptions::default()
        };
        Ctx::build(db_url, instance, max_jobs, options).await
    }

    /// A world whose server runs with `options` (the request queue's policy, ...).
    pub async fn with_options(
        db_url: &str,
        instance: &str,
        max_jobs: usize,
        options: ServerOptions,
    ) -> Ctx {
        Ctx::build(db_url, instance, max_jobs, options).await
    }

    /// A world whose server only queues work (`--no-runner`); see [`Ctx::another_instance`].
    pub async fn web_only(db_url: &str, instance: &str) -> Ctx {
        let options = ServerOptions {
            runner: false,
            ..ServerOptions::default()
        };
        Ctx::build(db_url, instance, 1, options).await
    }

    /// A world reporting to check runs whose agents run the real AI CLI at `claude` with the
    /// environment `env(home)` gives for a CLI home where agents may write (see
    /// tests/support/fake_anthropic.rs `cli_env`): `Ctx::claude` becomes a wrapper that sets it
    /// (the server builds its agents' environment from an allow-list) and runs the CLI, and
    /// agents may read the CLI's package.
    pub async fn with_real_claude(
        db_url: &str,
        claude: &Path,
        env: impl FnOnce(&Path) -> Vec<(String, String)>,
    ) -> Ctx {
        let package = claude
            .canonicalize()
            .expect("the AI CLI resolves")
            .parent()
            .unwrap()
            .to_path_buf();
        let options = ServerOptions {
            check_runs: true,
            agent_read: vec![package],
            ..ServerOptions::default()
        };
        let ctx = Ctx::build(db_url, "a", 2, options).await;
        let home = ctx.tmp.path().join("agent/cli-home");
        std::fs::create_dir_all(&home).unwrap();
        let mut script = String::from("#!/bin/sh\n");
        for (k, v) in env(&home) {
            script.push_str(&format!("export {k}='{v}'\n"));
        }
        script.push_str(&format!("exec '{}' \"$@\"\n", claude.display()));
        std::fs::write(&ctx.claude, script).unwrap();
        ctx
    }

    /// A world whose operator passes the variables `pass_env` to agents (`serve --pass-env`).
    pub async fn passing_env(db_url: &str, pass_env: &[&str]) -> Ctx {
        let options = ServerOptions {
            pass_env: pass_env.iter().map(|n| n.to_string()).collect(),
            ..ServerOptions::default()
        };
        Ctx::build(db_url, "a", 2, options).await
    }

    async fn build(db_url: &str, instance: &str, max_jobs: usize, options: ServerOptions) -> Ctx {
        let tmp = tempfile::tempdir().unwrap();
        let remote = tmp.path().join("remotes").join(format!("{REPO}.git"));
        std::fs::create_dir_all(&remote).unwrap();
        git(&remote, &["init", "-q", "--bare", "-b", "main"]);
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["config", "user.email", "dev@example.com"]);
        git(&work, &["config", "user.name", "Dev"]);
        git(
            &work,
            &["remote", "add", "origin", remote.to_str().unwrap()],
        );
        let gate = tmp.path().join("gate");
        let claude = tmp.path().join("bin/claude");
        std::fs::create_dir_all(claude.parent().unwrap()).unwrap();
        std::fs::write(&claude, CLAUDE_STUB).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
        let write = |rel: &str, text: &str| {
            let p = work.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("README.md", "widgets\n");
        write("agent.sh", &agent_script(&gate));
        write(".prodigy/fix.yml", WORKFLOW);
        write(".prodigy/config.yml", CONFIG);
        write("items.json", &items(&[("a", "ok"), ("b", "ok")]));
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "initial"]);
        git(&work, &["push", "-q", "origin", "main"]);

        let gh = FakeGitHub::start(INSTALLATION, &[REPO]).await;
        gh.set_permission(REPO, MAINTAINER, "write");
        gh.set_permission(REPO, STRANGER, "read");
        let secret = WebhookSecret::new(SecretString::from(SECRET.to_string())).unwrap();
        let mut ctx = Ctx {
            server: start_server(&tmp, &gh, db_url, instance, max_jobs, &claude, &options).await,
            options,
            gh,
            remote,
            work,
            gate,
            claude,
            db_url: db_url.to_string(),
            tmp,
            secret,
            deliveries: AtomicU64::new(0),
            comment_ids: AtomicU64::new(5000),
        };
        ctx.db_url = db_url.to_string();
        ctx
    }

    /// Another server instance, with a runner, on the same database (own state and checkout
    /// directories).
    pub async fn another_instance(&self, instance: &str, max_jobs: usize) -> RunningServer {
        start_server(
            &self.tmp,
            &self.gh,
            &self.db_url,
            instance,
            max_jobs,
            &self.claude,
            &ServerOptions {
                runner: true,
                ..self.options.clone()
            },
        )
        .await
    }

    /// Another server instance on the same database with these options (own state and
    /// checkout directories).
    pub async fn start_instance(
        &self,
        instance: &str,
        max_jobs: usize,
        options: &ServerOptions,
    ) -> RunningServer {
        start_server(
            &self.tmp,
            &self.gh,
            &self.db_url,
            instance,
            max_jobs,
            &self.claude,
            options,
        )
        .await
    }

    /// Stops the server (its running jobs stop, resumable) and starts it again with the same
    /// name, directories and database, as a deploy does.
    pub async fn restart(&mut self, instance: &str, max_jobs: usize) {
        self.server.stop().await;
        self.server = self.another_instance(instance, max_jobs).await;
    }

    /// The finish step: every request GitHub got was valid, the test read every comment and
    /// check-run update the bot posted, and the server stops cleanly.
    pub async fn finish(mut self) {
        self.gh.assert_no_violations();
        self.gh.assert_all_seen();
        self.server.stop().await;
    }

    pub fn open_gate(&self) {
        std::fs::write(&self.gate, "go").unwrap();
    }

    /// Commits `files` on a branch for PR `pr` (based on main), publishes it as
    /// `refs/pull/<pr>/head` on the remote and in the fake GitHub; returns the head SHA.
    pub fn push_pr(&self, pr: u64, files: &[(&str, &str)], fork: bool) -> String {
        let branch = format!("pr-{pr}");
        let exists = Command::new("git")
            .args(["rev-parse", "--verify", "-q", &branch])
            .current_dir(&self.work)
            .output()
            .unwrap()
            .status
            .success();
        if exists {
            git(&self.work, &["checkout", "-q", &branch]);
        } else {
            git(&self.work, &["checkout", "-q", "-b", &branch, "main"]);
        }
        for (rel, text) in files {
            let p = self.work.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", &format!("pr {pr}")],
        );
        let sha = git(&self.work, &["rev-parse", "HEAD"]);
        git(
            &self.work,
            &[
                "push",
                "-q",
                "-f",
                "origin",
                &format!("HEAD:refs/pull/{pr}/head"),
            ],
        );
        git(&self.work, &["checkout", "-q", "main"]);
        let head_repo = if fork { "someone/widgets" } else { REPO };
        self.gh.add_pr(REPO, pr, &sha, Some(head_repo));
        sha
    }

    fn next_delivery(&self) -> String {
        let n = self.deliveries.fetch_add(1, Ordering::SeqCst);
        format!("delivery-{}-{n}", std::process::id())
    }

    pub fn pr_payload(&self, pr: u64, sha: &str, action: &str, fork: bool) -> Vec<u8> {
        let mut v: Value =
            serde_json::from_slice(&fixture_payload("pull_request/opened.payload.json")).unwrap();
        v["action"] = json!(action);
        v["number"] = json!(pr);
        v["pull_request"]["number"] = json!(pr);
        v["pull_request"]["head"]["sha"] = json!(sha);
        v["pull_request"]["head"]["ref"] = json!(format!("pr-{pr}"));
        let head_repo = if fork { "someone/widgets" } else { REPO };
        v["pull_request"]["head"]["repo"]["full_name"] = json!(head_repo);
        v["pull_request"]["base"]["repo"]["full_name"] = json!(REPO);
        v["repository"]["full_name"] = json!(REPO);
        v["installation"]["id"] = json!(INSTALLATION);
        serde_json::to_vec(&v).unwrap()
    }

    /// A comment payload; returns (body bytes, comment id).
    pub fn comment_payload(&self, pr: u64, user: &str, text: &str) -> (Vec<u8>, u64) {
        let id = self.comment_ids.fetch_add(1, Ordering::SeqCst);
        let mut v: Value = serde_json::from_slice(&fixture_payload(
            "issue_comment/created.with-installation.payload.json",
        ))
        .unwrap();
        v["issue"]["number"] = json!(pr);
        v["issue"]["pull_request"] =
            json!({ "url": format!("https://api.github.com/repos/{REPO}/pulls/{pr}") });
        v["comment"]["id"] = json!(id);
        v["comment"]["body"] = json!(text);
        v["comment"]["user"]["login"] = json!(user);
        v["comment"]["user"]["type"] = json!("User");
        v["repository"]["full_name"] = json!(REPO);
        v["installation"]["id"] = json!(INSTALLATION);
        (serde_json::to_vec(&v).unwrap(), id)
    }

    /// Sends a signed delivery through the server's router.
    pub async fn deliver(&self, event: &str, body: Vec<u8>) -> (StatusCode, String) {
        let id = self.next_delivery();
        self.deliver_as(&self.server, event, &id, body).await
    }

    pub async fn deliver_as(
        &self,
        server: &RunningServer,
        event: &str,
        delivery: &str,
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let req = signed_request("/webhook", event, delivery, body, &self.secret);
        send(server, req).await
    }

    pub async fn open_pr(&self, pr: u64, sha: &str) {
        let (status, text) = self
            .deliver("pull_request", self.pr_payload(pr, sha, "opened", false))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    }

    /// Posts a comment as `user`; returns its id.
    pub async fn comment(&self, pr: u64, user: &str, text: &str) -> u64 {
        let (body, id) = self.comment_payload(pr, user, text);
        let (status, answer) = self.deliver("issue_comment", body).await;
        assert!(status.is_success(), "{status}: {answer}");
        id
    }

    /// Waits until the bot has posted `n` comments on `pr`; returns them all.
    pub async fn wait_for_comments(&self, pr: u64, n: usize) -> Vec<String> {
        let what = format!("{n} bot comments on #{pr}");
        self.gh
            .wait_for(&what, WAIT, |world| {
                (world.comments_on(REPO, pr).len() >= n).then_some(())
            })
            .await;
        self.gh.comments_on(REPO, pr)
    }

    /// Waits until `job` has status `want`. On a time-out the panic tells what the job did
    /// instead (its status, error and last events), so a flaky run says why it hung.
    pub async fn wait_status(&self, job: prodigy::types::JobId, want: prodigy::types::JobStatus) {
        let store = &self.server.store;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(j) = store.get_job(job).await
                && j.status == want
            {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let job_now = store.get_job(job).await;
                let events = store.events(job, 0, 10_000).await.unwrap_or_default();
                let tail: Vec<String> = events
                    .iter()
                    .rev()
                    .take(15)
                    .rev()
                    .map(|e| format!("  {} {} {}", e.seq, e.kind, e.data))
                    .collect();
                let (status, error) = match &job_now {
                    Ok(j) => (j.status.to_string(), j.error.clone().unwrap_or_default()),
                    Err(e) => ("unreadable".into(), e.to_string()),
                };
                panic!(
                    "timed out after {WAIT:?} waiting for job {job} to be {want}: it is {status} \
                     (error: {error:?}); its last events:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every request in the queue is done or failed (the runner is idle).
    pub async fn wait_idle(&self) {
        use prodigy::store::RequestStatus;
        let store = &self.server.store;
        wait_until("the request queue to drain", WAIT, || async {
            let queued = store
                .requests_with_status(RequestStatus::Queued)
                .await
                .ok()?;
            let claimed = store
                .requests_with_status(RequestStatus::Claimed)
                .await
                .ok()?;
            (queued.is_empty() && claimed.is_empty()).then_some(())
        })
        .await
    }

    /// GET a path (with query) through the router.
    pub async fn get(&self, path_and_query: &str) -> (StatusCode, String) {
        let req = Request::get(path_and_query).body(Body::empty()).unwrap();
        send(&self.server, req).await
    }
}

pub async fn send(server: &RunningServer, req: Request<Body>) -> (StatusCode, String) {
    let resp = server.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The path and query of a job link the bot posted (`http://host/jobs/<id>?token=...`).
pub fn job_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("/jobs/") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c == ')' || c.is_whitespace())
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

pub fn job_id_of(link: &str) -> prodigy::types::JobId {
    let id = link.trim_start_matches("/jobs/").split('?').next().unwrap();
    id.parse().unwrap()
}

async fn start_server(
    tmp: &TempDir,
    gh: &FakeGitHub,
    db_url: &str,
    instance: &str,
    max_jobs: usize,
    claude: &Path,
    options: &ServerOptions,
) -> RunningServer {
    let key = tmp.path().join("app-key.pem");
    std::fs::write(
        &key,
        secrecy::ExposeSecret::expose_secret(&super::fake_github::test_private_key()),
    )
    .unwrap();
    let config = ServeConfig {
        app_id: super::fake_github::TEST_APP_ID,
        private_key: key.display().to_string(),
        webhook_secret: Some(SECRET.to_string()),
        webhook_secret_file: None,
        listen: options
            .listen
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
        metrics_listen: None,
        public_url: Some("https://prodigy.test".into()),
        github_api_url: gh.base_url(),
        git_base_url: format!("file://{}", tmp.path().join("remotes").display()),
        state_dir: tmp.path().join(format!("state-{instance}")),
        checkout_dir: None,
        max_jobs,
        webhook_path: "/webhook".into(),
        app_slug: Some(SLUG.into()),
        instance: Some(instance.into()),
        allow_repos: vec![REPO.into()],
        poll_ms: 50,
        no_runner: !options.runner,
        caps: Default::default(),
        repo_daily_cost_usd: options.daily_cap,
        workers: options.workers,
        worker_max_parallel: 2,
        request_lease_secs: options.request_lease_secs,
        request_attempts: options.request_attempts,
        request_backoff_ms: options.request_backoff_ms,
        redeliver_every: options.redeliver_every.clone(),
        redeliver_max: 50,
    };
    let mut settings = config
        .settings(Some(db_url), &claude.display().to_string())
        .expect("test settings are valid");
    // Agents of these tests record their runs in `<tmp>/agent` (outside their worktrees): the
    // one place besides their own that the sandbox lets them write.
    let shared = tmp.path().join("agent");
    std::fs::create_dir_all(&shared).unwrap();
    settings.agents.sandbox.extra_write = vec![shared];
    settings.agents.sandbox.extra_read = options.agent_read.clone();
    settings.agents.env.pass = options.pass_env.clone();
    settings.github_retry = super::fake_github::test_retry_policy();
    let started = if options.check_runs {
        prodigy::server::start_with_check_runs(settings).await
    } else {
        prodigy::server::start(settings, Arc::new(LogReporters)).await
    };
    started.expect("the server starts")
}
