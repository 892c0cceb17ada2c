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
//!   downgrade);
//! * **the container's root is never host uid 0**: a spec that asks for no user
//!   namespace gets one of its own, its ids 0..65536 mapped to the host's
//!   [`HOST_ID_BASE`]..+65536, and the rootfs and the bind mounts are idmapped
//!   through it (files owned by host uid 0 are the container root's, and what it
//!   writes is owned by host uid 0 on disk). A spec with a user namespace of its
//!   own keeps its mappings. A mount whose filesystem cannot be idmapped makes the
//!   container fail to start (a read-only bind falls back to a plain bind, its
//!   files owned by nobody). A pod's containers get one each too: they join the
//!   pod's network, ipc and uts namespaces (the host's user namespace owns them)
//!   before their own user namespace is made, so their root has no capabilities
//!   there — it cannot reconfigure the pod's network, bind a port below 1024 or
//!   set the hostname. Not for a container that joins a pid namespace by path
//!   (`shareProcessNamespace`): its /proc could not be mounted, so its root stays
//!   host uid 0, with a warning ([`user_namespace`]).

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

/// The first host uid (and gid) of the range strict mode maps the container's
/// ids 0..[`ID_COUNT`] to, when the spec asks for no user namespace (the range
/// runc, Podman and Kubernetes' user namespaces use by default; every strict
/// container shares it).
pub const HOST_ID_BASE: u32 = 100_000;

/// How many ids that range holds.
pub const ID_COUNT: u32 = 65_536;

/// One line of a uid_map or gid_map: inside, host, count.
pub type IdMap = (u32, u32, u32);

/// The uid/gid maps strict mode gives a container whose spec asks for no user
/// namespace (`None`: the spec's own user namespace, or the OCI policy).
///
/// A container that joins a pid namespace by path (a pod with
/// `shareProcessNamespace`) keeps host uid 0 for its root, with a warning pushed to
/// `warnings`: the kernel mounts a /proc only for a root with capabilities in the
/// user namespace that owns the pid namespace, here the host's. The other fences
/// still apply.
pub fn user_namespace(
    policy: Policy,
    spec_has_one: bool,
    joins_pid_ns: bool,
    process: &super::spec::ProcessPlan,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<IdMap>>, OciError> {
    if policy == Policy::Oci || spec_has_one {
        return Ok(None);
    }
    if joins_pid_ns {
        warnings.push(format!(
            "{ANNOTATION} strict: the container joins a pid namespace by path (shareProcessNamespace), so its root stays host uid 0; Landlock, the seccomp filter and the capability drops still apply"
        ));
        return Ok(None);
    }
    let ids = [process.uid, process.gid]
        .into_iter()
        .chain(process.groups.iter().copied());
    if let Some(id) = ids.into_iter().find(|id| *id >= ID_COUNT) {
        return Err(OciError::refused(
            "process.user",
            &format!("id {id} is outside the 0..{ID_COUNT} that {ANNOTATION} strict maps to host ids {HOST_ID_BASE}..; use a smaller id or remove the annotation"),
        ));
    }
    Ok(Some(vec![(0, HOST_ID_BASE, ID_COUNT)]))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn process(uid: u32) -> super::super::spec::ProcessPlan {
        let p: oci_spec::runtime::Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["true"], "user": {"uid": uid, "gid": 0},
        }))
        .unwrap();
        super::super::spec::process_plan(&p).unwrap()
    }

    #[test]
    fn strict_maps_the_root_of_a_container_without_a_user_namespace() {
        let mut warnings = Vec::new();
        let maps = user_namespace(Policy::Strict, false, false, &process(0), &mut warnings);
        assert_eq!(maps, Ok(Some(vec![(0, HOST_ID_BASE, ID_COUNT)])));
        assert!(warnings.is_empty());
        // The spec's own user namespace, or no policy: nothing changes.
        assert_eq!(
            user_namespace(Policy::Strict, true, false, &process(0), &mut warnings),
            Ok(None)
        );
        assert_eq!(
            user_namespace(Policy::Oci, false, false, &process(0), &mut warnings),
            Ok(None)
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_strict_container_that_joins_a_pid_namespace_keeps_host_root_with_a_warning() {
        let mut warnings = Vec::new();
        let maps = user_namespace(Policy::Strict, false, true, &process(0), &mut warnings);
        assert_eq!(maps, Ok(None));
        assert!(
            warnings.len() == 1 && warnings[0].contains("host uid 0"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_strict_user_outside_the_mapped_range_is_refused_by_name() {
        let err = user_namespace(
            Policy::Strict,
            false,
            false,
            &process(70000),
            &mut Vec::new(),
        )
        .unwrap_err()
        .0;
        assert!(
            err.contains("process.user") && err.contains("70000"),
            "{err}"
        );
    }
}
