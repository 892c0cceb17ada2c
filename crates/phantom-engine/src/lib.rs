//! The Phantom Fragment engine: the one process that starts sandboxes, and the client
//! every front end talks to it with.
//!
//! * [`server`] — the engine itself: a single-threaded event loop that alone calls
//!   clone3. It runs programs in fresh sandboxes (warm from its pools when one serves
//!   the plan, else cold), keeps persistent sandboxes through their keepers, joins
//!   commands into them, and answers the engine protocol (`phantom_api::engine`) on a
//!   unix socket. `phantom-supervisor` serves it; the CLI forks a private one when no
//!   supervisor runs; the MCP server and the HTTP API start theirs before any thread.
//! * [`client`] — [`EngineClient`]: run, exec, create, destroy, list, get, metrics,
//!   workspace, pools — the same calls from every front end, with the program's stdio
//!   relayed in the caller's process.
//! * Inside the engine: `prepare.rs` (a request → a compiled, checked plan: policy,
//!   limits, grants, image), `spawn.rs` (clone3 and everything before the init's
//!   setup), `init.rs` (the sandbox's pid 1: mounts, pivot_root, fences, the payload),
//!   `channel.rs` (the typed messages between them), `sandbox/` (keepers, joining a
//!   sandbox, file operations beneath a workspace).
//! * [`contexts`] — code contexts: a long-lived interpreter in a persistent sandbox,
//!   kept per owner and sandbox ([`contexts::CodeContexts`]); blocking calls.
//! * [`doctor`] reports what this host supports; [`EngineError`] is why anything
//!   failed, wrapping the errors of the crates it drives: images (phantom-image),
//!   snapshots (phantom-store), the egress proxy (phantom-egress) and the state
//!   database (phantom-state).
#![forbid(unsafe_code)]

mod channel;
pub mod client;
pub mod contexts;
pub mod doctor;
mod error;
pub mod fork;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
mod image_run;
mod init;
#[cfg(feature = "oci")]
pub mod oci;
mod prepare;
pub mod pressure;
mod relay;
pub mod sandbox;
pub mod server;
mod spawn;
#[cfg(feature = "wasm")]
mod wasm_run;
#[cfg(not(feature = "wasm"))]
#[path = "wasm_off.rs"]
mod wasm_run;
pub mod workspace;

pub use client::EngineClient;

/// Pseudo-terminals for processes that ask for one (`client::Stdin::Terminal`).
pub mod terminal {
    pub use phantom_linux::terminal::{open_pty, read_master, resize, write_master};
}
pub use error::EngineError;
