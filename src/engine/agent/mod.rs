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
//!
//! This module resolves the settings and arguments of a run and the operator's policy;
//! `transcript` reads the output, `render` shows it to people, `budget` says when to stop.

use std::path::{Path, PathBuf};

pub use crate::types::Usage;

mod budget;
mod render;
mod transcript;

use crate::workflow::{
    Action, AgentSettings, Budget, PermissionMode, Step, Workflow, WorkflowKind,
};
pub use budget::{ApiBackoff, budget_spent, repo_daily_spent, utc_midnight};
pub use render::render_line;
pub use transcript::{AgentRun, ResultMessage, cli_session_file, consume, run_json};

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
}
