//! The front-end side of a cold start: prepare everything, clone the sandbox init,
//! hand it its identity, relay its output, enforce the wall-time limit, and clean up.
//!
//! Order matters and each step says why:
//! 1. policy → plan, cgroup created and limited, host sources opened (all before
//!    clone, so the child only replays);
//! 2. clone3 into new user/pid/mount/net/ipc/uts namespaces (the child waits);
//! 3. uid/gid maps written, child moved into the cgroup (v1), idmapped workspace made
//!    — all need the child to exist but must precede its setup;
//! 4. GO; then relay stdout/stderr through pipes (so the output cap holds), forward
//!    signals, kill the whole pid namespace on timeout;
//! 5. reap init with its rusage, read the payload's status, remove cgroup and
//!    temporary workspace.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use phantom_api::{IsolationReport, PolicySource, RunReport, RunRequest};
use phantom_linux::cgroup::{self, Layout, SandboxCgroup};
use phantom_linux::mount::{self, Attrs};
use phantom_linux::process::{self, ExitStatus, Forked, Namespaces};
use phantom_linux::{fdpass, seccomp, userns};
use phantom_policy::{Mode, Mount, NetworkMode, Overrides, Plan};
use rustix::event::{poll, PollFd, PollFlags};

use crate::init::{self, ChildContext, PayloadContext, Step};
use crate::workspace::RunDir;
use crate::{ids, RuntimeError};

/// A request whose policy is loaded and compiled, ready to run.
#[derive(Debug)]
pub struct Prepared {
    pub plan: Plan,
    request: RunRequest,
    warnings: Vec<String>,
}

fn parse_overrides(request: &RunRequest) -> Result<Overrides, RuntimeError> {
    use phantom_policy::units;
    let o = &request.overrides;
    let usage = |flag: &str, value: &str, e: &dyn std::fmt::Display| {
        RuntimeError::Usage(format!("{flag} {value}: {e}"))
    };
    Ok(Overrides {
        mode: o
            .mode
            .as_deref()
            .map(|m| Mode::parse(m).map_err(|e| usage("--mode", m, &e)))
            .transpose()?,
        memory_bytes: o
            .memory
            .as_deref()
            .map(|m| units::parse_bytes(m).map_err(|e| usage("--memory", m, &e)))
            .transpose()?,
        cpu_millis: o
            .cpus
            .as_deref()
            .map(|c| units::parse_cpus(c).map_err(|e| usage("--cpus", c, &e)))
            .transpose()?,
        pids: match o.pids {
            Some(0) => {
                return Err(RuntimeError::Usage(
                    "--pids 0: a sandbox needs at least 1 process".into(),
                ))
            }
            p => p,
        },
        wall_timeout_ms: o
            .timeout
            .as_deref()
            .map(|t| units::parse_duration_ms(t).map_err(|e| usage("--timeout", t, &e)))
            .transpose()?,
        network: o
            .network
            .as_deref()
            .map(|n| NetworkMode::parse(n).map_err(|e| usage("--network", n, &e)))
            .transpose()?,
    })
}

/// Load and compile the request's policy and check the request itself.
pub fn prepare(request: &RunRequest) -> Result<Prepared, RuntimeError> {
    if request.argv.is_empty() || request.argv[0].is_empty() {
        return Err(RuntimeError::Usage(
            "no command given: put it after `--`, e.g. phantom run -- python3 -c 'print(1)'".into(),
        ));
    }
    if let Some(cwd) = &request.cwd {
        if !cwd.starts_with('/') {
            return Err(RuntimeError::Usage(format!(
                "--cwd {cwd}: must be an absolute path inside the sandbox, e.g. /workspace/src"
            )));
        }
    }
    for (k, v) in &request.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(RuntimeError::Usage(format!(
                "--env {k}={v}: expected NAME=VALUE with a non-empty NAME"
            )));
        }
    }
    let profile = match &request.policy {
        PolicySource::Profile(name) => phantom_policy::load_builtin(name)?,
        PolicySource::File(path) => phantom_policy::load_file(std::path::Path::new(path))?,
    };
    let plan = phantom_policy::compile(&profile, &parse_overrides(request)?)?;
    let mut warnings = plan.warnings.clone();
    if plan.mode != Mode::Direct && plan.landlock.enabled {
        // Best effort by design, but never silent.
        match phantom_linux::landlock::kernel_abi() {
            0 => warnings.push(
                "Landlock is not available on this kernel: the filesystem fence is skipped (namespaces, seccomp and the read-only mounts still apply)".into(),
            ),
            abi @ 1..=5 => warnings.push(format!(
                "Landlock ABI {abi} (< 6): abstract unix sockets and signals are not scoped to the sandbox"
            )),
            _ => {}
        }
    }
    match plan.mode {
        // The plan already carries the warning that direct mode does not isolate.
        Mode::Direct => {}
        Mode::Wasm => {
            return Err(RuntimeError::Unsupported {
                what: "mode wasm".into(),
                why: "this build has no WebAssembly runtime".into(),
                hint: "use --mode sandbox or --mode hardened".into(),
            })
        }
        _ => {}
    }
    Ok(Prepared {
        plan,
        request: request.clone(),
        warnings,
    })
}

/// What the sandbox told the front end over the channel (protocol in init.rs).
#[derive(Debug, Default)]
struct SandboxStatus {
    setup_error: Option<String>,
    /// A request value that turned out wrong inside the sandbox (e.g. --cwd).
    usage_error: Option<String>,
    landlock_abi: u32,
    payload: Option<ExitStatus>,
}

impl SandboxStatus {
    /// Record one message; returns a trace label for it.
    fn record(&mut self, msg: &[u8]) -> Option<&'static str> {
        let msg = String::from_utf8_lossy(msg);
        if let Some(e) = msg.strip_prefix("ERR ") {
            self.setup_error = Some(e.to_string());
            Some("sandbox setup failed")
        } else if let Some(e) = msg.strip_prefix("USAGE ") {
            self.usage_error = Some(e.to_string());
            Some("request refused inside the sandbox")
        } else if let Some(a) = msg.strip_prefix("ABI ") {
            self.landlock_abi = a.trim().parse().unwrap_or(0);
            Some("payload fenced (landlock applied)")
        } else if let Some(c) = msg.strip_prefix("EXIT ") {
            self.payload = c.trim().parse().ok().map(ExitStatus::Exited);
            Some("payload exited")
        } else if let Some(s) = msg.strip_prefix("SIG ") {
            self.payload = s.trim().parse().ok().map(ExitStatus::Signaled);
            Some("payload killed")
        } else {
            None
        }
    }
}

/// The payload's stdin. A terminal is never handed to the payload: through it the
/// payload could write to the screen past the output cap, change the terminal's modes
/// (echo off, raw) for after the run, or inject input. When phantom's stdin is a
/// terminal, it is relayed through a pipe instead (and only while phantom is in the
/// terminal's foreground, so that a background run is not stopped by SIGTTIN: it gets
/// an empty stdin). Any other stdin (file, pipe, /dev/null) is passed through as is.
struct StdinRelay {
    /// Write end of the payload's stdin pipe, while relaying.
    to_payload: Option<OwnedFd>,
    pending: Vec<u8>,
}

impl StdinRelay {
    /// The relay, and the fd to give the payload as stdin (None: inherit ours).
    fn new() -> Result<(StdinRelay, Option<OwnedFd>), RuntimeError> {
        let stdin = rustix::stdio::stdin();
        let mut relay = StdinRelay {
            to_payload: None,
            pending: Vec::new(),
        };
        if !rustix::termios::isatty(stdin) {
            return Ok((relay, None));
        }
        let (read, write) = process::pipe()?;
        let foreground = rustix::termios::tcgetpgrp(stdin).ok() == Some(rustix::process::getpgrp());
        if foreground {
            rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK).map_err(|e| {
                RuntimeError::Sys(phantom_linux::SysError::new(
                    "fcntl",
                    "stdin pipe",
                    e.into(),
                ))
            })?;
            relay.to_payload = Some(write);
        }
        Ok((relay, Some(read)))
    }

    /// What to poll: our stdin while nothing is pending, else the pipe for room.
    fn poll_fd(&self) -> Option<PollFd<'_>> {
        let pipe = self.to_payload.as_ref()?;
        Some(if self.pending.is_empty() {
            PollFd::from_borrowed_fd(rustix::stdio::stdin(), PollFlags::IN)
        } else {
            PollFd::new(pipe, PollFlags::OUT)
        })
    }

    /// Move what is ready one step: read our stdin, then write what is pending.
    fn pump(&mut self) {
        if self.to_payload.is_none() {
            return;
        }
        if self.pending.is_empty() {
            let mut buf = [0u8; 4096];
            match rustix::io::read(rustix::stdio::stdin(), &mut buf) {
                // End of input (or the terminal went away): closing the pipe gives the
                // payload EOF.
                Ok(0) => self.to_payload = None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                Err(_) => self.to_payload = None,
            }
        }
        let Some(pipe) = self.to_payload.as_ref() else {
            return;
        };
        if self.pending.is_empty() {
            return;
        }
        match rustix::io::write(pipe, &self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // The payload closed its stdin: stop relaying.
                self.to_payload = None;
                self.pending.clear();
            }
        }
    }
}

/// Where payload output goes.
struct Sink {
    capture: Option<Vec<u8>>,
    /// Our own fd 1 or 2, for pass-through.
    target: i32,
    /// The reader side of the payload's pipe, until EOF.
    pipe: Option<OwnedFd>,
}

/// stdout and stderr of one run, with the shared output cap.
struct Relay {
    sinks: [Sink; 2],
    budget: u64,
    truncated: bool,
}

impl Relay {
    /// Read what is available on sink `i`; false at EOF.
    fn pump(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 65536];
        let Some(pipe) = self.sinks[i].pipe.as_ref() else {
            return false;
        };
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => {
                self.sinks[i].pipe = None;
                false
            }
            Ok(n) => {
                let keep = (n as u64).min(self.budget) as usize;
                if keep < n {
                    self.truncated = true;
                }
                self.budget -= keep as u64;
                let sink = &mut self.sinks[i];
                match sink.capture.as_mut() {
                    Some(v) => v.extend_from_slice(&buf[..keep]),
                    None => write_all(sink.target, &buf[..keep]),
                }
                true
            }
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => true,
            Err(_) => {
                self.sinks[i].pipe = None;
                false
            }
        }
    }
}

fn write_all(fd: i32, mut data: &[u8]) {
    // SAFETY-free: our own stdio fds stay open for the life of the process.
    let out = if fd == 1 {
        rustix::stdio::stdout()
    } else {
        rustix::stdio::stderr()
    };
    while !data.is_empty() {
        match rustix::io::write(out, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return, // reader went away (EPIPE): drop the rest
        }
    }
}

/// Step timings of one run, printed to stderr when PHANTOM_TRACE=1 (for finding where
/// start-up time goes; see docs/BENCHMARKS.md).
struct Trace {
    on: bool,
    start: Instant,
    last: Instant,
}

impl Trace {
    fn new(start: Instant) -> Trace {
        Trace {
            on: std::env::var_os("PHANTOM_TRACE").is_some_and(|v| v == "1"),
            start,
            last: start,
        }
    }

    fn step(&mut self, name: &str) {
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

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

impl Prepared {
    /// Warnings to show before the run (one line each).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Run the sandbox to completion.
    pub fn run(self) -> Result<RunReport, RuntimeError> {
        let started = Instant::now();
        let mut trace = Trace::new(started);
        let plan = &self.plan;
        let request = &self.request;
        let mut warnings = self.warnings.clone();
        let sandbox_id = ids::new_sandbox_id();
        let layout = Layout::detect();
        // The run directory first: it is what lets a later run clean up after this one
        // if this front end is killed.
        let run_dir = RunDir::create(&sandbox_id, request.workspace.as_deref(), &layout)?;
        trace.step("run directory and workspace");
        // cgroup before clone: its limits must hold from the payload's first instruction.
        let limits = cgroup::Limits {
            memory_bytes: plan.limits.memory_bytes,
            cpu_millis: plan.limits.cpu_millis,
            pids: plan.limits.pids,
        };
        let cgroup = match SandboxCgroup::create(&layout, &sandbox_id, limits) {
            Ok(cg) => Some(cg),
            Err(e) => {
                warnings.push(format!(
                    "no cgroup limits ({e}; phantom needs root to create cgroups): memory is limited by RLIMIT_DATA and processes by RLIMIT_NPROC instead, CPU not at all"
                ));
                None
            }
        };
        let guard = CgroupGuard(cgroup);
        trace.step("cgroup created");
        let isolated = plan.mode != Mode::Direct;
        let (host_uid, host_gid) = if isolated {
            ids::sandbox_host_ids()
        } else {
            process::ids()
        };
        let (invoker_uid, _) = process::ids();

        let (out_r, out_w) = process::pipe()?;
        let (err_r, err_w) = process::pipe()?;
        let (mut stdin_relay, payload_stdin) = StdinRelay::new()?;
        let (chan_parent, chan_child) = fdpass::channel()?;
        let payload = self.payload_context(
            plan,
            run_dir.workspace(),
            [payload_stdin, Some(out_w), Some(err_w)],
            guard.0.is_none(),
        )?;
        let cgroup_tasks = match &guard.0 {
            Some(cg) => cg
                .v1_task_files()
                .map_err(|e| RuntimeError::Setup(e.to_string()))?,
            None => Vec::new(),
        };
        let ctx = ChildContext {
            steps: prepare_steps(plan, run_dir.workspace())?,
            cgroup_tasks,
            hostname: plan.hostname.clone(),
            network: plan.network,
            payload,
            trace: trace.on.then_some(started),
        };

        // Signals are read from a signalfd and forwarded; blocked before clone so the
        // child's init inherits the mask it waits on.
        let mut blocked = process::FORWARDED_SIGNALS.to_vec();
        blocked.push(libc::SIGCHLD);
        process::block_signals(&blocked)?;
        let sigfd = process::signalfd(&process::FORWARDED_SIGNALS)?;
        trace.step("prepared steps, pipes, signals");
        if !isolated {
            // No pid namespace to take the payload's tree down with it: descendants
            // that leave its process group (setsid, double fork) are re-parented to us
            // so that the end of the run can find and kill them.
            process::set_child_subreaper()?;
        }

        let ns = if isolated {
            // The cgroup namespace is entered by the child after it joined the cgroup.
            Namespaces {
                cgroup: false,
                ..Namespaces::all()
            }
        } else {
            Namespaces::default()
        };
        let v2_fd = guard.0.as_ref().and_then(|c| c.v2_dir_fd());
        let (pid, pidfd) = match process::clone_child(ns, v2_fd.as_ref().map(|f| f.as_fd()))? {
            Forked::Child => {
                drop((chan_parent, out_r, err_r, sigfd));
                if isolated {
                    init::sandbox_init(ctx, chan_child)
                } else {
                    init::direct_child(ctx.payload, ctx.cgroup_tasks, chan_child)
                }
            }
            Forked::Parent { pid, pidfd } => (pid, pidfd),
        };
        drop(chan_child);
        drop(ctx); // the child's copies of the payload pipes and sources stay in the child
        trace.step("clone3");

        let mut idmapped = false;
        let handoff = (|| -> Result<Option<OwnedFd>, RuntimeError> {
            if isolated {
                userns::map_root_to(pid, host_uid, host_gid, invoker_uid != 0)?;
            }
            if let Some(cg) = &guard.0 {
                if v2_fd.is_none() {
                    // v1 directories are joined by the child itself.
                    cg.add_v2(pid)
                        .map_err(|e| RuntimeError::Setup(e.to_string()))?;
                }
            }
            if isolated && host_uid != invoker_uid {
                // Root: the sandbox's root is an unprivileged host uid, yet files it
                // writes to the workspace must belong to the invoking user. An idmapped
                // mount through the sandbox's own user namespace maps on-disk uid 0 to
                // the sandbox's root and back.
                let userns_fd = mount::open_userns(pid)?;
                let tree = mount::clone_tree(run_dir.workspace())?;
                match mount::set_idmap(tree.as_fd(), userns_fd.as_fd()) {
                    Ok(()) => {
                        idmapped = true;
                        return Ok(Some(tree));
                    }
                    // A temporary workspace is ours and thrown away: without idmapped
                    // mounts (tmpfs before Linux 6.3), hand it to the sandbox's uid.
                    Err(_) if run_dir.workspace_is_temporary() => {
                        std::os::unix::fs::chown(run_dir.workspace(), Some(host_uid), Some(host_gid)).map_err(|e| {
                            RuntimeError::Io {
                                what: "chown workspace",
                                path: run_dir.workspace().display().to_string(),
                                source: e,
                            }
                        })?;
                    }
                    Err(e) => {
                        return Err(RuntimeError::Unsupported {
                            what: format!("workspace {}", run_dir.workspace().display()),
                            why: format!("cannot make an idmapped mount ({e})"),
                            hint: "put the workspace on a filesystem with idmapped-mount support (ext4, xfs, btrfs, tmpfs on Linux 6.3+)".into(),
                        })
                    }
                }
            }
            Ok(None)
        })();
        let mount_fd = match handoff {
            Ok(fd) => fd,
            Err(e) => {
                let _ = process::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
                let _ = process::wait4(pid, false);
                let _ = process::reset_signals(&[]);
                return Err(e);
            }
        };
        trace.step("id maps, cgroup attach, idmapped workspace");
        fdpass::send(
            chan_parent.as_fd(),
            b"GO",
            mount_fd.as_ref().map(|f| f.as_fd()),
        )?;
        drop(mount_fd);

        let mut relay = Relay {
            sinks: [
                Sink {
                    capture: request.capture_output.then(Vec::new),
                    target: 1,
                    pipe: Some(out_r),
                },
                Sink {
                    capture: request.capture_output.then(Vec::new),
                    target: 2,
                    pipe: Some(err_r),
                },
            ],
            budget: plan.limits.output_limit_bytes,
            truncated: false,
        };
        let deadline = started + Duration::from_millis(plan.limits.wall_timeout_ms);
        let mut timed_out = false;
        let mut sandbox = SandboxStatus::default();
        let mut interrupts = 0;
        let mut init_done = false;
        let mut chan_open = true;
        while !init_done {
            let now = Instant::now();
            let wait = if timed_out {
                None
            } else {
                Some(deadline.saturating_duration_since(now))
            };
            let ts = wait.map(|w| rustix::event::Timespec {
                tv_sec: w.as_secs() as i64,
                tv_nsec: w.subsec_nanos() as i64,
            });
            let mut fds = vec![
                PollFd::new(&pidfd, PollFlags::IN),
                PollFd::new(&sigfd, PollFlags::IN),
            ];
            let chan_ix = chan_open.then(|| {
                fds.push(PollFd::new(&chan_parent, PollFlags::IN));
                fds.len() - 1
            });
            let mut pipe_ix = [None, None];
            for (i, sink) in relay.sinks.iter().enumerate() {
                if let Some(p) = &sink.pipe {
                    fds.push(PollFd::new(p, PollFlags::IN));
                    pipe_ix[i] = Some(fds.len() - 1);
                }
            }
            let stdin_ix = stdin_relay.poll_fd().map(|fd| {
                fds.push(fd);
                fds.len() - 1
            });
            match poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(RuntimeError::Sys(phantom_linux::SysError::new(
                        "poll",
                        "relay",
                        e.into(),
                    )))
                }
            }
            let ready = |i: usize| !fds[i].revents().is_empty();
            let init_exited = ready(0);
            let signal_ready = ready(1);
            let chan_ready = chan_ix.is_some_and(ready);
            let pipes_ready = [pipe_ix[0].is_some_and(ready), pipe_ix[1].is_some_and(ready)];
            let stdin_ready = stdin_ix.is_some_and(ready);
            drop(fds);
            if stdin_ready {
                stdin_relay.pump();
            }
            for (i, r) in pipes_ready.into_iter().enumerate() {
                if r {
                    relay.pump(i);
                }
            }
            if chan_ready {
                let mut buf = [0u8; 4096];
                match fdpass::recv(chan_parent.as_fd(), &mut buf) {
                    Ok((0, _)) | Err(_) => chan_open = false,
                    Ok((n, _)) => {
                        if let Some(step) = sandbox.record(&buf[..n]) {
                            trace.step(step);
                        }
                    }
                }
            }
            if signal_ready {
                while let Some(sig) = process::read_signalfd(sigfd.as_fd()) {
                    if sig == libc::SIGINT {
                        interrupts += 1;
                    }
                    // A third Ctrl-C means "stop now", whatever the payload does with it.
                    let forward = if interrupts >= 3 { libc::SIGKILL } else { sig };
                    let _ = process::pidfd_kill(pidfd.as_fd(), forward);
                    if !isolated {
                        let _ = process::kill(-pid, forward);
                    }
                }
            }
            if !timed_out && Instant::now() >= deadline && !init_exited {
                timed_out = true;
                // Killing pid 1 of the namespace kills every process in it.
                let _ = process::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
                if !isolated {
                    let _ = process::kill(-pid, libc::SIGKILL);
                }
                if let Some(cg) = &guard.0 {
                    cg.kill_all();
                }
            }
            if init_exited {
                init_done = true;
            }
        }
        let (_, init_status, usage) =
            process::wait4(pid, false)?.expect("blocking wait4 returns a status");
        let wall = started.elapsed();
        trace.step("init reaped");
        if !isolated {
            // No pid namespace: take down whatever the payload left behind — its group,
            // its cgroup, and every orphan re-parented to us as subreaper.
            let _ = process::kill(-pid, libc::SIGKILL);
            if let Some(cg) = &guard.0 {
                cg.kill_all();
            }
            kill_descendants();
            sandbox.payload = Some(init_status);
        }
        // Status messages sent just before init exited may still be queued.
        let mut buf = [0u8; 4096];
        while chan_open {
            match rustix::net::recv(&chan_parent, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
                Ok((n, _)) if n > 0 => {
                    sandbox.record(&buf[..n]);
                }
                _ => chan_open = false,
            }
        }
        // Everything in the sandbox is gone, so the pipes are at EOF once drained.
        for i in 0..2 {
            while relay.pump(i) {}
        }
        let _ = process::reset_signals(&[]);
        let oom_killed = guard.0.as_ref().is_some_and(|c| c.oom_killed());
        let cgroup_version = guard.0.as_ref().map_or("none", |c| c.version());
        drop(guard);
        drop(run_dir);
        trace.step("cgroup and workspace removed");

        if let Some(e) = sandbox.usage_error {
            return Err(RuntimeError::Usage(e));
        }
        if let Some(e) = sandbox.setup_error {
            return Err(RuntimeError::Setup(e));
        }
        let status = if timed_out {
            ExitStatus::Signaled(libc::SIGKILL)
        } else {
            sandbox.payload.unwrap_or(init_status)
        };
        let [out, err] = relay.sinks;
        Ok(RunReport {
            sandbox_id,
            profile: plan.profile.clone(),
            mode: plan.mode.as_str().to_string(),
            exit_code: status.code(),
            signal: match status {
                ExitStatus::Signaled(s) => Some(s),
                ExitStatus::Exited(_) => None,
            },
            timed_out,
            oom_killed,
            output_truncated: relay.truncated,
            wall_ms: ms(wall),
            user_ms: ms(usage.user),
            sys_ms: ms(usage.sys),
            max_rss_kb: usage.max_rss_kb,
            stdout: out
                .capture
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
            stderr: err
                .capture
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
            isolation: IsolationReport {
                cgroup: cgroup_version.to_string(),
                landlock_abi: sandbox.landlock_abi,
                seccomp_programs: if isolated { plan.seccomp.len() } else { 0 },
                host_uid,
                idmapped_workspace: idmapped,
            },
            warnings,
        })
    }

    fn payload_context(
        &self,
        plan: &Plan,
        host_workspace: &std::path::Path,
        [stdin, stdout, stderr]: [Option<OwnedFd>; 3],
        no_cgroup: bool,
    ) -> Result<PayloadContext, RuntimeError> {
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            unreachable!("the payload always gets output pipes");
        };
        let request = &self.request;
        let cstring = |s: &str| {
            CString::new(s).map_err(|_| RuntimeError::Usage(format!("{s:?}: contains a NUL byte")))
        };
        let argv = request
            .argv
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env: Vec<(String, String)> = plan.env.clone();
        if let Ok(term) = std::env::var("TERM") {
            set_var(&mut env, "TERM", &term);
        }
        if let Some(cwd) = &request.cwd {
            if !cwd.starts_with('/') {
                return Err(RuntimeError::Usage(format!(
                    "--cwd {cwd}: must be an absolute path inside the sandbox, e.g. /workspace/src"
                )));
            }
        }
        for (k, v) in &request.env {
            set_var(&mut env, k, v);
        }
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let env = env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let isolated = plan.mode != Mode::Direct;
        let cwd = match (&request.cwd, isolated) {
            (Some(c), _) => PathBuf::from(c),
            (None, true) => PathBuf::from(&plan.cwd),
            // Direct mode has no /workspace: the command runs in the host directory.
            (None, false) => host_workspace.to_path_buf(),
        };
        Ok(PayloadContext {
            argv,
            env,
            path_var,
            cwd,
            stdin,
            stdout,
            stderr,
            nofile: plan.limits.nofile,
            fsize: plan.limits.fsize_bytes,
            rlimit_nproc: no_cgroup.then_some(plan.limits.pids),
            rlimit_data: no_cgroup.then_some(plan.limits.memory_bytes),
            landlock: (isolated && plan.landlock.enabled).then(|| {
                (
                    init::landlock_rules(plan),
                    plan.landlock.scope_abstract_unix,
                    plan.landlock.scope_signals,
                )
            }),
            seccomp: if isolated {
                plan.seccomp
                    .iter()
                    .map(|p| {
                        (
                            p.name.clone(),
                            p.instructions
                                .iter()
                                .map(|i| seccomp::Instruction {
                                    code: i.code,
                                    jt: i.jt,
                                    jf: i.jf,
                                    k: i.k,
                                })
                                .collect(),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
            drop_caps: isolated,
        })
    }
}

/// SIGKILL and reap every descendant of this process (direct mode's cleanup).
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

fn set_var(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

/// Removes the sandbox's cgroup when the run ends, however it ends.
struct CgroupGuard(Option<SandboxCgroup>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.as_mut() {
            cg.kill_all();
            cg.remove();
        }
    }
}

/// Turn the plan's mounts into steps, opening every host source now.
fn prepare_steps(plan: &Plan, workspace: &std::path::Path) -> Result<Vec<Step>, RuntimeError> {
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
                        return Err(RuntimeError::Usage(format!(
                            "bind source {source} does not exist on this host ({e}); remove it from the policy or mark it optional"
                        )))
                    }
                };
                if meta.file_type().is_symlink() {
                    let points_to = std::fs::read_link(src).map_err(|e| RuntimeError::Io {
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
