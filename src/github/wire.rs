//! Shapes GitHub sends in both its REST answers and its webhook payloads, read once for both.

use serde::Deserialize;

/// A pull request's `head` or `base`.
#[derive(Deserialize)]
pub(crate) struct WireBranch {
    pub(crate) sha: String,
    #[serde(rename = "ref")]
    pub(crate) git_ref: String,
    /// Null when the fork the pull request came from was deleted.
    #[serde(default)]
    pub(crate) repo: Option<WireRepo>,
}

/// A repository, by the name that identifies it.
#[derive(Deserialize)]
pub(crate) struct WireRepo {
    pub(crate) full_name: String,
}
