//! The sandbox side of a cold start: what the child does between clone3 and execve.
//!
//! The child is born in new user, pid, mount, net, ipc and uts namespaces (see
//! `spawn.rs`). [`sandbox_init`] is its whole life, one linear setup script:
//!
//! 1. wait for the parent's GO (uid/gid maps written, cgroup joined, and — when phantom
//!    runs as root — an idmapped workspace mount attached to the message);
//! 2. cgroup namespace, private mounts, a tmpfs root (on an image: with the image's
//!    overlay over it, [`Step::ImageRoot`]) filled from the plan's mounts,
//!    pivot_root, read-only root, hostname, loopback;
//! 3. fork the payload, which sets up its own session, limits and fences (Landlock,
//!    capabilities, seccomp — in that order) and execs;
//! 4. as pid 1, reap every process, forward signals to the payload, and report the
//!    payload's exit status to the parent when it ends.
//!
//! The messages on the channel to the spawner are [`crate::channel`]'s [`ToInit`] and
//! [`FromInit`]; that module lists them in the order they come.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use phantom_linux::mount::{self, Attrs};
use phantom_linux::process::{self, ExitStatus, Rlimit};
use phantom_linux::{caps, fdpass, landlock, net, seccomp, terminal};

use phantom_api::request::Field;

use crate::channel::{self, tell, FromInit, GoMount, RunSpec, ToInit};
use phantom_policy::{Access, NetworkMode, Plan};

/// One filesystem step, prepared by the parent before clone (symlinks read, missing
/// optional sources dropped) so that the child only replays it. Host sources are
/// opened by the child itself: a bind needs a source in the caller's own mount
/// namespace.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum Step {
    Symlink {
        target: PathBuf,
        points_to: PathBuf,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
        is_dir: bool,
        read_only: bool,
    },
    Tmpfs {
        target: PathBuf,
        options: String,
        attrs: Attrs,
    },
    File {
        target: PathBuf,
        contents: String,
        mode: u32,
    },
    Proc {
        target: PathBuf,
    },
    Dev {
        target: PathBuf,
        nodes: Vec<String>,
        shm_size_bytes: u64,
        shm_read_only: bool,
        noexec: bool,
    },
    /// The workspace: bound from `source`, unless the GO message brings an idmapped
    /// mount to attach instead — or, for a run the caller gave no workspace
    /// (`tmpfs_bytes`), a tmpfs of that size: charged to the sandbox's memory cgroup and
    /// bounded, never host disk.
    Workspace {
        source: PathBuf,
        target: PathBuf,
        noexec: bool,
        #[serde(default)]
        tmpfs_bytes: Option<u64>,
    },
    Mask {
        target: PathBuf,
    },
    ReadOnly {
        target: PathBuf,
    },
    /// An image as the root; always the first step. The image's root directory
    /// (`lower`, in the image store) goes read-only under an overlay whose upper and
    /// work directories live in the root tmpfs, and the overlay is mounted over that
    /// tmpfs: every later step mounts on the image. `lower` is bound from its host
    /// path, unless `idmapped`: then the GO message brings an idmapped mount of it
    /// (phantom runs as root, the store is root's and closed to the sandbox's uid).
    /// `mount_points` are the later steps' targets (and the image's WorkingDir), made
    /// safe before anything is mounted on them; see [`secure_mount_point`].
    ImageRoot {
        lower: PathBuf,
        idmapped: bool,
        mount_points: Vec<MountPoint>,
    },
}

/// A path in an image root that a later step mounts on or creates (see
/// [`Step::ImageRoot`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct MountPoint {
    pub target: PathBuf,
    pub kind: MountPointKind,
}

/// What a step needs at a [`MountPoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum MountPointKind {
    /// A directory: created when missing; a file or symlink in its place is removed.
    Dir,
    /// A file or symlink the step creates: whatever non-directory is there is removed
    /// first (never followed, never copied up into the overlay).
    File,
    /// A path the step acts on only if it exists (a mask, a read-only remount): only a
    /// symlink there is removed; nothing is created.
    Existing,
}

/// The payload's Landlock fence: path rules, scoping of abstract unix sockets and of
/// signals, and the TCP ports it may connect to and bind (None: TCP not fenced).
pub(crate) type LandlockSpec = (Vec<landlock::Rule>, bool, bool, Option<landlock::TcpPorts>);

/// Everything the child needs, prepared before clone.
#[derive(Debug)]
pub(crate) struct ChildContext {
    pub steps: Vec<Step>,
    /// v1 cgroup `tasks` files to join first thing (see cgroup::join_self).
    pub cgroup_tasks: Vec<OwnedFd>,
    pub hostname: String,
    pub network: NetworkMode,
    pub payload: ChildPayload,
    /// Where a run's files are written: the workspace as the sandbox sees it
    /// (`/workspace`), or in direct mode its host directory.
    pub files_dir: PathBuf,
    /// PHANTOM_TRACE=1: the run's start, to print step timings from the sandbox side.
    pub trace: Option<Instant>,
}

/// Print a step timing to the front end's stderr (PHANTOM_TRACE=1 only).
fn trace(start: Option<Instant>, what: &str) {
    if let Some(t) = start {
        eprintln!(
            "phantom: trace: {:>8.3} ms  (sandbox) {what}",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// What the init runs: a payload known up front (cold start), or one that arrives
/// later in a `RUN` message (a pooled sandbox of a warm pool).
#[derive(Debug)]
pub(crate) enum ChildPayload {
    Ready(PayloadContext),
    Pooled(PayloadBase),
    /// A persistent sandbox (`phantom create`): the init reports READY and stays,
    /// reaping; commands join it from outside (`phantom exec`, see sandbox/exec.rs).
    Persistent,
    /// A zygote (see fork.rs): once the root is built, the init becomes the pool's
    /// interpreter, which forks each run into fresh namespaces.
    Zygote(crate::fork::ZygoteStart),
    /// Mode wasm: the process runs the module itself (wasm_run.rs).
    // Never built without the `wasm` feature (its payload type is empty then).
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))]
    Wasm(Box<crate::wasm_run::WasmPayload>),
}

impl ChildPayload {
    /// The fds the child must keep open for it.
    pub(crate) fn fds(&self) -> Vec<std::os::fd::RawFd> {
        match self {
            ChildPayload::Ready(p) => p
                .stdin
                .iter()
                .chain([&p.stdout, &p.stderr])
                .chain(&p.files)
                .map(|f| f.as_raw_fd())
                .collect(),
            ChildPayload::Zygote(z) => z.fds(),
            ChildPayload::Wasm(w) => crate::wasm_run::fds(w),
            ChildPayload::Pooled(_) | ChildPayload::Persistent => Vec::new(),
        }
    }
}

/// The part of a payload's setup that comes from the plan alone.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PayloadBase {
    pub nofile: u64,
    pub fsize: u64,
    pub landlock: Option<LandlockSpec>,
    pub seccomp: Vec<(String, Vec<seccomp::Instruction>)>,
    pub drop_caps: bool,
    /// `runtime: python`: start the interpreter before a request exists.
    pub prewarm_python: bool,
    /// The host runs KSM: mark a pre-started interpreter's memory mergeable.
    pub ksm: bool,
    /// The plan's environment and working directory (for the pre-started interpreter).
    pub env: Vec<(String, String)>,
    pub cwd: String,
}

impl PayloadContext {
    /// The payload of `spec` on `base`, in working directory `cwd`: the one way a
    /// cold run (`prepare::payload_context`) and a pooled sandbox's run (`from_run`)
    /// get theirs, so that warm equals cold. Err: an argument or variable with a NUL
    /// byte.
    pub(crate) fn new(
        base: &PayloadBase,
        spec: &RunSpec,
        cwd: PathBuf,
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
        files: Option<OwnedFd>,
    ) -> Result<PayloadContext, String> {
        let cstring = |s: &str| CString::new(s).map_err(|_| format!("{s:?}: contains a NUL byte"));
        let path_var = spec
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok(PayloadContext {
            argv: spec
                .argv
                .iter()
                .map(|a| cstring(a))
                .collect::<Result<_, _>>()?,
            env: spec
                .env
                .iter()
                .map(|(k, v)| cstring(&format!("{k}={v}")))
                .collect::<Result<_, _>>()?,
            path_var,
            cwd,
            stdin,
            stdout,
            stderr,
            files,
            nofile: base.nofile,
            fsize: base.fsize,
            rlimit_nproc: spec.rlimit_nproc,
            rlimit_data: spec.rlimit_data,
            landlock: base.landlock.clone(),
            seccomp: base.seccomp.clone(),
            drop_caps: base.drop_caps,
            fd3: None,
            memory_merge: false,
        })
    }

    /// Build the payload of a pooled sandbox from its base and a `Run` message.
    pub(crate) fn from_run(
        base: &PayloadBase,
        spec: RunSpec,
        mut fds: Vec<OwnedFd>,
    ) -> Result<(PayloadContext, Option<OwnedFd>), String> {
        let expected = spec.fd_count();
        if fds.len() != expected {
            return Err(format!(
                "the run came with {} fds, expected {expected}",
                fds.len()
            ));
        }
        let workspace = spec.workspace_fd.then(|| fds.pop()).flatten();
        let files = spec.files_fd.then(|| fds.pop()).flatten();
        let stderr = fds.pop().expect("counted");
        let stdout = fds.pop().expect("counted");
        let stdin = fds.pop();
        let cwd = PathBuf::from(&spec.cwd);
        let context = PayloadContext::new(base, &spec, cwd, stdin, stdout, stderr, files)?;
        Ok((context, workspace))
    }
}

/// What the payload process needs to exec.
#[derive(Debug)]
pub(crate) struct PayloadContext {
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// PATH used to look up argv[0].
    pub path_var: String,
    pub cwd: PathBuf,
    /// The payload's stdin, when the request brought one (else /dev/null).
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// A memfd holding the files to write into the workspace before the program
    /// starts (JSON: a list of `phantom_api::FileSpec`).
    pub files: Option<OwnedFd>,
    pub nofile: u64,
    pub fsize: u64,
    /// Fallback limits when no cgroup could be used.
    pub rlimit_nproc: Option<u64>,
    pub rlimit_data: Option<u64>,
    pub landlock: Option<LandlockSpec>,
    pub seccomp: Vec<(String, Vec<seccomp::Instruction>)>,
    pub drop_caps: bool,
    /// An fd the payload keeps as fd 3 across execve (the pre-started interpreter's
    /// channel to the init).
    pub fd3: Option<OwnedFd>,
    /// Mark the payload's memory mergeable by KSM (pre-started interpreters).
    pub memory_merge: bool,
}

/// Where the new root is assembled before pivot_root. The tmpfs mounted here hides
/// the host's /tmp only inside this private mount namespace; every host path the
/// steps need was opened before.
const NEW_ROOT: &str = "/tmp";

/// The child's whole life. Never returns.
pub(crate) fn sandbox_init(ctx: ChildContext, chan: OwnedFd) -> ! {
    process::set_name("phantom:init");
    // Signals are read synchronously in supervise(); blocked from the start so that one
    // arriving early cannot take the default action.
    let mut waited = process::FORWARDED_SIGNALS.to_vec();
    waited.push(libc::SIGCHLD);
    let _ = process::block_signals(&waited);
    // We are a fork of the front end: its command line and host environment are still
    // in our memory, and /proc/1/{cmdline,environ} would show them to the payload.
    // (Non-dumpable comes later, after GO: it makes /proc/PID root-owned, and an
    // unprivileged front end could then no longer write our uid/gid maps.)
    if let Err(e) = process::scrub_cmdline_and_environ("phantom-init") {
        let _ = tell(
            &chan,
            &FromInit::SetupFailed {
                message: e.to_string(),
            },
        );
        process::exit_now(1)
    }
    match setup(&ctx, &chan) {
        Ok(mut ctx_payload) => supervise(&chan, &mut ctx_payload),
        Err(message) => {
            let _ = tell(&chan, &FromInit::SetupFailed { message });
            process::exit_now(1)
        }
    }
}

fn setup(ctx: &ChildContext, chan: &OwnedFd) -> Result<PayloadStart, String> {
    // Die with the front end: if it is killed, the kernel kills us, and with us (pid 1)
    // everything in the pid namespace.
    process::set_parent_death_signal_kill().map_err(|e| e.to_string())?;
    // Join the v1 cgroups while our ids are still the front end's (the files belong to
    // it), and before anything runs that the limits must cover.
    phantom_linux::cgroup::join_self(&ctx.cgroup_tasks).map_err(|e| e.to_string())?;

    // 1. Wait for GO: the parent has written our uid/gid maps (we have no privileges
    //    before that) and put us in the sandbox's cgroup.
    let (idmapped_workspace, idmapped_image, bridged) = recv_go(chan)?;

    // Our ids are the parent's host ids until we take the namespace's root ids.
    phantom_linux::userns::become_root().map_err(|e| e.to_string())?;
    // Changing credentials cleared the parent-death signal: set it again, then make
    // sure the front end did not die in between (its end of the channel would be
    // closed, and nobody would be left to send the signal).
    process::set_parent_death_signal_kill().map_err(|e| e.to_string())?;
    // Now that the maps are written: the payload (same uid) must not read our memory
    // or environment through /proc/1.
    process::set_non_dumpable().map_err(|e| e.to_string())?;
    if peer_closed(chan) {
        return Err("front end went away before the sandbox started".into());
    }

    // 2. A cgroup namespace rooted at the sandbox's cgroup; must come after the parent
    //    moved us into it, or the namespace would be rooted at the host's cgroup.
    trace(ctx.trace, "GO received, ids set");
    process::unshare_cgroup_namespace().map_err(|e| e.to_string())?;

    // Nothing mounted from here on may propagate back to the host.
    mount::make_all_private().map_err(|e| e.to_string())?;

    // Open every host source now, before the new root's tmpfs hides the host's /tmp.
    let mut sources = Sources::open(&ctx.steps, idmapped_workspace.is_some(), bridged)
        .map_err(|e| e.to_string())?;
    if let Some(image) = idmapped_image {
        sources.add_image(&ctx.steps, image)?;
    }
    let root = Path::new(NEW_ROOT);
    mount::tmpfs(root, "mode=0755,size=1m", Attrs::default()).map_err(|e| e.to_string())?;
    trace(ctx.trace, "sources opened, root tmpfs mounted");
    for (i, step) in ctx.steps.iter().enumerate() {
        apply_step(root, step, &sources, i, idmapped_workspace.as_ref())
            .map_err(|e| e.to_string())?;
    }

    // pivot_root needs every mount in place; afterwards the host tree is unreachable.
    trace(ctx.trace, "mounts applied");
    mount::pivot_into(root).map_err(|e| e.to_string())?;
    // The root tmpfs itself becomes read-only; /tmp, /workspace, /dev/shm keep their
    // own (writable) mounts.
    mount::set_attrs(
        Path::new("/"),
        Attrs {
            read_only: true,
            nosuid: true,
            nodev: true,
            noexec: false,
        },
        false,
    )
    .map_err(|e| e.to_string())?;

    process::sethostname(&ctx.hostname).map_err(|e| e.to_string())?;
    if matches!(
        ctx.network,
        NetworkMode::LoopbackOnly | NetworkMode::Limited
    ) {
        net::loopback_up().map_err(|e| e.to_string())?;
    }
    if ctx.network == NetworkMode::Limited {
        // The egress proxy's door: a socket listening on 127.0.0.1 in this namespace,
        // made here (after lo is up, before any payload exists, so the port cannot be
        // taken first) and handed to the front end, which accepts on it from the
        // host's side. We keep no copy: the payload cannot accept on it.
        let listener =
            net::listen_loopback(phantom_policy::egress::PROXY_PORT).map_err(|e| e.to_string())?;
        channel::send(chan.as_fd(), &FromInit::Proxy, &[listener.as_fd()])
            .map_err(|e| e.to_string())?;
    }

    trace(ctx.trace, "pivoted, hostname, loopback");
    // 3. The payload: known now (cold), or — in a warm pool — sent by the supervisor
    //    when a request takes this sandbox.
    let pooled;
    let payload_ctx = match &ctx.payload {
        ChildPayload::Ready(p) => p,
        // Mode wasm runs in no namespace: spawn.rs never gives it to a sandbox init.
        ChildPayload::Wasm(_) => return Err("a wasm run reached a sandbox init".into()),
        // The init becomes the interpreter; only a failure comes back.
        ChildPayload::Zygote(z) => return Err(z.exec(chan)),
        ChildPayload::Persistent => {
            // Our namespaces, for `phantom exec` to join (through the keeper): opened
            // by us, since nothing outside may open our /proc/1/ns (non-dumpable).
            let ns = process::open_own_namespaces().map_err(|e| e.to_string())?;
            let fds: Vec<_> = ns.iter().map(|f| f.as_fd()).collect();
            channel::send(chan.as_fd(), &FromInit::Namespaces, &fds).map_err(|e| e.to_string())?;
            drop(ns);
            keep_alive(chan)
        }
        ChildPayload::Pooled(base) => {
            // runtime: python — the interpreter starts now, fenced like any payload, and
            // waits for code; a request it cannot serve identically gets a plain exec.
            let zygote = if base.prewarm_python {
                Some(Zygote::start(base)?)
            } else {
                None
            };
            tell(chan, &FromInit::Ready).map_err(|e| e.to_string())?;
            // A run's argv and environment may be larger than a packet: in a memfd then.
            let (message, fds) = channel::recv_message::<ToInit>(chan.as_fd(), 5, "spawner")
                .map_err(|e| e.to_string())?;
            let spec = match message {
                ToInit::Run(spec) => *spec,
                other => {
                    return Err(channel::ChannelError::UnexpectedMessage {
                        peer: "spawner",
                        expected: "run",
                        received: other.name().into(),
                    }
                    .to_string())
                }
            };
            let zygote_spec = zygote
                .as_ref()
                .is_some_and(|z| z.serves(&spec))
                .then(|| spec.clone());
            let (p, workspace) = PayloadContext::from_run(base, spec, fds)?;
            if let Some(ws) = workspace {
                // A caller's workspace, idmapped by the supervisor: on top of the
                // pooled sandbox's own temporary one.
                let (target, noexec) = ctx
                    .steps
                    .iter()
                    .find_map(|s| match s {
                        Step::Workspace { target, noexec, .. } => Some((target.clone(), *noexec)),
                        _ => None,
                    })
                    .ok_or("the plan has no workspace")?;
                mount::attach(ws.as_fd(), &target).map_err(|e| e.to_string())?;
                let attrs = Attrs {
                    nosuid: true,
                    nodev: true,
                    noexec,
                    read_only: false,
                };
                mount::set_attrs(&target, attrs, true).map_err(|e| e.to_string())?;
            }
            write_files(&p, &ctx.files_dir, chan);
            if let Some(z) = zygote {
                match zygote_spec {
                    Some(spec) => return z.run(spec, p, chan),
                    // Not a run the interpreter can take as `python3` would: it goes,
                    // unused, and the payload is exec'd as usual.
                    None => z.discard(),
                }
            }
            pooled = p;
            &pooled
        }
    };
    if let ChildPayload::Ready(p) = &ctx.payload {
        write_files(p, &ctx.files_dir, chan);
    }
    // Forking here is safe: init is single-threaded.
    match process::clone_child(process::Namespaces::default(), None).map_err(|e| e.to_string())? {
        process::Forked::Child => payload(payload_ctx, chan),
        process::Forked::Parent { pid, pidfd } => Ok(PayloadStart { pid, _pidfd: pidfd }),
    }
}

/// Write the request's files (if it has any) into the workspace. This runs in the
/// init after pivot_root, so every path resolves in the sandbox's own tree; a path
/// that is absolute or climbs is the caller's mistake: the run is refused (exit 2).
pub(crate) fn write_files(ctx: &PayloadContext, workspace: &Path, chan: &OwnedFd) {
    let Some(memfd) = &ctx.files else { return };
    if let Err(message) = write_files_from(memfd, workspace) {
        let refused = FromInit::Refused {
            field: Some(Field::Files),
            value: None,
            message,
        };
        let _ = tell(chan, &refused);
        process::exit_now(2);
    }
}

/// The working directory does not exist in the sandbox: the caller's mistake.
fn cwd_refused(cwd: &Path, e: &std::io::Error) -> FromInit {
    FromInit::Refused {
        field: Some(Field::Cwd),
        value: Some(cwd.display().to_string()),
        message: format!("not a directory in the sandbox ({e})"),
    }
}

fn write_files_from(memfd: &OwnedFd, workspace: &Path) -> Result<(), String> {
    // Read from offset 0 whatever the shared file offset is.
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rustix::io::pread(memfd, &mut buf, text.len() as u64)
            .map_err(|e| format!("reading the request's files: {e}"))?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let files: Vec<phantom_api::request::FileSpec> =
        serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    // Written as `phantom cp` and the file APIs write: every step beneath the
    // workspace's fd, never through a symlink — a host workspace (direct mode runs on
    // the host) may hold links planted by an earlier run.
    let root = rustix::fs::open(
        workspace,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", workspace.display()))?;
    for file in files {
        let plain = !file.path.is_empty()
            && Path::new(&file.path)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(format!(
                "`{}`: give a relative path inside the workspace without `..`, e.g. src/main.py",
                file.path
            ));
        }
        crate::sandbox::files::write_file(
            &root,
            "workspace",
            &file.path,
            file.content.as_bytes(),
            true,
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The source of the pre-started interpreter (see zygote.py).
pub(crate) const ZYGOTE_PY: &str = include_str!("zygote.py");

/// A pooled sandbox's pre-started python3, waiting on its channel for one request.
struct Zygote {
    pid: i32,
    pidfd: OwnedFd,
    chan: OwnedFd,
    /// The interpreter's canonical path inside the sandbox.
    interpreter: PathBuf,
    /// The Landlock ABI its fence got (reported with the run).
    abi: Option<u32>,
    /// LANG, LC_* and PYTHON* as the interpreter started with them.
    startup_env: Vec<(String, String)>,
}

/// Variables that shape an interpreter's start-up (encoding, paths, flags): a request
/// must see them as the pre-started interpreter did, or it gets a fresh one.
fn shapes_startup(key: &str) -> bool {
    key == "LANG" || key.starts_with("LC_") || key.starts_with("PYTHON")
}

/// The largest request handed to a pre-started interpreter: one seqpacket packet,
/// well under zygote.py's 256 KiB buffer and the socket's send buffer.
const ZYGOTE_REQUEST_MAX: usize = 128 * 1024;

/// What zygote.py reads: `{argv, env, cwd, rlimit_nproc, rlimit_data}`.
fn zygote_request(spec: &RunSpec) -> serde_json::Value {
    serde_json::json!({
        "argv": spec.argv,
        "env": spec.env,
        "cwd": spec.cwd,
        "rlimit_nproc": spec.rlimit_nproc,
        "rlimit_data": spec.rlimit_data,
    })
}

impl Zygote {
    /// Fork the interpreter as a payload (same fences as any payload) and wait until it
    /// has loaded.
    fn start(base: &PayloadBase) -> Result<Zygote, String> {
        let path_var = base
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let python3 = CString::new("python3").expect("static");
        let program = resolve(&python3, &path_var)
            .ok_or("runtime: python, but python3 is not in the sandbox")?;
        let interpreter = std::fs::canonicalize(std::ffi::OsStr::from_bytes(program.as_bytes()))
            .map_err(|e| format!("python3: {e}"))?;
        let (ours, theirs) = fdpass::channel().map_err(|e| e.to_string())?;
        let null = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| format!("/dev/null: {e}"))
        };
        let cstring = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
        let ctx = PayloadContext {
            argv: [
                "python3",
                "-c",
                "import sys; exec(compile(sys.argv.pop(1), '<phantom-zygote>', 'exec'))",
                ZYGOTE_PY,
            ]
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<_, _>>()?,
            env: base
                .env
                .iter()
                .map(|(k, v)| cstring(&format!("{k}={v}")))
                .collect::<Result<_, _>>()?,
            path_var,
            cwd: PathBuf::from(&base.cwd),
            stdin: Some(null()?),
            stdout: null()?,
            stderr: null()?,
            files: None,
            nofile: base.nofile,
            fsize: base.fsize,
            // Set per request by the interpreter itself: no user code runs before.
            rlimit_nproc: None,
            rlimit_data: None,
            landlock: base.landlock.clone(),
            seccomp: base.seccomp.clone(),
            drop_caps: base.drop_caps,
            fd3: Some(theirs),
            memory_merge: base.ksm,
        };
        let (pid, pidfd) = match process::clone_child(process::Namespaces::default(), None)
            .map_err(|e| e.to_string())?
        {
            process::Forked::Child => {
                let own = ctx.fd3.as_ref().expect("set above");
                payload(&ctx, own)
            }
            process::Forked::Parent { pid, pidfd } => (pid, pidfd),
        };
        drop(ctx);
        let mut zygote = Zygote {
            pid,
            pidfd,
            chan: ours,
            interpreter,
            abi: None,
            startup_env: base
                .env
                .iter()
                .filter(|(k, _)| shapes_startup(k))
                .cloned()
                .collect(),
        };
        // Landlock's ABI from the fence (when Landlock is on), then Ready from Python.
        loop {
            let received = channel::recv::<FromInit>(
                zygote.chan.as_fd(),
                channel::FROM_INIT_MAX,
                0,
                "pre-started python3",
            );
            match received {
                Ok((FromInit::Ready, _)) => return Ok(zygote),
                Ok((FromInit::Landlock { abi }, _)) => zygote.abi = Some(abi),
                Ok((other, _)) => {
                    zygote.discard();
                    return Err(channel::ChannelError::UnexpectedMessage {
                        peer: "pre-started python3",
                        expected: "landlock or ready",
                        received: other.name(),
                    }
                    .to_string());
                }
                Err(e) => {
                    zygote.discard();
                    return Err(format!("the pre-started python3 failed: {e}"));
                }
            }
        }
    }

    /// Whether `spec` is `python3 -c CODE ...` or `python3 SCRIPT ...` for this very
    /// interpreter, with the start-up environment it was started with.
    fn serves(&self, spec: &RunSpec) -> bool {
        // The request goes to the interpreter in one packet (zygote.py reads up to
        // 256 KiB); a larger one gets a plain exec.
        let fits = zygote_request(spec).to_string().len() <= ZYGOTE_REQUEST_MAX;
        fits && python_serves(spec, &self.interpreter, &self.startup_env)
    }

    /// Hand the request to the interpreter, which becomes the payload.
    fn run(
        self,
        spec: RunSpec,
        ctx: PayloadContext,
        chan: &OwnedFd,
    ) -> Result<PayloadStart, String> {
        // The working directory is checked here, with the message a cold run gives,
        // so that the interpreter never has to talk back.
        if let Err(e) = std::fs::read_dir(&ctx.cwd).map(drop) {
            let _ = tell(chan, &cwd_refused(&ctx.cwd, &e));
            self.discard();
            process::exit_now(2);
        }
        let request = zygote_request(&spec);
        let null;
        let stdin = match &ctx.stdin {
            Some(fd) => fd.as_fd(),
            None => {
                null = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
                null.as_fd()
            }
        };
        let fds = [stdin, ctx.stdout.as_fd(), ctx.stderr.as_fd()];
        fdpass::send_fds(self.chan.as_fd(), request.to_string().as_bytes(), &fds)
            .map_err(|e| e.to_string())?;
        if let Some(abi) = self.abi {
            let _ = tell(chan, &FromInit::Landlock { abi });
        }
        let _ = tell(chan, &FromInit::Prewarmed);
        Ok(PayloadStart {
            pid: self.pid,
            _pidfd: self.pidfd,
        })
    }

    /// Kill and reap the unused interpreter.
    fn discard(self) {
        let _ = process::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
        let _ = process::wait4(self.pid, false);
    }
}

/// Whether `spec` is `python3 -c CODE ...` or `python3 SCRIPT ...` run by the
/// interpreter at `interpreter` (its canonical path in the sandbox), with the start-up
/// environment (`shapes_startup`) that interpreter started with: then an interpreter
/// that is already running can take it with the semantics of a fresh one.
pub(crate) fn python_serves(
    spec: &RunSpec,
    interpreter: &Path,
    startup_env: &[(String, String)],
) -> bool {
    let [cmd, first, rest @ ..] = spec.argv.as_slice() else {
        return false;
    };
    let shape_ok = match first.as_str() {
        "-c" => !rest.is_empty(),
        s => !s.is_empty() && !s.starts_with('-'),
    };
    let path_var = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("", |(_, v)| v.as_str());
    let same_interpreter = CString::new(cmd.as_str())
        .ok()
        .and_then(|c| resolve(&c, path_var))
        .and_then(|p| std::fs::canonicalize(std::ffi::OsStr::from_bytes(p.as_bytes())).ok())
        .is_some_and(|p| p == interpreter);
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .filter(|(k, _)| shapes_startup(k))
        .cloned()
        .collect();
    let mut startup: Vec<(String, String)> = startup_env
        .iter()
        .filter(|(k, _)| shapes_startup(k))
        .cloned()
        .collect();
    env.sort();
    startup.sort();
    shape_ok && same_interpreter && env == startup
}

/// Wait for [`ToInit::Go`] and the mounts attached to it, in the order it names them.
/// The mounts GO brings: an idmapped workspace, an idmapped image root, and detached
/// copies of bind sources the sandbox's user could not reach (by step).
type GoMounts = (Option<OwnedFd>, Option<OwnedFd>, Vec<(usize, OwnedFd)>);

pub(crate) fn recv_go(chan: &OwnedFd) -> Result<GoMounts, String> {
    let (message, fds) =
        match channel::recv::<ToInit>(chan.as_fd(), 4096, 2 + channel::GO_MAX_BRIDGED, "spawner") {
            Ok(received) => received,
            Err(channel::ChannelError::Closed { .. }) => {
                return Err("front end went away before the sandbox started".into())
            }
            Err(e) => return Err(e.to_string()),
        };
    let mounts = match message {
        ToInit::Go { mounts } => mounts,
        other => {
            return Err(channel::ChannelError::UnexpectedMessage {
                peer: "spawner",
                expected: "go",
                received: other.name().into(),
            }
            .to_string())
        }
    };
    if mounts.len() != fds.len() {
        return Err(format!("go came with {} fds for {mounts:?}", fds.len()));
    }
    let (mut workspace, mut image, mut bridged) = (None, None, Vec::new());
    for (name, fd) in mounts.into_iter().zip(fds) {
        match name {
            GoMount::Workspace => workspace = Some(fd),
            GoMount::Image => image = Some(fd),
            GoMount::Bind(step) => bridged.push((step, fd)),
        }
    }
    Ok((workspace, image, bridged))
}

/// Whether the other end of `chan` has been closed (without consuming a message).
fn peer_closed(chan: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    matches!(
        rustix::net::recv(
            chan,
            &mut b,
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT
        ),
        Ok((0, _))
    )
}

pub(crate) struct PayloadStart {
    pub pid: i32,
    pub _pidfd: OwnedFd,
}

fn in_root(root: &Path, target: &Path) -> PathBuf {
    root.join(target.strip_prefix("/").unwrap_or(target))
}

/// mkdir -p, trying mkdir first (the parent usually exists) to spare the stat calls
/// of `create_dir_all` on the start-up path.
fn mkdir_p(path: &Path) -> Result<(), phantom_linux::SysError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                mkdir_p(parent)?;
            }
            std::fs::create_dir(path)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| phantom_linux::SysError::new("mkdir", path.display().to_string(), e))
        }
        Err(e) => Err(phantom_linux::SysError::new(
            "mkdir",
            path.display().to_string(),
            e,
        )),
    }
}

fn touch(path: &Path) -> Result<(), phantom_linux::SysError> {
    if let Some(parent) = path.parent() {
        mkdir_p(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(|_| ())
        .map_err(|e| phantom_linux::SysError::new("create", path.display().to_string(), e))
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

const RO: Attrs = Attrs {
    read_only: true,
    nosuid: true,
    nodev: true,
    noexec: false,
};

/// O_PATH handles on the host sources of the steps, opened inside the sandbox's
/// mount namespace.
pub(crate) struct Sources {
    /// Per step: its bind source, or for a Dev step its nodes in order.
    per_step: Vec<Vec<OwnedFd>>,
    /// Per step: its source is a detached mount to attach (GO's `Bind`), not a path
    /// to bind.
    detached: Vec<bool>,
    /// The host's /dev/null, bound over masked files.
    dev_null: OwnedFd,
}

impl Sources {
    fn open(
        steps: &[Step],
        idmapped_workspace: bool,
        bridged: Vec<(usize, OwnedFd)>,
    ) -> Result<Sources, phantom_linux::SysError> {
        let mut per_step = Vec::with_capacity(steps.len());
        let mut detached = vec![false; steps.len()];
        let mut bridged: std::collections::HashMap<usize, OwnedFd> = bridged.into_iter().collect();
        for (i, step) in steps.iter().enumerate() {
            per_step.push(match step {
                Step::Bind { .. } if bridged.contains_key(&i) => {
                    detached[i] = true;
                    vec![bridged.remove(&i).expect("checked")]
                }
                Step::Bind { source, .. } => vec![mount::open_path(source)?],
                Step::Workspace {
                    source,
                    tmpfs_bytes: None,
                    ..
                } if !idmapped_workspace => vec![mount::open_path(source)?],
                Step::Dev { nodes, .. } => nodes
                    .iter()
                    .map(|n| mount::open_path(&Path::new("/dev").join(n)))
                    .collect::<Result<_, _>>()?,
                // Idmapped: the mount comes with GO (see `Sources::add_image`).
                Step::ImageRoot {
                    lower,
                    idmapped: false,
                    ..
                } => vec![mount::open_path(lower)?],
                _ => Vec::new(),
            });
        }
        Ok(Sources {
            per_step,
            detached,
            dev_null: mount::open_path(Path::new("/dev/null"))?,
        })
    }
}

impl Sources {
    /// The sources of a zygote's child, which mounts only what each run gets fresh
    /// (tmpfs, proc, masks): nothing but /dev/null, opened in the sandbox.
    pub(crate) fn in_sandbox(steps: usize) -> Result<Sources, phantom_linux::SysError> {
        Ok(Sources {
            per_step: (0..steps).map(|_| Vec::new()).collect(),
            detached: vec![false; steps],
            dev_null: mount::open_path(Path::new("/dev/null"))?,
        })
    }

    /// The idmapped mount of an image's root that came with GO: the source of the
    /// [`Step::ImageRoot`] step.
    fn add_image(&mut self, steps: &[Step], mount: OwnedFd) -> Result<(), String> {
        let index = steps
            .iter()
            .position(|s| matches!(s, Step::ImageRoot { idmapped: true, .. }))
            .ok_or("GO brought an image mount, but the plan has no image root")?;
        self.per_step[index].push(mount);
        Ok(())
    }
}

pub(crate) fn apply_step(
    root: &Path,
    step: &Step,
    sources: &Sources,
    index: usize,
    idmapped_workspace: Option<&OwnedFd>,
) -> Result<(), phantom_linux::SysError> {
    let source = |i: usize| &sources.per_step[index][i];
    let dev_null = &sources.dev_null;
    match step {
        Step::Symlink { target, points_to } => {
            let at = in_root(root, target);
            if let Some(parent) = at.parent() {
                mkdir_p(parent)?;
            }
            std::os::unix::fs::symlink(points_to, &at)
                .map_err(|e| phantom_linux::SysError::new("symlink", at.display().to_string(), e))
        }
        Step::Bind {
            target,
            is_dir,
            read_only,
            ..
        } => {
            let at = in_root(root, target);
            if *is_dir {
                mkdir_p(&at)?;
            } else {
                touch(&at)?;
            }
            if sources.detached[index] {
                mount::attach(source(0).as_fd(), &at)?;
            } else {
                mount::bind(&fd_path(source(0)), &at)?;
            }
            let attrs = Attrs {
                read_only: *read_only,
                nosuid: true,
                nodev: true,
                noexec: false,
            };
            mount::set_attrs(&at, attrs, true)
        }
        Step::Tmpfs {
            target,
            options,
            attrs,
        } => {
            let at = in_root(root, target);
            mkdir_p(&at)?;
            mount::tmpfs(&at, options, *attrs)
        }
        Step::File {
            target,
            contents,
            mode,
        } => {
            let at = in_root(root, target);
            if let Some(parent) = at.parent() {
                mkdir_p(parent)?;
            }
            std::fs::write(&at, contents)
                .map_err(|e| phantom_linux::SysError::new("write", at.display().to_string(), e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| phantom_linux::SysError::new("chmod", at.display().to_string(), e))
        }
        Step::Proc { target } => {
            let at = in_root(root, target);
            mkdir_p(&at)?;
            mount::proc(&at)
        }
        Step::Dev {
            target,
            nodes,
            shm_size_bytes,
            shm_read_only,
            noexec,
        } => {
            let at = in_root(root, target);
            mkdir_p(&at)?;
            mount::tmpfs(
                &at,
                "mode=0755,size=64k",
                Attrs {
                    noexec: true,
                    ..Default::default()
                },
            )?;
            for (i, name) in nodes.iter().enumerate() {
                let node = at.join(name);
                touch(&node)?;
                // A bind of a single device node keeps the flags of the host's /dev
                // mount (nosuid); exec of a device node fails anyway.
                mount::bind(&fd_path(source(i)), &node)?;
            }
            let pts = at.join("pts");
            mkdir_p(&pts)?;
            mount::devpts(&pts)?;
            mount_shm(&at, *shm_size_bytes, *shm_read_only, *noexec)?;
            for (link, to) in [
                ("ptmx", "pts/ptmx"),
                ("fd", "/proc/self/fd"),
                ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"),
            ] {
                let l = at.join(link);
                std::os::unix::fs::symlink(to, &l).map_err(|e| {
                    phantom_linux::SysError::new("symlink", l.display().to_string(), e)
                })?;
            }
            // Nothing more is created in /dev: make the tmpfs itself read-only.
            mount::set_attrs(&at, RO, false)
        }
        Step::Workspace {
            target,
            noexec,
            tmpfs_bytes,
            ..
        } => {
            let at = in_root(root, target);
            mkdir_p(&at)?;
            match (idmapped_workspace, tmpfs_bytes) {
                (Some(m), _) => mount::attach(m.as_fd(), &at)?,
                (None, Some(size)) => {
                    mount::tmpfs(&at, &format!("mode=0755,size={size}"), Attrs::default())?
                }
                (None, None) => mount::bind(&fd_path(source(0)), &at)?,
            }
            mount::set_attrs(
                &at,
                Attrs {
                    nosuid: true,
                    nodev: true,
                    noexec: *noexec,
                    read_only: false,
                },
                true,
            )
        }
        Step::Mask { target } => {
            let at = in_root(root, target);
            match std::fs::symlink_metadata(&at) {
                Err(_) => Ok(()), // nothing to hide on this kernel
                Ok(m) if m.is_dir() => mount::tmpfs(&at, "mode=0555,size=4k", RO),
                Ok(_) => mount::bind(&fd_path(dev_null), &at),
            }
        }
        Step::ReadOnly { target } => {
            let at = in_root(root, target);
            if std::fs::symlink_metadata(&at).is_err() {
                return Ok(());
            }
            mount::bind(&at, &at)?;
            mount::set_attrs(&at, RO, true)
        }
        Step::ImageRoot {
            idmapped,
            mount_points,
            ..
        } => image_root(root, source(0), *idmapped, mount_points),
    }
}

/// /dev/shm of the /dev at `dev`: a tmpfs of its own (POSIX shared memory lives here).
pub(crate) fn mount_shm(
    dev: &Path,
    size_bytes: u64,
    read_only: bool,
    noexec: bool,
) -> Result<(), phantom_linux::SysError> {
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    mount::tmpfs(
        &shm,
        &format!("mode=1777,size={size_bytes}"),
        Attrs {
            noexec,
            read_only,
            ..Default::default()
        },
    )
}

/// Mount an image's root over the root tmpfs (see [`Step::ImageRoot`]). The overlay's
/// upper and work directories and the lower's mount point are in that tmpfs, below
/// the overlay: once pivot_root has detached the host's tree (and the tmpfs with it)
/// the overlay still holds them and nothing in the sandbox can reach them. Whatever
/// the sandbox writes outside its own mounts goes to the upper directory, in memory,
/// and is gone with the run; `/` is made read-only after pivot_root anyway.
fn image_root(
    root: &Path,
    lower: &OwnedFd,
    idmapped: bool,
    mount_points: &[MountPoint],
) -> Result<(), phantom_linux::SysError> {
    let (lower_at, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
    for dir in [&lower_at, &upper, &work] {
        mkdir_p(dir)?;
    }
    if idmapped {
        mount::attach(lower.as_fd(), &lower_at)?;
    } else {
        mount::bind(&fd_path(lower), &lower_at)?;
    }
    // Read-only below the overlay as well: nothing reaches the store through it.
    mount::set_attrs(&lower_at, RO, true)?;
    mount::overlay(root, &lower_at, &upper, &work)?;
    for point in mount_points {
        secure_mount_point(root, point)?;
    }
    Ok(())
}

/// Make `point` safe to mount on in an image root: the image is untrusted, and the
/// steps join their targets to the root as paths, which the kernel resolves with the
/// HOST's `/` until pivot_root. So no component of the path may be a symlink: each
/// one that is, or a file where a directory must be, is removed (from the overlay; the
/// image store is not touched) and replaced by a directory. Nothing else runs in the
/// sandbox yet, so what is checked here is what the steps find.
fn secure_mount_point(root: &Path, point: &MountPoint) -> Result<(), phantom_linux::SysError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let shown = || format!("{} (in the image)", point.target.display());
    let fail = |op: &'static str, e: rustix::io::Errno| {
        phantom_linux::SysError::new(op, shown(), e.into())
    };
    let mut names = Vec::new();
    for component in point.target.components() {
        match component {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(name) => names.push(name),
            _ => return Err(fail("resolve", rustix::io::Errno::INVAL)),
        }
    }
    let open_dir = |at: &OwnedFd, name: &std::ffi::OsStr| {
        rustix::fs::openat(
            at,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail("open", e))
    };
    let mut dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open", e))?;
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let kind = if last {
            point.kind
        } else {
            MountPointKind::Dir
        };
        let found = match rustix::fs::statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Some(FileType::from_raw_mode(stat.st_mode)),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(fail("stat", e)),
        };
        if found.is_none() && point.kind == MountPointKind::Existing {
            // Nothing there for the step to act on; nothing to create either.
            return Ok(());
        }
        let remove = match (found, kind) {
            (None, _) => false,
            (Some(FileType::Directory), MountPointKind::File) => {
                return Err(phantom_linux::SysError::new(
                    "mount",
                    shown(),
                    std::io::Error::other("the image has a directory where phantom puts a file"),
                ))
            }
            (Some(FileType::Directory), _) => false,
            (Some(FileType::Symlink), _) => true,
            (Some(_), MountPointKind::Existing) => false,
            (Some(_), _) => true,
        };
        if remove {
            rustix::fs::unlinkat(&dir, *name, AtFlags::empty()).map_err(|e| fail("unlink", e))?;
        }
        if kind == MountPointKind::Dir && found != Some(FileType::Directory) {
            rustix::fs::mkdirat(&dir, *name, Mode::from_raw_mode(0o755))
                .map_err(|e| fail("mkdir", e))?;
        }
        if !last {
            dir = open_dir(&dir, name)?;
        }
    }
    Ok(())
}

/// The payload process: from the init's fork (or, for `phantom exec`, from the fork
/// that joined a persistent sandbox) to execve. Never returns.
pub(crate) fn payload(ctx: &PayloadContext, chan: &OwnedFd) -> ! {
    process::set_name("phantom:payload");
    // Signals: init blocks them; the payload starts with the default mask and actions.
    if let Err(e) = process::reset_signals(&process::FORWARDED_SIGNALS) {
        payload_failed(ctx, 126, e.to_string());
    }
    payload_prologue(ctx, chan);
    let Some(program) = resolve(&ctx.argv[0], &ctx.path_var) else {
        payload_failed(
            ctx,
            127,
            format!(
                "{}: command not found in the sandbox (searched PATH={}; is it installed on the host under a mounted directory?)",
                ctx.argv[0].to_string_lossy(),
                ctx.path_var
            ),
        )
    };
    payload_fences(ctx, chan, false);
    let err = process::execve(&program, &ctx.argv, &ctx.env);
    let code = if err.errno() == Some(libc::ENOENT) {
        127
    } else {
        126
    };
    payload_failed(
        ctx,
        code,
        format!(
            "cannot execute {}: {}",
            program.to_string_lossy(),
            err.source
        ),
    )
}

/// Say why the payload cannot start on its stderr, and exit with `code`.
pub(crate) fn payload_failed(ctx: &PayloadContext, code: i32, msg: String) -> ! {
    let _ = rustix::io::write(&ctx.stderr, format!("phantom: {msg}\n").as_bytes());
    process::exit_now(code)
}

/// The payload's session, stdio, limits and working directory — the same for a
/// program about to be exec'd and for a zygote's child that goes on in its
/// interpreter. Exits on failure.
pub(crate) fn payload_prologue(ctx: &PayloadContext, chan: &OwnedFd) {
    // A new session: no controlling terminal, so TIOCSTI-style tricks on the user's
    // terminal have nothing to act on (seccomp blocks them as well).
    if let Err(e) = process::setsid() {
        payload_failed(ctx, 126, e.to_string());
    }
    let stdin = ctx.stdin.as_ref().map(|fd| (fd, 0));
    for (fd, target) in stdin
        .into_iter()
        .chain([(&ctx.stdout, 1), (&ctx.stderr, 2)])
    {
        if let Err(e) = process::dup_onto(fd.as_fd(), target) {
            payload_failed(ctx, 126, e.to_string());
        }
    }
    // A pseudo-terminal made for this process (E2B's PTY; never a user's terminal,
    // which the CLI relays through a pipe) becomes its controlling terminal, so that a
    // shell has job control. Without it the process runs on, only without.
    if terminal::is_terminal(rustix::stdio::stdin())
        && terminal::is_terminal(rustix::stdio::stdout())
    {
        let _ = terminal::take_controlling_terminal(rustix::stdio::stdin());
    }
    let mut limits = vec![
        (Rlimit::NoFile, ctx.nofile),
        (Rlimit::FileSize, ctx.fsize),
        (Rlimit::Core, 0),
    ];
    limits.extend(ctx.rlimit_nproc.map(|n| (Rlimit::NProc, n)));
    limits.extend(ctx.rlimit_data.map(|n| (Rlimit::Data, n)));
    for (which, value) in limits {
        if let Err(e) = process::set_rlimit(which, value) {
            payload_failed(ctx, 126, e.to_string());
        }
    }
    if let Err(e) = std::env::set_current_dir(&ctx.cwd) {
        // The caller's mistake, not the payload's exit code: the front end reports it
        // as a usage error.
        let _ = tell(chan, &cwd_refused(&ctx.cwd, &e));
        process::exit_now(2);
    }
}

/// The payload's fences, in their order: no_new_privs, Landlock, capabilities, the
/// fds it keeps (0, 1, 2 and, when given, `fd3`), seccomp last. `close_now`: close
/// the other fds instead of marking them close-on-exec — for a zygote's child that
/// goes on without execve; the caller must never use or drop a value owning one of
/// them afterwards. Exits on failure.
pub(crate) fn payload_fences(ctx: &PayloadContext, chan: &OwnedFd, close_now: bool) {
    // no_new_privs before Landlock and seccomp, which require it without CAP_SYS_ADMIN.
    if let Err(e) = process::set_no_new_privs() {
        payload_failed(ctx, 126, e.to_string());
    }
    if let Some((rules, scope_unix, scope_signals, tcp)) = &ctx.landlock {
        match landlock::restrict(
            &expand_globs(rules),
            *scope_unix,
            *scope_signals,
            tcp.as_ref(),
        ) {
            Ok(abi) => {
                let _ = tell(chan, &FromInit::Landlock { abi });
            }
            Err(e) => payload_failed(ctx, 126, e.to_string()),
        }
    }
    if ctx.drop_caps {
        if let Err(e) = caps::drop_all() {
            payload_failed(ctx, 126, e.to_string());
        }
    }
    if ctx.memory_merge {
        // Best effort: a kernel without it merges nothing, which changes no semantics.
        let _ = process::set_memory_merge();
    }
    // Every fd but 0, 1, 2 (and fd 3 when the payload is given one) — including any
    // the front end itself inherited — is closed by execve (or now).
    let mut first_closed = 3;
    if let Some(fd) = &ctx.fd3 {
        if let Err(e) = process::dup_onto(fd.as_fd(), 3) {
            payload_failed(ctx, 126, e.to_string());
        }
        first_closed = 4;
    }
    let closed = if close_now {
        process::close_from(first_closed)
    } else {
        process::cloexec_from(first_closed)
    };
    if let Err(e) = closed {
        // stderr is fd 2, which stays open either way.
        let _ = rustix::io::write(
            rustix::stdio::stderr(),
            format!("phantom: {e}\n").as_bytes(),
        );
        process::exit_now(126);
    }
    // Seccomp last: the steps above need syscalls it forbids (landlock_*, capset, ...).
    for (name, program) in &ctx.seccomp {
        if let Err(e) = seccomp::install(name, program) {
            let _ = rustix::io::write(
                rustix::stdio::stderr(),
                format!("phantom: {e}\n").as_bytes(),
            );
            process::exit_now(126);
        }
    }
}

/// Look `cmd` up on `path_var` as execvp would (a name with a `/` is used as is).
pub(crate) fn resolve(cmd: &CString, path_var: &str) -> Option<CString> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let bytes = cmd.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    if bytes.contains(&b'/') {
        return Some(cmd.clone());
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(std::ffi::OsStr::from_bytes(bytes));
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return CString::new(candidate.as_os_str().as_bytes()).ok();
            }
        }
    }
    None
}

/// Pid 1's loop: reap, forward, report. Never returns.
pub(crate) fn supervise(chan: &OwnedFd, payload: &mut PayloadStart) -> ! {
    let mut waited: Vec<i32> = process::FORWARDED_SIGNALS.to_vec();
    waited.push(libc::SIGCHLD);
    let (status, usage) = loop {
        let Some(signal) = process::wait_signal(&waited, Some(Duration::from_secs(1))) else {
            // Timeout or spurious wakeup: poll for exited children anyway.
            if let Some(s) = reap(payload.pid) {
                break s;
            }
            continue;
        };
        if signal == libc::SIGCHLD {
            if let Some(s) = reap(payload.pid) {
                break s;
            }
        } else {
            // Forward to the payload's process group (it leads its own session).
            let _ = process::kill(-payload.pid, signal);
        }
    };
    // The payload is done: nothing else in the sandbox may outlive it.
    let _ = process::kill(-1, libc::SIGKILL);
    // With the payload's own rusage, so that a warm-pool supervisor can answer its
    // client now instead of after this namespace's teardown.
    let _ = tell(chan, &FromInit::exited(status, usage, full_filesystems()));
    // Reap what the kill left so their usage is accounted before we exit.
    while let Ok(Some(_)) = process::wait4(-1, false) {}
    process::exit_now(0)
}

/// The writable tmpfs mounts of this mount namespace that are full (no block left
/// for an unprivileged writer): the size limits a payload ran into, for its report.
/// Read after the payload ended, from the sandbox's own mount table.
pub(crate) fn full_filesystems() -> Vec<String> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut full = Vec::new();
    for line in table.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        if right.split(' ').next() != Some("tmpfs") || !options.split(',').any(|o| o == "rw") {
            continue;
        }
        // Mount points escape spaces and the like as \ooo.
        // A point mounted over (a forked run's fresh /tmp over its pool's) is listed
        // once per mount, and statvfs sees only the top one: each point counts once.
        let point = unescape_octal(point);
        if full.contains(&point) {
            continue;
        }
        if let Ok(st) = rustix::fs::statvfs(point.as_str()) {
            if st.f_blocks > 0 && st.f_bavail == 0 {
                full.push(point);
            }
        }
    }
    full
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A persistent sandbox's pid 1: reap whatever is re-parented to it (processes that
/// `exec` commands left behind) until its keeper goes away — then exit, and the
/// kernel kills everything left in the namespace. Never returns.
fn keep_alive(chan: &OwnedFd) -> ! {
    let mut waited: Vec<i32> = process::FORWARDED_SIGNALS.to_vec();
    waited.push(libc::SIGCHLD);
    loop {
        // Signals from inside the sandbox to pid 1 are dropped by the kernel unless
        // handled; blocked ones wait here and are simply consumed.
        let _ = process::wait_signal(&waited, Some(Duration::from_secs(1)));
        while let Ok(Some(_)) = process::wait4(-1, true) {}
        // The keeper is our parent (parent-death signal); this also catches a keeper
        // that closed the channel without dying.
        if peer_closed(chan) {
            process::exit_now(0)
        }
    }
}

/// Reap every exited child; return the payload's status and usage if it was among
/// them.
fn reap(payload_pid: i32) -> Option<(ExitStatus, process::Usage)> {
    let mut found = None;
    while let Ok(Some((pid, status, usage))) = process::wait4(-1, true) {
        if pid == payload_pid {
            found = Some((status, usage));
        }
    }
    found
}

/// Expand a trailing-`*` pattern in the last path component (e.g.
/// `/usr/lib/python3*`) against the sandbox's own filesystem.
fn expand_globs(rules: &[landlock::Rule]) -> Vec<landlock::Rule> {
    let mut out = Vec::with_capacity(rules.len());
    for rule in rules {
        let text = rule.path.to_string_lossy();
        let Some(name) = rule
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            out.push(rule.clone());
            continue;
        };
        if !text.contains('*') {
            out.push(rule.clone());
            continue;
        }
        let (prefix, suffix) = name.split_once('*').unwrap_or((&name, ""));
        let parent = rule.path.parent().unwrap_or(Path::new("/"));
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                let n = entry.file_name().to_string_lossy().into_owned();
                if n.starts_with(prefix)
                    && n.ends_with(suffix)
                    && n.len() >= prefix.len() + suffix.len()
                {
                    out.push(landlock::Rule {
                        path: entry.path(),
                        write: rule.write,
                    });
                }
            }
        }
    }
    out
}

/// The part of a payload's setup that comes from the plan alone.
pub(crate) fn payload_base(plan: &Plan) -> PayloadBase {
    let isolated = plan.mode != phantom_policy::Mode::Direct;
    PayloadBase {
        nofile: plan.limits.nofile,
        fsize: plan.limits.fsize_bytes,
        landlock: (isolated && plan.landlock.enabled).then(|| {
            (
                landlock_rules(plan),
                plan.landlock.scope_abstract_unix,
                plan.landlock.scope_signals,
                plan.landlock.tcp.as_ref().map(|t| landlock::TcpPorts {
                    connect: t.connect_ports.clone(),
                    bind: t.bind_ports.clone(),
                }),
            )
        }),
        seccomp: if isolated {
            plan.seccomp
                .iter()
                .map(|p| {
                    let program = p
                        .instructions
                        .iter()
                        .map(|i| seccomp::Instruction {
                            code: i.code,
                            jt: i.jt,
                            jf: i.jf,
                            k: i.k,
                        })
                        .collect();
                    (p.name.clone(), program)
                })
                .collect()
        } else {
            Vec::new()
        },
        drop_caps: isolated,
        prewarm_python: plan.prewarm == Some(phantom_policy::Interpreter::Python),
        ksm: std::fs::read_to_string("/sys/kernel/mm/ksm/run").is_ok_and(|s| s.trim() == "1"),
        env: plan.env.clone(),
        cwd: plan.cwd.clone(),
    }
}

/// Landlock rules from the plan, with trailing-`*` globs expanded inside the sandbox.
pub(crate) fn landlock_rules(plan: &Plan) -> Vec<landlock::Rule> {
    plan.landlock
        .rules
        .iter()
        .map(|r| landlock::Rule {
            path: PathBuf::from(&r.path),
            write: r.access == Access::ReadWrite,
        })
        .collect()
}

/// Direct mode: no namespaces; the child is the payload itself once the parent has
/// put it in the cgroup. Never returns.
///
/// It stays between the spawner and the payload: it makes itself the subreaper of
/// everything the payload starts (so that what leaves the payload's session is still
/// found), forwards signals to the payload's group, and when the payload exits — or the
/// spawner sends [`ToInit::Kill`] — kills every descendant before it reports and exits.
/// The spawner never has to find or kill a direct run's processes itself.
pub(crate) fn direct_child(ctx: ChildContext, chan: OwnedFd) -> ! {
    process::set_name("phantom:direct");
    let _ = process::set_parent_death_signal_kill();
    let mut waited = process::FORWARDED_SIGNALS.to_vec();
    waited.push(libc::SIGCHLD);
    let _ = process::block_signals(&waited);
    if phantom_linux::cgroup::join_self(&ctx.cgroup_tasks).is_err() {
        process::exit_now(125);
    }
    let ChildPayload::Ready(p) = &ctx.payload else {
        // Direct mode has no warm pools.
        process::exit_now(125)
    };
    if recv_go(&chan).is_err() {
        process::exit_now(1);
    }
    if let Err(e) = process::set_child_subreaper() {
        let _ = tell(
            &chan,
            &FromInit::SetupFailed {
                message: e.to_string(),
            },
        );
        process::exit_now(1);
    }
    write_files(p, &ctx.files_dir, &chan);
    let payload_pid = match process::clone_child(process::Namespaces::default(), None) {
        Ok(process::Forked::Child) => payload(p, &chan),
        Ok(process::Forked::Parent { pid, .. }) => pid,
        Err(e) => {
            let _ = tell(
                &chan,
                &FromInit::SetupFailed {
                    message: e.to_string(),
                },
            );
            process::exit_now(1)
        }
    };
    let Ok(sigfd) = process::signalfd(&waited) else {
        kill_descendants();
        process::exit_now(1)
    };
    let (status, usage) = loop {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [
            PollFd::new(&sigfd, PollFlags::IN),
            PollFd::new(&chan, PollFlags::IN),
        ];
        let second = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        let _ = poll(&mut fds, Some(&second));
        let (signals, told) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if told {
            // Kill, or the spawner is gone: either way nothing of the run may stay.
            let _ = channel::recv::<ToInit>(chan.as_fd(), 4096, 0, "spawner");
            let _ = process::kill(-payload_pid, libc::SIGKILL);
            let _ = process::kill(payload_pid, libc::SIGKILL);
        }
        if signals {
            while let Some(signal) = process::read_signalfd(sigfd.as_fd()) {
                if signal != libc::SIGCHLD {
                    // To the payload's group (it leads its own session).
                    let _ = process::kill(-payload_pid, signal);
                }
            }
        }
        if let Some(done) = reap(payload_pid) {
            break done;
        }
    };
    // The payload is done: nothing it started may outlive it.
    kill_descendants();
    let _ = tell(&chan, &FromInit::exited(status, usage, full_filesystems()));
    process::exit_now(0)
}

/// SIGKILL and reap every descendant of this process (a direct run's cleanup; we are
/// their subreaper).
fn kill_descendants() {
    for _ in 0..100 {
        let left = process::descendants(process::getpid());
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = process::kill(pid, libc::SIGKILL);
        }
        while let Ok(Some(_)) = process::wait4(-1, true) {}
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod image_root_tests {
    use super::*;

    fn point(target: &str, kind: MountPointKind) -> MountPoint {
        MountPoint {
            target: PathBuf::from(target),
            kind,
        }
    }

    #[test]
    fn mount_points_in_an_image_never_follow_its_symlinks() {
        let dir = phantom_state::test_util::Scratch::new("mount-points");
        let (root, outside) = (dir.0.join("root"), dir.0.join("outside"));
        for d in [root.join("etc/dir"), outside.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        let link = |at: &str, to: &Path| std::os::unix::fs::symlink(to, root.join(at)).unwrap();
        link("etc/hosts", &outside.join("hosts"));
        link("workspace", &outside);
        link("opt", &outside);
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/hostname"), "image\n").unwrap();
        std::fs::write(root.join("tmp"), "a file where a directory goes\n").unwrap();

        for p in [
            point("/etc/hosts", MountPointKind::File),
            point("/etc/hostname", MountPointKind::File),
            point("/workspace", MountPointKind::Dir),
            point("/opt/tool/bin", MountPointKind::Dir),
            point("/tmp", MountPointKind::Dir),
            point("/srv/app", MountPointKind::Dir),
            point("/etc/passwd", MountPointKind::Existing),
            point("/proc/kcore", MountPointKind::Existing),
        ] {
            secure_mount_point(&root, &p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        }
        let kind = |p: &str| std::fs::symlink_metadata(root.join(p)).map(|m| m.file_type());
        // Symlinks and files in the way are gone, replaced by directories where needed.
        assert!(kind("etc/hosts").is_err());
        assert!(kind("etc/hostname").is_err());
        for d in ["workspace", "opt", "opt/tool/bin", "tmp", "srv/app"] {
            assert!(kind(d).unwrap().is_dir(), "{d}");
        }
        // What a step only acts on if present is kept, or not created.
        assert!(kind("etc/passwd").unwrap().is_file());
        assert!(kind("proc").is_err());
        // Nothing happened where the symlinks pointed.
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        // A directory where phantom puts a file is refused; so is a path that climbs.
        let err = secure_mount_point(&root, &point("/etc/dir", MountPointKind::File));
        assert!(err.unwrap_err().to_string().contains("directory"));
        assert!(secure_mount_point(&root, &point("/etc/../x", MountPointKind::Dir)).is_err());
    }
}
