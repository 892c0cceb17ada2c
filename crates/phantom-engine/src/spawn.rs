//! Starting a sandbox: everything between a compiled [`Plan`] and a sandbox init that
//! is running its setup — shared by cold runs (`server/run.rs`, where the payload is
//! known up front), the warm pools (`server/pool.rs`, where it arrives later) and the
//! keepers of persistent sandboxes (`sandbox/keeper.rs`).
//!
//! Order matters and each step says why:
//! 1. the run directory (what lets a later run clean up after this one if this front
//!    end is killed), then the cgroup and its limits (they must hold from the
//!    payload's first instruction), then the host-side steps (symlinks read, missing
//!    optional sources dropped) — all before clone, so the child only replays;
//! 2. clone3 into new user/pid/mount/net/ipc/uts namespaces; the child closes every fd
//!    it was not given, joins its v1 cgroups and waits;
//! 3. uid/gid maps written, child moved into a v2 cgroup when needed, idmapped
//!    workspace (and image root) made — all need the child to exist but must precede
//!    its setup;
//! 4. GO.
//!
//! [`Spawned::finish`] reaps the init with its rusage, reads what it reported and
//! removes the cgroup and the run directory.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use phantom_linux::cgroup::{self, Layout, SandboxCgroup};
use phantom_linux::mount::{self, Attrs};
use phantom_linux::process::{self, ExitStatus, Forked, Namespaces, Usage};
use phantom_linux::{fdpass, userns};
use phantom_policy::{Mode, Mount, Plan};

use phantom_api::engine::{Failure, FailureKind};

use crate::channel::{self, ChannelError, FromInit, GoMount, ToInit};
use crate::image_run::ImageRun;
use crate::init::{self, ChildContext, ChildPayload, MountPoint, MountPointKind, Step};
use crate::workspace::RunDir;
use crate::{ids, EngineError};

/// Step timings of one run, printed to stderr when PHANTOM_TRACE=1 (for finding where
/// start-up time goes; see docs/BENCHMARKS.md).
pub(crate) struct Trace {
    pub on: bool,
    pub start: Instant,
    last: Instant,
}

impl Trace {
    pub(crate) fn new(start: Instant) -> Trace {
        Trace {
            on: std::env::var_os("PHANTOM_TRACE").is_some_and(|v| v == "1"),
            start,
            last: start,
        }
    }

    pub(crate) fn step(&mut self, name: &str) {
        if self.on {
            let now = Instant::now();
            eprintln!(
                "phantom: trace: {:>8.3} ms  +{:>7.3} ms  {name}",
                ms(now - self.start),
                ms(now - self.last)
            );
            self.last = now;
        }
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// What the sandbox told the front end over the channel (protocol in init.rs).
#[derive(Debug, Default)]
pub(crate) struct SandboxStatus {
    pub setup_error: Option<String>,
    /// A request value that turned out wrong inside the sandbox (e.g. its working
    /// directory).
    pub refused: Option<Failure>,
    pub landlock_abi: u32,
    pub payload: Option<ExitStatus>,
    /// The payload's own rusage, sent with its status.
    pub payload_usage: Option<Usage>,
    /// A pre-started interpreter took the run.
    pub prewarmed: bool,
    /// Size-limited filesystems that were full when the payload ended.
    pub full: Vec<String>,
    /// Mode wasm: the module was loaded (compiled now?, milliseconds).
    pub wasm_loaded: Option<(bool, f64)>,
    /// Mode wasm: the module's own timeout fired (epoch interruption).
    pub timed_out: bool,
}

impl SandboxStatus {
    /// Record one message from the sandbox; returns a trace label for it. A message
    /// that has no place after setup (`Ready`, `Namespaces`, `Proxy` without its
    /// socket) is an error of the sandbox's setup, never ignored.
    pub(crate) fn record(&mut self, msg: FromInit) -> &'static str {
        match msg {
            FromInit::SetupFailed { message } => {
                self.setup_error = Some(message);
                "sandbox setup failed"
            }
            FromInit::Refused {
                field,
                value,
                message,
            } => {
                self.refused = Some(Failure {
                    kind: FailureKind::Invalid,
                    message,
                    field,
                    value,
                });
                "request refused inside the sandbox"
            }
            FromInit::WasmLoaded { compiled, load_ms } => {
                self.wasm_loaded = Some((compiled, load_ms));
                if compiled {
                    "wasm module compiled"
                } else {
                    "wasm module loaded from the compile cache"
                }
            }
            FromInit::TimedOut => {
                self.timed_out = true;
                "wasm module timed out"
            }
            FromInit::Prewarmed => {
                self.prewarmed = true;
                "the pre-started interpreter took the run"
            }
            FromInit::Landlock { abi } => {
                self.landlock_abi = abi;
                "payload fenced (landlock applied)"
            }
            FromInit::Exited {
                status,
                user_us,
                sys_us,
                max_rss_kb,
                full,
            } => {
                self.full = full;
                let status: ExitStatus = status.into();
                self.payload = Some(status);
                self.payload_usage = Some(Usage {
                    user: Duration::from_micros(user_us),
                    sys: Duration::from_micros(sys_us),
                    max_rss_kb,
                });
                match status {
                    ExitStatus::Exited(_) => "payload exited",
                    ExitStatus::Signaled(_) => "payload killed",
                }
            }
            other @ (FromInit::Ready
            | FromInit::Namespaces
            | FromInit::Proxy
            | FromInit::Forked
            | FromInit::Preloaded { .. }) => {
                self.setup_error.get_or_insert_with(|| {
                    format!("unexpected message from the sandbox: {}", other.name())
                });
                "unexpected message"
            }
        }
    }

    /// Receive one message from `chan` and record it; `Err` when the channel is
    /// closed or broken (the caller stops reading it).
    pub(crate) fn receive(&mut self, chan: BorrowedFd<'_>) -> Result<&'static str, ChannelError> {
        let (msg, _) = channel::recv::<FromInit>(chan, channel::FROM_INIT_MAX, 0, "sandbox")?;
        Ok(self.record(msg))
    }

    /// Record the messages still queued on `chan` (sent just before the sender exited).
    pub(crate) fn drain(&mut self, chan: BorrowedFd<'_>) {
        while channel::readable(chan, Duration::ZERO) {
            if self.receive(chan).is_err() {
                break;
            }
        }
    }

    /// Why the run failed, when it did: a request refused inside the sandbox (the
    /// caller's mistake), or a failed setup.
    pub(crate) fn failure(&self) -> Option<Failure> {
        if let Some(f) = &self.refused {
            return Some(f.clone());
        }
        self.setup_error
            .as_ref()
            .map(|e| Failure::new(FailureKind::Failed, format!("sandbox setup failed: {e}")))
    }
}

/// A started sandbox, as its front end holds it.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub sandbox_id: String,
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The front end's end of the seqpacket channel (protocol in init.rs).
    pub chan: OwnedFd,
    pub run_dir: RunDir,
    pub cgroup: CgroupGuard,
    pub host_uid: u32,
    pub idmapped: bool,
    /// Namespaces and fences (false in direct mode).
    pub isolated: bool,
    pub started: Instant,
    /// Warnings made while starting it (e.g. no cgroup limits): a warm run reports
    /// them like a cold one.
    pub warnings: Vec<String>,
    /// `network.mode: limited`: the egress proxy serving it (started when the init
    /// sends its listening socket; stopped by `finish`, or killed when dropped).
    pub proxy: Option<phantom_egress::ProxyHelper>,
    /// A zygote's child (fork.rs): its parent, the zygote, reaps it; the engine only
    /// sees it exit through its pidfd.
    pub forked: bool,
}

/// How a sandbox ended, once its init is reaped.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub status: SandboxStatus,
    pub init_status: ExitStatus,
    pub usage: Usage,
    pub wall: Duration,
    pub oom_killed: bool,
    pub cgroup_version: &'static str,
    /// What its egress proxy allowed and refused (network limited).
    pub network: Option<phantom_api::NetworkReport>,
}

/// Start sandbox `sandbox_id` (see [`phantom_state::ids::new_sandbox_id`]) for `plan`, on `image`'s root when one is given (the plan's
/// `rootfs`, resolved by `prepare` for a cold run, by the supervisor for a warm pool).
/// `workspace`: the caller's directory, or None for a fresh one. `make_payload` gets
/// the host workspace and whether cgroups are missing (the payload then needs rlimit
/// fallbacks) and says what the init runs.
pub(crate) fn spawn_on(
    sandbox_id: String,
    plan: &Plan,
    image: Option<&ImageRun>,
    workspace: Option<&str>,
    trace: &mut Trace,
    warnings: &mut Vec<String>,
    make_payload: impl FnOnce(&Path, bool) -> Result<ChildPayload, EngineError>,
) -> Result<Spawned, EngineError> {
    let started = trace.start;
    let layout = Layout::cached();
    let run_dir = RunDir::create(&sandbox_id, workspace, layout)?;
    trace.step("run directory and workspace");
    let guard = sandbox_cgroup(plan, &sandbox_id, warnings);
    trace.step("cgroup created");
    // Mode wasm: a process of the engine's, fenced but in no namespace (wasm_run.rs).
    let isolated = !matches!(plan.mode, Mode::Direct | Mode::Wasm);
    let (host_uid, host_gid) = if isolated {
        ids::sandbox_host_ids()
    } else {
        process::ids()
    };
    let (invoker_uid, _) = process::ids();

    let (chan_parent, chan_child) = fdpass::channel()?;
    let payload = make_payload(run_dir.workspace(), guard.0.is_none())?;
    let cgroup_tasks = match &guard.0 {
        Some(cg) => cg
            .v1_task_files()
            .map_err(|e| EngineError::Setup(e.to_string()))?,
        None => Vec::new(),
    };
    // Root's image store is closed to the sandbox's uid: the image root goes in as an
    // idmapped mount, like the workspace.
    let idmap_image = image.is_some() && isolated && host_uid != invoker_uid;
    let mut steps = prepare_steps(plan, run_dir.workspace())?;
    if run_dir.workspace_is_temporary() {
        // No workspace of the caller's: a tmpfs of its own instead of host disk that
        // nothing bounds.
        for step in &mut steps {
            if let Step::Workspace { tmpfs_bytes, .. } = step {
                *tmpfs_bytes = Some(workspace_bytes(plan));
            }
        }
    }
    if let (Some(image), true) = (image, isolated) {
        steps.insert(0, image_root_step(image, idmap_image, &steps));
    }
    // As root the sandbox's user is an unprivileged host uid of no group: a bind
    // source below a directory others may not enter (a toolchain in a 0700 home) is
    // passed in as a detached copy of its mount instead, made here with root's access.
    let bridged: Vec<(usize, std::path::PathBuf)> = if isolated && host_uid != invoker_uid {
        steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| match step {
                Step::Bind { source, .. } if !others_can_reach(source) => Some((i, source.clone())),
                _ => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    if bridged.len() > channel::GO_MAX_BRIDGED {
        return Err(EngineError::Usage(format!(
            "{} binds lie below directories the sandbox's user cannot enter (at most {} can be passed in); bind fewer, or from places other users may enter",
            bridged.len(),
            channel::GO_MAX_BRIDGED
        )));
    }
    let ctx = ChildContext {
        steps,
        cgroup_tasks,
        hostname: plan.hostname.clone(),
        network: plan.network,
        payload,
        files_dir: if isolated {
            std::path::PathBuf::from(&plan.workspace_target)
        } else {
            run_dir.workspace().to_path_buf()
        },
        trace: trace.on.then_some(started),
    };
    trace.step("prepared steps");
    let ns = if isolated {
        // The cgroup namespace is entered by the child after it joined the cgroup.
        Namespaces {
            cgroup: false,
            // network host: the explicit opt-in to the host's network.
            net: plan.network != phantom_policy::NetworkMode::Host,
            ..Namespaces::all()
        }
    } else {
        Namespaces::default()
    };
    let v2_fd = guard.0.as_ref().and_then(|c| c.v2_dir_fd());
    let (pid, pidfd) = match process::clone_child(ns, v2_fd.as_ref().map(|f| f.as_fd()))? {
        Forked::Child => {
            // Only what the sandbox was given survives: the front end's other fds
            // (its signalfd, the read ends of the output pipes, the write end of a
            // stdin relay that must reach EOF, other sandboxes' channels in a pool...)
            // are closed here.
            let mut keep: Vec<RawFd> = vec![chan_child.as_raw_fd()];
            keep.extend(run_dir.lock_fd());
            keep.extend(ctx.cgroup_tasks.iter().map(|f| f.as_raw_fd()));
            keep.extend(ctx.payload.fds());
            if process::close_all_except(&keep).is_err() {
                process::exit_now(125);
            }
            if isolated {
                init::sandbox_init(ctx, chan_child)
            } else if plan.mode == Mode::Wasm {
                crate::wasm_run::child(ctx, chan_child)
            } else {
                init::direct_child(ctx, chan_child)
            }
        }
        Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop(chan_child);
    drop(ctx); // the child's copies of the payload pipes stay in the child
    trace.step("clone3");

    let mut idmapped = false;
    let handoff = (|| -> Result<(Option<OwnedFd>, Option<OwnedFd>), EngineError> {
        if isolated {
            userns::map_root_to(pid, host_uid, host_gid, invoker_uid != 0)?;
        }
        if let Some(cg) = &guard.0 {
            if v2_fd.is_none() {
                // v1 directories are joined by the child itself.
                cg.add_v2(pid)
                    .map_err(|e| EngineError::Setup(e.to_string()))?;
            }
        }
        if isolated && host_uid != invoker_uid {
            // Root: the sandbox's root is an unprivileged host uid, yet files it writes
            // to the workspace must belong to the invoking user. An idmapped mount
            // through the sandbox's own user namespace maps on-disk uid 0 to the
            // sandbox's root and back.
            let userns_fd = mount::open_userns(pid)?;
            // The same for an image's root, which root's store keeps in 0700
            // directories: its root-owned files become the sandbox root's.
            let image_tree = match image.filter(|_| idmap_image) {
                Some(image) => Some(idmapped_image(image, userns_fd.as_fd())?),
                None => None,
            };
            // A temporary workspace is the sandbox's own tmpfs: nothing to map.
            if run_dir.workspace_is_temporary() {
                return Ok((None, image_tree));
            }
            let tree = mount::clone_tree(run_dir.workspace())?;
            mount::set_idmap(tree.as_fd(), userns_fd.as_fd()).map_err(|e| {
                EngineError::Unsupported {
                    what: format!("workspace {}", run_dir.workspace().display()),
                    why: format!("cannot make an idmapped mount ({e})"),
                    hint: "put the workspace on a filesystem with idmapped-mount support (ext4, xfs, btrfs, tmpfs on Linux 6.3+)".into(),
                }
            })?;
            idmapped = true;
            return Ok((Some(tree), image_tree));
        }
        Ok((None, None))
    })();
    let (workspace_fd, image_fd) = match handoff {
        Ok(fd) => fd,
        Err(e) => {
            let _ = process::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
            let _ = process::wait4(pid, false);
            return Err(e);
        }
    };
    trace.step("id maps, cgroup attach, idmapped workspace");
    let bridged = match bridged
        .into_iter()
        .map(|(i, source)| mount::clone_tree(&source).map(|tree| (i, tree)))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(trees) => trees,
        Err(e) => {
            let _ = process::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
            let _ = process::wait4(pid, false);
            return Err(e.into());
        }
    };
    // Go names each mount it brings, in order (see channel.rs).
    let mut mounts = Vec::new();
    let mut fds = Vec::new();
    for (name, fd) in [
        (GoMount::Workspace, &workspace_fd),
        (GoMount::Image, &image_fd),
    ] {
        if let Some(fd) = fd {
            mounts.push(name);
            fds.push(fd.as_fd());
        }
    }
    for (i, tree) in &bridged {
        mounts.push(GoMount::Bind(*i));
        fds.push(tree.as_fd());
    }
    channel::send(chan_parent.as_fd(), &ToInit::Go { mounts }, &fds).map_err(|e| match e {
        ChannelError::Sys(e) => EngineError::Sys(e),
        e => EngineError::Setup(e.to_string()),
    })?;
    Ok(Spawned {
        sandbox_id,
        pid,
        pidfd,
        chan: chan_parent,
        run_dir,
        cgroup: guard,
        host_uid,
        idmapped,
        isolated,
        started,
        warnings: Vec::new(),
        proxy: None,
        forked: false,
    })
}

impl Spawned {
    /// Forward a signal to the sandbox (its init forwards it to the payload).
    pub(crate) fn signal(&self, signal: i32) {
        if signal == libc::SIGKILL {
            return self.kill();
        }
        let _ = process::pidfd_kill(self.pidfd.as_fd(), signal);
    }

    /// Kill everything in the sandbox.
    pub(crate) fn kill(&self) {
        if self.isolated {
            // Killing pid 1 of the namespace kills every process in it.
            let _ = process::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
        } else {
            // Direct mode has no pid namespace: its init kills the payload and all it
            // left (it is their subreaper), then exits.
            let _ = channel::send(self.chan.as_fd(), &ToInit::Kill, &[]);
        }
        if let Some(cg) = &self.cgroup.0 {
            cg.kill_all();
        }
    }

    /// After the init exited (its pidfd is readable): reap it with its rusage, read
    /// what it reported, and remove the cgroup and the run directory.
    pub(crate) fn finish(
        self,
        mut status: SandboxStatus,
        trace: &mut Trace,
    ) -> Result<Outcome, EngineError> {
        let (init_status, usage) = if self.forked {
            // Not our child: what it reported is all there is (a run killed before it
            // reported ended by SIGKILL).
            status.drain(self.chan.as_fd());
            (
                status
                    .payload
                    .unwrap_or(ExitStatus::Signaled(libc::SIGKILL)),
                status.payload_usage.unwrap_or_default(),
            )
        } else {
            let (_, s, u) =
                process::wait4(self.pid, false)?.expect("blocking wait4 returns a status");
            (s, u)
        };
        let wall = self.started.elapsed();
        trace.step("init reaped");
        // Status messages sent just before init exited may still be queued.
        status.drain(self.chan.as_fd());
        // The sandbox is gone: its proxy has nothing left to serve.
        let network = self.proxy.map(phantom_egress::ProxyHelper::finish);
        let oom_killed = self.cgroup.0.as_ref().is_some_and(|c| c.oom_killed());
        let cgroup_version = self.cgroup.0.as_ref().map_or("none", |c| c.version());
        drop(self.cgroup);
        drop(self.run_dir);
        trace.step("cgroup and workspace removed");
        Ok(Outcome {
            status,
            init_status,
            usage,
            wall,
            oom_killed,
            cgroup_version,
            network,
        })
    }
}

/// The cgroup of sandbox `id` with `plan`'s limits, or none (and a warning saying what
/// stands in for it) where this engine cannot make one.
pub(crate) fn sandbox_cgroup(plan: &Plan, id: &str, warnings: &mut Vec<String>) -> CgroupGuard {
    let limits = cgroup::Limits {
        memory_bytes: plan.limits.memory_bytes,
        cpu_millis: plan.limits.cpu_millis,
        pids: plan.limits.pids,
    };
    CgroupGuard(match SandboxCgroup::create(Layout::cached(), id, limits) {
        Ok(cg) => Some(cg),
        Err(e) => {
            warnings.push(format!(
                "no cgroup limits ({e}; phantom needs root to create cgroups): memory is limited by RLIMIT_DATA and processes by RLIMIT_NPROC instead, CPU not at all"
            ));
            None
        }
    })
}

/// A payload's environment: the plan's `base`, the client's TERM, then `over` in
/// order (on an image: its Env, then `--env`) — each replacing a variable in place or
/// adding it. Cold runs and the supervisor's warm runs both build theirs here.
pub(crate) fn payload_env(
    base: &[(String, String)],
    term: Option<&str>,
    over: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env = base.to_vec();
    if let Some(term) = term {
        set_var(&mut env, "TERM", term);
    }
    for (k, v) in over {
        set_var(&mut env, k, v);
    }
    env
}

pub(crate) fn set_var(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

/// Removes the sandbox's cgroup when the run ends, however it ends.
#[derive(Debug)]
pub(crate) struct CgroupGuard(pub Option<SandboxCgroup>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.as_mut() {
            cg.kill_all();
            cg.remove();
        }
    }
}

/// An idmapped copy of `image`'s root, mapped through the sandbox's user namespace
/// (`userns`): on-disk uid/gid 0 (root imported it) become the sandbox's root.
fn idmapped_image(
    image: &ImageRun,
    userns: std::os::fd::BorrowedFd<'_>,
) -> Result<OwnedFd, EngineError> {
    let tree = mount::clone_tree(&image.lower)?;
    mount::set_idmap(tree.as_fd(), userns).map_err(|e| EngineError::Unsupported {
        what: format!("image `{}`", image.name),
        why: format!(
            "cannot make an idmapped mount of its root {} ({e})",
            image.lower.display()
        ),
        hint: "keep the image store (PHANTOM_STATE_DIR, /var/lib/phantom) on a filesystem with idmapped mounts (ext4, xfs, btrfs; tmpfs on Linux 6.3+), or run phantom as an unprivileged user with its own store".into(),
    })?;
    Ok(tree)
}

/// The first step of a sandbox on `image`: its root, and the places the other
/// `steps` (and the image's WorkingDir) need in it. A step whose target lies below an
/// earlier one's lands in what phantom mounted there, not in the image.
fn image_root_step(image: &ImageRun, idmapped: bool, steps: &[Step]) -> Step {
    let mut mount_points: Vec<MountPoint> = Vec::new();
    let mut taken: Vec<&Path> = Vec::new();
    let mut wanted = Vec::with_capacity(steps.len() + 1);
    for step in steps {
        let (target, kind) = match step {
            Step::Symlink { target, .. } | Step::File { target, .. } => {
                (target, MountPointKind::File)
            }
            Step::Bind { target, is_dir, .. } => (
                target,
                if *is_dir {
                    MountPointKind::Dir
                } else {
                    MountPointKind::File
                },
            ),
            Step::Tmpfs { target, .. }
            | Step::Proc { target }
            | Step::Dev { target, .. }
            | Step::Workspace { target, .. } => (target, MountPointKind::Dir),
            Step::Mask { target } | Step::ReadOnly { target } => (target, MountPointKind::Existing),
            Step::ImageRoot { .. } => continue,
        };
        wanted.push((target.as_path(), kind));
    }
    let working_dir = image.working_dir.as_deref().map(Path::new);
    wanted.extend(working_dir.map(|d| (d, MountPointKind::Dir)));
    for (target, kind) in wanted {
        if !taken.iter().any(|t| target.starts_with(t)) {
            mount_points.push(MountPoint {
                target: target.to_path_buf(),
                kind,
            });
        }
        taken.push(target);
    }
    Step::ImageRoot {
        lower: image.lower.clone(),
        idmapped,
        mount_points,
    }
}

/// Turn the plan's mounts into steps, opening every host source now.
/// Whether a user that is neither `path`'s owners' nor in their groups may reach it:
/// every directory a lookup of it enters lets others search it.
fn others_can_reach(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    path.ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).map_or(true, |m| m.mode() & 0o001 != 0))
}

/// The size of a workspace the caller did not give (a run's, a persistent sandbox's):
/// half the memory limit. Its pages are charged to the sandbox's memory cgroup, where
/// a workspace as large as the limit would end a write that fills it with the OOM
/// killer — in a persistent sandbox, of its init — instead of ENOSPC.
pub(crate) fn workspace_bytes(plan: &Plan) -> u64 {
    (plan.limits.memory_bytes / 2).max(1 << 20)
}

pub(crate) fn prepare_steps(
    plan: &Plan,
    workspace: &std::path::Path,
) -> Result<Vec<Step>, EngineError> {
    if plan.mode == Mode::Direct {
        return Ok(Vec::new());
    }
    let noexec = plan.noexec_writable;
    let mut steps = Vec::with_capacity(plan.mounts.len());
    for m in &plan.mounts {
        let step = match m {
            Mount::Bind {
                source,
                target,
                read_only,
                optional,
            } => {
                let src = std::path::Path::new(source);
                let meta = match std::fs::symlink_metadata(src) {
                    Ok(meta) => meta,
                    Err(_) if *optional => continue,
                    Err(e) => {
                        return Err(EngineError::Usage(format!(
                            "bind source {source} does not exist on this host ({e}); remove it from the policy or mark it optional"
                        )))
                    }
                };
                if meta.file_type().is_symlink() {
                    let points_to = std::fs::read_link(src).map_err(|e| EngineError::Io {
                        what: "readlink",
                        path: source.clone(),
                        source: e,
                    })?;
                    Step::Symlink {
                        target: target.into(),
                        points_to,
                    }
                } else {
                    Step::Bind {
                        source: src.to_path_buf(),
                        target: target.into(),
                        is_dir: meta.is_dir(),
                        read_only: *read_only,
                    }
                }
            }
            Mount::Tmpfs {
                target,
                size_bytes,
                mode,
                read_only,
                noexec,
            } => Step::Tmpfs {
                target: target.into(),
                options: format!("mode={mode:o},size={size_bytes}"),
                attrs: Attrs {
                    read_only: *read_only,
                    noexec: *noexec,
                    nosuid: true,
                    nodev: true,
                },
            },
            Mount::File {
                target,
                contents,
                mode,
            } => Step::File {
                target: target.into(),
                contents: contents.clone(),
                mode: *mode,
            },
            Mount::Proc { target } => Step::Proc {
                target: target.into(),
            },
            Mount::Dev {
                target,
                nodes,
                shm_size_bytes,
                shm_read_only,
            } => Step::Dev {
                target: target.into(),
                nodes: nodes.clone(),
                shm_size_bytes: *shm_size_bytes,
                shm_read_only: *shm_read_only,
                noexec,
            },
            Mount::Workspace { target, noexec } => Step::Workspace {
                source: workspace.to_path_buf(),
                target: target.into(),
                noexec: *noexec,
                tmpfs_bytes: None,
            },
            Mount::Mask { target } => Step::Mask {
                target: target.into(),
            },
            Mount::ReadOnly { target } => Step::ReadOnly {
                target: target.into(),
            },
        };
        steps.push(step);
    }
    Ok(steps)
}
