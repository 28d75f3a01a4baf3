//! The shell-context renderer: every placeholder becomes a reference to an environment variable
//! (or a spill file for large values), written in the form the shell's quoting context at that
//! point needs, so a value is always one literal word.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::template::{Piece, placeholder_text, split};
use super::{Context, InterpolateError, R};

/// Values larger than this go through a file instead of an environment variable: Linux limits
/// one environment string to 128 KiB (MAX_ARG_STRLEN).
pub const MAX_ENV_VALUE: usize = 100 * 1024;

/// Past this many bytes of values in one script's environment, further values go through files
/// too: the environment and arguments of a process share one limit (ARG_MAX, often 2 MiB).
pub const MAX_ENV_TOTAL: usize = 1024 * 1024;

/// A shell script whose placeholders refer to environment variables.
#[derive(Debug, Clone)]
pub struct ShellScript {
    pub script: String,
    /// Variables to set on the process that runs `script` (in addition to its usual env).
    pub env: Vec<(String, String)>,
    /// Files holding values too large for the environment; removed when the last clone of this
    /// script is dropped, so keep the script alive until its process has exited.
    pub spill_files: Vec<Arc<SpillFile>>,
}

/// A temporary file removed on drop.
#[derive(Debug)]
pub struct SpillFile {
    pub path: PathBuf,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl SpillFile {
    fn create(contents: &str) -> std::io::Result<SpillFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = dir.join(format!(
                "prodigy-value-{}-{n}-{nanos:x}",
                std::process::id()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let file = SpillFile { path };
                    f.write_all(contents.as_bytes())?;
                    return Ok(file);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The shell quoting context at a point of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Q {
    /// Top level, or inside `$(...)` / backticks, where a new quoting level starts.
    Plain {
        close: Closer,
    },
    Double,
    Single,
    DollarSingle,
    Comment,
    /// Body of a here-document; `expand` is false when the delimiter was quoted.
    HereDoc {
        delim: String,
        expand: bool,
        strip_tabs: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Closer {
    Top,
    /// `$(`: closes at the `)` that balances it (`depth` counts open plain parentheses).
    /// `arith` marks `$((`, where `<<` is a shift, not a here-document.
    Paren {
        depth: usize,
        arith: bool,
    },
    Backtick,
}

#[derive(Debug, Clone)]
struct PendingHereDoc {
    delim: String,
    expand: bool,
    strip_tabs: bool,
}

/// Tracks quoting state over the literal text of a script.
struct Scanner {
    stack: Vec<Q>,
    pending: Vec<PendingHereDoc>,
    /// Text of the current here-doc line so far (to find the delimiter line).
    line: String,
    /// The previous literal character, for word-start detection of `#`.
    prev: Option<char>,
    escaped: bool,
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            stack: vec![Q::Plain { close: Closer::Top }],
            pending: Vec::new(),
            line: String::new(),
            prev: None,
            escaped: false,
        }
    }

    fn top(&self) -> &Q {
        self.stack
            .last()
            .unwrap_or(&Q::Plain { close: Closer::Top })
    }

    fn feed(&mut self, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            i += 1;
            if self.escaped {
                self.escaped = false;
                self.prev = Some(c);
                continue;
            }
            match self.top().clone() {
                Q::Plain { close } => match c {
                    '\\' => self.escaped = true,
                    '\'' => self.stack.push(Q::Single),
                    '"' => self.stack.push(Q::Double),
                    '$' if next == Some('\'') => {
                        self.stack.push(Q::DollarSingle);
                        i += 1;
                    }
                    '$' if next == Some('(') => {
                        let arith = chars.get(i + 1) == Some(&'(');
                        self.stack.push(Q::Plain {
                            close: Closer::Paren { depth: 0, arith },
                        });
                        i += 1;
                    }
                    '`' if close == Closer::Backtick => {
                        self.stack.pop();
                    }
                    '`' => self.stack.push(Q::Plain {
                        close: Closer::Backtick,
                    }),
                    // bash's arithmetic command `(( ... ))` at the start of a command (in dash,
                    // two subshells; treating it as arithmetic is the cautious reading).
                    '(' if next == Some('(')
                        && self
                            .prev
                            .is_none_or(|p| p.is_whitespace() || ";&|(".contains(p)) =>
                    {
                        self.stack.push(Q::Plain {
                            close: Closer::Paren {
                                depth: 0,
                                arith: true,
                            },
                        });
                    }
                    '(' => {
                        if let Some(Q::Plain {
                            close: Closer::Paren { depth, .. },
                        }) = self.stack.last_mut()
                        {
                            *depth += 1;
                        }
                    }
                    ')' => match self.stack.last_mut() {
                        Some(Q::Plain {
                            close: Closer::Paren { depth, .. },
                        }) if *depth > 0 => *depth -= 1,
                        Some(Q::Plain {
                            close: Closer::Paren { .. },
                        }) => {
                            self.stack.pop();
                        }
                        _ => {}
                    },
                    '#' if self
                        .prev
                        .is_none_or(|p| p.is_whitespace() || ";&|()".contains(p)) =>
                    {
                        self.stack.push(Q::Comment)
                    }
                    '<' if next == Some('<')
                        && chars.get(i + 1) != Some(&'<')
                        && !matches!(close, Closer::Paren { arith: true, .. }) =>
                    {
                        i += 1;
                        i = self.heredoc_operator(&chars, i);
                        self.prev = Some('<');
                        continue;
                    }
                    '\n' => self.newline(),
                    _ => {}
                },
                Q::Double => match c {
                    '\\' => self.escaped = true,
                    '"' => {
                        self.stack.pop();
                    }
                    '$' if next == Some('(') => {
                        let arith = chars.get(i + 1) == Some(&'(');
                        self.stack.push(Q::Plain {
                            close: Closer::Paren { depth: 0, arith },
                        });
                        i += 1;
                    }
                    '`' => self.stack.push(Q::Plain {
                        close: Closer::Backtick,
                    }),
                    _ => {}
                },
                Q::Single => {
                    if c == '\'' {
                        self.stack.pop();
                    }
                }
                Q::DollarSingle => match c {
                    '\\' => self.escaped = true,
                    '\'' => {
                        self.stack.pop();
                    }
                    _ => {}
                },
                Q::Comment => {
                    if c == '\n' {
                        self.stack.pop();
                        self.newline();
                    }
                }
                Q::HereDoc {
                    delim,
                    expand,
                    strip_tabs,
                } => {
                    if c == '\n' {
                        let line = if strip_tabs {
                            self.line.trim_start_matches('\t')
                        } else {
                            self.line.as_str()
                        };
                        let done = line == delim;
                        self.line.clear();
                        if done {
                            self.stack.pop();
                            self.start_pending_heredoc();
                        }
                    } else if c == '`' && self.in_backticks() {
                        // Old-style substitution ends at the next backtick, here-doc or not.
                        while let Some(q) = self.stack.pop() {
                            if q == (Q::Plain {
                                close: Closer::Backtick,
                            }) {
                                break;
                            }
                        }
                        self.pending.clear();
                        self.line.clear();
                    } else {
                        self.line.push(c);
                        if expand && c == '\\' {
                            self.escaped = true;
                        }
                    }
                }
            }
            self.prev = Some(c);
        }
    }

    /// Inside `$((...))` or `((...))`, at any depth: the shell evaluates what is expanded there
    /// as an arithmetic expression, and bash runs any `$(...)` in an array subscript of it.
    fn in_arithmetic(&self) -> bool {
        self.stack.iter().any(|q| {
            matches!(
                q,
                Q::Plain {
                    close: Closer::Paren { arith: true, .. }
                }
            )
        })
    }

    fn in_backticks(&self) -> bool {
        self.stack.iter().any(|q| {
            *q == Q::Plain {
                close: Closer::Backtick,
            }
        })
    }

    /// Reads `<<[-] WORD` starting after `<<`; returns the index after the word.
    fn heredoc_operator(&mut self, chars: &[char], mut i: usize) -> usize {
        let strip_tabs = chars.get(i) == Some(&'-');
        if strip_tabs {
            i += 1;
        }
        while chars.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
            i += 1;
        }
        let mut delim = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.get(i) {
            match c {
                '\'' | '"' => {
                    quoted = true;
                    let q = c;
                    i += 1;
                    while let Some(&d) = chars.get(i) {
                        i += 1;
                        if d == q {
                            break;
                        }
                        delim.push(d);
                    }
                }
                '\\' => {
                    quoted = true;
                    i += 1;
                    if let Some(&d) = chars.get(i) {
                        delim.push(d);
                        i += 1;
                    }
                }
                c if c.is_whitespace() || ";&|<>()".contains(c) => break,
                c => {
                    delim.push(c);
                    i += 1;
                }
            }
        }
        if !delim.is_empty() {
            self.pending.push(PendingHereDoc {
                delim,
                expand: !quoted,
                strip_tabs,
            });
        }
        i
    }

    fn newline(&mut self) {
        self.start_pending_heredoc();
    }

    fn start_pending_heredoc(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let h = self.pending.remove(0);
        self.line.clear();
        self.stack.push(Q::HereDoc {
            delim: h.delim,
            expand: h.expand,
            strip_tabs: h.strip_tabs,
        });
    }
}

/// Renders a `shell:` command so every placeholder value reaches the shell as literal data.
/// See the module documentation; `${x|raw}` is the explicit opt-out.
pub fn render_shell(template: &str, ctx: &Context) -> R<ShellScript> {
    let mut scanner = Scanner::new();
    let mut script = String::new();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut spill_files = Vec::new();
    let mut references: BTreeMap<String, String> = BTreeMap::new();
    let mut env_bytes = 0usize;
    for piece in split(template)? {
        match piece {
            Piece::Text(t) => {
                scanner.feed(&t);
                script.push_str(&t);
            }
            Piece::Hole(ph) => {
                let value = placeholder_text(&ph, ctx)?;
                if ph.raw {
                    scanner.feed(&value);
                    script.push_str(&value);
                    continue;
                }
                if value.contains('\0') {
                    return Err(InterpolateError::Value {
                        placeholder: ph.text.clone(),
                        reason: "the value contains a NUL byte, which no shell argument or \
                                 variable can hold"
                            .into(),
                    });
                }
                if scanner.escaped {
                    // `\${x}`: the backslash would escape the first character of the reference
                    // (a quote) and unbalance the script. Give it the `$` it was written for, so
                    // the shell prints a literal `$` before the value.
                    script.push('$');
                    scanner.escaped = false;
                }
                if scanner.in_arithmetic() {
                    // No quoting keeps a value literal here: bash evaluates `$(( "$v" ))` as an
                    // expression, so `a[$(cmd)]` would run cmd. Only an integer is safe, and
                    // then it can be written as it is (dash refuses a quoted operand anyway).
                    let number = value.trim();
                    let digits = number.strip_prefix(['-', '+']).unwrap_or(number);
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(InterpolateError::Value {
                            placeholder: ph.text.clone(),
                            reason: "it is inside an arithmetic expansion $((...)), where the \
                                     shell evaluates the value as code, and the value is not an \
                                     integer; check it first, or compute outside $((...))"
                                .into(),
                        });
                    }
                    scanner.feed(number);
                    script.push_str(number);
                    continue;
                }
                let top = scanner.top().clone();
                if let Q::HereDoc {
                    expand: false,
                    delim,
                    strip_tabs,
                } = &top
                {
                    // A quoted here-doc expands nothing, so the value can only be spliced; it is
                    // safe unless one of its lines would end the here-doc early. Only at the top
                    // level of the script: inside `$(...)` or backticks, shells differ in where
                    // they end the here-doc, and a wrong guess would run the value.
                    if scanner.stack.len() != 2 {
                        return Err(InterpolateError::Value {
                            placeholder: ph.text.clone(),
                            reason: format!(
                                "it is inside a quoted here-document (<<'{delim}') within a \
                                 command substitution, where it cannot be passed safely; use an \
                                 unquoted delimiter (<<{delim}) or move the here-document to the \
                                 top level"
                            ),
                        });
                    }
                    let ends = value.lines().any(|l| {
                        let l = if *strip_tabs {
                            l.trim_start_matches('\t')
                        } else {
                            l
                        };
                        l == delim
                    });
                    if ends {
                        return Err(InterpolateError::Value {
                            placeholder: ph.text.clone(),
                            reason: format!(
                                "it contains the line '{delim}', which would end the quoted \
                                 here-document; use an unquoted delimiter (<<{delim})"
                            ),
                        });
                    }
                    scanner.feed(&value);
                    script.push_str(&value);
                    continue;
                }
                let reference = match references.get(&value) {
                    // The same value used again reuses its variable: the environment stays small.
                    Some(r) => r.clone(),
                    None => {
                        let r = if value.len() > MAX_ENV_VALUE
                            || env_bytes + value.len() > MAX_ENV_TOTAL
                        {
                            let file =
                                SpillFile::create(&value).map_err(|e| InterpolateError::Value {
                                    placeholder: ph.text.clone(),
                                    reason: format!(
                                        "the value is {} bytes, too large for the environment, \
                                         and writing it to a temporary file failed: {e}",
                                        value.len()
                                    ),
                                })?;
                            let name = format!("__PRODIGY_F{}", env.len());
                            let path = file.path.to_string_lossy().into_owned();
                            env_bytes += name.len() + path.len() + 2;
                            env.push((name.clone(), path));
                            spill_files.push(Arc::new(file));
                            // Command substitution drops trailing newlines; that is the one
                            // difference from an environment variable.
                            format!("$(cat \"${{{name}}}\")")
                        } else {
                            let name = format!("__PRODIGY_V{}", env.len());
                            env_bytes += name.len() + value.len() + 2;
                            env.push((name.clone(), value.clone()));
                            format!("${{{name}}}")
                        };
                        references.insert(value, r.clone());
                        r
                    }
                };
                let text = match top {
                    Q::Plain { .. } => format!("\"{reference}\""),
                    Q::Double | Q::HereDoc { .. } => reference,
                    Q::Single => format!("'\"{reference}\"'"),
                    Q::DollarSingle => format!("'\"{reference}\"$'"),
                    // Nothing in a comment runs; keep the reference so the text stays readable.
                    Q::Comment => reference,
                };
                script.push_str(&text);
                // The reference is complete within its context; feed a neutral char so `#` or
                // `<<` detection sees a word character before what follows.
                scanner.prev = Some('x');
            }
        }
    }
    Ok(ShellScript {
        script,
        env,
        spill_files,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(template: &str, value: &str) -> R<String> {
        let ctx = Context::new().with_var("v", json!(value));
        render_shell(template, &ctx).map(|s| s.script)
    }

    /// Found by tests/fuzz (interpolate): `$(( ${v} + 1 ))` rendered `$(( "${V}" + 1 ))`, which
    /// bash (also as macOS's /bin/sh) evaluates as an expression, running the `$(...)` of a value
    /// `a[$(touch pwned)]`; dash refused the quoted operand even for a number.
    #[test]
    fn arithmetic_takes_integers_only_and_writes_them_as_they_are() {
        let evil = "a[$(touch pwned)]";
        for t in [
            "echo $(( ${v} + 1 ))",
            "echo $(( \"${v}\" + 1 ))",
            "echo $(( $(printf %s ${v}) + 1 ))",
            "(( ${v} > 1 )) && echo big",
            "x=1; ((${v}))",
        ] {
            let err = render(t, evil).unwrap_err();
            assert!(err.to_string().contains("arithmetic"), "{t}: {err}");
        }
        assert_eq!(
            render("echo $(( ${v} + 1 ))", " -12\n").unwrap(),
            "echo $(( -12 + 1 ))"
        );
        assert_eq!(render("((${v}))", "7").unwrap(), "((7))");
        // A subshell and a command substitution are no arithmetic.
        assert_eq!(
            render("( echo ${v} ) $(echo ${v})", evil).unwrap(),
            "( echo \"${__PRODIGY_V0}\" ) $(echo \"${__PRODIGY_V0}\")"
        );
        // After the arithmetic closes, values are quoted again.
        assert_eq!(
            render("echo $((1+2)) ${v}", evil).unwrap(),
            "echo $((1+2)) \"${__PRODIGY_V0}\""
        );
    }
}
