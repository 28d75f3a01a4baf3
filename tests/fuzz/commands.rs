//! PR comment commands (`/prodigy <command> key=value`, `@slug <command>`): any comment body
//! parses without a panic, every refusal names the word it refused, well-formed commands
//! round-trip whatever their spacing and case, and nothing inside code or quotes is a command.

use prodigy::server::commands::COMMAND_WORDS;
use prodigy::server::{CommandError, JobRef, PrCommand, parse_comment};
use proptest::prelude::*;

const SLUG: &str = "prodigy-bot";

/// Comment-like text: command words, prefixes, Markdown and arbitrary characters mixed.
fn comment_body() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/prodigy".to_string()),
        Just("/PRODIGY".to_string()),
        Just("@prodigy-bot".to_string()),
        Just("@other".to_string()),
        proptest::sample::select(COMMAND_WORDS.to_vec()).prop_map(str::to_string),
        Just("job=".to_string()),
        Just("budget=".to_string()),
        Just("item=".to_string()),
        Just("workflow=".to_string()),
        Just("0123abcd".to_string()),
        Just("```".to_string()),
        Just("~~~~".to_string()),
        Just("`".to_string()),
        Just("> ".to_string()),
        Just("    ".to_string()),
        Just("\t".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just(" ".to_string()),
        Just("=".to_string()),
        any::<String>(),
        "[a-z0-9$.=-]{1,12}",
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

/// The text an error is about, which its message must quote.
fn offending(e: &CommandError) -> Option<&str> {
    match e {
        CommandError::MissingCommand => None,
        CommandError::UnknownCommand { word, .. } => Some(word),
        CommandError::UnknownArgument { key, .. }
        | CommandError::DuplicateArgument { key, .. }
        | CommandError::EmptyValue { key, .. } => Some(key),
        CommandError::NotAnArgument { word, .. } => Some(word),
        CommandError::BadJob { value } | CommandError::BadBudget { value } => Some(value),
    }
}

/// A key=value argument with its value, for the round trip.
#[derive(Debug, Clone)]
enum Arg {
    Workflow(String),
    Job(String),
    Budget(u32),
    Item(String),
}

fn key_case(key: &str, upper: bool) -> String {
    if upper {
        key.to_ascii_uppercase()
    } else {
        key.to_string()
    }
}

fn render(arg: &Arg, upper: bool) -> String {
    match arg {
        Arg::Workflow(w) => format!("{}={w}", key_case("workflow", upper)),
        Arg::Job(j) => format!("{}={j}", key_case("job", upper)),
        Arg::Budget(b) => format!("{}=${b}", key_case("budget", upper)),
        Arg::Item(i) => format!("{}={i}", key_case("item", upper)),
    }
}

/// A well-formed command, as its text and what it must parse to.
fn command() -> impl Strategy<Value = (Vec<String>, PrCommand)> {
    let value = "[A-Za-z0-9_./:-]{1,20}";
    let job = "[0-9a-fA-F-]{8,36}";
    prop_oneof![
        proptest::option::of(value).prop_map(|w| {
            let args: Vec<Arg> = w.iter().cloned().map(Arg::Workflow).collect();
            (args, PrCommand::Run { workflow: w })
        }),
        (
            proptest::option::of(job),
            proptest::option::of(1u32..10_000)
        )
            .prop_map(|(j, b)| {
                let mut args: Vec<Arg> = j.iter().cloned().map(Arg::Job).collect();
                args.extend(b.map(Arg::Budget));
                let cmd = PrCommand::Resume {
                    job: j.as_deref().map(|j| JobRef::parse(j).unwrap()),
                    budget: b
                        .map(|b| prodigy::server::commands::Usd::parse(&b.to_string()).unwrap()),
                };
                (args, cmd)
            }),
        (proptest::option::of(job), proptest::option::of(value)).prop_map(|(j, i)| {
            let mut args: Vec<Arg> = j.iter().cloned().map(Arg::Job).collect();
            args.extend(i.iter().cloned().map(Arg::Item));
            let cmd = PrCommand::Retry {
                job: j.as_deref().map(|j| JobRef::parse(j).unwrap()),
                item: i,
            };
            (args, cmd)
        }),
        proptest::option::of(job).prop_map(|j| {
            let args: Vec<Arg> = j.iter().cloned().map(Arg::Job).collect();
            let cmd = PrCommand::Cancel {
                job: j.as_deref().map(|j| JobRef::parse(j).unwrap()),
            };
            (args, cmd)
        }),
        Just((vec![], PrCommand::Status)),
        Just((vec![], PrCommand::Help)),
    ]
    .prop_flat_map(|(args, cmd)| {
        let n = args.len();
        (
            Just(args),
            Just(cmd),
            proptest::collection::vec(any::<bool>(), n),
        )
    })
    .prop_map(|(args, cmd, upper)| {
        let words = args.iter().zip(upper).map(|(a, u)| render(a, u)).collect();
        (words, cmd)
    })
}

proptest! {
    #![proptest_config(crate::config(500))]

    #[test]
    fn any_comment_parses_and_every_refusal_quotes_its_word(body in comment_body()) {
        for parsed in parse_comment(&body, Some(SLUG)) {
            let first = parsed.line.split_whitespace().next().unwrap_or("");
            prop_assert!(
                first.eq_ignore_ascii_case("/prodigy") || first.eq_ignore_ascii_case("@prodigy-bot"),
                "a command line must start with a prefix: {:?}", parsed.line
            );
            if let Err(e) = &parsed.result {
                let text = e.to_string();
                prop_assert!(text.ends_with("See `/prodigy help` for the commands."), "{text}");
                if let Some(word) = offending(e) {
                    prop_assert!(!word.is_empty(), "{e:?}");
                    prop_assert!(text.contains(word), "{text:?} does not name {word:?}");
                    prop_assert!(
                        parsed.line.to_ascii_lowercase().contains(&word.to_ascii_lowercase()),
                        "{word:?} is not from the line {:?}", parsed.line
                    );
                }
            }
        }
    }

    #[test]
    fn well_formed_commands_round_trip(
        (args, want) in command(),
        mention in any::<bool>(),
        upper_word in any::<bool>(),
        indent in 0usize..4,
        gaps in proptest::collection::vec("[ \t]{1,3}", 8),
        before in "[a-z .,!]{0,30}",
    ) {
        let prefix = if mention { "@Prodigy-Bot" } else { "/prodigy" };
        let word = if upper_word { want.name().to_ascii_uppercase() } else { want.name().to_string() };
        let mut line = format!("{}{prefix}{}{word}", " ".repeat(indent), gaps[0]);
        for (a, gap) in args.iter().zip(&gaps[1..]) {
            line.push_str(gap);
            line.push_str(a);
        }
        let body = format!("{before}\n\n{line}\n");
        let parsed = parse_comment(&body, Some(SLUG));
        prop_assert_eq!(parsed.len(), 1, "{:?}", body);
        prop_assert_eq!(&parsed[0].result, &Ok(want));
    }

    #[test]
    fn nothing_in_code_or_quotes_is_a_command(
        lines in proptest::collection::vec(comment_line(), 1..8),
        fence in prop_oneof![Just("```"), Just("~~~"), Just("````")],
    ) {
        // Inside a fence: only a closing fence line ends it.
        let closes = |l: &str| {
            let t = l.trim_start();
            let ch = fence.chars().next().unwrap();
            let run = t.chars().take_while(|c| *c == ch).count();
            run >= fence.len() && t.trim_start_matches(ch).trim().is_empty()
        };
        let inside: Vec<&String> = lines.iter().filter(|l| !closes(l)).collect();
        let mut body = format!("{fence}\n");
        for l in &inside {
            body.push_str(l);
            body.push('\n');
        }
        body.push_str(fence);
        prop_assert!(parse_comment(&body, Some(SLUG)).is_empty(), "fenced: {:?}", body);

        // Indented code: every line at least four spaces in, after a blank line.
        let indented: String = lines
            .iter()
            .map(|l| format!("    {}\n", l.replace('\r', "")))
            .collect();
        prop_assert!(parse_comment(&format!("\n{indented}"), Some(SLUG)).is_empty(), "{:?}", indented);

        // A block quote continues over the following non-blank lines.
        let quoted: String = std::iter::once("> quoted".to_string())
            .chain(lines.iter().map(|l| l.replace(['\r', '\n'], " ")))
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        prop_assert!(parse_comment(&quoted, Some(SLUG)).is_empty(), "{:?}", quoted);

        // Inline code.
        let inline = format!("see `/prodigy run` and ``{}``", "/prodigy cancel".repeat(lines.len()));
        prop_assert!(parse_comment(&inline, Some(SLUG)).is_empty());
    }
}

/// One line of a comment that may well be a command (no line breaks inside).
fn comment_line() -> impl Strategy<Value = String> {
    comment_body().prop_map(|b| b.replace(['\n', '\r'], " "))
}
