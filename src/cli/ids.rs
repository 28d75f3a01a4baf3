//! Job ids as tables print them: the shortest prefix of the hyphenated id that tells the listed
//! jobs apart, at least 8 characters. UUID v7 ids start with a millisecond timestamp, so jobs
//! started within a minute share their first 8 characters; their prefixes grow into the random
//! tail. Any printed prefix is accepted wherever a job id is (`Store::find_job`).

use prodigy::types::JobId;

/// Never fewer characters than this (a prefix this short is what people type).
const MIN: usize = 8;

/// The length (in characters of the hyphenated form) that makes every id in `ids` unique. Two
/// ids never differ at a hyphen, so the prefix never ends on one.
pub fn prefix_len(ids: &[JobId]) -> usize {
    let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let mut sorted: Vec<&str> = texts.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let shared = sorted
        .windows(2)
        .map(|w| common_prefix(w[0], w[1]))
        .max()
        .unwrap_or(0);
    (shared + 1).clamp(MIN, 36)
}

/// Each id cut to [`prefix_len`] of the list.
pub fn unique_prefixes(ids: &[JobId]) -> Vec<String> {
    let len = prefix_len(ids);
    ids.iter()
        .map(|id| id.to_string()[..len].to_string())
        .collect()
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> JobId {
        text.parse().expect("a uuid")
    }

    #[test]
    fn distinct_ids_print_as_eight_characters() {
        let ids = [
            id("01a23c57-33e6-77cb-9052-a9fb6bddd4bd"),
            id("01a23d00-0000-7000-8000-000000000000"),
        ];
        assert_eq!(unique_prefixes(&ids), ["01a23c57", "01a23d00"]);
    }

    #[test]
    fn ids_of_one_minute_grow_until_they_differ() {
        let ids = [
            id("01a23c57-33e6-77cb-9052-a9fb6bddd4bd"),
            id("01a23c57-33e7-7000-8000-000000000000"),
            id("01a23c57-4000-7000-8000-000000000000"),
        ];
        assert_eq!(
            unique_prefixes(&ids),
            ["01a23c57-33e6", "01a23c57-33e7", "01a23c57-4000"]
        );
        // Differing right after the first hyphen: the prefix takes the next digit.
        let ids = [
            id("01a23c57-33e6-77cb-9052-a9fb6bddd4bd"),
            id("01a23c57-43e6-77cb-9052-a9fb6bddd4bd"),
        ];
        assert_eq!(unique_prefixes(&ids), ["01a23c57-3", "01a23c57-4"]);
    }

    #[test]
    fn one_or_no_job_needs_no_more_than_eight() {
        assert_eq!(prefix_len(&[]), 8);
        let one = id("01a23c57-33e6-77cb-9052-a9fb6bddd4bd");
        assert_eq!(prefix_len(&[one]), 8);
        assert_eq!(prefix_len(&[one, one]), 8);
    }
}
