//! Messages between a client (`phantom run`, `phantom pool status`) and the supervisor.
//!
//! 1. The client connects (the supervisor serves only its own uid: SO_PEERCRED).
//! 2. It sends one [`Request`]. A `Run` carries stdin (when `stdin_fd`), stdout and
//!    stderr as SCM_RIGHTS, in that order: the payload writes straight into the
//!    client's pipes, so the client keeps relaying, capping and capturing the output
//!    exactly as on the cold path.
//!    A run on an image names the image as the client's store resolves it
//!    ([`WarmImage`]); the command, environment and working directory arrive resolved
//!    (the image's Entrypoint/Cmd, Env and WorkingDir applied as on the cold path).
//! 3. The supervisor answers `Refused` (the client runs cold: no pool for the profile
//!    on that image, an empty pool, a pool built on an earlier import of the image,
//!    ...), or `Started` and, when
//!    the sandbox is gone, `Finished`. Meanwhile the client may send `Signal`; closing
//!    the connection kills the sandbox.
//! 4. A `Status` request is answered with `Status`.

use phantom_api::IsolationReport;
use serde::{Deserialize, Serialize};

/// The largest message either side sends.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Run(Box<WarmRun>),
    Signal { signal: i32 },
    Status,
}

/// One payload for a pooled sandbox of `profile` (on `image`, when one is given).
///
/// The client resolves the command, the environment and the working directory as a
/// cold run does (an image's Entrypoint/Cmd, Env and WorkingDir included); the
/// supervisor lays `env` over its pool's base environment the same way, so a run sees
/// the same either way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmRun {
    pub profile: String,
    /// The image the sandbox must run on; `None`: the host root.
    #[serde(default)]
    pub image: Option<WarmImage>,
    /// The command as the payload runs it (on an image: Entrypoint, then the command
    /// given or else Cmd).
    pub argv: Vec<String>,
    /// Laid over the profile's environment after TERM, in order: the image's Env, then
    /// the request's own variables (`--env`).
    pub env: Vec<(String, String)>,
    /// The client's TERM, if set.
    pub term: Option<String>,
    /// `--cwd`, else the image's WorkingDir; `None`: the profile's default.
    pub cwd: Option<String>,
    /// A host directory for /workspace (needs a root supervisor), else the pooled
    /// sandbox's own temporary one.
    pub workspace: Option<String>,
    pub memory_bytes: u64,
    pub cpu_millis: u32,
    pub pids: u64,
    pub wall_timeout_ms: u64,
    pub stdin_fd: bool,
}

/// The image a warm run asks for, as the client's image store resolves it now. A pool
/// serves the run only when its sandboxes were built on exactly this: the same root
/// (an image re-imported under the same name has another) with the same WorkingDir
/// made in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmImage {
    pub name: String,
    /// The image's root in the store (`sha256:<hex>`, `phantom image inspect`'s
    /// `root_id`).
    pub root_id: String,
    pub working_dir: Option<String>,
}

/// What the supervisor answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Not served warm; the client runs cold. `reason` is shown with --verbose.
    Refused {
        reason: String,
    },
    Started {
        sandbox_id: String,
    },
    Finished(WarmOutcome),
    /// The request was wrong (`usage`: exit 2) or the sandbox failed to start.
    Error {
        message: String,
        usage: bool,
    },
    Status(PoolStatus),
}

/// How a warm run ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarmOutcome {
    pub sandbox_id: String,
    /// Warnings about the sandbox as it was built (one line each).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The pooled sandbox's pre-started interpreter ran the payload.
    pub prewarmed: bool,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub wall_ms: f64,
    pub user_ms: f64,
    pub sys_ms: f64,
    pub max_rss_kb: u64,
    pub isolation: IsolationReport,
    /// network limited: what the sandbox's egress proxy allowed and refused.
    #[serde(default)]
    pub network: Option<phantom_api::NetworkReport>,
}

/// `phantom pool status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolStatus {
    pub pid: u32,
    pub pools: Vec<PoolInfo>,
    /// Latest pressure sample (PSI, `some avg10`, percent), when read.
    pub cpu_pressure: Option<f64>,
    pub memory_pressure: Option<f64>,
    /// Why refills are paused right now, if they are.
    pub refill_paused: Option<String>,
    pub refill_pauses: u64,
}

/// One pool.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolInfo {
    pub profile: String,
    /// The image its sandboxes run on (`None`: the host root), and the root they were
    /// built on.
    pub image: Option<String>,
    pub image_root_id: Option<String>,
    pub target: usize,
    pub ready: usize,
    pub starting: usize,
    pub active: usize,
    /// Requests served from the pool.
    pub hits: u64,
    /// Of those, runs taken by a pre-started interpreter (`runtime: python`).
    pub prewarmed_hits: u64,
    /// network limited: connections the proxies of its sandboxes made, refused (by
    /// the policy) and failed, over the runs served.
    #[serde(default)]
    pub proxy_allowed: u64,
    #[serde(default)]
    pub proxy_refused: u64,
    #[serde(default)]
    pub proxy_failed: u64,
    /// Requests refused because the pool was empty.
    pub misses: u64,
    /// Sandboxes thrown away unused because their image was re-imported (stale).
    #[serde(default)]
    pub stale: u64,
    /// Sandboxes started for the pool, and how many failed to become ready.
    pub created: u64,
    pub failures: u64,
    /// Sandboxes made ready per second over the last minute.
    pub refill_per_second: f64,
    /// Proportional set size of one ready sandbox (its init and, with `runtime:
    /// python`, its pre-started interpreter), averaged over the ready ones, in KiB.
    pub pss_kb_per_ready: Option<u64>,
    /// Pages of ready sandboxes that KSM currently merges.
    pub ksm_merging_pages: u64,
}
