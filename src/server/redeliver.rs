//! Missed-delivery recovery: GitHub does not deliver a webhook again when its delivery failed
//! (the server was down, deploying, or answered 503), so at start and then every
//! `--redeliver-every`, one replica at a time lists the App's recent deliveries and asks GitHub
//! to redeliver those that failed and this server never recorded.
//!
//! A pass, under the redelivery lock (PostgreSQL: an advisory lock; SQLite: one process):
//! 1. Reads GitHub's delivery log, newest first, page by page (the `cursor` of the `link`
//!    header), stopping at the first attempt older than GitHub keeps ([`WINDOW`], 3 days) or
//!    after [`MAX_PAGES`] pages.
//! 2. Groups attempts by guid (`X-GitHub-Delivery`): a guid with any successful attempt was
//!    received; one whose every attempt failed was missed.
//! 3. Drops the guids the webhook handler recorded (`webhook_deliveries`).
//! 4. Oldest first, at most `--redeliver-max` of them: claims the guid in
//!    `webhook_redeliveries` (so no guid is asked for twice, by this replica or another) and
//!    asks GitHub to redeliver its newest failed attempt; records what GitHub said.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::github::{GitHubClient, HookDelivery};
use crate::store::{NewRedelivery, Store};

/// GitHub keeps a delivery log of 3 days; nothing older can be redelivered.
pub const WINDOW: chrono::TimeDelta = chrono::TimeDelta::days(3);

/// Pages of 100 read per pass at most, so one pass stays bounded on a busy App.
pub const MAX_PAGES: usize = 50;

const PER_PAGE: u8 = 100;

/// What the pass runs with.
#[derive(Clone)]
pub struct Redeliverer {
    pub store: Store,
    pub github: GitHubClient,
    /// Who asks (the `--instance` name), recorded with each request.
    pub instance: String,
    /// Redeliveries asked for per pass at most.
    pub max_per_pass: usize,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// The pass did not run: another replica holds the lock.
    pub skipped: bool,
    /// Delivery attempts read from the log (within the window).
    pub listed: usize,
    /// Missed deliveries (no successful attempt, not recorded here).
    pub missed: usize,
    /// Redeliveries GitHub accepted.
    pub requested: usize,
    /// Redeliveries GitHub refused or that could not be asked for.
    pub failed: usize,
}

impl Redeliverer {
    /// A pass at once, then one every `every`, until `stop`.
    pub async fn run(self, every: Duration, stop: CancellationToken) {
        loop {
            // A shutdown does not wait for a pass: dropping it closes the lock's session.
            let pass = tokio::select! {
                _ = stop.cancelled() => return,
                pass = self.pass() => pass,
            };
            match pass {
                Ok(r) if r.skipped => {
                    tracing::debug!("redelivery pass skipped: another replica runs it")
                }
                Ok(r) if r.missed > 0 => tracing::info!(
                    listed = r.listed,
                    missed = r.missed,
                    requested = r.requested,
                    failed = r.failed,
                    "redelivery pass: asked GitHub to redeliver missed webhooks"
                ),
                Ok(r) => tracing::debug!(listed = r.listed, "redelivery pass: nothing missed"),
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "redelivery pass failed; the next pass tries again"
                ),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One pass (see the module docs).
    pub async fn pass(&self) -> anyhow::Result<PassReport> {
        let Some(lock) = self.store.try_redelivery_lock().await? else {
            return Ok(PassReport {
                skipped: true,
                ..PassReport::default()
            });
        };
        let result = self.pass_locked().await;
        lock.release().await;
        result
    }

    async fn pass_locked(&self) -> anyhow::Result<PassReport> {
        let mut report = PassReport::default();
        let since = Utc::now() - WINDOW;
        let mut log = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .github
                .hook_deliveries(PER_PAGE, cursor.as_deref())
                .await?;
            let (before, listed) = (log.len(), page.deliveries.len());
            log.extend(
                page.deliveries
                    .into_iter()
                    .take_while(|d| d.delivered_at >= since),
            );
            // Newest first: past the first attempt older than the window, all are older.
            let past_window = log.len() - before < listed;
            match page.next_cursor {
                Some(next) if !past_window => cursor = Some(next),
                _ => break,
            }
        }
        report.listed = log.len();
        let missed = missed_deliveries(log);
        let guids: Vec<String> = missed.iter().map(|d| d.guid.clone()).collect();
        let recorded = self.store.recorded_deliveries(&guids).await?;
        let missed: Vec<HookDelivery> = missed
            .into_iter()
            .filter(|d| !recorded.contains(&d.guid))
            .collect();
        report.missed = missed.len();
        for d in missed {
            if report.requested + report.failed >= self.max_per_pass {
                break;
            }
            let claim = NewRedelivery {
                guid: &d.guid,
                delivery_id: d.id,
                event: &d.event,
                action: d.action.as_deref(),
                delivered_at: d.delivered_at,
                requested_by: &self.instance,
            };
            if !self.store.claim_redelivery(&claim).await? {
                // Asked for already (by an earlier pass or another replica).
                continue;
            }
            let outcome = match self.github.redeliver(d.id).await {
                Ok(()) => {
                    report.requested += 1;
                    tracing::info!(guid = %d.guid, event = %d.event, "asked GitHub to redeliver a missed webhook");
                    "requested".to_string()
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(guid = %d.guid, error = %e, "GitHub did not take a redelivery");
                    format!("failed: {e}")
                }
            };
            crate::metrics::redelivery(outcome == "requested");
            self.store.set_redelivery_outcome(&d.guid, &outcome).await?;
        }
        Ok(report)
    }
}

/// The deliveries of a log (newest first) that were missed: no attempt of their guid succeeded.
/// One attempt each (its newest failed one, the one to redeliver), oldest delivery first.
fn missed_deliveries(log: Vec<HookDelivery>) -> Vec<HookDelivery> {
    let mut received: HashMap<String, bool> = HashMap::new();
    for d in &log {
        *received.entry(d.guid.clone()).or_default() |= d.succeeded();
    }
    let mut missed = Vec::new();
    for d in log {
        // The first attempt met of a missed guid is its newest.
        if received.insert(d.guid.clone(), true) == Some(false) {
            missed.push(d);
        }
    }
    missed.reverse();
    missed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: u64, guid: &str, minutes_ago: i64, ok: bool) -> HookDelivery {
        HookDelivery {
            id,
            guid: guid.into(),
            delivered_at: Utc::now() - chrono::TimeDelta::minutes(minutes_ago),
            redelivery: false,
            status: if ok { "OK" } else { "failed to connect" }.into(),
            status_code: if ok { 202 } else { 0 },
            event: "pull_request".into(),
            action: Some("opened".into()),
            installation_id: Some(1),
        }
    }

    #[test]
    fn a_guid_is_missed_when_none_of_its_attempts_succeeded_and_its_newest_failure_is_asked_for() {
        // Newest first, as GitHub lists them.
        let log = vec![
            attempt(9, "c", 1, false),
            attempt(8, "b", 2, true),
            attempt(7, "a", 3, false),
            attempt(6, "c", 4, false),
            attempt(5, "b", 5, false),
            attempt(4, "d", 6, false),
        ];
        let ids: Vec<u64> = missed_deliveries(log).iter().map(|d| d.id).collect();
        // d (oldest), then a, then c by its newest attempt; b was delivered on its second try.
        assert_eq!(ids, [4, 7, 9]);
        assert!(missed_deliveries(vec![]).is_empty());
    }
}
