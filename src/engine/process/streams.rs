//! The command's output streams: both pipes read at once with stdin fed alongside, the last
//! bytes of each kept in a ring, everything appended to the log with secrets masked.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

use super::{CommandSpec, OUTPUT_CAP};

/// Reads both pipes until both close, feeding stdin alongside.
pub(super) async fn pump(
    mut stdout: ChildStdout,
    mut stderr: ChildStderr,
    stdin: Option<(ChildStdin, &[u8])>,
    (out, tap): (&mut Capture, Option<tokio::sync::mpsc::Sender<Vec<u8>>>),
    err: &mut Capture,
    mut log: Option<&mut LogSink>,
) {
    let mut obuf = vec![0u8; 64 * 1024];
    let mut ebuf = vec![0u8; 64 * 1024];
    let (mut out_open, mut err_open) = (true, true);
    let mut fed = stdin.is_none();
    let feed = async move {
        if let Some((mut pipe, data)) = stdin {
            // A command that exits without reading all of its input is not our error.
            let _ = pipe.write_all(data).await;
            // Dropping the pipe closes it, so the command sees the end of its input.
        }
    };
    tokio::pin!(feed);

    while out_open || err_open {
        tokio::select! {
            r = stdout.read(&mut obuf), if out_open => match r {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => match &tap {
                    // A reader that went away loses the rest; the command still runs to its end.
                    Some(tap) => {
                        let _ = tap.send(obuf[..n].to_vec()).await;
                    }
                    None => {
                        out.push(&obuf[..n]);
                        if let Some(log) = log.as_deref_mut() {
                            log.write(&obuf[..n]).await;
                        }
                    }
                },
            },
            r = stderr.read(&mut ebuf), if err_open => match r {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    err.push(&ebuf[..n]);
                    if let Some(log) = log.as_deref_mut() {
                        log.write(&ebuf[..n]).await;
                    }
                }
            },
            () = &mut feed, if !fed => fed = true,
        }
    }
}

/// The last [`OUTPUT_CAP`] bytes of one stream, in a ring so memory stays at the cap however
/// much a command prints (many agents run at once).
#[derive(Default)]
pub(super) struct Capture {
    buf: VecDeque<u8>,
    total: u64,
}

impl Capture {
    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let chunk = &chunk[chunk.len().saturating_sub(OUTPUT_CAP)..];
        let excess = (self.buf.len() + chunk.len()).saturating_sub(OUTPUT_CAP);
        self.buf.drain(..excess);
        self.buf.extend(chunk);
    }

    pub(super) fn finish(mut self, log: Option<&Path>) -> String {
        let buf = self.buf.make_contiguous();
        let dropped = self.total - buf.len() as u64;
        if dropped == 0 {
            return String::from_utf8_lossy(buf).into_owned();
        }
        // Start at a character boundary rather than with a replacement character.
        let start = buf
            .iter()
            .take(4)
            .position(|b| (b & 0b1100_0000) != 0b1000_0000)
            .unwrap_or(0);
        let where_full = match log {
            Some(path) => format!("; the full output is in {}", path.display()),
            None => String::new(),
        };
        format!(
            "[prodigy: output truncated, the first {dropped} of {} bytes are not shown{where_full}]\n{}",
            self.total,
            String::from_utf8_lossy(&buf[start..])
        )
    }
}

/// The command's log file, opened for appending.
pub(super) struct LogSink {
    file: Option<tokio::fs::File>,
    path: PathBuf,
    redact: Vec<String>,
}

/// `text` with every secret replaced by `***`.
pub fn redact(mut text: String, secrets: &[String]) -> String {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

impl LogSink {
    pub(super) async fn open(path: &Path, spec: &CommandSpec) -> io::Result<LogSink> {
        let context = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot open the log file {}: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(context)?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(context)?;
        let mut sink = LogSink {
            file: Some(file),
            path: path.to_path_buf(),
            redact: spec.redact.clone(),
        };
        let header = format!(
            "===== prodigy {}: $ {} (in {}) =====\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            spec.display(),
            spec.cwd.display()
        );
        sink.write(header.as_bytes()).await;
        Ok(sink)
    }

    /// Writes through to the file (flushing, so a crash loses nothing written). A failing log
    /// must not fail the command it records: we warn once and stop logging.
    pub(super) async fn write(&mut self, bytes: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let masked;
        let bytes = if self.redact.is_empty() {
            bytes
        } else {
            masked = redact(String::from_utf8_lossy(bytes).into_owned(), &self.redact);
            masked.as_bytes()
        };
        let result = async {
            file.write_all(bytes).await?;
            file.flush().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(log = %self.path.display(), error = %e, "cannot write the command log; logging stops for this command");
            self.file = None;
        }
    }
}
