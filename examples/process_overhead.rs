//! Measures what `engine::process::run` costs per command: `cargo run --example process_overhead`.

use prodigy::engine::process::{CommandSpec, run};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir();
    let cancel = CancellationToken::new();
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        let out = run(&CommandSpec::new("true", &dir), &cancel).await.unwrap();
        assert!(out.success());
    }
    println!("run(true) x{n}: {:?} per command", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        assert!(
            std::process::Command::new("true")
                .status()
                .unwrap()
                .success()
        );
    }
    println!(
        "std::process::Command(true) x{n}: {:?} per command",
        t.elapsed() / n
    );
    let mut spec = CommandSpec::shell("sleep 100 & sleep 100", &dir);
    spec.timeout = Some(std::time::Duration::from_millis(100));
    let t = Instant::now();
    let out = run(&spec, &cancel).await.unwrap();
    println!(
        "timeout 100ms on a 2-process tree: returned after {:?} ({})",
        t.elapsed(),
        out.describe()
    );
    let log = dir.join("prodigy-overhead.log");
    let _ = std::fs::remove_file(&log);
    let mut spec = CommandSpec::shell("yes | head -c 100000000", &dir);
    spec.log = Some(log.clone());
    let t = Instant::now();
    let out = run(&spec, &cancel).await.unwrap();
    println!(
        "100 MB of stdout, logged: {:?}, kept {} bytes in memory",
        t.elapsed(),
        out.stdout.len()
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    println!(
        "{}",
        status.lines().find(|l| l.starts_with("VmHWM")).unwrap()
    );
    let _ = std::fs::remove_file(&log);
}
