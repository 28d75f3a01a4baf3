//! The tracking comment of a `/prodigy` job command: one reply, created when the command is
//! taken, updated in place while the job runs (its phase and counts, at every phase change and
//! at most every `min_interval` otherwise) and once more at the end. An engine [`Reporter`] that
//! only queues events; a background task makes the requests, so the engine never waits on GitHub.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::replies::{self, Tracking};
use crate::engine::{Progress, Reporter};
use crate::github::{CommentId, GitHubClient, TOKEN_INSTALLATION};
use crate::store::Store;
use crate::types::{JobId, Phase, RepoName};

/// Where the comment is and what it is about.
#[derive(Debug, Clone)]
pub struct TrackedComment {
    pub client: GitHubClient,
    pub repo: RepoName,
    pub comment: CommentId,
    pub tracking: Tracking,
}

impl TrackedComment {
    /// Replaces the comment's body; a failure is a warning in the step's log, never the job's.
    pub async fn set(&self, body: &str) {
        if let Err(e) = self
            .client
            .update_comment(TOKEN_INSTALLATION, &self.repo, self.comment, body)
            .await
        {
            println!(
                "{}",
                super::commands::warning(
                    "prodigy: tracking comment",
                    &format!("cannot update the reply comment: {e}")
                )
            );
        }
    }
}

enum Msg {
    Event(Progress),
    Finish(String, oneshot::Sender<()>),
}

/// The reporter handle.
#[derive(Clone)]
pub struct TrackingReporter {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Reporter for TrackingReporter {
    fn report(&self, event: &Progress) {
        let _ = self.tx.send(Msg::Event(event.clone()));
    }
}

impl TrackingReporter {
    pub fn spawn(comment: TrackedComment, store: Store, min_interval: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            comment,
            store,
            min_interval,
            job: None,
            phase: Phase::Setup,
            last_sent: None,
            dirty: false,
        };
        tokio::spawn(task.run(rx));
        TrackingReporter { tx }
    }

    /// Sends the last body and waits until it was sent (after every progress update).
    pub async fn finish(&self, body: String) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Finish(body, done)).is_ok() {
            let _ = wait.await;
        }
    }
}

struct Task {
    comment: TrackedComment,
    store: Store,
    min_interval: Duration,
    job: Option<JobId>,
    phase: Phase,
    last_sent: Option<Instant>,
    dirty: bool,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        loop {
            let msg = match (self.dirty, self.last_sent) {
                (true, Some(at)) => {
                    match tokio::time::timeout_at(at + self.min_interval, rx.recv()).await {
                        Ok(msg) => msg,
                        Err(_) => {
                            self.send_progress().await;
                            continue;
                        }
                    }
                }
                _ => rx.recv().await,
            };
            match msg {
                Some(Msg::Event(event)) => self.on_event(event).await,
                Some(Msg::Finish(body, done)) => {
                    self.comment.set(&body).await;
                    let _ = done.send(());
                    return;
                }
                None => return,
            }
        }
    }

    async fn on_event(&mut self, event: Progress) {
        match event {
            Progress::JobStarted { job, .. } => {
                self.job = Some(job);
                if let Ok(j) = self.store.get_job(job).await {
                    self.phase = j.phase;
                }
                self.send_progress().await;
            }
            Progress::PhaseStarted { phase } => {
                self.phase = phase;
                self.send_progress().await;
            }
            Progress::ItemsPlanned { .. }
            | Progress::ItemSucceeded { .. }
            | Progress::ItemFailed { .. }
            | Progress::ItemMerged { .. } => {
                self.dirty = true;
                if self
                    .last_sent
                    .is_none_or(|at| at.elapsed() >= self.min_interval)
                {
                    self.send_progress().await;
                }
            }
            Progress::ItemStarted { .. } | Progress::Note(_) | Progress::JobFinished { .. } => {}
        }
    }

    async fn send_progress(&mut self) {
        self.dirty = false;
        self.last_sent = Some(Instant::now());
        let Some(job) = self.job else { return };
        let Ok(counts) = self.store.item_counts(job).await else {
            return;
        };
        let body = replies::progress(&self.comment.tracking, job, self.phase, &counts);
        self.comment.set(&body).await;
    }
}
