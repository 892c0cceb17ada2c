//! Zygotes: a warm run that costs a fork, not a sandbox build.
//!
//! A pool whose profile runs Python keeps a zygote: a sandbox (user and mount
//! namespaces, the profile's root, its own cgroup) whose init, once the root is built,
//! becomes `python3` running `zygote.py`. The interpreter imports the profile's
//! `performance.preload` modules, loads `libphantom_zygote.so` (crates/phantom-zygote,
//! handed over as an fd) and calls [`serve`], which never runs user code in the
//! zygote itself. Per run:
//!
//! 1. engine → zygote: [`ToInit::Fork`] with the run's fds (see channel.rs). The zygote
//!    checks it is single-threaded (a threaded process is never forked) and clones a
//!    child **R** into new pid, mount, ipc, uts and network namespaces, with CPython's
//!    fork hooks around the clone;
//! 2. R, pid 1 of the run: sends its pidfd ([`FromInit::Forked`]), joins the run's
//!    cgroup and a cgroup namespace, mounts what each run gets fresh (/tmp, the
//!    workspace, /proc and its masks, /dev/pts, /dev/shm: [`per_run_steps`]), sets the
//!    hostname, brings up loopback (and the egress proxy's door), writes the request's
//!    files — then, like a cold init, forks the payload **H** and supervises it;
//! 3. H gets exactly a cold payload's fences (init.rs: `payload_prologue`,
//!    `payload_fences`) and then either goes on in the interpreter — a
//!    `python3 -c CODE` / `python3 SCRIPT` request of this very interpreter — or
//!    execs the command like any payload.
//!
//! The zygote never reads a request: the spec travels in a memfd that only R opens,
//! so no run's arguments or environment are in the memory later children inherit.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use phantom_linux::mount::{self, Attrs};
use phantom_linux::process::{self, Namespaces};
use phantom_linux::{cgroup, fdpass, net};
use phantom_policy::NetworkMode;
use serde::{Deserialize, Serialize};

use crate::channel::{self, tell, FromInit, RunSpec, ToInit};
use crate::init::{self, PayloadBase, PayloadContext, PayloadStart, Sources, Step};

/// The library a zygote loads to serve runs (the cdylib of crates/phantom-zygote).
pub(crate) const LIBRARY: &str = "libphantom_zygote.so";

/// The fds the zygote's interpreter finds at fixed numbers (zygote.py uses them).
const CHAN_FD: RawFd = 3;
const LIBRARY_FD: RawFd = 4;
const PLAN_FD: RawFd = 5;

/// The largest request spec a zygote's child reads.
const SPEC_MAX: usize = 16 << 20;

/// Network namespaces a zygote makes ahead, while no request waits: a new one costs
/// about a millisecond, more than anything else in a fork.
const SPARE_NETWORKS: usize = 2;

/// Fresh network namespaces, made by the zygote between requests (each used by one
/// run at most). The zygote makes one by moving itself into it (unshare); so the one
/// it sits in is never handed out, only those it left.
struct SpareNetworks {
    ready: std::collections::VecDeque<OwnedFd>,
    /// The namespace the zygote is in now.
    current: Option<OwnedFd>,
}

impl SpareNetworks {
    fn own() -> Result<OwnedFd, phantom_linux::SysError> {
        std::fs::File::open("/proc/self/ns/net")
            .map(OwnedFd::from)
            .map_err(|e| phantom_linux::SysError::new("open", "/proc/self/ns/net", e))
    }

    /// Make one more: leave the current namespace for a new one, and keep the one left.
    fn make(&mut self) -> Result<(), phantom_linux::SysError> {
        let left = match self.current.take() {
            Some(fd) => fd,
            None => SpareNetworks::own()?,
        };
        process::unshare_network_namespace()?;
        self.current = Some(SpareNetworks::own()?);
        self.ready.push_back(left);
        Ok(())
    }
}

/// Where the zygote library is: `$PHANTOM_ZYGOTE_LIB`, else next to the running
/// binary, else in `../lib/phantom/` from it (an installed prefix).
pub(crate) fn library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PHANTOM_ZYGOTE_LIB") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "PHANTOM_ZYGOTE_LIB={}: no such file",
                path.display()
            ))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [dir.join(LIBRARY), dir.join("../lib/phantom").join(LIBRARY)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "{LIBRARY} is neither in {} nor in {} (it is built with the workspace: `cargo build --release`; or set PHANTOM_ZYGOTE_LIB)",
            dir.display(),
            dir.join("../lib/phantom").display()
        )
    })
}

/// What a zygote's children are built from, written by the engine into a memfd the
/// zygote reads once at start.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ForkPlan {
    /// The pool, for messages.
    pub pool: String,
    /// The mounts each run gets fresh ([`per_run_steps`]).
    pub steps: Vec<Step>,
    pub base: PayloadBase,
    pub hostname: String,
    pub network: NetworkMode,
    /// The workspace as the sandbox sees it (where a request's files go).
    pub files_dir: PathBuf,
    /// Size of a run's own workspace (a tmpfs, charged to its memory cgroup).
    pub workspace_bytes: u64,
}

/// The steps of a plan that each run gets fresh in its own mount namespace: every
/// tmpfs, the workspace, /proc, /dev's pts and shm, and what the plan puts inside
/// those (masks, read-only remounts, files, symlinks). Everything else — the root and
/// its read-only binds — the runs share with the zygote. Err: a step a child could
/// not redo without the host (a bind inside one of those mounts).
pub(crate) fn per_run_steps(steps: &[Step]) -> Result<Vec<Step>, String> {
    let fresh: Vec<&Path> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Tmpfs { target, .. }
            | Step::Workspace { target, .. }
            | Step::Proc { target }
            | Step::Dev { target, .. } => Some(target.as_path()),
            _ => None,
        })
        .collect();
    let inside = |t: &Path| fresh.iter().any(|f| t.starts_with(f));
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Tmpfs { .. } | Step::Workspace { .. } | Step::Proc { .. } | Step::Dev { .. } => {
                out.push(step.clone())
            }
            Step::Mask { target }
            | Step::ReadOnly { target }
            | Step::File { target, .. }
            | Step::Symlink { target, .. } => {
                if inside(target) {
                    out.push(step.clone());
                }
            }
            Step::Bind { target, .. } if inside(target) => {
                return Err(format!(
                    "the policy binds {} inside a mount each run gets fresh; a zygote's child cannot redo host binds",
                    target.display()
                ))
            }
            Step::Bind { .. } | Step::ImageRoot { .. } => {}
        }
    }
    Ok(out)
}

/// What the engine hands a zygote's init (`ChildPayload::Zygote`).
#[derive(Debug)]
pub(crate) struct ZygoteStart {
    /// A memfd holding the [`ForkPlan`] (JSON).
    pub plan: OwnedFd,
    /// [`LIBRARY`], opened by the engine.
    pub library: OwnedFd,
    /// `python3 -c BOOT zygote.py fork MODULE...`
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub path_var: String,
}

impl ZygoteStart {
    /// The fds the init must keep for it.
    pub(crate) fn fds(&self) -> Vec<RawFd> {
        vec![self.plan.as_raw_fd(), self.library.as_raw_fd()]
    }

    /// Become the zygote: python3 with the channel, the library and the plan at fds
    /// 3, 4 and 5, stdin and stdout on /dev/null, stderr kept (the engine's log).
    /// Returns only on failure, with why.
    pub(crate) fn exec(&self, chan: &OwnedFd) -> String {
        let python3 = CString::new("python3").expect("static");
        let Some(program) = init::resolve(&python3, &self.path_var) else {
            return format!(
                "interpreter: a zygote needs python3, which is not in this root (PATH={})",
                self.path_var
            );
        };
        let result = (|| -> Result<(), phantom_linux::SysError> {
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| phantom_linux::SysError::new("open", "/dev/null", e))?;
            // Out of the way first, so that placing one cannot overwrite another.
            let high = |fd: &OwnedFd| {
                rustix::io::fcntl_dupfd_cloexec(fd, 64)
                    .map_err(|e| phantom_linux::SysError::new("fcntl", "F_DUPFD", e.into()))
            };
            let (chan, library, plan) = (high(chan)?, high(&self.library)?, high(&self.plan)?);
            process::dup_onto(null.as_fd(), 0)?;
            process::dup_onto(null.as_fd(), 1)?;
            process::dup_onto(chan.as_fd(), CHAN_FD)?;
            process::dup_onto(library.as_fd(), LIBRARY_FD)?;
            process::dup_onto(plan.as_fd(), PLAN_FD)?;
            process::cloexec_from(PLAN_FD as u32 + 1)?;
            // The init blocked these for its own loop; the interpreter starts clean.
            let mut signals = process::FORWARDED_SIGNALS.to_vec();
            signals.push(libc::SIGCHLD);
            process::reset_signals(&signals)
        })();
        if let Err(e) = result {
            return format!("zygote: {e}");
        }
        process::set_name("phantom:zygote");
        let err = process::execve(&program, &self.argv, &self.env);
        format!("zygote: {err}")
    }
}

/// CPython's fork hooks (`PyOS_BeforeFork`, `PyOS_AfterFork_Parent`,
/// `PyOS_AfterFork_Child`), passed in by zygote.py: around a fork they take and
/// re-initialise the interpreter's locks and run `os.register_at_fork` callbacks (which
/// reseed `random`).
#[derive(Debug, Clone, Copy)]
pub struct PythonHooks {
    pub before: Option<extern "C" fn()>,
    pub after_parent: Option<extern "C" fn()>,
    pub after_child: Option<extern "C" fn()>,
}

impl PythonHooks {
    fn call(hook: Option<extern "C" fn()>) {
        if let Some(f) = hook {
            f()
        }
    }
}

/// Why [`serve`] returned in the zygote (it returns a run's fd in a child).
pub const SERVE_STOPPED: i32 = -1;
pub const SERVE_FAILED: i32 = -2;

/// The zygote's loop (called by zygote.py through the library): report ready, then
/// fork a child per [`ToInit::Fork`]. Returns, in the zygote, [`SERVE_STOPPED`] when
/// the engine closed the channel and [`SERVE_FAILED`] when the zygote cannot go on
/// (the engine was told why); in a child that is to run Python code, the fd (3) of
/// its request (JSON: `{"argv": [...], "env": [[k, v], ...]}`), with every fence on.
pub fn serve(hooks: PythonHooks) -> i32 {
    let taken = (|| -> Result<(OwnedFd, ForkPlan), String> {
        let chan = process::take_inherited(CHAN_FD).map_err(|e| e.to_string())?;
        let plan_fd = process::take_inherited(PLAN_FD).map_err(|e| e.to_string())?;
        let bytes =
            channel::read_memfd(&plan_fd, "fork plan", SPEC_MAX).map_err(|e| e.to_string())?;
        let plan = serde_json::from_slice(&bytes).map_err(|e| format!("fork plan: {e}"))?;
        Ok((chan, plan))
    })();
    let (chan, plan) = match taken {
        Ok(t) => t,
        Err(e) => {
            eprintln!("phantom: zygote: {e}");
            return SERVE_FAILED;
        }
    };
    // The library's fd: loaded already, not needed again.
    drop(process::take_inherited(LIBRARY_FD));
    // What a Python request must match to run in this interpreter.
    let interpreter = std::fs::canonicalize("/proc/self/exe").unwrap_or_default();
    let startup_env: Vec<(String, String)> = std::env::vars().collect();
    if tell(&chan, &FromInit::Ready).is_err() {
        return SERVE_STOPPED;
    }
    let own_network = plan.network != NetworkMode::Host;
    let mut spares = SpareNetworks {
        ready: Default::default(),
        current: None,
    };
    loop {
        // Ahead of the next request, while none waits.
        while own_network
            && spares.ready.len() < SPARE_NETWORKS
            && !channel::readable(chan.as_fd(), std::time::Duration::ZERO)
        {
            if spares.make().is_err() {
                break;
            }
        }
        let (message, fds) =
            match channel::recv::<ToInit>(chan.as_fd(), 4096, fdpass::MAX_FDS, "engine") {
                Ok(m) => m,
                Err(channel::ChannelError::Closed { .. }) => return SERVE_STOPPED,
                Err(e) => {
                    let _ = tell(
                        &chan,
                        &FromInit::SetupFailed {
                            message: e.to_string(),
                        },
                    );
                    return SERVE_FAILED;
                }
            };
        if !matches!(message, ToInit::Fork) || fds.len() < 3 {
            let message = format!(
                "zygote of pool {}: expected a fork with its fds, received {} with {}",
                plan.pool,
                message.name(),
                fds.len()
            );
            let _ = tell(&chan, &FromInit::SetupFailed { message });
            return SERVE_FAILED;
        }
        // A spare network namespace if one is ready, else a new one with the clone.
        let network = if own_network {
            spares.ready.pop_front()
        } else {
            None
        };
        let ns = Namespaces {
            pid: true,
            mount: true,
            ipc: true,
            uts: true,
            net: own_network && network.is_none(),
            ..Namespaces::default()
        };
        PythonHooks::call(hooks.before);
        // clone_child refuses a multi-threaded process: a preloaded module that
        // started a thread makes the zygote stop, loudly, instead of forking it.
        match process::clone_child(ns, None) {
            Ok(process::Forked::Child) => {
                PythonHooks::call(hooks.after_child);
                // The zygote's other spares are not this run's.
                drop(spares);
                return child(&plan, &interpreter, &startup_env, chan, network, fds);
            }
            Ok(process::Forked::Parent { .. }) => {
                // The child is reaped by the kernel (SIGCHLD is ignored here); our
                // copies of the run's fds go now.
                PythonHooks::call(hooks.after_parent);
            }
            Err(e) => {
                PythonHooks::call(hooks.after_parent);
                let message = format!("zygote of pool {} cannot fork: {e}", plan.pool);
                let _ = channel::send(
                    fds[1].as_fd(),
                    &FromInit::SetupFailed {
                        message: message.clone(),
                    },
                    &[],
                );
                let _ = tell(&chan, &FromInit::SetupFailed { message });
                return SERVE_FAILED;
            }
        }
    }
}

/// A run's pid 1 (R in the module docs). Returns only in the payload, when it is to
/// go on in the interpreter.
fn child(
    plan: &ForkPlan,
    interpreter: &Path,
    startup_env: &[(String, String)],
    zygote_chan: OwnedFd,
    network: Option<OwnedFd>,
    mut fds: Vec<OwnedFd>,
) -> i32 {
    // Nothing of the zygote's channel reaches the run.
    drop(zygote_chan);
    let spec_fd = fds.remove(0);
    let chan = fds.remove(0);
    let lock = fds.remove(0);
    process::set_name("phantom:init");
    let fail = |message: String| -> ! {
        let _ = tell(&chan, &FromInit::SetupFailed { message });
        process::exit_now(1)
    };
    let mut waited = process::FORWARDED_SIGNALS.to_vec();
    waited.push(libc::SIGCHLD);
    // SIGCHLD was ignored in the zygote (children reaped by the kernel); this init
    // waits for its payload. Forwarded signals are read synchronously by supervise().
    if let Err(e) = process::reset_signals(&[libc::SIGCHLD])
        .and_then(|()| process::block_signals(&waited))
        .and_then(|()| process::set_parent_death_signal_kill())
    {
        fail(e.to_string())
    }
    let spec: RunSpec = match channel::read_memfd(&spec_fd, "run spec", SPEC_MAX)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("run spec: {e}")))
    {
        Ok(spec) => spec,
        Err(e) => fail(e),
    };
    drop(spec_fd);
    if fds.len() < spec.fd_count() {
        fail(format!(
            "the run came with {} fds, expected {} or more",
            fds.len(),
            spec.fd_count()
        ))
    }
    let cgroups = fds.split_off(spec.fd_count());
    // The engine waits for this (it is not our parent); then the limits.
    let pidfd = process::pidfd_open(process::getpid()).unwrap_or_else(|e| fail(e.to_string()));
    if let Err(e) = channel::send(chan.as_fd(), &FromInit::Forked, &[pidfd.as_fd()]) {
        fail(e.to_string())
    }
    drop(pidfd);
    // The spare network namespace the zygote made for it, unused by anyone.
    if let Some(net) = network {
        if let Err(e) = process::enter_network_namespace(net.as_fd()) {
            fail(e.to_string())
        }
    }
    // Into the run's cgroup before anything runs that its limits must cover; the
    // files were opened by the engine, whose credentials the kernel checks.
    if let Err(e) = cgroup::join_self(&cgroups) {
        fail(e.to_string())
    }
    drop(cgroups);
    if let Err(e) = process::unshare_cgroup_namespace().and_then(|()| process::set_non_dumpable()) {
        fail(e.to_string())
    }
    let (payload, workspace) = match PayloadContext::from_run(&plan.base, spec.clone(), fds) {
        Ok(p) => p,
        Err(e) => fail(e),
    };
    if let Err(e) = remount(plan, workspace.as_ref()) {
        fail(e.to_string())
    }
    drop(workspace);
    if let Err(e) = process::sethostname(&plan.hostname) {
        fail(e.to_string())
    }
    if matches!(
        plan.network,
        NetworkMode::LoopbackOnly | NetworkMode::Limited
    ) {
        if let Err(e) = net::loopback_up() {
            fail(e.to_string())
        }
    }
    if plan.network == NetworkMode::Limited {
        // The egress proxy's door, as a cold init makes it (init.rs).
        let listener = net::listen_loopback(phantom_policy::egress::PROXY_PORT)
            .unwrap_or_else(|e| fail(e.to_string()));
        if let Err(e) = channel::send(chan.as_fd(), &FromInit::Proxy, &[listener.as_fd()]) {
            fail(e.to_string())
        }
    }
    init::write_files(&payload, &plan.files_dir, &chan);
    let in_interpreter = init::python_serves(&spec, interpreter, startup_env);
    match process::clone_child(Namespaces::default(), None) {
        Ok(process::Forked::Child) if in_interpreter => {
            let fd = go_on_in_interpreter(payload, &chan, &spec);
            // Closed by the fences already: never closed again, never used.
            std::mem::forget(chan);
            std::mem::forget(lock);
            fd
        }
        Ok(process::Forked::Child) => init::payload(&payload, &chan),
        Ok(process::Forked::Parent { pid, pidfd }) => {
            drop(payload);
            if in_interpreter {
                // Counted by the pool with the pre-started interpreters' runs.
                let _ = tell(&chan, &FromInit::Prewarmed);
            }
            init::supervise(&chan, &mut PayloadStart { pid, _pidfd: pidfd })
        }
        Err(e) => fail(e.to_string()),
    }
}

/// The payload, going on in the interpreter: a cold payload's prologue and fences,
/// with its request at fd 3 for zygote.py. Returns 3.
fn go_on_in_interpreter(mut payload: PayloadContext, chan: &OwnedFd, spec: &RunSpec) -> i32 {
    // As a fresh `python3` would be named (the init named this process).
    let name = Path::new(&spec.argv[0])
        .file_name()
        .map_or("python3".into(), |n| n.to_string_lossy().into_owned());
    process::set_name(&name);
    // The zygote's dispositions are a fresh interpreter's (SIGINT raises
    // KeyboardInterrupt, SIGPIPE ignored); only the mask the init set goes.
    if let Err(e) = process::reset_signals(&[libc::SIGCHLD]) {
        init::payload_failed(&payload, 126, e.to_string());
    }
    init::payload_prologue(&payload, chan);
    let request = serde_json::json!({ "argv": spec.argv, "env": spec.env });
    match channel::memfd_with("phantom-request", request.to_string().as_bytes()) {
        Ok(fd) => payload.fd3 = Some(fd),
        Err(e) => init::payload_failed(&payload, 126, e.to_string()),
    }
    init::payload_fences(&payload, chan, true);
    // Every fd it owned but stdio and fd 3 is closed now.
    std::mem::forget(payload);
    3
}

/// Mount what each run gets fresh (see [`per_run_steps`]), over the zygote's own.
fn remount(plan: &ForkPlan, workspace: Option<&OwnedFd>) -> Result<(), phantom_linux::SysError> {
    let root = Path::new("/");
    let sources = Sources::in_sandbox(plan.steps.len())?;
    for (i, step) in plan.steps.iter().enumerate() {
        match step {
            Step::Workspace { target, noexec, .. } if workspace.is_none() => mount::tmpfs(
                target,
                &format!("mode=0755,size={}", plan.workspace_bytes),
                Attrs {
                    nosuid: true,
                    nodev: true,
                    noexec: *noexec,
                    read_only: false,
                },
            )?,
            Step::Dev {
                target,
                shm_size_bytes,
                shm_read_only,
                noexec,
                ..
            } => {
                // Terminals and POSIX shared memory of their own; the device nodes
                // are the zygote's (read-only binds of the host's).
                mount::devpts(&target.join("pts"))?;
                init::mount_shm(target, *shm_size_bytes, *shm_read_only, *noexec)?;
            }
            _ => init::apply_step(root, step, &sources, i, workspace)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps_of(profile: &str) -> Vec<Step> {
        let profile = phantom_policy::load_builtin(profile).unwrap();
        let plan =
            phantom_policy::compile(&profile, &phantom_policy::Overrides::default()).unwrap();
        crate::spawn::prepare_steps(&plan, Path::new("/tmp")).unwrap()
    }

    #[test]
    fn each_run_gets_tmp_workspace_proc_and_dev_fresh_and_shares_the_root() {
        let all = steps_of("python-dev");
        let fresh = per_run_steps(&all).unwrap();
        let targets: Vec<String> = fresh
            .iter()
            .filter_map(|s| match s {
                Step::Tmpfs { target, .. }
                | Step::Workspace { target, .. }
                | Step::Proc { target }
                | Step::Dev { target, .. } => Some(target.display().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(targets, ["/tmp", "/workspace", "/proc", "/dev"]);
        // The masks over /proc are redone on the run's own /proc.
        assert!(fresh
            .iter()
            .any(|s| matches!(s, Step::Mask { target } if target.starts_with("/proc"))));
        // The root's binds are shared, never redone.
        assert!(!fresh.iter().any(|s| matches!(s, Step::Bind { .. })));
        assert!(all.iter().any(|s| matches!(s, Step::Bind { .. })));
    }

    #[test]
    fn a_bind_inside_a_fresh_mount_cannot_be_forked() {
        let mut all = steps_of("default");
        all.push(Step::Bind {
            source: "/etc".into(),
            target: "/tmp/etc".into(),
            is_dir: true,
            read_only: true,
        });
        let e = per_run_steps(&all).unwrap_err();
        assert!(e.contains("/tmp/etc"), "{e}");
    }
}
