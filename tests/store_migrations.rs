//! Migrations are applied one by one, each onto a database that already holds data written under
//! the previous ones, on both backends; and both backends end with the same tables and columns.
// These tests are about the lock itself: they hold one across steps with the low-level
// `try_lock` that application code may not call (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use prodigy::store::{
    Accepted, AttemptOutcome, BackendKind, Claimer, DeliveryOutcome, DlqDisposition, Holder,
    ItemFilter, JobEvent, LockOutcome, NewItem, NewJob, RequestEnd, Store,
};
use prodigy::types::{ErrorClass, ItemKey, ItemStatus, JobId, JobStatus, Phase};
use serde_json::json;
use sqlx::Connection;
use support::db::{TestDb, finished, started, test_stores};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_one_by_one_onto_existing_data() {
    for (backend, db) in test_stores().await {
        eprintln!("-- migrations on {backend}");
        apply_one_by_one(&db).await;
    }
}

async fn apply_one_by_one(db: &TestDb) {
    let store = Store::open_without_migrating(db.url()).await.unwrap();
    let versions = store.known_migrations();
    assert!(
        versions.len() >= 2,
        "expected at least two migrations, found {versions:?}"
    );
    assert!(store.applied_migrations().await.unwrap().is_empty());

    let mut seeded = Seeded::default();
    for (i, &version) in versions.iter().enumerate() {
        assert_eq!(store.migrate_up_to(version).await.unwrap(), vec![version]);
        assert_eq!(
            store.applied_migrations().await.unwrap(),
            versions[..=i].to_vec()
        );
        // This version's tables take data of their own, written under this schema. (Reading
        // it back waits for the last version: the code reads the newest schema.)
        seeded.seed(&store, version).await;
    }
    // What every version wrote survived the later migrations and still works.
    seeded.verify(&store).await;
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "nothing left to apply"
    );
    // Opening (which migrates) an up-to-date database changes nothing.
    let reopened = db.store().await;
    seeded.verify(&reopened).await;
}

#[derive(Default)]
struct Seeded {
    job: Option<JobId>,
    delivery: Option<String>,
    request: Option<i64>,
    /// A request queued by a delivery, and that delivery's id.
    queued_delivery: Option<(i64, String)>,
    /// An agent run recorded (version 4).
    agent_run: bool,
    /// A check run recorded in progress at epoch 1 (version 5).
    check_run: bool,
    /// A job opened to workers and an item claimed (version 6, PostgreSQL).
    claimed: bool,
    /// The version-3 request claimed under a lease and queued again after a transient error
    /// (version 7).
    retried: bool,
    /// A missed delivery claimed for redelivery and requested (version 8).
    redelivery: bool,
}

impl Seeded {
    async fn seed(&mut self, store: &Store, version: i64) {
        match version {
            1 => {
                let job = store
                    .create_job(&NewJob {
                        workflow_path: "wf.yml".into(),
                        workflow_text: "name: m\n".into(),
                        workflow_name: "m".into(),
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
                let items: Vec<NewItem> = (0..3)
                    .map(|i| NewItem {
                        key: ItemKey(format!("k{i}")),
                        position: i,
                        data: json!({"i": i}),
                    })
                    .collect();
                store.insert_items(p, &items).await.unwrap();
                let key = ItemKey::from("k1");
                let n = store
                    .start_attempt(p, &key, "/wt", "b", started(&key))
                    .await
                    .unwrap();
                let outcome = AttemptOutcome {
                    success: false,
                    exit_code: Some(2),
                    error_class: Some(ErrorClass::CommandFailed),
                    signature: Some("sig".into()),
                    message: Some("exit 2".into()),
                    log_path: None,
                    commit: None,
                    result: None,
                    dlq: Some(DlqDisposition {
                        reprocessable: true,
                    }),
                };
                store
                    .finish_attempt(p, &key, n, &outcome, &finished(&key, n))
                    .await
                    .unwrap();
                store
                    .append_event(
                        p,
                        &JobEvent::ItemsLoaded {
                            count: 3,
                            duplicates_removed: 0,
                        },
                    )
                    .await
                    .unwrap();
                lock.release().await.unwrap();
                self.job = Some(job.id);
            }
            2 => {
                let id = "d-1".to_string();
                assert_eq!(
                    store.record_delivery(&id, "ping", None).await.unwrap(),
                    DeliveryOutcome::Recorded
                );
                self.request = Some(
                    store
                        .enqueue_request("resume", &json!({"job": self.job}))
                        .await
                        .unwrap(),
                );
                self.delivery = Some(id);
            }
            3 => {
                // A delivery recorded before requests knew their delivery is still a duplicate.
                let legacy = self.delivery.clone().expect("seeded by version 2");
                let payload = json!({"pr": 3});
                assert_eq!(
                    store
                        .accept_delivery(&legacy, "pull_request", None, "pull_request", &payload)
                        .await
                        .unwrap(),
                    Accepted::Duplicate
                );
                let Accepted::Queued(id) = store
                    .accept_delivery("d-3", "pull_request", None, "pull_request", &payload)
                    .await
                    .unwrap()
                else {
                    panic!("a new delivery is queued");
                };
                self.queued_delivery = Some((id, "d-3".into()));
            }
            4 => {
                // An agent run of the failed item; its DLQ row (written before this version)
                // keeps working with the new columns empty.
                let job = self.job.expect("seeded by version 1");
                let LockOutcome::Acquired(lock) = store
                    .try_lock(job, &Holder::this_process(None))
                    .await
                    .unwrap()
                else {
                    panic!("the job is free");
                };
                store
                    .record_agent_run(
                        lock.proof(),
                        &prodigy::store::NewAgentRun {
                            phase: "map".into(),
                            key: Some(ItemKey::from("k1")),
                            attempt: Some(1),
                            session_id: Some("s-1".into()),
                            model: Some("m".into()),
                            transcript: "/logs/k1/attempt-1.claude-1.jsonl".into(),
                            subtype: Some("success".into()),
                            usage: prodigy::types::Usage {
                                input_tokens: 10,
                                output_tokens: 2,
                                cost_usd: 0.25,
                                turns: 1,
                                ..Default::default()
                            },
                        },
                    )
                    .await
                    .unwrap();
                lock.release().await.unwrap();
                self.agent_run = true;
            }
            5 => {
                let job = self.job.expect("seeded at version 1");
                store.record_check_run(job, 9001, 1).await.unwrap();
                self.check_run = true;
            }
            6 => {
                // Claims are PostgreSQL's: a job there is opened to workers and one item claimed.
                let Some(job) = self
                    .job
                    .filter(|_| store.backend() == BackendKind::Postgres)
                else {
                    return;
                };
                let LockOutcome::Acquired(lock) = store
                    .try_lock(job, &Holder::this_process(None))
                    .await
                    .unwrap()
                else {
                    panic!("seeded job is held");
                };
                store
                    .open_to_workers(lock.proof(), "/srv/remote.git")
                    .await
                    .unwrap();
                lock.release().await.unwrap();
                let claims = store
                    .claim_items(
                        job,
                        &Claimer::new("seed-machine"),
                        5,
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap();
                // k1 has ended (failed); k0 and k2 are pending.
                let keys: Vec<&str> = claims.iter().map(|c| c.key().0.as_str()).collect();
                assert_eq!(keys, ["k0", "k2"]);
                self.claimed = true;
            }
            7 => {
                let (id, _) = self.queued_delivery.clone().expect("seeded at version 3");
                let policy = prodigy::store::RequestPolicy::default();
                // The version-2 request is older: claimed first, and done.
                let older = store.claim_request("seed", &policy).await.unwrap().unwrap();
                assert_eq!(Some(older.id), self.request);
                assert!(
                    store
                        .finish_request(&older, RequestEnd::Done { message: "ok" })
                        .await
                        .unwrap()
                );
                let r = store.claim_request("seed", &policy).await.unwrap().unwrap();
                assert_eq!((r.id, r.attempts), (id, 1));
                assert!(r.lease_expires_at.is_some());
                assert!(
                    store
                        .finish_request(
                            &r,
                            RequestEnd::Retry {
                                after: Duration::from_secs(3600),
                                error: "GitHub answered 502"
                            }
                        )
                        .await
                        .unwrap()
                );
                self.retried = true;
            }
            8 => {
                let claim = prodigy::store::NewRedelivery {
                    guid: "g-8",
                    delivery_id: 88,
                    event: "pull_request",
                    action: Some("opened"),
                    delivered_at: chrono::Utc::now(),
                    requested_by: "seed",
                };
                assert!(store.claim_redelivery(&claim).await.unwrap());
                store
                    .set_redelivery_outcome("g-8", "requested")
                    .await
                    .unwrap();
                self.redelivery = true;
            }
            other => panic!(
                "migration {other} has no seed data in this test: add rows for its tables to Seeded::seed"
            ),
        }
    }

    async fn verify(&self, store: &Store) {
        if let Some(job) = self.job
            && self.check_run
        {
            assert_eq!(store.jobs_with_open_check_runs().await.unwrap(), [job]);
            // A later epoch claims it once.
            assert_eq!(
                store.claim_stale_check_runs(job, 2, None).await.unwrap(),
                [9001]
            );
            assert!(
                store
                    .claim_stale_check_runs(job, 3, None)
                    .await
                    .unwrap()
                    .is_empty()
            );
            store.reopen_check_run(job, 9001).await.unwrap();
        }
        if let Some(job) = self.job
            && self.agent_run
        {
            let usage = store.job_usage(job).await.unwrap();
            assert_eq!(usage.total.tokens(), 12);
            assert_eq!(usage.total.cost_usd, 0.25);
            assert_eq!(usage.by_item[&ItemKey::from("k1")].turns, 1);
        }
        if let Some(job) = self.job {
            let got = store.get_job(job).await.unwrap();
            assert_eq!((got.status, got.phase), (JobStatus::Running, Phase::Map));
            assert!(got.lease_epoch >= 1);
            let items = store.items(job, &ItemFilter::default()).await.unwrap();
            assert_eq!(items.len(), 3);
            assert_eq!(items[1].status, ItemStatus::Failed);
            assert!(items[1].in_dlq);
            assert_eq!(
                store
                    .attempts(job, &ItemKey::from("k1"))
                    .await
                    .unwrap()
                    .len(),
                1
            );
            assert_eq!(store.dlq(Some(job)).await.unwrap()[0].failure_count, 1);
            let kinds: Vec<String> = store
                .events(job, 0, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            let mut expected = vec!["item_started", "item_succeeded", "items_loaded"];
            if self.claimed {
                expected.extend(["workers_opened", "item_claimed", "item_claimed"]);
                let remote = store.job_remote(job).await.unwrap().unwrap();
                assert_eq!(
                    (remote.url.as_str(), remote.open),
                    ("/srv/remote.git", true)
                );
                let machines = store.machines(job).await.unwrap();
                assert_eq!(machines.len(), 1);
                assert_eq!(
                    (machines[0].machine.as_str(), machines[0].attempts),
                    ("seed-machine", 2)
                );
            }
            assert_eq!(kinds, expected);
            // The lock still works on old rows.
            let LockOutcome::Acquired(lock) = store
                .try_lock(job, &Holder::this_process(None))
                .await
                .unwrap()
            else {
                panic!("seeded job is held");
            };
            lock.release().await.unwrap();
        }
        if let Some(delivery) = &self.delivery {
            assert_eq!(
                store.record_delivery(delivery, "ping", None).await.unwrap(),
                DeliveryOutcome::Duplicate
            );
        }
        if let Some((id, delivery)) = &self.queued_delivery {
            let request = store.get_request(*id).await.unwrap().unwrap();
            assert_eq!(request.delivery_id.as_deref(), Some(delivery.as_str()));
            assert_eq!(
                store
                    .accept_delivery(delivery, "pull_request", None, "pull_request", &json!({}))
                    .await
                    .unwrap(),
                Accepted::Duplicate
            );
        }
        if self.redelivery {
            let rows = store.redeliveries().await.unwrap();
            assert_eq!(rows.len(), 1);
            assert_eq!(
                (
                    rows[0].guid.as_str(),
                    rows[0].delivery_id,
                    rows[0].outcome.as_str()
                ),
                ("g-8", 88, "requested")
            );
            // Requested: never claimed again.
            let claim = prodigy::store::NewRedelivery {
                guid: "g-8",
                delivery_id: 89,
                event: "pull_request",
                action: None,
                delivered_at: chrono::Utc::now(),
                requested_by: "other",
            };
            assert!(!store.claim_redelivery(&claim).await.unwrap());
        }
        if let Some(request) = self.request {
            assert_eq!(
                store.get_request(request).await.unwrap().unwrap().kind,
                "resume"
            );
        }
        if let Some((id, _)) = &self.queued_delivery
            && self.retried
        {
            let r = store.get_request(*id).await.unwrap().unwrap();
            assert_eq!(r.status, prodigy::store::RequestStatus::Queued);
            assert_eq!(r.last_error.as_deref(), Some("GitHub answered 502"));
            assert!(r.not_before.is_some());
        }
    }
}

/// Tables and their columns, as the database reports them.
type Schema = BTreeMap<String, BTreeSet<String>>;

async fn schema(db: &TestDb) -> Schema {
    let rows: Vec<(String, String)> = if db.is_postgres() {
        let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
        sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
        sqlx::query_as(
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE '\\_sqlx%' ESCAPE '\\' \
             AND m.name <> 'sqlite_sequence'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    };
    let mut out = Schema::new();
    for (table, column) in rows {
        out.entry(table).or_default().insert(column);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_have_the_same_schema() {
    let dbs = test_stores().await;
    let mut schemas = Vec::new();
    for (backend, db) in &dbs {
        db.store().await;
        let mut s = schema(db).await;
        if *backend == "sqlite" {
            // The SQLite lock table; PostgreSQL uses advisory locks instead.
            assert!(s.remove("job_locks").is_some());
        }
        schemas.push((backend, s));
    }
    let (_, sqlite) = &schemas[0];
    for table in [
        "jobs",
        "work_items",
        "attempts",
        "dlq_items",
        "events",
        "webhook_deliveries",
        "requests",
    ] {
        assert!(
            sqlite.contains_key(table),
            "table {table} is missing: {sqlite:?}"
        );
    }
    if let Some((_, postgres)) = schemas.get(1) {
        assert_eq!(sqlite, postgres);
    }
}
