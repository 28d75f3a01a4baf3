//! What a resume runs: pending items, then failed ones below the retry limit, then DLQ items,
//! each item once (DESIGN.md "Resume and the dead-letter queue").
//!
//! Pure: the engine reads the store, [`build_from_items`] sorts the rows into the three
//! sources, and [`plan`] decides.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::store::{DlqItem, WorkItem};
use crate::types::{ItemKey, ItemStatus};

/// Where a candidate came from, in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Pending,
    Failed,
    Dlq,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub key: ItemKey,
    pub data: Value,
    pub source: Source,
    /// Attempts made so far, across runs.
    pub attempts: u32,
    /// Position in the map input; `i64::MAX` for a DLQ row whose item row is unknown.
    pub position: i64,
}

/// Which DLQ items a resume takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DlqMode {
    /// Those whose failure class may pass on a new run (see `classify::is_reprocessable`).
    #[default]
    Reprocessable,
    All,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeOptions {
    pub dlq: DlqMode,
    /// Failed items with this many attempts or more are not retried from the failed list.
    pub max_retries: u32,
}

/// Why an item is left out of a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum SkipReason {
    /// A failed item that used up its attempts (and is not picked up from the DLQ either).
    RetriesExhausted { attempts: u32, max_retries: u32 },
    /// A DLQ item whose failure a plain resume does not retry; `dlq retry` does.
    NotReprocessable,
    /// DLQ items were excluded from this resume.
    DlqExcluded,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResumePlan {
    /// What to run, in order, each key once.
    pub run: Vec<Candidate>,
    /// Eligible candidates dropped because an earlier source already had their key.
    pub duplicates_removed: usize,
    /// Items that do not run, with the reason; an item that runs from another source is not
    /// listed here.
    pub skipped: Vec<(ItemKey, SkipReason)>,
}

pub fn plan(
    pending: Vec<Candidate>,
    failed: Vec<Candidate>,
    dlq: Vec<(Candidate, bool)>,
    opts: &ResumeOptions,
) -> ResumePlan {
    let mut eligible: Vec<Candidate> = Vec::with_capacity(pending.len() + failed.len());
    let mut skipped: Vec<(ItemKey, SkipReason)> = Vec::new();

    eligible.extend(pending);
    for c in failed {
        if c.attempts < opts.max_retries {
            eligible.push(c);
        } else {
            let reason = SkipReason::RetriesExhausted {
                attempts: c.attempts,
                max_retries: opts.max_retries,
            };
            skipped.push((c.key, reason));
        }
    }
    for (c, reprocessable) in dlq {
        match opts.dlq {
            DlqMode::All => eligible.push(c),
            DlqMode::Reprocessable if reprocessable => eligible.push(c),
            DlqMode::Reprocessable => skipped.push((c.key, SkipReason::NotReprocessable)),
            DlqMode::None => skipped.push((c.key, SkipReason::DlqExcluded)),
        }
    }

    let mut seen: HashSet<ItemKey> = HashSet::with_capacity(eligible.len());
    let mut run = Vec::with_capacity(eligible.len());
    let mut duplicates_removed = 0;
    for c in eligible {
        if seen.contains(&c.key) {
            duplicates_removed += 1;
        } else {
            seen.insert(c.key.clone());
            run.push(c);
        }
    }

    // Report each left-out item once, and only if it does not run. The last reason is the
    // last gate it failed, so it names what would run it: a failed item out of retries that
    // sits in the DLQ as not reprocessable needs `dlq retry`, not more retries.
    let mut reported: HashSet<ItemKey> = HashSet::new();
    let mut skipped: Vec<(ItemKey, SkipReason)> = skipped
        .into_iter()
        .rev()
        .filter(|(key, _)| !seen.contains(key) && reported.insert(key.clone()))
        .collect();
    skipped.reverse();

    ResumePlan {
        run,
        duplicates_removed,
        skipped,
    }
}

/// Sorts a job's store rows into the three sources of [`plan`]:
/// - pending: items pending, or left running by a crash, and not merged;
/// - failed: failed items, not merged;
/// - DLQ: DLQ rows with the data the DLQ row holds, and whether a plain resume may take them
///   (reprocessable and not flagged for manual review). Rows of items already succeeded or
///   merged are left out: such an item is never run again.
///
/// Items that succeeded but are not merged yet are in none of them: their commit waits for the
/// merge queue, not for another run. Each list is in map-input order (DLQ rows by their item's
/// position).
pub fn build_from_items(
    items: &[WorkItem],
    dlq: &[DlqItem],
) -> (Vec<Candidate>, Vec<Candidate>, Vec<(Candidate, bool)>) {
    let mut by_position: Vec<&WorkItem> = items.iter().collect();
    by_position.sort_by_key(|i| i.position);

    let candidate = |item: &WorkItem, source: Source| Candidate {
        key: item.key.clone(),
        data: item.data.clone(),
        source,
        attempts: item.attempts,
        position: item.position,
    };
    let mut pending = Vec::new();
    let mut failed = Vec::new();
    for item in by_position.iter().filter(|i| !i.merged) {
        match item.status {
            ItemStatus::Pending | ItemStatus::Running => {
                pending.push(candidate(item, Source::Pending))
            }
            ItemStatus::Failed => failed.push(candidate(item, Source::Failed)),
            ItemStatus::Succeeded => {}
        }
    }

    let index: HashMap<&ItemKey, &WorkItem> = items.iter().map(|i| (&i.key, i)).collect();
    let mut dlq_candidates: Vec<(Candidate, bool)> = dlq
        .iter()
        .filter(|row| {
            index
                .get(&row.key)
                .is_none_or(|item| !item.merged && item.status != ItemStatus::Succeeded)
        })
        .map(|row| {
            let item = index.get(&row.key);
            let c = Candidate {
                key: row.key.clone(),
                data: row.data.clone(),
                source: Source::Dlq,
                attempts: item.map_or(row.failure_count, |i| i.attempts),
                position: item.map_or(i64::MAX, |i| i.position),
            };
            (c, row.reprocessable && !row.manual_review)
        })
        .collect();
    // Stable: rows of unknown items keep the store's order (oldest first failure first).
    dlq_candidates.sort_by_key(|(c, _)| c.position);

    (pending, failed, dlq_candidates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    use crate::types::{ErrorClass, JobId};

    fn cand(key: &str, source: Source, attempts: u32, data: Value) -> Candidate {
        Candidate {
            key: key.into(),
            data,
            source,
            attempts,
            position: 0,
        }
    }

    fn opts(dlq: DlqMode) -> ResumeOptions {
        ResumeOptions {
            dlq,
            max_retries: 2,
        }
    }

    fn keys(plan: &ResumePlan) -> Vec<&str> {
        plan.run.iter().map(|c| c.key.0.as_str()).collect()
    }

    #[test]
    fn an_item_in_all_three_lists_runs_once_with_the_pending_data() {
        let p = plan(
            vec![cand("x", Source::Pending, 1, json!({"v": "pending"}))],
            vec![cand("x", Source::Failed, 1, json!({"v": "failed"}))],
            vec![(cand("x", Source::Dlq, 1, json!({"v": "dlq"})), true)],
            &opts(DlqMode::Reprocessable),
        );
        assert_eq!(p.run.len(), 1);
        assert_eq!(p.run[0].data, json!({"v": "pending"}));
        assert_eq!(p.run[0].source, Source::Pending);
        assert_eq!(p.duplicates_removed, 2);
        assert!(p.skipped.is_empty());
    }

    #[test]
    fn order_is_pending_then_failed_then_dlq_each_in_input_order() {
        let p = plan(
            vec![
                cand("p2", Source::Pending, 0, json!(2)),
                cand("p1", Source::Pending, 0, json!(1)),
            ],
            vec![
                cand("f1", Source::Failed, 1, json!(null)),
                cand("f2", Source::Failed, 0, json!(null)),
            ],
            vec![
                (cand("d1", Source::Dlq, 5, json!(null)), true),
                (cand("f1", Source::Dlq, 1, json!(null)), true),
                (cand("d2", Source::Dlq, 1, json!(null)), true),
            ],
            &opts(DlqMode::Reprocessable),
        );
        assert_eq!(keys(&p), ["p2", "p1", "f1", "f2", "d1", "d2"]);
        assert_eq!(p.duplicates_removed, 1);
    }

    #[test]
    fn failed_items_at_the_limit_are_skipped_unless_the_dlq_takes_them() {
        let p = plan(
            vec![],
            vec![
                cand("tired", Source::Failed, 2, json!(null)),
                cand("fresh", Source::Failed, 1, json!(null)),
                cand("rescued", Source::Failed, 3, json!(null)),
            ],
            vec![(cand("rescued", Source::Dlq, 3, json!(null)), true)],
            &opts(DlqMode::Reprocessable),
        );
        assert_eq!(keys(&p), ["fresh", "rescued"]);
        assert_eq!(p.run[1].source, Source::Dlq);
        // Taken from the DLQ after the failed list skipped it: not a duplicate.
        assert_eq!(p.duplicates_removed, 0);
        assert_eq!(
            p.skipped,
            vec![(
                ItemKey::from("tired"),
                SkipReason::RetriesExhausted {
                    attempts: 2,
                    max_retries: 2
                }
            )]
        );
    }

    #[test]
    fn dlq_modes() {
        let dlq = || {
            vec![
                (cand("ok", Source::Dlq, 1, json!(null)), true),
                (cand("judged", Source::Dlq, 1, json!(null)), false),
            ]
        };
        let p = plan(vec![], vec![], dlq(), &opts(DlqMode::Reprocessable));
        assert_eq!(keys(&p), ["ok"]);
        assert_eq!(
            p.skipped,
            vec![(ItemKey::from("judged"), SkipReason::NotReprocessable)]
        );

        let p = plan(vec![], vec![], dlq(), &opts(DlqMode::All));
        assert_eq!(keys(&p), ["ok", "judged"]);
        assert!(p.skipped.is_empty());

        let p = plan(vec![], vec![], dlq(), &opts(DlqMode::None));
        assert!(p.run.is_empty());
        assert_eq!(p.skipped.len(), 2);
        assert!(p.skipped.iter().all(|(_, r)| *r == SkipReason::DlqExcluded));
    }

    #[test]
    fn duplicates_within_one_list_are_removed_and_counted() {
        let p = plan(
            vec![
                cand("a", Source::Pending, 0, json!(1)),
                cand("b", Source::Pending, 0, json!(2)),
                cand("a", Source::Pending, 0, json!(3)),
            ],
            vec![],
            vec![],
            &opts(DlqMode::Reprocessable),
        );
        assert_eq!(keys(&p), ["a", "b"]);
        assert_eq!(p.run[0].data, json!(1));
        assert_eq!(p.duplicates_removed, 1);
    }

    fn item(key: &str, position: i64, status: ItemStatus, merged: bool, attempts: u32) -> WorkItem {
        WorkItem {
            key: key.into(),
            position,
            data: json!({ "item": key }),
            status,
            attempts,
            merged,
            commit: None,
            result: None,
            in_dlq: false,
            reprocessable: false,
        }
    }

    fn dlq_row(key: &str, class: ErrorClass, manual_review: bool) -> DlqItem {
        DlqItem {
            job_id: JobId::new(),
            key: key.into(),
            data: json!({ "from": "dlq", "item": key }),
            first_failure: Utc::now(),
            last_failure: Utc::now(),
            failure_count: 7,
            error_class: class,
            signature: String::new(),
            last_message: String::new(),
            reprocessable: crate::engine::classify::is_reprocessable(class),
            manual_review,
            json_log_location: None,
            session_id: None,
        }
    }

    #[test]
    fn store_rows_are_sorted_into_sources() {
        let items = vec![
            item("merged", 0, ItemStatus::Succeeded, true, 1),
            item("waiting-merge", 1, ItemStatus::Succeeded, false, 1),
            item("crashed", 5, ItemStatus::Running, false, 1),
            item("new", 2, ItemStatus::Pending, false, 0),
            item("broken", 3, ItemStatus::Failed, false, 2),
            item("conflict", 4, ItemStatus::Failed, false, 1),
        ];
        let dlq = vec![
            dlq_row("conflict", ErrorClass::MergeConflict, false),
            dlq_row("broken", ErrorClass::ValidationFailed, false),
            dlq_row("merged", ErrorClass::Timeout, false), // stale row: must never run again
            dlq_row("gone", ErrorClass::Timeout, false),   // no item row
            dlq_row("flagged", ErrorClass::Timeout, true),
        ];
        let (pending, failed, dlq) = build_from_items(&items, &dlq);

        let k = |cs: &[Candidate]| cs.iter().map(|c| c.key.0.clone()).collect::<Vec<_>>();
        assert_eq!(k(&pending), ["new", "crashed"]);
        assert_eq!(k(&failed), ["broken", "conflict"]);
        assert_eq!(failed[0].attempts, 2);

        let dlq_keys: Vec<(&str, bool)> = dlq.iter().map(|(c, r)| (c.key.0.as_str(), *r)).collect();
        assert_eq!(
            dlq_keys,
            [
                ("broken", false),
                ("conflict", true),
                ("gone", true),
                ("flagged", false)
            ]
        );
        assert_eq!(dlq[1].0.data, json!({ "from": "dlq", "item": "conflict" }));
        assert_eq!(dlq[1].0.attempts, 1, "attempts come from the item row");
        assert_eq!(
            dlq[2].0.attempts, 7,
            "without an item row, from the DLQ row"
        );
    }

    #[test]
    fn items_without_an_id_field_are_never_dropped() {
        // Keys derived from the content hash of id-less items: all distinct, all run.
        let items: Vec<WorkItem> = (0..20)
            .map(|i| {
                let mut it = item(
                    &format!("sha256:{i:064x}"),
                    i,
                    ItemStatus::Pending,
                    false,
                    0,
                );
                it.data = json!({ "path": format!("file{i}.txt") });
                it
            })
            .collect();
        let (pending, failed, dlq) = build_from_items(&items, &[]);
        let p = plan(pending, failed, dlq, &opts(DlqMode::Reprocessable));
        assert_eq!(p.run.len(), 20);
        assert_eq!(p.duplicates_removed, 0);
    }

    #[test]
    fn full_resume_from_store_rows() {
        let items = vec![
            item("a", 0, ItemStatus::Pending, false, 0),
            item("b", 1, ItemStatus::Failed, false, 1),
            item("c", 2, ItemStatus::Failed, false, 2),
            item("d", 3, ItemStatus::Succeeded, true, 1),
        ];
        let dlq = vec![
            dlq_row("b", ErrorClass::CommandFailed, false),
            dlq_row("c", ErrorClass::CommitValidationFailed, false),
        ];
        let (pending, failed, dlq) = build_from_items(&items, &dlq);
        let p = plan(pending, failed, dlq, &opts(DlqMode::Reprocessable));
        assert_eq!(keys(&p), ["a", "b"]);
        assert_eq!(p.run[1].source, Source::Failed);
        assert_eq!(p.duplicates_removed, 1);
        assert_eq!(
            p.skipped,
            vec![(ItemKey::from("c"), SkipReason::NotReprocessable)]
        );
    }
}
