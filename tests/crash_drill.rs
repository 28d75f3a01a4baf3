//! The crash drill: SIGKILL a 100-item job at ten moments (setup, early map, during merges,
//! during reduce), resume each time; every item's effect lands on the job branch exactly once.

mod support;

use serde_json::Value;
use support::repo::{Resumable, backends, count, text};

const ITEMS: usize = 100;

/// A predicate over the events seen so far.
type Pred = Box<dyn Fn(&[Value]) -> bool>;
/// When to kill: the name, the predicate that says the moment has come, and for setup and reduce
/// the line their command writes first: the kill waits until this run has written it again, so it
/// lands inside the phase's command (events count from the job's start, and a phase may already
/// have started in an earlier run).
type Moment = (&'static str, Pred, Option<&'static str>);

fn phase_running(ev: &[Value], phase: &str) -> bool {
    ev.iter()
        .any(|e| e["kind"] == "phase_steps_started" && e["data"]["phase"] == phase)
}

fn moments() -> Vec<Moment> {
    let merged_at_least =
        |n: usize| -> Pred { Box::new(move |ev: &[Value]| count(ev, "item_merged") >= n) };
    vec![
        (
            "during setup",
            Box::new(|ev: &[Value]| phase_running(ev, "setup")),
            Some("setup"),
        ),
        (
            "first item started",
            Box::new(|ev: &[Value]| count(ev, "item_started") >= 1),
            None,
        ),
        ("after 5 merges", merged_at_least(5), None),
        ("after 15 merges", merged_at_least(15), None),
        ("after 30 merges", merged_at_least(30), None),
        ("after 45 merges", merged_at_least(45), None),
        ("after 60 merges", merged_at_least(60), None),
        ("after 75 merges", merged_at_least(75), None),
        ("after 95 merges", merged_at_least(95), None),
        (
            "during reduce",
            Box::new(|ev: &[Value]| phase_running(ev, "reduce")),
            Some("reduce"),
        ),
    ]
}

#[test]
fn sigkill_at_ten_moments_then_resume_completes_exactly_once() {
    for (name, db) in backends() {
        let r = Resumable::new(db.as_ref().map(|d| d.url()), ITEMS);
        // Setup and reduce sleep long enough that a loaded machine still sees them running.
        let slow = [
            ("AGENT_SLEEP", "0.05"),
            ("SETUP_SLEEP", "3"),
            ("REDUCE_SLEEP", "3"),
        ];
        let mut job: Option<String> = None;
        let mut kills = 0;
        let lines = |line: &str| r.runs().iter().filter(|l| *l == line).count();
        for (moment, pred, evidence) in moments() {
            let before = evidence.map_or(0, lines);
            let mut proc = match &job {
                None => r.start(&["run", "wf.yml"], &slow),
                Some(j) => r.start(&["resume", j], &slow),
            };
            let id = proc.job.clone();
            job = Some(id.clone());
            // Every event counts from the job's start; the counts only grow across runs.
            r.repo.wait_for_events(&id, moment, |ev| {
                (pred(ev) && evidence.is_none_or(|e| lines(e) > before))
                    || ev
                        .iter()
                        .any(|e| e["kind"] == "job_finished" && e["data"]["status"] == "succeeded")
            });
            proc.kill9();
            let status = r.repo.json(&["status", &id]);
            assert_ne!(
                status["job"]["phase"], "done",
                "{name}: the job finished before the kill {moment}"
            );
            kills += 1;
        }
        assert_eq!(kills, 10, "{name}");
        let runs = r.runs();
        let setups = runs.iter().filter(|l| *l == "setup").count();
        let reduces = lines("reduce");
        assert_eq!(
            setups, 2,
            "{name}: setup was killed once, then ran to the end once"
        );
        // Reduce may already start in the run killed after 95 merges (the last items finish
        // before the kill lands); either way it never completed, and it was killed at least once.
        assert!(
            reduces >= 1,
            "{name}: reduce was killed; the final resume runs it again below"
        );
        let job = job.unwrap();
        let out = r.prodigy(&["resume", &job]);
        assert!(out.status.success(), "{name}: final resume: {}", text(&out));
        r.assert_each_effect_once(&job, ITEMS);
        assert!(
            r.repo.extra_worktrees().is_empty(),
            "{name}: {:?}",
            r.repo.extra_worktrees()
        );
        assert_eq!(
            r.repo.prodigy_branches(),
            vec![format!("prodigy/{job}")],
            "{name}"
        );
        let status = r.repo.json(&["status", &job]);
        assert_eq!(status["counts"]["merged"], ITEMS, "{name}: {status}");
        assert_eq!(status["job"]["status"], "succeeded", "{name}");
        assert_eq!(
            lines("reduce"),
            reduces + 1,
            "{name}: the final resume ran reduce exactly once more"
        );
    }
}
