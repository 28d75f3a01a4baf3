//! The server's repository cache fetching over HTTP with the git CLI, against a local remote
//! that, like GitHub, wants the installation token as basic auth for `x-access-token`. The
//! remote is git's "dumb" HTTP protocol (static files of a bare repository after
//! `git update-server-info`), served here, so every request's headers can be checked.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use prodigy::github::PrNumber;
use prodigy::server::repos::RepoCache;
use prodigy::types::RepoName;
use secrecy::SecretString;
use support::git::git;
use tempfile::TempDir;

const TOKEN: &str = "ghs_test-installation-token-123";
const REPO: &str = "octo/widgets";

struct Remote {
    bare: PathBuf,
    work: PathBuf,
    /// The Authorization header of every request, in order (None: no header).
    seen: Mutex<Vec<Option<String>>>,
}

impl Remote {
    /// Commits a file on `main`, publishes it as the head of pull request `pr`, and returns
    /// the commit.
    fn push_pr(&self, pr: u64, content: &str) -> String {
        std::fs::write(self.work.join("file.txt"), content).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", content]);
        let sha = git(&self.work, &["rev-parse", "HEAD"]);
        git(
            &self.work,
            &["push", "-q", "origin", &format!("HEAD:refs/pull/{pr}/head")],
        );
        git(&self.bare, &["update-server-info"]);
        sha
    }
}

async fn serve_file(State(remote): State<Arc<Remote>>, headers: HeaderMap, uri: Uri) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("").to_string());
    remote.seen.lock().unwrap().push(auth.clone());
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
    );
    if auth.as_deref() != Some(want.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"GitHub\"")],
        )
            .into_response();
    }
    let Some(rel) = uri.path().strip_prefix(&format!("/{REPO}.git/")) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if rel.split('/').any(|part| part == "..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    match std::fs::read(remote.bare.join(rel)) {
        Ok(bytes) => bytes.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A bare repository with one commit on `main`, served at `http://127.0.0.1:PORT`.
async fn remote(tmp: &TempDir) -> (Arc<Remote>, String) {
    let bare = tmp.path().join("remote.git");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["config", "user.email", "test@example.com"]);
    git(&work, &["config", "user.name", "Test"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    std::fs::write(work.join("file.txt"), "first\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(&work, &["push", "-q", "origin", "main"]);
    git(&bare, &["update-server-info"]);
    let remote = Arc::new(Remote {
        bare,
        work,
        seen: Mutex::default(),
    });
    let app = axum::Router::new()
        .fallback(serve_file)
        .with_state(remote.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (remote, base)
}

/// Everything git stored about the clone's configuration.
fn stored_config(clone: &Path) -> String {
    std::fs::read_to_string(clone.join(".git/config")).unwrap()
}

#[tokio::test]
async fn fetches_with_the_token_in_a_header_and_stores_it_nowhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (remote, base) = remote(&tmp).await;
    let cache = RepoCache::new(tmp.path().join("cache"), &base);
    assert!(cache.needs_token());
    let repo = RepoName::new(REPO);
    let token = || Some(SecretString::from(TOKEN));

    // First use clones; a later push is fetched into the same clone.
    let first = remote.push_pr(7, "pr 7\n");
    let clone = cache
        .prepare(&repo, Some(PrNumber(7)), &first, token())
        .await
        .unwrap();
    let second = remote.push_pr(7, "pr 7, pushed again\n");
    cache
        .prepare(&repo, Some(PrNumber(7)), &second, token())
        .await
        .unwrap();
    assert_eq!(
        git(&clone, &["rev-parse", "refs/prodigy/pull/7"]),
        second,
        "the pull request's head was fetched"
    );
    let text = cache
        .read_file(&repo, &second, "file.txt")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "pr 7, pushed again\n");

    // Every request carried the header (the remote answers nothing without it).
    let seen = remote.seen.lock().unwrap().clone();
    assert!(seen.len() > 2, "{seen:?}");
    assert!(seen.iter().all(Option::is_some), "{seen:?}");

    // The token is in no file of the clone's git directory and not in its remote URL.
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"));
    let config = stored_config(&clone);
    assert!(
        !config.contains(TOKEN) && !config.contains(&encoded),
        "{config}"
    );
    assert!(
        config.contains(&format!("url = {base}/{REPO}.git")),
        "{config}"
    );
    for entry in walk(&clone.join(".git")) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(TOKEN) && !text.contains(&encoded),
            "the token is stored in {}",
            entry.display()
        );
    }
}

#[tokio::test]
async fn a_refused_or_missing_token_fails_with_what_to_do_and_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (remote, base) = remote(&tmp).await;
    let cache = RepoCache::new(tmp.path().join("cache"), &base);
    let repo = RepoName::new(REPO);
    let sha = remote.push_pr(3, "pr 3\n");

    let wrong = "ghs_wrong-token-456";
    let err = cache
        .prepare(
            &repo,
            Some(PrNumber(3)),
            &sha,
            Some(SecretString::from(wrong)),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("the installation token was refused"), "{err}");
    assert!(err.contains("contents: read"), "{err}");
    assert!(!err.contains(wrong), "{err}");

    let err = cache
        .prepare(&repo, Some(PrNumber(3)), &sha, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no installation token is available"), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
