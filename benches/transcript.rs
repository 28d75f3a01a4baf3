//! Transcript reading: `cargo bench --bench transcript`.
//!
//! Reports the cost per stream-json line of reading the AI CLI's output as prodigy does
//! (`engine::agent::consume`: split lines, write the transcript file, tally usage), and the peak
//! RSS of this process while 4 agents at once stream 5 MB and then 50 MB of transcript each: the
//! peak must not grow with the transcript size (only one line at a time is held).
//! `PRODIGY_BENCH_TRANSCRIPT_MB` changes the large size.

use std::time::Instant;

use prodigy::engine::agent::consume;

const AGENTS: usize = 4;
const CHUNK: usize = 64 * 1024;

/// A transcript of about `mb` MB in the CLI's shapes: assistant tool calls, tool results with
/// long outputs, assistant text, and a result line at the end.
fn transcript(mb: usize) -> Vec<u8> {
    let target = mb * 1024 * 1024;
    let mut out = Vec::with_capacity(target + 4096);
    out.extend_from_slice(br#"{"type":"system","subtype":"init","session_id":"bench","model":"claude-sonnet-4-5","tools":["Bash","Edit"]}"#);
    out.push(b'\n');
    let filler = "x".repeat(1500);
    let mut n = 0u64;
    while out.len() < target {
        n += 1;
        let line = match n % 3 {
            0 => format!(
                r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","id":"t{n}","name":"Bash","input":{{"command":"cargo test -p crate{n}"}}}}],"usage":{{"input_tokens":{n},"output_tokens":1}}}},"session_id":"bench"}}"#
            ),
            1 => format!(
                r#"{{"type":"user","message":{{"content":[{{"type":"tool_result","tool_use_id":"t{n}","content":"{filler}","is_error":false}}]}},"session_id":"bench"}}"#
            ),
            _ => format!(
                r#"{{"type":"assistant","message":{{"content":[{{"type":"text","text":"step {n} done, moving on"}}]}},"session_id":"bench"}}"#
            ),
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(br#"{"type":"result","subtype":"success","is_error":false,"num_turns":3,"total_cost_usd":1.25,"usage":{"input_tokens":10,"output_tokens":5},"result":"done","session_id":"bench"}"#);
    out.push(b'\n');
    out
}

/// Peak resident set of this process so far, in MB (Linux `VmHWM`).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Streams `mb` MB to each of `AGENTS` readers at once. The bytes are generated chunk by chunk
/// from one shared 1 MB block, so the feeder holds no full transcript in memory.
async fn run(mb: usize, dir: &std::path::Path) -> (u64, f64) {
    let block = std::sync::Arc::new(transcript(1));
    let lines_per_block = block.iter().filter(|&&b| b == b'\n').count() as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..AGENTS {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let path = dir.join(format!("agent-{a}-{mb}.jsonl"));
        let reader = tokio::spawn(async move { consume(rx, &path, &[]).await.unwrap() });
        let block = block.clone();
        let feeder = tokio::spawn(async move {
            for _ in 0..mb {
                for c in block.chunks(CHUNK) {
                    tx.send(c.to_vec()).await.unwrap();
                }
            }
        });
        tasks.push((feeder, reader));
    }
    let mut lines = 0;
    for (feeder, reader) in tasks {
        feeder.await.unwrap();
        let run = reader.await.unwrap();
        assert!(run.result.is_some());
        lines += run.lines;
    }
    assert_eq!(lines, lines_per_block * mb as u64 * AGENTS as u64);
    let per_line_ns = started.elapsed().as_nanos() as f64 / lines as f64;
    for a in 0..AGENTS {
        let _ = std::fs::remove_file(dir.join(format!("agent-{a}-{mb}.jsonl")));
    }
    (lines, per_line_ns)
}

fn main() {
    let large: usize = std::env::var("PRODIGY_BENCH_TRANSCRIPT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = peak_rss_mb();
    let (small_lines, small_ns) = rt.block_on(run(5, dir.path()));
    let after_small = peak_rss_mb();
    let (large_lines, large_ns) = rt.block_on(run(large, dir.path()));
    let after_large = peak_rss_mb();
    println!("transcript reading, {AGENTS} agents at once, {CHUNK}-byte chunks");
    println!(
        "  5 MB each:   {small_lines} lines, {small_ns:.0} ns/line (split + write + tally), peak RSS {after_small:.1} MB (start {base:.1} MB)"
    );
    println!(
        "  {large} MB each: {large_lines} lines, {large_ns:.0} ns/line, peak RSS {after_large:.1} MB"
    );
    println!(
        "  peak RSS growth from 5 MB to {large} MB per agent: {:.1} MB",
        after_large - after_small
    );
}
