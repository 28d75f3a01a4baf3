//! PostgreSQL over TLS through the real binary, with `sslmode` and `sslrootcert` as libpq
//! documents them. Needs the local server with `ssl = on` (Debian's default, or
//! `.ci/postgres-ssl`), whose certificate is self-signed for `localhost`.
//!
//! `prodigy migrate` reports what the server says of its own connection
//! (`SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`), so each case sees the transport
//! that was really used, not what was asked for.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tempfile::TempDir;

/// The throwaway CA of tests/fixtures/tls/README.md: it signed nothing, so it trusts no server.
fn untrusted_ca() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/untrusted-ca.pem")
}

/// `url` with `params` appended to its query.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// `prodigy <args> --database-url <url>`, in an empty directory whose HOME has no
/// `~/.postgresql/root.crt` and with no PG* variables, so only the URL decides.
fn prodigy(home: &TempDir, args: &[&str], url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prodigy"))
        .args(args)
        .args(["--database-url", url])
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("PRODIGY_HOME", home.path())
        .env_remove("DATABASE_URL")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("prodigy runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `prodigy migrate` and returns its report; panics with its output when it fails.
fn migrate_ok(home: &TempDir, url: &str) -> String {
    let out = prodigy(home, &["migrate"], url);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "prodigy migrate on {url} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Runs `prodigy migrate`, expects it to fail, and returns its stderr.
fn migrate_err(home: &TempDir, url: &str) -> String {
    let out = prodigy(home, &["migrate"], url);
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "prodigy migrate on {url} should have failed:\n{stdout}\n{stderr}"
    );
    stderr
}

/// The server's own certificate (superuser: `pg_read_file` of `ssl_cert_file`), written to a
/// file: with it as the root, verification succeeds exactly when the name matches.
async fn server_certificate(server: &str, dir: &Path) -> PathBuf {
    let mut conn = PgConnectOptions::from_str(server)
        .unwrap()
        .connect()
        .await
        .expect("connects to the test server");
    let (on, pem): (String, String) = sqlx::query_as(
        "SELECT current_setting('ssl'), pg_read_file(current_setting('ssl_cert_file'))",
    )
    .fetch_one(&mut conn)
    .await
    .expect("reads the server's certificate (the test user must be a superuser)");
    conn.close().await.ok();
    assert_eq!(
        on, "on",
        "the test server has ssl off: run .ci/postgres-ssl to turn it on"
    );
    let path = dir.join("server-root.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test]
async fn sslmode_require_encrypts_the_connection() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let url = with_params(db.url(), "sslmode=require");
    let report = migrate_ok(&home, &url);
    assert!(report.contains("connected over TLS"), "{report}");
    // Another command on the same URL: the whole CLI goes through the same connection path.
    let out = prodigy(&home, &["jobs"], &url);
    assert!(out.status.success(), "{:?}", text(&out));
}

#[tokio::test]
async fn no_sslmode_prefers_tls_as_libpq_does_and_disable_is_plain() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let report = migrate_ok(&home, db.url());
    assert!(report.contains("connected over TLS"), "{report}");
    let report = migrate_ok(&home, &with_params(db.url(), "sslmode=disable"));
    assert!(report.contains("connected without TLS"), "{report}");
}

#[tokio::test]
async fn verify_full_against_a_ca_the_server_does_not_use_says_what_to_do() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let url = with_params(
        db.url(),
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            untrusted_ca().display()
        ),
    );
    let stderr = migrate_err(&home, &url);
    // rustls names the problem, prodigy says what to do, and neither is said twice.
    assert_eq!(stderr.matches("UnknownIssuer").count(), 1, "{stderr}");
    assert!(
        stderr.contains("not signed by a CA the client trusts"),
        "{stderr}"
    );
    assert!(stderr.contains("point sslrootcert at the CA"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn require_with_a_root_certificate_verifies_the_ca_as_libpq_does() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let url = with_params(
        db.url(),
        &format!("sslmode=require&sslrootcert={}", untrusted_ca().display()),
    );
    let stderr = migrate_err(&home, &url);
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
}

#[tokio::test]
async fn verify_ca_checks_the_ca_and_verify_full_the_host_name_too() {
    let Some(db) = support::db::postgres_db().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let root = server_certificate(&support::db::postgres_server_url(), home.path()).await;
    let by_ip = db.url().replace("@localhost", "@127.0.0.1");
    assert!(
        by_ip.contains("@127.0.0.1"),
        "this test needs the local server at 127.0.0.1: {by_ip}"
    );
    let trusted = format!("sslrootcert={}", root.display());

    // The certificate names `localhost`, not 127.0.0.1: the CA check alone passes...
    let report = migrate_ok(
        &home,
        &with_params(&by_ip, &format!("sslmode=verify-ca&{trusted}")),
    );
    assert!(report.contains("connected over TLS"), "{report}");
    // ...the host name check does not, and the message says why.
    let stderr = migrate_err(
        &home,
        &with_params(&by_ip, &format!("sslmode=verify-full&{trusted}")),
    );
    assert!(
        stderr.contains("not valid for name \"127.0.0.1\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not name the host '127.0.0.1'"),
        "{stderr}"
    );
    // With the name the certificate gives, verify-full connects.
    let by_name = by_ip.replace("@127.0.0.1", "@localhost");
    let report = migrate_ok(
        &home,
        &with_params(&by_name, &format!("sslmode=verify-full&{trusted}")),
    );
    assert!(report.contains("connected over TLS"), "{report}");
}

#[tokio::test]
async fn verify_full_without_a_root_certificate_asks_for_one_before_connecting() {
    let home = tempfile::tempdir().unwrap();
    // No server is needed: the URL alone is refused (port 9 would not answer anyway).
    let stderr = migrate_err(
        &home,
        "postgres://postgres@127.0.0.1:9/prodigy?sslmode=verify-full",
    );
    assert!(stderr.contains("no root certificate was given"), "{stderr}");
    assert!(stderr.contains("sslrootcert=/path/to/ca.pem"), "{stderr}");
    assert!(stderr.contains("sslrootcert=system"), "{stderr}");
}
