//! [`SnapshotStore`]: the operations on the store (layout and guarantees: see the crate
//! docs).

use phantom_api::access::Owner;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use phantom_state::store_dir::{self, StoreDirError, STATE_DIR_ENV};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::manifest::{CheckError, ContentHash, Kind as EntryKind, Manifest};
use super::objects::{clear_dir, list_dir, list_fanned, Access, Kind, Objects, Pending, DIR_FLAGS};
use super::restore::Restore;
use super::walk::Walk;
use super::{
    GcReport, ObjectKind, Problem, RestoreInfo, RestoreMode, RestoreProgress, SnapshotError,
    SnapshotInfo, SnapshotLimits, SnapshotOptions, SnapshotProgress, VerifyReport,
};

/// Longest tag.
pub const MAX_TAG: usize = 128;

/// The snapshot store: see the module docs for its layout.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    limits: SnapshotLimits,
}

impl SnapshotStore {
    /// Where [`SnapshotStore::open_default`] keeps the store: `<state>/snapshots`, next
    /// to the image store (`<state>/images`; [`store_dir::state_dir`] decides `<state>`).
    pub fn default_dir() -> Result<PathBuf, SnapshotError> {
        match store_dir::state_dir() {
            Ok(Some(state)) => Ok(state.join("snapshots")),
            Ok(None) => Err(SnapshotError::Usage(format!(
                "no place for the snapshot store: set HOME, XDG_STATE_HOME or {STATE_DIR_ENV}"
            ))),
            Err(e) => Err(SnapshotError::io("resolve", STATE_DIR_ENV)(e)),
        }
    }

    /// The store at [`SnapshotStore::default_dir`], created on first use.
    pub fn open_default() -> Result<SnapshotStore, SnapshotError> {
        SnapshotStore::open(SnapshotStore::default_dir()?)
    }

    /// The store at `dir`, created (0700) on first use. Refuses a directory that
    /// another user owns or that others can write.
    pub fn open(dir: impl Into<PathBuf>) -> Result<SnapshotStore, SnapshotError> {
        let dir = dir.into();
        store_dir::prepare(&dir, &["tags", "manifests", "chunks", "files", "tmp"]).map_err(
            |e| match e {
                StoreDirError::Io { what, path, source } => {
                    SnapshotError::Io { what, path, source }
                }
                StoreDirError::NotYours { uid } => SnapshotError::Usage(format!(
                    "snapshot store {}: not a directory owned by you (uid {uid}) that only you \
                     can write; fix its owner and mode, or point {STATE_DIR_ENV} elsewhere",
                    dir.display()
                )),
            },
        )?;
        Ok(SnapshotStore {
            dir,
            limits: SnapshotLimits::default(),
        })
    }

    /// The same store with other bounds for snapshots and restores.
    pub fn with_limits(mut self, limits: SnapshotLimits) -> SnapshotStore {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &SnapshotLimits {
        &self.limits
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Snapshot the directory tree at `dir` (a host path; symlinks on the way to it are
    /// followed, none inside it) under `tag`.
    pub fn snapshot(
        &self,
        dir: &Path,
        owner: &Owner,
        tag: &str,
        options: &SnapshotOptions,
        progress: &mut dyn FnMut(SnapshotProgress),
    ) -> Result<SnapshotInfo, SnapshotError> {
        validate_tag(tag)?;
        let root = match rfs::openat(
            rfs::CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                return Err(SnapshotError::Usage(format!(
                    "{}: no such directory",
                    dir.display()
                )))
            }
            Err(Errno::NOTDIR) => {
                return Err(SnapshotError::Usage(format!(
                    "{}: not a directory; snapshot a directory",
                    dir.display()
                )))
            }
            Err(e) => return Err(SnapshotError::errno("open", dir)(e)),
        };
        let source = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        self.snapshot_at(
            root.as_fd(),
            &source.display().to_string(),
            owner,
            tag,
            options,
            progress,
        )
    }

    /// Snapshot the tree below an open directory — for a caller that resolved it
    /// itself (a sandbox's workspace, opened inside its root). `source` is what the
    /// record and messages call it.
    pub fn snapshot_at(
        &self,
        dir: BorrowedFd<'_>,
        source: &str,
        owner: &Owner,
        tag: &str,
        options: &SnapshotOptions,
        progress: &mut dyn FnMut(SnapshotProgress),
    ) -> Result<SnapshotInfo, SnapshotError> {
        validate_tag(tag)?;
        let objects = Objects::open(&self.dir, Access::Shared)?;
        // Checked again, atomically, when the tag is written; this spares the walk.
        if !options.replace && objects.has_tag(&tag_file(owner, tag)) {
            return Err(SnapshotError::TagExists(tag.to_string()));
        }
        let mut pending = Pending::new(&objects);
        let (manifest, stats) = Walk::new(&mut pending, self.limits, source, progress).run(dir)?;
        progress(SnapshotProgress::Committing);
        let manifest_hash = pending.put_manifest(&manifest)?;
        let info = SnapshotInfo {
            tag: tag.to_string(),
            owner: owner.clone(),
            manifest: manifest_hash.hex(),
            created: phantom_state::now_s(),
            source: source.to_string(),
            files: stats.files,
            dirs: stats.dirs,
            symlinks: stats.symlinks,
            bytes: stats.bytes,
            chunks: stats.chunks,
            unique_chunks: pending.unique_chunks(),
            new_chunks: pending.new_chunks,
            new_bytes: pending.new_bytes,
            special_skipped: stats.special_skipped,
            other_fs_skipped: stats.other_fs_skipped,
            vanished: stats.vanished,
            setid_stripped: stats.setid_stripped,
        };
        pending.commit()?;
        objects.write_tag(&info, options.replace)?;
        Ok(info)
    }

    /// Restore the snapshot `tag` into `dest`: a directory that does not exist yet
    /// (its parent must) or an empty one; a symlink there is refused.
    pub fn restore(
        &self,
        owner: &Owner,
        tag: &str,
        dest: &Path,
        mode: RestoreMode,
    ) -> Result<RestoreInfo, SnapshotError> {
        self.restore_with_progress(owner, tag, dest, mode, &mut |_| {})
    }

    /// [`SnapshotStore::restore`], reporting the bytes written as it goes.
    pub fn restore_with_progress(
        &self,
        owner: &Owner,
        tag: &str,
        dest: &Path,
        mode: RestoreMode,
        progress: &mut dyn FnMut(RestoreProgress),
    ) -> Result<RestoreInfo, SnapshotError> {
        validate_tag(tag)?;
        let objects = Objects::open(&self.dir, Access::Shared)?;
        let (manifest, totals) = self.load(&objects, owner, tag)?;
        let (fd, created) = open_dest(dest)?;
        // Not emptied on failure: what is in it is not ours.
        check_empty(fd.as_fd(), dest)?;
        let result =
            Restore::new(&objects, tag, dest, mode, totals, progress).run(&manifest, fd.as_fd());
        if result.is_err() {
            if let Err(errno) = clear_dir(fd.as_fd(), 0) {
                eprintln!(
                    "phantom: warning: could not remove the partial restore in {}: {}",
                    dest.display(),
                    std::io::Error::from(errno)
                );
            }
            if created {
                let _ = rfs::unlinkat(rfs::CWD, dest, AtFlags::REMOVEDIR);
            }
        }
        result
    }

    /// Restore into an open, empty directory (a sandbox's workspace). On failure the
    /// directory is emptied again.
    pub fn restore_at(
        &self,
        owner: &Owner,
        tag: &str,
        dest: BorrowedFd<'_>,
        dest_name: &Path,
        mode: RestoreMode,
        progress: &mut dyn FnMut(RestoreProgress),
    ) -> Result<RestoreInfo, SnapshotError> {
        validate_tag(tag)?;
        let objects = Objects::open(&self.dir, Access::Shared)?;
        let (manifest, totals) = self.load(&objects, owner, tag)?;
        check_empty(dest, dest_name)?;
        let result =
            Restore::new(&objects, tag, dest_name, mode, totals, progress).run(&manifest, dest);
        if result.is_err() {
            let _ = clear_dir(dest, 0);
        }
        result
    }

    /// The manifest of `tag`, checked: everything a restore needs before it writes.
    fn load(
        &self,
        objects: &Objects,
        owner: &Owner,
        tag: &str,
    ) -> Result<(Manifest, super::manifest::Totals), SnapshotError> {
        let info = objects.read_tag(&tag_file(owner, tag), tag)?;
        let manifest = objects.manifest_of(&info)?;
        let totals = manifest.check(&self.limits).map_err(|e| match e {
            CheckError::Unsafe(why) => SnapshotError::UnsafeManifest {
                tag: tag.to_string(),
                why,
            },
            CheckError::Limit { what, limit, flag } => SnapshotError::TooLarge {
                what: format!("snapshot `{tag}`: {what}"),
                limit,
                flag,
            },
        })?;
        Ok((manifest, totals))
    }

    /// The record of `owner`'s snapshot `tag` (another owner's is not found).
    pub fn info(&self, owner: &Owner, tag: &str) -> Result<SnapshotInfo, SnapshotError> {
        validate_tag(tag)?;
        Objects::open(&self.dir, Access::Shared)?.read_tag(&tag_file(owner, tag), tag)
    }

    /// `owner`'s snapshots by tag; every owner's with `None` (an operator's view).
    pub fn list(&self, owner: Option<&Owner>) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let objects = Objects::open(&self.dir, Access::Shared)?;
        let mut out = Vec::new();
        for (file, (file_owner, tag)) in tags(&objects)? {
            if owner.is_some_and(|o| *o != file_owner) {
                continue;
            }
            match objects.read_tag(&file, &tag) {
                Ok(info) => out.push(info),
                // Removed since it was listed.
                Err(SnapshotError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Remove a tag. Its chunks stay until [`SnapshotStore::gc`] (other snapshots
    /// may share them).
    pub fn remove(&self, owner: &Owner, tag: &str) -> Result<(), SnapshotError> {
        validate_tag(tag)?;
        let objects = Objects::open(&self.dir, Access::Shared)?;
        let file = tag_file(owner, tag);
        match rfs::unlinkat(objects.tags_fd(), file.as_str(), AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::NOENT) => Err(SnapshotError::NotFound(tag.to_string())),
            Err(e) => Err(SnapshotError::errno(
                "remove",
                objects.path("tags").join(&file),
            )(e)),
        }
    }

    /// Remove what no tag refers to: chunks, manifests, cached files, and temp files of
    /// interrupted operations. Holds the store exclusively. Refuses to run while a
    /// tag's manifest is unreadable (it could not tell which chunks that snapshot
    /// needs).
    pub fn gc(&self) -> Result<GcReport, SnapshotError> {
        let objects = Objects::open(&self.dir, Access::Exclusive)?;
        let mut live_manifests = HashSet::new();
        let mut live_chunks = HashSet::new();
        let mut live_files = HashSet::new();
        for (file, (_, tag)) in tags(&objects)? {
            let info = objects.read_tag(&file, &tag)?;
            let manifest = objects.manifest_of(&info).map_err(|e| match e {
                SnapshotError::Corrupt { what, why } => SnapshotError::Corrupt {
                    what,
                    why: format!(
                        "{why}; gc cannot tell which chunks this snapshot needs, so it removes \
                         nothing (remove the tag with `phantom store rm {tag}`, then gc)"
                    ),
                },
                other => other,
            })?;
            live_manifests
                .insert(ContentHash::parse(&info.manifest).expect("read_manifest parsed it"));
            for entry in &manifest.entries {
                if let EntryKind::File { hash, chunks, .. } = &entry.kind {
                    live_files.insert(*hash);
                    live_chunks.extend(chunks.iter().map(|c| c.0));
                }
            }
        }
        let mut report = GcReport::default();
        for (kind, live) in [
            (Kind::Chunk, &live_chunks),
            (Kind::Manifest, &live_manifests),
        ] {
            let dir = objects.kind_fd(kind);
            let (count, bytes) = sweep(dir, &objects, |name, _| {
                ContentHash::parse(name).is_some_and(|hash| !live.contains(&hash))
            })?;
            match kind {
                Kind::Chunk => {
                    report.chunks_removed = count;
                    report.chunk_bytes_freed = bytes;
                }
                Kind::Manifest => report.manifests_removed = count,
            }
            report.bytes_freed += bytes;
        }
        // Cached files no snapshot needs, and those changed through a hard link (their
        // mode or mtime is no longer what their name says).
        let (count, bytes) = sweep(objects.files_fd(), &objects, |name, st| {
            ContentHash::parse(name.get(..64).unwrap_or("")).is_some_and(|hash| {
                !live_files.contains(&hash) || cache_meta(&name[64..], st).is_err()
            })
        })?;
        report.cache_files_removed = count;
        report.bytes_freed += bytes;
        // Nobody else holds the lock: every temp file is left over.
        let tmp = objects.tmp_fd();
        for (name, _) in list_dir(tmp).map_err(SnapshotError::errno("list", objects.path("tmp")))? {
            let size = rfs::statat(tmp, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| u64::try_from(st.st_size).unwrap_or(0))
                .unwrap_or(0);
            if rfs::unlinkat(tmp, name.as_c_str(), AtFlags::empty()).is_ok() {
                report.temp_files_removed += 1;
                report.bytes_freed += size;
            }
        }
        Ok(report)
    }

    /// Re-hash every stored object: every chunk and manifest (after decompression)
    /// and every cached file; name each one that is corrupt or missing and the
    /// snapshots it breaks.
    pub fn verify(&self) -> Result<VerifyReport, SnapshotError> {
        let objects = Objects::open(&self.dir, Access::Shared)?;
        let mut report = VerifyReport::default();
        let mut broken = BTreeSet::new();
        // Which tags use each manifest and each chunk.
        let mut manifest_users: BTreeMap<ContentHash, Vec<String>> = BTreeMap::new();
        for (file, (_, tag)) in tags(&objects)? {
            report.tags += 1;
            match objects.read_tag(&file, &tag) {
                Ok(info) => match ContentHash::parse(&info.manifest) {
                    Some(hash) => manifest_users.entry(hash).or_default().push(tag),
                    None => {
                        broken.insert(tag.clone());
                        report.problems.push(Problem {
                            kind: ObjectKind::Tag,
                            id: tag.clone(),
                            path: objects.path("tags").join(&file),
                            what: format!("names no manifest ({:?})", info.manifest),
                            breaks: vec![tag],
                        });
                    }
                },
                Err(SnapshotError::NotFound(_)) => report.tags -= 1,
                Err(e) => {
                    broken.insert(tag.clone());
                    report.problems.push(Problem {
                        kind: ObjectKind::Tag,
                        id: tag.clone(),
                        path: objects.path("tags").join(&file),
                        what: e.to_string(),
                        breaks: vec![tag],
                    });
                }
            }
        }
        let mut chunk_users: BTreeMap<ContentHash, BTreeSet<String>> = BTreeMap::new();
        let mut checked_manifests = HashSet::new();
        for (hash, users) in &manifest_users {
            checked_manifests.insert(*hash);
            report.manifests += 1;
            match objects.read_manifest(hash) {
                Ok(manifest) => {
                    for entry in &manifest.entries {
                        if let EntryKind::File { chunks, .. } = &entry.kind {
                            for chunk in chunks {
                                chunk_users
                                    .entry(chunk.0)
                                    .or_default()
                                    .extend(users.iter().cloned());
                            }
                        }
                    }
                }
                Err(fault) => {
                    broken.extend(users.iter().cloned());
                    report.problems.push(Problem {
                        kind: ObjectKind::Manifest,
                        id: hash.hex(),
                        path: objects.object_path(Kind::Manifest, hash),
                        what: fault.describe(),
                        breaks: users.clone(),
                    });
                }
            }
        }
        // Manifests no tag uses (until gc): checked too, breaking nothing.
        let manifests = list_fanned(objects.kind_fd(Kind::Manifest))
            .map_err(SnapshotError::errno("list", objects.path("manifests")))?;
        for (_, name) in manifests {
            let Some(hash) = ContentHash::parse(&name) else {
                continue;
            };
            if checked_manifests.insert(hash) {
                report.manifests += 1;
                if let Err(fault) = objects.read_manifest(&hash) {
                    report.problems.push(Problem {
                        kind: ObjectKind::Manifest,
                        id: hash.hex(),
                        path: objects.object_path(Kind::Manifest, &hash),
                        what: fault.describe(),
                        breaks: Vec::new(),
                    });
                }
            }
        }
        // Every chunk on disk, then the referenced ones that are not there.
        let mut reader = super::objects::ChunkReader::new();
        let mut present = HashSet::new();
        let chunks = list_fanned(objects.kind_fd(Kind::Chunk))
            .map_err(SnapshotError::errno("list", objects.path("chunks")))?;
        for (_, name) in chunks {
            let Some(hash) = ContentHash::parse(&name) else {
                continue;
            };
            present.insert(hash);
            report.chunks += 1;
            match objects.read_chunk(&hash, &mut reader) {
                Ok(()) => report.bytes += reader.data.len() as u64,
                Err(fault) => {
                    let users: Vec<String> = chunk_users
                        .get(&hash)
                        .map(|u| u.iter().cloned().collect())
                        .unwrap_or_default();
                    broken.extend(users.iter().cloned());
                    report.problems.push(Problem {
                        kind: ObjectKind::Chunk,
                        id: hash.hex(),
                        path: objects.object_path(Kind::Chunk, &hash),
                        what: fault.describe(),
                        breaks: users,
                    });
                }
            }
        }
        for (hash, users) in &chunk_users {
            if !present.contains(hash) {
                broken.extend(users.iter().cloned());
                report.problems.push(Problem {
                    kind: ObjectKind::Chunk,
                    id: hash.hex(),
                    path: objects.object_path(Kind::Chunk, hash),
                    what: "missing".into(),
                    breaks: users.iter().cloned().collect(),
                });
            }
        }
        verify_cache(&objects, &mut report)?;
        report.broken_tags = broken.into_iter().collect();
        Ok(report)
    }
}

/// The cache: each file must hash to its name; a hard-link target must still have the
/// read-only mode and the mtime its name records. A bad one breaks no snapshot (a
/// restore rebuilds it from chunks once removed), but a hard-link restore would link it.
fn verify_cache(objects: &Objects, report: &mut VerifyReport) -> Result<(), SnapshotError> {
    let files = objects.files_fd();
    let entries =
        list_fanned(files).map_err(SnapshotError::errno("list", objects.path("files")))?;
    for (fan, name) in entries {
        let Some(hash) = ContentHash::parse(name.get(..64).unwrap_or("")) else {
            continue;
        };
        let rel = format!("{fan}/{name}");
        let path = objects.path("files").join(&rel);
        report.cache_files += 1;
        let problem = match check_cached(files, &rel, &hash, &name[64..]) {
            Ok(bytes) => {
                report.bytes += bytes;
                continue;
            }
            Err(what) => what,
        };
        report.problems.push(Problem {
            kind: ObjectKind::CacheFile,
            id: hash.hex(),
            path,
            what: problem,
            breaks: Vec::new(),
        });
    }
    Ok(())
}

/// Check one cached file; its size, or what is wrong with it.
fn check_cached(
    files: BorrowedFd<'_>,
    rel: &str,
    hash: &ContentHash,
    suffix: &str,
) -> Result<u64, String> {
    let fd: OwnedFd = rfs::openat(
        files,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("unreadable: {}", std::io::Error::from(e)))?;
    let st = rfs::fstat(&fd).map_err(|e| format!("unreadable: {}", std::io::Error::from(e)))?;
    cache_meta(suffix, &st)?;
    let mut hasher = blake3::Hasher::new();
    let mut file = File::from(fd);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("unreadable: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    let actual = ContentHash::from_hasher(&hasher);
    if actual != *hash {
        return Err(format!(
            "content hashes to {actual}; delete it (restores rebuild it from the chunks)"
        ));
    }
    Ok(total)
}

/// Whether a cached file's metadata is what its name (`suffix`: what follows the hash)
/// says: a clone source (no suffix) is a read-only regular file; a hard-link target
/// (`.<mode>.<mtime>.<nsec>`) still has that mode, without write bits, and that mtime.
fn cache_meta(suffix: &str, st: &rfs::Stat) -> Result<(), String> {
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err("not a regular file".into());
    }
    if st.st_mode & 0o222 != 0 {
        return Err(format!(
            "mode {:o} is writable: it was changed through a hard link; `phantom store gc` \
             removes it",
            st.st_mode & 0o7777
        ));
    }
    match suffix.strip_prefix('.') {
        None if suffix.is_empty() => Ok(()),
        None => Err("not a cache file name".into()),
        Some(rest) => {
            let actual = format!(
                "{:o}.{}.{}",
                st.st_mode & 0o7777,
                st.st_mtime,
                st.st_mtime_nsec
            );
            if rest == actual {
                Ok(())
            } else {
                Err(format!(
                    "mode and mtime are {actual}, not {rest}: it was changed through a hard \
                     link; `phantom store gc` removes it"
                ))
            }
        }
    }
}

/// Remove the files of a fan-out directory for which `dead(name)` holds; how many and
/// their bytes.
fn sweep(
    dir: BorrowedFd<'_>,
    objects: &Objects,
    dead: impl Fn(&str, &rfs::Stat) -> bool,
) -> Result<(u64, u64), SnapshotError> {
    let mut count = 0;
    let mut bytes = 0;
    let entries = list_fanned(dir).map_err(SnapshotError::errno("list", objects.path("")))?;
    for (fan, name) in entries {
        let rel = format!("{fan}/{name}");
        let Ok(st) = rfs::statat(dir, &rel, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if !dead(&name, &st) {
            continue;
        }
        match rfs::unlinkat(dir, &rel, AtFlags::empty()) {
            Ok(()) => {
                count += 1;
                bytes += u64::try_from(st.st_size).unwrap_or(0);
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(SnapshotError::errno("remove", objects.path(&rel))(e)),
        }
    }
    Ok((count, bytes))
}

/// A file in `tags/` and the owner and tag it holds.
type TagFile = (String, (Owner, String));

/// The tag files in `tags/` with their owner and tag, sorted; names that are not tag
/// files (strays) are skipped.
fn tags(objects: &Objects) -> Result<Vec<TagFile>, SnapshotError> {
    let mut out: Vec<TagFile> = list_dir(objects.tags_fd())
        .map_err(SnapshotError::errno("list", objects.path("tags")))?
        .into_iter()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter_map(|name| parse_tag_file(&name).map(|owned| (name, owned)))
        .collect();
    out.sort();
    Ok(out)
}

/// The file in `tags/` of `owner`'s tag `tag` (already validated): the tag itself for
/// the local user, `~<key id>~<tag>` for an API key. A tag never starts with `~`, so
/// the two never meet, and a key's snapshots are another namespace of tags.
pub(crate) fn tag_file(owner: &Owner, tag: &str) -> String {
    match owner {
        Owner::Local => tag.to_string(),
        Owner::Key(id) => format!("~{id}~{tag}"),
        // Never asked for (a spare runs nobody's requests); `-` keeps it apart from
        // every key's tags (parse_tag_file takes only alphanumeric ids).
        Owner::Spare => format!("~-spare-~{tag}"),
    }
}

/// The owner and tag of a file in `tags/`, when it is one.
fn parse_tag_file(name: &str) -> Option<(Owner, String)> {
    match name.strip_prefix('~') {
        None => validate_tag(name)
            .ok()
            .map(|()| (Owner::Local, name.to_string())),
        Some(rest) => {
            let (id, tag) = rest.split_once('~')?;
            let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
            (id_ok && validate_tag(tag).is_ok())
                .then(|| (Owner::Key(id.to_string()), tag.to_string()))
        }
    }
}

/// Open the destination of a restore, creating it when it does not exist; whether it
/// was created.
fn open_dest(dest: &Path) -> Result<(OwnedFd, bool), SnapshotError> {
    let mut created = false;
    loop {
        match rfs::openat(rfs::CWD, dest, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => return Ok((fd, created)),
            Err(Errno::NOENT) if !created => {
                match rfs::mkdirat(rfs::CWD, dest, Mode::from_raw_mode(0o700)) {
                    Ok(()) => created = true,
                    Err(Errno::EXIST) => {}
                    Err(Errno::NOENT) => {
                        return Err(SnapshotError::Usage(format!(
                            "{}: its parent directory does not exist; create it first",
                            dest.display()
                        )))
                    }
                    Err(e) => return Err(SnapshotError::errno("create", dest)(e)),
                }
            }
            // O_NOFOLLOW|O_DIRECTORY on a symlink: ELOOP or ENOTDIR.
            Err(Errno::LOOP | Errno::NOTDIR)
                if fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                return Err(SnapshotError::Usage(format!(
                    "{}: is a symlink; restore into a real directory",
                    dest.display()
                )))
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(SnapshotError::Usage(format!(
                    "{}: not a directory; restore into a new or empty directory",
                    dest.display()
                )))
            }
            Err(e) => return Err(SnapshotError::errno("open", dest)(e)),
        }
    }
}

fn check_empty(dir: BorrowedFd<'_>, shown: &Path) -> Result<(), SnapshotError> {
    let names = list_dir(dir).map_err(SnapshotError::errno("list", shown))?;
    if names.is_empty() {
        Ok(())
    } else {
        Err(SnapshotError::Usage(format!(
            "{}: not empty ({} entries); restore into a new or empty directory",
            shown.display(),
            names.len()
        )))
    }
}

/// Check a tag: letters, digits and `._-:@+`, starting with a letter or digit, no `..`,
/// at most 128 bytes. So it is always one plain file name in `tags/`.
pub fn validate_tag(tag: &str) -> Result<(), SnapshotError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag.as_bytes()[0].is_ascii_alphanumeric()
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@+".contains(&b))
        && !tag.contains("..");
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::Usage(format!(
            "invalid snapshot tag `{tag}`: use letters, digits and . _ - : @ +, start with a \
             letter or digit, no `..` and no `/`, at most {MAX_TAG} characters (e.g. build-42)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_plain_file_names() {
        for good in ["a", "build-42", "v1.2.3", "x:y@z+1", &"a".repeat(MAX_TAG)] {
            assert!(validate_tag(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".hidden",
            "-flag",
            "a b",
            "a\nb",
            "tag\0",
            "é",
            &"a".repeat(MAX_TAG + 1),
        ] {
            let err = validate_tag(bad).unwrap_err();
            assert!(matches!(err, SnapshotError::Usage(_)), "{bad:?}");
            assert_eq!(err.exit_code(), 2);
        }
    }
}
