//! `phantom mcp` and `phantom-mcp`: the MCP server's flags (one definition for both).

use clap::{Args, ValueEnum};

pub const AFTER_HELP: &str = "Tools: run_code {language: python|node|bash|sh, code, files?, stdin?, env?, timeout?, ...},
run_command {argv, ...}, create_sandbox, exec_in_sandbox, write_file, read_file,
list_files, snapshot_sandbox, destroy_sandbox, list_sandboxes, list_profiles,
get_metrics, start_process, list_processes, kill_process (tools/list has each one's
schema).

Before its threads exist the server forks its engine (the process that starts every
sandbox), which stops with it. --mode zygote (the default) gives the engine warm pools
for --profiles; runs no pool serves start cold. --mode cold starts every run in a
fresh sandbox.

Without --api-key-file the tools act for the local user (the sandboxes `phantom list`
shows, never an HTTP API key's); with a key of `phantom keys add` they act as that key,
with its grants.

Over HTTP the endpoint is http://BIND:PORT/mcp; Host and Origin are checked (DNS
rebinding); a non-loopback --bind needs --api-key-file (clients send
`Authorization: Bearer KEY`).

Examples:
  phantom-mcp --transport stdio
  phantom-mcp --transport http --port 8080 --profiles python,default
  phantom-mcp --transport http --bind 0.0.0.0 --api-key-file /etc/phantom/mcp.key --allowed-host box.example
  phantom mcp --mode cold";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TransportArg {
    Stdio,
    Http,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Warm pools in the server's engine; cold when no pool serves a run.
    Zygote,
    /// A fresh sandbox for every run.
    Cold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoModeArg {
    Sync,
    Uring,
}

#[derive(Args, Debug)]
pub struct McpArgs {
    /// stdio (for a client that starts the server) or http (Streamable HTTP at /mcp).
    #[arg(long, value_enum, default_value = "stdio")]
    transport: TransportArg,
    /// Address to listen on (http). Anything but loopback needs --api-key-file.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Port to listen on (http); 0 picks a free one (printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// zygote (or turbo): warm pools (see below); cold: a fresh sandbox for every run.
    #[arg(long, value_name = "MODE", default_value = "zygote", env = "PHANTOM_PERFORMANCE_MODE", value_parser = parse_mode)]
    mode: ModeArg,
    /// Profiles to keep warm pools for: built-ins or config.yaml's (comma-separated;
    /// `python` means python-dev, `node` node-dev, ...).
    #[arg(long, value_delimiter = ',', default_value = "default,python-dev")]
    profiles: Vec<String>,
    /// Sandboxes kept ready per pool (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 4, env = "PHANTOM_ZYGOTE_POOL_SIZE", value_parser = parse_pool_size)]
    pool_size: usize,
    /// Output cap per run: bytes of stdout+stderr kept (e.g. 1MiB, 256KB); the rest is
    /// dropped and the result says `truncated`.
    #[arg(long, value_name = "BYTES", default_value = "1MiB")]
    max_output: String,
    /// File whose first line is the API key clients must send as `Authorization:
    /// Bearer KEY` (http). Required with a non-loopback --bind.
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<std::path::PathBuf>,
    /// Also accept this Host (name or name:port) over http (repeatable); loopback names
    /// and the bind address are always accepted.
    #[arg(long = "allowed-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// Also accept requests from this browser Origin (repeatable), e.g.
    /// https://app.example:443; loopback origins are always accepted, requests without
    /// an Origin (non-browser clients) too.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// The server's I/O: sync (the default). uring is accepted with a warning and runs
    /// sync: io_uring stays blocked (seccomp) inside sandboxes for security, and the
    /// server does not use it either.
    #[arg(long, value_enum, value_name = "MODE", default_value = "sync")]
    io_mode: IoModeArg,
}

/// `--mode` / PHANTOM_PERFORMANCE_MODE (the seed's Claude Desktop example); the error
/// names both, since clap does not say which one the value came from.
fn parse_mode(text: &str) -> Result<ModeArg, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "zygote" | "turbo" => Ok(ModeArg::Zygote),
        "cold" => Ok(ModeArg::Cold),
        _ => Err(
            "expected zygote (or turbo) or cold (from --mode or PHANTOM_PERFORMANCE_MODE)".into(),
        ),
    }
}

/// `--pool-size` / PHANTOM_ZYGOTE_POOL_SIZE.
fn parse_pool_size(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(
            "expected a whole number from 1 to 64 (from --pool-size or PHANTOM_ZYGOTE_POOL_SIZE)"
                .into(),
        ),
    }
}

/// Run the server with these flags; returns the exit code.
pub fn mcp(args: McpArgs) -> i32 {
    // config.yaml, whose profiles the engine serves by name: a mistake is said here,
    // before the engine is forked.
    let config = match phantom_policy::config::load_from_env(&phantom_policy::config::process_env) {
        Ok(c) => c,
        Err(e) => {
            e.to_string()
                .lines()
                .for_each(|l| eprintln!("phantom-mcp: error: {l}"));
            return 2;
        }
    };
    let max_output = match phantom_policy::units::parse_bytes(&args.max_output) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("phantom-mcp: error: --max-output {}: {e}", args.max_output);
            return 2;
        }
    };
    if args.io_mode == IoModeArg::Uring {
        eprintln!(
            "phantom-mcp: warning: --io-mode uring: io_uring stays blocked inside sandboxes for security, so the server runs with sync I/O"
        );
    }
    let mut profiles = Vec::new();
    for p in &args.profiles {
        let name = p.trim().to_string();
        let ours = config.as_ref().map(|c| c.names()).unwrap_or_default();
        if !phantom_policy::builtin_names().contains(&name.as_str())
            && !ours.contains(&name.as_str())
        {
            eprintln!(
                "phantom-mcp: error: --profiles: `{name}` is not a profile: use one of {}",
                phantom_policy::builtin_names()
                    .iter()
                    .chain(&ours)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return 2;
        }
        if !profiles.contains(&name) {
            profiles.push(name);
        }
    }
    phantom_mcp::run(phantom_mcp::Config {
        transport: match args.transport {
            TransportArg::Stdio => phantom_mcp::Transport::Stdio,
            TransportArg::Http => phantom_mcp::Transport::Http,
        },
        bind: args.bind,
        port: args.port,
        mode: match args.mode {
            ModeArg::Zygote => phantom_mcp::Mode::Zygote,
            ModeArg::Cold => phantom_mcp::Mode::Cold,
        },
        profiles,
        pool_size: args.pool_size,
        max_output,
        api_key_file: args.api_key_file,
        allowed_hosts: args.allowed_hosts,
        allowed_origins: args.allowed_origins,
    })
}
