//! The Phantom Fragment engine: turns a [`phantom_api::RunRequest`] into a sandboxed
//! process and a [`phantom_api::RunReport`].
//!
//! * [`prepare`] loads and compiles the policy (no process exists yet) and, for a run
//!   on an image, finds the image and applies its config (`image_run.rs`);
//! * [`Prepared::run`] is the cold path: clone3 into new namespaces, the sandbox init
//!   (`init.rs`) builds the root and execs the payload, the front end relays output,
//!   enforces the timeout and cleans up (`cold.rs`);
//! * [`doctor`] reports what this host supports.
#![forbid(unsafe_code)]

pub mod audit;
mod cold;
pub mod doctor;
mod error;
pub mod ids;
pub mod image;
mod image_run;
mod init;
pub mod keys;
pub mod proxy;
mod relay;
pub mod sandbox;
pub mod snapshot;
mod spawn;
mod state;
mod store_dir;
#[cfg(test)]
mod test_util;
pub mod warm;
pub mod workspace;

pub use cold::{prepare, Prepared};
pub use error::RuntimeError;
