//! The leases of the requests this instance is handling, renewed by one heartbeat (the item
//! claims' [`Renewal`] loop) every third of the lease. A claim the database no longer renews
//! is lost (this instance was paused, or cut off from the database, past its lease, and
//! another instance may have taken the request back): its handler is stopped, and its end
//! would be refused anyway (`Store::finish_request` answers false).
//!
//! Failures: which errors a request is retried after ([`classify`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::claims::{Renewal, renew_while_alive};
use crate::github::GitHubError;
use crate::store::{Request, Store, StoreError, is_transient_db};

pub(super) struct RequestLeases {
    store: Store,
    worker: String,
    lease: Duration,
    /// Held claims: request id -> (attempt, the token that stops its handler).
    held: Mutex<HashMap<i64, (u32, CancellationToken)>>,
}

impl RequestLeases {
    /// Starts renewing `worker`'s claims; the renewals stop when the last `Arc` is dropped.
    pub(super) fn start(store: Store, worker: String, lease: Duration) -> Arc<RequestLeases> {
        let leases = Arc::new(RequestLeases {
            store,
            worker,
            lease,
            held: Mutex::default(),
        });
        renew_while_alive(&leases, lease / 3);
        leases
    }

    /// Keeps `request`'s claim alive until [`RequestLeases::release`]; the token is cancelled
    /// when the claim is lost.
    pub(super) fn hold(&self, request: &Request) -> CancellationToken {
        let token = CancellationToken::new();
        self.held
            .lock()
            .expect("request leases")
            .insert(request.id, (request.attempts, token.clone()));
        token
    }

    pub(super) fn release(&self, request: &Request) {
        self.held
            .lock()
            .expect("request leases")
            .remove(&request.id);
    }
}

impl Renewal for RequestLeases {
    async fn beat(&self) {
        // Only claims held before the renewal are judged by it.
        let before: Vec<(i64, u32)> = {
            let held = self.held.lock().expect("request leases");
            held.iter().map(|(id, (a, _))| (*id, *a)).collect()
        };
        if before.is_empty() {
            return;
        }
        let renewed = match self
            .store
            .renew_requests(&self.worker, &before, self.lease)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // A lease outlives a few failed renewals; a database away for longer costs
                // the claims, and another instance takes the requests back.
                tracing::warn!(error = %e, "cannot renew request claims; trying again");
                return;
            }
        };
        let mut held = self.held.lock().expect("request leases");
        for (id, attempt) in before.iter().filter(|c| !renewed.contains(c)) {
            if let Some((a, token)) = held.get(id)
                && a == attempt
            {
                tracing::warn!(
                    request = id,
                    "the claim on request {id} is lost (its lease ran out); stopping its handler, another instance may take it back"
                );
                token.cancel();
                held.remove(id);
            }
        }
    }
}

/// How a failed request goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Worth trying again later; the reason is a metrics label.
    Transient(&'static str),
    /// Trying again cannot help (404 repository, 403 permission, 422, a bad payload).
    Permanent,
}

/// Whether `e` is worth retrying: GitHub's 5xx, 429 and rate limits, a GitHub that could not
/// be reached, a database that could not be, a time-out. The first such cause in the chain
/// decides.
pub(super) fn classify(e: &anyhow::Error) -> Failure {
    for cause in e.chain() {
        if let Some(gh) = cause.downcast_ref::<GitHubError>() {
            return match gh {
                _ if !gh.is_transient() => Failure::Permanent,
                GitHubError::Transport { .. } => Failure::Transient("github_unreachable"),
                GitHubError::Status { status, .. } if status.is_server_error() => {
                    Failure::Transient("github_5xx")
                }
                _ => Failure::Transient("github_rate_limit"),
            };
        }
        if let Some(store) = cause.downcast_ref::<StoreError>() {
            return if store.is_transient() {
                Failure::Transient("database")
            } else {
                Failure::Permanent
            };
        }
        if let Some(db) = cause.downcast_ref::<sqlx::Error>() {
            return if is_transient_db(db) {
                Failure::Transient("database")
            } else {
                Failure::Permanent
            };
        }
        if cause.is::<tokio::time::error::Elapsed>() {
            return Failure::Transient("timeout");
        }
    }
    Failure::Permanent
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Method, StatusCode};

    fn status(code: u16, gave_up: bool) -> anyhow::Error {
        anyhow::Error::new(GitHubError::Status {
            method: Method::GET,
            path: "/repos/o/r/collaborators/u/permission".into(),
            status: StatusCode::from_u16(code).unwrap(),
            message: "x".into(),
            gave_up,
        })
        .context("cannot check the commenter's permission")
    }

    #[test]
    fn transient_github_and_database_errors_are_retried_the_rest_fails_at_once() {
        assert_eq!(
            classify(&status(502, true)),
            Failure::Transient("github_5xx")
        );
        assert_eq!(
            classify(&status(403, true)),
            Failure::Transient("github_rate_limit")
        );
        assert_eq!(
            classify(&status(429, true)),
            Failure::Transient("github_rate_limit")
        );
        for code in [404, 403, 422, 401] {
            assert_eq!(classify(&status(code, false)), Failure::Permanent, "{code}");
        }
        let unreachable = anyhow::Error::new(GitHubError::Transport {
            method: Method::POST,
            path: "/x".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(
            classify(&unreachable),
            Failure::Transient("github_unreachable")
        );
        let db = anyhow::Error::new(StoreError::Db(sqlx::Error::PoolTimedOut)).context("listing");
        assert_eq!(classify(&db), Failure::Transient("database"));
        let missing = anyhow::Error::new(StoreError::JobNotFound("j".into()));
        assert_eq!(classify(&missing), Failure::Permanent);
        assert_eq!(
            classify(&anyhow::anyhow!("unreadable payload")),
            Failure::Permanent
        );
    }
}
