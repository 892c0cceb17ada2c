//! Runs: a program in a fresh sandbox — a pooled one when a pool serves its plan,
//! else one built for it (cold). Either way the payload writes straight into the
//! client's pipes; the engine watches the sandbox, forwards the client's signals,
//! enforces the deadline, and answers with the report as soon as the payload's status
//! is known (the teardown — reaping, removing the cgroup and the run directory —
//! comes after, off the client's critical path).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use phantom_api::choice::StartKind;
use phantom_api::engine::{Failure, FailureKind, Reply, Request, RunCall, Started};
use phantom_api::{IsolationReport, NetworkReport, RunReport, WasmReport};
use phantom_egress::{ProxyConfig, ProxyHelper};
use phantom_linux::cgroup;
use phantom_linux::process::{self, ExitStatus, Usage};
use phantom_policy::{Mode, NetworkMode, Plan};

use super::pool::{idmapped_workspace, RunSlot};
use super::{log, reply, Engine, Slot};
use crate::channel::{self, FromInit, RunSpec, ToInit};
use crate::init::ChildPayload;
use crate::prepare::{self, api_mode, payload_context, Ask, Policy, Prepared};
use crate::spawn::{ms, payload_env, spawn_on, CgroupGuard, SandboxStatus, Spawned, Trace};
use crate::wasm_run;
use crate::EngineError;
use phantom_linux::fdpass;

/// A run in flight.
pub(super) struct RunJob {
    client: OwnedFd,
    /// Polled while the client may still send a signal (until it goes).
    client_open: bool,
    spawned: Spawned,
    /// Polled until the sandbox closes it.
    chan_open: bool,
    /// The pool it came from (a warm run).
    pub pool: Option<usize>,
    deadline: Instant,
    /// The run's wall-time limit.
    timeout: Duration,
    timed_out: bool,
    status: SandboxStatus,
    /// `Finished` (or an error) sent already.
    replied: bool,
    /// network limited, cold: the egress proxy's settings until the init sends its
    /// listening socket.
    proxy: Option<ProxyConfig>,
    /// network limited: the init's listening socket and the proxy's settings, until a
    /// first connection waits on it (most runs never connect: they pay no helper).
    door: Option<(OwnedFd, ProxyConfig)>,
    /// A door came: the run is limited, and its report has a network section even if
    /// nothing connected.
    limited: bool,
    base: ReportBase,
}

/// What the report of a run or an exec takes from its request and its sandbox, known
/// at start.
pub(super) struct ReportBase {
    pub sandbox_id: String,
    pub profile: String,
    pub mode: Mode,
    pub seccomp_programs: usize,
    pub host_uid: u32,
    pub idmapped: bool,
    /// Cold, warm or exec (prewarmed when a pre-started interpreter took the run).
    pub start: StartKind,
    pub warnings: Vec<String>,
}

impl ReportBase {
    /// The report of a run that ended with `exit` (`status`: what the sandbox said).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report(
        &self,
        status: &SandboxStatus,
        timed_out: bool,
        exit: ExitStatus,
        usage: Usage,
        wall: Duration,
        oom_killed: bool,
        cgroup: &str,
        network: Option<NetworkReport>,
    ) -> RunReport {
        // A pooled sandbox whose pre-started interpreter took the run; a zygote's
        // child that went on in the interpreter stays `forked` (the pool counts it).
        let start = if status.prewarmed && self.start == StartKind::Warm {
            StartKind::Prewarmed
        } else {
            self.start
        };
        RunReport {
            sandbox_id: self.sandbox_id.clone(),
            profile: self.profile.clone(),
            mode: api_mode(self.mode),
            start,
            exit_code: exit.code(),
            signal: exit.signal(),
            timed_out,
            oom_killed,
            disk_limit_hit: !status.full.is_empty(),
            full_filesystems: status.full.clone(),
            output_truncated: false,
            cancelled: false,
            wall_ms: ms(wall),
            user_ms: ms(usage.user),
            sys_ms: ms(usage.sys),
            max_rss_kb: usage.max_rss_kb,
            stdout: None,
            stderr: None,
            isolation: IsolationReport {
                cgroup: cgroup.to_string(),
                landlock_abi: status.landlock_abi,
                seccomp_programs: self.seccomp_programs,
                host_uid: self.host_uid,
                idmapped_workspace: self.idmapped,
            },
            warnings: self.warnings.clone(),
            network,
            wasm: status.wasm_loaded.map(|(compiled, load_ms)| WasmReport {
                cached: !compiled,
                load_ms,
            }),
        }
    }
}

/// What a finished run tells its pool.
pub(super) struct RunOutcome {
    /// The pre-started interpreter's message was read only at the end.
    pub prewarmed_late: bool,
    pub network: Option<NetworkReport>,
}

/// A Unix 98 pseudo-terminal slave (`/dev/pts/N`: majors 136 to 143).
fn is_pty_slave(rdev: u64) -> bool {
    (136..=143).contains(&rustix::fs::major(rdev))
}

fn dev_null() -> Result<OwnedFd, EngineError> {
    std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|source| EngineError::Io {
            what: "open",
            path: "/dev/null".into(),
            source,
        })
}

/// The payload's stdio as a client sent them (stdin, stdout, stderr; None: stdin
/// given none): /dev/null for a missing stdin, and a refusal of any fd that is not a
/// pipe, a regular file (a memfd), /dev/null or a pseudo-terminal's slave (a terminal
/// a front end made for this process, `Stdin::Terminal`: it reaches nothing but its
/// own master). Anything else — a directory, a socket, another device — would be a
/// handle on the host inside the sandbox; the client relays such a stdin through a
/// pipe, so only a client that skipped that gets here.
pub(super) fn payload_stdio(
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<[OwnedFd; 3], EngineError> {
    use rustix::fs::FileType;
    let stdin = match stdin {
        Some(fd) => fd,
        None => dev_null()?,
    };
    let stdio = [stdin, stdout, stderr];
    for (fd, name) in stdio.iter().zip(["stdin", "stdout", "stderr"]) {
        let stat = rustix::fs::fstat(fd)
            .map_err(|e| EngineError::Sys(phantom_linux::SysError::new("fstat", name, e.into())))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        let fine = match kind {
            FileType::Fifo | FileType::RegularFile => true,
            FileType::CharacterDevice => {
                crate::relay::is_dev_null(&stat) || is_pty_slave(stat.st_rdev)
            }
            _ => false,
        };
        if !fine {
            return Err(EngineError::Usage(format!(
                "the payload's {name} is a {}: it may be only a pipe, a regular file or \
                 /dev/null (relay anything else through a pipe)",
                match kind {
                    FileType::Directory => "directory",
                    FileType::Socket => "socket",
                    FileType::CharacterDevice => "character device",
                    FileType::BlockDevice => "block device",
                    FileType::Symlink => "symbolic link",
                    _ => "file of unknown type",
                }
            )));
        }
    }
    Ok(stdio)
}

impl Engine {
    /// Start `call`: take a pooled sandbox when one serves it, else build one.
    pub(super) fn start_run(
        &mut self,
        call: RunCall,
        fds: Vec<OwnedFd>,
        conn: &OwnedFd,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let RunCall {
            principal,
            request,
            stdin,
            files,
            term,
            cold,
        } = call;
        let mut fds = fds.into_iter();
        let stdin = stdin.then(|| fds.next()).flatten();
        let (Some(stdout), Some(stderr)) = (fds.next(), fds.next()) else {
            unreachable!("counted by dispatch");
        };
        let stdio = payload_stdio(stdin, stdout, stderr)?;
        let files = files.then(|| fds.next()).flatten();
        let program = request.program()?;
        let options = &request.options;
        let policy = Policy::of(
            options.profile.as_deref(),
            options.policy_file.as_deref(),
            program.default_profile(),
        )?;
        let prepared = prepare::prepare(
            Ask {
                principal: &principal,
                policy,
                limits: &options.limits,
                image: options.image.as_deref(),
                program: Some(&program),
                env: &options.env,
                cwd: options.cwd.as_deref(),
                workspace: options.workspace.as_deref(),
                exec: false,
            },
            &mut self.cache,
        )?;
        let client = conn.try_clone().map_err(|source| EngineError::Io {
            what: "dup",
            path: "client connection".into(),
            source,
        })?;
        let plan = prepared.plan();
        // A pool serves it by a fork of its zygote, or with a pre-built sandbox; else
        // (or when the zygote failed) it starts cold, and the report says why.
        let (pooled, not_warm) = match self.take_pooled(&prepared, cold) {
            Ok((p, None)) => {
                match self.fork_run(p, &prepared, term.as_deref(), &stdio, files.as_ref()) {
                    Ok(spawned) => (Some((p, spawned)), None),
                    Err(e) => {
                        let why = format!(
                            "the zygote of pool {} failed ({e}); it is restarted",
                            self.pools.pools[p].name()
                        );
                        log(&why);
                        self.pools.pools[p].zygote_failed();
                        (None, Some(why))
                    }
                }
            }
            Ok((p, Some(sandbox))) => {
                let spawned = self.hand_over(
                    p,
                    sandbox,
                    &prepared,
                    term.as_deref(),
                    &stdio,
                    files.as_ref(),
                )?;
                (Some((p, spawned)), None)
            }
            Err(reason) => (None, Some(reason)),
        };
        let (spawned, pool, not_warm) = match pooled {
            Some((p, spawned)) => (spawned, Some(p), None),
            None => {
                let mut trace = Trace::new(started);
                trace.step(if prepared.compile_ms > 0.05 {
                    "request checked, policy compiled"
                } else {
                    "request checked (plan cached)"
                });
                let mut warnings = Vec::new();
                let [stdin, stdout, stderr] = stdio;
                let workspace = prepared.workspace.as_ref().map(|p| p.display().to_string());
                let sandbox_id = phantom_state::ids::new_sandbox_id();
                // Mode wasm: a process of the engine's runs the module (wasm_run.rs).
                let wasm_plan = prepared.wasm.as_ref().map(|_| wasm_run::spawn_plan(plan));
                let run_dir = crate::workspace::state_base()?
                    .join(format!("{}{sandbox_id}", crate::workspace::RUN_PREFIX));
                let mut spawned = spawn_on(
                    sandbox_id,
                    wasm_plan.as_ref().unwrap_or(plan),
                    prepared.image.as_ref(),
                    workspace.as_deref(),
                    &mut trace,
                    &mut warnings,
                    |ws, no_cgroup| {
                        let stdio = [Some(stdin), Some(stdout), Some(stderr)];
                        if let Some(wasm) = &prepared.wasm {
                            return wasm_run::payload(
                                wasm,
                                &prepared.command,
                                plan,
                                ws,
                                &run_dir,
                                term.as_deref(),
                                stdio,
                                files,
                                no_cgroup,
                            );
                        }
                        Ok(ChildPayload::Ready(payload_context(
                            &prepared.command,
                            plan,
                            ws,
                            term.as_deref(),
                            stdio,
                            files,
                            no_cgroup,
                        )?))
                    },
                )?;
                spawned.warnings = warnings;
                (spawned, None, not_warm)
            }
        };
        let mut warnings = prepared.warnings.clone();
        warnings.extend(spawned.warnings.iter().cloned());
        let start = match pool {
            None => StartKind::Cold,
            Some(_) if spawned.forked => StartKind::Forked,
            Some(_) => StartKind::Warm,
        };
        // A pre-built sandbox's proxy runs already; a cold or forked one sends its door.
        let proxy = (start != StartKind::Warm && plan.network == NetworkMode::Limited).then(|| {
            let mut config =
                prepare::proxy_config(plan, &spawned.sandbox_id, &prepared.test_resolve);
            if start == StartKind::Forked {
                // As a pooled sandbox's: each decision in the supervisor's log.
                config.log_prefix = Some(
                    super::LOG_NAME
                        .get()
                        .copied()
                        .unwrap_or("phantom-supervisor")
                        .into(),
                );
            }
            config
        });
        let started_reply = Reply::Started(Box::new(Started {
            sandbox_id: spawned.sandbox_id.clone(),
            start,
            output_limit: prepared.output_limit,
            timeout_ms: plan.limits.wall_timeout_ms,
            memory_bytes: plan.limits.memory_bytes,
            warnings: warnings.clone(),
            not_warm,
            compile_ms: prepared.compile_ms,
            load_allowance_ms: if plan.mode == Mode::Wasm {
                wasm_run::LOAD_ALLOWANCE.as_millis() as u64
            } else {
                0
            },
        }));
        let client_open = reply(&client, &started_reply);
        if !client_open {
            // Nobody waits for it: it goes at once, and is cleaned up as usual.
            spawned.kill();
        }
        let (spawned_id, host_uid, idmapped) = (
            spawned.sandbox_id.clone(),
            spawned.host_uid,
            spawned.idmapped,
        );
        let timeout = Duration::from_millis(plan.limits.wall_timeout_ms);
        self.jobs.push(super::Job::Run(Box::new(RunJob {
            // Mode wasm: the module's timeout starts once it is loaded (see event()).
            deadline: spawned.started
                + timeout
                + if plan.mode == Mode::Wasm {
                    wasm_run::LOAD_ALLOWANCE
                } else {
                    Duration::ZERO
                },
            timeout,
            client,
            client_open,
            spawned,
            chan_open: true,
            pool,
            timed_out: false,
            status: SandboxStatus::default(),
            replied: false,
            proxy,
            door: None,
            limited: false,
            base: ReportBase {
                sandbox_id: spawned_id,
                profile: plan.profile.clone(),
                mode: plan.mode,
                seccomp_programs: if plan.mode == Mode::Direct {
                    0
                } else {
                    plan.seccomp.len()
                },
                host_uid,
                idmapped,
                start,
                warnings,
            },
        })));
        Ok(())
    }

    /// A ready sandbox of the pool that serves `prepared`, or why none does.
    /// `None`: the pool's zygote forks it.
    fn take_pooled(
        &mut self,
        prepared: &Prepared,
        cold: bool,
    ) -> Result<(usize, Option<Spawned>), String> {
        if cold {
            return Err("--cold".into());
        }
        let plan = prepared.plan();
        if plan.mode == Mode::Direct {
            return Err("direct mode has no sandbox".into());
        }
        if plan.mode == Mode::Wasm {
            return Err("mode wasm runs in a process of its own".into());
        }
        let Some(profile) = &prepared.profile else {
            return Err("a policy file is not pooled".into());
        };
        let image = prepared.image.as_ref().map(|i| i.name.as_str());
        let on_image = image.map_or(String::new(), |i| format!(" on image `{i}`"));
        let pools = &mut self.pools.pools;
        let Some(p) = pools
            .iter()
            .position(|pool| &pool.profile == profile && pool.image_name() == image)
        else {
            let serving: Vec<String> = pools.iter().map(|p| p.name()).collect();
            return Err(format!(
                "no pool for profile {profile}{on_image} (serving: {})",
                if serving.is_empty() {
                    "none".into()
                } else {
                    serving.join(", ")
                }
            ));
        };
        let pool = &mut pools[p];
        // Asked for: its size follows how often (served or not).
        pool.demand.arrive(std::time::Instant::now());
        if let Some(reason) = prepared.image.as_ref().and_then(|i| pool.check_image(i)) {
            return Err(reason);
        }
        if pool.build_key != prepared.compiled.build_key {
            return Err(format!(
                "pool {} is built for the profile as it is; this run changes how its sandbox is built (network or mode)",
                pool.name()
            ));
        }
        if prepared.workspace.is_some() && process::euid() != 0 {
            return Err(
                "a host workspace needs an engine running as root (idmapped mounts)".into(),
            );
        }
        if pool.zygote.is_some() {
            pool.hits += 1;
            return Ok((p, None));
        }
        let Some(sandbox) = pool.ready.pop_front() else {
            pool.misses += 1;
            return Err(if pool.forks_runs() {
                format!("the zygote of pool {} is starting", pool.name())
            } else {
                format!("pool {} is empty", pool.name())
            });
        };
        pool.hits += 1;
        Ok((p, Some(sandbox)))
    }

    /// Give pooled sandbox `sandbox` of pool `p` its run.
    fn hand_over(
        &mut self,
        p: usize,
        mut sandbox: Spawned,
        prepared: &Prepared,
        term: Option<&str>,
        stdio: &[OwnedFd; 3],
        files: Option<&OwnedFd>,
    ) -> Result<Spawned, EngineError> {
        let plan = prepared.plan();
        let fail = |sandbox: Spawned, e: EngineError| {
            sandbox.kill();
            let _ = sandbox.finish(SandboxStatus::default(), &mut Trace::new(Instant::now()));
            Err(e)
        };
        // The run's wall time starts now, not when the sandbox was made.
        sandbox.started = Instant::now();
        let no_cgroup = sandbox.cgroup.0.is_none();
        let pool_plan = &self.pools.pools[p].plan;
        if let Err(e) = run_limits(&sandbox.cgroup, pool_plan, plan) {
            return fail(sandbox, e);
        }
        let workspace_fd = match &prepared.workspace {
            None => None,
            Some(dir) => match idmapped_workspace(dir, sandbox.pid) {
                Ok(fd) => Some(fd),
                Err(message) => {
                    // The sandbox is untouched: back to the front of the queue.
                    let pool = &mut self.pools.pools[p];
                    pool.ready.push_front(sandbox);
                    pool.hits -= 1;
                    return Err(EngineError::Usage(message));
                }
            },
        };
        let spec = run_spec(
            prepared,
            term,
            no_cgroup,
            files.is_some(),
            workspace_fd.is_some(),
        );
        let mut fds: Vec<BorrowedFd<'_>> = stdio.iter().map(|f| f.as_fd()).collect();
        fds.extend(files.as_ref().map(|f| f.as_fd()));
        fds.extend(workspace_fd.as_ref().map(|f| f.as_fd()));
        // A large argv or environment travels in a memfd (the init reads it so).
        let run = ToInit::Run(Box::new(spec));
        if let Err(e) = channel::send_message(sandbox.chan.as_fd(), &run, &fds, true) {
            return fail(
                sandbox,
                EngineError::Setup(format!("cannot hand the run to the pooled sandbox: {e}")),
            );
        }
        Ok(sandbox)
    }

    /// Fork the run from pool `p`'s zygote (see fork.rs): a cgroup and a lock of its
    /// own, the spec in a memfd that only the child reads, then wait for the child's
    /// pidfd — the zygote, not the engine, is its parent.
    fn fork_run(
        &mut self,
        p: usize,
        prepared: &Prepared,
        term: Option<&str>,
        stdio: &[OwnedFd; 3],
        files: Option<&OwnedFd>,
    ) -> Result<Spawned, EngineError> {
        let started = Instant::now();
        let plan = prepared.plan();
        let pool = &mut self.pools.pools[p];
        let zygote = pool.zygote.as_ref().expect("take_pooled saw a zygote");
        // A slot made ahead (cgroup, run directory), else one made now.
        let slot = match pool.slots.pop() {
            Some(slot) => slot,
            None => RunSlot::make(&pool.plan)?,
        };
        let RunSlot {
            sandbox_id,
            run_dir,
            cgroup,
            joins,
            warnings,
        } = slot;
        run_limits(&cgroup, &pool.plan, plan)?;
        let workspace_fd = match &prepared.workspace {
            None => None,
            Some(dir) => Some(idmapped_workspace(dir, zygote.pid).map_err(EngineError::Usage)?),
        };
        let spec = run_spec(
            prepared,
            term,
            cgroup.0.is_none(),
            files.is_some(),
            workspace_fd.is_some(),
        );
        let spec = channel::memfd_with(
            "phantom-run",
            &serde_json::to_vec(&spec).expect("a spec serializes"),
        )?;
        let (ours, theirs) = fdpass::channel()?;
        let lock = run_dir
            .lock()
            .ok_or_else(|| EngineError::Setup("run directory without its lock".into()))?;
        let mut fds = vec![spec.as_fd(), theirs.as_fd(), lock];
        fds.extend(stdio.iter().map(|f| f.as_fd()));
        fds.extend(files.map(|f| f.as_fd()));
        fds.extend(workspace_fd.as_ref().map(|f| f.as_fd()));
        fds.extend(joins.iter().map(|f| f.as_fd()));
        channel::send(zygote.chan.as_fd(), &ToInit::Fork, &fds)
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        drop((spec, theirs, joins, workspace_fd));
        // The child's first message; a zygote that cannot fork says so on it.
        if !channel::readable(ours.as_fd(), FORK_WAIT) {
            return Err(EngineError::Setup(format!("no child within {FORK_WAIT:?}")));
        }
        let pidfd = match channel::recv::<FromInit>(
            ours.as_fd(),
            channel::FROM_INIT_MAX,
            1,
            "zygote's child",
        ) {
            Ok((FromInit::Forked, mut fds)) if fds.len() == 1 => fds.pop().expect("one"),
            Ok((FromInit::SetupFailed { message }, _)) => return Err(EngineError::Setup(message)),
            Ok((other, _)) => {
                return Err(EngineError::Setup(format!(
                    "unexpected message from the zygote's child: {}",
                    other.name()
                )))
            }
            Err(e) => return Err(EngineError::Setup(e.to_string())),
        };
        let pid = process::pidfd_pid(pidfd.as_fd()).unwrap_or(0);
        pool.forks += 1;
        pool.forked.push_back(started);
        Ok(Spawned {
            sandbox_id,
            pid,
            pidfd,
            chan: ours,
            run_dir,
            cgroup,
            host_uid: zygote.host_uid,
            idmapped: prepared.workspace.is_some(),
            isolated: true,
            started,
            warnings,
            proxy: None,
            forked: true,
        })
    }
}

/// Give a pooled sandbox's (or a run slot's) cgroup, made with `pool`'s limits, the
/// run's: written only when they differ (nine file writes saved on most runs).
fn run_limits(cgroup: &CgroupGuard, pool: &Plan, run: &Plan) -> Result<(), EngineError> {
    let limits = |p: &Plan| cgroup::Limits {
        memory_bytes: p.limits.memory_bytes,
        cpu_millis: p.limits.cpu_millis,
        pids: p.limits.pids,
    };
    let key = |l: &cgroup::Limits| (l.memory_bytes, l.cpu_millis, l.pids);
    let (had, wants) = (limits(pool), limits(run));
    match &cgroup.0 {
        Some(cg) if key(&had) != key(&wants) => cg
            .set_limits(wants)
            .map_err(|e| EngineError::Setup(format!("cannot set limits: {e}"))),
        _ => Ok(()),
    }
}

/// How long the engine waits for a zygote's child to say it exists.
const FORK_WAIT: Duration = Duration::from_secs(2);

/// The run's part of a pooled or forked payload (fds: stdin always, the files memfd
/// and the workspace when flagged).
fn run_spec(
    prepared: &Prepared,
    term: Option<&str>,
    no_cgroup: bool,
    files: bool,
    workspace: bool,
) -> RunSpec {
    let plan = prepared.plan();
    let command = &prepared.command;
    RunSpec {
        argv: command.argv.clone(),
        env: payload_env(&plan.env, term, &command.env),
        cwd: command.cwd.clone().unwrap_or_else(|| plan.cwd.clone()),
        rlimit_nproc: no_cgroup.then_some(plan.limits.pids),
        rlimit_data: no_cgroup.then_some(plan.limits.memory_bytes),
        stdin_fd: true,
        files_fd: files,
        workspace_fd: workspace,
    }
}

impl RunJob {
    pub(super) fn fds(&self) -> Vec<(BorrowedFd<'_>, Slot)> {
        let mut fds = vec![(self.spawned.pidfd.as_fd(), Slot::Exited)];
        if self.chan_open {
            fds.push((self.spawned.chan.as_fd(), Slot::Chan));
        }
        if self.client_open {
            fds.push((self.client.as_fd(), Slot::Client));
        }
        if let Some((door, _)) = &self.door {
            fds.push((door.as_fd(), Slot::Door));
        }
        fds
    }

    /// The pid of its sandbox's init when a zygote forked it.
    pub(super) fn forked_pid(&self) -> Option<i32> {
        self.spawned.forked.then_some(self.spawned.pid)
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        (!self.timed_out).then_some(self.deadline)
    }

    /// One of its fds is ready. Returns whether a pre-started interpreter just took
    /// the run (the pool counts it).
    pub(super) fn event(&mut self, slot: Slot) -> bool {
        match slot {
            Slot::Chan => {
                match channel::recv::<FromInit>(
                    self.spawned.chan.as_fd(),
                    channel::FROM_INIT_MAX,
                    1,
                    "sandbox",
                ) {
                    Err(_) => self.chan_open = false,
                    Ok((FromInit::Proxy, mut fds)) if fds.len() == 1 && self.proxy.is_some() => {
                        // The init's listening socket on 127.0.0.1 inside: watched here
                        // until a connection waits on it, then served from a helper.
                        let config = self.proxy.take().expect("checked");
                        self.door = Some((fds.pop().expect("one fd"), config));
                        self.limited = true;
                    }
                    Ok((message, _)) => {
                        let was = self.status.prewarmed;
                        if matches!(message, FromInit::WasmLoaded { .. }) {
                            // The module's own timeout (epoch interruption) starts now;
                            // the engine kills it a little after, should it be stuck in
                            // a host call.
                            self.deadline = Instant::now() + self.timeout + wasm_run::KILL_GRACE;
                        }
                        self.status.record(message);
                        self.reply_early();
                        return !was && self.status.prewarmed;
                    }
                }
            }
            Slot::Client => {
                match channel::recv_message::<Request>(self.client.as_fd(), 0, "client") {
                    Ok((Request::Signal { signal }, _)) => self.spawned.signal(signal),
                    Ok(_) => {}
                    // The client went away: nobody is waiting for this run.
                    Err(_) => {
                        self.client_open = false;
                        self.spawned.kill();
                    }
                }
            }
            Slot::Door => {
                // A first connection: the helper, in the host's network namespace, is
                // forked now (we are single-threaded) and accepts it from the backlog.
                if let Some((listener, config)) = self.door.take() {
                    match ProxyHelper::start(listener, config) {
                        Ok(helper) => self.spawned.proxy = Some(helper),
                        Err(e) => {
                            self.status.setup_error = Some(format!("egress proxy: {e}"));
                            self.spawned.kill();
                        }
                    }
                }
            }
            Slot::Exited | Slot::Report => {}
        }
        false
    }

    /// What its proxy decided so far; a limited run whose proxy never started: nothing.
    fn network(&self) -> Option<NetworkReport> {
        match &self.spawned.proxy {
            Some(helper) => Some(helper.decisions()),
            None => self.limited.then(phantom_egress::no_connections),
        }
    }

    pub(super) fn on_deadline(&mut self, now: Instant) {
        if !self.timed_out && now >= self.deadline {
            self.timed_out = true;
            self.spawned.kill();
        }
    }

    /// Answer as soon as the payload's status and usage are known.
    fn reply_early(&mut self) {
        if self.replied || self.timed_out || !self.client_open {
            return;
        }
        if let Some(failure) = self.status.failure() {
            self.replied = true;
            reply(&self.client, &Reply::Error(failure));
            return;
        }
        let (Some(exit), Some(usage)) = (self.status.payload, self.status.payload_usage) else {
            return;
        };
        let s = &self.spawned;
        let cg = s.cgroup.0.as_ref();
        let report = self.base.report(
            &self.status,
            self.status.timed_out,
            exit,
            usage,
            s.started.elapsed(),
            cg.is_some_and(|c| c.oom_killed()),
            cg.map_or("none", |c| c.version()),
            // The payload is gone (the init kills what it left before reporting), so
            // what its proxy logged is complete.
            self.network(),
        );
        self.replied = true;
        reply(&self.client, &Reply::Finished(Box::new(report)));
    }

    /// The sandbox's init exited: reap it, clean up, and answer if not yet done.
    /// Returns the pool it came from and what the pool counts.
    pub(super) fn finish(self) -> (Option<usize>, Option<RunOutcome>) {
        let RunJob {
            client,
            client_open,
            spawned,
            pool,
            timed_out,
            status,
            replied,
            base,
            limited,
            ..
        } = self;
        let counted = status.prewarmed;
        let answer = !replied && client_open;
        let finished = spawned.finish(status, &mut Trace::new(Instant::now()));
        let finished = finished.map(|mut o| {
            if limited && o.network.is_none() {
                o.network = Some(phantom_egress::no_connections());
            }
            o
        });
        match finished {
            Err(e) => {
                if answer {
                    reply(&client, &Reply::Error(e.to_failure()));
                }
                (pool, None)
            }
            Ok(o) => {
                if answer {
                    let message = match o.status.failure() {
                        Some(failure) => Reply::Error(failure),
                        None => {
                            let exit = if timed_out {
                                ExitStatus::Signaled(libc::SIGKILL)
                            } else {
                                o.status.payload.unwrap_or(o.init_status)
                            };
                            Reply::Finished(Box::new(base.report(
                                &o.status,
                                timed_out || o.status.timed_out,
                                exit,
                                o.usage,
                                o.wall,
                                o.oom_killed,
                                o.cgroup_version,
                                o.network.clone(),
                            )))
                        }
                    };
                    reply(&client, &message);
                }
                let prewarmed_late = !counted && o.status.prewarmed;
                (
                    pool,
                    Some(RunOutcome {
                        prewarmed_late,
                        network: o.network,
                    }),
                )
            }
        }
    }

    /// Kill the run and tell the client why (the engine is going away).
    pub(super) fn abort(mut self, why: &str) {
        self.spawned.kill();
        if !self.replied && self.client_open {
            reply(
                &self.client,
                &Reply::Error(Failure::new(FailureKind::Unavailable, why)),
            );
            self.replied = true;
        }
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(file: std::fs::File) -> OwnedFd {
        OwnedFd::from(file)
    }

    #[test]
    fn the_engine_refuses_a_directory_or_a_socket_as_a_payloads_stdio() {
        let (r, w) = process::pipe().unwrap();
        let (_r2, w2) = process::pipe().unwrap();
        // Pipes, /dev/null and (no stdin) pass.
        assert!(payload_stdio(Some(r), w, w2).is_ok());
        let out = || process::pipe().unwrap().1;
        assert!(payload_stdio(None, out(), out()).is_ok());
        // A host directory as stdin, a socket as stderr: refused, naming which.
        let dir = fd(std::fs::File::open("/").unwrap());
        let e = payload_stdio(Some(dir), out(), out())
            .unwrap_err()
            .to_string();
        assert!(e.contains("stdin is a directory"), "{e}");
        let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = payload_stdio(None, out(), OwnedFd::from(sock))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stderr is a socket"), "{e}");
        // A pseudo-terminal's slave passes (a terminal made for the process); another
        // device does not.
        let (_master, slave) = phantom_linux::terminal::open_pty(80, 24).unwrap();
        let dup = || slave.try_clone().unwrap();
        assert!(payload_stdio(Some(dup()), dup(), dup()).is_ok());
        let zero = fd(std::fs::File::open("/dev/zero").unwrap());
        let e = payload_stdio(Some(zero), out(), out())
            .unwrap_err()
            .to_string();
        assert!(e.contains("stdin is a character device"), "{e}");
    }
}
