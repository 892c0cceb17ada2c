//! Path operations in a sandbox's workspace for front ends that manage files remotely
//! (E2B's filesystem service): stat, make a directory, remove, rename. Every path is
//! resolved beneath the workspace as in [`super::files`] (openat2 `RESOLVE_BENEATH`,
//! no magic links), and nothing here follows a symlink the sandbox planted.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use phantom_api::choice::FileKind;
use phantom_api::FileEntry;

use super::files::{errno, sandbox_side, MAX_CP_DEPTH};
use crate::EngineError;

/// What `stat` says about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub entry: FileEntry,
    /// Last modification, Unix seconds and nanoseconds.
    pub modified: (i64, u32),
    pub uid: u32,
    pub gid: u32,
}

/// The parent directory of `rel` (opened beneath the workspace) and its last
/// component, which must be a plain name.
fn parent_and_leaf(
    workspace: &OwnedFd,
    name: &str,
    path: &str,
) -> Result<(OwnedFd, std::ffi::OsString), EngineError> {
    let (side, rel) = sandbox_side(workspace, name, path)?;
    let leaf = match rel.components().next_back() {
        Some(Component::Normal(leaf)) => leaf.to_os_string(),
        _ => {
            return Err(EngineError::Usage(format!(
                "{path}: name a file or directory inside the workspace, not the workspace itself"
            )))
        }
    };
    let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    let dir = side.open(&parent, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
    Ok((dir, leaf))
}

fn info_at(dir: BorrowedFd<'_>, leaf: &OsStr, path: &str) -> Result<PathInfo, EngineError> {
    let st = rfs::statat(dir, leaf, AtFlags::SYMLINK_NOFOLLOW).map_err(errno("stat", path))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    Ok(PathInfo {
        entry: FileEntry {
            name: leaf.to_string_lossy().into_owned(),
            kind: match kind {
                FileType::RegularFile => FileKind::File,
                FileType::Directory => FileKind::Dir,
                FileType::Symlink => FileKind::Symlink,
                _ => FileKind::Other,
            },
            size: st.st_size.max(0) as u64,
            mode: st.st_mode & 0o7777,
            target: (kind == FileType::Symlink)
                .then(|| rfs::readlinkat(dir, leaf, Vec::new()).ok())
                .flatten()
                .map(|t| t.to_string_lossy().into_owned()),
        },
        modified: (st.st_mtime, st.st_mtime_nsec as u32),
        uid: st.st_uid,
        gid: st.st_gid,
    })
}

/// What is at `path` (a symlink is described, not followed). The workspace itself is
/// `.`.
pub fn stat(workspace: &OwnedFd, name: &str, path: &str) -> Result<PathInfo, EngineError> {
    let (side, rel) = sandbox_side(workspace, name, path)?;
    if rel.as_os_str().is_empty() {
        let root = side.open(
            Path::new(""),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        return info_at(root.as_fd(), OsStr::new("."), path);
    }
    let (dir, leaf) = parent_and_leaf(workspace, name, path)?;
    info_at(dir.as_fd(), &leaf, path)
}

/// Make directory `path` and its missing parents (0755), one component at a time and
/// never through a symlink. Ok(false) when it was already there.
pub fn make_dir(workspace: &OwnedFd, name: &str, path: &str) -> Result<bool, EngineError> {
    let (side, rel) = sandbox_side(workspace, name, path)?;
    let mut dir = side.open(
        Path::new(""),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )?;
    let mut made = false;
    for comp in rel.components() {
        let Component::Normal(part) = comp else {
            return Err(EngineError::Usage(format!(
                "{path}: `..` is not allowed when creating directories"
            )));
        };
        match rfs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
            Ok(()) => made = true,
            Err(Errno::EXIST) => made = false,
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
    Ok(made)
}

/// The bytes used and the size of the filesystem the workspace is on (a root
/// engine's sandbox has a tmpfs of its own there).
pub fn usage(workspace: &OwnedFd) -> Option<(u64, u64)> {
    let st = rfs::fstatvfs(workspace).ok()?;
    let total = st.f_blocks.saturating_mul(st.f_frsize);
    let free = st.f_bfree.saturating_mul(st.f_frsize);
    Some((total.saturating_sub(free), total))
}

/// Remove `path`: a file, a symlink (not what it points to) or a directory with
/// everything in it (at most [`MAX_CP_DEPTH`] levels deep).
pub fn remove(workspace: &OwnedFd, name: &str, path: &str) -> Result<(), EngineError> {
    let (dir, leaf) = parent_and_leaf(workspace, name, path)?;
    remove_at(dir.as_fd(), &leaf, path, 0)
}

fn remove_at(
    dir: BorrowedFd<'_>,
    leaf: &OsStr,
    path: &str,
    depth: usize,
) -> Result<(), EngineError> {
    let st = rfs::statat(dir, leaf, AtFlags::SYMLINK_NOFOLLOW).map_err(errno("stat", path))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rfs::unlinkat(dir, leaf, AtFlags::empty()).map_err(errno("remove", path));
    }
    if depth >= MAX_CP_DEPTH {
        return Err(EngineError::Usage(format!(
            "{path}: nested more than {MAX_CP_DEPTH} levels deep; remove it with a command"
        )));
    }
    let sub = rfs::openat(
        dir,
        leaf,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("open", path))?;
    let mut names = Vec::new();
    let mut entries = rfs::Dir::read_from(&sub).map_err(errno("read", path))?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(errno("read", path))?;
        let raw = entry.file_name().to_bytes();
        if raw != b"." && raw != b".." {
            names.push(OsStr::from_bytes(raw).to_os_string());
        }
    }
    for child in names {
        remove_at(sub.as_fd(), &child, path, depth + 1)?;
    }
    rfs::unlinkat(dir, leaf, AtFlags::REMOVEDIR).map_err(errno("remove", path))
}

/// Rename `from` to `to`, both in the workspace; the destination's directory must
/// exist. Returns what is at `to` afterwards.
pub fn rename(
    workspace: &OwnedFd,
    name: &str,
    from: &str,
    to: &str,
) -> Result<PathInfo, EngineError> {
    let (from_dir, from_leaf) = parent_and_leaf(workspace, name, from)?;
    let (to_dir, to_leaf) = parent_and_leaf(workspace, name, to)?;
    rfs::renameat(&from_dir, &from_leaf, &to_dir, &to_leaf).map_err(errno("rename", from))?;
    info_at(to_dir.as_fd(), &to_leaf, to)
}

/// The entries below directory `path`, `depth` levels down (1: its own entries), each
/// with its path relative to `path`. Symlinks are listed, never followed.
pub fn walk(
    workspace: &OwnedFd,
    name: &str,
    path: &str,
    depth: usize,
) -> Result<Vec<(PathBuf, PathInfo)>, EngineError> {
    let (side, rel) = sandbox_side(workspace, name, path)?;
    let dir = side.open(&rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
    let mut out = Vec::new();
    walk_at(
        dir.as_fd(),
        Path::new(""),
        path,
        depth.clamp(1, MAX_CP_DEPTH),
        &mut out,
    )?;
    Ok(out)
}

fn walk_at(
    dir: BorrowedFd<'_>,
    prefix: &Path,
    path: &str,
    depth: usize,
    out: &mut Vec<(PathBuf, PathInfo)>,
) -> Result<(), EngineError> {
    let mut names = Vec::new();
    let mut entries = rfs::Dir::read_from(dir).map_err(errno("read", path))?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(errno("read", path))?;
        let raw = entry.file_name().to_bytes();
        if raw != b"." && raw != b".." {
            names.push(OsStr::from_bytes(raw).to_os_string());
        }
    }
    names.sort();
    for child in names {
        let Ok(info) = info_at(dir, &child, path) else {
            continue; // removed meanwhile
        };
        let is_dir = info.entry.kind == FileKind::Dir;
        let rel = prefix.join(&child);
        out.push((rel.clone(), info));
        if is_dir && depth > 1 {
            if let Ok(sub) = rfs::openat(
                dir,
                &child,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                walk_at(sub.as_fd(), &rel, path, depth - 1, out)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(tag: &str) -> (PathBuf, OwnedFd) {
        let dir = std::env::temp_dir().join(format!(
            "phantom-fsops-{tag}-{}-{}",
            std::process::id(),
            phantom_state::ids::new_sandbox_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let fd = rfs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        (dir, fd)
    }

    #[test]
    fn make_stat_walk_rename_and_remove_stay_in_the_workspace() {
        let (dir, ws) = workspace("ops");
        assert!(make_dir(&ws, "box", "a/b/c").unwrap());
        assert!(!make_dir(&ws, "box", "/workspace/a/b/c").unwrap());
        std::fs::write(dir.join("a/b/f.txt"), b"hello").unwrap();
        let info = stat(&ws, "box", "a/b/f.txt").unwrap();
        assert_eq!((info.entry.kind, info.entry.size), (FileKind::File, 5));
        let all = walk(&ws, "box", "a", 3).unwrap();
        let names: Vec<String> = all.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(names, ["b", "b/c", "b/f.txt"]);
        assert_eq!(walk(&ws, "box", "a", 1).unwrap().len(), 1);
        rename(&ws, "box", "a/b/f.txt", "a/g.txt").unwrap();
        assert!(dir.join("a/g.txt").is_file());
        remove(&ws, "box", "a").unwrap();
        assert!(!dir.join("a").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinks_are_never_followed_out_of_the_workspace() {
        let (dir, ws) = workspace("links");
        let outside = workspace("outside").0;
        std::fs::write(outside.join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("out")).unwrap();
        // Removing the link removes the link, not what it points to.
        assert_eq!(
            stat(&ws, "box", "out").unwrap().entry.kind,
            FileKind::Symlink
        );
        assert!(make_dir(&ws, "box", "out/x").is_err());
        assert!(stat(&ws, "box", "out/keep").is_err());
        assert!(stat(&ws, "box", "../etc").is_err());
        assert!(rename(&ws, "box", "out/keep", "stolen").is_err());
        remove(&ws, "box", "out").unwrap();
        assert!(outside.join("keep").exists());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
