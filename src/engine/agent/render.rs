//! Transcript lines for people (`prodigy logs`, the job pages): text, tool calls, results.

use serde_json::Value;

use super::AgentRun;

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
}
