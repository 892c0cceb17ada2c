//! Mode wasm: a WASI preview 1 module under wasmtime (phantom-wasm), in a process the
//! engine forks for the run — the engine server itself stays single-threaded and
//! never waits for a compile.
//!
//! The request side ([`resolve`], from `prepare`): which module (a `.wasm`/`.wat` file,
//! or `python3`/`python` with a WASI build of CPython installed), its arguments, and
//! the extra read-only preopen of a CPython's standard library.
//!
//! The process side ([`child`]), one linear setup: join the run's cgroup, wait for GO,
//! take the client's stdio and the rlimits (`payload_prologue`), make the run's
//! private /tmp, load the module (compile, or take it from the cache) — the only step
//! that needs the cache directory and may start compiler threads — then the fences
//! (`payload_fences`: no_new_privs, Landlock limited to the preopened directories,
//! capabilities dropped, seccomp denylist last), then the module. See "Mode wasm" in
//! docs/ARCHITECTURE.md for how this differs from sandbox mode.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phantom_api::request::{Field, FieldError, Program};
use phantom_linux::landlock;
use phantom_linux::process::{self, ExitStatus};
use phantom_policy::{Mount, Plan};
use phantom_wasm::{Ended, Job, Preopen, WasmError};

use crate::channel::{self, tell, FromInit, ToInit};
use crate::init::{self, ChildContext, ChildPayload, PayloadContext};
use crate::prepare::PayloadCommand;
use crate::EngineError;

/// What the wasm runner's process may use beyond the module's own memory limit:
/// wasmtime, the compiler (a large module's compile takes hundreds of MiB) and the
/// runtime's threads. The cgroup holds the whole process to memory + this.
pub(crate) const RUNTIME_HEADROOM_BYTES: u64 = 1 << 30;

/// How long the engine waits for a module to be loaded before it kills the run (the
/// run's own timeout starts when the module does: a first compile of a large module
/// takes minutes on a small host).
pub(crate) const LOAD_ALLOWANCE: Duration = Duration::from_secs(15 * 60);

/// After the module's own timeout (epoch interruption) the engine's deadline follows
/// by this much: a module blocked in a host call (reading stdin) is killed then.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// What a wasm run executes, decided before any process exists.
#[derive(Debug, Clone)]
pub(crate) struct WasmCommand {
    pub module: PathBuf,
    /// The module's argv (argv[0] as given).
    pub argv: Vec<String>,
    /// Read-only preopens beyond the workspace and /tmp (a CPython's stdlib).
    pub extra: Vec<Preopen>,
    /// The compile cache (None: none usable, said in a warning).
    pub cache_dir: Option<PathBuf>,
}

fn argv_error(value: &str, message: String) -> EngineError {
    EngineError::from(FieldError::with_value(Field::Argv, value, message))
}

/// The module a wasm run's command names. `workspace`: the caller's directory, where a
/// relative module path is looked up (the engine does not share the caller's current
/// directory; `phantom run` makes such a path absolute itself). A compile cache that
/// cannot be used is said in `warnings`.
pub(crate) fn resolve(
    program: Option<&Program>,
    workspace: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<WasmCommand, EngineError> {
    let Some(program) = program else {
        return Err(EngineError::Usage(
            "mode wasm runs one module per request: persistent sandboxes and exec are not available in mode wasm; use mode sandbox".into(),
        ));
    };
    let argv = program.argv();
    let Some(first) = argv.first() else {
        return Err(argv_error(
            "",
            "no module given, e.g. [\"hello.wasm\"]".into(),
        ));
    };
    let cache_dir = cache_dir().unwrap_or_else(|why| {
        warnings.push(why);
        None
    });
    let name = Path::new(first)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".wasm") || name.ends_with(".wat") {
        let path = Path::new(first);
        let module = match (path.is_absolute(), workspace) {
            (true, _) => path.to_path_buf(),
            (false, Some(dir)) => dir.join(path),
            (false, None) => {
                return Err(argv_error(
                    first,
                    "a relative module path needs --workspace (it is looked up there); give the module's absolute path".into(),
                ))
            }
        };
        phantom_wasm::check_file(&module).map_err(|m| argv_error(first, m))?;
        return Ok(WasmCommand {
            module,
            argv,
            extra: Vec::new(),
            cache_dir,
        });
    }
    if matches!(name.as_str(), "python3" | "python") {
        let python = phantom_wasm::find_python().map_err(|m| argv_error(first, m))?;
        phantom_wasm::check_file(&python.module).map_err(|m| argv_error(first, m))?;
        return Ok(WasmCommand {
            module: python.module,
            argv,
            extra: python
                .stdlib
                .into_iter()
                .map(|host| Preopen {
                    host,
                    guest: "/usr/local/lib".into(),
                    writable: false,
                })
                .collect(),
            cache_dir,
        });
    }
    Err(argv_error(
        first,
        format!(
            "mode wasm runs a WebAssembly module: give a .wasm or .wat file (or python3, with a WASI build of CPython installed), not `{first}`; or use mode sandbox to run a program"
        ),
    ))
}

/// The plan a wasm run's process is started from (spawn.rs): no mounts (it has no
/// mount namespace), and memory for wasmtime beside the module's own limit.
pub(crate) fn spawn_plan(plan: &Plan) -> Plan {
    let mut plan = plan.clone();
    plan.mounts.clear();
    plan.limits.memory_bytes = plan
        .limits
        .memory_bytes
        .saturating_add(RUNTIME_HEADROOM_BYTES);
    plan
}

/// What the forked process runs.
#[derive(Debug)]
pub(crate) struct WasmPayload {
    /// Stdio, rlimits, Landlock rules, seccomp: replayed as a payload's.
    pub payload: PayloadContext,
    pub job: Job,
    /// The run's private /tmp (inside its run directory, removed with it).
    pub tmp: PathBuf,
}

/// The payload of a wasm run: the module, its preopens and its fences. `host_workspace`:
/// the run's workspace on the host; `run_dir`: its run directory (/tmp goes there).
#[allow(clippy::too_many_arguments)]
pub(crate) fn payload(
    wasm: &WasmCommand,
    command: &PayloadCommand,
    plan: &Plan,
    host_workspace: &Path,
    run_dir: &Path,
    term: Option<&str>,
    stdio: [Option<OwnedFd>; 3],
    files: Option<OwnedFd>,
    no_cgroup: bool,
) -> Result<ChildPayload, EngineError> {
    let tmp = run_dir.join("tmp");
    // The workspace first (fd 3 in the module), then /tmp (fd 4), as the plan has them.
    let mut preopens: Vec<Preopen> = plan
        .mounts
        .iter()
        .filter_map(|mount| match mount {
            Mount::Workspace { target, .. } => Some(Preopen {
                host: host_workspace.to_path_buf(),
                guest: target.clone(),
                writable: true,
            }),
            _ => None,
        })
        .collect();
    preopens.extend(plan.mounts.iter().filter_map(|mount| match mount {
        Mount::Tmpfs {
            target, read_only, ..
        } if target == "/tmp" => Some(Preopen {
            host: tmp.clone(),
            guest: target.clone(),
            writable: !read_only,
        }),
        _ => None,
    }));
    preopens.extend(wasm.extra.iter().cloned());
    // The process runs on the host's filesystem: its working directory is the
    // workspace (the module itself sees only its preopens).
    let host_command = PayloadCommand {
        cwd: Some(host_workspace.display().to_string()),
        ..command.clone()
    };
    let mut payload = crate::prepare::payload_context(
        &host_command,
        plan,
        host_workspace,
        term,
        stdio,
        files,
        no_cgroup,
    )?;
    // Without a cgroup, RLIMIT_DATA holds the process: the module's memory and
    // wasmtime's headroom (its reservations of address space for linear memories and
    // their guard regions are PROT_NONE, which RLIMIT_DATA does not count).
    payload.rlimit_data = payload
        .rlimit_data
        .map(|m| m.saturating_add(RUNTIME_HEADROOM_BYTES));
    // The process runs as the engine's user on the host: root drops every capability;
    // another user holds none, and could not drop the bounding set (CAP_SETPCAP).
    payload.drop_caps = process::euid() == 0;
    // Landlock: the preopened directories and nothing else (no TCP either: WASI
    // preview 1 has no sockets).
    if let Some((_, unix, signals, _)) = &payload.landlock {
        payload.landlock = Some((
            preopens
                .iter()
                .map(|p| landlock::Rule {
                    path: p.host.clone(),
                    write: p.writable,
                })
                .collect(),
            *unix,
            *signals,
            Some(landlock::TcpPorts {
                connect: Vec::new(),
                bind: Vec::new(),
            }),
        ));
    }
    let env = crate::spawn::payload_env(&plan.env, term, &command.env);
    Ok(ChildPayload::Wasm(Box::new(WasmPayload {
        payload,
        job: Job {
            module: wasm.module.clone(),
            argv: wasm.argv.clone(),
            env,
            preopens,
            memory_bytes: plan.limits.memory_bytes,
            timeout: Duration::from_millis(plan.limits.wall_timeout_ms),
            cache_dir: wasm.cache_dir.clone(),
        },
        tmp,
    })))
}

/// wasmtime's compile cache: `wasm-cache` in phantom's state directory (see
/// phantom_state::store_dir::state_dir), created 0700. wasmtime runs what it finds
/// there as native code, so a directory that another user owns or that others can
/// write is never used: Err says why, and the run compiles without a cache.
pub(crate) fn cache_dir() -> Result<Option<PathBuf>, String> {
    let Some(state) = phantom_state::store_dir::state_dir().ok().flatten() else {
        return Ok(None);
    };
    let dir = state.join("wasm-cache");
    use phantom_state::store_dir::StoreDirError;
    phantom_state::store_dir::prepare(&dir, &[])
        .map(|()| Some(dir.clone()))
        .map_err(|e| {
            let why = match e {
                StoreDirError::Io { what, path, source } => {
                    format!("cannot {what} {}: {source}", path.display())
                }
                StoreDirError::NotYours { uid } => format!(
                    "it is not a directory that only uid {uid} owns and can write; remove it"
                ),
            };
            format!(
                "the wasm compile cache {} is not used ({why}): every run compiles its module",
                dir.display()
            )
        })
}

/// The wasm run's process. Never returns.
pub(crate) fn child(ctx: ChildContext, chan: OwnedFd) -> ! {
    process::set_name("phantom:wasm");
    // The engine's signal mask is not the run's: a signal the client forwards (or
    // the engine's kill) acts on this process at once.
    if process::reset_signals(&process::FORWARDED_SIGNALS).is_err() {
        process::exit_now(125);
    }
    // Killed with the engine: nothing of the run outlives its spawner.
    let _ = process::set_parent_death_signal_kill();
    // The cgroup first: its limits hold from the first compile on.
    if phantom_linux::cgroup::join_self(&ctx.cgroup_tasks).is_err() {
        process::exit_now(125);
    }
    let ChildPayload::Wasm(w) = ctx.payload else {
        process::exit_now(125)
    };
    let WasmPayload { payload, job, tmp } = *w;
    if init::recv_go(&chan).is_err() {
        process::exit_now(1);
    }
    // The engine's kill (ToInit::Kill: the timeout, a cancelled run) or its end (the
    // channel closes) ends the process at once, in a long compile as in the module:
    // without a cgroup to kill, nothing else would. The thread only reads the channel.
    match chan.try_clone() {
        Ok(watch) => {
            std::thread::spawn(move || {
                let _ = channel::recv::<ToInit>(watch.as_fd(), 4096, 0, "spawner");
                process::exit_now(128 + libc::SIGKILL);
            });
        }
        Err(e) => setup_failed(&chan, format!("dup the channel: {e}")),
    }
    // The client's stdio onto 0/1/2, a session of its own, the rlimits, the workspace
    // as working directory.
    init::payload_prologue(&payload, &chan);
    // /tmp before the fences: Landlock's rules name it.
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&tmp) {
        setup_failed(&chan, format!("create {}: {e}", tmp.display()));
    }
    init::write_files(&payload, &ctx.files_dir, &chan);
    // Compile (or load from the cache) before the fences: the cache directory is
    // outside what Landlock leaves open, and the compiler's threads start here.
    let loaded = match phantom_wasm::load(&job) {
        Ok(loaded) => loaded,
        Err(WasmError::Module(message)) => {
            let _ = tell(
                &chan,
                &FromInit::Refused {
                    field: Some(Field::Argv),
                    value: Some(job.module.display().to_string()),
                    message,
                },
            );
            process::exit_now(2)
        }
        Err(e @ WasmError::Runtime(_)) => setup_failed(&chan, e.to_string()),
    };
    // The module's wall time starts now (the engine moves its deadline).
    let _ = tell(
        &chan,
        &FromInit::WasmLoaded {
            compiled: loaded.compiled,
            load_ms: loaded.load_ms,
        },
    );
    // no_new_privs, Landlock (the preopens only), capabilities, seccomp last. Fds
    // above 2 stay open (no execve follows): the channel still reports below.
    init::payload_fences(&payload, &chan, false);
    let ended = match phantom_wasm::run(loaded, &job) {
        Ok(ended) => ended,
        Err(e) => setup_failed(&chan, e.to_string()),
    };
    let status = match &ended {
        Ended::Exited(code) => ExitStatus::Exited(*code),
        Ended::TimedOut => {
            let _ = tell(&chan, &FromInit::TimedOut);
            ExitStatus::Signaled(libc::SIGKILL)
        }
        Ended::Trapped(message) => {
            let _ = rustix::io::write(&payload.stderr, format!("phantom: {message}\n").as_bytes());
            ExitStatus::Exited(ended.exit_code())
        }
    };
    let _ = tell(
        &chan,
        &FromInit::exited(status, process::own_usage(), Vec::new()),
    );
    process::exit_now(0)
}

fn setup_failed(chan: &OwnedFd, message: String) -> ! {
    let _ = tell(chan, &FromInit::SetupFailed { message });
    process::exit_now(1)
}

/// The fds the process keeps through spawn.rs's close.
pub(crate) fn fds(w: &WasmPayload) -> Vec<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    let p = &w.payload;
    p.stdin
        .iter()
        .chain([&p.stdout, &p.stderr])
        .chain(&p.files)
        .map(|f| f.as_fd().as_raw_fd())
        .collect()
}
