//! Watching a directory of a sandbox's workspace for changes (E2B's `WatchDir` and
//! its polling twin), with inotify from the front end's process.
//!
//! Every watched directory is opened beneath the workspace as in [`super::files`]
//! (no `..` out, no symlink followed) and the watch is added through
//! `/proc/self/fd/N`, which names exactly the directory opened: a symlink the sandbox
//! plants never turns a watch onto a host directory. A recursive watch adds the
//! subdirectories it finds, and those created later, the same way (each one opened
//! with `O_NOFOLLOW` from its watched parent).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::files::{errno, sandbox_side};
use crate::EngineError;

/// The most directories one recursive watch follows (the kernel's per-user limit on
/// watches is shared by everyone on the host).
pub const MAX_WATCHED_DIRS: usize = 4096;

/// What happened to an entry, as E2B names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

/// One change: the entry's path relative to the watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub name: PathBuf,
    pub change: Change,
}

/// A watch on a directory of a workspace (and, recursively, its subdirectories).
pub struct Watch {
    inotify: OwnedFd,
    /// The watched directory (new subdirectories are opened from it).
    root: OwnedFd,
    /// Watch descriptor → the directory's path relative to the watched one.
    dirs: HashMap<i32, PathBuf>,
    recursive: bool,
    /// Directories left unwatched because of [`MAX_WATCHED_DIRS`].
    pub overflowed: bool,
    buf: Vec<MaybeUninit<u8>>,
}

const MASK: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::ONLYDIR);

impl Watch {
    /// Watch directory `path` of sandbox `name`'s workspace.
    pub fn new(
        workspace: &OwnedFd,
        name: &str,
        path: &str,
        recursive: bool,
    ) -> Result<Watch, EngineError> {
        let (side, rel) = sandbox_side(workspace, name, path)?;
        let dir = side.open(&rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(errno("inotify_init", path))?;
        let mut watch = Watch {
            inotify,
            root: dir,
            dirs: HashMap::new(),
            recursive,
            overflowed: false,
            buf: vec![MaybeUninit::uninit(); 64 * 1024],
        };
        let root = watch.root.try_clone().map_err(|source| EngineError::Io {
            what: "dup",
            path: path.to_string(),
            source,
        })?;
        watch.add(root.as_fd(), PathBuf::new(), path)?;
        Ok(watch)
    }

    /// The inotify fd, readable when changes wait ([`Watch::read`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Watch `dir` (at `rel`) and, when recursive, every directory below it.
    fn add(&mut self, dir: BorrowedFd<'_>, rel: PathBuf, shown: &str) -> Result<(), EngineError> {
        if self.dirs.len() >= MAX_WATCHED_DIRS {
            self.overflowed = true;
            return Ok(());
        }
        let magic = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir));
        let wd = inotify::add_watch(&self.inotify, magic.as_str(), MASK)
            .map_err(errno("watch", shown))?;
        self.dirs.insert(wd, rel.clone());
        if !self.recursive {
            return Ok(());
        }
        let mut children = Vec::new();
        let mut entries = rfs::Dir::read_from(dir).map_err(errno("read", shown))?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(errno("read", shown))?;
            let raw = entry.file_name().to_bytes();
            if raw != b"." && raw != b".." && entry.file_type() == rfs::FileType::Directory {
                children.push(OsStr::from_bytes(raw).to_os_string());
            }
        }
        for child in children {
            // Gone meanwhile, or replaced by something that is no directory: skipped.
            if let Ok(sub) = open_subdir(dir, &child) {
                self.add(sub.as_fd(), rel.join(&child), shown)?;
            }
        }
        Ok(())
    }

    /// The changes that have come (none when nothing waits: the fd is non-blocking).
    pub fn read(&mut self) -> Result<Vec<WatchEvent>, EngineError> {
        let mut out = Vec::new();
        let mut new_dirs = Vec::new();
        {
            let mut reader = inotify::Reader::new(&self.inotify, &mut self.buf);
            loop {
                let event = match reader.next() {
                    Ok(e) => e,
                    Err(Errno::AGAIN) => break,
                    Err(e) => return Err(errno("read", "the watch")(e)),
                };
                let flags = event.events();
                if flags.contains(ReadFlags::IGNORED) {
                    self.dirs.remove(&event.wd());
                    continue;
                }
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    self.overflowed = true;
                    continue;
                }
                let (Some(dir), Some(file)) = (self.dirs.get(&event.wd()), event.file_name())
                else {
                    continue;
                };
                let name = dir.join(OsStr::from_bytes(file.to_bytes()));
                let change = if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                    Change::Create
                } else if flags.contains(ReadFlags::MODIFY) {
                    Change::Write
                } else if flags.contains(ReadFlags::DELETE) {
                    Change::Remove
                } else if flags.contains(ReadFlags::MOVED_FROM) {
                    Change::Rename
                } else if flags.contains(ReadFlags::ATTRIB) {
                    Change::Chmod
                } else {
                    continue;
                };
                if change == Change::Create && flags.contains(ReadFlags::ISDIR) {
                    new_dirs.push((event.wd(), name.clone()));
                }
                out.push(WatchEvent { name, change });
            }
        }
        if self.recursive {
            for (parent_wd, rel) in new_dirs {
                self.follow(parent_wd, &rel);
            }
        }
        Ok(out)
    }

    /// A directory appeared below a watched one: watch it too (opened from its
    /// parent, through no symlink).
    fn follow(&mut self, parent_wd: i32, rel: &Path) {
        let (Some(parent), Some(leaf)) = (self.dirs.get(&parent_wd).cloned(), rel.file_name())
        else {
            return;
        };
        let Ok(parent_dir) = open_below(self.root.as_fd(), &parent) else {
            return;
        };
        if let Ok(dir) = open_subdir(parent_dir.as_fd(), leaf) {
            let _ = self.add(dir.as_fd(), rel.to_path_buf(), &rel.display().to_string());
        }
    }

    /// Wait up to `timeout` for changes.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<WatchEvent>, EngineError> {
        if crate::channel::readable(self.inotify.as_fd(), timeout) {
            self.read()
        } else {
            Ok(Vec::new())
        }
    }
}

/// `rel` below `root`, one component at a time, through no symlink.
fn open_below(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    let mut dir = open_subdir(root, OsStr::new("."))?;
    for part in rel.components() {
        let std::path::Component::Normal(part) = part else {
            return Err(Errno::INVAL);
        };
        dir = open_subdir(dir.as_fd(), part)?;
    }
    Ok(dir)
}

fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}
