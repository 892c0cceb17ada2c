//! A cold start: [`prepare`] loads and compiles the policy; [`Prepared::run`] starts a
//! fresh sandbox with the payload known up front (`spawn.rs`), relays its output
//! through pipes (so the output cap holds), forwards signals, kills the whole pid
//! namespace on timeout, and builds the report from what the init reported and its
//! rusage.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use phantom_api::{IsolationReport, PolicySource, RunReport, RunRequest};
use phantom_egress::{ProxyConfig, ProxyHelper};
use phantom_linux::process;
use phantom_policy::{Mode, NetworkMode, Overrides, Plan};
use rustix::event::{poll, PollFd, PollFlags};

use crate::channel::{self, FromInit};
use crate::image_run::ImageRun;
use crate::init::{self, ChildPayload, PayloadContext};
use crate::relay::{Relay, StdinRelay};
use crate::spawn::{ms, payload_env, spawn_on, Outcome, SandboxStatus, Trace};
use crate::EngineError;

/// A request whose policy is loaded and compiled, ready to run.
#[derive(Debug)]
pub struct Prepared {
    pub plan: Plan,
    pub(crate) request: RunRequest,
    pub(crate) warnings: Vec<String>,
    /// The image the sandbox runs on (`--image`, `filesystem.rootfs: image:NAME`),
    /// found in the store, with the command, environment and working directory its
    /// config gives.
    pub(crate) image: Option<ImageRun>,
    /// `network.mode: limited`: names the test-only resolver override maps.
    pub(crate) test_resolve: Vec<(String, std::net::SocketAddr)>,
}

/// What a payload runs, where, and with which variables over the plan's environment —
/// the request as an image's config shapes it, the way Docker composes them. Both
/// paths take it from [`Prepared::command`]: a cold run builds its payload with it, a
/// warm run sends it to the supervisor, so a run sees the same either way.
#[derive(Debug, Clone)]
pub(crate) struct PayloadCommand {
    /// On an image: Entrypoint, then the command given or else Cmd.
    pub argv: Vec<String>,
    /// Laid over the plan's environment (after TERM), in order: the image's Env (its
    /// PATH, HOME, ... win over phantom's), then `--env` (wins over both).
    pub env: Vec<(String, String)>,
    /// `--cwd`, else the image's WorkingDir; `None`: the plan's default.
    pub cwd: Option<String>,
}

fn parse_overrides(request: &RunRequest) -> Result<Overrides, EngineError> {
    use phantom_policy::units;
    let o = &request.overrides;
    let usage = |flag: &str, value: &str, e: &dyn std::fmt::Display| {
        EngineError::Usage(format!("{flag} {value}: {e}"))
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
                return Err(EngineError::Usage(
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
        image: request.image.clone(),
    })
}

/// Load and compile the request's policy and check the request itself.
pub fn prepare(request: &RunRequest) -> Result<Prepared, EngineError> {
    prepare_with(request, true)
}

/// [`prepare`]; `command`: whether the request must name a command (a persistent
/// sandbox is created without one).
pub(crate) fn prepare_with(request: &RunRequest, command: bool) -> Result<Prepared, EngineError> {
    let no_command = || {
        EngineError::Usage(
            "no command given: put it after `--`, e.g. phantom run -- python3 -c 'print(1)'".into(),
        )
    };
    // An image may bring the command (its Cmd); only the compiled plan says whether
    // the sandbox runs on one.
    if request.argv.first().is_some_and(|a| a.is_empty()) {
        return Err(no_command());
    }
    if let Some(cwd) = &request.cwd {
        if !cwd.starts_with('/') {
            return Err(EngineError::Usage(format!(
                "--cwd {cwd}: must be an absolute path inside the sandbox, e.g. /workspace/src"
            )));
        }
    }
    for (k, v) in &request.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(EngineError::Usage(format!(
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
    // The image is found now, before clone: a missing one is the caller's mistake.
    let image = match plan.rootfs.image() {
        // A persistent sandbox is built on the image's root alone: each `exec`
        // brings its command.
        Some(name) if !command => Some(ImageRun::for_pool(name)?),
        Some(name) => Some(ImageRun::resolve(name, &request.argv, &mut warnings)?),
        None if command && request.argv.is_empty() => return Err(no_command()),
        None => None,
    };
    // Only keys the policy file itself writes: an `extends: default` inherits
    // `zygote: true` and must not warn for it.
    let own_file = match &request.policy {
        PolicySource::File(path) => Some(path.as_str()),
        PolicySource::Profile(_) => None,
    };
    let pooling_keys: Vec<&str> = ["performance.zygote", "performance.pool_size"]
        .into_iter()
        .filter(|key| {
            profile
                .position(key)
                .is_some_and(|pos| Some(pos.file.as_str()) == own_file)
        })
        .collect();
    if matches!(request.policy, PolicySource::File(_)) && !pooling_keys.is_empty() {
        warnings.push(format!(
            "{}: phantom-supervisor keeps warm pools of built-in profiles only; a --policy file always starts cold",
            pooling_keys.join(", ")
        ));
    }
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
    let mut test_resolve = Vec::new();
    if plan.network == NetworkMode::Limited && plan.mode != Mode::Direct {
        if let Some(entries) =
            phantom_egress::test_resolve_from_env().map_err(EngineError::Usage)?
        {
            warnings.push(phantom_egress::test_resolve_warning(&entries));
            test_resolve = entries;
        }
        if phantom_linux::landlock::kernel_abi() < 4 && plan.landlock.enabled {
            warnings.push(
                "Landlock ABI < 4: TCP connects inside the sandbox are not fenced to the proxy port (the network namespace, which has only lo, still is)".into(),
            );
        }
    }
    match plan.mode {
        // The plan already carries the warning that direct mode does not isolate.
        Mode::Direct => {}
        Mode::Wasm => {
            return Err(EngineError::Unsupported {
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
        image,
        test_resolve,
    })
}

impl Prepared {
    /// Warnings to show before the run (one line each).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The payload's command, environment and working directory (see
    /// [`PayloadCommand`]).
    pub(crate) fn command(&self) -> PayloadCommand {
        let argv = match &self.image {
            Some(image) => image.argv.clone(),
            None => self.request.argv.clone(),
        };
        self.command_with(argv)
    }

    /// [`Prepared::command`] with `argv` as given: the image's Env and WorkingDir still
    /// apply, its Entrypoint and Cmd do not (`phantom exec`, as `docker exec`).
    pub(crate) fn command_with(&self, argv: Vec<String>) -> PayloadCommand {
        let request = &self.request;
        let image = self.image.as_ref();
        PayloadCommand {
            argv,
            env: image
                .iter()
                .flat_map(|i| &i.env)
                .chain(&request.env)
                .cloned()
                .collect(),
            cwd: request
                .cwd
                .clone()
                .or_else(|| image.and_then(|i| i.working_dir.clone())),
        }
    }

    /// Run the sandbox to completion.
    pub fn run(self) -> Result<RunReport, EngineError> {
        let started = Instant::now();
        let mut trace = Trace::new(started);
        let plan = &self.plan;
        let request = &self.request;
        let mut warnings = self.warnings.clone();

        let (out_r, out_w) = process::pipe()?;
        let (err_r, err_w) = process::pipe()?;
        let (mut stdin_relay, payload_stdin) = StdinRelay::new()?;
        // Signals are read from a signalfd and forwarded to the sandbox.
        let mut blocked = process::FORWARDED_SIGNALS.to_vec();
        blocked.push(libc::SIGCHLD);
        process::block_signals(&blocked)?;
        let sigfd = process::signalfd(&process::FORWARDED_SIGNALS)?;
        let spawned = spawn_on(
            phantom_state::ids::new_sandbox_id(),
            plan,
            self.image.as_ref(),
            request.workspace.as_deref(),
            &mut trace,
            &mut warnings,
            |workspace, no_cgroup| {
                let stdio = [payload_stdin, Some(out_w), Some(err_w)];
                Ok(ChildPayload::Ready(self.payload_context(
                    self.command(),
                    plan,
                    workspace,
                    stdio,
                    no_cgroup,
                )?))
            },
        );
        let mut spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let _ = process::reset_signals(&[]);
                return Err(e);
            }
        };

        let mut relay = Relay::new(
            out_r,
            err_r,
            request.capture_output,
            plan.limits.output_limit_bytes,
        );
        let deadline = started + Duration::from_millis(plan.limits.wall_timeout_ms);
        let proxy = (plan.network == NetworkMode::Limited)
            .then(|| proxy_config(plan, &spawned.sandbox_id, &self.test_resolve));
        let watched = watch(
            &spawned,
            &mut relay,
            &mut stdin_relay,
            &sigfd,
            deadline,
            &mut trace,
            proxy,
        );
        let (sandbox, timed_out, proxy) = match watched {
            Ok(w) => w,
            Err(e) => {
                spawned.kill();
                let _ = spawned.finish(SandboxStatus::default(), &mut trace);
                let _ = process::reset_signals(&[]);
                return Err(e);
            }
        };
        // Spawned owns the proxy from here: `finish` stops it once the init is gone.
        spawned.proxy = proxy;
        let (sandbox_id, host_uid, idmapped, isolated) = (
            spawned.sandbox_id.clone(),
            spawned.host_uid,
            spawned.idmapped,
            spawned.isolated,
        );
        let outcome = spawned.finish(sandbox, &mut trace);
        relay.drain();
        let _ = process::reset_signals(&[]);
        let Outcome {
            mut status,
            init_status,
            usage,
            wall,
            oom_killed,
            cgroup_version,
            network,
        } = outcome?;

        let exit = status.outcome(timed_out, init_status)?;
        let truncated = relay.truncated;
        let (stdout, stderr) = relay.captured();
        Ok(RunReport {
            sandbox_id,
            profile: plan.profile.clone(),
            mode: plan.mode.as_str().to_string(),
            start: "cold".into(),
            exit_code: exit.code(),
            signal: exit.signal(),
            timed_out,
            oom_killed,
            output_truncated: truncated,
            wall_ms: ms(wall),
            user_ms: ms(usage.user),
            sys_ms: ms(usage.sys),
            max_rss_kb: usage.max_rss_kb,
            stdout,
            stderr,
            isolation: IsolationReport {
                cgroup: cgroup_version.to_string(),
                landlock_abi: status.landlock_abi,
                seccomp_programs: if isolated { plan.seccomp.len() } else { 0 },
                host_uid,
                idmapped_workspace: idmapped,
            },
            warnings,
            network,
        })
    }

    pub(crate) fn payload_context(
        &self,
        command: PayloadCommand,
        plan: &Plan,
        host_workspace: &std::path::Path,
        [stdin, stdout, stderr]: [Option<OwnedFd>; 3],
        no_cgroup: bool,
    ) -> Result<PayloadContext, EngineError> {
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            unreachable!("the payload always gets output pipes");
        };
        let cstring = |s: &str| {
            CString::new(s).map_err(|_| EngineError::Usage(format!("{s:?}: contains a NUL byte")))
        };
        let argv = command
            .argv
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<Vec<_>, _>>()?;
        let term = std::env::var("TERM").ok();
        let env = payload_env(&plan.env, term.as_deref(), &command.env);
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
        let base = init::payload_base(plan);
        let cwd = match (command.cwd, isolated) {
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
            files: None,
            nofile: base.nofile,
            fsize: base.fsize,
            rlimit_nproc: no_cgroup.then_some(plan.limits.pids),
            rlimit_data: no_cgroup.then_some(plan.limits.memory_bytes),
            landlock: base.landlock,
            seccomp: base.seccomp,
            drop_caps: base.drop_caps,
            fd3: None,
            memory_merge: false,
        })
    }
}

/// What a front end watches until it exits: a cold sandbox's init, or the command
/// `phantom exec` started in a persistent sandbox.
pub(crate) trait Watched {
    /// Readable once the process exited.
    fn pidfd(&self) -> BorrowedFd<'_>;
    /// Its end of the status channel (protocol in init.rs).
    fn chan(&self) -> BorrowedFd<'_>;
    /// Forward a signal the front end received.
    fn signal(&self, signal: i32);
    /// Kill it and whatever it started (timeout).
    fn kill(&self);
}

impl Watched for crate::spawn::Spawned {
    fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
    fn chan(&self) -> BorrowedFd<'_> {
        self.chan.as_fd()
    }
    fn signal(&self, signal: i32) {
        crate::spawn::Spawned::signal(self, signal)
    }
    fn kill(&self) {
        crate::spawn::Spawned::kill(self)
    }
}

/// Relay output and input, forward signals (a third Ctrl-C kills), read the status
/// channel and enforce `deadline`, until `target` exits. With `proxy` (network
/// limited), the socket the init sends with `PROXY` is served by an egress proxy
/// helper started here. Returns what the sandbox reported, whether the deadline fired,
/// and the proxy helper (still running: stop it once the sandbox is gone).
pub(crate) fn watch(
    target: &dyn Watched,
    relay: &mut Relay,
    stdin_relay: &mut StdinRelay,
    sigfd: &OwnedFd,
    deadline: Instant,
    trace: &mut Trace,
    mut proxy_config: Option<ProxyConfig>,
) -> Result<(SandboxStatus, bool, Option<ProxyHelper>), EngineError> {
    let mut timed_out = false;
    let mut sandbox = SandboxStatus::default();
    let mut interrupts = 0;
    let mut chan_open = true;
    let mut proxy: Option<ProxyHelper> = None;
    let (pidfd, chan) = (target.pidfd(), target.chan());
    loop {
        let wait = (!timed_out).then(|| deadline.saturating_duration_since(Instant::now()));
        let ts = wait.map(|w| rustix::event::Timespec {
            tv_sec: w.as_secs() as i64,
            tv_nsec: w.subsec_nanos() as i64,
        });
        let mut fds = vec![
            PollFd::new(&pidfd, PollFlags::IN),
            PollFd::new(sigfd, PollFlags::IN),
        ];
        let chan_ix = chan_open.then(|| {
            fds.push(PollFd::new(&chan, PollFlags::IN));
            fds.len() - 1
        });
        let polled = relay.poll_fds(stdin_relay, &mut fds);
        match poll(&mut fds, ts.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(EngineError::Sys(phantom_linux::SysError::new(
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
        let relay_ready = polled.ready(&fds);
        drop(fds);
        relay.pump_ready(stdin_relay, relay_ready);
        if chan_ready {
            match channel::recv::<FromInit>(chan, channel::FROM_INIT_MAX, 1, "sandbox") {
                Err(_) => chan_open = false,
                Ok((FromInit::Proxy, mut fds)) if fds.len() == 1 && proxy_config.is_some() => {
                    // The init's listening socket on 127.0.0.1 inside: serve it from a
                    // helper in our (the host's) network namespace.
                    let listener = fds.pop().expect("one fd");
                    let config = proxy_config.take().expect("checked");
                    match ProxyHelper::start(listener, config) {
                        Ok(p) => {
                            proxy = Some(p);
                            trace.step("egress proxy started");
                        }
                        Err(e) => {
                            sandbox.setup_error = Some(format!("egress proxy: {e}"));
                            target.kill();
                        }
                    }
                }
                Ok((msg, _)) => trace.step(sandbox.record(msg)),
            }
        }
        if signal_ready {
            while let Some(sig) = process::read_signalfd(sigfd.as_fd()) {
                if sig == libc::SIGINT {
                    interrupts += 1;
                }
                // A third Ctrl-C means "stop now", whatever the payload does with it.
                target.signal(if interrupts >= 3 { libc::SIGKILL } else { sig });
            }
        }
        if init_exited {
            break;
        }
        if !timed_out && Instant::now() >= deadline {
            timed_out = true;
            target.kill();
        }
    }
    Ok((sandbox, timed_out, proxy))
}

/// The egress proxy's settings for sandbox `sandbox_id` of `plan` (cold runs and
/// warm pools).
pub(crate) fn proxy_config(
    plan: &Plan,
    sandbox_id: &str,
    test_resolve: &[(String, std::net::SocketAddr)],
) -> ProxyConfig {
    ProxyConfig {
        sandbox_id: sandbox_id.to_string(),
        profile: plan.profile.clone(),
        egress: plan.egress.clone(),
        resolve: test_resolve.to_vec(),
        log_prefix: None,
    }
}
