//! Phantom Fragment's MCP server: the tools agents call (`run_code`, `run_command`,
//! the persistent-sandbox tools, `list_profiles`, `get_metrics`), served over stdio or
//! Streamable HTTP with the official Rust MCP SDK (rmcp) and typed parameters.
//!
//! Process model (DESIGN.md): this server is multi-threaded (tokio), so it never forks
//! a sandbox itself. Before any thread exists, [`run`] forks its own engine
//! (`phantom_engine::server::EngineProcess`: the single-threaded process that alone
//! clones sandboxes) on a socket in the server's 0700 scratch directory — with warm
//! pools of `--profiles` in `--mode zygote`, none in `--mode cold` — and every tool
//! call goes to it through `phantom_engine::EngineClient` (a socket and SCM_RIGHTS).
//!
//! Without `--api-key-file` the server acts for the local user; with one, for that key
//! (its own sandboxes and snapshots; a key of `phantom keys add` with its grants, the
//! same tenant the HTTP API serves). The local user and a key outside the key store get
//! the grants of a default API key: the built-in profiles, networks none, loopback-only
//! and limited, nothing that reaches the host.
#![forbid(unsafe_code)]

pub mod engine;
pub mod http;
pub mod metrics;
pub mod params;
pub mod server;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
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

/// Remove the scratch directories of servers of ours that are gone (killed with
/// SIGKILL: their engine stopped with them, but nobody removed the directory).
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
            remove_tree(&entry.path());
        }
    }
}

/// The server's private scratch directory (0700): its engine's socket. Removed when the server stops (or, after a SIGKILL, by the
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

/// Remove a tree, even where permissions were taken away.
pub fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    fn open_up(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if meta.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// The server's own engine, forked before any thread exists: warm pools of
/// `--profiles` in zygote mode (it waits, up to 10 s, until each has a sandbox ready,
/// so that the first call is served warm), none in cold mode.
fn start_engine(
    config: &Config,
    scratch: &Path,
) -> Result<phantom_engine::server::EngineProcess, StartError> {
    use phantom_engine::server::{self, EngineProcess};
    let pools = match config.mode {
        Mode::Zygote => server::pools_for(
            &config.profiles,
            &[],
            &[],
            config.pool_size,
            server::POOL_FLOOR,
        )
        .map_err(|e| usage(format!("--profiles: {e}")))?,
        Mode::Cold => Vec::new(),
    };
    let engine = EngineProcess::start(server::Config {
        name: "phantom-mcp",
        pools,
        spares: Vec::new(),
        thresholds: None,
        socket: scratch.join("engine.sock"),
        precompile: false,
    })
    .map_err(|e| failure(format!("the engine did not start: {e}")))?;
    if config.mode == Mode::Zygote {
        let client = engine.client();
        let filled_by = Instant::now() + Duration::from_secs(10);
        while Instant::now() < filled_by {
            match client.pools() {
                Ok(s) if s.pools.iter().all(|p| p.serves_warm()) => break,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
    }
    Ok(engine)
}

/// Whom the tools act for. Without `--api-key-file`: the local user. With one: that
/// key — when it is a key of the state directory's store (`phantom keys add`), as that
/// key, with its grants, so that MCP and the HTTP API see the same tenant's sandboxes;
/// else (a secret of the operator's own) as the key its hash names.
fn principal(api_key: Option<&str>) -> Result<phantom_api::access::Principal, StartError> {
    use phantom_api::access::{Grants, Owner, Principal};
    // A default key's grants (nothing that reaches the host), with the longer wall
    // clock an agent's tool call may ask for.
    let mut grants = Grants::default_key();
    grants.max.timeout_ms = Some(MAX_TIMEOUT_MS);
    let Some(key) = api_key else {
        return Ok(Principal {
            owner: Owner::Local,
            grants,
        });
    };
    if phantom_state::keys::looks_like_key(key) {
        let keys = phantom_state::keys::Keys::open_default()
            .map_err(|e| failure(format!("--api-key-file: the key store: {e}")))?;
        return match keys.verify(key) {
            Ok(Ok(known)) => Ok(Principal {
                owner: Owner::Key(known.id),
                grants: known.grants,
            }),
            Ok(Err(e)) => Err(usage(format!(
                "--api-key-file: {e} (a phantom key must be one `phantom keys list` shows, not revoked)"
            ))),
            Err(e) => Err(failure(format!("--api-key-file: the key store: {e}"))),
        };
    }
    Ok(Principal {
        owner: Owner::Key(key_id(key)),
        grants,
    })
}

/// The longest `timeout` a tool call may ask for: 10 minutes.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// A stable id for a key read from a file: the first 12 hex digits of its BLAKE3 (as
/// the HTTP API names the keys of its `--api-keys` file).
fn key_id(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex()[..12].to_string()
}

/// Run the server until its transport ends (stdin closes; SIGTERM/SIGINT). Call from
/// `main` before any thread exists: it forks its engine first. Returns the exit
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
    let principal = principal(api_key.as_deref())?;
    let scratch = make_scratch()?;
    // Before tokio: the engine is forked from this (main) thread, which lives as long
    // as the server does — its parent-death signal is tied to this thread.
    let engine_process = match start_engine(&config, &scratch) {
        Ok(e) => e,
        Err(e) => {
            remove_tree(&scratch);
            return Err(e);
        }
    };
    let engine = Arc::new(engine::Engine::new(
        config.mode,
        engine_process.client(),
        engine::Acting::As(principal),
        config.max_output,
    ));
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failure(format!("tokio: {e}")))
        .and_then(|rt| {
            let r = rt.block_on(serve(&config, engine.clone(), api_key));
            // Runs still in flight (a transport that closed mid-call) end here: their
            // connections to the engine close, and the engine kills their sandboxes.
            rt.shutdown_timeout(Duration::from_secs(5));
            r
        });
    // SIGTERM: the engine kills and reaps its sandboxes, removes their cgroups and run
    // directories, and exits; then the scratch directory goes.
    drop(engine_process);
    remove_tree(&scratch);
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
