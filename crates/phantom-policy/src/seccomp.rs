//! Seccomp programs, generated with seccompiler (pure Rust, no libseccomp).
//!
//! [`programs`] returns, in installation order:
//!
//! 1. **`denylist`** (every sandboxed mode) — Docker's default denials ([`DENYLIST`])
//!    plus the profile's `deny`, minus its `allow`; `ioctl` with TIOCSTI or TIOCLINUX
//!    (compared as 32-bit values, like the kernel does, so `0x1_0000_5412` is caught);
//!    `clone` with any namespace flag; `personality` other than Docker's allowed
//!    personas; `socket(AF_VSOCK)` (vsock is not namespaced and reaches the
//!    hypervisor); setting the setuid or setgid bit with chmod/fchmod/fchmodat(2) or at
//!    creation with open/openat/creat/mknod(at) (a setuid-root file left in a host
//!    workspace would escalate whoever runs it). Denied → `ERRNO(EPERM)`, or
//!    `KILL_PROCESS` at `security.level: high`.
//! 2. **`enosys`** — `clone3` and `openat2` → `ERRNO(ENOSYS)`. Their flags and mode
//!    live in user memory that seccomp cannot read; on ENOSYS libc falls back to
//!    `clone` and `openat`, whose arguments program 1 checks.
//! 3. **`memfd-eperm`** (level high, unless the profile allows `memfd_create`) —
//!    `memfd_create` → `ERRNO(EPERM)`: a memfd can be executed, which would sidestep
//!    the `noexec` mounts of level high.
//! 4. **`allowlist`** (`hardened` mode or `seccomp.default: deny`) — [`BASE_ALLOWLIST`]
//!    plus `allow`, plus `execve`, `clone3` and `openat2` (the latter two answered by
//!    program 2), minus `deny`;
//!    anything else → `ERRNO(EPERM)`, or `KILL_PROCESS` at level high.
//!
//! The kernel runs every installed program and the most restrictive action wins; among
//! equal actions, the most recently installed program's errno wins. The allowlist is
//! installed last so that installing 2 and 3 is not itself blocked by it; programs 1–3
//! never block `seccomp(2)` or `prctl(2)`.
//!
//! Every program begins with seccompiler's architecture check (a foreign `AUDIT_ARCH`,
//! e.g. i386 via `int 0x80`, → `KILL_PROCESS`) followed, on x86_64, by three
//! instructions of ours that kill any syscall number ≥ `0x4000_0000`: the x32 ABI, whose
//! numbers would otherwise slip past a denylist keyed on x86_64 numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::PolicyError;
use crate::plan::{SeccompProgram, SockFilter};

// Constants from the kernel's uapi headers (the same on x86_64 and aarch64).
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
/// `SECCOMP_RET_KILL_PROCESS`.
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `__X32_SYSCALL_BIT`: x32 syscalls are numbered from here.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const TIOCSTI: u64 = 0x5412;
/// Address family of vsock sockets.
const AF_VSOCK: u64 = 40;
/// Set-user-ID and set-group-ID mode bits.
const S_ISUID: u64 = 0o4000;
const S_ISGID: u64 = 0o2000;
/// Calls that set a file mode: the index of their mode argument, and of their flags
/// argument when the mode only counts with O_CREAT or O_TMPFILE among the flags.
const MODE_ARGUMENTS: &[(&str, u8, Option<u8>)] = &[
    ("chmod", 1, None),
    ("fchmod", 1, None),
    ("fchmodat", 2, None),
    ("fchmodat2", 2, None),
    ("open", 2, Some(1)),
    ("openat", 3, Some(2)),
    ("creat", 1, None),
    ("mknod", 1, None),
    ("mknodat", 2, None),
];
/// The open(2) flags under which the mode argument is used.
const O_CREAT: u64 = 0o100;
const O_TMPFILE: u64 = 0o20_200_000;
const TIOCLINUX: u64 = 0x541C;
/// Namespace flags `clone` must not carry (`CLONE_NEWTIME` shares its bit with the
/// exit-signal byte of `clone(2)`; no real signal number has bit 7 set, so denying it
/// costs nothing).
const CLONE_NAMESPACE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWTIME", 0x0000_0080),
    ("CLONE_NEWNS", 0x0002_0000),
    ("CLONE_NEWCGROUP", 0x0200_0000),
    ("CLONE_NEWUTS", 0x0400_0000),
    ("CLONE_NEWIPC", 0x0800_0000),
    ("CLONE_NEWUSER", 0x1000_0000),
    ("CLONE_NEWPID", 0x2000_0000),
    ("CLONE_NEWNET", 0x4000_0000),
];
/// Personas Docker allows: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and
/// 0xffffffff (query).
const ALLOWED_PERSONAS: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

// BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
/// The kernel's limit on a classic-BPF program (BPF_MAXINSNS).
const BPF_MAX_LEN: usize = 4096;
/// `offsetof(struct seccomp_data, nr)` and `arch`, and its size.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_LEN: u32 = 64;

/// Syscalls a sandbox never gets (Docker's default profile, plus `modify_ldt`,
/// `vhangup`, `quotactl_fd`, `set_mempolicy_home_node`). Names that do not exist on the
/// target architecture are skipped (`vm86`/`vm86old` are i386-only; i386 syscalls are
/// killed by the architecture check anyway).
#[rustfmt::skip]
pub const DENYLIST: &[&str] = &[
    // Kernel modules, kexec, reboot, swap, accounting: host administration.
    "create_module", "init_module", "finit_module", "delete_module", "query_module",
    "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
    "acct", "quotactl", "quotactl_fd", "nfsservctl", "_sysctl", "sysfs", "ustat", "uselib",
    // Time is not namespaced.
    "settimeofday", "clock_settime", "clock_adjtime",
    // Filesystem and namespace changes: the sandbox's tree is fixed before exec.
    "mount", "umount2", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "pivot_root", "chroot", "unshare", "setns",
    // File handles bypass path-based checks.
    "name_to_handle_at", "open_by_handle_at",
    // Keyrings are not namespaced.
    "add_key", "request_key", "keyctl",
    // Cross-process inspection.
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    // Kernel attack surface without namespacing.
    "bpf", "perf_event_open", "userfaultfd", "fanotify_init", "lookup_dcookie", "syslog",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    // Hardware and legacy x86.
    "ioperm", "iopl", "modify_ldt", "vm86", "vm86old", "vhangup",
    // NUMA policy of other processes / the host.
    "mbind", "migrate_pages", "move_pages", "set_mempolicy", "set_mempolicy_home_node",
];

/// What the allowlist lets through before the profile's `allow`/`deny`: enough for sh,
/// coreutils, python3 and node. Names missing on the target architecture (the legacy
/// x86_64 `open`, `stat`, `fork`, ...) are skipped.
#[rustfmt::skip]
pub const BASE_ALLOWLIST: &[&str] = &[
    // Files and directories.
    "read", "write", "open", "openat", "openat2", "creat", "close", "close_range",
    "stat", "lstat", "fstat", "newfstatat", "statx", "statfs", "fstatfs", "lseek",
    "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2", "pwritev2",
    "access", "faccessat", "faccessat2", "getdents", "getdents64", "getcwd", "chdir", "fchdir",
    "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link", "linkat",
    "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat", "mknod", "mknodat",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "fchownat", "lchown", "umask",
    "truncate", "ftruncate", "fallocate", "fadvise64", "readahead", "fsync", "fdatasync",
    "sync", "syncfs", "sync_file_range", "flock", "fcntl", "ioctl", "dup", "dup2", "dup3",
    "utime", "utimes", "utimensat", "futimesat", "sendfile", "copy_file_range", "splice", "tee",
    "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "pipe", "pipe2", "memfd_create",
    // Memory.
    "brk", "mmap", "mprotect", "munmap", "mremap", "msync", "mincore", "madvise",
    "mlock", "munlock", "membarrier", "pkey_alloc", "pkey_free", "pkey_mprotect",
    // Processes, threads, signals.
    "clone", "clone3", "fork", "vfork", "execve", "execveat", "exit", "exit_group",
    "wait4", "waitid", "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigpending",
    "rt_sigtimedwait", "sigaltstack", "pause", "set_tid_address", "set_robust_list",
    "get_robust_list", "futex", "futex_waitv", "rseq", "restart_syscall", "arch_prctl",
    "prctl", "capget", "getpid", "getppid", "gettid", "getuid", "getgid", "geteuid",
    "getegid", "getgroups", "getresuid", "getresgid", "getpgrp", "getpgid", "setpgid",
    "getsid", "setsid", "getpriority",
    // Scheduling, limits, clocks, identity.
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min", "getcpu",
    "getrlimit", "setrlimit", "prlimit64", "getrusage", "sysinfo", "times", "uname",
    "time", "gettimeofday", "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
    "alarm", "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime",
    "timer_getoverrun", "timer_delete", "timerfd_create", "timerfd_settime",
    "timerfd_gettime", "getrandom",
    // Event loops.
    "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd",
    "signalfd4",
    // Sockets (the network namespace has at most `lo`).
    "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen", "shutdown",
    "getsockname", "getpeername", "setsockopt", "getsockopt", "sendto", "recvfrom",
    "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
];

/// Syscalls `deny` may not name: phantom execs the payload after installing the
/// filters, and every process needs a way to end.
pub const NEVER_DENIED: &[&str] = &["execve", "exit", "exit_group"];

/// A target architecture: its syscall table and the constants the programs need.
pub struct Arch {
    /// `x86_64`, `aarch64`.
    pub name: &'static str,
    target: TargetArch,
    /// `AUDIT_ARCH_*`, checked first by every program.
    pub audit_arch: u32,
    /// Whether the x32 guard is needed (x86_64 only).
    x32_guard: bool,
    lookup: fn(&str) -> Option<i64>,
    all: fn() -> Vec<&'static str>,
    /// Where Debian/Ubuntu install libjemalloc for this architecture.
    pub jemalloc: &'static str,
}

impl Arch {
    /// The syscall number of `name`, if it is a syscall on this architecture.
    pub fn number(&self, name: &str) -> Option<i64> {
        (self.lookup)(name)
    }

    /// Every syscall name of this architecture (for suggestions).
    pub fn syscall_names(&self) -> Vec<&'static str> {
        (self.all)()
    }
}

macro_rules! table {
    ($module:ident) => {
        (
            |name: &str| {
                syscalls::$module::Sysno::from_str(name)
                    .ok()
                    .map(|s| i64::from(s.id()))
            },
            || {
                use syscalls::$module::Sysno;
                // `Sysno::iter` stops before the last entry; add it explicitly.
                let mut names: Vec<&'static str> = Sysno::iter().map(|s| s.name()).collect();
                names.push(Sysno::last().name());
                names.dedup();
                names
            },
        )
    };
}

/// A syscall table: name → number, and every name.
type Table = (fn(&str) -> Option<i64>, fn() -> Vec<&'static str>);

const X86_64_TABLE: Table = table!(x86_64);
const AARCH64_TABLE: Table = table!(aarch64);

/// x86_64: `AUDIT_ARCH_X86_64` = EM_X86_64 | 64BIT | LE.
pub static X86_64: Arch = Arch {
    name: "x86_64",
    target: TargetArch::x86_64,
    audit_arch: 62 | 0x8000_0000 | 0x4000_0000,
    x32_guard: true,
    lookup: X86_64_TABLE.0,
    all: X86_64_TABLE.1,
    jemalloc: "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
};

/// aarch64: `AUDIT_ARCH_AARCH64` = EM_AARCH64 | 64BIT | LE.
pub static AARCH64: Arch = Arch {
    name: "aarch64",
    target: TargetArch::aarch64,
    audit_arch: 183 | 0x8000_0000 | 0x4000_0000,
    x32_guard: false,
    lookup: AARCH64_TABLE.0,
    all: AARCH64_TABLE.1,
    jemalloc: "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
};

/// The architecture this crate was built for.
pub fn build_arch() -> Result<&'static Arch, PolicyError> {
    if cfg!(target_arch = "x86_64") {
        Ok(&X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(&AARCH64)
    } else {
        Err(PolicyError::UnsupportedArch {
            arch: std::env::consts::ARCH.to_string(),
        })
    }
}

/// What the profile (after overrides) asks of seccomp.
pub(crate) struct Spec<'a> {
    /// Level high: denied syscalls kill the process, memfd_create fails.
    pub kill: bool,
    /// Install the allowlist (hardened mode or `seccomp.default: deny`).
    pub allowlist: bool,
    pub allow: &'a [String],
    pub deny: &'a [String],
}

/// The programs for `spec`, in installation order. See the module docs.
pub(crate) fn programs(arch: &Arch, spec: &Spec<'_>) -> Result<Vec<SeccompProgram>, PolicyError> {
    let denied_action = if spec.kill {
        SeccompAction::KillProcess
    } else {
        SeccompAction::Errno(EPERM)
    };
    let allowed = |name: &str| spec.allow.iter().any(|a| a == name);
    let denied = |name: &str| spec.deny.iter().any(|d| d == name);

    let mut programs = Vec::new();

    // 1. The denylist.
    let mut rules = Rules::new(arch, "denylist");
    for name in DENYLIST.iter().copied().filter(|n| !allowed(n)) {
        rules.deny_if_present(name);
    }
    for name in spec.deny {
        rules.deny(name)?;
    }
    let arg = |index: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
            .map_err(|e| internal("denylist", e))
    };
    let rule = |conditions: Vec<SeccompCondition>| {
        SeccompRule::new(conditions).map_err(|e| internal("denylist", e))
    };
    // ioctl(fd, TIOCSTI/TIOCLINUX, ...): typing into or reprogramming the terminal.
    // The kernel takes the command as a 32-bit int, so comparing only the low word
    // catches 0x1_0000_5412 as well.
    rules.argument_rules(
        "ioctl",
        vec![
            rule(vec![arg(1, SeccompCmpOp::Eq, TIOCSTI)?])?,
            rule(vec![arg(1, SeccompCmpOp::Eq, TIOCLINUX)?])?,
        ],
    )?;
    // clone(flags, ...) with a namespace flag: no nested namespaces (one rule per flag,
    // since a rule is a conjunction).
    let mut clone_rules = Vec::new();
    for (_, flag) in CLONE_NAMESPACE_FLAGS {
        clone_rules.push(rule(vec![arg(0, SeccompCmpOp::MaskedEq(*flag), *flag)?])?);
    }
    rules.argument_rules("clone", clone_rules)?;
    // personality(persona) other than Docker's allowed personas (e.g. ADDR_NO_RANDOMIZE).
    let mut persona_conditions = Vec::new();
    for persona in ALLOWED_PERSONAS {
        persona_conditions.push(arg(0, SeccompCmpOp::Ne, *persona)?);
    }
    rules.argument_rules("personality", vec![rule(persona_conditions)?])?;
    // socket(AF_VSOCK, ...): vsock is not namespaced; on a VM it reaches the hypervisor
    // and its services whatever the network namespace says (Docker refuses it too).
    rules.argument_rules(
        "socket",
        vec![rule(vec![arg(0, SeccompCmpOp::Eq, AF_VSOCK)?])?],
    )?;
    // Setuid/setgid bits, set by chmod or at creation: with an idmapped workspace the
    // sandbox's root writes files as the invoking user — root, when phantom runs as
    // root — and a setuid-root file left in a host directory is a privilege escalation
    // for whoever runs it later. (mode is a 32-bit mode_t, so a Dword compare suffices.)
    // open/openat ignore the mode unless they create: a plain read whose (unused)
    // mode register happens to hold those bits must not fail.
    for (name, mode_arg, flags_arg) in MODE_ARGUMENTS {
        if arch.number(name).is_none() {
            continue; // e.g. open, creat, chmod and mknod do not exist on aarch64
        }
        let mut set_id = Vec::new();
        for bit in [S_ISUID, S_ISGID] {
            let mode = arg(*mode_arg, SeccompCmpOp::MaskedEq(bit), bit)?;
            match flags_arg {
                None => set_id.push(rule(vec![mode])?),
                Some(flags) => {
                    for creating in [O_CREAT, O_TMPFILE] {
                        let flag = arg(*flags, SeccompCmpOp::MaskedEq(creating), creating)?;
                        set_id.push(rule(vec![flag, mode.clone()])?);
                    }
                }
            }
        }
        rules.argument_rules(name, set_id)?;
    }
    programs.push(rules.build(denied_action.clone(), SeccompAction::Allow)?);

    // 2. ENOSYS for calls whose arguments live in a struct a filter cannot read, so
    //    that libc falls back to the call the denylist can inspect: clone3 (namespace
    //    flags) -> clone, openat2 (creation mode) -> openat.
    let mut rules = Rules::new(arch, "enosys");
    rules.deny("clone3")?;
    rules.deny("openat2")?;
    programs.push(rules.build(SeccompAction::Errno(ENOSYS), SeccompAction::Allow)?);

    // 3. memfd_create -> EPERM at level high.
    if spec.kill && !allowed("memfd_create") && !denied("memfd_create") {
        let mut rules = Rules::new(arch, "memfd-eperm");
        rules.deny("memfd_create")?;
        programs.push(rules.build(SeccompAction::Errno(EPERM), SeccompAction::Allow)?);
    }

    // 4. The allowlist.
    if spec.allowlist {
        let mut rules = Rules::new(arch, "allowlist");
        for name in BASE_ALLOWLIST.iter().copied().filter(|n| !denied(n)) {
            rules.deny_if_present(name);
        }
        for name in spec.allow.iter().filter(|n| !denied(n)) {
            rules.deny(name)?;
        }
        // The filter is installed before phantom execs the payload, and clone3 and
        // openat2 must reach program 2 to be answered ENOSYS.
        rules.deny("execve")?;
        rules.deny("clone3")?;
        rules.deny("openat2")?;
        programs.push(rules.build(SeccompAction::Allow, denied_action)?);
    }
    Ok(programs)
}

/// Syscall rules of one program being assembled ("deny" = "match": the program's
/// match action applies).
struct Rules<'a> {
    arch: &'a Arch,
    program: &'static str,
    map: BTreeMap<i64, Vec<SeccompRule>>,
    names: BTreeSet<String>,
}

impl<'a> Rules<'a> {
    fn new(arch: &'a Arch, program: &'static str) -> Self {
        Rules {
            arch,
            program,
            map: BTreeMap::new(),
            names: BTreeSet::new(),
        }
    }

    /// Matches `name` whatever its arguments.
    fn deny(&mut self, name: &str) -> Result<(), PolicyError> {
        let nr = self
            .arch
            .number(name)
            .ok_or_else(|| PolicyError::Internal {
                program: self.program.to_string(),
                message: format!("`{name}` is not a syscall on {}", self.arch.name),
            })?;
        self.map.insert(nr, Vec::new());
        self.names.insert(name.to_string());
        Ok(())
    }

    /// Like `deny`, for built-in lists that name syscalls of other architectures.
    fn deny_if_present(&mut self, name: &str) {
        if let Some(nr) = self.arch.number(name) {
            self.map.insert(nr, Vec::new());
            self.names.insert(name.to_string());
        }
    }

    /// Matches `name` when any of `rules` matches — unless it is already matched
    /// unconditionally.
    fn argument_rules(&mut self, name: &str, rules: Vec<SeccompRule>) -> Result<(), PolicyError> {
        let nr = self
            .arch
            .number(name)
            .ok_or_else(|| PolicyError::Internal {
                program: self.program.to_string(),
                message: format!("`{name}` is not a syscall on {}", self.arch.name),
            })?;
        // An existing empty rule list means "always": keep it so.
        self.map.entry(nr).or_insert(rules);
        self.names.insert(name.to_string());
        Ok(())
    }

    fn build(
        self,
        match_action: SeccompAction,
        mismatch_action: SeccompAction,
    ) -> Result<SeccompProgram, PolicyError> {
        let rule_count = self.map.values().map(|rules| rules.len().max(1)).sum();
        let filter = SeccompFilter::new(self.map, mismatch_action, match_action, self.arch.target)
            .map_err(|e| internal(self.program, e))?;
        let bpf: BpfProgram = filter.try_into().map_err(|e| internal(self.program, e))?;
        Ok(SeccompProgram {
            name: self.program.to_string(),
            rule_count,
            syscalls: self.names.into_iter().collect(),
            instructions: finish(self.arch, self.program, bpf)?,
        })
    }
}

fn internal(program: &str, error: impl std::fmt::Display) -> PolicyError {
    PolicyError::Internal {
        program: program.to_string(),
        message: error.to_string(),
    }
}

const fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// Converts seccompiler's output, inserts the x32 guard and checks the result.
fn finish(arch: &Arch, program: &str, bpf: BpfProgram) -> Result<Vec<SockFilter>, PolicyError> {
    let mut out: Vec<SockFilter> = bpf
        .into_iter()
        .map(|i| SockFilter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    // seccompiler 0.5 (`build_arch_validation_sequence`) starts every program with
    //   0: ld  [arch]
    //   1: jeq #AUDIT_ARCH, jt 1, jf 0      -> 3 on our architecture
    //   2: ret KILL_PROCESS                  foreign architecture
    // and nothing after index 2 jumps backwards (BPF cannot), so inserting at index 3
    // moves no jump target: the only jump that reaches index 3 is index 1's, and it
    // lands on our first instruction.
    let expected_prologue = [
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JEQ_K, arch.audit_arch, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
    ];
    if out.len() < 4 || out[..3] != expected_prologue {
        return Err(internal(
            program,
            "seccompiler's architecture check is not where expected; the x32 guard cannot be inserted",
        ));
    }
    if arch.x32_guard {
        let guard = [
            stmt(BPF_LD_W_ABS, DATA_NR),
            jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, RET_KILL_PROCESS),
        ];
        out.splice(3..3, guard);
    }
    verify(&out).map_err(|message| internal(program, message))?;
    Ok(out)
}

/// A small verifier: every jump lands inside the program, every load reads a word of
/// `struct seccomp_data`, the program ends in a return and fits the kernel's limit.
pub(crate) fn verify(program: &[SockFilter]) -> Result<(), String> {
    if program.is_empty() || program.len() > BPF_MAX_LEN {
        return Err(format!(
            "{} instructions (1..={BPF_MAX_LEN} allowed)",
            program.len()
        ));
    }
    for (i, ins) in program.iter().enumerate() {
        let next = i + 1;
        let class = ins.code & 0x07;
        if ins.code == BPF_LD_W_ABS {
            if ins.k % 4 != 0 || ins.k >= DATA_LEN {
                return Err(format!("instruction {i} loads offset {}", ins.k));
            }
        } else if class == BPF_JMP {
            let targets = if ins.code == BPF_JA {
                vec![next as u64 + u64::from(ins.k)]
            } else {
                vec![
                    (next + usize::from(ins.jt)) as u64,
                    (next + usize::from(ins.jf)) as u64,
                ]
            };
            if targets.iter().any(|t| *t >= program.len() as u64) {
                return Err(format!("instruction {i} jumps past the end"));
            }
        }
    }
    if program[program.len() - 1].code & 0x07 != BPF_RET_K {
        return Err("the program does not end in a return".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_lists_name_real_syscalls() {
        // Every built-in name must exist on at least one supported architecture, or
        // it is a typo that would be skipped silently.
        for name in DENYLIST.iter().chain(BASE_ALLOWLIST).chain(NEVER_DENIED) {
            if *name == "vm86" || *name == "vm86old" {
                continue; // i386 only, see DENYLIST.
            }
            assert!(
                X86_64.number(name).is_some() || AARCH64.number(name).is_some(),
                "{name} is not a syscall on x86_64 or aarch64"
            );
        }
        // The x86_64 base allowlist must have every name the brief's runtime needs.
        for name in [
            "read",
            "write",
            "execve",
            "clone",
            "futex",
            "rseq",
            "newfstatat",
            "prlimit64",
        ] {
            assert!(X86_64.number(name).is_some(), "{name}");
        }
    }

    #[test]
    fn lists_do_not_overlap() {
        for name in DENYLIST {
            assert!(!BASE_ALLOWLIST.contains(name), "{name} is on both lists");
        }
    }

    #[test]
    fn verifier_rejects_broken_programs() {
        assert!(verify(&[]).is_err());
        assert!(verify(&[jump(BPF_JEQ_K, 0, 5, 0), stmt(BPF_RET_K, 0)]).is_err());
        assert!(verify(&[stmt(BPF_LD_W_ABS, 64), stmt(BPF_RET_K, 0)]).is_err());
        assert!(verify(&[stmt(BPF_LD_W_ABS, 0)]).is_err());
        assert!(verify(&[stmt(BPF_LD_W_ABS, 0), stmt(BPF_RET_K, 0)]).is_ok());
    }

    #[test]
    fn both_architectures_compile() {
        let spec = Spec {
            kill: false,
            allowlist: true,
            allow: &[],
            deny: &[],
        };
        for arch in [&X86_64, &AARCH64] {
            let programs = programs(arch, &spec).unwrap();
            let names: Vec<&str> = programs.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["denylist", "enosys", "allowlist"], "{}", arch.name);
            for p in &programs {
                assert_eq!(p.instructions[1].k, arch.audit_arch);
                let guarded = p.instructions[3] == stmt(BPF_LD_W_ABS, DATA_NR)
                    && p.instructions[4].k == X32_SYSCALL_BIT;
                assert_eq!(guarded, arch.x32_guard, "{} {}", arch.name, p.name);
            }
        }
    }
}
