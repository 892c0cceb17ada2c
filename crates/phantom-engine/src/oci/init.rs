//! The container's init, from clone to execve: one linear function, each step in the
//! order the kernel requires, the reason next to it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use phantom_linux::oci as sys;
use phantom_linux::process;

use super::channel::{self, Answer, Order};
use super::spec::{Plan, ProcessPlan};
use super::strict::Fences;
use super::{Cgroup, CreateRequest, OciError};

/// Run in the child of `create`: set up, report [`Answer::Ready`], wait for
/// [`Order::Start`], exec.
/// Never returns; a failure is reported to the parent (which fails `create` with
/// it) and ends the process.
pub(super) fn run(
    plan: &Plan,
    req: &CreateRequest,
    sync: OwnedFd,
    listener: OwnedFd,
    console: Option<OwnedFd>,
    fresh: Mounts,
) -> ! {
    // Until `create` has what it needs (Ready, below), its death is ours: a
    // `create` killed half-way (a shim's timeout) leaves no init behind. (Had it
    // died before this prctl, the sync channel is closed and step 1 fails.)
    let _ = process::set_parent_death_signal_kill();
    // Our own fds move above the `--preserve-fds` range, which the user's process
    // gets as fds 3..3+N.
    let floor = 3 + req.preserve_fds as i32;
    let moved = (|| -> Result<_, OciError> {
        let sync = sys::dup_at_least(sync.as_fd(), floor)?;
        let listener = sys::dup_at_least(listener.as_fd(), floor)?;
        let console = console
            .map(|c| sys::dup_at_least(c.as_fd(), floor))
            .transpose()?;
        let mut moved = Mounts::default();
        for (i, fd) in &fresh {
            moved.insert(*i, sys::dup_at_least(fd.as_fd(), floor)?);
        }
        Ok((sync, listener, console, moved))
    })();
    drop(sync);
    drop(listener);
    drop(fresh);
    let (sync, listener, console, fresh) = match moved {
        Ok(v) => v,
        Err(e) => process::exit_now(fail_before_sync(&e)),
    };
    let host_pid = match setup(plan, req, &sync, console, fresh) {
        Ok(pid) => pid,
        Err(e) => {
            channel::fail(&sync, &e);
            process::exit_now(1);
        }
    };
    // Set up: tell `create` (which writes the pid file and exits), then block until
    // `start` connects. Nothing of the user's runs before that.
    let _ = process::set_parent_death_signal(0);
    let _ = channel::send(&sync, &Answer::Ready, None);
    drop(sync);
    let conn = loop {
        match phantom_linux::fdpass::accept(listener.as_fd()) {
            Ok(Some(c)) => break c,
            Ok(None) => continue,
            Err(_) => process::exit_now(1),
        }
    };
    drop(listener);
    match channel::recv::<Order>(&conn, "start") {
        Ok(Some((Order::Start, _))) => {}
        _ => process::exit_now(1),
    }
    // startContainer hooks: in the container, after `start`, before the user's
    // process (a failure fails `start`).
    if let Some(list) = plan.hooks.start_container() {
        let state =
            super::hooks::state_json(&req.id, host_pid, &req.bundle, "created", &plan.annotations);
        if let Err(e) = super::hooks::run("startContainer", list, &state) {
            channel::fail(&conn, &e);
            process::exit_now(1);
        }
    }
    let err = finish_and_exec(
        &plan.process,
        plan.seccomp.as_deref(),
        plan.fences.as_ref(),
        req.preserve_fds,
        Some(&conn),
    );
    channel::fail(&conn, &err);
    eprintln!("phantom-oci: {err}");
    process::exit_now(127)
}

/// The helper `create` forks for a container that joins namespaces by path: join
/// them as host root — the network, ipc, uts and cgroup ones, then a pid namespace
/// (for our children only), then a user namespace last (joining it gives up host
/// root's capabilities over the others) — write the sysctls of a joined network
/// namespace, fork the init into them and its new user and pid namespaces (a
/// sibling: a child of `create`, which it tells the init's pid), and exit.
pub(super) fn join_and_fork(
    plan: &Plan,
    req: &CreateRequest,
    ns: process::Namespaces,
    sync: OwnedFd,
    listener: OwnedFd,
    console: Option<OwnedFd>,
) -> ! {
    // `create` killed half-way (a shim's timeout) leaves no helper behind.
    let _ = process::set_parent_death_signal_kill();
    let join = |path: &Path, flag: i32| -> Result<(), OciError> {
        let f = std::fs::File::open(path).map_err(|e| OciError::io("open namespace", path, e))?;
        Ok(sys::setns_file(
            f.as_fd(),
            flag,
            &path.display().to_string(),
        )?)
    };
    let mut fresh = Mounts::default();
    let forked = (|| -> Result<Option<i32>, OciError> {
        for (path, flag) in &plan.join {
            join(path, *flag)?;
        }
        // A sysfs shows the network namespace of its mounter, an mqueue the ipc
        //    namespace; the kernel lets only a root with capabilities there mount
        //    them, which the init's root in a user namespace may not have (a pod's
        //    namespaces are the host's user namespace's). Made here, as host root,
        //    and attached by the init.
        for (i, m) in plan.mounts.iter().enumerate() {
            if plan.fresh_by_helper(m) {
                let attrs = phantom_linux::mount::Attrs {
                    read_only: m.flags & libc::MS_RDONLY != 0,
                    nosuid: m.flags & libc::MS_NOSUID != 0,
                    nodev: m.flags & libc::MS_NODEV != 0,
                    noexec: m.flags & libc::MS_NOEXEC != 0,
                };
                let fd = phantom_linux::mount::detached_fs(&m.typ, attrs)
                    .map_err(|e| OciError(format!("mounts {}: {e}", m.destination.display())))?;
                fresh.insert(i, fd);
            }
        }
        // procfs resolves /proc/sys/net by the opener's network namespace.
        for (key, value) in plan.sysctl.iter().filter(|(k, _)| plan.sysctl_by_helper(k)) {
            write_sysctl(key, value)?;
        }
        if let Some(path) = &plan.pid_ns_path {
            join(path, libc::CLONE_NEWPID)?;
        }
        if let Some(path) = &plan.join_user {
            join(path, libc::CLONE_NEWUSER)?;
        }
        Ok(process::fork_sibling(ns)?)
    })();
    match forked {
        Ok(Some(pid)) => {
            let _ = channel::send(&sync, &Answer::Forked { pid }, None);
            process::exit_now(0)
        }
        Ok(None) => run(plan, req, sync, listener, console, fresh),
        Err(e) => {
            channel::fail(&sync, &e);
            process::exit_now(1)
        }
    }
}

/// The child of `exec`: join the container's cgroup and namespaces, fork the
/// process into its pid namespace (a sibling: a child of `exec` itself), report
/// its pid and exit. The process sets itself up like the init's user process.
#[allow(clippy::too_many_arguments)]
pub(super) fn exec_child(
    p: &ProcessPlan,
    seccomp: Option<&[phantom_linux::seccomp::Instruction]>,
    fences: Option<&Fences>,
    preserve_fds: u32,
    cgroup: &Cgroup,
    namespaces: &[(std::fs::File, i32, &str)],
    sync: OwnedFd,
    console: Option<OwnedFd>,
) -> ! {
    let floor = 3 + preserve_fds as i32;
    let fail = |sync: &OwnedFd, e: OciError| -> ! {
        channel::fail(sync, &e);
        process::exit_now(1)
    };
    let sync = match sys::dup_at_least(sync.as_fd(), floor) {
        Ok(s) => s,
        Err(e) => process::exit_now(fail_before_sync(&e.into())),
    };
    let console = match console
        .map(|c| sys::dup_at_least(c.as_fd(), floor))
        .transpose()
    {
        Ok(c) => c,
        Err(e) => fail(&sync, e.into()),
    };
    // The cgroup first, by our host pid (which /proc still shows), so that the
    //    process is accounted and limited there from its first instruction.
    if let Err(e) = cgroup.add(process::getpid()) {
        fail(&sync, e);
    }
    // oom_score_adj while we are host root (the process inherits it).
    if let Some(adj) = p.oom_score_adj {
        if let Err(e) = set_oom_score_adj("self", adj) {
            fail(&sync, e);
        }
    }
    // Namespaces in `exec`'s order: …, pid (for our children only), mount (it also
    //    moves our root to the container's), user last (it gives up host root's
    //    capabilities over the others).
    for (f, flag, name) in namespaces {
        if let Err(e) = sys::setns_file(f.as_fd(), *flag, name) {
            fail(&sync, e.into());
        }
    }
    let child = match process::fork_sibling(process::Namespaces::default()) {
        Ok(c) => c,
        Err(e) => fail(&sync, e.into()),
    };
    match child {
        Some(pid) => {
            let _ = channel::send(&sync, &Answer::Forked { pid }, None);
            process::exit_now(0)
        }
        None => {
            let run = || -> Result<(), OciError> {
                apply_rlimits(p)?;
                if p.terminal {
                    let console = console
                        .as_ref()
                        .ok_or_else(|| OciError("exec --tty needs --console-socket".into()))?;
                    terminal(Path::new("/dev/pts/ptmx"), console, p.console_size)?;
                }
                Ok(())
            };
            if let Err(e) = run() {
                fail(&sync, e);
            }
            drop(console);
            let err = finish_and_exec(p, seccomp, fences, preserve_fds, None);
            fail(&sync, err)
        }
    }
}

fn fail_before_sync(e: &OciError) -> i32 {
    eprintln!("phantom-oci: {e}");
    1
}

/// Everything before the wait for `start`. Returns our pid as the host sees it.
fn setup(
    plan: &Plan,
    req: &CreateRequest,
    sync: &OwnedFd,
    console: Option<OwnedFd>,
    fresh: Mounts,
) -> Result<i32, OciError> {
    // 1. Wait for the parent: it puts us in the cgroup and writes the id maps of a
    //    new user namespace; nothing below may run before (a cgroup namespace is
    //    rooted at the cgroup we are in when we unshare it; without maps we have no
    //    capabilities in the user namespace). In strict's user namespace it first
    //    sends idmapped copies of the rootfs and the bind sources, and of each
    //    mount the spec asks to idmap (only host root may make them), attached in
    //    steps 7 and 8.
    let mut prepared = Prepared {
        root: None,
        mounts: fresh,
    };
    let host_pid = loop {
        match channel::recv::<Order>(sync, "create")? {
            Some((Order::Idmapped { mount: None }, Some(fd))) => prepared.root = Some(fd),
            Some((Order::Idmapped { mount: Some(i) }, Some(fd))) => {
                drop(prepared.mounts.insert(i, fd))
            }
            Some((Order::Go { pid }, _)) => break pid,
            Some((other, _)) => return Err(OciError(format!("create sent {other:?}"))),
            None => return Err(OciError("create was cancelled".into())),
        }
    };
    // 2. In a new user namespace, or one joined by path, become its root for real
    //    (we keep the host ids until we set them).
    if plan.new_user || plan.join_user.is_some() {
        sys::set_ids(0, 0, &[])?;
    }
    // 3. The namespaces given by path were joined before we were forked (see
    //    `spawn_init`); the new ones are unshared now.
    sys::unshare(plan.unshare)?;
    // 4. The cgroup namespace last of all: it is rooted at our cgroup (step 1).
    if plan.new_cgroup_ns {
        sys::unshare(libc::CLONE_NEWCGROUP)?;
    }
    // 4b. A session keyring of its own (runc does the same unless
    //     --no-new-keyring): keyrings are not namespaced, and the caller's holds
    //     the shim's keys.
    if !req.no_new_keyring {
        sys::join_new_session_keyring(&req.id)?;
    }
    // 5. sysctls through the host's /proc, which already shows our network and ipc
    //    namespaces' values (procfs resolves /proc/sys/net and kernel.* ipc keys
    //    by the opener's namespaces). Before pivot_root: afterwards /proc/sys is
    //    read-only in most configurations.
    //    Those of a network namespace joined by path were written by the helper
    //    that forked us, as host root in it (`join_and_fork`): our root may have no
    //    capabilities there.
    for (key, value) in plan
        .sysctl
        .iter()
        .filter(|(k, _)| !plan.sysctl_by_helper(k))
    {
        write_sysctl(key, value)?;
    }
    // 6. Hostname and domain name of the (new or joined) uts namespace.
    if let Some(h) = &plan.hostname {
        process::sethostname(h)?;
    }
    if let Some(d) = &plan.domainname {
        sys::setdomainname(d)?;
    }
    // 7. The mount tree. First stop any mount or unmount here from propagating back
    //    to the host (rootfsPropagation, rslave by default, like runc).
    sys::mount(None, Path::new("/"), None, plan.rootfs_propagation, None)?;
    // The rootfs becomes a mount point of its own: pivot_root needs one, and the
    //    read-only remount at the end applies to it alone. In strict's user
    //    namespace it is the idmapped copy (after the rslave above, which it need
    //    not get: a detached copy propagates nothing), so that the image's files
    //    owned by host uid 0 are our root's; before step 8, whose mount points are
    //    made in it by that root. Our root there may not search the host's
    //    directories above the rootfs: `create` made the rootfs our working
    //    directory (unshare moved it into our mount namespace), the copy is
    //    attached on it, and from here on the rootfs is reached through the
    //    copy's fd, never by its host path.
    let rootfs = match &prepared.root {
        Some(tree) => {
            phantom_linux::mount::attach(tree.as_fd(), Path::new("."))?;
            PathBuf::from(format!("/proc/self/fd/{}", tree.as_raw_fd()))
        }
        None => {
            sys::mount(
                Some(&plan.rootfs.to_string_lossy()),
                &plan.rootfs,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )?;
            plan.rootfs.clone()
        }
    };
    let rootfs = rootfs.as_path();
    // 8. The spec's mounts, in order, each destination resolved inside the rootfs
    //    (a symlink in the image cannot point a mount at the host).
    let cgroup = Cgroup::at(&plan.cgroup_path, plan.cgroup_v2_only);
    for (i, m) in plan.mounts.iter().enumerate() {
        mount_one(rootfs, m, &cgroup, prepared.mounts.get(&i))?;
    }
    prepared.mounts.clear();
    // 9. The devices every container has, bound from the host's, and the standard
    //    links (runc creates the same).
    default_devices(rootfs, plan.in_user_ns())?;
    // 9b. Hooks, while the host's tree is still visible: createRuntime (run by
    //     `create`, in the runtime's namespaces) then createContainer (run here, in
    //     the container's namespaces; its path resolves in the runtime's tree).
    let state = || {
        super::hooks::state_json(
            &req.id,
            host_pid,
            &req.bundle,
            "creating",
            &plan.annotations,
        )
    };
    let runtime_hooks = plan
        .hooks
        .prestart()
        .iter()
        .chain(plan.hooks.create_runtime())
        .any(|h| !h.is_empty());
    if runtime_hooks {
        channel::send(sync, &Answer::Hooks, None)?;
        if !matches!(channel::recv(sync, "create")?, Some((Order::Continue, _))) {
            return Err(OciError("a createRuntime hook failed".into()));
        }
    }
    if let Some(list) = plan.hooks.create_container() {
        super::hooks::run("createContainer", list, &state())?;
    }
    // 10. The terminal, while the host's tree is still reachable for nothing: the
    //     pty comes from the container's own devpts (mounted in step 8).
    if plan.terminal {
        let Some(console) = console else {
            return Err(OciError("process.terminal needs --console-socket".into()));
        };
        let ptmx = rootfs.join("dev/pts/ptmx");
        terminal(&ptmx, &console, plan.process.console_size)?;
    }
    // 11. pivot_root into the rootfs and detach the old root: no path leads back
    //     to the host's tree.
    if req.no_pivot {
        // MS_MOVE the rootfs onto / and chroot: weaker (the old root is only
        //    hidden, not detached), used where pivot_root cannot work (ramfs).
        std::env::set_current_dir(rootfs).map_err(|e| OciError::io("chdir", rootfs, e))?;
        sys::mount(Some("."), Path::new("/"), None, libc::MS_MOVE, None)?;
        sys::chroot(Path::new("."))?;
        std::env::set_current_dir("/").map_err(|e| OciError::io("chdir", Path::new("/"), e))?;
    } else {
        phantom_linux::mount::pivot_into(rootfs)?;
    }
    drop(prepared);
    // 12. maskedPaths and readonlyPaths, now inside: a masked file gets /dev/null
    //     bound over it, a masked directory an empty read-only tmpfs.
    for p in &plan.masked_paths {
        mask(p)?;
    }
    for p in &plan.readonly_paths {
        match std::fs::symlink_metadata(p) {
            Ok(_) => {
                sys::mount(
                    Some(&p.to_string_lossy()),
                    p,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                )?;
                phantom_linux::mount::set_attrs(
                    p,
                    phantom_linux::mount::Attrs {
                        read_only: true,
                        nosuid: true,
                        nodev: true,
                        noexec: true,
                    },
                    true,
                )?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(OciError::io("readonlyPaths", p, e)),
        }
    }
    // 13. The root read-only last: every mount point above had to be created in it.
    if plan.readonly_root {
        sys::mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )?;
    }
    // 14. rlimits, while CAP_SYS_RESOURCE is held (raising a hard limit needs it).
    //     (oom_score_adj was written by `create`, as host root: in a user
    //     namespace our own /proc/self files are not ours to write.)
    apply_rlimits(&plan.process)?;
    Ok(host_pid)
}

/// Write `adj` to the oom_score_adj of process `pid` ("self" for the caller), as
/// host root: lowering it needs CAP_SYS_RESOURCE, and once a process has changed
/// its ids in a user namespace its /proc files belong to host root.
pub(super) fn set_oom_score_adj(pid: &str, adj: i32) -> Result<(), OciError> {
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
        .map_err(|e| OciError(format!("process.oomScoreAdj {adj}: {e}")))
}

/// The process's rlimits (create and exec).
fn apply_rlimits(p: &ProcessPlan) -> Result<(), OciError> {
    for (res, soft, hard) in &p.rlimits {
        sys::set_rlimit(*res, *soft, *hard)?;
    }
    Ok(())
}

/// The last steps, after `start`: ids, capabilities, no_new_privs, seccomp, exec.
/// Returns only on failure.
pub(super) fn finish_and_exec(
    p: &ProcessPlan,
    seccomp: Option<&[phantom_linux::seccomp::Instruction]>,
    fences: Option<&Fences>,
    preserve_fds: u32,
    started: Option<&OwnedFd>,
) -> OciError {
    match finish(p, seccomp, fences, preserve_fds) {
        Ok((path, argv, envp)) => {
            if let Some(conn) = started {
                let _ = channel::send(conn, &Answer::Started, None);
            }
            process::execve(&path, &argv, &envp).into()
        }
        Err(e) => e,
    }
}

type Exec = (
    std::ffi::CString,
    Vec<std::ffi::CString>,
    Vec<std::ffi::CString>,
);

fn finish(
    p: &ProcessPlan,
    seccomp: Option<&[phantom_linux::seccomp::Instruction]>,
    fences: Option<&Fences>,
    preserve_fds: u32,
) -> Result<Exec, OciError> {
    let cstr = |s: &str| {
        std::ffi::CString::new(s).map_err(|_| OciError(format!("{s:?} contains a NUL byte")))
    };
    // The working directory, as root (it may be unreadable to the user, whose
    //    process then still starts there, as with runc).
    std::env::set_current_dir(&p.cwd).map_err(|e| OciError::io("process.cwd", &p.cwd, e))?;
    if let Some(mask) = p.umask {
        sys::umask(mask);
    }
    // The program, found on the container's PATH before we drop privileges.
    let program = resolve(&p.args[0], &p.env)?;
    let argv = p
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = p
        .env
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let path = cstr(&program)?;
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it now,
    //    while we have it (runc does the same); the profile must then allow the
    //    calls below (capset, setresuid, execve), as every real profile does.
    if let (Some(prog), false) = (seccomp, p.no_new_privileges) {
        phantom_linux::seccomp::install("linux.seccomp", prog)?;
    }
    // Bounding set first (shrinking it needs CAP_SETPCAP), then the ids with the
    //    permitted set kept, then the exact sets and the ambient ones.
    sys::set_bounding(p.caps[0])?;
    sys::set_keep_caps(true)?;
    sys::set_ids(p.uid, p.gid, &p.groups)?;
    sys::set_keep_caps(false)?;
    sys::set_capabilities(p.caps[1], p.caps[2], p.caps[3], p.caps[4])?;
    // The AppArmor profile takes effect at execve; written before Landlock (which
    //    would forbid the write under /proc) and seccomp.
    if let Some(profile) = &p.apparmor {
        sys::apparmor_exec_profile(profile)?;
    }
    if p.no_new_privileges {
        process::set_no_new_privs()?;
        // Landlock (strict) after no_new_privs, which it needs, and before seccomp,
        //    whose profile need not allow the landlock_* calls.
        if let Some(f) = fences {
            let abi = phantom_linux::landlock::restrict(&f.landlock, false, false, None)?;
            if abi == 0 {
                return Err(OciError(
                    "run.phantom.policy strict: Landlock could not be enforced".into(),
                ));
            }
        }
        // Seccomp last: nothing after it but execve.
        if let Some(prog) = seccomp {
            phantom_linux::seccomp::install("linux.seccomp", prog)?;
        }
    }
    // Strict's own filter after the spec's (strict forces no_new_privs): the
    //    kernel runs both and the stricter answer wins.
    if let Some(f) = fences {
        phantom_linux::seccomp::install("run.phantom.policy strict", &f.seccomp)?;
    }
    // Only stdio and the preserved fds reach the user's process.
    process::cloexec_from(3 + preserve_fds)?;
    sys::stdio_across_exec();
    sys::keep_across_exec(3, preserve_fds);
    Ok((path, argv, envp))
}

/// `args[0]` looked up on the PATH of `env` (or /usr/local/sbin:… when unset).
fn resolve(program: &str, env: &[String]) -> Result<String, OciError> {
    if program.contains('/') {
        return Ok(program.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate.to_string_lossy().into_owned());
            }
        }
    }
    Err(OciError(format!(
        "process.args[0] {program:?}: not found on the container's PATH {path:?}"
    )))
}

/// `path` (absolute, in the container) resolved inside `root`: `..` stops at the
/// root and each symlink is followed as if `root` were `/`.
pub(super) fn resolve_in_root(root: &Path, path: &Path) -> PathBuf {
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            parts.pop();
            continue;
        }
        let here: PathBuf = root.join(parts.iter().collect::<PathBuf>()).join(&part);
        match std::fs::read_link(&here) {
            Ok(target) if links < 40 => {
                links += 1;
                if target.is_absolute() {
                    parts.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => pending.push(s.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => parts.push(part),
        }
    }
    root.join(parts.iter().collect::<PathBuf>())
}

/// Write sysctl `key` through /proc/sys, for the caller's namespaces.
pub(super) fn write_sysctl(key: &str, value: &str) -> Result<(), OciError> {
    if key.contains("..") || key.contains('/') && key.contains('.') {
        return Err(OciError::refused(
            "linux.sysctl",
            &format!("{key:?} is not a sysctl name"),
        ));
    }
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| OciError(format!("linux.sysctl {key}={value}: {e}")))
}

/// Detached mounts made for the init by its index in `plan.mounts`.
pub(super) type Mounts = std::collections::HashMap<usize, OwnedFd>;

/// The detached mounts the init attaches instead of mounting: the idmapped copies
/// `create` sent (of the rootfs, and of bind sources), and the sysfs and mqueue
/// mounts the helper made in the namespaces it joined.
struct Prepared {
    root: Option<OwnedFd>,
    mounts: Mounts,
}

/// Mount `m` in `rootfs`; a mount made for us beforehand (`prepared`) is
/// attached instead.
fn mount_one(
    rootfs: &Path,
    m: &super::spec::MountPlan,
    cgroup: &Cgroup,
    prepared: Option<&OwnedFd>,
) -> Result<(), OciError> {
    let target = resolve_in_root(rootfs, &m.destination);
    let what =
        |e: phantom_linux::SysError| OciError(format!("mounts {}: {e}", m.destination.display()));
    // The mount point: a file for a bind of a file, else a directory (an idmapped
    //    copy is looked at through its fd: the source's path may not be searchable
    //    by our unprivileged root).
    let source_meta = match prepared {
        Some(tree) => tree
            .try_clone()
            .and_then(|fd| std::fs::File::from(fd).metadata())
            .ok(),
        None => m.source.as_deref().and_then(|s| std::fs::metadata(s).ok()),
    };
    let source_is_file = m.bind && source_meta.is_some_and(|meta| !meta.is_dir());
    if source_is_file {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| OciError::io("mkdir", parent, e))?;
        }
        if !target.exists() {
            std::fs::File::create(&target).map_err(|e| OciError::io("create", &target, e))?;
        }
    } else {
        std::fs::create_dir_all(&target).map_err(|e| OciError::io("mkdir", &target, e))?;
    }
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    if m.bind {
        let source = m.source.as_deref().unwrap_or("");
        // A bind ignores every flag but MS_BIND|MS_REC: the others take a remount.
        match prepared {
            Some(tree) => phantom_linux::mount::attach(tree.as_fd(), &target).map_err(what)?,
            None => sys::mount(
                Some(source),
                &target,
                None,
                m.flags & (libc::MS_BIND | libc::MS_REC),
                None,
            )
            .map_err(what)?,
        }
        let extra = m.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        if extra != 0 {
            sys::mount(
                None,
                &target,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | extra,
                None,
            )
            .map_err(what)?;
        }
    } else if m.typ == "cgroup" && cgroup.legacy() {
        // cgroup v1 inside the container, as runc does it: a tmpfs with the
        //    container's own directory of each hierarchy bound in, read-only unless
        //    the mount asks for rw.
        sys::mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("mode=755"),
        )
        .map_err(what)?;
        for (name, dir) in cgroup.v1_dirs() {
            let sub = target.join(&name);
            std::fs::create_dir_all(&sub).map_err(|e| OciError::io("mkdir", &sub, e))?;
            sys::mount(
                Some(&dir.to_string_lossy()),
                &sub,
                None,
                libc::MS_BIND,
                None,
            )
            .map_err(what)?;
            sys::mount(
                None,
                &sub,
                None,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | (m.flags
                        & (libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC)),
                None,
            )
            .map_err(what)?;
        }
        if m.flags & libc::MS_RDONLY != 0 {
            sys::mount(
                None,
                &target,
                None,
                libc::MS_REMOUNT | (m.flags & !libc::MS_REMOUNT),
                Some("mode=755"),
            )
            .map_err(what)?;
        }
    } else if m.typ == "cgroup" || m.typ == "cgroup2" {
        // A v2 host: the container's cgroup directory bound in (without a cgroup
        //    namespace, a fresh cgroup2 mount would show the host's whole tree).
        let dir = cgroup
            .v2_dir()
            .ok_or_else(|| OciError("mounts: no cgroup v2 hierarchy on this host".into()))?;
        sys::mount(
            Some(&dir.to_string_lossy()),
            &target,
            None,
            libc::MS_BIND,
            None,
        )
        .map_err(what)?;
        sys::mount(
            None,
            &target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | (m.flags & !libc::MS_REMOUNT),
            None,
        )
        .map_err(what)?;
    } else if let Some(fresh) = prepared {
        // Made by the helper in the namespace it shows (with the mount's flags).
        phantom_linux::mount::attach(fresh.as_fd(), &target).map_err(what)?;
    } else {
        let source = m.source.as_deref().unwrap_or(&m.typ);
        sys::mount(Some(source), &target, Some(&m.typ), m.flags, data).map_err(what)?;
    }
    for p in &m.propagation {
        sys::mount(None, &target, None, *p, None).map_err(what)?;
    }
    Ok(())
}

/// The devices every container gets (runtime-spec "Default Devices"): made with
/// mknod as host root; bound from the host's in a user namespace, where mknod is
/// not allowed.
fn default_devices(rootfs: &Path, in_user_ns: bool) -> Result<(), OciError> {
    let dev = resolve_in_root(rootfs, Path::new("/dev"));
    std::fs::create_dir_all(&dev).map_err(|e| OciError::io("mkdir", &dev, e))?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let target = dev.join(name);
        if std::fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        if in_user_ns {
            std::fs::File::create(&target).map_err(|e| OciError::io("create", &target, e))?;
            let host = format!("/dev/{name}");
            sys::mount(Some(&host), &target, None, libc::MS_BIND, None)?;
        } else {
            sys::mknod_char(&target, major, minor, 0o666)?;
        }
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
        ("ptmx", "pts/ptmx"),
    ] {
        let at = dev.join(link);
        if std::fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink(to, &at).map_err(|e| OciError::io("symlink", &at, e))?;
        }
    }
    Ok(())
}

fn terminal(ptmx: &Path, console: &OwnedFd, size: Option<(u16, u16)>) -> Result<(), OciError> {
    let _ = ptmx;
    let (master, slave) = sys::open_pty_at(ptmx)?;
    if let Some((rows, cols)) = size {
        sys::set_window_size(slave.as_fd(), rows, cols)?;
    }
    // The master goes to the shim over the console socket; the slave becomes our
    //    controlling terminal and stdio, which the user's process inherits.
    phantom_linux::fdpass::send_fds(console.as_fd(), b"/dev/pts/ptmx", &[master.as_fd()])?;
    process::setsid()?;
    sys::set_controlling_terminal(slave.as_fd())?;
    let _ = slave.as_raw_fd();
    Ok(())
}

fn mask(p: &Path) -> Result<(), OciError> {
    match std::fs::symlink_metadata(p) {
        Ok(meta) if meta.is_dir() => sys::mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("size=0"),
        )
        .map_err(OciError::from),
        Ok(_) => {
            sys::mount(Some("/dev/null"), p, None, libc::MS_BIND, None).map_err(OciError::from)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OciError::io("maskedPaths", p, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_in_the_image_cannot_point_a_mount_outside_the_rootfs() {
        let dir = std::env::temp_dir().join(format!("phantom-oci-rir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", dir.join("etc/escape")).unwrap();
        std::os::unix::fs::symlink("../../../../..", dir.join("up")).unwrap();
        assert_eq!(
            resolve_in_root(&dir, Path::new("/etc/escape/x")),
            dir.join("x")
        );
        assert_eq!(resolve_in_root(&dir, Path::new("/up/y")), dir.join("y"));
        assert_eq!(resolve_in_root(&dir, Path::new("/../../z")), dir.join("z"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
