//! Mounts for building a sandbox's root: tmpfs, overlayfs, binds, proc, devpts,
//! recursive attribute changes (mount_setattr), idmapped mounts and pivot_root.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::{check, cstr, SysError, SysResult};

/// Mount attributes for [`set_attrs`] (the kernel's MOUNT_ATTR_* flags).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, Default)]
pub struct Attrs {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

impl Attrs {
    fn bits(self) -> u64 {
        let mut b = 0;
        if self.read_only {
            b |= 0x1; // MOUNT_ATTR_RDONLY
        }
        if self.nosuid {
            b |= 0x2;
        }
        if self.nodev {
            b |= 0x4;
        }
        if self.noexec {
            b |= 0x8;
        }
        b
    }
}

/// The kernel's `struct mount_attr`.
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const AT_RECURSIVE: u32 = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

fn mount_setattr(dirfd: i32, path: &Path, flags: u32, attr: &MountAttr) -> SysResult<()> {
    let c = cstr(path)?;
    // SAFETY: `c` is NUL-terminated and `attr` is a valid mount_attr of the size
    // passed; both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            c.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret, "mount_setattr", || path.display().to_string()).map(|_| ())
}

/// Make every mount in this (new) mount namespace private, so that nothing mounted
/// afterwards propagates back to the host.
pub fn make_all_private() -> SysResult<()> {
    raw_mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

fn raw_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> SysResult<()> {
    let src = source.map(cstr).transpose()?;
    let tgt = cstr(target)?;
    let fst = fstype.map(|f| std::ffi::CString::new(f).expect("static fs type"));
    let dat = data.map(std::ffi::CString::new).transpose().map_err(|_| {
        SysError::new(
            "mount",
            target.display().to_string(),
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    // SAFETY: every pointer is either null or a NUL-terminated string that outlives
    // the call; mount(2) does not keep them.
    let ret = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            dat.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    };
    check(ret as _, "mount", || target.display().to_string()).map(|_| ())
}

/// Mount a fresh tmpfs. `options` e.g. "size=67108864,mode=1777".
pub fn tmpfs(target: &Path, options: &str, attrs: Attrs) -> SysResult<()> {
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if attrs.read_only {
        flags |= libc::MS_RDONLY;
    }
    if attrs.noexec {
        flags |= libc::MS_NOEXEC;
    }
    raw_mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        flags,
        Some(options),
    )
}

/// Detach the mount at `target` (lazily: open files keep it alive until closed),
/// without following a symlink there.
pub fn detach(target: &Path) -> SysResult<()> {
    rustix::mount::unmount(
        target,
        rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
    )
    .map_err(|e| SysError::new("umount2", target.display().to_string(), e.into()))
}

/// Whether `path` is the root of a mount (its mount id differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(here), Some(Ok(parent))) = (
        std::fs::symlink_metadata(path),
        path.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    here.dev() != parent.dev()
}

/// Mount an overlayfs at `target`: `lower` read-only below, `upper` taking every
/// change, with `work` (an empty directory on the same filesystem as `upper`) for the
/// kernel's scratch files. `userxattr`: the overlay's own metadata goes to `user.*`
/// xattrs, the only ones a user namespace may set. Inside a user namespace this needs
/// Linux 5.11 (5.19 for an idmapped `lower`). The paths may not contain `,`, `:` or
/// `\`, which the option string takes as separators.
pub fn overlay(target: &Path, lower: &Path, upper: &Path, work: &Path) -> SysResult<()> {
    let mut options = String::from("userxattr");
    for (key, path) in [("lowerdir", lower), ("upperdir", upper), ("workdir", work)] {
        let text = path
            .to_str()
            .filter(|t| !t.contains([',', ':', '\\']))
            .ok_or_else(|| {
                SysError::new(
                    "mount overlay",
                    target.display().to_string(),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{key} {} is not usable in overlay options", path.display()),
                    ),
                )
            })?;
        options.push_str(&format!(",{key}={text}"));
    }
    raw_mount(
        Some(Path::new("overlay")),
        target,
        Some("overlay"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&options),
    )
}

/// Recursively bind `source` (a path, e.g. /proc/self/fd/N of an O_PATH fd) onto
/// `target`.
pub fn bind(source: &Path, target: &Path) -> SysResult<()> {
    raw_mount(
        Some(source),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
}

/// Set attributes on the mount at `target` and, when `recursive`, every mount below
/// it. Attributes the kernel locked (e.g. nosuid inherited from the host) stay set.
pub fn set_attrs(target: &Path, attrs: Attrs, recursive: bool) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: attrs.bits(),
        ..Default::default()
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    mount_setattr(libc::AT_FDCWD, target, flags, &attr)
}

/// Mount a procfs for the caller's pid namespace.
pub fn proc(target: &Path) -> SysResult<()> {
    raw_mount(
        Some(Path::new("proc")),
        target,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// Mount a new devpts instance whose ptmx anyone in the sandbox may open.
pub fn devpts(target: &Path) -> SysResult<()> {
    raw_mount(
        Some(Path::new("devpts")),
        target,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
}

/// Make `dir` the root: pivot_root(".", ".") from inside it, then detach the old root
/// stacked on top, so no path leads back to the host's tree.
pub fn pivot_into(dir: &Path) -> SysResult<()> {
    std::env::set_current_dir(dir)
        .map_err(|e| SysError::new("chdir", dir.display().to_string(), e))?;
    rustix::process::pivot_root(".", ".")
        .map_err(|e| SysError::new("pivot_root", dir.display().to_string(), e.into()))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| SysError::new("umount2", "old root", e.into()))?;
    std::env::set_current_dir("/").map_err(|e| SysError::new("chdir", "/", e))
}

/// A detached copy of the mount tree at `path` (open_tree OPEN_TREE_CLONE), ready to
/// be given attributes and attached elsewhere with [`attach`].
pub fn clone_tree(path: &Path) -> SysResult<OwnedFd> {
    clone_mount(path, true)
}

/// A detached copy of the mount at `path`, with the mounts below it when
/// `recursive` (a runtime-spec `rbind`), not otherwise (`bind`).
pub fn clone_mount(path: &Path, recursive: bool) -> SysResult<OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    rustix::mount::open_tree(rustix::fs::CWD, path, flags)
        .map_err(|e| SysError::new("open_tree", path.display().to_string(), e.into()))
}

/// A new, detached mount of a filesystem without a source (sysfs, mqueue, ...)
/// with `attrs` (fsopen, fsconfig, fsmount), ready for [`attach`]. Made for the
/// caller's namespaces: a sysfs shows its network namespace, an mqueue its ipc
/// namespace, wherever the mount is attached afterwards.
pub fn detached_fs(fstype: &str, attrs: Attrs) -> SysResult<OwnedFd> {
    use rustix::mount::{self as m, FsMountFlags, FsOpenFlags, MountAttrFlags};
    let err = |op: &'static str| move |e: rustix::io::Errno| SysError::new(op, fstype, e.into());
    let fs = m::fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen"))?;
    m::fsconfig_create(&fs).map_err(err("fsconfig"))?;
    let flags = MountAttrFlags::from_bits_retain(attrs.bits() as u32);
    m::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, flags).map_err(err("fsmount"))
}

/// Make a detached mount idmapped through `userns` (mount_setattr MOUNT_ATTR_IDMAP):
/// ids on disk are seen mapped up through that user namespace's uid/gid maps.
pub fn set_idmap(mount: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        userns_fd: userns.as_raw_fd() as u64,
        ..Default::default()
    };
    const AT_EMPTY_PATH: u32 = 0x1000;
    mount_setattr(
        mount.as_raw_fd(),
        Path::new(""),
        AT_EMPTY_PATH | AT_RECURSIVE,
        &attr,
    )
}

/// Attach a detached mount (from [`clone_tree`]) at `target`.
pub fn attach(mount: BorrowedFd<'_>, target: &Path) -> SysResult<()> {
    rustix::mount::move_mount(
        mount,
        "",
        rustix::fs::CWD,
        target,
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| SysError::new("move_mount", target.display().to_string(), e.into()))
}

/// Open `path` as an O_PATH handle without following a final symlink, so that it can
/// be bound later through /proc/self/fd even after the host tree is hidden.
pub fn open_path(path: &Path) -> SysResult<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: c is NUL-terminated and outlives the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    check(fd as _, "open", || path.display().to_string())?;
    // SAFETY: open returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open the user namespace of process `pid`.
pub fn open_userns(pid: i32) -> SysResult<OwnedFd> {
    let path = format!("/proc/{pid}/ns/user");
    std::fs::File::open(&path)
        .map(OwnedFd::from)
        .map_err(|e| SysError::new("open", path, e))
}
