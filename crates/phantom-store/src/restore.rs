//! Writing a checked manifest into an empty directory. Every entry is created relative
//! to its parent's fd — `mkdirat`, `openat(O_CREAT|O_EXCL|O_NOFOLLOW)`, `symlinkat`,
//! `linkat` — none of which follows a symlink at the name it creates, so nothing is
//! written outside the destination whatever appears in it meanwhile. Directories are
//! created 0700 and get their mode and mtime once their contents are written.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::manifest::{split_checked, ChunkRef, ContentHash, Kind, Manifest, Meta, Totals};
use super::objects::{ChunkReader, Objects, CREATE_FLAGS, DIR_FLAGS};
use super::{RestoreInfo, RestoreMode, RestoreProgress, SnapshotError};

pub(crate) struct Restore<'a> {
    objects: &'a Objects,
    tag: &'a str,
    /// The destination, for messages.
    dest: &'a Path,
    reader: ChunkReader,
    info: RestoreInfo,
    total_bytes: u64,
    done_bytes: u64,
    /// Cleared when the filesystem refuses links or clones: the rest is copied
    /// without trying again.
    linking: bool,
    progress: &'a mut dyn FnMut(RestoreProgress),
}

/// One regular file of the manifest.
struct FileRef<'m> {
    meta: &'m Meta,
    size: u64,
    hash: &'m ContentHash,
    chunks: &'m [ChunkRef],
}

impl<'a> Restore<'a> {
    pub(crate) fn new(
        objects: &'a Objects,
        tag: &'a str,
        dest: &'a Path,
        mode: RestoreMode,
        totals: Totals,
        progress: &'a mut dyn FnMut(RestoreProgress),
    ) -> Restore<'a> {
        Restore {
            objects,
            tag,
            dest,
            reader: ChunkReader::new(),
            info: RestoreInfo {
                tag: tag.to_string(),
                mode,
                files: totals.files,
                dirs: totals.dirs,
                symlinks: totals.symlinks,
                bytes: totals.bytes,
                copied: 0,
                reflinked: 0,
                hardlinked: 0,
                fallback: None,
            },
            total_bytes: totals.bytes,
            done_bytes: 0,
            linking: mode != RestoreMode::Copy,
            progress,
        }
    }

    fn shown(&self, path: &[u8]) -> PathBuf {
        self.dest.join(String::from_utf8_lossy(path).as_ref())
    }

    /// Write `manifest` (checked by [`Manifest::check`]) into `dest`, an empty
    /// directory. On error, what was written stays: the caller removes it.
    pub(crate) fn run(
        mut self,
        manifest: &Manifest,
        dest: BorrowedFd<'_>,
    ) -> Result<RestoreInfo, SnapshotError> {
        // The directories enclosing the current entry, outermost first.
        let mut stack: Vec<(&[u8], OwnedFd, Meta)> = Vec::new();
        for entry in &manifest.entries {
            let path = entry.path.0.as_slice();
            let (parent, name) = split_checked(path).map_err(|why| self.unsafe_manifest(why))?;
            while stack.last().is_some_and(|(p, _, _)| *p != parent) {
                let (p, fd, meta) = stack.pop().expect("not empty");
                self.finish_dir(fd.as_fd(), &meta, p)?;
            }
            let parent_fd = match stack.last() {
                Some((p, fd, _)) if *p == parent => fd.as_fd(),
                None if parent.is_empty() => dest,
                _ => {
                    return Err(self.unsafe_manifest(format!(
                        "`{}` is not inside the directory listed before it",
                        entry.path
                    )))
                }
            };
            match &entry.kind {
                Kind::Dir => {
                    rfs::mkdirat(parent_fd, name, Mode::from_raw_mode(0o700))
                        .map_err(SnapshotError::errno("create", self.shown(path)))?;
                    let fd = rfs::openat(parent_fd, name, DIR_FLAGS, Mode::empty())
                        .map_err(SnapshotError::errno("open", self.shown(path)))?;
                    stack.push((path, fd, entry.meta));
                }
                Kind::File { size, hash, chunks } => {
                    let file = FileRef {
                        meta: &entry.meta,
                        size: *size,
                        hash,
                        chunks,
                    };
                    self.file(parent_fd, name, path, &file)?;
                }
                Kind::Symlink { target } => {
                    rfs::symlinkat(target.0.as_slice(), parent_fd, name)
                        .map_err(SnapshotError::errno("create", self.shown(path)))?;
                    rfs::utimensat(
                        parent_fd,
                        name,
                        &times(&entry.meta),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(SnapshotError::errno("set the times of", self.shown(path)))?;
                }
            }
        }
        while let Some((p, fd, meta)) = stack.pop() {
            self.finish_dir(fd.as_fd(), &meta, p)?;
        }
        self.finish_dir(dest, &manifest.root, b"")?;
        Ok(self.info)
    }

    fn unsafe_manifest(&self, why: String) -> SnapshotError {
        SnapshotError::UnsafeManifest {
            tag: self.tag.to_string(),
            why,
        }
    }

    fn finish_dir(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        path: &[u8],
    ) -> Result<(), SnapshotError> {
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o1777))
            .map_err(SnapshotError::errno("set the mode of", self.shown(path)))?;
        rfs::futimens(fd, &times(meta))
            .map_err(SnapshotError::errno("set the times of", self.shown(path)))
    }

    fn file(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        file: &FileRef<'_>,
    ) -> Result<(), SnapshotError> {
        if self.linking
            && self.info.mode == RestoreMode::Hardlink
            && self.hardlink(parent, name, path, file)?
        {
            self.info.hardlinked += 1;
            self.advance(file.size);
            return Ok(());
        }
        let out = rfs::openat(parent, name, CREATE_FLAGS, Mode::from_raw_mode(0o600))
            .map(File::from)
            .map_err(SnapshotError::errno("create", self.shown(path)))?;
        if self.linking
            && self.info.mode == RestoreMode::Reflink
            && self.reflink(&out, path, file)?
        {
            self.info.reflinked += 1;
            self.advance(file.size);
        } else {
            for chunk in file.chunks {
                self.chunk(&chunk.0)?;
                (&out)
                    .write_all(&self.reader.data)
                    .map_err(SnapshotError::io("write", self.shown(path)))?;
                self.advance(u64::from(chunk.1));
            }
            self.info.copied += 1;
        }
        rfs::fchmod(&out, Mode::from_raw_mode(file.meta.mode & 0o1777))
            .map_err(SnapshotError::errno("set the mode of", self.shown(path)))?;
        rfs::futimens(&out, &times(file.meta))
            .map_err(SnapshotError::errno("set the times of", self.shown(path)))
    }

    fn advance(&mut self, bytes: u64) {
        self.done_bytes += bytes;
        (self.progress)(RestoreProgress {
            bytes: self.done_bytes,
            total_bytes: self.total_bytes,
        });
    }

    /// Read one chunk into `self.reader.data`, as a restore error when it is bad.
    fn chunk(&mut self, hash: &ContentHash) -> Result<(), SnapshotError> {
        self.objects
            .read_chunk(hash, &mut self.reader)
            .map_err(|fault| SnapshotError::Corrupt {
                what: format!(
                    "snapshot `{}`: chunk {}",
                    self.tag,
                    self.objects
                        .object_path(super::objects::Kind::Chunk, hash)
                        .display()
                ),
                why: fault.describe(),
            })
    }

    /// Clone the file's data from the cache into `dst`. False (and the rest of the
    /// restore copies) when the filesystem refuses.
    fn reflink(
        &mut self,
        dst: &File,
        path: &[u8],
        file: &FileRef<'_>,
    ) -> Result<bool, SnapshotError> {
        let rel = file.hash.rel_path();
        let usable = rfs::statat(self.objects.files_fd(), &rel, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| is_file_of(&st, file.size));
        if !usable {
            self.materialize(&rel, file, 0o400, None)?;
        }
        let src = rfs::openat(
            self.objects.files_fd(),
            &rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(SnapshotError::errno(
            "open",
            self.objects.path("files").join(&rel),
        ))?;
        match rfs::ioctl_ficlone(dst, &src) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.refused("reflinks", e);
                // Whatever a failed clone did, the copy starts from an empty file.
                rfs::ftruncate(dst, 0)
                    .map_err(SnapshotError::errno("truncate", self.shown(path)))?;
                Ok(false)
            }
        }
    }

    /// Hard-link the file from the cache. False (the caller copies it) when the
    /// filesystem refuses.
    fn hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        file: &FileRef<'_>,
    ) -> Result<bool, SnapshotError> {
        // Read-only: a hard-linked file IS the cached one.
        let mode = file.meta.mode & 0o1555;
        let cached = format!(
            "{}/{}.{mode:o}.{}.{}",
            file.hash.fan_out(),
            file.hash.hex(),
            file.meta.mtime,
            file.meta.nsec
        );
        let files = self.objects.files_fd();
        match rfs::statat(files, &cached, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st)
                if is_file_of(&st, file.size)
                    && st.st_mode & 0o7777 == mode
                    && st.st_mtime == file.meta.mtime
                    && u64::from(file.meta.nsec) == st.st_mtime_nsec => {}
            other => {
                if other.is_ok() {
                    // Written to (or chmod-ed) through one of its links: that copy now
                    // belongs to whoever changed it; the cache gets a fresh one.
                    let _ = rfs::unlinkat(files, &cached, AtFlags::empty());
                }
                self.materialize(&cached, file, mode, Some(file.meta))?;
            }
        }
        match rfs::linkat(files, &cached, parent, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            // This inode has as many links as the filesystem allows: copy this one.
            Err(Errno::MLINK) => {
                self.note(format!(
                    "some files were copied: {} has the most hard links the filesystem allows",
                    self.objects.path("files").join(&cached).display()
                ));
                Ok(false)
            }
            Err(
                e @ (Errno::XDEV | Errno::PERM | Errno::OPNOTSUPP | Errno::NOSYS | Errno::ACCESS),
            ) => {
                self.refused("hard links", e);
                Ok(false)
            }
            Err(e) => Err(SnapshotError::errno("link", self.shown(path))(e)),
        }
    }

    fn refused(&mut self, what: &str, errno: Errno) {
        self.linking = false;
        self.note(format!(
            "{what} refused by the filesystem ({}): files were copied instead",
            std::io::Error::from(errno)
        ));
    }

    fn note(&mut self, why: String) {
        if self.info.fallback.is_none() {
            self.info.fallback = Some(why);
        }
    }

    /// Write the whole file into the cache as `files/<rel>`: decompressed from its
    /// chunks, checked against the file's hash, given `mode` (and the manifest's times,
    /// for a hard-link target), renamed into place.
    fn materialize(
        &mut self,
        rel: &str,
        file: &FileRef<'_>,
        mode: u32,
        meta: Option<&Meta>,
    ) -> Result<(), SnapshotError> {
        let (fd, tmp) = self.objects.create_tmp("file")?;
        let result = self.fill_cache(fd, &tmp, rel, file, mode, meta);
        if result.is_err() {
            self.objects.discard_tmp(&tmp);
        }
        result
    }

    fn fill_cache(
        &mut self,
        fd: OwnedFd,
        tmp: &str,
        rel: &str,
        file: &FileRef<'_>,
        mode: u32,
        meta: Option<&Meta>,
    ) -> Result<(), SnapshotError> {
        let tmp_path = self.objects.path("tmp").join(tmp);
        let mut out = File::from(fd);
        let mut hasher = blake3::Hasher::new();
        for chunk in file.chunks {
            self.chunk(&chunk.0)?;
            hasher.update(&self.reader.data);
            out.write_all(&self.reader.data)
                .map_err(SnapshotError::io("write", &tmp_path))?;
        }
        let actual = ContentHash::from_hasher(&hasher);
        if actual != *file.hash {
            return Err(SnapshotError::Corrupt {
                what: format!("snapshot `{}`", self.tag),
                why: format!(
                    "the manifest says a file hashes to {} but its chunks hash to {actual}",
                    file.hash
                ),
            });
        }
        rfs::fchmod(&out, Mode::from_raw_mode(mode))
            .map_err(SnapshotError::errno("chmod", &tmp_path))?;
        if let Some(meta) = meta {
            rfs::futimens(&out, &times(meta))
                .map_err(SnapshotError::errno("set the times of", &tmp_path))?;
        }
        let fan = &rel[..2];
        self.objects
            .rename_into(tmp, self.objects.files_fd(), fan, rel)
            .map_err(SnapshotError::errno(
                "store",
                self.objects.path("files").join(rel),
            ))
    }
}

fn is_file_of(st: &rfs::Stat, size: u64) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        && u64::try_from(st.st_size).ok() == Some(size)
}

pub(crate) fn times(meta: &Meta) -> Timestamps {
    let when = Timespec {
        tv_sec: meta.mtime,
        tv_nsec: i64::from(meta.nsec),
    };
    Timestamps {
        last_access: when,
        last_modification: when,
    }
}
