//! Why a snapshot-store operation failed. Every message is one line that names the tag,
//! path or object at fault and, where the user can act, ends with what to do.

use std::path::PathBuf;

/// Errors of [`super::SnapshotStore`]. [`SnapshotError::exit_code`] says whose fault
/// each is; a failed snapshot leaves the store as it was, a failed restore removes what
/// it created.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A value the caller gave is wrong: a tag name, a source that is not a directory,
    /// a destination that is not empty.
    #[error("{0}")]
    Usage(String),
    /// No snapshot has that tag.
    #[error("no snapshot tagged `{0}` (`phantom store list` shows the tags)")]
    NotFound(String),
    /// The tag exists and replacing it was not asked for.
    #[error(
        "a snapshot tagged `{0}` exists already; choose another tag, or replace it (--replace)"
    )]
    TagExists(String),
    /// The tree (or a manifest) exceeds a [`super::SnapshotLimits`] bound.
    #[error("{what} exceeds the limit of {limit}; raise it with {flag} if the tree is trusted to be this large")]
    TooLarge {
        what: String,
        limit: String,
        flag: &'static str,
    },
    /// The source tree changed under the walk in a way it cannot record (an entry
    /// kept changing its type).
    #[error("{path}: {why}; snapshot it again when it is not being modified")]
    Changed { path: String, why: String },
    /// A manifest that hashes right but describes something a restore must not do
    /// (a path with `..`, an absolute path, a child before its directory): someone
    /// wrote it on purpose. Nothing is restored.
    #[error("snapshot `{tag}`: unsafe manifest: {why}; restore refused")]
    UnsafeManifest { tag: String, why: String },
    /// A stored object is missing or its content does not hash to its name.
    #[error("{what}: {why}; `phantom store verify` lists the damage")]
    Corrupt { what: String, why: String },
    /// Filesystem work on the source, the destination or the store failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// The exit code a CLI uses: 2 when the input is at fault (a bad tag, an unknown
    /// tag, a non-empty destination, a tree over the limits), 1 when the store is
    /// damaged or the host failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            SnapshotError::Usage(_)
            | SnapshotError::NotFound(_)
            | SnapshotError::TagExists(_)
            | SnapshotError::TooLarge { .. }
            | SnapshotError::Changed { .. } => 2,
            SnapshotError::UnsafeManifest { .. }
            | SnapshotError::Corrupt { .. }
            | SnapshotError::Io { .. } => 1,
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SnapshotError {
        let path = path.into();
        move |source| SnapshotError::Io { what, path, source }
    }

    /// [`SnapshotError::io`] for rustix's errors.
    pub(crate) fn errno(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(rustix::io::Errno) -> SnapshotError {
        let path = path.into();
        move |errno| SnapshotError::Io {
            what,
            path,
            source: errno.into(),
        }
    }
}
