//! Kernel operations an OCI container's setup needs beyond a phantom sandbox's:
//! generic mounts with runtime-spec flags, joining a namespace by file, unshare,
//! user and group ids, the five capability sets, any rlimit, terminals and the
//! console socket, fds moved out of the way of `--preserve-fds`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::{check, cstr, SysError, SysResult};

/// mount(2) with explicit flags (`MS_*`) and data, as a runtime-spec mount names them.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> SysResult<()> {
    let invalid = || {
        SysError::new(
            "mount",
            target.display().to_string(),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL byte in an argument"),
        )
    };
    let src = source
        .map(std::ffi::CString::new)
        .transpose()
        .map_err(|_| invalid())?;
    let tgt = cstr(target)?;
    let fst = fstype
        .map(std::ffi::CString::new)
        .transpose()
        .map_err(|_| invalid())?;
    let dat = data
        .map(std::ffi::CString::new)
        .transpose()
        .map_err(|_| invalid())?;
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call;
    // mount(2) copies what it needs.
    let ret = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags as libc::c_ulong,
            dat.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    };
    check(ret as _, "mount", || target.display().to_string()).map(|_| ())
}

/// Join the namespace behind `fd` (an open /proc/PID/ns/* or bind-mounted ns file);
/// `nstype` is the CLONE_NEW* flag it must be (0: any).
pub fn setns_file(fd: BorrowedFd<'_>, nstype: i32, what: &str) -> SysResult<()> {
    // SAFETY: setns takes an fd we borrow and an integer.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), nstype) };
    check(ret as _, "setns", || what.to_string()).map(|_| ())
}

/// unshare(2) the namespaces in `flags` (CLONE_NEW*).
pub fn unshare(flags: i32) -> SysResult<()> {
    // SAFETY: unshare takes an integer.
    let ret = unsafe { libc::unshare(flags) };
    check(ret as _, "unshare", || format!("{flags:#x}")).map(|_| ())
}

/// Keep the permitted capabilities across a change of uid away from 0
/// (PR_SET_KEEPCAPS).
pub fn set_keep_caps(keep: bool) -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong, 0, 0, 0) };
    check(ret as _, "prctl", || "PR_SET_KEEPCAPS".into()).map(|_| ())
}

/// Become `uid`/`gid` with exactly the supplementary `groups`.
pub fn set_ids(uid: u32, gid: u32, groups: &[u32]) -> SysResult<()> {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: setgroups reads `groups.len()` ids from a live vector; the others take
    // integers.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
            return Err(SysError::last("setgroups", format!("{groups:?}")));
        }
        if libc::setresgid(gid, gid, gid) < 0 {
            return Err(SysError::last("setresgid", gid.to_string()));
        }
        if libc::setresuid(uid, uid, uid) < 0 {
            return Err(SysError::last("setresuid", uid.to_string()));
        }
    }
    Ok(())
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Shrink the bounding set to `keep` (bit n = capability n). Needs CAP_SETPCAP, so it
/// comes before the uid change and capset.
pub fn set_bounding(keep: u64) -> SysResult<()> {
    for cap in 0..=last_cap() {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(SysError::new(
                "prctl",
                format!("PR_CAPBSET_DROP {cap}"),
                err,
            ));
        }
    }
    Ok(())
}

/// Set the effective, permitted and inheritable sets (capset, v3), then raise each
/// capability of `ambient` (which must be permitted and inheritable by then).
pub fn set_capabilities(
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
) -> SysResult<()> {
    crate::caps::capset(effective, permitted, inheritable)?;
    crate::caps::clear_ambient()?;
    for cap in 0..64u32 {
        if ambient & (1u64 << cap) == 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        check(ret as _, "prctl", || format!("PR_CAP_AMBIENT_RAISE {cap}"))?;
    }
    Ok(())
}

/// setrlimit(2) of any resource (`RLIMIT_*` number).
pub fn set_rlimit(resource: u32, soft: u64, hard: u64) -> SysResult<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: lim is a valid rlimit that outlives the call.
    let ret = unsafe { libc::setrlimit(resource as _, &lim) };
    check(ret as _, "setrlimit", || {
        format!("{resource} soft={soft} hard={hard}")
    })
    .map(|_| ())
}

/// Set the NIS domain name of the UTS namespace.
pub fn setdomainname(name: &str) -> SysResult<()> {
    rustix::system::setdomainname(name.as_bytes())
        .map_err(|e| SysError::new("setdomainname", name, e.into()))
}

/// Set the file mode creation mask.
pub fn umask(mask: u32) {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
}

/// A close-on-exec duplicate of `fd` numbered at least `min` (F_DUPFD_CLOEXEC), so
/// that it stays out of the range of fds handed to the container.
pub fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: fcntl on a borrowed open fd; the result is a new fd we own.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    check(ret as _, "fcntl", || {
        format!("F_DUPFD_CLOEXEC {}", fd.as_raw_fd())
    })?;
    // SAFETY: fcntl returned a new open fd owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// Clear close-on-exec on the fds `first..first+count` (the `--preserve-fds` range),
/// ignoring those that are not open.
pub fn keep_across_exec(first: RawFd, count: u32) {
    for fd in first..first + count as RawFd {
        // SAFETY: fcntl with integer arguments; a closed fd only gives EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
}

/// Whether process `pid` exists (signal 0).
pub fn process_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing.
    let ret = unsafe { libc::kill(pid, 0) };
    ret == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A new pseudo-terminal of the devpts instance whose `ptmx` is at `ptmx` (e.g. a
/// container's `dev/pts/ptmx`): the master and the slave.
pub fn open_pty_at(ptmx: &Path) -> SysResult<(OwnedFd, OwnedFd)> {
    let c = cstr(ptmx)?;
    // SAFETY: c is NUL-terminated and outlives the call; the result is a new fd.
    let master = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    check(master as _, "open", || ptmx.display().to_string())?;
    // SAFETY: open returned a new fd owned by no one else.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a live local.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    check(ret as _, "ioctl", || "TIOCSPTLCK".into())?;
    // SAFETY: TIOCGPTPEER opens the slave of this master and returns a new fd.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    check(slave as _, "ioctl", || "TIOCGPTPEER".into())?;
    // SAFETY: the ioctl returned a new open fd owned by no one else.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave))
}

/// Make the terminal `tty` the calling process's controlling terminal (the caller
/// leads a new session) and its stdin, stdout and stderr.
pub fn set_controlling_terminal(tty: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    let ret = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
    check(ret as _, "ioctl", || "TIOCSCTTY".into())?;
    for target in 0..3 {
        crate::process::dup_onto(tty, target)?;
    }
    Ok(())
}

/// Set a terminal's size (TIOCSWINSZ).
pub fn set_window_size(tty: BorrowedFd<'_>, rows: u16, cols: u16) -> SysResult<()> {
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(tty, size)
        .map_err(|e| SysError::new("ioctl", "TIOCSWINSZ", e.into()))
}

/// Connect to the SOCK_STREAM unix socket at `path` (runc's `--console-socket`).
pub fn connect_stream(path: &Path) -> SysResult<OwnedFd> {
    use rustix::net::{
        connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
    };
    let sock = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| SysError::new("socket", "AF_UNIX SOCK_STREAM", e.into()))?;
    let addr = SocketAddrUnix::new(path)
        .map_err(|e| SysError::new("connect", path.display().to_string(), e.into()))?;
    connect(&sock, &addr)
        .map_err(|e| SysError::new("connect", path.display().to_string(), e.into()))?;
    Ok(sock)
}

/// Create the character device `path` (major:minor) with `mode`, whatever the umask.
pub fn mknod_char(path: &Path, major: u32, minor: u32, mode: u32) -> SysResult<()> {
    let c = cstr(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: c is NUL-terminated and outlives the call; mknod takes integers else.
    let ret = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | mode, dev) };
    check(ret as _, "mknod", || path.display().to_string())?;
    // SAFETY: as above, chmod with a path and an integer.
    let ret = unsafe { libc::chmod(c.as_ptr(), mode) };
    check(ret as _, "chmod", || path.display().to_string()).map(|_| ())
}

/// Join a new anonymous session keyring named `name` (keyctl
/// KEYCTL_JOIN_SESSION_KEYRING), so that the caller and its children no longer share
/// their parent's session keyring. `Ok(false)` when the kernel has no keyrings.
pub fn join_new_session_keyring(name: &str) -> SysResult<bool> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    let c = std::ffi::CString::new(name)
        .map_err(|_| SysError::new("keyctl", name, std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: keyctl reads the NUL-terminated name, which outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, c.as_ptr()) };
    if ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        return Ok(false);
    }
    check(ret, "keyctl", || {
        format!("KEYCTL_JOIN_SESSION_KEYRING {name}")
    })
    .map(|_| true)
}

/// Whether AppArmor is enabled on this host.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

/// Confine the next execve of the calling process to AppArmor profile `profile`
/// (written to /proc/self/attr/apparmor/exec, or /proc/self/attr/exec on kernels
/// without the per-LSM directory). Needs the /proc of the caller's pid namespace.
pub fn apparmor_exec_profile(profile: &str) -> SysResult<()> {
    let text = format!("exec {profile}");
    let lsm = Path::new("/proc/self/attr/apparmor/exec");
    let path = if lsm.exists() {
        lsm
    } else {
        Path::new("/proc/self/attr/exec")
    };
    std::fs::write(path, text).map_err(|e| SysError::new("write", path.display().to_string(), e))
}

/// chroot(2) into `path` (with `--no-pivot`, after moving the rootfs onto /).
pub fn chroot(path: &Path) -> SysResult<()> {
    rustix::process::chroot(path)
        .map_err(|e| SysError::new("chroot", path.display().to_string(), e.into()))
}

/// umount2(2) `target` with MNT_DETACH.
pub fn unmount_detach(target: &Path) -> SysResult<()> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| SysError::new("umount2", target.display().to_string(), e.into()))
}

/// The caller's pid as the kernel sees it in `pid`'s namespace is what /proc shows;
/// this returns our parent's pid (getppid).
pub fn parent_pid() -> i32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

/// Make sure stdio survive execve (clear close-on-exec on 0, 1, 2).
pub fn stdio_across_exec() {
    keep_across_exec(0, 3);
}

/// A detached overlay mount (fsopen, fsconfig, fsmount) of `options` (`(key,
/// None)` is a flag), created with the filesystem ids `uid`/`gid`. overlayfs does
/// its upper-layer work (the work directory, copy-up) with its creator's
/// credentials: on idmapped layers those ids must be mapped, which host root's are
/// not. The caller's capabilities are kept (setfsuid away from 0 drops the
/// filesystem ones from the effective set; they are raised again), and its ids and
/// capabilities are restored before this returns.
pub fn overlay_as(uid: u32, gid: u32, options: &[(String, Option<String>)]) -> SysResult<OwnedFd> {
    use rustix::mount::{self as m, FsMountFlags, FsOpenFlags, MountAttrFlags};
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .map_err(|e| SysError::new("read", "/proc/thread-self/status", e))?;
    let caps = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let (effective, permitted, inheritable) = (caps("CapEff:"), caps("CapPrm:"), caps("CapInh:"));
    let err = |op: &'static str, what: &str| {
        let what = what.to_string();
        move |e: rustix::io::Errno| SysError::new(op, what, e.into())
    };
    // SAFETY: setfsgid/setfsuid take integers and change this thread's filesystem
    // ids only; they return the previous ones, restored below.
    let (old_gid, old_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
    let made = (|| -> SysResult<OwnedFd> {
        crate::caps::capset(permitted, permitted, inheritable)?;
        let fs =
            m::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen", "overlay"))?;
        for (key, value) in options {
            match value {
                Some(v) => m::fsconfig_set_string(&fs, key.as_str(), v.as_str())
                    .map_err(err("fsconfig", &format!("overlay {key}={v}")))?,
                None => m::fsconfig_set_flag(&fs, key.as_str())
                    .map_err(err("fsconfig", &format!("overlay {key}")))?,
            }
        }
        // The superblock, and with it the creator's credentials, is made here.
        m::fsconfig_create(&fs).map_err(err("fsconfig", "overlay create"))?;
        Ok(fs)
    })();
    // SAFETY: as above, back to the previous filesystem ids.
    unsafe {
        libc::setfsuid(old_uid as u32);
        libc::setfsgid(old_gid as u32);
    }
    let restored = crate::caps::capset(effective, permitted, inheritable);
    let fs = made?;
    restored?;
    m::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(err("fsmount", "overlay"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dup_at_least_lands_at_or_above_the_floor() {
        let (a, _b) = crate::process::pipe().unwrap();
        let d = dup_at_least(a.as_fd_borrow(), 200).unwrap();
        assert!(d.as_raw_fd() >= 200);
    }

    trait Borrow {
        fn as_fd_borrow(&self) -> BorrowedFd<'_>;
    }
    impl Borrow for OwnedFd {
        fn as_fd_borrow(&self) -> BorrowedFd<'_> {
            std::os::fd::AsFd::as_fd(self)
        }
    }
}
