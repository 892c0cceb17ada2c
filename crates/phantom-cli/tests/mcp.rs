//! `phantom-mcp` over stdio with raw JSON-RPC: the server's process model as root and
//! unprivileged — cold and warm runs, bad arguments, the private supervisor dying with
//! the server, what a killed server leaves and the next one collects. The full client
//! matrix (the official Python SDK over stdio and HTTP, the conformance suite) is
//! scripts/test-mcp.sh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mcp::{mcp_bin, McpServer as Server};
use serde_json::{json, Value};

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')))
}

/// A fresh TMPDIR for one server, so that its scratch directory can be found.
/// Stop `server` as a client would (stdin closed), check it removed its scratch
/// directory, and remove `tmp`.
fn stop_and_clean(server: Server, tmp: &Path) {
    assert!(server.finish().success());
    assert!(
        scratch_dirs(tmp).is_empty(),
        "scratch left: {:?}",
        scratch_dirs(tmp)
    );
    std::fs::remove_dir_all(tmp).unwrap();
}

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
    stop_and_clean(server, &tmp);
}

#[test]
fn bad_arguments_are_tool_errors_that_say_what_to_send() {
    let tmp = tmpdir("args");
    let mut server = Server::start(&["--mode", "cold"], &tmp);
    let r = server.call("run_code", json!({"language": "cobol", "code": "x"}));
    assert_eq!(r["isError"], true, "{r}");
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("`cobol`") && text.contains("python") && text.contains("run_command"),
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
            .contains("`/etc/passwd` is an absolute path: give a path relative to /workspace"),
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
    assert_eq!(m["structuredContent"]["engine"], "running", "{m}");
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
        "name": "run_command", "arguments": {"argv": ["sleep", marker], "timeout": 120}}}),
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

/// The MCP server calls its engine: a busy server has no `phantom` CLI process under it
/// (it used to start `phantom run` for cold runs, create and exec).
#[test]
fn a_busy_mcp_server_starts_no_phantom_process() {
    if !common::sandbox_available() {
        return;
    }
    let tmp = tmpdir("busy");
    let mut server = Server::start(&["--mode", "cold"], &tmp);
    let marker = format!("0.9{}", std::process::id());
    for id in 0..4 {
        server.send(
            &json!({"jsonrpc": "2.0", "id": 1000 + id, "method": "tools/call",
            "params": {"name": "run_command", "arguments": {"argv": ["sleep", marker]}}}),
        );
    }
    server.send(
        &json!({"jsonrpc": "2.0", "id": 2000, "method": "tools/call",
        "params": {"name": "create_sandbox", "arguments": {"name": "busy"}}}),
    );
    let phantom = common::phantom_bin().canonicalize().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        seen.extend(common::descendants(server.child.id()));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        seen.iter()
            .any(|p| p.cmdline_contains(&format!("sleep {marker}"))),
        "the runs were not seen running under the server"
    );
    let clis: Vec<_> = seen
        .iter()
        .filter(|p| p.exe.as_ref() == Some(&phantom))
        .collect();
    assert!(
        clis.is_empty(),
        "phantom CLI processes under the MCP server: {clis:?}"
    );
    let r = server.call("exec_in_sandbox", json!({"name": "busy", "argv": ["true"]}));
    assert_eq!(r["isError"], false, "{r}");
    server.call("destroy_sandbox", json!({"name": "busy"}));
    assert!(server.finish().success());
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// `--max-output` only filled in an absent `max_output`: a call could ask for more, and
/// the result reported the server's cap whatever was used.
#[test]
fn the_servers_output_cap_is_a_ceiling_and_the_result_says_the_cap_used() {
    if !common::sandbox_available() {
        return;
    }
    let tmp = tmpdir("cap");
    let mut server = Server::start(&["--mode", "cold", "--max-output", "1000"], &tmp);
    let print = json!(["sh", "-c", "head -c 3000 /dev/zero | tr '\\\\0' x"]);
    for (asked, used) in [(None, 1000), (Some(5000), 1000), (Some(100), 100)] {
        let mut args = json!({"argv": print});
        if let Some(n) = asked {
            args["max_output"] = json!(n);
        }
        let r = server.call("run_command", args);
        let sc = &r["structuredContent"];
        assert_eq!(sc["max_output_bytes"], used, "{asked:?}: {r}");
        assert_eq!(
            sc["stdout"].as_str().unwrap().len(),
            used as usize,
            "{asked:?}: {r}"
        );
        assert_eq!(sc["output_truncated"], true, "{asked:?}: {r}");
    }
    assert!(server.finish().success());
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Regression: with python-dev served by a zygote (no pre-built sandboxes), phantom-mcp
/// waited its full 10 s at start for a ready sandbox that never came, so the official
/// SDK's `server/discover` probe timed out and fell back to the old handshake. A ready
/// zygote counts as a warm pool.
#[test]
fn an_mcp_server_whose_python_pool_is_a_zygote_answers_at_once() {
    if !common::sandbox_available() {
        return;
    }
    let tmp = tmpdir("zygote-start");
    let started = Instant::now();
    let mut server = Server::start(&["--mode", "zygote", "--profiles", "python-dev"], &tmp);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the first answer took {took:?}"
    );
    let r = server.call(
        "run_code",
        json!({"language": "python", "code": "print(6 * 7)"}),
    );
    assert_eq!(r["structuredContent"]["stdout"], "42\n", "{r}");
    assert_eq!(r["structuredContent"]["start"], "forked", "{r}");
    stop_and_clean(server, &tmp);
}
