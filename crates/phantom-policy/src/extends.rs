//! `extends:` — finding a profile's parents and merging it over them.
//!
//! `extends:` names a built-in profile (`python-dev`) or a path to a `.yaml` file,
//! relative to the extending file (built-ins may extend only built-ins). The child's
//! tree is deep-merged over the parent's: mappings merge key by key, every other value
//! (lists included) replaces the parent's; `profile`, `description` and `extends` are
//! never inherited. Each file in the chain must be a valid profile on its own, so an
//! error in a parent is reported in the parent even when the child overrides the key.
//! A chain that comes back to a file it has already read is an error, as is a chain
//! longer than [`MAX_EXTENDS`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{did_you_mean, shown, PolicyError};
use crate::profile::{Profile, MAX_EXTENDS};
use crate::schema::{invalid, top_level_error, wrong_type};
use crate::yaml::{self, Node, Value};

/// Where a policy text came from, which decides what `extends:` may name.
#[derive(Debug, Clone)]
pub(crate) enum Base {
    /// A built-in profile: it may extend only other built-ins.
    Builtin,
    /// A file (or text said to be one): relative `extends:` paths start in this directory.
    Dir(PathBuf),
}

/// Follows `extends:` chains; see the module docs.
pub(crate) struct Loader {
    /// (identity, display name) of every file being loaded, outermost first.
    chain: Vec<(String, String)>,
}

/// One policy text to load.
pub(crate) struct Layer {
    pub text: String,
    pub file: Arc<str>,
    /// What makes two layers the same file (a canonical path, `builtin:NAME`).
    pub identity: String,
    pub base: Base,
}

impl Loader {
    pub fn new() -> Self {
        Loader { chain: Vec::new() }
    }

    /// Loads `layer` and everything it extends, and validates the result.
    pub fn load(&mut self, layer: Layer) -> Result<Profile, PolicyError> {
        let tree = self.tree(layer)?;
        Profile::from_tree(&tree)
    }

    /// The merged tree of `layer` over its ancestors.
    fn tree(&mut self, layer: Layer) -> Result<Node, PolicyError> {
        let root = yaml::parse(&layer.text, &layer.file)?;
        self.merged(root, layer)
    }

    /// `root` (the tree of `layer`, or a config.yaml profile translated into the DSL)
    /// merged over its ancestors.
    pub(crate) fn merged(&mut self, root: Node, layer: Layer) -> Result<Node, PolicyError> {
        let Value::Map(entries) = &root.value else {
            return Err(top_level_error(&root));
        };
        let Some((_, extends)) = entries.iter().find(|(k, _)| key_is(k, "extends")) else {
            return Ok(root);
        };
        let Value::Str(parent_name) = &extends.value else {
            return Err(wrong_type(
                extends,
                "extends",
                "a profile name or a path to a .yaml file",
            ));
        };
        let parent = resolve_parent(parent_name, &layer.base, extends)?;
        if self.chain.is_empty() {
            self.chain
                .push((layer.identity.clone(), layer.file.to_string()));
        }
        if let Some(start) = self.chain.iter().position(|(id, _)| *id == parent.identity) {
            let mut names: Vec<&str> = self.chain[start..]
                .iter()
                .map(|(_, name)| name.as_str())
                .collect();
            names.push(&parent.file);
            return Err(PolicyError::ExtendsCycle {
                at: extends.pos.source(),
                chain: names.join(" -> "),
            });
        }
        if self.chain.len() > MAX_EXTENDS {
            return Err(invalid(
                extends,
                "extends",
                format!("the extends chain is longer than {MAX_EXTENDS} profiles"),
            ));
        }
        self.chain
            .push((parent.identity.clone(), parent.file.to_string()));
        let parent_tree = self.tree(parent)?;
        self.chain.pop();
        // Each ancestor must be a valid profile by itself, so that an error in it is
        // reported even when the child happens to override the bad key.
        Profile::from_tree(&parent_tree)?;
        Ok(merge_profile(parent_tree, root))
    }
}

/// Finds and reads the parent named by `extends: NAME`.
fn resolve_parent(name: &str, base: &Base, extends: &Node) -> Result<Layer, PolicyError> {
    let looks_like_path = name.contains('/') || name.ends_with(".yaml") || name.ends_with(".yml");
    if !looks_like_path {
        let Some(text) = crate::builtin::builtin_source(name) else {
            return Err(PolicyError::UnknownProfile {
                at: extends.pos.source(),
                name: shown(name),
                hint: format!(
                    "{} (built-in profiles: {}; to extend a file, write a path such as ./base.yaml)",
                    did_you_mean(name, crate::builtin::builtin_names().iter().copied()),
                    crate::builtin::builtin_names().join(", ")
                ),
            });
        };
        return Ok(crate::builtin::layer(name, text));
    }
    let Base::Dir(dir) = base else {
        return Err(invalid(
            extends,
            "extends",
            "a built-in profile can extend only other built-in profiles".into(),
        ));
    };
    let path = dir.join(name);
    let text = read_policy_file(&path).map_err(|e| invalid(extends, "extends", e.to_string()))?;
    Ok(Layer {
        text,
        file: Arc::from(path.display().to_string()),
        identity: identity_of(&path),
        base: Base::Dir(parent_dir(&path)),
    })
}

/// What makes two paths the same file, for cycle detection.
pub(crate) fn identity_of(path: &Path) -> String {
    match std::fs::canonicalize(path) {
        Ok(real) => format!("file:{}", real.display()),
        Err(_) => format!("name:{}", path.display()),
    }
}

/// The directory relative `extends:` paths of `path` start from.
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Reads a policy file: a regular file (never a FIFO or device, which could block or
/// never end) of at most [`yaml::MAX_POLICY_BYTES`] of UTF-8.
pub(crate) fn read_policy_file(path: &Path) -> Result<String, PolicyError> {
    use std::io::{Error, ErrorKind, Read};
    let file_name = shown(&path.display().to_string());
    let read_error = |error: Error| PolicyError::Read {
        file: file_name.clone(),
        error,
    };
    // Opened first, without blocking (a FIFO put at the path would hold an open for
    // a writer forever), and its type checked on what was opened, not on the path: a
    // file swapped in between cannot pass.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(read_error)?
    };
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(read_error(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let limit = yaml::MAX_POLICY_BYTES as u64;
    let too_large = |size: u64| PolicyError::TooLarge {
        file: file_name.clone(),
        size,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes)
        .map_err(|_| read_error(Error::new(ErrorKind::InvalidData, "not UTF-8 text")))
}

/// The child's tree over the parent's: mappings merge key by key, anything else
/// replaces. `profile`, `description` and `extends` of the parent are dropped.
pub(crate) fn merge_profile(parent: Node, child: Node) -> Node {
    let mut parent = parent;
    if let Value::Map(entries) = &mut parent.value {
        entries.retain(|(k, _)| {
            !["profile", "description", "extends"]
                .iter()
                .any(|n| key_is(k, n))
        });
    }
    merge(parent, child)
}

fn merge(parent: Node, child: Node) -> Node {
    let pos = child.pos;
    let value = match (parent.value, child.value) {
        (Value::Map(mut merged), Value::Map(child_entries)) => {
            for (key, value) in child_entries {
                let existing = match &key.value {
                    Value::Str(name) => merged.iter().position(|(k, _)| key_is(k, name)),
                    _ => None,
                };
                match existing {
                    Some(i) => {
                        let (_, old) = merged.remove(i);
                        merged.insert(i, (key, merge(old, value)));
                    }
                    None => merged.push((key, value)),
                }
            }
            Value::Map(merged)
        }
        (_, value) => value,
    };
    Node { value, pos }
}

fn key_is(key: &Node, name: &str) -> bool {
    matches!(&key.value, Value::Str(s) if s == name)
}
