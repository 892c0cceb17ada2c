//! Files and directories into and out of a persistent sandbox's workspace, in the
//! caller's process, through the workspace's `O_PATH` fd that the engine handed out
//! after checking who asks (`EngineClient::workspace`).
//!
//! The sandbox side is untrusted: anything in the workspace may be a symlink the
//! sandbox planted, and may change while we copy. So every sandbox-side path the user
//! gives is resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) from the
//! workspace's directory fd — a `..` or a symlink that would leave the workspace is
//! refused by the kernel (EXDEV), never followed to a host file — and below that, a
//! tree is walked entry by entry with O_NOFOLLOW: a symlink inside a copied directory
//! is copied as a symlink, never followed, on either side. Every file, read or
//! written, on either side, is opened O_NONBLOCK and checked to be regular with fstat
//! on the open fd before any byte moves (and before a destination is truncated): a
//! FIFO, a socket or a device planted or swapped in is refused, never waited on;
//! setuid/setgid bits are dropped. Sizes are bounded ([`CpLimits`]), and
//! data moves with copy_file_range where the kernel can (std::io::copy uses it).
//!
//! Semantics follow `docker cp`: a file onto an existing directory lands inside it; a
//! directory onto a missing path becomes that path; onto an existing directory it
//! lands inside it, or — with a source ending in `/.` — its contents do.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use phantom_api::choice::FileKind;
use phantom_api::FileEntry;

use crate::EngineError;

/// Where the workspace appears inside a sandbox.
const WORKSPACE: &str = "/workspace";

/// One end of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpEnd {
    Host(PathBuf),
    /// `NAME:/workspace/...`.
    Sandbox {
        name: String,
        path: String,
    },
}

impl CpEnd {
    /// `NAME:/path` is a sandbox path when NAME is a valid sandbox name; anything
    /// else is a host path (write `./a:b` for a host file with a colon).
    pub fn parse(arg: &str) -> CpEnd {
        if let Some((name, path)) = arg.split_once(':') {
            if super::validate_name(name).is_ok() && !name.starts_with('.') {
                return CpEnd::Sandbox {
                    name: name.to_string(),
                    path: path.to_string(),
                };
            }
        }
        CpEnd::Host(PathBuf::from(arg))
    }
}

/// Bounds of one copy.
#[derive(Debug, Clone, Copy)]
pub struct CpLimits {
    /// File bytes in all.
    pub max_bytes: u64,
    /// Files, directories and symlinks in all.
    pub max_entries: u64,
}

impl Default for CpLimits {
    fn default() -> Self {
        CpLimits {
            max_bytes: 1 << 30,
            max_entries: 100_000,
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries not copied (devices, FIFOs, sockets), by path.
    pub skipped: Vec<String>,
    /// Where the copy landed.
    pub destination: String,
}

/// A directory to resolve paths in: the host's cwd (the caller's own files), or a
/// sandbox's workspace (untrusted: resolved beneath it).
pub(crate) struct Side {
    root: Option<OwnedFd>,
    /// How the user wrote this side, for messages.
    shown: String,
}

pub(crate) fn errno<'a>(
    what: &'static str,
    path: &'a str,
) -> impl FnOnce(Errno) -> EngineError + 'a {
    move |e| {
        if e == Errno::XDEV {
            EngineError::Usage(format!(
                "{path}: leaves the workspace (through `..` or a symlink); only files inside /workspace are reachable"
            ))
        } else if e == Errno::NOENT {
            EngineError::Usage(format!("{path}: no such file or directory"))
        } else if e == Errno::LOOP {
            EngineError::Usage(format!(
                "{path}: too many levels of symlinks, or a symlink where a file must be written"
            ))
        } else if e == Errno::NOTDIR {
            EngineError::Usage(format!("{path}: not a directory (a file is in the way)"))
        } else if e == Errno::ISDIR {
            EngineError::Usage(format!("{path}: is a directory"))
        } else if e == Errno::NAMETOOLONG {
            EngineError::Usage(format!("{path}: name too long"))
        } else {
            EngineError::Io {
                what,
                path: path.to_string(),
                source: e.into(),
            }
        }
    }
}

impl Side {
    /// Open `rel` (relative to the side's root) with `flags`.
    pub(crate) fn open(
        &self,
        rel: &Path,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, EngineError> {
        let shown = self.show(rel);
        let flags = flags | OFlags::CLOEXEC;
        match &self.root {
            None => rfs::openat(rfs::CWD, rel, flags, mode).map_err(errno("open", &shown)),
            Some(root) => {
                let rel = if rel.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    rel
                };
                rfs::openat2(
                    root,
                    rel,
                    flags,
                    mode,
                    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(errno("open", &shown))
            }
        }
    }

    fn show(&self, rel: &Path) -> String {
        if rel.as_os_str().is_empty() {
            self.shown.clone()
        } else if self.root.is_some() {
            format!("{}/{}", self.shown.trim_end_matches('/'), rel.display())
        } else {
            rel.display().to_string()
        }
    }
}

/// The sandbox side of `NAME:PATH`: the workspace's fd and PATH relative to it.
pub(crate) fn sandbox_side(
    workspace: &OwnedFd,
    name: &str,
    path: &str,
) -> Result<(Side, PathBuf), EngineError> {
    let rel = match path.strip_prefix(WORKSPACE) {
        Some("") => PathBuf::new(),
        Some(rest) if rest.starts_with('/') => PathBuf::from(rest.trim_start_matches('/')),
        _ if !path.starts_with('/') => PathBuf::from(path),
        _ => {
            return Err(EngineError::Usage(format!(
                "{path} is outside the workspace of sandbox `{name}`: only /workspace is reachable; give a path inside it, e.g. /workspace/main.py"
            )))
        }
    };
    let root = workspace.try_clone().map_err(|source| EngineError::Io {
        what: "dup",
        path: format!("{name}:{WORKSPACE}"),
        source,
    })?;
    Ok((
        Side {
            root: Some(root),
            shown: format!("{name}:{WORKSPACE}"),
        },
        rel,
    ))
}

/// Copy `src` to `dst`; exactly one of them is in a sandbox, whose workspace fd is
/// `workspace`.
pub fn cp(
    src: &CpEnd,
    dst: &CpEnd,
    workspace: &OwnedFd,
    limits: CpLimits,
) -> Result<CpReport, EngineError> {
    let host = |p: &PathBuf| {
        (
            Side {
                root: None,
                shown: String::new(),
            },
            p.clone(),
        )
    };
    let ((from, src_rel), (to, dst_rel)) = match (src, dst) {
        (CpEnd::Host(s), CpEnd::Sandbox { name, path }) => {
            (host(s), sandbox_side(workspace, name, path)?)
        }
        (CpEnd::Sandbox { name, path }, CpEnd::Host(d)) => {
            (sandbox_side(workspace, name, path)?, host(d))
        }
        _ => {
            return Err(EngineError::Usage(
                "phantom cp copies between the host and a sandbox: one side must be NAME:/workspace/PATH, the other a host path".into(),
            ))
        }
    };
    let contents_only = match src {
        CpEnd::Host(p) => p.as_os_str().as_bytes().ends_with(b"/."),
        CpEnd::Sandbox { path, .. } => path.ends_with("/."),
    };
    // The source itself is followed if it is a symlink — on the sandbox side only as
    // far as it stays beneath the workspace; what is inside a directory never is.
    let src_fd = from.open(&src_rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
    let src_type = FileType::from_raw_mode(
        rfs::fstat(&src_fd)
            .map_err(errno("stat", &from.show(&src_rel)))?
            .st_mode,
    );
    // Inside a tree such entries are skipped and reported; named as the source itself
    // they are an error (nothing could be copied).
    if !matches!(src_type, FileType::RegularFile | FileType::Directory) {
        return Err(EngineError::Usage(format!(
            "{}: not a regular file or a directory (a FIFO, socket or device); phantom cp copies files, directories and symlinks",
            from.show(&src_rel)
        )));
    }
    let name = src_rel
        .file_name()
        .filter(|n| *n != OsStr::new("."))
        .or_else(|| src_rel.parent().and_then(|p| p.file_name()))
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "workspace".into());

    // Where it lands: an existing directory takes it inside (or its contents).
    let dst_dir = to.open(&dst_rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty());
    let dst_trailing_slash = match dst {
        CpEnd::Host(p) => p.as_os_str().as_bytes().ends_with(b"/"),
        CpEnd::Sandbox { path, .. } => path.ends_with('/'),
    };
    let (parent, leaf, shown) = match dst_dir {
        Ok(dir) if src_type == FileType::Directory && contents_only => {
            // Contents into the existing directory; what it did not hold before is
            // removed again if the copy fails half-way.
            let mut budget = Budget::new(limits);
            let shown = (from.show(&src_rel), to.show(&dst_rel));
            let before = dir_names(dir.as_fd());
            let copied = copy_dir_contents(
                src_fd.as_fd(),
                dir.as_fd(),
                &mut budget,
                (&shown.0, &shown.1),
            );
            if let Err(e) = copied {
                for name in dir_names(dir.as_fd()) {
                    if !before.contains(&name) {
                        remove_at(dir.as_fd(), &name);
                    }
                }
                return Err(e);
            }
            budget.report.destination = to.show(&dst_rel);
            return Ok(budget.report);
        }
        Ok(dir) => (dir, PathBuf::from(&name), to.show(&dst_rel.join(&name))),
        Err(_) if dst_trailing_slash => {
            return Err(EngineError::Usage(format!(
                "{}: no such directory (create it first, or drop the trailing /)",
                to.show(&dst_rel)
            )))
        }
        Err(_) => {
            let leaf = dst_rel
                .file_name()
                .filter(|_| {
                    dst_rel
                        .components()
                        .next_back()
                        .is_some_and(|c| matches!(c, Component::Normal(_)))
                })
                .ok_or_else(|| {
                    EngineError::Usage(format!("{}: not a file name to copy to", to.show(&dst_rel)))
                })?
                .to_os_string();
            let parent_rel = dst_rel.parent().unwrap_or(Path::new("")).to_path_buf();
            let parent_rel = if parent_rel.as_os_str().is_empty() && to.root.is_none() {
                PathBuf::from(".")
            } else {
                parent_rel
            };
            let parent = to.open(
                &parent_rel,
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )?;
            (parent, PathBuf::from(leaf), to.show(&dst_rel))
        }
    };
    let mut budget = Budget::new(limits);
    // A file over an existing regular file replaces its content; anything new that
    // fails half-way is removed again.
    let existed = rfs::statat(&parent, &leaf, AtFlags::SYMLINK_NOFOLLOW).is_ok();
    let result = copy_entry(
        src_fd.as_fd(),
        src_type,
        parent.as_fd(),
        leaf.as_os_str(),
        &mut budget,
        (&from.show(&src_rel), &shown),
    );
    if let Err(e) = result {
        if !existed {
            remove_at(parent.as_fd(), leaf.as_os_str());
        }
        return Err(e);
    }
    budget.report.destination = shown;
    Ok(budget.report)
}

/// The workspace itself, readable (its entries listed): for a snapshot's walk, from the
/// `O_PATH` fd the engine handed out.
pub fn readable_dir(workspace: &OwnedFd) -> Result<OwnedFd, EngineError> {
    rfs::openat(
        workspace,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| EngineError::Io {
        what: "open",
        path: WORKSPACE.into(),
        source: e.into(),
    })
}

/// Write `data` to `path` (`/workspace/...`, or relative to it) in the workspace of
/// sandbox `name`, creating or replacing the file (mode 0644 for a new one); parent
/// directories are created when `parents`. Resolved beneath the workspace like [`cp`];
/// opened without blocking, so a FIFO or a device planted there is refused, never
/// waited on. For front ends that hold the content (MCP, HTTP) rather than a host file.
pub fn write_file(
    workspace: &OwnedFd,
    name: &str,
    path: &str,
    data: &[u8],
    parents: bool,
) -> Result<(), EngineError> {
    let (side, rel) = sandbox_side(workspace, name, path)?;
    let leaf = rel
        .file_name()
        .filter(|_| {
            rel.components()
                .next_back()
                .is_some_and(|c| matches!(c, Component::Normal(_)))
        })
        .ok_or_else(|| {
            EngineError::Usage(format!(
                "{name}:{path}: name a file, e.g. {name}:/workspace/main.py"
            ))
        })?
        .to_os_string();
    let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut dir = side.open(
        Path::new(""),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )?;
    if parents {
        // One component at a time, never through a symlink.
        for comp in parent_rel.components() {
            let Component::Normal(part) = comp else {
                return Err(EngineError::Usage(format!(
                    "{name}:{path}: `..` is not allowed when creating directories"
                )));
            };
            match rfs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno("mkdir", path)(e)),
            }
            dir = rfs::openat(
                &dir,
                part,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno("open", path))?;
        }
    } else {
        dir = side.open(
            &parent_rel,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
    }
    let fd = open_for_writing(
        dir.as_fd(),
        &leaf,
        Mode::from_raw_mode(0o644),
        &format!("{name}:{path}"),
    )?;
    use std::io::Write;
    File::from(fd).write_all(data).map_err(|e| EngineError::Io {
        what: "write",
        path: format!("{name}:{path}"),
        source: e,
    })
}

/// Open `name` in `parent` to write it, creating it with `mode` or replacing an existing
/// regular file's content. Never blocks and never follows a symlink: opening a FIFO
/// for writing would wait for a reader (forever, if the sandbox planted it), and
/// O_NONBLOCK makes that ENXIO; a FIFO with a reader, a socket or a device opens but
/// is refused by the fstat of the open fd. Nothing is truncated before the type is
/// known: O_TRUNC only after fstat says it is a regular file.
fn open_for_writing(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    mode: Mode,
    shown: &str,
) -> Result<OwnedFd, EngineError> {
    let fd = rfs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        mode,
    )
    .map_err(|e| match e {
        Errno::NXIO => EngineError::Usage(format!(
            "{shown}: not a regular file (a FIFO or a socket); remove it or write elsewhere"
        )),
        e => errno("create", shown)(e),
    })?;
    let st = rfs::fstat(&fd).map_err(errno("stat", shown))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(EngineError::Usage(format!(
            "{shown}: not a regular file (a FIFO, socket or device); remove it or write elsewhere"
        )));
    }
    rfs::ftruncate(&fd, 0).map_err(errno("truncate", shown))?;
    Ok(fd)
}

/// Read the file at `path` in the workspace of sandbox `name`, at most `max` bytes (a
/// larger file is a usage error naming its size). Resolved beneath the workspace like
/// [`cp`].
pub fn read_file(
    workspace: &OwnedFd,
    name: &str,
    path: &str,
    max: u64,
) -> Result<Vec<u8>, EngineError> {
    let (side, rel) = sandbox_side(workspace, name, path)?;
    let fd = side.open(&rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
    let st = rfs::fstat(&fd).map_err(errno("stat", path))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(EngineError::Usage(format!(
            "{name}:{path}: not a regular file (list a directory instead)"
        )));
    }
    let mut data = Vec::new();
    File::from(fd)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| EngineError::Io {
            what: "read",
            path: format!("{name}:{path}"),
            source: e,
        })?;
    if data.len() as u64 > max {
        return Err(EngineError::Usage(format!(
            "{name}:{path}: larger than the limit of {max} bytes"
        )));
    }
    Ok(data)
}

/// The entries of directory `path` in the workspace of sandbox `name`, by name
/// (symlinks reported, not followed).
pub fn list_files(
    workspace: &OwnedFd,
    name: &str,
    path: &str,
) -> Result<Vec<FileEntry>, EngineError> {
    let (side, rel) = sandbox_side(workspace, name, path)?;
    let dir = side.open(&rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
    let mut entries = rfs::Dir::read_from(&dir).map_err(errno("read", path))?;
    let mut out = Vec::new();
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(errno("read", path))?;
        let raw = entry.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let file = OsStr::from_bytes(raw);
        let Ok(st) = rfs::statat(&dir, file, AtFlags::SYMLINK_NOFOLLOW) else {
            continue; // removed meanwhile
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        out.push(FileEntry {
            name: file.to_string_lossy().into_owned(),
            kind: match kind {
                FileType::RegularFile => FileKind::File,
                FileType::Directory => FileKind::Dir,
                FileType::Symlink => FileKind::Symlink,
                _ => FileKind::Other,
            },
            size: if kind == FileType::RegularFile {
                st.st_size as u64
            } else {
                0
            },
            mode: st.st_mode & 0o7777,
            target: (kind == FileType::Symlink)
                .then(|| rfs::readlinkat(&dir, file, Vec::new()).ok())
                .flatten()
                .map(|t| t.to_string_lossy().into_owned()),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// How deep a copied tree may nest: what a snapshot accepts (a sandbox can build a
/// chain of thousands of directories; copying one recursively would overflow the
/// stack).
pub const MAX_CP_DEPTH: usize = phantom_store::MAX_DEPTH;

/// Counts what is copied and refuses more than the limits.
struct Budget {
    limits: CpLimits,
    report: CpReport,
    /// Directories open above the entry being copied.
    depth: usize,
}

impl Budget {
    fn new(limits: CpLimits) -> Budget {
        Budget {
            limits,
            report: CpReport::default(),
            depth: 0,
        }
    }

    /// One directory level down, refused past [`MAX_CP_DEPTH`].
    fn descend(&mut self, shown: &str) -> Result<(), EngineError> {
        if self.depth >= MAX_CP_DEPTH {
            return Err(EngineError::Usage(format!(
                "{shown}: nested more than {MAX_CP_DEPTH} directories deep; phantom cp (like a snapshot) refuses deeper trees — archive it inside the sandbox (tar) and copy the archive"
            )));
        }
        self.depth += 1;
        Ok(())
    }

    fn entry(&mut self, shown: &str) -> Result<(), EngineError> {
        let r = &self.report;
        if r.files + r.dirs + r.symlinks >= self.limits.max_entries {
            return Err(EngineError::Usage(format!(
                "{shown}: more than {} entries; raise --max-entries if the tree is trusted to be this large",
                self.limits.max_entries
            )));
        }
        Ok(())
    }

    fn room(&self) -> u64 {
        self.limits.max_bytes.saturating_sub(self.report.bytes)
    }
}

/// Copy the open source entry `src` (of type `kind`) to `name` in `parent`.
fn copy_entry(
    src: BorrowedFd<'_>,
    kind: FileType,
    parent: BorrowedFd<'_>,
    name: &OsStr,
    budget: &mut Budget,
    (shown, dst_shown): (&str, &str),
) -> Result<(), EngineError> {
    budget.entry(shown)?;
    let stat = rfs::fstat(src).map_err(errno("stat", shown))?;
    // Permission bits only: setuid/setgid/sticky never cross.
    let perm = Mode::from_raw_mode(stat.st_mode & 0o777);
    match kind {
        FileType::RegularFile => {
            let out = open_for_writing(parent, name, perm | Mode::RUSR | Mode::WUSR, dst_shown)?;
            let mut input =
                File::from(rustix::io::fcntl_dupfd_cloexec(src, 0).map_err(errno("dup", shown))?);
            let mut output = File::from(out);
            let room = budget.room();
            // Take one byte more than the room, to tell "fits exactly" from "too big".
            let copied =
                std::io::copy(&mut (&mut input).take(room + 1), &mut output).map_err(|e| {
                    EngineError::Io {
                        what: "copy",
                        path: shown.to_string(),
                        source: e,
                    }
                })?;
            if copied > room {
                return Err(EngineError::Usage(format!(
                    "{shown}: the copy exceeds the limit of {} bytes; raise --max-size if it is trusted to be this large",
                    budget.limits.max_bytes
                )));
            }
            let _ = rfs::fchmod(&output, perm);
            budget.report.bytes += copied;
            budget.report.files += 1;
        }
        FileType::Directory => {
            match rfs::mkdirat(parent, name, Mode::RWXU) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno("mkdir", dst_shown)(e)),
            }
            let dir = rfs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno("open", dst_shown))?;
            budget.report.dirs += 1;
            budget.descend(shown)?;
            copy_dir_contents(src, dir.as_fd(), budget, (shown, dst_shown))?;
            budget.depth -= 1;
            let _ = rfs::fchmod(&dir, perm | Mode::RWXU);
        }
        FileType::Symlink => unreachable!("symlinks are copied by copy_dir_contents / cp"),
        _ => budget.report.skipped.push(shown.to_string()),
    }
    Ok(())
}

/// Copy every entry of directory `src` into directory `dst`.
fn copy_dir_contents(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    budget: &mut Budget,
    (shown, dst_shown): (&str, &str),
) -> Result<(), EngineError> {
    let src_dir = rfs::openat(
        src,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("open", shown))?;
    let mut dir = rfs::Dir::read_from(&src_dir).map_err(errno("read", shown))?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(errno("read", shown))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    // The reader holds an fd of its own: closed before going down a level, so that a
    // tree MAX_CP_DEPTH deep fits in 1024 open files (3 per level).
    drop(dir);
    names.sort();
    for name in names {
        let child_shown = format!("{}/{}", shown.trim_end_matches('/'), name.to_string_lossy());
        let child_dst = format!(
            "{}/{}",
            dst_shown.trim_end_matches('/'),
            name.to_string_lossy()
        );
        let stat = match rfs::statat(&src_dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::NOENT) => continue, // removed while we copy
            Err(e) => return Err(errno("stat", &child_shown)(e)),
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Symlink => {
                budget.entry(&child_shown)?;
                let target = rfs::readlinkat(&src_dir, &name, Vec::new())
                    .map_err(errno("readlink", &child_shown))?;
                match rfs::symlinkat(target.as_c_str(), dst, &name) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        return Err(EngineError::Usage(format!(
                            "{child_dst}: exists; phantom cp does not replace it with a symlink"
                        )))
                    }
                    Err(e) => return Err(errno("symlink", &child_dst)(e)),
                }
                budget.report.symlinks += 1;
            }
            kind @ (FileType::RegularFile | FileType::Directory) => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let child = match rfs::openat(&src_dir, &name, flags, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(errno("open", &child_shown)(e)),
                };
                // Checked on the open fd: what we read is what we checked.
                let opened = FileType::from_raw_mode(
                    rfs::fstat(&child)
                        .map_err(errno("stat", &child_shown))?
                        .st_mode,
                );
                if opened != kind {
                    return Err(EngineError::Usage(format!(
                        "{child_shown}: changed while being copied; copy again when the sandbox is not modifying it"
                    )));
                }
                copy_entry(
                    child.as_fd(),
                    kind,
                    dst,
                    &name,
                    budget,
                    (&child_shown, &child_dst),
                )?;
            }
            _ => budget.report.skipped.push(child_shown),
        }
    }
    Ok(())
}

/// The names in directory `dir` (empty if it cannot be read).
fn dir_names(dir: BorrowedFd<'_>) -> Vec<std::ffi::OsString> {
    let mut names = Vec::new();
    let Ok(fd) = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return names;
    };
    if let Ok(mut entries) = rfs::Dir::read_from(&fd) {
        while let Some(Ok(entry)) = entries.read() {
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(OsStr::from_bytes(n).to_os_string());
            }
        }
    }
    names
}

/// Remove `name` in `parent` (a tree we created, at most [`MAX_CP_DEPTH`] deep),
/// without following symlinks.
fn remove_at(parent: BorrowedFd<'_>, name: &OsStr) {
    if rfs::unlinkat(parent, name, AtFlags::empty()).is_ok() {
        return;
    }
    if let Ok(dir) = rfs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        for n in dir_names(dir.as_fd()) {
            remove_at(dir.as_fd(), &n);
        }
    }
    let _ = rfs::unlinkat(parent, name, AtFlags::REMOVEDIR);
}

#[cfg(test)]
mod tests {
    use super::*;

    use phantom_state::test_util::Scratch;

    /// A workspace directory and its `O_PATH` fd, as the engine hands it out (file
    /// operations need no running sandbox).
    fn with_box(tag: &str) -> (Scratch, OwnedFd, PathBuf) {
        let scratch = Scratch::new(tag);
        let ws = scratch.0.join("sb/workspace");
        std::fs::create_dir_all(&ws).unwrap();
        let fd = rfs::open(
            &ws,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        (scratch, fd, ws)
    }

    #[test]
    fn write_read_and_list_stay_inside_the_workspace() {
        let (scratch, state_fd, ws) = with_box("files-ok");
        write_file(
            &state_fd,
            "box",
            "/workspace/src/main.py",
            b"print(1)\n",
            true,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(ws.join("src/main.py")).unwrap(),
            b"print(1)\n"
        );
        assert_eq!(
            read_file(&state_fd, "box", "/workspace/src/main.py", 100).unwrap(),
            b"print(1)\n"
        );
        let err = read_file(&state_fd, "box", "/workspace/src/main.py", 3).unwrap_err();
        assert!(
            err.to_string().contains("larger than the limit of 3 bytes"),
            "{err}"
        );
        std::os::unix::fs::symlink("/etc/passwd", ws.join("pw")).unwrap();
        let list = list_files(&state_fd, "box", "/workspace").unwrap();
        let names: Vec<_> = list
            .iter()
            .map(|e| (e.name.as_str(), e.kind.as_str()))
            .collect();
        assert_eq!(names, [("pw", "symlink"), ("src", "dir")]);
        assert_eq!(list[0].target.as_deref(), Some("/etc/passwd"));
        // Without `parents`, a missing directory is an error, not created.
        assert!(write_file(&state_fd, "box", "/workspace/none/x", b"", false).is_err());
        assert!(!ws.join("none").exists());
        drop(scratch);
    }

    /// A FIFO at /workspace/fifo, as a sandbox would plant it.
    fn plant_fifo(ws: &Path) {
        rustix::fs::mknodat(
            rfs::CWD,
            ws.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
    }

    /// Regression: writing onto a FIFO the sandbox planted opened it without
    /// O_NONBLOCK and blocked the writer forever (a thread of the HTTP API per PUT).
    #[test]
    fn a_fifo_planted_in_the_workspace_never_blocks_a_write() {
        let (_scratch, state_fd, ws) = with_box("files-fifo");
        plant_fifo(&ws);
        let started = std::time::Instant::now();
        let err = write_file(&state_fd, "box", "/workspace/fifo", b"x", false).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = read_file(&state_fd, "box", "/workspace/fifo", 10).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // An existing regular file is replaced, not appended to.
        std::fs::write(ws.join("f"), b"long old content").unwrap();
        write_file(&state_fd, "box", "/workspace/f", b"new", false).unwrap();
        assert_eq!(std::fs::read(ws.join("f")).unwrap(), b"new");
    }

    /// Regression: `phantom cp HOSTFILE box:/workspace/fifo` opened the destination
    /// without O_NONBLOCK and waited for a reader forever; the reverse copied nothing and
    /// said so only in `skipped`. Both are one clear error now, at once.
    #[test]
    fn a_fifo_planted_in_the_workspace_never_blocks_a_copy_either_way() {
        let (scratch, ws_fd, ws) = with_box("files-cp-fifo");
        plant_fifo(&ws);
        let host = scratch.0.join("host.txt");
        std::fs::write(&host, b"data").unwrap();
        let started = std::time::Instant::now();
        let sandbox = CpEnd::Sandbox {
            name: "box".into(),
            path: "/workspace/fifo".into(),
        };
        let err = cp(
            &CpEnd::Host(host.clone()),
            &sandbox,
            &ws_fd,
            CpLimits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(err.exit_code(), 2, "{err}");
        let back = scratch.0.join("back");
        let err = cp(
            &sandbox,
            &CpEnd::Host(back.clone()),
            &ws_fd,
            CpLimits::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("not a regular file or a directory"),
            "{err}"
        );
        assert!(!back.exists());
        // A host FIFO as the destination of a copy out is refused the same way.
        std::fs::write(ws.join("f"), b"x").unwrap();
        rustix::fs::mknodat(
            rfs::CWD,
            scratch.0.join("host-fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        let from_box = CpEnd::Sandbox {
            name: "box".into(),
            path: "/workspace/f".into(),
        };
        let err = cp(
            &from_box,
            &CpEnd::Host(scratch.0.join("host-fifo")),
            &ws_fd,
            CpLimits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Inside a copied tree a FIFO is skipped and reported, as before.
        std::fs::create_dir(ws.join("tree")).unwrap();
        std::fs::rename(ws.join("fifo"), ws.join("tree/fifo")).unwrap();
        std::fs::write(ws.join("tree/file"), b"y").unwrap();
        let report = cp(
            &CpEnd::Sandbox {
                name: "box".into(),
                path: "/workspace/tree".into(),
            },
            &CpEnd::Host(scratch.0.join("tree-copy")),
            &ws_fd,
            CpLimits::default(),
        )
        .unwrap();
        assert_eq!((report.files, report.skipped.len()), (1, 1), "{report:?}");
    }

    /// Listing `path=null` where `null` is a file answered a 500 ("Not a directory" was
    /// taken for the host's failure); a path the caller got wrong is their error.
    #[test]
    fn listing_a_file_as_a_directory_is_the_callers_error_not_a_500() {
        let (_scratch, state_fd, ws) = with_box("files-notdir");
        std::fs::write(ws.join("null"), b"x").unwrap();
        for path in ["/workspace/null", "null/deeper", "/workspace/null/x"] {
            let err = list_files(&state_fd, "box", path).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{path}: {err}");
            assert_eq!(
                err.to_failure().kind,
                phantom_api::engine::FailureKind::Invalid,
                "{path}: {err}"
            );
        }
        let err = read_file(&state_fd, "box", "/workspace", 10).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }

    #[test]
    fn planted_symlinks_never_lead_file_operations_out_of_the_workspace() {
        let (scratch, state_fd, ws) = with_box("files-escape");
        let outside = scratch.0.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"host secret").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), ws.join("secret")).unwrap();
        std::os::unix::fs::symlink("../../outside", ws.join("rel")).unwrap();
        for path in [
            "/workspace/secret",
            "/workspace/out/secret",
            "/workspace/rel/secret",
            "/workspace/../outside/secret",
        ] {
            let err = read_file(&state_fd, "box", path, 1 << 20)
                .unwrap_err()
                .to_string();
            assert!(err.contains("leaves the workspace"), "{path}: {err}");
        }
        for path in [
            "/workspace/out/new",
            "/workspace/rel/new",
            "/workspace/secret",
        ] {
            assert!(
                write_file(&state_fd, "box", path, b"x", true).is_err(),
                "{path}"
            );
        }
        assert!(list_files(&state_fd, "box", "/workspace/out").is_err());
        assert!(!outside.join("new").exists());
        assert_eq!(
            std::fs::read(outside.join("secret")).unwrap(),
            b"host secret"
        );
        let err = read_file(&state_fd, "box", "/etc/passwd", 10)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is outside the workspace of sandbox `box`"),
            "{err}"
        );
    }

    #[test]
    fn sandbox_paths_are_name_colon_path_and_everything_else_is_host() {
        assert_eq!(
            CpEnd::parse("box:/workspace/a.py"),
            CpEnd::Sandbox {
                name: "box".into(),
                path: "/workspace/a.py".into()
            }
        );
        assert_eq!(CpEnd::parse("./a:b"), CpEnd::Host("./a:b".into()));
        assert_eq!(CpEnd::parse("/tmp/x"), CpEnd::Host("/tmp/x".into()));
        assert_eq!(CpEnd::parse("../x:y"), CpEnd::Host("../x:y".into()));
    }
}
