//! GitHub identifiers as newtypes, so an installation id can never be passed where a check-run id
//! is wanted.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! numeric_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

numeric_id!(
    /// A GitHub App installation (one per account that installed the App).
    InstallationId
);
numeric_id!(
    /// A check run's id, as GitHub assigned it.
    CheckRunId
);
numeric_id!(
    /// An issue or pull-request comment's id.
    CommentId
);
numeric_id!(
    /// A pull request's (or issue's) number within its repository.
    PrNumber
);
numeric_id!(
    /// The GitHub App's id (the JWT's `iss`).
    AppId
);

/// A commit SHA as GitHub reports it (40 lowercase hex digits; kept as given).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommitSha(pub String);

impl CommitSha {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for CommitSha {
    fn from(s: &str) -> Self {
        CommitSha(s.to_string())
    }
}
