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

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::store::{AgentRunRow, DlqItem, Event, ItemCounts, Job, JobUsage, WorkItem};
use crate::text::{human_millis, one_line};
use crate::types::{ItemKey, JobId, JobStatus, Usage};

use super::event_lines;
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

/// The path (and query) of an item attempt's log page, relative to the server's root.
pub fn log_path(job: JobId, key: &ItemKey, attempt: i64, token: &str) -> String {
    format!(
        "/jobs/{job}/items/{}/attempts/{attempt}/log?token={token}",
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

/// Where GitHub shows a repository's pull requests, commits, branches and check runs.
pub const GITHUB_WEB: &str = "https://github.com";
/// While a job runs its page asks for fresh content this often (milliseconds).
pub const POLL_MS: u64 = 1500;
/// An attempt's log page shows at most this much of the end of the log.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// Everything a job page shows.
pub struct JobPage<'a> {
    pub job: &'a Job,
    pub counts: ItemCounts,
    pub items: &'a [WorkItem],
    /// Every attempt of every item, with its log file when known.
    pub attempts: &'a [AttemptView],
    pub dlq: &'a [DlqItem],
    /// The most recent events, oldest first.
    pub events: &'a [Event],
    /// The job's agent runs, in the order they finished, and their sums.
    pub runs: &'a [AgentRunRow],
    pub usage: &'a JobUsage,
    /// The page's token, carried by the links to logs, transcripts and the live endpoint.
    pub token: &'a str,
    /// The time the page is rendered, for the duration of a job still running.
    pub now: DateTime<Utc>,
}

/// One attempt as the page shows it.
#[derive(Debug, Clone)]
pub struct AttemptView {
    pub key: ItemKey,
    pub attempt: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub success: Option<bool>,
    pub message: Option<String>,
    /// Whether a log file is known (the attempt's row, or its `item_started` event).
    pub has_log: bool,
    /// The machine that ran it (jobs with workers).
    pub machine: Option<String>,
}

/// Whether the job can still change without someone resuming it: its page keeps polling.
pub fn is_live(job: &Job) -> bool {
    matches!(job.status, JobStatus::Pending | JobStatus::Running)
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em;max-width:70em;line-height:1.4}\
h1{font-size:1.4em;word-break:break-word}h2{font-size:1.15em;margin-top:1.5em}\
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;margin:0}\
dl.facts dt{font-weight:600}dl.facts dd{margin:0;word-break:break-all}\
.scroll{overflow-x:auto;max-width:100%}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;\
text-align:left;vertical-align:top}th{background:#f4f4f4}\
code,pre{font-size:90%}pre{white-space:pre-wrap;word-break:break-word;margin:0}\
progress{width:100%;height:1.2em}\
ol.events{padding-left:0;list-style:none;font-size:90%}ol.events li{padding:.15em 0;\
border-bottom:1px solid #eee}ol.events time{color:#666;margin-right:.6em}\
ul.attempts{margin:0;padding-left:1.1em}\
@media (max-width:40em){#items tr:first-child{display:none}#items tr{display:block;\
border:1px solid #ccc;margin-bottom:.5em}#items td{display:inline-block;border:0}\
#items td:last-child{display:block}\
#items td[data-label]:not(:empty)::before{content:attr(data-label) ': ';font-weight:600}\
#items td:empty{display:none}}\
.succeeded,.ok{color:#1a7f37}.failed,.bad,.cancelled{color:#cf222e}.running{color:#9a6700}";

/// The client side of a live page: fetch the live endpoint and swap the content in place
/// (the reader's scroll stays), until the job is no longer live or the link no longer valid
/// (404: a rotated secret, a deleted job); other errors retry more slowly. No reload.
const LIVE_SCRIPT: &str = "(function(){var m=document.getElementById('live');\
function tick(){fetch(m.dataset.poll,{cache:'no-store'}).then(function(r){\
if(r.status===404){return null;}if(!r.ok){throw new Error('status '+r.status);}\
return r.json();}).then(function(d){if(!d){return;}m.innerHTML=d.html;m.dataset.status=d.status;if(d.live){setTimeout(tick,+m.dataset.every);}\
}).catch(function(){setTimeout(tick,4*m.dataset.every);});}\
if(m.dataset.status==='pending'||m.dataset.status==='running'){setTimeout(tick,+m.dataset.every);}})();";

/// A whole page: head (viewport for phones, no indexing), title as heading, then `body`.
fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                // No icon: the browser would otherwise ask for /favicon.ico and get a 404.
                link rel="icon" href="data:,";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { (title) }
                (body)
            }
        }
    }
}

fn page_title(job: &Job) -> String {
    format!("prodigy job {} ({})", job.id.short(), job.workflow_name)
}

/// The job page's HTML: the live part (see [`render_live`]) and the script that refreshes it.
pub fn render_job(page: &JobPage<'_>) -> String {
    let job = page.job;
    let poll = format!("/jobs/{}/live?token={}", job.id, page.token);
    layout(
        &page_title(job),
        html! {
            main id="live" data-status=(job.status.as_str()) data-poll=(poll) data-every=(POLL_MS) {
                (live_content(page))
            }
            script { (PreEscaped(LIVE_SCRIPT)) }
        },
    )
    .into_string()
}

/// The part of the job page that changes while it runs (what the live endpoint answers).
pub fn render_live(page: &JobPage<'_>) -> String {
    live_content(page).into_string()
}

fn live_content(page: &JobPage<'_>) -> Markup {
    html! {
        (facts(page))
        (progress(page.counts))
        (usage_table(page.usage))
        (items_table(page))
        (dlq_groups(page.dlq))
        h2 { "Recent events" }
        ol.events {
            @for e in page.events {
                li { time datetime=(e.at.to_rfc3339()) { (e.at.format("%H:%M:%S")) } (without_cli_hint(&event_lines::describe(e))) }
            }
        }
    }
}

/// The job's facts, with links to where GitHub shows them.
fn facts(page: &JobPage<'_>) -> Markup {
    let job = page.job;
    let gh = job.repo.as_ref().map(|r| format!("{GITHUB_WEB}/{r}"));
    let ended = job.finished_at.unwrap_or(page.now);
    let took = human_millis((ended - job.created_at).num_milliseconds());
    // Jobs with workers: the machines that ran attempts, with how many each.
    let mut machines: BTreeMap<&str, usize> = BTreeMap::new();
    for m in page.attempts.iter().filter_map(|a| a.machine.as_deref()) {
        *machines.entry(m).or_default() += 1;
    }
    html! {
        dl.facts {
            dt { "status" } dd { span #status class=(job.status.as_str()) { (job.status.as_str()) } }
            dt { "phase" } dd #phase { (job.phase.as_str()) }
            dt { "workflow" } dd { code { (job.workflow_path) } }
            @if let (Some(repo), Some(gh)) = (&job.repo, &gh) {
                dt { "repository" } dd { a href=(gh) { (repo) } }
                @if let Some(pr) = job.pr_number {
                    dt { "pull request" } dd { a href={ (gh) "/pull/" (pr) } { "#" (pr) } }
                }
            }
            @if let Some(sha) = &job.head_sha {
                dt { "commit" } dd { (maybe_link(gh.as_deref().map(|g| format!("{g}/commit/{sha}")), sha)) }
            }
            // The job branch lives in the server's checkout (the server pushes nothing), so a
            // GitHub link would lead nowhere.
            @if let Some(branch) = &job.refs.branch {
                dt { "job branch" } dd { code { (branch) } " (in the server's checkout)" }
            }
            @if let (Some(id), Some(gh)) = (job.check_run_id, &gh) {
                dt { "check run" } dd { a href={ (gh) "/runs/" (id) } { (id) } }
            }
            @if !machines.is_empty() {
                dt { "machines" } dd #machines {
                    (machines.len()) ": "
                    @for (i, (m, n)) in machines.iter().enumerate() {
                        @if i > 0 { ", " }
                        code { (m) } " (" (n) @if *n == 1 { " attempt)" } @else { " attempts)" }
                    }
                }
            }
            dt { "started" } dd { (job.created_at.format("%Y-%m-%d %H:%M:%S UTC")) }
            dt { @if job.finished_at.is_some() { "took" } @else { "running for" } } dd #took { (took) }
            @if let Some(error) = &job.error {
                dt { "error" } dd { pre { (without_cli_hint(error)) } }
            }
        }
    }
}

/// `text` without the "(see `prodigy ...`)" hints the engine writes for terminal users: a web
/// reader cannot run the CLI, and the page shows what the command would.
pub fn without_cli_hint(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(" (see `prodigy ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        match tail.find("`)") {
            Some(end) => rest = &tail[end + 2..],
            None => {
                out.push_str(tail);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn maybe_link(href: Option<String>, text: &str) -> Markup {
    html! {
        @if let Some(href) = href { a href=(href) { code { (text) } } } @else { code { (text) } }
    }
}

/// The progress bar (items finished of all) and the counts.
fn progress(c: ItemCounts) -> Markup {
    let done = c.succeeded + c.failed;
    html! {
        h2 { "Items" }
        progress #progress max=(c.total.max(1)) value=(done) { (done) " of " (c.total) }
        p #counts {
            (done) " of " (c.total) " done: " (c.succeeded) " succeeded, " (c.failed) " failed, "
            (c.running) " running, " (c.pending) " pending, " (c.merged) " merged, "
            (c.dlq) " in the dead-letter queue"
        }
    }
}

/// The "Agent usage" table: the job, then each phase that ran an agent. Nothing when none did.
fn usage_table(usage: &JobUsage) -> Markup {
    if usage.runs == 0 {
        return html! {};
    }
    let row = |label: &str, u: &Usage| {
        html! {
            tr {
                th { (label) } td { (u.input_tokens) } td { (u.output_tokens) }
                td { (u.cache_creation_tokens) } td { (u.cache_read_tokens) } td { (u.tokens()) }
                td { (usd(u.cost_usd)) } td { (u.turns) } td { (format!("{:.1} s", u.api_ms as f64 / 1000.0)) }
            }
        }
    };
    html! {
        h2 { "Agent usage" }
        div.scroll { table {
            tr { th {} th { "input" } th { "output" } th { "cache write" } th { "cache read" }
                 th { "tokens" } th { "cost" } th { "turns" } th { "API time" } }
            (row("job", &usage.total))
            @for (phase, u) in usage.phases() { (row(phase, u)) }
        } }
    }
}

/// One row per item: its status, cost and attempts, each with its log and transcripts.
fn items_table(page: &JobPage<'_>) -> Markup {
    if page.items.is_empty() {
        return html! {};
    }
    html! {
        div.scroll { table #items {
            tr { th { "#" } th { "item" } th { "status" } th { "merged" } th { "cost" } th { "tokens" } th { "attempts" } }
            @for item in page.items.iter().take(MAX_ITEMS_SHOWN) {
                @let used = page.usage.by_item.get(&item.key);
                tr {
                    td { (item.position) }
                    td data-label="item" { code { (item.key.0) } }
                    td data-label="status" class=(item.status.as_str()) { (item.status.as_str()) }
                    td data-label="merged" { @if item.merged { "yes" } }
                    td data-label="cost" { @if let Some(u) = used { (usd(u.cost_usd)) } }
                    td data-label="tokens" { @if let Some(u) = used { (u.tokens()) } }
                    td { (attempt_list(page, &item.key)) }
                }
            }
        } }
        @if page.items.len() > MAX_ITEMS_SHOWN {
            p { (page.items.len() - MAX_ITEMS_SHOWN) " more items not shown." }
        }
    }
}

/// An item's attempts: how each ended, how long it took, its log and its agent transcripts.
fn attempt_list(page: &JobPage<'_>, key: &ItemKey) -> Markup {
    let mut transcripts: Vec<i64> = page
        .runs
        .iter()
        .filter(|r| r.key.as_ref() == Some(key))
        .filter_map(|r| r.attempt)
        .collect();
    transcripts.dedup();
    let attempts: Vec<&AttemptView> = page.attempts.iter().filter(|a| &a.key == key).collect();
    html! {
        ul.attempts {
            @for a in &attempts {
                @let (word, class) = match a.success {
                    Some(true) => ("succeeded", "ok"),
                    Some(false) => ("failed", "bad"),
                    None => ("running", "running"),
                };
                @let took = human_millis((a.finished_at.unwrap_or(page.now) - a.started_at).num_milliseconds());
                li {
                    "attempt " (a.attempt)
                    @if let Some(m) = &a.machine { " on " code { (m) } }
                    ": " span class=(class) { (word) } " (" (took) ")"
                    @if a.has_log {
                        " " a.log href=(log_path(page.job.id, key, a.attempt, page.token)) { "log" }
                    }
                    @if transcripts.contains(&a.attempt) {
                        " " a href=(transcript_path(page.job.id, key, a.attempt, page.token)) { "transcript" }
                    }
                    @if let Some(m) = a.message.as_deref().filter(|_| a.success == Some(false)) {
                        br; small { (one_line(&without_cli_hint(m), 200)) }
                    }
                }
            }
            // Agent runs recorded for attempts whose row is not shown (none known yet).
            @for n in transcripts.iter().filter(|n| !attempts.iter().any(|a| a.attempt == **n)) {
                li { a href=(transcript_path(page.job.id, key, *n, page.token)) { "attempt " (n) " transcript" } }
            }
        }
    }
}

/// The dead-letter queue, one group per error signature (the same failure on many items reads
/// as one problem), largest first, each with its last error.
fn dlq_groups(dlq: &[DlqItem]) -> Markup {
    let mut groups: BTreeMap<&str, Vec<&DlqItem>> = BTreeMap::new();
    for d in dlq {
        groups.entry(d.signature.as_str()).or_default().push(d);
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    html! {
        h2 { "Dead-letter queue" }
        @if groups.is_empty() { p { "Empty." } }
        @for (signature, rows) in groups {
            @let last = rows.iter().max_by_key(|d| d.last_failure).expect("a group has items");
            h3 { (rows.len()) " × " (last.error_class.as_str()) " " code { (&signature[..signature.len().min(12)]) } }
            pre.dlq-error { (without_cli_hint(&last.last_message)) }
            div.scroll { table {
                tr { th { "item" } th { "failures" } th { "last failure" } th { "retried by a resume" } }
                @for d in &rows {
                    tr {
                        td { code { (d.key.0) } }
                        td { (d.failure_count) }
                        td { (d.last_failure.format("%Y-%m-%d %H:%M:%S UTC")) }
                        td { @if d.reprocessable { "yes" } @else { "no" } }
                    }
                }
            } }
        }
    }
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
    let title = format!("{}: item {key}, attempt {attempt}", page_title(job));
    layout(
        &title,
        html! {
            p { a href={ "/jobs/" (job.id) "?token=" (token) } { "back to the job" } }
            @for (file, text) in transcripts {
                h2 { code { (file) } }
                pre { (text) }
            }
        },
    )
    .into_string()
}

/// The log page of one item attempt: the end of its log file (`cut` bytes before it left out).
pub fn render_log(job: &Job, key: &ItemKey, attempt: i64, token: &str, log: &LogTail) -> String {
    let title = format!("{}: item {key}, attempt {attempt}, log", page_title(job));
    layout(
        &title,
        html! {
            p { a href={ "/jobs/" (job.id) "?token=" (token) } { "back to the job" } }
            @if log.cut > 0 { p { "The first " (log.cut) " bytes are left out; this is the end of the log." } }
            @if log.text.is_empty() { p { "The log is empty so far." } }
            pre #log { (log.text) }
        },
    )
    .into_string()
}

/// The end of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    pub text: String,
    /// Bytes before `text` that were left out.
    pub cut: u64,
}

/// The last [`MAX_LOG_BYTES`] of the file at `path` (lossy UTF-8: a log is for reading).
pub fn read_log_tail(path: &std::path::Path) -> std::io::Result<LogTail> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let cut = len.saturating_sub(MAX_LOG_BYTES);
    file.seek(SeekFrom::Start(cut))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(LogTail {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        cut,
    })
}

/// A transcript file rendered line by line for people, cut at [`MAX_TRANSCRIPT_CHARS`] with a
/// note saying so. Reads as it goes: a long transcript costs no more memory than the page.
pub fn render_transcript_file(path: &std::path::Path) -> std::io::Result<String> {
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
                "... cut here: the page shows the first {MAX_TRANSCRIPT_CHARS} characters"
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
        let text = render_transcript_file(&path).unwrap();
        let expected: Vec<String> = lines
            .iter()
            .filter_map(|l| crate::engine::agent::render_line(l))
            .collect();
        assert_eq!(text, expected.join("\n") + "\n");
        assert!(text.contains("assistant: <b>done</b>"), "{text}");
        let html = html! { (text) }.into_string();
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

    fn attempt(key: &str, n: i64, success: Option<bool>) -> AttemptView {
        let t = chrono::Utc::now();
        AttemptView {
            key: ItemKey::from(key),
            attempt: n,
            started_at: t - chrono::Duration::seconds(3),
            finished_at: success.map(|_| t),
            success,
            message: Some("widget <exploded>".into()),
            has_log: true,
            machine: None,
        }
    }

    /// A small well-formedness check: every element the page opens is closed in order (void
    /// elements aside), and nothing but the constant style and script holds a raw `<`.
    fn assert_well_formed(html: &str) {
        const VOID: &[&str] = &["meta", "br", "link", "img", "input", "hr"];
        let body = html.strip_prefix("<!DOCTYPE html>").unwrap_or(html);
        let mut stack: Vec<String> = Vec::new();
        let mut rest = body;
        while let Some(i) = rest.find('<') {
            let tail = &rest[i + 1..];
            let end = tail
                .find('>')
                .unwrap_or_else(|| panic!("unclosed tag in {html}"));
            let tag = &tail[..end];
            let (closing, name) = match tag.strip_prefix('/') {
                Some(n) => (true, n),
                None => (false, tag),
            };
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(!name.is_empty(), "not a tag: <{tag}> in {html}");
            if closing {
                assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "in {html}");
            } else if !VOID.contains(&name.as_str()) {
                stack.push(name);
            }
            rest = &tail[end + 1..];
        }
        assert!(stack.is_empty(), "left open: {stack:?} in {html}");
    }

    /// A job with workers: the facts count the machines and their attempts, and every attempt
    /// names the machine that ran it (escaped).
    #[test]
    fn the_page_says_which_machine_ran_each_attempt() {
        let job = job();
        let items = [item("i1"), item("i2")];
        let on = |key: &str, n: i64, m: &str| AttemptView {
            machine: Some(m.into()),
            ..attempt(key, n, Some(true))
        };
        let attempts = [
            on("i1", 1, "<w2>"),
            on("i1", 2, "coord"),
            on("i2", 1, "<w2>"),
        ];
        let usage = JobUsage::from_runs(&[]);
        let page = |attempts: &[AttemptView]| {
            render_job(&JobPage {
                job: &job,
                counts: ItemCounts::default(),
                items: &items,
                attempts,
                dlq: &[],
                events: &[],
                runs: &[],
                usage: &usage,
                token: "tok",
                now: chrono::Utc::now(),
            })
        };
        let html = page(&attempts);
        assert_well_formed(&html);
        assert!(
            html.contains(r#"<dd id="machines">2: <code>&lt;w2&gt;</code> (2 attempts), <code>coord</code> (1 attempt)</dd>"#),
            "{html}"
        );
        assert!(html.contains("attempt 2 on <code>coord</code>: "), "{html}");
        assert!(
            html.contains("attempt 1 on <code>&lt;w2&gt;</code>: "),
            "{html}"
        );
        let alone = page(&[attempt("i1", 1, Some(true))]);
        assert!(!alone.contains("machines"), "{alone}");
    }

    #[test]
    fn the_page_shows_usage_per_item_and_links_each_attempt_escaped() {
        let mut job = job();
        job.repo = Some(crate::types::RepoName::new("octo/<w>"));
        job.pr_number = Some(crate::types::PrNumber(7));
        job.head_sha = Some("c0ffee".into());
        job.check_run_id = Some(99);
        job.error = Some("1 of 2 items failed (see `prodigy dlq list x`)".into());
        let key = r#"<a "b">"#;
        let items = [item(key), item("plain")];
        let runs = [run(key, 1, 0.25), run(key, 2, 0.5)];
        let attempts = [attempt(key, 1, Some(false)), attempt(key, 2, Some(true))];
        let events = [Event {
            seq: 1,
            at: chrono::Utc::now(),
            kind: "job_finished".into(),
            data: serde_json::json!({"status": "succeeded", "phase": "done", "error": null,
                "counts": {"total": 2, "pending": 0, "running": 0, "succeeded": 2, "failed": 0,
                           "merged": 2, "dlq": 0}}),
        }];
        let usage = JobUsage::from_runs(&runs);
        let page = |runs: &[AgentRunRow], usage: &JobUsage| {
            render_job(&JobPage {
                job: &job,
                counts: ItemCounts::default(),
                items: &items,
                attempts: &attempts,
                dlq: &[],
                events: &events,
                runs,
                usage,
                token: "tok",
                now: chrono::Utc::now(),
            })
        };
        let html = page(&runs, &usage);
        assert_well_formed(&html);
        assert!(html.contains(r#"<meta name="viewport""#), "{html}");
        assert!(html.contains("<h2>Agent usage</h2>"), "{html}");
        assert!(
            html.contains("<tr><th>job</th><td>200</td><td>40</td><td>6</td><td>8</td><td>254</td><td>$0.7500</td><td>4</td><td>3.0 s</td></tr>"),
            "{html}"
        );
        let enc = "%3Ca%20%22b%22%3E";
        for (n, what) in [(1, "log"), (2, "log"), (1, "transcript"), (2, "transcript")] {
            let link = format!("/jobs/{}/items/{enc}/attempts/{n}/{what}?token=tok", job.id);
            assert!(html.contains(&link), "no {link} in {html}");
        }
        assert!(
            html.contains("<code>&lt;a &quot;b&quot;&gt;</code>"),
            "{html}"
        );
        assert!(html.contains("widget &lt;exploded&gt;"), "{html}");
        assert!(!html.contains(r#"<a "b">"#), "{html}");
        // GitHub links from the repository and ids, escaped like the rest.
        let gh = "https://github.com/octo/&lt;w&gt;";
        for path in ["/pull/7", "/commit/c0ffee", "/runs/99"] {
            assert!(
                html.contains(&format!("href=\"{gh}{path}\"")),
                "no {path} in {html}"
            );
        }
        // Events read as sentences; the live endpoint is polled with the same token.
        assert!(
            html.contains("job finished: succeeded in phase done"),
            "{html}"
        );
        assert!(html.contains(&format!("data-poll=\"/jobs/{}/live?token=tok\"", job.id)));
        assert!(
            !html.contains("prodigy dlq"),
            "no CLI hints on the page: {html}"
        );
        // No runs at all, no usage table.
        assert!(!page(&[], &JobUsage::default()).contains("Agent usage"));
    }

    #[test]
    fn the_dlq_is_grouped_by_signature_with_the_last_error() {
        let job = job();
        let t = chrono::Utc::now();
        let d = |key: &str, sig: &str, msg: &str, secs: i64| DlqItem {
            job_id: job.id,
            key: ItemKey::from(key),
            data: serde_json::Value::Null,
            first_failure: t,
            last_failure: t + chrono::Duration::seconds(secs),
            failure_count: 1,
            error_class: crate::types::ErrorClass::CommandFailed,
            signature: sig.into(),
            last_message: msg.into(),
            reprocessable: true,
            manual_review: false,
            json_log_location: None,
            session_id: None,
        };
        let dlq = [
            d("a", "sig-one", "older error", 1),
            d("b", "sig-one", "newest error", 5),
            d("c", "sig-two", "other error", 2),
        ];
        let html = render_live(&JobPage {
            job: &job,
            counts: ItemCounts::default(),
            items: &[],
            attempts: &[],
            dlq: &dlq,
            events: &[],
            runs: &[],
            usage: &JobUsage::default(),
            token: "tok",
            now: t,
        });
        let one = html.find("<h3>2 × command_failed").expect(&html);
        let two = html.find("<h3>1 × command_failed").expect(&html);
        assert!(one < two, "{html}");
        assert!(html[one..two].contains("newest error"), "{html}");
        assert!(!html.contains("older error"), "{html}");
    }

    #[test]
    fn cli_hints_are_left_out_for_web_readers() {
        assert_eq!(
            without_cli_hint("1 of 3 items failed (see `prodigy dlq list 01a2`)"),
            "1 of 3 items failed"
        );
        assert_eq!(
            without_cli_hint("a (see `prodigy x` b"),
            "a (see `prodigy x` b"
        );
        assert_eq!(
            without_cli_hint("plain (see the log)"),
            "plain (see the log)"
        );
    }

    #[test]
    fn log_tails_keep_the_end_of_a_long_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempt.log");
        let long = "x".repeat(MAX_LOG_BYTES as usize) + "the end\n";
        std::fs::write(&path, &long).unwrap();
        let tail = read_log_tail(&path).unwrap();
        assert_eq!(tail.cut, 8);
        assert!(tail.text.ends_with("the end\n"));
        let job = job();
        let html = render_log(&job, &ItemKey::from("k"), 1, "tok", &tail);
        assert_well_formed(&html);
        assert!(html.contains("The first 8 bytes are left out"), "{html}");
    }
}
