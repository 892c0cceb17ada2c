//! The supervisor's HTTP API against a real server on loopback
//! (`phantom-supervisor --bind 127.0.0.1:0`), with a temporary state directory and
//! pool socket: endpoints, keys, rate limits, body limits, PSI admission with a fake
//! pressure source, SIGTERM, and a bounded load test.

mod common;

use std::time::{Duration, Instant};

use common::api::{http, Server};
use common::sandbox_available;
use serde_json::{json, Value};

#[test]
fn health_needs_no_key_and_answers_fast() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("health", &[]);
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = server.request("GET", "/health", None, b"");
        times.push(t.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["status"], "ok");
    }
    times.sort();
    // Connection set-up included; no sandbox, no database on this path.
    assert!(times[10] < Duration::from_millis(50), "{times:?}");
    let doc = server
        .request("GET", "/api/v2/openapi.json", None, b"")
        .json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/api/v2/run"]["post"].is_object());
    let r = server.request("GET", "/api/v2/nowhere", None, b"");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("no such endpoint"));
}

#[test]
fn runs_report_like_phantom_run_and_bad_input_is_a_clear_400() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("run", &[]);
    let key = server.key("runner", &[]);
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"language": "python", "code": "print(6*7)"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["stdout"], "42\n");
    assert_eq!(v["exit_code"], 0);
    assert!(v["cpu_ms"].as_f64().unwrap() > 0.0, "{v}");
    for field in [
        "stderr",
        "signal",
        "timed_out",
        "oom_killed",
        "output_truncated",
        "wall_ms",
        "max_rss_kb",
    ] {
        assert!(v.get(field).is_some(), "{field} missing: {v}");
    }
    // Files, env, stdin; the command's failure is a normal result.
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"argv": ["sh", "-c", "cat /workspace/src/in.txt; echo $GREETING; cat; exit 3"],
               "files": [{"path": "src/in.txt", "content": "file\n"}],
               "env": {"GREETING": "hi"}, "stdin": "piped\n"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "file\nhi\npiped\n");
    assert_eq!(r.json()["exit_code"], 3);
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"argv": ["sleep", "5"], "timeout": "500ms"}),
    );
    assert_eq!(r.json()["timed_out"], true, "{}", r.text());
    // Bad input: each a 400 with a message saying what to send.
    for (body, needle) in [
        (b"{not json".to_vec(), "invalid JSON body"),
        (
            json!({"lang": "python"}).to_string().into_bytes(),
            "unknown field `lang`",
        ),
        (
            json!({"language": "cobol", "code": "x"})
                .to_string()
                .into_bytes(),
            "unknown language `cobol`",
        ),
        (
            json!({"code": "print(1)"}).to_string().into_bytes(),
            "send either language and code",
        ),
        (
            json!({"argv": ["true"], "profile": "nope"})
                .to_string()
                .into_bytes(),
            "nope",
        ),
        (
            json!({"argv": ["true"], "memory": "lots"})
                .to_string()
                .into_bytes(),
            "lots",
        ),
        (
            json!({"argv": ["true"], "files": [{"path": "../x", "content": ""}]})
                .to_string()
                .into_bytes(),
            "without `..`",
        ),
    ] {
        let r = server.request("POST", "/api/v2/run", Some(&key), &body);
        assert_eq!(
            r.status,
            400,
            "{}: {}",
            String::from_utf8_lossy(&body),
            r.text()
        );
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    // A huge body: 413, before anything runs.
    let big = vec![b'x'; 9 << 20];
    let r = server.request("POST", "/api/v2/run", Some(&key), &big);
    assert_eq!(r.status, 413, "{}", r.text());
}

#[test]
fn keys_are_required_checked_rate_limited_and_audited() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("auth", &[]);
    let body = json!({"argv": ["true"]}).to_string();
    assert_eq!(
        server
            .request("POST", "/api/v2/run", None, body.as_bytes())
            .status,
        401
    );
    let r = server.request(
        "POST",
        "/api/v2/run",
        Some("phk_000000000000_00"),
        body.as_bytes(),
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str().unwrap()),
        (
            401,
            "malformed API key (expected phk_<id>_<secret> or e2b_<40 hex>)"
        )
    );
    let key = server.key("limited", &["--rate", "2", "--burst", "2"]);
    let mut wrong = key.clone();
    wrong.pop();
    wrong.push(if key.ends_with('0') { '1' } else { '0' });
    assert_eq!(
        server
            .request("POST", "/api/v2/run", Some(&wrong), body.as_bytes())
            .status,
        401
    );
    // The bucket holds 2: the third call at once is refused with Retry-After.
    assert_eq!(
        server
            .request("GET", "/api/v2/sandboxes", Some(&key), b"")
            .status,
        200
    );
    assert_eq!(
        server
            .request("GET", "/api/v2/sandboxes", Some(&key), b"")
            .status,
        200
    );
    let r = server.request("GET", "/api/v2/sandboxes", Some(&key), b"");
    assert_eq!(r.status, 429, "{}", r.text());
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=31).contains(&after), "{after}");
    // A revoked key is refused.
    let other = server.key("other", &[]);
    assert_eq!(
        server
            .request("GET", "/api/v2/sandboxes", Some(&other), b"")
            .status,
        200
    );
    assert_eq!(server.phantom(&["keys", "revoke", "other"]).code, Some(0));
    let r = server.request("GET", "/api/v2/sandboxes", Some(&other), b"");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("revoked"));
    // Every refusal is in the audit log; metrics count them.
    std::thread::sleep(Duration::from_millis(300));
    let audit: Value = serde_json::from_str(&server.phantom(&["audit", "--json"]).stdout).unwrap();
    let denied = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "denied")
        .count();
    assert!(denied >= 4, "{audit}");
    let metrics = server.request("GET", "/metrics", None, b"").text();
    assert!(
        metrics.contains("aisbx_auth_failures_total{reason=\"revoked\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aisbx_rate_limit_hits_total 1"),
        "{metrics}"
    );
}

#[test]
fn persistent_sandboxes_files_and_snapshots_over_http_are_per_key() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("sandboxes", &[]);
    let key = server.key("agent", &[]);
    let r = server.json("POST", "/api/v2/sandboxes", &key, json!({"name": "box"}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "box");
    // The name is taken for this key: a conflict.
    assert_eq!(
        server
            .json("POST", "/api/v2/sandboxes", &key, json!({"name": "box"}))
            .status,
        409
    );
    let r = server.request(
        "PUT",
        "/api/v2/sandboxes/box/files/content?path=/workspace/app/main.py",
        Some(&key),
        b"print('hello from a file')\n",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = server.json(
        "POST",
        "/api/v2/sandboxes/box/exec",
        &key,
        json!({"argv": ["python3", "app/main.py"], "cwd": "/workspace"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "hello from a file\n");
    assert_eq!(r.json()["start"], "exec");
    let r = server.json("POST", "/api/v2/sandboxes/box/exec", &key, json!({"argv": ["sh", "-c", "echo made > /workspace/out.txt; ln -s /etc/shadow /workspace/s"]}));
    assert_eq!(r.status, 200);
    let r = server.request(
        "GET",
        "/api/v2/sandboxes/box/files/content?path=/workspace/out.txt",
        Some(&key),
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "made\n"));
    let listing = server
        .request(
            "GET",
            "/api/v2/sandboxes/box/files?path=/workspace",
            Some(&key),
            b"",
        )
        .json();
    let names: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "out.txt", "s"]);
    // A planted symlink and `..` are refused, not followed.
    for path in ["/workspace/s", "/workspace/../etc/passwd", "/etc/passwd"] {
        let r = server.request(
            "GET",
            &format!("/api/v2/sandboxes/box/files/content?path={path}"),
            Some(&key),
            b"",
        );
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    let r = server.request("POST", "/api/v2/sandboxes/box/snapshots", Some(&key), b"");
    assert_eq!(r.status, 201, "{}", r.text());
    let snaps = server
        .request("GET", "/api/v2/sandboxes/box/snapshots", Some(&key), b"")
        .json();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    // Another key sees none of it.
    let stranger = server.key("stranger", &[]);
    assert_eq!(
        server
            .request("GET", "/api/v2/sandboxes", Some(&stranger), b"")
            .json(),
        json!([])
    );
    assert_eq!(
        server
            .request("GET", "/api/v2/sandboxes/box", Some(&stranger), b"")
            .status,
        404
    );
    let r = server.json(
        "POST",
        "/api/v2/sandboxes/box/exec",
        &stranger,
        json!({"argv": ["true"]}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = server.request("DELETE", "/api/v2/sandboxes/box", Some(&key), b"");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("destroyed"))
    );
    assert_eq!(
        server
            .request("GET", "/api/v2/sandboxes/box", Some(&key), b"")
            .status,
        404
    );
    let metrics = server.request("GET", "/metrics", None, b"").text();
    for family in [
        "phantom_fragment_spawn_duration_seconds_bucket",
        "phantom_orchestrator_warm_pool_size",
        "phantom_security_policy_compile_duration_seconds",
        "phantom_performance_p95_spawn_time_ms",
        "aisbx_request_duration_seconds_bucket",
        "aisbx_sandbox_starts_total",
        "aisbx_active_connections",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    // The policy compile histogram was registered but never observed: each run and
    // exec now records the engine's compile time.
    let compiles: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("phantom_security_policy_compile_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(compiles >= 2.0, "{compiles} compiles observed:\n{metrics}");
}

#[test]
fn pressure_above_the_thresholds_gets_503_with_retry_after() {
    if !sandbox_available() {
        return;
    }
    let psi = std::env::temp_dir().join(format!(
        "phantom-api-psi-{}-{}",
        std::process::id(),
        common::unique()
    ));
    std::fs::create_dir_all(&psi).unwrap();
    let write = |cpu: f64, mem: f64| {
        for (file, v) in [("cpu", cpu), ("memory", mem)] {
            std::fs::write(
                psi.join(file),
                format!("some avg10={v:.2} avg60=0.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1\n"),
            )
            .unwrap();
        }
    };
    write(95.0, 0.0);
    let psi_arg = psi.display().to_string();
    let server = Server::start(
        "psi",
        &["--psi-aware", "--psi-source", &psi_arg, "--psi-cpu", "50"],
    );
    let key = server.key("k", &[]);
    let r = server.json("POST", "/api/v2/run", &key, json!({"argv": ["true"]}));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("cpu pressure 95.0% > 50.0%"));
    let p = server
        .request("GET", "/api/v2/system/psi", Some(&key), b"")
        .json();
    assert_eq!(p["cpu_some_avg10"], 95.0);
    write(1.0, 0.0);
    let r = server.json("POST", "/api/v2/run", &key, json!({"argv": ["true"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    drop(server);
    let _ = std::fs::remove_dir_all(&psi);
}

#[test]
fn sigterm_finishes_in_flight_runs_and_keeps_persistent_sandboxes() {
    if !sandbox_available() {
        return;
    }
    let mut server = Server::start("term", &["--grace", "10s"]);
    let key = server.key("k", &[]);
    let r = server.json("POST", "/api/v2/sandboxes", &key, json!({"name": "keep"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let port = server.port;
    let k2 = key.clone();
    let in_flight = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/api/v2/run",
            Some(&k2),
            json!({"argv": ["sh", "-c", "sleep 1; echo done"]})
                .to_string()
                .as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.stop(Duration::from_secs(15)),
        "the server did not stop: {}",
        server.log.lock().unwrap()
    );
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "done\n");
    // The persistent sandbox outlives the server, recorded and running (the key's: an
    // operator sees it acting as that key).
    let owner = format!("key:{}", &key[4..16]);
    let list: Value = serde_json::from_str(
        &server
            .phantom(&["list", "--json", "--owner", &owner])
            .stdout,
    )
    .unwrap();
    assert_eq!(list[0]["status"], "running", "{list}");
}

#[test]
fn stream_true_sends_output_as_it_comes_then_the_result() {
    use std::io::{BufRead, BufReader, Write};
    if !sandbox_available() {
        return;
    }
    let server = Server::start("stream", &[]);
    let key = server.key("k", &[]);
    let body =
        json!({"argv": ["sh", "-c", "echo first; sleep 2; echo second; exit 5"], "stream": true})
            .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "POST /api/v2/run HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let started = Instant::now();
    let mut events: Vec<(Duration, String, String)> = Vec::new();
    let mut current = String::new();
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        if let Some(name) = line.strip_prefix("event: ") {
            current = name.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            events.push((started.elapsed(), current.clone(), data.to_string()));
        }
    }
    let first = events
        .iter()
        .find(|e| e.1 == "stdout" && e.2.contains("first"))
        .expect("first chunk");
    let last = events.last().expect("events");
    assert_eq!(last.1, "result", "{events:?}");
    let result: Value = serde_json::from_str(&last.2).unwrap();
    assert_eq!(result["exit_code"], 5);
    // The first line arrived while the command was still sleeping.
    assert!(
        last.0 - first.0 >= Duration::from_millis(1500),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| e.1 == "stdout" && e.2.contains("second")));
}

/// Regression (found by schemathesis): a NUL byte in an argument made starting the
/// `phantom` child fail, and the API answered 500 instead of telling the caller.
#[test]
fn a_nul_byte_in_an_argument_is_a_400_not_a_500() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("nul", &[]);
    let key = server.key("k", &[]);
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"argv": ["echo", "a\u{0}b"]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("NUL byte"));
    let r = server.json("POST", "/api/v2/sandboxes", &key, json!({"name": "n"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.json(
        "POST",
        "/api/v2/sandboxes/n/exec",
        &key,
        json!({"argv": ["true"], "timeout": "1\u{0}s"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn a_limited_run_over_http_reports_and_counts_its_proxy_decisions() {
    if !sandbox_available() {
        return;
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        common::skip("no /usr/bin/python3 on this host (the client inside the sandbox)");
        return;
    }
    let server = Server::start("net", &[]);
    let key = server.key("runner", &[]);
    // node-dev is limited to registry.npmjs.org: example.com is refused by the proxy,
    // which answers CONNECT with a 403 (no name is resolved, nothing leaves the host).
    let code = "import urllib.request\ntry:\n    urllib.request.urlopen('https://example.com/', timeout=10)\nexcept Exception as e:\n    print(e)";
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"argv": ["python3", "-c", code], "profile": "node-dev"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["stdout"].as_str().unwrap().contains("403"), "{v}");
    assert_eq!(v["network"]["refused"], 1, "{v}");
    assert_eq!(v["network"]["connections"][0]["host"], "example.com", "{v}");
    let metrics = server.request("GET", "/metrics", None, b"").text();
    assert!(
        metrics.contains("phantom_network_proxy_connections_total{decision=\"refused\"} 1"),
        "{metrics}"
    );
}

/// A client that goes away mid-run: the run is stopped, and its cgroup and run directory
/// are removed at once (a SIGKILL of `phantom run` would leave them for the next run).
#[test]
fn a_client_that_goes_away_stops_its_run_and_leaves_nothing() {
    client_goes_away(false);
}

/// A streamed run (`"stream": true`) went on to its end after its client left: the
/// cancel end of the run was held by the task that waited for the result, not by the
/// response body.
#[test]
fn a_streaming_client_that_goes_away_stops_its_run() {
    client_goes_away(true);
}

fn client_goes_away(stream: bool) {
    use std::io::Write;
    if !sandbox_available() {
        return;
    }
    let server = Server::start("leave", &[]);
    let key = server.key("k", &[]);
    let marker = format!("gone-{}-{}", std::process::id(), common::unique());
    // `minimal` has no pool here: a cold run, the path that has a run directory to clean.
    let body =
        json!({"argv": ["sh", "-c", format!("touch /workspace/{marker}; echo started; sleep 30")],
                      "profile": "minimal", "stream": stream})
        .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "POST /api/v2/run HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The run's workspace is a tmpfs inside its sandbox: the host sees its process and
    // its run directory (one that appeared after the request).
    let run_dirs = || {
        let out = std::process::Command::new("sh")
            .args(["-c", "find /dev/shm /tmp ${XDG_RUNTIME_DIR:-/nonexistent} -maxdepth 2 -name 'run-*' 2>/dev/null"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let running = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("touch /workspace/{marker}")])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    let before = run_dirs();
    let started = Instant::now();
    while !running() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ours: Vec<String> = run_dirs().difference(&before).cloned().collect();
    drop(s); // the client goes away
    let gone = Instant::now();
    while ours.iter().any(|d| std::path::Path::new(d).exists()) || running() {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "run directory {ours:?} or the run still there\n{}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let procs = std::process::Command::new("pgrep")
        .args(["-f", &format!("touch /workspace/{marker}")])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "still running: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
}

/// A run's `files` were written by joining paths, following symlinks: in direct mode,
/// which runs on the host, a link an earlier run planted in the host workspace
/// (`out -> /some/host/dir`) took the write out of it. Each step is resolved beneath
/// the workspace now, never through a symlink.
#[test]
fn files_are_never_written_through_a_symlink_in_the_workspace() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("files-link", &[]);
    let key = server.key(
        "ops",
        &["--allow", "direct-mode", "--allow", "host-workspace"],
    );
    let ws = server.dir.join("ws");
    let outside = server.dir.join("outside");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.join("f"), ws.join("f")).unwrap();
    for mode in ["direct", "sandbox"] {
        for path in ["out/x", "f"] {
            let r = server.json(
                "POST",
                "/api/v2/run",
                &key,
                json!({"argv": ["true"], "mode": mode, "workspace": ws,
                       "files": [{"path": path, "content": "through the link"}]}),
            );
            assert_eq!(r.status, 400, "{mode} {path}: {}", r.text());
            assert_eq!(r.json()["field"], "files", "{}", r.text());
        }
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // A plain path is written as before.
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"argv": ["cat", "src/main.py"], "mode": "direct", "workspace": ws, "cwd": ws,
               "files": [{"path": "src/main.py", "content": "print(1)\n"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "print(1)\n", "{}", r.text());
}
