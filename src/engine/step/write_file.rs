//! The `write_file:` step, kept inside the worktree.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::engine::classify::FailureStage;
use crate::workflow::interpolate::{self, Context};
use crate::workflow::{Step, WriteFile, WriteFormat};

use super::{StepEnv, StepFailure, StepResult, append_log, render_error};

/// Resolves `rel` inside `root`, refusing absolute paths and `..` that would leave it.
pub fn inside(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    let mut out = root.to_path_buf();
    let mut depth = 0usize;
    for c in p.components() {
        match c {
            Component::Normal(s) => {
                out.push(s);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => {
                out.pop();
                depth -= 1;
            }
            _ => {
                return Err(format!(
                    "path `{rel}` leaves the worktree; use a path relative to the worktree without leading `/` or `..`"
                ));
            }
        }
    }
    Ok(out)
}

pub(super) fn write_file(
    step: &Step,
    w: &WriteFile,
    ctx: &Context,
    env: &StepEnv<'_>,
) -> StepResult {
    let fail = |m: String| StepFailure::new(step, FailureStage::Command, m);
    let rel = interpolate::render_text(&w.path, ctx).map_err(|e| render_error(step, e))?;
    let path =
        inside(env.cwd, &rel).map_err(|m| StepFailure::new(step, FailureStage::Validation, m))?;
    let text = interpolate::render_content(&w.content, ctx).map_err(|e| render_error(step, e))?;
    let body = match w.format {
        WriteFormat::Text => text,
        WriteFormat::Json => {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| fail(format!("write_file {rel}: content is not valid JSON: {e}")))?;
            serde_json::to_string_pretty(&v).expect("a JSON value serializes") + "\n"
        }
        WriteFormat::Yaml => {
            serde_saphyr::from_str::<serde_json::Value>(&text)
                .map_err(|e| fail(format!("write_file {rel}: content is not valid YAML: {e}")))?;
            text
        }
    };
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        if w.create_dirs {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("write_file {rel}: {e}")))?;
        } else {
            return Err(fail(format!(
                "write_file {rel}: directory {} does not exist; set `create_dirs: true`",
                parent.display()
            )));
        }
    }
    std::fs::write(&path, body).map_err(|e| fail(format!("write_file {rel}: {e}")))?;
    if let Some(mode) = w.mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(format!("write_file {rel}: chmod {mode:o}: {e}")))?;
    }
    append_log(env.log, &format!("== wrote {rel}\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_worktree() {
        let root = Path::new("/w");
        assert_eq!(inside(root, "a/b.txt").unwrap(), Path::new("/w/a/b.txt"));
        assert_eq!(inside(root, "a/../b.txt").unwrap(), Path::new("/w/b.txt"));
        assert!(inside(root, "../x").is_err());
        assert!(inside(root, "a/../../x").is_err());
        assert!(inside(root, "/etc/passwd").is_err());
    }
}
