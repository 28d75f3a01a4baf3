//! The job-task lifecycle: [`Runner::start_job`] runs one engine action in its own task with its
//! own cancel token and reporter, holding a job slot; the [`Tracker`] registers the job as
//! running here once the engine names it, and tells the starter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::{NewRun, Progress, Reporter, ResumeRequest, Resumed, RetryRequest};
use crate::store::JobEvent;
use crate::types::{JobId, JobStatus};

use super::{Inner, Runner, RunningJob, reruns};
use crate::server::reporting::JobContext;

/// What a job run tells its starter: it started (the job id is known), or it ended before
/// (contention, nothing to do, an error).
pub(super) enum Started {
    Running(JobId),
    Ended(anyhow::Result<Resumed>),
    /// A re-run that started nothing: answered, or asking for a fresh job.
    Rerun(crate::checks::rerun::RerunOutcome),
}

pub(super) enum JobAction {
    Run(Box<NewRun>),
    Resume(JobId, ResumeRequest),
    Retry(JobId, RetryRequest),
    /// A check-run re-run or button: `checks::rerun::handle`, under the job lock.
    Rerun(Box<crate::checks::rerun::RerunRequest>),
}

/// The job slot of the request being handled; further jobs of the same request wait for more.
pub(super) struct Slots {
    pub(super) spare: Option<OwnedSemaphorePermit>,
    pub(super) all: Arc<Semaphore>,
}

impl Slots {
    pub(super) async fn take(&mut self) -> OwnedSemaphorePermit {
        match self.spare.take() {
            Some(p) => p,
            None => self
                .all
                .clone()
                .acquire_owned()
                .await
                .expect("the job semaphore is never closed"),
        }
    }
}

impl Runner {
    /// Runs `action` in its own task, holding `permit` until it ends. The receiver answers as
    /// soon as the job started (or ended without starting).
    pub(super) fn start_job(
        &self,
        action: JobAction,
        ctx: JobContext,
        permit: OwnedSemaphorePermit,
    ) -> oneshot::Receiver<Started> {
        let (outer_tx, outer_rx) = oneshot::channel();
        let (tx, rx) = oneshot::channel();
        // Records the job's installation before the starter hears of it, so even a job whose
        // first reply was never posted can be resumed with its reporter after a crash.
        if let Some(tokens) = &self.inner.push_tokens {
            tokens.note(&ctx.repo, ctx.installation);
        }
        let store = self.p().store.clone();
        let context = JobEvent::ServerContext {
            installation: ctx.installation.0,
            pr: ctx.pr_number,
            workflow: ctx.workflow.clone(),
            instance: self.p().instance.clone(),
            pass_env: ctx.pass_env.clone(),
        };
        tokio::spawn(async move {
            let Ok(started) = rx.await else { return };
            if let Started::Running(job) = &started
                && let Err(e) = store.append_outside_event(*job, &context).await
            {
                tracing::warn!(%job, error = %e, "cannot record the job's server context");
            }
            let _ = outer_tx.send(started);
        });
        let this = self.clone();
        let asked = Utc::now();
        // Every log line of the job names it (the request's span adds the delivery id).
        let span = tracing::info_span!("job", repo = %ctx.repo, pr = ctx.pr_number, workflow = %ctx.workflow);
        let task = async move {
            let shutdown = this.p().engine.cancel.clone();
            let cancel = shutdown.child_token();
            let run_reporter = this.p().reporters.run_reporter(&ctx, &cancel);
            let tracker = Arc::new(Tracker {
                inner: run_reporter.reporter.clone(),
                started: Mutex::new(Some(tx)),
                job: Mutex::new(None),
                runner: Arc::downgrade(&this.inner),
                cancel: cancel.clone(),
                cleanup: Arc::new(AtomicBool::new(false)),
                reason: Arc::default(),
                asked,
            });
            let mut engine = this.p().engine.clone();
            if let Some(names) = &ctx.pass_env {
                engine.agents.env.pass.retain(|n| names.contains(n));
            }
            engine.reporter = tracker.clone();
            engine.cancel = cancel.clone();
            let result = match action {
                JobAction::Run(run) => engine.run(&run).await.map(Resumed::Ran),
                JobAction::Resume(id, req) => engine.resume(id, &req).await,
                JobAction::Retry(id, req) => engine.retry(id, &req).await,
                JobAction::Rerun(req) => match reruns::handle(&engine, &req).await {
                    Ok(Ok(resumed)) => Ok(resumed),
                    Ok(Err(not_run)) => {
                        if let Some(tx) = tracker.started.lock().expect("tracker").take() {
                            let _ = tx.send(Started::Rerun(not_run));
                        }
                        // Nothing ran: nothing below applies (no job registered here).
                        drop(permit);
                        return;
                    }
                    Err(e) => Err(e),
                },
            };
            let job = *tracker.job.lock().expect("tracker");
            if let Some(job) = job {
                this.inner.running.lock().expect("running map").remove(&job);
                if shutdown.is_cancelled() {
                    if let Err(e) = this.mark_orphaned(job).await {
                        tracing::warn!(%job, error = %format!("{e:#}"), "cannot leave the job for the next start");
                    }
                } else if cancel.is_cancelled() {
                    let reason = tracker
                        .reason
                        .lock()
                        .expect("reason")
                        .clone()
                        .unwrap_or_else(|| "cancelled".into());
                    let cleanup = tracker.cleanup.load(Ordering::SeqCst);
                    if let Err(e) = this.finish_cancelled(job, &reason, cleanup).await {
                        tracing::warn!(%job, error = %format!("{e:#}"), "cannot record the cancellation");
                    }
                }
            }
            if let Err(e) = &result {
                tracing::warn!(job = ?job, error = %format!("{e:#}"), "job run failed");
            }
            // After the status is final (cancelled, orphaned), and before the slot is free.
            run_reporter.finish().await;
            if let Some(tx) = tracker.started.lock().expect("tracker").take() {
                let _ = tx.send(Started::Ended(result));
            }
            drop(permit);
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
        outer_rx
    }

    /// The server is shutting down and stopped this job: mark it `running` again without a
    /// holder, which is what the next start resumes.
    pub(super) async fn mark_orphaned(&self, job: JobId) -> anyhow::Result<()> {
        let store = &self.p().store;
        // Held: another instance took the job over; it is not orphaned.
        let _ = store
            .with_job_lock(job, &self.holder(), async |proof| {
                let current = store.get_job(job).await?;
                if current.status == JobStatus::Failed {
                    store
                        .set_job_state(
                            proof,
                            JobStatus::Running,
                            current.phase,
                            Some("interrupted by a server shutdown; resumed when a server starts"),
                        )
                        .await?;
                }
                anyhow::Ok(())
            })
            .await?;
        Ok(())
    }
}

/// Wraps a job's reporter: learns the job id when it starts, registers the job as running here,
/// and tells the starter.
pub(super) struct Tracker {
    inner: Arc<dyn Reporter>,
    started: Mutex<Option<oneshot::Sender<Started>>>,
    job: Mutex<Option<JobId>>,
    runner: std::sync::Weak<Inner>,
    cancel: CancellationToken,
    cleanup: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<String>>>,
    /// When the runner was asked to start this run.
    asked: DateTime<Utc>,
}

impl Reporter for Tracker {
    fn report(&self, event: &Progress) {
        if let Progress::JobFinished { counts, error } = event {
            let job = self.job.lock().expect("tracker").map(|j| j.to_string());
            tracing::info!(job = %job.unwrap_or_default(), items = counts.total, merged = counts.merged, failed = counts.failed, dlq = counts.dlq, error = %error.as_deref().unwrap_or("-"), "job finished");
        }
        if let Progress::JobStarted { job, resumed, .. } = event {
            tracing::info!(%job, resumed, "job started");
            *self.job.lock().expect("tracker") = Some(*job);
            if let Some(runner) = self.runner.upgrade() {
                runner.running.lock().expect("running map").insert(
                    *job,
                    RunningJob {
                        cancel: self.cancel.clone(),
                        cleanup: self.cleanup.clone(),
                        reason: self.reason.clone(),
                        started: self.asked,
                        seen_seq: 0,
                    },
                );
            }
            if let Some(tx) = self.started.lock().expect("tracker").take() {
                let _ = tx.send(Started::Running(*job));
            }
        }
        self.inner.report(event);
    }
}
