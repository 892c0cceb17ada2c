//! Phantom's own fences on top of the OCI contract, asked for per pod with the
//! annotation `run.phantom.policy: strict` (docs/KUBERNETES.md lists what each one
//! changes compared with runc):
//!
//! * **no_new_privs** always, whatever `process.noNewPrivileges` says;
//! * **capabilities** CAP_NET_RAW, CAP_MKNOD, CAP_SETFCAP, CAP_SYS_CHROOT and
//!   CAP_AUDIT_WRITE are removed from every set;
//! * **a second seccomp filter**, installed after the spec's (the kernel applies
//!   both; the stricter answer wins): new namespaces (`unshare`, `setns`, `clone`
//!   with a namespace flag; `clone3` answers ENOSYS so that libc falls back to
//!   `clone`), mounts and the new mount API, io_uring, userfaultfd, bpf,
//!   perf_event_open, the keyring, ptrace and process_vm_*, handles
//!   (open_by_handle_at), modules, kexec, reboot, swap, clock and syslog changes,
//!   `ioctl(TIOCSTI/TIOCLINUX)` — all answered EPERM;
//! * **Landlock**: the root filesystem (and every read-only mount) may be read and
//!   executed but not written, even when `root.readonly` is false; only the
//!   writable mounts of the spec (tmpfs, volumes, /dev, /run …) may be written.
//!   A kernel without Landlock makes the container fail to start (never a silent
//!   downgrade).

use std::path::PathBuf;

use oci_spec::runtime::LinuxSeccomp;
use phantom_linux::landlock::Rule;
use phantom_linux::seccomp::Instruction;

use super::spec::MountPlan;
use super::OciError;

/// The annotation that selects a policy.
pub const ANNOTATION: &str = "run.phantom.policy";

/// The policies `run.phantom.policy` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// runc's behaviour: exactly what the spec says.
    Oci,
    /// Phantom's fences on top (this module's docs).
    Strict,
}

/// The policy of `annotations` (absent: [`Policy::Oci`]).
pub fn policy(
    annotations: Option<&std::collections::HashMap<String, String>>,
) -> Result<Policy, OciError> {
    match annotations
        .and_then(|a| a.get(ANNOTATION))
        .map(String::as_str)
    {
        None | Some("") | Some("oci") | Some("default") => Ok(Policy::Oci),
        Some("strict") => Ok(Policy::Strict),
        Some(other) => Err(OciError::refused(
            &format!("annotations.{ANNOTATION}"),
            &format!("{other:?} is not a policy: use strict (or leave it out)"),
        )),
    }
}

/// Capabilities strict mode removes from every set (bit numbers).
pub const DROPPED_CAPS: &[(u32, &str)] = &[
    (13, "CAP_NET_RAW"),
    (27, "CAP_MKNOD"),
    (31, "CAP_SETFCAP"),
    (18, "CAP_SYS_CHROOT"),
    (29, "CAP_AUDIT_WRITE"),
];

/// The capability mask strict mode keeps.
pub fn caps_mask() -> u64 {
    !DROPPED_CAPS.iter().fold(0u64, |m, (n, _)| m | (1u64 << n))
}

/// The extra seccomp filter.
pub fn seccomp() -> Result<Vec<Instruction>, OciError> {
    const DENIED: &[&str] = &[
        "unshare",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "move_mount",
        "open_tree",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "mount_setattr",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "userfaultfd",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "request_key",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "open_by_handle_at",
        "name_to_handle_at",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "syslog",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
        "quotactl",
        "quotactl_fd",
        "lookup_dcookie",
        "vhangup",
        "iopl",
        "ioperm",
        "fanotify_init",
        "kcmp",
        "pidfd_getfd",
    ];
    // Namespace flags of clone(2): CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
    // NEWUSER, NEWPID, NEWNET.
    const NS_FLAGS: &[u64] = &[
        0x80,
        0x2_0000,
        0x200_0000,
        0x400_0000,
        0x800_0000,
        0x1000_0000,
        0x2000_0000,
        0x4000_0000,
    ];
    let mut syscalls = vec![serde_json::json!({
        "names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
    })];
    for flag in NS_FLAGS {
        syscalls.push(serde_json::json!({
            "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    // ioctl's request is an int: compared on its low 32 bits, as the kernel does.
    for request in [0x5412u64 /* TIOCSTI */, 0x541C /* TIOCLINUX */] {
        syscalls.push(serde_json::json!({
            "names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
            "args": [{"index": 1, "value": 0xffff_ffffu64, "valueTwo": request, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    syscalls.push(serde_json::json!({
        "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS,
    }));
    let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": syscalls,
    }))
    .map_err(|e| OciError(format!("strict seccomp profile: {e}")))?;
    super::seccomp::compile(&profile)
}

/// The Landlock rules: read and execute everywhere, write only below the spec's
/// writable mounts (not proc, sysfs or cgroup: their writes are fenced by their
/// own read-only mounts and masks).
pub fn landlock_rules(mounts: &[MountPlan]) -> Result<Vec<Rule>, OciError> {
    if phantom_linux::landlock::kernel_abi() == 0 {
        return Err(OciError::refused(
            &format!("annotations.{ANNOTATION}"),
            "strict needs Landlock, which this kernel does not offer (Linux 5.13+ with landlock in the lsm= list); remove the annotation or enable Landlock",
        ));
    }
    let mut rules = vec![Rule {
        path: PathBuf::from("/"),
        write: false,
    }];
    for m in mounts {
        let writable = m.flags & libc::MS_RDONLY == 0
            && !matches!(m.typ.as_str(), "proc" | "sysfs" | "cgroup" | "cgroup2");
        if writable {
            rules.push(Rule {
                path: m.destination.clone(),
                write: true,
            });
        }
    }
    Ok(rules)
}

/// What strict mode adds, decided before any process exists.
#[derive(Debug, Clone)]
pub struct Fences {
    pub landlock: Vec<Rule>,
    pub seccomp: Vec<Instruction>,
}

/// The fences of `policy` for a container with `mounts`, and the process changes
/// (no_new_privs, fewer capabilities) applied to `process`.
pub fn fences(
    policy: Policy,
    mounts: &[MountPlan],
    process: &mut super::spec::ProcessPlan,
) -> Result<Option<Fences>, OciError> {
    if policy == Policy::Oci {
        return Ok(None);
    }
    harden(process);
    Ok(Some(Fences {
        landlock: landlock_rules(mounts)?,
        seccomp: seccomp()?,
    }))
}

/// no_new_privs on, the dropped capabilities gone from every set.
pub fn harden(process: &mut super::spec::ProcessPlan) {
    process.no_new_privileges = true;
    for set in &mut process.caps {
        *set &= caps_mask();
    }
}
