//! `prodigy action`: one run inside a GitHub Actions job, with the runner masking every secret
//! before anything is printed.

use prodigy::engine::AgentPolicy;

use super::{EXIT_USAGE, Global, engine, open_store, output};

/// `prodigy action`: bad input (the runner's variables, the event file, the inputs) is exit code
/// 2, and every error is also an `::error` the workflow run shows.
pub(super) async fn action(
    g: &Global,
    config: &prodigy::action::ActionConfig,
) -> anyhow::Result<u8> {
    use prodigy::action::{ActionRun, BadInput, StepContext, StepOutcome, commands};
    use prodigy::engine::Resumed;
    // The Action always builds the agent environment; the workflow token reaches an agent
    // only when the workflow's `env` names it.
    let mut agents = g.agent_policy(true, Vec::new())?;
    agents.env.on_request = vec!["GITHUB_TOKEN".into(), "GH_TOKEN".into()];
    // Registered before anything else is printed, so the runner masks them everywhere.
    // The runner masks line by line: a multi-line secret (a PEM) is registered per line.
    for value in action_masks(g, config, &agents) {
        for line in value.lines().map(str::trim).filter(|l| l.len() >= 4) {
            out!("::add-mask::{}", commands::escape_data(line));
        }
    }
    let result = async {
        let step = StepContext::from_process()?;
        let store = open_store(g).await?;
        let mut eng = engine(g, store, &g.repo).await?;
        eng.agents = agents.clone();
        eng.agent = config
            .caps
            .policy()
            .map_err(|e| BadInput::Caps(format!("{e:#}")))?;
        // Lock holders name this attempt of the workflow run.
        eng.instance = step.env.attempt_url().or(eng.instance);
        prodigy::action::worker::prepare(&mut eng, &step, config)?;
        let code = match prodigy::action::run(&eng, &step, config, &g.repo).await? {
            StepOutcome::Answered => 0,
            // Another run has the job: a notice, and the workflow stays green.
            StepOutcome::Ran(ActionRun {
                resumed: Resumed::Held { .. },
                ..
            }) => 0,
            StepOutcome::Ran(run) => {
                output::resumed(&eng, run.job, run.resumed, false, "action").await
            }
        };
        Ok::<_, anyhow::Error>(code)
    }
    .await;
    result.or_else(|e| {
        out!("{}", commands::error("prodigy", &format!("{e:#}")));
        if e.downcast_ref::<BadInput>().is_some() {
            eout!("error: {e:#}");
            Ok(EXIT_USAGE)
        } else {
            Err(e)
        }
    })
}

/// Values the runner must mask: the token, the database URL and its password, the operator's
/// passed variables and the workflow's `secret` env entries (when the workflow parses; a
/// workflow that does not is reported by the run itself).
fn action_masks(
    g: &Global,
    config: &prodigy::action::ActionConfig,
    agents: &AgentPolicy,
) -> Vec<String> {
    let mut values: Vec<String> = config.token.iter().cloned().collect();
    if let Some(url) = g.database_url.as_deref().filter(|u| !u.trim().is_empty()) {
        values.push(url.to_string());
        if let Some(password) = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(auth, _)| auth.split_once(':'))
            .map(|(_, pw)| pw.to_string())
        {
            values.push(password);
        }
    }
    let path = g.repo.join(&config.workflow);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(secrets) = prodigy::engine::masked_values(agents, &path, &text)
    {
        values.extend(secrets);
    }
    values.retain(|v| v.len() >= 4);
    values.sort();
    values.dedup();
    values
}
