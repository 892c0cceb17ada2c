//! The spawner: one single-threaded event loop that owns the warm pools, serves the
//! local socket, and alone calls clone3.
//!
//! Each loop turn: start at most one sandbox for a pool below its target (unless
//! pressure pauses refills), then poll the listener, the clients, every sandbox's
//! channel and pidfd, and the signalfd; then act on what is ready:
//!
//! * a new connection from our own uid becomes a client (others are closed);
//! * a client's `Run` takes a ready sandbox of the pool for its profile and image
//!   (each sandbox serves ONE request), sets the request's cgroup limits, and sends
//!   the init a `RUN` message with the payload and the client's stdio fds; the client
//!   gets `Started`, and `Finished` once the init is reaped. Runs are taken after the
//!   turn's other events, whose indices they would shift;
//! * a pool on an image serves a run only if the image, as the client's store resolves
//!   it, is what the pool's sandboxes were built on (root id and WorkingDir). If not,
//!   the image is read again from the supervisor's store: when it changed there
//!   (re-imported under the same name), the pool's sandboxes are stale — killed
//!   unused — and the pool refills on the new root; the run is refused either way and
//!   starts cold;
//! * a starting sandbox's `READY` moves it to its pool's ready queue;
//! * a sandbox that dies while pooled is counted as a failure and replaced;
//! * a run past its deadline is killed (the whole pid namespace);
//! * SIGTERM, SIGINT or SIGHUP stops serving: every sandbox is killed and reaped, the
//!   socket removed.
//!
//! If the supervisor itself is killed, every sandbox's init dies with it (parent-death
//! signal) and the next run collects their run directories and cgroups.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use phantom_egress::ProxyHelper;
use phantom_linux::cgroup;
use phantom_linux::fdpass;
use phantom_linux::mount;
use phantom_linux::process::{self, ExitStatus};
use phantom_policy::{NetworkMode, Overrides, Plan};
use rustix::event::{poll, PollFd, PollFlags};

use super::pressure::{PressureSource, Thresholds};
use super::protocol::{
    PoolInfo, PoolStatus, Reply, Request, WarmImage, WarmOutcome, WarmRun, MAX_MESSAGE,
};
use crate::channel::{self, FromInit, RunSpec, ToInit};
use crate::image_run::ImageRun;
use crate::init::{self, ChildPayload, PayloadBase};
use crate::spawn::{ms, payload_env, spawn_on, Outcome, SandboxStatus, Spawned, Trace};
use crate::EngineError;

/// What to serve.
#[derive(Debug, Clone)]
pub struct Config {
    pub pools: Vec<PoolSpec>,
    /// Pause refills above these PSI thresholds (`--psi-aware`).
    pub thresholds: Option<Thresholds>,
    pub socket: PathBuf,
}

/// One pool to keep: a built-in profile, on the host root or on an image of the store
/// (`--pool PROFILE[:IMAGE]`), and how many sandboxes it keeps ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub profile: String,
    pub image: Option<String>,
    pub size: usize,
}

impl PoolSpec {
    /// `PROFILE` or `PROFILE:IMAGE` (the first `:` ends the profile's name; an image's
    /// name may hold more, as in `default:python:3.12-slim`), of `size` sandboxes.
    pub fn parse(spec: &str, size: usize) -> Result<PoolSpec, EngineError> {
        let (profile, image) = match spec.split_once(':') {
            Some((profile, image)) => (profile, Some(image)),
            None => (spec, None),
        };
        if profile.is_empty() || image.is_some_and(str::is_empty) {
            return Err(EngineError::Usage(format!(
                "--pool {spec}: expected PROFILE or PROFILE:IMAGE, e.g. --pool default or --pool default:alpine"
            )));
        }
        Ok(PoolSpec {
            profile: profile.to_string(),
            image: image.map(str::to_string),
            size,
        })
    }
}

impl std::fmt::Display for PoolSpec {
    /// As `--pool` takes it and `phantom pool status` shows it: `default`,
    /// `default:alpine`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        pool_name(f, &self.profile, self.image.as_deref())
    }
}

fn pool_name(f: &mut impl std::fmt::Write, profile: &str, image: Option<&str>) -> std::fmt::Result {
    match image {
        Some(image) => write!(f, "{profile}:{image}"),
        None => f.write_str(profile),
    }
}

/// One pool: a profile's sandboxes on the host root, or on one image.
struct Pool {
    profile: String,
    /// The image its sandboxes are built on, as read from the store when the pool was
    /// made or last found stale; `None`: the host root.
    image: Option<ImageRun>,
    plan: Plan,
    base: PayloadBase,
    target: usize,
    ready: VecDeque<Spawned>,
    starting: Vec<Spawned>,
    hits: u64,
    prewarmed_hits: u64,
    /// network limited: connections its sandboxes' proxies made, refused and failed.
    proxy: [u64; 3],
    misses: u64,
    /// Sandboxes dropped unused because their image changed in the store.
    stale: u64,
    created: u64,
    failures: u64,
    /// Failures in a row: refills back off after a few.
    failing: u32,
    backoff_until: Option<Instant>,
    /// When sandboxes became ready (last minute), for the refill rate.
    readied: VecDeque<Instant>,
}

impl Pool {
    /// The pool `spec` asks for: its profile compiled (on its image, found in the
    /// store now, as `phantom run --image` compiles and finds it), no sandbox yet.
    fn new(spec: &PoolSpec) -> Result<Pool, EngineError> {
        let in_spec = |e: EngineError| match e {
            EngineError::Usage(m) => EngineError::Usage(format!("--pool {spec}: {m}")),
            e => e,
        };
        let overrides = Overrides {
            image: spec.image.clone(),
            ..Overrides::default()
        };
        let plan =
            phantom_policy::compile(&phantom_policy::load_builtin(&spec.profile)?, &overrides)
                .map_err(|e| in_spec(e.into()))?;
        if plan.mode == phantom_policy::Mode::Direct {
            return Err(EngineError::Usage(format!(
                "profile {}: direct mode has no sandbox to keep warm",
                spec.profile
            )));
        }

        let image = match plan.rootfs.image() {
            Some(name) => Some(ImageRun::for_pool(name).map_err(in_spec)?),
            None => None,
        };
        Ok(Pool::with_plan(&spec.profile, image, plan, spec.size))
    }

    /// An empty pool of `target` sandboxes built from `plan`.
    fn with_plan(profile: &str, image: Option<ImageRun>, plan: Plan, target: usize) -> Pool {
        let mut base = init::payload_base(&plan);
        // A pre-started interpreter is the host root's python3, started with the plan's
        // environment; on an image each run starts the image's own (not pre-started).
        base.prewarm_python &= image.is_none();
        Pool {
            profile: profile.to_string(),
            image,
            base,
            plan,
            target,
            ready: VecDeque::new(),
            starting: Vec::new(),
            hits: 0,
            prewarmed_hits: 0,
            proxy: [0; 3],
            misses: 0,
            stale: 0,
            created: 0,
            failures: 0,
            failing: 0,
            backoff_until: None,
            readied: VecDeque::new(),
        }
    }

    /// `profile` or `profile:image`, for logs and `phantom pool status`.
    fn name(&self) -> String {
        let mut name = String::new();
        let _ = pool_name(&mut name, &self.profile, self.image_name());
        name
    }

    fn image_name(&self) -> Option<&str> {
        self.image.as_ref().map(|i| i.name.as_str())
    }

    /// Kill and reap every sandbox that is not running a request.
    fn drain(&mut self) -> usize {
        let sandboxes: Vec<Spawned> = self
            .ready
            .drain(..)
            .chain(self.starting.drain(..))
            .collect();
        let n = sandboxes.len();
        for s in sandboxes {
            s.kill();
            let _ = s.finish(SandboxStatus::default(), &mut Trace::new(Instant::now()));
        }
        n
    }
}

/// A request being served.
struct Active {
    spawned: Spawned,
    /// Its pool (an index into `Supervisor::pools`, which never changes).
    pool: usize,
    client: OwnedFd,
    deadline: Instant,
    timed_out: bool,
    status: SandboxStatus,
    /// `Finished` already sent (as soon as the payload's status arrived; the init's
    /// exit and the cleanup come after, off the client's critical path).
    replied: bool,
}

/// What a ready pollfd stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Listener,
    Signal,
    Client(usize),
    Starting(usize, usize),
    StartingExited(usize, usize),
    ReadyExited(usize, usize),
    ActiveExited(usize),
    ActiveChan(usize),
    ActiveClient(usize),
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("phantom-supervisor: {msg}");
}

fn send_reply(conn: &OwnedFd, reply: &Reply) {
    let bytes = serde_json::to_vec(reply).expect("replies serialize");
    let _ = fdpass::send_bytes(conn, &bytes);
}

/// The supervisor's state.
struct Supervisor {
    pools: Vec<Pool>,
    clients: Vec<OwnedFd>,
    active: Vec<Active>,
    thresholds: Option<Thresholds>,
    pressure_sample: Option<super::pressure::Pressure>,
    sampled_at: Option<Instant>,
    paused: Option<String>,
    pauses: u64,
    /// PHANTOM_TEST_RESOLVE, read once at start (limited pools' proxies).
    test_resolve: Vec<(String, std::net::SocketAddr)>,
}

/// Make this process stop serving (as on SIGTERM) when `parent`, the process that
/// started it, exits — a front end that keeps a private supervisor (`phantom-mcp
/// --mode zygote`). Call before [`serve`]. The signal is asked for the thread that
/// started us: a front end must start the supervisor from a thread that lives as long
/// as it does (its main thread). Fails when `parent` is already gone.
pub fn stop_with_parent(parent: u32) -> Result<(), EngineError> {
    process::set_parent_death_signal(libc::SIGTERM)?;
    // The parent may have died before the request took effect: then we were
    // re-parented already and nobody would ever signal us.
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    if ppid != parent {
        return Err(EngineError::Setup(format!(
            "--parent-pid {parent}: that process is gone (our parent is now {ppid})"
        )));
    }
    Ok(())
}

/// Serve until SIGTERM/SIGINT/SIGHUP. `pressure` is read when `config.thresholds` is
/// set (the kernel's PSI, or a fake in tests).
pub fn serve(config: Config, pressure: &mut dyn PressureSource) -> Result<(), EngineError> {
    // Everything is read synchronously: block the signals we handle before any child
    // exists (sandboxes block their own).
    let handled = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    let mut blocked = handled.to_vec();
    blocked.push(libc::SIGCHLD);
    process::block_signals(&blocked)?;
    let sigfd = process::signalfd(&handled)?;

    let mut pools = Vec::new();
    for spec in &config.pools {
        pools.push(Pool::new(spec)?);
    }
    let test_resolve = phantom_egress::test_resolve_from_env()
        .map_err(EngineError::Usage)?
        .unwrap_or_default();
    if !test_resolve.is_empty() {
        log(format_args!(
            "warning: {}",
            phantom_egress::test_resolve_warning(&test_resolve)
        ));
    }
    if let Some(dir) = config.socket.parent() {
        use std::os::unix::fs::DirBuilderExt;
        let mode = if process::euid() == 0 { 0o755 } else { 0o700 };
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir);
    }
    let listener = fdpass::listen_seqpacket(&config.socket)?;
    log(format_args!(
        "listening on {} (pools: {})",
        config.socket.display(),
        pools
            .iter()
            .map(|p| format!("{} x{}", p.name(), p.target))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let mut sup = Supervisor {
        pools,
        clients: Vec::new(),
        active: Vec::new(),
        thresholds: config.thresholds,
        pressure_sample: None,
        sampled_at: None,
        paused: None,
        pauses: 0,
        test_resolve,
    };
    let result = sup.run(&listener, &sigfd, pressure);
    sup.shutdown();
    let _ = std::fs::remove_file(&config.socket);
    let _ = process::reset_signals(&[]);
    result
}

impl Supervisor {
    fn run(
        &mut self,
        listener: &OwnedFd,
        sigfd: &OwnedFd,
        pressure: &mut dyn PressureSource,
    ) -> Result<(), EngineError> {
        loop {
            let wants_refill = self.refill(pressure);
            let mut fds = vec![
                PollFd::new(listener, PollFlags::IN),
                PollFd::new(sigfd, PollFlags::IN),
            ];
            let mut events = vec![Event::Listener, Event::Signal];
            for (i, c) in self.clients.iter().enumerate() {
                fds.push(PollFd::new(c, PollFlags::IN));
                events.push(Event::Client(i));
            }
            for (p, pool) in self.pools.iter().enumerate() {
                for (i, s) in pool.starting.iter().enumerate() {
                    fds.push(PollFd::new(&s.chan, PollFlags::IN));
                    events.push(Event::Starting(p, i));
                    fds.push(PollFd::new(&s.pidfd, PollFlags::IN));
                    events.push(Event::StartingExited(p, i));
                }
                for (i, s) in pool.ready.iter().enumerate() {
                    fds.push(PollFd::new(&s.pidfd, PollFlags::IN));
                    events.push(Event::ReadyExited(p, i));
                }
            }
            for (i, a) in self.active.iter().enumerate() {
                fds.push(PollFd::new(&a.spawned.pidfd, PollFlags::IN));
                events.push(Event::ActiveExited(i));
                fds.push(PollFd::new(&a.spawned.chan, PollFlags::IN));
                events.push(Event::ActiveChan(i));
                fds.push(PollFd::new(&a.client, PollFlags::IN));
                events.push(Event::ActiveClient(i));
            }
            // Wake for the nearest deadline, soon when a refill is due, else every
            // second (pressure is re-read then).
            let now = Instant::now();
            let mut wait = if wants_refill {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            };
            for a in self.active.iter().filter(|a| !a.timed_out) {
                wait = wait.min(a.deadline.saturating_duration_since(now));
            }
            let ts = rustix::event::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: wait.subsec_nanos() as i64,
            };
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(EngineError::Sys(phantom_linux::SysError::new(
                        "poll",
                        "supervisor",
                        e.into(),
                    )))
                }
            }
            let ready: Vec<Event> = fds
                .iter()
                .zip(&events)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, e)| *e)
                .collect();
            drop(fds);
            if ready.contains(&Event::Signal) {
                if let Some(sig) = process::read_signalfd(sigfd.as_fd()) {
                    log(format_args!("signal {sig}: stopping"));
                }
                return Ok(());
            }
            self.handle(&ready, listener);
            self.enforce_deadlines();
        }
    }

    /// Act on ready events. Indices refer to the state before this call, so removals
    /// are collected and applied afterwards, highest index first.
    fn handle(&mut self, ready: &[Event], listener: &OwnedFd) {
        let mut closed_clients = Vec::new();
        let mut finished = Vec::new();
        let mut became_ready: Vec<(usize, usize)> = Vec::new();
        let mut failed: Vec<(usize, usize, String)> = Vec::new();
        let mut ready_died: Vec<(usize, usize)> = Vec::new();
        let mut new_clients = Vec::new();
        let mut runs = Vec::new();
        for event in ready {
            match *event {
                Event::Listener => {
                    if let Ok(Some(conn)) = fdpass::accept(listener.as_fd()) {
                        match fdpass::peer_uid(conn.as_fd()) {
                            Ok(uid) if uid == process::euid() => new_clients.push(conn),
                            Ok(uid) => log(format_args!("refused a connection from uid {uid}")),
                            Err(e) => log(e),
                        }
                    }
                }
                Event::Client(i) => {
                    let mut buf = vec![0u8; MAX_MESSAGE];
                    match fdpass::recv_fds(self.clients[i].as_fd(), &mut buf, 3) {
                        Ok((0, _)) | Err(_) => closed_clients.push(i),
                        Ok((n, fds)) => {
                            closed_clients.push(i);
                            let conn = self.clients[i].try_clone();
                            match (serde_json::from_slice::<Request>(&buf[..n]), conn) {
                                (Ok(Request::Run(run)), Ok(conn)) => runs.push((*run, fds, conn)),
                                (Ok(Request::Status), Ok(conn)) => {
                                    send_reply(&conn, &Reply::Status(self.status()))
                                }
                                (Ok(Request::Signal { .. }), _) => {}
                                (Err(e), Ok(conn)) => send_reply(
                                    &conn,
                                    &Reply::Error {
                                        message: format!("bad request: {e}"),
                                        usage: true,
                                    },
                                ),
                                (_, Err(_)) => {}
                            }
                        }
                    }
                }
                Event::Starting(p, i) => {
                    let received = channel::recv::<FromInit>(
                        self.pools[p].starting[i].chan.as_fd(),
                        channel::FROM_INIT_MAX,
                        1,
                        "sandbox",
                    );
                    match received {
                        Ok((FromInit::Ready, _)) => became_ready.push((p, i)),
                        Ok((FromInit::Proxy, mut fds))
                            if fds.len() == 1
                                && self.pools[p].plan.network == NetworkMode::Limited
                                && self.pools[p].starting[i].proxy.is_none() =>
                        {
                            // A limited sandbox's proxy lives as long as the sandbox:
                            // forked now (we are single-threaded), stopped with it.
                            let listener = fds.pop().expect("one fd");
                            let pool = &mut self.pools[p];
                            let mut config = crate::cold::proxy_config(
                                &pool.plan,
                                &pool.starting[i].sandbox_id,
                                &self.test_resolve,
                            );
                            // Each decision in the supervisor's log, with the sandbox id.
                            config.log_prefix = Some("phantom-supervisor".into());
                            match ProxyHelper::start(listener, config) {
                                Ok(helper) => pool.starting[i].proxy = Some(helper),
                                Err(e) => failed.push((p, i, format!("egress proxy: {e}"))),
                            }
                        }
                        Ok((FromInit::SetupFailed { message }, _)) => failed.push((p, i, message)),
                        Ok((other, _)) => failed.push((
                            p,
                            i,
                            channel::ChannelError::UnexpectedMessage {
                                peer: "sandbox",
                                expected: "ready or proxy",
                                received: other.name(),
                            }
                            .to_string(),
                        )),
                        Err(e) => failed.push((p, i, e.to_string())),
                    }
                }
                Event::StartingExited(p, i) => {
                    if !failed.iter().any(|(fp, fi, _)| (*fp, *fi) == (p, i))
                        && !became_ready.contains(&(p, i))
                    {
                        failed.push((p, i, "the sandbox exited while starting".into()));
                    }
                }
                Event::ReadyExited(p, i) => ready_died.push((p, i)),
                Event::ActiveExited(i) => finished.push(i),
                Event::ActiveChan(i) => {
                    let was = self.active[i].status.prewarmed;
                    let active = &mut self.active[i];
                    if active.status.receive(active.spawned.chan.as_fd()).is_ok() {
                        if !was && self.active[i].status.prewarmed {
                            self.pools[self.active[i].pool].prewarmed_hits += 1;
                        }
                        self.reply_early(i);
                    }
                }
                Event::ActiveClient(i) => {
                    let mut buf = [0u8; 4096];
                    match fdpass::recv_fds(self.active[i].client.as_fd(), &mut buf, 0) {
                        Ok((n, _)) if n > 0 => {
                            if let Ok(Request::Signal { signal }) =
                                serde_json::from_slice(&buf[..n])
                            {
                                self.active[i].spawned.signal(signal);
                            }
                        }
                        // The client went away: nobody is waiting for this run.
                        _ => self.active[i].spawned.kill(),
                    }
                }
                Event::Signal => {}
            }
        }
        // Apply removals, highest indices first so that earlier ones stay valid.
        closed_clients.sort_unstable();
        closed_clients.dedup();
        for i in closed_clients.into_iter().rev() {
            self.clients.remove(i);
        }
        self.clients.extend(new_clients);
        let mut moves: Vec<(usize, usize, Option<String>)> = became_ready
            .into_iter()
            .map(|(p, i)| (p, i, None))
            .chain(failed.into_iter().map(|(p, i, why)| (p, i, Some(why))))
            .collect();
        moves.sort_by_key(|m| std::cmp::Reverse((m.0, m.1)));
        moves.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
        for (p, i, why) in moves {
            let sandbox = self.pools[p].starting.remove(i);
            let pool = &mut self.pools[p];
            match why {
                None => {
                    pool.ready.push_back(sandbox);
                    pool.failing = 0;
                    pool.readied.push_back(Instant::now());
                }
                Some(why) => {
                    pool.failures += 1;
                    pool.failing += 1;
                    if pool.failing >= 3 {
                        pool.backoff_until = Some(Instant::now() + Duration::from_secs(1));
                    }
                    log(format_args!(
                        "pool {}: a sandbox failed to start: {why}",
                        pool.name()
                    ));
                    sandbox.kill();
                    let _ =
                        sandbox.finish(SandboxStatus::default(), &mut Trace::new(Instant::now()));
                }
            }
        }
        ready_died.sort_unstable_by(|a, b| b.cmp(a));
        for (p, i) in ready_died {
            if let Some(sandbox) = self.pools[p].ready.remove(i) {
                self.pools[p].failures += 1;
                log(format_args!(
                    "pool {}: a ready sandbox died",
                    self.pools[p].name()
                ));
                let _ = sandbox.finish(SandboxStatus::default(), &mut Trace::new(Instant::now()));
            }
        }
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            let active = self.active.remove(i);
            self.finish_run(active);
        }
        // Last: taking a sandbox (or dropping a stale pool) moves the pools' queues.
        for (run, fds, conn) in runs {
            self.start_run(run, fds, conn);
        }
    }

    /// Take a ready sandbox for `run` and hand it the payload.
    fn start_run(&mut self, run: WarmRun, mut fds: Vec<OwnedFd>, conn: OwnedFd) {
        let refuse = |conn: &OwnedFd, reason: String| send_reply(conn, &Reply::Refused { reason });
        let expected = 2 + usize::from(run.stdin_fd);
        if fds.len() != expected {
            return send_reply(
                &conn,
                &Reply::Error {
                    message: format!("{} fds attached, expected {expected}", fds.len()),
                    usage: true,
                },
            );
        }
        let image = run.image.as_ref().map(|i| i.name.as_str());
        let Some(p) = self
            .pools
            .iter()
            .position(|pool| pool.profile == run.profile && pool.image_name() == image)
        else {
            let serving: Vec<String> = self.pools.iter().map(Pool::name).collect();
            let on_image = image.map_or(String::new(), |i| format!(" on image `{i}`"));
            return refuse(
                &conn,
                format!(
                    "no pool for profile {}{on_image} (serving: {})",
                    run.profile,
                    serving.join(", ")
                ),
            );
        };
        if let Some(reason) = run
            .image
            .as_ref()
            .and_then(|want| self.check_image(p, want))
        {
            return refuse(&conn, reason);
        }
        if run.workspace.is_some() && process::euid() != 0 {
            return refuse(
                &conn,
                "a --workspace needs a supervisor running as root (idmapped mounts)".into(),
            );
        }
        let Some(mut sandbox) = self.pools[p].ready.pop_front() else {
            self.pools[p].misses += 1;
            return refuse(&conn, format!("pool {} is empty", self.pools[p].name()));
        };
        self.pools[p].hits += 1;
        // The run's wall time starts now, not when the sandbox was made.
        sandbox.started = Instant::now();
        let (base_env, default_cwd, profile) = {
            let pool = &self.pools[p];
            (pool.plan.env.clone(), pool.plan.cwd.clone(), pool.name())
        };

        let limits = cgroup::Limits {
            memory_bytes: run.memory_bytes,
            cpu_millis: run.cpu_millis,
            pids: run.pids,
        };
        let no_cgroup = sandbox.cgroup.0.is_none();
        if let Some(cg) = &sandbox.cgroup.0 {
            if let Err(e) = cg.set_limits(limits) {
                log(format_args!("pool {profile}: cannot set limits: {e}"));
                sandbox.kill();
                let _ = sandbox.finish(SandboxStatus::default(), &mut Trace::new(Instant::now()));
                return send_reply(
                    &conn,
                    &Reply::Error {
                        message: format!("cannot set limits: {e}"),
                        usage: false,
                    },
                );
            }
        }
        let workspace_fd = match &run.workspace {
            None => None,
            Some(dir) => match idmapped_workspace(dir, sandbox.pid) {
                Ok(fd) => Some(fd),
                Err(message) => {
                    // The sandbox is untouched: back to the front of the queue.
                    self.pools[p].ready.push_front(sandbox);
                    self.pools[p].hits -= 1;
                    return send_reply(
                        &conn,
                        &Reply::Error {
                            message,
                            usage: true,
                        },
                    );
                }
            },
        };
        let env = payload_env(&base_env, run.term.as_deref(), &run.env);
        let spec = RunSpec {
            argv: run.argv.clone(),
            env,
            cwd: run.cwd.clone().unwrap_or(default_cwd),
            rlimit_nproc: no_cgroup.then_some(run.pids),
            rlimit_data: no_cgroup.then_some(run.memory_bytes),
            stdin_fd: run.stdin_fd,
            files_fd: false,
            workspace_fd: workspace_fd.is_some(),
        };
        fds.extend(workspace_fd);
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = channel::send(
            sandbox.chan.as_fd(),
            &ToInit::Run(Box::new(spec)),
            &borrowed,
        ) {
            log(format_args!("pool {profile}: cannot hand over a run: {e}"));
            sandbox.kill();
            let _ = sandbox.finish(SandboxStatus::default(), &mut Trace::new(Instant::now()));
            return send_reply(
                &conn,
                &Reply::Error {
                    message: e.to_string(),
                    usage: false,
                },
            );
        }
        // The init has its copies now; ours must go so that the client sees EOF.
        drop(borrowed);
        drop(fds);
        send_reply(
            &conn,
            &Reply::Started {
                sandbox_id: sandbox.sandbox_id.clone(),
            },
        );
        self.active.push(Active {
            deadline: sandbox.started + Duration::from_millis(run.wall_timeout_ms),
            spawned: sandbox,
            pool: p,
            client: conn,
            timed_out: false,
            status: SandboxStatus::default(),
            replied: false,
        });
    }

    /// Whether image pool `p` can serve a run that wants `want`: `None` if its
    /// sandboxes were built on exactly that, else why not. On a mismatch the image is
    /// read again from the store; when it changed there since the pool read it
    /// (re-imported under the same name), the pool's unused sandboxes are stale: they
    /// are dropped and the pool refills on the image as it is now.
    fn check_image(&mut self, p: usize, want: &WarmImage) -> Option<String> {
        let pool = &mut self.pools[p];
        let had = pool.image.as_ref()?.warm_image();
        if had == *want {
            return None;
        }
        let name = pool.name();
        let now = match ImageRun::for_pool(&want.name) {
            Ok(now) => now,
            Err(e) => {
                return Some(format!(
                    "pool {name}: cannot read image `{}` again from the store: {e}",
                    want.name
                ))
            }
        };
        let current = now.warm_image();
        if current == had {
            // The supervisor's store still has what the pool holds: the client's
            // store (another PHANTOM_STATE_DIR) has something else under that name.
            return Some(format!(
                "image `{}` here is {}, but pool {name} holds {} (the supervisor's image store has that)",
                want.name,
                describe(want),
                describe(&had)
            ));
        }
        let dropped = pool.drain();
        pool.stale += dropped as u64;
        pool.failing = 0;
        pool.backoff_until = None;
        pool.image = Some(now);
        log(format_args!(
            "pool {name}: image `{}` changed in the store ({} -> {}): {dropped} stale sandboxes dropped, refilling",
            want.name,
            describe(&had),
            describe(&current)
        ));
        Some(format!(
            "pool {name} was built on an earlier import of image `{}` ({}, now {}); its sandboxes were dropped and it refills",
            want.name,
            describe(&had),
            describe(&current)
        ))
    }

    /// Answer the client as soon as the payload's status and usage are known.
    fn reply_early(&mut self, i: usize) {
        let seccomp_programs = self.seccomp_programs(self.active[i].pool);
        let a = &mut self.active[i];
        if a.replied || a.timed_out {
            return;
        }
        let (Some(exit), Some(usage)) = (a.status.payload, a.status.payload_usage) else {
            return;
        };
        // A request refused inside the sandbox (e.g. --cwd) is an error, not an exit.
        let error = match (&a.status.usage_error, &a.status.setup_error) {
            (Some(message), _) => Some(Reply::Error {
                message: message.clone(),
                usage: true,
            }),
            (None, Some(message)) => Some(Reply::Error {
                message: message.clone(),
                usage: false,
            }),
            (None, None) => None,
        };
        if let Some(reply) = error {
            send_reply(&a.client, &reply);
            a.replied = true;
            return;
        }
        let s = &a.spawned;
        let outcome = WarmOutcome {
            warnings: s.warnings.clone(),
            sandbox_id: s.sandbox_id.clone(),
            prewarmed: a.status.prewarmed,
            exit_code: exit.code(),
            signal: match exit {
                ExitStatus::Signaled(sig) => Some(sig),
                ExitStatus::Exited(_) => None,
            },
            timed_out: false,
            oom_killed: s.cgroup.0.as_ref().is_some_and(|c| c.oom_killed()),
            wall_ms: ms(s.started.elapsed()),
            user_ms: ms(usage.user),
            sys_ms: ms(usage.sys),
            max_rss_kb: usage.max_rss_kb,
            isolation: phantom_api::IsolationReport {
                cgroup: s
                    .cgroup
                    .0
                    .as_ref()
                    .map_or("none", |c| c.version())
                    .to_string(),
                landlock_abi: a.status.landlock_abi,
                seccomp_programs,
                host_uid: s.host_uid,
                idmapped_workspace: s.idmapped,
            },
            // The payload is gone (the init kills what it left before reporting),
            // so what its proxy logged is complete.
            network: s.proxy.as_ref().map(ProxyHelper::decisions),
        };
        send_reply(&a.client, &Reply::Finished(outcome));
        a.replied = true;
    }

    fn seccomp_programs(&self, pool: usize) -> usize {
        self.pools[pool].plan.seccomp.len()
    }

    fn finish_run(&mut self, active: Active) {
        let Active {
            spawned,
            client,
            timed_out,
            status,
            pool,
            replied,
            ..
        } = active;
        let (sandbox_id, host_uid, idmapped) = (
            spawned.sandbox_id.clone(),
            spawned.host_uid,
            spawned.idmapped,
        );
        let spawned_warnings = spawned.warnings.clone();
        let seccomp_programs = self.seccomp_programs(pool);
        let counted = status.prewarmed;
        let outcome = spawned.finish(status, &mut Trace::new(Instant::now()));
        // PREWARMED may still have been queued when the init exited (the channel is
        // read one message per turn): `finish` read it, count it now.
        if !counted && outcome.as_ref().is_ok_and(|o| o.status.prewarmed) {
            self.pools[pool].prewarmed_hits += 1;
        }
        if let Some(net) = outcome.as_ref().ok().and_then(|o| o.network.as_ref()) {
            let counts = &mut self.pools[pool].proxy;
            counts[0] += net.allowed;
            counts[1] += net.refused;
            counts[2] += net.failed;
        }
        if replied {
            return;
        }
        let reply = match outcome {
            Err(e) => Reply::Error {
                message: e.to_string(),
                usage: false,
            },
            Ok(Outcome {
                status,
                init_status,
                usage,
                wall,
                oom_killed,
                cgroup_version,
                network,
            }) => {
                if let Some(message) = status.usage_error {
                    Reply::Error {
                        message,
                        usage: true,
                    }
                } else if let Some(message) = status.setup_error {
                    Reply::Error {
                        message,
                        usage: false,
                    }
                } else {
                    let exit = if timed_out {
                        ExitStatus::Signaled(libc::SIGKILL)
                    } else {
                        status.payload.unwrap_or(init_status)
                    };
                    Reply::Finished(WarmOutcome {
                        warnings: spawned_warnings,
                        sandbox_id,
                        prewarmed: status.prewarmed,
                        exit_code: exit.code(),
                        signal: exit.signal(),
                        timed_out,
                        oom_killed,
                        wall_ms: ms(wall),
                        user_ms: ms(usage.user),
                        sys_ms: ms(usage.sys),
                        max_rss_kb: usage.max_rss_kb,
                        isolation: phantom_api::IsolationReport {
                            cgroup: cgroup_version.to_string(),
                            landlock_abi: status.landlock_abi,
                            seccomp_programs,
                            host_uid,
                            idmapped_workspace: idmapped,
                        },
                        network,
                    })
                }
            }
        };
        send_reply(&client, &reply);
    }

    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        for a in self
            .active
            .iter_mut()
            .filter(|a| !a.timed_out && now >= a.deadline)
        {
            a.timed_out = true;
            a.spawned.kill();
        }
    }

    /// Start one sandbox for the emptiest pool below its target, unless pressure
    /// pauses refills. Returns whether more refills are due right away.
    fn refill(&mut self, pressure: &mut dyn PressureSource) -> bool {
        let now = Instant::now();
        for pool in &mut self.pools {
            while pool
                .readied
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
            {
                pool.readied.pop_front();
            }
        }
        // While runs are active, refill only pools that are running low: a refill costs
        // a clone3 and a sandbox's setup, which compete with the runs for the CPU.
        let busy = !self.active.is_empty();
        let needs = |p: &Pool| {
            let have = p.ready.len() + p.starting.len();
            have < p.target
                && (!busy || have * 2 < p.target)
                && p.backoff_until.is_none_or(|t| now >= t)
        };
        let due = self
            .pools
            .iter()
            .enumerate()
            .filter(|(_, p)| needs(p))
            .min_by_key(|(_, p)| p.ready.len() + p.starting.len())
            .map(|(i, _)| i);
        let Some(p) = due else { return false };
        if let Some(thresholds) = self.thresholds {
            if self
                .sampled_at
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(500))
            {
                self.pressure_sample = pressure.sample();
                self.sampled_at = Some(now);
            }
            let why = self.pressure_sample.and_then(|s| thresholds.exceeded(s));
            match (&self.paused, why) {
                (None, Some(why)) => {
                    log(format_args!("refill paused: {why}"));
                    self.pauses += 1;
                    self.paused = Some(why);
                    return false;
                }
                (Some(_), Some(why)) => {
                    self.paused = Some(why);
                    return false;
                }
                (Some(_), None) => {
                    log("refill resumed: pressure back under the thresholds");
                    self.paused = None;
                }
                (None, None) => {}
            }
        }
        let pool = &mut self.pools[p];
        let mut warnings = Vec::new();
        let base = pool.base.clone();
        pool.created += 1;
        // On an image: its root, mounted as for a cold `phantom run --image`.
        match spawn_on(
            phantom_state::ids::new_sandbox_id(),
            &pool.plan,
            pool.image.as_ref(),
            None,
            &mut Trace::new(now),
            &mut warnings,
            |_, _| Ok(ChildPayload::Pooled(base)),
        ) {
            Ok(mut s) => {
                s.warnings = warnings.clone();
                pool.starting.push(s);
            }
            Err(e) => {
                pool.failures += 1;
                pool.failing += 1;
                if pool.failing >= 3 {
                    pool.backoff_until = Some(now + Duration::from_secs(1));
                }
                log(format_args!(
                    "pool {}: cannot start a sandbox: {e}",
                    pool.name()
                ));
            }
        }
        for w in warnings {
            log(format_args!("pool {}: {w}", pool.name()));
        }
        let busy = !self.active.is_empty();
        self.pools.iter().any(|p| {
            let have = p.ready.len() + p.starting.len();
            have < p.target
                && (!busy || have * 2 < p.target)
                && p.backoff_until.is_none_or(|t| now >= t)
        })
    }

    fn status(&self) -> PoolStatus {
        PoolStatus {
            pid: std::process::id(),
            pools: self
                .pools
                .iter()
                .enumerate()
                .map(|(i, p)| PoolInfo {
                    profile: p.profile.clone(),
                    image: p.image.as_ref().map(|i| i.name.clone()),
                    image_root_id: p.image.as_ref().map(|i| i.root_id.clone()),
                    target: p.target,
                    ready: p.ready.len(),
                    starting: p.starting.len(),
                    active: self.active.iter().filter(|a| a.pool == i).count(),
                    hits: p.hits,
                    prewarmed_hits: p.prewarmed_hits,
                    proxy_allowed: p.proxy[0],
                    proxy_refused: p.proxy[1],
                    proxy_failed: p.proxy[2],
                    misses: p.misses,
                    stale: p.stale,
                    created: p.created,
                    failures: p.failures,
                    refill_per_second: p.readied.len() as f64 / 60.0,
                    pss_kb_per_ready: memory_per_ready(&p.ready).0,
                    ksm_merging_pages: memory_per_ready(&p.ready).1,
                })
                .collect(),
            cpu_pressure: self.pressure_sample.map(|s| s.cpu),
            memory_pressure: self.pressure_sample.map(|s| s.memory),
            refill_paused: self.paused.clone(),
            refill_pauses: self.pauses,
        }
    }

    /// Kill and reap every sandbox; tell waiting clients.
    fn shutdown(&mut self) {
        for a in self.active.drain(..) {
            a.spawned.kill();
            send_reply(
                &a.client,
                &Reply::Error {
                    message: "the supervisor is shutting down".into(),
                    usage: false,
                },
            );
            let _ = a.spawned.finish(a.status, &mut Trace::new(Instant::now()));
        }
        for pool in &mut self.pools {
            pool.drain();
        }
    }
}

/// Average PSS (KiB) of the ready sandboxes — each one's init and its descendants —
/// and the pages KSM merges among them.
fn memory_per_ready(ready: &VecDeque<Spawned>) -> (Option<u64>, u64) {
    let field = |pid: i32, file: &str, key: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let (mut pss, mut merged) = (0u64, 0u64);
    for s in ready {
        for pid in std::iter::once(s.pid).chain(process::descendants(s.pid)) {
            pss += field(pid, "smaps_rollup", "Pss:");
            merged += field(pid, "ksm_stat", "ksm_merging_pages");
        }
    }
    (
        (!ready.is_empty()).then(|| pss / ready.len() as u64),
        merged,
    )
}

/// An idmapped copy of the caller's directory `dir` for the sandbox whose init is
/// `pid` (files its root writes belong on disk to the supervisor's uid, root).
fn idmapped_workspace(dir: &str, pid: i32) -> Result<OwnedFd, String> {
    let path = std::path::Path::new(dir);
    if !path.is_absolute() || !path.is_dir() {
        return Err(format!(
            "--workspace {dir}: not an existing absolute directory"
        ));
    }
    let userns = mount::open_userns(pid).map_err(|e| e.to_string())?;
    let tree = mount::clone_tree(path).map_err(|e| e.to_string())?;
    mount::set_idmap(tree.as_fd(), userns.as_fd())
        .map_err(|e| format!("--workspace {dir}: cannot make an idmapped mount ({e})"))?;
    Ok(tree)
}

/// A pooled image as messages show it: its root id, short, and its WorkingDir.
fn describe(image: &WarmImage) -> String {
    let hex = image
        .root_id
        .strip_prefix("sha256:")
        .unwrap_or(&image.root_id);
    let mut out = format!("root {}", &hex[..hex.len().min(12)]);
    if let Some(dir) = &image.working_dir {
        out.push_str(&format!(", WorkingDir {dir}"));
    }
    out
}

/// The pools for `phantom-supervisor --profiles A,B --pool PROFILE[:IMAGE]...
/// --zygote-pools N`: one per listed profile on the host root, one per `--pool`
/// (each once, in order of profile then image). A profile's own
/// `performance.pool_size` wins over `default_size`. Neither given: every built-in
/// profile with `performance.zygote: true`, on the host root. Images are not looked
/// up here (the supervisor does, when it starts).
pub fn pools_for(
    profiles: &[String],
    pools: &[String],
    default_size: usize,
) -> Result<Vec<PoolSpec>, EngineError> {
    let mut specs: Vec<PoolSpec> = profiles
        .iter()
        .map(|p| PoolSpec {
            profile: p.clone(),
            image: None,
            size: default_size,
        })
        .collect();
    for spec in pools {
        specs.push(PoolSpec::parse(spec, default_size)?);
    }
    if specs.is_empty() {
        for name in phantom_policy::builtin_names() {
            if phantom_policy::load_builtin(name)?.performance.zygote {
                specs.push(PoolSpec {
                    profile: name.to_string(),
                    image: None,
                    size: default_size,
                });
            }
        }
    }
    let mut out: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
    for spec in specs {
        let profile = phantom_policy::load_builtin(&spec.profile)?;
        let size = profile
            .performance
            .pool_size
            .map_or(spec.size, |n| n as usize);
        out.insert((spec.profile, spec.image), size);
    }
    Ok(out
        .into_iter()
        .map(|((profile, image), size)| PoolSpec {
            profile,
            image,
            size,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warm::pressure::{FakePressure, Pressure};

    /// A pool whose sandboxes can never start (a required bind source is missing), so
    /// that refill attempts are observable without starting processes.
    fn broken_pool() -> Pool {
        let profile = phantom_policy::load_builtin("minimal").unwrap();
        let mut plan = phantom_policy::compile(&profile, &Overrides::default()).unwrap();
        plan.mounts.push(phantom_policy::Mount::Bind {
            source: "/nonexistent/phantom-refill-test".into(),
            target: "/x".into(),
            read_only: true,
            optional: false,
        });
        Pool::with_plan("minimal", None, plan, 1)
    }

    fn supervisor(thresholds: Option<Thresholds>) -> Supervisor {
        Supervisor {
            pools: vec![broken_pool()],
            clients: Vec::new(),
            active: Vec::new(),
            thresholds,
            pressure_sample: None,
            sampled_at: None,
            paused: None,
            pauses: 0,
            test_resolve: Vec::new(),
        }
    }

    #[test]
    fn refill_pauses_under_pressure_and_resumes_when_it_drops() {
        let high = Pressure {
            cpu: 5.0,
            memory: 50.0,
        };
        let low = Pressure {
            cpu: 5.0,
            memory: 1.0,
        };
        let mut fake = FakePressure {
            samples: vec![high, high, low],
        };
        let mut sup = supervisor(Some(Thresholds {
            cpu: 80.0,
            memory: 40.0,
        }));

        assert!(!sup.refill(&mut fake));
        assert_eq!(sup.paused.as_deref(), Some("memory pressure 50.0% > 40.0%"));
        assert_eq!((sup.pauses, sup.pools[0].created), (1, 0));

        sup.sampled_at = None; // the next turn samples again
        assert!(!sup.refill(&mut fake));
        assert_eq!(
            (sup.pauses, sup.pools[0].created),
            (1, 0),
            "one pause, counted once"
        );
        assert!(sup.status().refill_paused.is_some());

        sup.sampled_at = None;
        sup.refill(&mut fake);
        assert_eq!(sup.paused, None);
        // Refilling resumed: a sandbox was attempted (and failed on the missing bind).
        assert_eq!((sup.pools[0].created, sup.pools[0].failures), (1, 1));
        let status = sup.status();
        assert_eq!((status.refill_paused, status.refill_pauses), (None, 1));
        assert_eq!(status.memory_pressure, Some(1.0));
    }

    #[test]
    fn without_psi_awareness_pressure_is_not_read() {
        let mut fake = FakePressure {
            samples: vec![Pressure {
                cpu: 99.0,
                memory: 99.0,
            }],
        };
        let mut sup = supervisor(None);
        sup.refill(&mut fake);
        assert_eq!(sup.paused, None);
        assert_eq!(sup.pools[0].created, 1);
        assert_eq!(sup.status().memory_pressure, None);
    }

    #[test]
    fn repeated_failures_back_off() {
        let mut fake = FakePressure { samples: vec![] };
        let mut sup = supervisor(None);
        for _ in 0..3 {
            sup.refill(&mut fake);
        }
        assert_eq!(sup.pools[0].failures, 3);
        assert!(sup.pools[0].backoff_until.is_some());
        // Backing off: no attempt right away.
        assert!(!sup.refill(&mut fake));
        assert_eq!(sup.pools[0].created, 3);
    }

    #[test]
    fn pools_are_profiles_on_the_host_root_or_on_an_image() {
        let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pools = pools_for(
            &strings(&["default"]),
            &strings(&["default:alpine", "default", "minimal:python:3.12-slim"]),
            3,
        )
        .unwrap();
        let shown: Vec<String> = pools.iter().map(|p| format!("{p} x{}", p.size)).collect();
        // Sorted, each once; the first `:` ends the profile, the image keeps the rest.
        assert_eq!(
            shown,
            [
                "default x3",
                "default:alpine x3",
                "minimal:python:3.12-slim x3"
            ]
        );
        assert_eq!(pools[2].image.as_deref(), Some("python:3.12-slim"));

        for bad in [":alpine", "default:", ""] {
            let e = pools_for(&[], &strings(&[bad]), 1).unwrap_err();
            assert!(e.to_string().contains("PROFILE:IMAGE"), "{bad:?}: {e}");
        }
        assert!(pools_for(&[], &strings(&["nope:alpine"]), 1).is_err());
        // Neither flag: the built-in profiles that ask for a pool, on the host root.
        let defaults = pools_for(&[], &[], 2).unwrap();
        assert!(!defaults.is_empty());
        assert!(defaults.iter().all(|p| p.image.is_none()));
    }
}
