//! `phantom-supervisor`: the engine — the one process that starts sandboxes, with warm
//! pools — on a local socket that `phantom`, the MCP server and the HTTP API are
//! clients of; with `--bind ADDR`, also the HTTP API (phantom-server).
//!
//! Runs in the foreground, logs to stderr, and stops on SIGTERM/SIGINT/SIGHUP — use a
//! service manager to keep it running. The engine is single-threaded on purpose: it
//! forks sandboxes. With `--bind`, the HTTP server (tokio, threads) runs in this
//! process and the engine in a child forked before any thread exists.
#![forbid(unsafe_code)]

#[path = "completions.rs"]
mod completions;
mod http;

use clap::{CommandFactory, Parser, ValueEnum};
use phantom_engine::pressure;
use phantom_engine::server;

/// `--mcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum McpMode {
    On,
    Off,
}

/// Keep warm pools of sandboxes ready for `phantom run`.
#[derive(Parser, Debug)]
#[command(name = "phantom-supervisor", version, about, long_about = None)]
#[command(
    after_help = "Each pooled sandbox is already through clone3, its mounts and pivot_root; a run
takes one, the init execs the payload, and the pool refills. A sandbox serves one run
only, so warm runs are as isolated as cold ones.

`phantom run` uses the supervisor's socket when one is running (root:
/run/phantom/supervisor.sock; others: $XDG_RUNTIME_DIR/phantom/supervisor.sock, else
/dev/shm/phantom-UID/supervisor.sock) and falls back to a cold start otherwise.

A pool on an image (`--pool PROFILE:IMAGE`) serves `phantom run --profile PROFILE
--image IMAGE`; its sandboxes are built on the image's root as a cold run's is. The
image is read from the supervisor's store (the same user and PHANTOM_STATE_DIR as
`phantom run`) when it starts; re-importing the image under the same name makes the
pool's unused sandboxes stale: the next run on it starts cold and the pool refills on
the new root.

Examples:
  phantom-supervisor --profiles default,python-dev --zygote-pools 4
  phantom-supervisor --pool default --pool default:alpine --zygote-pools 2
  phantom-supervisor --pool default:python:3.12-slim   # image python:3.12-slim
  phantom-supervisor --psi-aware --psi-memory 30
  phantom-supervisor --profile-compilation aot --bind 127.0.0.1:8080 --metrics-mode none
  phantom-supervisor --bind 127.0.0.1:8080              # REST /api/v2, MCP /mcp/v1/
  phantom-supervisor --e2b-bind 127.0.0.1:3000          # E2B's SDKs: E2B_API_URL=http://127.0.0.1:3000
  phantom-supervisor --health                           # exit 0 when one answers
  phantom pool status"
)]
pub(crate) struct Args {
    /// Profiles to keep pools for on the host root: built-ins or config.yaml's
    /// (comma-separated; with neither this nor --pool: every built-in profile with
    /// `performance.zygote: true` — default and python-dev).
    #[arg(long, value_delimiter = ',')]
    pub(crate) profiles: Vec<String>,
    /// Keep a pool of this built-in profile, on the host root (`default`) or on an
    /// image of the store (`default:alpine`: the first `:` ends the profile).
    /// Repeatable; adds to --profiles.
    #[arg(long = "pool", value_name = "PROFILE[:IMAGE]")]
    pub(crate) pool: Vec<String>,
    /// Serve this built-in profile's runs by forks of a zygote (a python3 that never
    /// runs user code; each run is forked into fresh namespaces with a cold run's
    /// fences), even when its runtime is not Python. Profiles with `runtime: python`
    /// (python-dev) have one anyway. Comma-separated; adds to --profiles.
    #[arg(long, value_delimiter = ',', value_name = "PROFILE")]
    pub(crate) zygote: Vec<String>,
    /// The most sandboxes kept ready per pool (a profile's `performance.pool_size`
    /// wins). How many are kept follows demand: the runs that asked for the pool per
    /// second (averaged over ~10 s) times the time a sandbox takes to build, doubled;
    /// a new pool starts full.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub(crate) zygote_pools: usize,
    /// The fewest sandboxes kept ready per pool, however idle (at most its size).
    #[arg(long, value_name = "N", default_value_t = phantom_engine::server::POOL_FLOOR)]
    pub(crate) pool_floor: usize,
    /// Pause refills while CPU or memory pressure (/proc/pressure, some avg10) is above
    /// the thresholds.
    #[arg(long)]
    pub(crate) psi_aware: bool,
    /// CPU pressure threshold in percent, with --psi-aware.
    #[arg(long, value_name = "PERCENT", default_value_t = 80.0)]
    pub(crate) psi_cpu: f64,
    /// Memory pressure threshold in percent, with --psi-aware.
    #[arg(long, value_name = "PERCENT", default_value_t = 40.0)]
    pub(crate) psi_memory: f64,
    /// Socket to listen on (default: see below).
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<std::path::PathBuf>,
    /// Serve the HTTP API on this address (e.g. 127.0.0.1:8080; port 0 picks one, which
    /// is printed). Every /api/v2 call needs an API key (`phantom keys add NAME`).
    /// Without it, AISBX_API_PORT=PORT (or config.yaml's `api_port:`) means
    /// 127.0.0.1:PORT; with neither there is no HTTP API.
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: Option<std::net::SocketAddr>,
    /// Serve E2B's API on this address (e.g. 127.0.0.1:3000; port 0 picks one, which is
    /// printed): its control plane and its sandboxes' traffic on one plain-HTTP
    /// listener, so that E2B's SDKs work unchanged with E2B_API_URL and
    /// E2B_SANDBOX_URL set to http://ADDR and E2B_API_KEY a key of `phantom keys add
    /// NAME --e2b`. With or without --bind.
    #[arg(long, value_name = "ADDR")]
    pub(crate) e2b_bind: Option<std::net::SocketAddr>,
    /// Keep spare persistent sandboxes of this built-in profile, so that creating one
    /// (`phantom create`, POST /api/v2/sandboxes, E2B's `Sandbox.create()`) takes a
    /// spare instead of starting a sandbox: the spare, which never ran anything,
    /// changes owner and name. Only a create of the same plan takes one (no image,
    /// policy file, snapshot or limits of its own). Repeatable. Default with
    /// --e2b-bind: `e2b`; `none` keeps no spares. Spares are on top of
    /// --max-sandboxes; they are destroyed when the supervisor stops.
    #[arg(long = "persistent-pool", value_name = "PROFILE")]
    pub(crate) persistent_pool: Vec<String>,
    /// Spares kept per --persistent-pool (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub(crate) persistent_pool_size: usize,
    /// With --bind: sandboxes at once (runs, execs and persistent sandboxes).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub(crate) max_sandboxes: usize,
    /// With --bind: largest request body (e.g. 8MiB).
    #[arg(long, value_name = "SIZE", default_value = "8MiB")]
    pub(crate) max_body: String,
    /// With --bind: also accept the keys listed in FILE (one `phk_...` key per line,
    /// `#` comments), e.g. a mounted secret; keys from `phantom keys add` always work,
    /// and so does the key in AISBX_API_KEY (same rules as a line of FILE).
    #[arg(long, value_name = "FILE")]
    pub(crate) api_keys: Option<std::path::PathBuf>,
    /// With --bind and --psi-aware: read pressure from DIR/cpu and DIR/memory instead
    /// of /proc/pressure (a container's view).
    #[arg(long, value_name = "DIR")]
    pub(crate) psi_source: Option<std::path::PathBuf>,
    /// With --bind: how long in-flight requests get after SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub(crate) grace: String,
    /// Pin pools to a NUMA node's CPUs. On a one-node host there is nothing to pin: a
    /// warning says so and the supervisor starts. With several nodes it is refused:
    /// this build does not pin (the flag is never silently ignored).
    #[arg(long)]
    pub(crate) numa_optimize: bool,
    /// The supervisor's I/O: sync (the default). uring is accepted with a warning and
    /// runs sync: io_uring stays blocked (seccomp) inside sandboxes for security, and
    /// the supervisor does not use it either.
    #[arg(long, value_enum, value_name = "MODE", default_value = "sync")]
    pub(crate) io_mode: IoMode,
    /// The supervisor's allocator: system (the default). jemalloc is accepted with a
    /// warning and runs with the system allocator: this build does not ship jemalloc
    /// (a profile's `performance.memory_allocator: jemalloc` preloads it for payloads).
    #[arg(long, value_enum, value_name = "ALLOCATOR", default_value = "system")]
    pub(crate) memory_allocator: MemoryAllocator,
    /// jit (the default): a profile's plan is compiled at its first run and cached.
    /// aot: every built-in profile's plan is compiled at start (the count and time are
    /// logged), so a run of a built-in profile does not compile.
    #[arg(long, value_enum, value_name = "WHEN", default_value = "jit")]
    pub(crate) profile_compilation: ProfileCompilation,
    /// With --bind: prometheus (the default) serves /metrics in Prometheus text; none
    /// turns /metrics off (404).
    #[arg(long, value_enum, value_name = "MODE", default_value = "prometheus")]
    pub(crate) metrics_mode: MetricsMode,
    /// With --bind: serve MCP (Streamable HTTP) at /mcp/v1/ with the same API keys
    /// and tenancy as /api/v2 (clients send `Authorization: Bearer phk_...`); `off`
    /// turns it off (404).
    #[arg(long, value_enum, value_name = "MODE", default_value = "on")]
    pub(crate) mcp: McpMode,
    /// With --bind: the largest output (stdout and stderr together) an MCP tool call
    /// returns.
    #[arg(long, value_name = "SIZE", default_value = "1MiB")]
    pub(crate) mcp_max_output: String,
    /// Print the shell completion script for phantom-supervisor and exit.
    #[arg(long, value_name = "SHELL")]
    pub(crate) completions: Option<clap_complete::Shell>,
    /// Print the phantom-supervisor(1) man page and exit.
    #[arg(long)]
    pub(crate) man: bool,
    /// Check the supervisor on --socket (and with --bind, GET /health there) instead of
    /// starting one: prints `healthy: pid N, ...` and exits 0, or prints why not and
    /// exits 1.
    #[arg(long)]
    pub(crate) health: bool,
    /// Stop (as on SIGTERM) when process PID, which started this supervisor, exits: a
    /// program that keeps a supervisor of its own for as long as it runs.
    #[arg(long, value_name = "PID")]
    pub(crate) parent_pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum IoMode {
    Sync,
    Uring,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MemoryAllocator {
    System,
    Jemalloc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProfileCompilation {
    Jit,
    Aot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MetricsMode {
    Prometheus,
    None,
}

impl Args {
    /// `--profile-compilation aot`: the engine compiles built-in plans at start.
    pub(crate) fn precompile(&self) -> bool {
        self.profile_compilation == ProfileCompilation::Aot
    }

    /// The spare persistent sandboxes these flags ask for.
    pub(crate) fn spares(&self) -> Result<Vec<server::SpareSpec>, String> {
        if !(1..=64).contains(&self.persistent_pool_size) {
            return Err(format!(
                "--persistent-pool-size {}: must be 1 to 64",
                self.persistent_pool_size
            ));
        }
        let mut profiles = self.persistent_pool.clone();
        if profiles.iter().any(|p| p == "none") {
            if profiles.len() > 1 {
                return Err(
                    "--persistent-pool none: keeps no spares; name no profile with it".into(),
                );
            }
            profiles.clear();
        } else if profiles.is_empty() && self.e2b_bind.is_some() {
            profiles.push("e2b".into());
        }
        profiles.dedup();
        profiles
            .into_iter()
            .map(|profile| match phantom_policy::load_builtin(&profile) {
                Ok(_) => Ok(server::SpareSpec {
                    profile,
                    size: self.persistent_pool_size,
                }),
                Err(_) => Err(format!(
                    "--persistent-pool {profile}: not a built-in profile (see `phantom profile list`)"
                )),
            })
            .collect()
    }

    /// The pools these flags ask for (the same for the engine alone and with --bind).
    pub(crate) fn pools(&self) -> Result<Vec<server::PoolSpec>, phantom_engine::EngineError> {
        server::pools_for(
            &self.profiles,
            &self.pool,
            &self.zygote,
            self.zygote_pools,
            self.pool_floor,
        )
    }
}

fn main() {
    let mut args = Args::parse();
    if let Some(shell) = args.completions {
        std::process::exit(completions::completion_script(shell, Args::command()));
    }
    if args.man {
        std::process::exit(completions::man_page(Args::command()));
    }
    // config.yaml and the AISBX_*/PHANTOM_* variables: a mistake stops the start.
    let settings = match phantom_policy::Settings::from_env(&phantom_policy::config::process_env) {
        Ok(s) => s,
        Err(e) => {
            e.to_string()
                .lines()
                .for_each(|l| eprintln!("phantom-supervisor: error: {l}"));
            std::process::exit(2);
        }
    };
    if args.bind.is_none() {
        if let Some(port) = &settings.api_port {
            args.bind = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port.value)));
        }
    }
    server::set_debug(settings.debug.value);
    if settings.debug.value {
        eprintln!(
            "phantom-supervisor: debug log on ({}); config: {}",
            settings.debug.origin,
            settings
                .config
                .as_ref()
                .map_or("none".to_string(), |c| format!(
                    "{} ({} profiles)",
                    c.file.display(),
                    c.profiles.len()
                ))
        );
    }
    if args.health {
        std::process::exit(health(&args));
    }
    if args.numa_optimize {
        let nodes = numa_nodes();
        if nodes <= 1 {
            eprintln!(
                "phantom-supervisor: warning: --numa-optimize: this host has one NUMA node; nothing to optimize"
            );
        } else {
            // A flag of the seed README never stops the supervisor: say what it does not
            // do, and go on.
            eprintln!(
                "phantom-supervisor: warning: --numa-optimize: this build does not pin pools to NUMA nodes ({nodes} nodes here); pools use any node"
            );
        }
    }
    if args.io_mode == IoMode::Uring {
        eprintln!(
            "phantom-supervisor: warning: --io-mode uring: io_uring stays blocked inside sandboxes for security, so the supervisor runs with sync I/O"
        );
    }
    if args.memory_allocator == MemoryAllocator::Jemalloc {
        eprintln!(
            "phantom-supervisor: warning: --memory-allocator jemalloc: this build does not ship jemalloc; the supervisor runs with the system allocator"
        );
    }
    if args.metrics_mode == MetricsMode::None && args.bind.is_none() {
        eprintln!(
            "phantom-supervisor: warning: --metrics-mode none: without --bind there is no /metrics to turn off"
        );
    }
    if let Some(parent) = args.parent_pid {
        if let Err(e) = server::stop_with_parent(parent) {
            eprintln!("phantom-supervisor: error: {e}");
            std::process::exit(1);
        }
    }
    if args.bind.is_some() || args.e2b_bind.is_some() {
        std::process::exit(http::main(&args, args.bind, settings.api_key.as_ref()));
    }
    if let Some(key) = &settings.api_key {
        eprintln!(
            "phantom-supervisor: warning: {}: without --bind (or AISBX_API_PORT) there is no HTTP API to accept it",
            match &key.origin {
                phantom_policy::config::Origin::Variable(v) => v.as_str(),
                _ => "AISBX_API_KEY",
            }
        );
    }
    if args.zygote_pools == 0 || args.zygote_pools > 1024 {
        eprintln!(
            "phantom-supervisor: error: --zygote-pools {}: must be 1 to 1024",
            args.zygote_pools
        );
        std::process::exit(2);
    }
    let pools = match args.pools() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("phantom-supervisor: error: {e}");
            std::process::exit(e.exit_code());
        }
    };
    let mut source = pressure::ProcPressure;
    if args.psi_aware && pressure::PressureSource::sample(&mut source).is_none() {
        eprintln!("phantom-supervisor: error: --psi-aware: this kernel has no /proc/pressure (boot with psi=1)");
        std::process::exit(2);
    }
    let spares = match args.spares() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("phantom-supervisor: error: {e}");
            std::process::exit(2);
        }
    };
    let config = server::Config {
        name: "phantom-supervisor",
        pools,
        spares,
        thresholds: args.psi_aware.then_some(pressure::Thresholds {
            cpu: args.psi_cpu,
            memory: args.psi_memory,
        }),
        precompile: args.precompile(),
        socket: args
            .socket
            .unwrap_or_else(phantom_engine::client::socket_path),
    };
    if let Err(e) = server::serve(config, &mut source) {
        eprintln!("phantom-supervisor: error: {e}");
        // 2: what it was asked to serve is wrong (a --pool whose image is missing).
        std::process::exit(e.exit_code());
    }
}

/// NUMA nodes of this host (/sys/devices/system/node/nodeN); 1 when unknown.
fn numa_nodes() -> usize {
    std::fs::read_dir("/sys/devices/system/node")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("node")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(1)
}

/// `--health`: whether a supervisor answers on the socket (and with --bind, whether
/// GET /health there says 200). Returns the exit code: 0 healthy, 1 not.
fn health(args: &Args) -> i32 {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(phantom_engine::client::socket_path);
    let Some(pid) = phantom_engine::client::running_engine(&socket) else {
        println!("unhealthy: no supervisor answers on {}", socket.display());
        return 1;
    };
    let mut what = format!("healthy: pid {pid}, engine on {}", socket.display());
    if let Some(bind) = args.bind {
        match http_health(bind) {
            Ok(()) => what.push_str(&format!(", http://{bind}/health 200")),
            Err(e) => {
                println!(
                    "unhealthy: the engine (pid {pid}) answers, but http://{bind}/health: {e}"
                );
                return 1;
            }
        }
    }
    println!("{what}");
    0
}

/// GET /health on `bind`: Ok when the status is 200.
fn http_health(bind: std::net::SocketAddr) -> Result<(), String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let mut conn =
        std::net::TcpStream::connect_timeout(&bind, timeout).map_err(|e| e.to_string())?;
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    write!(
        conn,
        "GET /health HTTP/1.1\r\nHost: {bind}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let _ = conn.take(4096).read_to_end(&mut head);
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or("").to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else if status.is_empty() {
        Err("no answer".into())
    } else {
        Err(format!("answered `{status}`"))
    }
}
