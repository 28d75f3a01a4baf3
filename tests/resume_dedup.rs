//! Spec 139: resume collects pending -> failed -> DLQ and runs each item once.

mod support;

use support::repo::{Resumable, backends, count, text};

#[test]
fn an_item_in_several_sources_runs_once_and_the_pending_version_wins() {
    for (name, db) in backends() {
        let r = Resumable::new(db.as_ref().map(|d| d.url()), 9);
        // item-0 fails first and stops the map phase: it is failed and in the DLQ, the rest
        // pending; the job stays resumable in the map phase.
        let job = r.run_stopping_at("item-0");

        // A DLQ row for pending item-3, with older data (as an interrupted retry leaves it),
        // and one for id-less item-5 too.
        let url = db
            .as_ref()
            .map(|d| d.url().to_string())
            .unwrap_or_else(|| r.repo.db_url.clone());
        let items = r.repo.json(&["status", &job]);
        assert_eq!(items["counts"]["pending"], 8, "{name}: {items}");
        support::repo::add_stale_dlq_row(
            &url,
            &job,
            "item-3",
            serde_json::json!({"id": "item-3", "name": "item-3", "v": "stale"}),
        );
        let key5 = support::repo::item_key_at(&url, &job, 5);
        assert!(key5.starts_with("h-"), "{name}: {key5}");
        support::repo::add_stale_dlq_row(
            &url,
            &job,
            &key5,
            serde_json::json!({"name": "item-5", "v": "stale"}),
        );

        r.unfail("item-0");
        let out = r.prodigy(&["resume", &job, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            outcome["duplicates_removed"], 3,
            "{name}: item-0 (failed+DLQ), item-3 and item-5 (pending+DLQ): {outcome}"
        );

        // Each item ran exactly once in the resume, with its pending data.
        for i in 0..9 {
            let expected = if i == 0 { 2 } else { 1 };
            assert_eq!(
                r.runs_of(&format!("item-{i}")),
                expected,
                "{name}: item-{i}"
            );
        }
        assert!(
            !r.runs().iter().any(|l| l.contains("stale")),
            "{name}: the DLQ copy never ran"
        );
        r.assert_each_effect_once(&job, 9);
        let ev = r.repo.events(&job);
        let planned = ev.iter().find(|e| e["kind"] == "resume_planned").unwrap();
        assert_eq!(
            planned["data"]["duplicates_removed"], 3,
            "{name}: recorded as an event"
        );
        assert_eq!(count(&ev, "resume_planned"), 1);
    }
}
