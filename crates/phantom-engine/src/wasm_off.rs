//! Mode wasm in a build without wasmtime (phantom-engine built without its `wasm`
//! feature, as the fuzz targets are): a wasm request is refused at prepare, with a
//! sentence saying so; nothing else of mode wasm can be reached, which the empty types
//! below make the compiler check.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use phantom_api::request::Program;
use phantom_policy::Plan;

use crate::init::{ChildContext, ChildPayload};
use crate::prepare::PayloadCommand;
use crate::EngineError;

pub(crate) const LOAD_ALLOWANCE: Duration = Duration::from_secs(0);
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// A wasm run's module: none in this build.
#[derive(Debug)]
pub(crate) enum WasmCommand {}

/// What a wasm run's process runs: none in this build.
#[derive(Debug)]
pub(crate) enum WasmPayload {}

pub(crate) fn resolve(
    _program: Option<&Program>,
    _workspace: Option<&Path>,
    _warnings: &mut Vec<String>,
) -> Result<WasmCommand, EngineError> {
    Err(EngineError::Usage(
        "mode wasm is not available in this build (phantom-engine without its `wasm` feature: no wasmtime); use mode sandbox or hardened".into(),
    ))
}

pub(crate) fn spawn_plan(plan: &Plan) -> Plan {
    plan.clone()
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn payload(
    wasm: &WasmCommand,
    _command: &PayloadCommand,
    _plan: &Plan,
    _host_workspace: &Path,
    _run_dir: &Path,
    _term: Option<&str>,
    _stdio: [Option<OwnedFd>; 3],
    _files: Option<OwnedFd>,
    _no_cgroup: bool,
) -> Result<ChildPayload, EngineError> {
    match *wasm {}
}

pub(crate) fn child(_ctx: ChildContext, _chan: OwnedFd) -> ! {
    // Only a wasm payload leads here, and none can exist in this build.
    std::process::abort()
}

pub(crate) fn fds(w: &WasmPayload) -> Vec<std::os::fd::RawFd> {
    match *w {}
}
