//! The SQLite database failing under `prodigy run` (README "Reliability"): a read-only database
//! file and a full disk (the file size limit, RLIMIT_FSIZE, as `ulimit -f` sets it) give an
//! error naming the file and what to do, exit code 74, no corruption (`PRAGMA
//! integrity_check`), and once the fault is gone the next run works and a job the fault
//! interrupted resumes with each item merged once.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;

use sqlx::Connection;
use support::repo::{Repo, job_id, text};

const EXIT_DB_UNWRITABLE: i32 = 74;

const WORKFLOW: &str = r#"name: tiny
mode: mapreduce
map:
  input: items.json
  json_path: "$[*]"
  agent_template:
    - shell: "echo ${item.id} > out-${item.id}.txt && git add . && git commit -qm ${item.id}"
reduce:
  - shell: "echo reduced"
"#;

fn repo() -> Repo {
    let repo = Repo::new(None);
    repo.write("wf.yml", WORKFLOW);
    repo.write("items.json", r#"[{"id":"a"},{"id":"b"},{"id":"c"}]"#);
    repo.commit_all("workflow");
    let first = repo.prodigy(&["run", "wf.yml"]);
    assert!(first.status.success(), "{}", text(&first));
    repo
}

async fn integrity(db: &Path) -> String {
    let url = format!("sqlite://{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Makes `file` read-only for this process: `chmod` for an ordinary user; for root, whom
/// permissions do not stop, the immutable attribute (`chattr +i`). False: not possible here.
fn make_read_only(file: &Path, on: bool) -> bool {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc::geteuid() } != 0 {
        let mode = if on { 0o444 } else { 0o644 };
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
        return true;
    }
    let flag = if on { "+i" } else { "-i" };
    std::process::Command::new("chattr")
        .arg(flag)
        .arg(file)
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn a_read_only_database_is_named_with_what_to_do_and_left_intact() {
    let repo = repo();
    let db = repo.home.join("state.db");
    if !make_read_only(&db, true) {
        if std::env::var_os("PRODIGY_REQUIRE_TOOLS").is_some() {
            panic!("PRODIGY_REQUIRE_TOOLS=1 but the database cannot be made read-only (chattr)");
        }
        eprintln!("SKIPPED: running as root without chattr: cannot make a file read-only");
        return;
    }
    let out = repo.prodigy(&["run", "wf.yml"]);
    make_read_only(&db, false);
    let err = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_DB_UNWRITABLE), "{err}");
    assert!(
        err.contains(&format!("the database {} cannot be written", db.display())),
        "{err}"
    );
    assert!(
        err.contains("read-only") && err.contains("make the file"),
        "{err}"
    );
    assert_eq!(integrity(&db).await, "ok");

    // Writable again: the next run works.
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn a_full_disk_stops_the_job_cleanly_and_it_resumes_once_there_is_room() {
    let repo = repo();
    let db = repo.home.join("state.db");
    // The limit that stops the run midway depends on what it writes: from a small one up,
    // each run must fail cleanly, until one has started its job when the write fails.
    let mut interrupted = None;
    for kib in [16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
        let out = run_with_file_size_limit(&repo, kib * 1024);
        let err = text(&out);
        assert_eq!(
            out.status.code(),
            Some(EXIT_DB_UNWRITABLE),
            "{kib} KiB: {err}"
        );
        assert!(
            err.contains(&format!("the database {} cannot be written", db.display()))
                && err.contains("the disk is full")
                && err.contains("free space"),
            "{err}"
        );
        assert_eq!(
            integrity(&db).await,
            "ok",
            "after a run limited to {kib} KiB"
        );
        if err.contains(" as job ") {
            interrupted = Some(job_id(&out));
            break;
        }
    }
    let job = interrupted.expect("a limited run started its job before a write failed");

    // Room again: the interrupted job resumes, each item merged once.
    let resumed = repo.prodigy(&["resume", &job]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let status = repo.json(&["status", &job]);
    assert_eq!(status["job"]["status"], "succeeded", "{status}");
    assert_eq!(status["counts"]["merged"], 3, "{status}");
    let branch = format!("prodigy/{job}");
    let log = repo.git(&["log", "--format=%s", &branch]);
    for item in ["a", "b", "c"] {
        let merged = log.lines().filter(|l| *l == item).count();
        assert_eq!(merged, 1, "item {item} committed once on {branch}:\n{log}");
        assert_eq!(repo.show(&format!("{branch}:out-{item}.txt")), item);
    }
    assert_eq!(integrity(&db).await, "ok");
}

/// `prodigy run wf.yml` with RLIMIT_FSIZE at `limit` bytes (`ulimit -f`): a write past it fails
/// with EFBIG, as on a full disk.
fn run_with_file_size_limit(repo: &Repo, limit: libc::rlim_t) -> std::process::Output {
    let mut cmd = repo.command(&["run", "wf.yml"]);
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}
