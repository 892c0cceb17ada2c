//! The Phantom Fragment policy DSL.
//!
//! * [`Profile`] — the YAML a user writes (`profiles/*.yaml`, `--policy FILE`), parsed
//!   with a YAML library that is safe on untrusted input; errors carry file:line:column.
//! * [`Plan`] — what [`compile`] makes of a profile: mounts, seccomp BPF, Landlock
//!   rules, limits, environment. The runtime only replays a plan.
//!
//! This crate is pure: it reads policy files but makes no other system call.
#![forbid(unsafe_code)]

pub mod plan;

pub use plan::*;
