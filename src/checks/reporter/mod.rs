//! The check-run reporter: an engine [`Reporter`] whose `report` only queues the event; a
//! background task turns the events into check-run requests (create on start, throttled progress,
//! completion with annotations and buttons at the end).
//!
//! One reporter follows one engine invocation (`run`, `resume` or `retry`): give each job's
//! engine clone its own. Await [`CheckRunReporter::finish`] after the engine returns, so the final
//! state reaches GitHub before the process exits or the request is marked done.
//!
//! This module queues events and sends creation and progress; `completion` makes and delivers
//! the final state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::render::{self, Face};
use super::sink::{CheckRunSink, Refused};
use crate::engine::{Progress, Reporter};
use crate::github::{
    CheckConclusion, CheckRunId, CheckRunOutput, CheckRunUpdate, CheckStatus, CommitSha,
    NewCheckRun,
};
use crate::store::{ItemCounts, Job, Store};
use crate::types::{JobId, Phase};

mod completion;

pub use completion::FinalRecord;

/// How the reporter behaves; `Default` is what production wants.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// The check run's "Details" link; `{job}` is replaced by the job id (the server's job page,
    /// or the Action's run URL as is).
    pub details_url: Option<String>,
    /// The commit the check run is attached to. Default: the job's `head_sha`, else its base commit.
    pub head_sha: Option<String>,
    /// At most one progress update per this interval (phase changes are sent at once).
    pub min_interval: Duration,
    /// Tries of each final request (the completion and each annotation batch), beyond the
    /// client's own retries: losing the final state leaves a check run spinning forever.
    pub final_attempts: u32,
    /// Pause between those tries.
    pub final_retry_delay: Duration,
    /// The run's cancellation token: fired means the conclusion is `cancelled`, not `failure`.
    pub cancel: Option<CancellationToken>,
    /// The face the check run speaks for: its buttons and the next steps in its summary.
    pub face: Face,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            details_url: None,
            head_sha: None,
            min_interval: Duration::from_secs(10),
            final_attempts: 3,
            final_retry_delay: Duration::from_secs(5),
            cancel: None,
            face: Face::App,
        }
    }
}

/// Requests the reporter made, by kind (each counted once however often the client retried it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub creates: u32,
    pub progress_updates: u32,
    /// The completion and the appending annotation batches.
    pub final_updates: u32,
    /// Requests that failed after the client's retries.
    pub failed: u32,
}

impl CallCounts {
    pub fn total(&self) -> u32 {
        self.creates + self.progress_updates + self.final_updates
    }
}

/// What the reporter has done so far; [`CheckRunReporter::finish`] returns the final one.
#[derive(Debug, Clone, Default)]
pub struct ReportState {
    pub job: Option<JobId>,
    pub check_run: Option<CheckRunId>,
    /// Set when the completion reached GitHub.
    pub conclusion: Option<CheckConclusion>,
    /// Annotations delivered.
    pub annotations: usize,
    pub calls: CallCounts,
    /// The last request error, for logs and the caller.
    pub last_error: Option<String>,
    /// The sink refused a request for good ([`Refused`]): why. Nothing was sent after it.
    pub refused: Option<String>,
}

enum Msg {
    Event(Progress),
    Finish(oneshot::Sender<()>),
}

/// The reporter handle. Cheap to clone; clones feed the same task.
#[derive(Clone)]
pub struct CheckRunReporter {
    tx: mpsc::UnboundedSender<Msg>,
    state: Arc<Mutex<ReportState>>,
}

impl Reporter for CheckRunReporter {
    fn report(&self, event: &Progress) {
        // Unbounded: the engine must never wait on GitHub. Events are small and the task drains
        // them in batches, so the queue stays short.
        let _ = self.tx.send(Msg::Event(event.clone()));
    }
}

impl CheckRunReporter {
    /// Starts the background task (call inside a tokio runtime). `store` is read for the job's
    /// head commit, counts, DLQ rows and attempts, and gets the check-run id.
    pub fn spawn<S: CheckRunSink>(sink: S, store: Store, config: ReporterConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(ReportState::default()));
        let task = Task {
            sink,
            store,
            config,
            state: state.clone(),
            started: None,
            check_run: None,
            phase: Phase::Setup,
            dirty: false,
            phase_changed: false,
            last_sent: None,
            finalized: false,
        };
        let span = tracing::info_span!("check_run", job = tracing::field::Empty);
        tokio::spawn(task.run(rx).instrument(span));
        CheckRunReporter { tx, state }
    }

    /// The check run's id, once created.
    pub fn check_run_id(&self) -> Option<CheckRunId> {
        self.state().check_run
    }

    pub fn state(&self) -> ReportState {
        self.state.lock().expect("report state lock").clone()
    }

    /// Sends the final state (if the engine's `JobFinished` has not already) and waits until it
    /// is delivered or given up on. Call it once the engine has returned, whatever it returned:
    /// a run that ended in an error without `JobFinished` is completed from the store's record.
    pub async fn finish(&self) -> ReportState {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Msg::Finish(done_tx)).is_ok() {
            // An error means the task already ended, having finished.
            let _ = done_rx.await;
        }
        self.state()
    }
}

/// The job the reporter follows, from `JobStarted`.
#[derive(Debug, Clone, Copy)]
struct Started {
    job: JobId,
    lease_epoch: i64,
}

struct Task<S> {
    sink: S,
    store: Store,
    config: ReporterConfig,
    state: Arc<Mutex<ReportState>>,
    started: Option<Started>,
    check_run: Option<CheckRunId>,
    phase: Phase,
    /// Something changed since the last progress update.
    dirty: bool,
    phase_changed: bool,
    last_sent: Option<Instant>,
    finalized: bool,
}

impl<S: CheckRunSink> Task<S> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut waiting = Vec::new();
        loop {
            let due = self.progress_due();
            let first = tokio::select! {
                biased;
                m = rx.recv() => m,
                () = crate::engine::process::sleep_until(due) => {
                    self.send_progress().await;
                    continue;
                }
            };
            // Take everything queued: a burst (the last items, reduce, done, finished) becomes
            // one request instead of one per event.
            let mut batch = vec![first];
            while let Ok(m) = rx.try_recv() {
                batch.push(Some(m));
            }
            let mut closing = false;
            for m in batch {
                match m {
                    None => closing = true,
                    Some(Msg::Finish(done)) => {
                        waiting.push(done);
                        closing = true;
                    }
                    Some(Msg::Event(p)) => self.apply(p).await,
                }
            }
            if closing {
                self.finalize().await;
                for w in waiting {
                    let _ = w.send(());
                }
                return;
            }
            if self.phase_changed && !self.finalized {
                self.send_progress().await;
            }
        }
    }

    fn progress_due(&self) -> Option<Instant> {
        if !self.dirty || self.finalized || self.started.is_none() || self.refused() {
            return None;
        }
        Some(
            self.last_sent
                .map_or_else(Instant::now, |t| t + self.config.min_interval),
        )
    }

    async fn apply(&mut self, event: Progress) {
        match event {
            Progress::JobStarted {
                job, lease_epoch, ..
            } => {
                if let Some(prev) = self.started
                    && prev.job != job
                {
                    tracing::warn!(%prev.job, %job, "one reporter got two jobs; finishing the first");
                    self.finalize().await;
                    self.finalized = false;
                    self.check_run = None;
                    self.dirty = false;
                    self.phase_changed = false;
                }
                tracing::Span::current().record("job", tracing::field::display(job));
                self.started = Some(Started { job, lease_epoch });
                self.state().job = Some(job);
                self.create_in_progress().await;
            }
            Progress::PhaseStarted { phase } => {
                self.phase = phase;
                // "Done" is followed at once by the completion, which says more.
                self.phase_changed = phase != Phase::Done;
                self.dirty = true;
            }
            Progress::ItemsPlanned { .. }
            | Progress::ItemStarted { .. }
            | Progress::ItemSucceeded { .. }
            | Progress::ItemFailed { .. }
            | Progress::ItemMerged { .. } => self.dirty = true,
            Progress::Note(_) => {}
            Progress::JobFinished { .. } => self.finalize().await,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ReportState> {
        self.state.lock().expect("report state lock")
    }

    /// Whether the sink refused for good; nothing more is sent then.
    fn refused(&self) -> bool {
        self.state().refused.is_some()
    }

    /// Records a failure; `request` says whether it was a GitHub request (counted in `calls`).
    fn note_error(&self, what: &str, e: &anyhow::Error, request: bool) {
        let refused = e.downcast_ref::<Refused>();
        if refused.is_some() {
            // The sink has told the user; one line in the log says the reporter stops.
            tracing::info!(error = %format!("{e:#}"), "check run: {what} refused; reporting stops");
        } else {
            tracing::warn!(error = %format!("{e:#}"), "check run: {what} failed");
        }
        let mut s = self.state();
        if request {
            s.calls.failed += 1;
        }
        s.last_error = Some(format!("{what}: {e:#}"));
        if let Some(r) = refused {
            s.refused.get_or_insert_with(|| r.to_string());
        }
    }

    async fn read_job(&self, id: JobId) -> Option<(Job, ItemCounts)> {
        let read = async {
            let job = self.store.get_job(id).await?;
            let counts = self.store.item_counts(id).await?;
            Ok::<_, crate::store::StoreError>((job, counts))
        };
        match read.await {
            Ok(x) => Some(x),
            Err(e) => {
                self.note_error("reading the job", &e.into(), false);
                None
            }
        }
    }

    fn new_check_run(&self, job: &Job, output: CheckRunOutput) -> Option<NewCheckRun> {
        let sha = self
            .config
            .head_sha
            .clone()
            .or_else(|| job.head_sha.as_ref().map(|sha| sha.to_string()))
            .or_else(|| job.refs.base_commit.clone());
        let Some(sha) = sha else {
            tracing::warn!(job = %job.id, "no commit to attach a check run to; not reporting");
            return None;
        };
        Some(NewCheckRun {
            name: render::check_run_name(&job.workflow_name),
            head_sha: CommitSha(sha),
            external_id: Some(job.id.to_string()),
            details_url: self
                .config
                .details_url
                .as_ref()
                .map(|u| u.replace("{job}", &job.id.to_string())),
            status: Some(CheckStatus::InProgress),
            conclusion: None,
            output: Some(output),
            actions: Vec::new(),
        })
    }

    async fn create_in_progress(&mut self) {
        let Some(started) = self.started else { return };
        let Some((job, counts)) = self.read_job(started.job).await else {
            return;
        };
        self.phase = job.phase;
        let output = render::progress_output(job.id, job.phase, &counts);
        if let Some(run) = self.new_check_run(&job, output) {
            self.create(&run).await;
        }
        self.last_sent = Some(Instant::now());
    }

    async fn create(&mut self, run: &NewCheckRun) -> bool {
        if self.refused() {
            return false;
        }
        self.state().calls.creates += 1;
        match self.sink.create(run).await {
            Ok(id) => {
                self.adopt(id).await;
                true
            }
            Err(e) => {
                self.note_error("creating the check run", &e, true);
                false
            }
        }
    }

    /// Remembers the created check run, here and on the job (where re-runs look for it).
    async fn adopt(&mut self, id: CheckRunId) {
        self.check_run = Some(id);
        self.state().check_run = Some(id);
        let (Some(started), Ok(stored)) = (self.started, i64::try_from(id.0)) else {
            return;
        };
        if let Err(e) = self
            .store
            .set_check_run_id_at_epoch(started.job, started.lease_epoch, stored)
            .await
        {
            // The check run works without it; only re-runs from GitHub need the job to point here.
            tracing::warn!(job = %started.job, error = %e, "could not record the check-run id on the job");
        }
        if let Err(e) = self
            .store
            .record_check_run(started.job, stored, started.lease_epoch)
            .await
        {
            tracing::warn!(job = %started.job, error = %e, "could not record the check run as open");
        }
        // Check runs of earlier runs still in progress: their runs are gone (this one holds the
        // lock), so this run continues them.
        let details = self
            .config
            .details_url
            .as_ref()
            .map(|u| u.replace("{job}", &started.job.to_string()));
        let closing = super::stale::closing_update(started.job, Some(id), details.as_deref());
        if let Err(e) = super::stale::close_stale(
            &self.sink,
            &self.store,
            started.job,
            started.lease_epoch,
            Some(id),
            &closing,
        )
        .await
        {
            tracing::warn!(job = %started.job, error = %format!("{e:#}"), "cannot close the check runs earlier runs left open");
        }
    }

    async fn send_progress(&mut self) {
        self.dirty = false;
        self.phase_changed = false;
        self.last_sent = Some(Instant::now());
        let Some(started) = self.started else { return };
        if self.refused() {
            return;
        }
        let counts = match self.store.item_counts(started.job).await {
            Ok(c) => c,
            Err(e) => return self.note_error("reading item counts", &e.into(), false),
        };
        let output = render::progress_output(started.job, self.phase, &counts);
        let Some(id) = self.check_run else {
            // Creating failed at the start: try again now, with the current state.
            if let Some((job, _)) = self.read_job(started.job).await
                && let Some(run) = self.new_check_run(&job, output)
            {
                self.create(&run).await;
            }
            return;
        };
        let update = CheckRunUpdate {
            status: Some(CheckStatus::InProgress),
            output: Some(output),
            ..CheckRunUpdate::default()
        };
        self.state().calls.progress_updates += 1;
        if let Err(e) = self.sink.update(id, &update).await {
            // The next update carries the whole state again; nothing to catch up on.
            self.note_error("progress update", &e, true);
        }
    }
}
