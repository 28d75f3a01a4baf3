//! Retries finish the job: when `prodigy dlq retry` (or a resume of an interrupted retry) merges
//! items into a job whose reduce already ran, reduce runs again on the updated branch and its
//! output counts every merged item; `reduce: {rerun: false}` keeps the first reduce.

mod support;

use support::repo::{RESUMABLE_WF, Resumable, backends, count, text};

const ITEMS: usize = 6;

fn reduce_runs(r: &Resumable) -> usize {
    r.runs().iter().filter(|l| *l == "reduce").count()
}

#[test]
fn a_retry_that_merges_items_runs_reduce_again() {
    for (backend, db) in backends() {
        let r = Resumable::new(db.as_ref().map(|d| d.url()), ITEMS);
        r.fail("item-1");
        r.fail("item-4");
        let out = r.prodigy(&["run", "wf.yml"]);
        assert_eq!(out.status.code(), Some(1), "{backend}: {}", text(&out));
        let job = support::repo::job_id(&out);
        let branch = format!("prodigy/{job}");
        assert_eq!(r.repo.show(&format!("{branch}:count.txt")), "4");
        assert_eq!(reduce_runs(&r), 1);

        // One of the two is fixed: the retry merges it, reduce runs again and counts it.
        r.unfail("item-1");
        let out = r.prodigy(&["dlq", "retry", &job]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{backend}: item-4 still fails: {}",
            text(&out)
        );
        assert_eq!(reduce_runs(&r), 2, "{backend}: {:?}", r.runs());
        assert_eq!(
            r.repo.show(&format!("{branch}:count.txt")),
            "5",
            "{backend}: reduce's output counts the item the retry merged"
        );
        let status = r.repo.json(&["status", &job]);
        assert_eq!(status["job"]["phase"], "done", "{backend}: {status}");
        assert_eq!(status["job"]["status"], "failed", "{backend}: {status}");

        // A retry that merges nothing leaves reduce alone.
        let out = r.prodigy(&["dlq", "retry", &job]);
        assert_eq!(out.status.code(), Some(1), "{backend}: {}", text(&out));
        assert_eq!(reduce_runs(&r), 2, "{backend}: {:?}", r.runs());
        let events = r.repo.events(&job);
        assert_eq!(count(&events, "reduce_skipped"), 1, "{backend}");

        // The last one: the job succeeds, and reduce's output counts all six.
        r.unfail("item-4");
        let out = r.prodigy(&["dlq", "retry", &job]);
        assert!(out.status.success(), "{backend}: {}", text(&out));
        assert_eq!(reduce_runs(&r), 3, "{backend}: {:?}", r.runs());
        assert_eq!(r.repo.show(&format!("{branch}:count.txt")), "6");
        let status = r.repo.json(&["status", &job]);
        assert_eq!(status["job"]["status"], "succeeded", "{backend}: {status}");
        assert_eq!(status["counts"]["merged"], ITEMS, "{backend}: {status}");
        let events = r.repo.events(&job);
        assert_eq!(count(&events, "reduce_rerun"), 2, "{backend}");
        // Each item's work is on the branch once.
        let log = r
            .repo
            .git(&["log", "--format=%s", &format!("main..{branch}")]);
        for i in 0..ITEMS {
            let subject = format!("item item-{i}");
            assert_eq!(
                log.lines().filter(|l| *l == subject).count(),
                1,
                "{backend}: {log}"
            );
        }
    }
}

#[test]
fn reduce_rerun_false_keeps_the_first_reduce() {
    let r = Resumable::new(None, ITEMS);
    let wf = RESUMABLE_WF.replace(
        "reduce:\n  - shell: |",
        "reduce:\n  rerun: false\n  commands:\n  - shell: |",
    );
    assert_ne!(wf, RESUMABLE_WF);
    r.repo.write("wf.yml", &wf);
    r.repo.commit_all("reduce runs once");
    r.fail("item-2");
    let out = r.prodigy(&["run", "wf.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let job = support::repo::job_id(&out);
    r.unfail("item-2");
    let out = r.prodigy(&["dlq", "retry", &job]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reduce_runs(&r), 1, "{:?}", r.runs());
    let branch = format!("prodigy/{job}");
    assert_eq!(r.repo.show(&format!("{branch}:count.txt")), "5");
    assert_eq!(r.repo.show(&format!("{branch}:out/item-2.txt")), "2");
    let events = r.repo.events(&job);
    let skipped: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "reduce_skipped")
        .collect();
    assert_eq!(skipped.len(), 1, "{events:?}");
    assert!(
        skipped[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("rerun: false"),
        "{skipped:?}"
    );
}

/// A retry killed after it merged an item leaves the job in the map phase; the resume that
/// continues it runs reduce again, so the merged item is counted.
#[test]
fn a_resume_of_an_interrupted_retry_runs_reduce_again() {
    let r = Resumable::new(None, ITEMS);
    r.fail("item-0");
    r.fail("item-3");
    let out = r.prodigy(&["run", "wf.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let job = support::repo::job_id(&out);
    r.unfail("item-0");
    r.unfail("item-3");
    // One agent at a time, slow enough to kill the retry between its two merges.
    let mut retry = r.start(
        &["dlq", "retry", &job, "--max-parallel", "1"],
        &[("AGENT_SLEEP", "5")],
    );
    r.repo
        .wait_for_events(&job, "the retry's first merge", |ev| {
            count(ev, "dlq_retry_started") == 1 && count(ev, "item_merged") >= 5
        });
    retry.kill9();
    let status = r.repo.json(&["status", &job]);
    assert_eq!(status["job"]["phase"], "map", "{status}");
    let out = r.prodigy(&["resume", &job]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reduce_runs(&r), 2, "{:?}", r.runs());
    let branch = format!("prodigy/{job}");
    assert_eq!(r.repo.show(&format!("{branch}:count.txt")), "6");
    let log = r
        .repo
        .git(&["log", "--format=%s", &format!("main..{branch}")]);
    for i in 0..ITEMS {
        let subject = format!("item item-{i}");
        assert_eq!(log.lines().filter(|l| *l == subject).count(), 1, "{log}");
    }
}
