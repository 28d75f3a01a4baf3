//! `-v` on `run`, `resume` and `dlq retry`: the output of setup, reduce and a standard
//! workflow's commands on stderr as it happens, each line prefixed with its phase. The engine
//! appends that output to `<state>/logs/<job>/<phase>.log` as it arrives; this follows those
//! files (item logs live in subdirectories and are left to `prodigy logs`).

use std::collections::HashMap;
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use prodigy::types::JobId;

/// How often the files are read while the job runs.
const POLL: Duration = Duration::from_millis(200);

/// Whether `-v` asked for phase output (set once at start).
pub static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The phase logs of one job and how much of each was printed.
pub struct PhaseOutput {
    dir: PathBuf,
    printed: Mutex<HashMap<PathBuf, u64>>,
}

impl PhaseOutput {
    pub fn new(state_dir: &Path, job: JobId) -> Self {
        PhaseOutput {
            dir: state_dir.join("logs").join(job.to_string()),
            printed: Mutex::default(),
        }
    }

    /// Prints the whole lines added to each phase log since the last call.
    pub fn drain(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut printed = self.printed.lock().expect("phase output");
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.sort();
        for path in files {
            let phase = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let offset = printed.entry(path.clone()).or_insert(0);
            let _ = print_new_lines(&path, &phase, offset);
        }
    }

    /// Drains every [`POLL`] until the process ends.
    pub async fn follow(self: std::sync::Arc<Self>) {
        loop {
            self.drain();
            tokio::time::sleep(POLL).await;
        }
    }
}

fn print_new_lines(path: &Path, phase: &str, offset: &mut u64) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(*offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    // Only whole lines: a line still being written is printed on the next round.
    while reader.read_until(b'\n', &mut line)? > 0 && line.ends_with(b"\n") {
        *offset += line.len() as u64;
        eout!("{phase} | {}", String::from_utf8_lossy(&line).trim_end());
        line.clear();
    }
    Ok(())
}
