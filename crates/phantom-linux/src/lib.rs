//! The only crate of Phantom Fragment with `unsafe` code and raw system calls.
//!
//! Each module wraps one kernel feature with small typed functions — one per kernel
//! operation — that turn a failed return code into a [`SysError`] naming the
//! operation and the path or fd it was applied to:
//!
//! * [`process`] — clone3 into new namespaces, wait with rusage, signals, setsid,
//!   execve, rlimits, no_new_privs, parent-death signal.
//! * [`userns`] — uid/gid maps of a child user namespace.
//! * [`mount`] — tmpfs/overlay/bind/proc/devpts mounts, recursive attribute changes
//!   (mount_setattr), idmapped mounts, pivot_root.
//! * [`caps`] — dropping every capability (bounding, ambient, effective, permitted).
//! * [`seccomp`] — installing a classic-BPF filter program.
//! * [`landlock`] — the Landlock filesystem fence and scopes, best effort.
//! * [`net`] — bringing `lo` up in a fresh network namespace.
//! * [`bpfdev`] — cgroup v2 device rules: loading and attaching an eBPF program.
//! * [`cgroup`] — cgroup v1 and v2 limits, membership, OOM events, cleanup.
//! * [`dir`] — a directory's entries, read by its fd.
//! * [`fdpass`] — a seqpacket channel that can carry one fd (SCM_RIGHTS).
//! * [`oci`] — what an OCI container's setup needs beyond a sandbox's: generic
//!   mounts, setns by file, ids, the five capability sets, any rlimit, terminals.
//! * [`sysinfo`] — read-only host probes for `phantom doctor`.
//! * [`attempt`] — deliberate attempts at forbidden operations (for phantom-probe).

pub mod attempt;
pub mod bpfdev;
pub mod caps;
pub mod cgroup;
pub mod dir;
pub mod fdpass;
pub mod landlock;
pub mod mount;
pub mod net;
pub mod oci;
pub mod process;
pub mod seccomp;
pub mod sysinfo;
pub mod terminal;
pub mod userns;

use std::io;

/// A kernel operation that failed: which one, on what, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{op}({target}) failed: {source}")]
pub struct SysError {
    /// The system call or kernel operation, e.g. `mount`, `pivot_root`.
    pub op: &'static str,
    /// The path, fd or value it was applied to.
    pub target: String,
    #[source]
    pub source: io::Error,
}

impl SysError {
    /// Build an error from `errno` as it is now.
    pub fn last(op: &'static str, target: impl Into<String>) -> Self {
        SysError {
            op,
            target: target.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// Build an error from an existing io::Error.
    pub fn new(op: &'static str, target: impl Into<String>, source: io::Error) -> Self {
        SysError {
            op,
            target: target.into(),
            source,
        }
    }

    /// The raw errno, when there is one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Result of a kernel operation.
pub type SysResult<T> = Result<T, SysError>;

/// Turn a `-1`-on-error return value into a result.
pub(crate) fn check(
    ret: libc::c_long,
    op: &'static str,
    target: impl FnOnce() -> String,
) -> SysResult<libc::c_long> {
    if ret < 0 {
        Err(SysError::last(op, target()))
    } else {
        Ok(ret)
    }
}

/// `CString` from a path, for the raw calls.
pub(crate) fn cstr(path: &std::path::Path) -> SysResult<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        SysError::new(
            "path",
            path.display().to_string(),
            io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
        )
    })
}
