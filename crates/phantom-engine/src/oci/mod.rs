//! The OCI runtime: an OCI bundle (config.json + rootfs) turned into a container
//! whose init is a child of the caller, following the runtime-spec state machine
//! (create → created → start → running → stopped → delete). phantom-oci (the
//! runc-compatible command line) is the front end; every kernel operation goes
//! through phantom-linux.
//!
//! * [`spec`] — what of config.json is supported; everything else is refused with
//!   one line naming the field.
//! * [`init`] — the container's init: one linear setup function.
//! * [`channel`] — the typed messages between `create`, `start`, `exec` and the
//!   processes they fork.
//! * [`cgroup`] — the cgroup `linux.cgroupsPath` names (v1 and v2).
//! * [`seccomp`] — the OCI seccomp JSON compiled to classic BPF.
//! * [`strict`] — Phantom's fences on top, for `run.phantom.policy: strict`;
//!   [`idmap`] — the idmapped rootfs and binds of its user namespace, and the
//!   binds the spec asks to idmap.

pub mod cgroup;
mod channel;
mod devices;
pub mod hooks;
mod idmap;
mod init;
pub mod seccomp;
pub mod spec;
pub mod strict;

use std::path::{Path, PathBuf};

pub use oci_spec::runtime::{LinuxResources, Process, Spec};
use phantom_linux::fdpass;
use phantom_linux::process::{self, Forked, Namespaces};

use channel::{Answer, Order};

pub use cgroup::Cgroup;

/// One line that says what was wrong and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError(pub String);

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OciError {}

impl OciError {
    /// A config.json field phantom-oci does not support.
    pub fn refused(field: &str, why: &str) -> OciError {
        OciError(format!("{field}: {why}"))
    }

    fn io(what: &str, path: &Path, e: std::io::Error) -> OciError {
        OciError(format!("{what} {}: {e}", path.display()))
    }
}

impl From<phantom_linux::SysError> for OciError {
    fn from(e: phantom_linux::SysError) -> Self {
        OciError(e.to_string())
    }
}

/// What `create` needs besides the bundle.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    /// Where `start` connects to release the init (in the state directory).
    pub start_socket: PathBuf,
    /// `--console-socket`: where the pty master goes when `process.terminal`.
    pub console_socket: Option<PathBuf>,
    /// `--preserve-fds N`: fds 3..3+N are passed to the container's process.
    pub preserve_fds: u32,
    /// `--no-pivot`: chroot after moving the rootfs onto / instead of pivot_root.
    pub no_pivot: bool,
    /// `--no-new-keyring`: keep the caller's session keyring instead of a new one.
    pub no_new_keyring: bool,
}

/// A created container: its init's pid (in the caller's pid namespace) and start
/// time (to tell it from a later process with a reused pid), and its cgroup path.
#[derive(Debug, Clone)]
pub struct Created {
    pub pid: i32,
    pub start_time: u64,
    pub cgroup_path: String,
    /// The cgroup is in the v2 hierarchy only (`PHANTOM_OCI_CGROUP=v2`).
    pub cgroup_v2_only: bool,
    /// The spec's annotations (for the state JSON).
    pub annotations: std::collections::HashMap<String, String>,
    /// Warnings for the caller's log (a strict fence that could not apply).
    pub warnings: Vec<String>,
}

/// What `exec` needs: the container's bundle (its spec gives the seccomp profile),
/// its init (whose namespaces are joined) and cgroup, and the process to run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub bundle: PathBuf,
    pub init_pid: i32,
    pub cgroup_path: String,
    pub cgroup_v2_only: bool,
    pub process: Process,
    /// `--tty`: a terminal, whatever `process.terminal` says.
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// Read and check `bundle/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, OciError> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| OciError(format!("{}: {e}", path.display())))?;
    spec::check(&spec)?;
    Ok(spec)
}

/// Create the container of `req`: its cgroup, its init (a child of the caller, in
/// its namespaces, its root set up), blocked before the user's process until
/// [`start`] connects to `req.start_socket`. The caller must be single-threaded.
///
/// `record` is called with the cgroup path (and whether it is v2-only) as soon as
/// the cgroup exists, before any process: the front end records it so that a
/// `create` killed half-way can still be deleted without leaving the cgroup.
pub fn create(
    req: &CreateRequest,
    record: &mut dyn FnMut(&str, bool) -> Result<(), OciError>,
) -> Result<Created, OciError> {
    let spec = load(&req.bundle)?;
    let plan = spec::plan(&spec, &req.bundle, &req.id)?;
    if plan.terminal && req.console_socket.is_none() {
        return Err(OciError(
            "process.terminal is true but no --console-socket was given".into(),
        ));
    }
    let cgroup = Cgroup::at(&plan.cgroup_path, plan.cgroup_v2_only);
    if let Err(e) = cgroup
        .create(plan.resources.as_ref())
        .and_then(|()| record(&plan.cgroup_path, plan.cgroup_v2_only))
    {
        cgroup.remove();
        return Err(e);
    }
    match spawn_init(req, &plan, &cgroup) {
        Ok(pid) => Ok(Created {
            pid,
            start_time: process::start_time(pid).unwrap_or(0),
            cgroup_path: plan.cgroup_path.clone(),
            cgroup_v2_only: plan.cgroup_v2_only,
            annotations: spec.annotations().clone().unwrap_or_default(),
            warnings: plan.warnings.clone(),
        }),
        Err(e) => {
            for pid in cgroup.pids() {
                let _ = process::kill(pid, libc::SIGKILL);
            }
            cgroup.remove();
            Err(e)
        }
    }
}

fn spawn_init(req: &CreateRequest, plan: &spec::Plan, cgroup: &Cgroup) -> Result<i32, OciError> {
    // The start socket is bound here, on the host's tree: the init inherits the
    // listening fd and accepts on it after pivot_root, when the path is out of reach.
    let listener = fdpass::listen_seqpacket(&req.start_socket)?;
    // The console socket, likewise, is connected before the init loses the host's
    // tree; the init sends the pty master over it once its /dev/pts exists.
    let console = match (&req.console_socket, plan.terminal) {
        (Some(path), true) => Some(phantom_linux::oci::connect_stream(path)?),
        _ => None,
    };
    let (parent_end, child_end) = fdpass::channel()?;
    // Only the user and pid namespaces are created by clone: the pid namespace must
    // be (unshare(CLONE_NEWPID) would not move the caller), and it must be owned by
    // the new user namespace so that the init can mount its /proc. The others are
    // unshared by the init.
    let ns = Namespaces {
        user: plan.new_user,
        pid: plan.new_pid,
        ..Namespaces::default()
    };
    // Namespaces given by path (a pod's) are joined by a helper child, which then
    // forks the init into them as a child of ours (CLONE_PARENT) and exits: as host
    // root it can join namespaces the host's user namespace owns, which the init,
    // born in a user namespace of its own, could not; and it can join a pid
    // namespace (which only a process's children enter) or a user namespace
    // (last: it gives up host root's capabilities) without changing ours.
    let helper = plan.joins_by_path();
    // In strict's user namespace the init's root is an unprivileged host uid, which
    // may not search the bundle's directories (containerd makes them 0700 when the
    // spec has no user namespace): it is born with the rootfs as its working
    // directory instead, and attaches the idmapped root there (init step 7).
    let cwd = if plan.idmapped {
        let old = std::env::current_dir().map_err(|e| OciError(format!("getcwd: {e}")))?;
        std::env::set_current_dir(&plan.rootfs)
            .map_err(|e| OciError::io("chdir", &plan.rootfs, e))?;
        Some(old)
    } else {
        None
    };
    let forked = process::clone_child(if helper { Namespaces::default() } else { ns }, None);
    // Back to where we were (the parent only: the init keeps the rootfs).
    if let (Some(old), Ok(Forked::Parent { .. }) | Err(_)) = (cwd, &forked) {
        std::env::set_current_dir(&old).map_err(|e| OciError::io("chdir", &old, e))?;
    }
    match forked? {
        Forked::Child if helper => {
            drop(parent_end);
            init::join_and_fork(plan, req, ns, child_end, listener, console)
        }
        Forked::Child => {
            drop(parent_end);
            init::run(
                plan,
                req,
                child_end,
                listener,
                console,
                init::Mounts::default(),
            )
        }
        Forked::Parent { pid, pidfd: _pidfd } => {
            drop(child_end);
            drop(listener);
            drop(console);
            let pid = if helper {
                // The helper answers with the init's pid (or what failed) and exits.
                let answer = channel::recv::<Answer>(&parent_end, "helper");
                let _ = process::wait4(pid, false);
                match answer? {
                    Some((Answer::Forked { pid }, _)) => pid,
                    Some((Answer::Failed { error }, _)) => return Err(OciError(error)),
                    Some((other, _)) => {
                        return Err(OciError(format!("the helper answered {other:?}")))
                    }
                    None => {
                        return Err(OciError(
                            "the helper that joins the namespaces exited (see the log for why)"
                                .into(),
                        ))
                    }
                }
            } else {
                pid
            };
            let release = (|| -> Result<(), OciError> {
                // Before the init runs a single step: it joins its cgroup (so that
                // everything it creates is accounted there, and a cgroup namespace
                // it unshares is rooted there) and, in a new user namespace, gets
                // its uid/gid maps (which only a process outside may write).
                cgroup.add(pid)?;
                if let Some(adj) = plan.process.oom_score_adj {
                    init::set_oom_score_adj(&pid.to_string(), adj)?;
                }
                if plan.new_user {
                    write_id_maps(pid, &plan.uid_maps, &plan.gid_maps)?;
                }
                // strict's user namespace: idmapped copies of the rootfs and the
                // bind sources, made here because only host root may idmap a host
                // filesystem (after the maps: the idmapping is read from them).
                if plan.idmapped {
                    idmap::send(pid, plan, &parent_end)?;
                }
                // The binds the spec asks to idmap, likewise.
                idmap::send_spec_mounts(pid, plan, &parent_end)?;
                // The init's pid as the host sees it, for the hooks' state JSON.
                channel::send(&parent_end, &Order::Go { pid }, None)
            })();
            let outcome = release.and_then(|()| loop {
                match channel::recv::<Answer>(&parent_end, "init")? {
                    Some((Answer::Ready, _)) => return Ok(()),
                    // The init's namespaces and mounts exist: the createRuntime (and
                    // deprecated prestart) hooks run now, in the runtime's namespaces.
                    Some((Answer::Hooks, _)) => {
                        let state = hooks::state_json(
                            &req.id,
                            pid,
                            &req.bundle,
                            "creating",
                            &plan.annotations,
                        );
                        let ran = hooks::run(
                            "prestart",
                            plan.hooks.prestart().as_deref().unwrap_or(&[]),
                            &state,
                        )
                        .and_then(|()| {
                            hooks::run(
                                "createRuntime",
                                plan.hooks.create_runtime().as_deref().unwrap_or(&[]),
                                &state,
                            )
                        });
                        match ran {
                            Ok(()) => channel::send(&parent_end, &Order::Continue, None)?,
                            Err(e) => {
                                let _ = channel::send(&parent_end, &Order::Abort, None);
                                return Err(e);
                            }
                        }
                    }
                    Some((Answer::Failed { error }, _)) => return Err(OciError(error)),
                    Some((other, _)) => {
                        return Err(OciError(format!("the init answered {other:?}")))
                    }
                    None => {
                        return Err(OciError(
                            "the container's init exited during setup (see the log for why)".into(),
                        ))
                    }
                }
            });
            match outcome {
                Ok(()) => Ok(pid),
                Err(e) => {
                    let _ = process::kill(pid, libc::SIGKILL);
                    let _ = process::wait4(pid, false);
                    Err(e)
                }
            }
        }
    }
}

/// Write the uid and gid maps of the user namespace of `pid` (a child of ours).
fn write_id_maps(
    pid: i32,
    uid: &[(u32, u32, u32)],
    gid: &[(u32, u32, u32)],
) -> Result<(), OciError> {
    for (file, maps) in [("uid_map", uid), ("gid_map", gid)] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        let text: String = maps
            .iter()
            .map(|(c, h, n)| format!("{c} {h} {n}\n"))
            .collect();
        std::fs::write(&path, text).map_err(|e| OciError::io("write", &path, e))?;
    }
    Ok(())
}

/// Release the init blocked in `create`: it execs the user's process.
pub fn start(start_socket: &Path) -> Result<(), OciError> {
    let sock = fdpass::connect_seqpacket(start_socket).map_err(|e| {
        OciError(format!(
            "the container's init is not waiting to start ({e}); was it already started?"
        ))
    })?;
    channel::send(&sock, &Order::Start, None)?;
    match channel::recv::<Answer>(&sock, "init")? {
        Some((Answer::Started, _)) => Ok(()),
        Some((Answer::Failed { error }, _)) => Err(OciError(error)),
        Some((other, _)) => Err(OciError(format!("the init answered {other:?}"))),
        None => Err(OciError(
            "the container's init exited before starting".into(),
        )),
    }
}

/// Whether the process `pid` that started at `start_time` is still alive (a zombie
/// counts as stopped).
pub fn alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 || !phantom_linux::oci::process_exists(pid) {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
    if matches!(state, Some(Some('Z')) | Some(Some('X'))) {
        return false;
    }
    process::start_time(pid) == Some(start_time) || start_time == 0
}

/// Send `signal` to `pid`.
pub fn signal(pid: i32, signal: i32) -> Result<(), OciError> {
    process::kill(pid, signal).map_err(OciError::from)
}

/// A signal by name (`KILL`, `SIGKILL`, `sigterm`) or number.
pub fn parse_signal(s: &str) -> Result<i32, OciError> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let table: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("IOT", libc::SIGIOT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("STKFLT", libc::SIGSTKFLT),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("POLL", libc::SIGPOLL),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ];
    if let Some((_, n)) = table.iter().find(|(n, _)| *n == name) {
        return Ok(*n);
    }
    if let Some(rest) = name.strip_prefix("RTMIN+") {
        if let Ok(k) = rest.parse::<i32>() {
            return Ok(libc::SIGRTMIN() + k);
        }
    }
    Err(OciError(format!(
        "unknown signal {s:?}: use a name such as TERM or KILL, or a number"
    )))
}

/// Wait up to `timeout` for `pid` (not our child) to be gone.
pub fn wait_gone(pid: i32, start_time: u64, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if !alive(pid, start_time) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    !alive(pid, start_time)
}

/// Run the container's poststart hooks (after `start`): their failures are
/// warnings, as the runtime-spec says.
pub fn poststart(bundle: &Path, id: &str, pid: i32) -> Vec<String> {
    lifecycle_hooks(bundle, id, pid, "running", |h| h.poststart().clone())
}

/// Run the container's poststop hooks (after `delete`): failures are warnings.
pub fn poststop(bundle: &Path, id: &str) -> Vec<String> {
    lifecycle_hooks(bundle, id, 0, "stopped", |h| h.poststop().clone())
}

fn lifecycle_hooks(
    bundle: &Path,
    id: &str,
    pid: i32,
    status: &str,
    pick: impl Fn(&oci_spec::runtime::Hooks) -> Option<Vec<oci_spec::runtime::Hook>>,
) -> Vec<String> {
    let path = bundle.join("config.json");
    let spec = match Spec::load(&path) {
        Ok(s) => s,
        Err(_) => return Vec::new(), // the bundle is gone: nothing to run
    };
    let Some(list) = spec.hooks().as_ref().and_then(&pick) else {
        return Vec::new();
    };
    let kind = if status == "running" {
        "poststart"
    } else {
        "poststop"
    };
    let state = hooks::state_json(
        id,
        pid,
        bundle,
        status,
        &spec.annotations().clone().unwrap_or_default(),
    );
    hooks::run_all(kind, &list, &state)
}

/// Wait for our child `pid` and return its exit code (128+N for signal N).
pub fn wait_child(pid: i32) -> u8 {
    match process::wait4(pid, false) {
        Ok(Some((_, status, _))) => status.code().clamp(0, 255) as u8,
        _ => 255,
    }
}

/// Run `req.process` in the running container of `req.init_pid`: in its namespaces
/// and cgroup, under the spec's seccomp profile, with the process's own user,
/// capabilities and no_new_privs. Returns the new process's pid (a child of the
/// caller). The caller must be single-threaded.
pub fn exec(req: &ExecRequest) -> Result<i32, OciError> {
    let spec = load(&req.bundle)?;
    let mut plan = spec::process_plan(&req.process)?;
    plan.terminal = plan.terminal || req.tty;
    if plan.terminal && req.console_socket.is_none() {
        return Err(OciError("exec --tty needs --console-socket".into()));
    }
    // The container's seccomp profile and policy hold for every process in it.
    let container = spec::plan(&spec, &req.bundle, "exec")?;
    let seccomp = container.seccomp;
    let fences = container.fences;
    if fences.is_some() {
        strict::harden(&mut plan);
    }
    // The init's namespaces, opened now, joined by host root in this order: the
    // user namespace last, since joining it gives up the capabilities over
    // namespaces the host's user namespace owns (a pod's network, ipc and uts,
    // which a strict container's own user namespace does not own); those we
    // already share are skipped (setns into one's own user namespace fails).
    let mut namespaces: Vec<(std::fs::File, i32, &str)> = Vec::new();
    for (name, flag) in [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
        ("user", libc::CLONE_NEWUSER),
    ] {
        let theirs = format!("/proc/{}/ns/{name}", req.init_pid);
        let same = std::fs::read_link(&theirs).ok()
            == std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        if same {
            continue;
        }
        let f = std::fs::File::open(&theirs)
            .map_err(|e| OciError::io("open", Path::new(&theirs), e))?;
        namespaces.push((f, flag, name));
    }
    let console = match (&req.console_socket, plan.terminal) {
        (Some(path), true) => Some(phantom_linux::oci::connect_stream(path)?),
        _ => None,
    };
    let cgroup = Cgroup::at(&req.cgroup_path, req.cgroup_v2_only);
    let (parent_end, child_end) = fdpass::channel()?;
    match process::clone_child(Namespaces::default(), None)? {
        Forked::Child => {
            drop(parent_end);
            init::exec_child(
                &plan,
                seccomp.as_deref(),
                fences.as_ref(),
                req.preserve_fds,
                &cgroup,
                &namespaces,
                child_end,
                console,
            )
        }
        Forked::Parent { pid, pidfd: _pidfd } => {
            drop(child_end);
            drop(console);
            let first = channel::recv::<Answer>(&parent_end, "exec");
            // The intermediate child exits as soon as it has forked the process
            // into the container's pid namespace.
            let _ = process::wait4(pid, false);
            let grandchild = match first? {
                Some((Answer::Forked { pid }, _)) => pid,
                Some((Answer::Failed { error }, _)) => return Err(OciError(error)),
                Some((other, _)) => return Err(OciError(format!("exec: answered {other:?}"))),
                None => return Err(OciError("exec: the process exited during setup".into())),
            };
            // Then EOF (its copy of the channel closes on execve) or an error.
            if let Some((answer, _)) = channel::recv::<Answer>(&parent_end, "exec")? {
                let _ = process::wait4(grandchild, false);
                return Err(OciError(match answer {
                    Answer::Failed { error } => error,
                    other => format!("exec: answered {other:?}"),
                }));
            }
            Ok(grandchild)
        }
    }
}
