//! The webhook endpoint of `prodigy serve` through its real router: refusals, dedup, the queue,
//! every payload example, probes and a database that is down.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use prodigy::server::webhook::MAX_WEBHOOK_BODY_BYTES;
use prodigy::store::RequestStatus;
use support::fake_github::{Op, fixtures_dir};
use support::server::{Ctx, INSTALLATION, MAINTAINER, REPO, send};

fn raw(event: &str, body: Vec<u8>, signature: Option<&str>) -> Request<Body> {
    let mut req = Request::post("/webhook")
        .header("x-github-event", event)
        .header("x-github-delivery", "raw-delivery")
        .header("content-type", "application/json");
    if let Some(sig) = signature {
        req = req.header("x-hub-signature-256", sig);
    }
    req.body(Body::from(body)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_come_before_anything_is_recorded() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let body = ctx.pr_payload(1, &"a".repeat(40), "opened", false);

    let (status, text) = send(&ctx.server, raw("pull_request", body.clone(), None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    let wrong = prodigy::server::WebhookSecret::new("not the secret".to_string().into())
        .unwrap()
        .sign(&body);
    let (status, _) = send(&ctx.server, raw("pull_request", body.clone(), Some(&wrong))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Oversized: refused on the declared length, before reading or verifying.
    let big = vec![b' '; MAX_WEBHOOK_BODY_BYTES + 1];
    let (status, _) = send(&ctx.server, raw("pull_request", big, Some("sha256=00"))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // A valid signature over a body that is not a pull_request payload.
    let (status, text) = ctx
        .deliver("pull_request", b"{\"action\": 1}".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, _) = ctx.deliver("pull_request", b"not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    for s in [
        RequestStatus::Queued,
        RequestStatus::Claimed,
        RequestStatus::Done,
    ] {
        assert!(
            ctx.server
                .store
                .requests_with_status(s)
                .await
                .unwrap()
                .is_empty(),
            "nothing may be queued by a refused delivery"
        );
    }
    assert_eq!(
        ctx.server
            .store
            .delivery_outcome("raw-delivery")
            .await
            .unwrap(),
        None
    );
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivery_does_nothing() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let sha = ctx.push_pr(7, &[], false);
    let body = ctx.pr_payload(7, &sha, "opened", false);
    let (first, text) = ctx
        .deliver_as(&ctx.server, "pull_request", "same-id", body.clone())
        .await;
    assert_eq!(first, StatusCode::ACCEPTED, "{text}");
    let (again, text) = ctx
        .deliver_as(&ctx.server, "pull_request", "same-id", body)
        .await;
    assert_eq!(again, StatusCode::OK, "{text}");
    assert!(text.contains("duplicate"), "{text}");
    ctx.wait_for_comments(7, 1).await;
    ctx.wait_idle().await;
    let done = ctx
        .server
        .store
        .requests_with_status(RequestStatus::Done)
        .await
        .unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    let jobs = ctx
        .server
        .store
        .find_jobs_by_pr(
            &prodigy::types::RepoName::new(REPO),
            prodigy::types::PrNumber(7),
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(ctx.gh.comments_on(REPO, 7).len(), 1);

    // The same commit announced again (a new delivery: reopened) starts nothing new once its
    // workflow succeeded there.
    let job = jobs[0].id;
    let store = &ctx.server.store;
    support::server::wait_until("the job to succeed", support::server::WAIT, || async {
        (store.get_job(job).await.ok()?.status == prodigy::types::JobStatus::Succeeded)
            .then_some(())
    })
    .await;
    let (status, text) = ctx
        .deliver("pull_request", ctx.pr_payload(7, &sha, "reopened", false))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    ctx.wait_idle().await;
    let done = store
        .requests_with_status(RequestStatus::Done)
        .await
        .unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done[1]
            .message
            .as_deref()
            .unwrap_or("")
            .starts_with("every workflow already ran"),
        "{done:?}"
    );
    let jobs = store
        .find_jobs_by_pr(
            &prodigy::types::RepoName::new(REPO),
            prodigy::types::PrNumber(7),
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(ctx.gh.comments_on(REPO, 7).len(), 1);
    ctx.finish().await;
}

/// Every payload example, moved onto the allowed repository, is routed or ignored as its event
/// says; none is refused or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_payload_example_is_routed_or_ignored() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    let dir = fixtures_dir().join("github/webhooks");
    let mut seen = 0;
    for event_dir in std::fs::read_dir(&dir).unwrap() {
        let event_dir = event_dir.unwrap().path();
        let event = event_dir.file_name().unwrap().to_str().unwrap().to_string();
        if !event_dir.is_dir() || event == "schemas" || event == "github-openapi" {
            continue;
        }
        for file in std::fs::read_dir(&event_dir).unwrap() {
            let file = file.unwrap().path();
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            if v.get("repository").is_some() {
                v["repository"]["full_name"] = REPO.into();
            }
            if let Some(base) = v.pointer_mut("/pull_request/base/repo") {
                base["full_name"] = REPO.into();
            }
            if let Some(head) = v.pointer_mut("/pull_request/head/repo")
                && head.is_object()
            {
                head["full_name"] = REPO.into();
            }
            let action = v["action"].as_str().unwrap_or("").to_string();
            let queued = match event.as_str() {
                "pull_request" => {
                    ["opened", "reopened", "synchronize", "closed"].contains(&action.as_str())
                }
                // "Re-run all checks" from an installation; the check_run examples carry no
                // prodigy job id (`external_id`), so their re-runs are not prodigy's.
                "check_suite" => action == "rerequested" && v.get("installation").is_some(),
                _ => false,
            };
            let (status, text) = ctx.deliver(&event, serde_json::to_vec(&v).unwrap()).await;
            let want = if queued {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            assert_eq!(status, want, "{}: {text}", file.display());
            seen += 1;
        }
    }
    assert!(seen > 40, "only {seen} payload examples found");
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uninstalling_forgets_the_installation_token() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    ctx.comment(1, MAINTAINER, "/prodigy help").await;
    ctx.wait_for_comments(1, 1).await;
    ctx.comment(1, MAINTAINER, "/prodigy help").await;
    ctx.wait_for_comments(1, 2).await;
    assert_eq!(
        ctx.gh.count(Op::CreateAccessToken),
        1,
        "the token is cached"
    );

    let mut v: serde_json::Value = serde_json::from_slice(&support::webhook::fixture_payload(
        "installation/deleted.payload.json",
    ))
    .unwrap();
    v["installation"]["id"] = INSTALLATION.into();
    let (status, text) = ctx
        .deliver("installation", serde_json::to_vec(&v).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    ctx.comment(1, MAINTAINER, "/prodigy help").await;
    ctx.wait_for_comments(1, 3).await;
    assert_eq!(
        ctx.gh.count(Op::CreateAccessToken),
        2,
        "a new token after uninstall"
    );
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_and_a_database_that_is_down() {
    let db = support::db::sqlite_db();
    let ctx = Ctx::new(db.url()).await;
    assert_eq!(ctx.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(ctx.get("/readyz").await.0, StatusCode::OK);

    ctx.server.store.close().await;
    let (status, text) = ctx.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(ctx.get("/healthz").await.0, StatusCode::OK);
    let body = ctx.pr_payload(9, &"b".repeat(40), "opened", false);
    let (status, text) = ctx.deliver("pull_request", body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    // Ignored events need no database and still get their 2xx.
    let (status, _) = ctx.deliver("ping", b"{\"zen\":\"hi\"}".to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    ctx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_on_postgres_answers_503_then_recovers() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let ctx = Ctx::new(db.url()).await;
    let sha = ctx.push_pr(3, &[], false);
    // Terminate the server's sessions and refuse new ones: the database is down for it.
    let admin = support::db::postgres_server_url();
    let name = db
        .url()
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    let sql = |s: String| sqlx::raw_sql(sqlx::AssertSqlSafe(s));
    sql(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"))
        .execute(&mut conn)
        .await
        .unwrap();
    sql(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let (status, text) = ctx
        .deliver("pull_request", ctx.pr_payload(3, &sha, "opened", false))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(ctx.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);

    // Back up: GitHub's redelivery of the same delivery is accepted and handled.
    sql(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .execute(&mut conn)
        .await
        .unwrap();
    support::server::wait_until(
        "the database to be reachable again",
        support::server::WAIT,
        || async { (ctx.get("/readyz").await.0 == StatusCode::OK).then_some(()) },
    )
    .await;
    let (status, text) = ctx
        .deliver("pull_request", ctx.pr_payload(3, &sha, "opened", false))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    ctx.wait_for_comments(3, 1).await;
    ctx.finish().await;
}

/// The queue calls the runner relies on, on both backends.
#[tokio::test]
async fn queue_claims_by_kind_and_accepts_each_delivery_once() {
    use prodigy::store::Accepted;
    for (backend, db) in support::db::test_stores().await {
        let store = db.store().await;
        let payload = serde_json::json!({"n": 1});
        let raw = serde_json::value::to_raw_value(&payload).unwrap();
        let pr = store
            .accept_delivery(
                "d1",
                "pull_request",
                Some("opened"),
                "pull_request",
                &payload,
            )
            .await
            .unwrap();
        let comment = store
            .accept_delivery("d2", "issue_comment", Some("created"), "comment", &payload)
            .await
            .unwrap();
        let again = store
            .accept_delivery(
                "d1",
                "pull_request",
                Some("opened"),
                "pull_request",
                &payload,
            )
            .await
            .unwrap();
        assert_eq!(again, Accepted::Duplicate, "{backend}");
        let (Accepted::Queued(pr), Accepted::Queued(comment)) = (pr, comment) else {
            panic!("{backend}: both are new deliveries");
        };
        let claimed = store
            .claim_request_of_kind("w", "comment", &Default::default())
            .await
            .unwrap();
        assert_eq!(claimed.map(|r| r.id), Some(comment), "{backend}");
        assert!(
            store
                .claim_request_of_kind("w", "comment", &Default::default())
                .await
                .unwrap()
                .is_none()
        );
        let claimed = store.claim_request("w", &Default::default()).await.unwrap();
        assert_eq!(claimed.map(|r| r.id), Some(pr), "{backend}");
        assert_eq!(
            store
                .requests_with_status(RequestStatus::Claimed)
                .await
                .unwrap()
                .len(),
            2,
            "{backend}"
        );
        store.ping().await.unwrap();

        // A batch: new, repeated within the batch, and seen before.
        use prodigy::store::NewDelivery;
        let d = |id| NewDelivery {
            delivery_id: id,
            event: "pull_request",
            action: None,
            kind: "pull_request",
            payload: &raw,
        };
        let answers = store
            .accept_deliveries(&[d("b1"), d("b1"), d("d1"), d("b2")])
            .await
            .unwrap();
        assert!(
            matches!(answers[0], Accepted::Queued(_)),
            "{backend}: {answers:?}"
        );
        assert_eq!(answers[1], Accepted::Duplicate, "{backend}");
        assert_eq!(answers[2], Accepted::Duplicate, "{backend}");
        assert!(
            matches!(answers[3], Accepted::Queued(_)),
            "{backend}: {answers:?}"
        );
        let queued = store
            .requests_with_status(RequestStatus::Queued)
            .await
            .unwrap();
        let delivered: Vec<_> = queued.iter().map(|r| r.delivery_id.as_deref()).collect();
        assert_eq!(delivered, [Some("b1"), Some("b2")], "{backend}");
        let (Accepted::Queued(b1), Accepted::Queued(b2)) = (answers[0], answers[3]) else {
            unreachable!()
        };
        assert_eq!(
            queued.iter().map(|r| r.id).collect::<Vec<_>>(),
            [b1, b2],
            "{backend}: each delivery is answered with its own request"
        );
        // A delivery recorded before requests carried their delivery id is a duplicate too.
        store
            .record_delivery("legacy", "pull_request", Some("opened"))
            .await
            .unwrap();
        assert_eq!(
            store.accept_deliveries(&[d("legacy")]).await.unwrap(),
            [Accepted::Duplicate],
            "{backend}"
        );
    }
}
