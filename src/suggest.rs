//! "Did you mean": the one closeness rule for misspelt keys and command words.

/// The candidate closest to `word` by edit distance (`strsim::levenshtein`), if it is close: at
/// most 2 edits (a quarter of a long candidate's length) and fewer edits than `word` has
/// characters, so `x` suggests nothing.
pub fn did_you_mean<'k>(word: &str, candidates: &[&'k str]) -> Option<&'k str> {
    let len = word.chars().count();
    candidates
        .iter()
        .map(|k| (strsim::levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.chars().count() / 4) && *d < len)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn close_words_only() {
        let known = ["timeout", "resume", "capture_streams"];
        assert_eq!(did_you_mean("timout", &known), Some("timeout"));
        assert_eq!(did_you_mean("resme", &known), Some("resume"));
        assert_eq!(
            did_you_mean("captur_stream", &known),
            Some("capture_streams")
        );
        assert_eq!(did_you_mean("x", &known), None);
        assert_eq!(did_you_mean("banana", &known), None);
    }
}
