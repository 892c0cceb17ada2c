//! `phantom-supervisor`: the engine — the one process that starts sandboxes, with warm
//! pools — on a local socket that `phantom`, the MCP server and the HTTP API are
//! clients of; with `--bind ADDR`, also the HTTP API (phantom-server).
//!
//! Runs in the foreground, logs to stderr, and stops on SIGTERM/SIGINT/SIGHUP — use a
//! service manager to keep it running. The engine is single-threaded on purpose: it
//! forks sandboxes. With `--bind`, the HTTP server (tokio, threads) runs in this
//! process and the engine in a child forked before any thread exists.
#![forbid(unsafe_code)]

mod http;

use clap::Parser;
use phantom_engine::pressure;
use phantom_engine::server;

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
  phantom pool status"
)]
pub(crate) struct Args {
    /// Built-in profiles to keep pools for on the host root (comma-separated; with
    /// neither this nor --pool: every built-in profile with `performance.zygote: true`
    /// — default and python-dev).
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
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: Option<std::net::SocketAddr>,
    /// With --bind: sandboxes at once (runs, execs and persistent sandboxes).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub(crate) max_sandboxes: usize,
    /// With --bind: largest request body (e.g. 8MiB).
    #[arg(long, value_name = "SIZE", default_value = "8MiB")]
    pub(crate) max_body: String,
    /// With --bind: also accept the keys listed in FILE (one `phk_...` key per line,
    /// `#` comments), e.g. a mounted secret; keys from `phantom keys add` always work.
    #[arg(long, value_name = "FILE")]
    pub(crate) api_keys: Option<std::path::PathBuf>,
    /// With --bind and --psi-aware: read pressure from DIR/cpu and DIR/memory instead
    /// of /proc/pressure (a container's view).
    #[arg(long, value_name = "DIR")]
    pub(crate) psi_source: Option<std::path::PathBuf>,
    /// With --bind: how long in-flight requests get after SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub(crate) grace: String,
    /// Pin pools to a NUMA node's CPUs. Refused: this build does not pin, and on a
    /// one-node host there is nothing to pin (the seed's flag is never silently ignored).
    #[arg(long)]
    pub(crate) numa_optimize: bool,
    /// Stop (as on SIGTERM) when process PID, which started this supervisor, exits: a
    /// program that keeps a supervisor of its own for as long as it runs.
    #[arg(long, value_name = "PID")]
    pub(crate) parent_pid: Option<u32>,
}

impl Args {
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
    let args = Args::parse();
    if args.numa_optimize {
        let nodes = std::fs::read_dir("/sys/devices/system/node")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("node"))
                    .count()
            })
            .unwrap_or(1);
        eprintln!(
            "phantom-supervisor: error: --numa-optimize: {}",
            if nodes <= 1 {
                "this host has one NUMA node: there is nothing to pin pools to".to_string()
            } else {
                format!("this build does not pin pools to NUMA nodes ({nodes} nodes here); leave the flag out")
            }
        );
        std::process::exit(2);
    }
    if let Some(parent) = args.parent_pid {
        if let Err(e) = server::stop_with_parent(parent) {
            eprintln!("phantom-supervisor: error: {e}");
            std::process::exit(1);
        }
    }
    if let Some(bind) = args.bind {
        std::process::exit(http::main(&args, bind));
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
    let config = server::Config {
        name: "phantom-supervisor",
        pools,
        thresholds: args.psi_aware.then_some(pressure::Thresholds {
            cpu: args.psi_cpu,
            memory: args.psi_memory,
        }),
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
