//! `phantom doctor`: what this host supports, what phantom will do with it, and what
//! to change when something is missing.

/// A number field of /proc/PID/FILE, for reports on the host's processes (the
/// benchmarks' PSS figures).
pub use phantom_linux::process::proc_number;
use serde::Serialize;

use phantom_linux::cgroup::{Hierarchy, Layout, CONTROLLERS};

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// `ok`, `warn` (works, degraded) or `fail` (sandboxes cannot run).
    pub status: &'static str,
    pub detail: String,
    /// What to change, when the status is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn check(name: &str, status: &'static str, detail: impl Into<String>, hint: Option<&str>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        hint: hint.map(str::to_string),
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Inspect the host. `live`: also start a real sandbox running `true`.
pub fn run(live: bool) -> Vec<Check> {
    let mut out = Vec::new();
    let euid = phantom_linux::process::euid();
    out.push(check(
        "kernel",
        "ok",
        format!(
            "{} {}",
            phantom_linux::sysinfo::kernel_release(),
            phantom_linux::sysinfo::machine()
        ),
        None,
    ));
    out.push(check(
        "user",
        "ok",
        if euid == 0 {
            "root (sandbox root maps to an unprivileged host uid)".to_string()
        } else {
            format!("uid {euid} (unprivileged: user namespaces)")
        },
        None,
    ));

    let max_ns = read("/proc/sys/user/max_user_namespaces")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let unpriv = read("/proc/sys/kernel/unprivileged_userns_clone");
    let apparmor = read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    if max_ns == 0 {
        out.push(check(
            "user namespaces",
            "fail",
            "user.max_user_namespaces = 0",
            Some("sysctl -w user.max_user_namespaces=15000"),
        ));
    } else if euid != 0 && unpriv.as_deref() == Some("0") {
        out.push(check(
            "user namespaces",
            "fail",
            "kernel.unprivileged_userns_clone = 0",
            Some("sysctl -w kernel.unprivileged_userns_clone=1, or run as root"),
        ));
    } else if euid != 0 && apparmor.as_deref() == Some("1") {
        out.push(check("user namespaces", "fail", "AppArmor restricts unprivileged user namespaces", Some("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or add an AppArmor profile for phantom")));
    } else {
        out.push(check(
            "user namespaces",
            "ok",
            format!("max_user_namespaces = {max_ns}"),
            None,
        ));
    }

    let seccomp_actions = read("/proc/sys/kernel/seccomp/actions_avail");
    match seccomp_actions {
        Some(a) if a.contains("errno") && a.contains("kill_process") => out.push(check(
            "seccomp",
            "ok",
            format!("filter mode; actions: {a}"),
            None,
        )),
        Some(a) => out.push(check(
            "seccomp",
            "fail",
            format!("actions: {a}"),
            Some("a kernel with SECCOMP_FILTER and kill_process (Linux 4.14+)"),
        )),
        None => out.push(check(
            "seccomp",
            "fail",
            "no /proc/sys/kernel/seccomp",
            Some("a kernel built with CONFIG_SECCOMP_FILTER"),
        )),
    }

    let abi = phantom_linux::landlock::kernel_abi();
    match abi {
        0 => out.push(check(
            "landlock",
            "warn",
            "not available: the filesystem fence is skipped (namespaces and seccomp still apply)",
            Some("boot with lsm=...,landlock (Linux 5.13+)"),
        )),
        1..=5 => out.push(check(
            "landlock",
            "warn",
            format!("ABI {abi}: no signal/abstract-socket scoping (needs ABI 6, Linux 6.12)"),
            None,
        )),
        _ => out.push(check("landlock", "ok", format!("ABI {abi}"), None)),
    }

    let layout = Layout::detect();
    let mut placed = Vec::new();
    let mut writable = Vec::new();
    for c in CONTROLLERS {
        match layout.hierarchy(c) {
            Some(Hierarchy::V1(p)) => {
                placed.push(format!("{c}: v1 at {}", p.display()));
                if is_writable(&p) {
                    writable.push(c);
                }
            }
            Some(Hierarchy::V2(p)) => {
                placed.push(format!("{c}: v2 at {}", p.display()));
                if is_writable(&p) {
                    writable.push(c);
                }
            }
            None => placed.push(format!("{c}: missing")),
        }
    }
    let all = writable.len() == CONTROLLERS.len();
    out.push(check(
        "cgroups",
        if all { "ok" } else { "warn" },
        format!("{} ({}); writable: {}", layout.describe(), placed.join(", "), if writable.is_empty() { "none".into() } else { writable.join(", ") }),
        (!all).then_some("run as root, or delegate a cgroup v2 subtree to this user; without it memory and processes are limited by rlimits and cpu is not limited"),
    ));

    let psi: Vec<&str> = ["cpu", "memory", "io"]
        .into_iter()
        .filter(|r| read(&format!("/proc/pressure/{r}")).is_some())
        .collect();
    out.push(check(
        "pressure (PSI)",
        if psi.len() == 3 { "ok" } else { "warn" },
        if psi.is_empty() {
            "not available".to_string()
        } else {
            format!("/proc/pressure: {}", psi.join(", "))
        },
        (psi.len() != 3).then_some("boot with psi=1 (needed by pressure-aware warm pools)"),
    ));

    let overlay =
        read("/proc/filesystems").is_some_and(|f| f.lines().any(|l| l.ends_with("overlay")));
    out.push(check(
        "overlayfs",
        if overlay { "ok" } else { "warn" },
        if overlay { "available" } else { "not loaded" },
        (!overlay).then_some("modprobe overlay (needed for image-backed sandboxes)"),
    ));

    let socket = crate::client::socket_path();
    let engine = crate::EngineClient::supervisor_or_private();
    out.push(match engine.pools() {
        Ok(status) => check(
            "warm pools",
            "ok",
            format!(
                "phantom-supervisor (pid {}) at {}: {}",
                status.pid,
                socket.display(),
                status
                    .pools
                    .iter()
                    .map(|p| format!("{} {}/{} ready", p.profile, p.ready, p.target))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        ),
        Err(_) => check(
            "warm pools",
            "warn",
            format!(
                "no phantom-supervisor at {}: every run starts cold",
                socket.display()
            ),
            Some("start `phantom-supervisor` (as the same user) for warm starts"),
        ),
    });

    if live {
        out.push(live_check());
    }
    out
}

fn is_writable(dir: &std::path::Path) -> bool {
    let probe = dir.join("phantom");
    if probe.is_dir() {
        return rustix::fs::access(&probe, rustix::fs::Access::WRITE_OK).is_ok();
    }
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
}

fn live_check() -> Check {
    use crate::client::{Output, RunIo, Stdin, Wake};
    use phantom_api::request::{Limits, RunOptions, RunRequest};
    let request = RunRequest {
        argv: Some(vec!["true".into()]),
        options: RunOptions {
            profile: Some(phantom_policy::DEFAULT_PROFILE.into()),
            limits: Limits {
                timeout: Some("10s".into()),
                ..Limits::default()
            },
            ..RunOptions::default()
        },
        ..RunRequest::default()
    };
    let io = RunIo {
        stdin: Stdin::Null,
        output: Output::capture(),
        wake: Wake::Nothing,
        on_started: None,
    };
    // A fresh sandbox, as a first run without a supervisor gets it.
    let run = crate::EngineClient::private().run(
        phantom_api::access::Principal::local(),
        request,
        true,
        io,
    );
    match run {
        Ok(r) if r.exit_code == 0 => check(
            "sandbox start",
            "ok",
            format!(
                "`true` in the default profile: exit 0 in {:.1} ms (cgroup {}, landlock ABI {})",
                r.wall_ms, r.isolation.cgroup, r.isolation.landlock_abi
            ),
            None,
        ),
        Ok(r) => check(
            "sandbox start",
            "fail",
            format!(
                "`true` exited {}: {}",
                r.exit_code,
                r.stderr.unwrap_or_default().trim()
            ),
            None,
        ),
        Err(e) => check(
            "sandbox start",
            "fail",
            e.to_string(),
            Some("see the checks above"),
        ),
    }
}
