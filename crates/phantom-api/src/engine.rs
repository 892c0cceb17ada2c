//! The engine protocol: how a front end (the CLI, the MCP server, the HTTP API) talks
//! to the engine, the single-threaded process that alone starts sandboxes.
//!
//! 1. The client connects to the engine's unix socket (`SOCK_SEQPACKET`: one message per
//!    packet). The engine serves only clients of its own uid (`SO_PEERCRED`); the client
//!    checks that the engine is its own uid too and that nobody else owns the socket's
//!    directory, so a squatted path cannot receive its requests.
//! 2. The client sends one [`Request`], JSON-encoded. File descriptors travel with it
//!    as `SCM_RIGHTS`, in the order [`Request::fd_names`] lists: a run's stdin (when it
//!    has one), stdout and stderr (the payload writes straight into the client's pipes;
//!    the client relays, caps and captures the output), and a memfd with the files to
//!    write into the workspace. A message (either way) whose JSON is larger than
//!    [`MAX_INLINE`] travels in a memfd instead: the packet is then the single byte
//!    [`LARGE_MARKER`] with that memfd attached before the message's own fds.
//! 3. The engine answers with [`Reply`] messages until a final one
//!    ([`Reply::is_final`]): a run or an exec gets [`Reply::Started`] and then
//!    [`Reply::Finished`]; everything else one reply. [`Reply::Workspace`] carries one
//!    fd (a sandbox's workspace directory, opened `O_PATH`).
//! 4. While a run or an exec lasts, the client may send [`Request::Signal`] (forwarded
//!    to the program). Closing the connection cancels: the engine kills the sandbox or
//!    the command, reaps it, and removes its cgroup and run directory.
//! 5. An exec's [`Reply::Finished`] comes when its command's process exits. The client
//!    reads what is left in the output pipes for a moment; pipes still open then are
//!    held by processes the command left running, and the client hands them over with
//!    [`Request::Detach`] rather than wait for those.
//!
//! Every request names the [`Principal`] it acts for; the engine enforces ownership and
//! grants (see [`crate::access`]). A failure is a [`Failure`] whose [`FailureKind`] maps
//! to an exit code and an HTTP status.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::access::Principal;
use crate::choice::StartKind;
use crate::report::{RunReport, SandboxInfo, SandboxMetrics};
use crate::request::{CreateRequest, ExecRequest, Field, FieldError, RunRequest};

/// The largest message sent inline; larger ones travel in a memfd.
pub const MAX_INLINE: usize = 64 * 1024;
/// The packet that says "the message is in the memfd attached first".
pub const LARGE_MARKER: u8 = 0;
/// The largest message read from a memfd.
pub const MAX_MESSAGE: u64 = 256 << 20;

/// The engine introducing itself ([`Request::Hello`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineHello {
    pub pid: u32,
    /// Its state directory: sandboxes, images and snapshots (absolute).
    pub state_dir: Option<String>,
    /// phantom's version.
    pub version: String,
}

/// What a client asks of the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// One program in a fresh sandbox (warm when a pool serves it).
    Run(Box<RunCall>),
    /// A command in a persistent sandbox.
    Exec(Box<ExecCall>),
    /// Create a persistent sandbox and answer once it runs.
    Create(Box<CreateCall>),
    /// Destroy one of the principal's sandboxes (dead ones too).
    Destroy { principal: Principal, name: String },
    /// Destroy every sandbox of the principal; with `every_owner`, of every owner
    /// (the local operator only: a key's principal is refused).
    DestroyAll {
        principal: Principal,
        #[serde(default)]
        every_owner: bool,
    },
    /// The principal's sandboxes; with `every_owner`, every owner's (local only).
    List {
        principal: Principal,
        #[serde(default)]
        every_owner: bool,
    },
    /// One sandbox.
    Get { principal: Principal, name: String },
    /// A sandbox's resource use, from its cgroup.
    Metrics { principal: Principal, name: String },
    /// A sandbox's workspace: [`Reply::Workspace`] with an `O_PATH` descriptor of its
    /// directory attached. The caller moves files with it, resolving every path
    /// beneath it (`openat2` with `RESOLVE_BENEATH`): the engine decides who may
    /// reach a workspace, the caller moves the bytes (a large copy never holds the
    /// engine's single thread).
    Workspace { principal: Principal, name: String },
    /// During a run or exec: forward this signal to the program.
    Signal { signal: i32 },
    /// The processes in one of the principal's sandboxes (commands still running and
    /// what commands left running): [`Reply::Processes`].
    ListProcesses { principal: Principal, name: String },
    /// Send `signal` to the process `pid` (as the sandbox numbers it, see
    /// [`crate::ProcessInfo`]) in one of the principal's sandboxes: [`Reply::Done`].
    KillProcess {
        principal: Principal,
        name: String,
        pid: i32,
        signal: crate::choice::ProcessSignal,
    },
    /// After an exec's command exited while processes it left behind still hold its
    /// output pipes: the client hands the read ends (attached, `count` of them) to the
    /// sandbox's keeper, which reads and discards what they write for as long as they
    /// live, so that they neither block on a full pipe nor die of SIGPIPE when the
    /// client goes: [`Reply::Done`].
    Detach {
        principal: Principal,
        name: String,
        count: u8,
    },
    /// The warm pools (`phantom pool status`).
    Pools,
    /// Every owner's sandboxes and their memory use, for the operator's metrics (a
    /// front end's own view, never a tenant's).
    Census,
    /// Who answers: a client checks that the engine keeps its state where the client
    /// expects it before it sends it work.
    Hello,
}

impl Request {
    /// The fds that travel with the request, in order.
    pub fn fd_names(&self) -> Vec<&'static str> {
        match self {
            Request::Run(call) => {
                let mut names = Vec::new();
                if call.stdin {
                    names.push("stdin");
                }
                names.extend(["stdout", "stderr"]);
                if call.files {
                    names.push("files");
                }
                names
            }
            // A background command's stdio is /dev/null.
            Request::Exec(call) if call.request.background => Vec::new(),
            Request::Exec(call) => {
                let mut names = Vec::new();
                if call.stdin {
                    names.push("stdin");
                }
                names.extend(["stdout", "stderr"]);
                names
            }
            Request::Detach { count, .. } => ["output"; 2][..(*count).min(2) as usize].to_vec(),
            _ => Vec::new(),
        }
    }

    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Run(_) => "run",
            Request::Exec(_) => "exec",
            Request::Create(_) => "create",
            Request::Destroy { .. } => "destroy",
            Request::DestroyAll { .. } => "destroy-all",
            Request::List { .. } => "list",
            Request::Get { .. } => "get",
            Request::Metrics { .. } => "metrics",
            Request::Workspace { .. } => "workspace",
            Request::Signal { .. } => "signal",
            Request::ListProcesses { .. } => "list-processes",
            Request::KillProcess { .. } => "kill-process",
            Request::Detach { .. } => "detach",
            Request::Pools => "pools",
            Request::Census => "census",
            Request::Hello => "hello",
        }
    }
}

/// A run as the engine receives it. `request.stdin` and `request.files` are empty:
/// they travel as fds (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCall {
    pub principal: Principal,
    pub request: RunRequest,
    /// A stdin fd is attached (else the program reads /dev/null).
    pub stdin: bool,
    /// A memfd with the files (JSON, a list of [`crate::FileSpec`]) is attached.
    pub files: bool,
    /// The client's TERM, passed in (nothing else of its environment is).
    #[serde(default)]
    pub term: Option<String>,
    /// Never take a pooled sandbox (`phantom run --cold`).
    #[serde(default)]
    pub cold: bool,
}

/// A command in a persistent sandbox. `request.stdin` is empty: a stdin fd travels
/// instead when `stdin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecCall {
    pub principal: Principal,
    pub name: String,
    pub request: ExecRequest,
    pub stdin: bool,
    #[serde(default)]
    pub term: Option<String>,
}

/// A persistent sandbox to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateCall {
    pub principal: Principal,
    pub request: CreateRequest,
}

/// An operation on a sandbox's files, as front ends offer them (the HTTP API's file
/// endpoints, MCP's file tools). Paths are inside the sandbox: `/workspace/...`, or
/// relative to /workspace. Every one is resolved beneath the workspace without
/// following a symlink out of it, and no operation blocks on a FIFO or a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileOp {
    /// Read a regular file.
    Read { path: String },
    /// Create or truncate a regular file (`parents`: make the missing directories).
    Write {
        path: String,
        #[serde(default)]
        parents: bool,
    },
    /// A directory's entries.
    List { path: String },
    /// One entry.
    Stat { path: String },
    /// Make a directory (`parents`: and the missing ones above it).
    MakeDir {
        path: String,
        #[serde(default)]
        parents: bool,
    },
    /// Remove a file, a symlink or an empty directory (`recursive`: any directory).
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Rename within the workspace.
    Rename { from: String, to: String },
}

/// What the engine answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Reply {
    /// A run or an exec started; the output pipes are live.
    Started(Box<Started>),
    /// How it ended (final).
    Finished(Box<RunReport>),
    /// A sandbox was created (final).
    Created(Box<Created>),
    /// One sandbox (final): `Get`, `Destroy`.
    Sandbox(Box<SandboxInfo>),
    /// Several (final): `List`; the names destroyed by `DestroyAll`.
    Sandboxes(Vec<SandboxInfo>),
    Destroyed(Vec<String>),
    Metrics(Box<SandboxMetrics>),
    /// A sandbox's workspace directory; its `O_PATH` fd is attached.
    Workspace,
    Pools(Box<PoolStatus>),
    Census(Vec<SandboxUsage>),
    Hello(EngineHello),
    /// The processes of a sandbox (final): `ListProcesses`.
    Processes(Vec<crate::ProcessInfo>),
    /// Done, nothing to tell (final): `KillProcess`, `Detach`.
    Done,
    /// A background command started (final): an `Exec` with `background`; its pid
    /// inside the sandbox.
    Spawned {
        pid: i32,
    },
    /// The request failed (final).
    Error(Failure),
}

impl Reply {
    /// Whether no reply follows this one.
    pub fn is_final(&self) -> bool {
        !matches!(self, Reply::Started(_))
    }
}

/// One sandbox in the operator's census.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxUsage {
    /// The sandbox's id (random: it tells nothing of its owner or name).
    pub id: String,
    pub owner: crate::access::Owner,
    pub name: String,
    pub status: crate::choice::SandboxStatus,
    /// Memory charged to its cgroup now (running sandboxes with a cgroup).
    pub memory_bytes: Option<u64>,
}

/// A run or an exec under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub sandbox_id: String,
    pub start: StartKind,
    /// The output cap the client enforces (stdout and stderr together).
    pub output_limit: u64,
    /// The wall-clock limit the engine enforces.
    pub timeout_ms: u64,
    /// The memory limit in bytes (for messages).
    pub memory_bytes: u64,
    /// To show before the output (fallbacks, keys without effect).
    pub warnings: Vec<String>,
    /// Why the run did not take a pooled sandbox (`phantom run --verbose`).
    #[serde(default)]
    pub not_warm: Option<String>,
    /// Milliseconds the engine spent compiling the policy (near 0 for a cached plan).
    #[serde(default)]
    pub compile_ms: f64,
    /// Mode wasm: how long loading the module may take before its timeout starts
    /// (a first compile of a large module takes minutes); 0 for other runs.
    #[serde(default)]
    pub load_allowance_ms: u64,
}

/// A created sandbox and the warnings its start produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub info: SandboxInfo,
    pub warnings: Vec<String>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Failure {
    pub kind: FailureKind,
    /// One line: what was wrong and what to do (without the field's name, which
    /// `field` carries).
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<Field>,
    /// The offending value, when short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            field: None,
            value: None,
        }
    }

    /// What a remote caller (HTTP API, MCP with a key) is told instead, when this says
    /// more than it should: what went wrong on the host (`failed`, `unsupported`) may
    /// name host paths and pids, so only its kind is told, with `error_id`, under which
    /// the front end logs the whole failure. `None`: this is the caller's own mistake
    /// (or the host's state it may know), said as it is.
    pub fn for_remote(&self, error_id: &str) -> Option<Failure> {
        let what = match self.kind {
            FailureKind::Failed => "the sandbox could not be run",
            FailureKind::Unsupported => "this host cannot do that",
            _ => return None,
        };
        Some(Failure::new(
            self.kind,
            format!("{what} (error {error_id}; the server's log has the details)"),
        ))
    }

    /// As a JSON caller sees it: `memory: cannot parse ...`.
    pub fn for_api(&self) -> String {
        match self.field {
            Some(field) => format!("{field}: {}", self.message),
            None => self.message.clone(),
        }
    }

    /// As the command line shows it: `--memory 12XB: cannot parse ...`.
    pub fn for_cli(&self) -> String {
        match self.field {
            Some(field) => FieldError {
                field,
                value: self.value.clone(),
                message: self.message.clone(),
            }
            .for_cli(),
            None => self.message.clone(),
        }
    }
}

impl From<FieldError> for Failure {
    fn from(e: FieldError) -> Failure {
        Failure {
            kind: FailureKind::Invalid,
            message: e.message,
            field: Some(e.field),
            value: e.value,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.for_api())
    }
}

impl std::error::Error for Failure {}

/// What kind of failure, which decides the exit code and the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The request is wrong (exit 2, HTTP 400).
    Invalid,
    /// No such sandbox, snapshot or image — or not the caller's (exit 2, HTTP 404).
    NotFound,
    /// Not granted to the caller (exit 2, HTTP 403).
    Forbidden,
    /// The name is taken (exit 2, HTTP 409).
    Conflict,
    /// The host lacks what the request needs (exit 125, HTTP 501).
    Unsupported,
    /// The sandbox could not start or the engine failed (exit 125, HTTP 500).
    Failed,
    /// The engine is shutting down or over a limit; retry (exit 125, HTTP 503).
    Unavailable,
}

impl FailureKind {
    /// The exit code of `phantom` for it.
    pub fn exit_code(self) -> i32 {
        match self {
            FailureKind::Invalid
            | FailureKind::NotFound
            | FailureKind::Forbidden
            | FailureKind::Conflict => 2,
            _ => 125,
        }
    }

    /// The HTTP status for it.
    pub fn http_status(self) -> u16 {
        match self {
            FailureKind::Invalid => 400,
            FailureKind::NotFound => 404,
            FailureKind::Forbidden => 403,
            FailureKind::Conflict => 409,
            FailureKind::Unsupported => 501,
            FailureKind::Failed => 500,
            FailureKind::Unavailable => 503,
        }
    }
}

/// The engine's warm pools (`phantom pool status`, `GET /api/v2/zygotes/pools`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PoolStatus {
    /// The engine's pid.
    pub pid: u32,
    pub pools: Vec<PoolInfo>,
    /// Latest pressure sample (PSI, `some avg10`, percent), when read.
    pub cpu_pressure: Option<f64>,
    pub memory_pressure: Option<f64>,
    /// Why refills are paused right now, if they are.
    pub refill_paused: Option<String>,
    pub refill_pauses: u64,
    /// Runs, execs and creates in flight.
    #[serde(default)]
    pub active: usize,
}

/// One pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PoolInfo {
    pub profile: String,
    /// The image its sandboxes run on (`None`: the host root), and the root they were
    /// built on.
    pub image: Option<String>,
    pub image_root_id: Option<String>,
    /// Sandboxes it wants ready now (from demand), and the most it keeps.
    pub target: usize,
    #[serde(default)]
    pub ceiling: usize,
    /// Runs that asked for it per second, averaged (half-life 10 s).
    #[serde(default)]
    pub arrivals_per_second: f64,
    pub ready: usize,
    pub starting: usize,
    pub active: usize,
    /// Requests served from the pool.
    pub hits: u64,
    /// Of those, runs taken by a pre-started interpreter.
    pub prewarmed_hits: u64,
    /// network limited: connections its sandboxes' proxies made, refused and failed.
    #[serde(default)]
    pub proxy_allowed: u64,
    #[serde(default)]
    pub proxy_refused: u64,
    #[serde(default)]
    pub proxy_failed: u64,
    /// Requests that found the pool empty and started cold.
    pub misses: u64,
    /// Sandboxes thrown away unused because their image was re-imported.
    #[serde(default)]
    pub stale: u64,
    /// Sandboxes started for the pool, and how many failed to become ready.
    pub created: u64,
    pub failures: u64,
    /// Sandboxes made ready per second over the last minute.
    pub refill_per_second: f64,
    /// Proportional set size of one ready sandbox, in KiB.
    pub pss_kb_per_ready: Option<u64>,
    /// Pages of ready sandboxes that KSM currently merges.
    pub ksm_merging_pages: u64,
    /// Its zygote: `ready`, `starting`, or why the pool has none (`None`: not a
    /// Python profile).
    #[serde(default)]
    pub zygote: Option<String>,
    /// Modules its zygote imported before any request.
    #[serde(default)]
    pub preload: Vec<String>,
    /// Of the hits, runs forked from the zygote; and forks per second over the last
    /// minute.
    #[serde(default)]
    pub forked_hits: u64,
    #[serde(default)]
    pub forks_per_second: f64,
    /// Proportional set size of the zygote (its interpreter and preloads; a fork
    /// shares these pages until it writes them), in KiB.
    #[serde(default)]
    pub zygote_pss_kb: Option<u64>,
    /// PSS of the runs in flight that were forked from it, averaged, in KiB.
    #[serde(default)]
    pub pss_kb_per_fork: Option<u64>,
}

impl PoolInfo {
    /// Whether a run of this pool is served warm now: a ready sandbox, or its zygote.
    pub fn serves_warm(&self) -> bool {
        self.ready > 0 || self.zygote_ready()
    }

    /// Whether it holds all it keeps: its target of ready sandboxes (which follows
    /// demand, so it may hold more for a while), or a ready zygote (which keeps no
    /// pre-built sandboxes).
    pub fn is_full(&self) -> bool {
        self.ready >= self.target || self.zygote_ready()
    }

    fn zygote_ready(&self) -> bool {
        self.zygote.as_deref() == Some("ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Principal;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let req = Request::Destroy {
            principal: Principal::local(),
            name: "agent-1".into(),
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.starts_with("{\"type\":\"destroy\""), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), req);
    }

    #[test]
    fn a_run_lists_its_fds_in_order() {
        let call = RunCall {
            principal: Principal::local(),
            request: RunRequest::default(),
            stdin: false,
            files: true,
            term: None,
            cold: false,
        };
        assert_eq!(
            Request::Run(Box::new(call)).fd_names(),
            ["stdout", "stderr", "files"]
        );
    }

    #[test]
    fn a_remote_caller_is_told_host_failures_by_kind_and_id_only() {
        let host = Failure::new(FailureKind::Failed, "mkdir /var/lib/phantom/x: EACCES");
        let shown = host.for_remote("abc123").unwrap();
        assert_eq!(shown.kind, FailureKind::Failed);
        assert!(shown.message.contains("abc123") && !shown.message.contains("/var/lib"));
        let mistake = Failure::new(FailureKind::Invalid, "memory: cannot parse");
        assert_eq!(mistake.for_remote("abc123"), None);
    }

    #[test]
    fn failures_map_to_exit_codes_and_statuses() {
        let f: Failure = FieldError::with_value(Field::Memory, "12XB", "cannot parse").into();
        assert_eq!(f.kind.exit_code(), 2);
        assert_eq!(f.kind.http_status(), 400);
        assert_eq!(f.for_api(), "memory: cannot parse");
        assert_eq!(f.for_cli(), "--memory 12XB: cannot parse");
        assert_eq!(FailureKind::Forbidden.http_status(), 403);
        assert_eq!(FailureKind::Failed.exit_code(), 125);
    }
}
