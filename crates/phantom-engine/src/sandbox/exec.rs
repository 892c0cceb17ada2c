//! A command in a persistent sandbox: how the engine joins it.
//!
//! The engine (single-threaded) forks a helper that
//! 1. joins the sandbox's cgroup (while it still sees the host's cgroup tree),
//! 2. becomes non-dumpable (nothing in the sandbox may ptrace it or read its
//!    /proc/PID while it holds host fds),
//! 3. joins every namespace of the sandbox's init (the fds its keeper handed out) and
//!    takes uid/gid 0 of the sandbox's user namespace,
//! 4. forks the payload with CLONE_PARENT: a process cannot move itself into a pid
//!    namespace, its children are born there; CLONE_PARENT makes the payload a child
//!    of the engine, which waits for it like a cold run's init,
//! 5. reports the payload's pid and exits.
//!
//! A background command (`exec --background`) goes one step further: the process
//! forked in step 4 forks the payload once more and exits at once, reporting the
//! payload's pid inside the sandbox; the payload, an orphan of the sandbox's pid
//! namespace, is the init's to reap, runs with /dev/null as stdio and does not die with
//! the front end.
//!
//! An exec ends when its command's process exits, not when every holder of its output
//! pipes closes them: the client reads what is left for a moment, then hands the pipes
//! to the sandbox's keeper ([`adopt_output`]), which discards what the command's
//! background jobs write on. A timeout or a signal from the client reaches the
//! command's process group and every descendant it still has ([`Joined::kill`]).
//!
//! The payload then does what a cold payload does (init.rs `payload`): setsid,
//! rlimits, no_new_privs, Landlock, dropped capabilities, closed fds, seccomp last,
//! execve — so an exec is fenced exactly like the sandbox's first command would be.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use phantom_api::choice::SandboxStatus;
use phantom_linux::cgroup::SandboxCgroup;
use phantom_linux::fdpass;
use phantom_linux::process::{self, Forked, Namespaces};
use phantom_state::Record;

use crate::channel::{self, Report};
use crate::init::ChildPayload;
use crate::EngineError;

/// What [`join`] started: a command the engine watches, or one in the background
/// (its pid inside the sandbox), which the sandbox's init reaps.
pub(crate) enum Joining {
    Watched(Joined),
    Background(i32),
}

/// The command started in the sandbox, as the engine watches it.
pub(crate) struct Joined {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The payload's end of the sandbox channel (its Landlock ABI, a refused request).
    pub chan: OwnedFd,
}

impl Joined {
    /// Send `signal` to everything the command started: its process group (it leads
    /// its own session; before it got there, the group does not exist yet and the
    /// process itself is signalled) and every descendant it still has, the ones that
    /// left the group (`setsid`, a daemon's double fork under a living parent) too.
    /// What it started and already left behind (re-parented to the sandbox's init) is
    /// not reached: `phantom ps` lists it and `phantom kill` ends it.
    pub(crate) fn signal(&self, signal: i32) {
        let descendants = process::descendants(self.pid);
        for pid in &descendants {
            let _ = process::kill(*pid, signal);
        }
        if process::kill(-self.pid, signal).is_err() {
            let _ = process::pidfd_kill(self.pidfd.as_fd(), signal);
        }
    }

    /// Kill everything the command started (see [`Joined::signal`]). The group is
    /// stopped first, so that it cannot fork while its descendants are listed; the
    /// descendants are listed while the command lives (once it is gone they belong to
    /// the init and cannot be told apart).
    pub(crate) fn kill(&self) {
        let _ = process::kill(-self.pid, libc::SIGSTOP);
        for _ in 0..3 {
            let descendants = process::descendants(self.pid);
            if descendants.is_empty() {
                break;
            }
            for pid in descendants {
                let _ = process::kill(pid, libc::SIGKILL);
            }
        }
        let _ = process::kill(-self.pid, libc::SIGKILL);
        let _ = process::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
    }
}

/// Hand the read ends of an exec's output pipes to the sandbox's keeper, which drains
/// them for the processes the command left behind (see keeper.rs's `Gate`).
pub(crate) fn adopt_output(record: &Record, pipes: Vec<OwnedFd>) -> Result<(), EngineError> {
    let conn = fdpass::connect_seqpacket(&record.socket)?;
    let _ = rustix::net::sockopt::set_socket_timeout(
        &conn,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(5)),
    );
    // The keeper first hands out the namespaces, as to every connection.
    let (_namespaces, _) = channel::recv::<Report>(conn.as_fd(), 4096, fdpass::MAX_FDS, "keeper")
        .map_err(|e| {
        EngineError::Setup(format!("sandbox `{}`: its keeper: {e}", record.name))
    })?;
    let fds: Vec<_> = pipes.iter().map(|p| p.as_fd()).collect();
    channel::send(conn.as_fd(), &Report::Adopt, &fds)
        .map_err(|e| EngineError::Setup(format!("sandbox `{}`: its keeper: {e}", record.name)))
}

/// Refuse a sandbox that cannot take commands, with what to do instead.
pub(crate) fn check_usable(record: &Record) -> Result<(), EngineError> {
    let name = &record.name;
    match record.effective_status() {
        (SandboxStatus::Running, _) => Ok(()),
        (SandboxStatus::Dead, reason) => Err(EngineError::Usage(format!(
            "sandbox `{name}` is dead ({}); destroying it cleans up (its workspace can be copied out first, e.g. `phantom cp {name}:/workspace/. DIR`)",
            reason.unwrap_or_else(|| "its init is gone".into())
        ))),
        (SandboxStatus::Starting, _) => Err(EngineError::Usage(format!(
            "sandbox `{name}` is still starting; try again in a moment"
        ))),
        (SandboxStatus::Destroying | SandboxStatus::Destroyed, _) => Err(EngineError::Usage(
            format!("sandbox `{name}` is being destroyed"),
        )),
    }
}

/// A pidfd for the sandbox's init, proven to be the recorded process.
pub(crate) fn open_init(record: &Record) -> Result<OwnedFd, EngineError> {
    let dead = || {
        let mut r = record.clone();
        r.init_start = u64::MAX; // forces "dead" in the message below
        check_usable(&r).unwrap_err()
    };
    let pidfd = process::pidfd_open(record.init_pid).map_err(|_| dead())?;
    // The pidfd pins the process: if the start time matches now, it is the init.
    if process::start_time(record.init_pid) != Some(record.init_start) {
        return Err(dead());
    }
    Ok(pidfd)
}

/// The sandbox's namespaces, from its keeper's socket.
pub(crate) fn namespaces_from_keeper(record: &Record) -> Result<Vec<OwnedFd>, EngineError> {
    let gone = |e: &dyn std::fmt::Display| {
        EngineError::Setup(format!(
            "sandbox `{}`: its keeper does not answer ({e}); destroying it cleans up",
            record.name
        ))
    };
    let conn = fdpass::connect_seqpacket(&record.socket).map_err(|e| gone(&e))?;
    // The keeper answers at once; one that hangs must not hold the engine.
    let _ = rustix::net::sockopt::set_socket_timeout(
        &conn,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(5)),
    );
    match channel::recv::<Report>(conn.as_fd(), 4096, fdpass::MAX_FDS, "keeper") {
        Ok((Report::Namespaces, fds)) if fds.len() == process::NAMESPACE_FILES.len() => Ok(fds),
        Ok((other, fds)) => Err(gone(&format_args!(
            "it sent {} with {} fds instead of the sandbox's namespaces",
            other.name(),
            fds.len()
        ))),
        Err(e) => Err(gone(&e)),
    }
}

/// Fork the helper that joins the sandbox (see the module docs) and return the
/// payload it started, a child of ours — unless `background`: then that child forks
/// the payload once more inside the sandbox and exits, so that the payload is
/// re-parented to the sandbox's init, which reaps it; nothing of ours waits for it, and
/// it does not die with the front end. Its pid inside the sandbox is returned.
pub(crate) fn join(
    namespaces: Vec<OwnedFd>,
    cgroup: Option<&SandboxCgroup>,
    payload: ChildPayload,
    background: bool,
) -> Result<Joining, EngineError> {
    let ChildPayload::Ready(ctx) = payload else {
        unreachable!("exec always has its payload");
    };
    // Two channels: the payload reports on `chan` (Landlock ABI, a bad --cwd) as soon as
    // it runs, possibly before the helper's own report; the helper reports on
    // `report`, which the payload closes.
    let (chan_parent, chan_child) = fdpass::channel()?;
    let (report_parent, report_child) = fdpass::channel()?;
    // Tests only: hold the helper's report back, so that the payload reports first.
    let report_delay = std::env::var("PHANTOM_TEST_EXEC_REPORT_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    let (helper, helper_fd) = match process::clone_child(Namespaces::default(), None)? {
        Forked::Child => {
            let mut keep: Vec<RawFd> = vec![chan_child.as_raw_fd(), report_child.as_raw_fd()];
            keep.extend(namespaces.iter().map(|f| f.as_raw_fd()));
            keep.extend(
                ctx.stdin
                    .iter()
                    .chain([&ctx.stdout, &ctx.stderr])
                    .map(|f| f.as_raw_fd()),
            );
            let fail = |msg: String| -> ! {
                let _ = channel::send(report_child.as_fd(), &Report::Failed { message: msg }, &[]);
                process::exit_now(1)
            };
            if let Err(e) = process::close_all_except(&keep) {
                fail(e.to_string());
            }
            process::set_name("phantom:exec");
            if let Some(cg) = cgroup {
                if let Err(e) = cg.join_self() {
                    fail(e.to_string());
                }
            }
            if let Err(e) = process::set_non_dumpable() {
                fail(e.to_string());
            }
            if let Err(e) = process::join_namespaces(&namespaces) {
                fail(format!("cannot join the sandbox: {e}"));
            }
            if let Err(e) = phantom_linux::userns::become_root() {
                fail(e.to_string());
            }
            // The namespace fds must not reach the payload.
            drop(namespaces);
            match process::fork_sibling(Namespaces::default()) {
                Ok(None) if background => {
                    // In the sandbox's pid namespace now: fork the payload once more and
                    // go, so that it is re-parented to the sandbox's init; its pid here
                    // is its pid inside the sandbox. (The helper could not fork it
                    // itself: it is not in the sandbox's /proc, which clone3's check
                    // for threads reads.)
                    match process::clone_child(Namespaces::default(), None) {
                        Ok(Forked::Child) => {
                            drop(report_child);
                            crate::init::payload(&ctx, &chan_child)
                        }
                        Ok(Forked::Parent { pid, .. }) => {
                            let report = Report::Background { pid };
                            let _ = channel::send(report_child.as_fd(), &report, &[]);
                            process::exit_now(0)
                        }
                        Err(e) if e.source.raw_os_error() == Some(libc::EAGAIN) => {
                            fail(PIDS_FULL.to_string())
                        }
                        Err(e) => fail(e.to_string()),
                    }
                }
                Ok(None) => {
                    // The payload: dies with the front end, like a cold run's sandbox.
                    let _ = process::set_parent_death_signal_kill();
                    drop(report_child);
                    crate::init::payload(&ctx, &chan_child)
                }
                Ok(Some(pid)) => {
                    if let Some(delay) = report_delay {
                        std::thread::sleep(delay);
                    }
                    let _ = channel::send(report_child.as_fd(), &Report::Child { pid }, &[]);
                    process::exit_now(0)
                }
                // The sandbox's pids cgroup is full: the caller's to resolve, not a
                // failure of the host.
                Err(e) if e.source.raw_os_error() == Some(libc::EAGAIN) => {
                    fail(PIDS_FULL.to_string())
                }
                Err(e) => fail(e.to_string()),
            }
        }
        Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop((chan_child, report_child, ctx, namespaces, helper_fd));
    // The helper's report: the payload's pid, or why it failed.
    let report = channel::recv::<Report>(report_parent.as_fd(), 4096, 0, "exec helper");
    let _ = process::wait4(helper, false);
    if background {
        return background_report(report, report_parent.as_fd()).map(Joining::Background);
    }
    match report {
        Ok((Report::Child { pid }, _)) => {
            // Our child (CLONE_PARENT): its pid cannot be reused before we reap it.
            let pidfd = process::pidfd_open(pid)?;
            Ok(Joining::Watched(Joined {
                pid,
                pidfd,
                chan: chan_parent,
            }))
        }
        Ok((Report::Failed { message }, _)) => Err(helper_failed(message)),
        Ok((other, _)) => Err(EngineError::Setup(
            channel::ChannelError::UnexpectedMessage {
                peer: "exec helper",
                expected: "child or failed",
                received: other.name(),
            }
            .to_string(),
        )),
        Err(channel::ChannelError::Closed { .. }) => Err(EngineError::Setup(
            "the helper joining the sandbox died".into(),
        )),
        Err(e) => Err(EngineError::Setup(e.to_string())),
    }
}

/// A background command's start: the helper reports the intermediate process (our
/// child, reaped here), which reports the payload's pid inside the sandbox.
/// What the helper reports when the sandbox's pids limit refuses the command's
/// process (clone3 EAGAIN).
const PIDS_FULL: &str = "the sandbox is at its pids limit: no new process fits";

/// The helper's failure: a full pids limit is the caller's to resolve (409), anything
/// else a setup failure.
fn helper_failed(message: String) -> EngineError {
    if message == PIDS_FULL {
        return EngineError::Request(phantom_api::engine::Failure::new(
            phantom_api::engine::FailureKind::Conflict,
            format!("{PIDS_FULL}: end some of its processes (GET .../processes, kill_process) or create it with a higher `pids`"),
        ));
    }
    EngineError::Setup(message)
}

fn background_report(
    first: Result<(Report, Vec<OwnedFd>), channel::ChannelError>,
    report: std::os::fd::BorrowedFd<'_>,
) -> Result<i32, EngineError> {
    let mut intermediate = None;
    let mut inside = None;
    let mut failure = None;
    let mut next = Some(first);
    while let Some(message) = next.take() {
        match message {
            Ok((Report::Child { pid }, _)) => intermediate = Some(pid),
            Ok((Report::Background { pid }, _)) => inside = Some(pid),
            Ok((Report::Failed { message }, _)) => failure = Some(message),
            Ok((other, _)) => {
                failure = Some(
                    channel::ChannelError::UnexpectedMessage {
                        peer: "exec helper",
                        expected: "child or background",
                        received: other.name(),
                    }
                    .to_string(),
                )
            }
            Err(_) => break,
        }
        // Both come at once (or the end of the channel, once every process that held
        // it is gone); a helper that hangs must not hold the engine.
        let waiting = intermediate.is_none() || (inside.is_none() && failure.is_none());
        if waiting && channel::readable(report, Duration::from_secs(5)) {
            next = Some(channel::recv::<Report>(report, 4096, 0, "exec helper"));
        }
    }
    if let Some(pid) = intermediate {
        // Our child (CLONE_PARENT); it exits right after its report.
        let _ = process::wait4(pid, false);
    }
    match (inside, failure) {
        (Some(inside), _) => Ok(inside),
        (None, Some(message)) => Err(helper_failed(message)),
        (None, None) => Err(EngineError::Setup(
            "the background command could not be started in the sandbox".into(),
        )),
    }
}
