//! Check-run request bodies, shaped as GitHub's OpenAPI schema has them.
//!
//! The client sends these as given; keeping within GitHub's limits (the constants below) is the
//! reporter's job, since only it knows how to split or truncate without losing meaning.

use serde::Serialize;

use super::ids::CommitSha;

/// `output.annotations`: at most this many per request; further PATCHes append.
pub const MAX_ANNOTATIONS_PER_REQUEST: usize = 50;
/// `output.summary` and `output.text`: at most this many characters.
pub const MAX_OUTPUT_TEXT_CHARS: usize = 65_535;
/// `actions`: at most this many buttons.
pub const MAX_ACTIONS: usize = 3;
/// An action's `identifier`.
pub const MAX_ACTION_IDENTIFIER_CHARS: usize = 20;
/// An action's `label`.
pub const MAX_ACTION_LABEL_CHARS: usize = 20;
/// An action's `description`.
pub const MAX_ACTION_DESCRIPTION_CHARS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Queued,
    InProgress,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckConclusion {
    Success,
    Failure,
    Neutral,
    Cancelled,
    TimedOut,
    ActionRequired,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotationLevel {
    Notice,
    Warning,
    Failure,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    /// Only valid when `start_line == end_line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_column: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_column: Option<u32>,
    pub annotation_level: AnnotationLevel,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_details: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRunOutput {
    pub title: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
}

/// A button on the check run; pressing it sends `check_run.requested_action` with `identifier`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRunButton {
    pub label: String,
    pub description: String,
    pub identifier: String,
}

/// `POST /repos/{owner}/{repo}/check-runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewCheckRun {
    pub name: String,
    pub head_sha: CommitSha,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    /// Required by GitHub when `status` is `completed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<CheckConclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CheckRunOutput>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<CheckRunButton>,
}

/// `PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}`: only the fields set are changed.
/// `actions: None` leaves the buttons as they are; `Some(vec![])` removes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckRunUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<CheckConclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CheckRunOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<CheckRunButton>>,
}

/// `annotation.title`: at most this many characters (GitHub's documented limit).
pub const MAX_ANNOTATION_TITLE_CHARS: usize = 255;
/// `annotation.message` and `raw_details`: at most 64 KB each.
pub const MAX_ANNOTATION_DETAIL_BYTES: usize = 64 * 1024;

impl Annotation {
    /// The annotation cut to GitHub's documented limits (which the schema does not encode, so
    /// GitHub, not the schema check, would refuse it): title, message and raw details shortened,
    /// and columns dropped unless the annotation is on one line.
    pub fn within_limits(mut self) -> Self {
        if let Some(title) = &mut self.title {
            *title = truncate_chars(title, MAX_ANNOTATION_TITLE_CHARS, "…");
        }
        self.message = truncate_bytes(&self.message, MAX_ANNOTATION_DETAIL_BYTES);
        if let Some(raw) = &mut self.raw_details {
            *raw = truncate_bytes(raw, MAX_ANNOTATION_DETAIL_BYTES);
        }
        if self.start_line != self.end_line {
            self.start_column = None;
            self.end_column = None;
        }
        self
    }
}

/// `text` cut to at most `max_chars` characters, ending with `note` when cut. Cuts at a line end
/// where one is near, and closes a code fence left open, so the Markdown still renders.
pub fn truncate_markdown(text: &str, max_chars: usize, note: &str) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    const FENCE_CLOSE: &str = "\n```\n";
    let budget = max_chars.saturating_sub(note.chars().count() + FENCE_CLOSE.len() + 2);
    let cut = byte_index_of_char(text, budget);
    let mut head = &text[..cut];
    // Prefer a whole line, unless that would throw away most of the budget.
    if let Some(nl) = head.rfind('\n')
        && nl >= cut / 2
    {
        head = &text[..nl];
    }
    let open_fence = head
        .lines()
        .filter(|l| l.trim_start().starts_with("```"))
        .count()
        % 2
        == 1;
    let mut out = head.to_string();
    if open_fence {
        out.push_str(FENCE_CLOSE);
    } else {
        out.push_str("\n\n");
    }
    out.push_str(note);
    out
}

fn byte_index_of_char(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(i, _)| i)
}

fn truncate_chars(text: &str, max_chars: usize, ellipsis: &str) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let keep = max_chars.saturating_sub(ellipsis.chars().count());
    format!("{}{ellipsis}", &text[..byte_index_of_char(text, keep)])
}

/// Keeps the end of `text` (the tail of stderr is where the error is), within `max_bytes`.
fn truncate_bytes(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    const MARK: &str = "…(earlier output cut)\n";
    let mut start = text.len() - (max_bytes - MARK.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("{MARK}{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_unchanged() {
        assert_eq!(truncate_markdown("abc", 10, "(cut)"), "abc");
    }

    #[test]
    fn long_text_is_cut_within_limit_with_note() {
        let text = "line of text\n".repeat(10_000);
        let out = truncate_markdown(&text, MAX_OUTPUT_TEXT_CHARS, "_Summary truncated._");
        assert!(out.chars().count() <= MAX_OUTPUT_TEXT_CHARS);
        assert!(out.ends_with("_Summary truncated._"));
        // Cut at a line end, not mid-line.
        assert!(out.contains("line of text\n\n_Summary"));
    }

    #[test]
    fn open_code_fence_is_closed() {
        let text = format!("intro\n```\n{}", "x\n".repeat(1000));
        let out = truncate_markdown(&text, 200, "(cut)");
        assert!(out.chars().count() <= 200);
        assert!(out.ends_with("\n```\n(cut)"), "{out}");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let text = "é".repeat(100);
        let out = truncate_markdown(&text, 50, "…");
        assert!(out.chars().count() <= 50);
        let title = truncate_chars(&"日".repeat(300), MAX_ANNOTATION_TITLE_CHARS, "…");
        assert_eq!(title.chars().count(), MAX_ANNOTATION_TITLE_CHARS);
    }

    #[test]
    fn annotation_is_clamped_to_documented_limits() {
        let a = Annotation {
            path: "src/a.rs".into(),
            start_line: 1,
            end_line: 4,
            start_column: Some(2),
            end_column: Some(5),
            annotation_level: AnnotationLevel::Failure,
            message: format!("{}END", "m".repeat(100_000)),
            title: Some("t".repeat(300)),
            raw_details: Some("r".repeat(70_000)),
        }
        .within_limits();
        assert_eq!(a.title.as_ref().unwrap().chars().count(), 255);
        assert!(a.message.len() <= MAX_ANNOTATION_DETAIL_BYTES);
        assert!(a.message.ends_with("END"), "the tail is kept");
        assert!(a.raw_details.as_ref().unwrap().len() <= MAX_ANNOTATION_DETAIL_BYTES);
        assert_eq!((a.start_column, a.end_column), (None, None));
    }
}
