//! `prodigy debug-lock`: takes one job's lock from a real process, for the lock tests (and for
//! an operator who wants to see who holds a job).

use std::time::Duration;

use serde_json::json;

use super::{Exclusive, Holder, Store};
use crate::types::JobId;

/// Exit code of `prodigy debug-lock` when the lock is held by someone else (EX_TEMPFAIL: try
/// again later).
pub const EXIT_HELD: u8 = 75;

/// Tries to take `job`'s lock on the database at `url`. Prints one JSON line:
/// `{"outcome":"acquired","holder":{..},"epoch":N}` (then holds it `hold` long and releases it,
/// exit 0) or `{"outcome":"held","holder":{..},"since":".."}` (exit 75). Errors go to stderr,
/// exit 1.
pub async fn debug_lock(url: &str, job: &str, hold: Duration) -> u8 {
    match run(url, job, hold).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("prodigy debug-lock: {e:#}");
            1
        }
    }
}

async fn run(url: &str, job: &str, hold: Duration) -> anyhow::Result<u8> {
    use anyhow::Context;
    let store = Store::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let job: JobId = store.find_job(job).await?.id;
    let holder = Holder::this_process(None);
    let held = store
        .with_job_lock(job, &holder, async |proof| {
            println!(
                "{}",
                json!({"outcome": "acquired", "job": job, "holder": &holder, "epoch": proof.epoch()})
            );
            tokio::time::sleep(hold).await;
            anyhow::Ok(())
        })
        .await?;
    match held {
        Exclusive::Performed(()) => Ok(0),
        Exclusive::Held { holder, since } => {
            println!(
                "{}",
                json!({"outcome": "held", "job": job, "holder": holder, "since": since})
            );
            Ok(EXIT_HELD)
        }
    }
}
