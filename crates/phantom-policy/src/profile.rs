//! The [`Profile`]: a policy as the user wrote it, parsed and validated.
//!
//! A profile is read from YAML (see `profiles/default.yaml` for a commented example of
//! every key). Reading happens in three steps:
//!
//! 1. `yaml.rs` turns text into a tree of nodes that remember their `file:line:column`;
//! 2. [`Loader`] follows `extends:` — a built-in name or a path relative to the
//!    extending file — and deep-merges the child over the parent: mappings merge key
//!    by key, every other value (lists included) replaces the parent's. `profile`,
//!    `description` and `extends` are never inherited. Each file in the chain must be
//!    a valid profile on its own; a chain that comes back to a file it has already read
//!    is an error, as is a chain longer than [`MAX_EXTENDS`];
//! 3. [`Profile::from_tree`] walks the merged tree against the schema below. Unknown
//!    keys, wrong types and impossible values are errors that point at the node.
//!
//! Everything that can be checked without knowing the CLI overrides is checked here;
//! `compile()` checks the rest (e.g. read-write binds when `--mode hardened`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::error::{choice_error, closest, did_you_mean, shown, ChoiceError, PolicyError, SourcePos};
use crate::plan::{Access, Mode, NetworkMode};
use crate::seccomp;
use crate::units::{self, format_bytes};
use crate::yaml::{self, Node, Value};

/// The longest `extends:` chain followed.
pub const MAX_EXTENDS: usize = 8;

/// A validated policy. Field docs say what each key does; defaults are those of the
/// built-in `default` profile.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// `profile:` (required) — the profile's name: letters, digits, `.`, `_`, `-`,
    /// starting with a letter or digit, at most 64 characters. Shown in reports.
    pub name: String,
    /// `description:` (optional) — one line for `phantom profile list`. Not inherited.
    pub description: Option<String>,
    /// `extends:` (optional) — the parent as written: a built-in profile name
    /// (`python-dev`) or a path to a `.yaml` file, relative to the extending file.
    pub extends: Option<String>,
    /// `mode:` — `direct` (no namespaces, seccomp or Landlock: only limits and the
    /// timeout; for debugging), `sandbox` (default: every namespace, the seccomp
    /// denylist, Landlock), `hardened` (additionally: seccomp allowlist, no network at
    /// all, read-only `/tmp`, read-only binds only) or `wasm` (accepted, but this build
    /// has no wasmtime: `compile()` refuses it).
    pub mode: Mode,
    /// `runtime:` — `auto` (default) or `native`: both run the payload natively, the
    /// only runtime of this build. `wasm` is refused by `compile()`.
    pub runtime: Runtime,
    /// `security:` — seccomp, Landlock and the overall strictness.
    pub security: Security,
    /// `performance:` — start-up and I/O tuning.
    pub performance: Performance,
    /// `resources:` — limits. Every one has a default; none can be switched off.
    pub resources: Resources,
    /// `network:` — what network the sandbox sees.
    pub network: Network,
    /// `filesystem:` — what of the host the sandbox sees.
    pub filesystem: Filesystem,
    /// Where each key was written, by dotted path (`resources.memory`,
    /// `filesystem.binds[0].access`), so that `compile()` can point at it.
    #[serde(skip)]
    pub(crate) positions: BTreeMap<String, SourcePos>,
}

impl Profile {
    /// Where `key` (a dotted path such as `network.mode`) was written, if it was.
    pub fn position(&self, key: &str) -> Option<&SourcePos> {
        self.positions.get(key)
    }
}

/// `runtime:`. See [`Profile::runtime`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Auto,
    Native,
    Wasm,
}

/// `security:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Security {
    /// `security.level:` —
    /// * `low`: namespaces and seccomp only; Landlock is off (whatever `landlock:` says).
    /// * `medium` (default): plus Landlock.
    /// * `high`: plus writable mounts (`/tmp`, the workspace, `/dev/shm`) are `noexec`,
    ///   `memfd_create` fails with EPERM (a memfd could be executed, sidestepping
    ///   `noexec`; `allow: [memfd_create]` lifts this), and a denied syscall kills the
    ///   process (SECCOMP_RET_KILL_PROCESS) instead of failing with EPERM.
    pub level: SecurityLevel,
    /// `security.seccomp:`.
    pub seccomp: SeccompPolicy,
    /// `security.landlock:`.
    pub landlock: LandlockPolicy,
}

/// `security.level:`. See [`Security::level`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityLevel {
    Low,
    Medium,
    High,
}

/// `security.seccomp:` — which syscalls the payload may make. Not used in `direct` mode.
///
/// Every sandbox gets phantom's denylist (Docker's default denials: mount, ptrace,
/// bpf, keyctl, unshare, setns, io_uring, ...; `ioctl(TIOCSTI/TIOCLINUX)`; `clone` with
/// a namespace flag; `personality` other than Docker's allowed values) and `clone3`
/// fails with ENOSYS so that libc falls back to `clone`, whose flags can be checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeccompPolicy {
    /// `security.seccomp.default:` —
    /// * `allow` (default): everything not on the denylist is allowed.
    /// * `deny`: additionally, only an allowlist may run: phantom's base list (enough
    ///   for sh, coreutils, python3 and node) plus `allow`, minus `deny`. `execve` is
    ///   always on it, because the filter is installed before phantom execs the payload.
    ///
    /// `hardened` mode always uses the allowlist.
    pub default: SeccompDefault,
    /// `security.seccomp.allow:` — syscall names the payload may make even though a
    /// built-in list would stop them: added to the allowlist and taken off the
    /// denylist. The argument checks (TIOCSTI, clone flags, personality) stay.
    pub allow: Vec<String>,
    /// `security.seccomp.deny:` — syscall names denied in every mode but `direct`:
    /// added to the denylist and taken off the allowlist. A name may not be in both
    /// lists. `execve`, `exit` and `exit_group` cannot be denied; `clone3` is always
    /// answered ENOSYS and cannot appear in either list.
    pub deny: Vec<String>,
}

/// `security.seccomp.default:`. See [`SeccompPolicy::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompDefault {
    Allow,
    Deny,
}

/// `security.landlock:` — a filesystem fence inside the sandbox (Linux 5.13+, best
/// effort: the runtime reports what the kernel supports).
///
/// When on, the payload may read (and execute) below the `filesystem.system` paths,
/// `/etc`, `/proc` and `/dev`, read binds, and write only below the workspace, `/tmp`
/// (not in `hardened` mode), read-write binds, `/dev/shm`, `/dev/pts` and
/// `/dev/{null,zero,full,tty}`. Abstract unix sockets and signals are scoped to the
/// sandbox. Off at `security.level: low` and in `direct` mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockPolicy {
    /// `security.landlock.enabled:` (default `true`).
    pub enabled: bool,
    /// `security.landlock.paths:` — extra rules, each `{path, access}` with `access`
    /// `read-only` or `read-write`. `path` is inside the sandbox and absolute; its last
    /// component may contain `*` (`/usr/lib/python3*`), which the runtime expands.
    pub paths: Vec<LandlockPath>,
}

/// One `security.landlock.paths` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockPath {
    pub path: String,
    pub access: Access,
}

/// `performance:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Performance {
    /// `performance.zygote:` (default `false`) — keep pre-started sandboxes. Warm pools
    /// need phantom-supervisor, which this build does not have yet: `true` runs cold
    /// and says so in a warning.
    pub zygote: bool,
    /// `performance.pool_size:` (1..=1024) — how many sandboxes a warm pool keeps;
    /// same warning as `zygote`.
    pub pool_size: Option<u32>,
    /// `performance.io_mode:` — `sync` (default) or `uring`. io_uring stays blocked
    /// for the payload by seccomp and phantom's own file I/O uses read/write, so
    /// `uring` only produces a warning saying so.
    pub io_mode: IoMode,
    /// `performance.memory_allocator:` — `system` (default) or `jemalloc`, which sets
    /// `LD_PRELOAD` to the distribution's libjemalloc (the runtime checks it exists
    /// inside the sandbox).
    pub memory_allocator: MemoryAllocator,
}

/// `performance.io_mode:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoMode {
    Sync,
    Uring,
}

/// `performance.memory_allocator:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryAllocator {
    System,
    Jemalloc,
}

/// `resources:` — every limit a sandbox has. Sizes take `512MB`, `1GiB`, `4096`
/// (bytes; all units are powers of 1024); durations `30s`, `500ms`, `2m`, `1h` (a plain
/// number is seconds); see [`crate::units`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// `resources.memory:` (default 512MB, at least 1MB) — cgroup memory limit; /tmp
    /// contents count against it.
    pub memory_bytes: u64,
    /// `resources.cpu:` (default 1.0; more than 0, at most 1024) — CPU quota, in
    /// thousandths of a CPU.
    pub cpu_millis: u32,
    /// `resources.pids:` (default 256; 1..=4194304) — processes and threads.
    pub pids: u64,
    /// `resources.timeout:` (default 30s; more than 0) — wall-clock limit; the whole
    /// sandbox is killed when it fires.
    pub timeout_ms: u64,
    /// `resources.output:` (default 1MB; more than 0) — bytes of stdout+stderr kept
    /// before output is cut (and reported as truncated).
    pub output_bytes: u64,
    /// `resources.tmp:` (default 64MB; at least 4KB) — size of the tmpfs at /tmp.
    pub tmp_bytes: u64,
    /// `resources.nofile:` (default 1024; 8..=1048576) — RLIMIT_NOFILE.
    pub nofile: u64,
    /// `resources.fsize:` (default 1GB; more than 0) — RLIMIT_FSIZE, the largest file
    /// the payload may write.
    pub fsize_bytes: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            memory_bytes: 512 << 20,
            cpu_millis: 1000,
            pids: 256,
            timeout_ms: 30_000,
            output_bytes: 1 << 20,
            tmp_bytes: 64 << 20,
            nofile: 1024,
            fsize_bytes: 1 << 30,
        }
    }
}

/// `network:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    /// `network.mode:` — `none` (a network namespace with no interface up) or
    /// `loopback-only` (default; only `lo`, up). `hardened` mode always has `none`.
    /// `limited` and `host` are not available yet.
    pub mode: NetworkMode,
}

/// `filesystem:` — the sandbox's root is an empty tmpfs, made read-only at the end;
/// only what is listed here (plus generated /etc files, /tmp, the workspace, /proc and
/// a minimal /dev) appears in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    /// `filesystem.system:` — host directories bound read-only at the same place,
    /// skipped when missing (default `/usr /bin /sbin /lib /lib64 /lib32 /libx32`).
    /// Not `/`, `/etc` (see `etc`), `/tmp`, or anything under `/proc`, `/dev`, `/sys`.
    pub system: Vec<String>,
    /// `filesystem.etc:` — names below the host's `/etc` bound read-only, skipped when
    /// missing (default: `ld.so.cache ld.so.conf ld.so.conf.d nsswitch.conf localtime
    /// ssl ca-certificates alternatives os-release`). `passwd`, `group`, `hosts` and
    /// `hostname` are generated by phantom; `shadow` and `gshadow` are never bound.
    pub etc: Vec<String>,
    /// `filesystem.binds:` — extra host binds, each `{source, target, access}`; the
    /// source must exist. `read-write` is refused in `hardened` mode. Targets are
    /// absolute, not `/`, not under `/proc`, `/dev`, `/sys`, `/tmp` or the workspace.
    pub binds: Vec<HostBind>,
    /// `filesystem.workspace:` (default `/workspace`) — where the run's workspace
    /// directory appears, read-write; also the working directory.
    pub workspace: String,
}

impl Default for Filesystem {
    fn default() -> Self {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Filesystem {
            system: strings(&["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"]),
            etc: strings(&[
                "ld.so.cache",
                "ld.so.conf",
                "ld.so.conf.d",
                "nsswitch.conf",
                "localtime",
                "ssl",
                "ca-certificates",
                "alternatives",
                "os-release",
            ]),
            binds: Vec::new(),
            workspace: "/workspace".into(),
        }
    }
}

/// One `filesystem.binds` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostBind {
    /// Absolute host path.
    pub source: String,
    /// Absolute path inside the sandbox.
    pub target: String,
    /// `read-only` (default) or `read-write`.
    pub access: Access,
}

impl Mode {
    /// Parses a mode as written on the command line (`direct`, `sandbox`, `hardened`,
    /// `wasm`).
    pub fn parse(s: &str) -> Result<Mode, ChoiceError> {
        choose(s, MODES).ok_or_else(|| choice_error("mode", s, &names(MODES)))
    }
}

impl NetworkMode {
    /// Parses a network mode as written on the command line (`none`, `loopback-only`).
    pub fn parse(s: &str) -> Result<NetworkMode, ChoiceError> {
        if let Some(reason) = unavailable_network(s) {
            return Err(ChoiceError {
                what: "network mode",
                value: shown(s),
                reason,
            });
        }
        choose(s, NETWORK_MODES).ok_or_else(|| choice_error("network mode", s, &names(NETWORK_MODES)))
    }
}

const MODES: &[(&str, Mode)] = &[
    ("direct", Mode::Direct),
    ("sandbox", Mode::Sandbox),
    ("hardened", Mode::Hardened),
    ("wasm", Mode::Wasm),
];
const NETWORK_MODES: &[(&str, NetworkMode)] =
    &[("none", NetworkMode::None), ("loopback-only", NetworkMode::LoopbackOnly)];
const RUNTIMES: &[(&str, Runtime)] =
    &[("auto", Runtime::Auto), ("native", Runtime::Native), ("wasm", Runtime::Wasm)];
const LEVELS: &[(&str, SecurityLevel)] = &[
    ("low", SecurityLevel::Low),
    ("medium", SecurityLevel::Medium),
    ("high", SecurityLevel::High),
];
const SECCOMP_DEFAULTS: &[(&str, SeccompDefault)] =
    &[("allow", SeccompDefault::Allow), ("deny", SeccompDefault::Deny)];
const ACCESSES: &[(&str, Access)] = &[("read-only", Access::ReadOnly), ("read-write", Access::ReadWrite)];
const IO_MODES: &[(&str, IoMode)] = &[("sync", IoMode::Sync), ("uring", IoMode::Uring)];
const ALLOCATORS: &[(&str, MemoryAllocator)] = &[
    ("system", MemoryAllocator::System),
    ("jemalloc", MemoryAllocator::Jemalloc),
];

fn choose<T: Copy>(s: &str, choices: &[(&str, T)]) -> Option<T> {
    choices.iter().find(|(name, _)| *name == s).map(|(_, v)| *v)
}

fn names<T>(choices: &[(&'static str, T)]) -> Vec<&'static str> {
    choices.iter().map(|(name, _)| *name).collect()
}

/// Network modes people ask for that this build does not have, with what to do.
fn unavailable_network(s: &str) -> Option<String> {
    match s {
        "limited" => Some(
            "is not available yet (egress policies are planned); use loopback-only, or none"
                .into(),
        ),
        "host" => Some(
            "is not available: phantom never shares the host's network; use loopback-only, or none"
                .into(),
        ),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Limits shared by the YAML reader and compile()'s overrides.

/// Checks a memory limit; the message completes "resources.memory: ...".
pub(crate) fn check_memory(bytes: u64) -> Result<(), String> {
    if bytes < 1 << 20 {
        return Err(format!(
            "{} is too small: the memory limit must be at least 1MB",
            format_bytes(bytes)
        ));
    }
    Ok(())
}

pub(crate) fn check_pids(pids: u64) -> Result<(), String> {
    if pids == 0 || pids > 4_194_304 {
        return Err(format!("must be between 1 and 4194304, found {pids}"));
    }
    Ok(())
}

pub(crate) fn check_timeout(ms: u64) -> Result<(), String> {
    if ms == 0 {
        return Err("must be more than 0 (every sandbox has a wall-clock limit)".into());
    }
    Ok(())
}

pub(crate) fn check_cpu(millis: u32) -> Result<(), String> {
    if millis == 0 || millis > 1_024_000 {
        return Err(format!(
            "must be more than 0 and at most 1024 CPUs, found {} thousandths",
            millis
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Loading and `extends:`.

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
        let Value::Map(entries) = &root.value else {
            return Err(top_level_error(&root));
        };
        let Some((_, extends)) = entries.iter().find(|(k, _)| key_is(k, "extends")) else {
            return Ok(root);
        };
        let Value::Str(parent_name) = &extends.value else {
            return Err(wrong_type(extends, "extends", "a profile name or a path to a .yaml file"));
        };
        let parent = resolve_parent(parent_name, &layer.base, extends)?;
        if self.chain.is_empty() {
            self.chain.push((layer.identity.clone(), layer.file.to_string()));
        }
        if let Some(start) = self.chain.iter().position(|(id, _)| *id == parent.identity) {
            let mut names: Vec<&str> = self.chain[start..].iter().map(|(_, name)| name.as_str()).collect();
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
        self.chain.push((parent.identity.clone(), parent.file.to_string()));
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
    let meta = std::fs::metadata(path).map_err(read_error)?;
    if !meta.is_file() {
        return Err(read_error(Error::new(ErrorKind::InvalidInput, "not a regular file")));
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
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| read_error(Error::new(ErrorKind::InvalidData, "not UTF-8 text")))
}

/// The child's tree over the parent's: mappings merge key by key, anything else
/// replaces. `profile`, `description` and `extends` of the parent are dropped.
fn merge_profile(parent: Node, child: Node) -> Node {
    let mut parent = parent;
    if let Value::Map(entries) = &mut parent.value {
        entries.retain(|(k, _)| !["profile", "description", "extends"].iter().any(|n| key_is(k, n)));
    }
    merge(parent, child)
}

fn merge(parent: Node, child: Node) -> Node {
    match (parent.value, child.value) {
        (Value::Map(mut merged), Value::Map(child_entries)) => {
            for (key, value) in child_entries {
                let existing = match &key.value {
                    Value::Str(name) => merged.iter().position(|(k, _)| key_is(k, name)),
                    _ => None,
                };
                match existing {
                    Some(i) => {
                        let (_, old) = std::mem::replace(
                            &mut merged[i],
                            (key.clone(), Node { value: Value::Null, pos: key.pos.clone() }),
                        );
                        merged[i].1 = merge(old, value);
                    }
                    None => merged.push((key, value)),
                }
            }
            Node {
                value: Value::Map(merged),
                pos: child.pos,
            }
        }
        (_, value) => Node { value, pos: child.pos },
    }
}

fn key_is(key: &Node, name: &str) -> bool {
    matches!(&key.value, Value::Str(s) if s == name)
}

// ---------------------------------------------------------------------------------------
// The schema walk.

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
];
const SECURITY_KEYS: &[&str] = &["level", "seccomp", "landlock"];
const SECCOMP_KEYS: &[&str] = &["default", "allow", "deny"];
const LANDLOCK_KEYS: &[&str] = &["enabled", "paths"];
const LANDLOCK_PATH_KEYS: &[&str] = &["path", "access"];
const PERFORMANCE_KEYS: &[&str] = &["zygote", "pool_size", "io_mode", "memory_allocator"];
const RESOURCE_KEYS: &[&str] = &["memory", "cpu", "pids", "timeout", "output", "tmp", "nofile", "fsize"];
const NETWORK_KEYS: &[&str] = &["mode"];
const FILESYSTEM_KEYS: &[&str] = &["system", "etc", "binds", "workspace"];
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
                io_mode: IoMode::Sync,
                memory_allocator: MemoryAllocator::System,
            },
            resources: Resources::default(),
            network: Network {
                mode: NetworkMode::LoopbackOnly,
            },
            filesystem: Filesystem::default(),
            positions: BTreeMap::new(),
        };
        if !matches!(root.value, Value::Map(_)) {
            return Err(top_level_error(root));
        }
        for (key, value) in r.map(root, "", TOP_KEYS)? {
            match key {
                "profile" => name = Some(r.profile_name(value)?),
                "description" => profile.description = Some(r.string(value, "description")?),
                "extends" => profile.extends = Some(r.string(value, "extends")?),
                "mode" => profile.mode = r.choice(value, "mode", MODES)?,
                "runtime" => profile.runtime = r.choice(value, "runtime", RUNTIMES)?,
                "security" => r.security(value, &mut profile.security)?,
                "performance" => r.performance(value, &mut profile.performance)?,
                "resources" => r.resources(value, &mut profile.resources)?,
                "network" => r.network(value, &mut profile.network)?,
                "filesystem" => r.filesystem(value, &mut profile.filesystem)?,
                _ => unreachable!("Reader::map only returns listed keys"),
            }
        }
        profile.name = name.ok_or_else(|| PolicyError::MissingKey {
            at: SourcePos {
                line: 1,
                column: 1,
                ..root.pos.source()
            },
            key: "profile".into(),
            hint: "every policy names itself, e.g. `profile: my-python`".into(),
        })?;
        check_filesystem(&profile.filesystem, &r)?;
        profile.positions = r.positions;
        Ok(profile)
    }
}

fn top_level_error(root: &Node) -> PolicyError {
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

fn wrong_type(node: &Node, field: &str, expected: &str) -> PolicyError {
    PolicyError::WrongType {
        at: node.pos.source(),
        field: field.to_string(),
        expected: expected.to_string(),
        found: node.value.describe(),
    }
}

fn invalid(node: &Node, field: &str, message: String) -> PolicyError {
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
}

impl Reader {
    fn record(&mut self, node: &Node, path: &str) {
        self.positions.insert(path.to_string(), node.pos.source());
    }

    /// The entries of a mapping whose keys must all be in `keys`.
    fn map<'n>(&mut self, node: &'n Node, path: &str, keys: &[&'static str]) -> Result<Vec<(&'static str, &'n Node)>, PolicyError> {
        let Value::Map(entries) = &node.value else {
            return Err(wrong_type(node, path, "a mapping (`key: value` lines)"));
        };
        if !path.is_empty() {
            self.record(node, path);
        }
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let Value::Str(name) = &key.value else {
                return Err(PolicyError::WrongType {
                    at: key.pos.source(),
                    field: if path.is_empty() { "policy".into() } else { path.to_string() },
                    expected: "a key name".into(),
                    found: key.value.describe(),
                });
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
                return Err(PolicyError::UnknownKey {
                    at: key.pos.source(),
                    key: shown(name),
                    section,
                    hint,
                });
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

    fn choice<T: Copy>(&mut self, node: &Node, path: &str, choices: &[(&'static str, T)]) -> Result<T, PolicyError> {
        let valid = names(choices);
        let expected = format!("one of: {}", valid.join(", "));
        let Value::Str(s) = &node.value else {
            self.record(node, path);
            return Err(wrong_type(node, path, &expected));
        };
        let word = self.string(node, path)?;
        if path == "network.mode" {
            if let Some(reason) = unavailable_network(&word) {
                return Err(invalid(node, path, format!("`{}` {reason}", shown(s))));
            }
        }
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

    fn strings(&mut self, node: &Node, path: &str) -> Result<Vec<(String, Node)>, PolicyError> {
        let items = self.list(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push((self.string(item, &format!("{path}[{i}]"))?, item.clone()));
        }
        Ok(out)
    }

    /// A whole number, written as a number or as a string of digits.
    fn whole(&mut self, node: &Node, path: &str) -> Result<u64, PolicyError> {
        self.record(node, path);
        let out_of_range = || invalid(node, path, format!("{} is out of range", node.value.describe()));
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
            match key {
                "level" => out.level = self.choice(value, "security.level", LEVELS)?,
                "seccomp" => self.seccomp(value, &mut out.seccomp)?,
                "landlock" => self.landlock(value, &mut out.landlock)?,
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn seccomp(&mut self, node: &Node, out: &mut SeccompPolicy) -> Result<(), PolicyError> {
        let mut allow = Vec::new();
        let mut deny = Vec::new();
        for (key, value) in self.map(node, "security.seccomp", SECCOMP_KEYS)? {
            match key {
                "default" => out.default = self.choice(value, "security.seccomp.default", SECCOMP_DEFAULTS)?,
                "allow" => allow = self.syscalls(value, "security.seccomp.allow")?,
                "deny" => deny = self.syscalls(value, "security.seccomp.deny")?,
                _ => unreachable!(),
            }
        }
        for (name, node) in &allow {
            if deny.iter().any(|(d, _)| d == name) {
                return Err(invalid(
                    node,
                    "security.seccomp.allow",
                    format!("`{name}` is also in security.seccomp.deny; remove it from one of the lists"),
                ));
            }
        }
        for (name, node) in &deny {
            if seccomp::NEVER_DENIED.contains(&name.as_str()) {
                return Err(invalid(
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

    /// A list of syscall names, each checked against the build architecture's table.
    fn syscalls(&mut self, node: &Node, path: &str) -> Result<Vec<(String, Node)>, PolicyError> {
        let names = self.strings(node, path)?;
        // On an architecture phantom has no table for, compile() refuses seccomp anyway.
        let Ok(arch) = seccomp::build_arch() else {
            return Ok(names);
        };
        for (name, item) in &names {
            if name == "clone3" {
                return Err(invalid(
                    item,
                    path,
                    "`clone3` is always answered ENOSYS so that libc falls back to clone, whose flags seccomp can check; remove it".into(),
                ));
            }
            if arch.number(name).is_none() {
                return Err(invalid(
                    item,
                    path,
                    format!(
                        "`{}` is not a syscall on {}{}",
                        shown(name),
                        arch.name,
                        did_you_mean(name, arch.syscall_names())
                    ),
                ));
            }
        }
        Ok(names)
    }

    fn landlock(&mut self, node: &Node, out: &mut LandlockPolicy) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "security.landlock", LANDLOCK_KEYS)? {
            match key {
                "enabled" => out.enabled = self.boolean(value, "security.landlock.enabled")?,
                "paths" => {
                    out.paths.clear();
                    for (i, item) in self.list(value, "security.landlock.paths")?.iter().enumerate() {
                        let path = format!("security.landlock.paths[{i}]");
                        out.paths.push(self.landlock_path(item, &path)?);
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
                    rule_path = Some(absolute_path(&text, true).map_err(|m| invalid(value, &field, m))?);
                }
                "access" => access = self.choice(value, &format!("{path}.access"), ACCESSES)?,
                _ => unreachable!(),
            }
        }
        let path_value = rule_path.ok_or_else(|| PolicyError::MissingKey {
            at: node.pos.source(),
            key: format!("{path}.path"),
            hint: "each entry needs `path:` and `access:`, e.g. {path: /opt/data, access: read-only}".into(),
        })?;
        Ok(LandlockPath { path: path_value, access })
    }

    fn performance(&mut self, node: &Node, out: &mut Performance) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "performance", PERFORMANCE_KEYS)? {
            match key {
                "zygote" => out.zygote = self.boolean(value, "performance.zygote")?,
                "pool_size" => {
                    let size = self.whole(value, "performance.pool_size")?;
                    if !(1..=1024).contains(&size) {
                        return Err(invalid(value, "performance.pool_size", format!("must be between 1 and 1024, found {size}")));
                    }
                    out.pool_size = Some(size as u32);
                }
                "io_mode" => out.io_mode = self.choice(value, "performance.io_mode", IO_MODES)?,
                "memory_allocator" => {
                    out.memory_allocator = self.choice(value, "performance.memory_allocator", ALLOCATORS)?
                }
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn resources(&mut self, node: &Node, out: &mut Resources) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "resources", RESOURCE_KEYS)? {
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
                    out.cpu_millis = units::parse_cpus(&text).map_err(|e| invalid(value, path, e.to_string()))?;
                }
                "pids" => {
                    out.pids = self.whole(value, path)?;
                    check(check_pids(out.pids))?;
                }
                "timeout" => {
                    let text = self.unit_text(value, path, "a duration such as 30s")?;
                    out.timeout_ms = units::parse_duration_ms(&text).map_err(|e| invalid(value, path, e.to_string()))?;
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
                        return Err(invalid(value, path, "must be more than 0 (0 would make every write fail)".into()));
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
                "mode" => out.mode = self.choice(value, "network.mode", NETWORK_MODES)?,
                _ => unreachable!(),
            }
        }
        Ok(())
    }

    fn filesystem(&mut self, node: &Node, out: &mut Filesystem) -> Result<(), PolicyError> {
        for (key, value) in self.map(node, "filesystem", FILESYSTEM_KEYS)? {
            match key {
                "system" => {
                    out.system.clear();
                    for (i, (text, item)) in self.strings(value, "filesystem.system")?.into_iter().enumerate() {
                        let field = format!("filesystem.system[{i}]");
                        let path = absolute_path(&text, false).map_err(|m| invalid(&item, &field, m))?;
                        system_path_allowed(&path).map_err(|m| invalid(&item, &field, m))?;
                        out.system.push(path);
                    }
                }
                "etc" => {
                    out.etc.clear();
                    for (i, (text, item)) in self.strings(value, "filesystem.etc")?.into_iter().enumerate() {
                        let field = format!("filesystem.etc[{i}]");
                        out.etc.push(etc_name(&text).map_err(|m| invalid(&item, &field, m))?);
                    }
                }
                "binds" => {
                    out.binds.clear();
                    for (i, item) in self.list(value, "filesystem.binds")?.iter().enumerate() {
                        let bind = self.bind(item, &format!("filesystem.binds[{i}]"))?;
                        out.binds.push(bind);
                    }
                }
                "workspace" => {
                    let text = self.string(value, "filesystem.workspace")?;
                    out.workspace = absolute_path(&text, false).map_err(|m| invalid(value, "filesystem.workspace", m))?;
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
        let missing = |key: &str| PolicyError::MissingKey {
            at: node.pos.source(),
            key: format!("{path}.{key}"),
            hint: "each bind needs `source:` and `target:`, e.g. {source: /opt/tool, target: /opt/tool, access: read-only}".into(),
        };
        Ok(HostBind {
            source: source.ok_or_else(|| missing("source"))?,
            target: target.ok_or_else(|| missing("target"))?,
            access,
        })
    }
}

/// Normalises an absolute path (`//a/b/` → `/a/b`). `*` is allowed only in the last
/// component, and only when `glob` is set. Errors complete "field: ...".
pub(crate) fn absolute_path(text: &str, glob: bool) -> Result<String, String> {
    let shown_text = shown(text);
    if !text.starts_with('/') {
        return Err(format!("`{shown_text}` is not an absolute path (start it with /)"));
    }
    if text.len() > 4096 || text.chars().any(|c| c.is_control()) {
        return Err(format!("`{shown_text}` is not a usable path"));
    }
    let components: Vec<&str> = text.split('/').filter(|c| !c.is_empty()).collect();
    for (i, component) in components.iter().enumerate() {
        if *component == ".." || *component == "." {
            return Err(format!("`{shown_text}` contains `{component}`; write the path without it"));
        }
        if component.contains('*') && (!glob || i + 1 != components.len()) {
            return Err(if glob {
                format!("`{shown_text}`: `*` is allowed only in the last component")
            } else {
                format!("`{shown_text}`: globs are allowed only in security.landlock.paths")
            });
        }
    }
    Ok(format!("/{}", components.join("/")))
}

/// Whether `path` is `base` or below it.
pub(crate) fn is_within(path: &str, base: &str) -> bool {
    base == "/" || path == base || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
}

/// Places no bind may cover: the kernel's own filesystems.
const KERNEL_DIRS: &[&str] = &["/proc", "/dev", "/sys"];

fn system_path_allowed(path: &str) -> Result<(), String> {
    if path == "/" {
        return Err("`/` would bind the whole host; list the directories you need".into());
    }
    if let Some(dir) = KERNEL_DIRS.iter().find(|d| is_within(path, d)) {
        return Err(format!("`{path}` is under {dir}, which phantom provides itself"));
    }
    if is_within(path, "/etc") {
        return Err(format!("`{path}` is under /etc; list names below /etc in filesystem.etc instead"));
    }
    if is_within(path, "/tmp") {
        return Err(format!("`{path}` is under /tmp, which is the sandbox's own tmpfs"));
    }
    Ok(())
}

/// Checks a `filesystem.etc` name (`ssl`, `ssl/certs`) and normalises it.
fn etc_name(text: &str) -> Result<String, String> {
    let shown_text = shown(text);
    if text.starts_with('/') {
        let hint = text.strip_prefix("/etc/").unwrap_or("ssl");
        return Err(format!("`{shown_text}`: write names below /etc, e.g. `{}`", shown(hint)));
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
        return Err(format!("/etc/{first} is generated by phantom; remove it from the list"));
    }
    if SECRET_ETC.contains(&first) {
        return Err(format!("/etc/{first} holds password hashes and is never bound"));
    }
    Ok(name)
}

/// Checks that system paths, binds and the workspace do not hide each other.
fn check_filesystem(fs: &Filesystem, r: &Reader) -> Result<(), PolicyError> {
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
        return Err(error("filesystem.workspace", "`/` cannot be the workspace; use e.g. /workspace".into()));
    }
    for reserved in KERNEL_DIRS.iter().chain(["/etc", "/tmp"].iter()) {
        if is_within(ws, reserved) || is_within(reserved, ws) {
            return Err(error(
                "filesystem.workspace",
                format!("`{ws}` overlaps {reserved}; use a directory of its own, e.g. /workspace"),
            ));
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
            return Err(error(
                &key,
                format!("the workspace `{ws}` and the system path `{system}` overlap; give the workspace a directory of its own, e.g. /workspace"),
            ));
        }
    }
    let mut targets = BTreeSet::new();
    for (i, bind) in fs.binds.iter().enumerate() {
        let key = format!("filesystem.binds[{i}].target");
        let t = bind.target.as_str();
        if t == "/" {
            return Err(error(&key, "a bind cannot cover `/`".into()));
        }
        if let Some(dir) = KERNEL_DIRS.iter().find(|d| is_within(t, d)) {
            return Err(error(&key, format!("`{t}` is under {dir}, which phantom provides itself")));
        }
        if is_within(t, "/tmp") {
            return Err(error(&key, format!("`{t}` is under /tmp, whose tmpfs is mounted after binds and would hide it")));
        }
        if is_within(t, ws) {
            return Err(error(&key, format!("`{t}` is under the workspace {ws}, which is mounted after binds and would hide it")));
        }
        if fs.system.iter().any(|s| s == t) {
            return Err(error(&key, format!("`{t}` is already bound from filesystem.system")));
        }
        if let Some(name) = t.strip_prefix("/etc/") {
            if GENERATED_ETC.contains(&name) {
                return Err(error(&key, format!("{t} is generated by phantom")));
            }
        }
        if !targets.insert(t) {
            return Err(error(&key, format!("`{t}` is the target of another bind")));
        }
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
        assert_eq!(absolute_path("/usr/lib/python3*", true).unwrap(), "/usr/lib/python3*");
        assert!(absolute_path("/usr/*/python3", true).is_err());
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

    #[test]
    fn cli_words_parse_with_helpful_errors() {
        assert_eq!(Mode::parse("hardened"), Ok(Mode::Hardened));
        let err = Mode::parse("sandbx").unwrap_err().to_string();
        assert!(err.contains("did you mean `sandbox`"), "{err}");
        assert!(err.contains("direct, sandbox, hardened, wasm"), "{err}");
        assert_eq!(NetworkMode::parse("loopback-only"), Ok(NetworkMode::LoopbackOnly));
        let err = NetworkMode::parse("limited").unwrap_err().to_string();
        assert!(err.contains("not available yet") && err.contains("loopback-only"), "{err}");
    }
}
