//! `phantom-supervisor --bind ADDR`: the HTTP API in this process, the engine (with
//! the warm pools) in a child forked before tokio starts: the engine forks sandboxes
//! and must stay single-threaded, the HTTP server is tokio's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::Args;

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("phantom-supervisor: error: {msg}");
    2
}

/// Keys from `--api-keys FILE`: one per line, `#` comments and blank lines skipped.
fn file_keys(path: &PathBuf) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--api-keys {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !phantom_state::keys::looks_like_key(line) {
            return Err(format!(
                "--api-keys {}:{}: not a key (expected phk_<12 hex>_<64 hex> or e2b_<40 hex>, as `phantom keys add [--e2b]` prints)",
                path.display(),
                i + 1
            ));
        }
        keys.push(line.to_string());
    }
    Ok(keys)
}

/// `api_key`: AISBX_API_KEY (or PHANTOM_API_KEY), accepted like a line of --api-keys.
pub fn main(
    args: &Args,
    bind: Option<SocketAddr>,
    api_key: Option<&phantom_policy::config::Sourced<String>>,
) -> i32 {
    let max_body = match phantom_policy::units::parse_bytes(&args.max_body) {
        Ok(b) if (1024..=(1 << 30)).contains(&b) => b as usize,
        Ok(_) => {
            return fail(format!(
                "--max-body {}: between 1KiB and 1GiB",
                args.max_body
            ))
        }
        Err(e) => return fail(format!("--max-body {}: {e}", args.max_body)),
    };
    let mcp_max_output = match phantom_policy::units::parse_bytes(&args.mcp_max_output) {
        Ok(b) if b > 0 => b,
        Ok(_) => return fail("--mcp-max-output: must be more than 0 bytes"),
        Err(e) => return fail(format!("--mcp-max-output {}: {e}", args.mcp_max_output)),
    };
    let grace = match phantom_policy::units::parse_duration_ms(&args.grace) {
        Ok(ms) => Duration::from_millis(ms),
        Err(e) => return fail(format!("--grace {}: {e}", args.grace)),
    };
    if args.max_sandboxes == 0 {
        return fail("--max-sandboxes: at least 1");
    }
    let mut file_keys = match args.api_keys.as_ref().map(file_keys).transpose() {
        Ok(k) => k.unwrap_or_default(),
        Err(e) => return fail(e),
    };
    if let Some(key) = api_key {
        // The key itself is never printed.
        if !phantom_state::keys::looks_like_key(key.value.trim()) {
            return fail(format!(
                "{}: not a key (expected phk_<12 hex>_<64 hex> or e2b_<40 hex>, as `phantom keys add [--e2b]` prints)",
                match &key.origin {
                    phantom_policy::config::Origin::Variable(v) => v.as_str(),
                    _ => "AISBX_API_KEY",
                }
            ));
        }
        file_keys.push(key.value.trim().to_string());
    }
    let psi = if args.psi_aware {
        let dir = args
            .psi_source
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/pressure"));
        use phantom_engine::pressure::{DirPressure, PressureSource};
        if DirPressure(dir.clone()).sample().is_none() {
            return fail(format!(
                "--psi-aware: no pressure files in {} (boot with psi=1, or point --psi-source at cpu and memory files)",
                dir.display()
            ));
        }
        Some((dir, args.psi_cpu, args.psi_memory))
    } else {
        if args.psi_source.is_some() {
            return fail("--psi-source needs --psi-aware");
        }
        None
    };
    // The engine and its pools: forked now, before tokio starts a thread, on the usual
    // socket (so that `phantom run` on this host uses them too) or --socket.
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(phantom_engine::client::socket_path);
    let pools = match args.pools() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let spares = match args.spares() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let thresholds = (args.psi_aware && args.psi_source.is_none()).then_some(
        phantom_engine::pressure::Thresholds {
            cpu: args.psi_cpu,
            memory: args.psi_memory,
        },
    );
    let engine =
        match phantom_engine::server::EngineProcess::start(phantom_engine::server::Config {
            name: "phantom-supervisor",
            pools,
            spares,
            thresholds,
            socket: socket.clone(),
            precompile: args.precompile(),
        }) {
            Ok(e) => e,
            Err(e) => return fail(e),
        };
    let config = phantom_server::Config {
        engine_socket: socket,
        max_sandboxes: args.max_sandboxes,
        max_body,
        psi,
        grace,
        file_keys,
        metrics: args.metrics_mode == crate::MetricsMode::Prometheus,
        mcp_max_output: (args.mcp == crate::McpMode::On).then_some(mcp_max_output),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let e2b_bind = args.e2b_bind;
    let code = runtime.block_on(async move {
        let listener = match bind.map(listen).transpose() {
            Ok(l) => l,
            Err(e) => return fail(format!("--bind {}: {e}", bind.expect("bound"))),
        };
        let e2b_listener = match e2b_bind.map(listen).transpose() {
            Ok(l) => l,
            Err(e) => return fail(format!("--e2b-bind {}: {e}", e2b_bind.expect("bound"))),
        };
        let app = phantom_server::App::new(config);
        let stop = tokio_util::sync::CancellationToken::new();
        let e2b = e2b_listener
            .map(|l| tokio::spawn(phantom_server::e2b::serve(app.clone(), l, stop.clone())));
        let code = match listener {
            Some(listener) => match phantom_server::serve(app, listener).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("phantom-supervisor: error: {e}");
                    1
                }
            },
            None => {
                phantom_server::shutdown_signal().await;
                eprintln!("phantom-supervisor: stopping");
                0
            }
        };
        stop.cancel();
        if let Some(e2b) = e2b {
            match e2b.await {
                Ok(Err(e)) => {
                    eprintln!("phantom-supervisor: error: the E2B API: {e}");
                    return 1;
                }
                Err(e) => {
                    eprintln!("phantom-supervisor: error: the E2B API: {e}");
                    return 1;
                }
                Ok(Ok(())) => {}
            }
        }
        code
    });
    drop(engine);
    code
}

/// The API's listening socket, with a listen queue of 1024: tokio's default of 128
/// made the kernel reset a burst of connects before the server saw them.
fn listen(bind: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if bind.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    socket.listen(1024)
}
