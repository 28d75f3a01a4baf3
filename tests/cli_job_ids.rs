//! Job ids in `prodigy jobs`: UUID v7 ids of jobs started together share their first 8
//! characters (the timestamp), so the table prints them as long as it takes to tell them apart,
//! and each printed id is one `prodigy status` accepts.

mod support;

use support::repo::{Repo, text};

#[test]
fn jobs_started_together_print_distinct_ids_that_status_accepts() {
    let repo = Repo::new(None);
    repo.write("ok.yml", "- shell: echo hi\n");
    repo.commit_all("workflow");
    let mut full = Vec::new();
    for _ in 0..3 {
        let out = repo.prodigy(&["run", "ok.yml"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        full.push(support::repo::job_id(&out));
    }

    let jobs = repo.prodigy(&["jobs"]);
    assert_eq!(jobs.status.code(), Some(0), "{}", text(&jobs));
    let table = String::from_utf8_lossy(&jobs.stdout).to_string();
    let printed: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(printed.len(), 3, "{table}");
    for (i, id) in printed.iter().enumerate() {
        assert!(id.len() >= 8, "{id} is shorter than 8 characters:\n{table}");
        assert!(
            printed[i + 1..].iter().all(|other| other != id),
            "{id} is printed twice:\n{table}"
        );
        let status = repo.json(&["status", id]);
        let resolved = status["job"]["id"].as_str().unwrap_or_default().to_string();
        assert!(
            full.contains(&resolved) && resolved.starts_with(id),
            "status {id} resolved to {status}"
        );
    }
}
