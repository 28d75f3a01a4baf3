//! prodigy: reproducible AI-agent pipelines, run from the CLI, a GitHub App or a GitHub Action.

pub mod action;
pub mod checks;
pub mod comments;
pub mod engine;
pub mod github;
pub mod metrics;
pub mod server;
pub mod store;
pub mod suggest;
pub mod text;
pub mod types;
pub mod worker;
pub mod workflow;
