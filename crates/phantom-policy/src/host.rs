//! What [`crate::compile`] may ask of the host, and nothing more: a [`Host`].
//!
//! Two parts of a plan depend on the machine, not only on the policy:
//!
//! * `filesystem.toolchains` is resolved against the environment of the process that
//!   compiles (`HOME`, `RUSTUP_HOME`, `CARGO_HOME`, `GOROOT`, `NVM_DIR`, `PATH`) and
//!   what exists where the installers put things;
//! * a bind whose source lies below a directory the sandbox's user cannot enter (for an
//!   unprivileged invoker, another user's 0700 home; a root engine passes such sources
//!   in itself) would fail at run time with a bare EACCES; compile() finds that first.
//!
//! [`LocalHost`] answers from this machine with read-only calls (environment, stat,
//! readdir, readlink); tests hand compile() a fake. Nothing here writes.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// What is at a path, following symlinks, as phantom (not the sandbox) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    Dir,
    File,
    Socket,
    /// A device, FIFO, or anything else.
    Other,
}

/// A directory on the way to a path that the sandbox's user cannot enter (no search
/// permission for it), with what makes it so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    /// The directory (absolute).
    pub dir: String,
    /// Its permission bits (`0o700`).
    pub mode: u32,
    /// Its owner.
    pub uid: u32,
}

impl Barrier {
    /// "/root (mode 0700, owner uid 0)".
    pub fn describe(&self) -> String {
        format!(
            "{} (mode {:04o}, owner uid {})",
            self.dir,
            self.mode & 0o7777,
            self.uid
        )
    }
}

/// The host as compile() sees it. See the module docs.
pub trait Host {
    /// An environment variable of the compiling process.
    fn var(&self, name: &str) -> Option<String>;
    /// What is at `path` (symlinks followed).
    fn kind(&self, path: &str) -> PathKind;
    /// The names in directory `path`, sorted (empty when it cannot be read).
    fn list(&self, path: &str) -> Vec<String>;
    /// `path` with every symlink resolved, when it exists.
    fn real_path(&self, path: &str) -> Option<String>;
    /// The first directory on the way to `path` (its ancestors, symlinks followed) that
    /// the sandbox's user cannot enter; `None` when it can reach `path` (or the part
    /// of it that exists).
    fn barrier(&self, path: &str) -> Option<Barrier>;
}

/// This machine, seen with read-only calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalHost;

impl Host for LocalHost {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn kind(&self, path: &str) -> PathKind {
        match std::fs::metadata(path) {
            Err(_) => PathKind::Missing,
            Ok(m) if m.is_dir() => PathKind::Dir,
            Ok(m) if m.is_file() => PathKind::File,
            Ok(m) if m.file_type().is_socket() => PathKind::Socket,
            Ok(_) => PathKind::Other,
        }
    }

    fn list(&self, path: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn real_path(&self, path: &str) -> Option<String> {
        std::fs::canonicalize(path)
            .ok()
            .map(|p| p.display().to_string())
    }

    fn barrier(&self, path: &str) -> Option<Barrier> {
        // As root, the sandbox's user is an unprivileged uid of no group, and a source
        // it cannot reach is passed in by the engine itself as a detached copy of the
        // mount (phantom-engine's spawn.rs, `GoMount::Bind`): nothing is out of reach.
        // Unprivileged, the sandbox has exactly the invoker's access.
        if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            return None;
        }
        let mut seen = Vec::new();
        for candidate in [Some(PathBuf::from(path)), std::fs::canonicalize(path).ok()]
            .into_iter()
            .flatten()
        {
            for dir in ancestors(&candidate) {
                if seen.contains(&dir) {
                    continue;
                }
                seen.push(dir.clone());
                let Ok(meta) = std::fs::metadata(&dir) else {
                    // Missing, or already not enterable for an unprivileged invoker:
                    // the parent's check below reports the latter.
                    continue;
                };
                if !meta.is_dir() {
                    continue;
                }
                // Looking up `.` in a directory needs search permission on it.
                if std::fs::metadata(dir.join(".")).is_err() {
                    return Some(Barrier {
                        dir: dir.display().to_string(),
                        mode: meta.mode(),
                        uid: meta.uid(),
                    });
                }
            }
        }
        None
    }
}

/// The directories a lookup of `path` enters: `/`, `/a`, `/a/b` for `/a/b/c`.
fn ancestors(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut current = PathBuf::from("/");
    let components: Vec<Component<'_>> = path.components().collect();
    for (i, component) in components.iter().enumerate() {
        if i + 1 == components.len() {
            break;
        }
        match component {
            Component::RootDir => out.push(current.clone()),
            Component::Normal(name) => {
                current.push(name);
                out.push(current.clone());
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_the_directories_a_lookup_enters() {
        assert_eq!(
            ancestors(Path::new("/root/.cargo/bin")),
            [
                PathBuf::from("/"),
                PathBuf::from("/root"),
                PathBuf::from("/root/.cargo")
            ]
        );
        assert_eq!(ancestors(Path::new("/")), Vec::<PathBuf>::new());
    }
}
