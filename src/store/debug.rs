//! `prodigy debug-lock`: takes one job's lock from a real process, for the lock tests (and for
//! an operator who wants to see who holds a job).

use std::time::Duration;

use serde_json::json;

use super::{Holder, LockOutcome, Store};
use crate::types::JobId;

/// Exit code of `prodigy debug-lock` when the lock is held by someone else (EX_TEMPFAIL: try
/// again later).
pub const EXIT_HELD: i32 = 75;

/// Tries to take `job`'s lock on the database at `url`. Prints one JSON line:
/// `{"outcome":"acquired","holder":{..},"epoch":N}` (then holds it `hold` long and releases it,
/// exit 0) or `{"outcome":"held","holder":{..},"since":".."}` (exit 75). Errors go to stderr,
/// exit 1.
pub async fn debug_lock(url: &str, job: &str, hold: Duration) -> i32 {
    match run(url, job, hold).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("prodigy debug-lock: {e:#}");
            1
        }
    }
}

async fn run(url: &str, job: &str, hold: Duration) -> anyhow::Result<i32> {
    use anyhow::Context;
    let store = Store::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let job: JobId = store.find_job(job).await?.id;
    let holder = Holder::this_process(None);
    match store.try_lock(job, &holder).await? {
        LockOutcome::Acquired(lock) => {
            println!(
                "{}",
                json!({"outcome": "acquired", "job": job, "holder": lock.holder(), "epoch": lock.proof().epoch()})
            );
            tokio::time::sleep(hold).await;
            lock.release().await?;
            Ok(0)
        }
        LockOutcome::Held { holder, since } => {
            println!(
                "{}",
                json!({"outcome": "held", "job": job, "holder": holder, "since": since})
            );
            Ok(EXIT_HELD)
        }
    }
}
