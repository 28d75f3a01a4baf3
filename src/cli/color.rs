//! Colour for status words on stdout: `--color auto` (the default) colours only a terminal and
//! honours `NO_COLOR`; `always` and `never` decide outright.

use std::sync::atomic::{AtomicBool, Ordering};

use clap::ValueEnum;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

static ON: AtomicBool = AtomicBool::new(false);

/// Whether to colour: `auto` needs a terminal and no (non-empty) NO_COLOR.
pub fn enabled(choice: ColorChoice, tty: bool, no_color: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => tty && !no_color,
    }
}

/// Decides once, from the flag, stdout and the environment.
pub fn init(choice: ColorChoice) {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    ON.store(
        enabled(choice, std::io::stdout().is_terminal(), no_color),
        Ordering::Relaxed,
    );
}

/// A status word padded to `width`, in its colour when colour is on (padding outside the
/// escapes keeps tables aligned).
pub fn status(word: &str, width: usize) -> String {
    let padded = format!("{word:<width$}");
    let code = match word {
        "succeeded" => "32",
        "failed" | "budget_exhausted" => "31",
        "running" | "pending" => "33",
        "cancelled" => "90",
        _ => return padded,
    };
    if !ON.load(Ordering::Relaxed) {
        return padded;
    }
    let pad = padded.len() - word.len();
    format!("\x1b[{code}m{word}\x1b[0m{}", " ".repeat(pad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_colours_a_terminal_unless_no_color() {
        assert!(enabled(ColorChoice::Auto, true, false));
        assert!(!enabled(ColorChoice::Auto, true, true));
        assert!(!enabled(ColorChoice::Auto, false, false));
        assert!(enabled(ColorChoice::Always, false, true));
        assert!(!enabled(ColorChoice::Never, true, false));
    }
}
