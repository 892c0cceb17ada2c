//! Warm starts: pools of sandboxes that are already through clone3, their mounts and
//! pivot_root, waiting for a payload.
//!
//! `phantom-supervisor` runs [`supervisor::serve`]: a single-threaded event loop that
//! alone calls clone3 (it is the "spawner" of DESIGN.md; any multi-threaded front end
//! — the HTTP API, the MCP server — is a client of its socket, never a forker). It
//! keeps a pool per profile — on the host root or on an image of the store
//! (`--pool PROFILE:IMAGE`) —, each sandbox used ONCE: a request takes a
//! ready sandbox, the init forks the payload with the request's argv, environment,
//! working directory and stdio, and the pool refills in the background — pausing while
//! CPU or memory pressure (PSI) is above its thresholds.
//!
//! `phantom run` tries the supervisor's socket first ([`client::try_run`]) and falls back
//! to a cold start when no supervisor runs, no pool serves the profile (on the run's
//! image), the pool is empty, or its sandboxes were built on an earlier import of the
//! image.
//!
//! The protocol ([`protocol`]) runs over a SOCK_SEQPACKET unix socket, one JSON message
//! per packet; the client's stdio fds ride along as SCM_RIGHTS.

pub mod client;
pub mod pressure;
pub mod protocol;
pub mod supervisor;

use std::path::PathBuf;

/// Where the supervisor listens: `/run/phantom/supervisor.sock` for root, else
/// `$XDG_RUNTIME_DIR/phantom/supervisor.sock`, else the per-user state directory
/// (`/dev/shm/phantom-<uid>`). `PHANTOM_SUPERVISOR_SOCKET` overrides it (tests).
pub fn socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PHANTOM_SUPERVISOR_SOCKET") {
        return PathBuf::from(p);
    }
    if phantom_linux::process::euid() == 0 {
        return PathBuf::from("/run/phantom/supervisor.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() && dir.is_dir() => dir.join("phantom/supervisor.sock"),
        _ => PathBuf::from(format!(
            "/dev/shm/phantom-{}/supervisor.sock",
            phantom_linux::process::euid()
        )),
    }
}
