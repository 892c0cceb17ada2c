//! The Phantom Fragment engine: turns a [`phantom_api::RunRequest`] into a sandboxed
//! process and a [`phantom_api::RunReport`].
//!
//! * [`prepare`] loads and compiles the policy (no process exists yet) and, for a run
//!   on an image, finds the image and applies its config (`image_run.rs`);
//! * [`Prepared::run`] is the cold path: clone3 into new namespaces, the sandbox init
//!   (`init.rs`) builds the root and execs the payload, the front end relays output,
//!   enforces the timeout and cleans up (`cold.rs`);
//! * [`warm`] — pools of pre-built sandboxes (the supervisor) and their client;
//! * [`sandbox`] — persistent sandboxes: create, exec, files, snapshots, destroy;
//! * [`doctor`] reports what this host supports;
//! * [`EngineError`] — why any of it failed, wrapping the errors of the crates it
//!   drives: images (phantom-image), snapshots (phantom-store), the egress proxy
//!   (phantom-egress) and the state database (phantom-state).
#![forbid(unsafe_code)]

mod channel;
mod cold;
pub mod doctor;
mod error;
pub mod ids;
mod image_run;
mod init;
mod relay;
pub mod sandbox;
mod spawn;
pub mod warm;
pub mod workspace;

pub use cold::{prepare, Prepared};
pub use error::EngineError;
