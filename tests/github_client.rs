//! The GitHub client against the fake GitHub: auth, token caching, retries, and GitHub's request
//! schemas enforced on every body.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prodigy::github::{
    Annotation, AnnotationLevel, CheckConclusion, CheckRunButton, CheckRunOutput, CheckRunUpdate,
    CheckStatus, CommentId, CommitSha, GitHubClient, InstallationId, NewCheckRun, Permission,
    PrNumber, Reaction, TOKEN_INSTALLATION,
};
use prodigy::types::RepoName;
use support::fake_github::{self, FakeGitHub, Op};

const INSTALLATION: u64 = 77;
const REPO: &str = "octo-org/Hello-World";
const SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";

async fn setup() -> (FakeGitHub, GitHubClient) {
    let fake = FakeGitHub::start(INSTALLATION, &[REPO]).await;
    let client = GitHubClient::new(
        &fake.base_url(),
        fake_github::test_app_auth(),
        fake_github::test_retry_policy(),
    )
    .unwrap();
    (fake, client)
}

fn inst() -> InstallationId {
    InstallationId(INSTALLATION)
}

fn repo() -> RepoName {
    RepoName::new(REPO)
}

fn annotation(i: usize) -> Annotation {
    Annotation {
        path: format!("src/file{i}.rs"),
        start_line: 3,
        end_line: 3,
        start_column: None,
        end_column: None,
        annotation_level: AnnotationLevel::Failure,
        message: format!("item {i} failed"),
        title: Some(format!("AgentError: item-{i}")),
        raw_details: None,
    }
}

fn new_run() -> NewCheckRun {
    NewCheckRun {
        name: "prodigy: review".into(),
        head_sha: CommitSha::from(SHA),
        external_id: Some("0192f0c4-5b6a-7c3d-8e9f-0a1b2c3d4e5f".into()),
        details_url: Some("https://prodigy.example/jobs/0192f0c4".into()),
        status: Some(CheckStatus::InProgress),
        conclusion: None,
        output: Some(CheckRunOutput {
            title: "Running".into(),
            summary: "0 of 10 items done".into(),
            text: None,
            annotations: vec![],
        }),
        actions: vec![],
    }
}

fn annotations_update(range: std::ops::Range<usize>) -> CheckRunUpdate {
    CheckRunUpdate {
        output: Some(CheckRunOutput {
            title: "Running".into(),
            summary: "failures so far".into(),
            text: None,
            annotations: range.map(annotation).collect(),
        }),
        ..CheckRunUpdate::default()
    }
}

#[tokio::test]
async fn token_is_fetched_once_and_cached_across_calls() {
    let (fake, client) = setup().await;
    for i in 0..3 {
        client
            .create_comment(inst(), &repo(), PrNumber(1), &format!("hello {i}"))
            .await
            .unwrap();
    }
    assert_eq!(fake.count(Op::CreateAccessToken), 1);
    assert_eq!(
        fake.comments_on(REPO, 1),
        vec!["hello 0", "hello 1", "hello 2"]
    );
    fake.assert_no_violations();
}

#[tokio::test]
async fn token_near_expiry_is_refreshed() {
    let (fake, client) = setup().await;
    // Tokens that expire within the refresh margin are never reused.
    fake.world().token_lifetime = chrono::Duration::minutes(4);
    client
        .create_comment(inst(), &repo(), PrNumber(1), "a")
        .await
        .unwrap();
    client
        .create_comment(inst(), &repo(), PrNumber(1), "b")
        .await
        .unwrap();
    assert_eq!(fake.count(Op::CreateAccessToken), 2);
    // A longer-lived token is then cached again.
    fake.world().token_lifetime = chrono::Duration::minutes(60);
    client
        .create_comment(inst(), &repo(), PrNumber(1), "c")
        .await
        .unwrap();
    client
        .create_comment(inst(), &repo(), PrNumber(1), "d")
        .await
        .unwrap();
    assert_eq!(fake.count(Op::CreateAccessToken), 3);
    fake.assert_no_violations();
}

#[tokio::test]
async fn revoked_token_is_replaced_once() {
    let (fake, client) = setup().await;
    client
        .create_comment(inst(), &repo(), PrNumber(1), "a")
        .await
        .unwrap();
    fake.revoke_tokens();
    client
        .create_comment(inst(), &repo(), PrNumber(1), "b")
        .await
        .unwrap();
    assert_eq!(fake.count(Op::CreateAccessToken), 2);
    assert_eq!(fake.world().comments.len(), 2);
}

#[tokio::test]
async fn forgotten_installation_fetches_a_new_token() {
    let (fake, client) = setup().await;
    client.installation_token(inst()).await.unwrap();
    client.forget_installation(inst());
    client.installation_token(inst()).await.unwrap();
    assert_eq!(fake.count(Op::CreateAccessToken), 2);
}

#[tokio::test]
async fn bad_gateway_then_success_is_retried() {
    let (fake, client) = setup().await;
    fake.fail_next(Op::CreateComment, 1, 502, &[]);
    let id = client
        .create_comment(inst(), &repo(), PrNumber(3), "after a 502")
        .await
        .unwrap();
    assert_eq!(fake.count(Op::CreateComment), 2);
    let world = fake.world();
    assert_eq!(
        world.comments.len(),
        1,
        "the failed attempt changed nothing"
    );
    assert_eq!(CommentId(world.comments[0].id), id);
}

#[tokio::test]
async fn secondary_rate_limit_honours_retry_after() {
    let (fake, client) = setup().await;
    let run = client
        .create_check_run(inst(), &repo(), &new_run())
        .await
        .unwrap();
    fake.fail_next(Op::UpdateCheckRun, 1, 403, &[("retry-after", "1")]);
    let started = Instant::now();
    client
        .update_check_run(inst(), &repo(), run, &annotations_update(0..2))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited only {:?}",
        started.elapsed()
    );
    assert_eq!(fake.count(Op::UpdateCheckRun), 2);
    assert_eq!(fake.world().check_runs[&run.0].annotations.len(), 2);
    fake.assert_no_violations();
}

#[tokio::test]
async fn primary_rate_limit_waits_for_reset() {
    let (fake, client) = setup().await;
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    fake.fail_next(
        Op::CreateReaction,
        1,
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset),
        ],
    );
    client
        .create_reaction(inst(), &repo(), CommentId(9), Reaction::Eyes)
        .await
        .unwrap();
    assert_eq!(fake.count(Op::CreateReaction), 2);
    let world = fake.world();
    assert_eq!(world.reactions.len(), 1);
    assert_eq!(world.reactions[0].content, "eyes");
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_the_attempts() {
    let (fake, client) = setup().await;
    fake.fail_next(Op::CreateComment, 10, 503, &[]);
    let err = client
        .create_comment(inst(), &repo(), PrNumber(1), "x")
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    assert_eq!(
        fake.count(Op::CreateComment),
        4,
        "max_attempts of the test policy"
    );
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let (fake, client) = setup().await;
    let err = client
        .pull_request(inst(), &repo(), PrNumber(404))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    assert!(err.to_string().contains("/pulls/404"), "{err}");
    assert_eq!(fake.count(Op::GetPull), 1);
}

#[tokio::test]
async fn plain_forbidden_is_not_retried() {
    let (fake, client) = setup().await;
    fake.fail_next(Op::CreateComment, 1, 403, &[]);
    let err = client
        .create_comment(inst(), &repo(), PrNumber(1), "x")
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403));
    assert_eq!(fake.count(Op::CreateComment), 1);
}

#[tokio::test]
async fn plain_forbidden_is_a_refusal_but_an_exhausted_rate_limit_is_not() {
    let (fake, client) = setup().await;
    fake.fail_next(Op::CreateComment, 1, 403, &[]);
    let err = client
        .create_comment(inst(), &repo(), PrNumber(1), "x")
        .await
        .unwrap_err();
    assert!(err.is_refusal(), "{err}");
    fake.fail_next(Op::CreateComment, 4, 403, &[("retry-after", "0")]);
    let err = client
        .create_comment(inst(), &repo(), PrNumber(1), "x")
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403));
    assert!(!err.is_refusal(), "a rate limit passes: {err}");
    fake.fail_next(Op::CreateComment, 1, 502, &[]);
    let err = client
        .create_comment(inst(), &repo(), PrNumber(1), "x")
        .await;
    assert!(err.is_ok(), "a 502 is retried: {err:?}");
}

/// The Action's client: the workflow token on every call, no App JWT, no installation token.
#[tokio::test]
async fn a_token_client_sends_its_token_and_never_acts_as_the_app() {
    let fake = FakeGitHub::start(INSTALLATION, &[REPO]).await;
    let token = fake.issue_workflow_token(REPO, true);
    let client = GitHubClient::with_token(
        &fake.base_url(),
        secrecy::SecretString::from(token.clone()),
        fake_github::test_retry_policy(),
    )
    .unwrap();
    assert!(client.app().is_none());
    assert!(!format!("{client:?}").contains(&token), "token in Debug");
    let run = client
        .create_check_run(TOKEN_INSTALLATION, &repo(), &new_run())
        .await
        .unwrap();
    client
        .update_check_run(TOKEN_INSTALLATION, &repo(), run, &annotations_update(0..3))
        .await
        .unwrap();
    assert_eq!(fake.check_runs_for(REPO, SHA)[0].annotations.len(), 3);
    // Installation tokens are the App's business; the token client answers with its own.
    let err = client
        .create_comment(
            TOKEN_INSTALLATION,
            &RepoName::new("elsewhere/repo"),
            PrNumber(1),
            "x",
        )
        .await
        .unwrap_err();
    assert!(err.is_refusal(), "{err}");
    assert_eq!(fake.count(Op::CreateAccessToken), 0, "no App JWT was used");
    fake.assert_no_violations();
}

#[tokio::test]
async fn a_workflow_token_without_checks_write_is_refused_once_not_retried() {
    let fake = FakeGitHub::start(INSTALLATION, &[REPO]).await;
    let token = fake.issue_workflow_token(REPO, false);
    let client = GitHubClient::with_token(
        &fake.base_url(),
        secrecy::SecretString::from(token),
        fake_github::test_retry_policy(),
    )
    .unwrap();
    let err = client
        .create_check_run(TOKEN_INSTALLATION, &repo(), &new_run())
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403));
    assert!(err.is_refusal(), "{err}");
    assert!(err.to_string().contains("Resource not accessible"), "{err}");
    assert_eq!(fake.count(Op::CreateCheckRun), 1);
    // Other calls with the same token still work.
    client
        .create_comment(TOKEN_INSTALLATION, &repo(), PrNumber(1), "hello")
        .await
        .unwrap();
    fake.assert_no_violations();
}

#[tokio::test]
async fn check_run_lifecycle_appends_annotations_in_batches_of_50() {
    let (fake, client) = setup().await;
    let run = client
        .create_check_run(inst(), &repo(), &new_run())
        .await
        .unwrap();
    client
        .update_check_run(inst(), &repo(), run, &annotations_update(0..50))
        .await
        .unwrap();
    client
        .update_check_run(inst(), &repo(), run, &annotations_update(50..60))
        .await
        .unwrap();
    let done = CheckRunUpdate {
        status: Some(CheckStatus::Completed),
        conclusion: Some(CheckConclusion::Failure),
        output: Some(CheckRunOutput {
            title: "10 of 60 items failed".into(),
            summary: "| done | failed |\n|---|---|\n| 50 | 10 |".into(),
            text: Some("details".into()),
            annotations: vec![],
        }),
        actions: Some(vec![
            CheckRunButton {
                label: "Resume".into(),
                description: "Run the items left".into(),
                identifier: "resume".into(),
            },
            CheckRunButton {
                label: "Retry failed".into(),
                description: "Retry the dead-letter queue".into(),
                identifier: "retry-dlq".into(),
            },
        ]),
        ..CheckRunUpdate::default()
    };
    client
        .update_check_run(inst(), &repo(), run, &done)
        .await
        .unwrap();
    fake.assert_no_violations();
    let world = fake.world();
    let stored = &world.check_runs[&run.0];
    assert_eq!(stored.annotations.len(), 60);
    assert_eq!(stored.status, "completed");
    assert_eq!(stored.conclusion.as_deref(), Some("failure"));
    assert_eq!(stored.actions.len(), 2);
    assert_eq!(
        stored.external_id.as_deref(),
        Some("0192f0c4-5b6a-7c3d-8e9f-0a1b2c3d4e5f")
    );
    assert_eq!(stored.updates, 3);
}

#[tokio::test]
async fn fifty_one_annotations_are_refused_by_the_schema() {
    let (fake, client) = setup().await;
    let run = client
        .create_check_run(inst(), &repo(), &new_run())
        .await
        .unwrap();
    let err = client
        .update_check_run(inst(), &repo(), run, &annotations_update(0..51))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    let violations = std::mem::take(&mut fake.world().schema_violations);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("annotations"), "{}", violations[0]);
    assert!(fake.world().check_runs[&run.0].annotations.is_empty());
}

#[tokio::test]
async fn completed_without_conclusion_is_refused_by_the_schema() {
    let (fake, client) = setup().await;
    let mut run = new_run();
    run.status = Some(CheckStatus::Completed);
    let err = client
        .create_check_run(inst(), &repo(), &run)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    assert_eq!(std::mem::take(&mut fake.world().schema_violations).len(), 1);
    run.conclusion = Some(CheckConclusion::Success);
    client
        .create_check_run(inst(), &repo(), &run)
        .await
        .unwrap();
    fake.assert_no_violations();
}

#[tokio::test]
async fn collaborator_permissions() {
    let (fake, client) = setup().await;
    fake.set_permission(REPO, "alice", "maintain");
    fake.set_permission(REPO, "Bob", "triage");
    fake.set_permission(REPO, "carol", "write");
    let perm = |user: &'static str| {
        let client = client.clone();
        async move {
            client
                .collaborator_permission(inst(), &repo(), user)
                .await
                .unwrap()
        }
    };
    assert_eq!(perm("alice").await, Permission::Maintain);
    assert_eq!(perm("bob").await, Permission::Triage);
    assert_eq!(perm("carol").await, Permission::Write);
    assert_eq!(perm("mallory").await, Permission::None);
    assert!(perm("carol").await.can_write());
    assert!(!perm("bob").await.can_write());
}

#[tokio::test]
async fn pull_request_and_fork_detection() {
    let (fake, client) = setup().await;
    fake.add_pr(REPO, 1, SHA, Some(REPO));
    fake.add_pr(REPO, 2, SHA, Some("someone/Hello-World"));
    fake.add_pr(REPO, 3, SHA, None);
    let own = client
        .pull_request(inst(), &repo(), PrNumber(1))
        .await
        .unwrap();
    assert_eq!(own.head_sha, CommitSha::from(SHA));
    assert_eq!(own.head_ref, "pr-1");
    assert_eq!(own.base_ref, "main");
    assert!(!own.is_fork);
    assert!(
        client
            .pull_request(inst(), &repo(), PrNumber(2))
            .await
            .unwrap()
            .is_fork
    );
    let deleted = client
        .pull_request(inst(), &repo(), PrNumber(3))
        .await
        .unwrap();
    assert!(deleted.is_fork && deleted.head_repo.is_none());
}

#[tokio::test]
async fn file_contents_at_a_ref() {
    let (fake, client) = setup().await;
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    fake.add_file(REPO, SHA, ".prodigy/review.yml", b"name: review\n");
    fake.add_file(REPO, SHA, "bin/data", &big);
    let got = client
        .file_contents(inst(), &repo(), ".prodigy/review.yml", SHA)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"name: review\n"[..]));
    let got = client
        .file_contents(inst(), &repo(), "bin/data", SHA)
        .await
        .unwrap();
    assert_eq!(got, Some(big), "multi-line base64 decodes");
    let missing = client
        .file_contents(inst(), &repo(), ".prodigy/review.yml", "other-ref")
        .await
        .unwrap();
    assert_eq!(missing, None);
}

#[tokio::test]
async fn repository_outside_the_installation_is_refused_at_the_token() {
    let (fake, client) = setup().await;
    let err = client
        .create_comment(inst(), &RepoName::new("elsewhere/repo"), PrNumber(1), "x")
        .await
        .unwrap_err();
    // The token is asked for that repository only, which the installation does not cover.
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    assert_eq!(fake.count(Op::CreateComment), 0);
    fake.assert_no_violations();
}

#[tokio::test]
async fn unknown_installation_fails_at_the_token() {
    let (fake, client) = setup().await;
    let err = client
        .create_comment(InstallationId(999), &repo(), PrNumber(1), "x")
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    assert!(
        err.to_string()
            .contains("/app/installations/999/access_tokens"),
        "{err}"
    );
    assert_eq!(fake.count(Op::CreateComment), 0);
}

#[test]
fn app_jwt_has_githubs_claims() {
    #[derive(serde::Deserialize)]
    struct Claims {
        iat: u64,
        exp: u64,
        iss: String,
    }
    let now = SystemTime::now();
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let jwt = fake_github::test_app_auth().jwt(now).unwrap();
    let public = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/test-app-key.TEST-ONLY.pub.pem"),
    )
    .unwrap();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public).unwrap();
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    use secrecy::ExposeSecret;
    let claims = jsonwebtoken::decode::<Claims>(jwt.expose_secret(), &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims.iss, fake_github::TEST_APP_ID.to_string());
    assert_eq!(claims.iat, now_secs - 60);
    assert!(claims.exp > now_secs && claims.exp <= now_secs + 600);
}

#[tokio::test]
async fn concurrent_calls_share_one_token_request() {
    let (fake, client) = setup().await;
    let calls = (0..10).map(|i| {
        let client = client.clone();
        async move {
            client
                .create_comment(inst(), &repo(), PrNumber(5), &format!("c{i}"))
                .await
                .unwrap()
        }
    });
    let ids = futures_join_all(calls).await;
    assert_eq!(ids.len(), 10);
    assert_eq!(fake.count(Op::CreateAccessToken), 1);
}

/// Runs futures concurrently on the test runtime (tokio tasks, no extra crate).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn unreachable_github_is_a_transport_error_after_retries() {
    // Bind then drop a listener: the port is free and nothing answers on it.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let client = GitHubClient::new(
        &format!("http://{addr}"),
        fake_github::test_app_auth(),
        fake_github::test_retry_policy(),
    )
    .unwrap();
    let err = client.installation_token(inst()).await.unwrap_err();
    assert!(err.status().is_none());
    let text = err.to_string();
    assert!(text.contains("could not reach GitHub"), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert!(
        text.contains("/app/installations/77/access_tokens"),
        "{text}"
    );
}

#[test]
fn bad_base_url_is_refused() {
    let err = GitHubClient::new(
        "not a url",
        fake_github::test_app_auth(),
        fake_github::test_retry_policy(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a url"), "{err}");
}

#[tokio::test]
async fn github_limits_on_buttons_and_summary_are_enforced() {
    let (fake, client) = setup().await;
    let run = client
        .create_check_run(inst(), &repo(), &new_run())
        .await
        .unwrap();
    let button = |id: &str| CheckRunButton {
        label: "Resume".into(),
        description: "Run the items left".into(),
        identifier: id.into(),
    };
    let too_many = CheckRunUpdate {
        actions: Some(vec![button("a"), button("b"), button("c"), button("d")]),
        ..CheckRunUpdate::default()
    };
    let long_identifier = CheckRunUpdate {
        actions: Some(vec![button(&"x".repeat(21))]),
        ..CheckRunUpdate::default()
    };
    let mut long_summary = annotations_update(0..0);
    long_summary.output.as_mut().unwrap().summary = "s".repeat(65_536);
    for update in [too_many, long_identifier, long_summary] {
        let err = client
            .update_check_run(inst(), &repo(), run, &update)
            .await
            .unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    }
    assert_eq!(std::mem::take(&mut fake.world().schema_violations).len(), 3);
    // At the limits exactly, GitHub accepts.
    let mut at_limits = annotations_update(0..50);
    at_limits.output.as_mut().unwrap().summary = "s".repeat(65_535);
    at_limits.actions = Some(vec![button("a"), button("b"), button(&"c".repeat(20))]);
    client
        .update_check_run(inst(), &repo(), run, &at_limits)
        .await
        .unwrap();
    fake.assert_no_violations();
}

#[tokio::test]
async fn documented_annotation_limits_are_enforced_and_within_limits_meets_them() {
    let (fake, client) = setup().await;
    let run = client
        .create_check_run(inst(), &repo(), &new_run())
        .await
        .unwrap();
    let mut big = annotation(1);
    big.title = Some("t".repeat(256));
    big.message = "m".repeat(64 * 1024 + 1);
    big.end_line = 9;
    big.start_column = Some(1);
    let update = |a: Annotation| CheckRunUpdate {
        output: Some(CheckRunOutput {
            title: "t".into(),
            summary: "s".into(),
            text: None,
            annotations: vec![a],
        }),
        ..CheckRunUpdate::default()
    };
    let err = client
        .update_check_run(inst(), &repo(), run, &update(big.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    let violations = std::mem::take(&mut fake.world().schema_violations);
    assert_eq!(violations.len(), 1);
    for part in ["title over 255", "message over 64 KB", "columns given"] {
        assert!(violations[0].contains(part), "{part}: {}", violations[0]);
    }
    client
        .update_check_run(inst(), &repo(), run, &update(big.within_limits()))
        .await
        .unwrap();
    fake.assert_no_violations();
}

#[tokio::test]
async fn a_repositorys_calls_use_a_token_narrowed_to_it_with_the_job_permissions() {
    const OTHER: &str = "octo-org/other";
    let fake = FakeGitHub::start(INSTALLATION, &[REPO, OTHER]).await;
    let client = GitHubClient::new(
        &fake.base_url(),
        fake_github::test_app_auth(),
        fake_github::test_retry_policy(),
    )
    .unwrap();
    for repo in [REPO, OTHER, REPO] {
        client
            .create_comment(inst(), &RepoName::new(repo), PrNumber(3), "scoped")
            .await
            .unwrap();
    }
    // One token per repository, each asked for that repository only.
    let requests: Vec<serde_json::Value> = fake
        .world()
        .requests
        .iter()
        .filter(|r| r.op == Op::CreateAccessToken)
        .map(|r| r.body.clone().expect("a token request has a body"))
        .collect();
    let permissions = serde_json::json!({
        "checks": "write", "contents": "read", "issues": "write",
        "metadata": "read", "pull_requests": "read"
    });
    assert_eq!(
        requests,
        [
            serde_json::json!({"repositories": ["hello-world"], "permissions": permissions}),
            serde_json::json!({"repositories": ["other"], "permissions": permissions}),
        ]
    );
    let tokens = fake.world().tokens.clone();
    assert_eq!(
        tokens[0].repositories,
        Some(vec![REPO.to_ascii_lowercase()])
    );
    assert_eq!(tokens[1].repositories, Some(vec![OTHER.to_string()]));
    fake.assert_no_violations();
}

/// What the bot posts is behaviour: the fake fails a test that never read a comment or a
/// check-run update (`assert_all_seen`, part of the server harness's `finish`).
#[tokio::test]
async fn the_fake_fails_a_test_that_never_read_what_the_bot_posted() {
    let (fake, client) = setup().await;
    let unread = |fake: &FakeGitHub| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fake.assert_all_seen()))
            .err()
            .and_then(|e| e.downcast_ref::<String>().cloned())
    };
    client
        .create_comment(inst(), &repo(), PrNumber(1), "posted")
        .await
        .unwrap();
    let complaint = unread(&fake).expect("an unread comment fails the check");
    assert!(complaint.contains("#1: posted"), "{complaint}");
    assert_eq!(fake.comments_on(REPO, 1), vec!["posted"]);
    fake.assert_all_seen();

    let run = client
        .create_check_run(inst(), &repo(), &new_run())
        .await
        .unwrap();
    assert!(
        unread(&fake).is_some(),
        "an unread check run fails the check"
    );
    assert_eq!(fake.check_runs_for(REPO, SHA).len(), 1);
    fake.assert_all_seen();
    client
        .update_check_run(inst(), &repo(), run, &annotations_update(0..1))
        .await
        .unwrap();
    let complaint = unread(&fake).expect("an unread update fails the check");
    assert!(complaint.contains("after 1 updates"), "{complaint}");
    assert_eq!(fake.check_runs_for(REPO, SHA)[0].updates, 1);
    fake.assert_all_seen();
    fake.assert_no_violations();
}
