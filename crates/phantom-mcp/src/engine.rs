//! Runs for the tools: warm through the server's private supervisor (in-process, a
//! socket and SCM_RIGHTS — no fork here), cold through our own `phantom run --json`
//! as a subprocess (the CLI is the single-threaded spawner of a cold run; exec'ing it
//! from a threaded process is safe, forking our own sandbox from here would not be).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phantom_api::{PolicySource, RunOverrides, RunReport, RunRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::args::WorkspaceFile;
use crate::metrics::Metrics;

/// How runs start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Warm from the private supervisor's pools when one serves the profile, else cold.
    Zygote,
    /// Always a fresh sandbox.
    Cold,
}

/// One run a tool asks for.
#[derive(Debug, Clone)]
pub struct Job {
    pub profile: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    pub files: Vec<WorkspaceFile>,
    pub timeout_s: Option<f64>,
}

/// What a run that got to start ended with.
#[derive(Debug, Clone)]
pub struct Finished {
    pub report: RunReport,
    /// The call was cancelled (notifications/cancelled) and the sandbox killed.
    pub cancelled: bool,
    /// Bytes the output cap kept.
    pub max_output: u64,
}

/// Why a run did not get to start.
#[derive(Debug, Clone)]
pub enum RunError {
    /// The request is wrong (phantom's exit 2): tell the model what to change.
    Usage(String),
    /// The sandbox could not start (phantom's exit 125, a lost supervisor, ...).
    Failed(String),
}

/// Runs the tools' jobs.
pub struct Engine {
    pub mode: Mode,
    /// The private supervisor's socket (zygote mode).
    pub socket: Option<PathBuf>,
    /// Our `phantom` binary, for cold runs.
    pub phantom_bin: PathBuf,
    pub max_output: u64,
    /// A private 0700 directory for the server's temporary workspaces and stdin files
    /// (and the supervisor's socket); removed when the server stops.
    pub scratch: PathBuf,
    pub metrics: Metrics,
    next: AtomicU64,
    /// Cancelled when the server stops: every run in flight is killed and cleaned up.
    shutdown: CancellationToken,
    /// Runs in flight.
    active: AtomicUsize,
}

/// A run's temporary workspace, removed when the run ends — also when its call is
/// dropped half-way (a client that went away).
struct WorkspaceDir(PathBuf);

impl Drop for WorkspaceDir {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// Counts a run in flight for as long as it lives.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Progress callback: called about once a second with the seconds elapsed since the run began.
pub type Progress = Box<dyn Fn(f64) + Send + Sync>;

impl Engine {
    pub fn new(
        mode: Mode,
        socket: Option<PathBuf>,
        phantom_bin: PathBuf,
        max_output: u64,
        scratch: PathBuf,
    ) -> Engine {
        Engine {
            mode,
            socket,
            phantom_bin,
            max_output,
            scratch,
            metrics: Metrics::default(),
            next: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            active: AtomicUsize::new(0),
        }
    }

    /// Kill every run in flight and wait (up to `limit`) until each has cleaned up.
    pub async fn shut_down(&self, limit: Duration) {
        self.shutdown.cancel();
        let deadline = Instant::now() + limit;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn scratch_name(&self, what: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.scratch.join(format!("{what}-{n}"))
    }

    /// Run `job`: warm when a pool serves it, else cold. `ct` cancels (the sandbox is
    /// killed and everything it had removed before this returns); `progress` is called
    /// about once a second while the run lasts.
    pub async fn run(
        self: &Arc<Self>,
        job: Job,
        ct: CancellationToken,
        progress: Progress,
    ) -> Result<Finished, RunError> {
        let started = Instant::now();
        self.active.fetch_add(1, Ordering::SeqCst);
        let _active = Active(&self.active);
        // The call's cancellation, or the server's shutdown.
        let run_ct = self.shutdown.child_token();
        let forward = {
            let run_ct = run_ct.clone();
            tokio::spawn(async move {
                ct.cancelled().await;
                run_ct.cancel();
            })
        };
        // Files go into a fresh workspace that only this run sees.
        let workspace = if job.files.is_empty() {
            None
        } else {
            let dir = WorkspaceDir(self.scratch_name("ws"));
            let files = job.files.clone();
            let d = dir.0.clone();
            tokio::task::spawn_blocking(move || write_workspace(&d, &files))
                .await
                .map_err(|e| RunError::Failed(format!("writing the workspace: {e}")))?
                .map_err(|e| RunError::Failed(format!("writing the workspace: {e}")))?;
            Some(dir)
        };
        let result = self
            .run_in(
                &job,
                workspace.as_ref().map(|w| w.0.as_path()),
                run_ct,
                progress,
                started,
            )
            .await;
        forward.abort();
        if let Some(dir) = workspace {
            tokio::task::spawn_blocking(move || drop(dir)).await.ok();
        }
        let wall = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(f) => self
                .metrics
                .record(&f.report.start, wall, f.cancelled, f.report.timed_out),
            Err(_) => self.metrics.record_failure(),
        }
        result
    }

    async fn run_in(
        self: &Arc<Self>,
        job: &Job,
        workspace: Option<&Path>,
        ct: CancellationToken,
        progress: Progress,
        started: Instant,
    ) -> Result<Finished, RunError> {
        if let (Mode::Zygote, Some(socket)) = (self.mode, self.socket.clone()) {
            match self
                .run_warm(job, workspace, &socket, ct.clone(), &progress, started)
                .await?
            {
                Ok(finished) => return Ok(finished),
                // Not served warm (no pool for the profile, pool empty, an unprivileged
                // supervisor and a workspace, ...): start cold.
                Err(_reason) => {}
            }
        }
        self.run_cold(job, workspace, ct, &progress, started).await
    }

    fn request(&self, job: &Job, workspace: Option<&Path>) -> RunRequest {
        RunRequest {
            policy: PolicySource::Profile(job.profile.clone()),
            overrides: RunOverrides {
                timeout: job.timeout_s.map(timeout_arg),
                ..RunOverrides::default()
            },
            argv: job.argv.clone(),
            env: job.env.clone(),
            cwd: None,
            workspace: workspace.map(|w| w.display().to_string()),
            capture_output: true,
            image: None,
        }
    }

    /// `Ok(Err(reason))`: not served warm.
    async fn run_warm(
        self: &Arc<Self>,
        job: &Job,
        workspace: Option<&Path>,
        socket: &Path,
        ct: CancellationToken,
        progress: &Progress,
        started: Instant,
    ) -> Result<Result<Finished, String>, RunError> {
        let mut prepared = phantom_engine::prepare(&self.request(job, workspace)).map_err(|e| {
            match e.exit_code() {
                2 => RunError::Usage(e.to_string()),
                _ => RunError::Failed(e.to_string()),
            }
        })?;
        prepared.plan.limits.output_limit_bytes = self.max_output;
        let stdin = self.stdin_fd(job.stdin.as_deref()).await?;
        let (cancel_tx, cancel_rx) =
            UnixStream::pair().map_err(|e| RunError::Failed(format!("socketpair: {e}")))?;
        let socket = socket.to_path_buf();
        let run = tokio::task::spawn_blocking(move || {
            phantom_engine::warm::client::try_run_captured(
                &prepared,
                &socket,
                stdin,
                cancel_rx.as_fd(),
            )
        });
        tokio::pin!(run);
        let mut cancel_tx = Some(cancel_tx);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                // Closing our end makes the runtime's end readable: it has the
                // supervisor kill the sandbox, which then cleans up and answers.
                _ = ct.cancelled(), if cancel_tx.is_some() => { cancel_tx.take(); }
                _ = tick.tick() => progress(started.elapsed().as_secs_f64()),
            }
        };
        let cancelled = cancel_tx.is_none();
        match result {
            Ok(Ok(Ok(report))) => Ok(Ok(Finished {
                report,
                cancelled,
                max_output: self.max_output,
            })),
            Ok(Ok(Err(reason))) => Ok(Err(reason)),
            Ok(Err(e)) => Err(match e.exit_code() {
                2 => RunError::Usage(e.to_string()),
                _ => RunError::Failed(e.to_string()),
            }),
            Err(e) => Err(RunError::Failed(format!("warm run: {e}"))),
        }
    }

    /// The payload's stdin for a warm run: the text in an unlinked file, else /dev/null.
    async fn stdin_fd(&self, text: Option<&str>) -> Result<OwnedFd, RunError> {
        let path = self.scratch_name("stdin");
        let text = text.map(str::to_string);
        tokio::task::spawn_blocking(move || -> std::io::Result<OwnedFd> {
            let Some(text) = text else {
                return Ok(std::fs::File::open("/dev/null")?.into());
            };
            std::fs::write(&path, text.as_bytes())?;
            let file = std::fs::File::open(&path);
            let _ = std::fs::remove_file(&path);
            Ok(file?.into())
        })
        .await
        .map_err(|e| RunError::Failed(format!("stdin: {e}")))?
        .map_err(|e| RunError::Failed(format!("stdin: {e}")))
    }

    async fn run_cold(
        self: &Arc<Self>,
        job: &Job,
        workspace: Option<&Path>,
        ct: CancellationToken,
        progress: &Progress,
        started: Instant,
    ) -> Result<Finished, RunError> {
        let mut args: Vec<OsString> = ["run", "--json", "--cold", "--profile", &job.profile]
            .iter()
            .map(OsString::from)
            .collect();
        args.push("--max-output".into());
        args.push(self.max_output.to_string().into());
        if let Some(t) = job.timeout_s {
            args.push("--timeout".into());
            args.push(timeout_arg(t).into());
        }
        if let Some(ws) = workspace {
            args.push("--workspace".into());
            args.push(ws.into());
        }
        for (k, v) in &job.env {
            args.push("--env".into());
            args.push(format!("{k}={v}").into());
        }
        args.push("--".into());
        args.extend(job.argv.iter().map(OsString::from));
        let out = self
            .phantom(&args, job.stdin.clone(), ct, progress, started)
            .await?;
        self.report(out, "phantom run")
    }

    /// A run report from `phantom run|exec --json`, or why there is none.
    pub fn report(&self, out: CliOutput, what: &str) -> Result<Finished, RunError> {
        if let Ok(report) = serde_json::from_slice::<RunReport>(&out.stdout) {
            return Ok(Finished {
                report,
                cancelled: out.cancelled,
                max_output: self.max_output,
            });
        }
        if out.cancelled {
            return Err(RunError::Failed(
                "the run was cancelled before the sandbox reported".into(),
            ));
        }
        Err(out.error(what))
    }

    /// Run `phantom ARGS` (our binary) to completion with `stdin`: `ct` interrupts it
    /// (it cleans up and reports), `progress` ticks about once a second.
    pub async fn phantom(
        &self,
        args: &[OsString],
        stdin: Option<String>,
        ct: CancellationToken,
        progress: &Progress,
        started: Instant,
    ) -> Result<CliOutput, RunError> {
        let mut cmd = tokio::process::Command::new(&self.phantom_bin);
        cmd.args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If this server dies, the run still ends: `phantom run` is killed with it
        // (its sandbox's init dies with `phantom run`).
        .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            RunError::Failed(format!(
                "cannot start {}: {e} (set PHANTOM_BIN to the phantom binary)",
                self.phantom_bin.display()
            ))
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A payload that does not read its stdin closes the pipe: that is fine.
            tokio::spawn(async move {
                let _ = pipe.write_all(text.as_bytes()).await;
            });
        }
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let read_out = tokio::spawn(async move {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v).await;
            v
        });
        let read_err = tokio::spawn(async move {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v).await;
            v
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut cancelled_at: Option<Instant> = None;
        let mut interrupt = tokio::time::interval(Duration::from_millis(100));
        let status = loop {
            tokio::select! {
                s = child.wait() => break s,
                _ = ct.cancelled(), if cancelled_at.is_none() => {
                    cancelled_at = Some(Instant::now());
                    interrupt.reset_immediately();
                }
                _ = interrupt.tick(), if cancelled_at.is_some() => {
                    // `phantom run` forwards SIGINT to the payload and kills the
                    // sandbox at the third, then cleans up and reports; signals may
                    // merge, so keep sending until it exits. Should it hang, kill it:
                    // its sandbox dies with it and the next run collects the rest.
                    let waited = cancelled_at.map_or(Duration::ZERO, |t| t.elapsed());
                    match child.id() {
                        Some(pid) if waited < Duration::from_secs(5) => interrupt_pid(pid),
                        _ => { let _ = child.start_kill(); }
                    }
                }
                _ = tick.tick() => progress(started.elapsed().as_secs_f64()),
            }
        };
        let status = status.map_err(|e| RunError::Failed(format!("waiting for phantom: {e}")))?;
        Ok(CliOutput {
            status,
            stdout: read_out.await.unwrap_or_default(),
            stderr: read_err.await.unwrap_or_default(),
            cancelled: cancelled_at.is_some(),
        })
    }
}

/// What a `phantom` child printed, and how it ended.
pub struct CliOutput {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub cancelled: bool,
}

impl CliOutput {
    /// phantom's own error: a usage error (exit 2) tells the model what to change.
    pub fn error(&self, what: &str) -> RunError {
        let message = String::from_utf8_lossy(&self.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("phantom: error: "))
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&self.stderr).trim().to_string());
        match self.status.code() {
            Some(2) => RunError::Usage(message),
            _ => RunError::Failed(if message.is_empty() {
                format!("{what} ended with {} and no report", self.status)
            } else {
                message
            }),
        }
    }
}

/// A duration `phantom run --timeout` takes, in whole milliseconds (at least 1).
fn timeout_arg(seconds: f64) -> String {
    format!("{}ms", ((seconds * 1000.0).round() as u64).max(1))
}

fn interrupt_pid(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
}

/// Create `dir` (0700) and the files in it. Paths were checked by `args::workspace_path`
/// (relative, normal components only) and the directory is fresh, so nothing in it is
/// a symlink; files are created exclusively all the same.
fn write_workspace(dir: &Path, files: &[WorkspaceFile]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        file.write_all(f.content.as_bytes())?;
    }
    // The sandbox's root must be able to write there: as root, the workspace is an
    // idmapped mount (the sandbox's uid 0 is our uid 0); unprivileged, it is us.
    Ok(())
}

/// Remove a tree the sandbox may have written to, even where it took away permissions.
pub fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    fn open_up(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if meta.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(dir);
    let _ = std::fs::remove_dir_all(dir);
}
