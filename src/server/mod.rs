//! The GitHub App server `prodigy serve`: verified webhooks in, a request queue, a runner that
//! drives the engine per pull request, PR-comment commands, job pages, and the recovery of
//! webhook deliveries GitHub could not make (`redeliver`).

pub mod app;
pub use crate::comments::commands;
pub mod config;
pub mod dispatch;
pub mod event_lines;
pub mod ingest;
pub mod metrics;
pub mod pages;
pub mod redeliver;
pub use crate::comments::replies;
pub mod repo_config;
pub mod reporting;
pub mod repos;
pub mod runner;
pub mod serve;
pub mod webhook;

pub use commands::{CommandError, JobRef, ParsedLine, PrCommand, parse_comment};
pub use config::{ServeConfig, Settings};
pub use reporting::{CheckRunReporters, JobContext, LogReporters, ReporterFactory, RunReporter};
pub use serve::{RunningServer, serve, start, start_with_check_runs};
pub use webhook::{VerifiedEvent, WebhookEvent, WebhookRejection, WebhookSecret};
