//! Agent settings: the top-level `agent:` block, a `claude:` step written as a mapping, and
//! `budget:`. Unknown keys are errors here, not warnings: a misspelt `max_turns` would silently
//! lift a limit.

use super::fields::Fields;
use super::{Parser, R, WorkflowError};
use crate::workflow::model::*;
use crate::workflow::yaml::{Key, Node, Value};

impl Parser<'_> {
    /// `claude: "/cmd args"` or `claude: {prompt: ..., model: ..., allowed_tools: [...], ...}`.
    pub(super) fn claude(&self, node: &Node) -> R<ClaudeCommand> {
        if node.as_map().is_none() {
            return Ok(ClaudeCommand {
                prompt: join_continuations(&self.command_text(node, "claude")?),
                settings: AgentSettings::default(),
            });
        }
        let mut f = self.fields(node, "a claude step")?;
        let prompt_keys: Vec<&Key> = ["prompt", "command"]
            .into_iter()
            .filter_map(|k| f.get(k).and(f.key(k)))
            .collect();
        let prompt_node = match prompt_keys.as_slice() {
            [] => {
                return self.err_at(
                    node,
                    "a claude step written as a mapping needs 'prompt' (or 'command')".into(),
                    "write claude: {prompt: \"/my-command arg\", model: ...}",
                );
            }
            [k] => node.get(&k.name).unwrap_or(node),
            [_, second, ..] => {
                return self.err(
                    second.line,
                    second.column,
                    "a claude step has both 'prompt' and 'command'".into(),
                    "they are the same thing; keep one",
                );
            }
        };
        let prompt = join_continuations(&self.command_text(prompt_node, "claude")?);
        let settings = self.agent_settings_fields(&mut f, "a claude step")?;
        f.finish_strict()?;
        Ok(ClaudeCommand { prompt, settings })
    }

    /// An agent settings mapping (`agent:` at the top, or a `claude:` step's keys). Unknown keys
    /// are errors here, not warnings: a misspelt `max_turns` would silently lift a limit.
    pub(super) fn agent_settings(&self, node: &Node, what: &str) -> R<AgentSettings> {
        let mut f = self.fields(node, what)?;
        let settings = self.agent_settings_fields(&mut f, what)?;
        f.finish_strict()?;
        Ok(settings)
    }

    /// The settings keys of `f` (a claude step reads its prompt from the same mapping).
    fn agent_settings_fields(&self, f: &mut Fields, what: &str) -> R<AgentSettings> {
        let mut out = AgentSettings::default();
        if let Some(n) = f.get("model") {
            out.model = Some(self.command_text(n, "model")?);
        }
        if let Some(n) = f.get("allowed_tools") {
            out.allowed_tools = Some(self.tool_list(n, "allowed_tools")?);
        }
        if let Some(n) = f.get("disallowed_tools") {
            out.disallowed_tools = Some(self.tool_list(n, "disallowed_tools")?);
        }
        if let (Some(allowed), Some(denied)) = (&out.allowed_tools, &out.disallowed_tools)
            && let Some(both) = allowed.iter().find(|t| denied.contains(t))
        {
            let k = f.key("disallowed_tools").expect("parsed above");
            return self.err(
                k.line,
                k.column,
                format!("tool '{both}' is both allowed and disallowed in {what}"),
                "list it in one of allowed_tools and disallowed_tools",
            );
        }
        if let Some(n) = f.get("max_turns") {
            let v = self.uint(n, "max_turns")?;
            if v == 0 || v > u64::from(u32::MAX) {
                return self.err_at(
                    n,
                    format!("max_turns must be at least 1, found {v}"),
                    "write the number of model turns the agent may take, e.g. 30",
                );
            }
            out.max_turns = Some(v as u32);
        }
        if let Some(n) = f.get("permission_mode") {
            let m = self.string(n, "permission_mode")?;
            out.permission_mode =
                Some(
                    PermissionMode::parse(&m).ok_or_else(|| WorkflowError::Invalid {
                        path: self.path.to_path_buf(),
                        line: n.line,
                        column: n.column,
                        message: format!("unknown permission_mode '{m}'"),
                        help: format!(
                            "use one of {}",
                            PermissionMode::ALL.map(PermissionMode::as_str).join(", ")
                        ),
                    })?,
                );
        }
        if let Some(n) = f.get("dangerously_skip_permissions") {
            let skip = self.bool(n, "dangerously_skip_permissions")?;
            match (skip, out.permission_mode) {
                (true, Some(m)) if m != PermissionMode::BypassPermissions => {
                    return self.err_at(
                        n,
                        format!(
                            "dangerously_skip_permissions: true conflicts with permission_mode: {}",
                            m.as_str()
                        ),
                        "keep one: dangerously_skip_permissions is permission_mode: bypassPermissions",
                    );
                }
                (true, _) => out.permission_mode = Some(PermissionMode::BypassPermissions),
                (false, Some(PermissionMode::BypassPermissions)) => {
                    return self.err_at(
                        n,
                        "dangerously_skip_permissions: false conflicts with permission_mode: bypassPermissions".into(),
                        "keep one of the two keys",
                    );
                }
                (false, _) => {}
            }
        }
        if let Some(n) = f.get("append_system_prompt") {
            out.append_system_prompt = Some(self.string(n, "append_system_prompt")?);
        }
        if let Some(n) = f.get("extra_args") {
            out.extra_args = Some(self.string_list(n, "extra_args")?);
        }
        Ok(out)
    }

    /// Tool names as a list or a comma/space separated string (the CLI's own forms).
    fn tool_list(&self, node: &Node, what: &str) -> R<Vec<String>> {
        let list = match &node.value {
            Value::Str(s) => split_tools(s),
            Value::Seq(_) => self.string_list(node, what)?,
            _ => {
                return self.err_at(
                    node,
                    format!("{what} must be a list of tool names, found {}", node.kind()),
                    "write e.g. [Bash, Edit, Read]",
                );
            }
        };
        if list.iter().any(|t| t.trim().is_empty()) {
            return self.err_at(
                node,
                format!("{what} has an empty tool name"),
                "write tool names such as Bash, Edit, \"Bash(git *)\"",
            );
        }
        Ok(list)
    }

    /// `budget: {max_cost_usd, max_tokens, max_duration, grace}`.
    pub(super) fn budget(&self, node: &Node) -> R<Budget> {
        let mut f = self.fields(node, "budget")?;
        let mut b = Budget::default();
        if let Some(n) = f.get("max_cost_usd") {
            let v = self.float(n, "max_cost_usd")?;
            if !v.is_finite() || v <= 0.0 {
                return self.err_at(
                    n,
                    format!("max_cost_usd must be positive, found {v}"),
                    "write a dollar amount such as 5 or 0.50",
                );
            }
            b.max_cost_usd = Some(v);
        }
        if let Some(n) = f.get("max_tokens") {
            let v = self.uint(n, "max_tokens")?;
            if v == 0 {
                return self.err_at(
                    n,
                    "max_tokens must be at least 1".into(),
                    "write a token count such as 2000000",
                );
            }
            b.max_tokens = Some(v);
        }
        if let Some(n) = f.get("max_duration") {
            b.max_duration = Some(self.duration(n, "max_duration")?);
        }
        if let Some(n) = f.get("grace") {
            b.grace = Some(self.duration(n, "grace")?);
        }
        f.finish_strict()?;
        Ok(b)
    }
}

/// A `claude:` block written like a shell command (`/cmd \\` newline `--flag x`) has no shell to
/// join its lines, so join them here: the CLI then gets one argument string as written.
fn join_continuations(text: &str) -> String {
    let mut out = String::new();
    let mut joining = false;
    for line in text.trim().lines() {
        let line = if joining { line.trim_start() } else { line };
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                out.push_str(head.trim_end());
                out.push(' ');
                joining = true;
            }
            None => {
                out.push_str(line);
                out.push('\n');
                joining = false;
            }
        }
    }
    out.trim_end().to_string()
}

/// `"Bash, Edit"` or `"Bash Edit"`, keeping `Bash(git *)` whole.
fn split_tools(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' | ' ' if depth == 0 => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::workflow::{Action, WorkflowKind, parse};

    fn claude_settings(step: &str) -> Result<crate::workflow::ClaudeCommand, String> {
        let text = format!("- claude:\n{step}");
        let p = parse(Path::new("a.yml"), &text).map_err(|e| e.to_string())?;
        let WorkflowKind::Standard { commands } = p.workflow.kind else {
            panic!("standard")
        };
        match &commands[0].action {
            Action::Claude(c) => Ok(c.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_claude_mapping_reads_prompt_and_settings_and_refuses_unknown_keys() {
        let c = claude_settings(
            "    prompt: /fix\n    max_turns: 3\n    allowed_tools: \"Bash, Edit\"\n",
        )
        .unwrap();
        assert_eq!(c.prompt, "/fix");
        assert_eq!(c.settings.max_turns, Some(3));
        assert_eq!(
            c.settings.allowed_tools,
            Some(vec!["Bash".into(), "Edit".into()])
        );
        let e = claude_settings("    prompt: /fix\n    max_turn: 3\n").unwrap_err();
        assert!(
            e.contains("a.yml:3:5: unknown key 'max_turn' in a claude step")
                && e.contains("did you mean 'max_turns'"),
            "{e}"
        );
        let e = claude_settings("    prompt: /a\n    command: /b\n").unwrap_err();
        assert!(e.contains("both 'prompt' and 'command'"), "{e}");
    }

    #[test]
    fn budget_keys_are_strict() {
        let e = parse(
            Path::new("b.yml"),
            "budget: {max_cost_us: 1}\ncommands: [{shell: x}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown key 'max_cost_us' in budget"), "{e}");
        assert!(e.contains("did you mean 'max_cost_usd'"), "{e}");
    }
}
