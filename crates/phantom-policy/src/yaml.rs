//! Reading YAML safely: text → a tree of [`Node`]s, each remembering where it was written.
//!
//! Policies come from users and, through the MCP server, possibly from agents, so the
//! reader is built for hostile input:
//!
//! * the text is at most [`MAX_POLICY_BYTES`];
//! * serde-saphyr's [`Budget`](serde_saphyr::Budget) caps events, nodes, anchors,
//!   aliases, alias replay and nesting depth far below anything that costs real time or
//!   memory (an alias "billion laughs" bomb is refused, not expanded);
//! * nesting is also counted while building the tree ([`MAX_DEPTH`]), so even replayed
//!   aliases cannot recurse deeply;
//! * one document only; unknown tags (`!foo`) are errors; booleans are only
//!   `true`/`false` (YAML 1.1's `yes`/`no`/`on`/`off` stay strings, so `n` is not false).
//!
//! The schema (which keys exist, what they mean) is not here but in `profile.rs`, which
//! walks the tree and reports errors at each node's [`Pos`].

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::error::{PolicyError, SourcePos};

/// The largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// The deepest nesting of lists and mappings accepted (a policy needs 4).
pub const MAX_DEPTH: usize = 32;

/// Where a node was written: file, 1-based line and column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pos {
    pub file: Arc<str>,
    pub line: u64,
    pub column: u64,
}

impl Pos {
    pub fn source(&self) -> SourcePos {
        SourcePos {
            file: self.file.to_string(),
            line: self.line,
            column: self.column,
        }
    }
}

/// One YAML node with its place in the file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// A YAML value. Integers too large for `i128` arrive as floats.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// "a list", "a number (5)", ... for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "nothing (the value is empty)".into(),
            Value::Bool(b) => format!("a boolean ({b})"),
            Value::Int(i) => format!("a number ({i})"),
            Value::Float(f) => format!("a number ({f})"),
            Value::Str(s) => format!("a string (\"{}\")", crate::error::shown(s)),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }
}

/// Parses `text` (one YAML document) into a tree; `file` names it in errors.
pub(crate) fn parse(text: &str, file: &Arc<str>) -> Result<Node, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            file: file.to_string(),
            size: text.len() as u64,
            limit: MAX_POLICY_BYTES as u64,
        });
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(MAX_POLICY_BYTES),
            max_events: 50_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: 5_000,
            max_recorded_anchor_bytes: MAX_POLICY_BYTES,
            max_depth: MAX_DEPTH,
            max_documents: 1,
            max_nodes: 50_000,
            max_total_scalar_bytes: MAX_POLICY_BYTES,
            max_total_comment_bytes: MAX_POLICY_BYTES,
            max_merge_keys: 100,
            flow_nesting_limit: MAX_DEPTH,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 5_000,
            max_replay_stack_depth: 8,
            max_alias_expansions_per_anchor: 1_000,
        },
        strict_booleans: true,
        reject_unsupported_tags: true,
        with_snippet: false,
        emit_comments: false,
    };
    DEPTH.with(|d| d.set(0));
    let raw: Spanned<Raw> =
        serde_saphyr::from_str_with_options(text, options).map_err(|err| yaml_error(&err, file))?;
    Ok(into_node(raw, file))
}

/// Turns a serde-saphyr error into a one-line `file:line:column: message`.
fn yaml_error(err: &serde_saphyr::Error, file: &Arc<str>) -> PolicyError {
    let formatter = serde_saphyr::UserMessageFormatter.with_localizer(&NoLocationSuffix);
    let message = err.render_with_options(serde_saphyr::render_options! {
        formatter: &formatter,
        snippets: serde_saphyr::SnippetMode::Off,
    });
    let at = match err.location() {
        Some(loc) if loc != Location::UNKNOWN => SourcePos {
            file: file.to_string(),
            line: loc.line(),
            column: loc.column(),
        },
        _ => SourcePos::file_only(file.to_string()),
    };
    PolicyError::Yaml {
        at,
        message: crate::error::one_line(message.trim(), 400),
    }
}

/// serde-saphyr's English messages without " at line X, column Y": we put the place
/// first, as `file:line:column:`.
struct NoLocationSuffix;

impl serde_saphyr::Localizer for NoLocationSuffix {
    fn attach_location<'a>(
        &self,
        base: std::borrow::Cow<'a, str>,
        _loc: Location,
    ) -> std::borrow::Cow<'a, str> {
        base
    }

    fn alias_used_at(&self, _used: Location) -> String {
        String::new()
    }

    fn alias_defined_at(&self, defined: Location) -> String {
        format!(
            " (in the anchor defined at {}:{})",
            defined.line(),
            defined.column()
        )
    }
}

fn into_node(raw: Spanned<Raw>, file: &Arc<str>) -> Node {
    let pos = Pos {
        file: Arc::clone(file),
        line: raw.referenced.line(),
        column: raw.referenced.column(),
    };
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(items.into_iter().map(|n| into_node(n, file)).collect()),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (into_node(k, file), into_node(v, file)))
                .collect(),
        ),
    };
    Node { value, pos }
}

/// What serde-saphyr hands us: any YAML value, children wrapped in `Spanned`.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

thread_local! {
    /// Current nesting while deserializing `Raw` (serde gives no way to pass it down
    /// through `Spanned`, so it lives here; parsing is synchronous on one thread).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Counts one level of nesting for as long as it lives.
struct Nesting;

impl Nesting {
    fn enter<E: de::Error>() -> Result<Nesting, E> {
        DEPTH.with(|depth| {
            let next = depth.get() + 1;
            if next > MAX_DEPTH {
                return Err(E::custom(format!(
                    "lists and mappings are nested deeper than {MAX_DEPTH} levels"
                )));
            }
            depth.set(next);
            Ok(Nesting)
        })
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Raw, E> {
        Ok(match i128::try_from(v) {
            Ok(i) => Raw::Int(i),
            Err(_) => Raw::Float(v as f64),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }

    fn visit_char<E>(self, v: char) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        String::from_utf8(v.to_vec())
            .map(Raw::Str)
            .map_err(|_| E::custom("binary values are not allowed in a policy"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let _nesting = Nesting::enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let _nesting = Nesting::enter()?;
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<str> {
        Arc::from("t.yaml")
    }

    #[test]
    fn nodes_remember_line_and_column() {
        let node = parse("a:\n  b: 5\n", &file()).unwrap();
        let Value::Map(top) = &node.value else {
            panic!("{node:?}")
        };
        let Value::Map(inner) = &top[0].1.value else {
            panic!()
        };
        assert_eq!((inner[0].0.pos.line, inner[0].0.pos.column), (2, 3));
        assert_eq!((inner[0].1.pos.line, inner[0].1.pos.column), (2, 6));
    }

    #[test]
    fn yaml11_booleans_stay_strings() {
        let node = parse("n: no\n", &file()).unwrap();
        let Value::Map(top) = &node.value else {
            panic!()
        };
        assert_eq!(top[0].0.value, Value::Str("n".into()));
        assert_eq!(top[0].1.value, Value::Str("no".into()));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&text, &file()).unwrap_err();
        assert!(matches!(err, PolicyError::Yaml { .. }), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_with_a_place() {
        let text = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
        let err = parse(&text, &file()).unwrap_err();
        let at = err.position().unwrap();
        assert_eq!(at.line, 1, "{err}");
        let block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(parse(&block, &file()).is_err());
    }

    #[test]
    fn syntax_errors_are_one_line_with_a_place() {
        for text in [
            "a: [1\n",
            "a: 1\na: 2\n",
            "a: 1\n---\nb: 2\n",
            "a: !foo x\n",
            "a: .nan\n",
        ] {
            let err = parse(text, &file()).unwrap_err();
            let line = err.to_string();
            assert!(line.starts_with("t.yaml:"), "{line}");
            assert!(!line.contains('\n'), "{line}");
            assert!(!line.contains(" at line "), "{line}");
        }
    }
}
