//! `phantom exec NAME -- cmd`: run a command in a persistent sandbox.
//!
//! The front end (single-threaded) forks a helper that
//! 1. joins the sandbox's cgroup (while it still sees the host's cgroup tree),
//! 2. becomes non-dumpable (nothing in the sandbox may ptrace it or read its
//!    /proc/PID while it holds host fds),
//! 3. joins every namespace of the sandbox's init through its pidfd (setns) and takes
//!    uid/gid 0 of the sandbox's user namespace,
//! 4. forks the payload with CLONE_PARENT: a process cannot move itself into a pid
//!    namespace, its children are born there; CLONE_PARENT makes the payload a child
//!    of the front end, which waits for it like a cold run's init,
//! 5. reports the payload's pid and exits.
//!
//! The payload then does what a cold payload does (init.rs `payload`): setsid,
//! rlimits, no_new_privs, Landlock, dropped capabilities, closed fds, seccomp last,
//! execve — so an exec is fenced exactly like the sandbox's first command would be.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use phantom_api::{ExecRequest, IsolationReport, RunReport, RunRequest};
use phantom_linux::cgroup::{Layout, SandboxCgroup};
use phantom_linux::fdpass;
use phantom_linux::process::{self, Forked, Namespaces};
use phantom_state::{Record, State, StateError, DEAD, DESTROYING, RUNNING, STARTING};
use rustix::fs::{flock, FlockOperation};

use super::{now_s, plan_hash};
use crate::channel::{self, Report};
use crate::cold::{prepare_with, watch, Watched};
use crate::init::ChildPayload;
use crate::relay::{Relay, StdinRelay};
use crate::spawn::{ms, Trace};
use crate::EngineError;

/// The command started in the sandbox, as the front end watches it.
struct Joined {
    pid: i32,
    pidfd: OwnedFd,
    chan: OwnedFd,
}

impl Watched for Joined {
    fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
    fn chan(&self) -> BorrowedFd<'_> {
        self.chan.as_fd()
    }
    fn signal(&self, signal: i32) {
        // The payload leads its own process group (setsid); before it got there,
        // the group does not exist yet and the process itself is signalled.
        if process::kill(-self.pid, signal).is_err() {
            let _ = process::pidfd_kill(self.pidfd.as_fd(), signal);
        }
    }
    fn kill(&self) {
        let _ = process::kill(-self.pid, libc::SIGKILL);
        let _ = process::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
    }
}

/// Refuse a sandbox that cannot take commands, with what to do instead.
pub(crate) fn check_usable(record: &Record) -> Result<(), EngineError> {
    let name = &record.name;
    match record.effective_status() {
        (RUNNING, _) => Ok(()),
        (DEAD, reason) => Err(EngineError::Usage(format!(
            "sandbox `{name}` is dead ({}); `phantom destroy {name}` cleans it up (its workspace can be copied out first with `phantom cp {name}:/workspace/. DIR`)",
            reason.unwrap_or_else(|| "its init is gone".into())
        ))),
        (STARTING, _) => Err(EngineError::Usage(format!(
            "sandbox `{name}` is still starting; try again in a moment"
        ))),
        (DESTROYING, _) => Err(EngineError::Usage(format!(
            "sandbox `{name}` is being destroyed"
        ))),
        (other, _) => Err(EngineError::State(StateError::Database(format!(
            "sandbox `{name}` has an unknown status `{other}`"
        )))),
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

/// Run `req` in the sandbox named `name` to completion.
pub fn exec(name: &str, req: &ExecRequest) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    let mut trace = Trace::new(started);
    super::validate_name(name)?;
    let state = State::open_default()?;
    let record = super::get(&state, name)?;
    trace.step("record read");
    check_usable(&record)?;
    if req.argv.first().is_none_or(|a| a.is_empty()) {
        return Err(EngineError::Usage(format!(
            "no command given: put it after `--`, e.g. phantom exec {name} -- python3 -c 'print(1)'"
        )));
    }
    // The plan again, from the request the sandbox was created with: its fences must
    // be the ones the sandbox was made for.
    let mut overrides = record.request.overrides.clone();
    if req.timeout.is_some() {
        overrides.timeout = req.timeout.clone();
    }
    let run = RunRequest {
        policy: record.request.policy.clone(),
        overrides,
        argv: req.argv.clone(),
        env: req.env.clone(),
        cwd: req.cwd.clone(),
        workspace: Some(record.workspace().display().to_string()),
        capture_output: req.capture_output,
        image: record.request.image.clone(),
    };
    let mut prepared = prepare_with(&run, true)?;
    if let Some(n) = req.max_output {
        prepared.plan.limits.output_limit_bytes = n.max(1);
    }
    trace.step("plan compiled");
    let plan = &prepared.plan;
    if plan_hash(plan) != record.plan_hash {
        return Err(EngineError::Usage(format!(
            "the policy of sandbox `{name}` changed since it was created; its mounts were made for the old one. Recreate it: phantom destroy {name}, then phantom create --name {name}"
        )));
    }

    // Held shared while the command runs: the keeper takes it exclusively to decide
    // that the sandbox is idle, and holds it while it retires the sandbox.
    let lock = std::fs::File::open(record.dir.join("exec.lock")).map_err(|e| EngineError::Io {
        what: "open",
        path: record.dir.join("exec.lock").display().to_string(),
        source: e,
    })?;
    flock(&lock, FlockOperation::LockShared).map_err(|e| EngineError::Io {
        what: "lock",
        path: record.dir.join("exec.lock").display().to_string(),
        source: e.into(),
    })?;
    // Re-read: the keeper may have retired it while we waited for the lock.
    let record = super::get(&state, name)?;
    check_usable(&record)?;
    // The init, proven alive; its namespaces come from the keeper.
    drop(open_init(&record)?);
    let namespaces = namespaces_from_keeper(&record)?;
    trace.step("namespaces from the keeper");
    state.touch(&record.id, now_s())?;
    trace.step("use recorded");

    let cgroup = SandboxCgroup::open(&Layout::detect(), &record.id).ok();
    let oom_before = cgroup.as_ref().map_or(0, |c| c.oom_kills());
    let (out_r, out_w) = process::pipe()?;
    let (err_r, err_w) = process::pipe()?;
    let (mut stdin_relay, payload_stdin) = StdinRelay::new()?;
    // As `docker exec`: the command as given (no Entrypoint), the image's Env under
    // --env, its WorkingDir unless --cwd.
    let command = prepared.command_with(req.argv.clone());
    let ctx = prepared.payload_context(
        command,
        plan,
        &record.workspace(),
        [payload_stdin, Some(out_w), Some(err_w)],
        cgroup.is_none(),
    )?;
    let payload = ChildPayload::Ready(ctx);
    trace.step("payload prepared");
    let mut blocked = process::FORWARDED_SIGNALS.to_vec();
    blocked.push(libc::SIGCHLD);
    process::block_signals(&blocked)?;
    let sigfd = process::signalfd(&process::FORWARDED_SIGNALS)?;
    let result = (|| {
        let joined = join(namespaces, cgroup.as_ref(), payload)?;
        trace.step("joined the sandbox, payload forked");
        let mut relay = Relay::new(
            out_r,
            err_r,
            req.capture_output,
            plan.limits.output_limit_bytes,
        );
        let deadline = started + Duration::from_millis(plan.limits.wall_timeout_ms);
        let watched = watch(
            &joined,
            &mut relay,
            &mut stdin_relay,
            &sigfd,
            deadline,
            &mut trace,
            // The sandbox's proxy, if any, belongs to whoever keeps it.
            None,
        );
        if watched.is_err() {
            joined.kill();
        }
        let waited = process::wait4(joined.pid, false);
        let (mut status, timed_out, _) = watched?;
        let (_, exit, usage) = waited?.expect("blocking wait4 returns a status");
        // Messages sent just before the payload exec'd or exited may still be queued.
        status.drain(joined.chan.as_fd());
        relay.drain();
        Ok::<_, EngineError>((status, timed_out, exit, usage, relay))
    })();
    let _ = process::reset_signals(&[]);
    let _ = state.touch(&record.id, now_s());
    drop(lock);
    let (mut status, timed_out, exit, usage, relay) = result?;
    trace.step("payload reaped");
    let exit = status.outcome(timed_out, exit)?;
    let truncated = relay.truncated;
    let (stdout, stderr) = relay.captured();
    let (host_uid, _) = crate::ids::sandbox_host_ids();
    Ok(RunReport {
        sandbox_id: record.id.clone(),
        profile: plan.profile.clone(),
        mode: plan.mode.as_str().to_string(),
        start: "exec".into(),
        exit_code: exit.code(),
        signal: exit.signal(),
        timed_out,
        oom_killed: cgroup.as_ref().is_some_and(|c| c.oom_kills() > oom_before),
        output_truncated: truncated,
        wall_ms: ms(started.elapsed()),
        user_ms: ms(usage.user),
        sys_ms: ms(usage.sys),
        max_rss_kb: usage.max_rss_kb,
        stdout,
        stderr,
        isolation: IsolationReport {
            cgroup: cgroup.as_ref().map_or("none", |c| c.version()).to_string(),
            landlock_abi: status.landlock_abi,
            seccomp_programs: plan.seccomp.len(),
            host_uid,
            idmapped_workspace: phantom_linux::process::euid() == 0,
        },
        warnings: prepared.warnings().to_vec(),
        // A persistent sandbox's proxy belongs to its keeper, which logs each decision
        // with the sandbox id; an exec's report does not count them.
        network: None,
    })
}

/// The sandbox's namespaces, from its keeper's socket.
fn namespaces_from_keeper(record: &Record) -> Result<Vec<OwnedFd>, EngineError> {
    let gone = |e: &dyn std::fmt::Display| {
        EngineError::Setup(format!(
            "sandbox `{}`: its keeper does not answer ({e}); `phantom destroy {}` cleans it up",
            record.name, record.name
        ))
    };
    let conn = fdpass::connect_seqpacket(&record.socket).map_err(|e| gone(&e))?;
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
/// payload it started, a child of ours.
fn join(
    namespaces: Vec<OwnedFd>,
    cgroup: Option<&SandboxCgroup>,
    payload: ChildPayload,
) -> Result<Joined, EngineError> {
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
            match process::fork_sibling() {
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
                Err(e) => fail(e.to_string()),
            }
        }
        Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop((chan_child, report_child, ctx, namespaces, helper_fd));
    // The helper's report: the payload's pid, or why it failed.
    let report = channel::recv::<Report>(report_parent.as_fd(), 4096, 0, "exec helper");
    let _ = process::wait4(helper, false);
    match report {
        Ok((Report::Child { pid }, _)) => {
            // Our child (CLONE_PARENT): its pid cannot be reused before we reap it.
            let pidfd = process::pidfd_open(pid)?;
            Ok(Joined {
                pid,
                pidfd,
                chan: chan_parent,
            })
        }
        Ok((Report::Failed { message }, _)) => Err(EngineError::Setup(message)),
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
