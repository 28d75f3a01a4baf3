//! Shared test support, one tree for every test file (`mod support;`). Each test binary uses a
//! different part of it, hence the crate-wide `dead_code` allowance.
//!
//! - `action_step`: `prodigy action` as a GitHub Actions step, against the fake GitHub.
//! - `db`: a fresh SQLite or PostgreSQL database per test, and the stores on it.
//! - `repo`: the CLI harness: a real git repository, the real `prodigy` binary, a stub AI CLI.
//! - `server`: the GitHub App server in-process against the fake GitHub, driven by webhooks.
//! - `fake_github`, `fake_anthropic`: offline stand-ins for the two remote APIs.
//! - `git`: the git CLI for setup and checks.
//! - `webhook`: signed webhook requests from the payload fixtures.
#![allow(dead_code)]

pub mod action_step;
pub mod db;
pub mod fake_anthropic;
pub mod fake_github;
pub mod git;
pub mod repo;
pub mod serve_bin;
pub mod server;
pub mod tcp_proxy;
pub mod webhook;
