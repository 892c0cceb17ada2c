//! Network modes (issue 8): `limited` egress through phantom's proxy, `none`,
//! `loopback-only` and `host`.
//!
//! All traffic stays on the host's loopback. A small HTTP server in this test process
//! plays "the internet"; `PHANTOM_TEST_RESOLVE` (the proxy's test-only resolver
//! override) maps the names a policy allows to it. Inside, python3 (bound from the
//! host's /usr by the default profile) is the client: urllib through HTTP_PROXY, and
//! hand-written CONNECT and SOCKS5 exchanges with the proxy.
//!
//! Every refusal is contrasted with a run or request that gets through, so that a
//! test fails if the refusal had another cause.
//!
//! Needs user namespaces; without them (or without python3) a test prints
//! `skipped: <why>`, and fails under `PHANTOM_REQUIRE_ISOLATION=1`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The host's "internet": answers every request with a body naming `token`, and
/// records each request line (and Host header) it served.
struct Internet {
    port: u16,
    token: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Internet {
    fn start() -> Internet {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
        let port = listener.local_addr().unwrap().port();
        let token = format!("internet-{}-{}", std::process::id(), unique());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (t, s) = (token.clone(), Arc::clone(&seen));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (t, s) = (t.clone(), Arc::clone(&s));
                std::thread::spawn(move || serve_one(stream, &t, &s));
            }
        });
        Internet { port, token, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// `PHANTOM_TEST_RESOLVE` mapping each of `names` here.
    fn resolve(&self, names: &[&str]) -> String {
        names
            .iter()
            .map(|n| format!("{n}=127.0.0.1:{}", self.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn serve_one(mut stream: TcpStream, token: &str, seen: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("").to_string();
    let host = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("host:"))
        .map(|l| l[5..].trim().to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(format!("{line} host={host}"));
    let body = format!("hello from {token}");
    let _ = stream.write_all(
        format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// Whether the limited-mode tests can run here; prints the skip when not.
fn ready() -> bool {
    if !sandbox_available() {
        return false;
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        skip("no /usr/bin/python3 on this host (the client inside the sandbox)");
        return false;
    }
    true
}

/// Python helpers the scripts below share: an HTTP exchange through a CONNECT tunnel
/// and one through SOCKS5, each returning what came back.
const HELPERS: &str = r#"
import json, os, socket, struct, sys, urllib.request, urllib.error
PROXY = ("127.0.0.1", int(os.environ.get("HTTP_PROXY", ":0").rsplit(":", 1)[1]))
def read_all(s):
    out = b""
    while True:
        b = s.recv(65536)
        if not b: return out
        out += b
def connect_get(host, port):
    s = socket.create_connection(PROXY, timeout=10)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b: break
        head += b
    status = head.split(b" ")[1].decode() if head else "none"
    if status != "200":
        return status, (head + read_all(s)).decode(errors="replace")
    s.sendall(f"GET /tunnelled HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    return status, read_all(s).decode(errors="replace")
def socks_get(host, port):
    s = socket.create_connection(PROXY, timeout=10)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00": return "no-auth refused", ""
    name = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
    reply = s.recv(10)
    if reply[1] != 0: return f"socks-{reply[1]}", ""
    s.sendall(f"GET /socks HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    return "socks-0", read_all(s).decode(errors="replace")
def urllib_get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return str(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return str(e.code), e.read().decode()
    except Exception as e:
        return "error", repr(e)
def attempt(f):
    try:
        f(); return "ok"
    except OSError as e:
        return f"errno {e.errno}"
results = {}
"#;

/// Runs `script` (after [`HELPERS`]; it fills `results`) with python3 in a sandbox of
/// `policy` (a file) plus `flags`, with `resolve` as PHANTOM_TEST_RESOLVE. Returns
/// phantom's report and the script's results.
fn run_script(policy: &str, flags: &[&str], resolve: &str, script: &str) -> (Value, Value) {
    let code = format!("{HELPERS}\n{script}\nprint(json.dumps(results))\n");
    let mut args = vec![
        "run",
        "--json",
        "--cold",
        "--timeout",
        "60s",
        "--policy",
        policy,
    ];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "python3", "-c", &code]);
    let out = phantom(&args, |c| {
        c.env("PHANTOM_TEST_RESOLVE", resolve);
    });
    let report = out
        .report()
        .unwrap_or_else(|e| panic!("no report ({e})\n{}", out.describe()));
    let results = report["stdout"]
        .as_str()
        .and_then(|s| s.lines().rev().find(|l| l.starts_with('{')))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the script printed no results\n{}", out.describe()));
    (report, results)
}

fn pair(results: &Value, key: &str) -> (String, String) {
    let v = &results[key];
    (
        v[0].as_str().unwrap_or_default().to_string(),
        v[1].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn an_allowed_name_is_reached_through_the_proxy_and_any_other_gets_403() {
    if !ready() {
        return;
    }
    let internet = Internet::start();
    let ws = Workspace::new();
    let policy = ws.policy(
        "egress",
        "profile: egress-test\nnetwork:\n  mode: limited\n  allow: [pypi.test, \"*.files.test\"]\n",
    );
    let resolve = internet.resolve(&["pypi.test", "cdn.files.test", "other.test"]);
    let (report, results) = run_script(
        &policy,
        &[],
        &resolve,
        r#"
results["env"] = [os.environ.get(k, "") for k in ("HTTP_PROXY", "https_proxy", "ALL_PROXY")]
results["http"] = urllib_get("http://pypi.test/simple/")
results["wildcard"] = urllib_get("http://cdn.files.test/pkg.whl")
results["connect"] = connect_get("pypi.test", 443)
results["other"] = urllib_get("http://other.test/")
results["other_connect"] = connect_get("other.test", 443)
"#,
    );
    assert_eq!(report["exit_code"], 0, "{report}");
    let env = &results["env"];
    assert!(
        env[0].as_str().unwrap().starts_with("http://127.0.0.1:"),
        "{env}"
    );
    assert_eq!(env[0], env[1], "{env}");
    assert!(
        env[2].as_str().unwrap().starts_with("socks5h://127.0.0.1:"),
        "{env}"
    );
    for key in ["http", "wildcard", "connect"] {
        let (status, body) = pair(&results, key);
        assert_eq!(status, "200", "{key}: {body}");
        assert!(body.contains(&internet.token), "{key}: {body}");
    }
    // Refused by the policy, with a 403 that names the profile and why.
    for key in ["other", "other_connect"] {
        let (status, body) = pair(&results, key);
        assert_eq!(status, "403", "{key}: {body}");
        assert!(
            body.contains("profile `egress-test`") && body.contains("not in network.allow"),
            "{key}: {body}"
        );
    }
    // other.test resolved to the server too: only the policy kept it out.
    let seen = internet.seen();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("GET /simple/ ") && l.ends_with("host=pypi.test")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("GET /tunnelled ")),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|l| l.contains("other.test")), "{seen:?}");
    // The report counts and lists every decision.
    let net = &report["network"];
    assert_eq!(net["mode"], "limited", "{report}");
    assert_eq!(
        (net["allowed"].as_u64(), net["refused"].as_u64()),
        (Some(3), Some(2)),
        "{net}"
    );
    let decisions: Vec<(String, String, String)> = net["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["protocol"].as_str().unwrap().to_string(),
                c["host"].as_str().unwrap().to_string(),
                c["decision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        decisions.contains(&("connect".into(), "other.test".into(), "refused".into())),
        "{decisions:?}"
    );
    assert!(
        decisions.contains(&("http".into(), "pypi.test".into(), "allowed".into())),
        "{decisions:?}"
    );
}

#[test]
fn deny_wins_over_allow_and_the_403_names_the_entry() {
    if !ready() {
        return;
    }
    let internet = Internet::start();
    let ws = Workspace::new();
    let policy = ws.policy(
        "deny",
        "profile: deny-test\nnetwork:\n  mode: limited\n  allow: [\"*.corp.test\"]\n  deny: [secret.corp.test]\n",
    );
    let resolve = internet.resolve(&["www.corp.test", "secret.corp.test"]);
    let (_, results) = run_script(
        &policy,
        &[],
        &resolve,
        r#"
results["www"] = connect_get("www.corp.test", 443)
results["secret"] = connect_get("secret.corp.test", 443)
results["secret_socks"] = socks_get("secret.corp.test", 443)
"#,
    );
    assert_eq!(pair(&results, "www").0, "200", "{results}");
    let (status, body) = pair(&results, "secret");
    assert_eq!(status, "403", "{body}");
    assert!(
        body.contains("denied by network.deny entry `secret.corp.test`")
            && body.contains("deny-test"),
        "{body}"
    );
    // SOCKS5's "connection not allowed by ruleset".
    assert_eq!(pair(&results, "secret_socks").0, "socks-2", "{results}");
    assert!(
        !internet.seen().iter().any(|l| l.contains("secret")),
        "{:?}",
        internet.seen()
    );
}

#[test]
fn socks5_reaches_allowed_names_only() {
    if !ready() {
        return;
    }
    let internet = Internet::start();
    let ws = Workspace::new();
    let policy = ws.policy(
        "socks",
        "profile: socks-test\nnetwork:\n  mode: limited\n  allow: [pypi.test]\n",
    );
    let resolve = internet.resolve(&["pypi.test", "other.test"]);
    let (report, results) = run_script(
        &policy,
        &[],
        &resolve,
        r#"
results["allowed"] = socks_get("pypi.test", 80)
results["other"] = socks_get("other.test", 80)
"#,
    );
    let (status, body) = pair(&results, "allowed");
    assert_eq!(status, "socks-0", "{results}");
    assert!(body.contains(&internet.token), "{body}");
    assert_eq!(pair(&results, "other").0, "socks-2", "{results}");
    let net = &report["network"];
    assert_eq!(net["connections"][0]["protocol"], "socks5", "{net}");
    assert_eq!(
        (net["allowed"].as_u64(), net["refused"].as_u64()),
        (Some(1), Some(1)),
        "{net}"
    );
}

#[test]
fn the_proxy_reaches_host_loopback_services_only_by_an_address_entry() {
    if !ready() {
        return;
    }
    let private = Internet::start(); // a service on the host's loopback
    let allowed = Internet::start();
    let ws = Workspace::new();
    // `localhost` is allowed by name, but its address is loopback: refused. Only the
    // address entry of `allowed` reaches it. No resolver override here.
    let policy = ws.policy(
        "loopback",
        &format!(
            "profile: loopback-test\nnetwork:\n  mode: limited\n  allow: [localhost, \"127.0.0.1:{}\"]\n",
            allowed.port
        ),
    );
    let (_, results) = run_script(
        &policy,
        &[],
        "",
        &format!(
            r#"
results["by_address"] = connect_get("127.0.0.1", {private})
results["by_name"] = connect_get("localhost", {private})
results["by_v6"] = connect_get("[::ffff:127.0.0.1]", {private})
results["allowed"] = connect_get("127.0.0.1", {allowed})
"#,
            private = private.port,
            allowed = allowed.port
        ),
    );
    let (status, body) = pair(&results, "by_address");
    assert_eq!(status, "403", "{body}");
    let (status, body) = pair(&results, "by_name");
    assert_eq!(status, "403", "{body}");
    // The refusal names the range (not "loopback, private or link-local" for every
    // reserved address) and both ways through.
    assert!(
        body.contains("127.0.0.0/8 (loopback)") || body.contains("::1/128 (loopback)"),
        "{body}"
    );
    assert!(body.contains("network.allow_reserved"), "{body}");
    assert_eq!(pair(&results, "by_v6").0, "403", "{results}");
    let (status, body) = pair(&results, "allowed");
    assert_eq!(status, "200", "{body}");
    assert!(body.contains(&allowed.token), "{body}");
    assert!(private.seen().is_empty(), "{:?}", private.seen());
}

#[test]
fn a_mirror_at_a_reserved_address_is_reached_only_when_named_in_allow_reserved() {
    if !ready() {
        return;
    }
    // A package mirror on the host's loopback, reached by a name that resolves there
    // (no resolver override: the proxy's own lookup, as with an internal DNS).
    let mirror = Internet::start();
    let ws = Workspace::new();
    let named = ws.policy(
        "mirror",
        "profile: mirror-test\nnetwork:\n  mode: limited\n  allow: [localhost]\n  allow_reserved: [localhost]\n",
    );
    let unnamed = ws.policy(
        "no-mirror",
        "profile: no-mirror-test\nnetwork:\n  mode: limited\n  allow: [localhost]\n",
    );
    let script = format!(
        r#"
results["by_name"] = connect_get("localhost", {port})
results["by_address"] = connect_get("127.0.0.1", {port})
"#,
        port = mirror.port
    );
    let (_, results) = run_script(&named, &[], "", &script);
    let (status, body) = pair(&results, "by_name");
    assert_eq!(status, "200", "{results}");
    assert!(body.contains(&mirror.token), "{body}");
    // The name lets its own addresses through, not an address asked for directly.
    assert_eq!(pair(&results, "by_address").0, "403", "{results}");
    assert_eq!(mirror.seen().len(), 1, "{:?}", mirror.seen());
    // The default stays refusing, and says which range and what to write.
    let (_, results) = run_script(&unnamed, &[], "", &script);
    let (status, body) = pair(&results, "by_name");
    assert_eq!(status, "403", "{results}");
    assert!(body.contains("(loopback)"), "{body}");
    assert!(
        body.contains("network.allow_reserved (e.g. `localhost`"),
        "{body}"
    );
    assert_eq!(mirror.seen().len(), 1, "{:?}", mirror.seen());
}

#[test]
fn direct_connections_raw_sockets_and_udp_dns_fail_inside() {
    if !ready() {
        return;
    }
    let internet = Internet::start();
    let ws = Workspace::new();
    let policy = ws.policy(
        "direct",
        "profile: direct-test\nnetwork:\n  mode: limited\n  allow: [pypi.test]\n",
    );
    let script = format!(
        r#"
def tcp(addr):
    s = socket.socket(); s.settimeout(5); s.connect(addr)
def udp_dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04pypi\x03org\x00\x00\x01\x00\x01"
    s.sendto(query, ("8.8.8.8", 53)); s.recvfrom(512)
def udp_local_dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(b"\x00", ("127.0.0.53", 53)); s.recvfrom(512)
def raw():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def resolve():
    socket.getaddrinfo("pypi.org", 443)
results["host_server"] = attempt(lambda: tcp(("127.0.0.1", {port})))
results["outside"] = attempt(lambda: tcp(("1.1.1.1", 443)))
results["udp_dns"] = attempt(udp_dns)
results["udp_local_dns"] = attempt(udp_local_dns)
results["raw"] = attempt(raw)
results["resolve"] = attempt(resolve)
results["proxy"] = attempt(lambda: tcp(PROXY))
"#,
        port = internet.port
    );
    let (_, results) = run_script(&policy, &[], "", &script);
    for key in [
        "host_server",
        "outside",
        "udp_dns",
        "udp_local_dns",
        "raw",
        "resolve",
    ] {
        let got = results[key].as_str().unwrap_or_default();
        assert_ne!(
            got, "ok",
            "{key} succeeded inside a limited sandbox: {results}"
        );
    }
    // The one door that is open.
    assert_eq!(results["proxy"], "ok", "{results}");
    // Contrast: with the host's network the same direct connect reaches the server,
    // so the failure above is the sandbox's doing. (Only that one: the others would
    // leave the host.)
    let contrast = format!(
        "def tcp(addr):\n    s = socket.socket(); s.settimeout(5); s.connect(addr)\nresults[\"host_server\"] = attempt(lambda: tcp((\"127.0.0.1\", {})))",
        internet.port
    );
    let (report, results) = run_script(&policy, &["--network", "host"], "", &contrast);
    assert_eq!(results["host_server"], "ok", "{results}\n{report}");
    assert!(
        report["warnings"]
            .to_string()
            .contains("shares the host's network"),
        "{report}"
    );
    assert!(internet.seen().len() <= 1, "{:?}", internet.seen());
}

#[test]
fn landlock_fences_tcp_to_the_proxy_port_in_limited_mode() {
    if !ready() {
        return;
    }
    // Landlock ABI 4+ (TCP rules): the first fence is the namespace, this the second.
    let abi = phantom(&["doctor", "--json"], |_| {}).stdout;
    let has_tcp_rules = serde_json::from_str::<Value>(&abi)
        .ok()
        .and_then(|v| {
            v.as_array()?.iter().find(|c| c["name"] == "landlock")?["detail"]
                .as_str()?
                .strip_prefix("ABI ")?
                .parse::<u32>()
                .ok()
        })
        .is_some_and(|abi| abi >= 4);
    if !has_tcp_rules {
        skip("the kernel's Landlock has no TCP rules (ABI < 4)");
        return;
    }
    let ws = Workspace::new();
    let script = r#"
def serve_and_connect():
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    c = socket.socket(); c.settimeout(5); c.connect(srv.getsockname())
def connect_local():
    c = socket.socket(); c.settimeout(5); c.connect(("127.0.0.1", 9))
results["serve"] = attempt(serve_and_connect)
results["connect_local"] = attempt(connect_local)
"#;
    let limited = ws.policy("ll", "profile: ll\nnetwork:\n  mode: limited\n");
    let (_, results) = run_script(&limited, &[], "", script);
    assert_eq!(results["serve"], "errno 13", "bind is fenced: {results}");
    assert_eq!(
        results["connect_local"], "errno 13",
        "connect is fenced: {results}"
    );
    // Contrast: loopback-only needs every port on lo, and gets them.
    let open = ws.policy("lo", "profile: lo\nnetwork:\n  mode: loopback-only\n");
    let code = format!(
        "import json, socket\n{}\n{}\nprint(json.dumps(results))",
        "def attempt(f):\n    try:\n        f(); return 'ok'\n    except OSError as e:\n        return f'errno {e.errno}'\nresults = {}",
        script
    );
    let out = phantom(
        &[
            "run", "--json", "--cold", "--policy", &open, "--", "python3", "-c", &code,
        ],
        |_| {},
    );
    let report = out
        .report()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    let results: Value = serde_json::from_str(report["stdout"].as_str().unwrap().trim()).unwrap();
    assert_eq!(results["serve"], "ok", "{results}");
    assert_eq!(results["connect_local"], "errno 111", "{results}"); // ECONNREFUSED
}

#[test]
fn host_network_is_refused_by_strict_and_in_hardened_mode() {
    for args in [
        &[
            "run",
            "--profile",
            "strict",
            "--network",
            "host",
            "--",
            "true",
        ][..],
        &[
            "run",
            "--mode",
            "hardened",
            "--network",
            "host",
            "--",
            "true",
        ],
        &[
            "run",
            "--mode",
            "hardened",
            "--network",
            "limited",
            "--",
            "true",
        ],
    ] {
        let out = phantom(args, |_| {});
        assert_eq!(out.code, Some(2), "{}", out.describe());
        assert!(
            out.stderr
                .contains("conflicts with mode hardened, which has no network at all"),
            "{}",
            out.describe()
        );
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.describe());
    }
}

#[test]
fn a_requests_allowed_hosts_replace_the_profiles_and_make_the_network_limited() {
    if !ready() {
        return;
    }
    let internet = Internet::start();
    let ws = Workspace::new();
    // The profile has no proxy at all, and allows a host the request does not.
    let policy = ws.policy(
        "hosts",
        "profile: hosts-test\nnetwork:\n  mode: loopback-only\n  allow: [other.test]\n",
    );
    let resolve = internet.resolve(&[
        "pypi.test",
        "www.corp.test",
        "secret.corp.test",
        "other.test",
    ]);
    let (report, results) = run_script(
        &policy,
        &[
            "--allow-host",
            "pypi.test",
            "--allow-host",
            "*.corp.test",
            "--deny-host",
            "secret.corp.test",
        ],
        &resolve,
        r#"
results["pypi"] = urllib_get("http://pypi.test/simple/")
results["www"] = connect_get("www.corp.test", 443)
results["secret"] = connect_get("secret.corp.test", 443)
results["other"] = connect_get("other.test", 443)
"#,
    );
    assert_eq!(report["network"]["mode"], "limited", "{report}");
    assert_eq!(pair(&results, "pypi").0, "200", "{results}");
    assert_eq!(pair(&results, "www").0, "200", "{results}");
    assert_eq!(pair(&results, "secret").0, "403", "{results}");
    assert_eq!(pair(&results, "other").0, "403", "{results}");
    assert!(
        !internet
            .seen()
            .iter()
            .any(|l| l.contains("secret") || l.contains("other")),
        "{:?}",
        internet.seen()
    );
}

#[test]
fn allowed_hosts_that_cannot_apply_are_refused_naming_the_flag() {
    for (args, says) in [
        (
            vec!["--allow-host", "https://pypi.org/simple"],
            "--allow-host",
        ),
        (
            vec!["--deny-host", "pypi.org"],
            "give the hosts that are allowed too",
        ),
        (
            vec!["--network", "none", "--allow-host", "pypi.org"],
            "no egress proxy",
        ),
    ] {
        let mut full = vec!["run"];
        full.extend_from_slice(&args);
        full.extend_from_slice(&["--", "true"]);
        let out = phantom(&full, |_| {});
        assert_eq!(out.code, Some(2), "{}", out.describe());
        assert!(out.stderr.contains(says), "{says}: {}", out.describe());
    }
}

#[test]
fn malformed_allow_entries_are_policy_errors_at_their_place() {
    let dir = std::env::temp_dir().join(format!(
        "phantom-net-policy-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (entry, says) in [
        ("\"*.\"", "a wildcard needs a domain after `*.`"),
        ("\"pypi.org:99999\"", "port 99999 is out of range"),
        (
            "\"https://pypi.org/simple\"",
            "is a URL; write only the host",
        ),
    ] {
        let path = dir.join("bad.yaml");
        std::fs::write(
            &path,
            format!("profile: bad\nnetwork:\n  mode: limited\n  allow:\n    - pypi.org\n    - {entry}\n"),
        )
        .unwrap();
        let path = path.display().to_string();
        for args in [
            vec!["policy", "check", path.as_str()],
            vec!["run", "--policy", path.as_str(), "--", "true"],
        ] {
            let out = phantom(&args, |_| {});
            assert_eq!(out.code, Some(2), "{}", out.describe());
            let expected = format!("{path}:6:7: network.allow[1]: ");
            assert!(
                out.stderr.contains(&expected) && out.stderr.contains(says),
                "{expected}\n{}",
                out.describe()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_proxy_dies_with_a_killed_front_end() {
    if !ready() {
        return;
    }
    let ws = Workspace::new();
    let policy = ws.policy("kill", "profile: kill-test\nnetwork:\n  mode: limited\n");
    // The helper starts with the first connection to the proxy (a run that never
    // connects has none): the payload connects, then waits.
    let connect_and_wait =
        "import socket, time; s = socket.create_connection(('127.0.0.1', 3128)); time.sleep(30)";
    let mut child = std::process::Command::new(phantom_bin())
        .args([
            "run",
            "--cold",
            "--policy",
            &policy,
            "--",
            "python3",
            "-c",
            connect_and_wait,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The helper is a process under phantom (its engine's child) named phantom:proxy.
    let front = child.id();
    let helper = (0..200).find_map(|_| {
        std::thread::sleep(Duration::from_millis(25));
        common::descendants(front).into_iter().find_map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.pid)).ok()?;
            (comm.trim() == "phantom:proxy").then(|| p.pid.to_string())
        })
    });
    let helper = helper.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("no phantom:proxy child of phantom {front}")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(25));
        // Gone, or a zombie whose parent (init) has yet to reap it.
        std::fs::read_to_string(format!("/proc/{helper}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    });
    assert!(gone, "phantom:proxy {helper} outlived its killed front end");
}

#[test]
fn old_reports_without_a_network_section_still_parse() {
    let old = r#"{"sandbox_id":"x","profile":"default","mode":"sandbox","start":"cold","exit_code":0,"signal":null,"timed_out":false,"oom_killed":false,"output_truncated":false,"wall_ms":1.0,"user_ms":0.0,"sys_ms":0.0,"max_rss_kb":1,"isolation":{"cgroup":"v1","landlock_abi":6,"seccomp_programs":2,"host_uid":1,"idmapped_workspace":false},"warnings":[]}"#;
    let report: phantom_api::RunReport = serde_json::from_str(old).unwrap();
    assert_eq!(report.network, None);
    // And a limited run's report says what the proxy did, even when it did nothing.
    if !ready() {
        return;
    }
    let out = phantom(
        &[
            "run",
            "--json",
            "--cold",
            "--profile",
            "python-dev",
            "--",
            "true",
        ],
        |_| {},
    );
    let report: phantom_api::RunReport = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    let net = report.network.expect("python-dev is limited");
    assert_eq!((net.allowed, net.refused, net.failed), (0, 0, 0));
}

#[test]
fn a_pooled_limited_sandbox_has_its_own_proxy_and_reports_it() {
    if !ready() {
        return;
    }
    let internet = Internet::start();
    // python-dev: limited, PyPI allowed, pre-started python3 in each pooled sandbox.
    let resolve = internet.resolve(&["pypi.org", "evil.test"]);
    let sup = supervisor::Supervisor::start_with_env(
        &["--profiles", "python-dev", "--zygote-pools", "1"],
        None,
        &[("PHANTOM_TEST_RESOLVE", &resolve)],
    );
    let code = format!(
        "{HELPERS}\nresults['pypi'] = urllib_get('http://pypi.org/simple/')\nresults['evil'] = connect_get('evil.test', 443)\nprint(json.dumps(results))"
    );
    let out = sup.phantom(&[
        "run",
        "--json",
        "--profile",
        "python-dev",
        "--",
        "python3",
        "-c",
        &code,
    ]);
    let report = out
        .report()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    assert_eq!(report["start"], "forked", "{report}\n{}", sup.log());
    let results: Value = serde_json::from_str(
        report["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .last()
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}: {report}"));
    let (status, body) = pair(&results, "pypi");
    assert_eq!(status, "200", "{body}");
    assert!(body.contains(&internet.token), "{body}");
    let (status, body) = pair(&results, "evil");
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("profile `python-dev`"), "{body}");
    let net = &report["network"];
    assert_eq!(
        (net["allowed"].as_u64(), net["refused"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    // The pool counts them (`phantom pool status`); the count lands once the init
    // is reaped, just after the reply.
    let counted = (0..100).any(|_| {
        let pool = &sup.status()["pools"][0];
        if pool["proxy_allowed"] == 1 && pool["proxy_refused"] == 1 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
        false
    });
    assert!(counted, "{}", sup.status());
    // The supervisor logged each decision with the sandbox id.
    let id = report["sandbox_id"].as_str().unwrap();
    let log = sup.log();
    assert!(
        log.contains(&format!("proxy [{id}]: refused connect evil.test:443")),
        "{log}"
    );
}

#[test]
fn policy_compile_shows_the_egress_rules_and_the_tcp_fence() {
    let dir = std::env::temp_dir().join(format!(
        "phantom-net-compile-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.yaml");
    std::fs::write(
        &path,
        "profile: p\nnetwork:\n  mode: limited\n  allow: [pypi.org, \"*.pythonhosted.org:443\"]\n  deny: [evil.pythonhosted.org]\n",
    )
    .unwrap();
    let out = phantom(&["policy", "compile", path.to_str().unwrap()], |_| {});
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for line in [
        "network  limited",
        "  allow  pypi.org, *.pythonhosted.org:443",
        "  deny   evil.pythonhosted.org",
        "connect to ports: 3128; bind ports: none",
    ] {
        assert!(out.stdout.contains(line), "{line:?}\n{}", out.describe());
    }
}

#[test]
fn a_persistent_limited_sandbox_is_served_by_its_keeper_until_destroyed() {
    if !ready() {
        return;
    }
    let internet = Internet::start();
    let ws = Workspace::new();
    let policy = ws.policy(
        "persistent",
        "profile: persistent-test\nnetwork:\n  mode: limited\n  allow: [pypi.test]\n",
    );
    let state = std::env::temp_dir().join(format!(
        "phantom-net-state-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let resolve = internet.resolve(&["pypi.test", "other.test"]);
    let run = |args: &[&str]| {
        phantom(args, |c| {
            c.env("PHANTOM_STATE_DIR", &state)
                .env("PHANTOM_TEST_RESOLVE", &resolve);
        })
    };
    let created = run(&["create", "--name", "net", "--policy", &policy, "--json"]);
    assert_eq!(created.code, Some(0), "{}", created.describe());
    let record: Value = serde_json::from_str(&created.stdout).unwrap();
    let code = format!(
        "{HELPERS}\nresults['pypi'] = urllib_get('http://pypi.test/')\nresults['other'] = connect_get('other.test', 443)\nprint(json.dumps(results))"
    );
    let out = run(&["exec", "net", "--json", "--", "python3", "-c", &code]);
    let report = out
        .report()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    let results: Value = serde_json::from_str(
        report["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .last()
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}: {report}"));
    let (status, body) = pair(&results, "pypi");
    assert_eq!(status, "200", "{body}");
    assert!(body.contains(&internet.token), "{body}");
    assert_eq!(pair(&results, "other").0, "403", "{results}");
    // The keeper serves the proxy (its child) and logs each decision with the id.
    let id = record["id"].as_str().unwrap();
    let init = record["init_pid"].as_u64().unwrap();
    let parent = |pid: &str| -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
    };
    let keeper = parent(&init.to_string()).expect("the init's parent");
    let helper = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "phantom:proxy")
                && parent(pid).as_deref() == Some(keeper.as_str())
        })
        .expect("a phantom:proxy child of the keeper");
    let log = std::fs::read_to_string(state.join("sandboxes").join(id).join("keeper.log"))
        .unwrap_or_default();
    assert!(
        log.contains(&format!("proxy [{id}]: refused connect other.test:443")),
        "{log}"
    );
    let destroyed = run(&["destroy", "net"]);
    assert_eq!(destroyed.code, Some(0), "{}", destroyed.describe());
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(25));
        std::fs::read_to_string(format!("/proc/{helper}/comm"))
            .map_or(true, |c| c.trim() != "phantom:proxy")
    });
    let _ = std::fs::remove_dir_all(&state);
    assert!(
        gone,
        "phantom:proxy {helper} outlived its destroyed sandbox"
    );
}

/// A limited run that never connects pays no proxy helper (a fork of the engine per
/// run, most runs never using it): the helper starts with the first connection, and
/// the report still has its network section, with nothing in it.
#[test]
fn a_limited_run_that_never_connects_starts_no_proxy_helper() {
    if !ready() {
        return;
    }
    let ws = Workspace::new();
    let policy = ws.policy("quiet", "profile: quiet-test\nnetwork:\n  mode: limited\n");
    let child = std::process::Command::new(phantom_bin())
        .args([
            "run", "--cold", "--json", "--policy", &policy, "--", "sleep", "1",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let front = child.id();
    let mut helpers = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(25));
        helpers += common::descendants(front)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                    .is_ok_and(|c| c.trim() == "phantom:proxy")
            })
            .count();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        helpers, 0,
        "a proxy helper ran for a run that never connected"
    );
    let report: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let net = &report["network"];
    assert_eq!(net["mode"], "limited", "{report}");
    assert_eq!(
        (net["allowed"].as_u64(), net["refused"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );
}
