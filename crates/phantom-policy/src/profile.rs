//! The [`Profile`]: a policy as the user wrote it, validated — the model of the DSL.
//!
//! Every field's rustdoc says what its YAML key does and what its default is;
//! `profiles/default.yaml` is the same reference as a commented file. Reading a profile
//! happens elsewhere, in three steps:
//!
//! 1. `yaml.rs` turns text into a tree of nodes that remember their `file:line:column`;
//! 2. `extends.rs` follows `extends:` and deep-merges each child over its parent;
//! 3. `schema.rs` walks the merged tree against the schema: unknown keys, wrong types
//!    and impossible values are errors that point at the node.
//!
//! Everything that can be checked without the command line's overrides is checked
//! then; `compile()` checks the rest (e.g. read-write binds under `--mode hardened`).
//! The value checks both need (`check_memory`, ...) live here.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::egress::EgressRule;
use crate::error::{choice_error, shown, ChoiceError, SourcePos};
use crate::plan::{Access, Mode, NetworkMode, Rootfs};
use crate::units::format_bytes;

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
    /// all, read-only `/tmp`, read-only binds only, and none of the keys that would
    /// undo that — see `weaken.rs`) or `wasm` (a WASI preview 1 module under
    /// wasmtime that sees only /workspace and /tmp; see docs/ARCHITECTURE.md).
    pub mode: Mode,
    /// `runtime:` — `auto` (default) or `native`: both run the payload natively, the
    /// only runtime of this build. `python`: native too, and phantom-supervisor's warm
    /// pools keep python3 started (site imported) in each pooled sandbox, so that
    /// `phantom run -- python3 -c CODE` / `python3 script.py` skip the interpreter's
    /// start-up. `wasm`: only with `mode: wasm` (the module runs under wasmtime).
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
    /// `env:` (optional) — environment variables set in the sandbox, `NAME: value`
    /// (names of letters, digits and `_`, not starting with a digit). They come after
    /// phantom's own (PATH, HOME, ...; a name here replaces one of those) and before
    /// the run's `--env`, which wins. A child's `env:` merges over its parent's, name
    /// by name. The host's environment is never passed in.
    pub env: Vec<(String, String)>,
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
    /// Native, and warm pools keep python3 started in each pooled sandbox.
    Python,
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
/// When on, the payload may read (and execute) what is mounted — the root, the
/// `filesystem.system` paths, `/etc`, `/proc`, `/dev`, read-only binds — and write
/// only below the workspace, `/tmp` (not in `hardened` mode), read-write binds,
/// `/dev/shm`, `/dev/pts` and `/dev/{null,zero,full,tty}`. Abstract unix sockets and signals are scoped to the
/// sandbox. Off at `security.level: low` and in `direct` mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockPolicy {
    /// `security.landlock.enabled:` (default `true`).
    pub enabled: bool,
    /// `security.landlock.paths:` — extra rules, each `{path, access}` with `access`
    /// `read-only` or `read-write`. `path` is inside the sandbox and absolute; its last
    /// component may contain one `*` (`/usr/lib/python3*`), which the runtime expands.
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
    /// `performance.zygote:` (default `false`) — keep pre-started sandboxes of this
    /// profile: `phantom-supervisor` started without `--profiles` pools every built-in
    /// profile that sets it. Policy files are not pooled (a run with `--policy` that
    /// sets it gets a warning and starts cold).
    pub zygote: bool,
    /// `performance.pool_size:` (1..=1024) — how many sandboxes the profile's warm pool
    /// keeps (wins over `phantom-supervisor --zygote-pools`).
    pub pool_size: Option<u32>,
    /// `performance.preload:` — Python modules the profile's zygote imports before any
    /// request (`runtime: python`), so that a run finds them loaded. A module that
    /// fails to import stops the zygote with an error naming it; `NAME?` is skipped
    /// when the module is not installed.
    pub preload: Vec<String>,
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
    /// `network.mode:` — `none` (a network namespace with no interface up),
    /// `loopback-only` (default; only `lo`, up), `limited` (only `lo`, and phantom's
    /// egress proxy at 127.0.0.1:3128 inside — HTTP_PROXY, HTTPS_PROXY, ALL_PROXY are
    /// set — which connects only where `allow` says) or `host` (no network namespace:
    /// the host's network; refused in `hardened` mode). `hardened` mode has `none`.
    pub mode: NetworkMode,
    /// `network.allow:` — where a `limited` sandbox's proxy may connect: `pypi.org`,
    /// `*.pythonhosted.org` (subdomains), `api.example.com:443`, `10.0.0.5:8080`
    /// (an address entry reaches its address even in a reserved range; a name whose
    /// addresses are reserved needs `allow_reserved`). Under another mode it has no
    /// effect, and compile() warns.
    pub allow: Vec<EgressRule>,
    /// `network.deny:` — entries written like `allow` that are refused even when
    /// `allow` matches (deny wins).
    pub deny: Vec<EgressRule>,
    /// `network.allow_reserved:` — names (`pypi.mirror.internal`, `*.corp.example`,
    /// optionally with `:PORT`) whose addresses the proxy connects to even when they
    /// are in a reserved range (loopback, RFC 1918 private, link-local, CGNAT,
    /// TEST-NET, benchmarking, ...), which it otherwise refuses: the way to reach a
    /// package mirror on an internal network by its name. Each entry must also be
    /// allowed by `allow`; addresses are not accepted here (an address entry in
    /// `allow` already reaches its address). Default: none.
    pub allow_reserved: Vec<EgressRule>,
}

/// `filesystem:` — the sandbox's root is an empty tmpfs (or an image, see `rootfs`),
/// made read-only at the end; only what is listed here (plus generated /etc files,
/// /tmp, the workspace, /proc and a minimal /dev) appears in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    /// `filesystem.rootfs:` — `host` (default: an empty tmpfs with the `system` and
    /// `etc` binds below) or `image:NAME` (an image of the store, see `phantom image
    /// list`: its root, read-only like the host root, through an overlay whose tmpfs
    /// upper layer is thrown away with the run, so nothing reaches the store; `system`,
    /// `etc` and the generated `passwd` and `group` are left out, the image brings its
    /// own; its Env, WorkingDir, Entrypoint and Cmd apply as in Docker). `phantom run
    /// --image NAME` overrides it. Not in `direct` mode.
    pub rootfs: Rootfs,
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
    /// `filesystem.toolchains:` — language toolchains to find on the host where their
    /// usual installers put them, and bind read-only at the same path with their
    /// `bin` directories first in `PATH` (see [`Toolchain`]). One that is not
    /// installed is skipped; one the sandbox's user cannot reach (e.g. under a 0700
    /// home) is left out with a warning saying what to do. Default: none.
    pub toolchains: Vec<Toolchain>,
    /// `filesystem.workspace:` (default `/workspace`) — where the run's workspace
    /// directory appears, read-write; also the working directory.
    pub workspace: String,
}

/// A `filesystem.toolchains` entry: where it is looked for, with `~` the home of the
/// user phantom runs as (`HOME`), in the environment of the process that compiles the
/// policy (the `phantom` command, or phantom-supervisor for runs it serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Toolchain {
    /// rustup: `$CARGO_HOME/bin` (default `~/.cargo/bin`, the `rustc`, `cargo`, ...
    /// proxies) and `$RUSTUP_HOME` (default `~/.rustup`, the toolchains); `RUSTUP_HOME`
    /// is set inside so that the proxies find them (`CARGO_HOME` is not: cargo's
    /// registry cache stays writable under `HOME`).
    Rustup,
    /// Go from the official tarball: `$GOROOT` (default `/usr/local/go`), its `bin`.
    Go,
    /// nvm: `$NVM_DIR` (default `~/.nvm`): the Node.js version the invoking `PATH`
    /// uses, else the newest under `versions/node/`, its `bin`.
    Nvm,
}

impl Toolchain {
    /// The name used in the DSL.
    pub fn as_str(self) -> &'static str {
        match self {
            Toolchain::Rustup => "rustup",
            Toolchain::Go => "go",
            Toolchain::Nvm => "nvm",
        }
    }
}

impl Default for Filesystem {
    fn default() -> Self {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Filesystem {
            rootfs: Rootfs::Host,
            system: strings(&[
                "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
            ]),
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
            toolchains: Vec::new(),
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
    /// Parses a network mode as written on the command line (`none`, `loopback-only`,
    /// `limited`, `host`).
    pub fn parse(s: &str) -> Result<NetworkMode, ChoiceError> {
        choose(s, NETWORK_MODES)
            .ok_or_else(|| choice_error("network mode", s, &names(NETWORK_MODES)))
    }
}

pub(crate) const MODES: &[(&str, Mode)] = &[
    ("direct", Mode::Direct),
    ("sandbox", Mode::Sandbox),
    ("hardened", Mode::Hardened),
    ("wasm", Mode::Wasm),
];
pub(crate) const NETWORK_MODES: &[(&str, NetworkMode)] = &[
    ("none", NetworkMode::None),
    ("loopback-only", NetworkMode::LoopbackOnly),
    ("limited", NetworkMode::Limited),
    ("host", NetworkMode::Host),
];
pub(crate) const RUNTIMES: &[(&str, Runtime)] = &[
    ("auto", Runtime::Auto),
    ("native", Runtime::Native),
    ("python", Runtime::Python),
    ("wasm", Runtime::Wasm),
];
pub(crate) const LEVELS: &[(&str, SecurityLevel)] = &[
    ("low", SecurityLevel::Low),
    ("medium", SecurityLevel::Medium),
    ("high", SecurityLevel::High),
];
pub(crate) const SECCOMP_DEFAULTS: &[(&str, SeccompDefault)] = &[
    ("allow", SeccompDefault::Allow),
    ("deny", SeccompDefault::Deny),
];
pub(crate) const ACCESSES: &[(&str, Access)] = &[
    ("read-only", Access::ReadOnly),
    ("read-write", Access::ReadWrite),
];
pub(crate) const TOOLCHAINS: &[(&str, Toolchain)] = &[
    ("rustup", Toolchain::Rustup),
    ("go", Toolchain::Go),
    ("nvm", Toolchain::Nvm),
];
pub(crate) const IO_MODES: &[(&str, IoMode)] = &[("sync", IoMode::Sync), ("uring", IoMode::Uring)];
pub(crate) const ALLOCATORS: &[(&str, MemoryAllocator)] = &[
    ("system", MemoryAllocator::System),
    ("jemalloc", MemoryAllocator::Jemalloc),
];

pub(crate) fn choose<T: Copy>(s: &str, choices: &[(&str, T)]) -> Option<T> {
    choices.iter().find(|(name, _)| *name == s).map(|(_, v)| *v)
}

pub(crate) fn names<T>(choices: &[(&'static str, T)]) -> Vec<&'static str> {
    choices.iter().map(|(name, _)| *name).collect()
}

impl Rootfs {
    /// Parses `host` or `image:NAME` as written in `filesystem.rootfs`; the message
    /// completes "filesystem.rootfs: ...".
    pub fn parse(s: &str) -> Result<Rootfs, String> {
        if s == "host" {
            return Ok(Rootfs::Host);
        }
        match s.strip_prefix("image:") {
            Some(name) => check_image_name(name).map(|()| Rootfs::Image(name.to_string())),
            None => Err(format!(
                "`{}` is not a root filesystem: write `host` or `image:NAME` (an image of `phantom image list`)",
                shown(s)
            )),
        }
    }
}

/// Longest image name (as the image store allows).
const MAX_IMAGE_NAME: usize = 128;

/// Checks an image name as the image store does: letters, digits and `._-:/@`,
/// starting with a letter or digit, no `..`, `//` or trailing `/`, at most 128 bytes.
/// The message completes "filesystem.rootfs: ..." or "--image: ...".
pub(crate) fn check_image_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("no image name after `image:`; write e.g. `image:python:3.11-slim`".into());
    }
    let ok = name.len() <= MAX_IMAGE_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b))
        && !name.contains("..")
        && !name.contains("//")
        && !name.ends_with('/');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid image name: use letters, digits and . _ - : / @, start with a letter or digit, no `..`, `//` or trailing `/`, at most {MAX_IMAGE_NAME} characters",
            shown(name)
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_words_parse_with_helpful_errors() {
        assert_eq!(Mode::parse("hardened"), Ok(Mode::Hardened));
        let err = Mode::parse("sandbx").unwrap_err().to_string();
        assert!(err.contains("did you mean `sandbox`"), "{err}");
        assert!(err.contains("direct, sandbox, hardened, wasm"), "{err}");
        assert_eq!(
            NetworkMode::parse("loopback-only"),
            Ok(NetworkMode::LoopbackOnly)
        );
        assert_eq!(NetworkMode::parse("limited"), Ok(NetworkMode::Limited));
        assert_eq!(NetworkMode::parse("host"), Ok(NetworkMode::Host));
        let err = NetworkMode::parse("limitd").unwrap_err().to_string();
        assert!(err.contains("did you mean `limited`"), "{err}");
    }
}
