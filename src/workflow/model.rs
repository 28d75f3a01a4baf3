//! The workflow model: what the engine runs. Parsing (`super::parse`) turns upstream Prodigy YAML
//! into these types; every field here is one the engine acts on.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// A parsed workflow file.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// `name:` or, when absent, the file stem.
    pub name: String,
    /// Workflow-level environment, applied to every step (secrets are masked in logs).
    pub env: Vec<EnvVar>,
    pub kind: WorkflowKind,
    /// `agent:`: defaults for every `claude:` step (a step's own settings win).
    pub agent: AgentSettings,
    /// `budget:`: limits on what the job's agents may spend.
    pub budget: Budget,
}

/// How the AI CLI is run. Every field is optional: unset means "inherit" (step <- workflow <-
/// operator defaults <- prodigy's defaults, see `engine::agent`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentSettings {
    pub model: Option<String>,
    pub allowed_tools: Option<Vec<String>>,
    pub disallowed_tools: Option<Vec<String>>,
    pub max_turns: Option<u32>,
    pub permission_mode: Option<PermissionMode>,
    pub append_system_prompt: Option<String>,
    /// Passed to the CLI before prodigy's own flags.
    pub extra_args: Option<Vec<String>>,
}

impl AgentSettings {
    /// `self` where set, else `base`.
    pub fn or(&self, base: &AgentSettings) -> AgentSettings {
        AgentSettings {
            model: self.model.clone().or_else(|| base.model.clone()),
            allowed_tools: self
                .allowed_tools
                .clone()
                .or_else(|| base.allowed_tools.clone()),
            disallowed_tools: self
                .disallowed_tools
                .clone()
                .or_else(|| base.disallowed_tools.clone()),
            max_turns: self.max_turns.or(base.max_turns),
            permission_mode: self.permission_mode.or(base.permission_mode),
            append_system_prompt: self
                .append_system_prompt
                .clone()
                .or_else(|| base.append_system_prompt.clone()),
            extra_args: self.extra_args.clone().or_else(|| base.extra_args.clone()),
        }
    }
}

/// The AI CLI's `--permission-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionMode {
    AcceptEdits,
    Auto,
    BypassPermissions,
    Default,
    DontAsk,
    Manual,
    Plan,
}

impl PermissionMode {
    pub const ALL: [PermissionMode; 7] = [
        PermissionMode::AcceptEdits,
        PermissionMode::Auto,
        PermissionMode::BypassPermissions,
        PermissionMode::Default,
        PermissionMode::DontAsk,
        PermissionMode::Manual,
        PermissionMode::Plan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::Auto => "auto",
            PermissionMode::BypassPermissions => "bypassPermissions",
            PermissionMode::Default => "default",
            PermissionMode::DontAsk => "dontAsk",
            PermissionMode::Manual => "manual",
            PermissionMode::Plan => "plan",
        }
    }

    pub fn parse(s: &str) -> Option<PermissionMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// `budget:`: when any limit is reached the job dispatches nothing new and ends
/// `budget_exhausted`, resumable with a raised budget.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Budget {
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    /// Wall time of the job, counted from its first start.
    pub max_duration: Option<Duration>,
    /// How long agents still running when the budget runs out may take to finish before they
    /// are stopped (their items stay pending). None: [`Budget::DEFAULT_GRACE`].
    pub grace: Option<Duration>,
}

impl Budget {
    /// The grace period when the workflow names none.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

    pub fn grace(&self) -> Duration {
        self.grace.unwrap_or(Self::DEFAULT_GRACE)
    }

    /// Whether no limit is set (a grace alone limits nothing).
    pub fn is_empty(&self) -> bool {
        self.max_cost_usd.is_none() && self.max_tokens.is_none() && self.max_duration.is_none()
    }

    /// The tighter of two budgets, limit by limit (an operator cap over a workflow's budget).
    pub fn min(&self, other: &Budget) -> Budget {
        fn pick<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(x), Some(y)) => Some(if y < x { y } else { x }),
                (x, y) => x.or(y),
            }
        }
        Budget {
            max_cost_usd: pick(self.max_cost_usd, other.max_cost_usd),
            max_tokens: pick(self.max_tokens, other.max_tokens),
            max_duration: pick(self.max_duration, other.max_duration),
            grace: pick(self.grace, other.grace),
        }
    }
}

/// A `claude:` step: the prompt (often a slash command such as `/fix-file src/a.rs`) and the
/// step's own agent settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaudeCommand {
    pub prompt: String,
    pub settings: AgentSettings,
}

/// A prompt with no settings of its own (`claude: "/cmd"`).
impl From<&str> for ClaudeCommand {
    fn from(prompt: &str) -> Self {
        ClaudeCommand {
            prompt: prompt.to_string(),
            settings: AgentSettings::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowKind {
    /// A list of steps run once, in the job worktree.
    Standard {
        commands: Vec<Step>,
    },
    MapReduce(Box<MapReduce>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvVar {
    pub name: String,
    /// May contain `${...}` placeholders, resolved against the process environment.
    pub value: String,
    pub secret: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapReduce {
    pub setup: Option<PhaseSteps>,
    pub map: MapPhase,
    pub reduce: Option<PhaseSteps>,
    /// Steps run after reduce, in the job worktree (`${merge.*}` variables available).
    pub merge: Option<PhaseSteps>,
    pub error_policy: ErrorPolicy,
}

/// `setup:`, `reduce:` or `merge:`: a list of steps, or `{commands, timeout}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSteps {
    pub commands: Vec<Step>,
    /// Kills the phase's running step and fails the job when exceeded.
    pub timeout: Option<Duration>,
    /// `reduce: {rerun: false}`: a retry or resume that merges more items into a job whose
    /// reduce already ran does not run it again. Default true; only `reduce` reads it.
    pub rerun: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapPhase {
    pub input: MapInput,
    pub json_path: Option<String>,
    pub filter: Option<String>,
    /// e.g. `"File.score DESC NULLS LAST, name"`.
    pub sort_by: Option<String>,
    /// Field path whose value makes items distinct (first occurrence kept).
    pub distinct: Option<String>,
    pub offset: Option<usize>,
    pub max_items: Option<usize>,
    /// Field path that names an item's stable key (default: `id`, `item_id`, `_id`, else a hash).
    pub item_id: Option<String>,
    pub max_parallel: usize,
    pub agent_template: Vec<Step>,
    /// 1-based line of `agent_template:` in the file, for annotations that name no file of their own.
    pub agent_template_line: usize,
    /// Whole-agent time limit (`agent_timeout_secs` or `timeout_config.agent_timeout_secs`).
    pub agent_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MapInput {
    /// A JSON file, relative to the job worktree (it may be written by setup).
    File(String),
    /// A shell command whose stdout is a JSON array, a JSON value, or lines.
    Command(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErrorPolicy {
    /// `on_item_failure: dlq | skip | stop` (default dlq).
    pub on_item_failure: OnItemFailure,
    /// When false, the first failed item stops the map phase (remaining items stay pending).
    pub continue_on_failure: bool,
    /// Stop the map phase after this many failed items.
    pub max_failures: Option<usize>,
    /// Stop the map phase when failed/processed exceeds this ratio (0.0-1.0).
    pub failure_threshold: Option<f64>,
    /// How many attempts an item gets in total across runs before resume stops picking it up
    /// (it stays in the DLQ). Default 2... set by parse; `max_retries` in error_policy or retry_config.
    pub max_retries: u32,
    /// When true, failed items do not fail the job (check-run conclusion neutral).
    pub failures_acceptable: bool,
    /// `circuit_breaker.failure_threshold`: when the first N finished attempts of the map phase
    /// all failed with the same signature, stop dispatching (the cause is not the items).
    pub circuit_breaker: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnItemFailure {
    Dlq,
    Skip,
    Stop,
}

/// One step of any phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub action: Action,
    /// `id:` (outputs of the step are then available as `${id.output}`).
    pub id: Option<String>,
    /// 1-based line of the step in the workflow file.
    pub line: usize,
    pub timeout: Option<Duration>,
    /// Condition evaluated after interpolation; the step is skipped when false.
    pub when: Option<String>,
    pub env: Vec<EnvVar>,
    pub working_dir: Option<String>,
    /// Variable name that receives the step's output (`capture:`; `capture_output: true` means
    /// the default name `<kind>.output`, `capture_output: NAME` means NAME).
    pub capture: Option<String>,
    pub capture_format: CaptureFormat,
    /// Which streams feed the captured value (`capture_streams`); default stdout.
    pub capture_streams: CaptureStreams,
    /// The step must leave at least one new commit in its worktree.
    pub commit_required: bool,
    /// A failure of this step is recorded and the workflow goes on.
    pub allow_failure: bool,
    pub on_failure: Option<OnFailure>,
    pub on_success: Option<Box<Step>>,
    pub validate: Option<Validate>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Shell(String),
    /// The AI CLI's prompt (e.g. `/fix-file src/a.rs`) and the step's agent settings.
    Claude(ClaudeCommand),
    WriteFile(WriteFile),
    Foreach(Foreach),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WriteFile {
    /// Relative to the worktree; must stay inside it.
    pub path: String,
    pub content: String,
    pub format: WriteFormat,
    pub create_dirs: bool,
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFormat {
    Text,
    Json,
    Yaml,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Foreach {
    pub over: ForeachInput,
    /// Runs at most this many iterations at once (1 = sequential).
    pub parallel: usize,
    pub continue_on_error: bool,
    pub max_items: Option<usize>,
    /// Steps run per value, with `${item}` bound to it.
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ForeachInput {
    List(Vec<Value>),
    Command(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureFormat {
    #[default]
    String,
    Number,
    Json,
    Lines,
    Boolean,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureStreams {
    pub stdout: bool,
    pub stderr: bool,
    pub exit_code: bool,
    pub success: bool,
    pub duration: bool,
}

impl Default for CaptureStreams {
    fn default() -> Self {
        CaptureStreams {
            stdout: true,
            stderr: false,
            exit_code: true,
            success: true,
            duration: true,
        }
    }
}

/// `on_failure:` in its common forms: a single step, a list of steps, or
/// `{claude|shell|commands, max_attempts, fail_workflow}`.
#[derive(Debug, Clone, PartialEq)]
pub struct OnFailure {
    /// Handler steps run after each failed try (`${shell.output}` is the failed step's output).
    pub steps: Vec<Step>,
    /// Total tries of the failed step (the first included); 1 means run the handler once, no retry.
    pub max_attempts: u32,
    /// When true (the default), the step still failing after all tries fails the agent/job.
    pub fail_workflow: bool,
}

/// `validate:`: checks run after the step; below `threshold` the `on_incomplete` steps run and
/// the check repeats up to `max_attempts`.
#[derive(Debug, Clone, PartialEq)]
pub struct Validate {
    pub commands: Vec<Step>,
    /// A JSON file with `completion_percentage` (0-100), written by the commands.
    pub result_file: Option<String>,
    pub threshold: f64,
    pub on_incomplete: Option<OnIncomplete>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OnIncomplete {
    pub commands: Vec<Step>,
    pub max_attempts: u32,
    pub fail_workflow: bool,
}

/// A non-fatal finding of validation (an unknown key, a field with no effect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Named variables visible to `${...}` placeholders; values are JSON so `${item.a.b}` works.
pub type Vars = BTreeMap<String, Value>;
