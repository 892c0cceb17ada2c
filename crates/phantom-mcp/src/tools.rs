//! The tool registry: each tool's name, description, input and output JSON Schemas,
//! and what a call does. One-shot runs go through the engine (warm or cold); the
//! persistent-sandbox tools call the runtime's sandbox API — `create_sandbox` and
//! `exec_in_sandbox` through the `phantom` binary (they fork, and this server is
//! multi-threaded), the others in-process on a blocking thread (no fork).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::args::{self, ArgError, Language};
use crate::engine::{Engine, Finished, Job, Mode, Progress, RunError};

/// Which handler a tool has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    RunCode,
    RunCommand,
    ListProfiles,
    GetMetrics,
    CreateSandbox,
    ExecInSandbox,
    WriteFile,
    ReadFile,
    ListFiles,
    DestroySandbox,
    ListSandboxes,
    SnapshotSandbox,
}

/// One tool as `tools/list` shows it.
#[derive(Debug, Clone)]
pub struct ToolDef {
    pub name: &'static str,
    pub title: &'static str,
    pub description: String,
    pub input_schema: Value,
    pub output_schema: Value,
    pub kind: ToolKind,
    /// No side effect outside a sandbox that is thrown away.
    pub read_only: bool,
}

/// What a call ends with: the structured result (its JSON is also the text copy), and
/// whether it is an error result (`isError`). Bad arguments carry only a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Structured { value: Value, is_error: bool },
    Message { text: String, is_error: bool },
}

fn run_result_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "stdout": {"type": "string", "description": "Standard output (lossy UTF-8), cut at the output cap."},
            "stderr": {"type": "string", "description": "Standard error (lossy UTF-8), cut at the output cap (shared with stdout)."},
            "exit_code": {"type": "integer", "description": "The program's exit code; 128+N when signal N killed it (137: killed, e.g. by the timeout or the memory limit)."},
            "signal": {"type": ["integer", "null"], "description": "The signal that killed the program, if one did."},
            "timed_out": {"type": "boolean", "description": "The wall-clock limit fired and the sandbox was killed."},
            "oom_killed": {"type": "boolean", "description": "The memory limit was hit."},
            "truncated": {"type": "boolean", "description": "Output beyond max_output_bytes (stdout and stderr together) was dropped."},
            "cancelled": {"type": "boolean", "description": "The call was cancelled and the sandbox killed."},
            "wall_ms": {"type": "number", "description": "Wall-clock time of the run in the sandbox, in milliseconds."},
            "start": {"type": "string", "enum": ["cold", "warm", "prewarmed", "exec"], "description": "cold: a sandbox made for this run; warm: a pooled one; prewarmed: a pooled sandbox with the interpreter already started; exec: a command in a persistent sandbox (exec_in_sandbox)."},
            "profile": {"type": "string"},
            "sandbox_id": {"type": "string"},
            "max_output_bytes": {"type": "integer"},
            "notes": {"type": "array", "items": {"type": "string"}, "description": "What a limit did, in words (timeout, memory, truncation, cancellation)."},
            "warnings": {"type": "array", "items": {"type": "string"}, "description": "Isolation fallbacks on this host."}
        },
        "required": ["stdout", "stderr", "exit_code", "timed_out", "oom_killed", "truncated",
                     "cancelled", "wall_ms", "start", "profile", "max_output_bytes", "notes"],
        "additionalProperties": false
    })
}

fn timeout_schema() -> Value {
    json!({"type": "number", "exclusiveMinimum": 0, "maximum": args::MAX_TIMEOUT_S,
           "description": "Wall-clock limit in seconds (default: the profile's, 30 for the built-in ones). The whole process tree is killed when it fires."})
}

fn profile_schema() -> Value {
    json!({"type": "string", "enum": phantom_policy::builtin_names(),
           "description": "Built-in profile (see list_profiles). Default: python-dev for python, node-dev for node, default for bash/sh and run_command."})
}

/// Every tool this server offers.
pub fn registry(max_output: u64) -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "run_code",
            title: "Run code in a fresh sandbox",
            description: format!(
                "Run a program in a fresh, isolated Linux sandbox that is thrown away afterwards \
                 (no network but loopback, a private /tmp, the working directory /workspace holds \
                 `files`). language: python (python3 -c), node (node -e), bash or sh (-c). \
                 Returns stdout, stderr, exit_code, timed_out, oom_killed, truncated, wall_ms. \
                 Output is capped at {max_output} bytes (stdout and stderr together); a program \
                 that fails is a normal result with isError set."
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "language": {"type": "string", "enum": Language::ALL},
                    "code": {"type": "string", "maxLength": args::MAX_CODE_BYTES,
                             "description": "The program's source; longer programs go in `files`."},
                    "stdin": {"type": "string", "description": "Text for the program's standard input (default: empty)."},
                    "files": {
                        "type": "array", "maxItems": args::MAX_FILES,
                        "description": "Files written into /workspace (the working directory) before the run.",
                        "items": {
                            "type": "object",
                            "properties": {
                                "path": {"type": "string", "description": "Relative to /workspace, e.g. src/util.py; no `..`, not absolute."},
                                "content": {"type": "string"}
                            },
                            "required": ["path", "content"],
                            "additionalProperties": false
                        }
                    },
                    "timeout_s": timeout_schema(),
                    "profile": profile_schema()
                },
                "required": ["language", "code"],
                "additionalProperties": false
            }),
            output_schema: run_result_schema(),
            kind: ToolKind::RunCode,
            read_only: true,
        },
        ToolDef {
            name: "run_command",
            title: "Run a command in a fresh sandbox",
            description: format!(
                "Run one command (argv, no shell unless you call one: [\"sh\", \"-c\", \"...\"]) \
                 in a fresh, isolated Linux sandbox that is thrown away afterwards. The host's \
                 /usr is visible read-only; /workspace and /tmp are empty and writable. Returns \
                 stdout, stderr, exit_code, timed_out, oom_killed, truncated, wall_ms; output is \
                 capped at {max_output} bytes. A non-zero exit is a normal result with isError set."
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                             "maxItems": args::MAX_ARGV,
                             "description": "The program (looked up on PATH) and its arguments."},
                    "stdin": {"type": "string", "description": "Text for standard input (default: empty)."},
                    "env": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Extra environment variables; nothing else of the host's environment is passed in."},
                    "timeout_s": timeout_schema(),
                    "profile": profile_schema()
                },
                "required": ["argv"],
                "additionalProperties": false
            }),
            output_schema: run_result_schema(),
            kind: ToolKind::RunCommand,
            read_only: true,
        },
        ToolDef {
            name: "list_profiles",
            title: "List sandbox profiles",
            description: "The built-in sandbox profiles: isolation mode, network, limits, \
                          and whether this server keeps warm sandboxes for them."
                .into(),
            input_schema: json!({"type": "object", "properties": {}, "additionalProperties": false}),
            output_schema: json!({
                "type": "object",
                "properties": {
                    "profiles": {"type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "description": {"type": "string"},
                            "mode": {"type": "string"},
                            "network": {"type": "string"},
                            "memory_bytes": {"type": "integer"},
                            "pids": {"type": "integer"},
                            "timeout_ms": {"type": "integer"},
                            "default_for": {"type": "array", "items": {"type": "string"}},
                            "warm": {"type": "boolean"}
                        },
                        "required": ["name", "description", "mode", "network", "memory_bytes",
                                     "pids", "timeout_ms", "default_for", "warm"]
                    }}
                },
                "required": ["profiles"]
            }),
            kind: ToolKind::ListProfiles,
            read_only: true,
        },
        ToolDef {
            name: "get_metrics",
            title: "Server metrics",
            description: "Runs served (warm, pre-started, cold), failures, cancellations, \
                          timeouts, end-to-end latency percentiles, and the warm pools' sizes."
                .into(),
            input_schema: json!({"type": "object", "properties": {}, "additionalProperties": false}),
            output_schema: json!({
                "type": "object",
                "properties": {
                    "mode": {"type": "string", "enum": ["zygote", "cold"]},
                    "uptime_s": {"type": "number"},
                    "runs_served": {"type": "integer"},
                    "warm": {"type": "integer"},
                    "prewarmed": {"type": "integer"},
                    "cold": {"type": "integer"},
                    "failed_to_start": {"type": "integer"},
                    "cancelled": {"type": "integer"},
                    "timed_out": {"type": "integer"},
                    "latency_ms": {"type": "object", "properties": {
                        "samples": {"type": "integer"},
                        "p50": {"type": ["number", "null"]},
                        "p95": {"type": ["number", "null"]},
                        "p99": {"type": ["number", "null"]},
                        "max": {"type": ["number", "null"]}
                    }},
                    "pools": {"type": "array", "items": {"type": "object", "properties": {
                        "profile": {"type": "string"},
                        "target": {"type": "integer"},
                        "ready": {"type": "integer"},
                        "starting": {"type": "integer"},
                        "active": {"type": "integer"},
                        "hits": {"type": "integer"},
                        "prewarmed_hits": {"type": "integer"},
                        "misses": {"type": "integer"}
                    }}},
                    "supervisor": {"type": "string", "description": "running, none (cold mode), or why it cannot be reached"}
                },
                "required": ["mode", "runs_served", "warm", "cold", "latency_ms", "pools", "supervisor"]
            }),
            kind: ToolKind::GetMetrics,
            read_only: true,
        },
        ToolDef {
            name: "create_sandbox",
            title: "Create a persistent sandbox",
            description: "Create a named sandbox that lives between calls: files written to its \
                          /workspace stay, and exec_in_sandbox runs commands in it (each fenced \
                          like run_command). It is destroyed after idle_timeout_s without a \
                          command (default 900) or with destroy_sandbox."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "name": sandbox_name_schema(),
                    "profile": profile_schema(),
                    "idle_timeout_s": {"type": "number", "minimum": 1, "maximum": 86400,
                                       "description": "Destroyed after this long without a running command (default 900)."}
                },
                "required": ["name"],
                "additionalProperties": false
            }),
            output_schema: sandbox_schema(),
            kind: ToolKind::CreateSandbox,
            read_only: false,
        },
        ToolDef {
            name: "exec_in_sandbox",
            title: "Run a command in a persistent sandbox",
            description: format!(
                "Run one command (argv; use [\"sh\", \"-c\", \"...\"] for a shell line) in the \
                 sandbox `name` made by create_sandbox, in /workspace unless `cwd`. Files and \
                 processes it leaves stay for the next call. Returns stdout, stderr, exit_code, \
                 timed_out, oom_killed, truncated, wall_ms; output is capped at {max_output} \
                 bytes. A non-zero exit is a normal result with isError set."
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "name": sandbox_name_schema(),
                    "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                             "maxItems": args::MAX_ARGV,
                             "description": "The program (looked up on PATH) and its arguments."},
                    "stdin": {"type": "string", "description": "Text for standard input (default: empty)."},
                    "env": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Extra environment variables."},
                    "cwd": {"type": "string", "description": "Absolute working directory in the sandbox (default /workspace)."},
                    "timeout_s": timeout_schema()
                },
                "required": ["name", "argv"],
                "additionalProperties": false
            }),
            output_schema: run_result_schema(),
            kind: ToolKind::ExecInSandbox,
            read_only: false,
        },
        ToolDef {
            name: "write_file",
            title: "Write a file into a sandbox",
            description: "Write text to a file in the sandbox's /workspace (created or replaced; \
                          parent directories are made). Paths that leave /workspace, through `..` \
                          or a symlink, are refused."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "name": sandbox_name_schema(),
                    "path": path_schema(),
                    "content": {"type": "string", "maxLength": args::MAX_FILE_BYTES,
                                "description": "The file's text."}
                },
                "required": ["name", "path", "content"],
                "additionalProperties": false
            }),
            output_schema: json!({
                "type": "object",
                "properties": {"path": {"type": "string"}, "bytes": {"type": "integer"}},
                "required": ["path", "bytes"]
            }),
            kind: ToolKind::WriteFile,
            read_only: false,
        },
        ToolDef {
            name: "read_file",
            title: "Read a file from a sandbox",
            description: format!(
                "Read a file of the sandbox's /workspace as text (lossy UTF-8; at most {} bytes). \
                 Paths that leave /workspace, through `..` or a symlink, are refused.",
                args::MAX_FILE_BYTES
            ),
            input_schema: json!({
                "type": "object",
                "properties": {"name": sandbox_name_schema(), "path": path_schema()},
                "required": ["name", "path"],
                "additionalProperties": false
            }),
            output_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"},
                    "bytes": {"type": "integer"},
                    "binary": {"type": "boolean", "description": "The file is not valid UTF-8: content is a lossy copy."}
                },
                "required": ["path", "content", "bytes", "binary"]
            }),
            kind: ToolKind::ReadFile,
            read_only: true,
        },
        ToolDef {
            name: "list_files",
            title: "List a sandbox directory",
            description: "List a directory of the sandbox's /workspace (default: /workspace \
                          itself): names, kinds (file, dir, symlink), sizes."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {"name": sandbox_name_schema(), "path": path_schema()},
                "required": ["name"],
                "additionalProperties": false
            }),
            output_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "entries": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "kind": {"type": "string"},
                        "size": {"type": "integer"}, "mode": {"type": "integer"},
                        "target": {"type": "string"}
                    }, "required": ["name", "kind", "size", "mode"]}}
                },
                "required": ["path", "entries"]
            }),
            kind: ToolKind::ListFiles,
            read_only: true,
        },
        ToolDef {
            name: "destroy_sandbox",
            title: "Destroy a persistent sandbox",
            description: "Kill everything in the sandbox and remove it with its workspace \
                          (snapshot_sandbox first to keep the files)."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {"name": sandbox_name_schema()},
                "required": ["name"],
                "additionalProperties": false
            }),
            output_schema: sandbox_schema(),
            kind: ToolKind::DestroySandbox,
            read_only: false,
        },
        ToolDef {
            name: "list_sandboxes",
            title: "List persistent sandboxes",
            description: "The persistent sandboxes: name, status (running, or dead with the \
                          reason), profile, when created and last used."
                .into(),
            input_schema: json!({"type": "object", "properties": {}, "additionalProperties": false}),
            output_schema: json!({
                "type": "object",
                "properties": {"sandboxes": {"type": "array", "items": sandbox_schema()}},
                "required": ["sandboxes"]
            }),
            kind: ToolKind::ListSandboxes,
            read_only: true,
        },
        ToolDef {
            name: "snapshot_sandbox",
            title: "Snapshot a sandbox's workspace",
            description: "Store the sandbox's /workspace in the content-addressed snapshot \
                          store (unchanged files cost nothing); returns the tag, which \
                          `phantom create --from-snapshot TAG` starts a sandbox from."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "name": sandbox_name_schema(),
                    "tag": {"type": "string", "description": "Default: NAME-YYYYMMDD-HHMMSS."}
                },
                "required": ["name"],
                "additionalProperties": false
            }),
            output_schema: json!({
                "type": "object",
                "properties": {
                    "tag": {"type": "string"}, "files": {"type": "integer"},
                    "bytes": {"type": "integer"}, "new_chunks": {"type": "integer"},
                    "new_bytes": {"type": "integer"}
                },
                "required": ["tag", "files", "bytes", "new_chunks", "new_bytes"]
            }),
            kind: ToolKind::SnapshotSandbox,
            read_only: false,
        },
    ]
}

fn sandbox_name_schema() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
           "description": "The sandbox's name (letters, digits, - _ .)."})
}

fn path_schema() -> Value {
    json!({"type": "string", "description": "A path in the workspace: /workspace/main.py, or main.py (relative to /workspace)."})
}

fn sandbox_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"}, "id": {"type": "string"},
            "status": {"type": "string", "description": "running, dead (see reason), or destroyed"},
            "reason": {"type": "string"}, "profile": {"type": "string"},
            "mode": {"type": "string"}, "created": {"type": "integer"},
            "last_used": {"type": "integer"}, "idle_timeout_s": {"type": "integer"},
            "max_lifetime_s": {"type": "integer"}
        },
        "required": ["name", "id", "status", "profile"]
    })
}

/// A sandbox record as the tools return it (no host paths or pids).
fn sandbox_value(i: &phantom_api::SandboxInfo) -> Value {
    let mut v = json!({
        "name": i.name, "id": i.id, "status": i.status, "profile": i.profile, "mode": i.mode,
        "created": i.created, "last_used": i.last_used, "idle_timeout_s": i.idle_timeout_s,
        "max_lifetime_s": i.max_lifetime_s,
    });
    if let Some(r) = &i.reason {
        v["reason"] = json!(r);
    }
    v
}

/// A runtime refusal or failure as a tool error the model can act on.
fn runtime_error(e: phantom_engine::EngineError) -> Outcome {
    Outcome::Message {
        text: if e.exit_code() == 2 {
            format!("bad arguments: {e}")
        } else {
            format!("failed: {e}")
        },
        is_error: true,
    }
}

/// Run runtime work that needs no fork on a blocking thread.
async fn blocking(
    f: impl FnOnce() -> Result<Value, phantom_engine::EngineError> + Send + 'static,
) -> Outcome {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Outcome::Structured {
            value,
            is_error: false,
        },
        Ok(Err(e)) => runtime_error(e),
        Err(e) => Outcome::Message {
            text: format!("internal error: {e}"),
            is_error: true,
        },
    }
}

/// A tool's parsed arguments, or the call ends with the message that says what to send.
macro_rules! parsed {
    ($parse:expr) => {
        match $parse {
            Ok(a) => a,
            Err(e) => return bad_args(e),
        }
    };
}

/// The persistent-sandbox tools.
async fn sandbox_call(
    engine: &Arc<Engine>,
    kind: ToolKind,
    arguments: &Map<String, Value>,
    ct: tokio_util::sync::CancellationToken,
    progress: Progress,
) -> Outcome {
    use phantom_engine::sandbox;
    use std::ffi::OsString;
    let started = std::time::Instant::now();
    match kind {
        ToolKind::CreateSandbox => {
            let a = parsed!(args::create_sandbox(arguments));
            let mut argv: Vec<OsString> = [
                "create",
                "--json",
                "--name",
                &a.name,
                "--profile",
                &a.profile,
            ]
            .iter()
            .map(OsString::from)
            .collect();
            if let Some(t) = a.idle_timeout_s {
                argv.push("--timeout-idle".into());
                argv.push(format!("{}s", t.round() as u64).into());
            }
            match engine.phantom(&argv, None, ct, &progress, started).await {
                Ok(out) if out.status.success() => {
                    match serde_json::from_slice::<phantom_api::SandboxInfo>(&out.stdout) {
                        Ok(info) => Outcome::Structured {
                            value: sandbox_value(&info),
                            is_error: false,
                        },
                        Err(e) => Outcome::Message {
                            text: format!("failed: phantom create printed no record ({e})"),
                            is_error: true,
                        },
                    }
                }
                Ok(out) => run_error(out.error("phantom create")),
                Err(e) => run_error(e),
            }
        }
        ToolKind::ExecInSandbox => {
            let a = parsed!(args::exec_in_sandbox(arguments));
            let mut argv: Vec<OsString> =
                vec!["exec".into(), a.name.clone().into(), "--json".into()];
            argv.push("--max-output".into());
            argv.push(engine.max_output.to_string().into());
            if let Some(t) = a.command.timeout_s {
                argv.push("--timeout".into());
                argv.push(format!("{}ms", ((t * 1000.0).round() as u64).max(1)).into());
            }
            if let Some(c) = &a.cwd {
                argv.push("--cwd".into());
                argv.push(c.into());
            }
            for (k, v) in &a.command.env {
                argv.push("--env".into());
                argv.push(format!("{k}={v}").into());
            }
            argv.push("--".into());
            argv.extend(a.command.argv.iter().map(OsString::from));
            match engine
                .phantom(&argv, a.command.stdin.clone(), ct, &progress, started)
                .await
            {
                Ok(out) => match engine.report(out, "phantom exec") {
                    Ok(f) => run_result(&f),
                    Err(e) => run_error(e),
                },
                Err(e) => run_error(e),
            }
        }
        ToolKind::WriteFile => {
            let (target, content) = parsed!(args::write_file(arguments));
            blocking(move || {
                sandbox::write_file(&target.name, &target.path, content.as_bytes(), true)?;
                Ok(json!({"path": target.path, "bytes": content.len()}))
            })
            .await
        }
        ToolKind::ReadFile => {
            let target = parsed!(args::sandbox_path_args("read_file", arguments, true));
            blocking(move || {
                let data =
                    sandbox::read_file(&target.name, &target.path, args::MAX_FILE_BYTES as u64)?;
                let text = String::from_utf8(data.clone());
                Ok(json!({
                    "path": target.path,
                    "bytes": data.len(),
                    "binary": text.is_err(),
                    "content": text.unwrap_or_else(|_| String::from_utf8_lossy(&data).into_owned()),
                }))
            })
            .await
        }
        ToolKind::ListFiles => {
            let target = parsed!(args::sandbox_path_args("list_files", arguments, false));
            blocking(move || {
                let entries = sandbox::list_files(&target.name, &target.path)?;
                Ok(json!({"path": target.path, "entries": entries}))
            })
            .await
        }
        ToolKind::DestroySandbox => {
            let name = parsed!(args::destroy_sandbox(arguments));
            blocking(move || Ok(sandbox_value(&sandbox::destroy(&name)?))).await
        }
        ToolKind::ListSandboxes => {
            if let Err(e) = args::no_arguments("list_sandboxes", arguments) {
                return bad_args(e);
            }
            blocking(|| {
                let list: Vec<Value> = sandbox::list()?.iter().map(sandbox_value).collect();
                Ok(json!({"sandboxes": list}))
            })
            .await
        }
        ToolKind::SnapshotSandbox => {
            let (name, tag) = parsed!(args::snapshot_sandbox(arguments));
            blocking(move || {
                let info =
                    sandbox::snapshot(&name, tag.as_deref(), &Default::default(), &mut |_| {})?;
                Ok(json!({
                    "tag": info.tag, "files": info.files, "bytes": info.bytes,
                    "new_chunks": info.new_chunks, "new_bytes": info.new_bytes,
                }))
            })
            .await
        }
        _ => unreachable!("not a sandbox tool"),
    }
}

fn bad_args(e: ArgError) -> Outcome {
    Outcome::Message {
        text: format!("bad arguments: {e}"),
        is_error: true,
    }
}

/// Turn a finished run into the tool's result.
pub fn run_result(f: &Finished) -> Outcome {
    let r = &f.report;
    let mut notes = Vec::new();
    if f.cancelled {
        notes.push("cancelled: the sandbox was killed".to_string());
    }
    if r.timed_out {
        notes.push(format!(
            "timed out after {:.0} ms: the sandbox was killed (send a larger timeout_s)",
            r.wall_ms
        ));
    }
    if r.oom_killed {
        notes.push("out of memory: the profile's memory limit was hit".to_string());
    }
    if r.output_truncated {
        notes.push(format!(
            "output truncated: only the first {} bytes of stdout and stderr together were kept",
            f.max_output
        ));
    }
    let value = json!({
        "stdout": r.stdout.clone().unwrap_or_default(),
        "stderr": r.stderr.clone().unwrap_or_default(),
        "exit_code": r.exit_code,
        "signal": r.signal,
        "timed_out": r.timed_out,
        "oom_killed": r.oom_killed,
        "truncated": r.output_truncated,
        "cancelled": f.cancelled,
        "wall_ms": (r.wall_ms * 1000.0).round() / 1000.0,
        "start": r.start,
        "profile": r.profile,
        "sandbox_id": r.sandbox_id,
        "max_output_bytes": f.max_output,
        "notes": notes,
        "warnings": r.warnings,
    });
    let is_error = r.exit_code != 0 || r.timed_out || r.oom_killed || f.cancelled;
    Outcome::Structured { value, is_error }
}

fn run_error(e: RunError) -> Outcome {
    Outcome::Message {
        text: match e {
            RunError::Usage(m) => format!("bad arguments: {m}"),
            RunError::Failed(m) => format!("the sandbox could not start: {m}"),
        },
        is_error: true,
    }
}

fn list_profiles(engine: &Engine) -> Outcome {
    let warm = warm_profiles(engine);
    let mut profiles = Vec::new();
    for name in phantom_policy::builtin_names() {
        let compiled = phantom_policy::load_builtin(name).and_then(|p| {
            let plan = phantom_policy::compile(&p, &phantom_policy::Overrides::default())?;
            Ok((p, plan))
        });
        let (profile, plan) = match compiled {
            Ok(x) => x,
            Err(e) => {
                return Outcome::Message {
                    text: format!("built-in profile {name}: {e}"),
                    is_error: true,
                }
            }
        };
        let default_for: Vec<&str> = Language::VARIANTS
            .iter()
            .zip(Language::ALL)
            .filter(|(l, _)| l.default_profile() == *name)
            .map(|(_, n)| n)
            .chain((*name == phantom_policy::DEFAULT_PROFILE).then_some("run_command"))
            .collect();
        profiles.push(json!({
            "name": name,
            "description": profile.description.clone().unwrap_or_default(),
            "mode": plan.mode.as_str(),
            "network": plan.network.as_str(),
            "memory_bytes": plan.limits.memory_bytes,
            "pids": plan.limits.pids,
            "timeout_ms": plan.limits.wall_timeout_ms,
            "default_for": default_for,
            "warm": warm.iter().any(|w| w == name),
        }));
    }
    Outcome::Structured {
        value: json!({ "profiles": profiles }),
        is_error: false,
    }
}

/// Profiles the private supervisor keeps pools for (on the host root).
fn warm_profiles(engine: &Engine) -> Vec<String> {
    match (&engine.mode, &engine.socket) {
        (Mode::Zygote, Some(socket)) => phantom_engine::warm::client::status_at(socket)
            .map(|s| {
                s.pools
                    .into_iter()
                    .filter(|p| p.image.is_none())
                    .map(|p| p.profile)
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn get_metrics(engine: &Engine) -> Outcome {
    let snapshot = engine.metrics.snapshot();
    let mut value = serde_json::to_value(&snapshot).expect("metrics serialize");
    let (pools, supervisor) = match (&engine.mode, &engine.socket) {
        (Mode::Zygote, Some(socket)) => match phantom_engine::warm::client::status_at(socket) {
            Ok(s) => (
                s.pools
                    .iter()
                    .map(|p| {
                        json!({
                            "profile": p.profile, "target": p.target, "ready": p.ready,
                            "starting": p.starting, "active": p.active, "hits": p.hits,
                            "prewarmed_hits": p.prewarmed_hits, "misses": p.misses,
                        })
                    })
                    .collect(),
                "running".to_string(),
            ),
            Err(e) => (Vec::new(), e.to_string()),
        },
        _ => (Vec::new(), "none".to_string()),
    };
    let obj = value.as_object_mut().expect("an object");
    obj.insert(
        "mode".into(),
        json!(match engine.mode {
            Mode::Zygote => "zygote",
            Mode::Cold => "cold",
        }),
    );
    obj.insert("pools".into(), Value::Array(pools));
    obj.insert("supervisor".into(), json!(supervisor));
    Outcome::Structured {
        value,
        is_error: false,
    }
}

/// Run a call of `kind` with `arguments`.
pub async fn call(
    engine: &Arc<Engine>,
    kind: ToolKind,
    arguments: &Map<String, Value>,
    ct: tokio_util::sync::CancellationToken,
    progress: Progress,
) -> Outcome {
    let job = match kind {
        ToolKind::RunCode => match args::run_code(arguments) {
            Ok(a) => Job {
                argv: a.language.argv(&a.code),
                profile: a.profile,
                env: Vec::new(),
                stdin: a.stdin,
                files: a.files,
                timeout_s: a.timeout_s,
            },
            Err(e) => return bad_args(e),
        },
        ToolKind::RunCommand => match args::run_command(arguments) {
            Ok(a) => Job {
                argv: a.argv,
                profile: a.profile,
                env: a.env,
                stdin: a.stdin,
                files: Vec::new(),
                timeout_s: a.timeout_s,
            },
            Err(e) => return bad_args(e),
        },
        ToolKind::CreateSandbox
        | ToolKind::ExecInSandbox
        | ToolKind::WriteFile
        | ToolKind::ReadFile
        | ToolKind::ListFiles
        | ToolKind::DestroySandbox
        | ToolKind::ListSandboxes
        | ToolKind::SnapshotSandbox => {
            return sandbox_call(engine, kind, arguments, ct, progress).await;
        }
        ToolKind::ListProfiles | ToolKind::GetMetrics => {
            let name = if kind == ToolKind::ListProfiles {
                "list_profiles"
            } else {
                "get_metrics"
            };
            if let Err(e) = args::no_arguments(name, arguments) {
                return bad_args(e);
            }
            let engine = engine.clone();
            // Both may talk to the supervisor's socket (blocking).
            return tokio::task::spawn_blocking(move || match kind {
                ToolKind::ListProfiles => list_profiles(&engine),
                _ => get_metrics(&engine),
            })
            .await
            .unwrap_or_else(|e| Outcome::Message {
                text: format!("internal error: {e}"),
                is_error: true,
            });
        }
    };
    match engine.run(job, ct, progress).await {
        Ok(finished) => run_result(&finished),
        Err(e) => run_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phantom_api::RunReport;

    fn finished(exit_code: i32, truncated: bool) -> Finished {
        Finished {
            report: RunReport {
                exit_code,
                output_truncated: truncated,
                start: "cold".into(),
                stdout: Some("out".into()),
                stderr: Some(String::new()),
                ..RunReport::default()
            },
            cancelled: false,
            max_output: 1024,
        }
    }

    #[test]
    fn a_failing_program_is_an_error_result_not_a_protocol_error() {
        let Outcome::Structured { value, is_error } = run_result(&finished(3, false)) else {
            panic!("a run gives a structured result");
        };
        assert!(is_error);
        assert_eq!(value["exit_code"], 3);
        assert_eq!(value["stdout"], "out");
        let Outcome::Structured { is_error, .. } = run_result(&finished(0, false)) else {
            panic!("structured");
        };
        assert!(!is_error);
    }

    #[test]
    fn truncation_is_said_with_the_cap() {
        let Outcome::Structured { value, .. } = run_result(&finished(0, true)) else {
            panic!("structured");
        };
        assert_eq!(value["truncated"], true);
        let notes = value["notes"].as_array().unwrap();
        assert!(
            notes
                .iter()
                .any(|n| n.as_str().unwrap().contains("first 1024 bytes")),
            "{notes:?}"
        );
    }

    #[test]
    fn run_results_have_every_field_the_output_schema_requires() {
        let Outcome::Structured { value, .. } = run_result(&finished(0, false)) else {
            panic!("structured");
        };
        let schema = run_result_schema();
        let props = schema["properties"].as_object().unwrap();
        for key in schema["required"].as_array().unwrap() {
            assert!(value.get(key.as_str().unwrap()).is_some(), "missing {key}");
        }
        for key in value.as_object().unwrap().keys() {
            assert!(props.contains_key(key), "{key} is not in the schema");
        }
    }

    #[test]
    fn registry_names_are_unique_and_schemas_are_objects() {
        let tools = registry(1 << 20);
        let mut names: Vec<_> = tools.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), tools.len());
        for t in &tools {
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            assert_eq!(t.output_schema["type"], "object", "{}", t.name);
        }
    }
}
