//! A claimer's heartbeat: the leases of the item claims a process holds (a `prodigy worker`, or
//! the agent slots of a coordinator) are renewed every third of the lease. A claim the database
//! no longer renews is lost (its lease ran out: the process was paused, or cut off from the
//! database); its agent is stopped at once, and whatever it would record is refused anyway
//! (`StoreError::ClaimLost`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Claim, Claimer, Store};
use crate::types::{ItemKey, JobId};

/// The claims one claimer holds, kept alive together.
pub struct Heartbeat {
    store: Store,
    claimer: Claimer,
    lease: Duration,
    /// Held claims: their epoch, and the token that stops their agent when they are lost.
    held: Mutex<HashMap<(JobId, ItemKey), (i64, CancellationToken)>>,
}

impl Heartbeat {
    /// Starts renewing for `claimer`; the renewals stop when the last `Arc` is dropped.
    pub fn start(store: Store, claimer: Claimer, lease: Duration) -> Arc<Heartbeat> {
        let hb = Arc::new(Heartbeat {
            store,
            claimer,
            lease,
            held: Mutex::default(),
        });
        renew_while_alive(&hb, lease / 3);
        hb
    }

    pub fn claimer(&self) -> &Claimer {
        &self.claimer
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Keeps `claim` alive until [`Heartbeat::release`]; the returned token (a child of
    /// `parent`) is cancelled when the claim is lost.
    pub fn hold(&self, claim: &Claim, parent: &CancellationToken) -> CancellationToken {
        let token = parent.child_token();
        self.held.lock().expect("claims lock").insert(
            (claim.job(), claim.key().clone()),
            (claim.epoch(), token.clone()),
        );
        token
    }

    /// Stops renewing `claim` (it ended, or was given back).
    pub fn release(&self, claim: &Claim) {
        self.held
            .lock()
            .expect("claims lock")
            .remove(&(claim.job(), claim.key().clone()));
    }

    /// Claims held now.
    pub fn count(&self) -> usize {
        self.held.lock().expect("claims lock").len()
    }
}

impl Renewal for Heartbeat {
    /// One round: renews every held claim, job by job, and stops the agents of lost ones.
    async fn beat(&self) {
        // Only claims held before a renewal can be judged by it: one taken while the renewal
        // runs is missing from its answer without being lost.
        let before: Vec<(JobId, ItemKey, i64)> = {
            let held = self.held.lock().expect("claims lock");
            held.iter()
                .map(|((j, k), (e, _))| (*j, k.clone(), *e))
                .collect()
        };
        let mut jobs: Vec<JobId> = before.iter().map(|(j, _, _)| *j).collect();
        jobs.sort();
        jobs.dedup();
        for job in jobs {
            let renewed = match self
                .store
                .renew_claims(job, &self.claimer, self.lease)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    // A lease outlives a few failed renewals; a database away for longer costs
                    // the claims, and their writes are refused.
                    tracing::warn!(%job, error = %e, "cannot renew item claims; trying again");
                    continue;
                }
            };
            let lost = lost_claims(job, &before, &renewed);
            let mut held = self.held.lock().expect("claims lock");
            held.retain(|(j, key), (epoch, token)| {
                if *j != job || !lost.iter().any(|(k, e)| k == key && e == epoch) {
                    return true;
                }
                tracing::warn!(
                    %job, %key,
                    "the claim on item {key} of job {job} is lost (its lease ran out); stopping its agent, whose result will not be recorded"
                );
                token.cancel();
                false
            });
        }
    }
}

/// Leases kept alive by a heartbeat: the item claims here, the server's request claims
/// (`server::runner`).
pub trait Renewal: Send + Sync + 'static {
    /// One round of renewals; what it finds lost it stops itself.
    fn beat(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// Calls `target.beat()` every `every` (at least 50 ms) until the last `Arc` of it is dropped.
pub fn renew_while_alive<T: Renewal>(target: &Arc<T>, every: Duration) {
    tokio::spawn(renew(Arc::downgrade(target), every));
}

async fn renew<T: Renewal>(target: Weak<T>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(target) = target.upgrade() else {
            return;
        };
        target.beat().await;
    }
}

/// The claims of `job` a renewal shows lost: held before it ran (`before`) and missing from its
/// answer (`renewed`). A claim taken while it ran is not judged by it.
fn lost_claims(
    job: JobId,
    before: &[(JobId, ItemKey, i64)],
    renewed: &[(ItemKey, i64)],
) -> Vec<(ItemKey, i64)> {
    before
        .iter()
        .filter(|(j, k, e)| *j == job && !renewed.iter().any(|(rk, re)| rk == k && re == e))
        .map(|(_, k, e)| (k.clone(), *e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_claims_held_before_a_renewal_and_missing_from_it_are_lost() {
        let (job, other) = (JobId::new(), JobId::new());
        let k = |s: &str| ItemKey::from(s);
        let before = vec![(job, k("a"), 1), (job, k("b"), 4), (other, k("c"), 1)];
        // a renewed; b renewed only under a newer epoch (taken back and claimed again by us);
        // "new" was claimed while the renewal ran, so it is not in `before` at all.
        let renewed = vec![(k("a"), 1), (k("b"), 5), (k("new"), 1)];
        assert_eq!(lost_claims(job, &before, &renewed), vec![(k("b"), 4)]);
        assert!(lost_claims(job, &[], &[]).is_empty());
        assert_eq!(lost_claims(other, &before, &[]), vec![(k("c"), 1)]);
    }
}
