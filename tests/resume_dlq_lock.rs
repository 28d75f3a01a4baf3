//! The whole flow: run with failures, kill mid-map, two concurrent resumes (one refused), the
//! winner finishes everything, no duplicates, the DLQ updated, the lock released.

mod support;

use support::repo::{Resumable, backends, count, text};

#[test]
fn crash_then_concurrent_resumes_finish_everything_once() {
    for (name, db) in backends() {
        let r = Resumable::new(db.as_ref().map(|d| d.url()), 16);
        r.fail("item-4");
        let mut run = r.start(&["run", "wf.yml"], &[("AGENT_SLEEP", "0.3")]);
        let job = run.job.clone();
        r.repo
            .wait_for_events(&job, "a failure and some merges", |ev| {
                count(ev, "item_failed") >= 1 && count(ev, "item_merged") >= 3
            });
        run.kill9();
        let dlq = r.repo.json(&["dlq", "list", &job]);
        assert_eq!(dlq.as_array().unwrap().len(), 1, "{name}: {dlq}");

        r.unfail("item-4");
        let a = r.start(&["resume", &job], &[("AGENT_SLEEP", "1.5")]);
        r.repo
            .wait_for_events(&job, "the resume to take the job", |ev| {
                count(ev, "job_resumed") >= 1
            });
        let b = r.prodigy(&["resume", &job]);
        assert_eq!(b.status.code(), Some(75), "{name}: {}", text(&b));
        let (code, err) = a.wait();
        assert_eq!(code, Some(0), "{name}: {err}");

        r.assert_each_effect_once(&job, 16);
        assert!(
            r.repo
                .json(&["dlq", "list", &job])
                .as_array()
                .unwrap()
                .is_empty(),
            "{name}: DLQ emptied"
        );
        // The lock is free again: a lock probe acquires it at once.
        let probe = r.prodigy(&["debug-lock", "--job", &job]);
        assert_eq!(probe.status.code(), Some(0), "{name}: {}", text(&probe));
    }
}
