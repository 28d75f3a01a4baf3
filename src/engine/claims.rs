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
        tokio::spawn(renew(Arc::downgrade(&hb), lease / 3));
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

    /// One round: renews every held claim, job by job, and stops the agents of lost ones.
    async fn beat(&self) {
        let jobs: Vec<JobId> = {
            let held = self.held.lock().expect("claims lock");
            let mut jobs: Vec<JobId> = held.keys().map(|(j, _)| *j).collect();
            jobs.sort();
            jobs.dedup();
            jobs
        };
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
            let mut held = self.held.lock().expect("claims lock");
            held.retain(|(j, key), (epoch, token)| {
                if *j != job || renewed.iter().any(|(k, e)| k == key && e == epoch) {
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

async fn renew(hb: Weak<Heartbeat>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(hb) = hb.upgrade() else { return };
        hb.beat().await;
    }
}
