//! MCP on the supervisor: `phantom-supervisor --bind ADDR` serves MCP (Streamable HTTP)
//! at `/mcp/v1/` — the README's URL — with the same API keys and tenancy as /api/v2.
//! It used to answer 404.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::api::Server;
use common::sandbox_available;
use serde_json::{json, Value};

/// One MCP POST: the status, the session id the server gave (if any), and the JSON-RPC
/// messages of the answer (a JSON body or an event stream's `data:` lines).
struct Answer {
    status: u16,
    session: Option<String>,
    messages: Vec<Value>,
    raw: String,
}

impl Answer {
    /// The result of the JSON-RPC request `id`.
    fn result(&self, id: u64) -> &Value {
        self.messages
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| &m["result"])
            .unwrap_or_else(|| panic!("no answer to request {id}: {}", self.raw))
    }
}

fn post(port: u16, path: &str, key: Option<&str>, session: Option<&str>, body: &Value) -> Answer {
    let body = body.to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    if let Some(sid) = session {
        head.push_str(&format!(
            "Mcp-Session-Id: {sid}\r\nMcp-Protocol-Version: 2025-06-18\r\n"
        ));
    }
    s.write_all(format!("{head}\r\n{body}").as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status: {raw}"));
    let session = raw
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("mcp-session-id")
                .then(|| v.trim().to_string())
        });
    // Chunk sizes and SSE framing aside, every JSON-RPC message is one line.
    let messages = raw
        .lines()
        .map(|l| l.strip_prefix("data:").unwrap_or(l).trim())
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("jsonrpc").is_some())
        .collect();
    Answer {
        status,
        session,
        messages,
        raw,
    }
}

/// An MCP session of one key: initialized, ready for calls.
struct Session {
    port: u16,
    key: String,
    id: String,
    next: u64,
}

impl Session {
    fn open(port: u16, key: &str, path: &str) -> Session {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "phantom-test", "version": "1"}}});
        let a = post(port, path, Some(key), None, &init);
        assert_eq!(a.status, 200, "{}", a.raw);
        assert_eq!(
            a.result(1)["serverInfo"]["name"],
            "phantom-fragment",
            "{}",
            a.raw
        );
        let id = a.session.clone().expect("a session id");
        let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let a = post(port, path, Some(key), Some(&id), &done);
        assert_eq!(a.status, 202, "{}", a.raw);
        Session {
            port,
            key: key.into(),
            id,
            next: 2,
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Answer {
        self.next += 1;
        let body = json!({"jsonrpc": "2.0", "id": self.next, "method": method, "params": params});
        post(
            self.port,
            "/mcp/v1/",
            Some(&self.key),
            Some(&self.id),
            &body,
        )
    }

    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let a = self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        assert_eq!(a.status, 200, "{}", a.raw);
        a.result(self.next).clone()
    }
}

#[test]
fn the_supervisor_serves_mcp_at_mcp_v1_with_the_rest_apis_keys_and_tenancy() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("mcp-v1", &[]);
    let alice = server.key("alice", &[]);
    let bob = server.key("bob", &[]);

    // No key, a wrong key: refused before MCP sees the request, as /api/v2 refuses.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    for key in [None, Some("phk_000000000000_00")] {
        let a = post(server.port, "/mcp/v1/", key, None, &init);
        assert_eq!(a.status, 401, "{key:?}: {}", a.raw);
    }

    // With and without the trailing slash.
    let _ = Session::open(server.port, &alice, "/mcp/v1");
    let mut a = Session::open(server.port, &alice, "/mcp/v1/");
    let tools = a.request("tools/list", json!({}));
    let names: Vec<&str> = tools.result(a.next)["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"run_command"), "{names:?}");

    // A run, through the supervisor's engine (its pool serves `default` warm).
    let r = a.call(
        "run_command",
        json!({"argv": ["sh", "-c", "echo from-mcp-v1"]}),
    );
    assert_eq!(r["structuredContent"]["stdout"], "from-mcp-v1\n", "{r}");
    assert_eq!(r["structuredContent"]["start"], "warm", "{r}");

    // A sandbox made over MCP is alice's: REST lists it for her, not for bob.
    let r = a.call("create_sandbox", json!({"name": "shared-name"}));
    assert_eq!(r["isError"], false, "{r}");
    let r = a.call(
        "write_file",
        json!({"name": "shared-name", "path": "note.txt", "content": "alice's note\n"}),
    );
    assert_eq!(r["isError"], false, "{r}");
    let listed = server.request("GET", "/api/v2/sandboxes", Some(&alice), b"");
    assert_eq!(listed.json()[0]["name"], "shared-name", "{}", listed.text());
    let listed = server.request("GET", "/api/v2/sandboxes", Some(&bob), b"");
    assert_eq!(listed.json(), json!([]), "{}", listed.text());
    let read = server.request(
        "GET",
        "/api/v2/sandboxes/shared-name/files/content?path=/workspace/note.txt",
        Some(&alice),
        b"",
    );
    assert_eq!(read.text(), "alice's note\n");

    // Bob over MCP: alice's sandbox is "not found", as over REST.
    let mut b = Session::open(server.port, &bob, "/mcp/v1/");
    let r = b.call(
        "read_file",
        json!({"name": "shared-name", "path": "note.txt"}),
    );
    assert_eq!(r["isError"], true, "{r}");
    assert!(r.to_string().contains("no sandbox named"), "{r}");
    assert!(!r.to_string().contains("alice's note"), "{r}");
    let r = b.call("list_sandboxes", json!({}));
    assert_eq!(r["structuredContent"]["sandboxes"], json!([]), "{r}");

    // Bob presenting alice's session id: the session stays alice's.
    let mut hijack = Session {
        port: server.port,
        key: bob.clone(),
        id: a.id.clone(),
        next: 100,
    };
    let r = hijack.call(
        "read_file",
        json!({"name": "shared-name", "path": "note.txt"}),
    );
    assert_eq!(r["isError"], true, "{r}");
    assert!(r.to_string().contains("another API key"), "{r}");
    assert!(!r.to_string().contains("alice's note"), "{r}");

    // A revoked key's session ends with the key.
    let out = server.phantom(&["keys", "revoke", "bob"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let gone = b.request(
        "tools/call",
        json!({"name": "list_sandboxes", "arguments": {}}),
    );
    assert_eq!(gone.status, 401, "{}", gone.raw);

    let r = a.call("destroy_sandbox", json!({"name": "shared-name"}));
    assert_eq!(r["isError"], false, "{r}");
}

#[test]
fn mcp_can_be_turned_off_on_the_supervisor() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("mcp-off", &["--mcp", "off"]);
    let key = server.key("k", &[]);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
    let a = post(server.port, "/mcp/v1/", Some(&key), None, &init);
    assert_eq!(a.status, 404, "{}", a.raw);
}

/// An MCP client holding its event stream open must not keep a stopping supervisor
/// for its whole grace period.
#[test]
fn an_open_mcp_event_stream_does_not_hold_up_a_stopping_supervisor() {
    if !sandbox_available() {
        return;
    }
    let mut server = Server::start("mcp-stop", &["--grace", "30s"]);
    let key = server.key("k", &[]);
    let session = Session::open(server.port, &key, "/mcp/v1/");
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        stream,
        "GET /mcp/v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {}\r\nMcp-Protocol-Version: 2025-06-18\r\n\r\n",
        session.id
    )
    .unwrap();
    let mut first = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let started = Instant::now();
    assert!(
        server.stop(Duration::from_secs(25)),
        "the supervisor did not stop"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "stopping took {took:?} with an MCP stream open (grace 30s)"
    );
    drop(stream);
}
