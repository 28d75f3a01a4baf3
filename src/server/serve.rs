//! `prodigy serve`: wires the store, the GitHub client, the router and the runner together.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Silent};
use crate::github::{AppAuth, GitHubClient};
use crate::store::{Store, redact_url};

use super::app::{AppState, router};
use super::config::{ServeConfig, Settings};
use super::pages::PageLinks;
use super::redeliver::Redeliverer;
use super::reporting::{CheckRunReporters, ReporterFactory};
use super::repos::RepoCache;
use super::runner::{Runner, RunnerParts};

/// A started server: its address, its store and its router (tests send requests to either).
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `--metrics-listen` gave it a listener of its own.
    pub metrics_addr: Option<SocketAddr>,
    pub store: Store,
    pub router: Router,
    pub links: PageLinks,
    pub github: GitHubClient,
    stop: CancellationToken,
    jobs: CancellationToken,
    job_slots: Arc<tokio::sync::Semaphore>,
    max_jobs: usize,
    http: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    redeliver: Option<tokio::task::JoinHandle<()>>,
    metrics_http: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    runner: Option<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting webhooks and claiming requests, stops running jobs (they are resumed by
    /// the next start) and waits for both loops to end.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        self.jobs.cancel();
        if let Some(runner) = self.runner.take() {
            let _ = runner.await;
        }
        if let Some(redeliver) = self.redeliver.take() {
            let _ = redeliver.await;
        }
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
        if let Some(http) = self.metrics_http.take() {
            let _ = http.await;
        }
        self.stop_jobs_and_wait().await;
    }

    /// Every job task gives its slot back once it has stopped and recorded how: then all of
    /// them are free. Bounded, so a wedged job cannot hang a shutdown forever.
    async fn stop_jobs_and_wait(&self) {
        let all = u32::try_from(self.max_jobs).unwrap_or(u32::MAX);
        let wait = self.job_slots.acquire_many(all);
        if tokio::time::timeout(std::time::Duration::from_secs(60), wait)
            .await
            .is_err()
        {
            tracing::warn!("jobs did not stop within 60 s; leaving them");
        }
    }

    /// Waits until the HTTP server ends (it ends when `stop` is called or on an I/O error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let Some(http) = self.http.take() else {
            return Ok(());
        };
        http.await
            .context("the HTTP server task failed")?
            .context("the HTTP server stopped")
    }
}

/// `prodigy serve`: runs until SIGINT or SIGTERM.
pub async fn serve(
    config: &ServeConfig,
    database_url: Option<&str>,
    claude_bin: &str,
    agents: crate::engine::AgentPolicy,
) -> anyhow::Result<()> {
    let mut settings = config.settings(database_url, claude_bin)?;
    settings.agents = agents;
    // The key and the secret are read; from here on no process of the same user may read this
    // one's memory or environment (/proc/<pid>/environ, /proc/<pid>/mem, ptrace).
    crate::engine::sandbox::make_undumpable()?;
    // Every job reports to a check run on its pull request's head commit, as the App.
    let mut server = start_with_check_runs(settings).await?;
    let stop = server.stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: running jobs stop and are resumed at the next start");
        stop.cancel();
    });
    let result = server.wait().await;
    server.stop().await;
    result
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending().await,
            }
        } => {},
    }
}

/// Opens the database, binds the listener and starts the HTTP server and the runner.
/// `reporters` builds each job's progress reporter (e.g. [`super::LogReporters`]).
pub async fn start(
    settings: Settings,
    reporters: Arc<dyn ReporterFactory>,
) -> anyhow::Result<RunningServer> {
    start_with(settings, move |_, _| reporters).await
}

/// [`start`] with a check run per job run ([`CheckRunReporters`]), what `prodigy serve` does.
pub async fn start_with_check_runs(settings: Settings) -> anyhow::Result<RunningServer> {
    start_with(settings, |store, github| {
        Arc::new(CheckRunReporters::new(github.clone(), store.clone()))
    })
    .await
}

/// [`start`] with the reporter factory built from the server's store and GitHub client.
pub async fn start_with(
    settings: Settings,
    reporters: impl FnOnce(&Store, &GitHubClient) -> Arc<dyn ReporterFactory>,
) -> anyhow::Result<RunningServer> {
    let store = Store::open(&settings.database_url).await.with_context(|| {
        format!(
            "cannot open the database {}",
            redact_url(&settings.database_url)
        )
    })?;
    if settings.allow_repos.is_empty() {
        tracing::warn!(
            "the allow-list is empty: prodigy acts on no repository. Name them with --allow-repos owner/name,..."
        );
        eprintln!(
            "prodigy serve: the allow-list is empty, so no repository will be acted on; set --allow-repos (PRODIGY_ALLOW_REPOS) to owner/name,..."
        );
    } else {
        let names: Vec<&str> = settings.allow_repos.iter().map(|r| r.as_str()).collect();
        tracing::info!(repos = %names.join(","), "allow-list");
    }
    let app = AppAuth::new(settings.app_id, &settings.private_key)
        .context("the App private key is not usable")?;
    let github = GitHubClient::new(&settings.github_api_url, app, settings.github_retry)?;
    let links = PageLinks::new(&settings.public_url, &settings.webhook_secret);
    let wake = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let jobs = CancellationToken::new();
    let engine = Engine {
        store: store.clone(),
        state_dir: settings.state_dir.clone(),
        claude_bin: settings.claude_bin.clone(),
        agent: settings.agent.clone(),
        api_backoff: Default::default(),
        instance: Some(settings.instance.clone()),
        reporter: Arc::new(Silent),
        cancel: jobs.clone(),
        agents: settings.agents.clone(),
        workers: crate::engine::WorkerSettings {
            // The repository cache's clone: its `origin` is the repository's URL, no token in it.
            remote: settings.workers.map(|_| "origin".to_string()),
            machine: settings.instance.clone(),
            ..Default::default()
        },
    };
    let runner = Runner::new(RunnerParts {
        store: store.clone(),
        engine,
        github: github.clone(),
        repos: RepoCache::new(settings.checkout_dir.clone(), &settings.git_base_url),
        links: links.clone(),
        reporters: reporters(&store, &github),
        instance: settings.instance.clone(),
        app_slug: settings.app_slug.clone(),
        max_jobs: settings.max_jobs,
        poll: settings.poll,
        wake: wake.clone(),
        workers: settings.workers,
        allow_repos: settings.allow_repos.clone(),
        requests: settings.requests,
    });
    let job_slots = runner.slots();
    let state = AppState::new(
        store.clone(),
        settings.webhook_secret.clone(),
        links.clone(),
        Some(github.clone()),
        settings.allow_repos.clone(),
        settings.app_slug.clone(),
        wake,
    );
    crate::metrics::install()?;
    let metrics = super::metrics::router(store.clone());
    let router = router(state, &settings.webhook_path);
    // Metrics on the main listener, unless they have a listener of their own.
    let (router, metrics_addr, metrics_http) = match settings.metrics_listen {
        None => (router.merge(metrics), None, None),
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen on {at} (--metrics-listen)"))?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "metrics listening");
            let stop = stop.clone();
            let http = tokio::spawn(async move {
                axum::serve(listener, metrics)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            });
            (router, Some(addr), Some(http))
        }
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, instance = %settings.instance, "prodigy serve listening");
    let http = {
        let stop = stop.clone();
        let app = router.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    // Every replica may look for missed deliveries; the redelivery lock lets one at a time.
    let redeliver = settings.redeliver_every.map(|every| {
        let redeliverer = Redeliverer {
            store: store.clone(),
            github: github.clone(),
            instance: settings.instance.clone(),
            max_per_pass: settings.redeliver_max,
        };
        tokio::spawn(redeliverer.run(every, stop.clone()))
    });
    let runner = if settings.runner {
        Some(tokio::spawn(runner.run(stop.clone())))
    } else {
        tracing::info!("--no-runner: this process queues work; other replicas run it");
        None
    };
    Ok(RunningServer {
        addr,
        metrics_addr,
        metrics_http,
        store,
        router,
        links,
        github,
        stop,
        jobs,
        http: Some(http),
        redeliver,
        runner,
        job_slots,
        max_jobs: settings.max_jobs,
    })
}
