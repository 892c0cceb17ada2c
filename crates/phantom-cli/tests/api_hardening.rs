//! Regressions of the hardening round (issue 16) around the HTTP API's front end and
//! the sandbox file paths:
//!
//! * the audit log — refused requests are budgeted per source before they reach the
//!   database, stored fields are bounded, and `phantom audit` prints them escaped;
//! * FIFOs planted in a workspace — a PUT, `phantom cp` either way and MCP
//!   `write_file` onto one fail at once, and a flood of such PUTs from one key leaves
//!   every other key served.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::api::{http, Server};
use common::mcp::McpServer;
use common::sandbox_available;
use serde_json::{json, Value};

/// Bytes of the state database on disk: the file, its WAL and shared memory.
fn db_bytes(server: &Server) -> u64 {
    ["state.db", "state.db-wal", "state.db-shm"]
        .iter()
        .map(|f| {
            std::fs::metadata(server.dir.join("state").join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

fn audit_json(server: &Server) -> Vec<Value> {
    let out = server.phantom(&["audit", "--json", "--limit", "100000"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    serde_json::from_str::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
        .as_array()
        .unwrap()
        .clone()
}

/// Wait until the audit log holds a record `pred` accepts (the server writes in the
/// background).
fn wait_for_audit(server: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let records = audit_json(server);
        if records.iter().any(&pred) {
            return records;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what} never reached the audit log: {records:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Regression: refused requests were written to the audit log before any rate limit,
/// whole: 2,000 unauthenticated requests with 8 KiB names grew state.db by 17 MB in a
/// second. Now a source's refusals past its budget are counted (one summary row when
/// the window closes — here at SIGTERM), and each stored field is bounded.
#[test]
fn a_flood_of_refused_requests_with_long_names_grows_the_audit_log_by_a_bounded_amount() {
    if !sandbox_available() {
        return;
    }
    let mut server = Server::start("audit-flood", &[]);
    // One refusal first, so the database and its tables exist before the measurement.
    assert_eq!(
        server
            .request("GET", "/api/v2/sandboxes/first", None, b"")
            .status,
        401
    );
    wait_for_audit(&server, "the first refusal", |r| r["target"] == "first");
    let before = db_bytes(&server);

    const REQUESTS: usize = 2000;
    const NAME: usize = 8 << 10;
    const THREADS: usize = 16;
    let port = server.port;
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (t..REQUESTS).step_by(THREADS) {
                    let name = format!("flood{i:05}-{}", "x".repeat(NAME));
                    let path = format!("/api/v2/sandboxes/{name}");
                    assert_eq!(http(port, "GET", &path, None, b"").status, 401);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let flood_time = started.elapsed();
    // Measured running (the WAL holds the new rows), and again once the server has
    // stopped — on SIGTERM it writes what it queued and the summary of what it counted
    // (its WAL may be checkpointed into the file then): the larger counts.
    std::thread::sleep(Duration::from_millis(500));
    let running = db_bytes(&server);
    assert!(
        server.stop(Duration::from_secs(20)),
        "the server did not stop"
    );
    let after = running.max(db_bytes(&server));

    let records = audit_json(&server);
    let written: Vec<&Value> = records
        .iter()
        .filter(|r| r["target"].as_str().is_some_and(|t| t.starts_with("flood")))
        .collect();
    let summaries: Vec<u64> = records
        .iter()
        .filter_map(|r| r["detail"].as_str())
        .filter(|d| d.contains("more refusals from 127.0.0.1"))
        .map(|d| d.split(' ').next().unwrap().parse().unwrap())
        .collect();
    // Every refusal is either a row or counted in a summary: none is lost.
    let counted: u64 = summaries.iter().sum();
    assert_eq!(
        written.len() as u64 + counted,
        REQUESTS as u64,
        "{} rows, {summaries:?} counted",
        written.len()
    );
    // One source: at most its budget of rows in the window (plus the first refusal).
    let budget = phantom_server::audit::REFUSALS_PER_SOURCE as usize;
    assert!(written.len() < budget, "{} rows", written.len());
    for r in &written {
        let target = r["target"].as_str().unwrap();
        assert!(
            target.len() <= phantom_state::audit::MAX_FIELD_BYTES,
            "{}",
            target.len()
        );
        assert!(target.contains("…[+"), "cut without a marker: {target}");
    }
    // What the database may have grown by: the rows the budget lets through and the
    // summary, each at most its bounded fields, every one written in its own
    // transaction (a WAL frame of a few pages each) — far below the flood's own size.
    let page = 4096 + 24; // a WAL frame: a page and its header
    let row = 2 * phantom_state::audit::MAX_FIELD_BYTES + 3 * phantom_state::audit::MAX_SHORT_BYTES;
    let rows = (budget + 1) as u64;
    let bound = rows * (row as u64 + 4 * page) + 16 * page;
    let growth = after.saturating_sub(before);
    eprintln!(
        "{REQUESTS} refused requests with {NAME}-byte names in {flood_time:?}: state.db {before} -> {after} bytes (+{growth}, bound {bound}); {} rows, {counted} counted",
        written.len()
    );
    assert!(
        growth <= bound,
        "state.db grew by {growth} bytes, more than {bound}"
    );
    assert!(growth < (REQUESTS * NAME / 20) as u64);
}

/// Regression: `phantom audit` printed request names raw, so an unauthenticated URL
/// with `%1b%5b2J%0a...` cleared the operator's terminal and forged an audit line.
/// Now every record is one line with its control, C1 and bidi characters escaped, and
/// the JSON carries them as `\u` escapes (the same strings to a parser).
#[test]
fn a_name_with_escape_and_newline_is_printed_escaped_by_phantom_audit() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("audit-escape", &[]);
    let forged = "\u{1b}[2J\n     1  1s ago  key=-  sandbox.delete  prod  ok";
    let name = format!("evil{forged}\u{9b}31m\u{202e}\u{7f}\\x");
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect();
    let r = server.request("GET", &format!("/api/v2/sandboxes/{encoded}"), None, b"");
    assert_eq!(r.status, 401, "{}", r.text());
    let records = wait_for_audit(&server, "the refusal", |r| {
        r["target"].as_str().is_some_and(|t| t.starts_with("evil"))
    });
    // The JSON holds the name as it came, with no raw control character in the text.
    let stored = records
        .iter()
        .find(|r| r["target"].as_str().is_some_and(|t| t.starts_with("evil")))
        .unwrap();
    assert_eq!(stored["target"], name.as_str());
    let raw_json = server.phantom(&["audit", "--json"]).stdout;
    let unsafe_char =
        |c: char| (c.is_control() && c != '\n') || ('\u{2028}'..='\u{202e}').contains(&c);
    assert!(
        !raw_json.chars().any(unsafe_char),
        "raw control characters in --json: {raw_json:?}"
    );
    // The text: one line per record, nothing a terminal acts on.
    let out = server.phantom(&["audit"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        !out.stdout.chars().any(unsafe_char),
        "raw control characters in the text: {:?}",
        out.stdout
    );
    assert_eq!(
        out.stdout.lines().count(),
        audit_json(&server).len(),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("evil\\u{1b}[2J\\n     1  1s ago  key=-  sandbox.delete  prod  ok\\u{9b}31m\\u{202e}\\u{7f}\\\\x"),
        "{}",
        out.stdout
    );
}

/// A persistent sandbox of `key` with a FIFO at /workspace/fifo (made by the sandbox
/// itself, as an attacker would).
fn sandbox_with_a_fifo(server: &Server, key: &str, name: &str) {
    let r = server.json("POST", "/api/v2/sandboxes", key, json!({ "name": name }));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.json(
        "POST",
        &format!("/api/v2/sandboxes/{name}/exec"),
        key,
        json!({"argv": ["mkfifo", "/workspace/fifo"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["exit_code"], 0, "{}", r.text());
}

/// Regression: a PUT onto a FIFO the sandbox planted opened it without O_NONBLOCK and
/// waited for a reader forever, holding a blocking thread of the server.
#[test]
fn a_fifo_in_the_workspace_cannot_hang_a_put() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("fifo-put", &[]);
    let key = server.key("tenant", &[]);
    sandbox_with_a_fifo(&server, &key, "box");
    for (method, body) in [("PUT", &b"payload"[..]), ("GET", &b""[..])] {
        let started = Instant::now();
        let r = server.request(
            method,
            "/api/v2/sandboxes/box/files/content?path=/workspace/fifo",
            Some(&key),
            body,
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{method} took {:?}",
            started.elapsed()
        );
        assert_eq!(r.status, 400, "{method}: {}", r.text());
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("not a regular file"),
            "{method}: {}",
            r.text()
        );
    }
}

/// The status of one exchange. 600 connections at once overflow the listen queue (the
/// kernel answers some with a reset before the server sees them): those are sent
/// again, as a client would.
fn status_of(port: u16, method: &str, path: &str, key: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    for _ in 0..50 {
        let exchange = || -> std::io::Result<Vec<u8>> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            s.write_all(
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )?;
            s.write_all(body)?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)?;
            Ok(raw)
        };
        match exchange() {
            Ok(raw) => {
                let head = String::from_utf8_lossy(&raw);
                return head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no HTTP reply: {head}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }
    panic!("{method} {path}: reset 50 times");
}

/// Regression: ~530 PUTs onto planted FIFOs took every thread of tokio's blocking pool
/// (512), and then every other key's requests hung while /health still said 200. Now
/// each PUT fails at once, and one key can hold only its share of the threads anyway:
/// another key's list and run answer within seconds, during and after the flood.
#[test]
fn six_hundred_puts_onto_a_fifo_do_not_stop_another_keys_requests() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("fifo-flood", &[]);
    let attacker = server.key("attacker", &["--rate", "100000", "--burst", "100000"]);
    let other = server.key("other", &[]);
    sandbox_with_a_fifo(&server, &attacker, "trap");

    const PUTS: usize = 600;
    let port = server.port;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(PUTS + 1));
    let flood: Vec<_> = (0..PUTS)
        .map(|_| {
            let key = attacker.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                status_of(
                    port,
                    "PUT",
                    "/api/v2/sandboxes/trap/files/content?path=/workspace/fifo",
                    &key,
                    b"x",
                )
            })
        })
        .collect();
    barrier.wait();
    // During the flood.
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let status = status_of(port, "GET", "/api/v2/sandboxes", &other, b"");
    let during = started.elapsed();
    assert_eq!(status, 200);
    let statuses: Vec<u16> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    // Each PUT was refused as the caller's mistake (400), or turned away for the key's
    // share of threads (503): none hung, none was a 500.
    assert!(
        statuses.iter().all(|s| *s == 400 || *s == 503),
        "{:?}",
        statuses.iter().filter(|s| **s != 400).collect::<Vec<_>>()
    );
    // After it.
    let started = Instant::now();
    let r = server.json(
        "POST",
        "/api/v2/run",
        &other,
        json!({"argv": ["echo", "still served"]}),
    );
    let after = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "still served\n");
    eprintln!(
        "{PUTS} PUTs onto a FIFO: {} refused (400), {} turned away (503); another key's list took {during:?} during, its run {after:?} after",
        statuses.iter().filter(|s| **s == 400).count(),
        statuses.iter().filter(|s| **s == 503).count()
    );
    assert!(during < Duration::from_secs(5), "{during:?}");
    assert!(after < Duration::from_secs(10), "{after:?}");
}

/// A private state directory for the CLI; its sandboxes destroyed and removed on drop.
struct Cli(PathBuf);

impl Cli {
    fn new(tag: &str) -> Cli {
        let dir = std::env::temp_dir().join(format!(
            "phantom-hardening-it-{tag}-{}-{}",
            std::process::id(),
            common::unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("host")).unwrap();
        Cli(dir)
    }

    fn run(&self, args: &[&str]) -> common::PhantomOutput {
        let state = self.0.join("state");
        common::phantom(args, move |c| {
            c.env("PHANTOM_STATE_DIR", state);
        })
    }

    fn ok(&self, args: &[&str]) -> common::PhantomOutput {
        let out = self.run(args);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        out
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.run(&["destroy", "--all"]);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Regression: `phantom cp HOSTFILE box:/workspace/fifo` opened the FIFO without
/// O_NONBLOCK and hung (SECURITY.md said a FIFO cannot hang a copy); the reverse
/// "succeeded" having copied nothing. Both now fail at once with a clear error.
#[test]
fn phantom_cp_onto_or_from_a_fifo_fails_at_once_with_a_clear_error() {
    if !sandbox_available() {
        return;
    }
    let cli = Cli::new("cp-fifo");
    cli.ok(&["create", "--name", "c"]);
    cli.ok(&["exec", "c", "--", "mkfifo", "/workspace/fifo"]);
    let host_file = cli.0.join("host/file.txt");
    std::fs::write(&host_file, b"from the host\n").unwrap();
    let back = cli.0.join("host/back");
    for (src, dst, needle) in [
        (
            host_file.display().to_string(),
            "c:/workspace/fifo".to_string(),
            "not a regular file",
        ),
        (
            "c:/workspace/fifo".to_string(),
            back.display().to_string(),
            "not a regular file or a directory",
        ),
    ] {
        let started = Instant::now();
        let out = cli.run(&["cp", &src, &dst]);
        let took = started.elapsed();
        assert_eq!(out.code, Some(2), "cp {src} {dst}: {}", out.describe());
        assert!(
            out.stderr.contains(needle),
            "cp {src} {dst}: {}",
            out.describe()
        );
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.describe());
        assert!(
            took < Duration::from_secs(15),
            "cp {src} {dst} took {took:?}"
        );
    }
    assert!(!back.exists());
    // The FIFO is still a FIFO (nothing replaced it), and a plain copy still works.
    let out = cli.ok(&[
        "exec",
        "c",
        "--",
        "sh",
        "-c",
        "test -p /workspace/fifo && echo fifo",
    ]);
    assert_eq!(out.stdout, "fifo\n");
    cli.ok(&[
        "cp",
        &host_file.display().to_string(),
        "c:/workspace/file.txt",
    ]);
}

/// Regression: MCP `write_file` onto a planted FIFO hung the same way (the MCP server
/// writes through the same file code as the HTTP API and `phantom cp`).
#[test]
fn mcp_write_file_onto_a_fifo_fails_at_once() {
    if !sandbox_available() {
        return;
    }
    let cli = Cli::new("mcp-fifo");
    let tmp = cli.0.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let state = cli.0.join("state");
    let mut mcp = McpServer::start_with_env(
        &["--mode", "cold"],
        &tmp,
        &[("PHANTOM_STATE_DIR", state.as_path())],
    );
    let r = mcp.call("create_sandbox", json!({"name": "m"}));
    assert_ne!(r["isError"], true, "{r}");
    let r = mcp.call(
        "exec_in_sandbox",
        json!({"name": "m", "argv": ["mkfifo", "/workspace/fifo"]}),
    );
    assert_eq!(r["isError"], false, "{r}");
    let started = Instant::now();
    let r = mcp.call(
        "write_file",
        json!({"name": "m", "path": "/workspace/fifo", "content": "x"}),
    );
    let took = started.elapsed();
    assert_eq!(r["isError"], true, "{r}");
    assert!(r.to_string().contains("not a regular file"), "{r}");
    assert!(took < Duration::from_secs(5), "write_file took {took:?}");
    // The server is still at work.
    let r = mcp.call(
        "write_file",
        json!({"name": "m", "path": "/workspace/ok.txt", "content": "x"}),
    );
    assert_ne!(r["isError"], true, "{r}");
    mcp.call("destroy_sandbox", json!({"name": "m"}));
    assert!(mcp.finish().success());
}
