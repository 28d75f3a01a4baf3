//! Check runs: one per job run, showing progress while it runs and, at the end, the conclusion,
//! a summary, one annotation per DLQ row and buttons to act. One reporter serves both faces: the
//! server (App token, [`AppCheckRuns`]) and the Action (the workflow token,
//! [`crate::action::TokenCheckRuns`], with [`Face::Action`]: no buttons).
//!
//! - [`render`]: pure functions from the job's recorded state to request bodies;
//! - [`reporter`]: the engine [`crate::engine::Reporter`] that sends them, off the engine's path;
//! - [`rerun`]: what a re-run or button press on a check run asks for (pure), and its answers;
//! - [`stale`]: closing the check runs of runs that died, once.
//!
//! Wiring, per job run (server runner or Action):
//!
//! ```ignore
//! let reporter = CheckRunReporter::spawn(
//!     AppCheckRuns { client, installation, repo },
//!     store.clone(),
//!     ReporterConfig {
//!         details_url: Some(format!("{public_url}/jobs/{{job}}")),
//!         head_sha: Some(pr_head_sha),
//!         cancel: Some(job_cancel.clone()),
//!         ..ReporterConfig::default()
//!     },
//! );
//! let engine = Engine { reporter: Arc::new(reporter.clone()), cancel: job_cancel, ..engine.clone() };
//! let result = engine.run(&new_run).await;   // or rerun::handle(&engine, &request)
//! let report = reporter.finish().await;      // always, before completing the request
//! ```

pub mod render;
pub mod reporter;
pub mod rerun;
pub mod sink;
pub mod stale;

pub use render::{Face, RESUME_ACTION, RETRY_FAILED_ACTION, WorkflowFacts};
pub use reporter::{CallCounts, CheckRunReporter, FinalRecord, ReportState, ReporterConfig};
pub use sink::{AppCheckRuns, CheckRunSink, Refused};
