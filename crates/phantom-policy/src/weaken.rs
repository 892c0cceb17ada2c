//! Keys that weaken a sandbox: refused in `hardened` mode where they contradict what
//! it promises, a warning naming the key in `sandbox` mode.
//!
//! * `security.seccomp.allow` of a syscall that breaks a fence ([`FENCE_SYSCALLS`]):
//!   namespaces (`unshare -U` gives the payload capabilities again), mounts, other
//!   processes (ptrace), unnamespaced kernel surface (bpf, keyrings), io_uring, file
//!   handles;
//! * Landlock off (`security.landlock.enabled: false`, or `security.level: low`);
//! * a bind of the host's state ([`HOST_STATE_DIRS`]: /proc, /sys, /dev, /run), of a
//!   directory below one, or of one containing one (`/`);
//! * a bind of a unix socket itself: the sandbox can `connect()` to the host service
//!   behind it;
//! * in every isolated mode, a warning for a bind that holds unix sockets — one of
//!   [`SOCKET_DIRS`] (or a directory containing one, or one below /run or /dev), or a
//!   directory with a socket in it when phantom checks: a read-only bind does not stop
//!   `connect()` to a socket in it, and Landlock does not cover pathname sockets.

use crate::error::{PolicyError, SourcePos};
use crate::host::{Host, PathKind};
use crate::plan::Mode;
use crate::profile::{Profile, SecurityLevel};
use crate::schema::is_within;

/// Syscalls that open a way out of a fence, by what they do; the reason completes
/// "`NAME` ...".
#[rustfmt::skip]
pub const FENCE_SYSCALLS: &[(&[&str], &str)] = &[
    (&["unshare", "setns"],
     "creates or joins namespaces (a nested user namespace gives the payload every capability again: `unshare -U` works)"),
    (&["mount", "umount2", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
       "fspick", "mount_setattr", "pivot_root", "chroot"],
     "changes the sandbox's mounts"),
    (&["ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp"],
     "reads or controls other processes"),
    (&["bpf", "perf_event_open", "userfaultfd"],
     "reaches kernel attack surface that is not namespaced"),
    (&["add_key", "request_key", "keyctl"],
     "reaches the kernel keyrings, which are not namespaced"),
    (&["io_uring_setup", "io_uring_enter", "io_uring_register"],
     "submits I/O that seccomp does not see"),
    (&["name_to_handle_at", "open_by_handle_at"],
     "opens files by handle, past every path check"),
];

/// Host directories whose contents a sandbox should not see, and what they hold.
#[rustfmt::skip]
pub const HOST_STATE_DIRS: &[(&str, &str)] = &[
    ("/proc", "every host process and, through /proc/PID/root, their files"),
    ("/sys", "the host's kernel and device settings"),
    ("/dev", "the host's devices"),
    ("/run", "the host's run-time state and service sockets"),
    ("/var/run", "the host's run-time state and service sockets"),
];

/// Host directories where unix sockets usually live. Below /tmp, only a directory that
/// holds a socket when phantom checks is named (its other subdirectories are anyone's).
pub const SOCKET_DIRS: &[&str] = &["/run", "/var/run", "/tmp", "/dev"];

/// What weakens `profile` in `mode`: refusals (hardened) and warnings (sandbox; the
/// socket warning in both). Direct mode has no fences to weaken.
pub(crate) fn check(
    profile: &Profile,
    mode: Mode,
    host: &dyn Host,
    refusals: &mut Vec<PolicyError>,
    warnings: &mut Vec<String>,
) {
    if mode == Mode::Direct {
        return;
    }
    let hardened = mode == Mode::Hardened;
    let at = |key: &str| {
        profile
            .position(key)
            .cloned()
            .unwrap_or_else(|| SourcePos::file_only(format!("profile {}", profile.name)))
    };
    // (key, what it does), refused or warned about at the end.
    let mut weakening: Vec<(String, String)> = Vec::new();
    let mut weakens = |key: &str, what: String| weakening.push((key.to_string(), what));
    let mut socket_warnings = Vec::new();

    for (i, name) in profile.security.seccomp.allow.iter().enumerate() {
        if let Some((_, why)) = FENCE_SYSCALLS
            .iter()
            .find(|(names, _)| names.contains(&name.as_str()))
        {
            let key = format!("security.seccomp.allow[{i}]");
            let key = if profile.position(&key).is_some() {
                key
            } else {
                "security.seccomp.allow".to_string()
            };
            weakens(&key, format!("`{name}` {why}"));
        }
    }

    let landlock_off = "turns Landlock off: no filesystem fence behind the read-only mounts, and no TCP, abstract-socket or signal scoping";
    if !profile.security.landlock.enabled {
        weakens("security.landlock.enabled", format!("false {landlock_off}"));
    } else if profile.security.level == SecurityLevel::Low {
        weakens("security.level", format!("low {landlock_off}"));
    }

    for (i, bind) in profile.filesystem.binds.iter().enumerate() {
        let key = format!("filesystem.binds[{i}].source");
        let real = host.real_path(&bind.source);
        let sources: Vec<&str> = std::iter::once(bind.source.as_str())
            .chain(real.as_deref().filter(|r| *r != bind.source))
            .collect();
        let touches = |dir: &str| {
            sources
                .iter()
                .any(|s| is_within(s, dir) || is_within(dir, s))
        };
        let exposed: Vec<String> = HOST_STATE_DIRS
            .iter()
            // /var/run is /run on every current distribution: name it once.
            .filter(|(dir, _)| touches(dir) && !(*dir == "/var/run" && touches("/run")))
            .map(|(dir, what)| format!("{dir} ({what})"))
            .collect();
        let shown_source = match &real {
            Some(r) if *r != bind.source => format!("`{}` (that is {r})", bind.source),
            _ => format!("`{}`", bind.source),
        };
        if !exposed.is_empty() {
            weakens(
                &key,
                format!(
                    "{shown_source} shows the sandbox the host's {}",
                    exposed.join(", ")
                ),
            );
        }
        if host.kind(&bind.source) == PathKind::Socket {
            weakens(
                &key,
                format!("{shown_source} is a unix socket: the sandbox can connect() to the host service behind it, read-only or not"),
            );
            continue;
        }
        // In hardened mode a bind of host state is refused already.
        if hardened && !exposed.is_empty() {
            continue;
        }
        let mut holds: Vec<String> = SOCKET_DIRS
            .iter()
            .copied()
            .filter(|dir| {
                let contains = sources.iter().any(|s| is_within(dir, s));
                let below = *dir != "/tmp" && sources.iter().any(|s| is_within(s, dir));
                (contains || below) && !(*dir == "/var/run" && touches("/run"))
            })
            .map(str::to_string)
            .collect();
        if holds.is_empty() && host.kind(&bind.source) == PathKind::Dir {
            let socket = host
                .list(&bind.source)
                .into_iter()
                .find(|name| host.kind(&format!("{}/{name}", bind.source)) == PathKind::Socket);
            holds.extend(socket.map(|name| format!("the socket {name}")));
        }
        if !holds.is_empty() {
            socket_warnings.push(format!(
                "{key}: {shown_source} holds {}, where unix sockets live: a read-only bind does not stop connect() to a socket in it (Landlock does not cover pathname sockets); bind only the files you need",
                holds.join(", ")
            ));
        }
    }
    for (key, what) in weakening {
        if hardened {
            refusals.push(PolicyError::InvalidValue {
                at: at(&key),
                field: key,
                message: format!(
                    "{what}, which mode hardened forbids; remove it or use mode: sandbox"
                ),
            });
        } else {
            warnings.push(format!("{key}: {what}: the sandbox is weaker for it"));
        }
    }
    warnings.extend(socket_warnings);
}
