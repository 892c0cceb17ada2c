//! Messages between a client (`phantom run`, `phantom pool status`) and the supervisor.
//!
//! 1. The client connects (the supervisor serves only its own uid: SO_PEERCRED).
//! 2. It sends one [`Request`]. A `Run` carries stdin (when `stdin_fd`), stdout and
//!    stderr as SCM_RIGHTS, in that order: the payload writes straight into the
//!    client's pipes, so the client keeps relaying, capping and capturing the output
//!    exactly as on the cold path.
//! 3. The supervisor answers `Refused` (the client runs cold), or `Started` and, when
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
    Run(WarmRun),
    Signal { signal: i32 },
    Status,
}

/// One payload for a pooled sandbox of `profile`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmRun {
    pub profile: String,
    pub argv: Vec<String>,
    /// The request's own variables (`--env`), added to the profile's.
    pub env: Vec<(String, String)>,
    /// The client's TERM, if set.
    pub term: Option<String>,
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
    pub target: usize,
    pub ready: usize,
    pub starting: usize,
    pub active: usize,
    /// Requests served from the pool.
    pub hits: u64,
    /// Of those, runs taken by a pre-started interpreter (`runtime: python`).
    pub prewarmed_hits: u64,
    /// Requests refused because the pool was empty.
    pub misses: u64,
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
