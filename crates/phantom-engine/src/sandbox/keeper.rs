//! The keeper: the host-side process that owns one persistent sandbox.
//!
//! The engine forks it (detached: it outlives the engine) and answers `create` once
//! it reported Ready. It restores the workspace from a snapshot when asked, then
//! starts the sandbox's init, so it is the init's parent: when the keeper dies, the
//! init gets its parent-death signal and the kernel takes the whole sandbox down.
//! While it lives it
//! * waits for the init on its pidfd (an init that dies is recorded as dead, with why),
//! * hands the sandbox's namespaces to each `exec` that asks, and reads and discards
//!   the output of what commands left running, from the pipes the engine hands over
//!   (see `Gate`),
//! * retires the sandbox at its maximum lifetime, and when it was idle — no `exec`
//!   holding `exec.lock` — for the idle timeout, with nobody's CLI running,
//! * then removes the cgroup and the run directory (`Spawned::finish`).
//!
//! A retired sandbox keeps its record (status dead, with the reason) and its
//! workspace, so that files can still be copied out; `phantom destroy` removes both.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use phantom_api::access::Owner;
use phantom_api::choice::SandboxStatus;
use phantom_egress::ProxyHelper;
use phantom_linux::fdpass;
use phantom_linux::process::{self, ExitStatus};
use phantom_policy::Plan;
use phantom_state::State;
use phantom_store::{RestoreMode, SnapshotStore};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{flock, FlockOperation};

use super::now_s;
use crate::channel::{self, FromInit, Report};
use crate::image_run::ImageRun;
use crate::init::ChildPayload;
use crate::spawn::{spawn_on, SandboxStatus as Status, Trace};

/// Everything the keeper needs, prepared by `create` before the fork.
pub(crate) struct Keeper {
    pub id: String,
    pub plan: Plan,
    pub image: Option<ImageRun>,
    pub workspace: String,
    pub state_dir: std::path::PathBuf,
    pub lock_path: std::path::PathBuf,
    pub log_path: std::path::PathBuf,
    /// network limited: PHANTOM_TEST_RESOLVE as the engine read it.
    pub test_resolve: Vec<(String, std::net::SocketAddr)>,
    /// A snapshot to restore into the workspace before the sandbox starts (the
    /// engine checked that it exists).
    pub restore: Option<Restore>,
}

/// The owner's snapshot `tag`, in the store at `store` (resolved by the engine: the
/// keeper scrubs its environment, where PHANTOM_STATE_DIR was).
pub(crate) struct Restore {
    pub store: std::path::PathBuf,
    pub owner: Owner,
    pub tag: String,
}

/// The keeper's whole life, in the forked child. `report`: where `create` waits for
/// [`Report::Ready`] or [`Report::Failed`]. Never returns.
pub(crate) fn run(k: Keeper, report: OwnedFd) -> ! {
    process::set_name("phantom:keeper");
    // `ps` shows "phantom-keeper", not the `phantom create` command line we were
    // forked from (its arguments and environment were parsed and copied already).
    let _ = process::scrub_cmdline_and_environ("phantom-keeper");
    // Detached from the terminal and the CLI's session: Ctrl-C in the shell that ran
    // `phantom create` must not reach it.
    let _ = process::setsid();
    redirect_stdio(&k.log_path);
    // The engine's signal mask came with the fork: set ours. SIGTERM, SIGINT and
    // SIGHUP (a host shutting down, an operator's `kill`) retire the sandbox cleanly:
    // its processes killed, its cgroup and run directory removed, its record dead.
    let _ = process::reset_signals(&process::FORWARDED_SIGNALS);
    let stop = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    let stop_fd = process::block_signals(&stop).and_then(|()| process::signalfd(&stop));
    let fail = |msg: String| -> ! {
        let _ = channel::send(report.as_fd(), &Report::Failed { message: msg }, &[]);
        process::exit_now(1)
    };
    let state = match State::open(&k.state_dir) {
        Ok(s) => s,
        Err(e) => fail(e.to_string()),
    };
    let me = process::getpid();
    let my_start = process::start_time(me).unwrap_or(0);
    if let Err(e) = state.set_keeper(&k.id, (me, my_start)) {
        fail(e.to_string());
    }
    if let Some(Restore { store, owner, tag }) = &k.restore {
        // Reflink where the filesystem can (a copy-on-write clone), else a copy: never a
        // hard link, which the sandbox could write through into the store. Here in the
        // keeper, so that a large snapshot never holds the engine.
        let restored = SnapshotStore::open(store).and_then(|store| {
            store.restore(
                owner,
                tag,
                std::path::Path::new(&k.workspace),
                RestoreMode::Reflink,
            )
        });
        if let Err(e) = restored {
            fail(e.to_string());
        }
    }
    let mut trace = Trace::new(Instant::now());
    let mut warnings = Vec::new();
    let spawned = spawn_on(
        k.id.clone(),
        &k.plan,
        k.image.as_ref(),
        Some(&k.workspace),
        &mut trace,
        &mut warnings,
        |_, _| Ok(ChildPayload::Persistent),
    );
    let mut spawned = match spawned {
        Ok(s) => s,
        Err(e) => fail(e.to_string()),
    };
    // network limited: first the socket of the egress proxy, which the keeper serves
    // (from a helper: we are single-threaded) for as long as the sandbox lives; then
    // the init's namespaces, or why its setup failed.
    let receive =
        |chan| channel::recv::<FromInit>(chan, channel::FROM_INIT_MAX, fdpass::MAX_FDS, "sandbox");
    let mut first = receive(spawned.chan.as_fd());
    if k.plan.network == phantom_policy::NetworkMode::Limited {
        if let Ok((FromInit::Proxy, fds)) = &mut first {
            if fds.len() == 1 {
                let mut config = crate::prepare::proxy_config(&k.plan, &k.id, &k.test_resolve);
                // Each decision in the keeper's log, with the sandbox id: an exec's
                // report does not carry them.
                config.log_prefix = Some("phantom-keeper".into());
                match ProxyHelper::start(fds.pop().expect("one fd"), config) {
                    Ok(helper) => spawned.proxy = Some(helper),
                    Err(e) => {
                        spawned.kill();
                        let _ = spawned.finish(Status::default(), &mut trace);
                        fail(format!("egress proxy: {e}"));
                    }
                }
                first = receive(spawned.chan.as_fd());
            }
        }
    }
    let expected = process::NAMESPACE_FILES.len();
    let namespaces = match first {
        Ok((FromInit::Namespaces, fds)) if fds.len() == expected => fds,
        other => {
            spawned.kill();
            let _ = spawned.finish(Status::default(), &mut trace);
            fail(match other {
                Ok((FromInit::Namespaces, fds)) => format!(
                    "the sandbox sent {} namespace fds, expected {expected}",
                    fds.len()
                ),
                Ok((FromInit::SetupFailed { message }, _)) => {
                    format!("sandbox setup failed: {message}")
                }
                Ok((other, _)) => channel::ChannelError::UnexpectedMessage {
                    peer: "sandbox",
                    expected: "namespaces",
                    received: other.name(),
                }
                .to_string(),
                Err(e) => e.to_string(),
            })
        }
    };
    if let Some(cg) = spawned.cgroup.0.as_mut() {
        // CPU time and I/O for `phantom monitor` where v1 counts them apart.
        if let Err(e) =
            cg.add_accounting(phantom_linux::cgroup::Layout::cached(), &k.id, spawned.pid)
        {
            warnings.push(format!(
                "phantom monitor will not show CPU time or I/O: {e}"
            ));
        }
    }
    // `exec` asks here for the namespaces; in the run directory, whose path is short
    // (a unix socket path has at most 107 bytes) and private to this user.
    let socket = spawned.run_dir.path().join("keeper.sock");
    let listener = match fdpass::listen_seqpacket(&socket) {
        Ok(l) => l,
        Err(e) => {
            spawned.kill();
            let _ = spawned.finish(Status::default(), &mut trace);
            fail(e.to_string());
        }
    };
    let init = (spawned.pid, process::start_time(spawned.pid).unwrap_or(0));
    if let Err(e) = state.set_running(&k.id, init, (me, my_start), &socket) {
        spawned.kill();
        let _ = spawned.finish(Status::default(), &mut trace);
        fail(e.to_string());
    }
    let _ = channel::send(report.as_fd(), &Report::Ready { warnings }, &[]);
    drop(report);

    let mut gate = Gate {
        listener,
        namespaces,
        stop: stop_fd.ok(),
        conns: Vec::new(),
        drains: Vec::new(),
    };
    let (reason, _lock) = watch(&k, &state, &spawned.pidfd, &mut gate);
    drop(gate);
    if reason.is_some() {
        spawned.kill();
    }
    let outcome = spawned.finish(Status::default(), &mut trace);
    let reason = reason.unwrap_or_else(|| match outcome {
        Ok(o) => match o.init_status {
            ExitStatus::Signaled(s) => format!("its init was killed by signal {s}"),
            ExitStatus::Exited(c) => format!("its init exited with status {c}"),
        },
        Err(e) => format!("its init is gone ({e})"),
    });
    // A sandbox being destroyed keeps that status (set_status skips it): `destroy`
    // removes the record once we are gone.
    let _ = state.set_status(&k.id, SandboxStatus::Dead, Some(&reason));
    eprintln!("phantom: keeper: sandbox {} retired: {reason}", k.id);
    process::exit_now(0)
}

/// Wait until the init dies (None) or a limit fires (Some(why)); in that case the
/// exec lock is returned held, so that no command starts while the sandbox goes.
fn watch(
    k: &Keeper,
    state: &State,
    init: &OwnedFd,
    gate: &mut Gate,
) -> (Option<String>, Option<std::fs::File>) {
    loop {
        let record = match state.get_by_id(&k.id) {
            Ok(Some(r)) => r,
            // Record gone or unreadable: `destroy` is at work; it kills the init.
            _ => return (None, None),
        };
        if record.status == SandboxStatus::Destroying {
            // `destroy` kills the init; wait for that rather than racing it.
            wait_readable(init, Duration::from_secs(10));
            return (None, None);
        }
        let now = now_s();
        let end_of_life = record.created.saturating_add(record.max_lifetime_s);
        let idle_end = record.last_used.saturating_add(record.idle_timeout_s);
        if now >= end_of_life {
            // At the end of its life a sandbox goes even with a command running: the
            // command dies with it (it is in the sandbox's pid namespace).
            return (
                Some(format!(
                    "maximum lifetime of {} reached",
                    super::human_duration(record.max_lifetime_s)
                )),
                None,
            );
        }
        let mut next = end_of_life.min(idle_end);
        if now >= idle_end {
            match try_lock_exclusive(&k.lock_path) {
                Some(lock) => {
                    // Re-read under the lock: an exec may have just ended.
                    let fresh = state.get_by_id(&k.id).ok().flatten();
                    if fresh.is_some_and(|r| r.last_used.saturating_add(r.idle_timeout_s) > now) {
                        continue;
                    }
                    return (
                        Some(format!(
                            "idle for {} (idle timeout)",
                            super::human_duration(record.idle_timeout_s)
                        )),
                        Some(lock),
                    );
                }
                // A command is running: look again soon.
                None => next = now + 1,
            }
        }
        // Wake at the next deadline, and at least every 30 s to see `last_used`;
        // serve `exec` in between.
        let deadline = Instant::now() + Duration::from_secs(next.saturating_sub(now).clamp(1, 30));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match wait_either(init, gate, left) {
                Woke::Init => return (None, None),
                Woke::Gate(ready) => gate.serve(&ready),
                Woke::Stop(signal) => {
                    return (
                        Some(format!("stopped by {}", process::signal_name(signal))),
                        None,
                    )
                }
                Woke::Timeout => break,
            }
        }
    }
}

/// What `exec` needs from the keeper: the init's namespaces; and where the output of
/// what commands leave behind goes.
///
/// Each connection to the keeper's socket gets the namespaces at once. The engine
/// closes it when that was all it wanted; or, when an exec's command exited while
/// processes it left behind still hold its output pipes, it sends [`Report::Adopt`]
/// with the pipes' read ends. The keeper then reads and discards what those processes
/// write until they close the pipes (or the sandbox goes): a background job's output
/// goes nowhere, as to /dev/null, but it never blocks on a full pipe nor dies of
/// SIGPIPE because the client that ran its command is gone.
struct Gate {
    listener: OwnedFd,
    namespaces: Vec<OwnedFd>,
    /// The signals that retire the sandbox (None: no signalfd; they then kill the
    /// keeper, and the init follows by its parent-death signal).
    stop: Option<OwnedFd>,
    /// Connections that got the namespaces, until the engine closes them or sends
    /// [`Report::Adopt`].
    conns: Vec<OwnedFd>,
    /// Adopted read ends, until their writers are all gone.
    drains: Vec<Drain>,
}

/// An adopted pipe and how much was read from it in the current second. The keeper
/// is outside the sandbox's cgroup: a job that writes without pause must not make it
/// spend the host's CPU on its output. Past [`DRAIN_BYTES_PER_SECOND`] the pipe is
/// left alone until the second is over, and the job blocks on the full pipe instead.
struct Drain {
    pipe: OwnedFd,
    window: Instant,
    bytes: u64,
}

impl Drain {
    /// When it may be read again (None: now).
    fn throttled_until(&self, now: Instant) -> Option<Instant> {
        let end = self.window + Duration::from_secs(1);
        (self.bytes >= DRAIN_BYTES_PER_SECOND && now < end).then_some(end)
    }
}

/// What an adopted pipe is read at, at most.
const DRAIN_BYTES_PER_SECOND: u64 = 1 << 20;

/// At most this many connections wait for an adoption (the oldest goes first).
const MAX_CONNS: usize = 64;
/// At most this many adopted pipes are drained; past that a pipe is closed, and what
/// still writes into it gets SIGPIPE (EPIPE).
const MAX_DRAINS: usize = 256;

/// Which of the gate's fds a poll found ready.
struct GateReady {
    listener: bool,
    conns: Vec<bool>,
    drains: Vec<bool>,
}

impl Gate {
    /// Serve what is ready: hand the namespaces to a new connection, take what an
    /// engine sends, drain adopted pipes.
    fn serve(&mut self, ready: &GateReady) {
        // From the end, so that removals keep the other indices valid.
        let now = Instant::now();
        for i in (0..self.drains.len()).rev() {
            if ready.drains.get(i) != Some(&true) {
                continue;
            }
            let d = &mut self.drains[i];
            if now >= d.window + Duration::from_secs(1) {
                d.window = now;
                d.bytes = 0;
            }
            match drain(&d.pipe) {
                Some(n) => d.bytes += n,
                None => {
                    self.drains.swap_remove(i);
                }
            }
        }
        for i in (0..self.conns.len()).rev() {
            if ready.conns.get(i) != Some(&true) {
                continue;
            }
            let conn = self.conns.swap_remove(i);
            if let Ok((Report::Adopt, fds)) =
                channel::recv::<Report>(conn.as_fd(), 4096, fdpass::MAX_FDS, "engine")
            {
                for fd in fds {
                    // Only pipes: nothing else is read here.
                    let fifo = rustix::fs::fstat(&fd).is_ok_and(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Fifo
                    });
                    if fifo
                        && self.drains.len() < MAX_DRAINS
                        && rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::NONBLOCK).is_ok()
                    {
                        self.drains.push(Drain {
                            pipe: fd,
                            window: Instant::now(),
                            bytes: 0,
                        });
                    }
                }
            }
        }
        if ready.listener {
            self.accept();
        }
    }

    /// Hand the namespaces to one `exec` — only to a process of our own user (the
    /// socket is 0600 in a 0700 directory already; SO_PEERCRED says it again).
    fn accept(&mut self) {
        let Ok(Some(conn)) = fdpass::accept(self.listener.as_fd()) else {
            return;
        };
        if fdpass::peer_uid(conn.as_fd()).ok() != Some(process::euid()) {
            return;
        }
        let fds: Vec<_> = self.namespaces.iter().map(|f| f.as_fd()).collect();
        if channel::send(conn.as_fd(), &Report::Namespaces, &fds).is_ok() {
            if self.conns.len() >= MAX_CONNS {
                self.conns.remove(0);
            }
            self.conns.push(conn);
        }
    }
}

/// Read and discard what is in an adopted pipe (up to 256 KiB); the bytes read, or
/// None once no writer is left.
fn drain(pipe: &OwnedFd) -> Option<u64> {
    let mut buf = [0u8; 16384];
    let mut read = 0;
    for _ in 0..16 {
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => return None,
            Ok(n) => read += n as u64,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => break,
            Err(_) => return None,
        }
    }
    Some(read)
}

enum Woke {
    Init,
    Gate(GateReady),
    Stop(i32),
    Timeout,
}

/// Wait for the init to exit, an `exec` to connect, an adopted pipe to have output
/// or a signal to stop.
fn wait_either(init: &OwnedFd, gate: &Gate, timeout: Duration) -> Woke {
    // A throttled pipe is not polled; wake when its second is over.
    let now = Instant::now();
    let throttled: Vec<Option<Instant>> =
        gate.drains.iter().map(|d| d.throttled_until(now)).collect();
    let timeout = throttled
        .iter()
        .flatten()
        .map(|t| t.saturating_duration_since(now))
        .fold(timeout, Duration::min);
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    let mut fds = vec![
        PollFd::new(init, PollFlags::IN),
        PollFd::new(&gate.listener, PollFlags::IN),
    ];
    let stop_ix = gate.stop.as_ref().map(|stop| {
        fds.push(PollFd::new(stop, PollFlags::IN));
        fds.len() - 1
    });
    let conns = fds.len();
    fds.extend(gate.conns.iter().map(|c| PollFd::new(c, PollFlags::IN)));
    let drains = fds.len();
    fds.extend(gate.drains.iter().zip(&throttled).map(|(d, t)| {
        let events = if t.is_some() {
            PollFlags::empty()
        } else {
            PollFlags::IN
        };
        PollFd::new(&d.pipe, events)
    }));
    match poll(&mut fds, Some(&ts)) {
        Ok(n) if n > 0 => {
            let ready = |f: &PollFd<'_>| !f.revents().is_empty();
            if ready(&fds[0]) {
                return Woke::Init;
            }
            if stop_ix.is_some_and(|i| ready(&fds[i])) {
                if let Some(signal) = gate
                    .stop
                    .as_ref()
                    .and_then(|s| process::read_signalfd(s.as_fd()))
                {
                    return Woke::Stop(signal);
                }
            }
            Woke::Gate(GateReady {
                listener: ready(&fds[1]),
                conns: fds[conns..drains].iter().map(ready).collect(),
                drains: fds[drains..].iter().map(ready).collect(),
            })
        }
        _ => Woke::Timeout,
    }
}

/// Whether `fd` became readable (the init exited) within `timeout`.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
}

/// The exec lock, exclusively, if no command holds it.
fn try_lock_exclusive(path: &std::path::Path) -> Option<std::fs::File> {
    let file = std::fs::File::open(path).ok()?;
    flock(&file, FlockOperation::NonBlockingLockExclusive)
        .ok()
        .map(|_| file)
}

/// Stdin from /dev/null; stdout and stderr to the sandbox's keeper.log.
fn redirect_stdio(log: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let null = std::fs::File::open("/dev/null").ok();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log)
        .ok();
    if let Some(null) = &null {
        let _ = process::dup_onto(null.as_fd(), 0);
    }
    if let Some(log) = log.as_ref().or(null.as_ref()) {
        let _ = process::dup_onto(log.as_fd(), 1);
        let _ = process::dup_onto(log.as_fd(), 2);
    }
}
