//! Background processes in persistent sandboxes (issue 14 §3), as a user meets them:
//! `phantom exec NAME -- sh -c 'server &'` returns when its command exits; what the
//! command left running stays in the sandbox, where `phantom ps` lists it and
//! `phantom kill` ends it; `--timeout` and SIGTERM act at once whatever the command
//! left behind; the same over the HTTP API (two keys: another owner's processes are
//! "not found") and MCP.
//!
//! Each test has its own state directory (`PHANTOM_STATE_DIR`), whose sandboxes are
//! destroyed afterwards: with them every process they hold.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::Server;
use common::mcp::McpServer;
use common::{phantom, phantom_bin, sandbox_available, PhantomOutput};
use serde_json::{json, Value};

/// A temporary state directory; every sandbox in it is destroyed on drop, then the
/// directory removed.
struct Env(PathBuf);

impl Env {
    fn new(tag: &str) -> Env {
        let dir = std::env::temp_dir().join(format!(
            "phantom-background-it-{tag}-{}-{}",
            std::process::id(),
            common::unique()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        Env(dir)
    }

    fn state(&self) -> PathBuf {
        self.0.join("state")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(phantom_bin());
        cmd.args(args).env("PHANTOM_STATE_DIR", self.state());
        cmd
    }

    fn run(&self, args: &[&str]) -> PhantomOutput {
        let state = self.state();
        phantom(args, |cmd| {
            cmd.env("PHANTOM_STATE_DIR", state);
        })
    }

    fn ok(&self, args: &[&str]) -> PhantomOutput {
        let out = self.run(args);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
    }

    fn create(&self, name: &str) {
        self.ok(&["create", "--name", name, "--json"]);
    }

    /// The process of sandbox `name` whose command line is `argv`, once `phantom ps`
    /// lists it (a job forked a moment ago may not have started its program yet).
    fn listed(&self, name: &str, argv: &[&str]) -> Value {
        let start = Instant::now();
        loop {
            let list = self.ps(name);
            if let [one] = with_cmdline(&list, argv)[..] {
                return one.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{argv:?} is not listed once in {name}: {list:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `phantom ps NAME --json`.
    fn ps(&self, name: &str) -> Vec<Value> {
        self.json(&["ps", name, "--json"])
            .as_array()
            .expect("ps --json prints a list")
            .clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.run(&["destroy", "--all"]);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The processes of `list` whose command line is exactly `argv`.
fn with_cmdline<'a>(list: &'a [Value], argv: &[&str]) -> Vec<&'a Value> {
    list.iter()
        .filter(|p| p["cmdline"] == json!(argv))
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sh -c 'sleep 30 & echo started'` blocked `phantom exec` for the 30 s of the
/// background job (its output pipes were waited for, which the job held) and reported
/// `timed_out: false` at the end. Now the exec returns when `sh` exits; the job keeps
/// running in the sandbox, and a job that goes on writing is not killed by a closed
/// pipe once the exec is over.
#[test]
fn an_exec_that_leaves_a_background_job_returns_when_its_command_exits() {
    if !sandbox_available() {
        return;
    }
    let env = Env::new("returns");
    env.create("t");
    let out = env.ok(&[
        "exec",
        "t",
        "--timeout",
        "60s",
        "--json",
        "--",
        "sh",
        "-c",
        "sleep 31 & echo started",
    ]);
    assert!(
        out.elapsed < Duration::from_secs(10),
        "the exec waited for its background job: {}",
        out.describe()
    );
    let report = out.report().unwrap();
    assert_eq!(report["exit_code"], 0, "{report}");
    assert_eq!(report["timed_out"], false, "{report}");
    assert_eq!(report["stdout"], "started\n", "{report}");
    // The background job lives on in the sandbox.
    env.listed("t", &["sleep", "31"]);

    // A job that writes on after the exec returned keeps running: its output goes to
    // the sandbox's keeper, not into a pipe nobody reads (SIGPIPE) or that fills up.
    let script = "while :; do echo tick; sleep 0.05; done & echo started";
    let out = env.ok(&["exec", "t", "--", "sh", "-c", script]);
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.describe());
    std::thread::sleep(Duration::from_secs(2));
    let list = env.ps("t");
    assert_eq!(
        with_cmdline(&list, &["sh", "-c", script]).len(),
        1,
        "the writing job died once its exec was over: {list:?}"
    );
}

/// The output of what an exec left behind is read by the sandbox's keeper, which is
/// outside the sandbox's cgroup: a job that writes without pause (`yes &`) must not
/// make it spend the host's CPU. It is read at 1 MiB/s at most; past that the job
/// blocks on its full pipe.
#[test]
fn a_background_job_that_writes_without_pause_costs_its_keeper_no_cpu() {
    if !sandbox_available() {
        return;
    }
    let env = Env::new("yes");
    env.create("t");
    let list = env.json(&["list", "--json"]);
    let init = list[0]["init_pid"]
        .as_i64()
        .expect("the local user sees the init's pid");
    let stat = |pid: i64| fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let field = |text: &str, n: usize| -> u64 {
        let rest = text.rsplit_once(')').unwrap().1;
        rest.split_whitespace().nth(n - 3).unwrap().parse().unwrap()
    };
    let keeper = field(&stat(init), 4) as i64;
    let cpu = || {
        let s = stat(keeper);
        field(&s, 14) + field(&s, 15)
    };
    env.ok(&["exec", "t", "--", "sh", "-c", "yes & echo started"]);
    env.listed("t", &["yes"]);
    let before = cpu();
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu() - before;
    // 2 s of reading as fast as `yes` writes is 100 ticks and more.
    assert!(
        ticks <= 20,
        "the keeper spent {ticks} clock ticks in 2 s on a background job's output"
    );
}

/// `--timeout` fires whatever the command started: at the timeout the command and
/// everything it started — a job that left its process group with `setsid` too — is
/// killed, and the exec returns with `timed_out: true` (it used to wait for the job
/// that held its output).
#[test]
fn an_exec_timeout_fires_even_with_a_background_job() {
    if !sandbox_available() {
        return;
    }
    let env = Env::new("timeout");
    env.create("t");
    let out = env.run(&[
        "exec",
        "t",
        "--timeout",
        "2s",
        "--json",
        "--",
        "sh",
        "-c",
        "setsid sleep 32 & echo started; sleep 22",
    ]);
    assert!(
        out.elapsed < Duration::from_secs(10),
        "the timeout did not end the exec: {}",
        out.describe()
    );
    let report = out.report().unwrap();
    assert_eq!(report["timed_out"], true, "{report}");
    assert_eq!(report["stdout"], "started\n", "{report}");
    let list = env.ps("t");
    assert!(
        with_cmdline(&list, &["sleep", "32"]).is_empty()
            && with_cmdline(&list, &["sleep", "22"]).is_empty(),
        "what the timed-out command started is still running: {list:?}"
    );
}

/// SIGTERM to `phantom exec` waited for a background job that held the output; now it
/// reaches everything the command started and phantom exits at once with 143, as
/// `phantom run` does.
#[test]
fn sigterm_to_phantom_exec_acts_at_once() {
    if !sandbox_available() {
        return;
    }
    let env = Env::new("sigterm");
    env.create("t");
    let mut child = env
        .command(&[
            "exec",
            "t",
            "--",
            "sh",
            "-c",
            "setsid sleep 33 & echo ready; sleep 23",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn phantom exec");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok);
    assert_eq!(first.as_deref(), Some("ready"));
    let signalled = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = common::wait_timeout(&mut child, Duration::from_secs(20));
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("phantom exec did not exit within 20 s of SIGTERM")
    });
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} to end phantom exec"
    );
    assert_eq!(status.code(), Some(143), "{status:?}");
    let list = env.ps("t");
    assert!(
        with_cmdline(&list, &["sleep", "33"]).is_empty()
            && with_cmdline(&list, &["sleep", "23"]).is_empty(),
        "what the command started outlived the SIGTERM: {list:?}"
    );
}

/// A process an exec left behind is listed by `phantom ps` — pid inside the sandbox,
/// command line, start, state — and `phantom kill` ends it; the init is not listed and
/// cannot be killed, and an unknown pid is a one-line error.
#[test]
fn a_background_job_can_be_listed_and_killed() {
    if !sandbox_available() {
        return;
    }
    let env = Env::new("ps");
    env.create("t");
    let before = phantom_state_now();
    env.ok(&["exec", "t", "--", "sh", "-c", "sleep 301 & echo started"]);
    let job = &env.listed("t", &["sleep", "301"]);
    let list = env.ps("t");
    let pid = job["pid"].as_i64().unwrap();
    assert!(pid > 1, "{job}");
    assert_eq!(job["state"], "sleeping", "{job}");
    let started = job["started"].as_u64().unwrap();
    assert!(
        started + 2 >= before && started <= phantom_state_now() + 2,
        "started {started}, test began {before}: {job}"
    );
    assert!(
        list.iter().all(|p| p["pid"] != 1),
        "the init is listed: {list:?}"
    );
    // The table for people shows it too.
    let table = env.ok(&["ps", "t"]);
    assert!(table.stdout.contains("sleep 301"), "{}", table.describe());

    let refused = env.run(&["kill", "t", "1"]);
    assert_eq!(refused.code, Some(2), "{}", refused.describe());
    assert!(refused.stderr.contains("init"), "{}", refused.describe());
    let unknown = env.run(&["kill", "t", "99999"]);
    assert_eq!(unknown.code, Some(2), "{}", unknown.describe());
    assert_eq!(unknown.stderr.lines().count(), 1, "{}", unknown.describe());

    env.ok(&["kill", "t", &pid.to_string()]);
    wait_for("the killed job to go", Duration::from_secs(5), || {
        env.ps("t").iter().all(|p| p["pid"] != pid)
    });

    // --signal takes a name; KILL cannot be caught.
    env.ok(&[
        "exec",
        "t",
        "--",
        "sh",
        "-c",
        "trap '' TERM; sleep 302 & echo started",
    ]);
    let pid = env.listed("t", &["sleep", "302"])["pid"].as_i64().unwrap();
    env.ok(&["kill", "t", &pid.to_string(), "--signal", "KILL"]);
    wait_for("the KILLed job to go", Duration::from_secs(5), || {
        env.ps("t").iter().all(|p| p["pid"] != pid)
    });
}

/// `phantom exec --background` starts the command and returns at once with its pid
/// inside the sandbox (what E2B's `commands.run(background=True)` needs): the same pid
/// the command sees as `$$`, listed by `phantom ps`, ended by `phantom kill`.
#[test]
fn exec_background_returns_at_once_with_the_pid_inside_the_sandbox() {
    if !sandbox_available() {
        return;
    }
    let env = Env::new("bgflag");
    env.create("t");
    let out = env.ok(&[
        "exec",
        "t",
        "--background",
        "--json",
        "--",
        "sh",
        "-c",
        "echo $$ > /workspace/bg.pid; exec sleep 305",
    ]);
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.describe());
    let spawned: Value = serde_json::from_str(&out.stdout).unwrap();
    let pid = spawned["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{spawned}"));
    let mut seen = String::new();
    wait_for(
        "the command to write its pid",
        Duration::from_secs(5),
        || {
            seen = env
                .ok(&["exec", "t", "--", "cat", "/workspace/bg.pid"])
                .stdout;
            !seen.trim().is_empty()
        },
    );
    assert_eq!(
        seen.trim(),
        pid.to_string(),
        "the pid is the one the command has"
    );
    wait_for("ps to show it", Duration::from_secs(5), || {
        env.ps("t")
            .iter()
            .any(|p| p["pid"] == pid && p["cmdline"] == json!(["sleep", "305"]))
    });
    env.ok(&["kill", "t", &pid.to_string()]);
    wait_for("the killed command to go", Duration::from_secs(5), || {
        env.ps("t").iter().all(|p| p["pid"] != pid)
    });
}

fn phantom_state_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The processes of a key's sandbox are that key's: another key gets exactly the
/// "not found" of a sandbox that does not exist, for listing and for killing.
#[test]
fn another_owner_cannot_list_or_kill_a_sandboxs_processes() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("bg-tenancy", &[]);
    let alice = server.key("alice", &[]);
    let bob = server.key("bob", &[]);
    let r = server.json("POST", "/api/v2/sandboxes", &alice, json!({"name": "box"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.json(
        "POST",
        "/api/v2/sandboxes/box/exec",
        &alice,
        json!({"argv": ["sh", "-c", "sleep 303 & echo started"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "started\n");

    let mut pid = 0;
    wait_for("the job in the list", Duration::from_secs(5), || {
        let r = server.request("GET", "/api/v2/sandboxes/box/processes", Some(&alice), b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let list = r.json();
        match with_cmdline(list.as_array().unwrap(), &["sleep", "303"])[..] {
            [one] => pid = one["pid"].as_i64().unwrap(),
            _ => return false,
        }
        true
    });

    // Bob: "not found", the same as for a name nobody has.
    let path = |name: &str| format!("/api/v2/sandboxes/{name}/processes");
    let kill = |name: &str| format!("/api/v2/sandboxes/{name}/processes/{pid}?signal=kill");
    for (method, theirs, nobodys) in [
        ("GET", path("box"), path("nosuch")),
        ("DELETE", kill("box"), kill("nosuch")),
    ] {
        let r = server.request(method, &theirs, Some(&bob), b"");
        let none = server.request(method, &nobodys, Some(&bob), b"");
        assert_eq!(r.status, 404, "{method} {theirs}: {}", r.text());
        assert_eq!(none.status, 404, "{method} {nobodys}: {}", none.text());
        assert_eq!(
            r.text().replace("`box`", "`NAME`"),
            none.text().replace("`nosuch`", "`NAME`"),
            "another key's sandbox must look like no sandbox"
        );
        assert!(!r.text().contains("sleep"), "{}", r.text());
    }
    // Bob's attempt left Alice's job alone; Alice's own kill ends it.
    let r = server.request("GET", &path("box"), Some(&alice), b"");
    assert_eq!(
        with_cmdline(r.json().as_array().unwrap(), &["sleep", "303"]).len(),
        1,
        "{}",
        r.text()
    );
    let r = server.request("DELETE", &kill("box"), Some(&alice), b"");
    assert_eq!(r.status, 204, "{}", r.text());
    wait_for("the killed job to go", Duration::from_secs(5), || {
        let r = server.request("GET", &path("box"), Some(&alice), b"");
        with_cmdline(r.json().as_array().unwrap(), &["sleep", "303"]).is_empty()
    });
    // `"background": true` answers at once with the pid, which the list shows.
    let r = server.json(
        "POST",
        "/api/v2/sandboxes/box/exec",
        &alice,
        json!({"argv": ["sleep", "306"], "background": true}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let spawned = r.json()["pid"].as_i64().unwrap();
    // Listed once it runs its program (before, it is phantom's, not yet the caller's).
    wait_for(
        "the background command in the list",
        Duration::from_secs(5),
        || {
            let r = server.request("GET", &path("box"), Some(&alice), b"");
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["pid"] == spawned && p["cmdline"] == json!(["sleep", "306"]))
        },
    );
    // A bad signal is the caller's mistake, said as such.
    let r = server.request(
        "DELETE",
        &format!("/api/v2/sandboxes/box/processes/{pid}?signal=nap"),
        Some(&alice),
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

/// `POST /api/v2/sandboxes/{name}/exec` takes stdin and streams like `/run`, and a
/// streamed exec ends when its command exits, whatever it left running (the stream
/// used to stay open for as long as the background job held the output).
#[test]
fn a_rest_exec_streams_and_takes_stdin_even_with_a_background_job() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("bg-stream", &[]);
    let key = server.key("k", &[]);
    let r = server.json("POST", "/api/v2/sandboxes", &key, json!({"name": "s"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let body = json!({
        "argv": ["sh", "-c", "read x; echo got:$x; sleep 34 & echo first; sleep 1; echo second"],
        "stdin": "hello\n",
        "stream": true,
    })
    .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /api/v2/sandboxes/s/exec HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the stream waited for the background job: {took:?} {events:?}"
    );
    let stdout: String = events
        .iter()
        .filter(|e| e.1 == "stdout")
        .map(|e| e.2.clone())
        .collect();
    assert!(
        stdout.contains("got:hello"),
        "stdin reached the command: {events:?}"
    );
    let first = events
        .iter()
        .find(|e| e.1 == "stdout" && e.2.contains("first"))
        .expect("first chunk");
    let last = events.last().expect("events");
    assert_eq!(last.1, "result", "{events:?}");
    let result: Value = serde_json::from_str(&last.2).unwrap();
    assert_eq!(result["exit_code"], 0, "{result}");
    // Streamed: the first line came while the command still slept.
    assert!(last.0 - first.0 >= Duration::from_millis(700), "{events:?}");
}

/// MCP: `exec_in_sandbox` returns when its command exits; `list_processes` shows what
/// it left running and `kill_process` ends it.
#[test]
fn mcp_lists_and_kills_a_background_process() {
    if !sandbox_available() {
        return;
    }
    // The state directory is the guard's: its sandboxes go even when an assertion fails.
    let guard = Env::new("mcp");
    let state = guard.state();
    let env: [(&str, &Path); 1] = [("PHANTOM_STATE_DIR", &state)];
    let mut server = McpServer::start_with_env(&["--mode", "cold"], &guard.0, &env);
    let r = server.call("create_sandbox", json!({"name": "m"}));
    assert_eq!(r["isError"], false, "{r}");
    let started = Instant::now();
    let r = server.call(
        "exec_in_sandbox",
        json!({"name": "m", "argv": ["sh", "-c", "sleep 304 & echo started"]}),
    );
    assert_eq!(r["isError"], false, "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exec_in_sandbox waited for the background job"
    );
    let mut pid = Value::Null;
    wait_for("the job in the list", Duration::from_secs(5), || {
        let r = server.call("list_processes", json!({"name": "m"}));
        assert_eq!(r["isError"], false, "{r}");
        let list = r["structuredContent"]["processes"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .clone();
        match with_cmdline(&list, &["sleep", "304"])[..] {
            [one] => pid = one["pid"].clone(),
            _ => return false,
        }
        true
    });
    let r = server.call(
        "kill_process",
        json!({"name": "m", "pid": pid, "signal": "kill"}),
    );
    assert_eq!(r["isError"], false, "{r}");
    wait_for("the killed job to go", Duration::from_secs(5), || {
        let r = server.call("list_processes", json!({"name": "m"}));
        r["structuredContent"]["processes"]
            .as_array()
            .is_some_and(|l| with_cmdline(l, &["sleep", "304"]).is_empty())
    });
    // start_process: at once, with the pid.
    let r = server.call(
        "start_process",
        json!({"name": "m", "argv": ["sleep", "307"]}),
    );
    assert_eq!(r["isError"], false, "{r}");
    let pid = r["structuredContent"]["pid"].clone();
    wait_for(
        "the started process in the list",
        Duration::from_secs(5),
        || {
            let r = server.call("list_processes", json!({"name": "m"}));
            r["structuredContent"]["processes"]
                .as_array()
                .is_some_and(|l| l.iter().any(|p| p["pid"] == pid))
        },
    );
    // An unknown sandbox is an error result, not a protocol error.
    let r = server.call("list_processes", json!({"name": "nosuch"}));
    assert_eq!(r["isError"], true, "{r}");
    server.call("destroy_sandbox", json!({"name": "m"}));
    assert!(server.finish().success());
}
