//! Applying layers to an image root — the part of an import that handles hostile input.
//!
//! Layers are applied in order, bottom first, into one directory (the image's
//! flattened root); OCI whiteouts become deletions as they are met:
//!
//! * `.wh.NAME` removes `NAME` (a directory with its contents) left by lower layers;
//!   `.wh..wh..opq` empties its directory of everything lower layers put there. Both
//!   leave alone what the same layer writes, whatever the order of entries.
//!   `.wh.` + `.`/`..`/nothing (a whiteout of a parent or of `/`) refuses the import;
//!   other `.wh..wh.*` names (aufs metadata) are skipped.
//!
//! What no entry can do — each one refuses the whole import:
//!
//! * name a path outside the root: absolute paths and `..` components are refused
//!   before anything is looked up;
//! * write through a symlink: parents are opened one name at a time from the root's
//!   file descriptor with `O_NOFOLLOW`, so a symlink where a directory is expected
//!   (`evil -> /etc`, then `evil/passwd`) is an error, never a redirection; files are
//!   created with `O_CREAT|O_EXCL|O_NOFOLLOW` after removing what was there, so an
//!   existing symlink (or hard link) at the name is replaced, never written through;
//! * link outside the image: a hard link names an entry already in this root,
//!   resolved the same way; absolute link names are refused;
//!
//! and what is defused without refusing:
//!
//! * symlinks are stored with their target as written (absolute, or full of `..`)
//!   and never followed while unpacking — inside a sandbox they resolve against the
//!   sandbox's root;
//! * device nodes and fifos are skipped and counted ([`super::ImportStats`]);
//! * setuid/setgid bits are stripped unless `keep_setuid`; directories always keep
//!   owner rwx (so the importing user can build and delete the tree);
//! * files belong to the importing user: tar uid/gid, user names and xattrs (file
//!   capabilities included) are not applied, and not recorded anywhere for now;
//!   directory mtimes are not kept, file and symlink mtimes are;
//! * sizes: regular-file bytes are bounded by `max_bytes` (checked against each
//!   entry's declared size before it is written), entries by `max_entries`, and the
//!   decompressed stream by both, so a decompression bomb stops early.
//!
//! Truncation: a data stream that ends inside an entry, a tar without its end block,
//! a gzip or zstd stream that ends early or fails its checksum — all refuse.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use phantom_policy::units::human_size;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::digest::{Digest, Hashing, LimitExceeded, Limited};
use super::tarstream::{self, Kind, WalkError};
use super::tree::{self, RemovedKind, MAX_DEPTH};
use super::{ImageError, ImportOptions, ImportStats};

/// The limits of [`ImportOptions`] and what one import has used of them, with the
/// setuid policy and the counters that end in [`ImportStats`].
pub(crate) struct Budget<'o> {
    options: &'o ImportOptions,
    bytes: u64,
    stream: u64,
    pub stats: ImportStats,
}

impl<'o> Budget<'o> {
    pub(crate) fn new(options: &'o ImportOptions) -> Budget<'o> {
        Budget {
            options,
            bytes: 0,
            stream: 0,
            stats: ImportStats::default(),
        }
    }

    /// Count one entry; `subject` names it in the error (`layer 1/2 (...): `path``).
    pub(crate) fn entry(&mut self, subject: &dyn Fn() -> String) -> Result<(), ImageError> {
        self.stats.entries += 1;
        if self.stats.entries > self.options.max_entries {
            return Err(ImageError::TooLarge {
                what: format!(
                    "{}: the number of entries ({})",
                    subject(),
                    self.stats.entries
                ),
                limit: format!("{} entries", self.options.max_entries),
                flag: "--max-entries",
            });
        }
        Ok(())
    }

    /// Reserve `n` bytes of regular-file data; `subject` names the file in the error.
    pub(crate) fn bytes(&mut self, n: u64, subject: &dyn Fn() -> String) -> Result<(), ImageError> {
        let total = self.bytes.saturating_add(n);
        if total > self.options.max_bytes {
            return Err(ImageError::TooLarge {
                what: format!(
                    "{}: the unpacked size ({} with this {} file)",
                    subject(),
                    human_size(total),
                    human_size(n)
                ),
                limit: human_size(self.options.max_bytes),
                flag: "--max-size",
            });
        }
        self.bytes = total;
        self.stats.bytes_written = total;
        Ok(())
    }

    /// How many more decompressed tar bytes may be read: the file-data limit plus room
    /// for headers (three 512-byte blocks per entry at most, long names included).
    pub(crate) fn stream_left(&self) -> u64 {
        self.options
            .max_bytes
            .saturating_add(self.options.max_entries.saturating_mul(1536))
            .saturating_add(1 << 20)
            .saturating_sub(self.stream)
    }

    pub(crate) fn add_stream(&mut self, n: u64) {
        self.stream = self.stream.saturating_add(n);
    }

    pub(crate) fn keeps_setuid(&self) -> bool {
        self.options.keep_setuid
    }

    /// The mode a regular file is stored with.
    pub(crate) fn file_mode(&mut self, raw: u32) -> u32 {
        let mode = raw & 0o7777;
        if mode & 0o6000 != 0 && !self.options.keep_setuid {
            self.stats.setid_stripped += 1;
            return mode & !0o6000;
        }
        mode
    }

    /// The mode a directory is stored with: as for files, plus owner rwx.
    pub(crate) fn dir_mode(&mut self, raw: u32) -> u32 {
        self.file_mode(raw) | 0o700
    }

    fn stream_limit_error(&self, what: &str) -> ImageError {
        ImageError::TooLarge {
            what: format!("{what}: the uncompressed layer stream"),
            limit: human_size(self.stream.saturating_add(self.stream_left())),
            flag: "--max-size",
        }
    }
}

/// How a layer blob is compressed, from its first bytes (media types lie).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub(crate) fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What reading one layer blob found: its digest and length, and the digest of its
/// uncompressed tar (the diff_id).
pub(crate) struct LayerDigests {
    pub blob: Digest,
    pub blob_size: u64,
    pub diff_id: Digest,
}

/// The error for a failed read of a (compressed) stream.
pub(crate) fn stream_error(what: &str, e: io::Error) -> ImageError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ImageError::Corrupt {
            what: what.to_string(),
            why: format!("the stream is cut short ({e})"),
        }
    } else {
        ImageError::Corrupt {
            what: what.to_string(),
            why: format!("cannot read the layer: {e}"),
        }
    }
}

/// Why applying one entry failed, before the entry's name is attached.
enum Fail {
    Unsafe(String),
    Sys(&'static str, Errno),
    Image(ImageError),
}

impl From<ImageError> for Fail {
    fn from(e: ImageError) -> Fail {
        Fail::Image(e)
    }
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> Fail {
    move |errno| Fail::Sys(what, errno)
}

/// The components of an entry path, or why it is refused.
pub(crate) fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    if path.first() == Some(&b'/') {
        return Err("absolute path (layer entries are relative to the image root)".into());
    }
    if path.contains(&0) {
        return Err("NUL byte in the path".into());
    }
    let mut out = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err("`..` in the path would leave the image root".into()),
            _ if part.len() > 255 => return Err("a path component longer than 255 bytes".into()),
            _ => out.push(part),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} directories"));
    }
    Ok(out)
}

fn key(components: &[&[u8]]) -> Vec<u8> {
    components.join(&b'/')
}

/// Builds one image root from layer tars; see the module docs for the rules.
pub(crate) struct Unpacker<'b, 'o> {
    root: Rc<OwnedFd>,
    budget: &'b mut Budget<'o>,
    /// The last parent directory resolved: entries come grouped by directory.
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Paths of entries not created (device nodes, fifos): hard links to them are
    /// skipped too.
    skipped: HashSet<Vec<u8>>,
    buf: Vec<u8>,
}

impl<'b, 'o> Unpacker<'b, 'o> {
    /// `root`: the (empty, or linked from a stored root) directory to build in.
    pub(crate) fn new(root: OwnedFd, budget: &'b mut Budget<'o>) -> Unpacker<'b, 'o> {
        Unpacker {
            root: Rc::new(root),
            budget,
            cache: None,
            skipped: HashSet::new(),
            buf: vec![0; 1 << 17],
        }
    }

    /// Read one layer blob to its end — detecting its compression, applying its tar,
    /// checking its end — and return its digests for the caller to verify. `label`
    /// names the layer in errors.
    pub(crate) fn apply_blob<R: Read>(
        &mut self,
        blob: R,
        label: &str,
    ) -> Result<LayerDigests, ImageError> {
        let mut buffered = BufReader::with_capacity(1 << 18, Hashing::new(blob));
        let head = buffered.fill_buf().map_err(|e| stream_error(label, e))?;
        let compression = Compression::detect(head);
        let limit = self.budget.stream_left();
        let diff_id = {
            let decoder: Box<dyn Read + '_> = match compression {
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut buffered)),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(&mut buffered)
                        .map_err(|e| stream_error(label, e))?,
                ),
                Compression::None => Box::new(&mut buffered),
            };
            let tar = Hashing::new(Limited::new(decoder, limit));
            let mut tar = self.apply_tar(tar, label)?;
            // What follows the end block (padding) is part of the diff_id; reading to
            // the end also makes gzip and zstd check their trailers.
            if let Err(e) = tar.drain() {
                return Err(if LimitExceeded::is(&e) {
                    self.budget.stream_limit_error(label)
                } else {
                    stream_error(label, e)
                });
            }
            let (diff_id, tar_bytes) = tar.finish();
            self.budget.add_stream(tar_bytes);
            diff_id
        };
        io::copy(&mut buffered, &mut io::sink()).map_err(|e| stream_error(label, e))?;
        let (blob, blob_size) = buffered.into_inner().finish();
        Ok(LayerDigests {
            blob,
            blob_size,
            diff_id,
        })
    }

    /// Apply the uncompressed tar read from `tar`; returns the reader, just past the
    /// tar's end block.
    fn apply_tar<R: Read>(&mut self, tar: R, label: &str) -> Result<R, ImageError> {
        // Paths this layer has put in place (and their parents): whiteouts and opaque
        // directories hide lower layers only.
        let mut written: HashSet<Vec<u8>> = HashSet::new();
        let result = tarstream::walk(tar, |entry, data| {
            self.apply(entry, data, &mut written, label)
        });
        match result {
            Ok(tar) => Ok(tar),
            Err(WalkError::Callback(e)) => Err(e),
            Err(WalkError::Tar(why)) | Err(WalkError::Truncated(why)) => Err(ImageError::Corrupt {
                what: label.to_string(),
                why,
            }),
            Err(WalkError::Io(e)) if LimitExceeded::is(&e) => {
                Err(self.budget.stream_limit_error(label))
            }
            Err(WalkError::Io(e)) => Err(stream_error(label, e)),
        }
    }

    fn apply(
        &mut self,
        entry: &tarstream::Entry,
        data: &mut dyn Read,
        written: &mut HashSet<Vec<u8>>,
        label: &str,
    ) -> Result<(), ImageError> {
        let shown = || String::from_utf8_lossy(&entry.path).into_owned();
        self.budget.entry(&|| format!("{label}: `{}`", shown()))?;
        self.apply_entry(entry, data, written, label)
            .map_err(|fail| match fail {
                Fail::Unsafe(why) => ImageError::UnsafeEntry {
                    layer: label.to_string(),
                    path: shown(),
                    why,
                },
                Fail::Sys(what, errno) => ImageError::Io {
                    what,
                    path: format!("{label}: {}", shown()).into(),
                    source: errno.into(),
                },
                Fail::Image(e) => e,
            })
    }

    fn apply_entry(
        &mut self,
        entry: &tarstream::Entry,
        data: &mut dyn Read,
        written: &mut HashSet<Vec<u8>>,
        label: &str,
    ) -> Result<(), Fail> {
        let parts = components(&entry.path).map_err(Fail::Unsafe)?;
        let Some((name, parents)) = parts.split_last() else {
            // `./` itself: the root keeps its own mode.
            return match entry.kind {
                Kind::Dir => Ok(()),
                _ => Err(Fail::Unsafe(
                    "a non-directory in place of the image root".into(),
                )),
            };
        };
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            return self.whiteout(parents, name, hidden, written);
        }
        let path = key(&parts);
        match entry.kind {
            Kind::Dir => self.make_dir(parents, name, entry.mode)?,
            Kind::File => self.write_file(parents, name, entry, data, &path, label)?,
            Kind::Symlink => self.make_symlink(parents, name, entry)?,
            Kind::Hardlink => {
                if !self.make_hardlink(parents, name, entry, &path)? {
                    return Ok(());
                }
            }
            Kind::Special => {
                self.budget.stats.devices_skipped += 1;
                self.skipped.insert(path);
                // The lower layers' entry is replaced by nothing.
                if let Some(parent) = self.resolve(parents, false)? {
                    self.remove(parent.as_fd(), name)?;
                }
                return Ok(());
            }
        }
        self.skipped.remove(&path);
        mark_written(written, &parts);
        Ok(())
    }

    /// The directory `parents` below the root, created (0755) where missing when
    /// `create`; `None` when missing and not `create`. A symlink or non-directory on
    /// the way refuses.
    fn resolve(&mut self, parents: &[&[u8]], create: bool) -> Result<Option<Rc<OwnedFd>>, Fail> {
        if parents.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        let wanted = key(parents);
        if let Some((cached, fd)) = &self.cache {
            if *cached == wanted {
                return Ok(Some(fd.clone()));
            }
        }
        let mut current: Rc<OwnedFd> = self.root.clone();
        for (i, name) in parents.iter().enumerate() {
            let next = match tree::open_dir(current.as_fd(), *name) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(current.as_fd(), *name, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(Fail::Sys("create directory", e)),
                    }
                    let dir = tree::open_dir(current.as_fd(), *name)
                        .map_err(|e| self.explain(current.as_fd(), &parents[..=i], e))?;
                    // An implied parent is 0755 whatever the importer's umask: the same
                    // layers must give the same root.
                    rfs::fchmod(&dir, Mode::from_raw_mode(0o755)).map_err(sys("chmod"))?;
                    dir
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.explain(current.as_fd(), &parents[..=i], e)),
            };
            current = Rc::new(next);
        }
        self.cache = Some((wanted, current.clone()));
        Ok(Some(current))
    }

    /// Turn a failed directory lookup into a message naming the culprit.
    fn explain(&self, parent: BorrowedFd<'_>, upto: &[&[u8]], errno: Errno) -> Fail {
        let shown = String::from_utf8_lossy(&key(upto)).into_owned();
        let name = upto[upto.len() - 1];
        match errno {
            Errno::LOOP | Errno::NOTDIR => {
                match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileType::from_raw_mode(st.st_mode))
                {
                    Ok(FileType::Symlink) => Fail::Unsafe(format!(
                        "`{shown}` is a symbolic link; refusing to go through it"
                    )),
                    _ => Fail::Unsafe(format!("`{shown}` is not a directory")),
                }
            }
            e => Fail::Sys("open directory", e),
        }
    }

    /// Remove `name` in `parent`, whatever it is.
    fn remove(&mut self, parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Fail> {
        if tree::remove_any(parent, name).map_err(sys("remove"))? == RemovedKind::Dir {
            // The cached directory may have been below it.
            self.cache = None;
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        hidden: &[u8],
        written: &mut HashSet<Vec<u8>>,
    ) -> Result<(), Fail> {
        if name == b".wh..wh..opq" {
            let dir = self.resolve(parents, true)?.expect("created");
            mark_written(written, parents);
            let prefix = key(parents);
            self.clear_lower(dir.as_fd(), &prefix, written, 0)?;
            self.cache = None;
            return Ok(());
        }
        if hidden.starts_with(b".wh.") {
            self.budget.stats.other_skipped += 1; // aufs metadata (.wh..wh.plnk and such)
            return Ok(());
        }
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(Fail::Unsafe(
                "a whiteout of `.`, `..` or nothing would remove a parent directory or the root"
                    .into(),
            ));
        }
        let mut target = parents.to_vec();
        target.push(hidden);
        if written.contains(&key(&target)) {
            return Ok(()); // this layer's own entry: whiteouts hide lower layers only
        }
        if let Some(parent) = self.resolve(parents, false)? {
            self.remove(parent.as_fd(), hidden)?;
        }
        Ok(())
    }

    /// Remove everything below `dir` that this layer did not write.
    fn clear_lower(
        &mut self,
        dir: BorrowedFd<'_>,
        prefix: &[u8],
        written: &HashSet<Vec<u8>>,
        depth: usize,
    ) -> Result<(), Fail> {
        if depth > MAX_DEPTH {
            return Err(Fail::Unsafe(format!(
                "nested deeper than {MAX_DEPTH} directories"
            )));
        }
        for (name, _) in tree::list(dir).map_err(sys("read directory"))? {
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.to_bytes());
            if !written.contains(&path) {
                tree::remove_any(dir, name.as_c_str()).map_err(sys("remove"))?;
                continue;
            }
            match tree::open_dir(dir, name.as_c_str()) {
                Ok(sub) => self.clear_lower(sub.as_fd(), &path, written, depth + 1)?,
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => {} // this layer's file or symlink
                Err(e) => return Err(Fail::Sys("open directory", e)),
            }
        }
        Ok(())
    }

    fn make_dir(&mut self, parents: &[&[u8]], name: &[u8], mode: u32) -> Result<(), Fail> {
        let parent = self.resolve(parents, true)?.expect("created");
        match rfs::statat(parent.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => {
                self.remove(parent.as_fd(), name)?;
                rfs::mkdirat(parent.as_fd(), name, Mode::from_raw_mode(0o700))
                    .map_err(sys("create directory"))?;
            }
            Err(Errno::NOENT) => rfs::mkdirat(parent.as_fd(), name, Mode::from_raw_mode(0o700))
                .map_err(sys("create directory"))?,
            Err(e) => return Err(Fail::Sys("inspect", e)),
        }
        let dir = tree::open_dir(parent.as_fd(), name).map_err(sys("open directory"))?;
        let mode = self.budget.dir_mode(mode);
        rfs::fchmod(&dir, Mode::from_raw_mode(mode)).map_err(sys("chmod"))
    }

    fn write_file(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        entry: &tarstream::Entry,
        data: &mut dyn Read,
        path: &[u8],
        label: &str,
    ) -> Result<(), Fail> {
        let shown = || String::from_utf8_lossy(path).into_owned();
        self.budget
            .bytes(entry.size, &|| format!("{label}: `{}`", shown()))?;
        let parent = self.resolve(parents, true)?.expect("created");
        self.remove(parent.as_fd(), name)?;
        // O_EXCL|O_NOFOLLOW: the name was just removed; should anything be there now,
        // fail rather than write through it.
        let fd = rfs::openat(
            parent.as_fd(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(sys("create"))?;
        let mut file = File::from(fd);
        let mut left = entry.size;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(Fail::Image(ImageError::Corrupt {
                        what: label.to_string(),
                        why: format!(
                            "the tar archive is cut short inside `{}` ({left} of {} bytes missing)",
                            shown(),
                            entry.size
                        ),
                    }))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if LimitExceeded::is(&e) => {
                    return Err(Fail::Image(self.budget.stream_limit_error(label)))
                }
                Err(e) => return Err(Fail::Image(stream_error(label, e))),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| Fail::Sys("write", Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
            left -= n as u64;
        }
        let mode = self.budget.file_mode(entry.mode);
        rfs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(sys("chmod"))?;
        tree::set_times(&file, entry.mtime).map_err(sys("set times of"))
    }

    fn make_symlink(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        entry: &tarstream::Entry,
    ) -> Result<(), Fail> {
        let target = match &entry.link {
            Some(target) if !target.is_empty() && !target.contains(&0) => target,
            _ => {
                return Err(Fail::Unsafe(
                    "a symbolic link without a valid target".into(),
                ))
            }
        };
        let parent = self.resolve(parents, true)?.expect("created");
        self.remove(parent.as_fd(), name)?;
        rfs::symlinkat(target.as_slice(), parent.as_fd(), name).map_err(sys("create symlink"))?;
        let when = Timespec {
            tv_sec: entry.mtime,
            tv_nsec: 0,
        };
        rfs::utimensat(
            parent.as_fd(),
            name,
            &Timestamps {
                last_access: when,
                last_modification: when,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(sys("set times of"))
    }

    /// Returns false when the link was skipped (its target is a skipped device node).
    fn make_hardlink(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        entry: &tarstream::Entry,
        path: &[u8],
    ) -> Result<bool, Fail> {
        let raw = entry
            .link
            .as_deref()
            .ok_or_else(|| Fail::Unsafe("a hard link without a target".into()))?;
        let shown = String::from_utf8_lossy(raw).into_owned();
        let target = components(raw)
            .map_err(|why| Fail::Unsafe(format!("hard link to `{shown}`: {why}")))?;
        let Some((target_name, target_parents)) = target.split_last() else {
            return Err(Fail::Unsafe("a hard link to the image root".into()));
        };
        let target_path = key(&target);
        if self.skipped.contains(&target_path) {
            self.budget.stats.devices_skipped += 1;
            self.skipped.insert(path.to_vec());
            return Ok(false);
        }
        if target_path == path {
            return Ok(true); // a link to itself: already in place
        }
        let not_in_image =
            || Fail::Unsafe(format!("hard link to `{shown}`, which is not in the image"));
        let target_dir = self
            .resolve(target_parents, false)?
            .ok_or_else(not_in_image)?;
        match rfs::statat(target_dir.as_fd(), *target_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(Fail::Unsafe(format!(
                    "hard link to the directory `{shown}`"
                )))
            }
            Ok(_) => {}
            Err(Errno::NOENT) => return Err(not_in_image()),
            Err(e) => return Err(Fail::Sys("inspect", e)),
        }
        let parent = self.resolve(parents, true)?.expect("created");
        self.remove(parent.as_fd(), name)?;
        // flags 0: a symlink target is linked itself, not followed.
        match rfs::linkat(
            target_dir.as_fd(),
            *target_name,
            parent.as_fd(),
            name,
            AtFlags::empty(),
        ) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Err(not_in_image()), // removed with `name` just above
            Err(e) => Err(Fail::Sys("link", e)),
        }
    }
}

/// Record `parts` and every parent of it as written by the current layer.
fn mark_written(written: &mut HashSet<Vec<u8>>, parts: &[&[u8]]) {
    for end in (1..=parts.len()).rev() {
        if !written.insert(key(&parts[..end])) {
            break; // its parents are in already
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_below_the_root() {
        assert_eq!(
            components(b"./a//b/./c").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"../x").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"a/..").is_err());
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(&[b'a'; 256]).is_err());
        assert!(components("a/".repeat(MAX_DEPTH + 1).as_bytes()).is_err());
    }

    #[test]
    fn compression_is_detected_from_magic_bytes() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/"), Compression::None);
    }

    #[test]
    fn setuid_is_stripped_unless_kept() {
        let strip = ImportOptions::default();
        let mut budget = Budget::new(&strip);
        assert_eq!(budget.file_mode(0o104755), 0o755);
        assert_eq!(budget.dir_mode(0o2555), 0o755);
        assert_eq!(budget.file_mode(0o1777), 0o1777);
        assert_eq!(budget.stats.setid_stripped, 2);
        let keep = ImportOptions {
            keep_setuid: true,
            ..ImportOptions::default()
        };
        assert_eq!(Budget::new(&keep).file_mode(0o4755), 0o4755);
    }
}
