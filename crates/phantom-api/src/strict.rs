//! Strict parsing of request bodies and tool arguments: unknown top-level fields are
//! refused by the type's own JSON Schema, with the nearest known field suggested.
//!
//! serde's `deny_unknown_fields` cannot be combined with `#[serde(flatten)]`, which the
//! requests use for [`crate::Limits`]; the schema knows every field, flattened ones
//! included, so it is the one list to check against. Nested structs that are not
//! flattened ([`crate::FileSpec`]) deny unknown fields themselves.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a body or an argument object was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictError {
    /// The field at fault, when one is.
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for StrictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StrictError {}

/// `T`'s JSON Schema with `additionalProperties: false` at the top, as documents (the
/// OpenAPI document, MCP's `inputSchema`) show it.
pub fn schema_for<T: JsonSchema>() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    if let Some(object) = schema.as_object_mut() {
        if object.get("type").and_then(Value::as_str) == Some("object") {
            object.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    schema
}

/// The top-level property names of `T`'s schema (flattened structs' included).
fn known_fields<T: JsonSchema>() -> Arc<BTreeSet<String>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<BTreeSet<String>>>>> = OnceLock::new();
    let key = T::schema_id().into_owned();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().map(|c| c.get(&key).cloned()).ok().flatten() {
        return found;
    }
    let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    let mut names = BTreeSet::new();
    collect_properties(&schema, &schema, &mut names, 0);
    let names = Arc::new(names);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, names.clone());
    }
    names
}

/// Property names of `schema` (following `$ref` into `root`'s `$defs`, and `allOf`,
/// `anyOf`, `oneOf`).
fn collect_properties(schema: &Value, root: &Value, out: &mut BTreeSet<String>, depth: usize) {
    if depth > 16 {
        return;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        out.extend(props.keys().cloned());
    }
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        if let Some(name) = reference.strip_prefix("#/$defs/") {
            if let Some(def) = root.get("$defs").and_then(|d| d.get(name)) {
                collect_properties(def, root, out, depth + 1);
            }
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for sub in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            collect_properties(sub, root, out, depth + 1);
        }
    }
}

/// Levenshtein distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

/// The longest quoted value in a message, in characters.
pub const MAX_QUOTED: usize = 64;

/// `text` fit for a one-line message: control characters escaped (`\n`, `\u{1b}`),
/// at most `max` characters (then `…`). A request's values may hold anything, and
/// messages end up on terminals and in logs.
pub fn shown(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `message` on one line, each `backtick-quoted` part (where messages quote a
/// request's values) cut to [`MAX_QUOTED`] characters.
pub fn one_line(message: &str) -> String {
    message
        .split('`')
        .enumerate()
        .map(|(i, part)| shown(part, if i % 2 == 1 { MAX_QUOTED } else { usize::MAX }))
        .collect::<Vec<_>>()
        .join("`")
}

/// Parse `value` as `T`, refusing top-level fields `T`'s schema does not list.
pub fn from_value<T: DeserializeOwned + JsonSchema>(value: Value) -> Result<T, StrictError> {
    match &value {
        Value::Object(map) => {
            let known = known_fields::<T>();
            for key in map.keys() {
                if known.contains(key) {
                    continue;
                }
                // A name far longer than any known one is near none of them (and
                // would cost its length times theirs to compare).
                let nearest = known
                    .iter()
                    .filter(|_| key.chars().count() <= MAX_QUOTED)
                    .map(|k| (distance(key, k), k))
                    .filter(|(d, k)| *d <= 2.max(k.len() / 3))
                    .min();
                let hint = match nearest {
                    Some((_, k)) => format!("did you mean `{k}`?"),
                    None => format!(
                        "known fields: {}",
                        known.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                };
                let key = shown(key, MAX_QUOTED);
                return Err(StrictError {
                    message: format!("unknown field `{key}`: {hint}"),
                    field: Some(key),
                });
            }
        }
        Value::Null => {}
        _ => {
            return Err(StrictError {
                field: None,
                message: "expected a JSON object".into(),
            })
        }
    }
    let value = if value.is_null() {
        Value::Object(Default::default())
    } else {
        value
    };
    serde_json::from_value(value).map_err(|e| {
        // serde quotes the values it refuses (`unknown variant `...``): one line.
        let message = one_line(&e.to_string());
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| {
                message.starts_with("missing field") || message.starts_with("unknown field")
            })
            .map(str::to_string);
        StrictError { field, message }
    })
}

/// Parse a JSON body as `T`, refusing unknown top-level fields.
pub fn from_slice<T: DeserializeOwned + JsonSchema>(bytes: &[u8]) -> Result<T, StrictError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| StrictError {
        field: None,
        message: one_line(&format!("invalid JSON: {e}")),
    })?;
    from_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RunRequest;

    #[test]
    fn flattened_fields_are_known_and_typos_get_a_suggestion() {
        let ok: RunRequest =
            from_slice(br#"{"argv": ["true"], "memory": "1GB", "max_output": 100}"#).unwrap();
        assert_eq!(ok.options.limits.memory.unwrap().as_str(), "1GB");
        let e = from_slice::<RunRequest>(br#"{"argv": ["true"], "memroy": "1GB"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("memroy"));
        assert!(e.message.contains("did you mean `memory`?"), "{e}");
        let e = from_slice::<RunRequest>(br#"{"argv": ["true"], "zzzzzzzzzz": 1}"#).unwrap_err();
        assert!(e.message.contains("known fields:"), "{e}");
    }

    #[test]
    fn nested_files_refuse_unknown_fields_too() {
        let e = from_slice::<RunRequest>(
            br#"{"argv": ["true"], "files": [{"path": "a", "content": "", "mode": 1}]}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("mode"), "{e}");
        assert!(from_slice::<RunRequest>(b"[1]").is_err());
        assert!(from_slice::<RunRequest>(b"{")
            .unwrap_err()
            .message
            .starts_with("invalid JSON"));
    }

    #[test]
    fn document_schemas_close_the_object() {
        let schema = schema_for::<RunRequest>();
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
        assert!(schema["properties"].get("memory").is_some(), "{schema}");
    }
}
