//! The summary's cost and time tables: agent usage per job and phase, the most expensive and
//! the slowest items.

use std::collections::BTreeMap;

use crate::store::{Attempt, JobUsage};
use crate::text::{human_millis, one_line};
use crate::types::{ItemKey, Usage};

use super::{MOST_EXPENSIVE_SHOWN, inline_code};

/// The "Agent usage" table (the job, then each phase that ran an agent) and the "Most expensive
/// items" table; empty when no agent ran.
pub fn usage_section(usage: &JobUsage) -> String {
    if usage.runs == 0 {
        return String::new();
    }
    let mut out = String::from(
        "### Agent usage\n\n| | input | output | cache write | cache read | tokens | cost | turns | API time |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    out.push_str(&usage_row("**job**", &usage.total));
    for (phase, u) in usage.phases() {
        out.push_str(&usage_row(&one_line(phase, 40), u));
    }
    out.push('\n');
    let costly = usage.most_expensive(MOST_EXPENSIVE_SHOWN);
    if !costly.is_empty() {
        out.push_str(
            "### Most expensive items\n\n| item | cost | tokens | turns |\n|---|---:|---:|---:|\n",
        );
        for (key, u) in costly {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                inline_code(&key.0),
                usd(u.cost_usd),
                u.tokens(),
                u.turns
            ));
        }
        out.push('\n');
    }
    out
}

fn usage_row(label: &str, u: &Usage) -> String {
    format!(
        "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        u.input_tokens,
        u.output_tokens,
        u.cache_creation_tokens,
        u.cache_read_tokens,
        u.tokens(),
        usd(u.cost_usd),
        u.turns,
        human_millis(i64::try_from(u.api_ms).unwrap_or(i64::MAX))
    )
}

/// A cost as people read it: `$0.0123` (the CLI's own figure, to the hundredth of a cent).
fn usd(cost: f64) -> String {
    format!("${cost:.4}")
}

/// One row of the "slowest items" table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowItem {
    pub key: ItemKey,
    /// The item's longest finished attempt, in milliseconds.
    pub longest_ms: i64,
    pub attempts: u32,
}

/// Items by their longest finished attempt, slowest first (ties by key), at most `n`.
pub fn slowest_items(attempts: &[Attempt], n: usize) -> Vec<SlowItem> {
    let mut per_item: BTreeMap<&ItemKey, SlowItem> = BTreeMap::new();
    for a in attempts {
        let entry = per_item.entry(&a.key).or_insert_with(|| SlowItem {
            key: a.key.clone(),
            longest_ms: -1,
            attempts: 0,
        });
        entry.attempts = entry.attempts.max(a.attempt);
        if let Some(end) = a.finished_at {
            let ms = (end - a.started_at).num_milliseconds().max(0);
            entry.longest_ms = entry.longest_ms.max(ms);
        }
    }
    let mut items: Vec<SlowItem> = per_item
        .into_values()
        .filter(|s| s.longest_ms >= 0)
        .collect();
    items.sort_by(|a, b| b.longest_ms.cmp(&a.longest_ms).then(a.key.cmp(&b.key)));
    items.truncate(n);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::render::fixtures::*;
    use crate::checks::render::*;
    use crate::types::{JobStatus, Phase};

    #[test]
    fn usage_section_totals_the_job_and_its_phases_and_ranks_items_by_cost() {
        let mut runs = vec![run("setup", None, 500, 0.01, 1)];
        for (i, key) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            runs.push(run("map", Some(key), 1000, 0.001 * (i as f64 + 1.0), 2));
        }
        // `b` ran twice: its runs add up.
        runs.push(run("map", Some("b"), 1000, 0.005, 3));
        runs.push(run("reduce", None, 200, 0.002, 1));
        let usage = JobUsage::from_runs(&runs);
        insta::assert_snapshot!(usage_section(&usage), @r"
        ### Agent usage

        | | input | output | cache write | cache read | tokens | cost | turns | API time |
        |---|---:|---:|---:|---:|---:|---:|---:|---:|
        | **job** | 7700 | 90 | 900 | 9 | 8699 | $0.0380 | 17 | 13 s |
        | setup | 500 | 10 | 100 | 1 | 611 | $0.0100 | 1 | 1.5 s |
        | map | 7000 | 70 | 700 | 7 | 7777 | $0.0260 | 15 | 10 s |
        | reduce | 200 | 10 | 100 | 1 | 311 | $0.0020 | 1 | 1.5 s |

        ### Most expensive items

        | item | cost | tokens | turns |
        |---|---:|---:|---:|
        | `b` | $0.0070 | 2222 | 5 |
        | `f` | $0.0060 | 1111 | 2 |
        | `e` | $0.0050 | 1111 | 2 |
        | `d` | $0.0040 | 1111 | 2 |
        | `c` | $0.0030 | 1111 | 2 |
        ");
    }

    #[test]
    fn no_agent_no_usage_section() {
        assert_eq!(usage_section(&JobUsage::default()), "");
        let j = job(JobStatus::Succeeded, Phase::Done, None);
        let facts = WorkflowFacts::from_job(&j);
        let input = FinalInput {
            job: &j,
            facts: &facts,
            counts: counts(1, 1, 0),
            dlq: &[],
            attempts: &[],
            usage: no_usage(),
            cancelled: false,
            face: Face::App,
        };
        assert!(!final_summary(&input).contains("usage"));
        let usage = JobUsage::from_runs(&[run("map", Some("k"), 1, 0.5, 1)]);
        let input = FinalInput {
            usage: &usage,
            ..input
        };
        let summary = final_summary(&input);
        assert!(summary.contains("### Agent usage"), "{summary}");
        assert!(summary.contains("| `k` | $0.5000 | 112 | 1 |"), "{summary}");
    }
}
