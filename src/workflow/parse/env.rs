//! `env:` and `secrets:` at the top and on steps.

use std::collections::BTreeMap;

use super::{Parser, R};
use crate::workflow::model::EnvVar;
use crate::workflow::yaml::{Node, Value};

impl Parser<'_> {
    pub(super) fn env(&self, node: &Node) -> R<Vec<EnvVar>> {
        let entries = self.expect_map(node, "env")?;
        let mut vars = Vec::new();
        for (key, value) in entries {
            let name = key.name.clone();
            match &value.value {
                Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                    vars.push(EnvVar {
                        name,
                        value: value.scalar_text().unwrap_or_default(),
                        secret: false,
                    })
                }
                Value::Null => vars.push(EnvVar {
                    name,
                    value: String::new(),
                    secret: false,
                }),
                Value::Map(_) if value.get("value").is_some() => {
                    let mut f = self.fields(value, &format!("env '{name}'"))?;
                    let secret = f.bool_or("secret", false)?;
                    let v = f.opt_string("value")?.unwrap_or_default();
                    f.finish();
                    vars.push(EnvVar {
                        name,
                        value: v,
                        secret,
                    });
                }
                Value::Map(_) => {
                    // Upstream's dynamic forms ({command}, {condition, when_true, when_false})
                    // are not evaluated here; the variable is left unset and the user is told.
                    self.warn(
                        key.line,
                        key.column,
                        format!(
                            "env '{name}' uses a dynamic form (command/condition) that prodigy \
                             does not evaluate, so it is not set; give it a plain value or \
                             {{secret, value}}"
                        ),
                    );
                }
                Value::Seq(_) => {
                    return self.err_at(
                        value,
                        format!("env '{name}' must be a string, number, boolean or {{secret, value}}, found a list"),
                        "give the variable a single value",
                    );
                }
            }
        }
        Ok(vars)
    }

    pub(super) fn secrets(&self, node: &Node) -> R<Vec<EnvVar>> {
        let entries = self.expect_map(node, "secrets")?;
        let mut vars = Vec::new();
        for (key, value) in entries {
            let v = match value.get("value").or(value.get("env")) {
                Some(v) => self.string(v, "secret value")?,
                None => self.string(value, &format!("secret '{}'", key.name))?,
            };
            vars.push(EnvVar {
                name: key.name.clone(),
                value: v,
                secret: true,
            });
        }
        Ok(vars)
    }

    /// A scalar that is exactly `${VAR}` or `$VAR` naming a workflow env variable resolves to that
    /// variable's value at parse time (upstream fixtures write `max_parallel: ${MAX_PARALLEL}`).
    pub(super) fn resolve_env_scalar(&self, node: &Node, env: &[EnvVar]) -> Option<String> {
        let Value::Str(s) = &node.value else {
            return None;
        };
        let s = s.trim();
        let name = s
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .or_else(|| s.strip_prefix('$'))?;
        match env.iter().find(|v| v.name == name) {
            Some(v) => Some(v.value.clone()),
            None => Some(s.to_string()),
        }
    }
}

/// The workflow env as a map (later entries win), for callers that resolve `${VAR}`.
pub fn env_map(env: &[EnvVar]) -> BTreeMap<String, String> {
    env.iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::workflow::parse;

    #[test]
    fn env_forms_and_secrets() {
        let text = "env:\n  A: 1\n  B: {value: x, secret: true, secert: 1}\n  C: {command: date}\n\
                    secrets:\n  S: {value: s}\ncommands:\n  - shell: echo\n";
        let p = parse(Path::new("e.yml"), text).unwrap();
        let env: Vec<_> = p
            .workflow
            .env
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_str(), v.secret))
            .collect();
        assert_eq!(env, [("A", "1", false), ("B", "x", true), ("S", "s", true)]);
        let w: Vec<_> = p
            .warnings
            .iter()
            .map(|w| (w.line, w.message.as_str()))
            .collect();
        assert!(w[0].1.contains("did you mean 'secret'"), "{w:?}");
        assert!(w[1].1.contains("dynamic form"), "{w:?}");
        assert_eq!((w[0].0, w[1].0), (3, 4));
    }
}
