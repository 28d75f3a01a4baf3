//! The CLI's stream-json output as it arrives: written line by line to the transcript (secrets
//! masked), tallied (session, usage, cost, result) and classified into a failure.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::engine::classify::AgentFailure;
use crate::types::Usage;

/// The final `result` message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultMessage {
    /// `success`, `error_max_turns`, `error_during_execution`, `error_max_budget_usd`, ...
    pub subtype: String,
    pub is_error: bool,
    /// The answer text (`result`), or the error the CLI printed.
    pub text: String,
    pub api_error_status: Option<u16>,
    /// e.g. `completed`, `api_error`, `max_turns`.
    pub terminal_reason: Option<String>,
}

/// What one run of the CLI reported, as tallies.
#[derive(Debug, Clone, Default)]
pub struct AgentRun {
    pub session_id: Option<String>,
    pub model: Option<String>,
    /// The NDJSON transcript of this run.
    pub transcript: PathBuf,
    pub result: Option<ResultMessage>,
    /// From the `result` message; before it arrives, the sum of the assistant messages' usage.
    pub usage: Usage,
    /// The API error the CLI last reported (`error` of an assistant message or an `api_retry`).
    pub api_error: Option<String>,
    /// The delay the CLI chose before its last API retry (it honours `retry-after`).
    pub last_retry_delay_ms: Option<u64>,
    pub lines: u64,
    pub bytes: u64,
    /// Lines that were not JSON (kept in the transcript, ignored here).
    pub invalid_lines: u64,
}

/// The fields of a stream-json line the tally reads; everything else is skipped unparsed.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Line {
    #[serde(rename = "type")]
    kind: Option<String>,
    subtype: Option<String>,
    session_id: Option<String>,
    model: Option<String>,
    // result
    is_error: Option<bool>,
    result: Option<String>,
    num_turns: Option<u64>,
    duration_ms: Option<u64>,
    duration_api_ms: Option<u64>,
    total_cost_usd: Option<f64>,
    usage: Option<ApiUsage>,
    api_error_status: Option<u16>,
    terminal_reason: Option<String>,
    // assistant
    message: Option<Message>,
    error: Option<String>,
    // system/api_retry
    retry_delay_ms: Option<u64>,
    error_status: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Message {
    usage: Option<ApiUsage>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(default)]
struct ApiUsage {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

impl AgentRun {
    pub fn new(transcript: PathBuf) -> AgentRun {
        AgentRun {
            transcript,
            ..AgentRun::default()
        }
    }

    /// Takes one line of the CLI's stdout (without its newline). Never fails: a line that is not
    /// JSON or not a known message only counts.
    pub fn feed(&mut self, line: &[u8]) {
        self.lines += 1;
        self.bytes += line.len() as u64 + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            self.invalid_lines += 1;
            return;
        };
        if self.session_id.is_none()
            && let Some(id) = &l.session_id
        {
            self.session_id = Some(id.clone());
        }
        match (l.kind.as_deref(), l.subtype.as_deref()) {
            (Some("system"), Some("init")) => {
                if let Some(m) = l.model {
                    self.model = Some(m);
                }
            }
            (Some("system"), Some("api_retry")) => {
                self.last_retry_delay_ms = l.retry_delay_ms.or(self.last_retry_delay_ms);
                self.api_error = l.error.or(self.api_error.take());
                let _ = l.error_status;
            }
            (Some("assistant"), _) => {
                if let Some(e) = l.error {
                    self.api_error = Some(e);
                }
                if self.result.is_none()
                    && let Some(u) = l.message.and_then(|m| m.usage)
                {
                    // Streaming messages report output_tokens as they go; the result has the
                    // true totals. Until then this is a running floor for budgets.
                    self.usage.input_tokens += u.input_tokens;
                    self.usage.output_tokens += u.output_tokens;
                    self.usage.cache_creation_tokens += u.cache_creation_input_tokens;
                    self.usage.cache_read_tokens += u.cache_read_input_tokens;
                }
            }
            (Some("result"), sub) => {
                let u = l.usage.unwrap_or_default();
                self.usage = Usage {
                    input_tokens: u.input_tokens,
                    output_tokens: u.output_tokens,
                    cache_creation_tokens: u.cache_creation_input_tokens,
                    cache_read_tokens: u.cache_read_input_tokens,
                    cost_usd: l.total_cost_usd.unwrap_or(0.0),
                    turns: l.num_turns.unwrap_or(0),
                    api_ms: l.duration_api_ms.unwrap_or(0),
                    duration_ms: l.duration_ms.unwrap_or(0),
                };
                self.result = Some(ResultMessage {
                    subtype: sub.unwrap_or_default().to_string(),
                    is_error: l.is_error.unwrap_or(false),
                    text: l.result.unwrap_or_default(),
                    api_error_status: l.api_error_status,
                    terminal_reason: l.terminal_reason,
                });
            }
            _ => {}
        }
    }

    /// The run's failure, from its result message and exit status; None when it succeeded.
    pub fn failure(&self, exit_ok: bool) -> Option<AgentFailure> {
        let r = match &self.result {
            Some(r) => r,
            None if exit_ok => return None,
            None => return self.api_error.as_deref().map(failure_from_error_name),
        };
        match r.subtype.as_str() {
            "error_max_turns" => return Some(AgentFailure::MaxTurns),
            "error_max_budget_usd" => return Some(AgentFailure::Budget),
            _ => {}
        }
        if !r.is_error && exit_ok {
            return None;
        }
        if let Some(status) = r.api_error_status {
            return Some(failure_from_status(status, self.api_error.as_deref()));
        }
        if r.terminal_reason.as_deref() == Some("api_error") || self.api_error.is_some() {
            return Some(
                self.api_error
                    .as_deref()
                    .map_or(AgentFailure::Api, failure_from_error_name),
            );
        }
        Some(AgentFailure::Execution)
    }

    /// One line for a failure message.
    pub fn describe_failure(&self) -> String {
        match &self.result {
            Some(r) => {
                let text = r.text.trim();
                let text: String = text.chars().take(500).collect();
                format!(
                    "the AI CLI ended with {} ({}): {text}",
                    r.subtype,
                    r.terminal_reason.as_deref().unwrap_or("no reason given")
                )
            }
            None => match &self.api_error {
                Some(e) => format!("the AI CLI stopped without a result after the API error `{e}`"),
                None => "the AI CLI stopped without a result message".into(),
            },
        }
    }
}

fn failure_from_status(status: u16, name: Option<&str>) -> AgentFailure {
    match status {
        401 | 403 => AgentFailure::Auth,
        402 => AgentFailure::Billing,
        429 => AgentFailure::RateLimited,
        529 | 503 => AgentFailure::Overloaded,
        _ => name.map_or(AgentFailure::Api, failure_from_error_name),
    }
}

fn failure_from_error_name(name: &str) -> AgentFailure {
    match name {
        "authentication_failed" | "authentication_error" | "permission_error" => AgentFailure::Auth,
        "billing_error" => AgentFailure::Billing,
        "rate_limit" | "rate_limit_error" => AgentFailure::RateLimited,
        "overloaded" | "overloaded_error" => AgentFailure::Overloaded,
        _ => AgentFailure::Api,
    }
}

/// Reads the CLI's stdout chunks as they arrive: each complete line goes to the transcript file
/// and into the tally. Memory is one line at a time, however long the transcript.
pub async fn consume(
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    transcript: &Path,
    secrets: &[String],
) -> std::io::Result<AgentRun> {
    if let Some(dir) = transcript.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(transcript)
        .await?;
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, file);
    let mut run = AgentRun::new(transcript.to_path_buf());
    let mut pending: Vec<u8> = Vec::new();
    let mut write_error = None;
    while let Some(chunk) = chunks.recv().await {
        let mut rest = &chunk[..];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            let whole: &[u8] = if pending.is_empty() {
                line
            } else {
                pending.extend_from_slice(line);
                &pending
            };
            let masked = mask(whole, secrets);
            let whole = masked.as_deref().unwrap_or(whole);
            if write_error.is_none() {
                if let Err(e) = out.write_all(whole).await {
                    write_error = Some(e);
                } else if let Err(e) = out.write_all(b"\n").await {
                    write_error = Some(e);
                }
            }
            run.feed(whole);
            pending.clear();
        }
        pending.extend_from_slice(rest);
    }
    if !pending.is_empty() {
        if let Some(masked) = mask(&pending, secrets) {
            pending = masked;
        }
        if write_error.is_none() {
            let _ = out.write_all(&pending).await;
            let _ = out.write_all(b"\n").await;
        }
        run.feed(&pending);
    }
    out.flush().await?;
    match write_error {
        Some(e) => Err(e),
        None => Ok(run),
    }
}

/// The line with every secret replaced by `***`, when it holds one.
fn mask(line: &[u8], secrets: &[String]) -> Option<Vec<u8>> {
    let found = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .any(|s| line.windows(s.len()).any(|w| w == s.as_bytes()));
    found.then(|| {
        crate::engine::process::redact(String::from_utf8_lossy(line).into_owned(), secrets)
            .into_bytes()
    })
}

/// Where the session transcript of a run lives in the CLI's own store, for people who look for
/// it there (`~/.claude/projects/<cwd with / as ->/<session id>.jsonl`).
pub fn cli_session_file(home: &Path, cwd: &Path, session: &str) -> PathBuf {
    let dir: String = cwd
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    home.join(".claude/projects")
        .join(dir)
        .join(format!("{session}.jsonl"))
}

/// A `Value` view of a run for events and `--json`.
pub fn run_json(run: &AgentRun) -> Value {
    serde_json::json!({
        "session_id": run.session_id,
        "model": run.model,
        "json_log_location": run.transcript,
        "subtype": run.result.as_ref().map(|r| r.subtype.clone()),
        "usage": run.usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_reads_init_usage_and_result_and_keeps_going_past_unknown_lines() {
        let mut run = AgentRun::default();
        run.feed(br#"{"type":"system","subtype":"init","session_id":"s-1","model":"m"}"#);
        run.feed(b"not json at all");
        run.feed(br#"{"type":"something_new","session_id":"s-1","payload":[1,2,3]}"#);
        run.feed(br#"{"type":"assistant","message":{"usage":{"input_tokens":10,"output_tokens":1}},"session_id":"s-1"}"#);
        assert_eq!(run.usage.input_tokens, 10);
        run.feed(br#"{"type":"result","subtype":"success","is_error":false,"result":"done","num_turns":2,"duration_ms":5,"duration_api_ms":4,"total_cost_usd":0.5,"usage":{"input_tokens":100,"output_tokens":7,"cache_creation_input_tokens":3,"cache_read_input_tokens":2},"session_id":"s-1"}"#);
        assert_eq!(run.session_id.as_deref(), Some("s-1"));
        assert_eq!(run.model.as_deref(), Some("m"));
        assert_eq!(run.invalid_lines, 1);
        assert_eq!(run.result.as_ref().unwrap().text, "done");
        assert_eq!(run.usage.tokens(), 112);
        assert_eq!(run.usage.cost_usd, 0.5);
        assert_eq!(run.failure(true), None);
    }

    #[test]
    fn failures_are_classified_from_the_result_and_the_api_error() {
        let mut run = AgentRun::default();
        run.feed(br#"{"type":"assistant","error":"authentication_failed","message":{}}"#);
        run.feed(br#"{"type":"result","subtype":"success","is_error":true,"api_error_status":401,"terminal_reason":"api_error","result":"API Error: 401"}"#);
        assert_eq!(run.failure(false), Some(AgentFailure::Auth));

        let mut run = AgentRun::default();
        run.feed(br#"{"type":"result","subtype":"error_max_turns","is_error":true}"#);
        assert_eq!(run.failure(false), Some(AgentFailure::MaxTurns));

        let mut run = AgentRun::default();
        run.feed(br#"{"type":"system","subtype":"api_retry","error":"overloaded","error_status":529,"retry_delay_ms":900}"#);
        run.feed(
            br#"{"type":"result","subtype":"success","is_error":true,"api_error_status":529}"#,
        );
        assert_eq!(run.failure(false), Some(AgentFailure::Overloaded));
        assert_eq!(run.last_retry_delay_ms, Some(900));

        let mut run = AgentRun::default();
        run.feed(
            br#"{"type":"result","subtype":"success","is_error":true,"api_error_status":429}"#,
        );
        assert_eq!(run.failure(false), Some(AgentFailure::RateLimited));

        let mut run = AgentRun::default();
        run.feed(br#"{"type":"result","subtype":"error_during_execution","is_error":true}"#);
        assert_eq!(run.failure(false), Some(AgentFailure::Execution));

        // A crash before any result is an execution failure, not an API one.
        assert_eq!(AgentRun::default().failure(false), None);
    }

    #[tokio::test]
    async fn consume_splits_lines_across_chunks_and_writes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let reader = tokio::spawn({
            let path = path.clone();
            async move { consume(rx, &path, &[]).await.unwrap() }
        });
        tx.send(br#"{"type":"system","subtype":"init","sess"#.to_vec())
            .await
            .unwrap();
        tx.send(b"ion_id\":\"abc\"}\n{\"type\":\"res".to_vec())
            .await
            .unwrap();
        tx.send(b"ult\",\"subtype\":\"success\",\"result\":\"ok\"}".to_vec())
            .await
            .unwrap();
        drop(tx);
        let run = reader.await.unwrap();
        assert_eq!(run.session_id.as_deref(), Some("abc"));
        assert_eq!(run.result.unwrap().text, "ok");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with("\"ok\"}\n"));
    }
}
