//! Directory trees handled through file descriptors only: every lookup is one name
//! relative to an open directory with `O_NOFOLLOW`, so no symlink in a tree is ever
//! followed and no path is ever resolved outside it — whatever an image put there.
//!
//! * [`walk_dirs`] — open `a/b/c` below a root, refusing symlinks on the way;
//! * [`remove_any`], [`remove_path`] — delete a name or a whole tree (never crossing
//!   into another filesystem);
//! * [`link_tree`] — a copy of a tree whose files are hard links to the original
//!   (a new image root built on a stored one; see `store.rs` for why that is safe);
//! * [`copy_tree`] — a real copy of an untrusted directory (`import_dir`), hashing what
//!   it copies into a tree digest;
//! * [`measure`] — bytes and entries of a tree.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::unpack::Budget;
use super::{ImageError, ImportProgress};

/// Deepest directory nesting accepted in an image.
pub(crate) const MAX_DEPTH: usize = 256;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Open the directory `name` in `parent`; a symlink there is `ELOOP`, a non-directory
/// `ENOTDIR`.
pub(crate) fn open_dir<P: rustix::path::Arg>(
    parent: BorrowedFd<'_>,
    name: P,
) -> Result<OwnedFd, Errno> {
    rfs::openat(parent, name, DIR_FLAGS, Mode::empty())
}

/// Open a directory the caller named (the store, a source directory): symlinks in
/// the path are the caller's own choice and are followed.
pub(crate) fn open_dir_path(path: &Path) -> Result<OwnedFd, Errno> {
    rfs::openat(
        rfs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Open `components` below `root`, one name at a time, never following a symlink.
pub(crate) fn walk_dirs(root: BorrowedFd<'_>, components: &[&[u8]]) -> Result<OwnedFd, Errno> {
    let mut current = rfs::openat(root, c".", DIR_FLAGS, Mode::empty())?;
    for name in components {
        current = open_dir(current.as_fd(), *name)?;
    }
    Ok(current)
}

pub(crate) use phantom_linux::dir::list;

/// The type of `name` in `dir`, asking the kernel when readdir did not say.
fn file_type(dir: BorrowedFd<'_>, name: &CStr, reported: FileType) -> Result<FileType, Errno> {
    match reported {
        FileType::Unknown => Ok(FileType::from_raw_mode(
            rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
        )),
        known => Ok(known),
    }
}

/// What [`remove_any`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RemovedKind {
    Nothing,
    NonDir,
    Dir,
}

/// Remove `name` from `parent` whatever it is; a directory goes with its contents.
pub(crate) fn remove_any<P: rustix::path::Arg + Copy>(
    parent: BorrowedFd<'_>,
    name: P,
) -> Result<RemovedKind, Errno> {
    match rfs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => Ok(RemovedKind::NonDir),
        Err(Errno::NOENT) => Ok(RemovedKind::Nothing),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            remove_tree(parent, name, None)?;
            Ok(RemovedKind::Dir)
        }
        Err(e) => Err(e),
    }
}

/// Remove the directory `name` in `parent` and everything below it. With `device`,
/// directories of another filesystem (mount points) are left alone, and so is the
/// path down to them (the removal then fails with `EBUSY`/`ENOTEMPTY`).
fn remove_tree<P: rustix::path::Arg + Copy>(
    parent: BorrowedFd<'_>,
    name: P,
    device: Option<u64>,
) -> Result<(), Errno> {
    let dir = open_dir(parent, name)?;
    if let Some(device) = device {
        if rfs::fstat(&dir)?.st_dev != device {
            return Err(Errno::BUSY);
        }
    }
    // Below another filesystem's mount point nothing is removed; the rest is.
    let mut busy = None;
    for (child, _) in list(dir.as_fd())? {
        match rfs::unlinkat(&dir, child.as_c_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR) | Err(Errno::PERM) => {
                match remove_tree(dir.as_fd(), child.as_c_str(), device) {
                    Err(Errno::BUSY) if device.is_some() => busy = Some(Errno::BUSY),
                    other => other?,
                }
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(errno) = busy {
        return Err(errno);
    }
    rfs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// Remove the tree at `path` (a store directory), staying on its filesystem.
pub(crate) fn remove_path(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("refusing to remove a root directory"));
    };
    let parent = open_dir_path(parent)?;
    let device = match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st.st_dev,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    match remove_tree(parent.as_fd(), name, Some(device)) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // Not a directory after all (a file left where a work dir was).
        Err(Errno::NOTDIR) => Ok(rfs::unlinkat(&parent, name, AtFlags::empty())?),
        Err(e) => Err(e.into()),
    }
}

/// Populate the empty directory `dst` with the tree of `src`: directories are created
/// (with `src`'s modes), everything else is hard-linked. Only for trees of the store,
/// whose files are never modified in place (see `store.rs`).
pub(crate) fn link_tree(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    depth: usize,
) -> Result<(), Errno> {
    if depth > MAX_DEPTH {
        return Err(Errno::LOOP);
    }
    for (name, reported) in list(src)? {
        match file_type(src, &name, reported)? {
            FileType::Directory => {
                rfs::mkdirat(dst, name.as_c_str(), Mode::from_raw_mode(0o700))?;
                let from = open_dir(src, name.as_c_str())?;
                let to = open_dir(dst, name.as_c_str())?;
                link_tree(from.as_fd(), to.as_fd(), depth + 1)?;
                let st = rfs::fstat(&from)?;
                rfs::fchmod(&to, Mode::from_raw_mode(st.st_mode & 0o7777))?;
                set_times(&to, st.st_mtime)?;
            }
            _ => match rfs::linkat(src, name.as_c_str(), dst, name.as_c_str(), AtFlags::empty()) {
                Ok(()) => {}
                // An inode at the filesystem's link limit: give this root its own copy.
                Err(Errno::MLINK) => copy_one(src, &name, dst)?,
                Err(e) => return Err(e),
            },
        }
    }
    Ok(())
}

/// Copy one non-directory of a store tree (the fallback of [`link_tree`]).
fn copy_one(src: BorrowedFd<'_>, name: &CStr, dst: BorrowedFd<'_>) -> Result<(), Errno> {
    let st = rfs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => {
            let target = rfs::readlinkat(src, name, Vec::new())?;
            rfs::symlinkat(target.as_c_str(), dst, name)
        }
        FileType::RegularFile => {
            let from = rfs::openat(
                src,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let to = rfs::openat(
                dst,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let (mut from, mut to) = (File::from(from), File::from(to));
            io::copy(&mut from, &mut to)
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
            rfs::fchmod(&to, Mode::from_raw_mode(st.st_mode & 0o7777))?;
            set_times(&to, st.st_mtime)
        }
        _ => Err(Errno::MLINK),
    }
}

/// Set a file's access and modification times to `mtime` (seconds).
pub(crate) fn set_times<Fd: AsFd>(fd: Fd, mtime: i64) -> Result<(), Errno> {
    let when = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rfs::futimens(
        fd,
        &Timestamps {
            last_access: when,
            last_modification: when,
        },
    )
}

/// What a tree holds (hard links counted once).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Usage {
    pub bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
}

/// Count the regular-file bytes and the entries below `dir`.
pub(crate) fn measure(dir: BorrowedFd<'_>) -> Result<Usage, Errno> {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    measure_into(dir, &mut usage, &mut seen, 0)?;
    Ok(usage)
}

fn measure_into(
    dir: BorrowedFd<'_>,
    usage: &mut Usage,
    seen: &mut HashSet<u64>,
    depth: usize,
) -> Result<(), Errno> {
    if depth > MAX_DEPTH {
        return Err(Errno::LOOP);
    }
    for (name, reported) in list(dir)? {
        match file_type(dir, &name, reported)? {
            FileType::Directory => {
                usage.dirs += 1;
                let sub = open_dir(dir, name.as_c_str())?;
                measure_into(sub.as_fd(), usage, seen, depth + 1)?;
            }
            FileType::Symlink => usage.symlinks += 1,
            FileType::RegularFile => {
                let st = rfs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                if st.st_nlink > 1 && !seen.insert(st.st_ino) {
                    continue;
                }
                usage.files += 1;
                usage.bytes += st.st_size as u64;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Copies an untrusted directory tree into the store for `import_dir`: entries in name
/// order; symlinks copied as symlinks (never followed); hard links inside the tree
/// kept; device nodes, fifos and sockets skipped; other filesystems mounted inside
/// left out (their mount point is copied empty). Everything copied, with its mode
/// after the setuid policy, goes into a tree digest that names the result.
pub(crate) struct TreeCopy<'b, 'o> {
    budget: &'b mut Budget<'o>,
    progress: &'b mut dyn FnMut(ImportProgress),
    reported: u64,
    digest: Sha256,
    device: u64,
    /// First copy of each multiply-linked source inode: (dev, ino) -> destination path.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
}

impl<'b, 'o> TreeCopy<'b, 'o> {
    pub(crate) fn new(
        budget: &'b mut Budget<'o>,
        device: u64,
        progress: &'b mut dyn FnMut(ImportProgress),
    ) -> TreeCopy<'b, 'o> {
        TreeCopy {
            budget,
            progress,
            reported: 0,
            digest: Sha256::new(),
            device,
            links: HashMap::new(),
            buf: vec![0; 1 << 17],
        }
    }

    /// Copy the contents of `src` into the empty directory `dst`.
    pub(crate) fn copy(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
    ) -> Result<(), ImageError> {
        self.copy_dir(dst, src, dst, b"", 0)
    }

    /// The tree digest of everything copied.
    pub(crate) fn finish(self) -> Digest {
        let hex: String = self
            .digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Digest::parse(&format!("sha256:{hex}")).expect("sha256 hex is a digest")
    }

    fn record(&mut self, kind: &str, path: &[u8], fields: &[&[u8]]) {
        self.digest.update(kind.as_bytes());
        self.digest.update(b"\0");
        self.digest.update(path);
        for field in fields {
            self.digest.update(b"\0");
            self.digest.update(field);
        }
        self.digest.update(b"\n");
    }

    fn copy_dir(
        &mut self,
        root: BorrowedFd<'_>,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        prefix: &[u8],
        depth: usize,
    ) -> Result<(), ImageError> {
        let fail = |what: &'static str, path: &[u8]| {
            let path = String::from_utf8_lossy(path).into_owned();
            move |errno: Errno| -> ImageError {
                ImageError::Io {
                    what,
                    path: path.into(),
                    source: errno.into(),
                }
            }
        };
        let mut names = list(src).map_err(fail("read directory", prefix))?;
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, _) in names {
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.to_bytes());
            let shown = || String::from_utf8_lossy(&path).into_owned();
            self.budget.entry(&|| format!("`{}`", shown()))?;
            let st = rfs::statat(src, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(fail("inspect", &path))?;
            let mtime = st.st_mtime.to_string();
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    rfs::mkdirat(dst, name.as_c_str(), Mode::from_raw_mode(0o700))
                        .map_err(fail("create directory", &path))?;
                    let to = open_dir(dst, name.as_c_str()).map_err(fail("open", &path))?;
                    let mode = self.budget.dir_mode(st.st_mode);
                    if st.st_dev == self.device {
                        if depth + 1 > MAX_DEPTH {
                            return Err(ImageError::Usage(format!(
                                "{}: nested deeper than {MAX_DEPTH} directories",
                                shown()
                            )));
                        }
                        let from = open_dir(src, name.as_c_str()).map_err(fail("open", &path))?;
                        self.record(
                            "d",
                            &path,
                            &[format!("{mode:o}").as_bytes(), mtime.as_bytes()],
                        );
                        self.copy_dir(root, from.as_fd(), to.as_fd(), &path, depth + 1)?;
                    } else {
                        // Another filesystem mounted here (/proc in a chroot, say).
                        self.budget.stats.other_skipped += 1;
                        self.record("m", &path, &[format!("{mode:o}").as_bytes()]);
                    }
                    rfs::fchmod(&to, Mode::from_raw_mode(mode)).map_err(fail("chmod", &path))?;
                    set_times(&to, st.st_mtime).map_err(fail("set times of", &path))?;
                }
                FileType::Symlink => {
                    let target = rfs::readlinkat(src, name.as_c_str(), Vec::new())
                        .map_err(fail("read link", &path))?;
                    rfs::symlinkat(target.as_c_str(), dst, name.as_c_str())
                        .map_err(fail("create symlink", &path))?;
                    let when = Timespec {
                        tv_sec: st.st_mtime,
                        tv_nsec: 0,
                    };
                    rfs::utimensat(
                        dst,
                        name.as_c_str(),
                        &Timestamps {
                            last_access: when,
                            last_modification: when,
                        },
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(fail("set times of", &path))?;
                    self.record("l", &path, &[target.to_bytes(), mtime.as_bytes()]);
                }
                FileType::RegularFile => {
                    let inode = (st.st_dev, st.st_ino);
                    if st.st_nlink > 1 {
                        if let Some(first) = self.links.get(&inode).cloned() {
                            let comps: Vec<&[u8]> = first.split(|b| *b == b'/').collect();
                            let (first_name, first_parents) =
                                comps.split_last().expect("a recorded path has a name");
                            let first_dir =
                                walk_dirs(root, first_parents).map_err(fail("open", &first))?;
                            rfs::linkat(
                                &first_dir,
                                *first_name,
                                dst,
                                name.as_c_str(),
                                AtFlags::empty(),
                            )
                            .map_err(fail("link", &path))?;
                            self.record("h", &path, &[&first]);
                            continue;
                        }
                    }
                    self.copy_file(src, dst, &name, &path, &st)?;
                    let done = self.budget.stats.bytes_written;
                    if done - self.reported >= 1 << 20 {
                        self.reported = done;
                        (self.progress)(ImportProgress::Bytes { done, total: None });
                    }
                    if st.st_nlink > 1 {
                        self.links.insert(inode, path.clone());
                    }
                }
                _ => {
                    self.budget.stats.devices_skipped += 1;
                }
            }
        }
        Ok(())
    }

    fn copy_file(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
        st: &rfs::Stat,
    ) -> Result<(), ImageError> {
        let shown = String::from_utf8_lossy(path).into_owned();
        let io = |what: &'static str| {
            let shown = shown.clone();
            move |e: io::Error| ImageError::Io {
                what,
                path: shown.into(),
                source: e,
            }
        };
        let size = st.st_size as u64;
        self.budget.bytes(size, &|| format!("`{shown}`"))?;
        // O_NONBLOCK: a fifo swapped in after the stat must not hang the import.
        let from = rfs::openat(
            src,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open")(e.into()))?;
        let now = rfs::fstat(&from).map_err(|e| io("inspect")(e.into()))?;
        if now.st_ino != st.st_ino || FileType::from_raw_mode(now.st_mode) != FileType::RegularFile
        {
            return Err(ImageError::Usage(format!(
                "{shown}: changed while it was being imported; import a directory nothing else writes to"
            )));
        }
        let to = rfs::openat(
            dst,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io("create")(e.into()))?;
        let (mut from, mut to) = (File::from(from), File::from(to));
        let mut content = Sha256::new();
        let mut left = size;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match from.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(ImageError::Usage(format!(
                        "{shown}: shrank while it was being imported; import a directory nothing else writes to"
                    )))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("read")(e)),
            };
            content.update(&self.buf[..n]);
            to.write_all(&self.buf[..n]).map_err(io("write"))?;
            left -= n as u64;
        }
        let mode = self.budget.file_mode(st.st_mode);
        rfs::fchmod(&to, Mode::from_raw_mode(mode)).map_err(|e| io("chmod")(e.into()))?;
        set_times(&to, st.st_mtime).map_err(|e| io("set times of")(e.into()))?;
        let content: String = content
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.record(
            "f",
            path,
            &[
                format!("{mode:o}").as_bytes(),
                st.st_mtime.to_string().as_bytes(),
                content.as_bytes(),
            ],
        );
        Ok(())
    }
}
