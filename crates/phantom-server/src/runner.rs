//! Runs through the `phantom` binary: a child process per run, `create` and `exec`
//! (the server's threads must not fork). Its `--json` output is the report; exit codes
//! 2 and 125 with `phantom: error: ...` on stderr are refusals and failures. The child
//! is killed if the request goes away (`kill_on_drop`); its sandbox dies with it.

use std::process::Stdio;

use phantom_api::RunReport;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::handlers::ApiFailure;
use crate::App;

/// What a `phantom` child printed.
pub(crate) struct Output {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Arguments cannot carry a NUL byte (execve's strings end at one): the caller's
/// mistake, said as such — not a failure to start phantom.
fn check_args(args: &[String]) -> Result<(), ApiFailure> {
    match args.iter().find(|a| a.contains('\0')) {
        Some(a) => Err(ApiFailure::bad_request(format!(
            "{:?}: contains a NUL byte, which no command-line argument, variable, path or limit can hold",
            a.replace('\0', "\\0")
        ))),
        None => Ok(()),
    }
}

/// `phantom ARGS` as a command: piped output, killed when dropped, and only the
/// environment phantom needs.
fn command(app: &App, args: &[String], stdin: bool) -> Command {
    let mut cmd = Command::new(&app.config.phantom_bin);
    cmd.args(args)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Only what phantom needs from our environment (its state directory and warm
    // pools); nothing else of the server's environment reaches a run.
    cmd.env_clear();
    for var in [
        "PATH",
        "HOME",
        "PHANTOM_STATE_DIR",
        "XDG_STATE_HOME",
        "XDG_RUNTIME_DIR",
        "TMPDIR",
    ] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    if let Some(socket) = &app.config.pool_socket {
        cmd.env("PHANTOM_SUPERVISOR_SOCKET", socket);
    }
    cmd
}

/// Run `phantom ARGS` with `stdin`, to completion.
pub(crate) async fn phantom(
    app: &App,
    args: &[String],
    stdin: Option<&str>,
) -> Result<Output, ApiFailure> {
    check_args(args)?;
    let mut cmd = command(app, args, stdin.is_some());
    let mut child = cmd.spawn().map_err(|e| {
        ApiFailure::internal(format!(
            "cannot start {}: {e}",
            app.config.phantom_bin.display()
        ))
    })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let data = data.as_bytes().to_vec();
        // Written concurrently with the run: a large stdin must not deadlock against
        // a full stdout pipe.
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
        });
    }
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    // If this request goes away (the client disconnected), `running` stops the run.
    let mut running = Running(Some(child));
    let status = running
        .0
        .as_mut()
        .expect("just set")
        .wait()
        .await
        .map_err(|e| ApiFailure::internal(format!("waiting for phantom: {e}")))?;
    running.0 = None;
    Ok(Output {
        code: status.code(),
        stdout: stdout.await.unwrap_or_default(),
        stderr: String::from_utf8_lossy(&stderr.await.unwrap_or_default()).into_owned(),
    })
}

fn read_all<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    pipe: Option<R>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    tokio::spawn(async move {
        let mut v = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut v).await;
        }
        v
    })
}

/// A `phantom` child whose request may go away before it ends; then it is stopped.
struct Running(Option<tokio::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let (Some(child), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(stop(child));
        }
    }
}

/// Stop a run as a user at a terminal would: SIGINT until `phantom` ends — at the third
/// it kills the sandbox and removes its cgroup and run directory, which a SIGKILL of
/// `phantom` would leave for the next run to collect — and SIGKILL only if it has not
/// ended within 5 s (its sandbox dies with it either way).
pub(crate) async fn stop(mut child: tokio::process::Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Some(pid) = child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = child.kill().await;
}

/// phantom's own one-line error from stderr (`phantom: error: ...`).
pub(crate) fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("phantom: error: "))
        .unwrap_or_else(|| stderr.lines().last().unwrap_or("phantom failed"))
        .to_string()
}

/// A report from `phantom run|exec --json`, or the refusal it printed.
pub(crate) fn report(out: &Output) -> Result<RunReport, ApiFailure> {
    let last = String::from_utf8_lossy(&out.stdout);
    let line = last
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    if let Ok(report) = serde_json::from_str::<RunReport>(line) {
        return Ok(report);
    }
    Err(refusal(out))
}

/// A failed `phantom` child as an API failure: 400 for its usage errors (exit 2),
/// 500 otherwise.
pub(crate) fn refusal(out: &Output) -> ApiFailure {
    let msg = error_line(&out.stderr);
    match out.code {
        Some(2) if msg.contains("no sandbox named") => ApiFailure::not_found(msg),
        Some(2) => ApiFailure::bad_request(msg),
        _ => ApiFailure::internal(msg),
    }
}

/// A run whose output streams as Server-Sent Events:
///
/// * `event: stdout` / `event: stderr`, `data: {"data": "<text>"}` — output as it
///   comes (lossy UTF-8, in chunks of up to 16 KiB);
/// * `event: result`, `data: <ApiRunResult>` — once, at the end;
/// * `event: error`, `data: {"error": "..."}` — instead of `result` when the
///   sandbox could not run.
///
/// The client going away kills the run.
pub(crate) async fn stream(
    app: std::sync::Arc<App>,
    mut args: Vec<String>,
    stdin: Option<String>,
    workspace: Option<crate::handlers::TempWorkspace>,
    key_id: String,
    slot: crate::limits::Slot,
) -> Result<axum::response::Response, ApiFailure> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::response::IntoResponse;
    use tokio::io::AsyncReadExt;

    let report_dir = std::env::temp_dir().join(format!(
        "phantom-api-report-{}-{}",
        std::process::id(),
        phantom_state::ids::new_sandbox_id()
    ));
    std::fs::create_dir(&report_dir)
        .map_err(|e| ApiFailure::internal(format!("{}: {e}", report_dir.display())))?;
    let report_file = report_dir.join("report.json");
    // `--report-file FILE` goes before `--`.
    let dash = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.splice(
        dash..dash,
        [
            "--report-file".to_string(),
            report_file.display().to_string(),
        ],
    );
    check_args(&args)?;
    let mut cmd = command(&app, &args, stdin.is_some());
    let mut child = cmd
        .spawn()
        .map_err(|e| ApiFailure::internal(format!("cannot start phantom: {e}")))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = pipe.write_all(data.as_bytes()).await;
        });
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let _slot = slot;
        let _workspace = workspace;
        let (mut out_open, mut err_open) = (true, true);
        let mut out_buf = vec![0u8; 16 * 1024];
        let mut err_buf = vec![0u8; 16 * 1024];
        let mut stderr_text = String::new();
        while out_open || err_open {
            let (name, data) = tokio::select! {
                n = out.read(&mut out_buf), if out_open => match n {
                    Ok(0) | Err(_) => { out_open = false; continue }
                    Ok(n) => ("stdout", String::from_utf8_lossy(&out_buf[..n]).into_owned()),
                },
                n = err.read(&mut err_buf), if err_open => match n {
                    Ok(0) | Err(_) => { err_open = false; continue }
                    Ok(n) => ("stderr", String::from_utf8_lossy(&err_buf[..n]).into_owned()),
                },
                _ = tx.closed() => {
                    // The client went away: the run goes too.
                    stop(child).await;
                    let _ = std::fs::remove_dir_all(&report_dir);
                    return;
                }
            };
            if name == "stderr" && data.contains("phantom: ") {
                stderr_text.push_str(&data);
            }
            let event = Event::default()
                .event(name)
                .data(serde_json::json!({ "data": data }).to_string());
            if tx.send(event).await.is_err() {
                stop(child).await;
                let _ = std::fs::remove_dir_all(&report_dir);
                return;
            }
        }
        let status = child.wait().await;
        let report = std::fs::read(&report_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<RunReport>(&b).ok());
        let _ = std::fs::remove_dir_all(&report_dir);
        let event = match report {
            Some(report) => {
                crate::handlers::audit(Some(&key_id), "run", None, "ok", Some("streamed"));
                let result = crate::handlers::finish_run(&app, report, "run");
                Event::default()
                    .event("result")
                    .data(serde_json::to_string(&result).expect("serializes"))
            }
            None => {
                let msg = format!(
                    "the run did not complete ({}): {}",
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string()),
                    error_line(&stderr_text)
                );
                crate::handlers::audit(Some(&key_id), "run", None, "error", Some(&msg));
                Event::default()
                    .event("error")
                    .data(serde_json::json!({ "error": msg }).to_string())
            }
        };
        let _ = tx.send(event).await;
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
