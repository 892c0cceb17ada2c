//! Persistent sandboxes: named sandboxes that live between commands.
//!
//! * [`create`] records the sandbox (phantom-state: SQLite, WAL), makes its workspace
//!   (`<state>/sandboxes/<id>/workspace`, optionally restored from a snapshot) and
//!   forks its keeper (keeper.rs), which starts the init and watches it;
//! * [`exec`] runs a command in it: setns into the init's namespaces, same cgroup,
//!   Landlock and seccomp as any payload (exec.rs);
//! * [`cp`] moves files in and out of the workspace, every sandbox-side path resolved
//!   beneath the workspace (files.rs);
//! * [`snapshot`] stores the workspace in the content-addressed store (phantom-store);
//! * [`destroy`], [`list`], [`monitor`].

mod exec;
mod files;
mod keeper;

use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use phantom_api::{CreateRequest, RunRequest, SandboxInfo, SandboxMetrics};
use phantom_linux::cgroup::{Layout, SandboxCgroup};
use phantom_linux::fdpass;
use phantom_linux::process::{self, Forked, Namespaces};
use phantom_policy::{Mode, Plan};
use phantom_state::{Record, State, STARTING};
use phantom_store::{RestoreMode, SnapshotInfo, SnapshotOptions, SnapshotProgress, SnapshotStore};
use rustix::event::{poll, PollFd, PollFlags};

use crate::channel::{self, Report};
use crate::cold::prepare_with;
use crate::EngineError;

pub use exec::exec;
pub use files::{cp, list_files, read_file, write_file, CpEnd, CpLimits, CpReport};

/// Default idle timeout of a persistent sandbox.
pub const DEFAULT_IDLE_TIMEOUT: &str = "15m";
/// Default maximum lifetime of a persistent sandbox.
pub const DEFAULT_MAX_LIFETIME: &str = "24h";
/// How long `create` waits for the sandbox to be ready.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `destroy` waits for a keeper to clean up after its init.
const KEEPER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// "15m", "24h", "90s" for a number of seconds.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Check a sandbox name: letters, digits, `-`, `_`, `.`; starting with a letter or
/// digit; at most 63 characters. So it is never a path (`/`, `..`) nor an option.
pub fn validate_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(EngineError::Usage(format!(
            "invalid sandbox name `{name}`: use letters, digits, - _ and ., start with a letter or digit, no `..` or `/`, at most 63 characters (e.g. agent-1)"
        )))
    }
}

/// The record named `name`, or a usage error saying how to find the right one.
pub(crate) fn get(state: &State, name: &str) -> Result<Record, EngineError> {
    state.get(name)?.ok_or_else(|| {
        EngineError::Usage(format!(
            "no sandbox named `{name}` (`phantom list` shows them; `phantom create --name {name}` makes one)"
        ))
    })
}

/// Fingerprint of what a sandbox's fences are made from: the plan without the
/// per-command wall timeout (which `exec --timeout` may change).
pub(crate) fn plan_hash(plan: &Plan) -> String {
    let mut plan = plan.clone();
    plan.limits.wall_timeout_ms = 0;
    blake3::hash(format!("{plan:?}").as_bytes()).to_hex()[..32].to_string()
}

fn seconds(flag: &str, value: Option<&str>, default: &str) -> Result<u64, EngineError> {
    let text = value.unwrap_or(default);
    let ms = phantom_policy::units::parse_duration_ms(text)
        .map_err(|e| EngineError::Usage(format!("{flag} {text}: {e}")))?;
    if ms < 1000 {
        return Err(EngineError::Usage(format!(
            "{flag} {text}: at least 1s, e.g. 15m"
        )));
    }
    Ok(ms / 1000)
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// A created sandbox, and the warnings its start produced (e.g. no cgroup limits).
#[derive(Debug)]
pub struct Created {
    pub info: SandboxInfo,
    pub warnings: Vec<String>,
}

/// Create the persistent sandbox `req` describes and return once it is running.
pub fn create(req: &CreateRequest) -> Result<Created, EngineError> {
    validate_name(&req.name)?;
    let idle = seconds(
        "--timeout-idle",
        req.idle_timeout.as_deref(),
        DEFAULT_IDLE_TIMEOUT,
    )?;
    let lifetime = seconds(
        "--max-lifetime",
        req.max_lifetime.as_deref(),
        DEFAULT_MAX_LIFETIME,
    )?;
    if let Some(tag) = &req.from_snapshot {
        phantom_store::validate_tag(tag)?;
    }
    let run = RunRequest {
        policy: req.policy.clone(),
        overrides: req.overrides.clone(),
        argv: Vec::new(),
        env: Vec::new(),
        cwd: None,
        workspace: None,
        capture_output: false,
        image: req.image.clone(),
    };
    let prepared = prepare_with(&run, false)?;
    if prepared.plan.mode == Mode::Direct {
        return Err(EngineError::Usage(
            "a persistent sandbox needs namespaces to keep: --mode direct has none; use --mode sandbox or hardened".into(),
        ));
    }
    // The snapshot must exist before anything is recorded.
    let snapshots = match &req.from_snapshot {
        Some(tag) => {
            let store = SnapshotStore::open_default()?;
            store.info(tag)?;
            Some(store)
        }
        None => None,
    };
    let state = State::open_default()?;
    let id = phantom_state::ids::new_sandbox_id();
    let dir = state.dir().join("sandboxes").join(&id);
    let now = now_s();
    let record = Record {
        name: req.name.clone(),
        id: id.clone(),
        status: STARTING.into(),
        reason: None,
        request: req.clone(),
        profile: prepared.plan.profile.clone(),
        mode: prepared.plan.mode.as_str().to_string(),
        plan_hash: plan_hash(&prepared.plan),
        dir: dir.clone(),
        init_pid: 0,
        init_start: 0,
        keeper_pid: 0,
        keeper_start: 0,
        socket: std::path::PathBuf::new(),
        created: now,
        last_used: now,
        idle_timeout_s: idle,
        max_lifetime_s: lifetime,
    };
    state.insert(&record)?;
    let state_dir = state.dir().to_path_buf();
    // SQLite connections must not cross fork (its locks are per process, and its
    // bookkeeping of them would be wrong in the child): closed before the keeper is
    // forked, opened again afterwards.
    drop(state);
    let started = (|| {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io("create", &dir))?;
        let workspace = record.workspace();
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&workspace)
            .map_err(io("create", &workspace))?;
        let lock = dir.join("exec.lock");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&lock)
            .map_err(io("create", &lock))?;
        if let (Some(store), Some(tag)) = (&snapshots, &req.from_snapshot) {
            // Reflink where the filesystem can (a copy-on-write clone), else a copy:
            // never a hard link, which the sandbox could write through into the store.
            store.restore(tag, &workspace, RestoreMode::Reflink)?;
        }
        let keeper = keeper::Keeper {
            id: id.clone(),
            plan: prepared.plan.clone(),
            image: prepared.image.clone(),
            workspace: workspace.display().to_string(),
            state_dir: state_dir.clone(),
            lock_path: lock,
            log_path: dir.join("keeper.log"),
            test_resolve: prepared.test_resolve.clone(),
        };
        start_keeper(keeper)
    })();
    let state = State::open(&state_dir)?;
    match started {
        Ok(mut warnings) => {
            let record = get(&state, &req.name)?;
            warnings.splice(0..0, prepared.warnings().iter().cloned());
            warnings.dedup();
            Ok(Created {
                info: record.info(),
                warnings,
            })
        }
        Err(e) => {
            let _ = state.delete(&id);
            let _ = force_remove(&dir);
            Err(e)
        }
    }
}

/// Fork the keeper — twice, so that it is nobody's child here (a long-lived caller
/// such as an MCP server must not collect zombies) — and wait for its READY.
/// Returns the warnings the sandbox's start produced.
fn start_keeper(keeper: keeper::Keeper) -> Result<Vec<String>, EngineError> {
    let (report, report_child) = fdpass::channel()?;
    match process::clone_child(Namespaces::default(), None)? {
        Forked::Child => {
            use std::os::fd::AsRawFd;
            if process::close_all_except(&[report_child.as_raw_fd()]).is_err() {
                process::exit_now(1);
            }
            match process::clone_child(Namespaces::default(), None) {
                Ok(Forked::Child) => keeper::run(keeper, report_child),
                Ok(Forked::Parent { .. }) => process::exit_now(0),
                Err(e) => {
                    let message = e.to_string();
                    let _ = channel::send(report_child.as_fd(), &Report::Failed { message }, &[]);
                    process::exit_now(1)
                }
            }
        }
        Forked::Parent { pid, .. } => {
            drop(report_child);
            let _ = process::wait4(pid, false);
        }
    }
    let ts = rustix::event::Timespec {
        tv_sec: CREATE_TIMEOUT.as_secs() as i64,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(&report, PollFlags::IN)];
    if !matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
        return Err(EngineError::Setup(format!(
            "the sandbox did not start within {}s",
            CREATE_TIMEOUT.as_secs()
        )));
    }
    match channel::recv::<Report>(report.as_fd(), 64 * 1024, 0, "keeper") {
        Ok((Report::Ready { warnings }, _)) => Ok(warnings),
        Ok((Report::Failed { message }, _)) => Err(EngineError::Setup(message)),
        Ok((other, _)) => Err(EngineError::Setup(
            channel::ChannelError::UnexpectedMessage {
                peer: "keeper",
                expected: "ready or failed",
                received: other.name(),
            }
            .to_string(),
        )),
        Err(channel::ChannelError::Closed { .. }) => Err(EngineError::Setup(
            "the sandbox's keeper died while starting it".into(),
        )),
        Err(e) => Err(EngineError::Setup(e.to_string())),
    }
}

/// Every persistent sandbox, by name.
pub fn list() -> Result<Vec<SandboxInfo>, EngineError> {
    Ok(State::open_default()?
        .list()?
        .iter()
        .map(Record::info)
        .collect())
}

/// One sandbox's record.
pub fn info(name: &str) -> Result<SandboxInfo, EngineError> {
    validate_name(name)?;
    Ok(get(&State::open_default()?, name)?.info())
}

/// Destroy the sandbox named `name`: kill everything in it, remove its cgroup, run
/// directory, workspace and record. Works on a dead sandbox too.
pub fn destroy(name: &str) -> Result<SandboxInfo, EngineError> {
    validate_name(name)?;
    let state = State::open_default()?;
    let record = get(&state, name)?;
    let mut info = record.info();
    destroy_record(&state, &record)?;
    info.status = "destroyed".into();
    info.reason = None;
    Ok(info)
}

/// Destroy every persistent sandbox; returns the names destroyed.
pub fn destroy_all() -> Result<Vec<String>, EngineError> {
    let state = State::open_default()?;
    let mut names = Vec::new();
    for record in state.list()? {
        destroy_record(&state, &record)?;
        names.push(record.name);
    }
    Ok(names)
}

fn destroy_record(state: &State, record: &Record) -> Result<(), EngineError> {
    state.set_destroying(&record.id)?;
    // Killing pid 1 of the namespace kills every process in it.
    if let Ok(init) = exec::open_init(record) {
        let _ = process::pidfd_kill(init.as_fd(), libc::SIGKILL);
    }
    if record.keeper_alive() {
        if let Ok(keeper) = process::pidfd_open(record.keeper_pid) {
            if process::start_time(record.keeper_pid) == Some(record.keeper_start) {
                // The keeper reaps the init and removes its cgroup and run directory.
                let ts = rustix::event::Timespec {
                    tv_sec: KEEPER_EXIT_TIMEOUT.as_secs() as i64,
                    tv_nsec: 0,
                };
                let mut fds = [PollFd::new(&keeper, PollFlags::IN)];
                if !matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
                    let _ = process::pidfd_kill(keeper.as_fd(), libc::SIGKILL);
                    let mut fds = [PollFd::new(&keeper, PollFlags::IN)];
                    let one = rustix::event::Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    };
                    let _ = poll(&mut fds, Some(&one));
                }
            }
        }
    }
    // A keeper that died (or was killed above) cleaned nothing: do it here.
    let layout = Layout::detect();
    if let Ok(mut cg) = SandboxCgroup::open(&layout, &record.id) {
        cg.kill_all();
        cg.remove();
    }
    if let Ok(base) = crate::workspace::state_base() {
        crate::workspace::collect_stale(&base, &layout);
    }
    force_remove(&record.dir)?;
    Ok(state.delete(&record.id)?)
}

/// remove_dir_all that also removes what the sandbox made unwritable (a directory
/// it chmod'ed 0500 cannot lose its entries until it is writable again). Symlinks are
/// removed, never followed.
fn force_remove(dir: &Path) -> Result<(), EngineError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    fn open_up(dir: &Path) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&entry.path());
                }
            }
        }
    }
    open_up(dir);
    std::fs::remove_dir_all(dir).map_err(io("remove", dir))
}

/// A sample of the sandbox's resource use. `previous`: the last sample, for the CPU
/// rate.
pub fn monitor(
    name: &str,
    previous: Option<&SandboxMetrics>,
) -> Result<SandboxMetrics, EngineError> {
    validate_name(name)?;
    let state = State::open_default()?;
    let record = get(&state, name)?;
    exec::check_usable(&record)?;
    let cgroup = SandboxCgroup::open(&Layout::detect(), &record.id).map_err(|e| {
        EngineError::Unsupported {
            what: format!("monitor {name}"),
            why: format!("the sandbox has no cgroup to read ({e})"),
            hint:
                "cgroups need root (or a delegated cgroup v2 subtree); create the sandbox as root"
                    .into(),
        }
    })?;
    let st = cgroup.stats();
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let cpu_usage_ms = st.cpu_usage_ns.map(|ns| ns as f64 / 1e6);
    let cpu_cores = match (previous, cpu_usage_ms) {
        (Some(p), Some(now)) if at_ms > p.at_ms => p
            .cpu_usage_ms
            .map(|before| ((now - before) / (at_ms - p.at_ms) as f64).max(0.0)),
        _ => None,
    };
    Ok(SandboxMetrics {
        name: name.to_string(),
        at_ms,
        cpu_usage_ms,
        cpu_cores,
        memory_bytes: st.memory_bytes,
        memory_peak_bytes: st.memory_peak_bytes,
        memory_limit_bytes: st.memory_limit_bytes,
        pids: st.pids,
        pids_limit: st.pids_limit,
        io_read_bytes: st.io_read_bytes,
        io_write_bytes: st.io_write_bytes,
        oom_kills: st.oom_kills,
    })
}

/// Snapshot the workspace of sandbox `name` into the snapshot store under `tag`
/// (default: `NAME-YYYYMMDD-HHMMSS`, UTC). A dead sandbox's workspace can be
/// snapshotted too.
pub fn snapshot(
    name: &str,
    tag: Option<&str>,
    options: &SnapshotOptions,
    progress: &mut dyn FnMut(SnapshotProgress),
) -> Result<SnapshotInfo, EngineError> {
    validate_name(name)?;
    let state = State::open_default()?;
    let record = get(&state, name)?;
    let tag = match tag {
        Some(t) => t.to_string(),
        None => format!("{name}-{}", utc_stamp(now_s())),
    };
    let store = SnapshotStore::open_default()?;
    let dir = std::fs::File::open(record.workspace()).map_err(io("open", &record.workspace()))?;
    Ok(store.snapshot_at(
        dir.as_fd(),
        &format!("{name}:/workspace"),
        &tag,
        options,
        progress,
    )?)
}

/// `YYYYMMDD-HHMMSS` for unix seconds (UTC; days to civil date after H. Hinnant).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_paths_or_options_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            "-rf",
            ".hidden",
            "a..b",
            &"x".repeat(64),
            "a b",
            "ä",
        ] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid sandbox name"), "{bad}: {err}");
        }
        for good in ["a", "agent-1", "A_b.c", &"x".repeat(63)] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_795_287_845), "20261121-190405");
    }

    #[test]
    fn lifetimes_parse_with_units_and_refuse_nonsense() {
        assert_eq!(seconds("--timeout-idle", None, "15m").unwrap(), 900);
        assert_eq!(seconds("--max-lifetime", Some("24h"), "1h").unwrap(), 86400);
        let err = seconds("--timeout-idle", Some("10ms"), "15m").unwrap_err();
        assert!(err.to_string().contains("at least 1s"), "{err}");
        assert!(seconds("--timeout-idle", Some("soon"), "15m").is_err());
    }
}
