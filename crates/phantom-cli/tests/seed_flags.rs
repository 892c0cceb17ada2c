//! The seed README's supervisor and MCP command lines: every flag they show is accepted,
//! with a real effect or a one-line warning that says why it cannot take effect here —
//! never an exit with an error.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mcp::mcp_bin;
use common::sandbox_available;
use common::supervisor::{supervisor_bin, Supervisor};

/// NUMA nodes of this host, as the kernel lists them.
fn numa_nodes() -> usize {
    std::fs::read_dir("/sys/devices/system/node")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.strip_prefix("node")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(1)
}

/// `phantom-supervisor --health --socket SOCKET`: exit code and stdout.
fn health(socket: &Path) -> (Option<i32>, String) {
    let out = Command::new(supervisor_bin())
        .arg("--health")
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("phantom-supervisor --health runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_seed_supervisor_command_lines_are_accepted_with_warnings_and_aot_plans() {
    if !sandbox_available() {
        return;
    }
    let one_node = numa_nodes() <= 1;
    let psi = Path::new("/proc/pressure/cpu").exists();
    let mut args = vec![
        "--profiles",
        "default",
        "--zygote-pools",
        "5",
        "--io-mode",
        "uring",
        "--memory-allocator",
        "jemalloc",
        "--profile-compilation",
        "aot",
        "--metrics-mode",
        "prometheus",
    ];
    if psi {
        // Thresholds no pressure reaches: a loaded test host must not pause the refill
        // the test waits for.
        args.extend(["--psi-aware", "--psi-cpu", "100", "--psi-memory", "100"]);
    } else {
        common::not_applicable("--psi-aware left out: this kernel has no /proc/pressure");
    }
    args.push("--numa-optimize");
    let mut sup = Supervisor::start_with(&args, None);
    let log = sup.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("warning:")).collect();
    let mut expected = vec!["--io-mode uring", "--memory-allocator jemalloc"];
    expected.push(if one_node {
        "--numa-optimize: this host has one NUMA node; nothing to optimize"
    } else {
        "--numa-optimize: this build does not pin pools to NUMA nodes"
    });
    for flag in &expected {
        assert!(
            warnings.iter().any(|w| w.contains(flag)),
            "no warning for {flag}\nlog:\n{log}"
        );
    }
    assert!(!log.contains("error:"), "{log}");
    let compiled = log
        .lines()
        .find(|l| l.contains("--profile-compilation aot: compiled"))
        .unwrap_or_else(|| panic!("no line names the compiled plans\nlog:\n{log}"));
    let count: usize = compiled
        .split("compiled ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{compiled}"));
    assert!(count > 0, "{compiled}");
    assert!(compiled.contains(" ms"), "{compiled}");

    // A run served by it works.
    let run = sup.phantom(&["run", "--json", "--", "echo", "hi"]);
    let report = run
        .report()
        .unwrap_or_else(|e| panic!("{e}\n{}", run.describe()));
    assert_eq!(report["exit_code"], 0, "{}", run.describe());
    assert_eq!(report["stdout"], "hi\n", "{}", run.describe());

    // --health: 0 while it runs, naming its pid; 1 once it stopped.
    let socket = sup.socket().to_path_buf();
    let (code, out) = health(&socket);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with(&format!("healthy: pid {}", sup.pid())),
        "{out}"
    );
    sup.kill("-TERM");
    let (code, out) = health(&socket);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no supervisor answers"), "{out}");
}

#[test]
fn the_seed_mcp_http_command_line_is_accepted_and_answers() {
    let tmp = std::env::temp_dir().join(format!(
        "phantom-seed-mcp-{}-{}",
        std::process::id(),
        common::unique()
    ));
    std::fs::create_dir_all(tmp.join("xdg")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = tmp.join("mcp.log");
    let mut child = Command::new(mcp_bin())
        .args(["--transport", "http", "--port", &port.to_string()])
        .args(["--io-mode", "uring", "--mode", "cold"])
        .env("TMPDIR", &tmp)
        .env("XDG_RUNTIME_DIR", tmp.join("xdg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("phantom-mcp starts");
    let started = Instant::now();
    let answer = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "phantom-mcp exited ({status})\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            write!(
                conn,
                "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut answer = String::new();
            let _ = conn.read_to_string(&mut answer);
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "phantom-mcp did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{stderr}");
    assert!(answer.contains("protocolVersion"), "{answer}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("warning: --io-mode uring")),
        "{stderr}"
    );
    assert!(!stderr.contains("error:"), "{stderr}");
    assert!(status.success() || status.code().is_none(), "{status}");
}

#[test]
fn metrics_mode_none_turns_metrics_off_and_health_checks_the_http_api() {
    if !sandbox_available() {
        return;
    }
    let mut server = common::api::Server::start("seed-metrics", &["--metrics-mode", "none"]);
    let off = server.request("GET", "/metrics", None, b"");
    assert_eq!(off.status, 404);
    assert_eq!(server.request("GET", "/health", None, b"").status, 200);
    let bind = format!("127.0.0.1:{}", server.port);
    let out = Command::new(supervisor_bin())
        .args(["--health", "--bind", &bind, "--socket"])
        .arg(server.dir.join("pool.sock"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("http://{bind}/health 200")),
        "{stdout}"
    );
    assert!(server.stop(Duration::from_secs(30)));
}
