//! `prodigy logs`: which transcripts of a job to show, and showing them.

use std::path::Path;
use std::time::Duration;

use prodigy::store::{Job, Store};
use prodigy::types::ItemKey;

use super::EXIT_USAGE;

/// What `prodigy logs` shows.
pub struct LogsRequest {
    pub item: Option<ItemKey>,
    pub attempt: Option<u32>,
    pub follow: bool,
    pub raw: bool,
}

/// The transcripts under a job's log directory that the request names, oldest first. Files, not
/// the store: a running agent's transcript is there before its run is recorded.
fn transcripts(logs: &Path, req: &LogsRequest) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.to_string_lossy().ends_with(".jsonl") {
                out.push(p);
            }
        }
    }
    let root = match &req.item {
        Some(key) => logs
            .join("items")
            .join(prodigy::engine::worktree::sanitize_ref(&key.0)),
        None => logs.to_path_buf(),
    };
    let mut found = Vec::new();
    walk(&root, &mut found);
    if let Some(n) = req.attempt {
        let prefix = format!("attempt-{n}.");
        found.retain(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&prefix))
        });
    }
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    found.sort_by(|a, b| modified(a).cmp(&modified(b)).then(a.cmp(b)));
    found
}

pub async fn logs(store: &Store, job: &Job, logs: &Path, req: &LogsRequest) -> anyhow::Result<u8> {
    use std::collections::HashMap;
    use std::io::{BufRead, Seek};
    // Bytes of each transcript already printed (for --follow).
    let mut printed: HashMap<std::path::PathBuf, u64> = HashMap::new();
    let mut any = false;
    loop {
        for path in transcripts(logs, req) {
            let offset = printed.entry(path.clone()).or_insert(0);
            let Ok(mut file) = std::fs::File::open(&path) else {
                continue;
            };
            if *offset == 0 {
                if !req.raw {
                    out!("=== {}", path.display());
                }
                any = true;
            }
            file.seek(std::io::SeekFrom::Start(*offset))?;
            let mut reader = std::io::BufReader::new(file);
            let mut line = String::new();
            // Only whole lines: a line still being written is read on the next round.
            while reader.read_line(&mut line)? > 0 && line.ends_with('\n') {
                *offset += line.len() as u64;
                if req.raw {
                    crate::cli::write_out(format_args!("{line}"));
                } else if let Some(text) = prodigy::engine::agent::render_line(line.trim_end()) {
                    out!("{text}");
                }
                line.clear();
            }
        }
        if !req.follow || crate::cli::stdout_closed() {
            break;
        }
        let running = store.get_job(job.id).await?.status == prodigy::types::JobStatus::Running;
        if !running || store.lock_holder(job.id).await?.is_none() {
            if req.follow && !any {
                break;
            }
            // One more round for lines written as the job stopped.
            let before: u64 = printed.values().sum();
            let after: u64 = transcripts(logs, req)
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
                .sum();
            if after == before {
                break;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if !any && !req.follow {
        let what = match &req.item {
            Some(k) => format!("item '{k}'"),
            None => "this job".to_string(),
        };
        eout!(
            "no agent transcripts for {what} of job {} under {} (claude: steps write them; see `prodigy status {}`)",
            job.id,
            logs.display(),
            job.id
        );
        return Ok(EXIT_USAGE);
    }
    Ok(0)
}
