//! What the agents of a run get and leave: their environment with secrets masked, their
//! sandbox and private temporary directory, and the record of their runs and usage.

use super::*;

impl JobRun<'_> {
    /// Stores the agent runs of a phase or an attempt and announces their usage.
    pub(super) async fn record_agent_runs(
        &self,
        phase: &str,
        item: Option<(&ItemKey, u32)>,
        scope: &AgentScope,
    ) -> anyhow::Result<()> {
        for (run, event) in agent_runs(phase, item, scope) {
            self.store.record_agent_run(self.proof, &run).await?;
            self.event(event).await?;
        }
        Ok(())
    }
}

impl JobCore<'_> {
    /// The environment and sandbox of the commands that run in `worktree`, with a private
    /// temporary directory that is removed when the returned value is dropped.
    pub(super) fn confine(&self, worktree: &Path, label: &str) -> anyhow::Result<Confined> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("prodigy-{}-{label}-", self.job.id))
            .tempdir()
            .context("cannot create the agent's temporary directory")?;
        let mut base_env: Vec<(String, String)> = self
            .agent_env
            .base
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        base_env.retain(|(k, _)| k != "TMPDIR");
        base_env.push(("TMPDIR".into(), tmp.path().display().to_string()));
        let plan = match self.verdict {
            sandbox::Verdict::Enforced { .. } => {
                let settings = &self.engine.agents.sandbox;
                let home = self.agent_env.base.get("HOME").map(PathBuf::from);
                let paths = sandbox::AgentPaths {
                    worktree,
                    tmp: tmp.path(),
                    home: home.as_deref(),
                    claude_bin: &self.engine.claude_bin,
                    path: self.agent_env.base.get("PATH").map(String::as_str),
                    state_dir: &self.engine.state_dir,
                };
                Some(sandbox::Plan::for_agent(settings, &paths).with_context(|| {
                    format!("cannot plan the sandbox for {}", worktree.display())
                })?)
            }
            _ => None,
        };
        Ok(Confined {
            _tmp: tmp,
            base_env,
            plan,
        })
    }
}

/// Every value masked in what a job prints: the workflow's `env` entries marked `secret`
/// (`env` is the resolved workflow env) and the variables the operator passes.
pub(super) fn secret_values(
    wf: &Workflow,
    env: &[(String, String)],
    agent_env: &AgentEnv,
) -> Vec<String> {
    // Short values would mask ordinary text everywhere; a secret that short is no secret.
    let mut secrets: Vec<String> = wf
        .env
        .iter()
        .filter(|v| v.secret)
        .filter_map(|v| env.iter().find(|(k, _)| *k == v.name))
        .map(|(_, value)| value.clone())
        .filter(|value| value.len() >= 4)
        .collect();
    secrets.extend(agent_env.secrets.iter().cloned());
    secrets
}

/// The values a job of `workflow_text` will mask, computed before it runs: the Action
/// registers them with `::add-mask::` before it prints anything else.
pub fn masked_values(
    policy: &crate::engine::AgentPolicy,
    workflow_path: &Path,
    workflow_text: &str,
) -> anyhow::Result<Vec<String>> {
    let parsed = workflow::parse(workflow_path, workflow_text)?;
    let agent_env = policy.env.build(std::env::vars());
    let env = resolve_env(&parsed.workflow, &agent_env)?;
    Ok(secret_values(&parsed.workflow, &env, &agent_env))
}

/// What one phase or agent runs with: see [`JobCore::confine`].
pub(super) struct Confined {
    _tmp: tempfile::TempDir,
    pub(super) base_env: Vec<(String, String)>,
    pub(super) plan: Option<sandbox::Plan>,
}

/// Resolves workflow env values against what agents may see: a workflow (which a pull request
/// can change) cannot copy prodigy's own secrets into an agent's environment.
pub(super) fn resolve_env(
    wf: &Workflow,
    agent_env: &AgentEnv,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut ctx = Context::new().with_env_map(&agent_env.visible_map());
    let mut out = Vec::new();
    for var in &wf.env {
        let value = crate::workflow::interpolate::render_text(&var.value, &ctx)
            .with_context(|| format!("workflow env {}", var.name))?;
        ctx.set_env(var.name.clone(), value.clone());
        out.push((var.name.clone(), value));
    }
    Ok(out)
}
