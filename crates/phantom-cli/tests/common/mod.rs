//! Shared helpers for the tests that run REAL sandboxes through the `phantom` binary and
//! assert on what `phantom-probe` sees from inside.
//!
//! * [`Workspace`] — a fresh, world-accessible host directory bound at `/workspace`, with
//!   `phantom-probe` copied in (0755); removed on drop. Its [`Workspace::marker`] is unique
//!   and can be put on a probe's command line to find its processes on the host.
//! * [`run_probe`] / [`run_probe_in`] — `phantom run --json --workspace DIR [flags] --
//!   /workspace/phantom-probe ARGS`: the run report and the probe's JSON.
//! * [`phantom`] — any `phantom` invocation, with a hard deadline so a hung sandbox fails
//!   the test instead of hanging it.
//! * [`sandbox_available`] / [`skip`] — a test that needs user namespaces (or cgroups, or
//!   root) prints `skipped: <why>` and returns, unless `PHANTOM_REQUIRE_ISOLATION=1`
//!   (CI as root), where a missing feature is a failure.
//! * [`image`] — small OCI images built from host binaries, imported into a temporary
//!   store; [`supervisor`] — a `phantom-supervisor` on a private socket.
#![allow(dead_code)] // each test binary uses a different subset

pub mod api;
pub mod image;
pub mod mcp;
pub mod supervisor;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long any single `phantom` invocation may take before the test kills it and fails.
pub const PHANTOM_DEADLINE: Duration = Duration::from_secs(90);

pub const EPERM: i64 = 1;
pub const ENOENT: i64 = 2;
pub const EAGAIN: i64 = 11;
pub const EACCES: i64 = 13;
pub const EFBIG: i64 = 27;
pub const ENOSPC: i64 = 28;
pub const EROFS: i64 = 30;
pub const ENOSYS: i64 = 38;
pub const SIGKILL: i64 = 9;
pub const SIGSYS: i64 = 31;

/// The `phantom` binary under test: `$PHANTOM_BIN` (the suite's unprivileged pass runs
/// a staged copy an unprivileged user can reach), else the one cargo built.
pub fn phantom_bin() -> PathBuf {
    match std::env::var_os("PHANTOM_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_phantom")),
    }
}

// ---------------------------------------------------------------------------------------
// Skipping
// ---------------------------------------------------------------------------------------

/// Whether CI demands every isolation feature (`PHANTOM_REQUIRE_ISOLATION=1`).
pub fn isolation_required() -> bool {
    std::env::var("PHANTOM_REQUIRE_ISOLATION").is_ok_and(|v| v == "1")
}

/// Reports a test as skipped for `why`; a failure when isolation is required.
pub fn skip(why: &str) {
    if isolation_required() {
        panic!("PHANTOM_REQUIRE_ISOLATION=1 but {why}");
    }
    not_applicable(why);
}

/// Reports a test as skipped for `why` without failing under
/// `PHANTOM_REQUIRE_ISOLATION=1`: nothing the core needs is missing (a toolchain that
/// is not installed, a test for another setup). The line also goes to
/// `$PHANTOM_SKIP_LOG`, from which scripts/test.sh lists every skip at the end (cargo
/// shows a skipped test as `ok`).
pub fn not_applicable(why: &str) {
    println!("skipped: {why}");
    eprintln!("skipped: {why}");
    if let Some(log) = std::env::var_os("PHANTOM_SKIP_LOG") {
        use std::io::Write;
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_string();
        let binary = std::env::args()
            .next()
            .and_then(|a| {
                Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
            // One write per line: tests run in parallel threads.
            let _ = f.write_all(format!("{binary} {test}: {why}\n").as_bytes());
        }
    }
}

/// Whether sandboxes can run here (user namespaces on, `phantom run -- true` works, the
/// probe is built); checked once. Prints the skip (or panics if required) when not.
pub fn sandbox_available() -> bool {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    match AVAILABLE.get_or_init(check_sandbox) {
        Ok(()) => true,
        Err(why) => {
            skip(why);
            false
        }
    }
}

fn check_sandbox() -> Result<(), String> {
    let max = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map_err(|e| format!("cannot read /proc/sys/user/max_user_namespaces: {e}"))?;
    if max.trim().parse::<u64>().unwrap_or(0) == 0 {
        return Err("user namespaces are disabled (max_user_namespaces is 0)".into());
    }
    probe_binary().map_err(|e| format!("phantom-probe is not available: {e}"))?;
    // A few tries: one failed start is a runtime bug the tests themselves will show, not
    // a reason to skip all of them.
    let mut last = String::new();
    for _ in 0..3 {
        match try_true() {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
    }
    Err(last)
}

fn try_true() -> Result<(), String> {
    let out = phantom(&["run", "--json", "--timeout", "30s", "--", "true"], |_| {});
    let report = out.report().map_err(|e| {
        format!(
            "`phantom run --json -- true` did not produce a report ({e}); exit {:?}, stderr: {}",
            out.code,
            out.stderr.trim()
        )
    })?;
    if report["exit_code"] != 0 || out.code != Some(0) {
        return Err(format!(
            "`phantom run -- true` failed: exit {:?}, report {report}, stderr: {}",
            out.code,
            out.stderr.trim()
        ));
    }
    Ok(())
}

/// The effective uid and gid of this test process (from /proc/self/status).
pub fn host_ids() -> (u32, u32) {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |key: &str| -> u32 {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
        // "Uid:\treal\teffective\tsaved\tfs"
        line.split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad line {line:?}"))
    };
    (field("Uid:"), field("Gid:"))
}

pub fn is_root() -> bool {
    host_ids().0 == 0
}

// ---------------------------------------------------------------------------------------
// The probe binary
// ---------------------------------------------------------------------------------------

/// `phantom-probe`: `$PHANTOM_PROBE`, else the one next to `phantom` when it is newer
/// than the probe's sources, else built by cargo into a target dir of its own (the outer
/// `cargo test` holds the lock on the main one).
pub fn probe_binary() -> Result<&'static Path, String> {
    static PROBE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROBE
        .get_or_init(find_or_build_probe)
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

fn find_or_build_probe() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PHANTOM_PROBE") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("PHANTOM_PROBE={} is not a file", path.display()))
        };
    }
    let sibling = phantom_bin().with_file_name("phantom-probe");
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sources = [
        workspace_root.join("crates/phantom-probe/src/main.rs"),
        workspace_root.join("crates/phantom-linux/src/attempt.rs"),
    ];
    let newest_source = sources
        .iter()
        .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .max();
    let built = fs::metadata(&sibling).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(source)) = (built, newest_source) {
        if built >= source {
            return Ok(sibling);
        }
    }
    let target_dir = phantom_bin()
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("isolation-probe"))
        .ok_or("cannot place the probe's target dir")?;
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "phantom-probe", "--manifest-path"])
        .arg(workspace_root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .map_err(|e| format!("cannot run cargo to build it: {e}"))?;
    let built = target_dir.join("debug/phantom-probe");
    if status.success() && built.is_file() {
        Ok(built)
    } else if sibling.is_file() {
        eprintln!(
            "warning: building phantom-probe failed; using {}",
            sibling.display()
        );
        Ok(sibling)
    } else {
        Err(format!(
            "`cargo build -p phantom-probe` failed ({status}); build it first or set PHANTOM_PROBE"
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Workspaces
// ---------------------------------------------------------------------------------------

/// A number unique within this test process.
pub fn unique() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh host directory for `--workspace`, holding `phantom-probe`.
pub struct Workspace {
    pub dir: PathBuf,
    /// Unique to this workspace: `phantom-it-<pid>-<n>-<nanos>`.
    pub marker: String,
}

impl Workspace {
    pub fn new() -> Workspace {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let marker = format!("phantom-it-{}-{}-{nanos}", std::process::id(), unique());
        let dir = std::env::temp_dir().join(&marker);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // World-accessible: the sandbox's uid 0 is some other host uid.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod workspace");
        let probe = probe_binary().expect("phantom-probe (checked by sandbox_available)");
        let dest = dir.join("phantom-probe");
        fs::copy(probe, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", probe.display()));
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).expect("chmod probe");
        Workspace { dir, marker }
    }

    /// Writes a policy file in the DSL into the workspace; returns its host path for
    /// `--policy`.
    pub fn policy(&self, name: &str, yaml: &str) -> String {
        let path = self.dir.join(format!("{name}.yaml"));
        fs::write(&path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.display().to_string()
    }

    /// `--policy` for the built-in `strict` profile plus one read-only bind of this
    /// workspace at `/opt/phantom-it`: strict makes writable mounts `noexec`, so the probe
    /// runs from there ([`PROBE_READ_ONLY`]). Nothing else differs from `strict`.
    pub fn strict_policy(&self) -> String {
        let yaml = format!(
            "profile: strict-probe\nextends: strict\nfilesystem:\n  binds:\n    - {{source: {}, \
             target: /opt/phantom-it, access: read-only}}\n",
            self.dir.display()
        );
        self.policy("strict-probe", &yaml)
    }

    /// The host path of `/workspace/<relative>`.
    pub fn host_path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Running phantom
// ---------------------------------------------------------------------------------------

/// What one `phantom` invocation did.
pub struct PhantomOutput {
    pub status: ExitStatus,
    /// The exit code; `None` when phantom itself died of a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The command line, for messages.
    pub command: String,
}

impl PhantomOutput {
    /// The run report `phantom run --json` prints (its last non-empty stdout line).
    pub fn report(&self) -> Result<Value, String> {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .ok_or("empty stdout")?;
        serde_json::from_str(line).map_err(|e| format!("stdout is not JSON ({e}): {line}"))
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit: {:?} ({:?})\nelapsed: {:?}\nstdout: {}\nstderr: {}",
            self.command,
            self.code,
            self.status,
            self.elapsed,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// Runs `phantom ARGS`, with `configure` adjusting the command (env, a wrapper) first.
/// Kills it and panics after [`PHANTOM_DEADLINE`].
pub fn phantom(args: &[&str], configure: impl FnOnce(&mut Command)) -> PhantomOutput {
    let mut command = Command::new(phantom_bin());
    command.args(args);
    configure(&mut command);
    run_with_deadline(command, PHANTOM_DEADLINE)
}

/// Runs a prepared command with stdin from /dev/null and captured output.
pub fn run_with_deadline(command: Command, deadline: Duration) -> PhantomOutput {
    run_with_stdin(command, Stdio::null(), deadline)
}

/// Runs a prepared command with `stdin` and captured output.
pub fn run_with_stdin(mut command: Command, stdin: Stdio, deadline: Duration) -> PhantomOutput {
    let description = format!("{command:?}");
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {description}: {e}"));
    let stdout = reader(child.stdout.take().expect("piped stdout"));
    let stderr = reader(child.stderr.take().expect("piped stderr"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for phantom") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{description} did not finish within {deadline:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    PhantomOutput {
        status,
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed,
        command: description,
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// One probe run: phantom's report, the probe's JSON (`Null` when it printed none) and
/// the raw output.
pub struct ProbeRun {
    pub report: Value,
    pub probe: Value,
    pub output: PhantomOutput,
}

impl ProbeRun {
    pub fn describe(&self) -> String {
        self.output.describe()
    }
}

/// The probe's JSON: the first line of the payload's captured stdout.
pub fn probe_json(report: &Value) -> Option<Value> {
    let stdout = report["stdout"].as_str()?;
    let line = stdout.lines().find(|l| !l.trim().is_empty())?;
    serde_json::from_str(line).ok()
}

/// Where the probe is inside the sandbox by default.
pub const PROBE_IN_WORKSPACE: &str = "/workspace/phantom-probe";

/// Where [`Workspace::strict_policy`] binds the workspace read-only, so that the probe can
/// run where writable mounts are `noexec`.
pub const PROBE_READ_ONLY: &str = "/opt/phantom-it/phantom-probe";

/// `phantom run --json --workspace WS FLAGS -- PROBE ARGS`, with `configure` adjusting
/// the command first.
pub fn run_probe_at(
    workspace: &Workspace,
    probe: &str,
    args: &[&str],
    flags: &[&str],
    configure: impl FnOnce(&mut Command),
) -> ProbeRun {
    let ws = workspace.dir.to_str().expect("utf-8 temp dir");
    let mut argv = vec!["run", "--json", "--workspace", ws];
    argv.extend_from_slice(flags);
    argv.extend_from_slice(&["--", probe]);
    argv.extend_from_slice(args);
    let output = phantom(&argv, configure);
    let report = output
        .report()
        .unwrap_or_else(|e| panic!("no run report: {e}\n{}", output.describe()));
    let probe = probe_json(&report).unwrap_or(Value::Null);
    // The suite's warm pass (scripts/test.sh) runs these tests against a supervisor
    // pooling the default profile: every run a pool can serve must have been served
    // warm, or the isolation assertions would only prove the cold path again.
    let poolable = !flags
        .iter()
        .any(|f| ["--policy", "--profile", "--mode", "--network"].contains(f));
    if expect_warm() && poolable {
        let expected = expected_start();
        assert_eq!(
            report["start"],
            expected.as_str(),
            "PHANTOM_EXPECT_WARM=1 but the run was not served {expected}\n{}",
            output.describe()
        );
    }
    ProbeRun {
        report,
        probe,
        output,
    }
}

/// Whether the suite runs against a supervisor's warm pools (`PHANTOM_EXPECT_WARM=1`).
pub fn expect_warm() -> bool {
    std::env::var("PHANTOM_EXPECT_WARM").is_ok_and(|v| v == "1")
}

/// How the warm pass's runs must start: `warm` (pre-built sandboxes), or what
/// `PHANTOM_EXPECT_START` says (`forked`: the supervisor forks them from a zygote).
pub fn expected_start() -> String {
    std::env::var("PHANTOM_EXPECT_START").unwrap_or_else(|_| "warm".into())
}

/// [`run_probe_at`] with the probe at `/workspace/phantom-probe`.
pub fn run_probe_with(
    workspace: &Workspace,
    args: &[&str],
    flags: &[&str],
    configure: impl FnOnce(&mut Command),
) -> ProbeRun {
    run_probe_at(workspace, PROBE_IN_WORKSPACE, args, flags, configure)
}

/// [`run_probe_with`] without extra configuration.
pub fn run_probe_in(workspace: &Workspace, args: &[&str], flags: &[&str]) -> ProbeRun {
    run_probe_with(workspace, args, flags, |_| {})
}

/// The probe in a fresh workspace: `(run report, probe JSON)`. Panics when the probe
/// printed no JSON.
pub fn run_probe(args: &[&str], flags: &[&str]) -> (Value, Value) {
    let workspace = Workspace::new();
    let run = run_probe_in(&workspace, args, flags);
    assert!(
        run.probe.is_object(),
        "the probe printed no JSON\n{}",
        run.describe()
    );
    (run.report, run.probe)
}

// ---------------------------------------------------------------------------------------
// Reading probe output
// ---------------------------------------------------------------------------------------

/// `outcome["ok"] == false` — a refusal, not a success and not a missing entry.
pub fn refused(outcome: &Value) -> bool {
    outcome["ok"] == false
}

pub fn errno(outcome: &Value) -> i64 {
    outcome["errno"].as_i64().unwrap_or(-1)
}

/// A hex capability mask from /proc/self/status as the probe reported it.
pub fn cap_mask(probe: &Value, key: &str) -> u64 {
    let text = probe["status"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in the probe's status: {}", probe["status"]));
    u64::from_str_radix(text, 16).unwrap_or_else(|e| panic!("{key}={text}: {e}"))
}

/// Host processes whose command line contains `needle`, as `(pid, cmdline)`.
pub fn host_processes_containing(needle: &str) -> Vec<(u32, String)> {
    let own = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid != own && cmdline.contains(needle)).then_some((pid, cmdline))
        })
        .collect()
}

/// `(uid, gid)` of a host file.
pub fn owner(path: &Path) -> (u32, u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (meta.uid(), meta.gid())
}

/// A process as the host sees it, told apart from a later one with its pid by its
/// start time (field 22 of /proc/PID/stat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProcess {
    pub pid: u32,
    pub start: u64,
    /// Its executable (`/proc/PID/exe`), when readable.
    pub exe: Option<PathBuf>,
    /// Its cgroup paths (`/proc/PID/cgroup`, one line per hierarchy).
    pub cgroups: Vec<String>,
    /// Its arguments joined by spaces, as read when it was seen.
    pub cmdline: String,
}

impl HostProcess {
    pub fn read(pid: u32) -> Option<HostProcess> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // After the command: state is field 3, so field N is fields[N - 3].
        let start = fields.get(19)?.parse().ok()?;
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_string))
            .collect();
        Some(HostProcess {
            pid,
            start,
            exe: fs::read_link(format!("/proc/{pid}/exe")).ok(),
            cgroups,
            cmdline: fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default(),
        })
    }

    /// The parent's pid (field 4 of /proc/PID/stat).
    pub fn parent(pid: u32) -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Whether its command line (arguments joined by spaces) contains `needle`.
    pub fn cmdline_contains(&self, needle: &str) -> bool {
        self.cmdline.contains(needle)
    }

    /// Whether this very process (not a later one with its pid) still lives.
    pub fn alive(&self) -> bool {
        HostProcess::read(self.pid).is_some_and(|p| p.start == self.start)
    }
}

/// Every descendant of `root` (children, their children, ...), not `root` itself.
pub fn descendants(root: u32) -> Vec<HostProcess> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = dir
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((pid, HostProcess::parent(pid)?))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found[1..]
        .iter()
        .filter_map(|&pid| HostProcess::read(pid))
        .collect()
}

/// The sandbox cgroup directories named `id` on this host (`.../phantom/<id>`).
pub fn sandbox_cgroups(id: &str) -> Vec<PathBuf> {
    let Ok(controllers) = fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for c in controllers.flatten() {
        for dir in [
            c.path().join("phantom").join(id),
            PathBuf::from("/sys/fs/cgroup/phantom").join(id),
        ] {
            if dir.is_dir() && !found.contains(&dir) {
                found.push(dir);
            }
        }
    }
    found
}

/// Wait up to `limit` for `child` to exit.
pub fn wait_timeout(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
