//! Spare persistent sandboxes (`phantom-supervisor --persistent-pool PROFILE`): a
//! create of the pool's plan takes a spare the supervisor built ahead of demand. Each
//! test has its own state directory (PHANTOM_STATE_DIR) and supervisor socket, and
//! reads the spares from that state.db.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::supervisor::Supervisor;
use common::{sandbox_available, PhantomOutput};
use phantom_api::access::Owner;
use phantom_api::choice::SandboxStatus;
use serde_json::Value;

/// A private state directory, removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new(tag: &str) -> StateDir {
        let dir = std::env::temp_dir().join(format!(
            "phantom-spares-{tag}-{}-{}",
            std::process::id(),
            common::unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        StateDir(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = common::phantom(&["destroy", "--all"], |c| {
            c.env("PHANTOM_STATE_DIR", &self.0);
        });
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running spares recorded in `state`.
fn spares(state: &Path) -> Vec<phantom_state::Record> {
    let db = phantom_state::State::open(state).expect("state.db opens");
    db.list(Some(&Owner::Spare))
        .expect("list")
        .into_iter()
        .filter(|r| r.effective_status().0 == SandboxStatus::Running)
        .collect()
}

/// Wait until `state` has `n` running spares; their ids.
fn wait_spares(state: &Path, n: usize, sup: &Supervisor) -> Vec<String> {
    let started = Instant::now();
    loop {
        let ids: Vec<String> = spares(state).into_iter().map(|r| r.id).collect();
        if ids.len() == n {
            return ids;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{n} spares expected, {} after 30 s\nlog:\n{}",
            ids.len(),
            sup.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ok(out: PhantomOutput) -> PhantomOutput {
    assert_eq!(out.code, Some(0), "{}", out.describe());
    out
}

fn json(out: PhantomOutput) -> Value {
    let out = ok(out);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

fn start(state: &StateDir, extra: &[&str]) -> Supervisor {
    let mut args = vec!["--profiles", "minimal", "--zygote-pools", "1"];
    args.extend_from_slice(extra);
    Supervisor::start_with(&args, Some(&state.0))
}

#[test]
fn a_create_takes_a_spare_that_never_ran_anything_and_the_pool_refills() {
    if !sandbox_available() {
        return;
    }
    let state = StateDir::new("adopt");
    let sup = start(
        &state,
        &[
            "--persistent-pool",
            "default",
            "--persistent-pool-size",
            "1",
        ],
    );
    let first = wait_spares(&state.0, 1, &sup);

    // The create is the spare: same id, now ours, under our name.
    let a = json(sup.phantom(&["create", "--name", "a", "--json"]));
    assert_eq!(a["id"].as_str(), Some(first[0].as_str()), "{a}");
    assert_eq!(a["name"], "a", "{a}");
    assert_eq!(a["status"], "running", "{a}");
    let out = ok(sup.phantom(&[
        "exec",
        "a",
        "--",
        "sh",
        "-c",
        "ls -A /workspace; echo mine > /workspace/f",
    ]));
    assert_eq!(out.stdout, "", "a spare's workspace is empty");

    // Another one is built; the next create takes it, with a workspace of its own.
    let second = wait_spares(&state.0, 1, &sup);
    assert_ne!(second, first);
    let b = json(sup.phantom(&["create", "--name", "b", "--json"]));
    assert_eq!(b["id"].as_str(), Some(second[0].as_str()), "{b}");
    let out = ok(sup.phantom(&["exec", "b", "--", "ls", "-A", "/workspace"]));
    assert_eq!(out.stdout, "", "b sees nothing of a");
    let out = ok(sup.phantom(&["exec", "a", "--", "cat", "/workspace/f"]));
    assert_eq!(out.stdout, "mine\n");

    // Spares are nobody's: not listed, not counted, not destroyed by --all.
    wait_spares(&state.0, 1, &sup);
    let listed = json(sup.phantom(&["list", "--every-owner", "--json"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"], "{listed}");
    ok(sup.phantom(&["destroy", "--all", "--every-owner"]));
    assert_eq!(spares(&state.0).len(), 1, "destroy --all leaves the spare");
}

#[test]
fn a_create_of_another_plan_or_a_taken_name_leaves_the_spare_alone() {
    if !sandbox_available() {
        return;
    }
    let state = StateDir::new("other");
    let sup = start(
        &state,
        &[
            "--persistent-pool",
            "default",
            "--persistent-pool-size",
            "1",
        ],
    );
    let spare = wait_spares(&state.0, 1, &sup);
    // Limits of its own: a plan of its own, a sandbox of its own.
    let big = json(sup.phantom(&["create", "--name", "big", "--memory", "300MiB", "--json"]));
    assert_ne!(big["id"].as_str(), Some(spare[0].as_str()), "{big}");
    let minimal = json(sup.phantom(&[
        "create",
        "--name",
        "small",
        "--profile",
        "minimal",
        "--json",
    ]));
    assert_ne!(minimal["id"].as_str(), Some(spare[0].as_str()), "{minimal}");
    assert_eq!(spares(&state.0).len(), 1);
    // A name in use: refused, and the spare stays a spare.
    let taken = sup.phantom(&["create", "--name", "big"]);
    assert_ne!(taken.code, Some(0), "{}", taken.describe());
    assert!(taken.stderr.contains("big"), "{}", taken.describe());
    let after: Vec<String> = spares(&state.0).into_iter().map(|r| r.id).collect();
    assert_eq!(after, spare);
}

#[test]
fn a_stopping_supervisor_destroys_its_spares_and_the_next_one_those_of_a_killed_one() {
    if !sandbox_available() {
        return;
    }
    let state = StateDir::new("stop");
    let args = [
        "--persistent-pool",
        "default",
        "--persistent-pool-size",
        "2",
    ];
    let mut sup = start(&state, &args);
    wait_spares(&state.0, 2, &sup);
    let records = spares(&state.0);
    sup.kill("-TERM");
    for r in &records {
        assert!(!alive(r.init_pid), "spare {} init left running", r.id);
        assert!(!alive(r.keeper_pid), "spare {} keeper left running", r.id);
        assert!(
            !r.dir.exists(),
            "spare {} directory left: {}",
            r.id,
            r.dir.display()
        );
    }
    let db = phantom_state::State::open(&state.0).unwrap();
    assert!(db.list(Some(&Owner::Spare)).unwrap().is_empty());

    // Killed outright, a supervisor leaves its spares (their keepers are detached);
    // the next one on the same state destroys them before it serves.
    let mut sup = start(&state, &args);
    wait_spares(&state.0, 2, &sup);
    let orphans = spares(&state.0);
    sup.kill("-KILL");
    assert!(orphans.iter().all(|r| alive(r.keeper_pid)));
    let sup = start(&state, &["--persistent-pool", "none"]);
    for r in &orphans {
        assert!(!alive(r.init_pid), "orphan {} init left running", r.id);
        assert!(!r.dir.exists(), "orphan {} directory left", r.id);
    }
    assert!(db.list(Some(&Owner::Spare)).unwrap().is_empty());
    drop(sup);
}

#[test]
fn persistent_pool_flags_are_checked() {
    let bad = [
        (vec!["--persistent-pool", "nope"], "not a built-in profile"),
        (
            vec!["--persistent-pool", "none", "--persistent-pool", "default"],
            "name no profile with it",
        ),
        (
            vec![
                "--persistent-pool",
                "default",
                "--persistent-pool-size",
                "0",
            ],
            "must be 1 to 64",
        ),
    ];
    for (args, needle) in bad {
        let out = std::process::Command::new(common::supervisor::supervisor_bin())
            .args(&args)
            .args(["--socket", "/nonexistent/phantom-spares.sock"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
