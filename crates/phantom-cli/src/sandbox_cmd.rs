//! Persistent sandboxes: `phantom create|exec|ps|kill|destroy|list|monitor|cp|snapshot`.
//! Each maps its flags onto a phantom-api request for the engine (as the local user)
//! and prints what it returns; files and snapshots move here, through the workspace
//! fd the engine hands out.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use phantom_api::request::{CreateRequest, ExecRequest, Quantity};
use phantom_api::{SandboxInfo, SandboxMetrics};
use phantom_engine::sandbox::{self, CpEnd, CpLimits};
use phantom_engine::{EngineClient, EngineError};
use phantom_policy::units::human_size;
use phantom_store::{SnapshotOptions, SnapshotProgress, SnapshotStore};

use crate::run::{parse_env, PolicyArgs};
use crate::store_cmd::{print_snapshot, print_table, Bar};
use crate::{age, error_line, fail, print_json};

/// An error of work done here (files, snapshots) as the engine's would be shown.
fn fail_here(e: EngineError) -> i32 {
    fail(e.to_failure())
}

fn engine() -> EngineClient {
    EngineClient::supervisor_or_private()
}

#[derive(Args, Debug)]
#[command(
    after_help = "A persistent sandbox is an init that stays alive between commands, with its
own namespaces, cgroup and workspace (/workspace, kept on the host under the state
directory). `phantom exec` runs commands in it, fenced like `phantom run` payloads.
It is retired after --timeout-idle without a running exec, and at --max-lifetime,
even when no phantom command runs; a retired sandbox shows as dead and keeps its
workspace until `phantom destroy`.

Examples:
  phantom create --name agent-1 --profile python-dev
  phantom exec agent-1 -- python3 -c 'print(1)'
  phantom create --name big --memory 2GB --timeout-idle 1h --max-lifetime 8h
  phantom create --name again --from-snapshot agent-1-20261121-190405"
)]
pub struct CreateArgs {
    /// The sandbox's name (letters, digits, - _ .).
    #[arg(long, value_name = "NAME")]
    name: String,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Run on this image (see `phantom image list`) instead of the host's /usr.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// Retire the sandbox after this long without a running exec.
    #[arg(long, value_name = "DURATION", default_value = sandbox::DEFAULT_IDLE_TIMEOUT)]
    timeout_idle: String,
    /// Retire the sandbox this long after it was created, busy or not.
    #[arg(long, value_name = "DURATION", default_value = sandbox::DEFAULT_MAX_LIFETIME)]
    max_lifetime: String,
    /// Start with the workspace of this snapshot (`phantom snapshot list`).
    #[arg(long, value_name = "TAG")]
    from_snapshot: Option<String>,
    /// Print the sandbox's record as JSON.
    #[arg(long)]
    json: bool,
}

pub fn create(args: CreateArgs) -> i32 {
    let req = CreateRequest {
        name: args.name,
        profile: args.policy.profile(),
        policy_file: args.policy.policy_file(),
        limits: args.policy.limits(),
        image: args.image,
        timeout_idle: Some(Quantity(args.timeout_idle)),
        max_lifetime: Some(Quantity(args.max_lifetime)),
        from_snapshot: args.from_snapshot,
    };
    match engine().create(crate::principal(), req) {
        Ok(created) => {
            for w in &created.warnings {
                eprintln!("phantom: warning: {w}");
            }
            if args.json {
                return print_json(&created.info);
            }
            let i = &created.info;
            println!(
                "created {} ({}, profile {}, {} mode); workspace {}",
                i.name,
                i.id,
                i.profile,
                i.mode,
                i.workspace.as_deref().unwrap_or("-")
            );
            println!(
                "  idle timeout {}, maximum lifetime {}; run commands with: phantom exec {} -- CMD",
                sandbox::human_duration(i.idle_timeout_s),
                sandbox::human_duration(i.max_lifetime_s),
                i.name
            );
            0
        }
        Err(e) => fail(e),
    }
}

#[derive(Args, Debug)]
#[command(
    after_help = "The command's exit code is returned (128+N when it was killed by signal N).
phantom's own errors exit with 2 (bad flags, unknown or dead sandbox) or 125.

Examples:
  phantom exec agent-1 -- python3 main.py
  phantom exec agent-1 --cwd /workspace/src --env DEBUG=1 -- make test
  phantom exec agent-1 --json --timeout 5s -- sh -c 'echo hi; exit 3'
  phantom exec agent-1 --background -- python3 -m http.server 8000

The command returns when its own process exits: what it started in the background
(`server &`) runs on in the sandbox — `phantom ps` lists it, `phantom kill` ends it —
and its output past that goes nowhere. --timeout, SIGTERM and SIGINT reach the
command and everything it started that is still below it or in its process group."
)]
pub struct ExecArgs {
    /// The sandbox (see `phantom list`).
    name: String,
    /// Wall-clock limit of this command (default: the sandbox's --timeout).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Set an environment variable (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the sandbox (default: /workspace).
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Capture the output and print one JSON report at the end (as `phantom run --json`).
    #[arg(long)]
    json: bool,
    /// Output cap, stdout and stderr together (e.g. 256KiB; default: the profile's).
    #[arg(long, value_name = "SIZE")]
    max_output: Option<String>,
    /// Start the command and return at once, printing its pid inside the sandbox
    /// (`phantom ps` lists it, `phantom kill` ends it). It runs on with its stdin,
    /// stdout and stderr on /dev/null and no --timeout, until it exits or the sandbox
    /// goes.
    #[arg(long, conflicts_with_all = ["timeout", "max_output"])]
    background: bool,
    /// The command and its arguments.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn exec(args: ExecArgs) -> i32 {
    if args.command.is_empty() {
        error_line(format!(
            "no command given: give it after `--`, e.g. `phantom exec {} -- python3 main.py`",
            args.name
        ));
        return 2;
    }
    let env = match parse_env(&args.env) {
        Ok(e) => e,
        Err(msg) => {
            error_line(msg);
            return 2;
        }
    };
    let req = ExecRequest {
        argv: Some(args.command),
        env,
        cwd: args.cwd,
        timeout: args.timeout.map(Quantity),
        max_output: args.max_output.map(Quantity),
        ..ExecRequest::default()
    };
    if args.background {
        return match engine().exec_background(crate::principal(), &args.name, req) {
            Ok(pid) if args.json => print_json(&phantom_api::Spawned { pid }),
            Ok(pid) => {
                println!("{pid}");
                0
            }
            Err(e) => fail(e),
        };
    }
    let mut told = crate::run::Told::new(args.json, false, "the command");
    let mut on_started = |s: &phantom_api::engine::Started| told.started(s);
    let io = crate::run::told_io(args.json, &mut on_started);
    match engine().exec(crate::principal(), &args.name, req, io) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("report serializes")
                );
            } else {
                told.ended(&report);
            }
            report.exit_code
        }
        Err(e) => fail(e),
    }
}

#[derive(Args, Debug)]
#[command(
    after_help = "Lists the commands still running in the sandbox and what commands left running
in the background (`phantom exec NAME -- sh -c 'server &'`), by their pid inside the
sandbox — the number `phantom kill` takes. The sandbox's init (pid 1) is not listed.

Examples:
  phantom ps agent-1
  phantom ps agent-1 --json"
)]
pub struct PsArgs {
    /// The sandbox.
    name: String,
    /// Print the processes as JSON: pid, cmdline, started (unix seconds), state.
    #[arg(long)]
    json: bool,
}

pub fn ps(args: PsArgs) -> i32 {
    let list = match engine().list_processes(crate::principal(), &args.name) {
        Ok(list) => list,
        Err(e) => return fail(e),
    };
    if args.json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("no processes in {} (its init only)", args.name);
        return 0;
    }
    println!("{:>7}  {:<10}  {:<15}  COMMAND", "PID", "STATE", "STARTED");
    for p in &list {
        println!(
            "{:>7}  {:<10}  {:<15}  {}",
            p.pid,
            p.state.as_str(),
            age(p.started),
            p.cmdline.join(" ")
        );
    }
    0
}

#[derive(Args, Debug)]
#[command(
    after_help = "PID is the process's pid inside the sandbox, as `phantom ps` shows it.

Examples:
  phantom kill agent-1 42
  phantom kill agent-1 42 --signal KILL"
)]
pub struct KillArgs {
    /// The sandbox.
    name: String,
    /// The process, by its pid inside the sandbox (see `phantom ps`).
    pid: i32,
    /// The signal: TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT (or its number).
    #[arg(long, short = 's', value_name = "SIGNAL", default_value = "TERM")]
    signal: phantom_api::choice::ProcessSignal,
}

pub fn kill(args: KillArgs) -> i32 {
    match engine().kill_process(crate::principal(), &args.name, args.pid, args.signal) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

#[derive(Args, Debug)]
#[command(
    after_help = "Kills everything in the sandbox and removes its cgroup, workspace and record.
A dead sandbox (its init was killed, or it was retired) is destroyed the same way.

Examples:
  phantom destroy agent-1
  phantom destroy --all
  phantom destroy --all --every-owner    # the API keys' sandboxes too"
)]
pub struct DestroyArgs {
    /// The sandbox to destroy.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    name: Option<String>,
    /// Destroy every persistent sandbox of the owner (see --owner).
    #[arg(long)]
    all: bool,
    /// With --all: every owner's sandboxes, the API keys' included.
    #[arg(long, requires = "all")]
    every_owner: bool,
    /// Print what was destroyed as JSON.
    #[arg(long)]
    json: bool,
}

pub fn destroy(args: DestroyArgs) -> i32 {
    if args.all {
        return match engine().destroy_all(crate::principal(), args.every_owner) {
            Ok(names) if args.json => print_json(&names),
            Ok(names) => {
                if names.is_empty() {
                    println!("no sandboxes to destroy");
                }
                for n in names {
                    println!("destroyed {n}");
                }
                0
            }
            Err(e) => fail(e),
        };
    }
    let name = args.name.expect("clap requires a name without --all");
    match engine().destroy(crate::principal(), &name) {
        Ok(info) if args.json => print_json(&info),
        Ok(info) => {
            println!("destroyed {} ({})", info.name, info.id);
            0
        }
        Err(e) => fail(e),
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// One JSON array of sandbox records instead of a table.
    #[arg(long)]
    json: bool,
    /// Every owner's sandboxes (the API keys' too), with an OWNER column.
    #[arg(long)]
    every_owner: bool,
}

pub fn list(args: ListArgs) -> i32 {
    match engine().list(crate::principal(), args.every_owner) {
        Ok(list) if args.json => print_json(&list),
        Ok(list) => {
            print_sandboxes(&list, args.every_owner);
            0
        }
        Err(e) => fail(e),
    }
}

fn print_sandboxes(list: &[SandboxInfo], owners: bool) {
    if list.is_empty() {
        println!("no sandboxes (create one with `phantom create --name NAME`)");
        return;
    }
    let width = list.iter().map(|i| i.name.len()).max().unwrap_or(4).max(4);
    let owner_width = if owners {
        list.iter()
            .map(|i| i.owner.to_string().len())
            .max()
            .unwrap_or(5)
            .max(5)
            + 2
    } else {
        0
    };
    let owner = |o: &dyn std::fmt::Display| {
        if owners {
            format!("{o}")
        } else {
            String::new()
        }
    };
    println!(
        "{:<owner_width$}{:<width$}  {:<12}  {:<7}  {:<12}  {:<15}  LAST USED",
        owner(&"OWNER"),
        "NAME",
        "ID",
        "STATUS",
        "PROFILE",
        "CREATED"
    );
    for i in list {
        println!(
            "{:<owner_width$}{:<width$}  {:<12}  {:<7}  {:<12}  {:<15}  {}",
            owner(&i.owner),
            i.name,
            i.id,
            i.status,
            i.profile,
            age(i.created),
            age(i.last_used)
        );
        if let Some(why) = &i.reason {
            println!("{:<owner_width$}{:<width$}  ^ {why}", "", "");
        }
    }
}

#[derive(Args, Debug)]
#[command(
    after_help = "Reads the sandbox's cgroup: CPU time (and cores in use since the last sample),
memory (current, peak, limit), processes and, on cgroup v2, I/O bytes. Needs the
sandbox to have a cgroup (created as root).

Examples:
  phantom monitor agent-1
  phantom monitor agent-1 --watch
  phantom monitor agent-1 --watch --json     # one JSON object per line"
)]
pub struct MonitorArgs {
    /// The sandbox.
    name: String,
    /// Every metric, one per line (the default is a one-line summary).
    #[arg(long)]
    metrics: bool,
    /// Refresh until interrupted (or the sandbox goes).
    #[arg(long)]
    watch: bool,
    /// Seconds between samples with --watch.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    interval: f64,
    /// JSON: one object per sample (a line each with --watch).
    #[arg(long)]
    json: bool,
}

pub fn monitor(args: MonitorArgs) -> i32 {
    if !(args.interval > 0.0 && args.interval <= 3600.0) {
        error_line("--interval: between 0 and 3600 seconds, e.g. 0.5");
        return 2;
    }
    let mut previous: Option<SandboxMetrics> = None;
    let live = args.watch && std::io::stdout().is_terminal() && !args.json;
    let engine = engine();
    loop {
        let sample = match engine.metrics(crate::principal(), &args.name, previous.as_ref()) {
            Ok(s) => s,
            Err(e) if previous.is_some() => {
                // The sandbox went while we watched: say so and stop.
                eprintln!("phantom: {}", e.for_cli());
                return 0;
            }
            Err(e) => return fail(e),
        };
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&sample).expect("metrics serialize")
            );
        } else {
            if live {
                // Clear the screen and go home: a live view, like top.
                print!("\x1b[2J\x1b[H");
            }
            print_metrics(&sample, args.metrics || live);
        }
        let _ = std::io::stdout().flush();
        if !args.watch {
            return 0;
        }
        previous = Some(sample);
        std::thread::sleep(Duration::from_secs_f64(args.interval));
    }
}

fn opt_size(v: Option<u64>) -> String {
    v.map_or("-".into(), human_size)
}

fn print_metrics(m: &SandboxMetrics, all: bool) {
    let cpu = match (m.cpu_cores, m.cpu_usage_ms) {
        (Some(c), _) => format!("{:.0}%", c * 100.0),
        (None, Some(ms)) => format!("{:.1}s total", ms / 1000.0),
        _ => "-".into(),
    };
    let pids = match (m.pids, m.pids_limit) {
        (Some(p), Some(l)) => format!("{p}/{l}"),
        (Some(p), None) => p.to_string(),
        _ => "-".into(),
    };
    if !all {
        println!(
            "{}: cpu {cpu}, memory {} of {}, pids {pids}",
            m.name,
            opt_size(m.memory_bytes),
            opt_size(m.memory_limit_bytes)
        );
        return;
    }
    println!("sandbox        {}", m.name);
    println!("cpu            {cpu}");
    println!(
        "cpu time       {}",
        m.cpu_usage_ms
            .map_or("-".into(), |ms| format!("{:.3} s", ms / 1000.0))
    );
    println!("memory         {}", opt_size(m.memory_bytes));
    println!("memory peak    {}", opt_size(m.memory_peak_bytes));
    println!("memory limit   {}", opt_size(m.memory_limit_bytes));
    println!("pids           {pids}");
    println!(
        "io read/write  {} / {}",
        opt_size(m.io_read_bytes),
        opt_size(m.io_write_bytes)
    );
    println!("oom kills      {}", m.oom_kills);
}

#[derive(Args, Debug)]
#[command(
    after_help = "One side is NAME:/workspace/PATH, the other a host path. Only the sandbox's
workspace is reachable; a path that leaves it (through `..` or a symlink) is refused,
and symlinks inside copied directories are copied as symlinks, never followed.
As docker cp: onto an existing directory the source lands inside it; SRC/. copies a
directory's contents.

Examples:
  phantom cp main.py agent-1:/workspace/
  phantom cp ./src agent-1:/workspace/src
  phantom cp agent-1:/workspace/out.csv .
  phantom cp agent-1:/workspace/. ./backup"
)]
pub struct CpArgs {
    /// Source: a host path or NAME:/workspace/PATH.
    src: String,
    /// Destination: a host path or NAME:/workspace/PATH.
    dst: String,
    /// Most bytes copied in all (e.g. 1GiB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    max_size: String,
    /// Most files, directories and symlinks copied in all.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_entries: u64,
    /// Print what was copied as JSON.
    #[arg(long)]
    json: bool,
}

pub fn cp(args: CpArgs) -> i32 {
    let max_bytes = match phantom_policy::units::parse_bytes(&args.max_size) {
        Ok(b) => b,
        Err(e) => {
            error_line(format!("--max-size {}: {e}", args.max_size));
            return 2;
        }
    };
    let limits = CpLimits {
        max_bytes,
        max_entries: args.max_entries,
    };
    let started = Instant::now();
    let (src, dst) = (CpEnd::parse(&args.src), CpEnd::parse(&args.dst));
    let name = match (&src, &dst) {
        (CpEnd::Sandbox { name, .. }, CpEnd::Host(_))
        | (CpEnd::Host(_), CpEnd::Sandbox { name, .. }) => name.clone(),
        _ => {
            error_line("phantom cp copies between the host and a sandbox: one side must be NAME:/workspace/PATH, the other a host path");
            return 2;
        }
    };
    let workspace = match engine().workspace(crate::principal(), &name) {
        Ok(fd) => fd,
        Err(f) => return fail(f),
    };
    match sandbox::cp(&src, &dst, &workspace, limits) {
        Ok(report) if args.json => print_json(&report),
        Ok(r) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "copied {} in {} files, {} dirs, {} symlinks to {} ({:.2} s)",
                human_size(r.bytes),
                r.files,
                r.dirs,
                r.symlinks,
                r.destination,
                secs
            );
            if !r.skipped.is_empty() {
                println!(
                    "  skipped {} special files (devices, fifos, sockets): {}",
                    r.skipped.len(),
                    r.skipped.join(", ")
                );
            }
            0
        }
        Err(e) => fail_here(e),
    }
}

#[derive(Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Snapshots go to the content-addressed store (`phantom store`): chunks are stored
once across snapshots and sandboxes, so a snapshot of an unchanged workspace stores
nothing new. `phantom create --name N --from-snapshot TAG` starts a sandbox on one.

Examples:
  phantom snapshot agent-1                 # tag agent-1-YYYYMMDD-HHMMSS
  phantom snapshot agent-1 --tag before-refactor
  phantom snapshot list
  phantom snapshot rm before-refactor && phantom store gc"
)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: Option<SnapshotCommand>,
    /// The sandbox whose workspace to snapshot.
    #[arg(required = true)]
    name: Option<String>,
    /// The snapshot's tag (default: NAME-YYYYMMDD-HHMMSS, UTC).
    #[arg(long, value_name = "TAG")]
    tag: Option<String>,
    /// Point an existing tag at the new snapshot.
    #[arg(long)]
    replace: bool,
    /// Print the snapshot's record as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// List the snapshots in the store.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a snapshot's tag (`phantom store gc` frees what no other tag uses).
    Rm {
        /// The snapshot's tag.
        tag: String,
    },
}

pub fn snapshot(args: SnapshotArgs) -> i32 {
    let store_fail = |e: phantom_store::SnapshotError| {
        error_line(&e);
        e.exit_code()
    };
    match args.command {
        Some(SnapshotCommand::List { json }) => {
            return match SnapshotStore::open_default()
                .and_then(|s| s.list(Some(&crate::principal().owner)))
            {
                Ok(list) if json => print_json(&list),
                Ok(list) => {
                    print_table(&list);
                    0
                }
                Err(e) => store_fail(e),
            }
        }
        Some(SnapshotCommand::Rm { tag }) => {
            return match SnapshotStore::open_default()
                .and_then(|s| s.remove(&crate::principal().owner, &tag))
            {
                Ok(()) => {
                    println!(
                        "removed {tag} (`phantom store gc` frees what no other snapshot uses)"
                    );
                    0
                }
                Err(e) => store_fail(e),
            }
        }
        None => {}
    }
    let name = args
        .name
        .expect("clap requires a name without a subcommand");
    let started = Instant::now();
    let workspace = match engine()
        .workspace(crate::principal(), &name)
        .and_then(|fd| sandbox::files::readable_dir(&fd).map_err(|e| e.to_failure()))
    {
        Ok(fd) => fd,
        Err(f) => return fail(f),
    };
    let tag = args
        .tag
        .unwrap_or_else(|| format!("{name}-{}", sandbox::utc_stamp(sandbox::now_s())));
    let bar = Bar::new(None);
    let result = SnapshotStore::open_default().and_then(|store| {
        use std::os::fd::AsFd;
        store.snapshot_at(
            workspace.as_fd(),
            &format!("{name}:/workspace"),
            &crate::principal().owner,
            &tag,
            &SnapshotOptions {
                replace: args.replace,
            },
            &mut |event| match event {
                SnapshotProgress::Read { bytes, .. } => bar.set(bytes),
                SnapshotProgress::Committing => bar.message("committing"),
            },
        )
    });
    bar.finish();
    match result {
        Ok(info) if args.json => print_json(&info),
        Ok(info) => {
            print_snapshot(&info, started);
            0
        }
        Err(e) => store_fail(e),
    }
}
