//! A mapreduce workflow's error policy: the top-level shortcuts, then `error_policy:`.

use super::fields::Fields;
use super::{Parser, R};
use crate::workflow::model::*;

impl Parser<'_> {
    /// Top-level shortcuts first, then `error_policy:` (upstream merges them the same way).
    pub(super) fn error_policy(&self, top: &mut Fields) -> R<ErrorPolicy> {
        let mut policy = ErrorPolicy {
            on_item_failure: OnItemFailure::Dlq,
            continue_on_failure: true,
            max_failures: None,
            failure_threshold: None,
            max_retries: 2,
            failures_acceptable: false,
            circuit_breaker: None,
        };
        self.error_policy_fields(top, &mut policy)?;
        let Some(n) = top.get("error_policy") else {
            return Ok(policy);
        };
        let mut f = self.fields(n, "error_policy")?;
        self.error_policy_fields(&mut f, &mut policy)?;
        if let Some(cb) = f.get("circuit_breaker") {
            policy.circuit_breaker = self.circuit_breaker(cb)?;
        }
        if let Some(b) = f.opt_bool("failures_acceptable")? {
            policy.failures_acceptable = b;
        }
        f.finish();
        Ok(policy)
    }

    /// `circuit_breaker: {failure_threshold}`; upstream's other keys are warned about.
    fn circuit_breaker(&self, node: &crate::workflow::yaml::Node) -> R<Option<usize>> {
        let mut f = self.fields(node, "circuit_breaker")?;
        for k in ["success_threshold", "timeout", "half_open_requests"] {
            if f.get(k).is_some()
                && let Some(key) = f.key(k)
            {
                self.warn(
                    key.line,
                    key.column,
                    format!(
                        "circuit_breaker.{k} has no effect in prodigy: an open circuit stops the \
                         run, and `prodigy resume` closes it"
                    ),
                );
            }
        }
        let mut threshold = None;
        if let Some(t) = f.get("failure_threshold") {
            let v = self.uint(t, "circuit_breaker.failure_threshold")?;
            if v == 0 {
                return self.err_at(
                    t,
                    "circuit_breaker.failure_threshold must be at least 1".into(),
                    "write how many identical first failures open the circuit, e.g. 3",
                );
            }
            threshold = Some(v as usize);
        }
        f.finish();
        Ok(threshold)
    }

    fn error_policy_fields(&self, f: &mut Fields, policy: &mut ErrorPolicy) -> R<()> {
        if let Some(n) = f.get("on_item_failure") {
            let s = self.string(n, "on_item_failure")?;
            policy.on_item_failure = match s.as_str() {
                "dlq" => OnItemFailure::Dlq,
                "skip" => OnItemFailure::Skip,
                "stop" | "fail" => OnItemFailure::Stop,
                "retry" => {
                    self.warn(
                        n.line,
                        n.column,
                        "on_item_failure 'retry' is treated as 'dlq': failed items are retried \
                         on resume up to max_retries"
                            .into(),
                    );
                    OnItemFailure::Dlq
                }
                other => {
                    return self.err_at(
                        n,
                        format!("unknown on_item_failure '{other}'"),
                        "use dlq, skip or stop",
                    );
                }
            };
        }
        if let Some(b) = f.opt_bool("continue_on_failure")? {
            policy.continue_on_failure = b;
        }
        if let Some(v) = f.opt_uint("max_failures", "max_failures")? {
            policy.max_failures = Some(v as usize);
        }
        if let Some(n) = f.get("failure_threshold") {
            let v = self.float(n, "failure_threshold")?;
            if !(0.0..=1.0).contains(&v) {
                return self.err_at(
                    n,
                    format!("failure_threshold must be between 0.0 and 1.0, found {v}"),
                    "write a ratio such as 0.2 for 20%",
                );
            }
            policy.failure_threshold = Some(v);
        }
        if let Some(v) = f.opt_uint("max_retries", "max_retries")? {
            policy.max_retries = v as u32;
        }
        if let Some(rc) = f.get("retry_config") {
            let mut r = self.fields(rc, "retry_config")?;
            if let Some((_, n)) = r.first_of(&["max_attempts", "max_retries"]) {
                policy.max_retries = self.uint(n, "retry_config.max_attempts")? as u32;
            }
            // Known upstream, without effect here (every failed item is retried on resume).
            r.get("backoff");
            r.get("retry_on");
            r.finish();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::workflow::{WorkflowKind, parse};

    #[test]
    fn shortcuts_then_error_policy_and_warnings() {
        let text = "mode: mapreduce\nmax_retries: 5\nmap:\n  input: a.json\n  agent_template:\n    - shell: x\n\
                    error_policy:\n  on_item_failure: skip\n  retry_config: {max_attempts: 4, backoff: exponential}\n\
                    \x20 circuit_breaker: {failure_threshold: 3, timeout: 30}\n  max_failurs: 2\n";
        let p = parse(Path::new("p.yml"), text).unwrap();
        let WorkflowKind::MapReduce(mr) = &p.workflow.kind else {
            panic!("mapreduce")
        };
        let e = &mr.error_policy;
        assert_eq!((e.max_retries, e.circuit_breaker), (4, Some(3)));
        let w: Vec<_> = p.warnings.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("circuit_breaker.timeout"), "{w:?}");
        assert!(w[1].contains("did you mean 'max_failures'"), "{w:?}");
    }
}
