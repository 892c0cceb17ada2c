//! phantom-oci: Phantom Fragment as an OCI runtime, with runc's command line as
//! containerd's `containerd-shim-runc-v2` calls it (`BinaryName`, or
//! `ctr run --runc-binary`). This is the front end only: the command line, the
//! state directory (`--root/ID/state.json`), the state JSON and the log file. The
//! container itself is set up by phantom-engine's `oci` module.
//!
//! Single-threaded on purpose: `create` and `exec` fork, and never from a
//! multi-threaded process.
#![forbid(unsafe_code)]

mod state;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use phantom_engine::oci::{self, OciError};

use state::State;

#[derive(Parser, Debug)]
#[command(
    name = "phantom-oci",
    version,
    about = "Phantom Fragment's OCI runtime (runc-compatible command line)"
)]
struct Cli {
    /// Directory of the containers' state.
    #[arg(long, global = true, default_value = "/run/phantom-oci")]
    root: PathBuf,
    /// Where errors are logged (containerd's shim reads the last one).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// `json` or `text`.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Use systemd to manage cgroups (refused: phantom-oci writes cgroupfs).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Also log each command line to --log (level debug).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set up a container and leave its init waiting for `start`.
    Create {
        #[command(flatten)]
        args: CreateArgs,
    },
    /// Run the user's process of a created container.
    Start { id: String },
    /// Create and start, then wait for the container (like `runc run`).
    Run {
        #[command(flatten)]
        args: CreateArgs,
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// The OCI state of a container, as JSON.
    State { id: String },
    /// Send a signal to the container's init (or, with --all, every process).
    Kill {
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Remove a container's state and cgroup.
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Run another process in a running container.
    Exec {
        #[arg(long, short = 'p')]
        process: PathBuf,
        #[arg(long, short = 'd')]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long, short = 't')]
        tty: bool,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        id: String,
    },
    /// The processes of a container.
    Ps {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        id: String,
        /// ps(1) options (ignored with --format json).
        #[arg(trailing_var_arg = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's resource limits.
    Update {
        /// A LinuxResources JSON file, or `-` for stdin.
        #[arg(long, short = 'r')]
        resources: PathBuf,
        id: String,
    },
    /// What this runtime supports, as JSON.
    Features,
    /// The containers under --root.
    List {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.debug {
        let args: Vec<String> = std::env::args().collect();
        log_line(&cli, "debug", &format!("{args:?}"));
    }
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            log_error(&cli, &e.0);
            eprintln!("phantom-oci: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The error where containerd's shim looks for it: the last line of `--log`.
fn log_error(cli: &Cli, msg: &str) {
    log_line(cli, "error", msg);
}

/// A warning (a failed poststart or poststop hook): to stderr and `--log`.
fn log_warning(cli: &Cli, msg: &str) {
    eprintln!("phantom-oci: warning: {msg}");
    log_line(cli, "warning", msg);
}

fn log_line(cli: &Cli, level: &str, msg: &str) {
    let Some(path) = &cli.log else { return };
    let line = if cli.log_format == "json" {
        serde_json::json!({"level": level, "msg": msg, "time": state::now_rfc3339()}).to_string()
    } else {
        format!(
            "time=\"{}\" level={level} msg={msg:?}",
            state::now_rfc3339()
        )
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn check_id(id: &str) -> Result<(), OciError> {
    if id.is_empty()
        || id.starts_with('.')
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
    {
        return Err(OciError(format!(
            "invalid container id {id:?}: use letters, digits and - _ . + (not starting with .)"
        )));
    }
    Ok(())
}

fn write_pid_file(path: &Path, pid: i32) -> Result<(), OciError> {
    // Written whole then renamed: the shim may read it as soon as it exists.
    let tmp = path.with_extension("phantom-tmp");
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| OciError(format!("--pid-file {}: {e}", path.display())))
}

fn run(cli: &Cli) -> Result<u8, OciError> {
    if cli.systemd_cgroup {
        return Err(OciError(
            "--systemd-cgroup is not supported: phantom-oci manages cgroupfs paths; set SystemdCgroup = false in containerd's runtime options".into(),
        ));
    }
    if cli.log_format != "json" && cli.log_format != "text" {
        return Err(OciError(format!(
            "--log-format {:?}: use json or text",
            cli.log_format
        )));
    }
    match &cli.command {
        Command::Create { args } => {
            create(cli, args)?;
            Ok(0)
        }
        Command::Start { id } => {
            let mut st = State::load(&cli.root, id)?;
            if st.started {
                return Err(OciError(format!("container {id} is already started")));
            }
            if !oci::alive(st.pid, st.start_time) {
                return Err(OciError(format!(
                    "container {id} is stopped; it cannot be started"
                )));
            }
            oci::start(&st.start_socket(&cli.root))?;
            st.started = true;
            st.save(&cli.root)?;
            let _ = std::fs::remove_file(st.start_socket(&cli.root));
            for w in oci::poststart(&st.bundle, id, st.pid) {
                log_warning(cli, &w);
            }
            Ok(0)
        }
        Command::Run { args, detach } => {
            let id = &args.id;
            create(cli, args)?;
            let mut st = State::load(&cli.root, id)?;
            oci::start(&st.start_socket(&cli.root))?;
            st.started = true;
            st.save(&cli.root)?;
            for w in oci::poststart(&st.bundle, id, st.pid) {
                log_warning(cli, &w);
            }
            if *detach {
                return Ok(0);
            }
            let code = oci::wait_child(st.pid);
            delete(cli, id, true)?;
            Ok(code)
        }
        Command::State { id } => {
            let st = State::load(&cli.root, id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&st.oci_state(&cli.root)).expect("json")
            );
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let st = State::load(&cli.root, id)?;
            let sig = oci::parse_signal(signal)?;
            if *all {
                for pid in st.cgroup().pids() {
                    let _ = oci::signal(pid, sig);
                }
                return Ok(0);
            }
            if !oci::alive(st.pid, st.start_time) {
                // The words containerd's shim matches ("container not running").
                return Err(OciError(format!("container {id}: container not running")));
            }
            oci::signal(st.pid, sig)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            delete(cli, id, *force)?;
            Ok(0)
        }
        Command::Exec {
            process,
            detach,
            pid_file,
            tty,
            console_socket,
            preserve_fds,
            id,
        } => {
            let st = State::load(&cli.root, id)?;
            if !oci::alive(st.pid, st.start_time) {
                return Err(OciError(format!("container {id}: container not running")));
            }
            let text = if process == Path::new("-") {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| OciError(format!("--process -: {e}")))?;
                s
            } else {
                std::fs::read_to_string(process)
                    .map_err(|e| OciError(format!("--process {}: {e}", process.display())))?
            };
            let proc_spec: oci::Process = serde_json::from_str(&text)
                .map_err(|e| OciError(format!("--process {}: {e}", process.display())))?;
            let req = oci::ExecRequest {
                bundle: st.bundle.clone(),
                init_pid: st.pid,
                cgroup_path: st.cgroup_path.clone(),
                cgroup_v2_only: st.cgroup_v2_only,
                process: proc_spec,
                tty: *tty,
                console_socket: console_socket.clone(),
                preserve_fds: *preserve_fds,
            };
            let pid = oci::exec(&req)?;
            if let Some(p) = pid_file {
                write_pid_file(p, pid)?;
            }
            if *detach {
                return Ok(0);
            }
            Ok(oci::wait_child(pid))
        }
        Command::Ps {
            format,
            id,
            ps_args: _,
        } => {
            let st = State::load(&cli.root, id)?;
            let pids = st.cgroup().pids();
            if format == "json" {
                println!("{}", serde_json::to_string(&pids).expect("json"));
            } else {
                println!("PID");
                for p in pids {
                    println!("{p}");
                }
            }
            Ok(0)
        }
        Command::Pause { id } | Command::Resume { id } => {
            let st = State::load(&cli.root, id)?;
            if !oci::alive(st.pid, st.start_time) {
                return Err(OciError(format!("container {id}: container not running")));
            }
            let pause = matches!(cli.command, Command::Pause { .. });
            st.cgroup().freeze(pause)?;
            Ok(0)
        }
        Command::Update { resources, id } => {
            let st = State::load(&cli.root, id)?;
            let text = if resources == Path::new("-") {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| OciError(format!("--resources -: {e}")))?;
                s
            } else {
                std::fs::read_to_string(resources)
                    .map_err(|e| OciError(format!("--resources {}: {e}", resources.display())))?
            };
            let r: oci::LinuxResources =
                serde_json::from_str(&text).map_err(|e| OciError(format!("--resources: {e}")))?;
            st.cgroup().apply(&r)?;
            Ok(0)
        }
        Command::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&state::features()).expect("json")
            );
            Ok(0)
        }
        Command::List { format, quiet } => {
            let all = State::list(&cli.root);
            if *quiet {
                for st in &all {
                    println!("{}", st.id);
                }
            } else if format == "json" {
                let v: Vec<_> = all.iter().map(|s| s.oci_state(&cli.root)).collect();
                println!("{}", serde_json::to_string(&v).expect("json"));
            } else {
                println!("ID\tPID\tSTATUS\tBUNDLE");
                for st in &all {
                    println!(
                        "{}\t{}\t{}\t{}",
                        st.id,
                        st.pid,
                        st.status(),
                        st.bundle.display()
                    );
                }
            }
            Ok(0)
        }
    }
}

/// What `create` and `run` take.
#[derive(Args, Debug)]
struct CreateArgs {
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

fn create(cli: &Cli, args: &CreateArgs) -> Result<(), OciError> {
    let CreateArgs {
        bundle,
        pid_file,
        console_socket,
        no_pivot,
        no_new_keyring,
        preserve_fds,
        id,
    } = args;
    let (pid_file, console_socket) = (pid_file.as_deref(), console_socket.as_deref());
    check_id(id)?;
    let bundle = std::fs::canonicalize(bundle)
        .map_err(|e| OciError(format!("--bundle {}: {e}", bundle.display())))?;
    let dir = State::create_dir(&cli.root, id)?;
    let req = oci::CreateRequest {
        id: id.to_string(),
        bundle: bundle.clone(),
        start_socket: dir.join("start.sock"),
        console_socket: console_socket.map(Path::to_path_buf),
        preserve_fds: *preserve_fds,
        no_pivot: *no_pivot,
        no_new_keyring: *no_new_keyring,
    };
    // A first state as soon as the cgroup exists (pid 0: "creating"), so that
    // `delete` can clean up after a create that was killed half-way.
    let mut record = |cgroup_path: &str, v2_only: bool| {
        State {
            id: id.to_string(),
            pid: 0,
            start_time: 0,
            bundle: bundle.clone(),
            cgroup_path: cgroup_path.to_string(),
            cgroup_v2_only: v2_only,
            started: false,
            created: state::now_rfc3339(),
            annotations: Default::default(),
        }
        .save(&cli.root)
    };
    let created = match oci::create(&req, &mut record) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    for w in &created.warnings {
        log_warning(cli, w);
    }
    let st = State {
        id: id.to_string(),
        pid: created.pid,
        start_time: created.start_time,
        bundle,
        cgroup_path: created.cgroup_path,
        cgroup_v2_only: created.cgroup_v2_only,
        started: false,
        created: state::now_rfc3339(),
        annotations: created.annotations,
    };
    st.save(&cli.root)?;
    if let Some(p) = pid_file {
        write_pid_file(p, created.pid)?;
    }
    Ok(())
}

fn delete(cli: &Cli, id: &str, force: bool) -> Result<(), OciError> {
    let st = match State::load(&cli.root, id) {
        Ok(st) => st,
        // A container whose create failed half-way has a directory but no state;
        // with --force an unknown container is no error (as with runc: containerd's
        // cleanup of a dead shim deletes what `ctr run --rm` already deleted).
        Err(e) => {
            if force {
                let _ = std::fs::remove_dir_all(cli.root.join(id));
                return Ok(());
            }
            return Err(e);
        }
    };
    let alive = oci::alive(st.pid, st.start_time);
    if alive && st.started && !force {
        return Err(OciError(format!(
            "container {id} is running: stop it first (kill) or pass --force"
        )));
    }
    let cgroup = st.cgroup();
    if alive {
        // A created (never started) container is deleted by killing its init, as
        // runc does; a running one only with --force.
        if cgroup.frozen() {
            let _ = cgroup.freeze(false);
        }
        let _ = oci::signal(st.pid, libc_sigkill());
        oci::wait_gone(st.pid, st.start_time, std::time::Duration::from_secs(5));
    }
    // Whatever is left in the cgroup (a container without its own pid namespace).
    for pid in cgroup.pids() {
        let _ = oci::signal(pid, libc_sigkill());
    }
    let left = cgroup.remove();
    let _ = std::fs::remove_dir_all(cli.root.join(id));
    for w in oci::poststop(&st.bundle, id) {
        log_warning(cli, &w);
    }
    if !left.is_empty() {
        return Err(OciError(format!(
            "container {id} deleted, but its cgroup could not be removed: {}",
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

fn libc_sigkill() -> i32 {
    9
}
