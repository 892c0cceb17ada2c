//! config.json → a [`Plan`]: everything the init does, decided and checked before a
//! process exists. A field phantom-oci cannot honour is refused here with one line
//! naming it — never silently ignored.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxNamespaceType, LinuxResources, PosixRlimitType, Process, Spec,
};
use phantom_linux::seccomp::Instruction;

use super::OciError;

/// One mount of `mounts`, resolved to mount(2) arguments.
#[derive(Debug, Clone)]
pub struct MountPlan {
    /// Inside the container, absolute.
    pub destination: PathBuf,
    pub typ: String,
    pub source: Option<String>,
    /// MS_* flags of the first mount call.
    pub flags: u64,
    /// Propagation flags applied afterwards (MS_PRIVATE, MS_SLAVE, … | MS_REC).
    pub propagation: Vec<u64>,
    /// Filesystem options passed as data.
    pub data: String,
    pub bind: bool,
    /// The spec asks for this bind to be idmapped (`uidMappings`/`gidMappings`, or
    /// the `idmap`/`ridmap` option): `create` sends the init an idmapped copy.
    pub idmap: Option<MountIdmap>,
}

/// The user namespace an idmapped bind mount is mapped through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountIdmap {
    /// The container's own (the `idmap` option without mappings).
    Container,
    /// One made with the mount's `uidMappings` and `gidMappings`.
    Maps {
        uid: Vec<(u32, u32, u32)>,
        gid: Vec<(u32, u32, u32)>,
    },
}

/// The process to run: from `process` (create) or `--process` (exec).
#[derive(Debug, Clone)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: Option<u32>,
    /// bounding, effective, permitted, inheritable, ambient (bit n = capability n).
    pub caps: [u64; 5],
    pub rlimits: Vec<(u32, u64, u64)>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    pub terminal: bool,
    pub console_size: Option<(u16, u16)>,
    /// The AppArmor profile the process is confined to from its execve.
    pub apparmor: Option<String>,
}

/// Everything the init does, in the order [`super::init::run`] does it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    pub new_user: bool,
    pub new_pid: bool,
    pub pid_ns_path: Option<PathBuf>,
    /// A user namespace to join by path (a Kubernetes pod with `hostUsers: false`:
    /// its containers join the pause container's).
    pub join_user: Option<PathBuf>,
    /// Other namespaces to join by path (net, ipc, uts, cgroup), with their
    /// CLONE_NEW* flag.
    pub join: Vec<(PathBuf, i32)>,
    /// CLONE_NEW* flags the init unshares (mount, net, ipc, uts, cgroup).
    pub unshare: i32,
    pub new_cgroup_ns: bool,
    /// The maps of a new user namespace (written by `create`); those the spec gives
    /// with a user namespace joined by path are that namespace's, and unused.
    pub uid_maps: Vec<(u32, u32, u32)>,
    pub gid_maps: Vec<(u32, u32, u32)>,
    /// The user namespace is strict mode's, not the spec's: `create` gives the init
    /// idmapped copies of the rootfs and of the bind mounts' sources.
    pub idmapped: bool,
    /// What `create` must tell the caller (a fence that could not apply).
    pub warnings: Vec<String>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctl: Vec<(String, String)>,
    pub mounts: Vec<MountPlan>,
    pub rootfs_propagation: u64,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub process: ProcessPlan,
    pub terminal: bool,
    pub seccomp: Option<Vec<Instruction>>,
    /// Phantom's fences on top (`run.phantom.policy: strict`).
    pub fences: Option<super::strict::Fences>,
    pub hooks: oci_spec::runtime::Hooks,
    pub annotations: std::collections::HashMap<String, String>,
    pub cgroup_path: String,
    /// `PHANTOM_OCI_CGROUP=v2`: the v2 hierarchy only.
    pub cgroup_v2_only: bool,
    pub resources: Option<LinuxResources>,
}

impl Plan {
    /// Whether the init runs in a user namespace (new or joined).
    pub fn in_user_ns(&self) -> bool {
        self.new_user || self.join_user.is_some()
    }

    /// Whether the init is forked by a helper that first joins the namespaces
    /// given by path (see `spawn_init`).
    pub fn joins_by_path(&self) -> bool {
        !self.join.is_empty() || self.pid_ns_path.is_some() || self.join_user.is_some()
    }

    /// Whether mount `m` is made by that helper: a sysfs or an mqueue for a
    /// container in a user namespace that joins the network or ipc namespace it
    /// would show.
    pub fn fresh_by_helper(&self, m: &MountPlan) -> bool {
        let flag = match m.typ.as_str() {
            "sysfs" => libc::CLONE_NEWNET,
            "mqueue" => libc::CLONE_NEWIPC,
            _ => return false,
        };
        self.in_user_ns() && self.join.iter().any(|(_, f)| *f == flag)
    }

    /// Whether sysctl `key` is written by that helper, as host root in a network
    /// namespace joined by path (where the container's root may have no
    /// capabilities), rather than by the init.
    pub fn sysctl_by_helper(&self, key: &str) -> bool {
        key.replace('/', ".").starts_with("net.")
            && self.join.iter().any(|(_, f)| *f == libc::CLONE_NEWNET)
    }
}

fn refuse<T>(field: &str, why: &str) -> Result<T, OciError> {
    Err(OciError::refused(field, why))
}

/// Refuse what phantom-oci does not support (see docs/KUBERNETES.md).
pub fn check(spec: &Spec) -> Result<(), OciError> {
    for h in spec.hooks().iter() {
        for hook in [
            h.prestart(),
            h.create_runtime(),
            h.create_container(),
            h.start_container(),
            h.poststart(),
            h.poststop(),
        ]
        .into_iter()
        .flatten()
        .flatten()
        {
            if !hook.path().is_absolute() {
                return refuse(
                    "hooks.path",
                    &format!("{} must be an absolute path", hook.path().display()),
                );
            }
        }
    }
    if spec.root().is_none() {
        return refuse("root", "a root filesystem is required");
    }
    if spec.process().is_none() {
        return refuse("process", "a process is required");
    }
    let Some(linux) = spec.linux() else {
        return refuse("linux", "the linux section is required");
    };
    if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return refuse(
            "linux.devices",
            "extra device nodes are not supported yet (the default /dev/null, zero, full, random, urandom, tty are provided); remove them",
        );
    }
    if linux.personality().is_some() {
        return refuse("linux.personality", "not supported; remove it");
    }
    if linux.intel_rdt().is_some() {
        return refuse("linux.intelRdt", "not supported; remove it");
    }
    if linux.memory_policy().is_some() {
        return refuse("linux.memoryPolicy", "not supported; remove it");
    }
    if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
        return refuse(
            "linux.timeOffsets",
            "time namespaces are not supported; remove them",
        );
    }
    if linux.net_devices().as_ref().is_some_and(|t| !t.is_empty()) {
        return refuse(
            "linux.netDevices",
            "moving network devices is not supported; remove it",
        );
    }
    if linux.mount_label().as_ref().is_some_and(|l| !l.is_empty()) {
        return refuse(
            "linux.mountLabel",
            "SELinux labels are not supported; remove it",
        );
    }
    if let Some(p) = spec.process() {
        check_process(p)?;
    }
    Ok(())
}

fn check_process(p: &Process) -> Result<(), OciError> {
    if p.apparmor_profile().as_ref().is_some_and(|a| !a.is_empty())
        && !phantom_linux::oci::apparmor_enabled()
    {
        return refuse(
            "process.apparmorProfile",
            "AppArmor is not enabled on this host; remove the profile",
        );
    }
    if p.selinux_label().as_ref().is_some_and(|a| !a.is_empty()) {
        return refuse(
            "process.selinuxLabel",
            "SELinux is not supported; remove it",
        );
    }
    if p.scheduler().is_some() {
        return refuse("process.scheduler", "not supported; remove it");
    }
    if p.io_priority().is_some() {
        return refuse("process.ioPriority", "not supported; remove it");
    }
    if p.exec_cpu_affinity().is_some() {
        return refuse("process.execCPUAffinity", "not supported; remove it");
    }
    if p.command_line().is_some() {
        return refuse("process.commandLine", "is Windows-only; use process.args");
    }
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return refuse("process.args", "at least the program to run is required");
    }
    Ok(())
}

/// The number of a capability (linux/capability.h).
fn cap_number(c: &Capability) -> Option<u32> {
    let name = serde_json::to_value(c).ok()?.as_str()?.to_string();
    const NAMES: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

// RLIMIT_* is u32 on glibc, c_int on musl.
#[allow(clippy::unnecessary_cast)]
fn rlimit_number(t: PosixRlimitType) -> u32 {
    use PosixRlimitType::*;
    (match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as u32
}

/// The process plan of `p` (also used by `exec --process`).
pub fn process_plan(p: &Process) -> Result<ProcessPlan, OciError> {
    check_process(p)?;
    let mask = |set: &Option<oci_spec::runtime::Capabilities>| -> u64 {
        set.iter()
            .flatten()
            .filter_map(cap_number)
            .fold(0u64, |m, n| m | (1u64 << n))
    };
    let caps = match p.capabilities() {
        Some(c) => [
            mask(c.bounding()),
            mask(c.effective()),
            mask(c.permitted()),
            mask(c.inheritable()),
            mask(c.ambient()),
        ],
        None => [0; 5],
    };
    Ok(ProcessPlan {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().clone(),
        uid: p.user().uid(),
        gid: p.user().gid(),
        groups: p.user().additional_gids().clone().unwrap_or_default(),
        umask: p.user().umask(),
        caps,
        rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (rlimit_number(r.typ()), r.soft(), r.hard()))
            .collect(),
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        terminal: p.terminal().unwrap_or(false),
        apparmor: p.apparmor_profile().clone().filter(|a| !a.is_empty()),
        console_size: p.console_size().map(|b| {
            (
                b.height().min(u16::MAX as u64) as u16,
                b.width().min(u16::MAX as u64) as u16,
            )
        }),
    })
}

/// mount(2) flags and data of a runtime-spec mount's options.
fn mount_options(options: &[String]) -> Result<(u64, Vec<u64>, String, bool), OciError> {
    let mut flags = 0u64;
    let mut propagation = Vec::new();
    let mut data = Vec::new();
    let mut recursive_bind = false;
    for o in options {
        let (set, clear): (u64, u64) = match o.as_str() {
            "ro" | "rro" => (libc::MS_RDONLY, 0),
            "rw" | "rrw" => (0, libc::MS_RDONLY),
            "nosuid" | "rnosuid" => (libc::MS_NOSUID, 0),
            "suid" | "rsuid" => (0, libc::MS_NOSUID),
            "nodev" | "rnodev" => (libc::MS_NODEV, 0),
            "dev" | "rdev" => (0, libc::MS_NODEV),
            "noexec" | "rnoexec" => (libc::MS_NOEXEC, 0),
            "exec" | "rexec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" | "ratime" => (0, libc::MS_NOATIME),
            "noatime" | "rnoatime" => (libc::MS_NOATIME, 0),
            "diratime" | "rdiratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" | "rnodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" | "rrelatime" => (libc::MS_RELATIME, 0),
            "norelatime" | "rnorelatime" => (0, libc::MS_RELATIME),
            "strictatime" | "rstrictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" | "rnostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => {
                recursive_bind = true;
                (libc::MS_BIND | libc::MS_REC, 0)
            }
            "private" => {
                propagation.push(libc::MS_PRIVATE);
                (0, 0)
            }
            "rprivate" => {
                propagation.push(libc::MS_PRIVATE | libc::MS_REC);
                (0, 0)
            }
            "slave" => {
                propagation.push(libc::MS_SLAVE);
                (0, 0)
            }
            "rslave" => {
                propagation.push(libc::MS_SLAVE | libc::MS_REC);
                (0, 0)
            }
            "shared" => {
                propagation.push(libc::MS_SHARED);
                (0, 0)
            }
            "rshared" => {
                propagation.push(libc::MS_SHARED | libc::MS_REC);
                (0, 0)
            }
            "unbindable" => {
                propagation.push(libc::MS_UNBINDABLE);
                (0, 0)
            }
            "runbindable" => {
                propagation.push(libc::MS_UNBINDABLE | libc::MS_REC);
                (0, 0)
            }
            "defaults" => (0, 0),
            // Read by `plan` (which knows the mount's mappings and type).
            "idmap" | "ridmap" => (0, 0),
            "tmpcopyup" => {
                return refuse(
                    "mounts.options",
                    "\"tmpcopyup\" is not supported; remove it",
                )
            }
            other => {
                data.push(other.to_string());
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    let _ = recursive_bind;
    Ok((
        flags,
        propagation,
        data.join(","),
        flags & libc::MS_BIND != 0,
    ))
}

/// uidMappings/gidMappings as (inside, host, count).
fn id_maps(m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>) -> Vec<(u32, u32, u32)> {
    m.iter()
        .flatten()
        .map(|m| (m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// How mount `m` is idmapped, if the spec asks (runc's rules: a bind mount, in a
/// container with a user namespace; mappings given for both uids and gids).
fn mount_idmap(
    m: &oci_spec::runtime::Mount,
    bind: bool,
    user_ns: bool,
) -> Result<Option<MountIdmap>, OciError> {
    let option = m
        .options()
        .iter()
        .flatten()
        .any(|o| o == "idmap" || o == "ridmap");
    let (uid, gid) = (id_maps(m.uid_mappings()), id_maps(m.gid_mappings()));
    if !option && uid.is_empty() && gid.is_empty() {
        return Ok(None);
    }
    let at = m.destination().display();
    if !bind {
        return refuse(
            "mounts.uidMappings",
            &format!("{at}: only a bind mount can be idmapped"),
        );
    }
    if !user_ns {
        return refuse(
            "mounts.uidMappings",
            &format!("{at}: an idmapped mount needs the container to have a user namespace (linux.namespaces)"),
        );
    }
    if uid.is_empty() != gid.is_empty() {
        return refuse(
            "mounts.uidMappings",
            &format!("{at}: give both uidMappings and gidMappings, or neither"),
        );
    }
    Ok(Some(if uid.is_empty() {
        MountIdmap::Container
    } else {
        MountIdmap::Maps { uid, gid }
    }))
}

fn propagation_flag(s: &str) -> Result<u64, OciError> {
    Ok(match s {
        "" | "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        other => {
            return refuse(
                "linux.rootfsPropagation",
                &format!("{other:?} is not a propagation mode (private, slave, shared, unbindable, with or without r)"),
            )
        }
    })
}

/// Only sysctls of a namespace the container has on its own may be set (as runc
/// allows): anything else would change the host.
fn sysctl_allowed(key: &str, separate: &dyn Fn(i32, &str) -> bool) -> Result<(), OciError> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let name = key.replace('/', ".");
    if name.split('.').any(|c| c.is_empty() || c == "..") || name.contains("..") {
        return refuse("linux.sysctl", &format!("{key:?} is not a sysctl name"));
    }
    let (flag, ns, what) = if IPC.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
        (libc::CLONE_NEWIPC, "ipc", "an ipc")
    } else if name.starts_with("net.") {
        (libc::CLONE_NEWNET, "net", "a network")
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        (libc::CLONE_NEWUTS, "uts", "a uts")
    } else {
        return refuse(
            "linux.sysctl",
            &format!("{key} is not namespaced: setting it would change the host; remove it"),
        );
    };
    if !separate(flag, ns) {
        return refuse(
            "linux.sysctl",
            &format!(
                "{key} needs {what} namespace of the container's own; it would change the host's"
            ),
        );
    }
    Ok(())
}

/// The plan for container `id` of `spec` (already [`check`]ed) in `bundle`.
pub fn plan(spec: &Spec, bundle: &Path, id: &str) -> Result<Plan, OciError> {
    let root = spec.root().as_ref().expect("checked");
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .map_err(|e| OciError(format!("root.path {}: {e}", rootfs.display())))?;
    let linux = spec.linux().as_ref().expect("checked");
    let mut process = process_plan(spec.process().as_ref().expect("checked"))?;
    let policy = super::strict::policy(spec.annotations().as_ref())?;

    let mut new_user = false;
    let mut new_pid = false;
    let mut pid_ns_path = None;
    let mut join_user = None;
    let mut join = Vec::new();
    let mut unshare = 0;
    let mut new_cgroup_ns = false;
    let mut has_mount_ns = false;
    for ns in linux.namespaces().iter().flatten() {
        let (flag, name) = match ns.typ() {
            LinuxNamespaceType::User => (libc::CLONE_NEWUSER, "user"),
            LinuxNamespaceType::Pid => (libc::CLONE_NEWPID, "pid"),
            LinuxNamespaceType::Mount => (libc::CLONE_NEWNS, "mount"),
            LinuxNamespaceType::Network => (libc::CLONE_NEWNET, "network"),
            LinuxNamespaceType::Ipc => (libc::CLONE_NEWIPC, "ipc"),
            LinuxNamespaceType::Uts => (libc::CLONE_NEWUTS, "uts"),
            LinuxNamespaceType::Cgroup => (libc::CLONE_NEWCGROUP, "cgroup"),
            LinuxNamespaceType::Time => {
                return refuse(
                    "linux.namespaces",
                    "the time namespace is not supported; remove it",
                )
            }
        };
        match ns.path() {
            Some(path) => {
                if flag == libc::CLONE_NEWNS {
                    return refuse(
                        "linux.namespaces",
                        "joining a mount namespace by path is not supported; ask for a new one",
                    );
                }
                if flag == libc::CLONE_NEWPID {
                    pid_ns_path = Some(path.clone());
                } else if flag == libc::CLONE_NEWUSER {
                    join_user = Some(path.clone());
                } else {
                    join.push((path.clone(), flag));
                }
                let _ = name;
            }
            None => match flag {
                libc::CLONE_NEWUSER => new_user = true,
                libc::CLONE_NEWPID => new_pid = true,
                libc::CLONE_NEWCGROUP => new_cgroup_ns = true,
                f => {
                    if f == libc::CLONE_NEWNS {
                        has_mount_ns = true;
                    }
                    unshare |= f
                }
            },
        }
    }
    if !has_mount_ns {
        return refuse(
            "linux.namespaces",
            "a new mount namespace is required (phantom-oci never changes the host's mounts); add {\"type\": \"mount\"}",
        );
    }
    let mut uid_maps = id_maps(linux.uid_mappings());
    let mut gid_maps = id_maps(linux.gid_mappings());
    if new_user && (uid_maps.is_empty() || gid_maps.is_empty()) {
        return refuse(
            "linux.uidMappings",
            "a new user namespace needs uidMappings and gidMappings",
        );
    }
    let spec_user_ns = new_user || join_user.is_some();
    if !spec_user_ns && (!uid_maps.is_empty() || !gid_maps.is_empty()) {
        return refuse(
            "linux.uidMappings",
            "id mappings are given but no user namespace is asked for",
        );
    }
    // strict: the container's root is never host uid 0 (a user namespace of its own
    // when the spec has none; checked after the spec's own mappings above).
    let mut warnings = Vec::new();
    let strict_maps = super::strict::user_namespace(
        policy,
        spec_user_ns,
        pid_ns_path.is_some(),
        &process,
        &mut warnings,
    )?;
    let idmapped = strict_maps.is_some();
    if let Some(m) = strict_maps {
        new_user = true;
        uid_maps = m.clone();
        gid_maps = m;
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty())
        && unshare & libc::CLONE_NEWUTS == 0
        && !join.iter().any(|(_, f)| *f == libc::CLONE_NEWUTS)
    {
        return refuse(
            "hostname",
            "setting a hostname needs a uts namespace; add {\"type\": \"uts\"}",
        );
    }

    let separate = |flag: i32, host: &str| -> bool {
        if unshare & flag != 0 {
            return true;
        }
        // A namespace joined by path counts only if it is not the host's own.
        join.iter().any(|(p, f)| {
            *f == flag
                && std::fs::metadata(p)
                    .ok()
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    != std::fs::metadata(format!("/proc/1/ns/{host}"))
                        .ok()
                        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        })
    };
    let mut sysctl = Vec::new();
    for (key, value) in linux.sysctl().iter().flatten() {
        sysctl_allowed(key, &separate)?;
        sysctl.push((key.clone(), value.clone()));
    }
    sysctl.sort();

    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return refuse(
                "mounts.destination",
                &format!("{} must be an absolute path", m.destination().display()),
            );
        }
        let (flags, propagation, data, bind) =
            mount_options(m.options().as_deref().unwrap_or(&[]))?;
        let typ = m
            .typ()
            .clone()
            .unwrap_or_else(|| if bind { "bind".into() } else { "none".into() });
        let bind = bind || typ == "bind";
        let idmap = mount_idmap(m, bind, spec_user_ns)?;
        let source = m.source().as_ref().map(|s| {
            if bind && s.is_relative() {
                bundle.join(s).to_string_lossy().into_owned()
            } else {
                s.to_string_lossy().into_owned()
            }
        });
        if !bind
            && !matches!(
                typ.as_str(),
                "proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" | "cgroup" | "cgroup2"
            )
        {
            return refuse(
                "mounts.type",
                &format!("{typ:?} at {} is not supported (bind, proc, sysfs, tmpfs, devpts, mqueue, cgroup, cgroup2)", m.destination().display()),
            );
        }
        mounts.push(MountPlan {
            destination: m.destination().clone(),
            typ,
            source,
            flags: if bind { flags | libc::MS_BIND } else { flags },
            propagation,
            data,
            bind,
            idmap,
        });
    }

    let seccomp = linux
        .seccomp()
        .as_ref()
        .map(super::seccomp::compile)
        .transpose()?;

    let fences = super::strict::fences(policy, &mounts, &mut process)?;

    Ok(Plan {
        rootfs,
        readonly_root: root.readonly().unwrap_or(false),
        new_user,
        new_pid,
        pid_ns_path,
        join_user,
        join,
        unshare,
        new_cgroup_ns,
        uid_maps,
        gid_maps,
        idmapped,
        warnings,
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        domainname: spec.domainname().clone().filter(|h| !h.is_empty()),
        sysctl,
        mounts,
        rootfs_propagation: propagation_flag(linux.rootfs_propagation().as_deref().unwrap_or(""))?,
        masked_paths: linux
            .masked_paths()
            .iter()
            .flatten()
            .map(PathBuf::from)
            .collect(),
        readonly_paths: linux
            .readonly_paths()
            .iter()
            .flatten()
            .map(PathBuf::from)
            .collect(),
        terminal: process.terminal,
        process,
        seccomp,
        fences,
        hooks: spec.hooks().clone().unwrap_or_default(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        cgroup_path: super::cgroup::path_for(linux.cgroups_path().as_deref(), id)?,
        cgroup_v2_only: super::cgroup::v2_only_from_env()?,
        resources: linux.resources().clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of a minimal spec with these namespaces, id maps and mounts.
    fn plan_of(
        namespaces: serde_json::Value,
        maps: Option<serde_json::Value>,
        mounts: serde_json::Value,
    ) -> Result<Plan, OciError> {
        // One bundle per call: the tests run in parallel threads of one process.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bundle =
            std::env::temp_dir().join(format!("phantom-oci-plan-{}-{call}", std::process::id()));
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let mut linux = serde_json::json!({"namespaces": namespaces});
        if let Some(m) = maps {
            linux["uidMappings"] = m.clone();
            linux["gidMappings"] = m;
        }
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"cwd": "/", "args": ["true"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "mounts": mounts,
            "linux": linux,
        }))
        .unwrap();
        let planned = check(&spec).and_then(|()| plan(&spec, &bundle, "t"));
        std::fs::remove_dir_all(&bundle).unwrap();
        planned
    }

    #[test]
    fn a_pods_user_namespace_is_joined_by_path_and_a_new_one_may_join_the_rest() {
        let maps = serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        // An app container of a `hostUsers: false` pod.
        let app = plan_of(
            serde_json::json!([{"type": "user", "path": "/proc/1/ns/user"}, {"type": "mount"},
                               {"type": "network", "path": "/proc/1/ns/net"}]),
            Some(maps.clone()),
            serde_json::json!([]),
        )
        .unwrap();
        assert_eq!(app.join_user, Some(PathBuf::from("/proc/1/ns/user")));
        assert!(!app.new_user && app.in_user_ns() && app.joins_by_path());
        assert_eq!(
            app.join,
            vec![(PathBuf::from("/proc/1/ns/net"), libc::CLONE_NEWNET)]
        );
        // Its pause container: a new user namespace, the CRI's network namespace.
        let pause = plan_of(
            serde_json::json!([{"type": "user"}, {"type": "mount"},
                               {"type": "network", "path": "/run/netns/x"}]),
            Some(maps),
            serde_json::json!([]),
        )
        .unwrap();
        assert!(pause.new_user && pause.joins_by_path());
        assert!(pause.sysctl_by_helper("net.ipv4.ip_unprivileged_port_start"));
        assert!(!pause.sysctl_by_helper("kernel.shmmax"));
        // Maps without any user namespace are still refused.
        let err = plan_of(
            serde_json::json!([{"type": "mount"}]),
            Some(serde_json::json!([{"containerID": 0, "hostID": 1, "size": 1}])),
            serde_json::json!([]),
        )
        .unwrap_err();
        assert!(err.0.contains("linux.uidMappings"), "{err}");
    }

    #[test]
    fn idmapped_mounts_are_binds_in_a_container_with_a_user_namespace() {
        let userns = serde_json::json!([{"type": "user"}, {"type": "mount"}]);
        let maps = serde_json::json!([{"containerID": 0, "hostID": 300000, "size": 10}]);
        let mounts = serde_json::json!([
            {"destination": "/a", "type": "bind", "source": "/tmp", "options": ["rbind", "idmap"]},
            {"destination": "/b", "type": "bind", "source": "/tmp", "options": ["rbind"],
             "uidMappings": maps, "gidMappings": maps},
            {"destination": "/c", "type": "bind", "source": "/tmp", "options": ["rbind"]}
        ]);
        let plan = plan_of(userns.clone(), Some(maps.clone()), mounts).unwrap();
        let idmaps: Vec<_> = plan.mounts.iter().map(|m| m.idmap.clone()).collect();
        let three = (0, 300000, 10);
        assert_eq!(
            idmaps,
            vec![
                Some(MountIdmap::Container),
                Some(MountIdmap::Maps {
                    uid: vec![three],
                    gid: vec![three]
                }),
                None
            ]
        );
        let refused = |namespaces: serde_json::Value, mount: serde_json::Value, why: &str| {
            let with_ns = namespaces.as_array().unwrap().len() > 1;
            let err = plan_of(
                namespaces,
                with_ns.then(|| maps.clone()),
                serde_json::json!([mount]),
            )
            .unwrap_err();
            assert!(
                err.0.contains("mounts.uidMappings") && err.0.contains(why),
                "{err}"
            );
        };
        refused(
            userns.clone(),
            serde_json::json!({"destination": "/t", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"]}),
            "only a bind mount",
        );
        refused(
            serde_json::json!([{"type": "mount"}]),
            serde_json::json!({"destination": "/a", "type": "bind", "source": "/tmp", "options": ["idmap"]}),
            "user namespace",
        );
        refused(
            userns,
            serde_json::json!({"destination": "/a", "type": "bind", "source": "/tmp", "options": ["rbind"],
                               "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}),
            "both",
        );
    }

    #[test]
    fn a_sysctl_that_would_change_the_host_is_refused() {
        let own_net = |flag: i32, _: &str| flag == libc::CLONE_NEWNET;
        assert!(sysctl_allowed("net.ipv4.ip_forward", &own_net).is_ok());
        assert!(sysctl_allowed("net/ipv4/ip_forward", &own_net).is_ok());
        // Not namespaced at all.
        let err = sysctl_allowed("kernel.panic", &own_net).unwrap_err().0;
        assert!(
            err.contains("kernel.panic") && err.contains("not namespaced"),
            "{err}"
        );
        // Namespaced, but the container shares the host's ipc namespace.
        let err = sysctl_allowed("kernel.shmmax", &own_net).unwrap_err().0;
        assert!(err.contains("ipc namespace"), "{err}");
        let host_net = |_: i32, _: &str| false;
        assert!(sysctl_allowed("net.ipv4.ip_forward", &host_net).is_err());
        assert!(sysctl_allowed("net...x", &own_net).is_err());
    }

    #[test]
    fn mount_options_become_flags_data_and_propagation() {
        let opts: Vec<String> = [
            "nosuid", "noexec", "nodev", "ro", "size=64k", "mode=755", "rprivate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, prop, data, bind) = mount_options(&opts).unwrap();
        assert_eq!(
            flags,
            libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV | libc::MS_RDONLY
        );
        assert_eq!(prop, vec![libc::MS_PRIVATE | libc::MS_REC]);
        assert_eq!(data, "size=64k,mode=755");
        assert!(!bind);
        let (flags, _, _, bind) = mount_options(&["rbind".to_string(), "rw".to_string()]).unwrap();
        assert!(bind && flags & libc::MS_REC != 0);
        let (_, _, data, _) = mount_options(&["rbind".into(), "idmap".into()]).unwrap();
        assert_eq!(data, "", "idmap is not a filesystem option");
    }
}
