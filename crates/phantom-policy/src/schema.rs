//! The schema walk: a merged YAML tree → a validated [`Profile`].
//!
//! A [`Reader`] visits each section with the list of keys it may contain; an unknown
//! key is reported at its place with the closest valid key (or the list of them).
//! Values are converted by typed helpers (`string`, `boolean`, `choice`, `bytes`,
//! ...) that name the dotted key in every error and record where each key was written,
//! so that `compile()` can point at it too. Checks that involve several keys (the
//! workspace against system paths and binds) run at the end.
//!
//! A mistake does not stop the walk: the reader notes it and goes on with the next key
//! (or list entry), so that one `phantom policy check` reports every independent
//! mistake, each at its place ([`PolicyError::Several`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::egress::EgressRule;
use crate::error::{choice_error, closest, did_you_mean, shown, PolicyError, SourcePos};
use crate::plan::{Access, Mode, NetworkMode, Rootfs};
use crate::profile::*;
use crate::seccomp;
use crate::units::{self, format_bytes};
use crate::yaml::{Node, Value};

const TOP_KEYS: &[&str] = &[
    "profile",
    "description",
    "extends",
    "mode",
    "runtime",
    "security",
    "performance",
    "resources",
    "network",
    "filesystem",
    "env",
];
const SECURITY_KEYS: &[&str] = &["level", "seccomp", "landlock"];
const SECCOMP_KEYS: &[&str] = &["default", "allow", "deny"];
const LANDLOCK_KEYS: &[&str] = &["enabled", "paths"];
const LANDLOCK_PATH_KEYS: &[&str] = &["path", "access"];
const PERFORMANCE_KEYS: &[&str] = &[
    "zygote",
    "pool_size",
    "preload",
    "io_mode",
    "memory_allocator",
];
const RESOURCE_KEYS: &[&str] = &[
    "memory", "cpu", "pids", "timeout", "output", "tmp", "nofile", "fsize",
];
const NETWORK_KEYS: &[&str] = &["mode", "allow", "deny", "allow_reserved"];
const FILESYSTEM_KEYS: &[&str] = &[
    "rootfs",
    "system",
    "etc",
    "binds",
    "toolchains",
    "workspace",
];
const BIND_KEYS: &[&str] = &["source", "target", "access"];

/// Names below /etc that phantom writes itself.
pub(crate) const GENERATED_ETC: &[&str] = &["passwd", "group", "hosts", "hostname"];
/// Names below /etc that are never bound.
const SECRET_ETC: &[&str] = &["shadow", "shadow-", "gshadow", "gshadow-"];

impl Profile {
    /// Validates a merged tree. Errors point at the offending node.
    pub(crate) fn from_tree(root: &Node) -> Result<Profile, PolicyError> {
        let mut r = Reader::default();
        let mut name = None;
        let mut profile = Profile {
            name: String::new(),
            description: None,
            extends: None,
            mode: Mode::Sandbox,
            runtime: Runtime::Auto,
            security: Security {
                level: SecurityLevel::Medium,
                seccomp: SeccompPolicy {
                    default: SeccompDefault::Allow,
                    allow: Vec::new(),
                    deny: Vec::new(),
                },
                landlock: LandlockPolicy {
                    enabled: true,
                    paths: Vec::new(),
                },
            },
            performance: Performance {
                zygote: false,
                pool_size: None,
                preload: Vec::new(),
                io_mode: IoMode::Sync,
                memory_allocator: MemoryAllocator::System,
            },
            resources: Resources::default(),
            network: Network {
                mode: NetworkMode::LoopbackOnly,
                allow: Vec::new(),
                deny: Vec::new(),
                allow_reserved: Vec::new(),
            },
            filesystem: Filesystem::default(),
            env: Vec::new(),
            positions: BTreeMap::new(),
        };
        if !matches!(root.value, Value::Map(_)) {
            return Err(top_level_error(root));
        }
        for (key, value) in r.map(root, "", TOP_KEYS)? {
            let result = match key {
                "profile" => r.profile_name(value).map(|n| name = Some(n)),
                "description" => r
                    .string(value, "description")
                    .map(|d| profile.description = Some(d)),
                "extends" => r
                    .string(value, "extends")
                    .map(|e| profile.extends = Some(e)),
                "mode" => r.choice(value, "mode", MODES).map(|m| profile.mode = m),
                "runtime" => r
                    .choice(value, "runtime", RUNTIMES)
                    .map(|v| profile.runtime = v),
                "security" => r.security(value, &mut profile.security),
                "performance" => r.performance(value, &mut profile.performance),
                "resources" => r.resources(value, &mut profile.resources),
                "network" => r.network(value, &mut profile.network),
                "filesystem" => r.filesystem(value, &mut profile.filesystem),
                "env" => r.env(value, &mut profile.env),
                _ => unreachable!("Reader::map only returns listed keys"),
            };
            r.note(result);
        }
        match name {
            Some(name) => profile.name = name,
            // A name that is there but invalid has its error already, and so has a
            // misspelt `profile:` (whose error suggests the right key).
            None if r.positions.contains_key("profile")
                || r.errors.iter().any(|e| {
                    matches!(e, PolicyError::UnknownKey { section, hint, .. }
                        if section == "at the top level" && hint.contains("`profile`"))
                }) => {}
            None => r.errors.push(PolicyError::MissingKey {
                at: SourcePos {
                    line: 1,
                    column: 1,
                    ..root.pos.source()
                },
                key: "profile".into(),
                hint: "every policy names itself, e.g. `profile: my-python`".into(),
            }),
        }
        check_filesystem(&profile.filesystem, &mut r);
        check_network(&profile.network, &mut r);
        if let Some(error) = PolicyError::from_list(std::mem::take(&mut r.errors)) {
            return Err(error);
        }
        profile.positions = r.positions;
        Ok(profile)
    }
}

pub(crate) fn top_level_error(root: &Node) -> PolicyError {
    let found = match root.value {
        Value::Null => "an empty document".to_string(),
        ref other => other.describe(),
    };
    PolicyError::WrongType {
        at: root.pos.source(),
        field: "policy".into(),
        expected: "a mapping with at least `profile: NAME` (see `phantom profile show default`)"
            .into(),
        found,
    }
}

pub(crate) fn wrong_type(node: &Node, field: &str, expected: &str) -> PolicyError {
    PolicyError::WrongType {
        at: node.pos.source(),
        field: field.to_string(),
        expected: expected.to_string(),
        found: node.value.describe(),
    }
}

pub(crate) fn invalid(node: &Node, field: &str, message: String) -> PolicyError {
    PolicyError::InvalidValue {
        at: node.pos.source(),
        field: field.to_string(),
        message,
    }
}

/// Walks nodes, converting and checking values and recording where each was written.
#[derive(Default)]
struct Reader {
    positions: BTreeMap<String, SourcePos>,
    /// Mistakes noted so far; the walk goes on after each.
    errors: Vec<PolicyError>,
    /// The key of each bind and `allow_reserved` entry kept (`filesystem.binds[2]`):
    /// entries with a mistake are left out, so later ones keep their written index.
    bind_keys: Vec<String>,
    reserved_keys: Vec<String>,
}

impl Reader {
    /// The value of `result`, or `None` after noting its error.
    fn note<T>(&mut self, result: Result<T, PolicyError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(error);
                None
            }
        }
    }

    fn record(&mut self, node: &Node, path: &str) {
        self.positions.insert(path.to_string(), node.pos.source());
    }

    /// The entries of a mapping whose keys are in `keys`; other keys are noted as
    /// mistakes and left out.
    fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        keys: &[&'static str],
    ) -> Result<Vec<(&'static str, &'n Node)>, PolicyError> {
        let Value::Map(entries) = &node.value else {
            return Err(wrong_type(node, path, "a mapping (`key: value` lines)"));
        };
        if !path.is_empty() {
            self.record(node, path);
        }
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let Value::Str(name) = &key.value else {
                self.errors.push(PolicyError::WrongType {
                    at: key.pos.source(),
                    field: if path.is_empty() {
                        "policy".into()
                    } else {
                        path.to_string()
                    },
                    expected: "a key name".into(),
                    found: key.value.describe(),
                });
                continue;
            };
            let Some(known) = keys.iter().find(|k| **k == name) else {
                let section = if path.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in `{path}`")
                };
                let hint = match closest(name, keys.iter().copied()) {
                    Some(c) => format!(" (did you mean `{c}`?)"),
                    None => format!(" (valid keys: {})", keys.join(", ")),
                };
                self.errors.push(PolicyError::UnknownKey {
                    at: key.pos.source(),
                    key: shown(name),
                    section,
                    hint,
                });
                continue;
            };
            out.push((*known, value));
        }
        Ok(out)
    }

    fn string(&mut self, node: &Node, path: &str) -> Result<String, PolicyError> {
        self.record(node, path);
        match &node.value {
            Value::Str(s) => Ok(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                Err(wrong_type(node, path, "a string (put quotes around it)"))
            }
            _ => Err(wrong_type(node, path, "a string")),
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Result<bool, PolicyError> {
        self.record(node, path);
        match node.value {
            Value::Bool(b) => Ok(b),
            _ => Err(wrong_type(node, path, "true or false")),
        }
    }

    fn choice<T: Copy>(
        &mut self,
        node: &Node,
        path: &str,
        choices: &[(&'static str, T)],
    ) -> Result<T, PolicyError> {
        let valid = names(choices);
        let expected = format!("one of: {}", valid.join(", "));
        let Value::Str(_) = &node.value else {
            self.record(node, path);
            return Err(wrong_type(node, path, &expected));
        };
        let word = self.string(node, path)?;
        choose(&word, choices).ok_or_else(|| {
            let err = choice_error("", &word, &valid);
            invalid(node, path, format!("`{}` {}", err.value, err.reason))
        })
    }

    fn list<'n>(&mut self, node: &'n Node, path: &str) -> Result<&'n [Node], PolicyError> {
        self.record(node, path);
        match &node.value {
            Value::Seq(items) => Ok(items),
            Value::Null => Err(wrong_type(node, path, "a list (write [] for an empty one)")),
            _ => Err(wrong_type(node, path, "a list, e.g. [a, b]")),
        }
    }

    /// The strings of a list, with their index and node; an entry that is not a string
    /// is noted and left out.
    fn strings(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Result<Vec<(usize, String, Node)>, PolicyError> {
        let items = self.list(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let text = self.string(item, &format!("{path}[{i}]"));
            if let Some(text) = self.note(text) {
                out.push((i, text, item.clone()));
            }
        }
        Ok(out)
    }

    /// A whole number, written as a number or as a string of digits.
    fn whole(&mut self, node: &Node, path: &str) -> Result<u64, PolicyError> {
        self.record(node, path);
        let out_of_range = || {
            invalid(
                node,
                path,
                format!("{} is out of range", node.value.describe()),
            )
        };
        match &node.value {
            Value::Int(i) => u64::try_from(*i).map_err(|_| out_of_range()),
            Value::Float(f) if f.fract() == 0.0 => Err(out_of_range()),
            Value::Str(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| wrong_type(node, path, "a whole number")),
            _ => Err(wrong_type(node, path, "a whole number")),
        }
    }

    /// The text of a size, duration or CPU count (`512MB`, `30`, `1.5`).
    fn unit_text(&mut self, node: &Node, path: &str, example: &str) -> Result<String, PolicyError> {
        self.record(node, path);
        match &node.value {
            Value::Str(s) => Ok(s.clone()),
            Value::Int(i) => Ok(i.to_string()),
            Value::Float(f) => Ok(f.to_string()),
            _ => Err(wrong_type(node, path, example)),
        }
    }

    fn bytes(&mut self, node: &Node, path: &str) -> Result<u64, PolicyError> {
        let text = self.unit_text(node, path, "a size such as 512MB")?;
        units::parse_bytes(&text).map_err(|e| invalid(node, path, e.to_string()))
    }

    fn profile_name(&mut self, node: &Node) -> Result<String, PolicyError> {
        let name = self.string(node, "profile")?;
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !first_ok || !rest_ok || name.len() > 64 {
            return Err(invalid(
                node,
                "profile",
                format!(
                    "`{}` is not a valid name: use letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 64 characters",
                    shown(&name)
                ),
            ));
        }
        Ok(name)
    }

    fn security(&mut self, node: &Node, out: &mut Security) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "security", SECURITY_KEYS)? {
            let result = match key {
                "level" => self
                    .choice(value, "security.level", LEVELS)
                    .map(|l| out.level = l),
                "seccomp" => self.seccomp(value, &mut out.seccomp),
                "landlock" => self.landlock(value, &mut out.landlock),
                _ => unreachable!(),
            };
            self.note(result);
        }
        Ok(())
    }

    fn seccomp(&mut self, node: &Node, out: &mut SeccompPolicy) -> Result<(), PolicyError> {
        let mut allow = Vec::new();
        let mut deny = Vec::new();
        for (key, value) in self.map(node, "security.seccomp", SECCOMP_KEYS)? {
            let result = match key {
                "default" => self
                    .choice(value, "security.seccomp.default", SECCOMP_DEFAULTS)
                    .map(|d| out.default = d),
                "allow" => self
                    .syscalls(value, "security.seccomp.allow")
                    .map(|names| allow = names),
                "deny" => self
                    .syscalls(value, "security.seccomp.deny")
                    .map(|names| deny = names),
                _ => unreachable!(),
            };
            self.note(result);
        }
        for (name, node) in &allow {
            if deny.iter().any(|(d, _)| d == name) {
                self.errors.push(invalid(
                    node,
                    "security.seccomp.allow",
                    format!("`{name}` is also in security.seccomp.deny; remove it from one of the lists"),
                ));
            }
        }
        for (name, node) in &deny {
            if seccomp::NEVER_DENIED.contains(&name.as_str()) {
                self.errors.push(invalid(
                    node,
                    "security.seccomp.deny",
                    format!("`{name}` cannot be denied: phantom needs it to start the payload and every process needs it to end"),
                ));
            }
        }
        out.allow = allow.into_iter().map(|(n, _)| n).collect();
        out.deny = deny.into_iter().map(|(n, _)| n).collect();
        Ok(())
    }

    /// A list of syscall names, each checked against the build architecture's table;
    /// a name that is not one is noted and left out.
    fn syscalls(&mut self, node: &Node, path: &str) -> Result<Vec<(String, Node)>, PolicyError> {
        let names = self.strings(node, path)?;
        // On an architecture phantom has no table for, compile() refuses seccomp anyway.
        let arch = seccomp::build_arch().ok();
        let mut out = Vec::with_capacity(names.len());
        for (_, name, item) in names {
            let Some(arch) = arch else {
                out.push((name, item));
                continue;
            };
            if name == "clone3" {
                self.errors.push(invalid(
                    &item,
                    path,
                    "`clone3` is always answered ENOSYS so that libc falls back to clone, whose flags seccomp can check; remove it".into(),
                ));
            } else if arch.number(&name).is_none() {
                self.errors.push(invalid(
                    &item,
                    path,
                    format!(
                        "`{}` is not a syscall on {}{}",
                        shown(&name),
                        arch.name,
                        did_you_mean(&name, arch.syscall_names())
                    ),
                ));
            } else {
                out.push((name, item));
            }
        }
        Ok(out)
    }

    fn landlock(&mut self, node: &Node, out: &mut LandlockPolicy) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "security.landlock", LANDLOCK_KEYS)? {
            match key {
                "enabled" => {
                    let enabled = self.boolean(value, "security.landlock.enabled");
                    if let Some(enabled) = self.note(enabled) {
                        out.enabled = enabled;
                    }
                }
                "paths" => {
                    out.paths.clear();
                    let items = self.list(value, "security.landlock.paths");
                    for (i, item) in self.note(items).unwrap_or_default().iter().enumerate() {
                        let path = format!("security.landlock.paths[{i}]");
                        let entry = self.landlock_path(item, &path);
                        out.paths.extend(self.note(entry));
                    }
                }
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn landlock_path(&mut self, node: &Node, path: &str) -> Result<LandlockPath, PolicyError> {
        let mut rule_path = None;
        let mut access = Access::ReadOnly;
        for (key, value) in self.map(node, path, LANDLOCK_PATH_KEYS)? {
            match key {
                "path" => {
                    let field = format!("{path}.path");
                    let text = self.string(value, &field)?;
                    rule_path =
                        Some(absolute_path(&text, true).map_err(|m| invalid(value, &field, m))?);
                }
                "access" => access = self.choice(value, &format!("{path}.access"), ACCESSES)?,
                _ => unreachable!(),
            }
        }
        let path_value = rule_path.ok_or_else(|| PolicyError::MissingKey {
            at: node.pos.source(),
            key: format!("{path}.path"),
            hint:
                "each entry needs `path:` and `access:`, e.g. {path: /opt/data, access: read-only}"
                    .into(),
        })?;
        Ok(LandlockPath {
            path: path_value,
            access,
        })
    }

    fn performance(&mut self, node: &Node, out: &mut Performance) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "performance", PERFORMANCE_KEYS)? {
            let result = self.performance_key(key, value, out);
            self.note(result);
        }
        Ok(())
    }

    fn performance_key(
        &mut self,
        key: &str,
        value: &Node,
        out: &mut Performance,
    ) -> Result<(), PolicyError> {
        {
            match key {
                "zygote" => out.zygote = self.boolean(value, "performance.zygote")?,
                "pool_size" => {
                    let size = self.whole(value, "performance.pool_size")?;
                    if !(1..=1024).contains(&size) {
                        return Err(invalid(
                            value,
                            "performance.pool_size",
                            format!("must be between 1 and 1024, found {size}"),
                        ));
                    }
                    out.pool_size = Some(size as u32);
                }
                "preload" => {
                    let mut modules = Vec::new();
                    for (i, name, item) in self.strings(value, "performance.preload")? {
                        // A dotted Python module name: what `import NAME` takes; a
                        // trailing `?`: only when installed.
                        let module = name.strip_suffix('?').unwrap_or(&name);
                        let valid = !module.is_empty()
                            && module.split('.').all(|part| {
                                part.chars()
                                    .next()
                                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                            });
                        if !valid {
                            self.errors.push(invalid(
                                &item,
                                &format!("performance.preload[{i}]"),
                                format!("`{name}` is not a module name (what `import NAME` takes, e.g. numpy or matplotlib.pyplot; `numpy?` when it may be missing)"),
                            ));
                            continue;
                        }
                        modules.push(name);
                    }
                    out.preload = modules;
                }
                "io_mode" => out.io_mode = self.choice(value, "performance.io_mode", IO_MODES)?,
                "memory_allocator" => {
                    out.memory_allocator =
                        self.choice(value, "performance.memory_allocator", ALLOCATORS)?
                }
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn resources(&mut self, node: &Node, out: &mut Resources) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "resources", RESOURCE_KEYS)? {
            let result = self.resource(key, value, out);
            self.note(result);
        }
        Ok(())
    }

    fn resource(
        &mut self,
        key: &str,
        value: &Node,
        out: &mut Resources,
    ) -> Result<(), PolicyError> {
        {
            let path = format!("resources.{key}");
            let path = path.as_str();
            let check = |result: Result<(), String>| result.map_err(|m| invalid(value, path, m));
            match key {
                "memory" => {
                    out.memory_bytes = self.bytes(value, path)?;
                    check(check_memory(out.memory_bytes))?;
                }
                "cpu" => {
                    let text = self.unit_text(value, path, "a number of CPUs such as 1.0")?;
                    out.cpu_millis = units::parse_cpus(&text)
                        .map_err(|e| invalid(value, path, e.to_string()))?;
                }
                "pids" => {
                    out.pids = self.whole(value, path)?;
                    check(check_pids(out.pids))?;
                }
                "timeout" => {
                    let text = self.unit_text(value, path, "a duration such as 30s")?;
                    out.timeout_ms = units::parse_duration_ms(&text)
                        .map_err(|e| invalid(value, path, e.to_string()))?;
                    check(check_timeout(out.timeout_ms))?;
                }
                "output" => {
                    out.output_bytes = self.bytes(value, path)?;
                    if out.output_bytes == 0 {
                        return Err(invalid(value, path, "must be more than 0 (redirect output to /dev/null inside the sandbox to discard it)".into()));
                    }
                }
                "tmp" => {
                    out.tmp_bytes = self.bytes(value, path)?;
                    if out.tmp_bytes < 4096 {
                        return Err(invalid(value, path, format!("{} is too small: /tmp must be at least 4KB (tmpfs reads 0 as unlimited)", format_bytes(out.tmp_bytes))));
                    }
                }
                "nofile" => {
                    out.nofile = self.whole(value, path)?;
                    if !(8..=1_048_576).contains(&out.nofile) {
                        return Err(invalid(value, path, format!("must be between 8 and 1048576 (the kernel's default nr_open), found {}", out.nofile)));
                    }
                }
                "fsize" => {
                    out.fsize_bytes = self.bytes(value, path)?;
                    if out.fsize_bytes == 0 {
                        return Err(invalid(
                            value,
                            path,
                            "must be more than 0 (0 would make every write fail)".into(),
                        ));
                    }
                }
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn network(&mut self, node: &Node, out: &mut Network) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "network", NETWORK_KEYS)? {
            match key {
                "mode" => {
                    let mode = self.choice(value, "network.mode", NETWORK_MODES);
                    if let Some(mode) = self.note(mode) {
                        out.mode = mode;
                    }
                }
                "allow" | "deny" | "allow_reserved" => {
                    let path = format!("network.{key}");
                    let mut rules = Vec::new();
                    let mut keys = Vec::new();
                    let entries = self.strings(value, &path);
                    for (i, text, item) in self.note(entries).unwrap_or_default() {
                        let field = format!("{path}[{i}]");
                        let rule = EgressRule::parse(&text).and_then(|rule| {
                            if key == "allow_reserved" {
                                rule.check_reserved_entry()?;
                            }
                            Ok(rule)
                        });
                        match rule {
                            Ok(rule) => {
                                rules.push(rule);
                                keys.push(field);
                            }
                            Err(m) => self.errors.push(invalid(&item, &field, m)),
                        }
                    }
                    match key {
                        "allow" => out.allow = rules,
                        "deny" => out.deny = rules,
                        _ => {
                            out.allow_reserved = rules;
                            self.reserved_keys = keys;
                        }
                    }
                }
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    /// `env:` — a mapping of variable names to values (scalars; numbers and booleans
    /// are written as their text).
    fn env(&mut self, node: &Node, out: &mut Vec<(String, String)>) -> Result<(), PolicyError> {
        let Value::Map(entries) = &node.value else {
            self.record(node, "env");
            return Err(wrong_type(node, "env", "a mapping of NAME: value"));
        };
        self.record(node, "env");
        out.clear();
        for (key, value) in entries {
            let Value::Str(name) = &key.value else {
                self.errors.push(wrong_type(key, "env", "a variable name"));
                continue;
            };
            let field = format!("env.{}", shown(name));
            let valid_name = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.len() <= 256;
            if !valid_name {
                self.errors.push(invalid(
                    key,
                    "env",
                    format!("`{}` is not a variable name: use letters, digits and `_`, not starting with a digit", shown(name)),
                ));
                continue;
            }
            self.record(value, &field);
            let text = match &value.value {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                _ => {
                    self.errors
                        .push(wrong_type(value, &field, "a string, e.g. \"bar\""));
                    continue;
                }
            };
            if text.contains('\0') {
                self.errors.push(invalid(
                    value,
                    &field,
                    "the value contains a NUL byte, which no environment variable can hold".into(),
                ));
                continue;
            }
            match out.iter_mut().find(|(k, _)| k == name) {
                Some(slot) => slot.1 = text,
                None => out.push((name.clone(), text)),
            }
        }
        Ok(())
    }

    fn filesystem(&mut self, node: &Node, out: &mut Filesystem) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "filesystem", FILESYSTEM_KEYS)? {
            let result = self.filesystem_key(key, value, out);
            self.note(result);
        }
        Ok(())
    }

    fn filesystem_key(
        &mut self,
        key: &str,
        value: &Node,
        out: &mut Filesystem,
    ) -> Result<(), PolicyError> {
        {
            match key {
                "rootfs" => {
                    let text = self.string(value, "filesystem.rootfs")?;
                    out.rootfs =
                        Rootfs::parse(&text).map_err(|m| invalid(value, "filesystem.rootfs", m))?;
                }
                "system" => {
                    out.system.clear();
                    for (i, text, item) in self.strings(value, "filesystem.system")? {
                        let field = format!("filesystem.system[{i}]");
                        let path = absolute_path(&text, false)
                            .and_then(|path| system_path_allowed(&path).map(|()| path));
                        match path {
                            Ok(path) => out.system.push(path),
                            Err(m) => self.errors.push(invalid(&item, &field, m)),
                        }
                    }
                }
                "etc" => {
                    out.etc.clear();
                    for (i, text, item) in self.strings(value, "filesystem.etc")? {
                        let field = format!("filesystem.etc[{i}]");
                        match etc_name(&text) {
                            Ok(name) => out.etc.push(name),
                            Err(m) => self.errors.push(invalid(&item, &field, m)),
                        }
                    }
                }
                "binds" => {
                    out.binds.clear();
                    self.bind_keys.clear();
                    for (i, item) in self.list(value, "filesystem.binds")?.iter().enumerate() {
                        let key = format!("filesystem.binds[{i}]");
                        let bind = self.bind(item, &key);
                        if let Some(bind) = self.note(bind) {
                            out.binds.push(bind);
                            self.bind_keys.push(key);
                        }
                    }
                }
                "toolchains" => {
                    out.toolchains.clear();
                    for (i, _, item) in self.strings(value, "filesystem.toolchains")? {
                        let field = format!("filesystem.toolchains[{i}]");
                        let toolchain = self.choice(&item, &field, TOOLCHAINS);
                        if let Some(toolchain) = self.note(toolchain) {
                            if !out.toolchains.contains(&toolchain) {
                                out.toolchains.push(toolchain);
                            }
                        }
                    }
                }
                "workspace" => {
                    let text = self.string(value, "filesystem.workspace")?;
                    out.workspace = absolute_path(&text, false)
                        .map_err(|m| invalid(value, "filesystem.workspace", m))?;
                }
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn bind(&mut self, node: &Node, path: &str) -> Result<HostBind, PolicyError> {
        let mut source = None;
        let mut target = None;
        let mut access = Access::ReadOnly;
        for (key, value) in self.map(node, path, BIND_KEYS)? {
            let field = format!("{path}.{key}");
            match key {
                "source" | "target" => {
                    let text = self.string(value, &field)?;
                    let p = absolute_path(&text, false).map_err(|m| invalid(value, &field, m))?;
                    if key == "source" {
                        source = Some(p);
                    } else {
                        target = Some(p);
                    }
                }
                "access" => access = self.choice(value, &field, ACCESSES)?,
                _ => unreachable!(),
            }
        }
        let missing = |key: &str| {
            PolicyError::MissingKey {
            at: node.pos.source(),
            key: format!("{path}.{key}"),
            hint: "each bind needs `source:` and `target:`, e.g. {source: /opt/tool, target: /opt/tool, access: read-only}".into(),
        }
        };
        Ok(HostBind {
            source: source.ok_or_else(|| missing("source"))?,
            target: target.ok_or_else(|| missing("target"))?,
            access,
        })
    }
}

/// Normalises an absolute path (`//a/b/` → `/a/b`). When `glob` is set, the last
/// component may contain one `*` (the runtime expands it). Errors complete "field: ...".
pub(crate) fn absolute_path(text: &str, glob: bool) -> Result<String, String> {
    let shown_text = shown(text);
    if !text.starts_with('/') {
        return Err(format!(
            "`{shown_text}` is not an absolute path (start it with /)"
        ));
    }
    if text.len() > 4096 || text.chars().any(|c| c.is_control()) {
        return Err(format!("`{shown_text}` is not a usable path"));
    }
    let components: Vec<&str> = text.split('/').filter(|c| !c.is_empty()).collect();
    for (i, component) in components.iter().enumerate() {
        if *component == ".." || *component == "." {
            return Err(format!(
                "`{shown_text}` contains `{component}`; write the path without it"
            ));
        }
        let stars = component.matches('*').count();
        if stars > 0 && (!glob || i + 1 != components.len() || stars > 1) {
            return Err(if glob {
                format!("`{shown_text}`: one `*` is allowed, in the last component only")
            } else {
                format!("`{shown_text}`: globs are allowed only in security.landlock.paths")
            });
        }
    }
    Ok(format!("/{}", components.join("/")))
}

/// Whether `path` is `base` or below it.
pub(crate) fn is_within(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Places no bind may cover: the kernel's own filesystems.
pub(crate) const KERNEL_DIRS: &[&str] = &["/proc", "/dev", "/sys"];

fn system_path_allowed(path: &str) -> Result<(), String> {
    if path == "/" {
        return Err("`/` would bind the whole host; list the directories you need".into());
    }
    if let Some(dir) = KERNEL_DIRS.iter().find(|d| is_within(path, d)) {
        return Err(format!(
            "`{path}` is under {dir}, which phantom provides itself"
        ));
    }
    if is_within(path, "/etc") {
        return Err(format!(
            "`{path}` is under /etc; list names below /etc in filesystem.etc instead"
        ));
    }
    if is_within(path, "/tmp") {
        return Err(format!(
            "`{path}` is under /tmp, which is the sandbox's own tmpfs"
        ));
    }
    Ok(())
}

/// Checks a `filesystem.etc` name (`ssl`, `ssl/certs`) and normalises it.
fn etc_name(text: &str) -> Result<String, String> {
    let shown_text = shown(text);
    if text.starts_with('/') {
        let hint = text.strip_prefix("/etc/").unwrap_or("ssl");
        return Err(format!(
            "`{shown_text}`: write names below /etc, e.g. `{}`",
            shown(hint)
        ));
    }
    let normalized = absolute_path(&format!("/{text}"), false).map_err(|_| {
        format!("`{shown_text}` is not a name below /etc (no `..`, `.`, `*` or control characters)")
    })?;
    let name = normalized.trim_start_matches('/').to_string();
    if name.is_empty() {
        return Err("an empty name would bind all of /etc; list the names you need".into());
    }
    let first = name.split('/').next().unwrap_or_default();
    if GENERATED_ETC.contains(&first) {
        return Err(format!(
            "/etc/{first} is generated by phantom; remove it from the list"
        ));
    }
    if SECRET_ETC.contains(&first) {
        return Err(format!(
            "/etc/{first} holds password hashes and is never bound"
        ));
    }
    Ok(name)
}

/// Checks that system paths, binds and the workspace do not hide each other.
fn check_filesystem(fs: &Filesystem, r: &mut Reader) {
    let mut errors = Vec::new();
    let at = |key: &str| {
        r.positions
            .get(key)
            .cloned()
            .unwrap_or_else(|| SourcePos::file_only("(default)"))
    };
    let error = |key: &str, message: String| PolicyError::InvalidValue {
        at: at(key),
        field: key.to_string(),
        message,
    };
    let ws = fs.workspace.as_str();
    if ws == "/" {
        // Everything else would overlap it too: one error says it.
        let error = error(
            "filesystem.workspace",
            "`/` cannot be the workspace; use e.g. /workspace".into(),
        );
        r.errors.push(error);
        return;
    }
    for reserved in KERNEL_DIRS.iter().chain(["/etc", "/tmp"].iter()) {
        if is_within(ws, reserved) || is_within(reserved, ws) {
            errors.push(error(
                "filesystem.workspace",
                format!("`{ws}` overlaps {reserved}; use a directory of its own, e.g. /workspace"),
            ));
            break;
        }
    }
    for (i, system) in fs.system.iter().enumerate() {
        if is_within(ws, system) || is_within(system, ws) {
            // Point at whichever of the two the user wrote last.
            let key = if r.positions.contains_key("filesystem.workspace") {
                "filesystem.workspace".to_string()
            } else {
                format!("filesystem.system[{i}]")
            };
            errors.push(error(
                &key,
                format!("the workspace `{ws}` and the system path `{system}` overlap; give the workspace a directory of its own, e.g. /workspace"),
            ));
        }
    }
    let mut targets = BTreeSet::new();
    for (i, bind) in fs.binds.iter().enumerate() {
        let key = match r.bind_keys.get(i) {
            Some(written) => format!("{written}.target"),
            None => format!("filesystem.binds[{i}].target"),
        };
        if let Err(message) = check_bind_target(fs, &bind.target, &mut targets) {
            errors.push(error(&key, message));
        }
    }
    r.errors.extend(errors);
}

/// Checks what `network.allow_reserved` needs of `network.allow`: each of its entries
/// names a host that `allow` lets the proxy ask for (else it would have no effect).
fn check_network(network: &Network, r: &mut Reader) {
    for (i, entry) in network.allow_reserved.iter().enumerate() {
        if !network.allow.iter().any(|rule| rule.covers(entry)) {
            let key = r
                .reserved_keys
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("network.allow_reserved[{i}]"));
            let at = r
                .positions
                .get(&key)
                .cloned()
                .unwrap_or_else(|| SourcePos::file_only("(default)"));
            r.errors.push(PolicyError::InvalidValue {
                at,
                field: key,
                message: format!(
                    "`{entry}` is not in network.allow, so the proxy never connects to it; add it to network.allow too"
                ),
            });
        }
    }
}

/// Checks one bind target against the workspace, the kernel's directories, /tmp, /etc,
/// the system paths and the targets before it; the message completes
/// "filesystem.binds[i].target: ...".
fn check_bind_target<'f>(
    fs: &Filesystem,
    t: &'f str,
    targets: &mut BTreeSet<&'f str>,
) -> Result<(), String> {
    let ws = fs.workspace.as_str();
    if t == "/" {
        return Err("a bind cannot cover `/`".into());
    }
    if let Some(dir) = KERNEL_DIRS.iter().find(|d| is_within(t, d)) {
        return Err(format!(
            "`{t}` is under {dir}, which phantom provides itself"
        ));
    }
    if is_within(t, "/tmp") {
        return Err(format!(
            "`{t}` is under /tmp, whose tmpfs is mounted after binds and would hide it"
        ));
    }
    if is_within(t, ws) {
        return Err(format!(
            "`{t}` is under the workspace {ws}, which is mounted after binds and would hide it"
        ));
    }
    if is_within(ws, t) {
        return Err(format!(
            "`{t}` contains the workspace {ws}; bind somewhere else or move the workspace"
        ));
    }
    if t == "/etc" {
        return Err("a bind over /etc would hide the files phantom generates there; bind below it, e.g. /etc/myapp".into());
    }
    if fs.system.iter().any(|s| s == t) {
        return Err(format!("`{t}` is already bound from filesystem.system"));
    }
    if let Some(name) = t.strip_prefix("/etc/") {
        if GENERATED_ETC.contains(&name) {
            return Err(format!("{t} is generated by phantom"));
        }
    }
    if !targets.insert(t) {
        return Err(format!("`{t}` is the target of another bind"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_checked() {
        assert_eq!(absolute_path("//opt//tool/", false).unwrap(), "/opt/tool");
        assert_eq!(absolute_path("/", false).unwrap(), "/");
        assert!(absolute_path("opt", false).is_err());
        assert!(absolute_path("/opt/../etc", false).is_err());
        assert!(absolute_path("/opt/./x", false).is_err());
        assert!(absolute_path("/usr/lib/python3*", false).is_err());
        assert_eq!(
            absolute_path("/usr/lib/python3*", true).unwrap(),
            "/usr/lib/python3*"
        );
        assert!(absolute_path("/usr/*/python3", true).is_err());
        assert!(absolute_path("/usr/lib/py*th*n", true).is_err());
    }

    #[test]
    fn within_is_by_component() {
        assert!(is_within("/tmp/x", "/tmp"));
        assert!(is_within("/tmp", "/tmp"));
        assert!(!is_within("/tmpfoo", "/tmp"));
        assert!(is_within("/anything", "/"));
    }

    #[test]
    fn etc_names_refuse_generated_and_secret_files() {
        assert_eq!(etc_name("ssl/").unwrap(), "ssl");
        assert!(etc_name("passwd").unwrap_err().contains("generated"));
        assert!(etc_name("shadow").unwrap_err().contains("password"));
        assert!(etc_name("/etc/ssl").unwrap_err().contains("`ssl`"));
        assert!(etc_name("../root").is_err());
        assert!(etc_name("").is_err());
    }
}
