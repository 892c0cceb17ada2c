//! The engine server: one single-threaded event loop that alone starts sandboxes —
//! cold runs, warm runs from its pools, persistent sandboxes' keepers, commands
//! joining them — and answers the engine protocol (`phantom_api::engine`) on a unix
//! socket. Front ends (the CLI, the MCP server, the HTTP API) are its clients
//! ([`crate::client`]); none of them forks a sandbox itself.
//!
//! `phantom-supervisor` runs [`serve`]: the engine on a socket, with warm pools. When
//! no supervisor runs, the CLI forks a private engine for its one request
//! ([`serve_private`]) before it has any thread.
//!
//! Each turn of the loop: start at most one sandbox for a pool below its target
//! (unless pressure pauses refills); poll the listener, the connections waiting for
//! their request, every job's fds (a sandbox's pidfd and channel, the client's
//! connection, a keeper's report) and the pools' sandboxes; act on what is ready —
//! pool events and jobs first, new requests last (taking a pooled sandbox moves the
//! pools' queues, which the turn's events index) —; enforce the deadlines.
//!
//! Nothing here blocks on a client: replies are sent without waiting, and a client
//! that cannot take one is treated as gone (its run is killed). Work that takes long
//! and does not fork — moving files, snapshots — happens in the client with a
//! workspace fd the engine hands out after checking who asks.

mod pool;
mod run;
mod sandboxes;
mod spares;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use phantom_api::engine::{EngineHello, Failure, FailureKind, Reply, Request};
use phantom_linux::{fdpass, process};
use phantom_state::State;
use rustix::event::{poll, PollFd, PollFlags};

pub use pool::{pools_for, PoolSpec, POOL_FLOOR};
pub use spares::SpareSpec;

pub use crate::pressure;

use crate::channel;
use crate::prepare::PlanCache;
use crate::pressure::{PressureSource, Thresholds};
use crate::EngineError;
use pool::{Pool, Pools};
use sandboxes::Scope;

/// What to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// The program the engine serves, as its log lines start: `phantom-supervisor`,
    /// `phantom-mcp`.
    pub name: &'static str,
    pub pools: Vec<PoolSpec>,
    /// Spare persistent sandboxes to keep for creates (`--persistent-pool`).
    pub spares: Vec<SpareSpec>,
    /// Pause refills above these PSI thresholds (`--psi-aware`).
    pub thresholds: Option<Thresholds>,
    pub socket: PathBuf,
    /// Compile every built-in profile's plan at start and keep it in the plan cache,
    /// so that a run of a built-in profile without limits of its own does not compile
    /// (`--profile-compilation aot`).
    pub precompile: bool,
}

/// Who the engine's log lines say they are from (set once by [`serve`]).
static LOG_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Whether the engine logs each request and each refusal (phantom-supervisor with
/// AISBX_DEBUG=1).
static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turn the debug log on or off; call before [`serve`] (or starting an engine process).
pub fn set_debug(on: bool) {
    DEBUG.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn debug(msg: impl std::fmt::Display) {
    if DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
        log(format_args!("debug: {msg}"));
    }
}

pub(super) fn log(msg: impl std::fmt::Display) {
    eprintln!(
        "{}: {msg}",
        LOG_NAME.get().copied().unwrap_or("phantom-supervisor")
    );
}

/// Make this process stop serving (as on SIGTERM) when `parent`, the process that
/// started it, exits — a front end that keeps a private engine. Call before
/// [`serve`], from the thread that started us (a front end must start the engine from
/// a thread that lives as long as it does). Fails when `parent` is already gone.
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

/// Serve on `config.socket` until SIGTERM/SIGINT/SIGHUP. `pressure` is read when
/// `config.thresholds` is set (the kernel's PSI, or a fake in tests). Refuses when
/// another engine answers on the socket already.
pub fn serve(config: Config, pressure: &mut dyn PressureSource) -> Result<(), EngineError> {
    // Everything is read synchronously: block the signals we handle before any child
    // exists (sandboxes block their own).
    let handled = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    let mut blocked = handled.to_vec();
    blocked.push(libc::SIGCHLD);
    process::block_signals(&blocked)?;
    let sigfd = process::signalfd(&handled)?;

    refuse_a_second_engine(&config.socket)?;
    let _ = LOG_NAME.set(config.name);
    let mut pools = Vec::new();
    for spec in &config.pools {
        pools.push(Pool::new(spec)?);
    }
    let mut engine = Engine::new(Pools::new(pools, config.thresholds), false)?;
    engine.spares = spares::Spares::new(&config.spares);
    // Spares of an engine that died without destroying them (their keepers live on).
    engine.destroy_orphan_spares();
    if config.precompile {
        let started = Instant::now();
        let compiled = engine.cache.prefill();
        log(format_args!(
            "--profile-compilation aot: compiled {compiled} plans of built-in profiles in {} ms",
            started.elapsed().as_millis()
        ));
    }
    if !engine.test_resolve.is_empty() {
        log(format_args!(
            "warning: {}",
            phantom_egress::test_resolve_warning(&engine.test_resolve)
        ));
    }
    prepare_socket_dir(&config.socket)?;
    let listener = fdpass::listen_seqpacket(&config.socket)?;
    let pools: Vec<String> = engine
        .pools
        .pools
        .iter()
        .map(|p| format!("{} x{}", p.name(), p.target))
        .collect();
    let spare_pools = engine.spares.describe();
    log(format_args!(
        "engine listening on {} ({}{})",
        config.socket.display(),
        if pools.is_empty() {
            "no warm pools: every run starts cold".into()
        } else {
            format!("pools: {}", pools.join(", "))
        },
        if spare_pools.is_empty() {
            String::new()
        } else {
            format!("; persistent pools: {}", spare_pools.join(", "))
        }
    ));
    let result = engine.run(Some(&listener), &sigfd, pressure);
    engine.shutdown();
    let _ = std::fs::remove_file(&config.socket);
    let _ = process::reset_signals(&[]);
    result
}

/// Refuse to serve where another engine answers already: taking over its socket would
/// leave it running with its pools, unreachable.
fn refuse_a_second_engine(socket: &Path) -> Result<(), EngineError> {
    match crate::client::running_engine(socket) {
        Some(pid) => Err(EngineError::Usage(format!(
            "an engine is already running, pid {pid}, on {}: stop it first or give this one another --socket",
            socket.display()
        ))),
        None => Ok(()),
    }
}

/// An engine this process forked for itself — before it started any thread — to
/// serve `config.socket` (the HTTP API's and the MCP server's engine). Stopped
/// (SIGTERM, then waited for) when dropped; it also stops when this process dies.
pub struct EngineProcess {
    pid: i32,
    pidfd: OwnedFd,
    socket: PathBuf,
}

impl EngineProcess {
    /// Fork the engine and wait (up to 30 s) until it answers on its socket. Call from
    /// the thread that lives as long as the process (its death signal is tied to it).
    pub fn start(config: Config) -> Result<EngineProcess, EngineError> {
        let socket = config.socket.clone();
        refuse_a_second_engine(&socket)?;
        let parent = std::process::id();
        let (pid, pidfd) = match process::clone_child(process::Namespaces::default(), None)? {
            process::Forked::Child => {
                process::set_name("phantom:engine");
                process::set_sigpipe_default(false);
                let _ = LOG_NAME.set(config.name);
                let code = match stop_with_parent(parent)
                    .and_then(|()| serve(config, &mut crate::pressure::ProcPressure))
                {
                    Ok(()) => 0,
                    Err(e) => {
                        log(format_args!("error: {e}"));
                        e.exit_code().max(1)
                    }
                };
                process::exit_now(code)
            }
            process::Forked::Parent { pid, pidfd } => (pid, pidfd),
        };
        let engine = EngineProcess { pid, pidfd, socket };
        let started = Instant::now();
        loop {
            // Ours, not one that started on the socket meanwhile (ours then refuses
            // and exits, below).
            if crate::client::running_engine(&engine.socket) == Some(engine.pid as u32) {
                return Ok(engine);
            }
            if channel::readable(engine.pidfd.as_fd(), Duration::from_millis(10)) {
                let status = process::wait4(engine.pid, false).ok().flatten();
                std::mem::forget(engine);
                return Err(EngineError::Setup(format!(
                    "the engine exited while starting ({:?}); its error is above",
                    status.map(|s| s.1)
                )));
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(EngineError::Setup(format!(
                    "the engine did not answer on {} within 30s",
                    engine.socket.display()
                )));
            }
        }
    }

    /// The engine's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A client of this engine.
    pub fn client(&self) -> crate::EngineClient {
        crate::EngineClient::at(self.socket.clone())
    }

    /// The engine's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = process::pidfd_kill(self.pidfd.as_fd(), libc::SIGTERM);
        let _ = process::wait4(self.pid, false);
    }
}

/// The socket's directory: created private to us (0755 for root's /run/phantom, so
/// that others can see the socket, which only root may connect to), and refused when
/// someone else owns it.
fn prepare_socket_dir(socket: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Some(dir) = socket.parent() else {
        return Ok(());
    };
    let mode = if process::euid() == 0 { 0o755 } else { 0o700 };
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir);
    let meta = std::fs::symlink_metadata(dir).map_err(|source| EngineError::Io {
        what: "inspect",
        path: dir.display().to_string(),
        source,
    })?;
    if !meta.is_dir() || meta.uid() != process::euid() || meta.mode() & 0o022 != 0 {
        return Err(EngineError::Unsupported {
            what: format!("socket directory {}", dir.display()),
            why: format!(
                "it is not a directory owned by uid {} that only it can write (owner uid {}, mode {:o})",
                process::euid(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
            hint: "remove it, or give --socket a path in a directory of your own".into(),
        });
    }
    Ok(())
}

/// Serve the one connection `conn` of the process that forked us (the CLI's private
/// engine), then exit. Never returns.
pub(crate) fn serve_private(conn: OwnedFd) -> ! {
    process::set_name("phantom:engine");
    // In a process group of our own: the terminal's Ctrl-C reaches the CLI, which
    // forwards it to the program; a sandbox is never signalled twice.
    let _ = rustix::process::setpgid(None, None);
    let handled = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    let mut blocked = process::FORWARDED_SIGNALS.to_vec();
    blocked.push(libc::SIGCHLD);
    let code = (|| -> Result<(), EngineError> {
        process::block_signals(&blocked)?;
        let sigfd = process::signalfd(&handled)?;
        let mut engine = Engine::new(Pools::new(Vec::new(), None), true)?;
        engine.conns.push(conn);
        let result = engine.run(None, &sigfd, &mut crate::pressure::ProcPressure);
        engine.shutdown();
        result
    })();
    match code {
        Ok(()) => process::exit_now(0),
        Err(e) => {
            eprintln!("phantom: engine: {e}");
            process::exit_now(1)
        }
    }
}

/// A request in flight.
enum Job {
    Run(Box<run::RunJob>),
    Exec(Box<sandboxes::ExecJob>),
    Create(sandboxes::CreateJob),
    Destroy(Box<sandboxes::DestroyJob>),
}

/// Which fd of a job a poll found ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A pidfd: the sandbox's init, or the command's process, exited.
    Exited,
    /// The sandbox's channel.
    Chan,
    /// The client's connection (a signal to forward, or the client went away).
    Client,
    /// A keeper's report or its pidfd.
    Report,
    /// The egress proxy's listening socket inside a run: its first connection waits.
    Door,
}

impl Job {
    fn fds(&self) -> Vec<(BorrowedFd<'_>, Slot)> {
        match self {
            Job::Run(j) => j.fds(),
            Job::Exec(j) => j.fds(),
            Job::Create(j) => j.fds(),
            Job::Destroy(j) => j.fds(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            Job::Run(j) => j.deadline(),
            Job::Exec(j) => j.deadline(),
            Job::Create(j) => Some(j.deadline),
            Job::Destroy(j) => j.deadline(),
        }
    }
}

/// What a ready pollfd stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Listener,
    Signal,
    Conn(usize),
    Starting(usize, usize),
    StartingExited(usize, usize),
    ReadyExited(usize, usize),
    /// A pool's ready zygote exited, or said why it stops.
    Zygote(usize),
    Job(usize, Slot),
}

/// The engine's state.
struct Engine {
    pools: Pools,
    /// Connections whose request has not come yet.
    conns: Vec<OwnedFd>,
    jobs: Vec<Job>,
    cache: PlanCache,
    /// state.db, opened on first use (persistent sandboxes).
    state: Option<State>,
    /// PHANTOM_TEST_RESOLVE, read once at start (limited sandboxes' proxies).
    test_resolve: Vec<(String, std::net::SocketAddr)>,
    /// A private engine: done once its connection is served.
    private: bool,
    spares: spares::Spares,
}

impl Engine {
    fn new(pools: Pools, private: bool) -> Result<Engine, EngineError> {
        let test_resolve = phantom_egress::test_resolve_from_env()
            .map_err(EngineError::Usage)?
            .unwrap_or_default();
        // What engines killed earlier left behind.
        if let Ok(base) = crate::workspace::state_base() {
            crate::workspace::collect_stale(&base, phantom_linux::cgroup::Layout::cached());
        }
        Ok(Engine {
            pools,
            conns: Vec::new(),
            jobs: Vec::new(),
            // config.yaml's profiles are read at the first run that names one.
            cache: PlanCache::default(),
            state: None,
            test_resolve,
            private,
            spares: spares::Spares::default(),
        })
    }

    /// state.db, opened once.
    fn state(&mut self) -> Result<&State, EngineError> {
        if self.state.is_none() {
            self.state = Some(State::open_default()?);
        }
        Ok(self.state.as_ref().expect("just opened"))
    }

    fn run(
        &mut self,
        listener: Option<&OwnedFd>,
        sigfd: &OwnedFd,
        pressure: &mut dyn PressureSource,
    ) -> Result<(), EngineError> {
        loop {
            if self.private && self.conns.is_empty() && self.jobs.is_empty() {
                return Ok(());
            }
            let wants_refill = self.pools.refill(pressure, self.jobs.len());
            self.refill_spares();
            let mut fds = vec![PollFd::new(sigfd, PollFlags::IN)];
            let mut events = vec![Event::Signal];
            if let Some(l) = listener {
                fds.push(PollFd::new(l, PollFlags::IN));
                events.push(Event::Listener);
            }
            for (i, c) in self.conns.iter().enumerate() {
                fds.push(PollFd::new(c, PollFlags::IN));
                events.push(Event::Conn(i));
            }
            for (p, pool) in self.pools.pools.iter().enumerate() {
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
                if let Some(z) = &pool.zygote {
                    fds.push(PollFd::new(&z.pidfd, PollFlags::IN));
                    events.push(Event::Zygote(p));
                    fds.push(PollFd::new(&z.chan, PollFlags::IN));
                    events.push(Event::Zygote(p));
                }
            }
            for (j, job) in self.jobs.iter().enumerate() {
                for (fd, slot) in job.fds() {
                    fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                    events.push(Event::Job(j, slot));
                }
            }
            // Wake for the nearest deadline, soon when a refill is due, else every
            // second (pressure is re-read then).
            let now = Instant::now();
            let mut wait = if wants_refill {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            };
            for d in self.jobs.iter().filter_map(Job::deadline) {
                wait = wait.min(d.saturating_duration_since(now));
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
                        "engine",
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
                    if !self.private {
                        log(format_args!("signal {sig}: stopping"));
                    }
                }
                return Ok(());
            }
            self.handle(&ready, listener);
            self.on_deadlines();
        }
    }

    /// Act on ready events. Indices refer to the state before this call, so removals
    /// are collected and applied afterwards, highest index first.
    fn handle(&mut self, ready: &[Event], listener: Option<&OwnedFd>) {
        let mut requests = Vec::new();
        let mut closed = Vec::new();
        let mut new_conns = Vec::new();
        let mut pool_events = Vec::new();
        let mut done = Vec::new();
        for event in ready {
            match *event {
                Event::Listener => {
                    if let Some(l) = listener {
                        if let Ok(Some(conn)) = fdpass::accept(l.as_fd()) {
                            match fdpass::peer_uid(conn.as_fd()) {
                                Ok(uid) if uid == process::euid() => new_conns.push(conn),
                                Ok(uid) => log(format_args!("refused a connection from uid {uid}")),
                                Err(e) => log(e),
                            }
                        }
                    }
                }
                Event::Conn(i) => {
                    closed.push(i);
                    let conn = &self.conns[i];
                    match channel::recv_message::<Request>(
                        conn.as_fd(),
                        fdpass::MAX_FDS - 1,
                        "client",
                    ) {
                        Ok((request, fds)) => {
                            if let Ok(conn) = conn.try_clone() {
                                requests.push((request, fds, conn));
                            }
                        }
                        Err(channel::ChannelError::Closed { .. }) => {}
                        Err(e) => {
                            let failure =
                                Failure::new(FailureKind::Invalid, format!("bad request: {e}"));
                            reply(conn, &Reply::Error(failure));
                        }
                    }
                }
                Event::Job(j, slot) => {
                    if self.job_event(j, slot) {
                        done.push(j);
                    }
                }
                e => pool_events.push(e),
            }
        }
        closed.sort_unstable();
        closed.dedup();
        for i in closed.into_iter().rev() {
            self.conns.remove(i);
        }
        self.conns.extend(new_conns);
        self.pool_events(&pool_events);
        done.sort_unstable();
        done.dedup();
        for j in done.into_iter().rev() {
            let job = self.jobs.remove(j);
            self.finish_job(job);
        }
        // Last: taking a sandbox (or dropping a stale pool) moves the pools' queues.
        for (request, fds, conn) in requests {
            self.dispatch(request, fds, conn);
        }
    }

    /// Events of the pools' sandboxes: a starting one is ready (or sent its proxy
    /// socket, or failed), a pooled one died.
    fn pool_events(&mut self, events: &[Event]) {
        use crate::channel::FromInit;
        let mut became_ready: Vec<(usize, usize)> = Vec::new();
        let mut failed: Vec<(usize, usize, String)> = Vec::new();
        let mut ready_died: Vec<(usize, usize)> = Vec::new();
        let mut zygote_died: Vec<usize> = Vec::new();
        for event in events {
            match *event {
                Event::Starting(p, i) => {
                    let received = channel::recv::<FromInit>(
                        self.pools.pools[p].starting[i].chan.as_fd(),
                        channel::FROM_INIT_MAX,
                        1,
                        "sandbox",
                    );
                    let pool = &mut self.pools.pools[p];
                    match received {
                        Ok((FromInit::Ready, _)) => became_ready.push((p, i)),
                        Ok((FromInit::Preloaded { modules }, _))
                            if pool.zygote_starting.as_deref()
                                == Some(pool.starting[i].sandbox_id.as_str()) =>
                        {
                            pool.preloaded = modules;
                        }
                        Ok((FromInit::Proxy, mut fds))
                            if fds.len() == 1
                                && pool.plan.network == phantom_policy::NetworkMode::Limited
                                && pool.starting[i].proxy.is_none() =>
                        {
                            // A limited sandbox's proxy lives as long as the sandbox:
                            // forked now (we are single-threaded), stopped with it.
                            let listener = fds.pop().expect("one fd");
                            let mut config = crate::prepare::proxy_config(
                                &pool.plan,
                                &pool.starting[i].sandbox_id,
                                &self.test_resolve,
                            );
                            // Each decision in the supervisor's log, with the sandbox id.
                            config.log_prefix = Some(
                                LOG_NAME
                                    .get()
                                    .copied()
                                    .unwrap_or("phantom-supervisor")
                                    .into(),
                            );
                            match phantom_egress::ProxyHelper::start(listener, config) {
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
                Event::StartingExited(p, i)
                    if !failed.iter().any(|(fp, fi, _)| (*fp, *fi) == (p, i))
                        && !became_ready.contains(&(p, i)) =>
                {
                    failed.push((p, i, "the sandbox exited while starting".into()));
                }
                Event::ReadyExited(p, i) => ready_died.push((p, i)),
                Event::Zygote(p) if !zygote_died.contains(&p) => zygote_died.push(p),
                _ => {}
            }
        }
        let mut moves: Vec<(usize, usize, Option<String>)> = became_ready
            .into_iter()
            .map(|(p, i)| (p, i, None))
            .chain(failed.into_iter().map(|(p, i, why)| (p, i, Some(why))))
            .collect();
        moves.sort_by_key(|m| std::cmp::Reverse((m.0, m.1)));
        moves.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
        for (p, i, why) in moves {
            let pool = &mut self.pools.pools[p];
            let sandbox = pool.starting.remove(i);
            if pool.zygote_starting.as_deref() == Some(sandbox.sandbox_id.as_str()) {
                pool.zygote_starting = None;
                match why {
                    None => {
                        log(format_args!(
                            "pool {}: zygote ready in {:.0} ms (preloaded: {})",
                            pool.name(),
                            sandbox.started.elapsed().as_secs_f64() * 1000.0,
                            if pool.preloaded.is_empty() {
                                "nothing".to_string()
                            } else {
                                pool.preloaded.join(", ")
                            }
                        ));
                        pool.failing = 0;
                        pool.zygote = Some(sandbox);
                    }
                    // A module that does not import never will: the pool goes back to
                    // pre-built sandboxes and says why in `phantom pool status`.
                    Some(why)
                        if ["preload:", "library:", "interpreter:"]
                            .iter()
                            .any(|p| why.starts_with(p)) =>
                    {
                        log(format_args!("pool {}: zygote failed: {why}; the pool keeps pre-built sandboxes instead", pool.name()));
                        pool.fork = Some(Err(why));
                        sandbox.kill();
                        let _ = sandbox.finish(
                            crate::spawn::SandboxStatus::default(),
                            &mut crate::spawn::Trace::new(Instant::now()),
                        );
                    }
                    Some(why) => {
                        log(format_args!(
                            "pool {}: zygote failed to start: {why}",
                            pool.name()
                        ));
                        pool.failed();
                        sandbox.kill();
                        let _ = sandbox.finish(
                            crate::spawn::SandboxStatus::default(),
                            &mut crate::spawn::Trace::new(Instant::now()),
                        );
                    }
                }
                continue;
            }
            match why {
                None => {
                    pool.demand.built(sandbox.started.elapsed());
                    pool.ready.push_back(sandbox);
                    pool.failing = 0;
                    pool.readied.push_back(Instant::now());
                }
                Some(why) => {
                    pool.failed();
                    log(format_args!(
                        "pool {}: a sandbox failed to start: {why}",
                        pool.name()
                    ));
                    sandbox.kill();
                    let _ = sandbox.finish(
                        crate::spawn::SandboxStatus::default(),
                        &mut crate::spawn::Trace::new(Instant::now()),
                    );
                }
            }
        }
        for p in zygote_died {
            let pool = &mut self.pools.pools[p];
            let Some(z) = pool.zygote.as_ref() else {
                continue;
            };
            // Whatever it said (a zygote speaks only to say why it stops), then gone.
            let said = match channel::recv::<FromInit>(
                z.chan.as_fd(),
                channel::FROM_INIT_MAX,
                0,
                "zygote",
            ) {
                Ok((FromInit::SetupFailed { message }, _)) => message,
                Ok((other, _)) => format!("unexpected message {}", other.name()),
                Err(e) => e.to_string(),
            };
            log(format_args!(
                "pool {}: its zygote stopped ({said}); it is restarted",
                pool.name()
            ));
            pool.zygote_failed();
        }
        ready_died.sort_unstable_by(|a, b| b.cmp(a));
        for (p, i) in ready_died {
            let pool = &mut self.pools.pools[p];
            if let Some(sandbox) = pool.ready.remove(i) {
                pool.failures += 1;
                log(format_args!("pool {}: a ready sandbox died", pool.name()));
                let _ = sandbox.finish(
                    crate::spawn::SandboxStatus::default(),
                    &mut crate::spawn::Trace::new(Instant::now()),
                );
            }
        }
    }

    /// A job's fd is ready; returns whether the job is done.
    fn job_event(&mut self, j: usize, slot: Slot) -> bool {
        match &mut self.jobs[j] {
            Job::Run(job) => {
                let prewarmed = job.event(slot);
                if prewarmed {
                    if let Some(p) = job.pool {
                        self.pools.pools[p].prewarmed_hits += 1;
                    }
                }
                slot == Slot::Exited
            }
            Job::Exec(job) => job.event(slot),
            Job::Create(_) => slot == Slot::Report,
            Job::Destroy(_) => slot == Slot::Report,
        }
    }

    /// A job's last event came: finish it (or, for a destroy, go on to its next
    /// sandbox).
    fn finish_job(&mut self, job: Job) {
        match job {
            Job::Run(job) => {
                let (pool, outcome) = job.finish();
                if let (Some(p), Some(outcome)) = (pool, outcome) {
                    let pool = &mut self.pools.pools[p];
                    if outcome.prewarmed_late {
                        pool.prewarmed_hits += 1;
                    }
                    if let Some(net) = outcome.network {
                        pool.proxy[0] += net.allowed;
                        pool.proxy[1] += net.refused;
                        pool.proxy[2] += net.failed;
                    }
                }
            }
            Job::Exec(job) => {
                let id = job.finish();
                if let Ok(state) = self.state() {
                    let _ = state.touch(&id, crate::sandbox::now_s());
                }
            }
            Job::Create(job) => self.finish_create(job),
            Job::Destroy(job) => self.continue_destroy(*job),
        }
    }

    /// Enforce the deadlines: runs and commands past theirs are killed; creates and
    /// destroys give up waiting.
    fn on_deadlines(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (j, job) in self.jobs.iter_mut().enumerate() {
            match job {
                Job::Run(r) => r.on_deadline(now),
                Job::Exec(e) => e.on_deadline(now),
                Job::Create(c) if now >= c.deadline => expired.push(j),
                Job::Destroy(d) if d.deadline().is_some_and(|t| now >= t) => expired.push(j),
                _ => {}
            }
        }
        for j in expired.into_iter().rev() {
            let job = self.jobs.remove(j);
            self.finish_job(job);
        }
    }

    /// A request came: start it as a job, or answer it now.
    fn dispatch(&mut self, request: Request, fds: Vec<OwnedFd>, conn: OwnedFd) {
        debug(format_args!("{} request", request.kind()));
        let expected = request.fd_names().len();
        if fds.len() != expected {
            let failure = Failure::new(
                FailureKind::Invalid,
                format!(
                    "a {} request comes with {expected} fds ({}), not {}",
                    request.kind(),
                    request.fd_names().join(", "),
                    fds.len()
                ),
            );
            reply(&conn, &Reply::Error(failure));
            return;
        }
        let answer = match request {
            Request::Run(call) => match self.start_run(*call, fds, &conn) {
                Ok(()) => return,
                Err(e) => Reply::Error(e.to_failure()),
            },
            Request::Exec(call) => match self.start_exec(*call, fds, &conn) {
                Ok(()) => return,
                Err(e) => Reply::Error(e.to_failure()),
            },
            Request::Create(call) => match self.start_create(*call, &conn) {
                Ok(()) => return,
                Err(e) => Reply::Error(e.to_failure()),
            },
            Request::Destroy { principal, name } => {
                match self.start_destroy(&principal, &name, &conn) {
                    Ok(()) => return,
                    Err(e) => Reply::Error(e.to_failure()),
                }
            }
            Request::DestroyAll {
                principal,
                every_owner,
            } => {
                let scope = Scope::new(&principal, every_owner);
                match scope.and_then(|scope| self.start_destroy_all(scope, &conn)) {
                    Ok(()) => return,
                    Err(e) => Reply::Error(e.to_failure()),
                }
            }
            Request::Workspace { principal, name } => match self.workspace(&principal, &name) {
                Ok(dir) => {
                    reply_with(&conn, &Reply::Workspace, &[dir.as_fd()]);
                    return;
                }
                Err(e) => Reply::Error(e.to_failure()),
            },
            Request::List {
                principal,
                every_owner,
            } => self.answer(|e| e.list(Scope::new(&principal, every_owner)?)),
            Request::Get { principal, name } => self.answer(|e| e.get(&principal, &name)),
            Request::Metrics { principal, name } => self.answer(|e| e.metrics(&principal, &name)),
            Request::ListProcesses { principal, name } => {
                self.answer(|e| e.list_processes(&principal, &name))
            }
            Request::KillProcess {
                principal,
                name,
                pid,
                signal,
            } => self.answer(|e| e.kill_process(&principal, &name, pid, signal)),
            Request::Detach {
                principal, name, ..
            } => self.answer(|e| e.detach(&principal, &name, fds)),
            Request::Pools => {
                let status = self.pools_status();
                Reply::Pools(Box::new(status))
            }
            Request::Census => self.answer(|e| e.census()),
            Request::Hello => Reply::Hello(EngineHello {
                pid: std::process::id(),
                state_dir: phantom_state::store_dir::state_dir()
                    .ok()
                    .flatten()
                    .map(|d| d.display().to_string()),
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
            Request::Signal { .. } => Reply::Error(Failure::new(
                FailureKind::Invalid,
                "a signal is sent during a run or an exec, on its connection",
            )),
        };
        if let Reply::Error(f) = &answer {
            debug(format_args!("refused: {}", f.for_cli().replace('\n', "; ")));
        }
        reply(&conn, &answer);
    }

    fn answer(&mut self, f: impl FnOnce(&mut Engine) -> Result<Reply, EngineError>) -> Reply {
        f(self).unwrap_or_else(|e| Reply::Error(e.to_failure()))
    }

    fn pools_status(&self) -> phantom_api::engine::PoolStatus {
        let runs_of = |p: usize| {
            self.jobs
                .iter()
                .filter(|j| matches!(j, Job::Run(r) if r.pool == Some(p)))
                .count()
        };
        let forked_of = |p: usize| {
            self.jobs
                .iter()
                .filter_map(|j| match j {
                    Job::Run(r) if r.pool == Some(p) => r.forked_pid(),
                    _ => None,
                })
                .collect()
        };
        self.pools.status(&runs_of, &forked_of, self.jobs.len())
    }

    /// Kill and reap every sandbox; tell waiting clients.
    fn shutdown(&mut self) {
        let mut starting_spares = Vec::new();
        for job in std::mem::take(&mut self.jobs) {
            match job {
                Job::Run(j) => j.abort("the engine is shutting down"),
                Job::Exec(j) => j.abort("the engine is shutting down"),
                // A keeper being started, or a destroy under way, finishes on its own
                // (the keeper is detached); the client hears that the engine went.
                Job::Create(j) => {
                    let Some(client) = &j.client else {
                        // A spare: it is destroyed below, once its keeper reported.
                        starting_spares.push(j);
                        continue;
                    };
                    reply(client, &Reply::Error(Failure::new(
                        FailureKind::Unavailable,
                        "the engine is shutting down; the sandbox may still come up (list shows it)",
                    )));
                }
                Job::Destroy(j) => {
                    reply(
                        &j.client,
                        &Reply::Error(Failure::new(
                            FailureKind::Unavailable,
                            "the engine is shutting down; destroy again to finish",
                        )),
                    );
                }
            }
        }
        for pool in &mut self.pools.pools {
            pool.drain();
        }
        self.destroy_spares(starting_spares);
    }
}

/// Send `reply` without waiting; false when the client cannot take it (gone, or not
/// reading).
fn reply(conn: &OwnedFd, reply: &Reply) -> bool {
    reply_with(conn, reply, &[])
}

fn reply_with(conn: &OwnedFd, reply: &Reply, fds: &[BorrowedFd<'_>]) -> bool {
    channel::send_message(conn.as_fd(), reply, fds, false).is_ok()
}
