//! `phantom run`: the flags as a `RunRequest`, sent to the engine (the supervisor's when
//! one runs, else a private one), the output relayed here.

use std::collections::BTreeMap;

use clap::Args;
use phantom_api::choice::{Mode, NetworkMode};
use phantom_api::engine::Started;
use phantom_api::request::{Limits, Quantity, RunOptions, RunRequest};
use phantom_engine::client::{Output, RunIo, Stdin, Wake};

use crate::{error_line, fail};

/// What the engine said of a run or an exec as it started (`phantom run` and `phantom
/// exec` alike): its warnings and, with --verbose, why it did not start warm are shown
/// then; its caps name the limit in the message after a timeout, an OOM kill or a
/// truncated output.
pub(crate) struct Told {
    json: bool,
    verbose: bool,
    /// What a timeout kills: "the sandbox" (a run), "the command" (an exec).
    killed: &'static str,
    started: Option<Started>,
}

impl Told {
    pub(crate) fn new(json: bool, verbose: bool, killed: &'static str) -> Told {
        Told {
            json,
            verbose,
            killed,
            started: None,
        }
    }

    pub(crate) fn started(&mut self, s: &Started) {
        if !self.json {
            for w in &s.warnings {
                eprintln!("phantom: warning: {w}");
            }
        }
        if self.verbose {
            if let Some(why) = &s.not_warm {
                eprintln!("phantom: cold start: {why}");
            }
        }
        self.started = Some(s.clone());
    }

    /// After a run without --json: what ended it or cut its output, with the limit.
    pub(crate) fn ended(&self, report: &phantom_api::RunReport) {
        let caps = self.started.as_ref();
        if report.timed_out {
            eprintln!(
                "phantom: timed out after {} ms: {} was killed (raise it with --timeout)",
                caps.map_or(report.wall_ms.round() as u64, |c| c.timeout_ms),
                self.killed
            );
        }
        if report.oom_killed {
            match caps {
                Some(c) => eprintln!(
                    "phantom: out of memory: the {} byte limit was hit (raise it with --memory)",
                    c.memory_bytes
                ),
                None => eprintln!("phantom: out of memory: the memory limit was hit"),
            }
        }
        if report.disk_limit_hit {
            eprintln!(
                "phantom: disk full: {} reached its size limit (raise resources.tmp in a policy for /tmp, --memory for the workspace)",
                report.full_filesystems.join(", ")
            );
        }
        if report.output_truncated {
            match caps {
                Some(c) => eprintln!("phantom: output truncated at {} bytes", c.output_limit),
                None => eprintln!("phantom: output truncated"),
            }
        }
    }
}

/// The stdio of a run or an exec from the command line: the terminal's, or captured
/// into the report with --json; signals forwarded.
pub(crate) fn told_io<'a>(json: bool, on_started: &'a mut dyn FnMut(&Started)) -> RunIo<'a> {
    RunIo {
        stdin: Stdin::Inherit,
        output: if json {
            Output::capture()
        } else {
            Output::Inherit
        },
        wake: Wake::Signals,
        on_started: Some(on_started),
    }
}

/// Exit code for failures of phantom itself (not of the payload), as docker uses.
pub const EXIT_PHANTOM_FAILED: i32 = 125;

/// Where the policy comes from and the limits put on top of it: `phantom run` and
/// `phantom create` take the same.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Profile to run under: a built-in or one of config.yaml's (see `phantom profile
    /// list`; default: AISBX_DEFAULT_PROFILE, else config.yaml's default_profile).
    #[arg(long, value_name = "NAME", conflicts_with = "policy")]
    profile: Option<String>,
    /// Policy file in the DSL (see `phantom profile show default` for the format).
    #[arg(long, value_name = "FILE.yaml")]
    policy: Option<String>,
    /// Isolation: direct (none, limits only), sandbox (default), hardened.
    #[arg(long, value_name = "MODE")]
    mode: Option<Mode>,
    /// Wall-clock limit; the whole process tree is killed when it fires (e.g. 30s, 500ms).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Memory limit (e.g. 512MB, 1GiB); exceeding it gets the command OOM-killed.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// CPU quota in CPUs (e.g. 1.0, 0.5).
    #[arg(long, value_name = "CPUS")]
    cpus: Option<String>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// Network: none (no interface up), loopback-only (lo up), limited (lo, and an
    /// egress proxy at 127.0.0.1:3128 inside that connects only where the profile's
    /// network.allow says) or host (the host's network; refused in hardened mode).
    #[arg(long, value_name = "MODE")]
    network: Option<NetworkMode>,
    /// A host the egress proxy may connect to, instead of the profile's network.allow
    /// (`pypi.org`, `*.pythonhosted.org`, `api.example.com:443`, `10.0.0.5`);
    /// repeatable. The network is then limited.
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_host: Vec<String>,
    /// A host refused even when an --allow-host entry lets it through (instead of
    /// the profile's network.deny); repeatable, only with --allow-host.
    #[arg(long = "deny-host", value_name = "HOST")]
    deny_host: Vec<String>,
}

impl PolicyArgs {
    /// The profile named, else (without --policy) AISBX_DEFAULT_PROFILE or config.yaml's
    /// `default_profile` (none: the request's default).
    pub fn profile(&self) -> Option<String> {
        self.profile.clone().or_else(|| {
            self.policy
                .is_none()
                .then(crate::config_cmd::default_profile)
                .flatten()
        })
    }

    /// The policy file named, made absolute (the engine may run elsewhere than here).
    pub fn policy_file(&self) -> Option<String> {
        self.policy.as_deref().map(absolute)
    }

    /// The limits and settings given on top of the profile's.
    pub fn limits(&self) -> Limits {
        Limits {
            timeout: self.timeout.as_deref().map(Quantity::from),
            memory: self.memory.as_deref().map(Quantity::from),
            cpus: self.cpus.as_deref().map(Quantity::from),
            pids: self.pids,
            max_output: None,
            network: self.network,
            mode: self.mode,
            allow_hosts: self.allow_host.clone(),
            deny_hosts: self.deny_host.clone(),
        }
    }
}

/// `path` made absolute against the current directory (the engine resolves nothing
/// relative to the caller's).
pub fn absolute(path: &str) -> String {
    std::path::absolute(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.to_string())
}

#[derive(Args, Debug)]
#[command(
    after_help = "The command's exit code is returned (128+N when it was killed by signal N).
phantom's own errors exit with 2 (bad flags or policy) or 125 (the sandbox could not start).

Sandbox mode (the default) gives the command: new user, pid, mount, network, ipc, uts and
cgroup namespaces; a tmpfs root with read-only /usr, /bin, /lib and a few /etc files; a
private /tmp; the workspace at /workspace; only `lo`; no capabilities; seccomp and Landlock;
cgroup limits on memory, processes and CPU; a wall-clock timeout; and an output cap.

Examples:
  phantom run -- python3 -c 'print(1)'
  echo 'print(2+2)' | phantom run -- python3 -
  phantom run --json --timeout 2s -- sleep 10        # timed_out: true
  phantom run --profile strict --env DEBUG=1 -- sh -c 'echo $DEBUG'
  phantom run --image python:3.12-slim -- python3 -c 'import sys; print(sys.version)'"
)]
pub struct RunArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Output cap: bytes of stdout+stderr kept before the output is cut (and reported
    /// as truncated), e.g. 1MiB (default: the profile's `resources.output`).
    #[arg(long, value_name = "SIZE")]
    max_output: Option<String>,
    /// Host directory bound read-write at /workspace (default: a fresh temporary one,
    /// removed after the run). Files written there belong to you on the host.
    #[arg(long, value_name = "DIR")]
    workspace: Option<String>,
    /// Set an environment variable inside (repeatable). Nothing else from your
    /// environment is passed in but TERM.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the sandbox (default: the image's WorkingDir, else
    /// /workspace).
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Run on this image (see `phantom image list`) instead of the host's /usr: its
    /// root read-only, its Env, WorkingDir, Entrypoint and Cmd as Docker applies them.
    /// Without a command after `--`, the image's Cmd runs. Served warm when
    /// phantom-supervisor keeps a pool of the profile on this image (`--pool
    /// PROFILE:IMAGE`).
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// Capture the output and print one JSON report at the end: exit_code, signal,
    /// timed_out, oom_killed, output_truncated, wall_ms, user_ms, sys_ms, max_rss_kb,
    /// stdout, stderr, sandbox_id, profile, mode, isolation, warnings, and in limited
    /// network mode `network`: the connections the proxy made and refused.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to FILE when the run ends, while the output goes to
    /// stdout and stderr as usual (for front ends that stream the output).
    #[arg(long, value_name = "FILE")]
    report_file: Option<std::path::PathBuf>,
    /// Never take a pooled sandbox: start a fresh one.
    #[arg(long)]
    cold: bool,
    /// Say why a run was not served warm, and (network limited) each decision of the
    /// egress proxy. AISBX_DEBUG=1 does the same.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// The command and its arguments: after the options, with or without `--`
    /// (`phantom run python3 -c 'print(1)'`); everything from the command on is its
    /// own, flags included.
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn parse_env(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!(
                "--env {item}: expected NAME=VALUE, e.g. --env DEBUG=1"
            )),
        })
        .collect()
}

/// The files of this directory that `command`'s arguments (not the program itself)
/// name by a relative path — `script.py`, `data/in.csv`, `./x.py` — as `files` of the
/// run: regular UTF-8 files, within the `files` limits; others are left out (said with
/// `verbose`).
fn named_files(command: &[String], verbose: bool) -> Vec<phantom_api::request::FileSpec> {
    use phantom_api::request::{FileSpec, MAX_FILES, MAX_FILES_BYTES};
    let mut files: Vec<FileSpec> = Vec::new();
    let mut total = 0usize;
    for arg in command.iter().skip(1) {
        let rel = arg.strip_prefix("./").unwrap_or(arg);
        let path = std::path::Path::new(rel);
        let plain = !rel.is_empty()
            && !rel.starts_with('-')
            && path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || files.iter().any(|f| f.path == rel) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let too_big = meta.len() as usize > MAX_FILES_BYTES - total || files.len() >= MAX_FILES;
        let content = if too_big {
            None
        } else {
            std::fs::read(path)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        };
        match content {
            Some(content) => {
                if verbose {
                    eprintln!("phantom: {rel} copied into the run's workspace (/workspace/{rel}); changes stay in the sandbox (use --workspace DIR to share a directory)");
                }
                total += content.len();
                files.push(FileSpec {
                    path: rel.to_string(),
                    content,
                });
            }
            None if verbose => eprintln!(
                "phantom: {rel} not copied into the run's workspace ({}); use --workspace DIR",
                if too_big {
                    "too large"
                } else {
                    "not UTF-8 text"
                }
            ),
            None => {}
        }
    }
    files
}

pub fn run(mut args: RunArgs) -> i32 {
    args.verbose |= crate::config_cmd::debug();
    let env = match parse_env(&args.env) {
        Ok(e) => e,
        Err(msg) => {
            error_line(msg);
            return 2;
        }
    };
    if args.command.is_empty() && args.image.is_none() {
        error_line("no command given: give it after the options, e.g. `phantom run python3 main.py` (or after `--`)");
        return 2;
    }
    let mut command = args.command;
    // Mode wasm (asked here, or perhaps by a policy file): the module is a file of the
    // caller's, and the engine does not share this directory.
    if let Some(first) = command.first_mut() {
        let module = first.ends_with(".wasm") || first.ends_with(".wat");
        let wasm = args.policy.limits().mode == Some(Mode::Wasm)
            || (args.policy.policy.is_some() && std::path::Path::new(first).is_file());
        if module && wasm && !first.starts_with('/') {
            *first = absolute(first);
        }
    }
    // `phantom run python3 script.py` in the script's directory, as the seed README
    // shows it: without --workspace the workspace is fresh and empty, so the files the
    // arguments name here are copied into it (the rest of this directory is not).
    let files = if args.workspace.is_none() && args.policy.limits().mode != Some(Mode::Wasm) {
        named_files(&command, args.verbose)
    } else {
        Vec::new()
    };
    let request = RunRequest {
        argv: (!command.is_empty() || args.image.is_none()).then_some(command),
        options: RunOptions {
            env,
            profile: args.policy.profile(),
            policy_file: args.policy.policy_file(),
            limits: Limits {
                max_output: args.max_output.as_deref().map(Quantity::from),
                ..args.policy.limits()
            },
            image: args.image,
            workspace: args.workspace.as_deref().map(absolute),
            cwd: args.cwd,
            files,
            ..RunOptions::default()
        },
        ..RunRequest::default()
    };
    let engine = phantom_engine::EngineClient::supervisor_or_private();
    if args.verbose {
        if let Some(note) = &engine.note {
            eprintln!("phantom: cold start: {note}");
        }
    }
    let mut told = Told::new(args.json, args.verbose, "the sandbox");
    let mut on_started = |s: &Started| told.started(s);
    let io = told_io(args.json, &mut on_started);
    let report = match engine.run(crate::principal(), request, args.cold, io) {
        Ok(r) => r,
        Err(f) => return fail(f),
    };
    if let Some(path) = &args.report_file {
        let json = serde_json::to_string(&report).expect("report serializes");
        if let Err(e) = std::fs::write(path, json) {
            error_line(format!("--report-file {}: {e}", path.display()));
            return EXIT_PHANTOM_FAILED;
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
        return report.exit_code;
    }
    told.ended(&report);
    if let (Some(wasm), true) = (&report.wasm, args.verbose) {
        eprintln!(
            "phantom: wasm: module {} in {:.1} ms",
            if wasm.cached {
                "loaded from the compile cache"
            } else {
                "compiled (cached for the next run)"
            },
            wasm.load_ms
        );
    }
    if let Some(net) = &report.network {
        if args.verbose {
            for c in &net.connections {
                eprintln!(
                    "phantom: proxy [{}]: {} {} {}:{}{}{}",
                    report.sandbox_id,
                    c.decision,
                    c.protocol,
                    c.host,
                    c.port,
                    c.address
                        .as_ref()
                        .map(|a| format!(" via {a}"))
                        .unwrap_or_default(),
                    c.reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default(),
                );
            }
        }
        if args.verbose || net.refused > 0 {
            eprintln!(
                "phantom: proxy [{}]: {} connection(s) made, {} refused by the policy, {} failed",
                report.sandbox_id, net.allowed, net.refused, net.failed
            );
        }
    }
    report.exit_code
}
