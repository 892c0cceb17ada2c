//! Signals across the sandbox boundary, the payload's working directory, and `phantom
//! doctor` on this host:
//!
//! * Landlock (ABI 6) scopes signals: the payload cannot signal the sandbox's init;
//! * SIGTERM and SIGINT sent to `phantom` reach the payload, and a third SIGINT kills it;
//! * `--cwd` is honoured, and a missing one fails with a message naming it;
//! * `phantom doctor --json` describes this host and starts a sandbox.
//!
//! Needs user namespaces; without them a test prints `skipped: <why>` and passes, unless
//! `PHANTOM_REQUIRE_ISOLATION=1` (see `common`).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Landlock signal scoping
// ---------------------------------------------------------------------------------------

/// `attempts.signal_init` of a probe report: kill(1, 0) from the payload.
fn signal_init(run: &ProbeRun) -> &Value {
    let outcome = &run.probe["attempts"]["signal_init"];
    assert!(
        outcome.is_object(),
        "the probe reported no signal_init attempt\n{}",
        run.describe()
    );
    outcome
}

#[test]
fn landlock_scopes_signals_to_the_sandbox() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["report"], &[]);
    let abi = run.report["isolation"]["landlock_abi"]
        .as_u64()
        .unwrap_or_else(|| panic!("no isolation.landlock_abi\n{}", run.describe()));
    if abi < 6 {
        skip(&format!(
            "Landlock ABI {abi} enforced: signal scoping needs ABI 6 (Linux 6.12)"
        ));
        return;
    }
    let fenced = signal_init(&run);
    assert!(
        refused(fenced) && errno(fenced) == EPERM,
        "with Landlock ABI {abi} the payload could signal the sandbox's init: \
         kill(1, 0) = {fenced}\n{}",
        run.describe()
    );

    // The same attempt with Landlock off succeeds, so the refusal above is Landlock's
    // doing (and the check can fail).
    let low = workspace.policy(
        "landlock-off",
        "profile: landlock-off\nextends: default\nsecurity:\n  level: low\n",
    );
    let run = run_probe_in(&workspace, &["report"], &["--policy", &low]);
    assert_eq!(
        run.report["isolation"]["landlock_abi"],
        0,
        "security.level: low should turn Landlock off\n{}",
        run.describe()
    );
    let unfenced = signal_init(&run);
    assert_eq!(
        unfenced["ok"],
        true,
        "without Landlock kill(1, 0) from the payload should succeed: {unfenced}\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------------------
// Signals sent to phantom
// ---------------------------------------------------------------------------------------

/// A `phantom run` front end started by [`start_until_ready`].
struct Running {
    child: Child,
    /// Everything phantom writes to stderr, once it exits.
    stderr: std::thread::JoinHandle<String>,
}

/// `phantom run -- sh -c SCRIPT` with stdout piped; returns once the payload printed
/// `ready`.
fn start_until_ready(script: &str) -> Running {
    let mut child = Command::new(phantom_bin())
        .args(["run", "--timeout", "30s", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn phantom: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut running = Running { child, stderr };
    match lines.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line == "ready" => running,
        other => {
            let _ = running.child.kill();
            let status = running.child.wait();
            panic!(
                "the payload did not print `ready`: got {other:?}; phantom: {status:?}, stderr: {}",
                running.stderr()
            );
        }
    }
}

impl Running {
    /// `kill -SIG PID` on the front end, through kill(1) (this crate has no libc).
    fn send(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap_or_else(|e| panic!("run kill: {e}"));
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// Waits up to `limit` for the front end to exit; kills it and panics after that.
    fn exit_within(mut self, limit: Duration, what: &str) -> (ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for phantom") {
                return (status, self.stderr());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let status = self.child.wait();
                panic!(
                    "phantom did not exit within {limit:?} after {what}; killed it: {status:?}, stderr: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// phantom's stderr; call only once it has exited (or been killed).
    fn stderr(self) -> String {
        self.stderr.join().unwrap_or_default()
    }
}

#[test]
fn sigterm_to_phantom_reaches_the_payload() {
    if !sandbox_available() {
        return;
    }
    let phantom = start_until_ready("trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done");
    phantom.send("TERM");
    let (status, stderr) = phantom.exit_within(Duration::from_secs(5), "SIGTERM");
    assert_eq!(
        status.code(),
        Some(42),
        "the payload's TERM trap should decide phantom's exit code: {status}, stderr: {stderr}"
    );
}

#[test]
fn sigint_three_times_kills_the_payload() {
    if !sandbox_available() {
        return;
    }
    let mut phantom = start_until_ready("trap '' INT; echo ready; while :; do sleep 0.1; done");
    for i in 1..=3 {
        if i == 3 {
            // Two interrupts are forwarded to a payload that ignores them: still running.
            let early = phantom.child.try_wait().expect("wait for phantom");
            assert!(
                early.is_none(),
                "phantom ended after only two SIGINTs: {early:?}, stderr: {}",
                phantom.stderr()
            );
        }
        phantom.send("INT");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, stderr) = phantom.exit_within(Duration::from_secs(5), "three SIGINTs");
    assert_eq!(
        status.code(),
        Some(128 + SIGKILL as i32),
        "a third SIGINT should SIGKILL the payload, which ignores INT: {status}, stderr: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// Working directory
// ---------------------------------------------------------------------------------------

#[test]
fn cwd_is_honoured() {
    if !sandbox_available() {
        return;
    }
    let out = phantom(&["run", "--cwd", "/tmp", "--", "pwd"], |_| {});
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "/tmp\n", "{}", out.describe());
}

#[test]
fn missing_cwd_fails_clearly() {
    if !sandbox_available() {
        return;
    }
    let out = phantom(&["run", "--cwd", "/nonexistent", "--", "pwd"], |_| {});
    assert!(
        out.code.is_some_and(|c| c != 0),
        "a missing working directory must fail: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("/nonexistent"),
        "the error should name the directory: {}",
        out.describe()
    );
    assert!(
        out.stdout.is_empty(),
        "the command must not run elsewhere: {}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------------
// phantom doctor
// ---------------------------------------------------------------------------------------

/// `phantom doctor ARGS --json`: exits 0 and prints an array of well-formed checks.
fn doctor_checks(args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["doctor"];
    argv.extend_from_slice(args);
    argv.push("--json");
    let out = phantom(&argv, |_| {});
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let json: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e})\n{}", out.describe()));
    let checks = json
        .as_array()
        .unwrap_or_else(|| panic!("doctor --json is not an array: {json}"))
        .clone();
    assert!(!checks.is_empty(), "no checks: {json}");
    for check in &checks {
        for key in ["name", "status", "detail"] {
            assert!(check[key].is_string(), "check without {key}: {check}");
        }
        assert!(
            ["ok", "warn", "fail"].contains(&check["status"].as_str().unwrap_or("")),
            "unknown status: {check}"
        );
    }
    checks
}

fn named<'a>(checks: &'a [Value], name: &str) -> Option<&'a Value> {
    checks.iter().find(|c| c["name"] == name)
}

#[test]
fn doctor_reports_this_host() {
    if !sandbox_available() {
        return;
    }
    let checks = doctor_checks(&[]);
    let start = named(&checks, "sandbox start")
        .unwrap_or_else(|| panic!("no `sandbox start` check: {checks:?}"));
    assert_eq!(start["status"], "ok", "{start}");

    let checks = doctor_checks(&["--no-live"]);
    assert!(
        named(&checks, "sandbox start").is_none(),
        "--no-live still started a sandbox: {checks:?}"
    );
    assert!(named(&checks, "kernel").is_some(), "{checks:?}");
}
