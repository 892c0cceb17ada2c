//! Runs forked from a zygote (crates/phantom-engine/src/fork.rs): what one run leaves
//! or holds must never reach another, nor the zygote. The isolation matrix
//! (tests/isolation.rs) runs on the fork path too, in scripts/test.sh's third pass;
//! these are the guarantees particular to forking.

mod common;

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::process::Stdio;

use common::supervisor::Supervisor;
use common::{phantom_bin, sandbox_available, PhantomOutput};
use serde_json::Value;

fn report(out: &PhantomOutput) -> Value {
    out.report()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()))
}

/// A supervisor whose default profile (loopback network) is served by a zygote.
fn forking_supervisor() -> Supervisor {
    Supervisor::start_with(&["--zygote", "default", "--zygote-pools", "1"], None)
}

/// `phantom run --json -- python3 -c CODE` on `sup`; the report, checked forked.
fn forked_python(sup: &Supervisor, code: &str, extra: &[&str]) -> Value {
    let mut args = vec!["run", "--json"];
    args.extend_from_slice(extra);
    args.extend(["--", "python3", "-c", code]);
    let out = sup.phantom(&args);
    let r = report(&out);
    assert_eq!(r["start"], "forked", "{r}\n{}", sup.log());
    r
}

/// Run A holds a file in /tmp, /workspace and /dev/shm, an abstract unix socket and a
/// TCP listener on loopback, and stays; run B, forked from the same zygote meanwhile,
/// finds none of them and sees no process but its own.
#[test]
fn concurrent_forked_runs_cannot_see_each_others_processes_files_shm_or_sockets() {
    if !sandbox_available() || !std::path::Path::new("/usr/bin/python3").exists() {
        return;
    }
    let sup = forking_supervisor();
    let holder = r#"
import os, socket, sys, time
for d in ("/tmp", "/workspace", "/dev/shm"):
    open(d + "/held-by-a", "w").write("a")
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); u.bind("\0phantom-held-by-a"); u.listen()
t = socket.socket(); t.bind(("127.0.0.1", 7777)); t.listen()
print("ready", flush=True)
time.sleep(20)
"#;
    let mut a = holding_run(&sup, &["run", "--", "python3", "-c", holder]);
    let probe = r#"
import json, os, socket
out = {}
out["files"] = [d for d in ("/tmp", "/workspace", "/dev/shm") if os.path.exists(d + "/held-by-a")]
def refused(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.connect(address)
        return False
    except OSError:
        return True
out["abstract_refused"] = refused(socket.AF_UNIX, "\0phantom-held-by-a")
out["tcp_refused"] = refused(socket.AF_INET, ("127.0.0.1", 7777))
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["pids"] = pids
alive = []
for p in range(1, 4096):
    try:
        os.kill(p, 0)
        alive.append(p)
    except ProcessLookupError:
        pass
    except PermissionError:
        alive.append(p)
out["alive"] = alive
out["fds"] = sorted(os.listdir("/proc/self/fd"))
print(json.dumps(out))
"#;
    let r = forked_python(&sup, probe, &[]);
    let _ = a.kill();
    let _ = a.wait();
    let out: Value = serde_json::from_str(r["stdout"].as_str().unwrap().trim())
        .unwrap_or_else(|e| panic!("{e}: {r}"));
    assert_eq!(out["files"], serde_json::json!([]), "{out}");
    assert_eq!(out["abstract_refused"], true, "{out}");
    assert_eq!(out["tcp_refused"], true, "{out}");
    // Its own init (1) and itself (2), nothing of run A's or the zygote's.
    assert_eq!(out["pids"], serde_json::json!([1, 2]), "{out}");
    assert_eq!(out["alive"], serde_json::json!([1, 2]), "{out}");
    // stdio and the fd listing /proc/self/fd itself: not the zygote's channel, its
    // library or its plan.
    assert_eq!(out["fds"], serde_json::json!(["0", "1", "2", "3"]), "{out}");
}

/// A run that monkeypatches `builtins`, replaces a module and leaves garbage behind
/// changes nothing for the next run: each is a fresh fork of the zygote.
#[test]
fn a_monkeypatched_builtins_does_not_reach_the_next_run() {
    if !sandbox_available() || !std::path::Path::new("/usr/bin/python3").exists() {
        return;
    }
    let sup = forking_supervisor();
    let first = forked_python(
        &sup,
        "import builtins, sys; builtins.len = lambda x: 42; builtins.phantom_leak = 1; sys.modules['json'] = None; print(len([]))",
        &[],
    );
    assert_eq!(first["stdout"], "42\n", "{first}");
    let second = forked_python(
        &sup,
        "import builtins, json; print(len([]), hasattr(builtins, 'phantom_leak'), json.dumps([1]))",
        &[],
    );
    assert_eq!(second["stdout"], "0 False [1]\n", "{second}");
}

/// Two forks of one zygote draw different random numbers (`random` reseeds itself
/// after a fork; a zygote that skipped CPython's fork hooks would hand every run the
/// same sequence).
#[test]
fn forked_runs_draw_different_random_numbers() {
    if !sandbox_available() || !std::path::Path::new("/usr/bin/python3").exists() {
        return;
    }
    let sup = forking_supervisor();
    let draw = || {
        forked_python(&sup, "import random; print(random.random())", &[])["stdout"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (draw(), draw());
    assert_ne!(a, b, "two forked runs drew the same number");
}

/// The zygote never holds a request: a run's environment travels in a memfd that only
/// the run's own init reads, so later forks (which inherit the zygote's memory) cannot
/// find an earlier run's secrets. Checked by reading the memory of the zygote and, as
/// the control that the scan finds what is there, of the run's init.
#[test]
fn the_zygote_never_holds_a_runs_environment() {
    if !sandbox_available() || !std::path::Path::new("/usr/bin/python3").exists() {
        return;
    }
    if !common::is_root() {
        common::skip("reading another process's memory needs root");
        return;
    }
    let sup = forking_supervisor();
    let secret = format!("phantom-secret-{}-{}", std::process::id(), common::unique());
    let env = format!("API_TOKEN={secret}");
    let sleeper = "import time; print('ready', flush=True); time.sleep(20)";
    let mut a = holding_run(
        &sup,
        &["run", "--env", &env, "--", "python3", "-c", sleeper],
    );
    // The zygote is the supervisor's child running zygote.py in fork mode; the run's
    // init is its child.
    let zygote = sup
        .sandbox_pids()
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"fork"))
        })
        .unwrap_or_else(|| panic!("no zygote among {:?}\n{}", sup.sandbox_pids(), sup.log()));
    let children = std::fs::read_to_string(format!("/proc/{zygote}/task/{zygote}/children"))
        .unwrap_or_default();
    let run_init: u32 = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|n| n.trim() == "phantom:init")
        })
        .unwrap_or_else(|| panic!("no run init under the zygote {zygote}: {children}"));
    let in_run_init = memory_contains(run_init, secret.as_bytes());
    let in_zygote = memory_contains(zygote, secret.as_bytes());
    let _ = a.kill();
    let _ = a.wait();
    assert!(
        in_run_init,
        "control: the run's own init read the spec, the scan must find it there"
    );
    assert!(!in_zygote, "the zygote's memory holds a run's environment");
}

/// `phantom ARGS` on `sup`, whose payload prints `ready` and then stays: returned
/// once it is ready (killed by the caller).
fn holding_run(sup: &Supervisor, args: &[&str]) -> std::process::Child {
    let mut child = std::process::Command::new(phantom_bin())
        .args(args)
        .env("PHANTOM_SUPERVISOR_SOCKET", sup.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.trim() != "ready" {
        let mut err = String::new();
        let _ = child.stderr.as_mut().unwrap().read_to_string(&mut err);
        panic!(
            "the holding run did not start: {line:?} {err}\n{}",
            sup.log()
        );
    }
    child
}

/// Whether any readable mapping of process `pid` contains `needle`.
fn memory_contains(pid: u32, needle: &[u8]) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

/// python-data's zygote imported numpy, pandas and matplotlib before the run: they are
/// in `sys.modules` when the run's first line executes.
#[test]
fn python_data_runs_find_their_preloads_imported() {
    if !sandbox_available() {
        return;
    }
    // The host python3 the profile binds (not a pyenv or venv shim on PATH).
    let has = |m: &str| {
        std::process::Command::new("/usr/bin/python3")
            .args(["-c", &format!("import {m}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !["numpy", "pandas", "matplotlib"].iter().all(|m| has(m)) {
        common::skip("python3-numpy, python3-pandas and python3-matplotlib are not installed");
        return;
    }
    let sup = Supervisor::start_with(&["--profiles", "python-data", "--zygote-pools", "1"], None);
    let status = sup.status();
    let pool = &status["pools"][0];
    assert_eq!(
        pool["preload"],
        serde_json::json!(["numpy", "pandas", "matplotlib", "matplotlib.pyplot"]),
        "{status}"
    );
    let r = forked_python(
        &sup,
        "import sys; print(*[m in sys.modules for m in ('numpy', 'pandas', 'matplotlib')]); import matplotlib; print(matplotlib.get_backend())",
        &["--profile", "python-data"],
    );
    assert_eq!(r["stdout"], "True True True\nagg\n", "{r}");
}
