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

/// Run `phantom ARGS` with `stdin`, to completion.
pub(crate) async fn phantom(
    app: &App,
    args: &[String],
    stdin: Option<&str>,
) -> Result<Output, ApiFailure> {
    let mut cmd = Command::new(&app.config.phantom_bin);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
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
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| ApiFailure::internal(format!("waiting for phantom: {e}")))?;
    Ok(Output {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
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
