//! `phantom-probe`: runs INSIDE a Phantom Fragment sandbox and reports what it can see and
//! do as one compact JSON object on stdout. Integration tests (`phantom-cli/tests/
//! isolation.rs`, `fences.rs`) run it through `phantom run --json` and assert on that
//! object.
//!
//! ```text
//! phantom-probe report                  everything visible: ids, namespaces, caps, seccomp,
//!                                       fds, env, interfaces, mounts, rlimits, cgroup, and
//!                                       the outcome of every attempt in `attempts`
//! phantom-probe read|write|stat PATH... per path: {"ok", "errno", ...}
//! phantom-probe list DIR                directory entries with their kind
//! phantom-probe tiocsti                 TIOCSTI on a fresh pty that is our ctty
//! phantom-probe forkbomb N              fork sleeping children until fork fails or N
//! phantom-probe memhog MB               allocate and touch MB MiB (expects an OOM kill)
//! phantom-probe fill PATH MB            write MB MiB of zeros; what stopped it
//! phantom-probe spawn-sleepers N SECS   a chain of N descendants, all sleeping SECS
//! phantom-probe kill PID SIG            kill(PID, SIG) once: may this process signal PID?
//! phantom-probe try NAME...             the named harmless attempts (see `harmless`), each
//!                                       in a child; unlike `report`, also run unsandboxed
//! phantom-probe setid DIR               set the setuid/setgid bit on files made in DIR with
//!                                       every call that takes a mode; chmod 0755 as control
//! phantom-probe open-files N            open /dev/null until it fails or N are open
//! phantom-probe spin MS                 burn CPU for MS ms of wall time
//! phantom-probe exit N | signal N | sleep SECS | env | fds | net
//! ```
//!
//! Every outcome is `{"ok": bool, "errno": n, "error": "EPERM"}` (`errno` 0 when ok);
//! attempts run in a forked child also carry `"signal"` when the child was killed.
//! Extra arguments after the ones a subcommand uses are ignored (except by `try`, which
//! takes every argument as a name), so tests can put a unique marker into the probe's
//! command line. Usage errors exit 2.
//!
//! The probe is single-threaded on purpose: it forks (attempts run in children so that
//! one success cannot change the next attempt), which is only sound without threads.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use phantom_linux::attempt::{self, ChildFate, Errno, Forked, Resource};
use serde_json::{json, Map, Value};

const MIB: usize = 1 << 20;

const USAGE: &str = "usage: phantom-probe <report | read PATH... | write PATH... | stat PATH... \
| list DIR | tiocsti | forkbomb N | memhog MB | fill PATH MB | spawn-sleepers N SECS \
| kill PID SIG | try NAME... | setid DIR | open-files N | spin MS | exit N | signal N \
| sleep SECS | env | fds | net>";

/// A bad command line: printed with the usage, exit 2.
struct UsageError(String);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(value) => {
            emit(&value);
            ExitCode::SUCCESS
        }
        Err(UsageError(msg)) => {
            eprintln!("phantom-probe: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Prints one compact JSON object and flushes, so it survives a later kill.
fn emit(value: &Value) {
    let mut out = io::stdout().lock();
    // A closed stdout leaves nobody to tell; the exit code still says what happened.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn run(args: &[String]) -> Result<Value, UsageError> {
    let Some(command) = args.first() else {
        return Err(UsageError("missing subcommand".into()));
    };
    let rest = &args[1..];
    let value = match command.as_str() {
        "report" => report(),
        "read" => per_path("read", paths(rest)?, read_path),
        "write" => per_path("write", paths(rest)?, write_path),
        "stat" => per_path("stat", paths(rest)?, stat_path),
        "list" => list(Path::new(arg(rest, 0, "DIR")?)),
        "tiocsti" => tiocsti(),
        "forkbomb" => forkbomb(number(rest, 0, "N")?),
        "memhog" => memhog(number(rest, 0, "MB")?),
        "fill" => fill(Path::new(arg(rest, 0, "PATH")?), number(rest, 1, "MB")?),
        "spawn-sleepers" => spawn_sleepers(number(rest, 0, "N")?, number(rest, 1, "SECS")?),
        "kill" => {
            let (pid, sig): (i32, i32) = (number(rest, 0, "PID")?, number(rest, 1, "SIG")?);
            let result = attempt::send_signal(pid, sig);
            with(
                with(with(outcome(&result), "probe", "kill"), "pid", pid),
                "sig",
                sig,
            )
        }
        "try" => try_harmless(rest)?,
        "setid" => setid(Path::new(arg(rest, 0, "DIR")?)),
        "open-files" => open_files(number(rest, 0, "N")?),
        "spin" => spin(number(rest, 0, "MS")?),
        "exit" => {
            let code: i32 = number(rest, 0, "N")?;
            emit(&json!({"probe": "exit", "code": code}));
            std::process::exit(code)
        }
        "signal" => signal(number(rest, 0, "N")?),
        "sleep" => {
            let secs: u64 = number(rest, 0, "SECS")?;
            let start = Instant::now();
            std::thread::sleep(Duration::from_secs(secs));
            json!({"probe": "sleep", "slept_ms": start.elapsed().as_millis() as u64})
        }
        "env" => json!({"probe": "env", "env": environment()}),
        "fds" => json!({"probe": "fds", "fds": open_fds()}),
        "net" => json!({"probe": "net", "interfaces": interfaces()}),
        other => return Err(UsageError(format!("unknown subcommand `{other}`"))),
    };
    Ok(value)
}

fn arg<'a>(rest: &'a [String], index: usize, name: &str) -> Result<&'a str, UsageError> {
    rest.get(index)
        .map(String::as_str)
        .ok_or_else(|| UsageError(format!("missing argument {name}")))
}

fn number<T: std::str::FromStr>(
    rest: &[String],
    index: usize,
    name: &str,
) -> Result<T, UsageError> {
    let text = arg(rest, index, name)?;
    text.parse()
        .map_err(|_| UsageError(format!("{name} must be a number, got `{text}`")))
}

fn paths(rest: &[String]) -> Result<&[String], UsageError> {
    if rest.is_empty() {
        Err(UsageError("expected at least one PATH".into()))
    } else {
        Ok(rest)
    }
}

// ---------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------

fn failed(errno: Errno) -> Value {
    json!({"ok": false, "errno": errno.raw(), "error": errno.name()})
}

fn succeeded() -> Value {
    json!({"ok": true, "errno": 0})
}

/// `{"ok", "errno", "error"}` for a direct attempt.
fn outcome<T>(result: &Result<T, Errno>) -> Value {
    match result {
        Ok(_) => succeeded(),
        Err(errno) => failed(*errno),
    }
}

fn io_outcome<T>(result: &io::Result<T>) -> Value {
    match result {
        Ok(_) => succeeded(),
        Err(err) => failed(Errno::from_io(err)),
    }
}

/// Adds `key: value` to a JSON object.
fn with(mut object: Value, key: &str, value: impl Into<Value>) -> Value {
    if let Value::Object(map) = &mut object {
        map.insert(key.to_owned(), value.into());
    }
    object
}

/// Runs `attempt` in a forked child (see [`attempt::run_in_child`]) and describes its fate.
fn in_child<T>(attempt: impl FnOnce() -> Result<T, Errno>) -> Value {
    match attempt::run_in_child(attempt) {
        Ok(ChildFate::Exited(0)) => succeeded(),
        Ok(ChildFate::Exited(attempt::CHILD_UNREPORTED)) => {
            json!({"ok": false, "errno": 0, "error": "child did not report"})
        }
        Ok(ChildFate::Exited(errno)) => failed(Errno(errno)),
        Ok(ChildFate::Signaled(signal)) => {
            json!({"ok": false, "errno": 0, "error": "killed", "signal": signal})
        }
        Err(errno) => with(failed(errno), "note", "fork for the attempt failed"),
    }
}

// ---------------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------------

fn report() -> Value {
    // Pids first: the attempts below fork children that would show up in the list.
    let pids = visible_pids();
    let ids = attempt::process_ids();
    json!({
        "probe": "report",
        "ids": {
            "uid": ids.uid, "euid": ids.euid, "gid": ids.gid, "egid": ids.egid,
            "pid": ids.pid, "ppid": ids.ppid, "sid": ids.sid, "pgid": ids.pgid,
        },
        "uid_map": read_text("/proc/self/uid_map"),
        "gid_map": read_text("/proc/self/gid_map"),
        "hostname": attempt::hostname(),
        "pids": pids,
        "pid1_cmdline": read_text("/proc/1/cmdline").map(|s| s.replace('\0', " ").trim_end().to_owned()),
        "namespaces": namespaces(),
        "status": status_fields(),
        "prctl": {
            "seccomp_mode": with(outcome(&attempt::seccomp_mode()), "value", attempt::seccomp_mode().ok()),
            "no_new_privs": with(outcome(&attempt::no_new_privs()), "value", attempt::no_new_privs().ok()),
        },
        "fds": open_fds(),
        "env": environment(),
        "interfaces": interfaces(),
        "mounts": mounts(),
        "tty": controlling_tty(),
        "cwd": std::env::current_dir().ok().map(|p| p.display().to_string()),
        "rlimits": rlimits(),
        "cgroup": read_text("/proc/self/cgroup"),
        "attempts": attempts(),
    })
}

fn read_text(path: &str) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn visible_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// `/proc/self/ns/*` links, e.g. `"net": "net:[4026531840]"`.
fn namespaces() -> Map<String, Value> {
    let mut out = Map::new();
    if let Ok(dir) = fs::read_dir("/proc/self/ns") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let target = fs::read_link(entry.path())
                .map(|t| Value::from(t.display().to_string()))
                .unwrap_or(Value::Null);
            out.insert(name, target);
        }
    }
    out
}

/// The capability, seccomp and no_new_privs lines of `/proc/self/status`, verbatim.
fn status_fields() -> Map<String, Value> {
    const KEYS: [&str; 8] = [
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "Seccomp_filters",
    ];
    let mut out = Map::new();
    for line in read_text("/proc/self/status").unwrap_or_default().lines() {
        if let Some((key, value)) = line.split_once(':') {
            if KEYS.contains(&key) {
                out.insert(key.to_owned(), value.trim().into());
            }
        }
    }
    out
}

/// Each open fd with its `readlink` target. The directory fd used for listing is closed
/// before the links are read, so its number no longer resolves and drops out.
fn open_fds() -> Vec<Value> {
    let mut numbers: Vec<u32> = fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    numbers.sort_unstable();
    numbers
        .into_iter()
        .filter_map(|fd| {
            let target = fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some(json!({"fd": fd, "target": target.display().to_string()}))
        })
        .collect()
}

fn environment() -> BTreeMap<String, String> {
    std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

/// Interfaces from `/proc/net/dev`; up-ness from SIOCGIFFLAGS, else `/sys/class/net`.
fn interfaces() -> Vec<Value> {
    let text = read_text("/proc/net/dev").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|line| Some(line.split_once(':')?.0.trim().to_owned()))
        .map(|name| {
            let flags = attempt::interface_flags(&name).ok().or_else(|| {
                let text = read_text(&format!("/sys/class/net/{name}/flags"))?;
                u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
            });
            json!({
                "name": name,
                "flags": flags,
                "up": flags.map(|f| f & 1 == 1),
            })
        })
        .collect()
}

/// Undoes the octal escapes (`\040`) of mountinfo fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4).unwrap_or_default();
        if bytes[i] == b'\\'
            && digits.len() == 3
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push(
                digits
                    .iter()
                    .fold(0u8, |acc, d| acc.wrapping_mul(8) + (d - b'0')),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/self/mountinfo`, one object per mount.
fn mounts() -> Vec<Value> {
    let text = read_text("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(json!({
                "target": unescape(fields.get(4)?),
                "dev": fields.get(2)?,
                "root": unescape(fields.get(3)?),
                "options": fields.get(5)?,
                "fstype": fields.get(sep + 1)?,
                "source": unescape(fields.get(sep + 2)?),
                "super_options": fields.get(sep + 3)?,
            }))
        })
        .collect()
}

/// Whether the process has a controlling terminal: opening `/dev/tty` fails with ENXIO
/// when it has none.
fn controlling_tty() -> Value {
    let result = fs::OpenOptions::new().read(true).open("/dev/tty");
    with(io_outcome(&result), "controlling", result.is_ok())
}

fn rlimits() -> Value {
    let mut out = Map::new();
    for (name, resource) in [
        ("nofile", Resource::Nofile),
        ("fsize", Resource::Fsize),
        ("core", Resource::Core),
        ("nproc", Resource::Nproc),
        ("as", Resource::As),
        ("cpu", Resource::Cpu),
    ] {
        let (soft, hard) = attempt::rlimit(resource);
        out.insert(name.into(), json!({"soft": soft, "hard": hard}));
    }
    Value::Object(out)
}

/// Why the attempts must not run here: in the host's initial user namespace with
/// capabilities, a "successful" attempt would change the host (mount a tmpfs over its
/// /tmp). `None` inside a sandbox or without capabilities.
fn unconfined() -> Option<&'static str> {
    /// PROC_USER_INIT_INO: the inode number of the initial user namespace.
    const INITIAL_USER_NS: &str = "user:[4026531837]";
    let user_ns = fs::read_link("/proc/self/ns/user").ok()?;
    let cap_eff = status_fields().get("CapEff")?.as_str()?.to_owned();
    let privileged = u64::from_str_radix(&cap_eff, 16) != Ok(0);
    (user_ns.as_os_str() == INITIAL_USER_NS && privileged).then_some(
        "privileged in the initial user namespace (not sandboxed): attempts could change the host",
    )
}

/// Every deliberate attempt, each in its own child. Skipped when [`unconfined`].
fn attempts() -> Value {
    if let Some(reason) = unconfined() {
        return json!({"skipped": reason});
    }
    let mut out = Map::new();
    let mut put = |name: &str, value: Value| {
        out.insert(name.to_owned(), value);
    };
    put(
        "mount_tmpfs",
        in_child(|| attempt::mount_tmpfs(Path::new("/tmp"))),
    );
    put("fsopen_tmpfs", in_child(attempt::fsopen_tmpfs));
    put(
        "keyctl_join_session_keyring",
        in_child(attempt::keyctl_join_session_keyring),
    );
    put("bpf_map_create", in_child(attempt::bpf_map_create));
    put("io_uring_setup", in_child(|| attempt::io_uring_setup(1)));
    put("unshare_user", in_child(|| attempt::unshare(CLONE_NEWUSER)));
    put("unshare_mount", in_child(|| attempt::unshare(CLONE_NEWNS)));
    put("unshare_net", in_child(|| attempt::unshare(CLONE_NEWNET)));
    put(
        "clone_newuser",
        in_child(|| attempt::clone_with_flags(CLONE_NEWUSER)),
    );
    put(
        "clone_newtime",
        in_child(|| attempt::clone_with_flags(CLONE_NEWTIME)),
    );
    put("clone3_plain", in_child(attempt::clone3_plain));
    put(
        "openat2",
        in_child(|| attempt::openat2_read(Path::new("/"))),
    );
    put("setns_self_net", in_child(attempt::setns_self_net));
    put("ptrace_traceme", in_child(attempt::ptrace_traceme));
    put("open_raw_socket", in_child(attempt::open_raw_socket));
    put("open_packet_socket", in_child(attempt::open_packet_socket));
    put("socket_vsock", in_child(attempt::socket_vsock));
    put(
        "personality_read_implies_exec",
        in_child(|| attempt::personality(READ_IMPLIES_EXEC)),
    );
    put("chroot", in_child(|| attempt::chroot(Path::new("/"))));
    put("perf_event_open_sw", in_child(attempt::perf_event_open_sw));
    put("userfaultfd", in_child(attempt::userfaultfd));
    put("finit_module", in_child(attempt::finit_module_bad_fd));
    put("syslog_size_buffer", in_child(attempt::syslog_size_buffer));
    put(
        "open_by_handle_at",
        in_child(attempt::open_by_handle_at_zero),
    );
    let node = Path::new("/tmp/phantom-probe-mknod");
    put(
        "mknod_char_device",
        in_child(|| attempt::mknod_char_device(node)),
    );
    let _ = fs::remove_file(node);
    // On /dev/null: a filter answers EPERM before the kernel looks at the fd; without
    // one the answer is ENOTTY. Nothing can be injected into a real terminal.
    let dev_null = fs::File::open("/dev/null");
    match &dev_null {
        Ok(null) => {
            put(
                "tiocsti_dev_null",
                in_child(|| attempt::tiocsti(null.as_fd(), b'#')),
            );
            put(
                "tiocsti_high_bits_dev_null",
                in_child(|| attempt::tiocsti_high_bits(null.as_fd(), b'#')),
            );
            put(
                "tioclinux_dev_null",
                in_child(|| attempt::tioclinux(null.as_fd())),
            );
        }
        Err(err) => {
            for name in [
                "tiocsti_dev_null",
                "tiocsti_high_bits_dev_null",
                "tioclinux_dev_null",
            ] {
                put(
                    name,
                    with(failed(Errno::from_io(err)), "note", "cannot open /dev/null"),
                );
            }
        }
    }
    put("x32_getpid", in_child(attempt::x32_getpid));
    // Signal 0 only asks whether we may signal pid 1 (the sandbox's init, outside the
    // payload's Landlock domain); it delivers nothing, so it needs no child. Landlock
    // ABI 6 signal scoping refuses it with EPERM.
    put("signal_init", outcome(&attempt::send_signal(1, 0)));
    Value::Object(out)
}

// Linux UAPI values (stable ABI), kept here so the probe needs no libc.
const CLONE_NEWNS: i32 = 0x0002_0000;
const CLONE_NEWUSER: i32 = 0x1000_0000;
const CLONE_NEWNET: i32 = 0x4000_0000;
/// In the exit-signal byte of `clone(2)`; see [`attempt::clone_with_flags`].
const CLONE_NEWTIME: i32 = 0x80;
const READ_IMPLIES_EXEC: u32 = 0x0040_0000;

// ---------------------------------------------------------------------------------------
// read / write / stat / list
// ---------------------------------------------------------------------------------------

fn per_path(probe: &str, paths: &[String], each: fn(&Path) -> Value) -> Value {
    let results: Map<String, Value> = paths
        .iter()
        .map(|p| (p.clone(), each(Path::new(p))))
        .collect();
    json!({"probe": probe, "results": results})
}

/// Opens and reads up to 4 KiB: `bytes` read and the first 256 of them as `head`.
fn read_path(path: &Path) -> Value {
    let result = fs::File::open(path).and_then(|mut file| {
        let mut buf = vec![0u8; 4096];
        let n = file.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    });
    match result {
        Ok(bytes) => {
            let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).into_owned();
            with(with(succeeded(), "bytes", bytes.len()), "head", head)
        }
        Err(err) => failed(Errno::from_io(&err)),
    }
}

/// Creates or truncates the file and writes one byte; for a directory, does that to
/// `phantom-probe-write-test` inside it.
fn write_path(path: &Path) -> Value {
    let target: PathBuf = if path.is_dir() {
        path.join("phantom-probe-write-test")
    } else {
        path.to_owned()
    };
    let result = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&target)
        .and_then(|mut file| file.write_all(b"p"));
    with(io_outcome(&result), "target", target.display().to_string())
}

fn kind(file_type: fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_dir() {
        "dir"
    } else if file_type.is_file() {
        "file"
    } else if file_type.is_char_device() {
        "char"
    } else if file_type.is_block_device() {
        "block"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

/// `[major, minor]` of a device number (glibc's encoding).
fn major_minor(rdev: u64) -> [u64; 2] {
    let major = ((rdev & 0x0000_0000_000f_ff00) >> 8) | ((rdev & 0xffff_f000_0000_0000) >> 32);
    let minor = (rdev & 0xff) | ((rdev & 0x0000_0fff_fff0_0000) >> 12);
    [major, minor]
}

fn describe(meta: &fs::Metadata) -> Value {
    let file_type = meta.file_type();
    let device = file_type.is_char_device() || file_type.is_block_device();
    json!({
        "kind": kind(file_type),
        "mode": format!("{:o}", meta.mode() & 0o7777),
        "uid": meta.uid(),
        "gid": meta.gid(),
        "size": meta.size(),
        "rdev": if device { Some(major_minor(meta.rdev())) } else { None },
    })
}

/// `lstat`: kind, permission bits, owner, size, device numbers.
fn stat_path(path: &Path) -> Value {
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            let mut value = succeeded();
            if let (Value::Object(out), Value::Object(more)) = (&mut value, describe(&meta)) {
                out.extend(more);
            }
            value
        }
        Err(err) => failed(Errno::from_io(&err)),
    }
}

fn list(dir: &Path) -> Value {
    let result = fs::read_dir(dir).map(|entries| {
        let mut entries: Vec<(String, Value)> = entries
            .flatten()
            .map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let info = match fs::symlink_metadata(entry.path()) {
                    Ok(meta) => describe(&meta),
                    Err(err) => failed(Errno::from_io(&err)),
                };
                (name, info)
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
            .into_iter()
            .map(|(name, info)| with(info, "name", name))
            .collect::<Vec<_>>()
    });
    let value = json!({"probe": "list", "dir": dir.display().to_string()});
    match result {
        Ok(entries) => with(with(value, "ok", true), "entries", entries),
        Err(err) => {
            let errno = Errno::from_io(&err);
            with(
                with(with(value, "ok", false), "errno", errno.raw()),
                "error",
                errno.name(),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// try: harmless attempts, also outside a sandbox
// ---------------------------------------------------------------------------------------

/// Attempts that change nothing outside the forked child that makes them, even when the
/// probe runs unconfined (`phantom run --mode direct`, where `report` skips its attempts):
/// tests run them there to show that the sandbox's answer is not the kernel's.
const HARMLESS: &[&str] = &[
    "socket_vsock",
    "socket_unix",
    "openat2",
    "openat",
    "openat_read_mode_04000",
    "clone3_plain",
    "clone_newtime",
    "tioclinux_dev_null",
];

/// One harmless attempt by name, in a child; `None` for a name not in [`HARMLESS`].
fn harmless(name: &str) -> Option<Value> {
    let root = Path::new("/");
    Some(match name {
        "socket_vsock" => in_child(attempt::socket_vsock),
        "socket_unix" => in_child(attempt::socket_unix),
        "openat2" => in_child(|| attempt::openat2_read(root)),
        "openat" => in_child(|| attempt::openat_read(root, 0)),
        // Reading with a mode the kernel ignores (no O_CREAT): nothing is created, so
        // nothing can get a setuid bit; a filter must not refuse it.
        "openat_read_mode_04000" => in_child(|| attempt::openat_read(root, 0o4000)),
        "clone3_plain" => in_child(attempt::clone3_plain),
        "clone_newtime" => in_child(|| attempt::clone_with_flags(CLONE_NEWTIME)),
        "tioclinux_dev_null" => match fs::File::open("/dev/null") {
            Ok(null) => in_child(|| attempt::tioclinux(null.as_fd())),
            Err(err) => with(
                failed(Errno::from_io(&err)),
                "note",
                "cannot open /dev/null",
            ),
        },
        _ => return None,
    })
}

fn try_harmless(names: &[String]) -> Result<Value, UsageError> {
    if names.is_empty() {
        return Err(UsageError(format!(
            "expected at least one attempt NAME: {}",
            HARMLESS.join(", ")
        )));
    }
    let mut results = Map::new();
    for name in names {
        let outcome = harmless(name).ok_or_else(|| {
            UsageError(format!(
                "unknown attempt `{name}`; known: {}",
                HARMLESS.join(", ")
            ))
        })?;
        results.insert(name.clone(), outcome);
    }
    Ok(json!({"probe": "try", "results": results}))
}

// ---------------------------------------------------------------------------------------
// setid
// ---------------------------------------------------------------------------------------

/// Tries to give a file in `dir` the setuid (04755) or setgid (02755) bit with every
/// syscall that takes a mode: on `setid-target` (created 0644) with chmod, fchmod,
/// fchmodat and fchmodat2, and at creation of `setid-<call>-<mode>` with open, openat,
/// creat, mknod and mknodat. Each runs in a child (at security level high a refusal
/// kills). `chmod_0755` is the control: a plain mode change must work. `modes` lists
/// the permission bits of every `setid-*` file afterwards.
fn setid(dir: &Path) -> Value {
    let target = dir.join("setid-target");
    let created = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&target);
    let file = match created {
        Ok(file) => file,
        Err(err) => {
            return with(
                with(failed(Errno::from_io(&err)), "probe", "setid"),
                "target",
                target.display().to_string(),
            )
        }
    };
    let mut results = Map::new();
    for (label, mode) in [("04755", 0o4755), ("02755", 0o2755)] {
        let new = |call: &str| dir.join(format!("setid-{call}-{label}"));
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut tries: Vec<(&str, Value)> = vec![
            ("fchmod", in_child(|| attempt::fchmod(file.as_fd(), mode))),
            ("fchmodat", in_child(|| attempt::fchmodat(&target, mode))),
            ("fchmodat2", in_child(|| attempt::fchmodat2(&target, mode))),
            (
                "openat",
                in_child(|| attempt::openat_create(&new("openat"), mode)),
            ),
            (
                "mknodat",
                in_child(|| attempt::mknodat_regular(&new("mknodat"), mode)),
            ),
        ];
        #[cfg(target_arch = "x86_64")]
        tries.extend([
            ("chmod", in_child(|| attempt::chmod(&target, mode))),
            (
                "open",
                in_child(|| attempt::open_create(&new("open"), mode)),
            ),
            ("creat", in_child(|| attempt::creat(&new("creat"), mode))),
            (
                "mknod",
                in_child(|| attempt::mknod_regular(&new("mknod"), mode)),
            ),
        ]);
        for (call, outcome) in tries {
            results.insert(format!("{call}_{label}"), outcome);
        }
    }
    results.insert(
        "chmod_0755".into(),
        in_child(|| attempt::fchmodat(&target, 0o755)),
    );
    let mut modes = Map::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let (true, Ok(meta)) = (name.starts_with("setid-"), entry.metadata()) {
                modes.insert(name, format!("{:o}", meta.mode() & 0o7777).into());
            }
        }
    }
    json!({"probe": "setid", "results": results, "modes": modes})
}

// ---------------------------------------------------------------------------------------
// open-files, spin
// ---------------------------------------------------------------------------------------

/// Opens /dev/null until that fails or `n` are open: how many opened, the highest fd,
/// and what stopped it (EMFILE at `RLIMIT_NOFILE`).
fn open_files(n: usize) -> Value {
    let mut files = Vec::new();
    let mut stopped_by = Value::Null;
    while files.len() < n {
        match fs::File::open("/dev/null") {
            Ok(file) => files.push(file),
            Err(err) => {
                stopped_by = failed(Errno::from_io(&err));
                break;
            }
        }
    }
    let max_fd = files.iter().map(|f| f.as_fd().as_raw_fd()).max();
    json!({
        "probe": "open-files",
        "requested": n,
        "opened": files.len(),
        "max_fd": max_fd,
        "stopped_by": stopped_by,
    })
}

/// Keeps one CPU busy for `ms` milliseconds of wall time; reports the loop count.
fn spin(ms: u64) -> Value {
    let start = Instant::now();
    let limit = Duration::from_millis(ms);
    let mut rounds: u64 = 0;
    while start.elapsed() < limit {
        for _ in 0..10_000 {
            rounds = std::hint::black_box(rounds.wrapping_add(1));
        }
    }
    json!({"probe": "spin", "ms": ms, "rounds": rounds, "wall_ms": start.elapsed().as_millis() as u64})
}

// ---------------------------------------------------------------------------------------
// tiocsti
// ---------------------------------------------------------------------------------------

/// Makes a fresh pty our controlling terminal (the runtime calls setsid before exec, so
/// the probe is a session leader without one), then tries TIOCSTI on it, plainly and with
/// the high-bits command word. A sandbox must refuse both with EPERM. When no pty can be
/// set up, the TIOCSTIs go to /dev/null, where a filter still answers EPERM (and no
/// filter ENOTTY).
fn tiocsti() -> Value {
    let mut out = Map::new();
    out.insert(
        "legacy_tiocsti".into(),
        read_text("/proc/sys/dev/tty/legacy_tiocsti")
            .map(|s| s.trim().to_owned())
            .into(),
    );
    let ids = attempt::process_ids();
    if ids.sid != Some(ids.pid) {
        out.insert("setsid".into(), outcome(&attempt::setsid()));
    }
    let pty = controlling_pty(&mut out);
    let target = match &pty {
        Some(pty) => pty.slave.try_clone(),
        None => fs::File::open("/dev/null"),
    };
    let target_name = if pty.is_some() { "pty" } else { "/dev/null" };
    out.insert("target".into(), target_name.into());
    match target {
        Ok(file) => {
            let tries: [(&str, FdAttempt); 3] = [
                ("tiocsti", |fd| attempt::tiocsti(fd, b'#')),
                ("tiocsti_high_bits", |fd| {
                    attempt::tiocsti_high_bits(fd, b'#')
                }),
                ("tioclinux", attempt::tioclinux),
            ];
            for (name, try_it) in tries {
                out.insert(name.into(), in_child(|| try_it(file.as_fd())));
            }
        }
        Err(err) => {
            out.insert("target_open".into(), io_outcome::<()>(&Err(err)));
        }
    }
    // Closing the master of our controlling terminal would hang up our session (SIGHUP)
    // before the report is printed; it stays open until the process exits.
    std::mem::forget(pty);
    let mut value = json!({"probe": "tiocsti"});
    if let Value::Object(map) = &mut value {
        map.extend(out);
    }
    value
}

/// One attempt on a terminal fd.
type FdAttempt = fn(BorrowedFd<'_>) -> Result<(), Errno>;

/// A pty pair; the master must stay open for as long as the slave is used.
struct Pty {
    slave: fs::File,
    _master: fs::File,
}

/// /dev/ptmx -> unlockpt -> open /dev/pts/N without O_NOCTTY -> TIOCSCTTY. Records each
/// step in `out`; returns the pty when its slave is now our controlling terminal.
fn controlling_pty(out: &mut Map<String, Value>) -> Option<Pty> {
    let master = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ptmx");
    out.insert("ptmx".into(), io_outcome(&master));
    let master = master.ok()?;
    let unlocked = attempt::unlockpt(master.as_fd());
    out.insert("unlockpt".into(), outcome(&unlocked));
    unlocked.ok()?;
    let number = attempt::pty_number(master.as_fd());
    out.insert("ptsname".into(), outcome(&number));
    let path = format!("/dev/pts/{}", number.ok()?);
    // std never passes O_NOCTTY, so a session leader without a terminal acquires it here.
    let slave = fs::OpenOptions::new().read(true).write(true).open(&path);
    out.insert("slave".into(), with(io_outcome(&slave), "path", path));
    let slave = slave.ok()?;
    out.insert(
        "tiocsctty".into(),
        outcome(&attempt::tiocsctty(slave.as_fd())),
    );
    let tty = controlling_tty();
    let controlling = tty["controlling"] == true;
    out.insert("controlling_tty".into(), tty);
    controlling.then_some(Pty {
        slave,
        _master: master,
    })
}

// ---------------------------------------------------------------------------------------
// Load: forkbomb, memhog, fill, spawn-sleepers
// ---------------------------------------------------------------------------------------

/// Forks children that sleep until fork fails or `n` exist, then kills and reaps them.
fn forkbomb(n: u64) -> Value {
    let mut children = Vec::new();
    let mut stopped_by = Value::Null;
    while (children.len() as u64) < n {
        match attempt::fork_single_threaded() {
            Ok(Forked::Child) => {
                std::thread::sleep(Duration::from_secs(120));
                attempt::exit_now(0);
            }
            Ok(Forked::Parent(pid)) => children.push(pid),
            Err(errno) => {
                stopped_by = failed(errno);
                break;
            }
        }
    }
    for &pid in &children {
        let _ = attempt::send_signal(pid, SIGKILL);
    }
    for &pid in &children {
        let _ = attempt::wait_child(pid);
    }
    json!({"probe": "forkbomb", "requested": n, "forked": children.len(), "stopped_by": stopped_by})
}

const SIGKILL: i32 = 9;

/// Allocates and touches `mb` MiB, one MiB at a time, with progress on stderr.
fn memhog(mb: usize) -> Value {
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(mb);
    for i in 1..=mb {
        // A non-zero fill writes every page (a zeroed allocation may stay untouched).
        held.push(vec![0x5a; MIB]);
        eprintln!("memhog: {i} MiB");
    }
    json!({"probe": "memhog", "allocated_mb": held.len()})
}

/// Writes `mb` MiB of zeros into `path`; reports the bytes written and what stopped it.
fn fill(path: &Path, mb: u64) -> Value {
    // Past RLIMIT_FSIZE the kernel sends SIGXFSZ; ignored, the write fails with EFBIG.
    let sigxfsz = attempt::ignore_sigxfsz();
    let mut written: u64 = 0;
    let result = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| {
            let chunk = vec![0u8; MIB];
            let total = mb * MIB as u64;
            while written < total {
                let len = (total - written).min(MIB as u64) as usize;
                match file.write(&chunk[..len]) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => written += n as u64,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
            file.sync_all()
        });
    let value = json!({
        "probe": "fill",
        "path": path.display().to_string(),
        "requested_mb": mb,
        "bytes_written": written,
        "sigxfsz_ignored": sigxfsz.is_ok(),
    });
    let mut value = value;
    if let (Value::Object(out), Value::Object(more)) = (&mut value, io_outcome(&result)) {
        out.extend(more);
    }
    value
}

/// A chain probe -> child -> grandchild ... (`n` descendants), every one sleeping
/// `secs`. Prints all pids (as seen inside the sandbox) before sleeping, so a test that
/// times the run out can know they existed.
fn spawn_sleepers(n: u32, secs: u64) -> Value {
    let (mut reader, writer) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(err) => return with(failed(Errno::from_io(&err)), "probe", "spawn-sleepers"),
    };
    let me = attempt::process_ids().pid;
    let mut level = 0;
    while level < n {
        match attempt::fork_single_threaded() {
            Ok(Forked::Child) => {
                level += 1;
                let pid = attempt::process_ids().pid;
                let _ = (&writer).write_all(format!("{pid}\n").as_bytes());
            }
            Ok(Forked::Parent(_)) => break,
            Err(errno) => {
                eprintln!("spawn-sleepers: fork at level {level} failed: {errno}");
                break;
            }
        }
    }
    if level > 0 {
        // A descendant: sleep, then leave without touching the parent's stdio.
        std::thread::sleep(Duration::from_secs(secs));
        attempt::exit_now(0);
    }
    drop(writer);
    // Each descendant writes one line; they keep their copies of the socket open while
    // they sleep, so read lines rather than waiting for EOF. A failed fork ends the
    // chain early, so give up after a few seconds.
    let _ = reader.set_read_timeout(Some(Duration::from_secs(5)));
    let mut text = String::new();
    let mut buf = [0u8; 64];
    while text.matches('\n').count() < n as usize {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => text.push_str(&String::from_utf8_lossy(&buf[..k])),
        }
    }
    let mut pids = vec![me];
    pids.extend(text.lines().filter_map(|l| l.parse::<i32>().ok()));
    emit(&json!({"probe": "spawn-sleepers", "pids": pids, "secs": secs}));
    std::thread::sleep(Duration::from_secs(secs));
    json!({"probe": "spawn-sleepers", "done": true})
}

/// Kills the probe with signal `n`; reports only if it survived.
fn signal(n: i32) -> Value {
    let _ = io::stdout().flush();
    let result = attempt::kill_self(n);
    with(
        with(outcome(&result), "probe", "signal"),
        "survived_signal",
        n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        // makedev(1, 3) == 0x103; large numbers use the extended encoding.
        assert_eq!(major_minor(0x103), [1, 3]);
        let (major, minor) = (4099u64, 70000u64);
        let dev =
            (major & 0xfff) << 8 | (major & !0xfff) << 32 | (minor & 0xff) | (minor & !0xff) << 12;
        assert_eq!(major_minor(dev), [major, minor]);
    }

    #[test]
    fn usage_errors_name_the_argument() {
        let args = ["fill".to_owned(), "/tmp/x".to_owned()];
        let Err(UsageError(msg)) = run(&args) else {
            panic!("expected a usage error")
        };
        assert!(msg.contains("MB"), "{msg}");
        let args = ["kill".to_owned(), "1".to_owned()];
        let Err(UsageError(msg)) = run(&args) else {
            panic!("expected a usage error")
        };
        assert!(msg.contains("SIG"), "{msg}");
    }
}
