//! Isolation guarantees of `phantom run`, checked from inside REAL sandboxes by
//! `phantom-probe` (see `crates/phantom-probe`). Each test is named after the guarantee
//! it checks and fails when the guarantee does not hold.
//!
//! Needs user namespaces; without them a test prints `skipped: <why>` and passes, unless
//! `PHANTOM_REQUIRE_ISOLATION=1` (CI as root) turns every missing feature into a failure.
//! Limits enforced by cgroups (memory, pids) are skipped where the report says no cgroup
//! could be used. Run as root for the full set:
//!
//! ```text
//! sudo -E cargo test -p phantom-cli --test isolation
//! ```
//!
//! The probe is taken from `$PHANTOM_PROBE`, else from next to `phantom` when it is up
//! to date, else built by the tests (see `common::probe_binary`).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Processes and identity
// ---------------------------------------------------------------------------------------

#[test]
fn host_processes_are_invisible() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["report"], &[]);
    let pids: Vec<i64> = probe["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert!(
        !pids.is_empty() && pids.len() <= 3,
        "only the sandbox's init and the payload may be visible in /proc, saw {pids:?}"
    );
    let host_init = fs::read("/proc/1/cmdline")
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim_end()
                .to_owned()
        })
        .unwrap_or_default();
    if !host_init.is_empty() {
        assert_ne!(
            probe["pid1_cmdline"].as_str().unwrap_or(""),
            host_init,
            "pid 1 inside the sandbox is the host's init"
        );
    }
}

#[test]
fn namespaces_differ_from_the_host() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["report"], &[]);
    for ns in ["user", "pid", "mnt", "net", "ipc", "uts", "cgroup"] {
        let host = fs::read_link(format!("/proc/self/ns/{ns}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let inside = probe["namespaces"][ns].as_str().unwrap_or("");
        assert!(
            !inside.is_empty(),
            "the probe could not read its {ns} namespace"
        );
        assert_ne!(inside, host, "the payload shares the host's {ns} namespace");
    }
}

#[test]
fn uid_zero_inside_is_not_host_root() {
    if !sandbox_available() {
        return;
    }
    let (report, probe) = run_probe(&["report"], &[]);
    assert_eq!(probe["ids"]["uid"], 0, "uid inside: {}", probe["ids"]);
    assert_eq!(probe["ids"]["euid"], 0, "euid inside: {}", probe["ids"]);
    let uid_map = probe["uid_map"].as_str().expect("uid_map readable");
    let host_uid_of_root = uid_map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"0"))
        .and_then(|f| f.get(1)?.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no mapping for uid 0 in uid_map {uid_map:?}"));
    let (host_uid, _) = host_ids();
    if host_uid == 0 {
        assert_ne!(
            host_uid_of_root, 0,
            "uid 0 inside is root on the host: {uid_map:?}"
        );
    } else {
        assert_eq!(
            host_uid_of_root, host_uid,
            "as an unprivileged user uid 0 inside must map to the invoking uid: {uid_map:?}"
        );
    }
    assert_eq!(
        report["isolation"]["host_uid"], host_uid_of_root,
        "the report's isolation.host_uid disagrees with the uid_map {uid_map:?}"
    );
}

#[test]
fn hostname_is_phantom() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["report"], &[]);
    assert_eq!(probe["hostname"], "phantom");
}

#[test]
fn payload_is_a_session_leader_without_a_terminal() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["report"], &[]);
    assert_eq!(
        probe["ids"]["sid"], probe["ids"]["pid"],
        "the runtime must setsid before exec: {}",
        probe["ids"]
    );
    assert_eq!(
        probe["tty"]["controlling"], false,
        "the payload has a controlling terminal: {}",
        probe["tty"]
    );
}

// ---------------------------------------------------------------------------------------
// Privileges, seccomp, forbidden syscalls
// ---------------------------------------------------------------------------------------

#[test]
fn no_capabilities() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["report"], &[]);
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            cap_mask(&probe, key),
            0,
            "{key} is not empty: {}",
            probe["status"]
        );
    }
}

#[test]
fn seccomp_filter_and_no_new_privs() {
    if !sandbox_available() {
        return;
    }
    let (report, probe) = run_probe(&["report"], &[]);
    let status = &probe["status"];
    assert_eq!(status["Seccomp"], "2", "seccomp mode: {status}");
    assert_eq!(status["NoNewPrivs"], "1", "no_new_privs: {status}");
    let filters: u64 = status["Seccomp_filters"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(filters >= 1, "no seccomp filter installed: {status}");
    assert_eq!(
        probe["prctl"]["seccomp_mode"]["value"], 2,
        "{}",
        probe["prctl"]
    );
    assert_eq!(
        probe["prctl"]["no_new_privs"]["value"], 1,
        "{}",
        probe["prctl"]
    );
    assert!(
        report["isolation"]["seccomp_programs"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "the report says no seccomp program: {}",
        report["isolation"]
    );
}

#[test]
fn forbidden_syscalls_are_refused() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["report"], &[]);
    let attempts = &probe["attempts"];
    let forbidden = [
        "mount_tmpfs",
        "fsopen_tmpfs",
        "keyctl_join_session_keyring",
        "bpf_map_create",
        "io_uring_setup",
        "unshare_user",
        "clone_newuser",
        "setns_self_net",
        "ptrace_traceme",
        "perf_event_open_sw",
        "userfaultfd",
        "chroot",
        "open_by_handle_at",
        "finit_module",
        "mknod_char_device",
        "open_raw_socket",
        "open_packet_socket",
    ];
    // What a policy refusal looks like: EPERM from a denylist or a missing capability,
    // EACCES from an LSM or sysctl, ENOSYS from an allowlist, ENOSPC from a user
    // namespace count of 0 — or the process killed by the filter.
    let refusals = [EPERM, EACCES, ENOSYS, ENOSPC];
    let mut wrong = Vec::new();
    let mut eperm = 0;
    for name in forbidden {
        let outcome = &attempts[name];
        let killed = outcome["signal"].is_i64();
        if !refused(outcome) || !(killed || refusals.contains(&errno(outcome))) {
            wrong.push(format!("{name}: {outcome}"));
        }
        if errno(outcome) == EPERM {
            eperm += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "forbidden operations not refused:\n  {}\nall attempts: {attempts}",
        wrong.join("\n  ")
    );
    assert!(
        eperm * 2 >= forbidden.len(),
        "most refusals should be EPERM (seccomp), only {eperm} of {} were: {attempts}",
        forbidden.len()
    );
}

#[test]
fn x32_syscalls_are_killed() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["report"], &[]);
    let outcome = &probe["attempts"]["x32_getpid"];
    assert_eq!(
        outcome["signal"].as_i64(),
        Some(SIGSYS),
        "an x32-ABI syscall must kill the process with SIGSYS: {outcome}"
    );
}

#[test]
fn tiocsti_is_refused_on_a_terminal() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["tiocsti"], &[]);
    if probe["target"] != "pty" {
        eprintln!(
            "note: no pty could be made the controlling terminal ({probe}); \
             TIOCSTI was tried on /dev/null, where only a filter answers EPERM"
        );
    }
    for key in ["tiocsti", "tiocsti_high_bits"] {
        let outcome = &probe[key];
        assert!(
            refused(outcome) && errno(outcome) == EPERM,
            "{key} must fail with EPERM: {outcome}\nprobe: {probe}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Filesystem
// ---------------------------------------------------------------------------------------

#[test]
fn usr_is_read_only() {
    if !sandbox_available() {
        return;
    }
    let dirs = ["/usr", "/usr/bin", "/usr/lib", "/usr/local"];
    let leftovers_before: Vec<bool> = dirs
        .iter()
        .map(|d| Path::new(d).join("phantom-probe-write-test").exists())
        .collect();
    let (_, probe) = run_probe(&["write", dirs[0], dirs[1], dirs[2], dirs[3]], &[]);
    for (dir, before) in dirs.iter().zip(leftovers_before) {
        let leaked = Path::new(dir).join("phantom-probe-write-test");
        if !before && leaked.exists() {
            let _ = fs::remove_file(&leaked);
            panic!(
                "a write inside the sandbox created {} on the host",
                leaked.display()
            );
        }
        let outcome = &probe["results"][*dir];
        if outcome["ok"].is_null() {
            continue; // not present inside the sandbox
        }
        assert!(
            refused(outcome) && errno(outcome) == EROFS,
            "{dir} must be read-only (EROFS): {outcome}"
        );
    }
}

#[test]
fn no_write_reaches_the_host() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let tmp_file = format!("/tmp/phantom-probe-{}", workspace.marker);
    let ws_file = format!("/workspace/out-{}", workspace.marker);
    let refused_paths = [
        "/",
        "/usr",
        "/etc",
        "/bin",
        "/root",
        "/home",
        "/var",
        "/proc/sys/kernel/hostname",
    ];
    let host_leftover = |p: &str| {
        if p.starts_with("/proc") {
            None
        } else {
            Some(Path::new(p).join("phantom-probe-write-test"))
        }
    };
    let existed: Vec<bool> = refused_paths
        .iter()
        .map(|p| host_leftover(p).is_some_and(|f| f.exists()))
        .collect();
    let host_hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();

    let mut args = vec!["write"];
    args.extend_from_slice(&refused_paths);
    args.extend_from_slice(&["/dev/null", &tmp_file, &ws_file]);
    let run = run_probe_in(&workspace, &args, &[]);
    let results = &run.probe["results"];

    // Host side first: nothing may have landed outside the workspace.
    for (path, existed) in refused_paths.iter().zip(existed) {
        if let Some(leaked) = host_leftover(path) {
            if !existed && leaked.exists() {
                let _ = fs::remove_file(&leaked);
                panic!(
                    "a write to {path} inside the sandbox created {} on the host",
                    leaked.display()
                );
            }
        }
    }
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
        host_hostname,
        "the host's hostname changed"
    );
    let host_tmp = Path::new(&tmp_file);
    if host_tmp.exists() {
        let _ = fs::remove_file(host_tmp);
        panic!("{tmp_file} written inside the sandbox appeared in the host's /tmp");
    }

    for path in refused_paths {
        assert!(
            refused(&results[path]),
            "write to {path} must fail: {}",
            results[path]
        );
    }
    for path in ["/dev/null", tmp_file.as_str(), ws_file.as_str()] {
        assert_eq!(
            results[path]["ok"], true,
            "write to {path} must work: {}",
            results[path]
        );
    }
    let host_file = workspace.host_path(&format!("out-{}", workspace.marker));
    assert_eq!(
        fs::read(&host_file).ok(),
        Some(b"p".to_vec()),
        "{}",
        host_file.display()
    );
    assert_eq!(owner(&host_file).0, host_ids().0, "workspace file owner");
}

#[test]
fn workspace_files_are_owned_by_invoker() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["write", "/workspace/owned"], &[]);
    assert_eq!(
        run.probe["results"]["/workspace/owned"]["ok"],
        true,
        "write to the workspace failed: {}",
        run.describe()
    );
    let (uid, gid) = owner(&workspace.host_path("owned"));
    assert_eq!(
        (uid, gid),
        host_ids(),
        "owner of a file the payload wrote (uid, gid)"
    );
}

#[test]
fn host_root_and_secrets_are_unreadable() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let home = if is_root() {
        Some("/root".to_owned())
    } else {
        std::env::var("HOME").ok()
    };
    let secret =
        home.map(|h| Path::new(&h).join(format!(".phantom-test-secret-{}", workspace.marker)));
    let secret = secret.filter(|path| fs::write(path, "hunter2").is_ok());
    struct Remove<'a>(Option<&'a Path>);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                let _ = fs::remove_file(p);
            }
        }
    }
    let _cleanup = Remove(secret.as_deref());

    let secret_str = secret.as_ref().map(|p| p.display().to_string());
    let mut args = vec!["read", "/etc/shadow", "/etc/gshadow"];
    if let Some(s) = &secret_str {
        args.push(s);
    }
    let run = run_probe_in(&workspace, &args, &[]);
    for (path, outcome) in run.probe["results"].as_object().expect("results") {
        assert!(
            refused(outcome),
            "{path} is readable inside the sandbox: {outcome}"
        );
    }
    if secret.is_none() {
        eprintln!("note: could not plant a secret in the home directory; checked /etc only");
    }

    for dir in ["/root", "/home"] {
        let run = run_probe_in(&workspace, &["list", dir], &[]);
        let entries = run.probe["entries"].as_array().cloned().unwrap_or_default();
        assert!(
            run.probe["ok"] == false || entries.is_empty(),
            "the host's {dir} is visible inside: {}",
            run.probe
        );
    }
}

#[test]
fn proc_is_masked() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let masked = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/sysrq-trigger",
        "/proc/timer_list",
    ];
    let mut args = vec!["read"];
    args.extend_from_slice(&masked);
    let run = run_probe_in(&workspace, &args, &[]);
    for path in masked {
        let outcome = &run.probe["results"][path];
        assert!(
            refused(outcome) || outcome["bytes"] == 0,
            "{path} is readable inside the sandbox: {outcome}"
        );
    }

    let sysctls = ["/proc/sys/kernel/hostname", "/proc/sys/kernel/domainname"];
    let write = run_probe_in(&workspace, &["write", sysctls[0], sysctls[1]], &[]);
    let report = run_probe_in(&workspace, &["report"], &[]);
    let proc_sys_ro = report.probe["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| {
            m["target"] == "/proc/sys"
                && m["options"]
                    .as_str()
                    .is_some_and(|o| o.split(',').any(|x| x == "ro"))
        });
    for path in sysctls {
        let outcome = &write.probe["results"][path];
        assert!(
            refused(outcome),
            "{path} is writable inside the sandbox: {outcome}"
        );
        assert!(
            errno(outcome) == EROFS || proc_sys_ro,
            "/proc/sys must be mounted read-only (write to {path}: {outcome})"
        );
    }
}

#[test]
fn dev_has_no_block_devices() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["list", "/dev"], &[]);
    assert_eq!(probe["ok"], true, "cannot list /dev: {probe}");
    let allowed_names: BTreeSet<&str> = [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd",
        "stdin", "stdout", "stderr", "core",
    ]
    .into_iter()
    .collect();
    // (major, minor) of null, zero, full, random, urandom, tty, ptmx.
    let allowed_chars = [[1, 3], [1, 5], [1, 7], [1, 8], [1, 9], [5, 0], [5, 2]];
    for entry in probe["entries"].as_array().expect("entries") {
        let name = entry["name"].as_str().unwrap_or("?");
        assert_ne!(entry["kind"], "block", "block device in /dev: {entry}");
        assert!(
            allowed_names.contains(name),
            "unexpected /dev/{name}: {entry}"
        );
        if entry["kind"] == "char" {
            let rdev: Vec<u64> = entry["rdev"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            assert!(
                allowed_chars
                    .iter()
                    .any(|c| c.as_slice() == rdev.as_slice()),
                "/dev/{name} is an unexpected device {rdev:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------

fn interfaces(probe: &Value) -> Vec<(String, Option<bool>)> {
    probe["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or("?").to_owned(),
                i["up"].as_bool(),
            )
        })
        .collect()
}

#[test]
fn only_loopback_interface() {
    if !sandbox_available() {
        return;
    }
    let (_, probe) = run_probe(&["net"], &[]);
    assert_eq!(
        interfaces(&probe),
        vec![("lo".to_owned(), Some(true))],
        "the default profile has exactly lo, up"
    );

    let (_, probe) = run_probe(&["net"], &["--network", "none"]);
    let seen = interfaces(&probe);
    assert!(
        seen.iter()
            .all(|(name, up)| name == "lo" && *up == Some(false)),
        "--network none: only lo, and down; saw {seen:?}"
    );
}

#[test]
fn strict_profile_has_no_network_and_read_only_tmp() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let policy = workspace.strict_policy();
    let flags = ["--policy", policy.as_str()];
    let net = run_probe_at(&workspace, PROBE_READ_ONLY, &["net"], &flags, |_| {});
    assert!(
        net.probe.is_object(),
        "the probe failed under strict:\n{}",
        net.describe()
    );
    assert_eq!(net.report["mode"], "hardened", "{}", net.report);
    let seen = interfaces(&net.probe);
    assert!(
        seen.iter().all(|(_, up)| *up == Some(false)),
        "strict: no interface may be up; saw {seen:?}"
    );
    let write = run_probe_at(
        &workspace,
        PROBE_READ_ONLY,
        &["write", "/tmp/x", "/workspace/y"],
        &flags,
        |_| {},
    );
    let results = &write.probe["results"];
    assert!(
        refused(&results["/tmp/x"]) && errno(&results["/tmp/x"]) == EROFS,
        "strict: /tmp must be read-only: {}",
        results["/tmp/x"]
    );
    assert_eq!(
        results["/workspace/y"]["ok"], true,
        "strict: the workspace stays writable: {}",
        results["/workspace/y"]
    );
}

#[test]
fn strict_profile_does_not_execute_the_workspace() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["exit", "0"], &["--profile", "strict"]);
    assert!(
        run.probe.is_null() && run.report["exit_code"] == 126,
        "strict mounts the workspace noexec; executing from it must fail with 126\n{}",
        run.describe()
    );
}

#[test]
fn strict_profile_kills_forbidden_syscalls() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let policy = workspace.strict_policy();
    let run = run_probe_at(
        &workspace,
        PROBE_READ_ONLY,
        &["report"],
        &["--policy", &policy],
        |_| {},
    );
    let attempts = &run.probe["attempts"];
    assert!(
        attempts.is_object(),
        "no report under strict\n{}",
        run.describe()
    );
    // Outside the allowlist at security level high: the filter kills with SIGSYS.
    let killed = [
        "mount_tmpfs",
        "fsopen_tmpfs",
        "keyctl_join_session_keyring",
        "bpf_map_create",
        "io_uring_setup",
        "unshare_user",
        "clone_newuser",
        "setns_self_net",
        "ptrace_traceme",
        "perf_event_open_sw",
        "userfaultfd",
        "chroot",
        "tiocsti_dev_null",
        "tiocsti_high_bits_dev_null",
        "x32_getpid",
    ];
    let survived: Vec<String> = killed
        .iter()
        .filter(|name| attempts[**name]["signal"].as_i64() != Some(SIGSYS))
        .map(|name| format!("{name}: {}", attempts[*name]))
        .collect();
    assert!(
        survived.is_empty(),
        "strict must kill these with SIGSYS:\n  {}",
        survived.join("\n  ")
    );
    // kill(1, 0) is refused by Landlock's signal scoping, which needs ABI 6; it is
    // tested on its own in signals.rs.
    let scoped = run.report["isolation"]["landlock_abi"]
        .as_u64()
        .unwrap_or(0)
        >= 6;
    for (name, outcome) in attempts.as_object().expect("attempts") {
        if name != "clone3_plain" && (name != "signal_init" || scoped) {
            assert!(refused(outcome), "strict allowed {name}: {outcome}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

#[test]
fn fork_bomb_is_stopped_by_pids_limit() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["forkbomb", "1000"], &["--pids", "32"]);
    if run.report["isolation"]["cgroup"] == "none" && !is_root() {
        return skip("no cgroup for the pids limit as an unprivileged user");
    }
    let forked = run.probe["forked"].as_u64();
    assert!(
        forked.is_some_and(|n| n < 32),
        "--pids 32 must stop the fork bomb below 32 processes: {}\n{}",
        run.probe,
        run.describe()
    );
    assert_eq!(
        errno(&run.probe["stopped_by"]),
        EAGAIN,
        "fork must fail with EAGAIN: {}",
        run.probe
    );
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    if !sandbox_available() {
        return;
    }
    if !is_root() {
        return skip("the memory limit needs a cgroup; run as root");
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["memhog", "512"], &["--memory", "64MB"]);
    if run.report["isolation"]["cgroup"] == "none" {
        return skip(&format!(
            "no cgroup on this host: {}",
            run.report["warnings"]
        ));
    }
    let report = &run.report;
    assert_eq!(report["oom_killed"], true, "oom_killed\n{}", run.describe());
    assert!(
        report["exit_code"] == 137 || report["signal"] == SIGKILL,
        "the hog must die of SIGKILL (exit 137): {report}"
    );
    assert!(
        run.probe.is_null(),
        "the hog finished allocating 512 MiB: {}",
        run.probe
    );
}

#[test]
fn tmp_fill_is_stopped() {
    if !sandbox_available() {
        return;
    }
    let (report, probe) = run_probe(&["fill", "/tmp/x", "200"], &[]);
    let written = probe["bytes_written"].as_u64().unwrap_or(0);
    // Reported like the other limits.
    assert_eq!(report["disk_limit_hit"], true, "{report}");
    assert_eq!(
        report["full_filesystems"],
        serde_json::json!(["/tmp"]),
        "{report}"
    );
    assert_eq!(
        errno(&probe),
        ENOSPC,
        "filling /tmp must end in ENOSPC: {probe}"
    );
    let mib = 1 << 20;
    assert!(
        (40 * mib..=68 * mib).contains(&written),
        "the default /tmp is 64MB; {written} bytes were written: {probe}"
    );
}

#[test]
fn fsize_limit_stops_huge_files() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let mib = 1u64 << 20;
    // The default profile sets a finite limit (1GB, too big to fill in a test) ...
    let report = run_probe_in(&workspace, &["report"], &[]);
    let default_limit = report.probe["rlimits"]["fsize"]["soft"].as_u64();
    assert!(
        default_limit.is_some(),
        "the default profile must set RLIMIT_FSIZE: {}",
        report.probe["rlimits"]
    );
    // ... so check the mechanism with a small one.
    let policy = workspace.policy(
        "fsize",
        "profile: fsize-8mb\nextends: default\nresources:\n  fsize: 8MB\n",
    );
    let run = run_probe_in(
        &workspace,
        &["fill", "/workspace/big", "9"],
        &["--policy", &policy],
    );
    assert_eq!(errno(&run.probe), EFBIG, "{}", run.describe());
    assert_eq!(
        run.probe["bytes_written"].as_u64(),
        Some(8 * mib),
        "{}",
        run.probe
    );
}

#[test]
fn timeout_kills_sleep_and_grandchildren() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let marker = workspace.marker.clone();
    let run = run_probe_in(
        &workspace,
        &["spawn-sleepers", "2", "60", &marker],
        &["--timeout", "1s"],
    );
    let survivors = || host_processes_containing(&marker);
    let mut left = survivors();
    if !left.is_empty() {
        std::thread::sleep(Duration::from_secs(1));
        left = survivors();
    }
    assert!(
        left.is_empty(),
        "processes of the timed-out sandbox survive on the host: {left:?}"
    );
    assert_eq!(
        run.report["timed_out"],
        true,
        "timed_out\n{}",
        run.describe()
    );
    assert!(
        run.output.elapsed < Duration::from_secs(6),
        "phantom took {:?} to enforce a 1s timeout",
        run.output.elapsed
    );
    assert_eq!(
        run.probe["pids"].as_array().map(Vec::len),
        Some(3),
        "the probe, its child and grandchild should all have started: {}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------------------
// What the payload inherits
// ---------------------------------------------------------------------------------------

#[test]
fn no_fd_beyond_stdio_reaches_the_payload() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let leaked = workspace.host_path("leaked-fd.txt");
    fs::write(&leaked, "secret").expect("write the file to leak");
    // std opens everything with O_CLOEXEC; the shell's redirections do not, so phantom
    // starts with fds 7 (a file) and 8 (a copy of stderr) open.
    let run = run_probe_with(&workspace, &["fds"], &[], |cmd| {
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
        let mut shell = std::process::Command::new("/bin/sh");
        shell
            .arg("-c")
            .arg("exec 7<\"$LEAK\" 8>&2; exec \"$@\"")
            .arg("sh")
            .arg(program)
            .args(args)
            .env("LEAK", &leaked);
        *cmd = shell;
    });
    let fds: Vec<u64> = run.probe["fds"]
        .as_array()
        .unwrap_or_else(|| panic!("no fd list\n{}", run.describe()))
        .iter()
        .filter_map(|f| f["fd"].as_u64())
        .collect();
    assert_eq!(
        fds,
        vec![0, 1, 2],
        "open fds in the payload: {}",
        run.probe["fds"]
    );
}

#[test]
fn host_env_is_invisible() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let secret_key = format!("PHANTOM_IT_SECRET_{}", std::process::id());
    let run = run_probe_with(&workspace, &["env"], &["--env", "FOO=bar"], |cmd| {
        cmd.env(&secret_key, "leaked").env("TERM", "xterm");
    });
    let env = run.probe["env"]
        .as_object()
        .unwrap_or_else(|| panic!("no env\n{}", run.describe()));
    assert!(
        !env.contains_key(&secret_key),
        "host variable leaked: {env:?}"
    );
    assert_eq!(
        env.get("FOO").and_then(Value::as_str),
        Some("bar"),
        "--env FOO=bar: {env:?}"
    );
    for key in ["PATH", "HOME", "LANG", "TERM"] {
        assert!(env.contains_key(key), "{key} missing: {env:?}");
    }
    let leaked: Vec<String> = std::env::vars()
        .filter(|(k, v)| {
            !["PATH", "HOME", "LANG", "TERM"].contains(&k.as_str())
                && env.get(k).and_then(Value::as_str) == Some(v.as_str())
        })
        .map(|(k, _)| k)
        .collect();
    assert!(
        leaked.is_empty(),
        "host variables visible inside: {leaked:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Exit status
// ---------------------------------------------------------------------------------------

#[test]
fn exit_codes_propagate() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, &["exit", "3"], &[]);
    assert_eq!(run.output.code, Some(3), "{}", run.describe());
    assert_eq!(run.report["exit_code"], 3, "{}", run.report);
    assert_eq!(run.report["signal"], Value::Null, "{}", run.report);

    let ws = workspace.dir.to_str().expect("utf-8");
    let plain = phantom(
        &[
            "run",
            "--workspace",
            ws,
            "--",
            "/workspace/phantom-probe",
            "exit",
            "42",
        ],
        |_| {},
    );
    assert_eq!(plain.code, Some(42), "without --json\n{}", plain.describe());
}

#[test]
fn signals_propagate() {
    if !sandbox_available() {
        return;
    }
    let workspace = Workspace::new();
    for (signal, code) in [(9, 137), (15, 143)] {
        let sig = signal.to_string();
        let run = run_probe_in(&workspace, &["signal", &sig], &[]);
        assert_eq!(
            run.output.code,
            Some(code),
            "signal {signal}\n{}",
            run.describe()
        );
        assert_eq!(run.report["exit_code"], code, "{}", run.report);
        assert_eq!(run.report["signal"], signal, "{}", run.report);
    }
}

#[test]
fn command_not_found_is_127() {
    if !sandbox_available() {
        return;
    }
    for command in ["/workspace/no-such-command", "no-such-command-phantom-it"] {
        let out = phantom(&["run", "--", command], |_| {});
        assert_eq!(out.code, Some(127), "{command}\n{}", out.describe());
    }
}

#[test]
fn direct_mode_warns() {
    if !sandbox_available() {
        return;
    }
    let out = phantom(&["run", "--mode", "direct", "--", "true"], |_| {});
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr
            .lines()
            .any(|l| l.to_lowercase().contains("warning")),
        "direct mode must say loudly that it does not isolate\n{}",
        out.describe()
    );
}
