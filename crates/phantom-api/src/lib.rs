//! The request/response model shared by the CLI, MCP and HTTP front ends. No I/O.
//!
//! * [`RunRequest`] — one sandboxed command: what to run and the overrides a caller may
//!   put on top of a profile.
//! * [`RunReport`] — what happened: exit status, which limit fired, resource use and
//!   (when captured) the output. `phantom run --json` prints exactly this.
#![forbid(unsafe_code)]

pub mod access;
pub mod choice;
pub mod engine;
pub mod report;
pub mod request;
pub mod strict;

/// The profile a run gets when it names none and its language has no own default.
pub const DEFAULT_PROFILE: &str = "default";

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    /// A built-in profile by name (`python-dev`, `strict`, ...).
    Profile(String),
    /// A policy file in the DSL.
    File(String),
}

/// Limits and settings a caller may put on top of the profile's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunOverrides {
    /// `direct`, `sandbox` or `hardened`.
    pub mode: Option<String>,
    /// e.g. "512MB".
    pub memory: Option<String>,
    /// e.g. "1.0".
    pub cpus: Option<String>,
    pub pids: Option<u64>,
    /// e.g. "30s".
    pub timeout: Option<String>,
    /// `none`, `loopback-only`, `limited` or `host`.
    pub network: Option<String>,
}

/// One sandboxed command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    pub policy: PolicySource,
    pub overrides: RunOverrides,
    /// The command and its arguments; `argv[0]` is looked up on the sandbox's PATH.
    pub argv: Vec<String>,
    /// Extra environment variables (`--env K=V`), on top of PATH, HOME, LANG, TERM
    /// (and an image's Env).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (default: an image's WorkingDir, else the
    /// workspace).
    pub cwd: Option<String>,
    /// Host directory bound at /workspace. `None`: a fresh temporary directory that is
    /// removed after the run.
    pub workspace: Option<String>,
    /// Capture stdout/stderr into the report instead of passing them through.
    pub capture_output: bool,
    /// Run on this image of the store (`phantom run --image NAME`) instead of the
    /// host's system directories; wins over the policy's `filesystem.rootfs`. With an
    /// image, `argv` may be empty (the image's Entrypoint and Cmd apply, as in Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// What happened to a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunReport {
    pub sandbox_id: String,
    pub profile: String,
    pub mode: String,
    /// `cold` (a sandbox made for this run) or `warm` (taken from a supervisor's pool).
    pub start: String,
    /// The payload's exit code, or 128+N when it was killed by signal N.
    pub exit_code: i32,
    /// The signal that killed the payload, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub output_truncated: bool,
    pub wall_ms: f64,
    pub user_ms: f64,
    pub sys_ms: f64,
    pub max_rss_kb: u64,
    /// Captured output (lossy UTF-8), when the request asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// How the run was isolated, as achieved on this host.
    pub isolation: IsolationReport,
    /// One line each: fallbacks and keys without effect.
    pub warnings: Vec<String>,
    /// `network.mode: limited`: what the egress proxy allowed and refused. Absent in
    /// the other modes (and in reports of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkReport>,
}

/// The egress proxy's decisions for one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkReport {
    /// The network mode (`limited`).
    pub mode: String,
    /// Where the proxy listened inside the sandbox (`127.0.0.1:3128`).
    #[serde(default)]
    pub proxy: Option<String>,
    /// Connections made.
    #[serde(default)]
    pub allowed: u64,
    /// Connections refused by the policy.
    #[serde(default)]
    pub refused: u64,
    /// Connections the policy allowed that could not be made (name not found, peer
    /// unreachable).
    #[serde(default)]
    pub failed: u64,
    /// Each decision (the first 1000), in order.
    #[serde(default)]
    pub connections: Vec<ConnectionRecord>,
}

/// One decision of the egress proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionRecord {
    /// `connect` (HTTP CONNECT), `http` (a plain request with an absolute URI),
    /// `socks5`, or `tcp` (refused before a request was read).
    pub protocol: String,
    /// The host as the client asked for it (lower-case).
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    /// `allowed`, `refused` or `failed`.
    pub decision: String,
    /// The address connected to, when allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Why it was refused or failed (the rule that refused it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The isolation a run actually got (what the host allowed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
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

/// A named sandbox that lives between commands (`phantom create`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// Letters, digits, `-`, `_` and `.`; starts with a letter or digit; at most 63.
    pub name: String,
    pub policy: PolicySource,
    /// Limits and mode for every command run in it (`timeout` is the default timeout
    /// of each `exec`).
    pub overrides: RunOverrides,
    /// Run on this image of the store instead of the host's system directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Destroyed after this long without a running `exec` (e.g. "15m"). Default 15m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Destroyed this long after creation, busy or not (e.g. "24h"). Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<String>,
    /// Start with the workspace of this snapshot (a tag of the snapshot store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
}

/// A command run in a persistent sandbox (`phantom exec NAME -- cmd`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Extra environment variables, on top of the sandbox's.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (default: /workspace).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Wall-time limit of this command (default: the sandbox's timeout).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Capture stdout/stderr into the report instead of passing them through.
    #[serde(default)]
    pub capture_output: bool,
    /// Output cap in bytes, stdout and stderr together (default: the profile's).
    #[serde(default)]
    pub max_output: Option<u64>,
}

/// A persistent sandbox as `phantom list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxInfo {
    pub name: String,
    pub id: String,
    /// `running`, `starting`, `dead` (its init is gone: `phantom destroy` cleans up),
    /// or `destroyed` (in what `destroy` returns).
    pub status: String,
    /// Why it is dead, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub profile: String,
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Host pid of its init (0 while starting).
    pub init_pid: i32,
    /// Host directory bound at /workspace.
    pub workspace: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the last `exec` start or end.
    pub last_used: u64,
    pub idle_timeout_s: u64,
    pub max_lifetime_s: u64,
}

/// A persistent sandbox's resource use, from its cgroup (`phantom monitor`). `None`:
/// not reported on this host (no cgroup, or the controller lacks the counter).
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

// ---------------------------------------------------------------------------------------
// The supervisor's HTTP API (/api/v2): request and response bodies. Requests refuse
// unknown fields, so a misspelt key is a 400 that names it, not a silent default.
// ---------------------------------------------------------------------------------------

/// A file written into the run's workspace before the command starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    /// Relative to /workspace, e.g. `src/main.py` (no `..`, not absolute).
    pub path: String,
    /// UTF-8 text.
    pub content: String,
}

/// `POST /api/v2/run`: one command in a fresh sandbox (warm when a pool serves the
/// profile). Give `language` + `code`, or `argv`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiRunRequest {
    /// `python`, `node`, `bash` or `sh`: runs `code` with that interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The command and its arguments (instead of language + code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ApiFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A built-in profile (default: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(flatten)]
    pub limits: ApiLimits,
    /// Stream the output as Server-Sent Events (`stdout`, `stderr`, then `result`).
    #[serde(default)]
    pub stream: bool,
}

/// Limits over the profile's (each optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiLimits {
    /// Wall time, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// e.g. `256MB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// e.g. `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// `none` or `loopback-only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// What a run or an exec returned over HTTP: the run report plus `cpu_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiRunResult {
    #[serde(flatten)]
    pub report: RunReport,
    /// user_ms + sys_ms.
    pub cpu_ms: f64,
}

/// `POST /api/v2/sandboxes`: a persistent sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiCreateSandbox {
    /// Letters, digits, `-`, `_`, `.`; unique per API key.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// e.g. `15m` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_idle: Option<String>,
    /// e.g. `24h` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    #[serde(flatten)]
    pub limits: ApiLimits,
}

/// `POST /api/v2/sandboxes/{name}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiExecRequest {
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

/// `POST /api/v2/sandboxes/{name}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSnapshotRequest {
    /// Default: `NAME-YYYYMMDD-HHMMSS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A snapshot of a sandbox's workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiSnapshot {
    pub tag: String,
    pub manifest: String,
    pub files: u64,
    pub bytes: u64,
    /// Chunks this snapshot added to the store (0: nothing new).
    pub new_chunks: u64,
    pub created: u64,
}

/// One entry of a sandbox directory (`phantom_runtime::sandbox::list_files`, the
/// HTTP API's and MCP's file listings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Every error body: what went wrong, in one line, and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub error: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiHealth {
    pub status: String,
    pub version: String,
}
