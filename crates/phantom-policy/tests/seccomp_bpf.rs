//! Runs the compiled seccomp programs in a small classic-BPF interpreter on synthetic
//! `struct seccomp_data` and checks what the kernel would decide.
//!
//! The interpreter knows only the instructions seccompiler and phantom emit (and panics
//! on any other, so a change in the generator cannot slip past it). Syscall numbers come
//! from the `syscalls` crate's table, cross-checked against a few ABI constants.
#![cfg(target_arch = "x86_64")]

use std::str::FromStr;

use phantom_policy::{
    compile, load_builtin, load_str, Mode, Overrides, Plan, SeccompProgram, SockFilter,
};
use syscalls::x86_64::Sysno;

// Return values (linux/seccomp.h) and errnos (asm-generic/errno-base.h, errno.h).
const ALLOW: u32 = 0x7fff_0000;
const KILL_PROCESS: u32 = 0x8000_0000;
const ERRNO: u32 = 0x0005_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_BIT: u32 = 0x4000_0000;

// ioctl requests and clone flags from the uapi headers.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;
const FIONREAD: u64 = 0x541b;
const TCGETS: u64 = 0x5401;
const CLONE_VM: u64 = 0x100;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_THREAD: u64 = 0x1_0000;
const CLONE_NEWNS: u64 = 0x2_0000;
const CLONE_SYSVSEM: u64 = 0x4_0000;
const CLONE_SETTLS: u64 = 0x8_0000;
const CLONE_PARENT_SETTID: u64 = 0x10_0000;
const CLONE_CHILD_CLEARTID: u64 = 0x20_0000;
const CLONE_NEWCGROUP: u64 = 0x200_0000;
const CLONE_NEWUTS: u64 = 0x400_0000;
const CLONE_NEWIPC: u64 = 0x800_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;
const SIGCHLD: u64 = 17;
const ADDR_NO_RANDOMIZE: u64 = 0x0004_0000;

/// Docker's default-profile denials as listed in the brief (vm86/vm86old are i386-only
/// and do not exist on x86_64).
const DOCKER_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "umount2",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "name_to_handle_at",
    "open_by_handle_at",
    "nfsservctl",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapon",
    "swapoff",
    "sysfs",
    "_sysctl",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "syslog",
    "chroot",
    "pidfd_getfd",
    "mbind",
    "migrate_pages",
    "move_pages",
    "set_mempolicy",
    "fanotify_init",
];

fn nr(name: &str) -> u32 {
    Sysno::from_str(name)
        .unwrap_or_else(|_| panic!("{name} is not an x86_64 syscall"))
        .id() as u32
}

/// `struct seccomp_data` as the kernel lays it out (little endian).
#[derive(Clone, Copy)]
struct Data {
    nr: u32,
    arch: u32,
    args: [u64; 6],
}

impl Data {
    fn call(name: &str, args: &[u64]) -> Data {
        let mut all = [0u64; 6];
        all[..args.len()].copy_from_slice(args);
        Data {
            nr: nr(name),
            arch: AUDIT_ARCH_X86_64,
            args: all,
        }
    }

    fn bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[0..4].copy_from_slice(&self.nr.to_le_bytes());
        out[4..8].copy_from_slice(&self.arch.to_le_bytes());
        out[8..16].copy_from_slice(&0x4000_1000u64.to_le_bytes()); // instruction_pointer
        for (i, arg) in self.args.iter().enumerate() {
            out[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        out
    }
}

/// Runs one program; panics on anything the kernel's checker would refuse.
fn run(program: &[SockFilter], data: &Data) -> u32 {
    let bytes = data.bytes();
    let mut a: u32 = 0;
    let mut pc = 0usize;
    for _ in 0..=program.len() {
        let ins = program[pc];
        let next = pc + 1;
        pc = match ins.code {
            // ld [k]
            0x20 => {
                let k = ins.k as usize;
                assert!(k % 4 == 0 && k + 4 <= 64, "load of offset {k}");
                a = u32::from_le_bytes(bytes[k..k + 4].try_into().unwrap());
                next
            }
            // and #k
            0x54 => {
                a &= ins.k;
                next
            }
            // ja +k
            0x05 => next + ins.k as usize,
            // jeq / jgt / jge / jset #k
            0x15 | 0x25 | 0x35 | 0x45 => {
                let taken = match ins.code {
                    0x15 => a == ins.k,
                    0x25 => a > ins.k,
                    0x35 => a >= ins.k,
                    _ => a & ins.k != 0,
                };
                next + usize::from(if taken { ins.jt } else { ins.jf })
            }
            // ret #k
            0x06 => return ins.k,
            other => panic!("unsupported BPF opcode {other:#x} at {pc}"),
        };
        assert!(pc < program.len(), "jump past the end");
    }
    panic!("program did not return (BPF has no backward jumps, so this is a bug)")
}

/// The kernel's decision over every installed program: the most restrictive action
/// wins (compared as signed action values); among equal actions the most recently
/// installed program's value wins (kernel/seccomp.c, seccomp_run_filters).
fn decide(programs: &[SeccompProgram], data: &Data) -> u32 {
    let action = |ret: u32| (ret & 0xffff_0000) as i32;
    let mut result = ALLOW;
    for program in programs.iter().rev() {
        let ret = run(&program.instructions, data);
        if action(ret) < action(result) {
            result = ret;
        }
    }
    result
}

fn plan(text: &str) -> Plan {
    compile(&load_str(text, "test.yaml").unwrap(), &Overrides::default()).unwrap()
}

fn default_plan() -> Plan {
    compile(&load_builtin("default").unwrap(), &Overrides::default()).unwrap()
}

fn call(plan: &Plan, name: &str, args: &[u64]) -> u32 {
    decide(&plan.seccomp, &Data::call(name, args))
}

#[test]
fn syscall_table_matches_the_abi() {
    assert_eq!(nr("read"), 0);
    assert_eq!(nr("write"), 1);
    assert_eq!(nr("ioctl"), 16);
    assert_eq!(nr("clone"), 56);
    assert_eq!(nr("reboot"), 169);
    assert_eq!(nr("clone3"), 435);
}

#[test]
fn docker_denials_fail_with_eperm() {
    let plan = default_plan();
    for name in DOCKER_DENIED {
        assert_eq!(call(&plan, name, &[]), ERRNO | EPERM, "{name}");
    }
}

#[test]
fn ordinary_syscalls_are_allowed() {
    let plan = default_plan();
    for name in [
        "read",
        "write",
        "openat",
        "close",
        "mmap",
        "execve",
        "exit_group",
        "getpid",
        "socket",
    ] {
        assert_eq!(call(&plan, name, &[0, 0, 0]), ALLOW, "{name}");
    }
}

#[test]
fn terminal_injection_ioctls_are_denied_even_with_high_bits_set() {
    let plan = default_plan();
    for request in [
        TIOCSTI,
        TIOCSTI | 0x1_0000_0000,
        TIOCSTI | 0xffff_ffff_0000_0000,
        TIOCLINUX,
        TIOCLINUX | 0x1_0000_0000,
    ] {
        assert_eq!(
            call(&plan, "ioctl", &[0, request, 0]),
            ERRNO | EPERM,
            "{request:#x}"
        );
    }
    for request in [FIONREAD, TCGETS, 0] {
        assert_eq!(
            call(&plan, "ioctl", &[0, request, 0]),
            ALLOW,
            "{request:#x}"
        );
    }
}

#[test]
fn clone_with_namespace_flags_is_denied() {
    let plan = default_plan();
    for flag in [
        CLONE_NEWUSER,
        CLONE_NEWNS,
        CLONE_NEWPID,
        CLONE_NEWNET,
        CLONE_NEWUTS,
        CLONE_NEWIPC,
        CLONE_NEWCGROUP,
    ] {
        assert_eq!(
            call(&plan, "clone", &[flag | SIGCHLD]),
            ERRNO | EPERM,
            "{flag:#x}"
        );
        assert_eq!(
            call(&plan, "clone", &[flag | CLONE_VM | CLONE_THREAD]),
            ERRNO | EPERM,
            "{flag:#x}"
        );
    }
    let thread = CLONE_VM
        | CLONE_FS
        | CLONE_FILES
        | CLONE_SIGHAND
        | CLONE_THREAD
        | CLONE_SYSVSEM
        | CLONE_SETTLS
        | CLONE_PARENT_SETTID
        | CLONE_CHILD_CLEARTID;
    assert_eq!(call(&plan, "clone", &[thread]), ALLOW);
    assert_eq!(call(&plan, "clone", &[SIGCHLD]), ALLOW, "fork");
}

#[test]
fn clone3_gets_enosys_so_libc_falls_back_to_clone() {
    for plan in [
        default_plan(),
        plan("profile: x\nmode: hardened\nnetwork: {mode: none}\n"),
    ] {
        assert_eq!(call(&plan, "clone3", &[0, 88]), ERRNO | ENOSYS);
    }
}

#[test]
fn openat2_gets_enosys_so_libc_falls_back_to_openat() {
    for plan in [
        default_plan(),
        plan("profile: x\nmode: hardened\nnetwork: {mode: none}\n"),
    ] {
        assert_eq!(call(&plan, "openat2", &[0, 0, 0, 24]), ERRNO | ENOSYS);
    }
}

#[test]
fn vsock_sockets_are_denied() {
    const AF_UNIX: u64 = 1;
    const AF_INET: u64 = 2;
    const AF_VSOCK: u64 = 40;
    for plan in [
        default_plan(),
        plan("profile: x\nmode: hardened\nnetwork: {mode: none}\n"),
    ] {
        assert_eq!(call(&plan, "socket", &[AF_VSOCK, 1, 0]), ERRNO | EPERM);
        // High bits do not hide it: the family is a 32-bit int.
        assert_eq!(
            call(&plan, "socket", &[0x1_0000_0000 | AF_VSOCK, 1, 0]),
            ERRNO | EPERM
        );
        assert_eq!(call(&plan, "socket", &[AF_UNIX, 1, 0]), ALLOW);
        assert_eq!(call(&plan, "socket", &[AF_INET, 2, 0]), ALLOW);
    }
}

#[test]
fn setuid_and_setgid_modes_are_denied() {
    let plan = default_plan();
    // (syscall, arguments with the mode at its index)
    let with_mode = |name: &str, mode: u64| -> Vec<u64> {
        match name {
            "chmod" | "fchmod" | "creat" | "mknod" => vec![0, mode],
            "fchmodat" | "mknodat" => vec![0, 0, mode],
            "open" => vec![0, 0o101, mode],
            "openat" => vec![0, 0, 0o101, mode],
            other => panic!("{other}"),
        }
    };
    for name in [
        "chmod", "fchmod", "fchmodat", "open", "openat", "creat", "mknod", "mknodat",
    ] {
        for mode in [0o4755, 0o2755, 0o6755, 0o104755] {
            assert_eq!(
                call(&plan, name, &with_mode(name, mode)),
                ERRNO | EPERM,
                "{name} {mode:o}"
            );
        }
        for mode in [0o755, 0o644, 0o1777, 0o600] {
            assert_eq!(
                call(&plan, name, &with_mode(name, mode)),
                ALLOW,
                "{name} {mode:o}"
            );
        }
    }
}

/// Regression: the mode rules of open/openat ignored the flags, so a read whose unused
/// mode argument held 04000 (raw syscalls, Go's OpenFile with a setuid perm) got EPERM.
#[test]
fn open_without_o_creat_ignores_the_mode() {
    let plan = default_plan();
    const O_RDONLY: u64 = 0;
    const O_TMPFILE_WRONLY: u64 = 0o20_200_001;
    assert_eq!(call(&plan, "openat", &[0, 0, O_RDONLY, 0o4000]), ALLOW);
    assert_eq!(call(&plan, "openat", &[0, 0, O_RDONLY, 0o6755]), ALLOW);
    assert_eq!(call(&plan, "open", &[0, O_RDONLY, 0o4000]), ALLOW);
    assert_eq!(
        call(&plan, "openat", &[0, 0, O_TMPFILE_WRONLY, 0o4755]),
        ERRNO | EPERM
    );
    assert_eq!(
        call(&plan, "openat", &[0, 0, O_TMPFILE_WRONLY, 0o755]),
        ALLOW
    );
}

#[test]
fn personality_allows_only_dockers_personas() {
    let plan = default_plan();
    for persona in [0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff] {
        assert_eq!(
            call(&plan, "personality", &[persona]),
            ALLOW,
            "{persona:#x}"
        );
    }
    assert_eq!(
        call(&plan, "personality", &[ADDR_NO_RANDOMIZE]),
        ERRNO | EPERM
    );
}

#[test]
fn x32_and_foreign_architectures_are_killed() {
    for plan in [
        default_plan(),
        plan("profile: x\nmode: hardened\nnetwork: {mode: none}\n"),
    ] {
        for program in &plan.seccomp {
            let x32_read = Data {
                nr: X32_BIT | nr("read"),
                ..Data::call("read", &[])
            };
            assert_eq!(
                run(&program.instructions, &x32_read),
                KILL_PROCESS,
                "{}",
                program.name
            );
            let i386 = Data {
                arch: AUDIT_ARCH_I386,
                ..Data::call("read", &[])
            };
            assert_eq!(
                run(&program.instructions, &i386),
                KILL_PROCESS,
                "{}",
                program.name
            );
        }
        let x32_write = Data {
            nr: X32_BIT | nr("write"),
            ..Data::call("write", &[])
        };
        assert_eq!(decide(&plan.seccomp, &x32_write), KILL_PROCESS);
    }
}

#[test]
fn hardened_allows_only_its_list() {
    let plan = plan("profile: x\nmode: hardened\nnetwork: {mode: none}\n");
    assert_eq!(plan.mode, Mode::Hardened);
    for name in ["reboot", "acct", "add_key", "ptrace"] {
        assert_eq!(call(&plan, name, &[]), ERRNO | EPERM, "{name}");
    }
    // Harmless but not on the list.
    for name in ["setxattr", "sethostname", "mlockall"] {
        assert_eq!(call(&plan, name, &[]), ERRNO | EPERM, "{name}");
    }
    for name in [
        "read",
        "write",
        "execve",
        "exit_group",
        "futex",
        "rt_sigreturn",
        "newfstatat",
    ] {
        assert_eq!(call(&plan, name, &[]), ALLOW, "{name}");
    }
    // Argument checks of the stacked denylist still apply.
    assert_eq!(call(&plan, "ioctl", &[0, TIOCSTI]), ERRNO | EPERM);
    assert_eq!(call(&plan, "clone", &[CLONE_NEWUSER]), ERRNO | EPERM);
    assert_eq!(call(&plan, "ioctl", &[0, FIONREAD]), ALLOW);
}

#[test]
fn level_high_kills_instead_of_eperm() {
    let strict = compile(&load_builtin("strict").unwrap(), &Overrides::default()).unwrap();
    for name in ["reboot", "acct", "add_key", "setxattr"] {
        assert_eq!(call(&strict, name, &[]), KILL_PROCESS, "{name}");
    }
    assert_eq!(call(&strict, "ioctl", &[0, TIOCSTI]), KILL_PROCESS);
    assert_eq!(call(&strict, "read", &[]), ALLOW);
    assert_eq!(call(&strict, "clone3", &[]), ERRNO | ENOSYS);
    assert_eq!(call(&strict, "memfd_create", &[]), ERRNO | EPERM);

    let sandbox_high = plan("profile: x\nsecurity:\n  level: high\n");
    assert_eq!(call(&sandbox_high, "ptrace", &[]), KILL_PROCESS);
    assert_eq!(call(&sandbox_high, "setxattr", &[]), ALLOW);
}

#[test]
fn profile_allow_and_deny_change_the_programs() {
    let plan = plan(
        "profile: x\nsecurity:\n  seccomp:\n    allow: [ptrace]\n    deny: [getpid, setxattr]\n",
    );
    assert_eq!(call(&plan, "ptrace", &[]), ALLOW);
    assert_eq!(call(&plan, "getpid", &[]), ERRNO | EPERM);
    assert_eq!(call(&plan, "setxattr", &[]), ERRNO | EPERM);
    assert_eq!(call(&plan, "reboot", &[]), ERRNO | EPERM);

    let allowlist = plan_with("default: deny\n    allow: [setxattr]\n    deny: [getpid]");
    assert_eq!(call(&allowlist, "setxattr", &[]), ALLOW);
    assert_eq!(call(&allowlist, "getpid", &[]), ERRNO | EPERM);
    assert_eq!(call(&allowlist, "sethostname", &[]), ERRNO | EPERM);
    assert_eq!(call(&allowlist, "execve", &[]), ALLOW);
}

fn plan_with(seccomp: &str) -> Plan {
    plan(&format!(
        "profile: x\nsecurity:\n  seccomp:\n    {seccomp}\n"
    ))
}

#[test]
fn programs_are_installed_denylist_first_and_allowlist_last() {
    let strict = compile(&load_builtin("strict").unwrap(), &Overrides::default()).unwrap();
    let names: Vec<&str> = strict.seccomp.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["denylist", "enosys", "memfd-eperm", "allowlist"]);
    // Installing each later program needs seccomp(2) or prctl(2) to pass the earlier ones.
    for (i, program) in strict.seccomp.iter().enumerate().skip(1) {
        let earlier = &strict.seccomp[..i];
        assert_eq!(
            decide(earlier, &Data::call("seccomp", &[1, 0, 0])),
            ALLOW,
            "before {}",
            program.name
        );
        assert_eq!(
            decide(earlier, &Data::call("prctl", &[22, 2, 0])),
            ALLOW,
            "before {}",
            program.name
        );
    }
}

#[test]
fn program_metadata_lists_its_syscalls() {
    let plan = default_plan();
    let denylist = &plan.seccomp[0];
    for name in DOCKER_DENIED {
        assert!(denylist.syscalls.iter().any(|s| s == name), "{name}");
    }
    assert!(denylist.rule_count >= DOCKER_DENIED.len());
    assert!(denylist.instructions.len() < 4096);
}
