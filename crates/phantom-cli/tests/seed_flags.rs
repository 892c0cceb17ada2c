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

/// `phantom ARGS --json` (benchmarks print their figures on stdout): the JSON, or a
/// panic with what the command said.
fn phantom_json(args: &[&str]) -> serde_json::Value {
    let out = common::phantom(args, |_| {});
    assert_eq!(out.code, Some(0), "{args:?}: {}", out.describe());
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", out.describe()))
}

/// `phantom profile list --performance` and `--benchmark` were "unexpected argument".
#[test]
fn profile_list_performance_shows_each_profiles_settings_and_benchmark_measures_them() {
    let rows = phantom_json(&["profile", "list", "--performance", "--json"]);
    let rows = rows.as_array().unwrap();
    let names = common::phantom(&["profile", "list", "--json"], |_| {});
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&names.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        rows.iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        names
    );
    // What each row says is its profile's source: `performance.zygote: true` and
    // `runtime: python` make a forking pool, preloads are listed.
    for r in rows {
        let name = r["name"].as_str().unwrap();
        let source = common::phantom(&["profile", "show", name], |_| {}).stdout;
        // Set in the profile itself, or else inherited (`extends:`).
        let zygote = r["zygote"] == true;
        if source.contains("zygote: true") {
            assert!(zygote, "{name}: {r}");
        } else if source.contains("zygote: false") || !source.contains("extends:") {
            assert!(!zygote, "{name}: {r}");
        }
        let python = r["runtime"] == "python";
        if source.contains("runtime: python") {
            assert!(python, "{name}: {r}");
        }
        let expect = match (zygote, python) {
            (false, _) => "cold",
            (true, true) => "forked",
            (true, false) => "pre-built",
        };
        assert!(
            r["warm_start"].as_str().unwrap().starts_with(expect),
            "{name}: {r}"
        );
        // Preloads set in the profile itself are listed (others are inherited).
        if source.contains("preload:") {
            for module in r["preload"].as_array().unwrap() {
                assert!(source.contains(module.as_str().unwrap()), "{name}: {r}");
            }
        }
    }
    let table = common::phantom(&["profile", "list", "--performance"], |_| {});
    assert_eq!(table.code, Some(0), "{}", table.describe());
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);

    if !sandbox_available() {
        return;
    }
    let measured = phantom_json(&[
        "profile",
        "list",
        "--benchmark",
        "--iterations",
        "2",
        "--json",
    ]);
    let profiles = measured["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), names.len(), "{measured}");
    for p in profiles {
        for start in ["cold", "warm"] {
            assert_eq!(p[start]["runs"], 2, "{p}");
            assert_eq!(p[start]["failures"], 0, "{p}");
            assert!(p[start]["p50_ms"].as_f64().unwrap() > 0.0, "{p}");
        }
    }
    // The warm rows went through the pools (every profile has one here).
    let default = profiles.iter().find(|p| p["profile"] == "default").unwrap();
    assert!(
        default["warm_runs_served_by_the_pool"].as_u64().unwrap() >= 1,
        "{default}"
    );
}

/// `phantom benchmark --all`, `--compare docker`, `--fragment zygote --profile
/// python-dev` were "unexpected argument".
#[test]
fn the_seed_benchmark_command_lines_run() {
    if !sandbox_available() {
        return;
    }
    let all = phantom_json(&[
        "benchmark",
        "--all",
        "--iterations",
        "1",
        "--io-size",
        "4MiB",
        "--concurrency",
        "0",
        "--json",
    ]);
    for kind in ["cold", "warm", "memory", "io", "sandbox", "net"] {
        assert!(all.get(kind).is_some(), "--all ran no {kind}: {all}");
    }

    let docker = phantom_json(&[
        "benchmark",
        "--compare",
        "docker",
        "--iterations",
        "1",
        "--json",
    ]);
    assert_eq!(docker["benchmark"], "cold", "{docker}");
    let rows: Vec<&str> = docker["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    let engine = Command::new("docker")
        .args(["info"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if engine {
        assert!(rows.contains(&"docker true"), "{docker}");
    } else {
        // No engine answers here: said so, and the rest still measured.
        let notes = docker["notes"].to_string();
        assert!(notes.contains("docker:"), "{docker}");
        assert!(!rows.iter().any(|r| r.starts_with("docker")), "{docker}");
        assert!(rows.contains(&"phantom true"), "{docker}");
    }

    let zygote = phantom_json(&[
        "benchmark",
        "--fragment",
        "zygote",
        "--profile",
        "python-dev",
        "--iterations",
        "2",
        "--concurrency",
        "1",
        "--json",
    ]);
    assert_eq!(zygote["benchmark"], "zygote", "{zygote}");
    assert_eq!(zygote["profile"], "python-dev", "{zygote}");

    let cold = phantom_json(&[
        "benchmark",
        "cold",
        "--profile",
        "minimal",
        "--iterations",
        "1",
        "--compare",
        "none",
        "--json",
    ]);
    let phantom_row = cold["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "phantom true")
        .cloned()
        .unwrap();
    assert!(
        phantom_row["command"]
            .as_str()
            .unwrap()
            .contains("--profile minimal"),
        "{phantom_row}"
    );
    let bad = common::phantom(&["benchmark", "--profile", "no-such-profile"], |_| {});
    assert_eq!(bad.code, Some(2), "{}", bad.describe());
    assert!(bad.stderr.contains("unknown profile"), "{}", bad.describe());
}
