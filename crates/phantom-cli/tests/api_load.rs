//! A bounded load test of the HTTP API, alone in its test binary so that the
//! "nothing left" check afterwards sees only its own runs.

mod common;

use std::process::Command;
use std::time::Instant;

use common::api::{http, Server};
use common::sandbox_available;

#[test]
fn load_of_2000_runs_at_concurrency_32_has_no_errors_and_leaves_nothing() {
    if !sandbox_available() {
        return;
    }
    if !common::is_root() {
        common::skip(
            "the load test runs in the root pass (it checks the host's cgroups afterwards)",
        );
        return;
    }
    let total: usize = std::env::var("PHANTOM_LOAD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let server = Server::start("load", &["--max-sandboxes", "64"]);
    let key = server.key(
        "load",
        &[
            "--rate",
            "1000000",
            "--burst",
            "100000",
            "--max-concurrent",
            "64",
        ],
    );
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                s.spawn(|| {
                    let mut errors = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < total {
                        let r = http(
                            server.port,
                            "POST",
                            "/api/v2/run",
                            Some(&key),
                            br#"{"argv":["true"]}"#,
                        );
                        if r.status != 200 || r.json()["exit_code"] != 0 {
                            errors.push(format!("{} {}", r.status, r.text()));
                        }
                    }
                    errors
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} runs at concurrency 32 in {secs:.1} s: {:.0} runs/s",
        total as f64 / secs
    );
    assert!(
        failures.is_empty(),
        "{} of {total} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    drop(server);
    // Nothing of any run is left: no process, no sandbox cgroup.
    let procs = Command::new("pgrep")
        .args(["-f", "phantom-init|phantom:payload"])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
    let cgroups = Command::new("sh")
        .args([
            "-c",
            "find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -path '*/phantom/*' -type d",
        ])
        .output()
        .unwrap();
    assert!(
        cgroups.stdout.is_empty(),
        "cgroups left: {}",
        String::from_utf8_lossy(&cgroups.stdout)
    );
}
