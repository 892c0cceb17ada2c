//! Processes: clone3 into new namespaces, waiting with resource usage, signals,
//! execve and the per-process settings applied just before it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::{check, SysError, SysResult};

/// Namespaces a child can be cloned into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub user: bool,
    pub pid: bool,
    pub mount: bool,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub cgroup: bool,
}

impl Namespaces {
    /// Every namespace phantom uses for a sandbox.
    pub fn all() -> Self {
        Namespaces {
            user: true,
            pid: true,
            mount: true,
            net: true,
            ipc: true,
            uts: true,
            cgroup: true,
        }
    }

    fn clone_flags(self) -> u64 {
        let mut f = 0u64;
        for (on, flag) in [
            (self.user, libc::CLONE_NEWUSER),
            (self.pid, libc::CLONE_NEWPID),
            (self.mount, libc::CLONE_NEWNS),
            (self.net, libc::CLONE_NEWNET),
            (self.ipc, libc::CLONE_NEWIPC),
            (self.uts, libc::CLONE_NEWUTS),
            (self.cgroup, libc::CLONE_NEWCGROUP),
        ] {
            if on {
                f |= flag as u64;
            }
        }
        f
    }
}

/// What [`clone_child`] returns in each process.
#[derive(Debug)]
pub enum Forked {
    /// In the parent: the child's pid and a pidfd for it.
    Parent { pid: i32, pidfd: OwnedFd },
    /// In the child.
    Child,
}

/// Number of threads of the calling process.
pub fn thread_count() -> SysResult<u64> {
    // procfs reports 2 + the number of threads as the link count of /proc/self/task.
    let meta = std::fs::metadata("/proc/self/task")
        .map_err(|e| SysError::new("stat", "/proc/self/task", e))?;
    use std::os::unix::fs::MetadataExt;
    Ok(meta.nlink().saturating_sub(2))
}

/// The `struct clone_args` of clone3(2), as the kernel lays it out (version 2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Fork the calling process with clone3, into the given new namespaces, getting a
/// pidfd for the child. `cgroup`: a cgroup v2 directory fd to start the child in
/// (CLONE_INTO_CGROUP). Refuses to run in a multi-threaded process: only the calling
/// thread would exist in the child, with other threads' locks held forever.
pub fn clone_child(ns: Namespaces, cgroup: Option<BorrowedFd<'_>>) -> SysResult<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(SysError::new(
            "clone3",
            format!("{threads} threads"),
            std::io::Error::other("refusing to fork a multi-threaded process"),
        ));
    }
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: ns.clone_flags() | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(cg) = cgroup {
        args.flags |= 0x2_0000_0000; // CLONE_INTO_CGROUP
        args.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a fully initialised clone_args of the size passed; stack = 0
    // makes clone3 behave like fork (the child continues on a copy of this stack).
    // The process is single-threaded (checked above), so no lock can be held by a
    // thread that does not exist in the child. `pidfd` outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let ret = check(ret, "clone3", || format!("flags={:#x}", args.flags))?;
    if ret == 0 {
        return Ok(Forked::Child);
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new, owned pidfd in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Forked::Parent {
        pid: ret as i32,
        pidfd,
    })
}

/// Fork the calling process with CLONE_PARENT, into the new namespaces `ns`: the
/// child is a child of OUR parent, which can wait for it, and it is born in the
/// namespaces the caller joined with [`setns`] (a process cannot move itself into a
/// pid namespace; its children can be born there). Returns the child's pid (as the
/// caller's pid namespace sees it) in the caller, `None` in the child.
///
/// The caller must be single-threaded: it is meant for a child fresh from
/// [`clone_child`] (which checked its parent), and after setns the thread count
/// cannot be read here (/proc is the joined namespace's).
pub fn fork_sibling(ns: Namespaces) -> SysResult<Option<i32>> {
    let mut args = CloneArgs {
        flags: libc::CLONE_PARENT as u64 | ns.clone_flags(),
        // clone3 refuses an exit signal with CLONE_PARENT: the child inherits the
        // caller's (SIGCHLD for a child of clone_child), so the shared parent's plain
        // wait4 sees it.
        exit_signal: 0,
        ..Default::default()
    };
    // SAFETY: as in clone_child: a fully initialised clone_args, stack = 0 (fork-like),
    // single-threaded caller (this function's contract).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let ret = check(ret, "clone3", || {
        format!("CLONE_PARENT, flags={:#x}", args.flags)
    })?;
    Ok((ret != 0).then_some(ret as i32))
}

/// A pidfd for process `pid` (pidfd_open). It keeps naming that process: once it
/// exits, the pid may be reused but the pidfd never refers to the new process.
pub fn pidfd_open(pid: i32) -> SysResult<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new fd that we own.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    let fd = check(ret, "pidfd_open", || pid.to_string())?;
    // SAFETY: on success the return value is a new, open fd owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Join the namespaces `ns` of the process behind `pidfd`, all at once (setns with a
/// pidfd, Linux 5.8+). The pid namespace applies to the caller's children only.
pub fn setns(pidfd: BorrowedFd<'_>, ns: Namespaces) -> SysResult<()> {
    let flags = ns.clone_flags() as libc::c_int;
    // SAFETY: setns takes an fd we borrow and integer flags.
    let ret = unsafe { libc::setns(pidfd.as_raw_fd(), flags) };
    check(ret as _, "setns", || format!("pidfd, flags={flags:#x}")).map(|_| ())
}

/// The namespace files of the calling process, in the order [`join_namespaces`]
/// joins them (the user namespace first: it gives the capabilities the others need).
pub const NAMESPACE_FILES: [&str; 7] = ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];

/// Open `/proc/self/ns/<name>` for each of [`NAMESPACE_FILES`].
pub fn open_own_namespaces() -> SysResult<Vec<OwnedFd>> {
    NAMESPACE_FILES
        .iter()
        .map(|name| {
            let path = format!("/proc/self/ns/{name}");
            std::fs::File::open(&path)
                .map(OwnedFd::from)
                .map_err(|e| SysError::new("open", path, e))
        })
        .collect()
}

/// Join the namespaces behind `fds` (from [`open_own_namespaces`] of another
/// process, in that order) with setns. The pid namespace applies to the caller's
/// children only.
pub fn join_namespaces(fds: &[OwnedFd]) -> SysResult<()> {
    for (fd, name) in fds.iter().zip(NAMESPACE_FILES) {
        // SAFETY: setns takes an fd we borrow and an integer (0: any namespace type).
        let ret = unsafe { libc::setns(fd.as_raw_fd(), 0) };
        check(ret as _, "setns", || name.to_string())?;
    }
    Ok(())
}

/// When process `pid` started, in clock ticks after boot (field 22 of
/// /proc/PID/stat). A pid and its start time name one process for the life of the
/// host: a recorded pair tells a live process from a reused pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count fields
    // from the last `)`; field 3 is the first after it.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Resource usage of a waited-for process and its waited-for descendants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub user: Duration,
    pub sys: Duration,
    pub max_rss_kb: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    fn from_raw(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        }
    }

    /// Shell convention: the exit code, or 128+N for signal N.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    /// The signal that ended the process, if one did.
    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Signaled(s) => Some(s),
            ExitStatus::Exited(_) => None,
        }
    }
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// wait4(2) for `pid` (or any child with -1), blocking unless `nohang`.
/// Returns None with `nohang` when nothing has exited.
pub fn wait4(pid: i32, nohang: bool) -> SysResult<Option<(i32, ExitStatus, Usage)>> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and ru are valid for writes for the duration of the call.
        let ret = unsafe {
            libc::wait4(
                pid,
                &mut status,
                if nohang { libc::WNOHANG } else { 0 } | libc::__WALL,
                &mut ru,
            )
        };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(SysError::new("wait4", pid.to_string(), err));
        }
        if ret == 0 {
            return Ok(None);
        }
        return Ok(Some((
            ret,
            ExitStatus::from_raw(status),
            Usage {
                user: tv(ru.ru_utime),
                sys: tv(ru.ru_stime),
                max_rss_kb: ru.ru_maxrss.max(0) as u64,
            },
        )));
    }
}

/// This process's own rusage (its CPU time and peak memory so far), for a process
/// that runs its payload itself (mode wasm) rather than waiting for one.
pub fn own_usage() -> Usage {
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is valid for writes for the duration of the call; RUSAGE_SELF cannot
    // fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    Usage {
        user: tv(ru.ru_utime),
        sys: tv(ru.ru_stime),
        max_rss_kb: ru.ru_maxrss.max(0) as u64,
    }
}

/// Send `signal` to the process behind `pidfd`.
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: i32) -> SysResult<()> {
    // SAFETY: plain syscall on a borrowed, open fd; null siginfo is allowed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret, "pidfd_send_signal", || format!("signal {signal}")).map(|_| ())
}

/// kill(2). Negative `pid` signals a process group; -1 every process we may signal.
pub fn kill(pid: i32, signal: i32) -> SysResult<()> {
    // SAFETY: kill takes no pointers.
    let ret = unsafe { libc::kill(pid, signal) };
    check(ret as _, "kill", || format!("{pid}, signal {signal}")).map(|_| ())
}

/// Ask for `signal` when the parent (the thread that forked us) dies (survives exec,
/// cleared by fork).
pub fn set_parent_death_signal(signal: i32) -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) };
    check(ret as _, "prctl", || format!("PR_SET_PDEATHSIG {signal}")).map(|_| ())
}

/// Ask for SIGKILL when the parent dies (survives exec, cleared by fork).
pub fn set_parent_death_signal_kill() -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(ret as _, "prctl", || "PR_SET_PDEATHSIG".into()).map(|_| ())
}

/// Name the calling thread (shown by `ps`), e.g. `phantom:init`.
pub fn set_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: buf is NUL-terminated and 16 bytes long as PR_SET_NAME requires. A
    // failure only affects the name shown by ps, so it is ignored.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Start a new session (no controlling terminal).
pub fn setsid() -> SysResult<()> {
    // SAFETY: no arguments.
    let ret = unsafe { libc::setsid() };
    check(ret as _, "setsid", String::new).map(|_| ())
}

/// Set no_new_privs: execve can never grant privileges again.
pub fn set_no_new_privs() -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(ret as _, "prctl", || "PR_SET_NO_NEW_PRIVS".into()).map(|_| ())
}

/// Resources settable with [`set_rlimit`].
#[derive(Debug, Clone, Copy)]
pub enum Rlimit {
    NoFile,
    FileSize,
    Core,
    NProc,
    Data,
}

/// setrlimit(2) with soft = hard = `value`.
pub fn set_rlimit(which: Rlimit, value: u64) -> SysResult<()> {
    let res = match which {
        Rlimit::NoFile => libc::RLIMIT_NOFILE,
        Rlimit::FileSize => libc::RLIMIT_FSIZE,
        Rlimit::Core => libc::RLIMIT_CORE,
        Rlimit::NProc => libc::RLIMIT_NPROC,
        Rlimit::Data => libc::RLIMIT_DATA,
    };
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: lim is a valid rlimit that outlives the call.
    let ret = unsafe { libc::setrlimit(res, &lim) };
    check(ret as _, "setrlimit", || format!("{which:?}={value}")).map(|_| ())
}

/// Mark every fd from `first` up close-on-exec (close_range with CLOSE_RANGE_CLOEXEC),
/// so that nothing but the fds below `first` survives execve.
pub fn cloexec_from(first: u32) -> SysResult<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range takes integers; marking fds cloexec invalidates nothing.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    check(ret, "close_range", || format!("{first}..")).map(|_| ())
}

/// dup2(2) `fd` onto `target` (0, 1 or 2), clearing close-on-exec on the copy.
pub fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> SysResult<()> {
    if fd.as_raw_fd() == target {
        // dup2 onto itself would keep CLOEXEC; clear it explicitly.
        // SAFETY: fcntl on an open fd with integer arguments.
        let ret = unsafe { libc::fcntl(target, libc::F_SETFD, 0) };
        return check(ret as _, "fcntl", || format!("F_SETFD {target}")).map(|_| ());
    }
    // SAFETY: `fd` is open (borrowed); dup2 replaces `target` atomically. The caller
    // owns stdio in this process, so nobody else holds `target` as an OwnedFd.
    let ret = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    check(ret as _, "dup2", || {
        format!("{} -> {target}", fd.as_raw_fd())
    })
    .map(|_| ())
}

/// Replace the process image. Returns only on failure.
pub fn execve(path: &CString, argv: &[CString], envp: &[CString]) -> SysError {
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: path, argv and envp are NUL-terminated strings in NULL-terminated arrays,
    // all borrowed from values that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    SysError::last("execve", path.to_string_lossy().into_owned())
}

/// Leave the process at once, without running destructors or atexit handlers
/// (used in forked children, whose parent owns the shared state).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Set the UTS hostname.
pub fn sethostname(name: &str) -> SysResult<()> {
    rustix::system::sethostname(name.as_bytes())
        .map_err(|e| SysError::new("sethostname", name, e.into()))
}

/// Detach into a new cgroup namespace rooted at the current cgroup.
pub fn unshare_cgroup_namespace() -> SysResult<()> {
    // SAFETY: unshare takes an integer flag set.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWCGROUP) };
    check(ret as _, "unshare", || "CLONE_NEWCGROUP".into()).map(|_| ())
}

/// Move into a new network namespace (only `lo`, down).
pub fn unshare_network_namespace() -> SysResult<()> {
    // SAFETY: unshare takes an integer flag set.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    check(ret as _, "unshare", || "CLONE_NEWNET".into()).map(|_| ())
}

/// Enter the network namespace `fd` refers to (a `/proc/PID/ns/net` handle).
pub fn enter_network_namespace(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: setns takes an fd we borrow and an integer flag.
    let ret = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    check(ret as _, "setns", || "CLONE_NEWNET".into()).map(|_| ())
}

/// Real uid and gid of the caller.
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Effective uid of the caller.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The calling process's pid.
pub fn getpid() -> i32 {
    std::process::id() as i32
}

/// Signals that phantom's processes block and read synchronously (via signalfd in
/// the front end, sigtimedwait in the sandbox init).
pub const FORWARDED_SIGNALS: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// SIGPIPE's disposition: `default` — a write to a closed pipe ends the process
/// silently, as `ls | head -1` expects of a command-line tool; else ignored, so the
/// write fails with EPIPE (what a server, which must outlive its clients, wants).
pub fn set_sigpipe_default(default: bool) {
    let action = if default {
        libc::SIG_DFL
    } else {
        libc::SIG_IGN
    };
    // SAFETY: SIG_DFL and SIG_IGN are valid dispositions for SIGPIPE; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, action) };
}

/// A signal's name as `kill -l` spells it ("SIGTERM"), or "signal N".
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; signal numbers are valid constants.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Block `signals` for the calling thread (they stay pending until read).
pub fn block_signals(signals: &[i32]) -> SysResult<()> {
    let set = sigset(signals);
    // SAFETY: set is valid; old set not requested.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(SysError::new(
            "sigprocmask",
            "block",
            std::io::Error::from_raw_os_error(ret),
        ));
    }
    Ok(())
}

/// Unblock every signal and reset the listed ones to their default action (done in
/// the payload before execve, which keeps the mask but resets handlers).
pub fn reset_signals(signals: &[i32]) -> SysResult<()> {
    for &s in signals {
        // SAFETY: SIG_DFL is always a valid disposition.
        unsafe { libc::signal(s, libc::SIG_DFL) };
    }
    let set = sigset(&[]);
    // SAFETY: set is a valid empty set.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(SysError::new(
            "sigprocmask",
            "setmask",
            std::io::Error::from_raw_os_error(ret),
        ));
    }
    Ok(())
}

/// A signalfd reading the given (blocked) signals.
pub fn signalfd(signals: &[i32]) -> SysResult<OwnedFd> {
    let set = sigset(signals);
    // SAFETY: set is valid; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    check(fd as _, "signalfd", String::new)?;
    // SAFETY: signalfd returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Read one pending signal number from a signalfd, if any.
pub fn read_signalfd(fd: BorrowedFd<'_>) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: info is valid for `size` bytes of writes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            &mut info as *mut _ as *mut libc::c_void,
            size,
        )
    };
    if n as usize == size {
        Some(info.ssi_signo as i32)
    } else {
        None
    }
}

/// Wait up to `timeout` for one of `signals` (which must be blocked). None on timeout.
pub fn wait_signal(signals: &[i32], timeout: Option<Duration>) -> Option<i32> {
    let set = sigset(signals);
    loop {
        let ret = match timeout {
            None => {
                // SAFETY: set is valid; info not requested.
                unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) }
            }
            Some(t) => {
                let ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: t.subsec_nanos() as libc::c_long,
                };
                // SAFETY: set and ts are valid for the call.
                unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) }
            }
        };
        if ret > 0 {
            return Some(ret);
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

/// Create a pipe whose ends are both close-on-exec.
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| SysError::new("pipe2", "", e.into()))
}

/// Make the calling process non-dumpable: processes without CAP_SYS_PTRACE in its
/// user namespace's parent can no longer read its /proc/PID/{environ,mem,...}.
pub fn set_non_dumpable() -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    check(ret as _, "prctl", || "PR_SET_DUMPABLE 0".into()).map(|_| ())
}

/// Overwrite the calling process's initial argument and environment strings (what
/// /proc/PID/cmdline and /proc/PID/environ show) with `name` and zeros.
///
/// A forked child (the sandbox init) shares its parent's command line and host
/// environment, which the sandbox must not see. Call only in a process that will not
/// read its arguments or environment again (they are parsed and copied before fork).
pub fn scrub_cmdline_and_environ(name: &str) -> SysResult<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| SysError::new("read", "/proc/self/stat", e))?;
    // Fields after the `)` closing the command name start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
    let (arg_start, arg_end, env_start, env_end) = (field(48), field(49), field(50), field(51));
    let valid = |s: u64, e: u64| s != 0 && e > s && e - s < (1 << 24);
    if !valid(arg_start, arg_end) {
        return Err(SysError::new(
            "scrub",
            "cmdline",
            std::io::Error::other("no argument area in /proc/self/stat"),
        ));
    }
    // SAFETY: [arg_start, arg_end) and [env_start, env_end) are the kernel's bounds of
    // this process's initial argument and environment strings, which live in its own
    // writable stack mapping. The caller guarantees nothing reads them afterwards
    // (arguments were parsed into owned values and the environment copied before the
    // fork that made this process), so overwriting them breaks no reference.
    unsafe {
        let args =
            std::slice::from_raw_parts_mut(arg_start as *mut u8, (arg_end - arg_start) as usize);
        args.fill(0);
        let n = name.len().min(args.len().saturating_sub(1));
        args[..n].copy_from_slice(&name.as_bytes()[..n]);
        if valid(env_start, env_end) {
            std::slice::from_raw_parts_mut(env_start as *mut u8, (env_end - env_start) as usize)
                .fill(0);
        }
    }
    Ok(())
}

/// Become a child subreaper: orphaned descendants are re-parented to the caller
/// instead of the host's init, so that they can be found and killed (direct mode has
/// no pid namespace to do that).
pub fn set_child_subreaper() -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    check(ret as _, "prctl", || "PR_SET_CHILD_SUBREAPER".into()).map(|_| ())
}

/// Every descendant of process `pid` (children of all its threads, recursively), from
/// /proc/PID/task/TID/children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                if !out.contains(&child) {
                    out.push(child);
                    queue.push(child);
                }
            }
        }
    }
    out
}

/// Close every fd but 0, 1, 2 and `keep` (in a freshly forked child, before it runs
/// anything: the parent's other fds must not reach the sandbox).
pub fn close_all_except(keep: &[RawFd]) -> SysResult<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&f| f >= 0)
        .map(|&f| f as u32)
        .chain([0, 1, 2])
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut next = 0u32;
    let close = |first: u32, last: u32| {
        // SAFETY: close_range takes integers. The caller is a fresh child that owns no
        // fd in the range other than ones it must not keep; Rust values holding them
        // are never dropped (the child execs or exits).
        let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        check(ret, "close_range", || format!("{first}..={last}")).map(|_| ())
    };
    for k in keep {
        if k > next {
            close(next, k - 1)?;
        }
        next = k + 1;
    }
    close(next, u32::MAX)
}

/// A number field of /proc/PID/FILE (`Pss:` of `smaps_rollup` in kB, `ksm_merging_pages`
/// of `ksm_stat`); 0 when the process or the field is gone.
pub fn proc_number(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Close every fd from `first` up (close_range). For a process that goes on running
/// without execve (a zygote's child), where close-on-exec would not act.
pub fn close_from(first: u32) -> SysResult<()> {
    // SAFETY: close_range takes integers. The caller gave up (forgot) every Rust value
    // owning an fd in the range, so none is closed twice or used after this.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    check(ret, "close_range", || format!("{first}..")).map(|_| ())
}

/// Take ownership of fd `fd`, inherited across execve at a number agreed with the
/// parent (a zygote's channel, library and plan). Err when it is not open.
pub fn take_inherited(fd: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: F_GETFD only reads the fd's flags.
    let ret = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    check(ret as _, "fcntl", || format!("F_GETFD {fd}"))?;
    // SAFETY: the fd is open (checked above) and was handed to this process by its
    // parent at this number for this purpose; no other value in the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid (in our pid namespace) of the process `pidfd` refers to, from
/// /proc/self/fdinfo; None once it has been reaped.
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&pid: &i32| pid > 0)
}

/// Mark the calling process's memory mergeable by KSM (PR_SET_MEMORY_MERGE, Linux
/// 6.4+; kept across fork and execve). Identical pages of pooled interpreters can then
/// be shared when the host runs KSM.
pub fn set_memory_merge() -> SysResult<()> {
    const PR_SET_MEMORY_MERGE: libc::c_int = 67;
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) };
    check(ret as _, "prctl", || "PR_SET_MEMORY_MERGE".into()).map(|_| ())
}
