//! How a running job tells the world how it goes: the CLI draws a progress bar, the server and
//! the Action update a check run. The engine calls [`Reporter::report`] at every transition;
//! reporters must be quick (throttle and send elsewhere, never block on the network here).

use crate::store::ItemCounts;
use crate::types::{ErrorClass, ItemKey, JobId, Phase};

#[derive(Debug, Clone)]
pub enum Progress {
    JobStarted {
        job: JobId,
        workflow: String,
        resumed: bool,
        /// The lease epoch of the lock this run holds: a reporter that records something on the
        /// job (the check-run id) writes fenced by it, since it cannot hold the lock's proof.
        lease_epoch: i64,
    },
    PhaseStarted {
        phase: Phase,
    },
    /// The map phase has this many items to run in this invocation.
    ItemsPlanned {
        to_run: usize,
        total: u64,
    },
    ItemStarted {
        key: ItemKey,
        attempt: u32,
    },
    ItemSucceeded {
        key: ItemKey,
    },
    ItemFailed {
        key: ItemKey,
        class: ErrorClass,
        message: String,
    },
    ItemMerged {
        key: ItemKey,
    },
    /// A line worth showing a person (setup step done, cleanup, ...).
    Note(String),
    JobFinished {
        counts: ItemCounts,
        error: Option<String>,
    },
}

pub trait Reporter: Send + Sync {
    fn report(&self, event: &Progress);
}

/// Reports nothing (library use, tests).
pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _: &Progress) {}
}
