//! Workspace snapshots: directory trees kept in a content-addressed store, deduplicated
//! across snapshots, verified on every read.
//!
//! * [`SnapshotStore`] — the store: [`SnapshotStore::snapshot`] records a directory
//!   tree under a tag, [`SnapshotStore::restore`] recreates it in an empty directory
//!   (copying, or hard-linking / reflinking from a cache of whole files),
//!   [`SnapshotStore::list`], [`SnapshotStore::remove`], [`SnapshotStore::gc`] and
//!   [`SnapshotStore::verify`]. The `_at` variants take directory fds, for callers that
//!   resolved a sandbox's workspace themselves.
//! * [`SnapshotInfo`] — what a tag records; [`RestoreInfo`], [`GcReport`],
//!   [`VerifyReport`] — what the other operations did or found.
//!
//! # Layout
//!
//! ```text
//! <state>/snapshots/              the store, 0700 (state: $PHANTOM_STATE_DIR, else
//!   lock                          /var/lib/phantom for root, else $XDG_STATE_HOME/phantom
//!                                 or ~/.local/state/phantom — as for the image store)
//!   tags/<tag>                    one JSON record (SnapshotInfo) per tag: names a manifest
//!   manifests/<ab>/<blake3>       zstd(JSON manifest): the tree and each file's chunk list
//!   chunks/<ab>/<blake3>          zstd(chunk bytes)
//!   files/<ab>/<blake3>           whole decompressed files, 0400: the sources of reflinks
//!   files/<ab>/<blake3>.<mode>.<mtime>.<nsec>
//!                                 the same, with a restored file's mode (write bits
//!                                 cleared) and mtime: the targets of hard links
//!   tmp/                          files being written, renamed into place when complete
//! ```
//!
//! Every object is named by the BLAKE3 hash of its *uncompressed* content (`<ab>` is the
//! first byte in hex), so a chunk or a manifest is stored once however many snapshots
//! use it, and every read re-hashes what it decompressed: a flipped bit is an error,
//! never wrong data in a restored tree. A snapshot of an unchanged tree produces the
//! same manifest (it holds no time or source path; those are in the tag record) and so
//! stores nothing but its tag.
//!
//! # Chunking
//!
//! File contents are cut with FastCDC (the 2020 variant, normalization level 1): at
//! least 16 KiB, on average 64 KiB, at most 256 KiB per chunk; a file smaller than the
//! minimum is one chunk, an empty file none. Cut points depend only on the bytes
//! around them, so an edit in a large file changes the one or two chunks around it and
//! the rest are found in the store. Chunks are compressed with zstd (level 3), each
//! as one frame.
//!
//! # What a snapshot records
//!
//! Regular files (content, mode, mtime), directories (mode, mtime) and symlinks (the
//! target exactly as written — absolute or `..` — never followed). Setuid and setgid
//! bits are stripped (counted). Device nodes, fifos and sockets are skipped (counted),
//! and so are directories of another filesystem mounted inside the tree. Owners,
//! xattrs and ACLs are not recorded: a restored tree belongs to whoever restores it.
//! Hard links inside the tree are recorded as separate files (their content is stored
//! once anyway). The walk opens every name relative to its parent's fd with
//! `O_NOFOLLOW`, so a symlink — even one swapped in while the walk runs — is recorded
//! as a symlink and never leads outside the tree.
//!
//! # Restore
//!
//! Into a new or empty directory. Every entry is created relative to its parent's fd
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mkdirat`, `symlinkat`, `linkat`), so nothing is ever
//! written through a symlink in the destination, and every path of the manifest is
//! checked first (relative, no `.`/`..`/empty component, parents before children, no
//! name twice): a manifest that would write outside the destination is refused whole.
//! A restore that fails removes what it created. [`RestoreMode`] chooses how file data
//! gets there:
//!
//! * `Copy` — decompressed from the chunks (always possible);
//! * `Reflink` — `FICLONE` from `files/<blake3>`, which is materialized from the
//!   chunks on first use; each restored file is its own inode (copy-on-write), with its
//!   own mode and mtime. Needs a filesystem with reflinks (btrfs, XFS, bcachefs) and the
//!   destination on the same filesystem as the store;
//! * `Hardlink` — `linkat` to `files/<blake3>.<mode>.<mtime>.<nsec>`: no data is
//!   written at all once the cache holds the file. Hard-linked files are the store's
//!   own inodes: they are read-only (write bits cleared) and must stay so — a write
//!   through one would change every tree linked to it. Before linking, a cached file
//!   whose size, mode or mtime changed is thrown away and rebuilt, `gc` drops such
//!   files too, and `verify` re-hashes the cache; still, never hand a hard-linked tree
//!   to code you do not trust as its writable workspace (it owns the inodes and can
//!   `chmod` them): use `Reflink` or `Copy` there.
//!
//! When the filesystem refuses a link or a clone (`EXDEV`, `EOPNOTSUPP`, ...), the
//! file is copied instead and [`RestoreInfo::fallback`] says why.
//!
//! # Consistency
//!
//! New chunks and the manifest are written to `tmp/`, flushed with one `syncfs`, and
//! only then renamed into place; the tag is written last (temp file, `fsync`,
//! `rename`, `fsync` of `tags/`). A crash leaves at most temp files (removed by `gc`)
//! and chunks no tag uses yet; never a partial chunk under its final name, never a tag
//! whose objects are missing. Snapshot, restore, remove and verify hold `lock` shared;
//! `gc` holds it exclusive, so it never deletes a chunk a running snapshot is about to
//! reference.
#![forbid(unsafe_code)]

mod error;
mod manifest;
mod objects;
mod restore;
mod store;
mod walk;

use serde::{Deserialize, Serialize};

pub use error::SnapshotError;
pub use manifest::MAX_DEPTH;
pub use store::{validate_tag, SnapshotStore, MAX_TAG};

/// Smallest chunk FastCDC cuts (except the last of a file).
pub const CHUNK_MIN: usize = 16 << 10;
/// The average chunk size FastCDC aims for.
pub const CHUNK_AVG: usize = 64 << 10;
/// Largest chunk.
pub const CHUNK_MAX: usize = 256 << 10;

/// Bounds of a snapshot (checked while it is taken) and of a manifest (checked before
/// a restore writes anything). Exceeding one is an error, never a truncated tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Most bytes of regular-file content (default 8 GiB).
    pub max_bytes: u64,
    /// Most entries: files, directories and symlinks (default 1,000,000).
    pub max_entries: u64,
}

impl Default for SnapshotLimits {
    fn default() -> SnapshotLimits {
        SnapshotLimits {
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// How [`SnapshotStore::snapshot`] treats its tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Point an existing tag at the new snapshot (otherwise an existing tag is an
    /// error). The old snapshot's chunks stay until `gc`.
    pub replace: bool,
}

/// What a snapshot reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotProgress {
    /// Entries recorded and file bytes read so far (the total is not known in advance).
    Read { entries: u64, bytes: u64 },
    /// The tree is read; flushing and committing the new objects.
    Committing,
}

/// What a restore reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreProgress {
    pub bytes: u64,
    pub total_bytes: u64,
}

/// How [`SnapshotStore::restore`] puts file data into the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreMode {
    /// Decompress every file from its chunks.
    Copy,
    /// Clone each file from the store's file cache (`FICLONE`); copy where refused.
    Reflink,
    /// Hard-link each file to the store's file cache (read-only); copy where refused.
    Hardlink,
}

impl RestoreMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreMode::Copy => "copy",
            RestoreMode::Reflink => "reflink",
            RestoreMode::Hardlink => "hardlink",
        }
    }
}

/// One snapshot: what its tag record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub tag: String,
    /// Whose it is (records from before owners existed are the local user's).
    #[serde(default = "local")]
    pub owner: phantom_api::access::Owner,
    /// The manifest's BLAKE3 (hex): two snapshots of the same tree have the same one.
    pub manifest: String,
    /// When it was taken (seconds since the epoch).
    pub created: u64,
    /// What was snapshotted (a host path, or what the caller of `snapshot_at` named).
    pub source: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
    /// Chunks the files are made of, repeats counted.
    pub chunks: u64,
    /// Distinct chunks.
    pub unique_chunks: u64,
    /// Chunks this snapshot added to the store (the others were there already).
    pub new_chunks: u64,
    /// Bytes this snapshot added to the store: new chunks and manifest, compressed.
    pub new_bytes: u64,
    /// Device nodes, fifos and sockets not recorded.
    pub special_skipped: u64,
    /// Directories of another filesystem (mount points) not recorded.
    pub other_fs_skipped: u64,
    /// Entries that disappeared between being listed and being read.
    pub vanished: u64,
    /// Files and directories whose setuid/setgid bits were not recorded.
    pub setid_stripped: u64,
}

fn local() -> phantom_api::access::Owner {
    phantom_api::access::Owner::Local
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    pub tag: String,
    /// The mode asked for.
    pub mode: RestoreMode,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files whose data was written (decompressed or copied).
    pub copied: u64,
    /// Files cloned from the store (`Reflink`).
    pub reflinked: u64,
    /// Files hard-linked to the store (`Hardlink`); they are read-only.
    pub hardlinked: u64,
    /// Why some files were copied although `Reflink` or `Hardlink` was asked, e.g.
    /// `reflink refused by the filesystem (Operation not supported)`.
    pub fallback: Option<String>,
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub chunk_bytes_freed: u64,
    pub manifests_removed: u64,
    /// Whole files of the restore cache no snapshot refers to any more.
    pub cache_files_removed: u64,
    /// Temp files left by interrupted operations.
    pub temp_files_removed: u64,
    /// Everything removed, in bytes (file sizes).
    pub bytes_freed: u64,
}

/// What kind of stored object a [`Problem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    Tag,
    Manifest,
    Chunk,
    CacheFile,
}

/// One corrupted or missing object found by `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ObjectKind,
    /// The object's BLAKE3 (hex), or the tag's name.
    pub id: String,
    pub path: std::path::PathBuf,
    /// `missing`, `content hashes to <hex>`, `not a zstd frame: ...`, ...
    pub what: String,
    /// The snapshots this breaks (a chunk or manifest they need); empty for an
    /// unreferenced object or the cache, which restores rebuild from chunks.
    pub breaks: Vec<String>,
}

/// What `verify` checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub tags: u64,
    pub manifests: u64,
    pub chunks: u64,
    /// Decompressed bytes re-hashed (chunks and cache files).
    pub bytes: u64,
    pub cache_files: u64,
    pub problems: Vec<Problem>,
    /// Every tag that cannot be restored, sorted.
    pub broken_tags: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing is corrupt or missing.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}
