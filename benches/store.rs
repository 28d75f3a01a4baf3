//! Store benchmark on both backends: `cargo bench --bench store`.
//!
//! Reports: inserting 100k items for one job; 10k status updates (start + finish of an attempt)
//! from 8 concurrent tasks; loading a 100k-item job's items and picking the resumable ones (what
//! resume reads); `try_lock` latency uncontended and under 50-way contention (p50/p99).
//! PostgreSQL runs on `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/postgres) in a
//! scratch database; `PRODIGY_BENCH_ITEMS` scales the item counts down for a smoke run.
// The lock benchmark measures the low-level `try_lock` itself (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prodigy::store::{
    AttemptOutcome, DlqDisposition, Holder, ItemFilter, JobEvent, LockOutcome, NewItem, NewJob,
    Store,
};
use prodigy::types::{ErrorClass, ItemKey, ItemStatus, JobId};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

const UPDATE_TASKS: usize = 8;
const CONTENDERS: usize = 50;
const CONTENTION_ROUNDS: usize = 10;
const UNCONTENDED_LOCKS: usize = 200;

struct Row {
    backend: &'static str,
    what: String,
    figure: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let items: usize = std::env::var("PRODIGY_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let updates = (items / 10).max(1);
    let mut rows = Vec::new();

    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    run_backend("sqlite", &sqlite_url, items, updates, &mut rows).await;

    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let name = format!("prodigy_bench_{}", uuid::Uuid::now_v7().simple());
    match admin(&server, &format!("CREATE DATABASE \"{name}\"")).await {
        Ok(()) => {
            let url = PgConnectOptions::from_str(&server)
                .expect("DATABASE_URL")
                .database(&name)
                .to_url_lossy();
            run_backend("postgres", url.as_str(), items, updates, &mut rows).await;
            if let Err(e) = admin(&server, &format!("DROP DATABASE \"{name}\" WITH (FORCE)")).await
            {
                eprintln!("could not drop {name}: {e}");
            }
        }
        Err(e) => eprintln!("skipping PostgreSQL: cannot create a database at {server}: {e}"),
    }

    println!("| backend | measurement | result |");
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.backend, r.what, r.figure);
    }
}

async fn admin(server: &str, sql: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnectOptions::from_str(server)?.connect().await?;
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await?;
    conn.close().await
}

fn new_job(name: &str) -> NewJob {
    NewJob {
        workflow_path: "bench.yml".into(),
        workflow_text: format!("name: {name}\n"),
        workflow_name: name.into(),
        repo_path: "/repo".into(),
        repo: None,
        pr_number: None,
        head_sha: None,
    }
}

fn new_items(n: usize) -> Vec<NewItem> {
    (0..n)
        .map(|i| NewItem {
            key: ItemKey(format!("src/module_{i:06}.rs")),
            position: i as i64,
            data: json!({"file": format!("src/module_{i:06}.rs"), "priority": i % 7, "lines": 120 + i % 900}),
        })
        .collect()
}

async fn acquire(store: &Store, job: JobId) -> prodigy::store::JobLock {
    match store
        .try_lock(job, &Holder::this_process(None))
        .await
        .unwrap()
    {
        LockOutcome::Acquired(l) => l,
        LockOutcome::Held { holder, .. } => panic!("held by {holder}"),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run_backend(
    backend: &'static str,
    url: &str,
    items: usize,
    updates: usize,
    rows: &mut Vec<Row>,
) {
    let store = Store::open(url).await.expect("open store");
    let mut push = |what: String, figure: String| {
        rows.push(Row {
            backend,
            what,
            figure,
        })
    };

    // Insert.
    let job = store.create_job(&new_job("insert")).await.unwrap().id;
    let lock = acquire(&store, job).await;
    let input = new_items(items);
    let t = Instant::now();
    let n = store.insert_items(lock.proof(), &input).await.unwrap();
    let took = t.elapsed();
    assert_eq!(n as usize, items);
    push(
        format!("insert {items} items (one call)"),
        format!(
            "{} ({:.0} items/s)",
            ms(took),
            items as f64 / took.as_secs_f64()
        ),
    );

    // Status updates from 8 tasks.
    let lock = Arc::new(lock);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..UPDATE_TASKS {
        let (store, lock) = (store.clone(), lock.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..updates).step_by(UPDATE_TASKS) {
                let key = ItemKey(format!("src/module_{i:06}.rs"));
                let n = store
                    .start_attempt(lock.proof(), &key, "/wt", "b", started(&key))
                    .await
                    .unwrap();
                let outcome = if i % 10 == 0 {
                    AttemptOutcome {
                        success: false,
                        exit_code: Some(1),
                        error_class: Some(ErrorClass::CommandFailed),
                        signature: Some("sig".into()),
                        message: Some("exit 1".into()),
                        log_path: None,
                        commit: None,
                        result: None,
                        dlq: Some(DlqDisposition {
                            reprocessable: true,
                        }),
                    }
                } else {
                    AttemptOutcome {
                        success: true,
                        exit_code: Some(0),
                        error_class: None,
                        signature: None,
                        message: None,
                        log_path: None,
                        commit: Some(format!("{i:040x}")),
                        result: None,
                        dlq: None,
                    }
                };
                store
                    .finish_attempt(lock.proof(), &key, n, &outcome, &finished(&key, n))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = t.elapsed();
    push(
        format!("{updates} status updates (start+finish attempt), {UPDATE_TASKS} tasks"),
        format!(
            "{} ({:.0} updates/s)",
            ms(took),
            updates as f64 / took.as_secs_f64()
        ),
    );

    // What resume reads: every item, then the resumable ones picked in memory.
    let t = Instant::now();
    let all = store.items(job, &ItemFilter::default()).await.unwrap();
    let resumable = all
        .iter()
        .filter(|i| {
            i.status == ItemStatus::Pending
                || (i.status == ItemStatus::Failed && i.attempts < 3)
                || (i.in_dlq && i.reprocessable)
        })
        .count();
    let took = t.elapsed();
    assert_eq!(all.len(), items);
    push(
        format!("load {items} items + pick resumable ({resumable})"),
        ms(took),
    );
    Arc::into_inner(lock)
        .expect("tasks done")
        .release()
        .await
        .unwrap();

    // try_lock uncontended (acquire + release of a free job).
    let job = store.create_job(&new_job("lock")).await.unwrap().id;
    let mut samples = Vec::new();
    for _ in 0..UNCONTENDED_LOCKS {
        let t = Instant::now();
        let lock = acquire(&store, job).await;
        samples.push(t.elapsed());
        lock.release().await.unwrap();
    }
    samples.sort();
    push(
        format!("try_lock uncontended ({UNCONTENDED_LOCKS} runs)"),
        format!(
            "p50 {} / p99 {}",
            ms(percentile(&samples, 0.5)),
            ms(percentile(&samples, 0.99))
        ),
    );

    // try_lock with 50 contenders at once, each from its own store handle.
    let mut handles = Vec::new();
    for _ in 0..CONTENDERS {
        handles.push(if backend == "sqlite" {
            Store::open(url).await.unwrap()
        } else {
            store.clone()
        });
    }
    let mut samples = Vec::new();
    for _ in 0..CONTENTION_ROUNDS {
        let job = store.create_job(&new_job("contention")).await.unwrap().id;
        let barrier = Arc::new(tokio::sync::Barrier::new(CONTENDERS));
        let mut tasks = Vec::new();
        for h in &handles {
            let (h, barrier) = (h.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let t = Instant::now();
                let outcome = h.try_lock(job, &Holder::this_process(None)).await.unwrap();
                (t.elapsed(), outcome)
            }));
        }
        // Release only once every contender has had its answer.
        let mut winners = Vec::new();
        for t in tasks {
            let (took, outcome) = t.await.unwrap();
            samples.push(took);
            if let LockOutcome::Acquired(lock) = outcome {
                winners.push(lock);
            }
        }
        assert_eq!(winners.len(), 1);
        for lock in winners {
            lock.release().await.unwrap();
        }
    }
    samples.sort();
    push(
        format!("try_lock, {CONTENDERS} contenders x {CONTENTION_ROUNDS} rounds"),
        format!(
            "p50 {} / p99 {}",
            ms(percentile(&samples, 0.5)),
            ms(percentile(&samples, 0.99))
        ),
    );
    for h in handles {
        h.close().await;
    }
    store.close().await;
}

/// The event an attempt's start commits with (tests only check that it is there).
fn started(key: &ItemKey) -> impl FnOnce(u32) -> JobEvent {
    let key = key.clone();
    move |attempt| JobEvent::ItemStarted {
        key,
        attempt,
        worktree: "/wt".into(),
        log: "/log".into(),
    }
}

/// The event an attempt's end commits with.
fn finished(key: &ItemKey, attempt: u32) -> JobEvent {
    JobEvent::ItemSucceeded {
        key: key.clone(),
        attempt,
        commit: None,
    }
}
