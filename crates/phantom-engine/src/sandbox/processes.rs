//! The processes of a persistent sandbox, as the host sees them: what `exec` commands
//! still run and what they left running in the background (`phantom ps`,
//! `phantom kill`).
//!
//! A process belongs to the sandbox when it is in the sandbox's pid namespace — the
//! one whose fd its keeper hands out (the same that `exec` joins). The host's /proc is
//! read for that: each process's `ns/pid` is compared with the namespace's inode, and
//! its pid inside the sandbox is the last `NSpid:` of its status. The sandbox's init
//! (pid 1 there, phantom's own) is never listed nor signalled. A process is signalled
//! through a pidfd opened first and checked after: a pid reused in between is never
//! hit.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use phantom_api::choice::ProcessState;
use phantom_api::ProcessInfo;
use phantom_linux::process;

/// `USER_HZ`, the unit of /proc/PID/stat's times: 100 on every Linux architecture we
/// build for (fixed by the kernel's ABI, whatever the kernel's own HZ).
const TICKS_PER_SECOND: u64 = 100;

/// The (device, inode) of a pid namespace fd (from the keeper).
pub(crate) fn namespace_id(ns: BorrowedFd<'_>) -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(ns).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// A process of the sandbox: its host pid and what `ps` shows.
pub(crate) struct Found {
    pub host_pid: i32,
    pub info: ProcessInfo,
}

/// Every process in the pid namespace `ns` but its init, by pid inside it.
pub(crate) fn list(ns: (u64, u64)) -> Vec<Found> {
    let boot = boot_time();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(host_pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(info) = describe(host_pid, ns, boot) {
            found.push(Found { host_pid, info });
        }
    }
    found.sort_by_key(|f| f.info.pid);
    found
}

/// Process `host_pid`, if it is in the pid namespace `ns` and is not its init.
fn describe(host_pid: i32, ns: (u64, u64), boot: u64) -> Option<ProcessInfo> {
    let meta = std::fs::metadata(format!("/proc/{host_pid}/ns/pid")).ok()?;
    if (meta.dev(), meta.ino()) != ns {
        return None;
    }
    let pid = pid_inside(host_pid)?;
    if pid == 1 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{host_pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let (head, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = match fields.first().copied() {
        Some("R") => ProcessState::Running,
        Some("S") | Some("I") => ProcessState::Sleeping,
        Some("D") => ProcessState::DiskSleep,
        Some("T") | Some("t") => ProcessState::Stopped,
        Some("Z") | Some("X") => ProcessState::Zombie,
        _ => ProcessState::Other,
    };
    let ticks: u64 = fields.get(22 - 3)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap_or_default();
    let mut argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if argv.is_empty() {
        // A zombie has no command line left: its name, as `ps` shows it.
        let name = head.split_once('(').map_or("", |(_, n)| n);
        argv.push(format!("[{name}]"));
    }
    Some(ProcessInfo {
        pid,
        cmdline: argv,
        started: boot + ticks / TICKS_PER_SECOND,
        state,
    })
}

/// The pid inside its innermost pid namespace of host process `host_pid` (the last
/// `NSpid:` of its status).
pub(crate) fn pid_inside(host_pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{host_pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Unix seconds of the host's boot (`btime` of /proc/stat).
fn boot_time() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A pidfd for the process the sandbox numbers `pid`, proven to be it after the
/// pidfd was opened (the pidfd pins the process: a reused pid cannot slip in).
pub(crate) fn open(ns: (u64, u64), pid: i32) -> Option<OwnedFd> {
    let boot = boot_time();
    let found = list(ns).into_iter().find(|f| f.info.pid == pid)?;
    let pidfd = process::pidfd_open(found.host_pid).ok()?;
    // Still the same process: in the namespace, the same pid there, the same start.
    let again = describe(found.host_pid, ns, boot)?;
    (again.pid == pid && again.started == found.info.started).then_some(pidfd)
}

/// Send `signal` through `pidfd`.
pub(crate) fn signal(pidfd: &OwnedFd, signal: i32) -> bool {
    process::pidfd_kill(pidfd.as_fd(), signal).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_namespace_lists_its_processes_with_their_command_lines() {
        // Our own pid namespace: this test process is in it, under its own pid.
        let ns = std::fs::File::open("/proc/self/ns/pid").unwrap();
        let id = namespace_id(ns.as_fd()).unwrap();
        let me = process::getpid();
        let found = list(id);
        let mine = found
            .iter()
            .find(|f| f.host_pid == me)
            .expect("the test process is listed");
        assert_eq!(pid_inside(me), Some(mine.info.pid));
        let argv0 = std::env::args().next().unwrap();
        assert_eq!(mine.info.cmdline.first(), Some(&argv0));
        assert_ne!(mine.info.state, ProcessState::Zombie);
        assert!(
            found.iter().all(|f| f.info.pid != 1),
            "the init is never listed"
        );
        let now = phantom_state::now_s();
        assert!(mine.info.started <= now + 1 && mine.info.started + 3600 > now);
        // A namespace nothing is in lists nothing.
        assert!(list((u64::MAX, u64::MAX)).is_empty());
        assert!(open((u64::MAX, u64::MAX), mine.info.pid).is_none());
    }
}
