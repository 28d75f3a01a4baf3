//! Small text helpers shared by the engine's messages, the check-run summaries and the replies:
//! one way to print a duration, to keep the last lines of an output, and to flatten text into
//! one line.

use std::time::Duration;

/// A duration for people: "250 ms", "1.5 s", "40 s", "2 min 3 s", "1 h 2 min".
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 10_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else if ms < 60_000 {
        format!("{} s", ms / 1000)
    } else if ms < 3_600_000 {
        let s = ms / 1000;
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// [`human_duration`] of a signed millisecond count (negative: zero), as databases give them.
pub fn human_millis(ms: i64) -> String {
    human_duration(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// The last `n` lines of `text`, without trailing blank lines, and how many lines came before.
pub fn tail_lines(text: &str, n: usize) -> (String, usize) {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(n);
    (lines[start..].join("\n"), start)
}

/// `text` on one line of at most `max` characters (line breaks and tabs become spaces, `|`
/// becomes `¦` so the text can sit in a Markdown table cell), cut with "…" when longer.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            '|' => '¦',
            c => c,
        })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() <= max {
        flat.to_string()
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally_at_every_scale() {
        assert_eq!(human_duration(Duration::from_millis(300)), "300 ms");
        assert_eq!(human_duration(Duration::from_millis(1_234)), "1.2 s");
        assert_eq!(human_duration(Duration::from_secs(5)), "5.0 s");
        assert_eq!(human_duration(Duration::from_secs(40)), "40 s");
        assert_eq!(human_duration(Duration::from_secs(90)), "1 min 30 s");
        assert_eq!(human_millis(3_723_000), "1 h 2 min");
        assert_eq!(human_millis(-5), "0 ms");
    }

    #[test]
    fn tails_say_what_they_cut() {
        assert_eq!(tail_lines("a\nb\nc\n\n", 2), ("b\nc".to_string(), 1));
        assert_eq!(tail_lines("a\nb", 5), ("a\nb".to_string(), 0));
    }

    #[test]
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line("a\nb|c", 10), "a b¦c");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
