//! The job page (`GET /jobs/<id>?token=...`): one server-rendered HTML page per job.
//!
//! Jobs of private repositories must not be readable by whoever guesses a URL, so every link
//! carries a token: HMAC-SHA256 of the job id under a key derived from the webhook secret. Only
//! the server can mint it; a page asked for without the right token is answered 404, the same
//! as a job that does not exist, so the answer tells nothing. Rotating the webhook secret
//! invalidates every link posted before.
//!
//! Each agent run of an item attempt links to its transcript
//! (`GET /jobs/<id>/items/<key>/attempts/<n>/transcript?token=...`, the same token), rendered
//! by the renderer of `prodigy logs` ([`crate::engine::agent::render_line`]) and escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::store::{AgentRunRow, DlqItem, Event, ItemCounts, Job, JobUsage, WorkItem};
use crate::types::{ItemKey, JobId, Usage};

use super::webhook::WebhookSecret;

/// At most this many items are listed on a page; the counts cover the rest.
pub const MAX_ITEMS_SHOWN: usize = 500;
/// The most recent events shown.
pub const RECENT_EVENTS: usize = 50;
/// A transcript page shows at most this much rendered text; `prodigy logs` shows the rest.
pub const MAX_TRANSCRIPT_CHARS: usize = 4 * 1024 * 1024;

/// Mints and checks job-page links.
#[derive(Clone)]
pub struct PageLinks {
    base_url: String,
    key: [u8; 32],
}

impl std::fmt::Debug for PageLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageLinks")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl PageLinks {
    /// `public_url` is the server's base URL as users reach it (no trailing slash needed).
    pub fn new(public_url: &str, secret: &WebhookSecret) -> Self {
        PageLinks {
            base_url: public_url.trim_end_matches('/').to_string(),
            key: secret.derive_key("job pages v1"),
        }
    }

    fn mac(&self, job: JobId) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("32-byte key");
        mac.update(job.to_string().as_bytes());
        mac
    }

    /// The page token of `job` (64 hex digits).
    pub fn token(&self, job: JobId) -> String {
        hex::encode(self.mac(job).finalize().into_bytes())
    }

    /// Whether `token` is `job`'s, compared in constant time.
    pub fn verify(&self, job: JobId, token: &str) -> bool {
        match hex::decode(token.trim()) {
            Ok(bytes) => self.mac(job).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    /// The link to the job's page, token included.
    pub fn job_url(&self, job: JobId) -> String {
        format!("{}/jobs/{job}?token={}", self.base_url, self.token(job))
    }
}

/// The path (and query) of an item attempt's transcript page, relative to the server's root.
pub fn transcript_path(job: JobId, key: &ItemKey, attempt: i64, token: &str) -> String {
    format!(
        "/jobs/{job}/items/{}/attempts/{attempt}/transcript?token={token}",
        path_segment(&key.0)
    )
}

/// `text` percent-encoded as one URL path segment (everything but unreserved characters).
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Everything a job page shows.
pub struct JobPage<'a> {
    pub job: &'a Job,
    pub counts: ItemCounts,
    pub items: &'a [WorkItem],
    pub dlq: &'a [DlqItem],
    /// The most recent events, oldest first.
    pub events: &'a [Event],
    /// The job's agent runs, in the order they finished, and their sums.
    pub runs: &'a [AgentRunRow],
    pub usage: &'a JobUsage,
    /// The page's token, carried by the transcript links.
    pub token: &'a str,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;\
text-align:left;vertical-align:top}th{background:#f4f4f4}code,pre{font-size:90%}\
pre{white-space:pre-wrap;margin:0}.succeeded{color:#1a7f37}.failed{color:#cf222e}";

/// The page's HTML. Every value from the database is escaped.
pub fn render_job(page: &JobPage<'_>) -> String {
    let job = page.job;
    let mut h = String::new();
    let title = format!("prodigy job {} ({})", job.id.short(), job.workflow_name);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"robots\" content=\"noindex\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    );
    let _ = writeln!(h, "<h1>{}</h1>", escape(&title));
    h.push_str("<table>\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(h, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row("job", format!("<code>{}</code>", job.id));
    row(
        "status",
        format!(
            "<span class=\"{0}\">{0}</span>",
            escape(job.status.as_str())
        ),
    );
    row("phase", escape(job.phase.as_str()));
    row(
        "workflow",
        format!("<code>{}</code>", escape(&job.workflow_path)),
    );
    if let Some(repo) = &job.repo {
        let pr = job.pr_number.map(|n| format!(" #{n}")).unwrap_or_default();
        row("pull request", escape(&format!("{repo}{pr}")));
    }
    if let Some(sha) = &job.head_sha {
        row("commit", format!("<code>{}</code>", escape(sha)));
    }
    if let Some(branch) = &job.refs.branch {
        row("branch", format!("<code>{}</code>", escape(branch)));
    }
    row("created", escape(&job.created_at.to_rfc3339()));
    row("updated", escape(&job.updated_at.to_rfc3339()));
    if let Some(at) = job.finished_at {
        row("finished", escape(&at.to_rfc3339()));
    }
    if let Some(error) = &job.error {
        row("error", format!("<pre>{}</pre>", escape(error)));
    }
    h.push_str("</table>\n");

    let c = page.counts;
    h.push_str(
        "<h2>Items</h2>\n<table><tr><th>total</th><th>pending</th><th>running</th>\
                <th>succeeded</th><th>failed</th><th>merged</th><th>dead-letter queue</th></tr>\n",
    );
    let _ = writeln!(
        h,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        c.total, c.pending, c.running, c.succeeded, c.failed, c.merged, c.dlq
    );
    usage_table(&mut h, page.usage);
    if !page.items.is_empty() {
        h.push_str(
            "<table><tr><th>#</th><th>item</th><th>status</th><th>attempts</th><th>merged</th>\
             <th>cost</th><th>tokens</th><th>transcripts</th></tr>\n",
        );
        for item in page.items.iter().take(MAX_ITEMS_SHOWN) {
            let used = page.usage.by_item.get(&item.key);
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td class=\"{2}\">{2}</td><td>{3}</td><td>{4}</td>\
                 <td>{5}</td><td>{6}</td><td>{7}</td></tr>",
                item.position,
                escape(&item.key.0),
                escape(item.status.as_str()),
                item.attempts,
                if item.merged { "yes" } else { "" },
                used.map(|u| usd(u.cost_usd)).unwrap_or_default(),
                used.map(|u| u.tokens().to_string()).unwrap_or_default(),
                transcript_links(page, &item.key),
            );
        }
        h.push_str("</table>\n");
        if page.items.len() > MAX_ITEMS_SHOWN {
            let _ = writeln!(
                h,
                "<p>{} more items not shown.</p>",
                page.items.len() - MAX_ITEMS_SHOWN
            );
        }
    }

    h.push_str("<h2>Dead-letter queue</h2>\n");
    if page.dlq.is_empty() {
        h.push_str("<p>Empty.</p>\n");
    } else {
        // One group per error signature: the same failure on many items reads as one problem.
        let mut groups: BTreeMap<&str, Vec<&DlqItem>> = BTreeMap::new();
        for d in page.dlq {
            groups.entry(d.signature.as_str()).or_default().push(d);
        }
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        for (signature, rows) in groups {
            let first = rows[0];
            let _ = writeln!(
                h,
                "<h3>{} &times; {} <code>{}</code></h3>\n<pre>{}</pre>",
                rows.len(),
                escape(first.error_class.as_str()),
                escape(&signature[..signature.len().min(12)]),
                escape(&first.last_message)
            );
            h.push_str("<table><tr><th>item</th><th>failures</th><th>last failure</th><th>reprocessable</th></tr>\n");
            for d in rows {
                let _ = writeln!(
                    h,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&d.key.0),
                    d.failure_count,
                    escape(&d.last_failure.to_rfc3339()),
                    if d.reprocessable { "yes" } else { "no" }
                );
            }
            h.push_str("</table>\n");
        }
    }

    h.push_str("<h2>Recent events</h2>\n<table><tr><th>#</th><th>time</th><th>event</th><th>data</th></tr>\n");
    for e in page.events {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            e.seq,
            escape(&e.at.to_rfc3339()),
            escape(&e.kind),
            escape(&e.data.to_string())
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

/// The "Agent usage" table: the job, then each phase that ran an agent. Nothing when none did.
fn usage_table(h: &mut String, usage: &JobUsage) {
    if usage.runs == 0 {
        return;
    }
    h.push_str(
        "<h2>Agent usage</h2>\n<table><tr><th></th><th>input</th><th>output</th><th>cache write</th>\
         <th>cache read</th><th>tokens</th><th>cost</th><th>turns</th><th>API time</th></tr>\n",
    );
    let mut row = |label: &str, u: &Usage| {
        let _ = writeln!(
            h,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{:.1} s</td></tr>",
            escape(label),
            u.input_tokens,
            u.output_tokens,
            u.cache_creation_tokens,
            u.cache_read_tokens,
            u.tokens(),
            usd(u.cost_usd),
            u.turns,
            u.api_ms as f64 / 1000.0
        );
    };
    row("job", &usage.total);
    for (phase, u) in usage.phases() {
        row(phase, u);
    }
    h.push_str("</table>\n");
}

/// Links to the transcripts of an item's attempts that ran an agent, one per attempt.
fn transcript_links(page: &JobPage<'_>, key: &ItemKey) -> String {
    let mut attempts: Vec<i64> = page
        .runs
        .iter()
        .filter(|r| r.key.as_ref() == Some(key))
        .filter_map(|r| r.attempt)
        .collect();
    attempts.dedup();
    attempts
        .iter()
        .map(|n| {
            format!(
                "<a href=\"{}\">attempt {n}</a>",
                escape(&transcript_path(page.job.id, key, *n, page.token))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn usd(cost: f64) -> String {
    format!("${cost:.4}")
}

/// The transcript page of one item attempt: each agent run's transcript, rendered for people.
/// `transcripts` holds each run's file name and its rendered lines (already cut to size).
pub fn render_transcript(
    job: &Job,
    key: &ItemKey,
    attempt: i64,
    token: &str,
    transcripts: &[(String, String)],
) -> String {
    let mut h = String::new();
    let title = format!(
        "prodigy job {} ({}): item {key}, attempt {attempt}",
        job.id.short(),
        job.workflow_name
    );
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"robots\" content=\"noindex\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    );
    let _ = writeln!(
        h,
        "<h1>{}</h1>\n<p><a href=\"/jobs/{}?token={}\">back to the job</a></p>",
        escape(&title),
        job.id,
        escape(token)
    );
    for (file, text) in transcripts {
        let _ = writeln!(
            h,
            "<h2><code>{}</code></h2>\n<pre>{}</pre>",
            escape(file),
            escape(text)
        );
    }
    h.push_str("</body></html>\n");
    h
}

/// A transcript file rendered line by line for people, cut at [`MAX_TRANSCRIPT_CHARS`] with a
/// note naming the command that shows all of it. Reads as it goes: a long transcript costs no
/// more memory than the page.
pub fn render_transcript_file(
    path: &std::path::Path,
    job: JobId,
    key: &ItemKey,
    attempt: i64,
) -> std::io::Result<String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)?;
    let mut out = String::new();
    for line in std::io::BufReader::new(file).lines() {
        let Some(text) = crate::engine::agent::render_line(&line?) else {
            continue;
        };
        if out.len() + text.len() > MAX_TRANSCRIPT_CHARS {
            let _ = write!(
                out,
                "... cut at {MAX_TRANSCRIPT_CHARS} characters; `prodigy logs {job} {key} --attempt {attempt}` shows all of it"
            );
            break;
        }
        out.push_str(&text);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn links(secret: &str) -> PageLinks {
        let secret = WebhookSecret::new(SecretString::from(secret.to_string())).unwrap();
        PageLinks::new("https://prodigy.example/", &secret)
    }

    #[test]
    fn tokens_verify_only_for_their_job_and_key() {
        let l = links("s1");
        let a = JobId::new();
        let b = JobId::new();
        let t = l.token(a);
        assert_eq!(t.len(), 64);
        assert!(l.verify(a, &t));
        assert!(!l.verify(b, &t));
        assert!(!links("s2").verify(a, &t));
        assert!(!l.verify(a, ""));
        assert!(!l.verify(a, "not hex"));
        assert!(!l.verify(a, &t[..62]));
        assert_eq!(
            l.job_url(a),
            format!("https://prodigy.example/jobs/{a}?token={t}")
        );
    }

    #[test]
    fn transcript_links_encode_the_item_key_as_one_segment() {
        let job: JobId = "0192f5a0-0000-7000-8000-000000000001".parse().unwrap();
        assert_eq!(
            transcript_path(job, &ItemKey::from("src/a b.rs#1"), 2, "t0k"),
            format!("/jobs/{job}/items/src%2Fa%20b.rs%231/attempts/2/transcript?token=t0k")
        );
    }

    #[test]
    fn transcript_files_render_as_prodigy_logs_does_and_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempt-1.claude-1.jsonl");
        let lines = [
            r#"{"type":"system","subtype":"init","session_id":"s-1","model":"m","cwd":"/w"}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"<b>done</b>"}]}}"#,
            r#"{"type":"mystery","x":1}"#,
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let job: JobId = "0192f5a0-0000-7000-8000-000000000001".parse().unwrap();
        let key = ItemKey::from("k");
        let text = render_transcript_file(&path, job, &key, 1).unwrap();
        let expected: Vec<String> = lines
            .iter()
            .filter_map(|l| crate::engine::agent::render_line(l))
            .collect();
        assert_eq!(text, expected.join("\n") + "\n");
        assert!(text.contains("assistant: <b>done</b>"), "{text}");
        let html = escape(&text);
        assert!(
            html.contains("assistant: &lt;b&gt;done&lt;/b&gt;"),
            "{html}"
        );
    }

    fn job() -> Job {
        let t = chrono::Utc::now();
        Job {
            id: "0192f5a0-0000-7000-8000-000000000001".parse().unwrap(),
            workflow_path: ".prodigy/fix.yml".into(),
            workflow_text: String::new(),
            workflow_name: "fix".into(),
            repo_path: "/srv/repo".into(),
            repo: None,
            pr_number: None,
            head_sha: None,
            status: crate::types::JobStatus::Succeeded,
            phase: crate::types::Phase::Done,
            refs: crate::store::JobRefs::default(),
            vars: serde_json::Value::Null,
            check_run_id: None,
            error: None,
            lease_epoch: 1,
            created_at: t,
            updated_at: t,
            finished_at: Some(t),
        }
    }

    fn item(key: &str) -> WorkItem {
        WorkItem {
            key: ItemKey::from(key),
            position: 0,
            data: serde_json::Value::Null,
            status: crate::types::ItemStatus::Succeeded,
            attempts: 2,
            merged: true,
            commit: None,
            result: None,
            in_dlq: false,
            reprocessable: false,
        }
    }

    fn run(key: &str, attempt: i64, cost: f64) -> AgentRunRow {
        AgentRunRow {
            phase: "map".into(),
            key: Some(ItemKey::from(key)),
            attempt: Some(attempt),
            session_id: None,
            model: None,
            transcript: format!("/logs/{attempt}.jsonl"),
            subtype: None,
            input_tokens: 100,
            output_tokens: 20,
            cache_creation_tokens: 3,
            cache_read_tokens: 4,
            cost_usd: cost,
            turns: 2,
            api_ms: 1500,
            duration_ms: 2000,
            finished_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_page_shows_usage_per_item_and_links_each_attempt_escaped() {
        let job = job();
        let key = r#"<a "b">"#;
        let items = [item(key), item("plain")];
        let runs = [run(key, 1, 0.25), run(key, 2, 0.5)];
        let usage = JobUsage::from_runs(&runs);
        let page = |runs: &[AgentRunRow], usage: &JobUsage| {
            render_job(&JobPage {
                job: &job,
                counts: ItemCounts::default(),
                items: &items,
                dlq: &[],
                events: &[],
                runs,
                usage,
                token: "tok",
            })
        };
        let html = page(&runs, &usage);
        assert!(html.contains("<h2>Agent usage</h2>"), "{html}");
        assert!(
            html.contains("<tr><th>job</th><td>200</td><td>40</td><td>6</td><td>8</td><td>254</td><td>$0.7500</td><td>4</td><td>3.0 s</td></tr>"),
            "{html}"
        );
        let link = |n: u32| {
            format!(
                "<a href=\"/jobs/{}/items/%3Ca%20%22b%22%3E/attempts/{n}/transcript?token=tok\">attempt {n}</a>",
                job.id
            )
        };
        assert!(
            html.contains(&format!(
                "<td>$0.7500</td><td>254</td><td>{} {}</td>",
                link(1),
                link(2)
            )),
            "{html}"
        );
        assert!(
            html.contains("<code>&lt;a &quot;b&quot;&gt;</code>"),
            "{html}"
        );
        assert!(!html.contains(r#"<a "b">"#), "{html}");
        // The item without agent runs has empty usage cells; no runs at all, no usage table.
        assert!(
            html.contains("<td>yes</td><td></td><td></td><td></td></tr>"),
            "{html}"
        );
        assert!(!page(&[], &JobUsage::default()).contains("Agent usage"));
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
