//! The Phantom Fragment policy DSL.
//!
//! * [`Profile`] — the YAML a user writes (`profiles/*.yaml`, `--policy FILE`), parsed
//!   with a YAML library that is safe on untrusted input; errors carry file:line:column.
//!   Read one with [`load_builtin`], [`load_file`] or [`load_str`].
//! * [`Plan`] — what [`compile`] makes of a profile and the command line's
//!   [`Overrides`]: mounts, seccomp BPF, Landlock rules, limits, environment. The
//!   runtime only replays a plan.
//! * [`config`] — `config.yaml`: profiles in the seed README's short form and the
//!   front ends' defaults, found through `AISBX_CONFIG_PATH`/`PHANTOM_CONFIG`/XDG;
//!   [`load_named`] loads a profile by name from the built-ins and the config.
//! * [`units`] — sizes (`512MB`), durations (`30s`) and CPU counts (`0.5`).
//! * [`PolicyError`] — one line, `file:line:column: key: what is wrong (how to fix it)`;
//!   a policy with several mistakes gets them all, one line each.
//!
//! ```
//! let profile = phantom_policy::load_builtin(phantom_policy::DEFAULT_PROFILE).unwrap();
//! let plan = phantom_policy::compile(&profile, &Default::default()).unwrap();
//! assert_eq!(plan.limits.pids, 256);
//! ```
//!
//! This crate makes no system call but reads: policy files, and — through
//! [`host::Host`], which tests replace — the environment and metadata of host paths
//! that `filesystem.toolchains` and bind sources name. It never writes.
#![forbid(unsafe_code)]

mod builtin;
mod compile;
pub mod config;
pub mod egress;
mod error;
mod extends;
pub mod host;
pub mod plan;
mod profile;
mod schema;
mod seccomp;
mod toolchain;
pub mod units;
mod weaken;
mod yaml;

use std::path::Path;
use std::sync::Arc;

pub use builtin::{builtin_names, builtin_source, load_builtin, DEFAULT_PROFILE};
pub use compile::{
    compile, compile_on, EgressOverride, Overrides, DEV_NODES, HOSTNAME, PATH, PROC_MASKED,
    PROC_READ_ONLY, SHM_SIZE_BYTES,
};
pub use config::{load_named, Config, ConfigProfile, Settings};
pub use error::{ChoiceError, PolicyError, SourcePos};
pub use plan::*;
pub use profile::{
    Filesystem, HostBind, IoMode, LandlockPath, LandlockPolicy, MemoryAllocator, Network,
    Performance, Profile, Resources, Runtime, SeccompDefault, SeccompPolicy, Security,
    SecurityLevel, Toolchain, MAX_EXTENDS,
};
pub use seccomp::{build_arch, Arch, BASE_ALLOWLIST, DENYLIST};
pub use weaken::{FENCE_SYSCALLS, HOST_STATE_DIRS, SOCKET_DIRS};
pub use yaml::{MAX_DEPTH, MAX_POLICY_BYTES};

use extends::{Base, Layer, Loader};

/// Loads and validates a policy file; relative `extends:` paths start in its directory.
pub fn load_file(path: &Path) -> Result<Profile, PolicyError> {
    let text = extends::read_policy_file(path)?;
    Loader::new().load(Layer {
        text,
        file: Arc::from(path.display().to_string()),
        identity: extends::identity_of(path),
        base: Base::Dir(extends::parent_dir(path)),
    })
}

/// Loads and validates policy text. `origin` names it in messages (e.g. the file it was
/// read from, or `<stdin>`); relative `extends:` paths start in `origin`'s directory.
pub fn load_str(text: &str, origin: &str) -> Result<Profile, PolicyError> {
    let path = Path::new(origin);
    Loader::new().load(Layer {
        text: text.to_string(),
        file: Arc::from(origin),
        identity: extends::identity_of(path),
        base: Base::Dir(extends::parent_dir(path)),
    })
}
