//! Spec 140: concurrent resumes of one job never run it twice at once, on both backends.

mod support;

use support::repo::{Resumable, backends, count, text};

/// Starts a job and kills it once `merged` items are merged, leaving it resumable.
fn interrupted_job(r: &Resumable, merged: usize) -> String {
    let mut run = r.start(&["run", "wf.yml"], &[("AGENT_SLEEP", "0.2")]);
    let job = run.job.clone();
    r.repo
        .wait_for_events(&job, "merges", |ev| count(ev, "item_merged") >= merged);
    run.kill9();
    job
}

#[test]
fn a_second_resume_is_refused_at_once_naming_the_holder() {
    for (name, db) in backends() {
        let r = Resumable::new(db.as_ref().map(|d| d.url()), 12);
        let job = interrupted_job(&r, 2);

        let first = r.start(&["resume", &job], &[("AGENT_SLEEP", "2")]);
        r.repo
            .wait_for_events(&job, "the first resume to start", |ev| {
                count(ev, "job_resumed") >= 1
            });
        let started = std::time::Instant::now();
        let second = r.prodigy(&["resume", &job]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{name}: the refusal waited"
        );
        assert_eq!(second.status.code(), Some(75), "{name}: {}", text(&second));
        let msg = String::from_utf8_lossy(&second.stderr);
        assert!(
            msg.contains(&format!("pid {}", first.pid())),
            "{name}: holder not named: {msg}"
        );
        assert!(
            msg.contains("already covers every pending item"),
            "{name}: {msg}"
        );

        let (code, err) = first.wait();
        assert_eq!(code, Some(0), "{name}: first resume: {err}");
        r.assert_each_effect_once(&job, 12);
        let refused = r.repo.events(&job);
        assert_eq!(count(&refused, "resume_refused"), 1, "{name}");

        // Sequential resumes are fine: the finished job says so and does nothing.
        let again = r.prodigy(&["resume", &job]);
        assert_eq!(again.status.code(), Some(0), "{name}: {}", text(&again));
        assert!(
            String::from_utf8_lossy(&again.stdout).contains("already finished"),
            "{name}"
        );
    }
}

#[test]
fn killing_the_holder_frees_the_lock_for_the_next_resume() {
    for (name, db) in backends() {
        let r = Resumable::new(db.as_ref().map(|d| d.url()), 10);
        let job = interrupted_job(&r, 1);
        let mut holder = r.start(&["resume", &job], &[("AGENT_SLEEP", "2")]);
        r.repo
            .wait_for_events(&job, "an item of the resume to start", |ev| {
                count(ev, "job_resumed") >= 1
            });
        holder.kill9();
        // PostgreSQL frees the lock with the connection; SQLite sees the holder pid is gone.
        let next = r.prodigy(&["resume", &job]);
        assert_eq!(next.status.code(), Some(0), "{name}: {}", text(&next));
        r.assert_each_effect_once(&job, 10);
        assert!(
            r.repo.extra_worktrees().is_empty(),
            "{name}: worktrees left after the crash were cleaned"
        );
        assert_eq!(
            r.repo.prodigy_branches(),
            vec![format!("prodigy/{job}")],
            "{name}"
        );
    }
}

#[test]
fn independent_jobs_do_not_block_each_other() {
    for (name, db) in backends() {
        let r = Resumable::new(db.as_ref().map(|d| d.url()), 6);
        let a = interrupted_job(&r, 1);
        let b = interrupted_job(&r, 1);
        let ra = r.start(&["resume", &a], &[("AGENT_SLEEP", "0.3")]);
        let rb = r.start(&["resume", &b], &[("AGENT_SLEEP", "0.3")]);
        let (ca, ea) = ra.wait();
        let (cb, eb) = rb.wait();
        assert_eq!(ca, Some(0), "{name}: {ea}");
        assert_eq!(cb, Some(0), "{name}: {eb}");
    }
}
