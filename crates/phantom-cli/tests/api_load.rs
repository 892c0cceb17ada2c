//! A bounded load test of the HTTP API: no errors, no `phantom` CLI started under
//! load, and nothing of its runs left afterwards (it looks at what it created only:
//! the server's processes and the cgroups of the sandboxes it ran).

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use common::api::{http, Server};
use common::{descendants, sandbox_available, sandbox_cgroups, HostProcess};

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
    let ids = Mutex::new(BTreeSet::new());
    // Every process the server started while busy: its engine, pools, sandboxes.
    let seen = Mutex::new(Vec::<HostProcess>::new());
    let server_pid = server.pid().unwrap();
    let started = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        s.spawn(|| {
            while next.load(std::sync::atomic::Ordering::SeqCst) < total {
                let mut seen = seen.lock().unwrap();
                for p in descendants(server_pid) {
                    if !seen.contains(&p) {
                        seen.push(p);
                    }
                }
                drop(seen);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
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
                            continue;
                        }
                        let id = r.json()["sandbox_id"].as_str().unwrap().to_string();
                        ids.lock().unwrap().insert(id);
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
    let mut seen = seen.into_inner().unwrap();
    seen.extend(descendants(server_pid));
    // The front end calls the engine: it never starts the `phantom` CLI to do its work.
    let phantom_cli = common::phantom_bin().canonicalize().unwrap();
    let clis: Vec<_> = seen
        .iter()
        .filter(|p| p.exe.as_ref() == Some(&phantom_cli))
        .collect();
    assert!(
        clis.is_empty(),
        "the server started the phantom CLI: {clis:?}"
    );
    // Sandboxes of pools that were never handed out are the server's too.
    let mut ids = ids.into_inner().unwrap();
    for p in &seen {
        for cg in &p.cgroups {
            if let Some(id) = cg.split("/phantom/").nth(1) {
                ids.insert(id.split('/').next().unwrap().to_string());
            }
        }
    }
    println!(
        "{} server processes seen, {} sandboxes",
        seen.len(),
        ids.len()
    );
    assert!(
        ids.len() >= total.min(100),
        "{} sandbox ids for {total} runs",
        ids.len()
    );
    drop(server);
    // Nothing of any run is left: no process, no sandbox cgroup.
    let left: Vec<_> = seen.iter().filter(|p| p.alive()).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    let cgroups: Vec<_> = ids.iter().flat_map(|id| sandbox_cgroups(id)).collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}
