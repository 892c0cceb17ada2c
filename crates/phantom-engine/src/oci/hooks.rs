//! OCI hooks: programs the runtime runs at fixed points of the lifecycle, each
//! given the container's state JSON on stdin (runtime-spec config.md, "POSIX-platform
//! Hooks"):
//!
//! | hook | run by | when | namespaces |
//! | --- | --- | --- | --- |
//! | `prestart` (deprecated), `createRuntime` | `create` | after the namespaces and mounts, before pivot_root | the runtime's |
//! | `createContainer` | the init | right after those, before pivot_root | the container's (path resolved in the runtime's) |
//! | `startContainer` | the init | after `start`, before the user's process | the container's |
//! | `poststart` | `start` | after the user's process started | the runtime's |
//! | `poststop` | `delete` | after the container is gone | the runtime's |
//!
//! A failing hook of the first three kinds fails the operation (and the container);
//! `poststart` and `poststop` failures are warnings, as the spec says.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use super::OciError;

/// The state JSON a hook reads on stdin.
pub fn state_json(
    id: &str,
    pid: i32,
    bundle: &std::path::Path,
    status: &str,
    annotations: &std::collections::HashMap<String, String>,
) -> String {
    serde_json::json!({
        "ociVersion": "1.2.0",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    })
    .to_string()
}

/// Run `hooks` of `kind` in order; the first failure is returned.
pub fn run(kind: &str, hooks: &[Hook], state: &str) -> Result<(), OciError> {
    for (i, hook) in hooks.iter().enumerate() {
        run_one(hook, state).map_err(|why| {
            OciError(format!(
                "hooks.{kind}[{i}] {}: {why}",
                hook.path().display()
            ))
        })?;
    }
    Ok(())
}

/// Run `hooks` of `kind`, every one, returning a warning per failure.
pub fn run_all(kind: &str, hooks: &[Hook], state: &str) -> Vec<String> {
    hooks
        .iter()
        .enumerate()
        .filter_map(|(i, hook)| {
            run_one(hook, state)
                .err()
                .map(|why| format!("hooks.{kind}[{i}] {}: {why}", hook.path().display()))
        })
        .collect()
}

fn run_one(hook: &Hook, state: &str) -> Result<(), String> {
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is no error.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let err = err.trim();
                return Err(if err.is_empty() {
                    format!("failed ({status})")
                } else {
                    format!("failed ({status}): {err}")
                });
            }
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {}s", hook.timeout().unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
