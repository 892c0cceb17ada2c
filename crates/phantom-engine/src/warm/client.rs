//! `phantom run`'s side of a warm start: ask the supervisor for a pooled sandbox, hand
//! it our stdio, relay the output exactly as the cold path does, and build the same
//! report. Anything that keeps a run from being served warm returns `Ok(None)` and the
//! caller starts cold.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use phantom_api::{PolicySource, RunReport};
use phantom_linux::{fdpass, process};
use rustix::event::{poll, PollFd, PollFlags};

use super::protocol::{PoolStatus, Reply, Request, WarmRun, MAX_MESSAGE};
use crate::relay::{Relay, StdinRelay};
use crate::{EngineError, Prepared};

/// Why a run was not tried warm, or was refused (for `--verbose`).
pub type NotWarm = String;

/// Run `prepared` in a pooled sandbox of the supervisor, if one serves it.
/// `Ok(Err(reason))`: not served warm (no supervisor, no pool for the profile — on the
/// run's image, if any —, pool empty, a pool built on an older import of the image, a
/// setting that pools do not cover) — start cold.
pub fn try_run(prepared: &Prepared) -> Result<Result<RunReport, NotWarm>, EngineError> {
    let conn = match connect_for(prepared, &super::socket_path()) {
        Ok(c) => c,
        Err(reason) => return Ok(Err(reason)),
    };
    let (mut stdin_relay, relayed_stdin) = StdinRelay::new()?;
    // The pooled sandbox does not share our fds: pass our stdin explicitly (a copy of
    // fd 0, or the relay's pipe when it is a terminal).
    let payload_stdin = match relayed_stdin {
        Some(pipe) => pipe,
        None => rustix::io::dup(rustix::stdio::stdin()).map_err(|e| {
            EngineError::Sys(phantom_linux::SysError::new("dup", "stdin", e.into()))
        })?,
    };
    let started = Instant::now();
    let (out_r, err_r) = send_run(prepared, &conn, payload_stdin)?;

    // Signals are forwarded as messages while the run lasts.
    let mut blocked = process::FORWARDED_SIGNALS.to_vec();
    blocked.push(libc::SIGCHLD);
    process::block_signals(&blocked)?;
    let sigfd = process::signalfd(&process::FORWARDED_SIGNALS)?;
    let result = relay_until_finished(
        prepared,
        &conn,
        Wake::Signals(&sigfd),
        &mut stdin_relay,
        out_r,
        err_r,
        started,
    );
    let _ = process::reset_signals(&[]);
    result
}

/// A warm run for a front end that owns neither a terminal nor the process's signals —
/// the MCP server, which may call this from any of its threads (nothing here forks):
/// the supervisor at `socket`, `stdin` handed to the payload as is, the output captured
/// (set `capture_output` in the request) up to the plan's output cap. When `cancel`
/// becomes readable the payload's sandbox is killed (SIGKILL through the supervisor,
/// which then reaps it and removes its cgroup and run directory) and the report comes
/// back as usual. Signals are left alone.
pub fn try_run_captured(
    prepared: &Prepared,
    socket: &Path,
    stdin: OwnedFd,
    cancel: BorrowedFd<'_>,
) -> Result<Result<RunReport, NotWarm>, EngineError> {
    let conn = match connect_for(prepared, socket) {
        Ok(c) => c,
        Err(reason) => return Ok(Err(reason)),
    };
    let started = Instant::now();
    let (out_r, err_r) = send_run(prepared, &conn, stdin)?;
    relay_until_finished(
        prepared,
        &conn,
        Wake::Cancel(cancel),
        &mut StdinRelay::none(),
        out_r,
        err_r,
        started,
    )
}

/// A connection to the supervisor at `socket`, when the run is one that pools serve.
fn connect_for(prepared: &Prepared, socket: &Path) -> Result<OwnedFd, NotWarm> {
    let request = &prepared.request;
    let plan = &prepared.plan;
    if !matches!(request.policy, PolicySource::Profile(_)) {
        return Err("a --policy file is not pooled".into());
    }
    if request.overrides.mode.is_some() || request.overrides.network.is_some() {
        return Err(
            "--mode and --network change how a sandbox is built; pools are built per profile"
                .into(),
        );
    }
    if plan.mode == phantom_policy::Mode::Direct {
        return Err("direct mode has no sandbox".into());
    }
    fdpass::connect_seqpacket(socket)
        .map_err(|e| format!("no supervisor at {} ({})", socket.display(), e.source))
}

/// Send the Run request with the payload's stdio; returns the read ends of its stdout
/// and stderr pipes.
fn send_run(
    prepared: &Prepared,
    conn: &OwnedFd,
    payload_stdin: OwnedFd,
) -> Result<(OwnedFd, OwnedFd), EngineError> {
    let request = &prepared.request;
    let plan = &prepared.plan;
    let PolicySource::Profile(profile) = &request.policy else {
        unreachable!("connect_for only connects for a built-in profile");
    };
    let (out_r, out_w) = process::pipe()?;
    let (err_r, err_w) = process::pipe()?;
    // Entrypoint/Cmd, Env and WorkingDir are resolved here, as for a cold run; the
    // supervisor matches the image by name, root and WorkingDir.
    let command = prepared.command();
    let run = WarmRun {
        profile: profile.clone(),
        image: prepared.image.as_ref().map(|i| i.warm_image()),
        argv: command.argv,
        env: command.env,
        term: std::env::var("TERM").ok(),
        cwd: command.cwd,
        workspace: request.workspace.clone(),
        memory_bytes: plan.limits.memory_bytes,
        cpu_millis: plan.limits.cpu_millis,
        pids: plan.limits.pids,
        wall_timeout_ms: plan.limits.wall_timeout_ms,
        stdin_fd: true,
    };
    let message = serde_json::to_vec(&Request::Run(Box::new(run))).expect("requests serialize");
    {
        let fds = [payload_stdin.as_fd(), out_w.as_fd(), err_w.as_fd()];
        fdpass::send_fds(conn.as_fd(), &message, &fds)?;
    }
    // Our copies of the payload's ends must go (when this returns), or the pipes never
    // reach EOF.
    drop((payload_stdin, out_w, err_w));
    Ok((out_r, err_r))
}

/// What else wakes the relay loop besides the supervisor and the output.
#[derive(Clone, Copy)]
enum Wake<'a> {
    /// `phantom run`: signals to forward (a signalfd).
    Signals(&'a OwnedFd),
    /// A front end's cancel fd: readable means kill the run.
    Cancel(BorrowedFd<'a>),
}

/// Wait for the supervisor's answers while relaying output and signals.
fn relay_until_finished(
    prepared: &Prepared,
    conn: &OwnedFd,
    wake: Wake<'_>,
    stdin_relay: &mut StdinRelay,
    out_r: OwnedFd,
    err_r: OwnedFd,
    started: Instant,
) -> Result<Result<RunReport, NotWarm>, EngineError> {
    let plan = &prepared.plan;
    let mut relay = Relay::new(
        out_r,
        err_r,
        prepared.request.capture_output,
        plan.limits.output_limit_bytes,
    );
    // The supervisor enforces the timeout; this one only guards against a supervisor
    // that stopped answering.
    let give_up =
        started + Duration::from_millis(plan.limits.wall_timeout_ms) + Duration::from_secs(10);
    let mut sandbox_id = None;
    let mut interrupts = 0;
    let mut cancelled = false;
    let outcome = loop {
        let wait = give_up.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(EngineError::Setup(
                "the supervisor stopped answering".into(),
            ));
        }
        let ts = rustix::event::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: wait.subsec_nanos() as i64,
        };
        let wake_fd = match wake {
            Wake::Signals(fd) => fd.as_fd(),
            Wake::Cancel(fd) => fd,
        };
        let mut fds = vec![PollFd::new(conn, PollFlags::IN)];
        // A cancel fd stays readable once cancelled: poll it until the kill is sent.
        if !cancelled {
            fds.push(PollFd::from_borrowed_fd(wake_fd, PollFlags::IN));
        }
        let polled = relay.poll_fds(stdin_relay, &mut fds);
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(EngineError::Sys(phantom_linux::SysError::new(
                    "poll",
                    "warm relay",
                    e.into(),
                )))
            }
        }
        let ready = |i: usize| !fds[i].revents().is_empty();
        let (conn_ready, wake_ready) = (ready(0), !cancelled && ready(1));
        let relay_ready = polled.ready(&fds);
        drop(fds);
        relay.pump_ready(stdin_relay, relay_ready);
        match wake {
            Wake::Signals(sigfd) if wake_ready => {
                while let Some(sig) = process::read_signalfd(sigfd.as_fd()) {
                    if sig == libc::SIGINT {
                        interrupts += 1;
                    }
                    let signal = if interrupts >= 3 { libc::SIGKILL } else { sig };
                    let bytes = serde_json::to_vec(&Request::Signal { signal })
                        .expect("requests serialize");
                    let _ = fdpass::send_bytes(conn, &bytes);
                }
            }
            Wake::Cancel(_) if wake_ready => {
                // The supervisor kills the sandbox and answers Finished as usual, once
                // it has reaped it and removed its cgroup and run directory.
                cancelled = true;
                let bytes = serde_json::to_vec(&Request::Signal {
                    signal: libc::SIGKILL,
                })
                .expect("requests serialize");
                let _ = fdpass::send_bytes(conn, &bytes);
            }
            _ => {}
        }
        if conn_ready {
            let mut buf = vec![0u8; MAX_MESSAGE];
            let n = match fdpass::recv(conn.as_fd(), &mut buf) {
                Ok((n, _)) => n,
                Err(e) => return Err(EngineError::Setup(format!("lost the supervisor: {e}"))),
            };
            if n == 0 {
                return Err(EngineError::Setup(match &sandbox_id {
                    Some(id) => format!("the supervisor went away during the run of sandbox {id}"),
                    None => "the supervisor closed the connection".into(),
                }));
            }
            match serde_json::from_slice::<Reply>(&buf[..n]) {
                Ok(Reply::Refused { reason }) => return Ok(Err(reason)),
                Ok(Reply::Started { sandbox_id: id }) => sandbox_id = Some(id),
                Ok(Reply::Finished(outcome)) => break outcome,
                Ok(Reply::Error {
                    message,
                    usage: true,
                }) => return Err(EngineError::Usage(message)),
                Ok(Reply::Error {
                    message,
                    usage: false,
                }) => return Err(EngineError::Setup(message)),
                Ok(Reply::Status(_)) => {}
                Err(e) => {
                    return Err(EngineError::Setup(format!(
                        "unreadable reply from the supervisor: {e}"
                    )))
                }
            }
        }
    };
    // The sandbox is gone: the pipes reach EOF once drained.
    relay.drain();
    let truncated = relay.truncated;
    let (stdout, stderr) = relay.captured();
    Ok(Ok(RunReport {
        sandbox_id: outcome.sandbox_id,
        profile: plan.profile.clone(),
        mode: plan.mode.as_str().to_string(),
        start: if outcome.prewarmed {
            "prewarmed"
        } else {
            "warm"
        }
        .into(),
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        timed_out: outcome.timed_out,
        oom_killed: outcome.oom_killed,
        output_truncated: truncated,
        wall_ms: outcome.wall_ms,
        user_ms: outcome.user_ms,
        sys_ms: outcome.sys_ms,
        max_rss_kb: outcome.max_rss_kb,
        stdout,
        stderr,
        isolation: outcome.isolation,
        warnings: prepared
            .warnings
            .iter()
            .chain(&outcome.warnings)
            .cloned()
            .collect(),
        network: outcome.network,
    }))
}

/// Ask the supervisor for its pools (`phantom pool status`).
pub fn status() -> Result<PoolStatus, EngineError> {
    status_at(&super::socket_path())
}

/// Ask the supervisor listening on `socket` for its pools.
pub fn status_at(socket: &std::path::Path) -> Result<PoolStatus, EngineError> {
    let conn = fdpass::connect_seqpacket(socket).map_err(|e| EngineError::Unsupported {
        what: "phantom pool status".into(),
        why: format!("no supervisor at {} ({})", socket.display(), e.source),
        hint: "start one with `phantom-supervisor --profiles default --zygote-pools 4`".into(),
    })?;
    let bytes = serde_json::to_vec(&Request::Status).expect("requests serialize");
    fdpass::send_bytes(&conn, &bytes)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, _) = fdpass::recv(conn.as_fd(), &mut buf)?;
    match serde_json::from_slice::<Reply>(&buf[..n]) {
        Ok(Reply::Status(s)) => Ok(s),
        Ok(other) => Err(EngineError::Setup(format!("unexpected reply: {other:?}"))),
        Err(e) => Err(EngineError::Setup(format!(
            "unreadable reply from the supervisor: {e}"
        ))),
    }
}
