//! The built-in profiles: `profiles/*.yaml`, embedded at build time.
//!
//! Each is a commented example of the DSL. `default` states every default explicitly;
//! the language profiles extend it. Built-ins may extend only other built-ins, and
//! appear in error messages as `builtin/NAME.yaml`.

use std::sync::Arc;

use crate::error::{did_you_mean, PolicyError};
use crate::extends::{Base, Layer, Loader};
use crate::profile::Profile;

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";

const BUILTINS: &[(&str, &str)] = &[
    ("default", include_str!("../../../profiles/default.yaml")),
    (
        "python-dev",
        include_str!("../../../profiles/python-dev.yaml"),
    ),
    (
        "python-data",
        include_str!("../../../profiles/python-data.yaml"),
    ),
    ("node-dev", include_str!("../../../profiles/node-dev.yaml")),
    ("go-dev", include_str!("../../../profiles/go-dev.yaml")),
    ("rust-dev", include_str!("../../../profiles/rust-dev.yaml")),
    ("java-dev", include_str!("../../../profiles/java-dev.yaml")),
    ("strict", include_str!("../../../profiles/strict.yaml")),
    ("minimal", include_str!("../../../profiles/minimal.yaml")),
    ("e2b", include_str!("../../../profiles/e2b.yaml")),
];

const NAMES: &[&str] = &[
    "default",
    "python-dev",
    "python-data",
    "node-dev",
    "go-dev",
    "rust-dev",
    "java-dev",
    "strict",
    "minimal",
    "e2b",
];

/// Names of the built-in profiles, `default` first.
pub fn builtin_names() -> &'static [&'static str] {
    NAMES
}

/// The YAML text of a built-in profile.
pub fn builtin_source(name: &str) -> Option<&'static str> {
    BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// Loads and validates a built-in profile.
pub fn load_builtin(name: &str) -> Result<Profile, PolicyError> {
    let text = builtin_source(name).ok_or_else(|| PolicyError::UnknownBuiltin {
        name: crate::error::shown(name),
        hint: format!(
            "{} (built-in profiles: {})",
            did_you_mean(name, NAMES.iter().copied()),
            NAMES.join(", ")
        ),
    })?;
    Loader::new().load(layer(name, text))
}

/// A built-in profile as a layer for the loader.
pub(crate) fn layer(name: &str, text: &str) -> Layer {
    Layer {
        text: text.to_string(),
        file: Arc::from(format!("builtin/{name}.yaml")),
        identity: format!("builtin:{name}"),
        base: Base::Builtin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sources_agree() {
        assert_eq!(NAMES.len(), BUILTINS.len());
        for (name, (table_name, _)) in NAMES.iter().zip(BUILTINS) {
            assert_eq!(name, table_name);
        }
        assert_eq!(builtin_names()[0], DEFAULT_PROFILE);
    }

    #[test]
    fn unknown_builtin_suggests_the_closest() {
        let err = load_builtin("pyhton-dev").unwrap_err().to_string();
        assert!(err.contains("did you mean `python-dev`"), "{err}");
    }
}
