//! `prodigy cancel JOB`, and how a CLI run sees it. The request is a `cancel_requested` event
//! (written from outside the job's lock); a `prodigy run`/`resume`/`dlq retry` of that job polls
//! its events and stops as on Ctrl-C (the job stays resumable). A job that nothing runs is marked
//! `cancelled` under its lock.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use prodigy::engine::{Progress, Reporter};
use prodigy::store::{CancelOutcome, Holder, Job, JobEvent, Store};
use prodigy::types::{JobId, JobStatus};

use super::phase_output::PhaseOutput;

/// How often a running CLI job looks for cancel requests.
const POLL: Duration = Duration::from_millis(250);

/// The job a run started, and when: cancel requests from before that are not for this run.
type Started = Option<(JobId, DateTime<Utc>)>;

/// Passes every progress event on, tells the cancel watcher which job started and, with `-v`,
/// follows the job's phase output ([`PhaseOutput`]).
pub struct Watched {
    inner: Arc<dyn Reporter>,
    started: watch::Sender<Started>,
    /// The state directory when `-v` asked for phase output.
    phase_logs: Option<PathBuf>,
    phase_output: Mutex<Option<Arc<PhaseOutput>>>,
}

impl Reporter for Watched {
    fn report(&self, event: &Progress) {
        if let Progress::JobStarted { job, .. } = event {
            self.started.send_replace(Some((*job, Utc::now())));
            if let Some(dir) = &self.phase_logs
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                let output = Arc::new(PhaseOutput::new(dir, *job));
                *self.phase_output.lock().expect("phase output") = Some(output.clone());
                rt.spawn(output.follow());
            }
        }
        if let Progress::JobFinished { .. } | Progress::PhaseStarted { .. } = event
            && let Some(output) = self.phase_output.lock().expect("phase output").as_ref()
        {
            // A phase's last lines before the next phase or the outcome is printed.
            output.drain();
        }
        self.inner.report(event);
    }
}

/// Wraps `inner` and starts the task that cancels `cancel` when someone asks to cancel the
/// job this process runs. `phase_logs`: the state directory, when `-v` asked for phase output.
pub fn watch(
    store: Store,
    inner: Arc<dyn Reporter>,
    cancel: CancellationToken,
    phase_logs: Option<PathBuf>,
) -> Arc<Watched> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(watch_requests(store, rx, cancel));
    Arc::new(Watched {
        inner,
        started: tx,
        phase_logs,
        phase_output: Mutex::default(),
    })
}

async fn watch_requests(store: Store, mut rx: watch::Receiver<Started>, cancel: CancellationToken) {
    let Ok(started) = rx.wait_for(Option::is_some).await.map(|s| *s) else {
        return;
    };
    let Some((job, since)) = started else { return };
    let mut seen = 0;
    while !cancel.is_cancelled() {
        let events = match store.events(job, seen, 1000).await {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(%job, error = %e, "cannot read events for cancel requests");
                Vec::new()
            }
        };
        seen = events.last().map_or(seen, |e| e.seq);
        let request = events
            .iter()
            .filter(|e| e.at >= since)
            .find_map(|e| match e.event() {
                Some(JobEvent::CancelRequested { reason, by, .. }) => Some((reason, by)),
                _ => None,
            });
        if let Some((reason, by)) = request {
            let by = by.map(|b| format!(" by {b}")).unwrap_or_default();
            eout!("cancel requested{by} ({reason}): stopping agents; the job can be resumed");
            cancel.cancel();
            return;
        }
        if events.len() < 1000 {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `prodigy cancel`: asks the process running `job` to stop, or marks it cancelled when nothing
/// runs it.
pub async fn cancel(store: &Store, job: &Job, reason: &str, as_json: bool) -> anyhow::Result<u8> {
    let outcome = request(store, job, reason).await?;
    if as_json {
        let text = serde_json::json!({ "job": job.id, "outcome": outcome });
        out!("{text}");
        return Ok(0);
    }
    let id = job.id;
    match outcome {
        Outcome::AlreadyFinished(status) => out!("job {id} already finished: {status}"),
        Outcome::Cancelled => out!("job {id} cancelled (nothing was running it)"),
        Outcome::Stopping(holder) => out!(
            "asked {holder} to stop job {id}; it stops within a second and can be continued with `prodigy resume {id}`"
        ),
    }
    Ok(0)
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
enum Outcome {
    AlreadyFinished(JobStatus),
    Cancelled,
    /// The process holding the job (it sees the request and stops).
    Stopping(String),
}

async fn request(store: &Store, job: &Job, reason: &str) -> anyhow::Result<Outcome> {
    let holder = Holder::this_process(None);
    let by = format!("prodigy cancel ({holder})");
    Ok(
        match store.request_cancel(job, reason, &by, &holder).await? {
            CancelOutcome::AlreadyFinished(status) => Outcome::AlreadyFinished(status),
            CancelOutcome::Cancelled => Outcome::Cancelled,
            CancelOutcome::Stopping(holder) => Outcome::Stopping(holder.to_string()),
        },
    )
}
