//! `phantom-mcp --transport stdio` driven with raw JSON-RPC, for the tests.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `phantom-mcp` next to the `phantom` under test (the suite's unprivileged pass stages
/// both), else the one cargo built.
pub fn mcp_bin() -> PathBuf {
    match std::env::var_os("PHANTOM_BIN") {
        Some(p) => Path::new(&p).with_file_name("phantom-mcp"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_phantom-mcp")),
    }
}

pub struct McpServer {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next_id: u64,
}

impl McpServer {
    /// Start `phantom-mcp --transport stdio` with `args` in TMPDIR `tmp`, and initialize.
    pub fn start(args: &[&str], tmp: &Path) -> McpServer {
        McpServer::start_with_env(args, tmp, &[])
    }

    /// [`McpServer::start`] with extra environment (PHANTOM_STATE_DIR, ...).
    pub fn start_with_env(args: &[&str], tmp: &Path, env: &[(&str, &Path)]) -> McpServer {
        // Run directories of its sandboxes go here too, so that a test can see them.
        let xdg = tmp.join("xdg");
        std::fs::create_dir_all(&xdg).unwrap();
        let mut child = Command::new(mcp_bin())
            .args(["--transport", "stdio"])
            .args(args)
            .env("TMPDIR", tmp)
            .env("XDG_RUNTIME_DIR", &xdg)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("phantom-mcp starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut server = McpServer {
            child,
            stdin,
            lines,
            next_id: 1,
        };
        let init = server.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "phantom-test", "version": "1"}}),
        );
        assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
        server.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        server
    }

    pub fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{message}").expect("write to phantom-mcp");
        stdin.flush().expect("flush");
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + super::PHANTOM_DEADLINE;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(wait)
                .unwrap_or_else(|_| panic!("no answer to {method} in time"));
            let msg: Value = serde_json::from_str(&line).expect("JSON-RPC on stdout");
            if msg["id"] == json!(id) {
                return msg;
            }
        }
    }

    pub fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let r = self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        r["result"].clone()
    }

    /// Close stdin (the client goes away) and wait for the server to exit.
    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        super::wait_timeout(&mut self.child, Duration::from_secs(30)).expect("phantom-mcp exits")
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
