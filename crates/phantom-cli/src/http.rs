//! `phantom-supervisor --bind ADDR`: the HTTP API in this process, the warm pools in
//! a child (this binary again, without --bind): the pool keeper forks sandboxes and
//! must stay single-threaded, the HTTP server is tokio's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        if !line.starts_with("phk_") || line.len() != 4 + 12 + 1 + 64 {
            return Err(format!(
                "--api-keys {}:{}: not a key (expected phk_<12 hex>_<64 hex>, as `phantom keys add` prints)",
                path.display(),
                i + 1
            ));
        }
        keys.push(line.to_string());
    }
    Ok(keys)
}

/// The pool keeper, stopped (SIGTERM, then waited for) on drop.
struct Pools(Child);

impl Drop for Pools {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

pub fn main(args: &Args, bind: SocketAddr) -> i32 {
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
    let grace = match phantom_policy::units::parse_duration_ms(&args.grace) {
        Ok(ms) => Duration::from_millis(ms),
        Err(e) => return fail(format!("--grace {}: {e}", args.grace)),
    };
    if args.max_sandboxes == 0 {
        return fail("--max-sandboxes: at least 1");
    }
    let file_keys = match args.api_keys.as_ref().map(file_keys).transpose() {
        Ok(k) => k.unwrap_or_default(),
        Err(e) => return fail(e),
    };
    let psi = if args.psi_aware {
        let dir = args
            .psi_source
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/pressure"));
        use phantom_engine::warm::pressure::{DirPressure, PressureSource};
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
    let phantom_bin = match std::env::current_exe() {
        Ok(me) => me.with_file_name("phantom"),
        Err(e) => return fail(format!("cannot find this binary: {e}")),
    };
    if !phantom_bin.exists() {
        return fail(format!(
            "{} not found: phantom-supervisor runs sandboxes with the phantom binary installed beside it",
            phantom_bin.display()
        ));
    }
    // The warm pools: this binary without --bind, on the usual socket (so that
    // `phantom run` on this host uses them too) or --socket.
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(phantom_engine::warm::socket_path);
    let mut child = Command::new(std::env::current_exe().expect("checked above"));
    child
        .arg("--zygote-pools")
        .arg(args.zygote_pools.to_string())
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null());
    if !args.profiles.is_empty() {
        child.arg("--profiles").arg(args.profiles.join(","));
    }
    for p in &args.pool {
        child.arg("--pool").arg(p);
    }
    if args.psi_aware && args.psi_source.is_none() {
        child.args([
            "--psi-aware",
            "--psi-cpu",
            &args.psi_cpu.to_string(),
            "--psi-memory",
            &args.psi_memory.to_string(),
        ]);
    }
    let pools = match child.spawn() {
        Ok(c) => Pools(c),
        Err(e) => return fail(format!("cannot start the pool keeper: {e}")),
    };
    let started = Instant::now();
    while !socket.exists() {
        if started.elapsed() > Duration::from_secs(30) {
            return fail(format!("the pool keeper did not open {}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let config = phantom_server::Config {
        phantom_bin,
        pool_socket: Some(socket),
        max_sandboxes: args.max_sandboxes,
        max_body,
        psi,
        grace,
        file_keys,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let code = runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(bind).await {
            Ok(l) => l,
            Err(e) => return fail(format!("--bind {bind}: {e}")),
        };
        let app = phantom_server::App::new(config);
        match phantom_server::serve(app, listener).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("phantom-supervisor: error: {e}");
                1
            }
        }
    });
    drop(pools);
    code
}
