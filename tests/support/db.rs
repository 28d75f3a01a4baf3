//! Shared test support: a fresh database per test on each backend.
//!
//! ```ignore
//! mod support;
//! for (backend, db) in support::db::test_stores().await {
//!     let store = db.store().await;          // migrated, ready
//!     // ... or pass db.url() to the binary as --database-url
//! }
//! ```
//!
//! SQLite: a file in a temporary directory, removed with the `TestDb`.
//! PostgreSQL: `prodigy_test_<random>` created on the server at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped with the `TestDb`. When that server
//! cannot be reached the PostgreSQL case is skipped with a message on stderr, unless
//! `PRODIGY_REQUIRE_POSTGRES=1`, which turns the skip into a panic.

use std::str::FromStr;
use std::time::Duration;

use prodigy::store::{JobEvent, Store};
use prodigy::types::ItemKey;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// One fresh, empty database (no migrations applied yet).
pub struct TestDb {
    pub backend: &'static str,
    url: String,
    _dir: Option<tempfile::TempDir>,
    /// (server URL, database name) to drop on Drop.
    drop_pg: Option<(String, String)>,
}

impl TestDb {
    /// `sqlite:///tmp/.../prodigy.db` or `postgres://.../prodigy_test_<random>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A store on this database with all migrations applied.
    pub async fn store(&self) -> Store {
        Store::open(&self.url).await.unwrap_or_else(|e| {
            panic!(
                "opening the {} test database {}: {e}",
                self.backend, self.url
            )
        })
    }

    /// The PostgreSQL database's name (None on SQLite).
    pub fn pg_name(&self) -> Option<&str> {
        self.drop_pg.as_ref().map(|(_, name)| name.as_str())
    }

    /// Terminates every session of this PostgreSQL database but the caller's, as an
    /// administrator (or a failover) does; returns how many.
    pub async fn terminate_sessions(&self) -> usize {
        use sqlx::Connection;
        let name = self.pg_name().expect("a PostgreSQL test database");
        let mut admin = sqlx::PgConnection::connect(&postgres_server_url())
            .await
            .unwrap();
        let done: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        done.into_iter().filter(|t| *t).count()
    }

    pub fn is_postgres(&self) -> bool {
        self.drop_pg.is_some()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.drop_pg.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on; use a thread of our
        // own. Best effort: a leftover database only costs disk space.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&server).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await {
                    eprintln!("could not drop the test database {name}: {e}");
                }
                conn.close().await.ok()
            })
        })
        .join();
    }
}

/// A fresh SQLite database and, when reachable, a fresh PostgreSQL database.
pub async fn test_stores() -> Vec<(&'static str, TestDb)> {
    let mut dbs = vec![("sqlite", sqlite_db())];
    if let Some(pg) = postgres_db().await {
        dbs.push(("postgres", pg));
    }
    dbs
}

pub fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("prodigy.db").display());
    TestDb {
        backend: "sqlite",
        url,
        _dir: Some(dir),
        drop_pg: None,
    }
}

/// The PostgreSQL server URL tests use.
pub fn postgres_server_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string())
}

/// A fresh PostgreSQL database, or None (with a message) when the server is unreachable.
pub async fn postgres_db() -> Option<TestDb> {
    let server = postgres_server_url();
    let require = std::env::var("PRODIGY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    let name = format!("prodigy_test_{}", uuid::Uuid::now_v7().simple());
    let created = async {
        let options = PgConnectOptions::from_str(&server)?;
        let mut conn = tokio::time::timeout(Duration::from_secs(5), options.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await
    }
    .await;
    match created {
        Ok(()) => Some(TestDb {
            backend: "postgres",
            url: with_database(&server, &name),
            _dir: None,
            drop_pg: Some((server, name)),
        }),
        Err(e) if require => {
            panic!("PostgreSQL at {server} is required (PRODIGY_REQUIRE_POSTGRES=1) but: {e}")
        }
        Err(e) => {
            eprintln!("skipping PostgreSQL: cannot create a test database at {server}: {e}");
            None
        }
    }
}

/// `postgres://u@h:5432/db?x=y` with the database replaced by `name`.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut url = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// The event an attempt's start commits with (tests only check that it is there).
pub fn started(key: &ItemKey) -> impl FnOnce(u32) -> JobEvent {
    let key = key.clone();
    move |attempt| JobEvent::ItemStarted {
        key,
        attempt,
        worktree: "/wt".into(),
        log: "/log".into(),
    }
}

/// The event an attempt's end commits with.
pub fn finished(key: &ItemKey, attempt: u32) -> JobEvent {
    JobEvent::ItemSucceeded {
        key: key.clone(),
        attempt,
        commit: None,
    }
}
