//! The GitHub App server's building blocks: verified webhooks and the PR-comment command language.

pub mod commands;
pub mod replies;
pub mod webhook;

pub use commands::{Command, CommandError, JobRef, ParsedLine, parse_comment};
pub use webhook::{VerifiedEvent, WebhookEvent, WebhookRejection, WebhookSecret};
