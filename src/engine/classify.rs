//! Why an attempt failed, and which failures are the same failure.
//!
//! Pure functions: the engine gathers the facts of a failure, [`classify`] names its class,
//! [`signature`] groups it with the same failure on other items, and [`is_reprocessable`] says
//! whether a plain `prodigy resume` should try the item again.

use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::types::ErrorClass;

/// Where in an item's life the failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureStage {
    /// A step's command (shell, claude, ...) failed.
    Command,
    /// Creating, resetting or removing the item's worktree failed.
    Worktree,
    /// Merging the item's commit into the job branch failed.
    Merge,
    /// `commit_required` was set and the agent made no commit.
    CommitCheck,
    /// The workflow's validation of the agent's work failed.
    Validation,
    /// The AI CLI reported why it stopped (its `result` message or an API error).
    Agent(AgentFailure),
}

/// Why the AI CLI stopped, from its stream-json output (see `engine::agent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentFailure {
    /// The API refused the key (401/403).
    Auth,
    /// The account cannot pay (402, `billing_error`).
    Billing,
    /// 429 after the CLI's own retries.
    RateLimited,
    /// 529/503 after the CLI's own retries.
    Overloaded,
    /// Another API error.
    Api,
    /// `error_max_turns`.
    MaxTurns,
    /// `error_max_budget_usd`: the CLI's own spending limit.
    Budget,
    /// `error_during_execution` or an error result with no API cause.
    Execution,
}

impl AgentFailure {
    /// Auth and billing failures: no other item can succeed either, so the job stops at once.
    pub fn stops_the_job(self) -> bool {
        matches!(self, AgentFailure::Auth | AgentFailure::Billing)
    }

    /// Rate limits and overload: transient, retried after a back-off without using an attempt.
    pub fn is_transient(self) -> bool {
        matches!(self, AgentFailure::RateLimited | AgentFailure::Overloaded)
    }
}

/// What is known about one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureFacts {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Our own timeout killed the command (not the OOM killer, not a user).
    pub timed_out: bool,
    /// The stderr tail, or the error text when no command ran.
    pub message: String,
    pub stage: FailureStage,
}

impl FailureFacts {
    /// The facts of a failed command step.
    pub fn from_output(output: &super::process::CommandOutput, stage: FailureStage) -> Self {
        FailureFacts {
            exit_code: output.exit_code,
            signal: output.signal,
            timed_out: output.timed_out,
            message: output.failure_tail(20),
            stage,
        }
    }

    /// The facts of a failure that is an error text, not a process (worktree, merge, ...).
    pub fn from_error(stage: FailureStage, message: impl Into<String>) -> Self {
        FailureFacts {
            exit_code: None,
            signal: None,
            timed_out: false,
            message: message.into(),
            stage,
        }
    }
}

/// Phrases the OS, libc and common runtimes print when a machine resource ran out. Matched
/// against the lower-cased message.
const RESOURCE_PHRASES: &[&str] = &[
    "out of memory",
    "outofmemory",                      // java.lang.OutOfMemoryError
    "cannot allocate memory",           // ENOMEM
    "memory allocation of",             // Rust's "memory allocation of N bytes failed"
    "std::bad_alloc",                   // C++
    "no space left on device",          // ENOSPC
    "disk quota exceeded",              // EDQUOT
    "too many open files",              // EMFILE / ENFILE
    "resource temporarily unavailable", // EAGAIN from fork/clone: process limit
];

/// errno names, matched as whole words (`emfile` is also the tail of `systemfile`).
const RESOURCE_ERRNOS: &[&str] = &["enomem", "enospc", "edquot", "emfile", "enfile"];

/// Exit code a shell reports for a child killed by SIGKILL (128 + 9). Every `shell:` step runs
/// under `sh -c`, so this is how an OOM-killed agent command usually looks to us.
const SHELL_SIGKILL_EXIT: i32 = 128 + libc::SIGKILL;

pub fn classify(f: &FailureFacts) -> ErrorClass {
    if f.timed_out {
        return ErrorClass::Timeout;
    }
    // The cause beats the stage: a merge or worktree step that ran out of disk is not a conflict
    // or a git problem, and retrying it is only useful once the resource is back.
    let message = f.message.to_lowercase();
    if RESOURCE_PHRASES.iter().any(|p| message.contains(p))
        || message
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| RESOURCE_ERRNOS.contains(&word))
    {
        return ErrorClass::ResourceExhausted;
    }
    match f.stage {
        FailureStage::Merge => return ErrorClass::MergeConflict,
        FailureStage::Worktree => return ErrorClass::WorktreeError,
        FailureStage::CommitCheck => return ErrorClass::CommitValidationFailed,
        FailureStage::Validation => return ErrorClass::ValidationFailed,
        FailureStage::Agent(a) => {
            return match a {
                AgentFailure::Auth | AgentFailure::Billing => ErrorClass::ApiAuth,
                AgentFailure::RateLimited | AgentFailure::Overloaded => ErrorClass::ApiRateLimited,
                AgentFailure::Api => ErrorClass::ApiError,
                AgentFailure::MaxTurns => ErrorClass::MaxTurns,
                AgentFailure::Budget | AgentFailure::Execution => ErrorClass::CommandFailed,
            };
        }
        FailureStage::Command => {}
    }
    // SIGKILL that our timeout did not send: on Linux almost always the OOM killer.
    if f.signal == Some(libc::SIGKILL) || f.exit_code == Some(SHELL_SIGKILL_EXIT) {
        return ErrorClass::ResourceExhausted;
    }
    match f.exit_code {
        Some(code) if code != 0 => ErrorClass::CommandFailed,
        _ => ErrorClass::Unknown,
    }
}

/// Whether a plain `prodigy resume` picks a DLQ item of this class up again (`dlq retry` and
/// resume with every DLQ item take them all).
///
/// Retried: classes whose cause is outside the item or changes between runs. Timeout, resource
/// exhaustion and worktree errors are load and machine trouble; a merge conflict comes from the
/// order in which items landed, and a fresh run starts from the job branch that now holds the
/// other change; a failing command is an AI agent whose next run differs, or a flaky tool;
/// Unknown includes attempts interrupted by a crash.
///
/// Not retried: CommitValidationFailed and ValidationFailed. The agent ran to the end and its
/// result was judged and found wanting; running the same prompt on the same input again mostly
/// buys the same verdict at the cost of a full agent run. Those need a person to look (the
/// workflow or the item), then `dlq retry`.
pub fn is_reprocessable(class: ErrorClass) -> bool {
    !matches!(
        class,
        ErrorClass::CommitValidationFailed | ErrorClass::ValidationFailed
    )
}

/// Lower-case hex SHA-256 of the class and the normalised message: the same failure on many
/// items (different paths, line numbers, commits, ids) has one signature.
pub fn signature(class: ErrorClass, message: &str) -> String {
    signature_for_item(class, message, &[])
}

/// Like [`signature`], first replacing texts known to be specific to the item (its key, its
/// worktree and branch names), which may not look like ids at all.
pub fn signature_for_item(class: ErrorClass, message: &str, item_specific: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(class.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(normalize_for_item(message, item_specific).as_bytes());
    hex::encode(hasher.finalize())
}

/// The message with everything item-specific replaced by placeholders (`<path>`, `<n>` for
/// numbers and hex ids, `<uuid>`, `<time>`, `<tmp>`, `<item>`), lower-cased, whitespace
/// collapsed.
pub fn normalize(message: &str) -> String {
    normalize_for_item(message, &[])
}

/// Patterns are ASCII-only on purpose: lower-casing comes first, and the regex crate is built
/// without its Unicode tables.
static ANSI: LazyLock<Regex> = LazyLock::new(|| re(r"\x1b\[[0-9;?]*[a-z]"));
static UUID: LazyLock<Regex> =
    LazyLock::new(|| re(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"));
/// `2024-01-02`, `2024-01-02t03:04:05.123z`, `2024-01-02 03:04:05+01:00`, and bare `03:04:05`.
static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[t ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:z|[+-][0-9]{2}:?[0-9]{2})?)?",
        r"|[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]+)?"
    ))
});
/// Anything with a slash between name characters (`/tmp/x/y.rs`, `src/a/b.rs`, `./x`,
/// `~/x`), and a bare `file.ext` when a line number follows; with its `:line:col`.
static PATH: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        // `<` and `>` take in the placeholders put into paths by the steps before.
        r"[a-z0-9_.~+@%<>-]*(?:/[a-z0-9_.~+@%<>-]+)+/?(?::[0-9]+)*",
        r"|[a-z0-9_-]+\.[a-z][a-z0-9]{0,7}(?::[0-9]+)+"
    ))
});
/// Temporary directory names outside paths: tempfile's `.tmpXXXXXX`, mktemp's `tmp.XXXXXXXXXX`.
static TEMP: LazyLock<Regex> = LazyLock::new(|| re(r"\.tmp[a-z0-9]{6}|tmp\.[a-z0-9]{6,}"));
/// Runs of letters and digits; `_`, `-` and `.` separate them, so `item_17` and `agent-3`
/// expose their numbers.
static WORD: LazyLock<Regex> = LazyLock::new(|| re(r"[a-z0-9]+"));

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("the normalisation patterns are valid")
}

fn normalize_for_item(message: &str, item_specific: &[&str]) -> String {
    let mut text = message.to_lowercase();
    for specific in item_specific {
        // Very short texts ("a", "12") would also hit unrelated words; numbers go anyway.
        let specific = specific.trim().to_lowercase();
        if specific.len() >= 3 {
            text = text.replace(&specific, "<item>");
        }
    }
    let text = ANSI.replace_all(&text, "");
    let text = UUID.replace_all(&text, "<uuid>");
    let text = TIMESTAMP.replace_all(&text, "<time>");
    let text = PATH.replace_all(&text, "<path>");
    let text = TEMP.replace_all(&text, "<tmp>");
    let text = WORD.replace_all(&text, |caps: &regex::Captures| word_placeholder(&caps[0]));
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Numbers (also with a short unit: `100ms`), and hex ids of 7+ characters with at least one
/// digit (git shas; the digit keeps words like `deadbeef` or `effaced`). Digits after letters
/// stay: in `E0308`, `utf8` or `sha256` they are part of a name, and different names are
/// different failures.
fn word_placeholder(word: &str) -> String {
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = word.bytes().take_while(u8::is_ascii_digit).count();
    if digits == word.len()
        || (word.len() >= 7 && is_hex(word) && word.bytes().any(|b| b.is_ascii_digit()))
        || word.strip_prefix("0x").is_some_and(is_hex)
    {
        // One placeholder for numbers and hex ids: a short sha can be all digits.
        "<n>".to_string()
    } else if digits > 0 && word.len() - digits <= 3 {
        // A number with its unit: `100ms`, `2s`, `4kb`, `1st`.
        format!("<n>{}", &word[digits..])
    } else {
        word.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(stage: FailureStage) -> FailureFacts {
        FailureFacts {
            exit_code: Some(1),
            signal: None,
            timed_out: false,
            message: "error: something broke".to_string(),
            stage,
        }
    }

    #[test]
    fn timeout_wins_over_everything() {
        let mut f = facts(FailureStage::Merge);
        f.timed_out = true;
        f.signal = Some(libc::SIGKILL);
        f.message = "out of memory".into();
        assert_eq!(classify(&f), ErrorClass::Timeout);
    }

    #[test]
    fn stages_name_their_class() {
        for (stage, class) in [
            (FailureStage::Merge, ErrorClass::MergeConflict),
            (FailureStage::Worktree, ErrorClass::WorktreeError),
            (
                FailureStage::CommitCheck,
                ErrorClass::CommitValidationFailed,
            ),
            (FailureStage::Validation, ErrorClass::ValidationFailed),
            (FailureStage::Command, ErrorClass::CommandFailed),
        ] {
            assert_eq!(classify(&facts(stage)), class, "{stage:?}");
        }
    }

    #[test]
    fn resource_messages_are_resource_exhausted_in_any_case_and_stage() {
        for msg in [
            "fatal: Out of memory, malloc failed (tried to allocate 1048576 bytes)",
            "fork: Cannot allocate memory",
            "write /tmp/x: No space left on device",
            "error: Disk quota exceeded",
            "accept: Too many open files (os error 24)",
            "sh: fork: retry: Resource temporarily unavailable",
            "Exception in thread \"main\" java.lang.OutOfMemoryError: Java heap space",
            "memory allocation of 123456 bytes failed",
            "terminate called after throwing an instance of 'std::bad_alloc'",
            "open failed: EMFILE",
            "write(3): ENOSPC (errno 28)",
        ] {
            for stage in [
                FailureStage::Command,
                FailureStage::Worktree,
                FailureStage::Merge,
            ] {
                let mut f = facts(stage);
                f.message = msg.to_string();
                assert_eq!(
                    classify(&f),
                    ErrorClass::ResourceExhausted,
                    "{msg} at {stage:?}"
                );
            }
        }
    }

    #[test]
    fn errno_names_inside_other_words_do_not_count() {
        let mut f = facts(FailureStage::Command);
        f.message = "cannot parse systemfile.conf".into();
        assert_eq!(classify(&f), ErrorClass::CommandFailed);
    }

    #[test]
    fn sigkill_we_did_not_send_is_resource_exhausted() {
        let mut f = facts(FailureStage::Command);
        f.exit_code = None;
        f.signal = Some(libc::SIGKILL);
        f.message = String::new();
        assert_eq!(classify(&f), ErrorClass::ResourceExhausted);
        // The same kill seen through `sh -c`.
        f.signal = None;
        f.exit_code = Some(137);
        assert_eq!(classify(&f), ErrorClass::ResourceExhausted);
    }

    #[test]
    fn nonzero_exit_is_command_failed() {
        let mut f = facts(FailureStage::Command);
        f.exit_code = Some(2);
        f.message = "error[E0308]: mismatched types".into();
        assert_eq!(classify(&f), ErrorClass::CommandFailed);
    }

    #[test]
    fn other_signals_and_missing_facts_are_unknown() {
        let mut f = facts(FailureStage::Command);
        f.exit_code = None;
        f.signal = Some(libc::SIGSEGV);
        assert_eq!(classify(&f), ErrorClass::Unknown);
        f.signal = None;
        f.message = "interrupted".into();
        assert_eq!(classify(&f), ErrorClass::Unknown);
        // A zero exit that still counts as a failure (e.g. a step judged failed elsewhere).
        f.exit_code = Some(0);
        assert_eq!(classify(&f), ErrorClass::Unknown);
    }

    #[test]
    fn reprocessable_leaves_out_judged_results_only() {
        let not: Vec<_> = ErrorClass::ALL
            .iter()
            .filter(|c| !is_reprocessable(**c))
            .copied()
            .collect();
        assert_eq!(
            not,
            vec![
                ErrorClass::ValidationFailed,
                ErrorClass::CommitValidationFailed
            ]
        );
    }

    /// The same failure as it shows on item `i`: its worktree, files, line numbers, commits,
    /// job id, timestamps and item id all differ.
    fn failure_on_item(i: u32) -> String {
        let uuid = format!(
            "0192f5a0-{:04x}-7000-8000-{:012x}",
            i * 7 + 1,
            i * 1_000_003
        );
        let sha = format!(
            "{:040x}",
            u128::from(i) * 0x9e37_79b9_7f4a_7c15_f39c + 0xabc
        );
        format!(
            "\x1b[31merror[E0308]\x1b[0m: mismatched types\n  --> src/items/item_{i}/mod.rs:{}:{}\n   \
             at /tmp/.tmp{:06}/worktrees/agent-{i}/src/lib.rs:{}:5\n\
             commit {} (short {}), job {uuid}, item item-{i}, started 2026-11-25T08:{:02}:{:02}.{}Z\n\
             worktree tmp.{:08x}, took {}.{}s, exit status {}",
            10 + i,
            i % 80,
            i * 13,
            40 + i * 3,
            sha,
            &sha[..7],
            i % 60,
            (i * 7) % 60,
            i * 11,
            i.wrapping_mul(2_654_435_761),
            i,
            i % 10,
            100 + i
        )
    }

    #[test]
    fn the_same_failure_on_fifty_items_has_one_signature() {
        let sigs: std::collections::BTreeSet<String> = (1..=50)
            .map(|i| signature(ErrorClass::CommandFailed, &failure_on_item(i)))
            .collect();
        assert_eq!(
            sigs.len(),
            1,
            "normalised forms differ:\n{}\n{}",
            normalize(&failure_on_item(1)),
            normalize(&failure_on_item(2))
        );
        let sig = sigs.into_iter().next().unwrap();
        assert_eq!(sig.len(), 64);
        assert!(
            sig.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn different_failures_have_different_signatures() {
        let base = failure_on_item(1);
        let other_error = base.replace("E0308", "E0599");
        let other_words = base.replace("mismatched types", "cannot find value");
        let all = [
            signature(ErrorClass::CommandFailed, &base),
            signature(ErrorClass::CommandFailed, &other_error),
            signature(ErrorClass::CommandFailed, &other_words),
            signature(ErrorClass::Timeout, &base),
            signature(ErrorClass::CommandFailed, "no such file or directory"),
            signature(ErrorClass::CommandFailed, "permission denied"),
        ];
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
    }

    #[test]
    fn normalisation_placeholders() {
        assert_eq!(
            normalize("  Failed at /tmp/x/y.rs and src/a/b.rs:12:5\t(see lib.rs:3)  "),
            "failed at <path> and <path> (see <path>)"
        );
        assert_eq!(
            normalize("commit 3f2a9c1d ok, deadbeef and effaced are words, 0x1F"),
            "commit <n> ok, deadbeef and effaced are words, <n>"
        );
        assert_eq!(
            normalize("see /var/log/550e8400-e29b-41d4-a716-446655440000/2026-11-25t08:38:20z/out"),
            "see <path>"
        );
        assert_eq!(
            normalize("id 550E8400-E29B-41D4-A716-446655440000 at 2026-11-25 08:38:20+00:00"),
            "id <uuid> at <time>"
        );
        assert_eq!(
            normalize("dir .tmpAb12Cd, item_17, agent-3, utf8, E0308, 1.5s, 100ms"),
            "dir <tmp>, item_<n>, agent-<n>, utf8, e0308, <n>.<n>s, <n>ms"
        );
    }

    #[test]
    fn item_specific_texts_are_replaced() {
        let a = signature_for_item(
            ErrorClass::CommandFailed,
            "cannot process fix-readme: bad input",
            &["fix-readme"],
        );
        let b = signature_for_item(
            ErrorClass::CommandFailed,
            "cannot process update-docs: bad input",
            &["update-docs"],
        );
        assert_eq!(a, b);
        assert_ne!(
            signature(
                ErrorClass::CommandFailed,
                "cannot process fix-readme: bad input"
            ),
            signature(
                ErrorClass::CommandFailed,
                "cannot process update-docs: bad input"
            ),
        );
    }
}
