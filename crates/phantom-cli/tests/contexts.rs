//! Code contexts (issue 14 §2): a long-lived python interpreter in a persistent
//! sandbox whose state persists between calls, over /api/v2 and over MCP, with the
//! same result types (phantom_api::context).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::api::Server;
use common::mcp::McpServer;
use common::sandbox_available;
use serde_json::{json, Value};

/// What every PNG starts with (`\x89PNG\r\n\x1a\n`), in base64.
const PNG_BASE64_MAGIC: &str = "iVBORw0KGgo";

const FIGURE: &str = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()";

/// Whether the host's python3 has matplotlib (the python-data profile's figures).
fn has_matplotlib() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(server: &Server, key: &str, sandbox: &str, id: &str, body: Value) -> Value {
    let r = server.json(
        "POST",
        &format!("/api/v2/sandboxes/{sandbox}/contexts/{id}/run"),
        key,
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn main_text(result: &Value) -> Option<String> {
    result["results"]
        .as_array()?
        .iter()
        .find(|r| r["is_main_result"] == true)
        .and_then(|r| r["text"].as_str().map(str::to_string))
}

/// The SSE events of a streamed call: (arrived after, name, data).
fn stream(server: &Server, key: &str, path: &str, body: Value) -> Vec<(Duration, String, Value)> {
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let started = Instant::now();
    let mut events = Vec::new();
    let mut current = String::new();
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        if let Some(name) = line.strip_prefix("event: ") {
            current = name.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data = serde_json::from_str(data).unwrap_or(Value::String(data.into()));
            events.push((started.elapsed(), current.clone(), data));
        }
    }
    events
}

#[test]
fn a_rest_context_keeps_state_reports_errors_figures_streams_and_survives_a_timeout() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("contexts", &[]);
    let key = server.key("k", &[]);
    let r = server.json(
        "POST",
        "/api/v2/sandboxes",
        &key,
        json!({"name": "nb", "profile": "python-data"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.json("POST", "/api/v2/sandboxes/nb/contexts", &key, json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["language"], "python", "{created}");
    assert_eq!(created["cwd"], "/workspace", "{created}");

    // State persists between calls.
    let first = run(
        &server,
        &key,
        "nb",
        &id,
        json!({"code": "x = 1\nprint('set')"}),
    );
    assert_eq!(first["stdout"], "set\n", "{first}");
    assert!(first["error"].is_null(), "{first}");
    let second = run(&server, &key, "nb", &id, json!({"code": "x + 1"}));
    assert_eq!(main_text(&second).as_deref(), Some("2"), "{second}");
    assert_eq!(
        second["execution_count"].as_u64().unwrap(),
        first["execution_count"].as_u64().unwrap() + 1,
        "{second}"
    );

    // An exception: its name, value and traceback; a normal 200 result.
    let failed = run(
        &server,
        &key,
        "nb",
        &id,
        json!({"code": "def f():\n    return 1 / 0\nf()"}),
    );
    assert_eq!(failed["error"]["name"], "ZeroDivisionError", "{failed}");
    assert_eq!(failed["error"]["value"], "division by zero", "{failed}");
    let traceback = failed["error"]["traceback"].as_str().unwrap();
    assert!(traceback.contains("in f"), "{traceback}");
    assert!(traceback.contains("ZeroDivisionError"), "{traceback}");

    // A matplotlib figure comes back as a PNG.
    if has_matplotlib() {
        let fig = run(&server, &key, "nb", &id, json!({"code": FIGURE}));
        let png = fig["results"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|r| r["png"].as_str())
            .unwrap_or_else(|| panic!("no figure: {fig}"));
        assert!(
            png.starts_with(PNG_BASE64_MAGIC),
            "not a PNG: {}",
            &png[..20.min(png.len())]
        );
        assert!(png.len() > 1000, "a tiny PNG: {png}");
    } else {
        common::not_applicable(
            "no matplotlib in the host's /usr/bin/python3: the figure is not checked",
        );
    }

    // Streaming: output arrives while the code still runs; done comes last.
    let events = stream(
        &server,
        &key,
        &format!("/api/v2/sandboxes/nb/contexts/{id}/run"),
        json!({"code": "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')\nx + 41", "stream": true}),
    );
    let first = events
        .iter()
        .find(|e| e.1 == "stdout" && e.2["data"].as_str().unwrap_or("").contains("first"))
        .unwrap_or_else(|| panic!("no first line: {events:?}"));
    let result = events
        .iter()
        .find(|e| e.1 == "result")
        .unwrap_or_else(|| panic!("no result: {events:?}"));
    assert_eq!(result.2["text"], "42", "{events:?}");
    assert!(
        result.0 - first.0 >= Duration::from_secs(1),
        "the first line came only with the result: {events:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last.1, "done", "{events:?}");
    assert_eq!(last.2["timed_out"], false, "{events:?}");

    // A call past its timeout is interrupted, says so, and the context goes on.
    let t0 = Instant::now();
    let slow = run(
        &server,
        &key,
        "nb",
        &id,
        json!({"code": "import time\ntime.sleep(60)", "timeout": "1s"}),
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(slow["timed_out"], true, "{slow}");
    assert_eq!(slow["error"]["name"], "KeyboardInterrupt", "{slow}");
    assert!(
        slow["stderr"].as_str().unwrap().contains("timeout"),
        "{slow}"
    );
    let after = run(&server, &key, "nb", &id, json!({"code": "x + 1"}));
    assert_eq!(main_text(&after).as_deref(), Some("2"), "{after}");

    // Restart forgets the state, keeps the id.
    let r = server.json(
        "POST",
        &format!("/api/v2/sandboxes/nb/contexts/{id}/restart"),
        &key,
        json!({}),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let forgot = run(&server, &key, "nb", &id, json!({"code": "x"}));
    assert_eq!(forgot["error"]["name"], "NameError", "{forgot}");

    // Delete: gone from the list, its calls not found.
    let r = server.json("GET", "/api/v2/sandboxes/nb/contexts", &key, json!(null));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()[0]["id"], id.as_str(), "{}", r.text());
    let r = server.request(
        "DELETE",
        &format!("/api/v2/sandboxes/nb/contexts/{id}"),
        Some(&key),
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = server.json(
        "POST",
        &format!("/api/v2/sandboxes/nb/contexts/{id}/run"),
        &key,
        json!({"code": "1"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = server.request("DELETE", "/api/v2/sandboxes/nb", Some(&key), b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn another_keys_contexts_are_not_found() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("contexts-tenancy", &[]);
    let (alice, bob) = (server.key("alice", &[]), server.key("bob", &[]));
    let r = server.json(
        "POST",
        "/api/v2/sandboxes",
        &alice,
        json!({"name": "mine", "profile": "python-dev"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.json("POST", "/api/v2/sandboxes/mine/contexts", &alice, json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let base = format!("/api/v2/sandboxes/mine/contexts/{id}");
    for (method, path, body) in [
        (
            "GET",
            "/api/v2/sandboxes/mine/contexts".to_string(),
            json!(null),
        ),
        (
            "POST",
            "/api/v2/sandboxes/mine/contexts".to_string(),
            json!({}),
        ),
        ("POST", format!("{base}/run"), json!({"code": "1"})),
        ("POST", format!("{base}/restart"), json!({})),
        ("DELETE", base.clone(), json!(null)),
    ] {
        let r = server.json(method, &path, &bob, body);
        assert_eq!(
            r.status,
            404,
            "{method} {path} by another key: {}",
            r.text()
        );
    }
    // Bob's own sandbox of the same name does not reach Alice's context either.
    let r = server.json("POST", "/api/v2/sandboxes", &bob, json!({"name": "mine"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.json("GET", "/api/v2/sandboxes/mine/contexts", &bob, json!(null));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!([]));
    let r = server.json("POST", &format!("{base}/run"), &bob, json!({"code": "1"}));
    assert_eq!(r.status, 404, "{}", r.text());
    // Alice's is untouched.
    let r = server.json(
        "POST",
        &format!("{base}/run"),
        &alice,
        json!({"code": "40 + 2"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(main_text(&r.json()).as_deref(), Some("42"));
    for key in [&alice, &bob] {
        let r = server.request("DELETE", "/api/v2/sandboxes/mine", Some(key), b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "phantom-ctx-it-{name}-{}-{}",
        std::process::id(),
        common::unique()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    dir
}

#[test]
fn mcp_run_code_in_a_sandbox_keeps_state_and_returns_figures_as_images() {
    if !sandbox_available() {
        return;
    }
    let tmp = tmpdir("mcp");
    let state = tmp.join("state");
    let mut server = McpServer::start_with_env(&[], &tmp, &[("PHANTOM_STATE_DIR", &state)]);
    let r = server.call(
        "create_sandbox",
        json!({"name": "nb", "profile": "python-data"}),
    );
    assert_eq!(r["isError"], false, "{r}");
    let r = server.call("create_context", json!({"sandbox": "nb"}));
    assert_eq!(r["isError"], false, "{r}");
    let id = r["structuredContent"]["id"].as_str().unwrap().to_string();
    let call = |server: &mut McpServer, code: &str| {
        server.call(
            "run_code",
            json!({"language": "python", "code": code, "sandbox": "nb", "context": id}),
        )
    };
    let r = call(&mut server, "x = 1");
    assert_eq!(r["isError"], false, "{r}");
    let r = call(&mut server, "x + 1");
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(
        main_text(&r["structuredContent"]).as_deref(),
        Some("2"),
        "{r}"
    );
    assert_eq!(r["structuredContent"]["context"], id.as_str(), "{r}");
    // An exception is an error result with its name.
    let r = call(&mut server, "1 / 0");
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(
        r["structuredContent"]["error"]["name"], "ZeroDivisionError",
        "{r}"
    );
    // The default context of the sandbox is another one: no x there.
    let r = server.call(
        "run_code",
        json!({"language": "python", "code": "y = 5\ny", "sandbox": "nb"}),
    );
    assert_eq!(
        main_text(&r["structuredContent"]).as_deref(),
        Some("5"),
        "{r}"
    );
    // node code runs in the sandbox's default javascript context, with its own state.
    if std::path::Path::new("/usr/bin/node").exists() {
        let js = |server: &mut McpServer, code: &str| {
            server.call(
                "run_code",
                json!({"language": "node", "code": code, "sandbox": "nb"}),
            )
        };
        let r = js(&mut server, "let z = 20; console.log('hi')");
        assert_eq!(r["isError"], false, "{r}");
        assert_eq!(r["structuredContent"]["stdout"], "hi\n", "{r}");
        let r = js(&mut server, "z * 2 + (typeof y)");
        assert_eq!(
            main_text(&r["structuredContent"]).as_deref(),
            Some("'40undefined'"),
            "{r}"
        );
        let r = js(&mut server, "undefinedName");
        assert_eq!(
            r["structuredContent"]["error"]["name"], "ReferenceError",
            "{r}"
        );
        let r = server.call("list_contexts", json!({"sandbox": "nb"}));
        let languages: Vec<&str> = r["structuredContent"]["contexts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["language"].as_str())
            .collect();
        assert!(languages.contains(&"javascript"), "{r}");
        let r = server.call(
            "delete_context",
            json!({"sandbox": "nb", "context": "default-javascript"}),
        );
        assert_eq!(r["isError"], false, "{r}");
    } else {
        common::not_applicable(
            "no /usr/bin/node on this host: javascript contexts are not checked",
        );
    }
    let r = server.call("list_contexts", json!({"sandbox": "nb"}));
    assert_eq!(
        r["structuredContent"]["contexts"].as_array().unwrap().len(),
        2,
        "{r}"
    );
    if has_matplotlib() {
        let r = call(&mut server, FIGURE);
        assert_eq!(r["isError"], false, "{r}");
        let image = r["content"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "image")
            .unwrap_or_else(|| panic!("no image content: {r}"));
        assert_eq!(image["mimeType"], "image/png", "{image}");
        assert!(
            image["data"]
                .as_str()
                .unwrap()
                .starts_with(PNG_BASE64_MAGIC),
            "{image}"
        );
    } else {
        common::not_applicable(
            "no matplotlib in the host's /usr/bin/python3: the figure is not checked",
        );
    }
    let r = server.call("restart_context", json!({"sandbox": "nb", "context": id}));
    assert_eq!(r["isError"], false, "{r}");
    let r = call(&mut server, "x");
    assert_eq!(r["structuredContent"]["error"]["name"], "NameError", "{r}");
    let r = server.call("delete_context", json!({"sandbox": "nb", "context": id}));
    assert_eq!(r["isError"], false, "{r}");
    let r = call(&mut server, "1");
    assert_eq!(r["isError"], true, "{r}");
    assert!(r.to_string().contains("not found"), "{r}");
    let r = server.call("destroy_sandbox", json!({"name": "nb"}));
    assert_eq!(r["isError"], false, "{r}");
    assert!(server.finish().success());
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A streamed call whose client left while the code printed nothing ran on: the
/// server noticed the client only when it had an event to send, so the context stayed
/// busy until the code ended by itself.
#[test]
fn a_streaming_client_that_goes_away_interrupts_its_cell() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("contexts-leave", &[]);
    let key = server.key("k", &[]);
    let r = server.json(
        "POST",
        "/api/v2/sandboxes",
        &key,
        json!({"name": "nb", "profile": "python-dev"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.json("POST", "/api/v2/sandboxes/nb/contexts", &key, json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let body = json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(40)", "stream": true, "timeout": "60s"}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /api/v2/sandboxes/nb/contexts/{id}/run HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 && !line.contains("started") {
        line.clear();
    }
    assert!(line.contains("started"), "the cell did not start");
    drop(reader);
    // The next call is served at once: the cell was interrupted, not awaited.
    let t0 = Instant::now();
    let r = server.json(
        "POST",
        &format!("/api/v2/sandboxes/nb/contexts/{id}/run"),
        &key,
        json!({"code": "6 * 7", "timeout": "20s"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(main_text(&r.json()).as_deref(), Some("42"), "{}", r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    let r = server.request("DELETE", "/api/v2/sandboxes/nb", Some(&key), b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Contexts had no limit per sandbox: schemathesis created them in one sandbox until
/// its pids limit refused the next exec, answered 500 "the sandbox could not be run".
/// The limit is now a refusal that says what to do, and deleting one makes room.
#[test]
fn endless_contexts_in_one_sandbox_ran_out_of_pids_with_a_500() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("contexts-many", &[]);
    let key = server.key("k", &[]);
    let r = server.json("POST", "/api/v2/sandboxes", &key, json!({"name": "many"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let mut made = Vec::new();
    let refusal = loop {
        let r = server.json("POST", "/api/v2/sandboxes/many/contexts", &key, json!({}));
        if r.status != 201 {
            break r;
        }
        made.push(r.json()["id"].as_str().unwrap().to_string());
        assert!(made.len() <= 40, "no limit after 40 contexts");
    };
    assert_eq!(refusal.status, 409, "{}", refusal.text());
    assert!(refusal.text().contains("delete one"), "{}", refusal.text());
    // Every context made still works.
    let last = made.last().unwrap();
    let r = server.json(
        "POST",
        &format!("/api/v2/sandboxes/many/contexts/{last}/run"),
        &key,
        json!({"code": "1 + 1"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = server.request(
        "DELETE",
        &format!("/api/v2/sandboxes/many/contexts/{}", made[0]),
        Some(&key),
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = server.json("POST", "/api/v2/sandboxes/many/contexts", &key, json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.request("DELETE", "/api/v2/sandboxes/many", Some(&key), b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A command (or a context) joining a sandbox whose pids limit was full was answered
/// 500 "the sandbox could not be run" (clone3 EAGAIN, found by schemathesis creating a
/// context in a sandbox made with a tiny `pids`): it is the caller's to resolve, a 409
/// that says so.
#[test]
fn an_exec_into_a_sandbox_at_its_pids_limit_answered_500() {
    if !sandbox_available() {
        return;
    }
    if !common::is_root() {
        // Without a cgroup (an unprivileged engine) the pids limit is RLIMIT_NPROC,
        // which counts every process of the host user, not the sandbox's.
        return common::not_applicable("a sandbox's pids limit needs a cgroup (root)");
    }
    let server = Server::start("contexts-pids", &[]);
    let key = server.key("k", &[]);
    let r = server.json(
        "POST",
        "/api/v2/sandboxes",
        &key,
        json!({"name": "tight", "pids": 3}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // Fill the pids limit with background sleepers, until one is refused.
    let mut started = 0;
    let refusal = loop {
        let r = server.json(
            "POST",
            "/api/v2/sandboxes/tight/exec",
            &key,
            json!({"argv": ["sleep", "60"], "background": true}),
        );
        if r.status != 201 {
            break r;
        }
        started += 1;
        assert!(started < 10, "a pids limit of 3 held {started} sleepers");
    };
    assert_eq!(refusal.status, 409, "{}", refusal.text());
    assert!(refusal.text().contains("pids limit"), "{}", refusal.text());
    // A context (an interpreter with its threads) does not fit either.
    let r = server.json("POST", "/api/v2/sandboxes/tight/contexts", &key, json!({}));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("pids"), "{}", r.text());
    let r = server.request("DELETE", "/api/v2/sandboxes/tight", Some(&key), b"");
    assert_eq!(r.status, 200, "{}", r.text());
}
