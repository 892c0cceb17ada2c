//! Phantom Fragment's MCP server: the tools agents call (`run_code`, `run_command`,
//! `list_profiles`, `get_metrics`), served over stdio or Streamable HTTP with the
//! official Rust MCP SDK (rmcp).
//!
//! Process model (DESIGN.md): this server is multi-threaded (tokio), so it never forks
//! a sandbox itself.
//! * `--mode zygote`: before any thread exists, [`run`] starts a private
//!   `phantom-supervisor` (single-threaded; the one process that clones sandboxes) on a
//!   socket in the server's 0700 scratch directory, tied to this process with
//!   `--parent-pid`. Runs go to it in-process through
//!   `phantom_engine::warm::client::try_run_captured` (a socket and SCM_RIGHTS).
//! * cold runs (`--mode cold`, or a run no pool serves) exec our own `phantom run
//!   --json --cold` — the CLI is the single-threaded spawner of the cold path.
#![forbid(unsafe_code)]

pub mod args;
pub mod engine;
mod http;
pub mod metrics;
pub mod server;
pub mod tools;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;

pub use engine::Mode;

/// Which transport the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stdio,
    Http,
}

/// Everything the flags say.
#[derive(Debug, Clone)]
pub struct Config {
    pub transport: Transport,
    pub bind: IpAddr,
    pub port: u16,
    pub mode: Mode,
    /// Built-in profiles to keep warm pools for (zygote mode).
    pub profiles: Vec<String>,
    pub pool_size: usize,
    pub max_output: u64,
    pub api_key_file: Option<PathBuf>,
    /// More `Host` names (or host:port) to accept over HTTP besides loopback and the bind
    /// address.
    pub allowed_hosts: Vec<String>,
    /// More browser origins to accept over HTTP besides http(s)://localhost, 127.0.0.1, [::1].
    pub allowed_origins: Vec<String>,
}

/// Why the server would not start (exit 2: the flags; 1: the host).
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    pub exit_code: i32,
}

fn usage(message: impl Into<String>) -> StartError {
    StartError {
        message: message.into(),
        exit_code: 2,
    }
}

fn failure(message: impl Into<String>) -> StartError {
    StartError {
        message: message.into(),
        exit_code: 1,
    }
}

/// Check the flags that do not need the host: a non-loopback bind needs an API key.
pub fn check_config(config: &Config) -> Result<(), StartError> {
    if config.transport == Transport::Http
        && !config.bind.is_loopback()
        && config.api_key_file.is_none()
    {
        return Err(usage(format!(
            "--bind {}: refusing to serve sandboxes on a non-loopback address without \
             authentication: add --api-key-file FILE (clients then send `Authorization: \
             Bearer <key>`), or bind to 127.0.0.1",
            config.bind
        )));
    }
    if config.max_output == 0 {
        return Err(usage("--max-output: must be more than 0 bytes"));
    }
    if config.mode == Mode::Zygote && (config.pool_size == 0 || config.pool_size > 64) {
        return Err(usage(format!(
            "--pool-size {}: must be 1 to 64",
            config.pool_size
        )));
    }
    Ok(())
}

/// Read the API key: the file's first line, trimmed; at least 16 characters.
pub fn read_api_key(path: &Path) -> Result<String, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("--api-key-file {}: {e}", path.display())))?;
    let key = text.lines().next().unwrap_or("").trim().to_string();
    if key.len() < 16 {
        return Err(usage(format!(
            "--api-key-file {}: the key (first line) must be at least 16 characters, e.g. \
             from `head -c 32 /dev/urandom | base64`",
            path.display()
        )));
    }
    Ok(key)
}

/// A binary next to ours (`phantom`, `phantom-supervisor`), unless `env` names one.
fn sibling(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Remove the scratch directories of servers of ours that are gone (killed with
/// SIGKILL: their supervisor stopped with them, but nobody removed the directory).
pub fn collect_stale_scratch(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::geteuid().as_raw();
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("phantom-mcp."))
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let ours =
            std::fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if ours && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            engine::remove_tree(&entry.path());
        }
    }
}

/// The server's private scratch directory (0700): temporary workspaces, stdin files,
/// the supervisor's socket. Removed when the server stops (or, after a SIGKILL, by the
/// next server that starts).
fn make_scratch() -> Result<PathBuf, StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    collect_stale_scratch(&base);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = base.join(format!("phantom-mcp.{}.{nanos:08x}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| failure(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// The private supervisor, started before any thread exists.
struct Supervisor {
    child: Child,
    socket: PathBuf,
}

impl Supervisor {
    fn start(config: &Config, scratch: &Path) -> Result<Supervisor, StartError> {
        let bin = sibling("PHANTOM_SUPERVISOR_BIN", "phantom-supervisor");
        let socket = scratch.join("supervisor.sock");
        let mut child = Command::new(&bin)
            .arg("--profiles")
            .arg(config.profiles.join(","))
            .arg("--zygote-pools")
            .arg(config.pool_size.to_string())
            .arg("--socket")
            .arg(&socket)
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            // Our stdout may be the MCP stream: the supervisor logs to stderr only.
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                failure(format!(
                    "cannot start {}: {e} (set PHANTOM_SUPERVISOR_BIN, or use --mode cold)",
                    bin.display()
                ))
            })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failure(format!(
                    "the warm-pool supervisor exited at start ({status}); see its message above, \
                     or use --mode cold"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failure(
                    "the warm-pool supervisor did not listen within 20 s; use --mode cold",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Let the pools fill before the first call, so that it is served warm (a pool
        // that cannot fill is the supervisor's to report; we go on after 10 s).
        let filled_by = Instant::now() + Duration::from_secs(10);
        while Instant::now() < filled_by {
            match phantom_engine::warm::client::status_at(&socket) {
                Ok(s) if s.pools.iter().all(|p| p.ready > 0) => break,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        Ok(Supervisor { child, socket })
    }

    fn stop(mut self) {
        // SIGTERM: it kills and reaps its sandboxes and removes their cgroups and run
        // directories, then exits.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// Run the server until its transport ends (stdin closes; SIGTERM/SIGINT). Call from
/// `main` before any thread exists: it may start the supervisor first. Returns the exit
/// code.
pub fn run(config: Config) -> i32 {
    match run_inner(config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("phantom-mcp: error: {}", e.message);
            e.exit_code
        }
    }
}

fn run_inner(config: Config) -> Result<(), StartError> {
    check_config(&config)?;
    let api_key = match &config.api_key_file {
        Some(p) => Some(read_api_key(p)?),
        None => None,
    };
    let scratch = make_scratch()?;
    // Before tokio: the supervisor is started from this (main) thread, which lives as
    // long as the server does — its parent-death signal is tied to this thread.
    let supervisor = match config.mode {
        Mode::Zygote => match Supervisor::start(&config, &scratch) {
            Ok(s) => Some(s),
            Err(e) => {
                engine::remove_tree(&scratch);
                return Err(e);
            }
        },
        Mode::Cold => None,
    };
    let engine = Arc::new(engine::Engine::new(
        config.mode,
        supervisor.as_ref().map(|s| s.socket.clone()),
        sibling("PHANTOM_BIN", "phantom"),
        config.max_output,
        scratch.clone(),
    ));
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failure(format!("tokio: {e}")))
        .and_then(|rt| {
            let r = rt.block_on(serve(&config, engine.clone(), api_key));
            // Runs still in flight (a transport that closed mid-call) end here: their
            // `phantom run` children are killed on drop, warm runs' connections close
            // (the supervisor kills their sandboxes).
            rt.shutdown_timeout(Duration::from_secs(5));
            r
        });
    if let Some(s) = supervisor {
        s.stop();
    }
    engine::remove_tree(&scratch);
    result
}

async fn serve(
    config: &Config,
    engine: Arc<engine::Engine>,
    api_key: Option<String>,
) -> Result<(), StartError> {
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {}
            }
            stop.cancel();
        });
    }
    match config.transport {
        Transport::Stdio => {
            let server = server::PhantomMcp::new(engine.clone());
            let result = match server
                .serve_with_ct(rmcp::transport::stdio(), stop.child_token())
                .await
            {
                Ok(running) => {
                    let _ = running.waiting().await;
                    Ok(())
                }
                Err(e) => Err(failure(format!("MCP over stdio: {e}"))),
            };
            engine.shut_down(Duration::from_secs(15)).await;
            result
        }
        Transport::Http => {
            let result = http::serve(config, engine.clone(), api_key, stop).await;
            engine.shut_down(Duration::from_secs(15)).await;
            result
        }
    }
}
