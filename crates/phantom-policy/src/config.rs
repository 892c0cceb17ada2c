//! `config.yaml`: profiles in the seed README's short form, defaults for the front ends,
//! and the environment variables that find the file and override its defaults.
//!
//! ```yaml
//! default_profile: my-python     # the profile when --profile is not given
//! debug: false                   # what --verbose does (AISBX_DEBUG)
//! api_port: 8080                 # phantom-supervisor's --bind 127.0.0.1:PORT (AISBX_API_PORT)
//! profiles:
//!   - name: my-python
//!     driver: native             # the only driver; bwrap, chroot and lima are refused
//!     extends: python-dev        # any key of the policy DSL may be written here too
//!     cpu: 1.0                   # resources.cpu
//!     memory: 512MB              # resources.memory
//!     network:
//!       enabled: false           # false: network.mode none; true: the profile's own mode
//!     mounts:                    # filesystem.binds
//!       - source: ./data         # relative to the config file's directory
//!         target: /data
//!         mode: ro               # ro (default) | rw
//!     environment:               # env
//!       FOO: bar
//!     seccomp: profiles/custom.json   # an OCI/Docker seccomp profile -> security.seccomp
//! ```
//!
//! A config profile IS a policy-DSL profile: [`Config::parse`] translates each short key
//! into the DSL key named beside it, keeps the DSL's own keys (`description`, `extends`,
//! `mode`, `runtime`, `security`, `performance`, `resources`, `filesystem`, `env`, and
//! `network.mode/allow/deny/allow_reserved`) as they are, and loads the result with the
//! same validation as a policy file, so every mistake is `file:line:column: key: what is
//! wrong (how to fix it)`. Writing a value both ways (`cpu` and `resources.cpu`) is an
//! error. Without `extends:` a config profile starts from the DSL's defaults (those of
//! the built-in `default`). `extends:` names a built-in, a DSL file (a path, relative to
//! the config file), or a profile defined above it in the same file. A config profile
//! may not take a built-in profile's name: `extends: python-dev` builds on one.
//!
//! `seccomp:` reads an OCI seccomp profile (`defaultAction`, `syscalls: [{names,
//! action}]`): `SCMP_ACT_ALLOW` as the default keeps phantom's denylist and adds the
//! names of entries whose action denies (`SCMP_ACT_ERRNO`, `SCMP_ACT_KILL*`,
//! `SCMP_ACT_TRAP`); a denying default becomes `default: deny` with the `SCMP_ACT_ALLOW`
//! entries as the allowlist. Denied syscalls fail with EPERM (or kill the process at
//! `security.level: high`). What the DSL cannot express is refused, at its place in the
//! JSON file: argument conditions (`args`), `includes`/`excludes`, other errno values,
//! `SCMP_ACT_LOG/TRACE/NOTIFY`, names that are not syscalls on this architecture.
//! `architectures` and `archMap` are accepted: the filter is built for the architecture
//! phantom was built for. `clone3` is dropped from either list: phantom always answers
//! it ENOSYS.
//!
//! Where the file is: [`locate`]. Which values win: [`Settings`].

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{closest, did_you_mean, shown, PolicyError, SourcePos};
use crate::extends::{self, Base, Layer, Loader};
use crate::profile::Profile;
use crate::schema::{invalid, wrong_type};
use crate::yaml::{self, Node, Pos, Value};

const TOP_KEYS: &[&str] = &["profiles", "default_profile", "debug", "api_port"];
/// The seed's short keys.
const SHORT_KEYS: &[&str] = &[
    "name",
    "driver",
    "cpu",
    "memory",
    "network",
    "mounts",
    "environment",
    "seccomp",
];
/// The policy DSL's keys a config profile may also carry (`profile` is `name` here).
const DSL_KEYS: &[&str] = &[
    "description",
    "extends",
    "mode",
    "runtime",
    "security",
    "performance",
    "resources",
    "filesystem",
    "env",
];
const NETWORK_KEYS: &[&str] = &["enabled", "mode", "allow", "deny", "allow_reserved"];
const MOUNT_KEYS: &[&str] = &["source", "target", "mode"];
const MOUNT_MODES: &[(&str, &str)] = &[
    ("ro", "read-only"),
    ("rw", "read-write"),
    ("read-only", "read-only"),
    ("read-write", "read-write"),
];
/// Drivers of the seed: only `native` is ours.
const DRIVERS: &[&str] = &["native", "bwrap", "chroot", "lima"];

const OCI_KEYS: &[&str] = &[
    "defaultAction",
    "defaultErrnoRet",
    "architectures",
    "archMap",
    "syscalls",
];
const OCI_SYSCALL_KEYS: &[&str] = &[
    "names", "name", "action", "args", "errnoRet", "comment", "includes", "excludes",
];
const OCI_ALLOW: &[&str] = &["SCMP_ACT_ALLOW"];
const OCI_DENY: &[&str] = &[
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
];
const OCI_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_NOTIFY",
];

/// A read and validated config.yaml.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file, as an absolute path.
    pub file: PathBuf,
    /// How it was found: the variable that named it, or `XDG_CONFIG_HOME` / `HOME`.
    pub found_by: String,
    /// Its profiles, in file order.
    pub profiles: Vec<ConfigProfile>,
    /// `default_profile:` and where it was written.
    pub default_profile: Option<(String, SourcePos)>,
    /// `debug:`.
    pub debug: Option<(bool, SourcePos)>,
    /// `api_port:`.
    pub api_port: Option<(u16, SourcePos)>,
}

/// One profile of a config.yaml.
#[derive(Debug, Clone)]
pub struct ConfigProfile {
    pub name: String,
    /// The profile, loaded and validated like a policy file.
    pub profile: Profile,
    /// Where its entry starts.
    pub at: SourcePos,
    /// Its entry as written (for `phantom profile show`).
    pub text: String,
    /// Its DSL tree merged over its ancestors: what a later profile of the same file
    /// that extends it is merged over.
    tree: Node,
}

impl Config {
    /// The profile named `name`, if the file defines one.
    pub fn profile(&self, name: &str) -> Option<&ConfigProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Names of its profiles, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.profiles.iter().map(|p| p.name.as_str()).collect()
    }

    /// Reads and validates `path` (made absolute against the current directory).
    pub fn load(path: &Path, found_by: &str) -> Result<Config, PolicyError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let text = extends::read_policy_file(&path)?;
        Config::parse(&text, &path, found_by)
    }

    /// Validates config text said to come from `path` (absolute): relative mount
    /// sources, `seccomp:` files and `extends:` paths start in its directory.
    pub fn parse(text: &str, path: &Path, found_by: &str) -> Result<Config, PolicyError> {
        let file: Arc<str> = Arc::from(path.display().to_string());
        let dir = extends::parent_dir(path);
        let root = yaml::parse(text, &file)?;
        let mut config = Config {
            file: path.to_path_buf(),
            found_by: found_by.to_string(),
            profiles: Vec::new(),
            default_profile: None,
            debug: None,
            api_port: None,
        };
        let entries = match &root.value {
            Value::Null => return Ok(config),
            Value::Map(entries) => entries,
            _ => return Err(wrong_type(&root, "config", "a mapping with `profiles:`")),
        };
        let mut errors = Vec::new();
        let mut default_node = None;
        for (key, value) in entries {
            let Some(name) = known_key(key, TOP_KEYS, "at the top level", &mut errors) else {
                continue;
            };
            match name {
                "profiles" => {
                    let items = match &value.value {
                        Value::Seq(items) => items.as_slice(),
                        Value::Null => &[],
                        _ => {
                            errors.push(wrong_type(value, "profiles", "a list of profiles"));
                            continue;
                        }
                    };
                    for (i, item) in items.iter().enumerate() {
                        match profile_entry(item, i, &dir, &file, text, &config.profiles) {
                            Ok(p) => {
                                if let Some(first) = config.profile(&p.name) {
                                    errors.push(PolicyError::InvalidValue {
                                        at: p.at.clone(),
                                        field: format!("profiles[{i}].name"),
                                        message: format!(
                                            "`{}` is defined twice (first at line {}); give each profile its own name",
                                            p.name, first.at.line
                                        ),
                                    });
                                } else {
                                    config.profiles.push(p);
                                }
                            }
                            Err(e) => errors.push(e),
                        }
                    }
                }
                "default_profile" => match &value.value {
                    Value::Str(s) => {
                        config.default_profile = Some((s.clone(), value.pos.source()));
                        default_node = Some(value);
                    }
                    _ => errors.push(wrong_type(value, "default_profile", "a profile name")),
                },
                "debug" => match value.value {
                    Value::Bool(b) => config.debug = Some((b, value.pos.source())),
                    _ => errors.push(wrong_type(value, "debug", "true or false")),
                },
                "api_port" => match &value.value {
                    Value::Int(i) if (0..=65535).contains(i) => {
                        config.api_port = Some((*i as u16, value.pos.source()))
                    }
                    _ => errors.push(wrong_type(value, "api_port", "a port number (0 to 65535)")),
                },
                _ => unreachable!("known_key returns listed keys"),
            }
        }
        if let (Some((name, _)), Some(node)) = (&config.default_profile, default_node) {
            if let Err(hint) = profile_exists(name, Some(&config)) {
                errors.push(invalid(
                    node,
                    "default_profile",
                    format!("`{}` is not a profile{hint}", shown(name)),
                ));
            }
        }
        match PolicyError::from_list(errors) {
            Some(e) => Err(e),
            None => Ok(config),
        }
    }
}

/// Ok when `name` is a built-in or a profile of `config`; else the hint of an error.
fn profile_exists(name: &str, config: Option<&Config>) -> Result<(), String> {
    if crate::builtin::builtin_source(name).is_some()
        || config.is_some_and(|c| c.profile(name).is_some())
    {
        return Ok(());
    }
    let mut names: Vec<&str> = crate::builtin::builtin_names().to_vec();
    let ours = config.map(Config::names).unwrap_or_default();
    names.extend(ours.iter().copied());
    let mut hint = did_you_mean(name, names.iter().copied());
    hint.push_str(&format!(
        " (built-in profiles: {}",
        crate::builtin::builtin_names().join(", ")
    ));
    match config {
        Some(c) if ours.is_empty() => {
            hint.push_str(&format!("; {} defines none", c.file.display()))
        }
        Some(c) => hint.push_str(&format!("; {}: {}", c.file.display(), ours.join(", "))),
        None => hint.push_str(
            "; no config.yaml was found: AISBX_CONFIG_PATH, PHANTOM_CONFIG, $XDG_CONFIG_HOME/phantom/config.yaml",
        ),
    }
    hint.push(')');
    Err(hint)
}

/// Loads a profile by name: a built-in, else one of `config`'s.
pub fn load_named(name: &str, config: Option<&Config>) -> Result<Profile, PolicyError> {
    if crate::builtin::builtin_source(name).is_some() {
        return crate::builtin::load_builtin(name);
    }
    match config.and_then(|c| c.profile(name)) {
        Some(p) => Ok(p.profile.clone()),
        None => Err(PolicyError::UnknownNamedProfile {
            name: shown(name),
            hint: profile_exists(name, config).err().unwrap_or_default(),
        }),
    }
}

/// The name of a mapping key that is one of `keys`, or `None` after noting why not.
fn known_key<'k>(
    key: &Node,
    keys: &[&'k str],
    section: &str,
    errors: &mut Vec<PolicyError>,
) -> Option<&'k str> {
    let Value::Str(name) = &key.value else {
        errors.push(wrong_type(key, "config", "a key name"));
        return None;
    };
    if let Some(k) = keys.iter().find(|k| **k == name) {
        return Some(k);
    }
    let hint = match closest(name, keys.iter().copied()) {
        Some(c) => format!(" (did you mean `{c}`?)"),
        None => format!(" (valid keys: {})", keys.join(", ")),
    };
    errors.push(PolicyError::UnknownKey {
        at: key.pos.source(),
        key: shown(name),
        section: section.to_string(),
        hint,
    });
    None
}

fn str_node(text: &str, pos: &Pos) -> Node {
    Node {
        value: Value::Str(text.to_string()),
        pos: pos.clone(),
    }
}

/// The tree of a DSL profile being built from a config entry.
struct Tree {
    entries: Vec<(Node, Node)>,
}

impl Tree {
    fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.entries
            .iter_mut()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map(|(_, v)| v)
    }

    /// Puts `section.key: value` into the tree; an error when the DSL form already set it.
    fn insert(
        &mut self,
        section: &str,
        key: &str,
        short: &Node,
        value: Node,
        short_name: &str,
    ) -> Result<(), PolicyError> {
        if self.get_mut(section).is_none() {
            self.entries.push((
                str_node(section, &short.pos),
                Node {
                    value: Value::Map(Vec::new()),
                    pos: short.pos.clone(),
                },
            ));
        }
        let node = self.get_mut(section).expect("just made");
        let Value::Map(entries) = &mut node.value else {
            // The DSL section has the wrong type: its own error says so.
            return Ok(());
        };
        if entries
            .iter()
            .any(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
        {
            return Err(PolicyError::InvalidValue {
                at: short.pos.source(),
                field: short_name.to_string(),
                message: format!("`{section}.{key}` is set too; keep one of the two"),
            });
        }
        entries.push((str_node(key, &short.pos), value));
        Ok(())
    }
}

/// One entry of `profiles:` → its validated profile.
fn profile_entry(
    item: &Node,
    i: usize,
    dir: &Path,
    file: &Arc<str>,
    text: &str,
    earlier: &[ConfigProfile],
) -> Result<ConfigProfile, PolicyError> {
    let here = format!("profiles[{i}]");
    let Value::Map(entries) = &item.value else {
        return Err(wrong_type(
            item,
            &here,
            "a mapping with `name:` (e.g. `- name: my-python`)",
        ));
    };
    let mut errors = Vec::new();
    let mut tree = Tree {
        entries: Vec::new(),
    };
    let mut name = None;
    let mut short = Vec::new();
    let all: Vec<&str> = SHORT_KEYS.iter().chain(DSL_KEYS).copied().collect();
    for (key, value) in entries {
        let Some(k) = known_key(key, &all, &format!("in `{here}`"), &mut errors) else {
            continue;
        };
        match k {
            "name" => match &value.value {
                Value::Str(s) => {
                    name = Some(s.clone());
                    tree.entries
                        .push((str_node("profile", &key.pos), value.clone()));
                }
                _ => errors.push(wrong_type(value, &format!("{here}.name"), "a profile name")),
            },
            "network" => {
                let Value::Map(net) = &value.value else {
                    errors.push(wrong_type(
                        value,
                        &format!("{here}.network"),
                        "a mapping, e.g. {enabled: false}",
                    ));
                    continue;
                };
                let mut dsl = Vec::new();
                for (nk, nv) in net {
                    match known_key(
                        nk,
                        NETWORK_KEYS,
                        &format!("in `{here}.network`"),
                        &mut errors,
                    ) {
                        Some("enabled") => short.push(("network.enabled", nk, nv)),
                        Some(_) => dsl.push((nk.clone(), nv.clone())),
                        None => {}
                    }
                }
                tree.entries.push((
                    key.clone(),
                    Node {
                        value: Value::Map(dsl),
                        pos: value.pos.clone(),
                    },
                ));
            }
            k if DSL_KEYS.contains(&k) => tree.entries.push((key.clone(), value.clone())),
            k => short.push((k, key, value)),
        }
    }
    let Some(name) = name else {
        errors.push(PolicyError::MissingKey {
            at: item.pos.source(),
            key: format!("{here}.name"),
            hint: "every profile names itself, e.g. `- name: my-python`".into(),
        });
        return Err(PolicyError::from_list(errors).expect("one error at least"));
    };
    let name_pos = entries
        .iter()
        .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == "name"))
        .map(|(_, v)| v.pos.source())
        .unwrap_or_else(|| item.pos.source());
    if crate::builtin::builtin_source(&name).is_some() {
        errors.push(PolicyError::InvalidValue {
            at: name_pos.clone(),
            field: format!("{here}.name"),
            message: format!(
                "`{name}` is a built-in profile; give yours another name (and `extends: {name}` to build on it)"
            ),
        });
    }
    for (k, key, value) in short {
        let field = format!("{here}.{k}");
        let result = match k {
            "driver" => driver(value, &field),
            "cpu" => tree.insert("resources", "cpu", key, value.clone(), &field),
            "memory" => tree.insert("resources", "memory", key, value.clone(), &field),
            "network.enabled" => match value.value {
                Value::Bool(false) => {
                    tree.insert("network", "mode", key, str_node("none", &value.pos), &field)
                }
                // true: the network mode the profile has anyway (loopback-only unless
                // `extends:` or `network.mode` say otherwise).
                Value::Bool(true) => Ok(()),
                _ => Err(wrong_type(value, &field, "true or false")),
            },
            "mounts" => mounts(value, &field, dir, &mut errors)
                .and_then(|binds| tree.insert("filesystem", "binds", key, binds, &field)),
            "environment" => match tree.get_mut("env") {
                Some(_) => Err(invalid(
                    key,
                    &field,
                    "`env` is set too; keep one of the two".into(),
                )),
                None => {
                    tree.entries
                        .push((str_node("env", &key.pos), value.clone()));
                    Ok(())
                }
            },
            "seccomp" => seccomp_file(value, &field, dir)
                .and_then(|seccomp| tree.insert("security", "seccomp", key, seccomp, &field)),
            _ => unreachable!("short keys are listed"),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if let Some(e) = PolicyError::from_list(errors) {
        return Err(e);
    }
    let root = Node {
        value: Value::Map(tree.entries),
        pos: item.pos.clone(),
    };
    let tree = match sibling_parent(&tree_entries(&root), earlier)? {
        // `extends:` a profile defined above in this file: merged over its tree as over
        // a parent file's (the child's own `extends` key was taken out).
        Some((parent, rest)) => extends::merge_profile(
            parent.tree.clone(),
            Node {
                value: Value::Map(rest),
                pos: root.pos.clone(),
            },
        ),
        None => Loader::new().merged(
            root,
            Layer {
                text: String::new(),
                file: Arc::clone(file),
                identity: format!("config:{file}#{name}"),
                base: Base::Dir(dir.to_path_buf()),
            },
        )?,
    };
    let profile = Profile::from_tree(&tree)?;
    Ok(ConfigProfile {
        at: name_pos,
        text: entry_text(text, item),
        name,
        profile,
        tree,
    })
}

fn tree_entries(root: &Node) -> Vec<(Node, Node)> {
    match &root.value {
        Value::Map(entries) => entries.clone(),
        _ => Vec::new(),
    }
}

/// A profile of the same file that a child extends, and the child's entries without
/// `extends`.
type SiblingParent<'e> = (&'e ConfigProfile, Vec<(Node, Node)>);

/// When `extends:` names a profile of this file (not a built-in, not a path): that
/// profile and the child's entries without `extends`. A name that is none of the three
/// is an error that lists what it could be.
fn sibling_parent<'e>(
    entries: &[(Node, Node)],
    earlier: &'e [ConfigProfile],
) -> Result<Option<SiblingParent<'e>>, PolicyError> {
    let Some(i) = entries
        .iter()
        .position(|(k, _)| matches!(&k.value, Value::Str(s) if s == "extends"))
    else {
        return Ok(None);
    };
    let Value::Str(parent) = &entries[i].1.value else {
        return Ok(None);
    };
    let path_like = parent.contains('/') || parent.ends_with(".yaml") || parent.ends_with(".yml");
    if path_like || crate::builtin::builtin_source(parent).is_some() {
        return Ok(None);
    }
    match earlier.iter().find(|p| p.name == *parent) {
        Some(p) => {
            let mut rest = entries.to_vec();
            rest.remove(i);
            Ok(Some((p, rest)))
        }
        None => {
            let mut names: Vec<&str> = crate::builtin::builtin_names().to_vec();
            names.extend(earlier.iter().map(|p| p.name.as_str()));
            Err(invalid(
                &entries[i].1,
                "extends",
                format!(
                    "`{}` is neither a built-in profile nor one defined above in this file{} (to extend a file, write a path such as ./base.yaml)",
                    shown(parent),
                    did_you_mean(parent, names.iter().copied())
                ),
            ))
        }
    }
}

/// The lines of `text` that hold a `profiles:` entry: from its first line to the line
/// before the next line indented as little or less.
fn entry_text(text: &str, item: &Node) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let first = (item.pos.line as usize).saturating_sub(1);
    if first >= lines.len() {
        return String::new();
    }
    // The `-` is two columns left of the first key in the usual style.
    let dash = lines[first].find('-').unwrap_or(0);
    let mut end = first + 1;
    while end < lines.len() {
        let line = lines[end];
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && !line.trim_start().starts_with('#') && indent <= dash {
            break;
        }
        end += 1;
    }
    let mut out = lines[first..end].join("\n");
    out.push('\n');
    out
}

fn driver(value: &Node, field: &str) -> Result<(), PolicyError> {
    let Value::Str(d) = &value.value else {
        return Err(wrong_type(value, field, "native"));
    };
    match d.as_str() {
        "native" => Ok(()),
        "bwrap" | "chroot" | "lima" => Err(invalid(
            value,
            field,
            format!("`{d}` is not a driver of phantom: its native engine is the Linux driver (namespaces, seccomp, Landlock and cgroups, with nothing else to install), and lima's VM has no equivalent; write `driver: native` or leave the key out"),
        )),
        other => Err(invalid(
            value,
            field,
            format!(
                "`{}` is not a driver; write `native` or leave the key out{}",
                shown(other),
                did_you_mean(other, DRIVERS.iter().copied())
            ),
        )),
    }
}

/// `mounts:` → the DSL's `filesystem.binds` list.
fn mounts(
    value: &Node,
    field: &str,
    dir: &Path,
    errors: &mut Vec<PolicyError>,
) -> Result<Node, PolicyError> {
    let Value::Seq(items) = &value.value else {
        return Err(wrong_type(
            value,
            field,
            "a list, e.g. [{source: ./data, target: /data, mode: ro}]",
        ));
    };
    let mut binds = Vec::new();
    for (j, item) in items.iter().enumerate() {
        let here = format!("{field}[{j}]");
        let Value::Map(entries) = &item.value else {
            errors.push(wrong_type(
                item,
                &here,
                "a mapping with source, target and mode",
            ));
            continue;
        };
        let mut bind = Vec::new();
        for (k, v) in entries {
            match known_key(k, MOUNT_KEYS, &format!("in `{here}`"), errors) {
                Some("source") => match &v.value {
                    Value::Str(s) => match host_path(dir, s) {
                        Ok(p) => bind.push((str_node("source", &k.pos), str_node(&p, &v.pos))),
                        Err(m) => errors.push(invalid(v, &format!("{here}.source"), m)),
                    },
                    _ => errors.push(wrong_type(v, &format!("{here}.source"), "a path")),
                },
                Some("target") => bind.push((str_node("target", &k.pos), v.clone())),
                Some("mode") => {
                    let found = match &v.value {
                        Value::Str(s) => MOUNT_MODES.iter().find(|(w, _)| w == s),
                        _ => None,
                    };
                    match found {
                        Some((_, access)) => {
                            bind.push((str_node("access", &k.pos), str_node(access, &v.pos)))
                        }
                        None => errors.push(invalid(
                            v,
                            &format!("{here}.mode"),
                            format!("expected ro or rw, found {}", v.value.describe()),
                        )),
                    }
                }
                _ => {}
            }
        }
        binds.push(Node {
            value: Value::Map(bind),
            pos: item.pos.clone(),
        });
    }
    Ok(Node {
        value: Value::Seq(binds),
        pos: value.pos.clone(),
    })
}

/// A mount source on the host: absolute, or relative to the config file's directory;
/// `.` and `..` resolved by name.
fn host_path(dir: &Path, text: &str) -> Result<String, String> {
    if text.is_empty() || text.chars().any(char::is_control) {
        return Err(format!("`{}` is not a usable path", shown(text)));
    }
    if text.starts_with('~') {
        return Err(format!(
            "`{}`: `~` is not expanded; write an absolute path or one relative to the config file's directory",
            shown(text)
        ));
    }
    let joined = dir.join(text);
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.components() {
        match c {
            Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| format!("`{}` is not UTF-8", shown(text)))?,
            ),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if !joined.is_absolute() {
        return Err(format!(
            "`{}`: the config file's directory is not known; write an absolute path",
            shown(text)
        ));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// `seccomp: FILE` → the DSL's `security.seccomp` mapping, read from an OCI profile.
fn seccomp_file(value: &Node, field: &str, dir: &Path) -> Result<Node, PolicyError> {
    let Value::Str(name) = &value.value else {
        return Err(wrong_type(
            value,
            field,
            "the path of an OCI seccomp JSON file",
        ));
    };
    let path = dir.join(name);
    let text =
        extends::read_policy_file(&path).map_err(|e| invalid(value, field, e.to_string()))?;
    // JSON is YAML: the YAML reader gives every value its line and column.
    let json_file: Arc<str> = Arc::from(path.display().to_string());
    let root = yaml::parse(&text, &json_file)?;
    oci_seccomp(&root)
}

fn oci_seccomp(root: &Node) -> Result<Node, PolicyError> {
    let Value::Map(entries) = &root.value else {
        return Err(wrong_type(
            root,
            "seccomp profile",
            "a JSON object with defaultAction and syscalls",
        ));
    };
    let mut errors = Vec::new();
    let mut default = None;
    let mut default_seen = false;
    let mut syscalls: &[Node] = &[];
    for (k, v) in entries {
        match known_key(k, OCI_KEYS, "in the seccomp profile", &mut errors) {
            Some("defaultAction") => {
                default_seen = true;
                match action(v, "defaultAction") {
                    Ok(deny) => default = Some((deny, v)),
                    Err(e) => errors.push(e),
                }
            }
            Some("defaultErrnoRet") => errors.extend(errno_one(v, "defaultErrnoRet")),
            Some("architectures") | Some("archMap") if !matches!(v.value, Value::Seq(_)) => {
                errors.push(wrong_type(v, "architectures", "a list"));
            }
            Some("syscalls") => match &v.value {
                Value::Seq(items) => syscalls = items,
                _ => errors.push(wrong_type(v, "syscalls", "a list")),
            },
            _ => {}
        }
    }
    let Some((default_deny, default_node)) = default else {
        if default_seen {
            return Err(PolicyError::from_list(errors).expect("its error"));
        }
        errors.push(PolicyError::MissingKey {
            at: root.pos.source(),
            key: "defaultAction".into(),
            hint: "an OCI seccomp profile says what happens to unlisted syscalls, e.g. \"defaultAction\": \"SCMP_ACT_ERRNO\"".into(),
        });
        return Err(PolicyError::from_list(errors).expect("one error"));
    };
    let arch = crate::seccomp::build_arch().ok();
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for (i, entry) in syscalls.iter().enumerate() {
        let here = format!("syscalls[{i}]");
        let Value::Map(fields) = &entry.value else {
            errors.push(wrong_type(entry, &here, "an object with names and action"));
            continue;
        };
        let mut names = Vec::new();
        let mut entry_deny = None;
        let mut action_seen = false;
        for (k, v) in fields {
            let field = format!(
                "{here}.{}",
                match &k.value {
                    Value::Str(s) => s.as_str(),
                    _ => "?",
                }
            );
            match known_key(k, OCI_SYSCALL_KEYS, &format!("in `{here}`"), &mut errors) {
                Some("names") => match &v.value {
                    Value::Seq(items) => names.extend(items.iter()),
                    _ => errors.push(wrong_type(v, &field, "a list of syscall names")),
                },
                Some("name") => names.push(v),
                Some("action") => {
                    action_seen = true;
                    match action(v, &field) {
                        Ok(d) => entry_deny = Some(d),
                        Err(e) => errors.push(e),
                    }
                }
                Some("args") if !is_empty(v) => {
                    errors.push(invalid(v, &field, "argument conditions cannot be expressed in phantom's seccomp section (it filters by syscall name, plus its own checks on clone, ioctl and personality); remove the entry or its args".into()));
                }
                Some("includes") | Some("excludes") if !is_empty(v) => {
                    errors.push(invalid(v, &field, "conditions on capabilities, architectures or kernel versions cannot be expressed in phantom's seccomp section; remove the entry or the condition".into()));
                }
                Some("errnoRet") => errors.extend(errno_one(v, &field)),
                _ => {}
            }
        }
        let Some(entry_deny) = entry_deny else {
            if action_seen {
                // Its error is noted already.
                continue;
            }
            errors.push(PolicyError::MissingKey {
                at: entry.pos.source(),
                key: format!("{here}.action"),
                hint: "each entry says what happens to its syscalls, e.g. \"action\": \"SCMP_ACT_ALLOW\"".into(),
            });
            continue;
        };
        for n in names {
            let Value::Str(name) = &n.value else {
                errors.push(wrong_type(n, &format!("{here}.names"), "a syscall name"));
                continue;
            };
            if name == "clone3" {
                continue;
            }
            if let Some(arch) = arch {
                if arch.number(name).is_none() {
                    errors.push(invalid(
                        n,
                        &format!("{here}.names"),
                        format!(
                            "`{}` is not a syscall on {}{}",
                            shown(name),
                            arch.name,
                            did_you_mean(name, arch.syscall_names())
                        ),
                    ));
                    continue;
                }
            }
            match (default_deny, entry_deny) {
                // Allowed anyway: no effect in OCI terms either.
                (false, false) => {}
                (_, true) => deny.push(n.clone()),
                (true, false) => allow.push(n.clone()),
            }
        }
    }
    if let Some(e) = PolicyError::from_list(errors) {
        return Err(e);
    }
    let pos = &default_node.pos;
    let list = |items: Vec<Node>| Node {
        value: Value::Seq(items),
        pos: pos.clone(),
    };
    Ok(Node {
        value: Value::Map(vec![
            (
                str_node("default", pos),
                str_node(if default_deny { "deny" } else { "allow" }, pos),
            ),
            (str_node("allow", pos), list(allow)),
            (str_node("deny", pos), list(deny)),
        ]),
        pos: pos.clone(),
    })
}

/// `null`, `[]` or `{}`.
fn is_empty(v: &Node) -> bool {
    match &v.value {
        Value::Null => true,
        Value::Seq(items) => items.is_empty(),
        Value::Map(entries) => entries.is_empty(),
        _ => false,
    }
}

/// Whether an OCI action denies; an error for actions phantom cannot take.
fn action(v: &Node, field: &str) -> Result<bool, PolicyError> {
    let Value::Str(a) = &v.value else {
        return Err(wrong_type(v, field, "an action such as \"SCMP_ACT_ERRNO\""));
    };
    if OCI_ALLOW.contains(&a.as_str()) {
        return Ok(false);
    }
    if OCI_DENY.contains(&a.as_str()) {
        return Ok(true);
    }
    let message = if OCI_ACTIONS.contains(&a.as_str()) {
        format!("`{a}`: phantom cannot log, trace or notify a syscall; use SCMP_ACT_ALLOW or SCMP_ACT_ERRNO")
    } else {
        format!(
            "`{}` is not an action phantom takes (SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, SCMP_ACT_KILL_PROCESS, SCMP_ACT_KILL_THREAD, SCMP_ACT_TRAP){}",
            shown(a),
            upper_did_you_mean(a, OCI_ACTIONS)
        )
    };
    Err(invalid(v, field, message))
}

/// [`did_you_mean`] for upper-case words (`SCMP_ACT_ERRNO`).
fn upper_did_you_mean(word: &str, candidates: &[&str]) -> String {
    let lower: Vec<String> = candidates.iter().map(|c| c.to_ascii_lowercase()).collect();
    closest(word, lower.iter().map(String::as_str))
        .map(|c| format!(" (did you mean `{}`?)", c.to_ascii_uppercase()))
        .unwrap_or_default()
}

/// An errno value other than EPERM (1) cannot be expressed.
fn errno_one(v: &Node, field: &str) -> Option<PolicyError> {
    match v.value {
        Value::Int(1) => None,
        _ => Some(invalid(
            v,
            field,
            format!(
                "phantom's denials return EPERM (1); found {}; remove the key",
                v.value.describe()
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Finding the file and the variables.

/// How the process's environment is read (tests pass a map).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's own environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The value of `AISBX_{suffix}` or `PHANTOM_{suffix}` (empty counts as unset) and the
/// name it came from. Both set to different values is an error naming both.
pub fn variable(env: Env<'_>, suffix: &str) -> Result<Option<(String, String)>, PolicyError> {
    let get = |name: String| env(&name).filter(|v| !v.is_empty()).map(|v| (v, name));
    let aisbx = get(format!("AISBX_{suffix}"));
    let phantom = get(format!("PHANTOM_{suffix}"));
    match (aisbx, phantom) {
        (Some((a, an)), Some((p, pn))) if a != p => Err(PolicyError::Environment {
            variable: format!("{an} and {pn}"),
            message: "both are set, to different values; unset one of them".into(),
        }),
        (Some(a), _) => Ok(Some(a)),
        (None, p) => Ok(p),
    }
}

/// Where config.yaml is: `AISBX_CONFIG_PATH` (or `PHANTOM_CONFIG_PATH`), then
/// `PHANTOM_CONFIG`, then `$XDG_CONFIG_HOME/phantom/config.yaml`, else
/// `$HOME/.config/phantom/config.yaml`. Returns the path, the variable that named it,
/// and whether it must exist (a variable named it).
pub fn locate(env: Env<'_>) -> Result<Option<(PathBuf, String, bool)>, PolicyError> {
    if let Some((path, var)) = variable(env, "CONFIG_PATH")? {
        return Ok(Some((PathBuf::from(path), var, true)));
    }
    if let Some(path) = env("PHANTOM_CONFIG").filter(|v| !v.is_empty()) {
        return Ok(Some((PathBuf::from(path), "PHANTOM_CONFIG".into(), true)));
    }
    if let Some(xdg) = env("XDG_CONFIG_HOME").filter(|v| v.starts_with('/')) {
        let path = Path::new(&xdg).join("phantom/config.yaml");
        return Ok(Some((path, "XDG_CONFIG_HOME".into(), false)));
    }
    if let Some(home) = env("HOME").filter(|v| v.starts_with('/')) {
        let path = Path::new(&home).join(".config/phantom/config.yaml");
        return Ok(Some((path, "HOME".into(), false)));
    }
    Ok(None)
}

/// The config file [`locate`] finds, read and validated; `None` when there is none
/// (a file named by a variable must exist).
pub fn load_from_env(env: Env<'_>) -> Result<Option<Config>, PolicyError> {
    let Some((path, var, required)) = locate(env)? else {
        return Ok(None);
    };
    match Config::load(&path, &var) {
        // The XDG file may be missing, or out of this user's reach (a HOME that is
        // another user's, as under `sudo -u`); a file a variable names must be read.
        Err(PolicyError::Read { error, .. })
            if !required
                && matches!(
                    error.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::NotADirectory
                ) =>
        {
            Ok(None)
        }
        Err(PolicyError::Read { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            if required {
                Err(PolicyError::Environment {
                    variable: var,
                    message: format!(
                        "`{}` does not exist; point it at a config.yaml or unset it",
                        path.display()
                    ),
                })
            } else {
                Ok(None)
            }
        }
        other => other.map(Some),
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (`--profile`).
    Flag(String),
    /// An environment variable, by name.
    Variable(String),
    /// A key of config.yaml.
    File(SourcePos),
    /// Nobody set it.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Variable(name) => write!(f, "env {name}"),
            Origin::File(at) => write!(f, "config {at}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A value and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T: fmt::Debug> fmt::Debug for Sourced<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.value, self.origin)
    }
}

/// The front ends' settings from the environment and config.yaml: a variable wins over
/// the file, and a flag (applied by the front end) over both.
///
/// | setting           | variables                                    | config key        |
/// |-------------------|----------------------------------------------|-------------------|
/// | default profile   | AISBX_DEFAULT_PROFILE, PHANTOM_DEFAULT_PROFILE | `default_profile` |
/// | debug (--verbose) | AISBX_DEBUG, PHANTOM_DEBUG                   | `debug`           |
/// | API port          | AISBX_API_PORT, PHANTOM_API_PORT             | `api_port`        |
/// | API key           | AISBX_API_KEY, PHANTOM_API_KEY               | (never in a file) |
///
/// Both names of a pair set to different values is an error.
#[derive(Clone)]
pub struct Settings {
    pub config: Option<Config>,
    pub default_profile: Option<Sourced<String>>,
    pub debug: Sourced<bool>,
    pub api_port: Option<Sourced<u16>>,
    /// A secret: never printed (its Debug says only where it came from).
    pub api_key: Option<Sourced<String>>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("config", &self.config.as_ref().map(|c| &c.file))
            .field("default_profile", &self.default_profile)
            .field("debug", &self.debug)
            .field("api_port", &self.api_port)
            .field(
                "api_key",
                &self.api_key.as_ref().map(|k| format!("set ({})", k.origin)),
            )
            .finish()
    }
}

impl Settings {
    /// Reads the variables and the config file they find.
    pub fn from_env(env: Env<'_>) -> Result<Settings, PolicyError> {
        let config = load_from_env(env)?;
        let default_profile = match variable(env, "DEFAULT_PROFILE")? {
            Some((name, var)) => {
                if let Err(hint) = profile_exists(&name, config.as_ref()) {
                    return Err(PolicyError::Environment {
                        variable: var,
                        message: format!("`{}` is not a profile{hint}", shown(&name)),
                    });
                }
                Some(Sourced {
                    value: name,
                    origin: Origin::Variable(var),
                })
            }
            None => config
                .as_ref()
                .and_then(|c| c.default_profile.clone())
                .map(|(value, at)| Sourced {
                    value,
                    origin: Origin::File(at),
                }),
        };
        let debug = match variable(env, "DEBUG")? {
            Some((text, var)) => Sourced {
                value: parse_bool(&text).ok_or_else(|| PolicyError::Environment {
                    variable: var.clone(),
                    message: format!(
                        "`{}` is not a boolean; write 1 or 0 (true/false, yes/no, on/off)",
                        shown(&text)
                    ),
                })?,
                origin: Origin::Variable(var),
            },
            None => match config.as_ref().and_then(|c| c.debug.clone()) {
                Some((value, at)) => Sourced {
                    value,
                    origin: Origin::File(at),
                },
                None => Sourced {
                    value: false,
                    origin: Origin::Default,
                },
            },
        };
        let api_port = match variable(env, "API_PORT")? {
            Some((text, var)) => Some(Sourced {
                value: text
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| PolicyError::Environment {
                        variable: var.clone(),
                        message: format!("`{}` is not a port number (0 to 65535)", shown(&text)),
                    })?,
                origin: Origin::Variable(var),
            }),
            None => config
                .as_ref()
                .and_then(|c| c.api_port.clone())
                .map(|(value, at)| Sourced {
                    value,
                    origin: Origin::File(at),
                }),
        };
        let api_key = variable(env, "API_KEY")?.map(|(value, var)| Sourced {
            value,
            origin: Origin::Variable(var),
        });
        Ok(Settings {
            config,
            default_profile,
            debug,
            api_port,
            api_key,
        })
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Barrier, Host, PathKind};
    use crate::plan::{Access, NetworkMode};
    use std::collections::HashMap;

    /// A host with nothing installed and nothing out of reach.
    struct NoHost;

    impl Host for NoHost {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
        fn kind(&self, _: &str) -> PathKind {
            PathKind::Missing
        }
        fn list(&self, _: &str) -> Vec<String> {
            Vec::new()
        }
        fn real_path(&self, _: &str) -> Option<String> {
            None
        }
        fn barrier(&self, _: &str) -> Option<Barrier> {
            None
        }
    }

    const SEED: &str = "profiles:
  - name: my-python
    driver: native
    cpu: 1.5
    memory: 256MB
    network:
      enabled: false
    mounts:
      - source: ./data
        target: /data
        mode: ro
      - source: /srv/out
        target: /out
        mode: rw
    environment:
      FOO: bar
";

    fn parse(text: &str) -> Result<Config, PolicyError> {
        Config::parse(text, Path::new("/etc/phantom/config.yaml"), "test")
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn the_seed_profile_translates_to_the_dsl() {
        let config = parse(SEED).unwrap();
        let p = &config.profile("my-python").unwrap().profile;
        assert_eq!(p.name, "my-python");
        assert_eq!(p.resources.cpu_millis, 1500);
        assert_eq!(p.resources.memory_bytes, 256 << 20);
        assert_eq!(p.network.mode, NetworkMode::None);
        assert_eq!(p.filesystem.binds.len(), 2);
        assert_eq!(p.filesystem.binds[0].source, "/etc/phantom/data");
        assert_eq!(p.filesystem.binds[0].target, "/data");
        assert_eq!(p.filesystem.binds[0].access, Access::ReadOnly);
        assert_eq!(p.filesystem.binds[1].access, Access::ReadWrite);
        assert_eq!(p.env, vec![("FOO".to_string(), "bar".to_string())]);
        // Positions point into config.yaml.
        let at = p.position("resources.memory").unwrap();
        assert_eq!((at.line, at.column), (5, 13), "{at}");
        assert!(config
            .profile("my-python")
            .unwrap()
            .text
            .contains("FOO: bar"));
    }

    #[test]
    fn the_environment_reaches_the_plan() {
        let config = parse(SEED).unwrap();
        let p = &config.profile("my-python").unwrap().profile;
        let plan = crate::compile_on(p, &Default::default(), &NoHost).unwrap();
        assert!(
            plan.env.contains(&("FOO".into(), "bar".into())),
            "{:?}",
            plan.env
        );
    }

    #[test]
    fn network_enabled_true_keeps_the_profiles_mode() {
        let text = "profiles:\n  - name: a\n    network: {enabled: true}\n  - name: b\n    extends: strict\n    network: {enabled: true}\n";
        let config = parse(text).unwrap();
        let base = crate::load_builtin("default").unwrap().network.mode;
        let strict = crate::load_builtin("strict").unwrap().network.mode;
        assert_eq!(config.profile("a").unwrap().profile.network.mode, base);
        assert_eq!(config.profile("b").unwrap().profile.network.mode, strict);
    }

    #[test]
    fn dsl_keys_are_accepted_and_extends_works() {
        let text = "default_profile: p\nprofiles:\n  - name: p\n    extends: python-dev\n    mode: hardened\n    resources: {pids: 64}\n    cpu: 0.5\n";
        let config = parse(text).unwrap();
        let p = &config.profile("p").unwrap().profile;
        let parent = crate::load_builtin("python-dev").unwrap();
        assert_eq!(p.runtime, parent.runtime);
        assert_eq!(p.mode, crate::Mode::Hardened);
        assert_eq!((p.resources.pids, p.resources.cpu_millis), (64, 500));
        assert_eq!(config.default_profile.unwrap().0, "p");
    }

    #[test]
    fn a_profile_may_extend_one_defined_above_it() {
        let text = "profiles:
  - name: base
    extends: python-dev
    memory: 256MB
    environment: {A: a, B: b}
  - name: child
    extends: base
    cpu: 0.5
    environment: {B: c}
";
        let config = parse(text).unwrap();
        let child = &config.profile("child").unwrap().profile;
        let python = crate::load_builtin("python-dev").unwrap();
        assert_eq!(child.name, "child");
        assert_eq!(child.runtime, python.runtime);
        assert_eq!(child.resources.memory_bytes, 256 << 20);
        assert_eq!(child.resources.cpu_millis, 500);
        assert_eq!(
            child.env,
            vec![
                ("A".to_string(), "a".to_string()),
                ("B".to_string(), "c".to_string())
            ]
        );
        for (text, want) in [
            ("profiles:\n  - name: a\n    extends: b\n  - name: b\n", "config.yaml:3:14: extends: `b` is neither a built-in profile nor one defined above in this file"),
            ("profiles:\n  - name: base\n  - name: a\n    extends: bsae\n", "(did you mean `base`?)"),
            ("profiles:\n  - name: a\n    extends: a\n", "`a` is neither a built-in profile nor one defined above"),
        ] {
            let line = err(text);
            assert!(line.contains(want), "wanted {want}\ngot    {line}");
        }
    }

    #[test]
    fn each_wrong_key_has_a_place_and_a_suggestion() {
        for (text, want) in [
            ("profils: []\n", "config.yaml:1:1: unknown key `profils` at the top level (did you mean `profiles`?)"),
            ("profiles:\n  - name: a\n    memroy: 1GB\n", "config.yaml:3:5: unknown key `memroy` in `profiles[0]` (did you mean `memory`?)"),
            ("profiles:\n  - name: a\n    network:\n      enable: false\n", "config.yaml:4:7: unknown key `enable` in `profiles[0].network` (did you mean `enabled`?)"),
            ("profiles:\n  - name: a\n    mounts:\n      - {source: /x, target: /y, mdoe: ro}\n", "config.yaml:4:34: unknown key `mdoe` in `profiles[0].mounts[0]` (did you mean `mode`?)"),
            ("profiles:\n  - name: a\n    mounts:\n      - {source: /x, target: /y, mode: rx}\n", "config.yaml:4:40: profiles[0].mounts[0].mode: expected ro or rw"),
            ("profiles:\n  - name: a\n    memory: lots\n", "config.yaml:3:13: resources.memory:"),
            ("profiles:\n  - name: a\n    network: {enabled: no}\n", "config.yaml:3:24: profiles[0].network.enabled: expected true or false"),
            ("profiles:\n  - name: a\n    cpu: 1\n    resources: {cpu: 2}\n", "config.yaml:3:5: profiles[0].cpu: `resources.cpu` is set too"),
            ("profiles:\n  - name: a\n    environment: {A: b}\n    env: {A: c}\n", "config.yaml:3:5: profiles[0].environment: `env` is set too"),
            ("profiles:\n  - driver: native\n", "config.yaml:2:5: missing key `profiles[0].name`"),
            ("profiles:\n  - name: python-dev\n", "config.yaml:2:11: profiles[0].name: `python-dev` is a built-in profile"),
            ("profiles:\n  - name: a\n  - name: a\n", "config.yaml:3:11: profiles[1].name: `a` is defined twice"),
            ("default_profile: nope\n", "config.yaml:1:18: default_profile: `nope` is not a profile"),
            ("api_port: 70000\n", "config.yaml:1:11: api_port: expected a port number"),
            ("profiles:\n  - name: a\n    environment: {1X: b}\n", "config.yaml:3:19: env: `1X` is not a variable name"),
            ("profiles:\n  - name: a\n    mounts:\n      - {source: ~/x, target: /y}\n", "config.yaml:4:18: profiles[0].mounts[0].source: `~/x`: `~` is not expanded"),
        ] {
            let line = err(text);
            assert!(line.starts_with("/etc/phantom/"), "{line}");
            assert!(line.contains(want), "{text:?}\nwanted: {want}\ngot:    {line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn several_mistakes_are_reported_together() {
        let e = parse("profiles:\n  - name: a\n    memroy: 1GB\n    cpux: 1\n").unwrap_err();
        assert_eq!(e.errors().len(), 2, "{e}");
    }

    #[test]
    fn drivers_other_than_native_are_refused_with_a_sentence() {
        assert!(parse("profiles:\n  - name: a\n    driver: native\n").is_ok());
        for d in ["bwrap", "chroot", "lima"] {
            let line = err(&format!("profiles:\n  - name: a\n    driver: {d}\n"));
            assert!(
                line.contains("config.yaml:3:13: profiles[0].driver:"),
                "{line}"
            );
            assert!(line.contains("native engine is the Linux driver"), "{line}");
            assert!(line.contains("write `driver: native`"), "{line}");
        }
        let line = err("profiles:\n  - name: a\n    driver: natve\n");
        assert!(line.contains("did you mean `native`"), "{line}");
    }

    fn with_seccomp(json: &str) -> Result<Config, PolicyError> {
        let dir = std::env::temp_dir().join(format!(
            "phantom-config-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(dir.join("profiles")).unwrap();
        std::fs::write(dir.join("profiles/custom.json"), json).unwrap();
        let result = Config::parse(
            "profiles:\n  - name: a\n    seccomp: \"profiles/custom.json\"\n",
            &dir.join("config.yaml"),
            "test",
        );
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn an_oci_seccomp_profile_becomes_the_seccomp_section() {
        let deny_default = with_seccomp(
            "{\n\t\"defaultAction\": \"SCMP_ACT_ERRNO\",\n\t\"architectures\": [\"SCMP_ARCH_X86_64\"],\n\t\"syscalls\": [\n\t\t{\"names\": [\"read\", \"write\", \"clone3\"], \"action\": \"SCMP_ACT_ALLOW\"},\n\t\t{\"names\": [\"ptrace\"], \"action\": \"SCMP_ACT_KILL\", \"args\": []}\n\t]\n}\n",
        )
        .unwrap();
        let s = &deny_default.profile("a").unwrap().profile.security.seccomp;
        assert_eq!(s.default, crate::SeccompDefault::Deny);
        assert_eq!(s.allow, vec!["read", "write"]);
        assert_eq!(s.deny, vec!["ptrace"]);
        let allow_default = with_seccomp(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}, {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
        )
        .unwrap();
        let s = &allow_default.profile("a").unwrap().profile.security.seccomp;
        assert_eq!(s.default, crate::SeccompDefault::Allow);
        assert!(s.allow.is_empty(), "{s:?}");
        assert_eq!(s.deny, vec!["socket"]);
    }

    #[test]
    fn bad_seccomp_json_is_refused_at_its_place() {
        for (json, want) in [
            ("{\"defaultAction\": \"SCMP_ACT_ERRNO\",", "custom.json:"),
            ("{\"syscalls\": []}", "custom.json:1:1: missing key `defaultAction`"),
            ("{\"defaultAction\": \"SCMP_ACT_LOG\"}", "custom.json:1:19: defaultAction: `SCMP_ACT_LOG`: phantom cannot log"),
            ("{\"defaultAction\": \"SCMP_ACT_EROR\"}", "did you mean `SCMP_ACT_ERRNO`"),
            ("{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n \"syscalls\": [{\"names\": [\"opne\"], \"action\": \"SCMP_ACT_ERRNO\"}]}", "custom.json:2:26: syscalls[0].names: `opne` is not a syscall"),
            ("{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n \"syscalls\": [{\"names\": [\"clone\"], \"action\": \"SCMP_ACT_ERRNO\", \"args\": [{\"index\": 0}]}]}", "syscalls[0].args: argument conditions cannot be expressed"),
            ("{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n \"syscalls\": [{\"names\": [\"ptrace\"], \"action\": \"SCMP_ACT_LOG\"}]}", "custom.json:2:47: syscalls[0].action: `SCMP_ACT_LOG`"),
            ("{\"defaultAction\": \"SCMP_ACT_ERRNO\", \"defaultErrnoRet\": 38}", "defaultErrnoRet: phantom's denials return EPERM"),
            ("{\"defaultAction\": \"SCMP_ACT_ERRNO\", \"flags\": []}", "unknown key `flags` in the seccomp profile"),
            ("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [{\"names\": [\"exit\"], \"action\": \"SCMP_ACT_ERRNO\"}]}", "`exit` cannot be denied"),
        ] {
            let line = with_seccomp(json).unwrap_err().to_string();
            assert!(line.contains(want), "{json}\nwanted: {want}\ngot:    {line}");
            assert!(!line.contains('\n'), "one mistake, one line: {line}");
        }
        let missing = parse("profiles:\n  - name: a\n    seccomp: nothere.json\n")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("config.yaml:3:14: profiles[0].seccomp: ")
                && missing.contains("nothere.json"),
            "{missing}"
        );
    }

    #[test]
    fn named_profiles_come_from_builtins_then_the_config() {
        let config = parse(SEED).unwrap();
        assert_eq!(load_named("strict", Some(&config)).unwrap().name, "strict");
        assert_eq!(
            load_named("my-python", Some(&config)).unwrap().name,
            "my-python"
        );
        let e = load_named("my-pyhton", Some(&config))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `my-python`"), "{e}");
        assert!(e.contains("config.yaml: my-python"), "{e}");
        let e = load_named("my-python", None).unwrap_err().to_string();
        assert!(e.contains("no config.yaml was found"), "{e}");
    }

    #[test]
    fn the_file_is_found_by_variable_then_xdg_then_home() {
        let found = |vars: &[(&str, &str)]| {
            locate(&env(vars))
                .unwrap()
                .map(|(p, v, r)| (p.display().to_string(), v, r))
        };
        assert_eq!(found(&[]), None);
        assert_eq!(
            found(&[("HOME", "/h")]),
            Some((
                "/h/.config/phantom/config.yaml".into(),
                "HOME".into(),
                false
            ))
        );
        assert_eq!(
            found(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")]),
            Some((
                "/x/phantom/config.yaml".into(),
                "XDG_CONFIG_HOME".into(),
                false
            ))
        );
        assert_eq!(
            found(&[("XDG_CONFIG_HOME", "/x"), ("PHANTOM_CONFIG", "/p.yaml")]),
            Some(("/p.yaml".into(), "PHANTOM_CONFIG".into(), true))
        );
        assert_eq!(
            found(&[
                ("PHANTOM_CONFIG", "/p.yaml"),
                ("AISBX_CONFIG_PATH", "/a.yaml")
            ]),
            Some(("/a.yaml".into(), "AISBX_CONFIG_PATH".into(), true))
        );
        assert_eq!(
            found(&[
                ("PHANTOM_CONFIG_PATH", "/pp.yaml"),
                ("PHANTOM_CONFIG", "/p.yaml")
            ]),
            Some(("/pp.yaml".into(), "PHANTOM_CONFIG_PATH".into(), true))
        );
    }

    #[test]
    fn a_file_named_by_a_variable_must_exist_an_xdg_one_need_not() {
        let e = load_from_env(&env(&[("AISBX_CONFIG_PATH", "/nonexistent/phantom.yaml")]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "AISBX_CONFIG_PATH: `/nonexistent/phantom.yaml` does not exist; point it at a config.yaml or unset it");
        assert!(load_from_env(&env(&[("XDG_CONFIG_HOME", "/nonexistent")]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_xdg_file_out_of_reach_is_no_config() {
        // A HOME whose .config is a file: ENOTDIR, as EACCES for another user's HOME.
        let home = std::env::temp_dir().join(format!(
            "phantom-config-home-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join(".config"), "not a directory").unwrap();
        let found = load_from_env(&env(&[("HOME", home.to_str().unwrap())]));
        std::fs::remove_dir_all(&home).unwrap();
        assert!(found.unwrap().is_none());
    }

    #[test]
    fn aisbx_and_phantom_names_agree_or_are_refused() {
        let same = env(&[("AISBX_DEBUG", "1"), ("PHANTOM_DEBUG", "1")]);
        assert_eq!(variable(&same, "DEBUG").unwrap().unwrap().1, "AISBX_DEBUG");
        let only = env(&[("PHANTOM_DEBUG", "1")]);
        assert_eq!(
            variable(&only, "DEBUG").unwrap().unwrap().1,
            "PHANTOM_DEBUG"
        );
        let both = env(&[("AISBX_DEBUG", "1"), ("PHANTOM_DEBUG", "0")]);
        let e = variable(&both, "DEBUG").unwrap_err().to_string();
        assert_eq!(
            e,
            "AISBX_DEBUG and PHANTOM_DEBUG: both are set, to different values; unset one of them"
        );
    }

    #[test]
    fn settings_say_where_each_value_came_from() {
        let s = Settings::from_env(&env(&[
            ("AISBX_DEBUG", "yes"),
            ("PHANTOM_API_PORT", "9000"),
            ("AISBX_API_KEY", "phk_secret"),
            ("AISBX_DEFAULT_PROFILE", "strict"),
        ]))
        .unwrap();
        assert!(s.debug.value);
        assert_eq!(s.debug.origin, Origin::Variable("AISBX_DEBUG".into()));
        assert_eq!(s.api_port.as_ref().unwrap().value, 9000);
        assert_eq!(s.default_profile.as_ref().unwrap().value, "strict");
        assert!(!format!("{s:?}").contains("phk_secret"), "{s:?}");
        let none = Settings::from_env(&env(&[])).unwrap();
        assert_eq!(none.debug.origin, Origin::Default);
        for (var, value, want) in [
            (
                "AISBX_DEBUG",
                "maybe",
                "AISBX_DEBUG: `maybe` is not a boolean",
            ),
            (
                "AISBX_API_PORT",
                "http",
                "AISBX_API_PORT: `http` is not a port number",
            ),
            (
                "PHANTOM_DEFAULT_PROFILE",
                "strct",
                "PHANTOM_DEFAULT_PROFILE: `strct` is not a profile (did you mean `strict`?)",
            ),
        ] {
            let e = Settings::from_env(&env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{e}");
            assert!(!e.contains('\n'));
        }
    }
}

#[cfg(test)]
mod dsl_env_tests {
    #[test]
    fn a_policy_files_env_key_sets_variables_and_children_merge_it() {
        let p = crate::load_str(
            "profile: x\nenv: {A: 1, B: two, PATH: /opt/bin}\n",
            "p.yaml",
        )
        .unwrap();
        assert_eq!(
            p.env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "two".to_string()),
                ("PATH".to_string(), "/opt/bin".to_string())
            ]
        );
        let plan = crate::compile(&p, &Default::default()).unwrap();
        let path: Vec<_> = plan.env.iter().filter(|(k, _)| k == "PATH").collect();
        assert_eq!(path, vec![&("PATH".to_string(), "/opt/bin".to_string())]);
        let e = crate::load_str("profile: x\nenv: [A]\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "p.yaml:2:6: env: expected a mapping of NAME: value, found a list"
        );
    }
}
