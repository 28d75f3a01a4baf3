//! Shared test support. Each test binary uses a different part of it.
#![allow(dead_code)]

pub mod fake_anthropic;
pub mod fake_github;
pub mod server;
pub mod webhook;
