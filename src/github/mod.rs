//! Talking to GitHub as an App (or with the Action's workflow token): identifiers,
//! App/installation authentication, the retry policy and the typed client used by the server, the
//! Action and the check-run reporter.

pub mod auth;
pub mod checks;
pub mod client;
pub mod ids;
pub mod retry;
pub(crate) mod wire;

pub use auth::{AppAuth, AuthError, InstallationToken, TokenCache};
pub use checks::{
    Annotation, AnnotationLevel, CheckConclusion, CheckRunButton, CheckRunOutput, CheckRunUpdate,
    CheckStatus, NewCheckRun, truncate_markdown,
};
pub use client::{
    DeliveryPage, GitHubClient, GitHubError, HookDelivery, Permission, PullRequestInfo, Reaction,
    TOKEN_INSTALLATION,
};
pub use ids::{AppId, CheckRunId, CommentId, CommitSha, InstallationId, PrNumber};
pub use retry::{RetryDecision, RetryPolicy};
