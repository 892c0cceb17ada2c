//! The one request/response model of every front end (the CLI, the MCP server, the
//! HTTP API) and the engine protocol's messages. No I/O.
//!
//! * [`request`] — what callers ask for: [`request::RunRequest`] (a program as
//!   [`choice::Language`] + code or as argv, with [`request::RunOptions`]: files, stdin,
//!   environment, profile or policy file, [`request::Limits`] — the output cap and the
//!   network mode included —, image, workspace, working directory),
//!   [`request::CreateRequest`], [`request::ExecRequest`], and the MCP tools'
//!   [`request::CodeRun`] and [`request::CommandRun`] made of the same parts. A wrong
//!   value is a [`request::FieldError`] that names its field, shown as each front end
//!   spells it (`--memory` on the command line, `memory` in JSON).
//! * [`report`] — what comes back: [`RunReport`] (`phantom run --json` prints exactly
//!   this), [`SandboxInfo`], [`SandboxMetrics`], [`FileEntry`], snapshots, errors.
//! * [`choice`] — the closed sets used instead of strings: modes, network modes, how a
//!   run started, a sandbox's status, the egress proxy's decisions, file kinds, and the
//!   languages with their one interpreter and default profile each.
//! * [`context`] — code contexts: a long-lived interpreter in a persistent sandbox;
//!   [`context::ContextRun`] in, [`context::CodeResult`] (or [`context::ContextEvent`]s)
//!   out.
//! * [`access`] — who a request acts for ([`access::Owner`]) and what it may ask for
//!   ([`access::Grants`]).
//! * [`engine`] — the protocol between front ends and the engine, described there in
//!   numbered steps.
//! * [`strict`] — parsing that refuses unknown fields by the types' JSON Schemas, which
//!   are also what the OpenAPI document and the MCP tools publish.
#![forbid(unsafe_code)]

pub mod access;
pub mod choice;
pub mod context;
pub mod engine;
pub mod report;
pub mod request;
pub mod strict;

/// The profile a run gets when it names none and its language has no own default.
pub const DEFAULT_PROFILE: &str = "default";

pub use report::{
    ApiError, ApiHealth, ConnectionRecord, FileEntry, IsolationReport, NetworkReport, RunReport,
    SandboxInfo, SandboxMetrics, WasmReport,
};
// A persistent sandbox's processes (`Request::ListProcesses`).
pub use report::ProcessInfo;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a run or an exec returned over HTTP: the run report plus `cpu_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiRunResult {
    #[serde(flatten)]
    pub report: RunReport,
    /// user_ms + sys_ms.
    pub cpu_ms: f64,
}

/// A command started in the background (an exec with `background: true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Spawned {
    /// Its pid inside the sandbox: `ListProcesses` shows it, `KillProcess` takes it.
    pub pid: i32,
}

/// `POST /api/v2/sandboxes/{name}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSnapshotRequest {
    /// Default: `NAME-YYYYMMDD-HHMMSS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}
