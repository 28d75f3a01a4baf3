//! Request paths: `owner/name` checked and every segment percent-encoded.

use crate::types::RepoName;

use super::GitHubError;

pub(super) fn repo_path(repo: &RepoName) -> Result<String, GitHubError> {
    match repo.as_str().split_once('/') {
        Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => Ok(
            format!("{}/{}", encode_segment(owner), encode_segment(name)),
        ),
        _ => Err(GitHubError::RepoName(repo.to_string())),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for one path segment or query value.
pub(super) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode_segment("feature/x"), "feature%2Fx");
        assert_eq!(encode_segment("dependabot[bot]"), "dependabot%5Bbot%5D");
    }

    #[test]
    fn repo_path_needs_owner_and_name() {
        assert_eq!(
            repo_path(&RepoName::new("Octo/Hello")).unwrap(),
            "octo/hello"
        );
        assert!(repo_path(&RepoName::new("nope")).is_err());
        assert!(repo_path(&RepoName::new("a/b/c")).is_err());
    }
}
