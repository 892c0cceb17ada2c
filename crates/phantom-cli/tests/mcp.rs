//! `phantom-mcp` over stdio with raw JSON-RPC: the server's process model as root and
//! unprivileged — cold and warm runs, bad arguments, the private supervisor dying with
//! the server, what a killed server leaves and the next one collects. The full client
//! matrix (the official Python SDK over stdio and HTTP, the conformance suite) is
//! scripts/test-mcp.sh.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `phantom-mcp` next to the `phantom` under test (the suite's unprivileged pass stages
/// both), else the one cargo built.
fn mcp_bin() -> PathBuf {
    match std::env::var_os("PHANTOM_BIN") {
        Some(p) => Path::new(&p).with_file_name("phantom-mcp"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_phantom-mcp")),
    }
}

struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next_id: u64,
}

impl Server {
    /// Start `phantom-mcp --transport stdio` with `args` in TMPDIR `tmp`, and initialize.
    fn start(args: &[&str], tmp: &Path) -> Server {
        // Run directories of its sandboxes go here too, so that a test can see them.
        let xdg = tmp.join("xdg");
        std::fs::create_dir_all(&xdg).unwrap();
        let mut child = Command::new(mcp_bin())
            .args(["--transport", "stdio"])
            .args(args)
            .env("TMPDIR", tmp)
            .env("XDG_RUNTIME_DIR", &xdg)
            .env("PHANTOM_BIN", common::phantom_bin())
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
        let mut server = Server {
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

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{message}").expect("write to phantom-mcp");
        stdin.flush().expect("flush");
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + common::PHANTOM_DEADLINE;
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

    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let r = self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        r["result"].clone()
    }

    /// Close stdin (the client goes away) and wait for the server to exit.
    fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        wait_timeout(&mut self.child, Duration::from_secs(30)).expect("phantom-mcp exits")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')))
}

/// A fresh TMPDIR for one server, so that its scratch directory can be found.
fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("phantom-mcp-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run directories (and their temporary workspaces) the server's sandboxes left.
fn run_dirs(tmp: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(tmp.join("xdg/phantom")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn scratch_dirs(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("phantom-mcp."))
        })
        .collect()
}

#[test]
fn run_code_cold_over_stdio_and_nothing_left() {
    if !common::sandbox_available() {
        return;
    }
    let tmp = tmpdir("cold");
    let mut server = Server::start(&["--mode", "cold"], &tmp);
    let r = server.call(
        "run_code",
        json!({"language": "sh", "code": "cat data.txt; echo err >&2; exit 4",
               "files": [{"path": "data.txt", "content": "from a file\n"}]}),
    );
    let sc = &r["structuredContent"];
    assert_eq!(sc["stdout"], "from a file\n", "{r}");
    assert_eq!(sc["stderr"], "err\n", "{r}");
    assert_eq!(sc["exit_code"], 4, "{r}");
    assert_eq!(sc["start"], "cold", "{r}");
    assert_eq!(
        r["isError"], true,
        "a failing program is an error result: {r}"
    );
    // The text copy is the structured content.
    let text: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(&text, sc);
    assert!(server.finish().success());
    assert!(
        scratch_dirs(&tmp).is_empty(),
        "scratch left: {:?}",
        scratch_dirs(&tmp)
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn bad_arguments_are_tool_errors_that_say_what_to_send() {
    let tmp = tmpdir("args");
    let mut server = Server::start(&["--mode", "cold"], &tmp);
    let r = server.call("run_code", json!({"language": "cobol", "code": "x"}));
    assert_eq!(r["isError"], true, "{r}");
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("\"python\"") && text.contains("run_command"),
        "{text}"
    );
    let r = server.call(
        "run_code",
        json!({"language": "python", "code": "1", "files": [{"path": "/etc/passwd", "content": ""}]}),
    );
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("absolute paths are refused"),
        "{r}"
    );
    // An unknown tool is a protocol error (the model asked for something that is not
    // there), and it lists the tools.
    let e = server.request("tools/call", json!({"name": "nope", "arguments": {}}));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("run_code"),
        "{e}"
    );
    assert!(server.finish().success());
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn warm_runs_come_from_the_private_supervisor_which_dies_with_the_server() {
    if !common::sandbox_available() {
        return;
    }
    let tmp = tmpdir("warm");
    let mut server = Server::start(&["--profiles", "default", "--pool-size", "1"], &tmp);
    let r = server.call("run_command", json!({"argv": ["echo", "warm"]}));
    assert_eq!(r["structuredContent"]["stdout"], "warm\n", "{r}");
    assert_eq!(r["structuredContent"]["start"], "warm", "{r}");
    let m = server.call("get_metrics", json!({}));
    assert_eq!(m["structuredContent"]["supervisor"], "running", "{m}");
    assert_eq!(m["structuredContent"]["warm"], 1, "{m}");

    // The supervisor is our child; SIGKILL the server: the supervisor must stop too.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.child.id())).unwrap();
    let sup: u32 = children
        .split_whitespace()
        .next()
        .expect("the supervisor is a child of the main thread")
        .parse()
        .unwrap();
    assert!(alive(sup));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(sup) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(sup), "the supervisor outlived the killed server");
    // A killed server leaves its scratch directory; the next server collects it.
    assert_eq!(scratch_dirs(&tmp).len(), 1);
    let next = Server::start(&["--mode", "cold"], &tmp);
    assert!(next.finish().success());
    assert!(scratch_dirs(&tmp).is_empty(), "{:?}", scratch_dirs(&tmp));
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_non_loopback_bind_needs_an_api_key() {
    let out = Command::new(mcp_bin())
        .args(["--transport", "http", "--bind", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-key-file"), "{err}");
}

fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) && alive(pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Regression: a server whose client went away mid-run used to drop the run (SIGKILL
/// of `phantom run`, leaving its run directory and cgroup to the next run); now it
/// kills the sandbox through the runtime's own cleanup before it exits.
fn client_leaving_mid_run_kills_the_run(mode: &str, marker: &str) {
    if !common::sandbox_available() {
        return;
    }
    let tmp = tmpdir(&format!("leave-{mode}"));
    let mut server = Server::start(&["--mode", mode, "--profiles", "default"], &tmp);
    server.send(
        &json!({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {
        "name": "run_command", "arguments": {"argv": ["sleep", marker], "timeout_s": 120}}}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_with(&format!("sleep {marker}")).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !processes_with(&format!("sleep {marker}")).is_empty(),
        "the run never started"
    );
    let started = Instant::now();
    let status = server.finish();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the server took {:?} to stop",
        started.elapsed()
    );
    assert!(
        processes_with(&format!("sleep {marker}")).is_empty(),
        "the run outlived the server"
    );
    assert!(run_dirs(&tmp).is_empty(), "left: {:?}", run_dirs(&tmp));
    assert!(scratch_dirs(&tmp).is_empty(), "{:?}", scratch_dirs(&tmp));
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn client_leaving_mid_cold_run_kills_the_run() {
    client_leaving_mid_run_kills_the_run("cold", &format!("97.{}1", std::process::id()));
}

#[test]
fn client_leaving_mid_warm_run_kills_the_run() {
    client_leaving_mid_run_kills_the_run("zygote", &format!("97.{}2", std::process::id()));
}
