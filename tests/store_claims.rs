//! Item claims (README "Many machines") on PostgreSQL: exclusive claims with SKIP LOCKED, leases
//! that run out and are taken back as new attempts, and fencing by the claim's epoch. SQLite
//! refuses them with a clear error.
// The lock is held across steps with the low-level `try_lock` (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use prodigy::store::{
    AttemptOutcome, Claim, ClaimedEnd, Claimer, Holder, ItemFilter, JobEvent, LockOutcome, NewItem,
    NewJob, Store, StoreError,
};
use prodigy::types::{ItemKey, ItemStatus, JobId, JobStatus, Phase};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);
/// A lease that has run out by the time anything reads it.
const EXPIRED: Duration = Duration::from_millis(1);

/// A job in its map phase with `n` items `k0..`, opened to workers.
async fn open_job(store: &Store, n: i64) -> JobId {
    let job = store
        .create_job(&NewJob {
            workflow_path: "wf.yml".into(),
            workflow_text: "name: c\n".into(),
            workflow_name: "c".into(),
            repo_path: "/repo".into(),
            repo: None,
            pr_number: None,
            head_sha: None,
        })
        .await
        .unwrap();
    let LockOutcome::Acquired(lock) = store
        .try_lock(job.id, &Holder::this_process(None))
        .await
        .unwrap()
    else {
        panic!("fresh job is held");
    };
    let p = lock.proof();
    store
        .set_job_state(p, JobStatus::Running, Phase::Map, None)
        .await
        .unwrap();
    let items: Vec<NewItem> = (0..n)
        .map(|i| NewItem {
            key: ItemKey(format!("k{i}")),
            position: i,
            data: json!({"i": i}),
        })
        .collect();
    store.insert_items(p, &items).await.unwrap();
    store.open_to_workers(p, "/srv/remote.git").await.unwrap();
    lock.release().await.unwrap();
    job.id
}

fn succeeded(commit: &str) -> AttemptOutcome {
    AttemptOutcome {
        success: true,
        exit_code: Some(0),
        error_class: None,
        signature: None,
        message: None,
        log_path: Some("/w/log".into()),
        commit: Some(commit.into()),
        result: Some(json!({"ok": true})),
        dlq: None,
    }
}

async fn finish(store: &Store, claim: &Claim, commit: &str) -> Result<(), StoreError> {
    let outcome = succeeded(commit);
    let event = JobEvent::ItemSucceeded {
        key: claim.key().clone(),
        attempt: claim.attempt(),
        commit: Some(commit.into()),
    };
    store
        .finish_claimed(
            claim,
            &ClaimedEnd {
                outcome: &outcome,
                runs: &[],
                files: &[("log".into(), format!("log of {}", claim.key()))],
                events: std::slice::from_ref(&event),
            },
        )
        .await
}

async fn postgres() -> Option<(support::db::TestDb, Store)> {
    let db = support::db::postgres_db().await?;
    let store = db.store().await;
    Some((db, store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_take_every_item_exactly_once_in_order() {
    let Some((_db, store)) = postgres().await else {
        return;
    };
    let job = open_job(&store, 40).await;
    let mut tasks = tokio::task::JoinSet::new();
    for m in 0..4 {
        let store = store.clone();
        tasks.spawn(async move {
            let me = Claimer::new(&format!("m{m}"));
            let mut mine = Vec::new();
            loop {
                let got = store.claim_items(job, &me, 3, LONG).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                for c in got {
                    assert_eq!(c.attempt(), 1);
                    finish(&store, &c, "c0ffee").await.unwrap();
                    mine.push((c.position(), m));
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all.sort();
    let positions: Vec<i64> = all.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (0..40).collect::<Vec<_>>(), "each item once");
    let items = store.items(job, &ItemFilter::default()).await.unwrap();
    assert!(
        items
            .iter()
            .all(|i| i.status == ItemStatus::Succeeded && i.attempts == 1)
    );
    let machines = store.machines(job).await.unwrap();
    assert_eq!(machines.iter().map(|m| m.attempts).sum::<i64>(), 40);
    assert_eq!(
        store
            .attempt_file(job, &ItemKey::from("k7"), 1, "log")
            .await
            .unwrap()
            .as_deref(),
        Some("log of k7")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_claim_is_taken_back_as_a_new_attempt_and_its_holder_records_nothing() {
    let Some((_db, store)) = postgres().await else {
        return;
    };
    let job = open_job(&store, 1).await;
    let (a, b) = (Claimer::new("paused"), Claimer::new("alive"));
    let stale = store
        .claim_items(job, &a, 1, EXPIRED)
        .await
        .unwrap()
        .remove(0);
    let fresh = store.claim_items(job, &b, 1, LONG).await.unwrap().remove(0);
    assert_eq!((fresh.key(), fresh.attempt()), (stale.key(), 2));
    assert!(fresh.epoch() > stale.epoch());
    // The paused holder wakes up: its renewal finds nothing and every write is refused.
    assert!(store.renew_claims(job, &a, LONG).await.unwrap().is_empty());
    let refused = finish(&store, &stale, "stale").await.unwrap_err();
    assert!(
        matches!(refused, StoreError::ClaimLost { attempt: 1, .. }),
        "{refused}"
    );
    assert!(matches!(
        store.release_claim(&stale, "stopping").await,
        Err(StoreError::ClaimLost { .. })
    ));
    finish(&store, &fresh, "fresh").await.unwrap();
    let item = &store.items(job, &ItemFilter::default()).await.unwrap()[0];
    assert_eq!(item.commit.as_deref(), Some("fresh"));
    let attempts = store.attempts(job, &ItemKey::from("k0")).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].success, Some(false));
    assert!(
        attempts[0]
            .message
            .as_deref()
            .unwrap()
            .starts_with("lease expired")
    );
    assert_eq!(attempts[1].success, Some(true));
    let kinds: Vec<String> = store
        .events(job, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    let tail = &kinds[kinds.len() - 4..];
    assert_eq!(
        tail,
        [
            "item_claimed",
            "claim_expired",
            "item_claimed",
            "item_succeeded"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_claims_live_released_ones_return_and_closed_jobs_give_nothing() {
    let Some((_db, store)) = postgres().await else {
        return;
    };
    let job = open_job(&store, 3).await;
    let me = Claimer::new("m");
    let got = store.claim_items(job, &me, 2, LONG).await.unwrap();
    let renewed: BTreeMap<ItemKey, i64> = store
        .renew_claims(job, &me, LONG)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(renewed.len(), 2);
    assert_eq!(renewed[got[0].key()], got[0].epoch());
    // Given back: pending again, and the next claim is a new attempt with a new epoch.
    store.release_claim(&got[1], "stopping").await.unwrap();
    let again = store
        .claim_items(job, &me, 1, LONG)
        .await
        .unwrap()
        .remove(0);
    assert_eq!((again.key(), again.attempt()), (got[1].key(), 2));
    assert_eq!(store.open_jobs().await.unwrap(), vec![job]);
    let LockOutcome::Acquired(lock) = store
        .try_lock(job, &Holder::this_process(None))
        .await
        .unwrap()
    else {
        panic!("held");
    };
    // A coordinator's recovery leaves live claims alone and takes back dead ones.
    let dead = Claimer::new("dead");
    store.close_to_workers(lock.proof()).await.unwrap();
    assert!(
        store
            .claim_items(job, &dead, 1, EXPIRED)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.open_jobs().await.unwrap().is_empty());
    store
        .open_to_workers(lock.proof(), "/srv/remote.git")
        .await
        .unwrap();
    let doomed = store
        .claim_items(job, &dead, 1, EXPIRED)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(store.recover_unclaimed(lock.proof()).await.unwrap(), 1);
    lock.release().await.unwrap();
    assert!(matches!(
        finish(&store, &doomed, "x").await,
        Err(StoreError::ClaimLost { .. })
    ));
    finish(&store, &got[0], "c0").await.unwrap();
    finish(&store, &again, "c1").await.unwrap();
    let items = store.items(job, &ItemFilter::default()).await.unwrap();
    let statuses: Vec<ItemStatus> = items.iter().map(|i| i.status).collect();
    assert_eq!(
        statuses,
        [
            ItemStatus::Succeeded,
            ItemStatus::Succeeded,
            ItemStatus::Pending
        ]
    );
}

#[tokio::test]
async fn sqlite_refuses_claims_and_says_what_to_use() {
    let db = support::db::sqlite_db();
    let store = db.store().await;
    let e = store
        .claim_items(JobId::new(), &Claimer::new("m"), 1, LONG)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NeedsPostgres(_)), "{e}");
    assert!(e.to_string().contains("postgres://"), "{e}");
    assert!(store.open_jobs().await.is_err());
}
