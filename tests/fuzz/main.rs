//! Property tests of every parser that reads untrusted text: PR comment commands, webhook
//! deliveries (through the real router), workflow YAML (arbitrary text and mutations of the
//! upstream fixtures), `filter:`/`when:` expressions and `${...}` interpolation (rendered scripts
//! run under `sh`).
//!
//! Every property runs from a fixed seed with a small case budget, so `cargo test` is
//! deterministic and short. A longer or different exploration (README "Fuzzing"):
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release --test fuzz
//! PROPTEST_RNG_SEED=42 cargo test --test fuzz expr::
//! ```
//!
//! A failure prints the minimal input proptest shrank it to; pin that input as a unit test next
//! to the code it breaks.

mod commands;
mod expr;
mod interpolate;
mod json_mutation;
mod webhook;
mod workflow;

use proptest::test_runner::{Config, RngSeed};

/// The seed every property starts from unless `PROPTEST_RNG_SEED` names another.
const SEED: u64 = 0x5eed_f0cc_ac1a_0016;

/// A deterministic configuration: `cases` unless `PROPTEST_CASES` says otherwise, the fixed seed
/// unless `PROPTEST_RNG_SEED` says otherwise, and no regression files written into the tree.
pub fn config(cases: u32) -> Config {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    Config {
        cases: env("PROPTEST_CASES").map_or(cases, |n| n as u32),
        rng_seed: RngSeed::Fixed(env("PROPTEST_RNG_SEED").unwrap_or(SEED)),
        failure_persistence: None,
        ..Config::default()
    }
}
