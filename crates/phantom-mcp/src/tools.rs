//! The tool registry: each tool's name, description, input and output JSON Schemas,
//! and what a call does. The persistent-sandbox tools of issue 5 (create_sandbox,
//! exec_in_sandbox, write_file, read_file, list_files, destroy_sandbox, list_sandboxes,
//! snapshot_sandbox) will be added here as further [`ToolKind`]s whose handlers call the
//! runtime's persistent-sandbox API; nothing else in the server needs to change.

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
            "start": {"type": "string", "enum": ["cold", "warm", "prewarmed"], "description": "cold: a sandbox made for this run; warm: a pooled one; prewarmed: a pooled sandbox with the interpreter already started."},
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
    ]
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
        (Mode::Zygote, Some(socket)) => phantom_runtime::warm::client::status_at(socket)
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
        (Mode::Zygote, Some(socket)) => match phantom_runtime::warm::client::status_at(socket) {
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
