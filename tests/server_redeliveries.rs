//! Missed-delivery recovery, end to end: the fake GitHub really delivers webhooks to the
//! server's URL and keeps GitHub's delivery log; deliveries fail while the server is down; at
//! its start the server lists the log, asks for the redelivery of what it missed, the fake
//! sends those deliveries again (same guid, signed) and their work runs, once.

mod support;

use std::collections::{BTreeSet, HashSet};

use chrono::{TimeDelta, Utc};
use prodigy::server::redeliver::{PassReport, Redeliverer};
use prodigy::types::JobStatus;
use support::fake_github::Op;
use support::server::{Ctx, SECRET, ServerOptions, WAIT, job_id_of, job_links};
use support::webhook::fixture_payload;

fn redeliverer(server: &prodigy::server::RunningServer, instance: &str) -> Redeliverer {
    Redeliverer {
        store: server.store.clone(),
        github: server.github.clone(),
        instance: instance.into(),
        max_per_pass: 50,
    }
}

/// Waits until each of `guids` has a successful redelivery in the fake's log.
async fn wait_redelivered(ctx: &Ctx, guids: &[String]) {
    ctx.gh
        .wait_for("the missed deliveries to be redelivered", WAIT, |w| {
            guids
                .iter()
                .all(|g| w.hooks.of(g).iter().any(|a| a.redelivery && a.ok()))
                .then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_missed_while_down_are_redelivered_at_start_and_run_once() {
    for (backend, db) in support::db::test_stores().await {
        eprintln!("backend: {backend}");
        let mut ctx = Ctx::new(db.url()).await;
        let addr = ctx.server.addr;
        ctx.gh
            .set_webhook(&format!("http://{addr}/webhook"), SECRET);
        // Delivered while the server is up: GitHub logs it OK.
        let ping = ctx
            .gh
            .deliver_webhook("ping", fixture_payload("ping/with-app_id.payload.json"))
            .await;
        assert!(ctx.gh.hook_attempts(&ping)[0].ok());

        // The server goes down; GitHub's deliveries fail.
        ctx.server.stop().await;
        let sha1 = ctx.push_pr(1, &[], false);
        let missed_now = ctx
            .gh
            .deliver_webhook("pull_request", ctx.pr_payload(1, &sha1, "opened", false))
            .await;
        let attempts = ctx.gh.hook_attempts(&missed_now);
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            (attempts[0].status.as_str(), attempts[0].status_code),
            ("failed to connect", 0)
        );
        let now = Utc::now();
        // Missed two days ago, behind more than a page of successful deliveries: found on the
        // second page of the log.
        let sha5 = ctx.push_pr(5, &[], false);
        let missed_earlier = ctx.gh.log_delivery(
            None,
            "pull_request",
            ctx.pr_payload(5, &sha5, "opened", false),
            now - TimeDelta::days(2),
            false,
        );
        for i in 0..120 {
            ctx.gh.log_delivery(
                None,
                "ping",
                fixture_payload("ping/with-app_id.payload.json"),
                now - TimeDelta::days(1) - TimeDelta::seconds(i),
                true,
            );
        }
        // Failed, but the server recorded it (it answered after GitHub's 10 seconds).
        let sha2 = ctx.push_pr(2, &[], false);
        let recorded = ctx.gh.log_delivery(
            None,
            "pull_request",
            ctx.pr_payload(2, &sha2, "opened", false),
            now - TimeDelta::hours(1),
            false,
        );
        ctx.server
            .store
            .record_delivery(&recorded, "pull_request", Some("opened"))
            .await
            .unwrap();
        // Failed, then redelivered by hand with success.
        let sha3 = ctx.push_pr(3, &[], false);
        let mended = ctx.gh.log_delivery(
            None,
            "pull_request",
            ctx.pr_payload(3, &sha3, "opened", false),
            now - TimeDelta::hours(3),
            false,
        );
        ctx.gh.log_delivery(
            Some(&mended),
            "pull_request",
            ctx.pr_payload(3, &sha3, "opened", false),
            now - TimeDelta::hours(2),
            true,
        );
        // Older than GitHub keeps.
        let sha4 = ctx.push_pr(4, &[], false);
        let too_old = ctx.gh.log_delivery(
            None,
            "pull_request",
            ctx.pr_payload(4, &sha4, "opened", false),
            now - TimeDelta::days(3) - TimeDelta::hours(1),
            false,
        );

        // The server starts again at the same address, with recovery on.
        let options = ServerOptions {
            listen: Some(addr),
            redeliver_every: "1h".into(),
            ..ctx.options.clone()
        };
        ctx.server = ctx.start_instance("a", 2, &options).await;
        let missed = [missed_earlier.clone(), missed_now.clone()];
        wait_redelivered(&ctx, &missed).await;

        // Each missed pull request ran its job, once.
        for pr in [1, 5] {
            let comments = ctx.wait_for_comments(pr, 1).await;
            assert_eq!(comments.len(), 1, "{backend} #{pr}: {comments:?}");
            let links = job_links(&comments[0]);
            ctx.wait_status(job_id_of(&links[0]), JobStatus::Succeeded)
                .await;
        }
        ctx.wait_idle().await;
        let jobs = ctx.server.store.list_jobs(100).await.unwrap();
        assert_eq!(jobs.len(), 2, "{backend}: {jobs:?}");

        // Exactly the two missed deliveries were asked for, by their failed attempts, and the
        // redelivery carried the original guid.
        let asked: BTreeSet<String> = ctx
            .gh
            .world()
            .requests
            .iter()
            .filter(|r| r.op == Op::RedeliverHookDelivery)
            .map(|r| r.path.clone())
            .collect();
        let expected: BTreeSet<String> = missed
            .iter()
            .map(|g| {
                let failed = ctx.gh.hook_attempts(g)[0].clone();
                assert!(!failed.ok());
                format!("/app/hook/deliveries/{}/attempts", failed.id)
            })
            .collect();
        assert_eq!(asked, expected, "{backend}");
        for g in &missed {
            let attempts = ctx.gh.hook_attempts(g);
            assert_eq!(attempts.len(), 2, "{backend} {g}: {attempts:?}");
            assert_eq!(
                ctx.server
                    .store
                    .delivery_outcome(g)
                    .await
                    .unwrap()
                    .as_deref(),
                Some("queued"),
                "{backend}: the redelivery arrived under the original guid {g}"
            );
        }
        // Neither the recorded, the mended nor the too old one was asked for (above), and
        // none was delivered again.
        for g in [&recorded, &mended, &too_old] {
            assert_eq!(
                ctx.gh.hook_attempts(g).len(),
                1 + usize::from(g == &mended),
                "{backend}"
            );
        }
        let rows = ctx.server.store.redeliveries().await.unwrap();
        let guids: HashSet<&str> = rows.iter().map(|r| r.guid.as_str()).collect();
        assert_eq!(
            guids,
            missed.iter().map(String::as_str).collect(),
            "{backend}"
        );
        assert!(
            rows.iter()
                .all(|r| r.outcome == "requested" && r.requested_by == "a" && r.attempts == 1),
            "{backend}: {rows:?}"
        );

        // The next pass finds nothing to ask for.
        let again = redeliverer(&ctx.server, "a").pass().await.unwrap();
        assert_eq!(
            (again.skipped, again.missed, again.requested, again.failed),
            (false, 0, 0, 0),
            "{backend}: {again:?}"
        );
        assert_eq!(ctx.gh.count(Op::RedeliverHookDelivery), 2, "{backend}");

        // The metrics count what was asked.
        let (status, text) = ctx.get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            text.lines().any(|l| l
                .starts_with("prodigy_webhook_redeliveries_total{outcome=\"requested\"}")),
            "{text}"
        );
        ctx.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivery_github_refuses_is_recorded_failed_and_tried_again_later() {
    let db = support::db::sqlite_db();
    let mut ctx = Ctx::new(db.url()).await;
    let addr = ctx.server.addr;
    ctx.gh
        .set_webhook(&format!("http://{addr}/webhook"), SECRET);
    ctx.server.stop().await;
    let guid = ctx
        .gh
        .deliver_webhook("ping", fixture_payload("ping/with-app_id.payload.json"))
        .await;
    let options = ServerOptions {
        listen: Some(addr),
        ..ctx.options.clone()
    };
    ctx.server = ctx.start_instance("a", 2, &options).await;
    let pass = || redeliverer(&ctx.server, "a");

    // GitHub answers 422 (its retry policy does not retry that): recorded, not lost.
    ctx.gh.fail_next(Op::RedeliverHookDelivery, 1, 422, &[]);
    let first = pass().pass().await.unwrap();
    assert_eq!(
        first,
        PassReport {
            listed: 1,
            missed: 1,
            failed: 1,
            ..PassReport::default()
        }
    );
    let rows = ctx.server.store.redeliveries().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].outcome.starts_with("failed: "), "{rows:?}");
    assert!(rows[0].outcome.contains("422"), "{rows:?}");

    // The next pass asks again, and GitHub delivers.
    let second = pass().pass().await.unwrap();
    assert_eq!((second.requested, second.failed), (1, 0), "{second:?}");
    wait_redelivered(&ctx, std::slice::from_ref(&guid)).await;
    let rows = ctx.server.store.redeliveries().await.unwrap();
    assert_eq!(
        (rows[0].outcome.as_str(), rows[0].attempts),
        ("requested", 2)
    );
    // Delivered: nothing more to ask for.
    let third = pass().pass().await.unwrap();
    assert_eq!((third.missed, third.requested), (0, 0), "{third:?}");
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_replicas_only_one_asks_for_each_missed_delivery() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let mut ctx = Ctx::new(db.url()).await;
    let addr = ctx.server.addr;
    ctx.gh
        .set_webhook(&format!("http://{addr}/webhook"), SECRET);
    ctx.server.stop().await;
    let mut missed = Vec::new();
    for _ in 0..5 {
        let guid = ctx
            .gh
            .deliver_webhook("ping", fixture_payload("ping/with-app_id.payload.json"))
            .await;
        missed.push(guid);
    }

    // While another process holds the redelivery lock, a pass asks for nothing.
    let options = ServerOptions {
        listen: Some(addr),
        ..ctx.options.clone()
    };
    ctx.server = ctx.start_instance("a", 1, &options).await;
    let held = ctx
        .server
        .store
        .try_redelivery_lock()
        .await
        .unwrap()
        .expect("the lock is free");
    let blocked = redeliverer(&ctx.server, "a").pass().await.unwrap();
    assert!(blocked.skipped, "{blocked:?}");
    assert_eq!(ctx.gh.count(Op::ListHookDeliveries), 0);
    held.release().await;
    ctx.server.stop().await;

    // Two replicas start at once, both with recovery on.
    let on = |listen| ServerOptions {
        listen,
        redeliver_every: "1h".into(),
        ..ctx.options.clone()
    };
    let (on_a, on_b) = (on(Some(addr)), on(None));
    let (a, mut b) = tokio::join!(
        ctx.start_instance("a", 1, &on_a),
        ctx.start_instance("b", 1, &on_b),
    );
    ctx.server = a;
    wait_redelivered(&ctx, &missed).await;
    // Every missed delivery was claimed before it was asked for, so any later pass, of
    // either replica, finds nothing more to ask for.
    for (name, server) in [("a", &ctx.server), ("b", &b)] {
        let more = redeliverer(server, name).pass().await.unwrap();
        assert_eq!((more.missed, more.requested), (0, 0), "{name}: {more:?}");
    }
    assert_eq!(ctx.gh.count(Op::RedeliverHookDelivery), 5);
    for g in &missed {
        let redeliveries = ctx
            .gh
            .hook_attempts(g)
            .iter()
            .filter(|a| a.redelivery)
            .count();
        assert_eq!(redeliveries, 1, "{g}");
    }
    let rows = ctx.server.store.redeliveries().await.unwrap();
    assert_eq!(rows.len(), 5);
    let by: HashSet<&str> = rows.iter().map(|r| r.requested_by.as_str()).collect();
    assert_eq!(by.len(), 1, "one replica asked for all of them: {rows:?}");
    b.stop().await;
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guid_is_claimed_once_unless_its_request_failed_or_its_claimer_stopped() {
    for (backend, db) in support::db::test_stores().await {
        let store = db.store().await;
        let claim = |guid: &'static str, by: &'static str| prodigy::store::NewRedelivery {
            guid,
            delivery_id: 42,
            event: "pull_request",
            action: Some("opened"),
            delivered_at: Utc::now(),
            requested_by: by,
        };
        // Requested: never again.
        assert!(store.claim_redelivery(&claim("g1", "a")).await.unwrap());
        assert!(!store.claim_redelivery(&claim("g1", "b")).await.unwrap());
        store
            .set_redelivery_outcome("g1", "requested")
            .await
            .unwrap();
        assert!(!store.claim_redelivery(&claim("g1", "b")).await.unwrap());
        // Failed: claimed again, 3 attempts in all.
        assert!(store.claim_redelivery(&claim("g2", "a")).await.unwrap());
        for _ in 0..2 {
            store
                .set_redelivery_outcome("g2", "failed: 502")
                .await
                .unwrap();
            assert!(store.claim_redelivery(&claim("g2", "b")).await.unwrap());
        }
        store
            .set_redelivery_outcome("g2", "failed: 502")
            .await
            .unwrap();
        assert!(
            !store.claim_redelivery(&claim("g2", "b")).await.unwrap(),
            "{backend}"
        );
        // Claimed by a process that stopped before recording the answer: free after 10 minutes.
        assert!(store.claim_redelivery(&claim("g3", "a")).await.unwrap());
        assert!(!store.claim_redelivery(&claim("g3", "b")).await.unwrap());
        let old = Utc::now() - TimeDelta::minutes(11);
        if db.is_postgres() {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
                .await
                .unwrap();
            sqlx::query("UPDATE webhook_redeliveries SET requested_at = $1 WHERE guid = 'g3'")
                .bind(old)
                .execute(&mut conn)
                .await
                .unwrap();
        } else {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(db.url())
                .await
                .unwrap();
            sqlx::query("UPDATE webhook_redeliveries SET requested_at = $1 WHERE guid = 'g3'")
                .bind(old)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        assert!(
            store.claim_redelivery(&claim("g3", "b")).await.unwrap(),
            "{backend}"
        );
        let rows = store.redeliveries().await.unwrap();
        let summary: Vec<(&str, &str, &str, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.guid.as_str(),
                    r.requested_by.as_str(),
                    r.outcome.as_str(),
                    r.attempts,
                )
            })
            .collect();
        let mut summary = summary;
        summary.sort();
        assert_eq!(
            summary,
            [
                ("g1", "a", "requested", 1),
                ("g2", "b", "failed: 502", 3),
                ("g3", "b", "requesting", 2)
            ],
            "{backend}"
        );
        // Which guids the webhook handler recorded.
        store
            .record_delivery("g1", "pull_request", None)
            .await
            .unwrap();
        let asked = ["g1".to_string(), "g9".to_string()];
        let recorded = store.recorded_deliveries(&asked).await.unwrap();
        assert_eq!(recorded, HashSet::from(["g1".to_string()]), "{backend}");
    }
}
