//! Spec 138: failed agents land in the DLQ with their history; `dlq retry` reprocesses them.

mod support;

use serde_json::Value;
use support::repo::{Repo, Resumable, backends, job_id, text};

#[test]
fn failed_agents_are_recorded_and_retried_until_they_succeed() {
    for (name, db) in backends() {
        let r = Resumable::new(db.as_ref().map(|d| d.url()), 6);
        r.fail("item-1");
        r.fail("item-2"); // id-less: keyed by a hash of its content
        let out = r.prodigy(&["run", "wf.yml"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        let job = job_id(&out);

        let dlq = r.repo.json(&["dlq", "list", &job]);
        let rows = dlq.as_array().unwrap();
        assert_eq!(rows.len(), 2, "{name}: {dlq}");
        for row in rows {
            assert_eq!(row["error_class"], "command_failed", "{name}");
            assert_eq!(row["failure_count"], 1, "{name}");
            assert_eq!(
                row["signature"].as_str().unwrap().len(),
                64,
                "{name}: sha-256 hex"
            );
            assert!(
                row["last_message"]
                    .as_str()
                    .unwrap()
                    .contains("flag file present"),
                "{name}"
            );
        }
        assert_eq!(
            rows[0]["signature"], rows[1]["signature"],
            "{name}: one failure, one signature"
        );
        let key1 = "item-1";
        let key2 = rows
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .find(|k| *k != key1)
            .unwrap()
            .to_string();
        assert!(
            key2.starts_with("h-"),
            "{name}: id-less item keyed by content hash: {key2}"
        );

        let show = r.repo.json(&["dlq", "show", &job, key1]);
        let log = show["attempts"][0]["log_path"].as_str().unwrap();
        assert!(
            std::fs::read_to_string(log)
                .unwrap()
                .contains("flag file present"),
            "{name}"
        );

        // Retry with the cause still there: one more history entry, attempt 2.
        let out = r.prodigy(&["dlq", "retry", &job, "--item", key1]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        // Fix item-1 and retry everything: item-1 succeeds and leaves; item-2 fails again.
        r.unfail("item-1");
        let out = r.prodigy(&["dlq", "retry", &job]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        let show = r.repo.json(&["dlq", "show", &job, key1]);
        let attempts: Vec<u64> = show["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(attempts, vec![1, 2, 3], "{name}: real attempt numbers");
        assert!(show["dlq"].is_null(), "{name}: item-1 left the DLQ: {show}");
        assert_eq!(
            r.repo.show(&format!("prodigy/{job}:out/item-1.txt")),
            "1",
            "{name}: the retried item was merged"
        );
        let dlq = r.repo.json(&["dlq", "list", &job]);
        assert_eq!(dlq.as_array().unwrap().len(), 1, "{name}");
        assert_eq!(dlq[0]["key"], Value::String(key2.clone()), "{name}");
        assert_eq!(dlq[0]["failure_count"], 2, "{name}");

        // The last one fixed: the DLQ empties and the job is done.
        r.unfail("item-2");
        let out = r.prodigy(&["dlq", "retry", &job]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        assert_eq!(
            r.repo
                .json(&["dlq", "list", &job])
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            r.repo.json(&["status", &job])["job"]["status"],
            "succeeded",
            "{name}"
        );
        assert_eq!(r.runs_of("item-1"), 3, "{name}");
        assert_eq!(
            r.runs_of("item-0"),
            1,
            "{name}: succeeded items never re-run"
        );
    }
}

#[test]
fn resume_includes_dlq_items() {
    for (name, db) in backends() {
        let r = Resumable::new(db.as_ref().map(|d| d.url()), 8);
        // item-0 fails first and stops the map phase: it is failed and in the DLQ, the rest
        // pending; the job stays resumable in the map phase.
        let job = r.run_stopping_at("item-0");
        let status = r.repo.json(&["status", &job]);
        assert_eq!(status["job"]["phase"], "map", "{name}: {status}");
        assert_eq!(status["counts"]["dlq"], 1, "{name}");

        r.unfail("item-0");
        let out = r.prodigy(&["resume", &job]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        r.assert_each_effect_once(&job, 8);
        assert_eq!(r.runs_of("item-0"), 2, "{name}");
    }
}

/// Agents that die of resource exhaustion or an unknown signal are classified so.
#[test]
fn resource_exhaustion_and_unknown_failures_are_classified() {
    let repo = Repo::new(None);
    repo.write(
        "items.json",
        r#"[{"id":"oom","cmd":"echo 'fatal: Out of memory, malloc failed' >&2; exit 128"},
            {"id":"disk","cmd":"echo 'write error: No space left on device' >&2; exit 1"},
            {"id":"killed","cmd":"kill -KILL $$"},
            {"id":"segv","cmd":"kill -SEGV $$"}]"#,
    );
    repo.write(
        "wf.yml",
        "mode: mapreduce\nmap:\n  input: items.json\n  json_path: \"$[*]\"\n  agent_template:\n    - shell: \"${item.cmd|raw}\"\n",
    );
    repo.commit_all("wf");
    let out = repo.prodigy(&["run", "wf.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let job = job_id(&out);
    let dlq = repo.json(&["dlq", "list", &job]);
    let class = |k: &str| {
        dlq.as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == k)
            .map(|r| r["error_class"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{k} not in DLQ: {dlq}"))
    };
    assert_eq!(class("oom"), "resource_exhausted");
    assert_eq!(class("disk"), "resource_exhausted");
    assert_eq!(
        class("killed"),
        "resource_exhausted",
        "SIGKILL we did not send: the OOM killer"
    );
    assert_eq!(class("segv"), "unknown");
}
