//! Reading a directory tree into a manifest: one name at a time, relative to the fd of
//! its directory, never following a symlink. A name is classified with
//! `fstatat(AT_SYMLINK_NOFOLLOW)` and then opened with `O_NOFOLLOW` (`O_DIRECTORY` for
//! a directory), and what was opened is checked again with `fstat`: a symlink swapped
//! in between is refused by the kernel (`ELOOP`/`ENOTDIR`) and the name is classified
//! again, so the walk only ever descends into directories inside the tree.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use fastcdc::v2020::StreamCDC;
use phantom_policy::units::human_size;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::manifest::{self, ChunkRef, ContentHash, Entry, Kind, Manifest, Meta, RawBytes};
use super::objects::{list_dir, Pending, DIR_FLAGS};
use super::{SnapshotError, SnapshotLimits, SnapshotProgress, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// How often an entry that changes its type under the walk is classified again.
const ATTEMPTS: usize = 3;

/// What the walk counted.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WalkStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub special_skipped: u64,
    pub other_fs_skipped: u64,
    pub vanished: u64,
    pub setid_stripped: u64,
}

pub(crate) struct Walk<'w, 'o> {
    pending: &'w mut Pending<'o>,
    limits: SnapshotLimits,
    /// What the tree is called in messages (a host path, or the caller's label).
    origin: String,
    device: u64,
    entries: Vec<Entry>,
    pub stats: WalkStats,
    progress: &'w mut dyn FnMut(SnapshotProgress),
}

impl<'w, 'o> Walk<'w, 'o> {
    pub(crate) fn new(
        pending: &'w mut Pending<'o>,
        limits: SnapshotLimits,
        origin: &str,
        progress: &'w mut dyn FnMut(SnapshotProgress),
    ) -> Walk<'w, 'o> {
        Walk {
            pending,
            limits,
            origin: origin.to_string(),
            device: 0,
            entries: Vec::new(),
            stats: WalkStats::default(),
            progress,
        }
    }

    /// Read the tree below `root` (an open directory) into a manifest; its chunks go to
    /// the pending objects.
    pub(crate) fn run(
        mut self,
        root: BorrowedFd<'_>,
    ) -> Result<(Manifest, WalkStats), SnapshotError> {
        let st = rfs::fstat(root).map_err(SnapshotError::errno("inspect", &self.origin))?;
        self.device = st.st_dev;
        let root_meta = self.meta(&st, true);
        self.dir(root, &[], 1)?;
        let manifest = Manifest {
            format: manifest::FORMAT,
            chunking: manifest::chunking(),
            root: root_meta,
            entries: self.entries,
        };
        Ok((manifest, self.stats))
    }

    fn shown(&self, path: &[u8]) -> PathBuf {
        PathBuf::from(format!(
            "{}/{}",
            self.origin.trim_end_matches('/'),
            String::from_utf8_lossy(path)
        ))
    }

    fn dir(
        &mut self,
        dir: BorrowedFd<'_>,
        prefix: &[u8],
        depth: usize,
    ) -> Result<(), SnapshotError> {
        let mut names =
            list_dir(dir).map_err(|e| SnapshotError::errno("list", self.shown(prefix))(e))?;
        names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, _) in names {
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            self.entry(dir, &name, path, depth)?;
        }
        Ok(())
    }

    /// Record one name of `dir` (and, for a directory, everything below it).
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: Vec<u8>,
        depth: usize,
    ) -> Result<(), SnapshotError> {
        for _ in 0..ATTEMPTS {
            let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => {
                    self.stats.vanished += 1;
                    return Ok(());
                }
                Err(e) => return Err(SnapshotError::errno("inspect", self.shown(&path))(e)),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let fd = match self.open(dir, name, DIR_FLAGS, &path)? {
                        Opened::Fd(fd) => fd,
                        Opened::Vanished => return Ok(()),
                        Opened::Changed => continue,
                    };
                    let st = rfs::fstat(&fd)
                        .map_err(SnapshotError::errno("inspect", self.shown(&path)))?;
                    if st.st_dev != self.device {
                        // Another filesystem mounted in the tree: not part of it.
                        self.stats.other_fs_skipped += 1;
                        return Ok(());
                    }
                    if depth > manifest::MAX_DEPTH {
                        return Err(SnapshotError::Usage(format!(
                            "{}: nested deeper than {} directories, which a snapshot does \
                             not record",
                            self.shown(&path).display(),
                            manifest::MAX_DEPTH
                        )));
                    }
                    self.count_entry()?;
                    self.stats.dirs += 1;
                    let meta = self.meta(&st, true);
                    self.entries.push(Entry {
                        path: RawBytes(path.clone()),
                        meta,
                        kind: Kind::Dir,
                    });
                    return self.dir(fd.as_fd(), &path, depth + 1);
                }
                FileType::RegularFile => {
                    // O_NONBLOCK: a fifo swapped in since the stat must not block the walk.
                    let flags = OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::NONBLOCK
                        | OFlags::NOCTTY
                        | OFlags::CLOEXEC;
                    let fd = match self.open(dir, name, flags, &path)? {
                        Opened::Fd(fd) => fd,
                        Opened::Vanished => return Ok(()),
                        Opened::Changed => continue,
                    };
                    let st = rfs::fstat(&fd)
                        .map_err(SnapshotError::errno("inspect", self.shown(&path)))?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                        continue;
                    }
                    self.count_entry()?;
                    self.stats.files += 1;
                    let meta = self.meta(&st, true);
                    let kind = self.file(fd, &path)?;
                    self.entries.push(Entry {
                        path: RawBytes(path),
                        meta,
                        kind,
                    });
                    return Ok(());
                }
                FileType::Symlink => {
                    let target = match rfs::readlinkat(dir, name, Vec::new()) {
                        Ok(target) => target,
                        Err(Errno::NOENT) => {
                            self.stats.vanished += 1;
                            return Ok(());
                        }
                        // No longer a symlink.
                        Err(Errno::INVAL) => continue,
                        Err(e) => return Err(SnapshotError::errno("read", self.shown(&path))(e)),
                    };
                    self.count_entry()?;
                    self.stats.symlinks += 1;
                    let meta = self.meta(&st, false);
                    self.entries.push(Entry {
                        path: RawBytes(path),
                        meta,
                        kind: Kind::Symlink {
                            target: RawBytes(target.into_bytes()),
                        },
                    });
                    return Ok(());
                }
                // Device nodes, fifos, sockets: a sandbox gets its own /dev.
                _ => {
                    self.stats.special_skipped += 1;
                    return Ok(());
                }
            }
        }
        Err(SnapshotError::Changed {
            path: self.shown(&path).display().to_string(),
            why: "it kept changing its type while the snapshot read it".into(),
        })
    }

    fn open(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        flags: OFlags,
        path: &[u8],
    ) -> Result<Opened, SnapshotError> {
        match rfs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Opened::Fd(fd)),
            Err(Errno::NOENT) => {
                self.stats.vanished += 1;
                Ok(Opened::Vanished)
            }
            // A symlink (ELOOP) or a non-directory (ENOTDIR) is there now.
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => Ok(Opened::Changed),
            Err(e) => Err(SnapshotError::errno("open", self.shown(path))(e)),
        }
    }

    /// Cut a file into chunks, store the new ones, and describe it.
    fn file(&mut self, fd: OwnedFd, path: &[u8]) -> Result<Kind, SnapshotError> {
        let mut hasher = blake3::Hasher::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        for chunk in StreamCDC::new(File::from(fd), CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
            let chunk = chunk.map_err(|e| SnapshotError::Io {
                what: "read",
                path: self.shown(path),
                source: e.into(),
            })?;
            let len = chunk.data.len();
            size += len as u64;
            self.stats.bytes += len as u64;
            if self.stats.bytes > self.limits.max_bytes {
                return Err(SnapshotError::TooLarge {
                    what: format!("the size of the files in {}", self.origin),
                    limit: human_size(self.limits.max_bytes),
                    flag: "--max-size",
                });
            }
            hasher.update(&chunk.data);
            let hash = self.pending.put_chunk(&chunk.data)?;
            chunks.push(ChunkRef(
                hash,
                u32::try_from(len).expect("chunks are at most CHUNK_MAX"),
            ));
            self.stats.chunks += 1;
            (self.progress)(SnapshotProgress::Read {
                entries: self.stats.entries,
                bytes: self.stats.bytes,
            });
        }
        Ok(Kind::File {
            size,
            hash: ContentHash::from_hasher(&hasher),
            chunks,
        })
    }

    fn count_entry(&mut self) -> Result<(), SnapshotError> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(SnapshotError::TooLarge {
                what: format!("the number of entries in {}", self.origin),
                limit: format!(
                    "{} files, directories and symlinks",
                    self.limits.max_entries
                ),
                flag: "--max-files",
            });
        }
        if self.stats.entries % 256 == 0 {
            (self.progress)(SnapshotProgress::Read {
                entries: self.stats.entries,
                bytes: self.stats.bytes,
            });
        }
        Ok(())
    }

    /// Mode (setuid/setgid stripped, counted when `count`) and mtime.
    fn meta(&mut self, st: &Stat, count: bool) -> Meta {
        let mode = st.st_mode & 0o7777;
        if count && mode & 0o6000 != 0 {
            self.stats.setid_stripped += 1;
        }
        Meta {
            mode: mode & !0o6000,
            mtime: st.st_mtime,
            nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        }
    }
}

enum Opened {
    Fd(OwnedFd),
    Vanished,
    Changed,
}
