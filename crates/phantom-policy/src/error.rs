//! Errors of the policy crate.
//!
//! * [`PolicyError`] — everything [`crate::load_file`], [`crate::load_str`],
//!   [`crate::load_builtin`] and [`crate::compile`] can report. Its `Display` is one line
//!   that starts with `file:line:column:` whenever the problem sits at a place in a YAML
//!   file, names the key (`resources.memory: ...`) and ends with how to fix it. A policy
//!   with several independent mistakes is one [`PolicyError::Several`]: one such line
//!   per mistake, in file order ([`PolicyError::errors`] lists them).
//! * [`SourcePos`] — such a place.
//! * [`ChoiceError`] — a word that is not one of a fixed set (`--mode`, `--network`).

use std::fmt;

/// A place in a policy file: `file:line:column` (both 1-based).
///
/// `line == 0` means the place inside the file is not known; it then displays as `file`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourcePos {
    /// The file name as given to the loader (`policy.yaml`, `builtin/python-dev.yaml`).
    pub file: String,
    /// 1-based line, or 0 when unknown.
    pub line: u64,
    /// 1-based column, counted in characters.
    pub column: u64,
}

impl SourcePos {
    /// A place somewhere in `file`, line unknown.
    pub fn file_only(file: impl Into<String>) -> Self {
        SourcePos {
            file: file.into(),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// Why a policy could not be loaded or compiled. See the module docs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("{file}: cannot read policy file: {error}")]
    Read {
        file: String,
        /// The I/O error, kept in the message (not as a `source`) so the line is whole.
        error: std::io::Error,
    },

    /// The policy file is larger than any sensible policy.
    #[error("{file}: policy file is too large ({size} bytes; the limit is {limit} bytes)")]
    TooLarge { file: String, size: u64, limit: u64 },

    /// The text is not valid YAML, or it trips a safety limit (nesting depth, alias
    /// expansion, document count, duplicate key).
    #[error("{at}: {message}")]
    Yaml { at: SourcePos, message: String },

    /// A key that the DSL does not have.
    #[error("{at}: unknown key `{key}` {section}{hint}")]
    UnknownKey {
        at: SourcePos,
        key: String,
        /// Rendered place: "in `resources`" or "at the top level".
        section: String,
        /// Rendered suggestion: " (did you mean `memory`?)" or " (valid keys: ...)".
        hint: String,
    },

    /// A required key is absent.
    #[error("{at}: missing key `{key}`: {hint}")]
    MissingKey {
        at: SourcePos,
        key: String,
        hint: String,
    },

    /// A value of the wrong YAML type (a list where a word belongs, ...).
    #[error("{at}: {field}: expected {expected}, found {found}")]
    WrongType {
        at: SourcePos,
        field: String,
        expected: String,
        found: String,
    },

    /// A value of the right type that is not allowed (a size that does not parse,
    /// `pids: 0`, a relative path, an unknown syscall, a feature this build lacks).
    #[error("{at}: {field}: {}", one_line_quoted(.message))]
    InvalidValue {
        at: SourcePos,
        field: String,
        message: String,
    },

    /// `extends:` names an unknown built-in profile.
    #[error("{at}: extends: unknown built-in profile `{name}`{hint}")]
    UnknownProfile {
        at: SourcePos,
        name: String,
        hint: String,
    },

    /// A built-in profile was asked for by a name that does not exist.
    #[error("unknown built-in profile `{name}`{hint}")]
    UnknownBuiltin { name: String, hint: String },

    /// A profile was asked for by a name that is neither a built-in nor one of
    /// config.yaml's.
    #[error("unknown profile `{name}`{hint}")]
    UnknownNamedProfile { name: String, hint: String },

    /// `extends:` goes round in a circle.
    #[error("{at}: extends: cycle {chain}; a profile cannot extend itself")]
    ExtendsCycle { at: SourcePos, chain: String },

    /// A value given to `compile()` as an override (a CLI flag) is not allowed, or
    /// conflicts with the profile.
    #[error("override {field}: {}", one_line_quoted(.message))]
    InvalidOverride { field: String, message: String },

    /// Seccomp programs cannot be built for the architecture phantom was built for.
    #[error(
        "seccomp: this build targets {arch}, for which phantom has no syscall table \
         (supported: x86_64, aarch64); use mode direct or build for a supported architecture"
    )]
    UnsupportedArch { arch: String },

    /// A bug: the BPF generator produced something it should not have.
    #[error("seccomp program `{program}`: internal error: {message} (please report this)")]
    Internal { program: String, message: String },

    /// An environment variable that phantom reads (`AISBX_CONFIG_PATH`, ...) has a
    /// value that cannot be used.
    #[error("{variable}: {}", one_line_quoted(.message))]
    Environment { variable: String, message: String },

    /// Several independent problems (unknown keys, wrong types, bad values), in file
    /// order, so that one round of `phantom policy check` shows them all. Displays as
    /// one line per problem. Never empty, never holds a single error or another
    /// `Several`; built by [`PolicyError::from_list`].
    #[error("{}", lines(.0))]
    Several(Vec<PolicyError>),
}

fn lines(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl PolicyError {
    /// The problems this error stands for: the list of a [`PolicyError::Several`], else
    /// just this one. Each displays as one line.
    pub fn errors(&self) -> &[PolicyError] {
        match self {
            PolicyError::Several(list) => list,
            one => std::slice::from_ref(one),
        }
    }

    /// The first problem (in file order): for a caller that shows only one.
    pub fn first(&self) -> &PolicyError {
        &self.errors()[0]
    }

    /// `None` for no errors, the error itself for one, else a [`PolicyError::Several`]
    /// sorted by place (file, line, column; problems without a place last).
    pub fn from_list(list: Vec<PolicyError>) -> Option<PolicyError> {
        let mut flat: Vec<PolicyError> = Vec::with_capacity(list.len());
        for error in list {
            match error {
                PolicyError::Several(inner) => flat.extend(inner),
                one => flat.push(one),
            }
        }
        flat.sort_by(|a, b| {
            let key = |e: &PolicyError| {
                e.position()
                    .map(|p| (false, p.file.clone(), p.line, p.column))
                    .unwrap_or((true, String::new(), 0, 0))
            };
            key(a).cmp(&key(b))
        });
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(PolicyError::Several(flat)),
        }
    }

    /// Where in a policy file the problem is, when it is at a place in one (for
    /// several problems: the first's).
    pub fn position(&self) -> Option<&SourcePos> {
        match self {
            PolicyError::Several(list) => list.first().and_then(PolicyError::position),
            PolicyError::Yaml { at, .. }
            | PolicyError::UnknownKey { at, .. }
            | PolicyError::MissingKey { at, .. }
            | PolicyError::WrongType { at, .. }
            | PolicyError::InvalidValue { at, .. }
            | PolicyError::UnknownProfile { at, .. }
            | PolicyError::ExtendsCycle { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// A word that is not one of a fixed set of choices, e.g. `--mode sandbx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{value}` {reason}")]
pub struct ChoiceError {
    /// What was being chosen ("mode", "network mode").
    pub what: &'static str,
    /// The word given, escaped for display.
    pub value: String,
    /// The rest of the sentence: "is not one of: a, b, c (did you mean `b`?)".
    pub reason: String,
}

/// Escapes control characters so that user text cannot break a one-line message, and
/// keeps it short.
pub(crate) fn shown(text: &str) -> String {
    one_line(text, 80)
}

/// `text` with control characters escaped, cut after `max` characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    // `escape_debug` escapes quotes too; in our backtick-quoted messages they are fine.
    out = out.replace("\\\"", "\"").replace("\\'", "'");
    if text.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// `message` on one line whatever the values it quotes: control characters escaped
/// wherever they are, each `backtick-quoted` part cut to 100 characters. What
/// [`shown`] made passes unchanged.
pub(crate) fn one_line_quoted(message: &str) -> String {
    message
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            let mut out = String::new();
            for (n, c) in part.chars().enumerate() {
                if i % 2 == 1 && n == 100 {
                    out.push_str("...");
                    break;
                }
                if c.is_control() {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("`")
}

/// " (did you mean `x`?)" when `word` is close to one of `candidates`, else "".
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    closest(word, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    let mut best: Option<(&str, f64)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&word_lower, candidate);
        let distance = strsim::damerau_levenshtein(&word_lower, candidate);
        let close = score >= 0.85 || (distance <= 2 && distance < candidate.len());
        if close && best.is_none_or(|(_, s)| score > s) {
            best = Some((candidate, score));
        }
    }
    best.map(|(c, _)| c)
}

/// A `ChoiceError` for `value` not being one of `valid`.
pub(crate) fn choice_error(what: &'static str, value: &str, valid: &[&str]) -> ChoiceError {
    ChoiceError {
        what,
        value: shown(value),
        reason: format!(
            "is not one of: {}{}",
            valid.join(", "),
            did_you_mean(value, valid.iter().copied())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_find_typos_and_ignore_noise() {
        let keys = ["memory", "cpu", "pids", "timeout"];
        assert_eq!(closest("memroy", keys), Some("memory"));
        assert_eq!(closest("pid", keys), Some("pids"));
        assert_eq!(closest("zzzzzzzz", keys), None);
    }

    #[test]
    fn shown_keeps_messages_on_one_line() {
        let s = shown("a\nb\u{7}");
        assert!(!s.contains('\n'));
        assert!(!s.contains('\u{7}'));
    }

    #[test]
    fn position_displays_as_file_line_column() {
        let p = SourcePos {
            file: "p.yaml".into(),
            line: 3,
            column: 5,
        };
        assert_eq!(p.to_string(), "p.yaml:3:5");
        assert_eq!(SourcePos::file_only("p.yaml").to_string(), "p.yaml");
    }
}
