//! One suite for every store operation and the job lock, run on SQLite and PostgreSQL.
// These tests are about the lock itself: they hold one across steps with the low-level
// `try_lock` that application code may not call (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prodigy::store::{
    AttemptOutcome, BackendKind, DeliveryOutcome, DlqDisposition, Holder, ItemFilter, JobEvent,
    JobLock, JobRefs, LockOutcome, NewItem, NewJob, RequestEnd, RequestPolicy, RequestStatus,
    RunHolder, Store, StoreError,
};
use prodigy::types::{
    CommitSha, ErrorClass, ItemKey, ItemStatus, JobId, JobStatus, Phase, PrNumber, RepoName,
};
use serde_json::json;
use sqlx::Connection;
use support::db::{TestDb, finished, started, test_stores};
use support::server::wait_until;

/// Runs `$check(backend, &db)` on every available backend.
macro_rules! on_every_backend {
    ($($name:ident => $check:ident;)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                for (backend, db) in test_stores().await {
                    eprintln!("-- {} on {backend}", stringify!($name));
                    $check(&db).await;
                }
            }
        )+
    };
}

on_every_backend! {
    jobs_are_created_found_and_listed => check_jobs;
    job_state_writes_need_the_lock_epoch => check_job_state;
    items_are_inserted_once_and_read_by_position => check_items;
    attempt_numbers_continue_across_runs_and_feed_the_dlq => check_attempts_and_dlq;
    interrupted_items_are_recovered => check_recover_interrupted;
    dlq_rows_are_removed_and_purged => check_dlq_maintenance;
    events_keep_their_order => check_events;
    the_lock_names_its_holder_and_is_released => check_lock_basics;
    a_taken_over_holder_is_fenced => check_fencing;
    fifty_contenders_one_winner => check_lock_contention;
    deliveries_are_recorded_once => check_deliveries;
    requests_are_claimed_once => check_request_queue;
    request_claims_are_leases_taken_back_once_they_run_out => check_request_leases;
    failed_requests_wait_their_backoff_then_give_up => check_request_retries;
    a_repository_costs_its_agent_runs_since_a_time => check_repo_cost;
    a_released_attempt_leaves_the_item_pending_and_out_of_the_dlq => check_release_attempt;
}

fn new_job(name: &str) -> NewJob {
    NewJob {
        workflow_path: "workflows/fix.yml".into(),
        workflow_text: format!("name: {name}\nmap: {{}}\n"),
        workflow_name: name.into(),
        repo_path: "/work/repo".into(),
        repo: Some(RepoName::new("Octo/Hello")),
        pr_number: Some(PrNumber(42)),
        head_sha: Some(CommitSha("0123456789abcdef0123456789abcdef01234567".into())),
    }
}

fn items(n: usize) -> Vec<NewItem> {
    (0..n)
        .map(|i| NewItem {
            key: ItemKey(format!("item-{i:05}")),
            position: i as i64,
            data: json!({"id": format!("item-{i:05}"), "n": i, "text": "héllo ✓", "nested": {"a": [1, 2]}}),
        })
        .collect()
}

async fn lock(store: &Store, job: JobId) -> JobLock {
    match store
        .try_lock(job, &Holder::this_process(None))
        .await
        .expect("try_lock")
    {
        LockOutcome::Acquired(lock) => lock,
        LockOutcome::Held { holder, .. } => panic!("job {job} unexpectedly held by {holder}"),
    }
}

fn failure(class: ErrorClass, message: &str, dlq: bool) -> AttemptOutcome {
    AttemptOutcome {
        success: false,
        exit_code: Some(1),
        error_class: Some(class),
        signature: Some(format!("sig-{}", class.as_str())),
        message: Some(message.into()),
        log_path: Some("/logs/a.log".into()),
        commit: None,
        result: None,
        dlq: dlq.then_some(DlqDisposition {
            reprocessable: true,
        }),
    }
}

fn success(commit: &str) -> AttemptOutcome {
    AttemptOutcome {
        success: true,
        exit_code: Some(0),
        error_class: None,
        signature: None,
        message: None,
        log_path: Some("/logs/b.log".into()),
        commit: Some(commit.into()),
        result: Some(json!({"output": "done"})),
        dlq: None,
    }
}

async fn check_jobs(db: &TestDb) {
    let store = db.store().await;
    assert_eq!(
        store.backend(),
        if db.is_postgres() {
            BackendKind::Postgres
        } else {
            BackendKind::Sqlite
        }
    );
    let a = store.create_job(&new_job("a")).await.unwrap();
    assert_eq!(a.status, JobStatus::Pending);
    assert_eq!(a.phase, Phase::Setup);
    assert_eq!(a.repo, Some(RepoName::new("octo/hello")));
    assert_eq!(a.workflow_text, "name: a\nmap: {}\n");
    assert_eq!(a.refs, JobRefs::default());
    assert_eq!(a.lease_epoch, 0);
    assert!(a.finished_at.is_none());

    let got = store.get_job(a.id).await.unwrap();
    assert_eq!(got.id, a.id);
    assert_eq!(got.created_at, a.created_at);
    assert_eq!(store.find_job(&a.id.to_string()).await.unwrap().id, a.id);
    assert_eq!(
        store
            .find_job(&a.id.to_string().to_uppercase())
            .await
            .unwrap()
            .id,
        a.id
    );

    let b = store.create_job(&new_job("b")).await.unwrap();
    let c = store.create_job(&new_job("c")).await.unwrap();
    // UUID v7 ids made in the same second share their leading (time) digits.
    match store.find_job(&a.id.to_string()[..4]).await {
        Err(StoreError::AmbiguousJob { count, .. }) => assert_eq!(count, 3),
        other => panic!("expected an ambiguous prefix, got {other:?}"),
    }
    // The unique tail end: a prefix long enough to tell them apart, with or without hyphens.
    let c_simple = c.id.0.simple().to_string();
    assert_eq!(store.find_job(&c_simple[..30]).await.unwrap().id, c.id);
    assert_eq!(
        store.find_job(&c.id.to_string()[..34]).await.unwrap().id,
        c.id
    );
    assert!(matches!(
        store.find_job("ffffffff").await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        store.find_job("no-such%").await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(matches!(
        store.get_job(JobId::new()).await,
        Err(StoreError::JobNotFound(_))
    ));

    let listed = store.list_jobs(2).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.job.id).collect::<Vec<_>>(),
        vec![c.id, b.id]
    );

    let by_pr = store
        .find_jobs_by_pr(&RepoName::new("OCTO/hello"), PrNumber(42))
        .await
        .unwrap();
    assert_eq!(
        by_pr.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![c.id, b.id, a.id]
    );
    assert!(
        store
            .find_jobs_by_pr(&RepoName::new("octo/hello"), PrNumber(7))
            .await
            .unwrap()
            .is_empty()
    );

    let elsewhere = store
        .create_job(&NewJob {
            head_sha: Some(CommitSha("f".repeat(40))),
            ..new_job("d")
        })
        .await
        .unwrap();
    let at_commit = |repo: &str, sha: &str| {
        let (store, repo, sha) = (store.clone(), RepoName::new(repo), sha.to_string());
        async move {
            store
                .find_jobs_by_head_sha(&repo, &sha)
                .await
                .unwrap()
                .iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        at_commit("OCTO/Hello", "0123456789abcdef0123456789abcdef01234567").await,
        vec![c.id, b.id, a.id]
    );
    assert_eq!(
        at_commit("octo/hello", &"f".repeat(40)).await,
        vec![elsewhere.id]
    );
    assert!(at_commit("octo/other", &"f".repeat(40)).await.is_empty());
}

async fn check_job_state(db: &TestDb) {
    let store = db.store().await;
    let job = store.create_job(&new_job("state")).await.unwrap();
    let held = lock(&store, job.id).await;
    let proof = held.proof();
    assert_eq!(proof.job(), job.id);
    assert_eq!(proof.epoch(), 1);

    store
        .set_job_state(proof, JobStatus::Running, Phase::Map, None)
        .await
        .unwrap();
    let refs = JobRefs {
        branch: Some(format!("prodigy/{}", job.id.short())),
        base_commit: Some("aaa".into()),
        setup_commit: Some("bbb".into()),
        map_commit: None,
        ..JobRefs::default()
    };
    store.set_job_refs(proof, &refs).await.unwrap();
    store
        .set_job_vars(proof, &json!({"files": ["a.rs", "b.rs"], "count": 2}))
        .await
        .unwrap();
    store
        .set_check_run_id_at_epoch(job.id, proof.epoch(), 987_654_321_012)
        .await
        .unwrap();

    let got = store.get_job(job.id).await.unwrap();
    assert_eq!(got.status, JobStatus::Running);
    assert_eq!(got.phase, Phase::Map);
    assert_eq!(got.refs, refs);
    assert_eq!(got.vars, json!({"files": ["a.rs", "b.rs"], "count": 2}));
    assert_eq!(got.check_run_id, Some(987_654_321_012));
    assert_eq!(got.lease_epoch, 1);
    assert!(got.finished_at.is_none());
    assert!(got.updated_at >= got.created_at);

    store
        .set_job_state(
            proof,
            JobStatus::Failed,
            Phase::Reduce,
            Some("reduce failed: exit 2"),
        )
        .await
        .unwrap();
    let got = store.get_job(job.id).await.unwrap();
    assert_eq!(got.status, JobStatus::Failed);
    assert_eq!(got.error.as_deref(), Some("reduce failed: exit 2"));
    assert!(got.finished_at.is_some());
    held.release().await.unwrap();

    // A resume clears the finish time again.
    let held = lock(&store, job.id).await;
    assert_eq!(held.proof().epoch(), 2);
    store
        .set_job_state(held.proof(), JobStatus::Running, Phase::Reduce, None)
        .await
        .unwrap();
    let got = store.get_job(job.id).await.unwrap();
    assert!(got.finished_at.is_none());
    assert!(got.error.is_none());
    held.release().await.unwrap();
}

async fn check_items(db: &TestDb) {
    let store = db.store().await;
    let job = store.create_job(&new_job("items")).await.unwrap();
    let held = lock(&store, job.id).await;
    let proof = held.proof();
    let mut input = items(2500);
    input.reverse(); // insertion order must not matter: items come back by position
    assert_eq!(store.insert_items(proof, &input).await.unwrap(), 2500);
    // Inserting again keeps the existing rows (and their state) as they are.
    let key0 = ItemKey::from("item-00000");
    let n = store
        .start_attempt(proof, &key0, "/wt/0", "b0", started(&key0))
        .await
        .unwrap();
    store
        .finish_attempt(proof, &key0, n, &success("c0"), &finished(&key0, n))
        .await
        .unwrap();
    let mut again = items(2501);
    again[0].data = json!({"changed": true});
    assert_eq!(store.insert_items(proof, &again).await.unwrap(), 1);
    assert_eq!(store.insert_items(proof, &[]).await.unwrap(), 0);

    let all = store.items(job.id, &ItemFilter::default()).await.unwrap();
    assert_eq!(all.len(), 2501);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(all[0].key, key0);
    assert_eq!(all[0].status, ItemStatus::Succeeded);
    assert_eq!(all[0].data["text"], "héllo ✓");
    assert_eq!(all[0].commit.as_deref(), Some("c0"));
    assert_eq!(all[0].result, Some(json!({"output": "done"})));
    assert_eq!(all[0].attempts, 1);
    assert_eq!(
        all[1].data,
        json!({"id": "item-00001", "n": 1, "text": "héllo ✓", "nested": {"a": [1, 2]}})
    );
    assert_eq!(all[1].status, ItemStatus::Pending);
    assert!(!all[1].merged && !all[1].in_dlq && all[1].commit.is_none() && all[1].result.is_none());

    let pending = store
        .items(
            job.id,
            &ItemFilter {
                status: Some(ItemStatus::Pending),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(pending.len(), 2500);
    store.mark_merged(proof, &key0, None).await.unwrap();
    let merged = store
        .items(
            job.id,
            &ItemFilter {
                merged: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        merged.iter().map(|i| i.key.clone()).collect::<Vec<_>>(),
        vec![key0.clone()]
    );
    let wanted = vec![
        ItemKey::from("item-00007"),
        ItemKey::from("item-00003"),
        ItemKey::from("nope"),
    ];
    let some = store
        .items(
            job.id,
            &ItemFilter {
                keys: Some(wanted),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        some.iter().map(|i| i.key.0.as_str()).collect::<Vec<_>>(),
        vec!["item-00003", "item-00007"]
    );
    let none = store
        .items(
            job.id,
            &ItemFilter {
                keys: Some(vec![]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    // More keys than one statement may bind.
    let many: Vec<ItemKey> = (0..2501)
        .rev()
        .map(|i| ItemKey(format!("item-{i:05}")))
        .collect();
    let got = store
        .items(
            job.id,
            &ItemFilter {
                keys: Some(many),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 2501);

    let counts = store.item_counts(job.id).await.unwrap();
    assert_eq!(
        (
            counts.total,
            counts.pending,
            counts.succeeded,
            counts.merged
        ),
        (2501, 2500, 1, 1)
    );
    assert_eq!((counts.running, counts.failed, counts.dlq), (0, 0, 0));
    let summary = store.list_jobs(10).await.unwrap();
    assert_eq!(summary[0].counts, counts);

    let missing = ItemKey::from("missing");
    assert!(matches!(
        store
            .start_attempt(proof, &missing, "/wt", "b", started(&missing))
            .await,
        Err(StoreError::ItemNotFound { .. })
    ));
    assert!(matches!(
        store.mark_merged(proof, &missing, None).await,
        Err(StoreError::ItemNotFound { .. })
    ));
    held.release().await.unwrap();
}

async fn check_attempts_and_dlq(db: &TestDb) {
    let store = db.store().await;
    let job = store.create_job(&new_job("attempts")).await.unwrap();
    let key = ItemKey::from("item-00001");
    let other = ItemKey::from("item-00002");

    // Run 1: fails into the DLQ.
    let held = lock(&store, job.id).await;
    store.insert_items(held.proof(), &items(3)).await.unwrap();
    let a1 = store
        .start_attempt(held.proof(), &key, "/wt/1", "prodigy/item-1", started(&key))
        .await
        .unwrap();
    assert_eq!(a1, 1);
    // The attempt row and its event commit in one transaction.
    let last = store.events(job.id, 0, 1000).await.unwrap().pop().unwrap();
    assert_eq!(last.event(), Some(started(&key)(1)));
    let running = store
        .items(
            job.id,
            &ItemFilter {
                keys: Some(vec![key.clone()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(running[0].status, ItemStatus::Running);
    store
        .finish_attempt(
            held.proof(),
            &key,
            a1,
            &failure(ErrorClass::Timeout, "timed out after 5s", true),
            &finished(&key, a1),
        )
        .await
        .unwrap();
    // A failure without a DLQ disposition stays out of the DLQ.
    let b1 = store
        .start_attempt(
            held.proof(),
            &other,
            "/wt/2",
            "prodigy/item-2",
            started(&other),
        )
        .await
        .unwrap();
    store
        .finish_attempt(
            held.proof(),
            &other,
            b1,
            &failure(ErrorClass::CommandFailed, "exit 1", false),
            &finished(&other, b1),
        )
        .await
        .unwrap();
    held.release().await.unwrap();

    let dlq = store.dlq(Some(job.id)).await.unwrap();
    assert_eq!(dlq.len(), 1);
    let first = &dlq[0];
    assert_eq!(
        (first.key.clone(), first.failure_count, first.error_class),
        (key.clone(), 1, ErrorClass::Timeout)
    );
    assert_eq!(first.data["id"], "item-00001");
    assert_eq!(first.signature, "sig-timeout");
    assert_eq!(first.last_message, "timed out after 5s");
    assert!(first.reprocessable && !first.manual_review);
    assert_eq!(first.first_failure, first.last_failure);

    // Run 2 (a resume): the attempt number continues, the DLQ row counts up.
    let held = lock(&store, job.id).await;
    let a2 = store
        .start_attempt(
            held.proof(),
            &key,
            "/wt/1b",
            "prodigy/item-1b",
            started(&key),
        )
        .await
        .unwrap();
    assert_eq!(a2, 2);
    let mut not_reprocessable = failure(ErrorClass::MergeConflict, "conflict in src/a.rs", true);
    not_reprocessable.dlq = Some(DlqDisposition {
        reprocessable: false,
    });
    store
        .finish_attempt(
            held.proof(),
            &key,
            a2,
            &not_reprocessable,
            &finished(&key, a2),
        )
        .await
        .unwrap();
    let dlq = store.dlq(Some(job.id)).await.unwrap();
    assert_eq!(dlq[0].failure_count, 2);
    assert_eq!(dlq[0].error_class, ErrorClass::MergeConflict);
    assert_eq!(dlq[0].last_message, "conflict in src/a.rs");
    assert_eq!(dlq[0].first_failure, first.first_failure);
    assert!(dlq[0].last_failure >= first.last_failure);
    assert!(!dlq[0].reprocessable && dlq[0].manual_review);
    let item = store
        .items(
            job.id,
            &ItemFilter {
                keys: Some(vec![key.clone()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(item[0].in_dlq && !item[0].reprocessable);
    assert_eq!((item[0].status, item[0].attempts), (ItemStatus::Failed, 2));
    assert_eq!(store.item_counts(job.id).await.unwrap().dlq, 1);

    // Run 3: succeeds and leaves the DLQ; the history keeps every attempt.
    let a3 = store
        .start_attempt(
            held.proof(),
            &key,
            "/wt/1c",
            "prodigy/item-1c",
            started(&key),
        )
        .await
        .unwrap();
    assert_eq!(a3, 3);
    store
        .finish_attempt(
            held.proof(),
            &key,
            a3,
            &success("cafe"),
            &finished(&key, a3),
        )
        .await
        .unwrap();
    assert!(store.dlq(Some(job.id)).await.unwrap().is_empty());
    let history = store.attempts(job.id, &key).await.unwrap();
    assert_eq!(
        history.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        history.iter().map(|a| a.success).collect::<Vec<_>>(),
        vec![Some(false), Some(false), Some(true)]
    );
    assert_eq!(history[0].error_class, Some(ErrorClass::Timeout));
    assert_eq!(history[0].message.as_deref(), Some("timed out after 5s"));
    assert_eq!(history[0].exit_code, Some(1));
    assert_eq!(history[0].worktree.as_deref(), Some("/wt/1"));
    assert_eq!(history[0].branch.as_deref(), Some("prodigy/item-1"));
    assert_eq!(history[0].log_path.as_deref(), Some("/logs/a.log"));
    assert_eq!(history[2].commit.as_deref(), Some("cafe"));
    assert!(
        history
            .iter()
            .all(|a| a.finished_at.is_some_and(|f| f >= a.started_at))
    );
    let item = store
        .items(
            job.id,
            &ItemFilter {
                keys: Some(vec![key.clone()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (item[0].status, item[0].attempts, item[0].in_dlq),
        (ItemStatus::Succeeded, 3, false)
    );
    assert_eq!(item[0].commit.as_deref(), Some("cafe"));
    assert!(matches!(
        store
            .finish_attempt(held.proof(), &key, 9, &success("x"), &finished(&key, 9))
            .await,
        Err(StoreError::ItemNotFound { .. })
    ));
    held.release().await.unwrap();
}

async fn check_recover_interrupted(db: &TestDb) {
    let store = db.store().await;
    let job = store.create_job(&new_job("recover")).await.unwrap();
    let held = lock(&store, job.id).await;
    store.insert_items(held.proof(), &items(4)).await.unwrap();
    for i in 0..3 {
        let key = ItemKey(format!("item-{i:05}"));
        let n = store
            .start_attempt(held.proof(), &key, "/wt", "b", started(&key))
            .await
            .unwrap();
        if i == 0 {
            store
                .finish_attempt(held.proof(), &key, n, &success("c"), &finished(&key, n))
                .await
                .unwrap();
        }
    }
    // The holder goes away without releasing, with two items running.
    let dropped_holder = held.holder().clone();
    drop(held);
    let held = if db.is_postgres() {
        // The dropped lock's connection is closed, and PostgreSQL frees the lock with it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match store
                .try_lock(job.id, &Holder::this_process(None))
                .await
                .unwrap()
            {
                LockOutcome::Acquired(l) => break l,
                LockOutcome::Held { .. } if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                LockOutcome::Held { holder, .. } => panic!("a dropped lock stays held by {holder}"),
            }
        }
    } else {
        // SQLite: the row names this very process, alive, so it is held until the lease runs
        // out (the heartbeat stopped with the drop); then it is taken over.
        match store
            .try_lock(job.id, &Holder::this_process(None))
            .await
            .unwrap()
        {
            LockOutcome::Held { holder, .. } => assert_eq!(holder, dropped_holder),
            LockOutcome::Acquired(_) => {
                panic!("a dropped SQLite lock was free before its lease ran out")
            }
        }
        expire_lock_row(db, job.id).await;
        lock(&store, job.id).await
    };
    assert_eq!(store.recover_interrupted(held.proof()).await.unwrap(), 2);
    assert_eq!(store.recover_interrupted(held.proof()).await.unwrap(), 0);
    let counts = store.item_counts(job.id).await.unwrap();
    assert_eq!(
        (counts.pending, counts.running, counts.succeeded),
        (3, 0, 1)
    );
    let history = store
        .attempts(job.id, &ItemKey::from("item-00001"))
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].success, Some(false));
    assert_eq!(history[0].error_class, Some(ErrorClass::Unknown));
    assert_eq!(history[0].message.as_deref(), Some("interrupted"));
    assert!(history[0].finished_at.is_some());
    let done = store
        .attempts(job.id, &ItemKey::from("item-00000"))
        .await
        .unwrap();
    assert_eq!(done[0].success, Some(true));
    // The next attempt of a recovered item is its second.
    let n = store
        .start_attempt(
            held.proof(),
            &ItemKey::from("item-00001"),
            "/wt",
            "b",
            started(&ItemKey::from("item-00001")),
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    held.release().await.unwrap();
}

async fn check_dlq_maintenance(db: &TestDb) {
    let store = db.store().await;
    let one = store.create_job(&new_job("dlq-1")).await.unwrap();
    let two = store.create_job(&new_job("dlq-2")).await.unwrap();
    for job in [one.id, two.id] {
        let held = lock(&store, job).await;
        store.insert_items(held.proof(), &items(3)).await.unwrap();
        for i in 0..3 {
            let key = ItemKey(format!("item-{i:05}"));
            let n = store
                .start_attempt(held.proof(), &key, "/wt", "b", started(&key))
                .await
                .unwrap();
            store
                .finish_attempt(
                    held.proof(),
                    &key,
                    n,
                    &failure(ErrorClass::Unknown, "boom", true),
                    &finished(&key, n),
                )
                .await
                .unwrap();
        }
        held.release().await.unwrap();
    }
    assert_eq!(store.dlq(None).await.unwrap().len(), 6);
    let held = lock(&store, one.id).await;
    store
        .remove_from_dlq(held.proof(), &ItemKey::from("item-00000"))
        .await
        .unwrap();
    assert_eq!(store.dlq(Some(one.id)).await.unwrap().len(), 2);
    let long_ago = Utc::now() - chrono::Duration::days(1);
    assert_eq!(
        store.purge_dlq(held.proof(), Some(long_ago)).await.unwrap(),
        0
    );
    let later = Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(store.purge_dlq(held.proof(), Some(later)).await.unwrap(), 2);
    assert!(store.dlq(Some(one.id)).await.unwrap().is_empty());
    // The other job's DLQ and this job's attempt history are untouched.
    assert_eq!(store.dlq(Some(two.id)).await.unwrap().len(), 3);
    assert_eq!(
        store
            .attempts(one.id, &ItemKey::from("item-00000"))
            .await
            .unwrap()
            .len(),
        1
    );
    held.release().await.unwrap();
    let held = lock(&store, two.id).await;
    assert_eq!(store.purge_dlq(held.proof(), None).await.unwrap(), 3);
    assert!(store.dlq(None).await.unwrap().is_empty());
    held.release().await.unwrap();
}

async fn check_events(db: &TestDb) {
    let store = db.store().await;
    let job = store.create_job(&new_job("events")).await.unwrap();
    assert_eq!(
        store
            .append_outside_event(job.id, &cancel_request("x"))
            .await
            .unwrap(),
        1
    );
    let held = lock(&store, job.id).await;
    assert_eq!(
        store
            .append_event(
                held.proof(),
                &JobEvent::JobStarted(RunHolder::this_process())
            )
            .await
            .unwrap(),
        2
    );
    // Concurrent appends each get their own number, with no gap.
    let mut tasks = Vec::new();
    let held = Arc::new(held);
    for i in 0..20 {
        let (store, held) = (store.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            store
                .append_event(held.proof(), &JobEvent::ItemsInterrupted { count: i })
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (3..=22).collect::<Vec<i64>>());
    let all = store.events(job.id, 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=22).collect::<Vec<i64>>()
    );
    assert_eq!(all[0].kind, "cancel_requested");
    assert_eq!(
        all[0].data,
        json!({"reason": "x", "cleanup": false, "by": null})
    );
    assert_eq!(all[0].event(), Some(cancel_request("x")));
    // Only requests from outside may be written without the lock.
    assert!(matches!(
        store
            .append_outside_event(job.id, &JobEvent::Cancelled { reason: "x".into() })
            .await,
        Err(StoreError::NeedsLock(kind)) if kind == "cancelled"
    ));
    let page = store.events(job.id, 2, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7]
    );
    assert!(matches!(
        store
            .append_outside_event(JobId::new(), &cancel_request("y"))
            .await,
        Err(StoreError::JobNotFound(_))
    ));
    Arc::into_inner(held)
        .expect("tasks are done")
        .release()
        .await
        .unwrap();
}

fn cancel_request(reason: &str) -> JobEvent {
    JobEvent::CancelRequested {
        reason: reason.into(),
        cleanup: false,
        by: None,
    }
}

async fn check_lock_basics(db: &TestDb) {
    let store = db.store().await;
    let job = store.create_job(&new_job("lock")).await.unwrap();
    let first = Holder::this_process(Some("replica-a".into()));
    let LockOutcome::Acquired(held) = store.try_lock(job.id, &first).await.unwrap() else {
        panic!("a free job must be acquired");
    };
    assert_eq!(held.holder(), &first);
    let epoch = held.proof().epoch();

    let second = Holder::this_process(None);
    let before = Utc::now();
    match store.try_lock(job.id, &second).await.unwrap() {
        LockOutcome::Held { holder, since } => {
            assert_eq!(holder, first);
            assert!(since <= before);
        }
        LockOutcome::Acquired(_) => panic!("a held job was acquired twice"),
    }
    // Another store handle (another pool) sees the same.
    let other = db.store().await;
    assert!(matches!(
        other.try_lock(job.id, &second).await.unwrap(),
        LockOutcome::Held { .. }
    ));
    assert_eq!(store.get_job(job.id).await.unwrap().lease_epoch, epoch);

    let (current, since) = store.lock_holder(job.id).await.unwrap().expect("held");
    assert_eq!(current, first);
    assert!(since <= before);
    held.release().await.unwrap();
    assert_eq!(store.lock_holder(job.id).await.unwrap(), None);
    assert!(matches!(
        store.lock_holder(JobId::new()).await,
        Err(StoreError::JobNotFound(_))
    ));
    let LockOutcome::Acquired(again) = other.try_lock(job.id, &second).await.unwrap() else {
        panic!("a released job must be free");
    };
    assert_eq!(again.proof().epoch(), epoch + 1);
    again.release().await.unwrap();

    assert!(matches!(
        store.try_lock(JobId::new(), &first).await,
        Err(StoreError::JobNotFound(_))
    ));
}

/// Makes the job's lock free for a new holder while the old one still has its proof: SQLite, the
/// heartbeat lapsed (a paused process); PostgreSQL, the holder's session was cut.
async fn expire_lock_row(db: &TestDb, job: JobId) {
    if db.is_postgres() {
        let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(cut.iter().all(|ok| *ok));
        conn.close().await.unwrap();
        // The server frees the lock as the terminated backend exits.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    } else {
        let mut conn = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
        let stale = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
        let n = sqlx::query("UPDATE job_locks SET heartbeat_at = $1 WHERE job_id = $2")
            .bind(stale)
            .bind(job.to_string())
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 1, "no lock row for {job}");
        conn.close().await.unwrap();
    }
}

async fn check_fencing(db: &TestDb) {
    let store = db.store().await;
    let job = store.create_job(&new_job("fence")).await.unwrap();
    let old = lock(&store, job.id).await;
    store.insert_items(old.proof(), &items(2)).await.unwrap();
    let key = ItemKey::from("item-00000");
    let n = store
        .start_attempt(old.proof(), &key, "/wt", "b", started(&key))
        .await
        .unwrap();

    expire_lock_row(db, job.id).await;
    let new_holder = Holder::this_process(Some("new".into()));
    let LockOutcome::Acquired(new) = store.try_lock(job.id, &new_holder).await.unwrap() else {
        panic!("a lapsed lock must be taken over");
    };
    assert_eq!(new.proof().epoch(), old.proof().epoch() + 1);
    let (current, _) = store.lock_holder(job.id).await.unwrap().expect("held");
    assert_eq!(current, new_holder);

    let fenced = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Fenced { .. }));
    let p = old.proof();
    assert!(fenced(
        store
            .set_job_state(p, JobStatus::Succeeded, Phase::Done, None)
            .await
    ));
    assert!(fenced(store.set_job_refs(p, &JobRefs::default()).await));
    assert!(fenced(store.set_job_vars(p, &json!({"x": 1})).await));
    assert!(fenced(
        store.set_check_run_id_at_epoch(p.job(), p.epoch(), 1).await
    ));
    assert!(fenced(store.insert_items(p, &items(5)).await.map(drop)));
    assert!(fenced(
        store
            .start_attempt(p, &key, "/wt", "b", started(&key))
            .await
            .map(drop)
    ));
    assert!(fenced(
        store
            .finish_attempt(p, &key, n, &success("stale"), &finished(&key, n))
            .await
    ));
    assert!(fenced(store.mark_merged(p, &key, None).await));
    let before = store.events(job.id, 0, 1000).await.unwrap().len();
    let merged = JobEvent::ItemMerged {
        key: key.clone(),
        commit: "c".into(),
        merge_commit: None,
        found_on_resume: false,
    };
    assert!(fenced(store.mark_merged(p, &key, Some(&merged)).await));
    // A refused state change leaves no event behind: they commit together or not at all.
    assert_eq!(store.events(job.id, 0, 1000).await.unwrap().len(), before);
    assert!(fenced(store.recover_interrupted(p).await.map(drop)));
    assert!(fenced(store.remove_from_dlq(p, &key).await));
    assert!(fenced(store.purge_dlq(p, None).await.map(drop)));
    assert!(fenced(
        store
            .append_event(p, &JobEvent::ItemsInterrupted { count: 0 })
            .await
            .map(drop)
    ));
    let err = store
        .set_job_state(p, JobStatus::Failed, Phase::Map, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("taken over"), "{err}");

    // Nothing of the old holder's landed; the new holder writes normally.
    let got = store.get_job(job.id).await.unwrap();
    assert_eq!(got.status, JobStatus::Pending);
    assert_eq!(store.item_counts(job.id).await.unwrap().total, 2);
    assert_eq!(store.recover_interrupted(new.proof()).await.unwrap(), 1);
    store
        .set_job_state(new.proof(), JobStatus::Running, Phase::Map, None)
        .await
        .unwrap();

    // The old holder's release does not free the new holder's lock.
    let _ = old.release().await;
    match store
        .try_lock(job.id, &Holder::this_process(None))
        .await
        .unwrap()
    {
        LockOutcome::Held { holder, .. } => assert_eq!(holder, new_holder),
        LockOutcome::Acquired(_) => panic!("the old holder's release freed the new holder's lock"),
    }
    new.release().await.unwrap();
}

async fn check_lock_contention(db: &TestDb) {
    let job = {
        let store = db.store().await;
        store.create_job(&new_job("contention")).await.unwrap().id
    };
    // Separate connections: PostgreSQL takes each lock on a dedicated connection anyway; SQLite
    // contenders get a store (a pool) of their own.
    let stores: Vec<Store> = if db.is_postgres() {
        vec![db.store().await]
    } else {
        let mut v = Vec::new();
        for _ in 0..50 {
            v.push(db.store().await);
        }
        v
    };
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = stores[i % stores.len()].clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let holder = Holder::this_process(Some(format!("contender-{i}")));
            barrier.wait().await;
            (holder.clone(), store.try_lock(job, &holder).await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    let mut held_by = HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            (holder, LockOutcome::Acquired(lock)) => winners.push((holder, lock)),
            (_, LockOutcome::Held { holder, .. }) => {
                held_by.insert(holder.id);
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of 50 contenders wins");
    let (winner, lock) = winners.pop().unwrap();
    assert_eq!(
        held_by,
        HashSet::from([winner.id.clone()]),
        "every loser names the winner"
    );
    lock.release().await.unwrap();
}

async fn check_deliveries(db: &TestDb) {
    let store = db.store().await;
    let id = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    assert_eq!(
        store
            .record_delivery(id, "issue_comment", Some("created"))
            .await
            .unwrap(),
        DeliveryOutcome::Recorded
    );
    assert_eq!(
        store
            .record_delivery(id, "issue_comment", Some("created"))
            .await
            .unwrap(),
        DeliveryOutcome::Duplicate
    );
    assert_eq!(
        store.record_delivery("other", "ping", None).await.unwrap(),
        DeliveryOutcome::Recorded
    );
    assert_eq!(
        store.delivery_outcome(id).await.unwrap().as_deref(),
        Some("received")
    );
    store
        .set_delivery_outcome(id, "queued request 1")
        .await
        .unwrap();
    assert_eq!(
        store.delivery_outcome(id).await.unwrap().as_deref(),
        Some("queued request 1")
    );
    assert_eq!(store.delivery_outcome("never").await.unwrap(), None);

    // Concurrent redeliveries: exactly one is recorded.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.record_delivery("race", "push", None).await.unwrap()
        }));
    }
    let mut recorded = 0;
    for t in tasks {
        if t.await.unwrap() == DeliveryOutcome::Recorded {
            recorded += 1;
        }
    }
    assert_eq!(recorded, 1);
}

/// The queue's policy in these tests: leases long enough never to run out by themselves.
const POLICY: RequestPolicy = RequestPolicy {
    lease: Duration::from_secs(600),
    max_attempts: 8,
    backoff: Duration::from_secs(600),
    max_backoff: Duration::from_secs(3600),
};

async fn check_request_queue(db: &TestDb) {
    let store = db.store().await;
    assert!(
        store
            .claim_request("idle", &POLICY)
            .await
            .unwrap()
            .is_none()
    );
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(
            store
                .enqueue_request("resume", &json!({"job": i}))
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    // The oldest comes first.
    let first = store
        .claim_request("w-first", &POLICY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, ids[0]);
    assert_eq!(
        (first.kind.as_str(), first.status, first.attempts),
        ("resume", RequestStatus::Claimed, 1)
    );
    assert_eq!(first.payload, json!({"job": 0}));
    assert_eq!(first.claimed_by.as_deref(), Some("w-first"));
    assert!(
        store
            .finish_request(&first, RequestEnd::Done { message: "resumed" })
            .await
            .unwrap()
    );
    let done = store.get_request(first.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.message.as_deref()),
        (RequestStatus::Done, Some("resumed"))
    );
    assert!(done.finished_at.is_some());

    // Eight workers drain the rest concurrently; nothing is claimed twice.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(r) = store
                .claim_request(&format!("w{w}"), &POLICY)
                .await
                .unwrap()
            {
                got.push(r.id);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    claimed.sort_unstable();
    assert_eq!(claimed, ids[1..].to_vec());

    // A restarted worker puts its claims back; they are claimed again with a new attempt count.
    let mine = store
        .get_request(ids[1])
        .await
        .unwrap()
        .unwrap()
        .claimed_by
        .unwrap();
    let requeued = store.requeue_claimed(&mine).await.unwrap();
    assert!(requeued >= 1);
    let again = store
        .claim_request("w-new", &POLICY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.attempts, 2);
    assert!(
        store
            .finish_request(
                &again,
                RequestEnd::Failed {
                    reason: "job not found"
                }
            )
            .await
            .unwrap()
    );
    let failed = store.get_request(again.id).await.unwrap().unwrap();
    assert_eq!(failed.status, RequestStatus::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("job not found"));
}

/// A claim is a lease: renewed, it stays; run out, any worker takes it back as a new attempt
/// and the old holder can neither renew nor record its end.
async fn check_request_leases(db: &TestDb) {
    let store = db.store().await;
    let short = RequestPolicy {
        lease: Duration::from_millis(300),
        ..POLICY
    };
    let id = store
        .enqueue_request("comment", &json!({"n": 1}))
        .await
        .unwrap();
    let a = store.claim_request("a", &short).await.unwrap().unwrap();
    assert_eq!((a.id, a.attempts), (id, 1));
    assert!(a.lease_expires_at.is_some());
    // Held: nobody else gets it, and its holder renews it.
    assert!(store.claim_request("b", &short).await.unwrap().is_none());
    assert_eq!(
        store
            .renew_requests("a", &[(id, 1)], short.lease)
            .await
            .unwrap(),
        [(id, 1)]
    );
    // Another worker's name or attempt renews nothing.
    assert!(
        store
            .renew_requests("b", &[(id, 1)], short.lease)
            .await
            .unwrap()
            .is_empty()
    );
    // `a` stops renewing: once the lease ran out, `b` takes it back.
    let b = wait_until("the lease to run out", Duration::from_secs(30), || async {
        store.claim_request("b", &short).await.unwrap()
    })
    .await;
    assert_eq!(
        (b.id, b.attempts, b.claimed_by.as_deref()),
        (id, 2, Some("b"))
    );
    let why = b.last_error.clone().unwrap_or_default();
    assert!(why.contains("instance a stopped renewing"), "{why}");
    assert!(
        store
            .renew_requests("a", &[(id, 1)], short.lease)
            .await
            .unwrap()
            .is_empty(),
        "the old holder's claim is lost"
    );
    assert!(
        !store
            .finish_request(&a, RequestEnd::Done { message: "late" })
            .await
            .unwrap(),
        "the old holder's end is refused"
    );
    assert!(
        store
            .finish_request(
                &b,
                RequestEnd::Done {
                    message: "handled by b"
                }
            )
            .await
            .unwrap()
    );
    let done = store.get_request(id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.message.as_deref(), done.attempts),
        (RequestStatus::Done, Some("handled by b"), 2)
    );
    assert!(store.claim_request("c", &short).await.unwrap().is_none());
}

/// A transient failure queues the request again, claimable only after its backoff; a claim
/// that runs out with its attempts used up fails with the reason.
async fn check_request_retries(db: &TestDb) {
    let store = db.store().await;
    let id = store.enqueue_request("comment", &json!({})).await.unwrap();
    let first = store.claim_request("a", &POLICY).await.unwrap().unwrap();
    assert!(
        store
            .finish_request(
                &first,
                RequestEnd::Retry {
                    after: Duration::from_secs(600),
                    error: "GitHub answered 502"
                }
            )
            .await
            .unwrap()
    );
    let waiting = store.get_request(id).await.unwrap().unwrap();
    assert_eq!(waiting.status, RequestStatus::Queued);
    assert_eq!(waiting.last_error.as_deref(), Some("GitHub answered 502"));
    assert!(waiting.not_before.unwrap() > Utc::now());
    assert!(waiting.claimed_by.is_none());
    // Not before its time.
    assert!(store.claim_request("a", &POLICY).await.unwrap().is_none());
    // A short backoff passes: claimed again as attempt 2.
    let second = store
        .claim_request_of_kind("a", "comment", &POLICY)
        .await
        .unwrap();
    assert!(second.is_none());
    let id2 = store
        .enqueue_request("comment", &json!({"n": 2}))
        .await
        .unwrap();
    let r = store.claim_request("a", &POLICY).await.unwrap().unwrap();
    assert_eq!(r.id, id2);
    store
        .finish_request(
            &r,
            RequestEnd::Retry {
                after: Duration::from_millis(100),
                error: "timeout",
            },
        )
        .await
        .unwrap();
    // Its second claim, the last allowed, is short.
    let once = RequestPolicy {
        lease: Duration::from_millis(200),
        max_attempts: 2,
        ..POLICY
    };
    let again = wait_until("the backoff to pass", Duration::from_secs(30), || async {
        store.claim_request("b", &once).await.unwrap()
    })
    .await;
    assert_eq!((again.id, again.attempts), (id2, 2));
    assert!(again.not_before.is_none());
    assert_eq!(again.last_error.as_deref(), Some("timeout"));

    // Attempts used up: a claim that runs out is failed, not taken back.
    let failed = wait_until(
        "the last claim to run out",
        Duration::from_secs(30),
        || async {
            assert!(store.claim_request("c", &once).await.unwrap().is_none());
            let r = store.get_request(id2).await.unwrap().unwrap();
            (r.status == RequestStatus::Failed).then_some(r)
        },
    )
    .await;
    let message = failed.message.unwrap_or_default();
    assert!(message.starts_with("gave up after 2 attempts"), "{message}");
    assert!(message.contains("instance b stopped renewing"), "{message}");
    assert!(
        !store
            .finish_request(&again, RequestEnd::Done { message: "late" })
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_opens_of_a_fresh_sqlite_file_all_migrate() {
    let db = support::db::sqlite_db();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = db.url().to_string();
        tasks.push(tokio::spawn(async move {
            Store::open(&url).await.map(|s| s.known_migrations())
        }));
    }
    for t in tasks {
        let known = t.await.unwrap().expect("every concurrent open succeeds");
        assert_eq!(db.store().await.applied_migrations().await.unwrap(), known);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_sqlite_works() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let job = store.create_job(&new_job("memory")).await.unwrap();
    let held = lock(&store, job.id).await;
    assert_eq!(
        store.insert_items(held.proof(), &items(10)).await.unwrap(),
        10
    );
    assert_eq!(store.item_counts(job.id).await.unwrap().total, 10);
    held.release().await.unwrap();
    assert!(matches!(
        Store::open("mysql://x").await,
        Err(StoreError::BadUrl(_))
    ));
}

async fn record_cost(store: &Store, job: JobId, transcript: &str, cost: f64) {
    let held = lock(store, job).await;
    store
        .record_agent_run(
            held.proof(),
            &prodigy::store::NewAgentRun {
                phase: "map".into(),
                key: None,
                attempt: None,
                session_id: None,
                model: None,
                transcript: transcript.into(),
                subtype: Some("success".into()),
                usage: prodigy::types::Usage {
                    cost_usd: cost,
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    held.release().await.unwrap();
}

async fn check_repo_cost(db: &TestDb) {
    let store = db.store().await;
    let repo = RepoName::new("octo/hello");
    let before = Utc::now() - chrono::Duration::seconds(1);
    assert_eq!(store.repo_cost_since(&repo, before).await.unwrap(), 0.0);
    let a = store.create_job(&new_job("a")).await.unwrap();
    let b = store.create_job(&new_job("b")).await.unwrap();
    let other = store
        .create_job(&NewJob {
            repo: Some(RepoName::new("octo/other")),
            ..new_job("other")
        })
        .await
        .unwrap();
    record_cost(&store, a.id, "a1.jsonl", 1.25).await;
    record_cost(&store, a.id, "a2.jsonl", 0.5).await;
    record_cost(&store, b.id, "b1.jsonl", 2.0).await;
    record_cost(&store, other.id, "o1.jsonl", 9.0).await;
    assert_eq!(store.repo_cost_since(&repo, before).await.unwrap(), 3.75);
    let later = Utc::now() + chrono::Duration::seconds(60);
    assert_eq!(store.repo_cost_since(&repo, later).await.unwrap(), 0.0);
}

async fn check_release_attempt(db: &TestDb) {
    let store = db.store().await;
    let job = store.create_job(&new_job("release")).await.unwrap();
    let held = lock(&store, job.id).await;
    store.insert_items(held.proof(), &items(1)).await.unwrap();
    let key = ItemKey("item-00000".into());
    let n = store
        .start_attempt(held.proof(), &key, "/wt", "b", started(&key))
        .await
        .unwrap();
    store
        .release_attempt(
            held.proof(),
            &key,
            n,
            "stopped: budget",
            &JobEvent::ItemStopped {
                key: key.clone(),
                attempt: n,
                reason: "budget_exhausted".into(),
            },
        )
        .await
        .unwrap();
    let last = store.events(job.id, 0, 1000).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, "item_stopped");
    let item = &store.items(job.id, &ItemFilter::default()).await.unwrap()[0];
    assert_eq!(item.status, ItemStatus::Pending);
    assert!(store.dlq(Some(job.id)).await.unwrap().is_empty());
    let attempts = store.attempts(job.id, &key).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].message.as_deref(), Some("stopped: budget"));
    assert!(attempts[0].finished_at.is_some());
    // The next attempt gets the next number.
    let next = store
        .start_attempt(held.proof(), &key, "/wt", "b", started(&key))
        .await
        .unwrap();
    assert_eq!(next, n + 1);
    held.release().await.unwrap();
}
