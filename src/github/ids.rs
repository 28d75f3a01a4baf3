//! GitHub identifiers as newtypes, so an installation id can never be passed where a check-run id
//! is wanted.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Pull-request numbers and commits are domain identifiers the store keeps too.
pub use crate::types::{CommitSha, PrNumber};

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
    /// The GitHub App's id (the JWT's `iss`).
    AppId
);

impl From<&str> for CommitSha {
    fn from(s: &str) -> Self {
        CommitSha(s.to_string())
    }
}
