//! Where a webhook delivery's CPU time goes before anything is stored: the HMAC-SHA256 check
//! of the raw body and the typed parse, each timed over many rounds of one payload.
//!
//!   cargo run --release --example ingest_parts -- PAYLOAD.json [EVENT]
//!
//! `benches/webhook_ingest.sh` quotes it beside the end-to-end figures (BENCHMARKS.md).

use std::time::Instant;

use prodigy::server::webhook::{WebhookSecret, parse_event};

const ROUNDS: u32 = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: ingest_parts PAYLOAD.json [EVENT (default pull_request)]")?;
    let event = args.next().unwrap_or_else(|| "pull_request".to_string());
    let body = std::fs::read(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let secret = WebhookSecret::new("bench-secret".to_string().into())?;
    let signature = secret.sign(&body);
    parse_event(&event, &body).map_err(|e| format!("{path} does not parse as {event}: {e}"))?;

    let start = Instant::now();
    for _ in 0..ROUNDS {
        assert!(secret.verify(std::hint::black_box(&body), &signature));
    }
    let verify = start.elapsed() / ROUNDS;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(parse_event(&event, std::hint::black_box(&body)).ok());
    }
    let parse = start.elapsed() / ROUNDS;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let any: Result<serde::de::IgnoredAny, _> =
            serde_json::from_slice(std::hint::black_box(&body));
        std::hint::black_box(any.ok());
    }
    let scan = start.elapsed() / ROUNDS;
    println!(
        "{} bytes: verify {verify:?}, parse {parse:?} (a bare JSON syntax check: {scan:?}) per delivery",
        body.len()
    );
    Ok(())
}
