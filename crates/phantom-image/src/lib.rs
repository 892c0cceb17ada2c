//! Images: root filesystems that do not come from the host — imported from an OCI image
//! layout (a directory or a tar), a `docker save` archive, or a plain directory — kept
//! in a store of flattened, verified, immutable roots.
//!
//! * [`ImageStore`] — the store: [`ImageStore::import`], [`ImageStore::import_dir`],
//!   [`ImageStore::list`], [`ImageStore::inspect`], [`ImageStore::remove`], and
//!   [`ImageStore::rootfs`], which hands a sandbox what to mount: the root directory
//!   (bottom to top, today always one) and the image's config.
//! * [`ImageInfo`] — what `inspect` shows and what the store records per image;
//!   [`ImageConfig`] its Env, WorkingDir, Entrypoint, Cmd and User.
//! * [`ImportOptions`] — the setuid policy and the size limits of an import;
//!   [`ImportProgress`] — what a progress bar needs.
//!
//! # Layout
//!
//! ```text
//! <state>/images/                 the store, 0700 (state: $PHANTOM_STATE_DIR, else
//!   lock                          /var/lib/phantom for root, else $XDG_STATE_HOME/phantom
//!   images/<name>.json            or ~/.local/state/phantom)
//!                                 one record (ImageInfo) per image; `/` in a name is `%`
//!   roots/sha256/<root id>/       one flattened root per layer chain, immutable:
//!     rootfs/                       the image's `/`
//!     root.json                     what it holds (RootRecord)
//!   tmp/<op>-<id>/                work directories, locked (flock) while in use
//! ```
//!
//! # One flattened root per layer chain
//!
//! An import unpacks all of an image's layers, bottom first, into ONE directory,
//! applying whiteouts as deletions (the rules are in `unpack.rs`). Storing each layer
//! apart for an overlayfs lower stack would need whiteouts recorded as overlayfs
//! expects (0/0 character devices, `trusted.*` xattrs), which an unprivileged importer
//! cannot create; a flattened root needs no privilege and mounts as a single lower
//! directory.
//!
//! The root is named by the OCI ChainID of its layers (mixed with `+setuid` when the
//! import kept setuid bits, which changes the content). So:
//!
//! * an image imported twice — under two names, from an OCI layout and from a
//!   `docker save` archive, compressed or not — is stored once, and the second import
//!   reads no layer at all;
//! * an image whose layers extend a stored chain (`FROM` a stored image) is built from
//!   that root: its tree is recreated with hard links to the stored files, then only
//!   the new layers are applied. Unchanged files take no space twice. This is safe
//!   because nothing in a root is ever modified in place: an entry that replaces a
//!   file unlinks it and creates a new inode, and only directories (never shared) get
//!   their mode changed;
//! * dedup is by chain prefix, not by individual layer: two images that share a base
//!   but were not imported as base-then-child (or whose common prefix was never
//!   imported as an image of its own) are each unpacked in full. Removing an image
//!   removes its root unless another image uses the same root; roots linked from it
//!   keep their files (hard links).
//!
//! Every write goes to a work directory inside the store, renamed into place only when
//! the import succeeded: a failed import leaves the store as it was.
//!
//! Files belong to the importing user; the uid, gid and user names in layers are not
//! kept or recorded (yet). A sandbox that needs root-owned files maps the importer to
//! root in its user namespace.
#![forbid(unsafe_code)]

mod build;
mod digest;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod source;
mod store;
mod tarstream;
mod tree;
mod unpack;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use build::Debootstrap;
pub use error::ImageError;
pub use store::{ImageStore, Removed};

/// Limits and policy of one import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Keep setuid/setgid bits (stripped by default: the store lives on the host).
    pub keep_setuid: bool,
    /// Most bytes of regular-file data an import may write (default 8 GiB).
    pub max_bytes: u64,
    /// Most entries (files, directories, links, whiteouts) an import may apply
    /// (default 1,000,000).
    pub max_entries: u64,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            keep_setuid: false,
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// What an import reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportProgress {
    /// The source is read and verified up to its layers: `unpack` of its `layers`
    /// must be read (the others are in the store already), `bytes` in all.
    Resolved {
        layers: usize,
        unpack: usize,
        bytes: u64,
    },
    /// Layer `index` (1-based) of `count` starts.
    Layer {
        index: usize,
        count: usize,
        digest: String,
        bytes: u64,
    },
    /// Bytes read so far (of compressed layers; of files for `import_dir`, whose total
    /// is not known in advance).
    Bytes { done: u64, total: Option<u64> },
    /// Everything is read; measuring and committing.
    Finishing,
}

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// An OCI image layout directory.
    OciLayout,
    /// An OCI image layout in a tar (possibly gzip or zstd compressed).
    OciArchive,
    /// A `docker save` archive (or one unpacked into a directory).
    DockerArchive,
    /// A plain root directory (`import_dir`, `build --debootstrap`).
    Directory,
}

impl SourceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::OciLayout => "oci-layout",
            SourceFormat::OciArchive => "oci-archive",
            SourceFormat::DockerArchive => "docker-archive",
            SourceFormat::Directory => "directory",
        }
    }
}

/// The parts of an image's config that say how to run it, as Docker reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub user: Option<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The blob's digest (as compressed), when the source names it; legacy
    /// `docker save` layers have only their diff_id.
    pub digest: Option<String>,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    /// Blob size in bytes.
    pub size: u64,
    pub media_type: String,
}

/// What happened during an import.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportStats {
    /// Tar entries (or directory entries) applied.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes_written: u64,
    /// Device nodes, fifos and sockets not created.
    pub devices_skipped: u64,
    /// Files and directories whose setuid/setgid bits were removed.
    pub setid_stripped: u64,
    /// Other entries left out: aufs metadata, filesystems mounted in an imported
    /// directory.
    pub other_skipped: u64,
    /// Layers not read because the store had their chain (or a prefix of it) already.
    pub reused_layers: usize,
    /// Whether the store had this exact root already: nothing new was stored.
    pub reused_root: bool,
}

/// One image of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    /// The config's digest (Docker's image id); for a directory, the tree digest.
    pub id: String,
    /// The manifest's digest (none for `docker save` archives and directories).
    pub digest: Option<String>,
    /// Names the root directory in the store (`roots/sha256/<hex>`).
    pub root_id: String,
    pub format: SourceFormat,
    /// What it was imported from: the absolute path of the source, or the recipe
    /// of a build (`debootstrap bookworm --include=python3`).
    pub source: String,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// When the image was built, as its config says.
    pub created: Option<String>,
    /// When it was imported (seconds since the epoch).
    pub imported_at: u64,
    /// Bottom first. Empty for a directory import.
    pub layers: Vec<LayerInfo>,
    /// Sum of the layer blob sizes.
    pub size: u64,
    /// Bytes of regular files in the root (hard links counted once).
    pub unpacked_bytes: u64,
    /// Regular files in the root.
    pub files: u64,
    pub config: ImageConfig,
    /// What the import that created this record did.
    pub import: ImportStats,
}

/// What a sandbox mounts for an image.
#[derive(Debug, Clone)]
pub struct ImageRoot {
    /// Read-only lower directories, bottom to top (an overlayfs `lowerdir` lists them
    /// top first). Today always exactly one: the flattened root.
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
    pub info: ImageInfo,
}

/// The platform images must be built for: `linux` and the OCI name of `uname -m`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPlatform {
    pub os: &'static str,
    pub architecture: String,
}

impl fmt::Display for HostPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

pub(crate) fn host_platform() -> HostPlatform {
    let uname = rustix::system::uname();
    let machine = uname.machine().to_string_lossy();
    HostPlatform {
        os: "linux",
        architecture: source::normalize_arch(&machine).to_string(),
    }
}
