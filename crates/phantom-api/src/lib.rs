//! The request/response model shared by the CLI, MCP and HTTP front ends. No I/O.
//!
//! * [`RunRequest`] — one sandboxed command: what to run and the overrides a caller may
//!   put on top of a profile.
//! * [`RunReport`] — what happened: exit status, which limit fired, resource use and
//!   (when captured) the output. `phantom run --json` prints exactly this.
#![forbid(unsafe_code)]

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
    /// `none` or `loopback-only`.
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
}

/// The isolation a run actually got (what the host allowed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
