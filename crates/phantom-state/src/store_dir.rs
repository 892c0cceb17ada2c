//! Phantom's state directory, and the private directories in it (the image store,
//! the snapshot store, the state database's directory).

use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Environment variable naming the state directory. Overrides the defaults
/// (`/var/lib/phantom` for root, else `$XDG_STATE_HOME/phantom` or
/// `~/.local/state/phantom`); tests point it at a temporary directory.
pub const STATE_DIR_ENV: &str = "PHANTOM_STATE_DIR";

/// Phantom's state directory (`<state>`: the image and snapshot stores, the
/// persistent sandboxes' database and workspaces): `$PHANTOM_STATE_DIR` when set
/// (relative to the current directory), else `/var/lib/phantom` for root, else
/// `$XDG_STATE_HOME/phantom`, else `~/.local/state/phantom`. `None` when none of
/// them applies (no HOME). Not created here.
pub fn state_dir() -> std::io::Result<Option<PathBuf>> {
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_absolute() {
            return Ok(Some(dir));
        }
        return Ok(Some(std::env::current_dir()?.join(dir)));
    }
    if phantom_linux::process::euid() == 0 {
        return Ok(Some(PathBuf::from("/var/lib/phantom")));
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from) {
        if state.is_absolute() {
            return Ok(Some(state.join("phantom")));
        }
    }
    Ok(std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|home| home.is_absolute())
        .map(|home| home.join(".local/state/phantom")))
}

/// Why a store directory could not be prepared.
#[derive(Debug)]
pub enum StoreDirError {
    /// An I/O step failed: `what` names it ("create", "inspect").
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The directory exists but is not one only we own and can write.
    NotYours { uid: u32 },
}

/// Creates `dir` (0700, with its parents) and refuses one that is not a directory,
/// that another user owns, or that group or others can write — a store someone else
/// can write could hand us roots or snapshots we never made. Then creates each of
/// `subs` (paths relative to `dir`, 0700) and the writers' `lock` file (0600).
pub fn prepare(dir: &Path, subs: &[&str]) -> Result<(), StoreDirError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreDirError::Io { what, path, source }
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    let meta = fs::symlink_metadata(dir).map_err(io("inspect", dir))?;
    let uid = phantom_linux::process::euid();
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(StoreDirError::NotYours { uid });
    }
    for sub in subs {
        let path = dir.join(sub);
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create", &path)(e)),
        }
    }
    let lock = dir.join("lock");
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&lock)
        .map_err(io("create", &lock))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Scratch;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn store_dir_creates_private_subdirs_and_lock() {
        let tmp = Scratch::new("store-dir");
        let dir = tmp.0.join("a/b/store");
        prepare(&dir, &["x", "y/z"]).unwrap_err(); // "y" does not exist: not recursive
        prepare(&dir, &["x", "y", "y/z"]).unwrap();
        for sub in ["", "x", "y", "y/z"] {
            let mode = fs::metadata(dir.join(sub)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
        let lock = fs::metadata(dir.join("lock")).unwrap().permissions().mode();
        assert_eq!(lock & 0o777, 0o600);
        // A second open of the same store is fine.
        prepare(&dir, &["x", "y", "y/z"]).unwrap();
    }

    #[test]
    fn store_dir_refuses_one_others_can_write() {
        let tmp = Scratch::new("store-dir");
        let dir = tmp.0.join("store");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            prepare(&dir, &[]),
            Err(StoreDirError::NotYours { .. })
        ));
    }
}
