//! The [`Plan`]: everything decided about a sandbox before any process exists.
//!
//! `compile()` turns a [`crate::Profile`] (what a user wrote) into a `Plan` (what the
//! runtime replays). The spawn path makes no policy decisions: it walks `mounts` in
//! order, installs the `seccomp` programs exactly as given, applies `landlock` rules
//! and `limits`. A `Plan` is plain data so that `phantom policy compile --json` can
//! print it and tests can assert on it without root.

use serde::Serialize;

/// How much isolation a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No namespaces: only resource limits and the timeout (for debugging).
    Direct,
    /// The default: every namespace, a Docker-like seccomp denylist, Landlock.
    Sandbox,
    /// Allowlist seccomp, no network at all, read-only everything but the workspace.
    Hardened,
    /// A WASI preview 1 module under wasmtime, in a process of its own with the
    /// sandbox's fences but no namespaces: it sees only /workspace and /tmp (preopens).
    Wasm,
}

impl Mode {
    /// The lower-case name used in the DSL, the CLI and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Sandbox => "sandbox",
            Mode::Hardened => "hardened",
            Mode::Wasm => "wasm",
        }
    }
}

/// What network a sandbox sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// A network namespace with no interface up.
    None,
    /// A network namespace with only `lo`, and `lo` up.
    LoopbackOnly,
    /// Only `lo`, up, with phantom's egress proxy listening on 127.0.0.1:PROXY_PORT
    /// inside; the proxy (outside the sandbox) connects only where `network.allow`
    /// lets it.
    Limited,
    /// No network namespace: the host's network (explicit opt-in; never in hardened
    /// mode).
    Host,
}

impl NetworkMode {
    /// The name used in the DSL, the CLI and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::LoopbackOnly => "loopback-only",
            NetworkMode::Limited => "limited",
            NetworkMode::Host => "host",
        }
    }
}

/// An interpreter that warm pools keep started in each pooled sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interpreter {
    Python,
}

/// What a sandbox's `/` is made of (`filesystem.rootfs`, `phantom run --image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// An empty tmpfs with read-only binds of the host's system directories
    /// (`filesystem.system`) and a few `/etc` files (`filesystem.etc`).
    Host,
    /// An image of the store, by name: its root as the lower layer of an overlay
    /// whose upper layer is a tmpfs thrown away with the run (and `/` read-only, as on
    /// the host root). The image brings its own `/usr`, `/etc`, ...:
    /// `filesystem.system` and `filesystem.etc` are not bound.
    Image(String),
}

impl Rootfs {
    /// The image's name, when the root is one.
    pub fn image(&self) -> Option<&str> {
        match self {
            Rootfs::Host => None,
            Rootfs::Image(name) => Some(name),
        }
    }
}

impl std::fmt::Display for Rootfs {
    /// As written in the DSL: `host` or `image:NAME`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rootfs::Host => f.write_str("host"),
            Rootfs::Image(name) => write!(f, "image:{name}"),
        }
    }
}

impl Serialize for Rootfs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A compiled sandbox description. See the module docs.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Name of the profile this plan was compiled from.
    pub profile: String,
    pub mode: Mode,
    /// `runtime: python`: the interpreter warm pools keep started (None: none).
    pub prewarm: Option<Interpreter>,
    /// `performance.preload`: modules the zygote of a `runtime: python` profile imports.
    pub preload: Vec<String>,
    /// Hostname inside the UTS namespace.
    pub hostname: String,
    /// What `/` is made of: the host's system directories (bound by `mounts`) or an
    /// image, which the runtime mounts first, below everything in `mounts`.
    pub rootfs: Rootfs,
    /// Mounts, applied in this order below a fresh root (a tmpfs, or an image's
    /// overlay) that is remounted read-only once they are all in place.
    pub mounts: Vec<Mount>,
    /// Where the run's workspace appears inside (also listed in `mounts`).
    pub workspace_target: String,
    pub network: NetworkMode,
    /// `network.allow` / `network.deny`: what the egress proxy of a `limited` sandbox
    /// may connect to (empty in the other modes).
    pub egress: crate::egress::Egress,
    /// The base environment (PATH, HOME, LANG, TERM, and LD_PRELOAD when the profile
    /// asks for an allocator). The runtime appends the user's `--env` entries. Nothing
    /// from the host environment is passed unless named.
    pub env: Vec<(String, String)>,
    /// Default working directory inside the sandbox.
    pub cwd: String,
    pub limits: Limits,
    /// Seccomp programs, installed in this order as the last step before `execve`.
    /// The kernel runs all of them and the most restrictive action wins.
    pub seccomp: Vec<SeccompProgram>,
    pub landlock: LandlockPlan,
    /// When true, writable mounts (/tmp, /workspace, /dev/shm) are `noexec`.
    pub noexec_writable: bool,
    /// Things the user should know that do not stop the run (a key that has no effect
    /// on this build, a fallback). Printed once, one line each.
    pub warnings: Vec<String>,
}

/// Resource limits. Every field has a default in every profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// cgroup memory limit (memory.max / memory.limit_in_bytes).
    pub memory_bytes: u64,
    /// CPU quota in thousandths of a CPU (1.0 CPU = 1000).
    pub cpu_millis: u32,
    /// cgroup pids limit (also RLIMIT_NPROC when cgroups are not available).
    pub pids: u64,
    /// Wall-clock limit; the whole process tree is killed when it fires.
    pub wall_timeout_ms: u64,
    /// Bytes of stdout+stderr passed through before output is cut (and reported).
    pub output_limit_bytes: u64,
    /// Size of the tmpfs mounted at /tmp.
    pub tmp_size_bytes: u64,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_FSIZE: the largest file the payload may write.
    pub fsize_bytes: u64,
}

/// One step of filesystem setup. Targets are absolute paths inside the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Mount {
    /// A fresh tmpfs.
    Tmpfs {
        target: String,
        size_bytes: u64,
        mode: u32,
        read_only: bool,
        noexec: bool,
    },
    /// A bind of a host path. When the host path is a symlink (e.g. /bin -> usr/bin
    /// on merged-/usr systems) the runtime recreates the symlink instead.
    Bind {
        source: String,
        target: String,
        read_only: bool,
        /// Skip silently when the host path does not exist (e.g. /lib32).
        optional: bool,
    },
    /// A file generated by phantom (e.g. /etc/hosts naming the sandbox).
    File {
        target: String,
        contents: String,
        mode: u32,
    },
    /// A fresh procfs for the sandbox's pid namespace.
    Proc { target: String },
    /// A minimal /dev: tmpfs, binds of the listed host nodes (null, zero, ...), a new
    /// devpts instance, a tmpfs /dev/shm and the usual symlinks (fd, stdin, ptmx, ...).
    Dev {
        target: String,
        nodes: Vec<String>,
        shm_size_bytes: u64,
        /// /dev/shm read-only (hardened: only the workspace is writable).
        shm_read_only: bool,
    },
    /// The run's workspace directory, bound read-write.
    Workspace { target: String, noexec: bool },
    /// Hide a path if it exists: /dev/null over a file, an empty read-only tmpfs over
    /// a directory (e.g. /proc/kcore, /proc/acpi).
    Mask { target: String },
    /// Make an existing path read-only (e.g. /proc/sys).
    ReadOnly { target: String },
}

/// One classic-BPF instruction, laid out like the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A complete seccomp filter program for the build architecture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeccompProgram {
    /// What this program is for, e.g. "denylist", "enosys", "allowlist".
    pub name: String,
    /// Number of syscall rules that went into it (for reports).
    pub rule_count: usize,
    /// Syscall names it mentions, for `phantom policy compile`.
    pub syscalls: Vec<String>,
    pub instructions: Vec<SockFilter>,
}

/// Landlock access granted below a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read files, list directories, execute.
    ReadOnly,
    /// Everything `ReadOnly` allows plus create, write, remove, rename.
    ReadWrite,
}

/// One Landlock rule. `path` is inside the sandbox and may end in a `*` glob (e.g.
/// `/usr/lib/python3*`), expanded by the runtime after pivot_root.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LandlockRule {
    pub path: String,
    pub access: Access,
}

/// The Landlock fence, applied best effort (the runtime reports the ABI achieved).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LandlockPlan {
    pub enabled: bool,
    pub rules: Vec<LandlockRule>,
    /// Scope abstract unix sockets to the sandbox (Landlock ABI 6).
    pub scope_abstract_unix: bool,
    /// Scope signals to the sandbox (Landlock ABI 6).
    pub scope_signals: bool,
    /// The TCP fence (Landlock ABI 4), None when TCP is not fenced (loopback-only,
    /// host, direct, Landlock off).
    pub tcp: Option<LandlockTcp>,
}

/// Landlock's TCP fence: with it, `connect` and `bind` on TCP sockets succeed only
/// for the ports listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockTcp {
    pub connect_ports: Vec<u16>,
    pub bind_ports: Vec<u16>,
}
