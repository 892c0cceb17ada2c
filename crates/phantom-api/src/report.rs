//! What the engine answers: how a run ended ([`RunReport`]), persistent sandboxes
//! ([`SandboxInfo`], [`SandboxMetrics`]), directory entries ([`FileEntry`]) and
//! snapshots ([`SnapshotInfo`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::access::Owner;
use crate::choice::{
    FileKind, Mode, NetworkDecision, NetworkMode, ProxyProtocol, SandboxStatus, StartKind,
};

/// What happened to a run. `phantom run --json` prints exactly this; the HTTP API adds
/// `cpu_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunReport {
    pub sandbox_id: String,
    pub profile: String,
    pub mode: Mode,
    /// `cold` (a sandbox made for this run), `warm` (a pooled one), `prewarmed` (a pooled
    /// one whose interpreter was already started), `forked` (forked from a pool's
    /// zygote into fresh namespaces) or `exec` (a persistent sandbox).
    pub start: StartKind,
    /// The payload's exit code, or 128+N when it was killed by signal N.
    pub exit_code: i32,
    /// The signal that killed the payload, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// A size-limited filesystem of the sandbox (its workspace, /tmp, /dev/shm) was
    /// full when the payload ended: a write ran into its limit (ENOSPC).
    #[serde(default)]
    pub disk_limit_hit: bool,
    /// Which ones, as the sandbox sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub full_filesystems: Vec<String>,
    pub output_truncated: bool,
    /// The caller cancelled the run and the sandbox was killed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
    pub wall_ms: f64,
    pub user_ms: f64,
    pub sys_ms: f64,
    pub max_rss_kb: u64,
    /// Captured output (lossy UTF-8), when the caller asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// How the run was isolated, as achieved on this host.
    pub isolation: IsolationReport,
    /// One line each: fallbacks and keys without effect.
    pub warnings: Vec<String>,
    /// `network: limited`: what the egress proxy allowed and refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkReport>,
    /// Mode wasm: how the module was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmReport>,
}

/// Mode wasm: how the module of a run was loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WasmReport {
    /// Served from the compile cache (false: compiled for this run, and cached for the
    /// next).
    pub cached: bool,
    /// Time spent reading and compiling the module, or loading it from the cache.
    pub load_ms: f64,
}

impl RunReport {
    /// What a limit did, in words (for people and models): the timeout, the memory
    /// limit, the output cap, a cancellation.
    pub fn notes(&self, output_limit: u64) -> Vec<String> {
        let mut notes = Vec::new();
        if self.cancelled {
            notes.push("cancelled: the sandbox was killed".to_string());
        }
        if self.timed_out {
            notes.push(format!(
                "timed out after {:.0} ms: the sandbox was killed (raise the timeout)",
                self.wall_ms
            ));
        }
        if self.oom_killed {
            notes.push("out of memory: the memory limit was hit (raise memory)".to_string());
        }
        if self.disk_limit_hit {
            notes.push(format!(
                "disk full: {} reached its size limit (raise resources.tmp for /tmp, memory for the workspace)",
                self.full_filesystems.join(", ")
            ));
        }
        if self.output_truncated {
            notes.push(format!(
                "output truncated at {output_limit} bytes (stdout and stderr together)"
            ));
        }
        notes
    }
}

/// The egress proxy's decisions for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkReport {
    /// The network mode (`limited`).
    pub mode: NetworkMode,
    /// Where the proxy listened inside the sandbox (`127.0.0.1:3128`).
    #[serde(default)]
    pub proxy: Option<String>,
    /// Connections made.
    #[serde(default)]
    pub allowed: u64,
    /// Connections refused by the policy.
    #[serde(default)]
    pub refused: u64,
    /// Connections the policy allowed that could not be made.
    #[serde(default)]
    pub failed: u64,
    /// Each decision (the first 1000), in order.
    #[serde(default)]
    pub connections: Vec<ConnectionRecord>,
}

/// One decision of the egress proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionRecord {
    pub protocol: ProxyProtocol,
    /// The host as the client asked for it (lower-case).
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    pub decision: NetworkDecision,
    /// The address connected to, when allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Why it was refused or failed (the rule that refused it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The isolation a run actually got (what the host allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IsolationReport {
    /// `v1`, `v2` or `none` (rlimits only).
    pub cgroup: String,
    /// Landlock ABI version enforced, 0 when none.
    pub landlock_abi: u32,
    /// Number of seccomp programs installed.
    pub seccomp_programs: usize,
    /// Host uid that uid 0 inside maps to.
    pub host_uid: u32,
    /// Whether the workspace is seen through an idmapped mount.
    pub idmapped_workspace: bool,
}

/// A persistent sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxInfo {
    pub name: String,
    pub id: String,
    /// Who created it: `local` or `key:<id>`.
    pub owner: Owner,
    pub status: SandboxStatus,
    /// Why it is dead, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub profile: String,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Host pid of its init (for the local user only; absent over the HTTP API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<i32>,
    /// Host directory bound at /workspace (for the local user only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the last command's start or end.
    pub last_used: u64,
    pub idle_timeout_s: u64,
    pub max_lifetime_s: u64,
}

impl SandboxInfo {
    /// Without host internals (init pid, host paths): what a remote caller sees.
    pub fn redacted(mut self) -> SandboxInfo {
        self.init_pid = None;
        self.workspace = None;
        self
    }
}

/// A process in a persistent sandbox (`ListProcesses`): one a command left running
/// in the background, or a command still running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessInfo {
    /// Its pid inside the sandbox (its own pid namespace; the init is 1 and is not
    /// listed). `KillProcess` takes this number.
    pub pid: i32,
    /// Its command line (argv), as the process shows it.
    pub cmdline: Vec<String>,
    /// Unix seconds of its start.
    pub started: u64,
    pub state: crate::choice::ProcessState,
}

/// A persistent sandbox's resource use, from its cgroup. `None`: not reported on this
/// host (no cgroup, or the controller lacks the counter).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxMetrics {
    pub name: String,
    /// Unix milliseconds of the sample.
    pub at_ms: u64,
    pub cpu_usage_ms: Option<f64>,
    /// CPU use since the previous sample, in cores (1.0 = one core busy).
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub pids_limit: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub oom_kills: u64,
}

/// One entry of a sandbox directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
    /// Where a symlink points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A snapshot of a sandbox's workspace (or, for the local user, of a host directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotInfo {
    pub tag: String,
    /// The content address of its manifest.
    pub manifest: String,
    pub files: u64,
    pub bytes: u64,
    /// Chunks this snapshot added to the store (0: nothing new).
    pub new_chunks: u64,
    /// Unix seconds.
    pub created: u64,
    /// What was snapshotted: `NAME:/workspace` for a sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Every error body of the HTTP API: what went wrong, in one line, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub error: String,
    /// The request field that was wrong, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<crate::request::Field>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiHealth {
    pub status: String,
    pub version: String,
}
