//! Deliberate attempts at forbidden operations, used by `phantom-probe`.
//!
//! `phantom-probe` runs INSIDE a sandbox and reports what the payload can see and do; it is
//! `#![forbid(unsafe_code)]`, so every raw syscall it needs lives here as a small named
//! function doing ONE deliberate attempt with benign arguments. Each returns
//! `Result<T, Errno>`: the errno number is what tests look at, because it tells a seccomp
//! refusal (`EPERM`, or `ENOSYS` from an allowlist) from a missing capability or a bad
//! argument.
//!
//! The module has four parts:
//!
//! * [`Errno`] — the error every attempt returns;
//! * observations that change nothing ([`process_ids`], [`rlimit`], [`seccomp_mode`],
//!   [`no_new_privs`], [`interface_flags`], ...);
//! * attempts at operations a sandbox must refuse ([`mount_tmpfs`], [`unshare`],
//!   [`bpf_map_create`], [`tiocsti`], [`x32_getpid`], [`socket_vsock`], [`openat2_read`],
//!   [`fchmod`] with a setuid mode, ...). Several of them change the
//!   calling process when they succeed (a new namespace, a keyring, a tracer): callers run
//!   them in a child with [`run_in_child`] so one success cannot skew the next attempt;
//! * process helpers the probe needs for its load tests ([`fork_single_threaded`],
//!   [`wait_child`], [`send_signal`], [`exit_now`]), safe because they refuse to fork a
//!   process that has more than one thread.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// ---------------------------------------------------------------------------------------
// Errno
// ---------------------------------------------------------------------------------------

/// The errno an attempt failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);

    /// The errno of the last failed libc call on this thread.
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// The errno of an `io::Error`, or `EINVAL` for errors that carry none.
    pub fn from_io(err: &std::io::Error) -> Errno {
        Errno(err.raw_os_error().unwrap_or(libc::EINVAL))
    }

    pub fn raw(self) -> i32 {
        self.0
    }

    /// The symbolic name (`"EPERM"`), or `"E?"` for an errno this table does not know.
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::ESRCH => "ESRCH",
            libc::EINTR => "EINTR",
            libc::EIO => "EIO",
            libc::ENXIO => "ENXIO",
            libc::E2BIG => "E2BIG",
            libc::ENOEXEC => "ENOEXEC",
            libc::EBADF => "EBADF",
            libc::ECHILD => "ECHILD",
            libc::EAGAIN => "EAGAIN",
            libc::ENOMEM => "ENOMEM",
            libc::EACCES => "EACCES",
            libc::EFAULT => "EFAULT",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EXDEV => "EXDEV",
            libc::ENODEV => "ENODEV",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::EINVAL => "EINVAL",
            libc::ENFILE => "ENFILE",
            libc::EMFILE => "EMFILE",
            libc::ENOTTY => "ENOTTY",
            libc::ETXTBSY => "ETXTBSY",
            libc::EFBIG => "EFBIG",
            libc::ENOSPC => "ENOSPC",
            libc::ESPIPE => "ESPIPE",
            libc::EROFS => "EROFS",
            libc::EMLINK => "EMLINK",
            libc::EPIPE => "EPIPE",
            libc::ERANGE => "ERANGE",
            libc::ENAMETOOLONG => "ENAMETOOLONG",
            libc::ENOSYS => "ENOSYS",
            libc::ENOTEMPTY => "ENOTEMPTY",
            libc::ELOOP => "ELOOP",
            libc::ENOTSOCK => "ENOTSOCK",
            libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
            libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::EAFNOSUPPORT => "EAFNOSUPPORT",
            libc::ESTALE => "ESTALE",
            libc::EDQUOT => "EDQUOT",
            libc::ENOKEY => "ENOKEY",
            _ => "E?",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl std::error::Error for Errno {}

impl From<std::io::Error> for Errno {
    fn from(err: std::io::Error) -> Errno {
        Errno::from_io(&err)
    }
}

/// `Ok(ret)` for a non-negative return of a libc call, the thread's errno otherwise.
fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Wraps a syscall's return value as an owned file descriptor.
fn owned_fd(ret: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = check(ret)?;
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `fd` was just returned by a successful syscall that creates a new file
    // descriptor; nothing else in this process knows its number, so ownership is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstring(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn cstr(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

// ---------------------------------------------------------------------------------------
// Observations (change nothing)
// ---------------------------------------------------------------------------------------

/// Who and where the calling process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIds {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub pid: i32,
    /// 0 when the parent is outside the caller's pid namespace.
    pub ppid: i32,
    pub sid: Option<i32>,
    pub pgid: Option<i32>,
}

/// Reads the ids of the calling process.
pub fn process_ids() -> ProcessIds {
    use rustix::process as p;
    ProcessIds {
        uid: p::getuid().as_raw(),
        euid: p::geteuid().as_raw(),
        gid: p::getgid().as_raw(),
        egid: p::getegid().as_raw(),
        pid: p::getpid().as_raw_nonzero().get(),
        ppid: p::getppid().map_or(0, |pid| pid.as_raw_nonzero().get()),
        sid: p::getsid(None).ok().map(|pid| pid.as_raw_nonzero().get()),
        pgid: p::getpgid(None).ok().map(|pid| pid.as_raw_nonzero().get()),
    }
}

/// The node name from `uname(2)`, as the UTS namespace shows it.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The resource limits the probe reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Nofile,
    Fsize,
    Core,
    Nproc,
    As,
    Cpu,
}

/// `(soft, hard)`; `None` is `RLIM_INFINITY`.
pub fn rlimit(resource: Resource) -> (Option<u64>, Option<u64>) {
    use rustix::process::Resource as R;
    let resource = match resource {
        Resource::Nofile => R::Nofile,
        Resource::Fsize => R::Fsize,
        Resource::Core => R::Core,
        Resource::Nproc => R::Nproc,
        Resource::As => R::As,
        Resource::Cpu => R::Cpu,
    };
    let limit = rustix::process::getrlimit(resource);
    (limit.current, limit.maximum)
}

/// `prctl(PR_GET_SECCOMP)`: 0 none, 2 filter. (In strict mode 1 the call itself is fatal.)
pub fn seccomp_mode() -> Result<i32, Errno> {
    // SAFETY: PR_GET_SECCOMP takes no pointer argument; the unused arguments are zero.
    let ret = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    check(ret.into()).map(|v| v as i32)
}

/// `prctl(PR_GET_NO_NEW_PRIVS)`: 1 when set.
pub fn no_new_privs() -> Result<i32, Errno> {
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointer argument; the unused arguments are zero.
    let ret = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    check(ret.into()).map(|v| v as i32)
}

/// `struct ifreq` with the `ifr_flags` member of its union; padded to the kernel's 40 bytes.
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The `IFF_*` flags of a network interface (`SIOCGIFFLAGS` on a UDP socket).
/// `IFF_UP` is `0x1`.
pub fn interface_flags(name: &str) -> Result<u32, Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(Errno::EINVAL);
    }
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: socket() takes only integers.
    let sock = owned_fd(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )?;
    // SAFETY: SIOCGIFFLAGS reads a NUL-terminated name from and writes a short into the
    // `struct ifreq` it is given; `req` is a live, writable, correctly sized ifreq.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    check(ret.into())?;
    Ok(u32::from(req.flags as u16))
}

// ---------------------------------------------------------------------------------------
// Attempts (a sandbox must refuse these)
// ---------------------------------------------------------------------------------------

/// `mount("none", target, "tmpfs", 0, NULL)`.
pub fn mount_tmpfs(target: &Path) -> Result<(), Errno> {
    let source = cstr("none")?;
    let fstype = cstr("tmpfs")?;
    let target = cstring(target)?;
    // SAFETY: all three strings are NUL-terminated and outlive the call; `data` is NULL,
    // which mount(2) accepts.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    check(ret.into()).map(drop)
}

/// `fsopen("tmpfs", FSOPEN_CLOEXEC)` — the new mount API, a way around a `mount` filter.
pub fn fsopen_tmpfs() -> Result<OwnedFd, Errno> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    let fstype = cstr("tmpfs")?;
    // SAFETY: fsopen reads one NUL-terminated string, which lives across the call.
    owned_fd(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })
}

/// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: join a new anonymous session keyring.
/// Changes the caller's keyrings when it succeeds.
pub fn keyctl_join_session_keyring() -> Result<i32, Errno> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a NULL name asks for an anonymous keyring; no other pointer is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    check(ret).map(|v| v as i32)
}

/// The `BPF_MAP_CREATE` member of `union bpf_attr`, zero-padded to 128 bytes.
#[repr(C)]
struct BpfMapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    _rest: [u32; 28],
}

/// `bpf(BPF_MAP_CREATE)` for a one-entry array map.
pub fn bpf_map_create() -> Result<OwnedFd, Errno> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = BpfMapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        _rest: [0; 28],
    };
    // SAFETY: the kernel reads `size` bytes from `attr`, which is exactly that large and
    // lives across the call; the fields it does not know are zero, as it requires.
    owned_fd(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const BpfMapCreateAttr,
            std::mem::size_of::<BpfMapCreateAttr>() as libc::c_uint,
        )
    })
}

/// `io_uring_setup(entries, &params)` with zeroed params.
pub fn io_uring_setup(entries: u32) -> Result<OwnedFd, Errno> {
    // struct io_uring_params is 120 bytes: 10 u32 fields and two 40-byte offset blocks.
    let mut params = [0u32; 30];
    // SAFETY: the kernel reads and writes back a 120-byte io_uring_params; `params` is a
    // writable, zeroed buffer of exactly that size.
    owned_fd(unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            entries as libc::c_uint,
            params.as_mut_ptr(),
        )
    })
}

/// `unshare(flags)`. Changes the caller when it succeeds.
pub fn unshare(flags: i32) -> Result<(), Errno> {
    // SAFETY: unshare takes only an integer.
    let ret = unsafe { libc::unshare(flags) };
    check(ret.into()).map(drop)
}

/// `setns(open("/proc/self/ns/net"), CLONE_NEWNET)`: join our own network namespace,
/// which still needs CAP_SYS_ADMIN.
pub fn setns_self_net() -> Result<(), Errno> {
    let ns = fs::File::open("/proc/self/ns/net")?;
    // SAFETY: setns takes an fd we hold open for the duration of the call and an integer.
    let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    check(ret.into()).map(drop)
}

/// `ptrace(PTRACE_TRACEME)`. Makes the parent the caller's tracer when it succeeds.
pub fn ptrace_traceme() -> Result<(), Errno> {
    // SAFETY: PTRACE_TRACEME ignores pid, addr and data; the NULL pointers are not read.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_TRACEME,
            0,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    check(ret).map(drop)
}

/// `socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)` (needs CAP_NET_RAW).
pub fn open_raw_socket() -> Result<OwnedFd, Errno> {
    // SAFETY: socket() takes only integers.
    owned_fd(
        unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        }
        .into(),
    )
}

/// `socket(AF_PACKET, SOCK_RAW, ETH_P_ALL)` (needs CAP_NET_RAW).
pub fn open_packet_socket() -> Result<OwnedFd, Errno> {
    let protocol = i32::from((libc::ETH_P_ALL as u16).to_be());
    // SAFETY: socket() takes only integers.
    owned_fd(
        unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        }
        .into(),
    )
}

/// `socket(AF_VSOCK, SOCK_STREAM)`. vsock is not network-namespaced: on a virtual machine
/// it reaches the hypervisor's services whatever the sandbox's network is.
pub fn socket_vsock() -> Result<OwnedFd, Errno> {
    // SAFETY: socket() takes only integers.
    owned_fd(
        unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )
}

/// `socket(AF_UNIX, SOCK_STREAM)`: the harmless counterpart of [`socket_vsock`], which a
/// sandbox allows.
pub fn socket_unix() -> Result<OwnedFd, Errno> {
    // SAFETY: socket() takes only integers.
    owned_fd(
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )
}

/// `struct open_how` (linux/openat2.h, OPEN_HOW_SIZE_VER0).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(AT_FDCWD, path, {O_RDONLY | O_CLOEXEC})`. Its flags and mode live in a struct
/// a seccomp filter cannot read, so a sandbox answers ENOSYS (libc then uses `openat`).
pub fn openat2_read(path: &Path) -> Result<OwnedFd, Errno> {
    let path = cstring(path)?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: 0,
    };
    // SAFETY: `path` is NUL-terminated and `how` is a live open_how of the size passed;
    // the kernel only reads both during the call.
    owned_fd(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })
}

/// `openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC, mode)` as a raw syscall: what libc falls
/// back to when [`openat2_read`] answers ENOSYS. Without `O_CREAT` or `O_TMPFILE` the
/// kernel ignores `mode` (libc passes 0; a raw caller may leave anything there).
pub fn openat_read(path: &Path, mode: u32) -> Result<OwnedFd, Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and lives across the call; the rest are integers.
    owned_fd(unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
            mode,
        )
    })
}

// Setting a file's mode. A sandbox refuses the setuid and setgid bits (04000, 02000)
// with EPERM on every call that takes a mode, whether it changes an existing file
// (chmod, fchmod, fchmodat, fchmodat2) or creates one (open, openat, creat, mknod,
// mknodat). Each function below is the raw syscall its name says, so that libc cannot
// route it through another call.

/// `chmod(path, mode)` (x86_64 only; other architectures have only `fchmodat`).
#[cfg(target_arch = "x86_64")]
pub fn chmod(path: &Path, mode: u32) -> Result<(), Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and lives across the call; mode is an integer.
    check(unsafe { libc::syscall(libc::SYS_chmod, path.as_ptr(), mode) }).map(drop)
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    // SAFETY: fchmod takes an fd the caller keeps open for the call, and an integer.
    check(unsafe { libc::syscall(libc::SYS_fchmod, fd.as_raw_fd(), mode) }).map(drop)
}

/// `fchmodat(AT_FDCWD, path, mode)` (the syscall has no flags argument).
pub fn fchmodat(path: &Path, mode: u32) -> Result<(), Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and lives across the call; the rest are integers.
    check(unsafe { libc::syscall(libc::SYS_fchmodat, libc::AT_FDCWD, path.as_ptr(), mode) })
        .map(drop)
}

/// `fchmodat2(AT_FDCWD, path, mode, 0)` (Linux 6.6+; ENOSYS before).
pub fn fchmodat2(path: &Path, mode: u32) -> Result<(), Errno> {
    /// The same number on every architecture (asm-generic and x86_64 alike).
    const SYS_FCHMODAT2: libc::c_long = 452;
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and lives across the call; the rest are integers.
    check(unsafe { libc::syscall(SYS_FCHMODAT2, libc::AT_FDCWD, path.as_ptr(), mode, 0) }).map(drop)
}

/// `open(path, O_WRONLY | O_CREAT | O_EXCL, mode)`: creates a new file with `mode`
/// (x86_64 only).
#[cfg(target_arch = "x86_64")]
pub fn open_create(path: &Path, mode: u32) -> Result<OwnedFd, Errno> {
    let path = cstring(path)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    // SAFETY: `path` is NUL-terminated and lives across the call; the rest are integers.
    owned_fd(unsafe { libc::syscall(libc::SYS_open, path.as_ptr(), flags, mode) })
}

/// `openat(AT_FDCWD, path, O_WRONLY | O_CREAT | O_EXCL, mode)`.
pub fn openat_create(path: &Path, mode: u32) -> Result<OwnedFd, Errno> {
    let path = cstring(path)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    // SAFETY: `path` is NUL-terminated and lives across the call; the rest are integers.
    owned_fd(unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, mode) })
}

/// `creat(path, mode)` (x86_64 only).
#[cfg(target_arch = "x86_64")]
pub fn creat(path: &Path, mode: u32) -> Result<OwnedFd, Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and lives across the call; mode is an integer.
    owned_fd(unsafe { libc::syscall(libc::SYS_creat, path.as_ptr(), mode) })
}

/// `mknod(path, S_IFREG | mode, 0)`: a regular file, which needs no capability
/// (x86_64 only).
#[cfg(target_arch = "x86_64")]
pub fn mknod_regular(path: &Path, mode: u32) -> Result<(), Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and lives across the call; the rest are integers.
    check(unsafe { libc::syscall(libc::SYS_mknod, path.as_ptr(), libc::S_IFREG | mode, 0) })
        .map(drop)
}

/// `mknodat(AT_FDCWD, path, S_IFREG | mode, 0)`: a regular file.
pub fn mknodat_regular(path: &Path, mode: u32) -> Result<(), Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and lives across the call; the rest are integers.
    check(unsafe {
        libc::syscall(
            libc::SYS_mknodat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::S_IFREG | mode,
            0,
        )
    })
    .map(drop)
}

/// `personality(persona)`; returns the previous persona. Changes the caller when it
/// succeeds with anything but `0xffffffff` (query).
pub fn personality(persona: u32) -> Result<u32, Errno> {
    // SAFETY: personality takes only an integer.
    let ret = unsafe { libc::personality(persona as libc::c_ulong) };
    check(ret.into()).map(|v| v as u32)
}

/// The first 64 bytes of `struct clone_args` (CLONE_ARGS_SIZE_VER0).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// `clone3({exit_signal: SIGCHLD})`: a plain fork through clone3. The child `_exit`s at
/// once and is reaped here; returns its pid.
pub fn clone3_plain() -> Result<i32, Errno> {
    let args = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
    };
    // SAFETY: `args` is a live clone_args of the size passed. Without CLONE_VM the child
    // runs on a private copy of our memory and does nothing but `_exit`, which is
    // async-signal-safe, so no lock or allocator state from the parent is touched.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let pid = check(ret)? as i32;
    if pid == 0 {
        // SAFETY: in the child; `_exit` ends it without running any parent state.
        unsafe { libc::_exit(0) }
    }
    wait_child(pid).map(|_| pid)
}

/// `clone(flags | SIGCHLD)` for namespace flags only (e.g. `CLONE_NEWUSER`). The child
/// `_exit`s at once and is reaped here; returns its pid. Any flag that shares memory,
/// threads or writes through a pointer is refused with `EINVAL` before the syscall.
///
/// `CLONE_NEWTIME` (`0x80`) is accepted too, although `clone(2)` cannot create a time
/// namespace: the bit lies in the exit-signal byte, so the kernel makes it part of the
/// child's exit signal (`0x91`, not SIGCHLD) and otherwise forks plainly. A filter that
/// only looks at the flags word still sees it, which is what the attempt checks.
pub fn clone_with_flags(flags: i32) -> Result<i32, Errno> {
    const NAMESPACES: i32 = libc::CLONE_NEWTIME
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    if flags & !NAMESPACES != 0 {
        return Err(Errno::EINVAL);
    }
    let flags = libc::c_ulong::from((flags | libc::SIGCHLD) as u32);
    // SAFETY: only namespace flags are set (checked above): no CLONE_VM, so the child
    // gets a private copy of our memory and may reuse our stack (stack argument 0), and
    // no flag makes the kernel write through the NULL tid/tls arguments. The child only
    // calls `_exit`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0usize,
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0usize,
        )
    };
    let pid = check(ret)? as i32;
    if pid == 0 {
        // SAFETY: in the child; `_exit` ends it without running any parent state.
        unsafe { libc::_exit(0) }
    }
    wait_child(pid).map(|_| pid)
}

/// `chroot(path)` (needs CAP_SYS_CHROOT). Changes the caller's root when it succeeds.
pub fn chroot(path: &Path) -> Result<(), Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and lives across the call.
    let ret = unsafe { libc::chroot(path.as_ptr()) };
    check(ret.into()).map(drop)
}

/// The first 72 bytes of `struct perf_event_attr` (PERF_ATTR_SIZE_VER1).
#[repr(C)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit field: disabled (bit 0), ..., exclude_kernel (bit 5), exclude_hv (bit 6).
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// `perf_event_open` of a disabled software task-clock counter on ourselves, user space
/// only (what `perf_event_paranoid` 2 still allows without seccomp).
pub fn perf_event_open_sw() -> Result<OwnedFd, Errno> {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
    const DISABLED: u64 = 1 << 0;
    const EXCLUDE_KERNEL: u64 = 1 << 5;
    const EXCLUDE_HV: u64 = 1 << 6;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    let attr = PerfEventAttr {
        type_: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_SW_TASK_CLOCK,
        sample_period: 0,
        sample_type: 0,
        read_format: 0,
        flags: DISABLED | EXCLUDE_KERNEL | EXCLUDE_HV,
        wakeup_events: 0,
        bp_type: 0,
        config1: 0,
    };
    // SAFETY: the kernel reads `attr.size` bytes from `attr`, which is exactly that large
    // and lives across the call; pid 0 / cpu -1 / group -1 are plain integers.
    owned_fd(unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            0 as libc::pid_t,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    })
}

/// `userfaultfd(O_CLOEXEC | UFFD_USER_MODE_ONLY)` — allowed unprivileged without seccomp.
pub fn userfaultfd() -> Result<OwnedFd, Errno> {
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    // SAFETY: userfaultfd takes only integer flags.
    owned_fd(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY) })
}

/// `finit_module(-1, "", 0)`: the fd is invalid on purpose, so even a kernel that let us
/// load modules would answer `EBADF`; a filter or the capability check answers `EPERM`.
pub fn finit_module_bad_fd() -> Result<(), Errno> {
    let params = cstr("")?;
    // SAFETY: `params` is a NUL-terminated string that lives across the call.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, -1, params.as_ptr(), 0) };
    check(ret).map(drop)
}

/// `syslog(SYSLOG_ACTION_SIZE_BUFFER)`: reads only the kernel log buffer's size.
pub fn syslog_size_buffer() -> Result<i32, Errno> {
    const SYSLOG_ACTION_SIZE_BUFFER: libc::c_int = 10;
    // SAFETY: this action ignores the buffer pointer (NULL) and length.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_syslog,
            SYSLOG_ACTION_SIZE_BUFFER,
            std::ptr::null_mut::<libc::c_char>(),
            0,
        )
    };
    check(ret).map(|v| v as i32)
}

/// `struct file_handle` with an 8-byte `f_handle`.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 8],
}

/// `open_by_handle_at(AT_FDCWD, {all zero}, O_RDONLY)` — the "shocker" escape needs this
/// call; with a zero handle it can open nothing even where it is allowed.
pub fn open_by_handle_at_zero() -> Result<OwnedFd, Errno> {
    let mut handle = FileHandle {
        handle_bytes: 8,
        handle_type: 0,
        f_handle: [0; 8],
    };
    // SAFETY: the kernel reads `handle_bytes` (8) bytes of `f_handle` after the header;
    // `handle` is a live struct of exactly that layout.
    owned_fd(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            libc::AT_FDCWD,
            &mut handle as *mut FileHandle,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    })
}

/// `getpid` through the x32 ABI (syscall number `0x40000000 | 39`). A filter that only
/// checks syscall numbers misses it; a correct one kills the process, so run it with
/// [`run_in_child`]. Returns the pid when the call got through.
#[cfg(target_arch = "x86_64")]
pub fn x32_getpid() -> Result<i32, Errno> {
    const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
    // SAFETY: getpid takes no arguments and touches no memory, under either ABI.
    let ret = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
    check(ret).map(|v| v as i32)
}

/// The x32 ABI exists only on x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn x32_getpid() -> Result<i32, Errno> {
    Err(Errno::ENOSYS)
}

/// `ioctl(fd, TIOCSTI, &byte)`: push a byte into a terminal's input queue.
pub fn tiocsti(fd: BorrowedFd<'_>, byte: u8) -> Result<(), Errno> {
    let byte = byte as libc::c_char;
    // SAFETY: TIOCSTI reads one char through the pointer, which points at a live local.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSTI, &byte) };
    check(ret.into()).map(drop)
}

/// TIOCSTI with bits set above the low 32 bits of the command (`0x1_0000_5412`), through
/// a raw syscall. The kernel truncates the command to 32 bits; a seccomp filter that
/// compares all 64 bits does not (CVE-2019-10063 in flatpak).
#[cfg(target_pointer_width = "64")]
pub fn tiocsti_high_bits(fd: BorrowedFd<'_>, byte: u8) -> Result<(), Errno> {
    const TIOCSTI_HIGH: u64 = 0x1_0000_0000 | libc::TIOCSTI as u32 as u64;
    let byte = byte as libc::c_char;
    // SAFETY: the kernel sees TIOCSTI, which reads one char through the pointer, which
    // points at a live local.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd.as_raw_fd(),
            TIOCSTI_HIGH as libc::c_ulong,
            &byte as *const libc::c_char,
        )
    };
    check(ret).map(drop)
}

/// There are no high bits to set in a 32-bit ioctl command word.
#[cfg(not(target_pointer_width = "64"))]
pub fn tiocsti_high_bits(fd: BorrowedFd<'_>, byte: u8) -> Result<(), Errno> {
    tiocsti(fd, byte)
}

/// `ioctl(fd, TIOCLINUX, &TIOCL_GETSHIFTSTATE)`: a read-only subcode of the ioctl whose
/// copy/paste subcodes inject input like TIOCSTI.
pub fn tioclinux(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    const TIOCL_GETSHIFTSTATE: libc::c_char = 6;
    let mut arg = TIOCL_GETSHIFTSTATE;
    // SAFETY: TIOCLINUX reads its subcode from and may write one byte back to the char
    // it points at, a live local.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCLINUX, &mut arg) };
    check(ret.into()).map(drop)
}

/// `mknod(path, S_IFCHR | 0600, makedev(1, 3))` — a second /dev/null; needs CAP_MKNOD.
pub fn mknod_char_device(path: &Path) -> Result<(), Errno> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and lives across the call; the rest are integers.
    let ret = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    check(ret.into()).map(drop)
}

// ---------------------------------------------------------------------------------------
// Terminals
// ---------------------------------------------------------------------------------------

/// `ioctl(master, TIOCSPTLCK, &0)`: unlock the pty slave (what `unlockpt(3)` does).
pub fn unlockpt(master: BorrowedFd<'_>) -> Result<(), Errno> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points at a live local.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    check(ret.into()).map(drop)
}

/// `ioctl(master, TIOCGPTN)`: the pty's number N, for `/dev/pts/N`.
pub fn pty_number(master: BorrowedFd<'_>) -> Result<u32, Errno> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer, a live local.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    check(ret.into()).map(|_| n)
}

/// `ioctl(fd, TIOCSCTTY, 0)`: make the terminal the caller's controlling terminal (the
/// caller must be a session leader without one).
pub fn tiocsctty(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal), no pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0 as libc::c_int) };
    check(ret.into()).map(drop)
}

/// `setsid()`; returns the new session id.
pub fn setsid() -> Result<i32, Errno> {
    rustix::process::setsid()
        .map(|pid| pid.as_raw_nonzero().get())
        .map_err(|e| Errno(e.raw_os_error()))
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// Which side of a fork the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    Child,
    Parent(i32),
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildFate {
    Exited(i32),
    Signaled(i32),
}

/// How many threads the calling process has, from `/proc/self/task`.
fn thread_count() -> Result<usize, Errno> {
    Ok(fs::read_dir("/proc/self/task")?.count())
}

/// `fork()`, refused with `EINVAL` unless the caller is the only thread of its process — the condition under which the child may go on running ordinary Rust code
/// (no other thread can hold the allocator's or stdio's locks at the moment of fork).
/// Needs `/proc` to count the threads.
pub fn fork_single_threaded() -> Result<Forked, Errno> {
    if thread_count()? != 1 {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the process has exactly one thread (checked just above, and only this
    // thread could have started another since), so the child inherits no lock held by
    // a thread that does not exist in it.
    let pid = unsafe { libc::fork() };
    match check(pid.into())? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as i32)),
    }
}

/// Ends the calling process at once with `code`: no destructors, atexit handlers or stdio
/// flushing (a forked child must not flush its copy of the parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// `waitpid(pid, __WALL)`, retried on `EINTR`. `__WALL` also reaps a child whose exit
/// signal is not SIGCHLD (see [`clone_with_flags`] with `CLONE_NEWTIME`).
pub fn wait_child(pid: i32) -> Result<ChildFate, Errno> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes one int through the pointer, a live local.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if ret >= 0 {
            break;
        }
        let err = Errno::last();
        if err.0 != libc::EINTR {
            return Err(err);
        }
    }
    if libc::WIFSIGNALED(status) {
        Ok(ChildFate::Signaled(libc::WTERMSIG(status)))
    } else {
        Ok(ChildFate::Exited(libc::WEXITSTATUS(status)))
    }
}

/// The exit code [`run_in_child`] uses when the attempt could not report (it panicked).
pub const CHILD_UNREPORTED: i32 = 255;

/// Runs `attempt` in a forked child and returns how the child ended: exit 0 when the
/// attempt succeeded, exit errno when it failed, [`CHILD_UNREPORTED`] when it panicked,
/// or the signal that killed it (e.g. SIGSYS from a seccomp filter). Whatever the attempt
/// changes in the child (namespaces, keyrings, tracer) never reaches the caller.
pub fn run_in_child<T>(attempt: impl FnOnce() -> Result<T, Errno>) -> Result<ChildFate, Errno> {
    match fork_single_threaded()? {
        Forked::Child => {
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(attempt)) {
                Ok(Ok(_)) => 0,
                Ok(Err(errno)) if (1..CHILD_UNREPORTED).contains(&errno.0) => errno.0,
                _ => CHILD_UNREPORTED,
            };
            exit_now(code)
        }
        Forked::Parent(pid) => wait_child(pid),
    }
}

/// `kill(pid, sig)`. With `sig` 0 nothing is delivered and only the permission check
/// runs: the probe's `signal_init` attempt asks that way whether the payload may signal
/// the sandbox's init (Landlock ABI 6 signal scoping says no).
pub fn send_signal(pid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: kill takes only integers.
    let ret = unsafe { libc::kill(pid, sig) };
    check(ret.into()).map(drop)
}

/// Resets `sig` to its default action and sends it to the calling process. Returns only
/// if the signal did not end the process (it is blocked, or its default is to ignore).
pub fn kill_self(sig: i32) -> Result<(), Errno> {
    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
        // SAFETY: SIG_DFL installs no handler code; the previous disposition is dropped.
        let ret = unsafe { libc::signal(sig, libc::SIG_DFL) };
        if ret == libc::SIG_ERR {
            return Err(Errno::last());
        }
    }
    send_signal(rustix::process::getpid().as_raw_nonzero().get(), sig)
}

/// Ignores SIGXFSZ, so that writing past `RLIMIT_FSIZE` fails with `EFBIG` instead of
/// killing the caller.
pub fn ignore_sigxfsz() -> Result<(), Errno> {
    // SAFETY: SIG_IGN installs no handler code; the previous disposition is dropped.
    let ret = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if ret == libc::SIG_ERR {
        Err(Errno::last())
    } else {
        Ok(())
    }
}
