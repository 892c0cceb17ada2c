//! The host directory bound at /workspace: the caller's, or a fresh temporary one
//! that is removed after the run.
//!
//! Temporary workspaces live in `$TMPDIR/phantom-<uid>/ws-<sandbox id>` and are
//! flock()ed while their run lives. If a front end is killed before it can clean up,
//! the next run finds the directory unlocked and removes it ([`collect_stale`]).

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::RuntimeError;

/// A workspace directory for one run.
#[derive(Debug)]
pub struct Workspace {
    pub path: PathBuf,
    /// Held (flock) while the run lives; `Some` for temporary workspaces.
    lock: Option<File>,
}

/// Name prefix of temporary workspaces inside [`temp_base`].
pub const TEMP_PREFIX: &str = "ws-";

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The per-user directory holding temporary workspaces, created 0700 on first use.
/// Refuses a directory that another user owns or that is a symlink (someone else could
/// have planted it in a shared /tmp).
pub fn temp_base() -> Result<PathBuf, RuntimeError> {
    let uid = phantom_linux::process::euid();
    let base = std::env::temp_dir().join(format!("phantom-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create", &base)(e)),
    }
    let meta = std::fs::symlink_metadata(&base).map_err(io("inspect", &base))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(RuntimeError::Unsupported {
            what: format!("temporary directory {}", base.display()),
            why: "it is not a private directory owned by you".into(),
            hint: format!("remove it, or set TMPDIR to a directory only you can write (it must be mode 0700 and owned by uid {uid})"),
        });
    }
    Ok(base)
}

impl Workspace {
    /// Use the caller's directory, which must exist.
    pub fn existing(dir: &str) -> Result<Workspace, RuntimeError> {
        let path = PathBuf::from(dir);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(RuntimeError::Usage(format!("--workspace {dir}: not a directory"))),
            Err(e) => {
                return Err(RuntimeError::Usage(format!(
                    "--workspace {dir}: {e} (create it first, or leave --workspace out for a temporary one)"
                )))
            }
        }
        let path = path.canonicalize().map_err(io("resolve", Path::new(dir)))?;
        Ok(Workspace { path, lock: None })
    }

    /// A fresh private directory named after the sandbox, locked while it is in use.
    pub fn temporary(sandbox_id: &str) -> Result<Workspace, RuntimeError> {
        let base = temp_base()?;
        collect_stale(&base);
        let path = base.join(format!("{TEMP_PREFIX}{sandbox_id}"));
        std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(io("create", &path))?;
        let lock = File::open(&path).map_err(io("open", &path))?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| io("lock", &path)(e.into()))?;
        Ok(Workspace { path, lock: Some(lock) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.lock.take().is_some() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Remove temporary workspaces in `base` whose run is gone (nobody holds their lock).
/// Returns how many were removed.
pub fn collect_stale(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(dir) = File::open(&path) else { continue };
        if flock(&dir, FlockOperation::NonBlockingLockExclusive).is_ok() && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}
