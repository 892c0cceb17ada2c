//! The store's directories, opened once per operation under its lock, and the objects
//! in them: reading a chunk or manifest (always re-hashed), writing new ones through
//! `tmp/` ([`Pending`]), the file cache of restores, tag records. Objects are opened
//! relative to the fds of the store's directories, their last component with
//! `O_NOFOLLOW`; names come from hashes (64 hex digits) and validated tags only, never
//! from a manifest's paths.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::manifest::{ContentHash, Manifest, ZSTD_LEVEL};
use super::{SnapshotError, SnapshotInfo, CHUNK_MAX};

pub(crate) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Flags that create a new file and never follow or reuse what is at its name.
pub(crate) const CREATE_FLAGS: OFlags = OFlags::WRONLY
    .union(OFlags::CREATE)
    .union(OFlags::EXCL)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// The kinds of content-addressed object and their directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chunk,
    Manifest,
}

/// How an operation holds the store's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Snapshot, restore, remove, verify: they only add objects or read them.
    Shared,
    /// `gc`: it deletes objects, so nothing else may run.
    Exclusive,
}

/// The open store. Holds the lock while it lives.
pub(crate) struct Objects {
    dir: PathBuf,
    chunks: OwnedFd,
    manifests: OwnedFd,
    files: OwnedFd,
    tags: OwnedFd,
    tmp: OwnedFd,
    _lock: File,
}

/// Why a stored object cannot be used; `verify` reports it, a restore fails with it.
#[derive(Debug)]
pub(crate) enum Fault {
    Missing,
    Bad(String),
    Io(std::io::Error),
}

impl Fault {
    pub(crate) fn describe(&self) -> String {
        match self {
            Fault::Missing => "missing".into(),
            Fault::Bad(why) => why.clone(),
            Fault::Io(e) => format!("unreadable: {e}"),
        }
    }
}

/// Reusable buffers for reading chunks.
pub(crate) struct ChunkReader {
    decompressor: zstd::bulk::Decompressor<'static>,
    stored: Vec<u8>,
    /// The last chunk read, decompressed.
    pub data: Vec<u8>,
}

impl ChunkReader {
    pub(crate) fn new() -> ChunkReader {
        ChunkReader {
            decompressor: zstd::bulk::Decompressor::new().expect("a zstd context"),
            stored: Vec::new(),
            data: Vec::with_capacity(CHUNK_MAX),
        }
    }
}

impl Objects {
    /// Open the store's directories (created by `SnapshotStore::open`) and take the
    /// lock.
    pub(crate) fn open(dir: &Path, access: Access) -> Result<Objects, SnapshotError> {
        let root = rfs::openat(
            rfs::CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(SnapshotError::errno("open", dir))?;
        let lock_path = dir.join("lock");
        let lock = rfs::openat(&root, "lock", READ_FLAGS, Mode::empty())
            .map_err(SnapshotError::errno("open", &lock_path))?;
        let operation = match access {
            Access::Shared => FlockOperation::LockShared,
            Access::Exclusive => FlockOperation::LockExclusive,
        };
        rfs::flock(&lock, operation).map_err(SnapshotError::errno("lock", &lock_path))?;
        let sub = |name: &str| {
            rfs::openat(&root, name, DIR_FLAGS, Mode::empty())
                .map_err(SnapshotError::errno("open", dir.join(name)))
        };
        Ok(Objects {
            dir: dir.to_path_buf(),
            chunks: sub("chunks")?,
            manifests: sub("manifests")?,
            files: sub("files")?,
            tags: sub("tags")?,
            tmp: sub("tmp")?,
            _lock: File::from(lock),
        })
    }

    pub(crate) fn path(&self, sub: &str) -> PathBuf {
        self.dir.join(sub)
    }

    fn kind_dir(&self, kind: Kind) -> (BorrowedFd<'_>, &'static str) {
        match kind {
            Kind::Chunk => (self.chunks.as_fd(), "chunks"),
            Kind::Manifest => (self.manifests.as_fd(), "manifests"),
        }
    }

    pub(crate) fn object_path(&self, kind: Kind, hash: &ContentHash) -> PathBuf {
        self.path(self.kind_dir(kind).1).join(hash.rel_path())
    }

    pub(crate) fn kind_fd(&self, kind: Kind) -> BorrowedFd<'_> {
        self.kind_dir(kind).0
    }

    pub(crate) fn files_fd(&self) -> BorrowedFd<'_> {
        self.files.as_fd()
    }

    pub(crate) fn tags_fd(&self) -> BorrowedFd<'_> {
        self.tags.as_fd()
    }

    pub(crate) fn tmp_fd(&self) -> BorrowedFd<'_> {
        self.tmp.as_fd()
    }

    /// Whether the store holds the object (a regular file under its name).
    pub(crate) fn has(&self, kind: Kind, hash: &ContentHash) -> bool {
        rfs::statat(
            self.kind_fd(kind),
            hash.rel_path(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
    }

    /// The stored (compressed) bytes of an object.
    pub(crate) fn read_stored(
        &self,
        kind: Kind,
        hash: &ContentHash,
        out: &mut Vec<u8>,
    ) -> Result<(), Fault> {
        out.clear();
        let fd = match rfs::openat(
            self.kind_fd(kind),
            hash.rel_path(),
            READ_FLAGS,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(Fault::Missing),
            Err(e) => return Err(Fault::Io(e.into())),
        };
        let mut file = File::from(fd);
        // A chunk compresses to at most a little more than CHUNK_MAX; a manifest is
        // bounded by its decoder.
        let limit = match kind {
            Kind::Chunk => (CHUNK_MAX + CHUNK_MAX / 8 + 1024) as u64,
            Kind::Manifest => super::manifest::MAX_MANIFEST,
        };
        (&mut file)
            .take(limit + 1)
            .read_to_end(out)
            .map_err(Fault::Io)?;
        if out.len() as u64 > limit {
            return Err(Fault::Bad(format!("larger than {limit} bytes")));
        }
        Ok(())
    }

    /// Read, decompress and re-hash one chunk into `reader.data`.
    pub(crate) fn read_chunk(
        &self,
        hash: &ContentHash,
        reader: &mut ChunkReader,
    ) -> Result<(), Fault> {
        let mut stored = std::mem::take(&mut reader.stored);
        let result = self.read_stored(Kind::Chunk, hash, &mut stored);
        reader.stored = stored;
        result?;
        reader.data.clear();
        reader
            .decompressor
            .decompress_to_buffer(&reader.stored[..], &mut reader.data)
            .map_err(|e| {
                Fault::Bad(format!(
                    "not a zstd frame of at most {CHUNK_MAX} bytes: {e}"
                ))
            })?;
        let actual = ContentHash::of(&reader.data);
        if actual != *hash {
            return Err(Fault::Bad(format!("content hashes to {actual}")));
        }
        Ok(())
    }

    /// Read, decompress, re-hash and parse a manifest.
    pub(crate) fn read_manifest(&self, hash: &ContentHash) -> Result<Manifest, Fault> {
        let mut stored = Vec::new();
        self.read_stored(Kind::Manifest, hash, &mut stored)?;
        Manifest::decode(hash, &stored).map_err(Fault::Bad)
    }

    /// A new, empty file in `tmp/`, for writing an object that is renamed into place
    /// once complete.
    pub(crate) fn create_tmp(&self, what: &str) -> Result<(OwnedFd, String), SnapshotError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        loop {
            let name = format!(
                "{what}.{}.{}.{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            match rfs::openat(&self.tmp, &name, CREATE_FLAGS, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok((fd, name)),
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    return Err(SnapshotError::errno("create", self.path("tmp").join(&name))(e))
                }
            }
        }
    }

    /// Remove a temp file (best effort: `gc` removes what is left).
    pub(crate) fn discard_tmp(&self, name: &str) {
        let _ = rfs::unlinkat(&self.tmp, name, AtFlags::empty());
    }

    /// Rename `tmp/<name>` to `<rel>` below `dir` (a fan-out path `<ab>/<name>`),
    /// creating the fan-out directory when needed. Replaces what is there.
    pub(crate) fn rename_into(
        &self,
        tmp_name: &str,
        dir: BorrowedFd<'_>,
        fan_out: &str,
        rel: &str,
    ) -> Result<(), Errno> {
        match rfs::renameat(&self.tmp, tmp_name, dir, rel) {
            Err(Errno::NOENT) => {
                match rfs::mkdirat(dir, fan_out, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                }
                rfs::renameat(&self.tmp, tmp_name, dir, rel)
            }
            other => other,
        }
    }

    /// The record in tag file `file` (of tag `tag`, already validated).
    pub(crate) fn read_tag(&self, file: &str, tag: &str) -> Result<SnapshotInfo, SnapshotError> {
        let path = self.path("tags").join(file);
        let fd = match rfs::openat(&self.tags, file, READ_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(SnapshotError::NotFound(tag.to_string())),
            Err(e) => return Err(SnapshotError::errno("open", &path)(e)),
        };
        let mut text = Vec::new();
        File::from(fd)
            .take(1 << 20)
            .read_to_end(&mut text)
            .map_err(SnapshotError::io("read", &path))?;
        serde_json::from_slice(&text).map_err(|e| SnapshotError::Corrupt {
            what: format!("tag record {}", path.display()),
            why: format!("not a tag record: {e}"),
        })
    }

    /// The manifest of a tag record, parsed and checked against its name.
    pub(crate) fn manifest_of(&self, info: &SnapshotInfo) -> Result<Manifest, SnapshotError> {
        let hash = ContentHash::parse(&info.manifest).ok_or_else(|| SnapshotError::Corrupt {
            what: format!("snapshot `{}`", info.tag),
            why: format!("its record names no manifest ({:?})", info.manifest),
        })?;
        self.read_manifest(&hash)
            .map_err(|fault| SnapshotError::Corrupt {
                what: format!(
                    "snapshot `{}`: manifest {}",
                    info.tag,
                    self.object_path(Kind::Manifest, &hash).display()
                ),
                why: fault.describe(),
            })
    }

    /// Write a tag record: temp file, fsync, then a link (refusing an existing tag)
    /// or a rename (replacing it), then fsync of `tags/`.
    pub(crate) fn write_tag(
        &self,
        info: &SnapshotInfo,
        replace: bool,
    ) -> Result<(), SnapshotError> {
        let file = crate::store::tag_file(&info.owner, &info.tag);
        let path = self.path("tags").join(&file);
        let json = serde_json::to_vec_pretty(info).expect("tag records serialize");
        let (fd, tmp_name) = self.create_tmp("tag")?;
        let tmp_path = self.path("tmp").join(&tmp_name);
        let written = (|| {
            let mut file = File::from(fd);
            file.write_all(&json)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            self.discard_tmp(&tmp_name);
            return Err(SnapshotError::io("write", tmp_path)(e));
        }
        let placed = if replace {
            rfs::renameat(&self.tmp, &tmp_name, &self.tags, file.as_str())
        } else {
            // link(2) fails with EEXIST when the name exists: no window in which a
            // concurrent snapshot of the same tag could be overwritten.
            let linked = rfs::linkat(
                &self.tmp,
                &tmp_name,
                &self.tags,
                file.as_str(),
                AtFlags::empty(),
            );
            self.discard_tmp(&tmp_name);
            linked
        };
        match placed {
            Ok(()) => {}
            Err(Errno::EXIST) => return Err(SnapshotError::TagExists(info.tag.clone())),
            Err(e) => {
                self.discard_tmp(&tmp_name);
                return Err(SnapshotError::errno("write", path)(e));
            }
        }
        rfs::fsync(&self.tags).map_err(SnapshotError::errno("sync", self.path("tags")))
    }

    /// Whether a tag exists.
    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        rfs::statat(&self.tags, tag, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }
}

/// New objects of one snapshot: written to `tmp/` as they come, made visible together
/// by [`Pending::commit`] after one `syncfs`. Dropped uncommitted, it removes its temp
/// files: a failed snapshot leaves the store as it was.
pub(crate) struct Pending<'a> {
    objects: &'a Objects,
    compressor: zstd::bulk::Compressor<'static>,
    /// Chunks this snapshot refers to: found in the store or written by it.
    seen: HashSet<ContentHash>,
    new: Vec<(Kind, ContentHash, String)>,
    pub new_chunks: u64,
    pub new_bytes: u64,
}

impl<'a> Pending<'a> {
    pub(crate) fn new(objects: &'a Objects) -> Pending<'a> {
        Pending {
            objects,
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("a zstd context"),
            seen: HashSet::new(),
            new: Vec::new(),
            new_chunks: 0,
            new_bytes: 0,
        }
    }

    /// Distinct chunks this snapshot refers to.
    pub(crate) fn unique_chunks(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Store one chunk unless the store (or this snapshot) has it; its hash.
    pub(crate) fn put_chunk(&mut self, data: &[u8]) -> Result<ContentHash, SnapshotError> {
        let hash = ContentHash::of(data);
        if self.seen.contains(&hash) {
            return Ok(hash);
        }
        if !self.objects.has(Kind::Chunk, &hash) {
            let compressed = self
                .compressor
                .compress(data)
                .map_err(SnapshotError::io("compress", "a chunk"))?;
            self.write(Kind::Chunk, hash, &compressed)?;
            self.new_chunks += 1;
        }
        self.seen.insert(hash);
        Ok(hash)
    }

    /// Store the manifest unless the store has it (an unchanged tree); its hash.
    pub(crate) fn put_manifest(
        &mut self,
        manifest: &Manifest,
    ) -> Result<ContentHash, SnapshotError> {
        let (hash, compressed) = manifest.encode();
        if !self.objects.has(Kind::Manifest, &hash) {
            self.write(Kind::Manifest, hash, &compressed)?;
        }
        Ok(hash)
    }

    fn write(&mut self, kind: Kind, hash: ContentHash, bytes: &[u8]) -> Result<(), SnapshotError> {
        let what = match kind {
            Kind::Chunk => "chunk",
            Kind::Manifest => "manifest",
        };
        let (fd, name) = self.objects.create_tmp(what)?;
        // Recorded first, so that Drop removes it whatever happens next.
        self.new.push((kind, hash, name.clone()));
        File::from(fd).write_all(bytes).map_err(SnapshotError::io(
            "write",
            self.objects.path("tmp").join(&name),
        ))?;
        self.new_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Make every new object visible: flush them (one `syncfs` of the store's
    /// filesystem), rename each into place, flush the renames.
    pub(crate) fn commit(mut self) -> Result<(), SnapshotError> {
        if self.new.is_empty() {
            return Ok(());
        }
        let tmp = self.objects.tmp_fd();
        rfs::syncfs(tmp).map_err(SnapshotError::errno("sync", self.objects.path("tmp")))?;
        // In the order written: chunks first, the manifest that names them last.
        let mut new = std::mem::take(&mut self.new).into_iter();
        while let Some((kind, hash, name)) = new.next() {
            let dir = self.objects.kind_fd(kind);
            if let Err(e) = self
                .objects
                .rename_into(&name, dir, &hash.fan_out(), &hash.rel_path())
            {
                self.objects.discard_tmp(&name);
                for (_, _, rest) in new {
                    self.objects.discard_tmp(&rest);
                }
                return Err(SnapshotError::errno(
                    "store",
                    self.objects.object_path(kind, &hash),
                )(e));
            }
        }
        rfs::syncfs(tmp).map_err(SnapshotError::errno("sync", self.objects.path("tmp")))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        for (_, _, name) in &self.new {
            self.objects.discard_tmp(name);
        }
    }
}

pub(crate) use phantom_linux::dir::list as list_dir;

/// Every `<ab>/<name>` file below a fan-out directory (`chunks/`, `manifests/`,
/// `files/`): (fan-out name, file name).
pub(crate) fn list_fanned(dir: BorrowedFd<'_>) -> Result<Vec<(String, String)>, Errno> {
    let mut out = Vec::new();
    for (fan, kind) in list_dir(dir)? {
        if !matches!(kind, FileType::Directory | FileType::Unknown) {
            continue;
        }
        let Ok(fan) = fan.into_string() else { continue };
        let sub = match rfs::openat(dir, &fan, DIR_FLAGS, Mode::empty()) {
            Ok(sub) => sub,
            Err(Errno::NOTDIR) | Err(Errno::LOOP) => continue,
            Err(e) => return Err(e),
        };
        for (name, _) in list_dir(sub.as_fd())? {
            if let Ok(name) = name.into_string() {
                out.push((fan.clone(), name));
            }
        }
    }
    Ok(out)
}

/// Remove everything inside the directory `dir` (not `dir` itself), never following a
/// symlink; directories are made writable first (a restore may have made them
/// read-only).
pub(crate) fn clear_dir(dir: BorrowedFd<'_>, depth: usize) -> Result<(), Errno> {
    if depth > super::manifest::MAX_DEPTH + 1 {
        return Err(Errno::LOOP);
    }
    for (name, _) in list_dir(dir)? {
        match rfs::unlinkat(dir, name.as_c_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR) | Err(Errno::PERM) => {
                let sub = rfs::openat(dir, name.as_c_str(), DIR_FLAGS, Mode::empty())?;
                rfs::fchmod(&sub, Mode::from_raw_mode(0o700))?;
                clear_dir(sub.as_fd(), depth + 1)?;
                rfs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
