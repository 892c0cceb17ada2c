//! Fences of `phantom run` that `isolation.rs` does not cover: the seccomp argument rules
//! (vsock, setuid/setgid modes, `CLONE_NEWTIME`, TIOCLINUX), the ENOSYS answers that make
//! libc fall back to calls a filter can read (`clone3`, `openat2`), the mount table
//! (no `/sys`, the old root gone, a read-only `/dev/shm` when hardened), Landlock's
//! filesystem fence, rlimits and the CPU quota, the caller's terminal, and what direct
//! mode leaves behind.
//!
//! Each test that relies on a kernel feature also makes a contrasting run in which the
//! fence is absent — `--mode direct` (no seccomp, no Landlock) or `security.level: low`
//! (no Landlock) — and asserts that the same attempt then gets a different answer, so
//! that a refusal is known to be the sandbox's doing and the test can fail.
//!
//! Needs user namespaces; without them a test prints `skipped: <why>` and passes, unless
//! `PHANTOM_REQUIRE_ISOLATION=1` (see `common`). Run as root for the cgroup tests:
//!
//! ```text
//! sudo -E cargo test -p phantom-cli --test fences
//! ```

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

const EMFILE: i64 = 24;
const ENOTTY: i64 = 25;

/// The probe at its host path under `phantom run --mode direct`: no namespaces, seccomp
/// or Landlock, so the answers are the kernel's own.
fn run_probe_direct(workspace: &Workspace, args: &[&str]) -> ProbeRun {
    let probe = workspace.host_path("phantom-probe");
    let probe = probe.to_str().expect("utf-8 temp dir");
    let run = run_probe_at(workspace, probe, args, &["--mode", "direct"], |_| {});
    assert!(
        run.probe.is_object(),
        "the probe printed no JSON in direct mode\n{}",
        run.describe()
    );
    run
}

/// `phantom-probe try NAMES...` in the sandbox `flags` ask for; the probe's `results`.
fn try_in_sandbox(workspace: &Workspace, names: &[&str], flags: &[&str]) -> Value {
    let mut args = vec!["try"];
    args.extend_from_slice(names);
    let run = run_probe_in(workspace, &args, flags);
    let results = run.probe["results"].clone();
    assert!(
        results.is_object(),
        "the probe printed no results\n{}",
        run.describe()
    );
    results
}

/// `phantom-probe try NAMES...` in direct mode; the probe's `results`.
fn try_direct(workspace: &Workspace, names: &[&str]) -> Value {
    let mut args = vec!["try"];
    args.extend_from_slice(names);
    run_probe_direct(workspace, &args).probe["results"].clone()
}

/// The probe's `report` in a fresh workspace; asserts that its attempts ran.
fn report_attempts(flags: &[&str]) -> (Value, Value) {
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["report"], flags);
    let attempts = run.probe["attempts"].clone();
    assert!(
        attempts.is_object() && attempts.get("skipped").is_none(),
        "the probe's attempts did not run\n{}",
        run.describe()
    );
    (run.report, attempts)
}

fn assert_eperm(outcome: &Value, what: &str) {
    assert!(
        refused(outcome) && errno(outcome) == EPERM,
        "{what} must fail with EPERM: {outcome}"
    );
}

/// A number no other process on the host has on its command line: `300.<pid><n><nanos>`,
/// which `sleep` reads as a duration of about 300 s.
fn unique_sleep_seconds() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "300.{}{}{nanos:09}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------
// Seccomp argument rules
// ---------------------------------------------------------------------------------------

#[test]
fn vsock_sockets_are_refused() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    for flags in [&[][..], &["--mode", "hardened"][..]] {
        let results = try_in_sandbox(&workspace, &["socket_vsock", "socket_unix"], flags);
        assert_eperm(
            &results["socket_vsock"],
            &format!("socket(AF_VSOCK) with flags {flags:?}"),
        );
        assert_eq!(
            results["socket_unix"]["ok"], true,
            "socket(AF_UNIX) must work with flags {flags:?}: {results}"
        );
    }

    // strict is security level high, where a denied call kills instead of failing.
    let policy = workspace.strict_policy();
    let strict = run_probe_at(
        &workspace,
        PROBE_READ_ONLY,
        &["try", "socket_vsock", "socket_unix"],
        &["--policy", &policy],
        |_| {},
    );
    let results = &strict.probe["results"];
    let vsock = &results["socket_vsock"];
    assert!(
        refused(vsock) && (errno(vsock) == EPERM || vsock["signal"].as_i64() == Some(SIGSYS)),
        "strict must refuse socket(AF_VSOCK) (EPERM, or SIGSYS at level high): {vsock}\n{}",
        strict.describe()
    );
    assert_eq!(
        results["socket_unix"]["ok"], true,
        "strict: socket(AF_UNIX) must work: {results}"
    );

    // Without seccomp the kernel does not answer EPERM: it makes the socket, or says
    // EAFNOSUPPORT where there is no vsock transport.
    let direct = try_direct(&workspace, &["socket_vsock"]);
    assert_ne!(
        errno(&direct["socket_vsock"]),
        EPERM,
        "without seccomp socket(AF_VSOCK) should not fail with EPERM: {direct}"
    );
}

/// Host files under `dir` with the setuid or setgid bit, as `path (mode)`.
fn set_id_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut queue = vec![dir.to_path_buf()];
    while let Some(dir) = queue.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                queue.push(entry.path());
            }
            let mode = meta.permissions().mode();
            if mode & 0o6000 != 0 {
                found.push(format!("{} ({:o})", entry.path().display(), mode & 0o7777));
            }
        }
    }
    found
}

#[test]
fn setuid_bits_cannot_be_set() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["setid", "/workspace"], &[]);
    let results = run.probe["results"]
        .as_object()
        .unwrap_or_else(|| panic!("no setid results\n{}", run.describe()));
    for call in ["fchmod", "fchmodat", "openat", "mknodat"] {
        for mode in ["04755", "02755"] {
            assert!(
                results.contains_key(&format!("{call}_{mode}")),
                "{call} {mode} was not tried: {}",
                run.probe
            );
        }
    }
    if cfg!(target_arch = "x86_64") {
        assert!(
            results.contains_key("chmod_04755") && results.contains_key("open_04755"),
            "chmod and open were not tried: {}",
            run.probe
        );
    }
    for (name, outcome) in results {
        if name == "chmod_0755" {
            assert_eq!(
                outcome["ok"], true,
                "a plain chmod 0755 must work: {outcome}"
            );
        } else if name.starts_with("fchmodat2_") && errno(outcome) == ENOSYS {
            continue; // a kernel before 6.6
        } else {
            assert_eperm(outcome, name);
        }
    }
    assert_eq!(
        run.probe["modes"]["setid-target"], "755",
        "{}",
        run.probe["modes"]
    );
    let leaked = set_id_files(&workspace.dir);
    assert!(
        leaked.is_empty(),
        "files with a setuid or setgid bit in the workspace on the host: {leaked:?}"
    );

    // Without seccomp the same calls set the bits: the refusal above is the filter's.
    let contrast = workspace.host_path("direct");
    fs::create_dir(&contrast).expect("create the direct-mode directory");
    fs::set_permissions(&contrast, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    let dir = contrast.to_str().expect("utf-8");
    let direct = run_probe_direct(&workspace, &["setid", dir]);
    assert_eq!(
        direct.probe["results"]["fchmod_04755"]["ok"],
        true,
        "without seccomp fchmod 04755 should work\n{}",
        direct.describe()
    );
    let set = set_id_files(&contrast);
    assert!(
        !set.is_empty(),
        "direct mode should have left setuid files in {dir}: {}",
        direct.probe
    );
    // Setuid files of the invoking user must not outlive the test.
    fs::remove_dir_all(&contrast).expect("remove the direct-mode directory");
}

#[test]
fn clone_newtime_is_refused() {
    if !sandbox_available() {
        return;
    }
    // clone(2) cannot make a time namespace (the bit lies in the exit-signal byte), so
    // nothing but the filter answers EPERM: the kernel itself forks plainly.
    let (_, attempts) = report_attempts(&[]);
    assert_eperm(&attempts["clone_newtime"], "clone(CLONE_NEWTIME)");
    let workspace = Workspace::new();
    let direct = try_direct(&workspace, &["clone_newtime"]);
    assert_eq!(
        direct["clone_newtime"]["ok"], true,
        "without seccomp clone(CLONE_NEWTIME | SIGCHLD) forks: {direct}"
    );
}

#[test]
fn tioclinux_is_refused() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["tiocsti"], &[]);
    if run.probe["target"] != "pty" {
        eprintln!(
            "note: no pty could be made the controlling terminal ({}); TIOCLINUX was tried \
             on /dev/null, where only a filter answers EPERM",
            run.probe
        );
    }
    assert_eperm(&run.probe["tioclinux"], "TIOCLINUX on the terminal");
    let (_, attempts) = report_attempts(&[]);
    assert_eperm(&attempts["tioclinux_dev_null"], "TIOCLINUX on /dev/null");
    // A terminal ioctl on /dev/null is ENOTTY unless a filter answers first.
    let direct = try_direct(&workspace, &["tioclinux_dev_null"]);
    assert_eq!(
        errno(&direct["tioclinux_dev_null"]),
        ENOTTY,
        "without seccomp TIOCLINUX on /dev/null is ENOTTY: {direct}"
    );
}

// ---------------------------------------------------------------------------------------
// ENOSYS, so that libc falls back to calls a filter can read
// ---------------------------------------------------------------------------------------

#[test]
fn clone3_answers_enosys_at_runtime() {
    if !sandbox_available() {
        return;
    }
    let (_, attempts) = report_attempts(&[]);
    let outcome = &attempts["clone3_plain"];
    assert!(
        refused(outcome) && errno(outcome) == ENOSYS,
        "clone3 must fail with ENOSYS: {outcome}"
    );
    let workspace = Workspace::new();
    let direct = try_direct(&workspace, &["clone3_plain"]);
    assert_eq!(
        direct["clone3_plain"]["ok"], true,
        "without seccomp clone3 works on this kernel: {direct}"
    );
}

#[test]
fn openat2_answers_enosys() {
    if !sandbox_available() {
        return;
    }
    let (_, attempts) = report_attempts(&[]);
    let outcome = &attempts["openat2"];
    assert!(
        refused(outcome) && errno(outcome) == ENOSYS,
        "openat2 must fail with ENOSYS: {outcome}"
    );
    let workspace = Workspace::new();
    let results = try_in_sandbox(&workspace, &["openat2", "openat"], &[]);
    assert!(
        errno(&results["openat2"]) == ENOSYS && results["openat"]["ok"] == true,
        "openat2 ENOSYS, openat (its fallback) works: {results}"
    );
    let direct = try_direct(&workspace, &["openat2"]);
    if errno(&direct["openat2"]) == ENOSYS {
        return not_applicable("this kernel has no openat2 (Linux < 5.6): no contrast");
    }
    assert_eq!(
        direct["openat2"]["ok"], true,
        "without seccomp openat2 works: {direct}"
    );
}

// ---------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------

#[test]
fn hardened_dev_shm_is_read_only() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let args = ["write", "/dev/shm/x", "/workspace/y"];
    let default = run_probe_in(&workspace, &args, &[]);
    assert_eq!(
        default.probe["results"]["/dev/shm/x"]["ok"],
        true,
        "default profile: /dev/shm is writable\n{}",
        default.describe()
    );
    let hardened = run_probe_in(&workspace, &args, &["--mode", "hardened"]);
    let policy = workspace.strict_policy();
    let strict = run_probe_at(
        &workspace,
        PROBE_READ_ONLY,
        &args,
        &["--policy", &policy],
        |_| {},
    );
    for (name, run) in [("hardened", &hardened), ("strict", &strict)] {
        assert_eq!(run.report["mode"], "hardened", "{name}: {}", run.report);
        let results = &run.probe["results"];
        assert!(
            refused(&results["/dev/shm/x"]) && errno(&results["/dev/shm/x"]) == EROFS,
            "{name}: /dev/shm must be read-only (EROFS): {}\n{}",
            results["/dev/shm/x"],
            run.describe()
        );
        assert_eq!(
            results["/workspace/y"]["ok"], true,
            "{name}: the workspace stays writable: {results}"
        );
    }
}

#[test]
fn no_sys_in_the_sandbox() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["stat", "/sys", "/sys/kernel"], &[]);
    for path in ["/sys", "/sys/kernel"] {
        let outcome = &run.probe["results"][path];
        assert!(
            refused(outcome) && errno(outcome) == ENOENT,
            "{path} must not exist inside: {outcome}\n{}",
            run.describe()
        );
    }
    let root = run_probe_in(&workspace, &["list", "/"], &[]);
    let names: Vec<&str> = root.probe["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("cannot list /\n{}", root.describe()))
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(!names.contains(&"sys"), "/ lists sys: {names:?}");
    // The host has one, so the probe would have seen it had it been mounted.
    let direct = run_probe_direct(&workspace, &["stat", "/sys"]);
    assert_eq!(
        direct.probe["results"]["/sys"]["ok"], true,
        "the host's /sys, seen without a sandbox: {}",
        direct.probe
    );
}

/// One line of a mountinfo table.
#[derive(Debug)]
struct MountEntry {
    /// `major:minor` of the filesystem.
    dev: String,
    /// The directory of that filesystem mounted here.
    root: String,
    target: String,
    fstype: String,
}

/// Parses `/proc/PID/mountinfo` (escapes left as they are).
fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                dev: fields.get(2)?.to_string(),
                root: fields.get(3)?.to_string(),
                target: fields.get(4)?.to_string(),
                fstype: fields.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// The mounts the probe reported, as [`MountEntry`]s.
fn probe_mounts(probe: &Value) -> Vec<MountEntry> {
    let field = |m: &Value, key: &str| m[key].as_str().unwrap_or("?").to_owned();
    probe["mounts"]
        .as_array()
        .unwrap_or_else(|| panic!("no mounts in the probe's report: {probe}"))
        .iter()
        .map(|m| MountEntry {
            dev: field(m, "dev"),
            root: field(m, "root"),
            target: field(m, "target"),
            fstype: field(m, "fstype"),
        })
        .collect()
}

/// The mount targets `phantom policy compile` plans for the default profile.
fn planned_targets(workspace: &Workspace) -> BTreeSet<String> {
    let show = phantom(&["profile", "show", "default"], |_| {});
    assert_eq!(show.code, Some(0), "{}", show.describe());
    let file = workspace.policy("default-copy", &show.stdout);
    let compiled = phantom(&["policy", "compile", &file, "--json"], |_| {});
    assert_eq!(compiled.code, Some(0), "{}", compiled.describe());
    let plan: Value = serde_json::from_str(&compiled.stdout)
        .unwrap_or_else(|e| panic!("the plan is not JSON ({e})\n{}", compiled.describe()));
    let targets: BTreeSet<String> = plan["mounts"]
        .as_array()
        .unwrap_or_else(|| panic!("no mounts in the plan: {plan}"))
        .iter()
        .filter_map(|m| m["target"].as_str().map(str::to_owned))
        .collect();
    assert!(
        targets.contains("/usr"),
        "the plan mounts no /usr: {targets:?}"
    );
    targets
}

/// Mounts that are not part of the plan: a mount point outside `/`, `/usr`, `/etc/*`,
/// `/tmp`, `/workspace`, `/proc`, `/dev` (with what lies below them) and the planned
/// targets; or the host's root filesystem mounted at its own root (the old root).
fn unplanned_mounts(
    mounts: &[MountEntry],
    planned: &BTreeSet<String>,
    host_root_dev: &str,
) -> Vec<String> {
    let allowed = |target: &str| {
        let under = |dir: &str| {
            target == dir
                || target
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        planned.contains(target)
            || ["/", "/tmp", "/workspace"].contains(&target)
            || under("/usr")
            || under("/proc")
            || under("/dev")
            || target
                .strip_prefix("/etc/")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    };
    mounts
        .iter()
        .filter(|m| !allowed(&m.target) || (m.dev == host_root_dev && m.root == "/"))
        .map(|m| format!("{m:?}"))
        .collect()
}

#[test]
fn old_root_is_detached() {
    if !sandbox_available() {
        return;
    }
    let host = parse_mountinfo(
        &fs::read_to_string("/proc/self/mountinfo").expect("read the host's mountinfo"),
    );
    let host_root_dev = host
        .iter()
        .rev()
        .find(|m| m.target == "/")
        .map(|m| m.dev.clone())
        .expect("the host has a / mount");
    let workspace = Workspace::new();
    let planned = planned_targets(&workspace);
    let run = run_probe_in(&workspace, &["report"], &[]);
    let inside = probe_mounts(&run.probe);
    let roots: Vec<&MountEntry> = inside.iter().filter(|m| m.target == "/").collect();
    assert!(
        roots.len() == 1 && roots[0].fstype == "tmpfs" && roots[0].dev != host_root_dev,
        "exactly one / inside, a fresh tmpfs (the host's / is {host_root_dev}): {roots:?}"
    );
    let unplanned = unplanned_mounts(&inside, &planned, &host_root_dev);
    assert!(
        unplanned.is_empty(),
        "mounts inside that the plan does not make (the old root or a host mount):\n  {}\n\
         planned: {planned:?}",
        unplanned.join("\n  ")
    );
    // The host's own table fails the same check: it has the host's root at /.
    let on_host = unplanned_mounts(&host, &planned, &host_root_dev);
    assert!(
        !on_host.is_empty(),
        "the check found nothing wrong with the host's own mount table"
    );
}

// ---------------------------------------------------------------------------------------
// Landlock
// ---------------------------------------------------------------------------------------

#[test]
fn landlock_fences_writes() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    // /proc is mounted read-write and /proc/self/comm is the caller's own, which any
    // process may rename: only Landlock (no read-write rule under /proc) stops the write.
    let args = ["write", "/proc/self/comm", "/workspace/fenced"];
    let run = run_probe_in(&workspace, &args, &[]);
    let abi = run.report["isolation"]["landlock_abi"]
        .as_u64()
        .unwrap_or_else(|| panic!("no isolation.landlock_abi\n{}", run.describe()));
    if abi == 0 {
        return skip("Landlock is not enforced on this kernel (landlock_abi 0)");
    }
    let results = &run.probe["results"];
    assert!(
        refused(&results["/proc/self/comm"]) && errno(&results["/proc/self/comm"]) == EACCES,
        "Landlock ABI {abi}: writing /proc/self/comm must fail with EACCES: {}\n{}",
        results["/proc/self/comm"],
        run.describe()
    );
    assert_eq!(
        results["/workspace/fenced"]["ok"], true,
        "the workspace has a read-write rule: {results}"
    );

    let low = workspace.policy(
        "landlock-off",
        "profile: landlock-off\nextends: default\nsecurity:\n  level: low\n",
    );
    let run = run_probe_in(&workspace, &args, &["--policy", &low]);
    assert_eq!(
        run.report["isolation"]["landlock_abi"],
        0,
        "security.level: low should turn Landlock off\n{}",
        run.describe()
    );
    assert_eq!(
        run.probe["results"]["/proc/self/comm"]["ok"],
        true,
        "without Landlock the write to /proc/self/comm should succeed\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

#[test]
fn nofile_limit_is_enforced() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let policy = workspace.policy(
        "nofile-64",
        "profile: nofile-64\nextends: default\nresources:\n  nofile: 64\n",
    );
    let run = run_probe_in(&workspace, &["open-files", "5000"], &["--policy", &policy]);
    let opened = run.probe["opened"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count\n{}", run.describe()));
    assert!(
        opened <= 64 && run.probe["max_fd"].as_u64().is_some_and(|fd| fd < 64),
        "nofile: 64 let the payload open {opened} files: {}",
        run.probe
    );
    assert_eq!(
        errno(&run.probe["stopped_by"]),
        EMFILE,
        "opening must end in EMFILE: {}",
        run.probe
    );
    // The default (1024) lets far more through: the count above is the limit's doing.
    let run = run_probe_in(&workspace, &["open-files", "5000"], &[]);
    let opened = run.probe["opened"].as_u64().unwrap_or(0);
    assert!(
        (900..=1024).contains(&opened) && errno(&run.probe["stopped_by"]) == EMFILE,
        "the default nofile is 1024; {opened} opened: {}",
        run.probe
    );
}

#[test]
fn core_dumps_are_off() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["report"], &[]);
    let core = &probe["rlimits"]["core"];
    assert!(
        core["soft"] == 0 && core["hard"] == 0,
        "RLIMIT_CORE must be 0 (soft and hard): {core}"
    );
}

/// CPU time (user + sys, ms) of a run as its report gives it.
fn cpu_ms(report: &Value) -> f64 {
    report["user_ms"].as_f64().unwrap_or(f64::NAN) + report["sys_ms"].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn cpu_quota_is_enforced() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let slow = run_probe_in(&workspace, &["spin", "1500"], &["--cpus", "0.25"]);
    if slow.report["isolation"]["cgroup"] == "none" {
        return skip("no cgroup for the CPU quota (isolation.cgroup is none)");
    }
    assert_eq!(slow.probe["probe"], "spin", "{}", slow.describe());
    let used = cpu_ms(&slow.report);
    assert!(
        used <= 500.0,
        "--cpus 0.25 for 1.5 s of wall time allows ~375 ms of CPU; the run used {used} ms\n{}",
        slow.describe()
    );
    // The contrast needs a CPU to itself; other tests may be busy, so it gets two tries.
    let mut fast = run_probe_in(&workspace, &["spin", "1500"], &["--cpus", "1.0"]);
    if cpu_ms(&fast.report) <= 1000.0 {
        fast = run_probe_in(&workspace, &["spin", "1500"], &["--cpus", "1.0"]);
    }
    let used = cpu_ms(&fast.report);
    assert!(
        used > 1000.0,
        "--cpus 1.0 should let a 1.5 s busy loop use over 1 s of CPU; it used {used} ms\n{}",
        fast.describe()
    );
}

#[test]
fn rlimit_fallback_stops_a_fork_bomb_without_cgroups() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["forkbomb", "1000"], &["--pids", "32"]);
    if run.report["isolation"]["cgroup"] != "none" {
        return not_applicable(
            "a cgroup enforces --pids here (isolation.rs covers it); the RLIMIT_NPROC \
             fallback is used only without one",
        );
    }
    let forked = run.probe["forked"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count\n{}", run.describe()));
    assert!(
        forked <= 32,
        "without a cgroup, --pids 32 (RLIMIT_NPROC) must stop the fork bomb at 32; it \
         forked {forked}: {}",
        run.probe
    );
    assert_eq!(
        errno(&run.probe["stopped_by"]),
        EAGAIN,
        "fork must fail with EAGAIN: {}",
        run.probe
    );
    // With a higher limit the same probe forks past 32: the stop above is the limit's.
    let run = run_probe_in(&workspace, &["forkbomb", "48"], &["--pids", "256"]);
    assert_eq!(
        run.probe["forked"], 48,
        "--pids 256 should allow 48 forks: {}",
        run.probe
    );
}

// ---------------------------------------------------------------------------------------
// The caller's terminal
// ---------------------------------------------------------------------------------------

/// Runs `argv` as a session leader on a fresh pty (so it is the terminal's foreground
/// process group), types `hello` into the terminal, and prints everything that appears on
/// it, then `HARNESS-EXIT:<code>`. Gives up after 8 s.
const PTY_HARNESS: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
os.write(fd, b"hello\n")
out = b""
deadline = time.monotonic() + 8
while time.monotonic() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.2)
    if ready:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            break
        out += chunk
if time.monotonic() >= deadline:
    os.kill(pid, 9)
    sys.stdout.write("HARNESS-TIMEOUT\n")
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.stdout.write("\nHARNESS-EXIT:%d\n" % os.waitstatus_to_exitcode(status))
"#;

const TTY_SCRIPT: &str = "if [ -t 0 ]; then echo TTY; else echo NOTTY; fi; read l; echo GOT:$l";

/// What appeared on the pty while `argv` ran under [`PTY_HARNESS`].
fn on_a_terminal(argv: &[&str]) -> String {
    let mut command = Command::new("/usr/bin/python3");
    command.arg("-c").arg(PTY_HARNESS).args(argv);
    let out = run_with_deadline(command, Duration::from_secs(20));
    assert_eq!(
        out.code,
        Some(0),
        "the pty harness failed\n{}",
        out.describe()
    );
    out.stdout
}

#[test]
fn payload_cannot_reach_the_callers_terminal() {
    if !sandbox_available() {
        return;
    }
    if !Path::new("/usr/bin/python3").is_file() {
        return not_applicable("no /usr/bin/python3 to run the pty harness");
    }
    // The harness really gives a terminal: sh on its own sees one.
    let bare = on_a_terminal(&["/bin/sh", "-c", TTY_SCRIPT]);
    assert!(
        bare.lines().any(|l| l.trim() == "TTY") && bare.contains("GOT:hello"),
        "the harness did not give sh a terminal:\n{bare}"
    );
    let bin = phantom_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let seen = on_a_terminal(&[bin, "run", "--timeout", "5s", "--", "sh", "-c", TTY_SCRIPT]);
    assert!(
        seen.lines().any(|l| l.trim() == "NOTTY"),
        "the payload's stdin must not be the caller's terminal:\n{seen}"
    );
    assert!(
        seen.contains("GOT:hello"),
        "what is typed on the terminal must still reach the payload (through a pipe):\n{seen}"
    );
    assert!(
        seen.contains("HARNESS-EXIT:0"),
        "phantom should exit 0:\n{seen}"
    );
}

// ---------------------------------------------------------------------------------------
// Direct mode
// ---------------------------------------------------------------------------------------

/// Host processes running `sleep SECONDS`, killed (so a failure leaves nothing behind)
/// and described.
fn kill_survivors(seconds: &str) -> Vec<String> {
    let needle = format!("sleep {seconds}");
    let mut left = host_processes_containing(&needle);
    if !left.is_empty() {
        // Give a kill already under way a moment to finish.
        std::thread::sleep(Duration::from_millis(500));
        left = host_processes_containing(&needle);
    }
    for (pid, _) in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    left.into_iter()
        .map(|(pid, cmd)| format!("{pid}: {cmd}"))
        .collect()
}

#[test]
fn direct_mode_kills_setsid_descendants() {
    if !sandbox_available() {
        return;
    }
    // The search finds such a sleep when there is one: start one on the host. (Its
    // command line is readable only once exec has set it up, a moment after spawn.)
    let seconds = unique_sleep_seconds();
    let mut own = Command::new("sleep")
        .arg(&seconds)
        .spawn()
        .unwrap_or_else(|e| panic!("start sleep on the host: {e}"));
    let needle = format!("sleep {seconds}");
    let mut found = Vec::new();
    for _ in 0..40 {
        found = host_processes_containing(&needle);
        if !found.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = own.kill();
    let _ = own.wait();
    assert_eq!(
        found.iter().map(|(pid, _)| *pid).collect::<Vec<_>>(),
        vec![own.id()],
        "the host-side search should find the test's own `{needle}`: {found:?}"
    );

    // The payload exits once the sleep it started has a session of its own (field 6 of
    // /proc/PID/stat; until then a kill of the payload's process group would take the
    // sleep with it and the run would prove nothing).
    let seconds = unique_sleep_seconds();
    let script = format!(
        "setsid sleep {seconds} & p=$!; for i in $(seq 200); do \
         read -r _ _ _ _ _ s _ < /proc/$p/stat; [ \"$s\" = \"$p\" ] && break; sleep 0.01; \
         done; : {seconds}"
    );
    let out = run_direct_leaving(&seconds, &["--", "sh", "-c", &script]);
    assert_eq!(out.code, Some(0), "{}", out.describe());

    // The same when the timeout ends the run.
    let seconds = unique_sleep_seconds();
    let script = format!("setsid sleep {seconds} & sleep 60");
    let out = run_direct_leaving(
        &seconds,
        &["--json", "--timeout", "1s", "--", "sh", "-c", &script],
    );
    let report = out
        .report()
        .unwrap_or_else(|e| panic!("no run report: {e}\n{}", out.describe()));
    assert_eq!(report["timed_out"], true, "{}", out.describe());
    assert!(
        out.elapsed < Duration::from_secs(6),
        "phantom took {:?} to enforce a 1s timeout",
        out.elapsed
    );
}

/// `phantom run --mode direct ARGS`, whose payload leaves `sleep SECONDS` behind; fails
/// when that sleep outlives the run (killing it first). A phantom that waits for the
/// sleep (it holds the output pipes) is killed after 15 s.
fn run_direct_leaving(seconds: &str, args: &[&str]) -> PhantomOutput {
    let mut command = Command::new(phantom_bin());
    command.args(["run", "--mode", "direct"]).args(args);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_with_deadline(command, Duration::from_secs(15))
    }));
    let left = kill_survivors(seconds);
    let out = out.unwrap_or_else(|_| {
        panic!("phantom did not return within 15 s; its payload's setsid sleep: {left:?}")
    });
    assert!(
        left.is_empty(),
        "a setsid descendant outlived a direct-mode run: {left:?}\n{}",
        out.describe()
    );
    out
}

/// Regression: the setuid rule for open/openat ignored the flags, so a read whose
/// unused mode argument held 04000 (raw syscalls; Go's OpenFile with a setuid perm)
/// failed with EPERM.
#[test]
fn reading_with_a_setuid_mode_argument_is_not_refused() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let results = try_in_sandbox(&workspace, &["openat_read_mode_04000"], &[]);
    let outcome = &results["openat_read_mode_04000"];
    assert_eq!(outcome["ok"], true, "a read must not be refused: {outcome}");
}
