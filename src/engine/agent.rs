//! The `claude:` step: how the AI CLI is invoked, and what its streaming JSON output says.
//!
//! The CLI runs as `claude --print --output-format stream-json --verbose --permission-mode <mode>
//! [--allowedTools ..] [--disallowedTools ..] [--model ..] [--max-turns N]
//! [--append-system-prompt ..] [extra args] -- <prompt>`. Its stdout is one JSON message per line
//! (`system`/`init`, `assistant`, `user`, `system`/`api_retry`, ..., and a final `result`); it is
//! read as it arrives, written line by line to the attempt's transcript file, and only tallies are
//! kept in memory (session id, usage, cost, the result), so a long transcript costs disk, not RAM.
//! Unknown message types and fields are kept in the file and ignored by the tally.
//!
//! Permissions: the CLI refuses `--dangerously-skip-permissions` (and `bypassPermissions`) as
//! root, and containers run as root. So the default is `--permission-mode acceptEdits` with an
//! allow-list of tools wide enough for upstream workflows ([`DEFAULT_ALLOWED_TOOLS`]); the fence
//! around what those tools can reach is the sandbox, not the CLI's prompts.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::classify::AgentFailure;
pub use crate::types::Usage;
use crate::workflow::{
    Action, AgentSettings, Budget, PermissionMode, Step, Workflow, WorkflowKind,
};

/// Tools allowed when neither the step, the workflow nor the operator says otherwise: what an
/// agent editing and committing code needs (shell, file edits, search, sub-agents, todos, the
/// repository's slash commands and skills) and what upstream workflows use.
pub const DEFAULT_ALLOWED_TOOLS: &[&str] = &[
    "Bash",
    "Edit",
    "MultiEdit",
    "Write",
    "Read",
    "Glob",
    "Grep",
    "LS",
    "NotebookEdit",
    "Task",
    "TodoWrite",
    "WebFetch",
    "WebSearch",
    "Skill",
    "SlashCommand",
];

/// The default permission mode (see the module documentation for why).
pub const DEFAULT_PERMISSION_MODE: PermissionMode = PermissionMode::AcceptEdits;

/// What the operator decides for every job of a process (server config, Action inputs): defaults
/// under the workflow's settings, and caps over them.
#[derive(Debug, Clone, Default)]
pub struct AgentPolicy {
    /// Used where the workflow and the step leave a setting unset.
    pub defaults: AgentSettings,
    /// No agent may take more turns than this, whatever the workflow says.
    pub max_turns_cap: Option<u32>,
    /// Caps over the workflow's `budget:` (the tighter limit wins).
    pub budget_cap: Budget,
    /// Refuse `permission_mode: bypassPermissions` even where the CLI would accept it.
    pub forbid_bypass_permissions: bool,
    /// A budget given for this run (`prodigy resume --budget`): its limits replace the
    /// workflow's, under the operator's caps.
    pub budget_override: Option<Budget>,
    /// The server's cap on what a repository's agents cost per UTC day, in USD.
    pub repo_daily_cost_usd: Option<f64>,
}

impl AgentPolicy {
    /// The budget a job runs under: the run's override, else the workflow's, each limit capped
    /// by the operator.
    pub fn budget(&self, workflow: &Budget) -> Budget {
        let chosen = match &self.budget_override {
            Some(o) => Budget {
                max_cost_usd: o.max_cost_usd.or(workflow.max_cost_usd),
                max_tokens: o.max_tokens.or(workflow.max_tokens),
                max_duration: o.max_duration.or(workflow.max_duration),
                grace: o.grace.or(workflow.grace),
            },
            None => *workflow,
        };
        chosen.min(&self.budget_cap)
    }
}

/// The operator's agent defaults and caps as `prodigy serve` flags and `prodigy action` inputs
/// (each also an environment variable); [`AgentCaps::policy`] checks them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AgentCaps {
    /// The model of agents whose workflow and step name none (e.g. `claude-sonnet-4-5`).
    #[arg(long, env = "PRODIGY_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// No agent takes more turns than this, whatever the workflow says.
    #[arg(long, env = "PRODIGY_MAX_TURNS_CAP")]
    pub max_turns_cap: Option<u32>,
    /// Budget cap per job in USD: a workflow's `budget.max_cost_usd` (or a resume's raised
    /// budget) above it is lowered to it, and a job without a budget gets it.
    #[arg(long, env = "PRODIGY_MAX_COST_USD")]
    pub max_cost_usd: Option<f64>,
    /// Budget cap per job in tokens, like --max-cost-usd.
    #[arg(long, env = "PRODIGY_MAX_TOKENS")]
    pub max_tokens: Option<u64>,
    /// Refuse workflows asking for `permission_mode: bypassPermissions`.
    #[arg(long, env = "PRODIGY_FORBID_BYPASS_PERMISSIONS")]
    pub forbid_bypass_permissions: bool,
}

impl AgentCaps {
    /// The policy these settings give, or which setting is wrong and how to write it.
    pub fn policy(&self) -> anyhow::Result<AgentPolicy> {
        if let Some(v) = self.max_cost_usd
            && (!v.is_finite() || v <= 0.0)
        {
            anyhow::bail!(
                "--max-cost-usd (PRODIGY_MAX_COST_USD) must be a positive amount of USD, e.g. 5; found {v}"
            );
        }
        if self.max_tokens == Some(0) {
            anyhow::bail!("--max-tokens (PRODIGY_MAX_TOKENS) must be at least 1");
        }
        if self.max_turns_cap == Some(0) {
            anyhow::bail!("--max-turns-cap (PRODIGY_MAX_TURNS_CAP) must be at least 1");
        }
        let model = self
            .default_model
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        Ok(AgentPolicy {
            defaults: AgentSettings {
                model: model.map(str::to_string),
                ..Default::default()
            },
            max_turns_cap: self.max_turns_cap,
            budget_cap: Budget {
                max_cost_usd: self.max_cost_usd,
                max_tokens: self.max_tokens,
                ..Default::default()
            },
            forbid_bypass_permissions: self.forbid_bypass_permissions,
            budget_override: None,
            repo_daily_cost_usd: None,
        })
    }
}

/// Since when a repository's daily cost cap counts: the last UTC midnight.
pub fn utc_midnight(now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    now.date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

/// Why a repository's daily cost cap stops its jobs, or None while there is room.
pub fn repo_daily_spent(repo: &str, spent: f64, cap: f64) -> Option<String> {
    (spent >= cap).then(|| {
        format!(
            "${spent:.4} spent today (UTC) by the agents of {repo}, the operator's daily cap of \
             ${cap:.2} per repository (it resets at 00:00 UTC)"
        )
    })
}

/// Why a budget stops dispatching, or None while there is room.
pub fn budget_spent(budget: &Budget, used: &Usage, elapsed: std::time::Duration) -> Option<String> {
    if let Some(max) = budget.max_cost_usd
        && used.cost_usd >= max
    {
        return Some(format!("${:.4} spent of a ${max:.2} budget", used.cost_usd));
    }
    if let Some(max) = budget.max_tokens
        && used.tokens() >= max
    {
        return Some(format!(
            "{} tokens used of a {max} token budget",
            used.tokens()
        ));
    }
    if let Some(max) = budget.max_duration
        && elapsed >= max
    {
        return Some(format!(
            "{}s of wall time used of a {}s budget",
            elapsed.as_secs(),
            max.as_secs()
        ));
    }
    None
}

/// Back-off for items whose agent hit an API rate limit or overload after the CLI's own retries:
/// exponential with full jitter, never shorter than the delay the CLI last chose (it honours the
/// API's `retry-after`), and not counted as an attempt.
#[derive(Debug, Clone, Copy)]
pub struct ApiBackoff {
    pub base: std::time::Duration,
    pub max: std::time::Duration,
    /// Back-offs per attempt before the failure counts like any other.
    pub max_retries: u32,
}

impl Default for ApiBackoff {
    fn default() -> Self {
        // PRODIGY_API_BACKOFF_MS scales the base (tests use a few milliseconds).
        let base_ms = std::env::var("PRODIGY_API_BACKOFF_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(5_000);
        ApiBackoff {
            base: std::time::Duration::from_millis(base_ms),
            max: std::time::Duration::from_millis(base_ms.saturating_mul(60)),
            max_retries: 5,
        }
    }
}

impl ApiBackoff {
    /// The wait before back-off number `n` (1-based); `hint_ms` is the CLI's last retry delay.
    pub fn delay(&self, n: u32, hint_ms: Option<u64>) -> std::time::Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max);
        // Full jitter: anywhere in [ceiling/2, ceiling], so agents that failed together spread.
        let jitter = (uuid::Uuid::now_v7().as_u128() & 0xffff) as f64 / 65535.0;
        let d = ceiling.mul_f64(0.5 + 0.5 * jitter);
        let floor = std::time::Duration::from_millis(hint_ms.unwrap_or(0)).min(self.max);
        d.max(floor)
    }
}

/// The settings one `claude:` step runs with: step <- workflow <- operator <- prodigy defaults,
/// with the operator's caps applied.
pub fn resolve(
    step: &AgentSettings,
    workflow: &AgentSettings,
    policy: &AgentPolicy,
) -> AgentSettings {
    let mut s = step.or(workflow).or(&policy.defaults);
    s.permission_mode.get_or_insert(DEFAULT_PERMISSION_MODE);
    s.allowed_tools.get_or_insert_with(|| {
        DEFAULT_ALLOWED_TOOLS
            .iter()
            .map(|t| t.to_string())
            .collect()
    });
    if let Some(cap) = policy.max_turns_cap {
        s.max_turns = Some(s.max_turns.map_or(cap, |t| t.min(cap)));
    }
    s
}

/// Whether these settings can run here; the error says why not and what to write instead.
pub fn check_runnable(
    s: &AgentSettings,
    policy: &AgentPolicy,
    is_root: bool,
) -> Result<(), String> {
    if s.permission_mode == Some(PermissionMode::BypassPermissions) {
        if policy.forbid_bypass_permissions {
            return Err(
                "permission_mode: bypassPermissions (dangerously_skip_permissions) is \
                        forbidden by the operator; use the default acceptEdits with allowed_tools"
                    .into(),
            );
        }
        if is_root {
            return Err(
                "permission_mode: bypassPermissions (dangerously_skip_permissions) cannot \
                        run as root: the AI CLI refuses --dangerously-skip-permissions under \
                        root/sudo for security reasons. Remove it to use the default \
                        (permission_mode: acceptEdits with allowed_tools), or run prodigy as an \
                        unprivileged user"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Checks every `claude:` step of a workflow before anything runs, so a step the CLI would refuse
/// fails the job once, up front, instead of every item in turn. The error names the step's line.
pub fn check_workflow(wf: &Workflow, policy: &AgentPolicy, is_root: bool) -> Result<(), String> {
    fn walk<'a>(steps: &'a [Step], out: &mut Vec<&'a Step>) {
        for s in steps {
            out.push(s);
            if let Some(h) = &s.on_failure {
                walk(&h.steps, out);
            }
            if let Some(n) = &s.on_success {
                walk(std::slice::from_ref(n.as_ref()), out);
            }
            if let Some(v) = &s.validate {
                walk(&v.commands, out);
                if let Some(i) = &v.on_incomplete {
                    walk(&i.commands, out);
                }
            }
            if let Action::Foreach(f) = &s.action {
                walk(&f.steps, out);
            }
        }
    }
    let mut steps = Vec::new();
    match &wf.kind {
        WorkflowKind::Standard { commands } => walk(commands, &mut steps),
        WorkflowKind::MapReduce(mr) => {
            for phase in [&mr.setup, &mr.reduce, &mr.merge].into_iter().flatten() {
                walk(&phase.commands, &mut steps);
            }
            walk(&mr.map.agent_template, &mut steps);
        }
    }
    for step in steps {
        if let Action::Claude(c) = &step.action {
            let s = resolve(&c.settings, &wf.agent, policy);
            check_runnable(&s, policy, is_root)
                .map_err(|e| format!("the claude step at line {}: {e}", step.line))?;
        }
    }
    Ok(())
}

/// Whether this process runs as root (uid 0).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The CLI's arguments for a prompt. The prompt comes after `--` so that a variadic option
/// (`--allowedTools a b`) cannot swallow it.
pub fn args(s: &AgentSettings, prompt: &str) -> Vec<String> {
    let mut a: Vec<String> = ["--print", "--output-format", "stream-json", "--verbose"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(extra) = &s.extra_args {
        a.extend(extra.iter().cloned());
    }
    if let Some(m) = &s.model {
        a.extend(["--model".into(), m.clone()]);
    }
    if let Some(n) = s.max_turns {
        a.extend(["--max-turns".into(), n.to_string()]);
    }
    if let Some(p) = &s.append_system_prompt {
        a.extend(["--append-system-prompt".into(), p.clone()]);
    }
    if let Some(tools) = s.allowed_tools.as_ref().filter(|t| !t.is_empty()) {
        a.extend(["--allowedTools".into(), tools.join(",")]);
    }
    if let Some(tools) = s.disallowed_tools.as_ref().filter(|t| !t.is_empty()) {
        a.extend(["--disallowedTools".into(), tools.join(",")]);
    }
    match s.permission_mode.unwrap_or(DEFAULT_PERMISSION_MODE) {
        PermissionMode::BypassPermissions => a.push("--dangerously-skip-permissions".into()),
        m => a.extend(["--permission-mode".into(), m.as_str().into()]),
    }
    a.push("--".into());
    a.push(prompt.to_string());
    a
}

/// What the `claude:` steps of one attempt (or one phase) share: the settings they inherit, where
/// their transcripts go, and the runs so far.
#[derive(Debug)]
pub struct AgentScope {
    /// The workflow's `agent:` block.
    pub workflow: AgentSettings,
    pub policy: AgentPolicy,
    /// Transcripts are `<prefix>.claude-<n>.jsonl`, beside the attempt log.
    pub transcript_prefix: PathBuf,
    runs: std::sync::Mutex<Vec<AgentRun>>,
    next: std::sync::atomic::AtomicUsize,
}

impl AgentScope {
    pub fn new(workflow: AgentSettings, policy: AgentPolicy, log: &Path) -> AgentScope {
        AgentScope {
            workflow,
            policy,
            transcript_prefix: log.with_extension(""),
            runs: Default::default(),
            next: Default::default(),
        }
    }

    /// A fresh transcript path for the next run (a phase run again on resume skips the
    /// numbers its earlier runs took).
    pub fn next_transcript(&self) -> PathBuf {
        loop {
            let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let mut name = self
                .transcript_prefix
                .file_name()
                .map(|f| f.to_os_string())
                .unwrap_or_default();
            name.push(format!(".claude-{n}.jsonl"));
            let path = self.transcript_prefix.with_file_name(name);
            if !path.exists() {
                return path;
            }
        }
    }

    pub fn record(&self, run: AgentRun) {
        self.runs.lock().expect("runs lock").push(run);
    }

    /// Every run so far, in the order they finished.
    pub fn runs(&self) -> Vec<AgentRun> {
        self.runs.lock().expect("runs lock").clone()
    }

    /// The sum of every run's usage.
    pub fn usage(&self) -> Usage {
        let mut total = Usage::default();
        for r in self.runs.lock().expect("runs lock").iter() {
            total.add(&r.usage);
        }
        total
    }
}

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
        super::process::redact(String::from_utf8_lossy(line).into_owned(), secrets).into_bytes()
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

/// One transcript line for people: assistant text, tool calls with their inputs shortened, tool
/// results trimmed, API retries, and the final result with its usage. None for lines with
/// nothing to show (unknown types are skipped here and kept in the raw transcript).
pub fn render_line(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    let kind = v.get("type").and_then(Value::as_str)?;
    let sub = v.get("subtype").and_then(Value::as_str).unwrap_or("");
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    match (kind, sub) {
        ("system", "init") => Some(format!(
            "session {} · model {} · cwd {}",
            s(&v, "session_id"),
            s(&v, "model"),
            s(&v, "cwd")
        )),
        ("system", "api_retry") => Some(format!(
            "! API error {} ({}), the CLI retries in {} ms (try {})",
            v.get("error_status").unwrap_or(&Value::Null),
            s(&v, "error"),
            v.get("retry_delay_ms").unwrap_or(&Value::Null),
            v.get("attempt").unwrap_or(&Value::Null)
        )),
        ("assistant", _) | ("user", _) => {
            let content = v.pointer("/message/content")?;
            let parts: Vec<Value> = match content {
                Value::String(t) => vec![serde_json::json!({"type": "text", "text": t})],
                Value::Array(a) => a.clone(),
                _ => return None,
            };
            let mut out = Vec::new();
            for p in &parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") if kind == "assistant" => {
                        out.push(format!("assistant: {}", s(p, "text").trim()))
                    }
                    Some("text") => out.push(format!("user: {}", shorten(&s(p, "text"), 300))),
                    Some("tool_use") => out.push(format!(
                        "-> {} {}",
                        s(p, "name"),
                        shorten(
                            &p.get("input").map(Value::to_string).unwrap_or_default(),
                            200
                        )
                    )),
                    Some("tool_result") => {
                        let text = match p.get("content") {
                            Some(Value::String(t)) => t.clone(),
                            Some(Value::Array(a)) => a
                                .iter()
                                .filter_map(|x| x.get("text").and_then(Value::as_str))
                                .collect::<Vec<_>>()
                                .join("\n"),
                            _ => String::new(),
                        };
                        let err = if p.get("is_error").and_then(Value::as_bool) == Some(true) {
                            " (error)"
                        } else {
                            ""
                        };
                        out.push(format!("<- result{err}: {}", shorten(&text, 300)));
                    }
                    _ => {}
                }
            }
            (!out.is_empty()).then(|| out.join("\n"))
        }
        ("result", _) => {
            let mut run = AgentRun::default();
            run.feed(line.as_bytes());
            let u = run.usage;
            Some(format!(
                "= {sub}{} after {} turns: {}, {:.1}s API\n{}",
                if v.get("is_error").and_then(Value::as_bool) == Some(true) {
                    " (error)"
                } else {
                    ""
                },
                u.turns,
                u.cost_and_tokens(),
                u.api_ms as f64 / 1000.0,
                s(&v, "result").trim()
            ))
        }
        _ => None,
    }
}

/// The first `max` characters on one line, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max).collect();
    cut.push_str(" ...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AgentSettings {
        AgentSettings::default()
    }

    #[test]
    fn defaults_are_accept_edits_with_the_default_tools_and_the_prompt_after_dashes() {
        let s = resolve(&settings(), &settings(), &AgentPolicy::default());
        let a = args(&s, "/fix a.rs");
        assert_eq!(
            &a[..4],
            ["--print", "--output-format", "stream-json", "--verbose"]
        );
        let i = a.iter().position(|x| x == "--permission-mode").unwrap();
        assert_eq!(a[i + 1], "acceptEdits");
        let i = a.iter().position(|x| x == "--allowedTools").unwrap();
        assert!(a[i + 1].starts_with("Bash,Edit"));
        assert_eq!(&a[a.len() - 2..], ["--", "/fix a.rs"]);
        assert!(!a.contains(&"--dangerously-skip-permissions".to_string()));
    }

    #[test]
    fn the_step_beats_the_workflow_which_beats_the_operator_and_caps_apply() {
        let step = AgentSettings {
            max_turns: Some(50),
            ..settings()
        };
        let wf = AgentSettings {
            model: Some("wf-model".into()),
            max_turns: Some(5),
            ..settings()
        };
        let policy = AgentPolicy {
            defaults: AgentSettings {
                model: Some("op-model".into()),
                disallowed_tools: Some(vec!["WebFetch".into()]),
                ..settings()
            },
            max_turns_cap: Some(20),
            ..AgentPolicy::default()
        };
        let s = resolve(&step, &wf, &policy);
        assert_eq!(s.model.as_deref(), Some("wf-model"));
        assert_eq!(s.max_turns, Some(20), "the operator cap wins over the step");
        assert_eq!(s.disallowed_tools, Some(vec!["WebFetch".to_string()]));
    }

    #[test]
    fn back_off_grows_stays_capped_and_honours_the_clis_delay() {
        let b = ApiBackoff {
            base: std::time::Duration::from_millis(100),
            max: std::time::Duration::from_millis(1000),
            max_retries: 5,
        };
        for n in 1..=8 {
            let d = b.delay(n, None).as_millis();
            let ceiling = (100u128 << (n - 1)).min(1000);
            assert!(d >= ceiling / 2 && d <= ceiling, "try {n}: {d} ms");
        }
        assert!(b.delay(1, Some(700)).as_millis() >= 700);
    }

    #[test]
    fn bypass_permissions_is_refused_as_root_with_the_reason() {
        let s = AgentSettings {
            permission_mode: Some(PermissionMode::BypassPermissions),
            ..settings()
        };
        let err = check_runnable(&s, &AgentPolicy::default(), true).unwrap_err();
        assert!(err.contains("root"), "{err}");
        assert!(check_runnable(&s, &AgentPolicy::default(), false).is_ok());
        assert!(args(&s, "x").contains(&"--dangerously-skip-permissions".to_string()));
    }

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

    #[test]
    fn transcripts_render_for_people() {
        let lines = [
            r#"{"type":"system","subtype":"init","session_id":"s","model":"m","cwd":"/w"}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash","input":{"command":"git commit -m x"}}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","content":"ok","is_error":false}]}}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Done."}]}}"#,
            r#"{"type":"brand_new","x":1}"#,
            r#"{"type":"result","subtype":"success","num_turns":2,"total_cost_usd":0.01,"usage":{"input_tokens":5,"output_tokens":1},"result":"Done."}"#,
        ];
        let shown: Vec<String> = lines.iter().filter_map(|l| render_line(l)).collect();
        assert_eq!(shown.len(), 5);
        assert_eq!(shown[0], "session s · model m · cwd /w");
        assert_eq!(shown[1], r#"-> Bash {"command":"git commit -m x"}"#);
        assert_eq!(shown[2], "<- result: ok");
        assert_eq!(shown[3], "assistant: Done.");
        assert!(
            shown[4].starts_with("= success after 2 turns: $0.0100, 6 tokens"),
            "{}",
            shown[4]
        );
        assert_eq!(shorten(&"a".repeat(10), 4), "aaaa ...");
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
