//! Why an image operation failed. Every message is one line that names the thing at
//! fault (the archive member, the layer and the entry, the image name) and, where the
//! user can act, ends with what to do.

use std::path::PathBuf;

/// Errors of [`super::ImageStore`]. All but [`ImageError::Io`] are the input's fault
/// (exit code 2); an import that fails leaves the store as it was.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A value the caller gave is wrong: a name, a path that does not exist, options.
    #[error("{0}")]
    Usage(String),
    /// No image of that name in the store.
    #[error("no image named `{0}` (`phantom image list` shows the images; `phantom image import FILE --name {0}` adds one)")]
    NotFound(String),
    /// The source is not an image this importer understands, or its metadata is
    /// malformed (bad JSON, missing blob, wrong media type, ...).
    #[error("{source_path}: {why}")]
    BadImage { source_path: PathBuf, why: String },
    /// A blob's sha256 is not the one its descriptor (or its file name, or the config's
    /// diff_ids) promises.
    #[error("{what}: sha256 is {actual} but {expected_by} says {expected}; the image is corrupt or was tampered with")]
    DigestMismatch {
        what: String,
        expected_by: &'static str,
        expected: String,
        actual: String,
    },
    /// The image was built for another platform.
    #[error("{source_path}: the image is for {image} but this host is {host}; import an image built for {host}")]
    Platform {
        source_path: PathBuf,
        image: String,
        host: String,
    },
    /// A layer entry that would escape the image root, write through a symlink, link
    /// outside the image or remove the root: the whole import is refused.
    #[error("{layer}: entry `{path}`: {why}; import refused")]
    UnsafeEntry {
        layer: String,
        path: String,
        why: String,
    },
    /// A tar or compressed stream ends early or is corrupt.
    #[error("{what}: {why}")]
    Corrupt { what: String, why: String },
    /// The import would exceed a limit of [`super::ImportOptions`] (a size or entry-count
    /// bomb, or simply a very large image).
    #[error("{what} exceeds the limit of {limit}; raise it with {flag} if the image is trusted to be this large")]
    TooLarge {
        what: String,
        limit: String,
        flag: &'static str,
    },
    /// A host tool this operation needs is missing or failed (debootstrap).
    #[error("{0}")]
    Tool(String),
    /// Filesystem work in the store or on the source failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The exit code a CLI uses: 2 when the input is at fault (bad name, bad archive,
    /// digest mismatch, unsafe layer, missing tool), 1 for host I/O failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            ImageError::Io { .. } => 1,
            _ => 2,
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { what, path, source }
    }
}
