//! The tools' parameters and results: the phantom-api types the HTTP API takes and
//! returns ([`CodeRun`], [`CommandRun`], [`CreateRequest`], [`ExecRequest`],
//! [`RunReport`], [`SandboxInfo`], [`FileEntry`]), with the few MCP-only wrappers
//! (a sandbox's name next to a request, a path) around them. Their JSON Schemas are
//! generated from these types (rmcp's typed parameters); none is written by hand.
//!
//! [`Args`] parses a tool's arguments strictly — unknown fields are refused, with the
//! nearest known one suggested — and never fails the JSON-RPC call: a wrong argument
//! is a tool error the model can read and act on (MCP's "tool execution error"), in
//! words that say what to send.

use phantom_api::engine::PoolInfo;
use phantom_api::request::{CreateRequest, ExecRequest};
use phantom_api::{FileEntry, RunReport, SandboxInfo};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use phantom_api::request::{CodeRun, CommandRun};

/// A tool's arguments as `T`, or what is wrong with them.
pub struct Args<T>(pub Result<T, String>);

impl<'de, T: DeserializeOwned + JsonSchema> Deserialize<'de> for Args<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Ok(Args(
            phantom_api::strict::from_value::<T>(value).map_err(|e| hint(&e.message)),
        ))
    }
}

impl<T: JsonSchema> JsonSchema for Args<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = T::json_schema(generator);
        // Unknown fields are refused: the schema says so.
        if schema.get("type").and_then(|t| t.as_str()) == Some("object") {
            schema.insert("additionalProperties".into(), false.into());
        }
        schema
    }
}

/// A parse error in words that say what to send.
fn hint(message: &str) -> String {
    let field = message.split('`').nth(1).unwrap_or("");
    if message.starts_with("missing field") {
        let example = match field {
            "code" => {
                " — the program's source, e.g. {\"language\": \"python\", \"code\": \"print(1)\"}"
            }
            "language" => " — one of \"python\", \"node\", \"bash\", \"sh\"",
            "argv" => " — the command as a list, e.g. {\"argv\": [\"ls\", \"-l\"]}",
            "name" => " — the sandbox's name, e.g. \"agent-1\"",
            "path" => " — a path in the workspace, e.g. \"main.py\"",
            "content" => " — the file's text",
            _ => "",
        };
        return format!("`{field}` is missing{example}");
    }
    if message.contains("expected a sequence") {
        if let Some(text) = message
            .split("invalid type: string \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        {
            return format!(
                "argv is a list of strings, not one string: send [\"sh\", \"-c\", \"{text}\"] to run it with a shell, or split it yourself"
            );
        }
    }
    if message.contains("unknown language") {
        return format!("{message} (for anything else use run_command with an argv)");
    }
    message.to_string()
}

/// `exec_in_sandbox`: a command in a persistent sandbox.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct NamedExec {
    /// The sandbox's name (letters, digits, `-` `_` `.`).
    pub name: String,
    #[serde(flatten)]
    pub exec: ExecRequest,
}

/// `write_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileWrite {
    /// The sandbox's name.
    pub name: String,
    /// A path in the workspace: `/workspace/main.py`, or `main.py` (relative to
    /// /workspace); missing directories are created.
    pub path: String,
    /// The file's text.
    pub content: String,
}

/// `read_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilePath {
    /// The sandbox's name.
    pub name: String,
    /// A path in the workspace: `/workspace/main.py`, or `main.py`.
    pub path: String,
}

/// `list_files`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirPath {
    /// The sandbox's name.
    pub name: String,
    /// A directory in the workspace (default: /workspace).
    #[serde(default)]
    pub path: Option<String>,
}

/// `destroy_sandbox`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxName {
    /// The sandbox's name.
    pub name: String,
}

/// `snapshot_sandbox`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotParams {
    /// The sandbox's name.
    pub name: String,
    /// The snapshot's tag (default: `NAME-YYYYMMDD-HHMMSS`); `create_sandbox` takes it
    /// as `from_snapshot`.
    #[serde(default)]
    pub tag: Option<String>,
}

/// Tools without parameters.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `create_sandbox`.
pub type CreateParams = CreateRequest;

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// A run's (or a command's) result: the report the HTTP API gives, and in words what a
/// limit did.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunResult {
    #[serde(flatten)]
    pub report: RunReport,
    /// The output cap (stdout and stderr together).
    pub max_output_bytes: u64,
    /// What a limit did, in words: the timeout, the memory limit, truncation,
    /// cancellation.
    pub notes: Vec<String>,
}

/// `write_file`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Written {
    pub path: String,
    pub bytes: usize,
}

/// `read_file`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FileContent {
    pub path: String,
    pub bytes: usize,
    /// Not UTF-8: `content` is a lossy rendering.
    pub binary: bool,
    pub content: String,
}

/// `list_files`' result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Listing {
    pub path: String,
    pub entries: Vec<FileEntry>,
}

/// `list_sandboxes`' result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Sandboxes {
    pub sandboxes: Vec<SandboxInfo>,
}

/// `list_processes`' result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Processes {
    /// Commands still running and what commands left running, by pid inside the
    /// sandbox (the init, pid 1, is not listed).
    pub processes: Vec<phantom_api::ProcessInfo>,
}

/// `kill_process`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    /// The sandbox's name.
    pub name: String,
    /// The process's pid inside the sandbox, as `list_processes` shows it.
    pub pid: i32,
    /// The signal (default: term).
    #[serde(default)]
    pub signal: Option<phantom_api::choice::ProcessSignal>,
}

/// `kill_process`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Signalled {
    pub pid: i32,
    pub signal: phantom_api::choice::ProcessSignal,
}

/// `snapshot_sandbox`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SnapshotResult {
    pub tag: String,
    pub files: u64,
    pub bytes: u64,
    /// Chunks this snapshot added to the store (0: nothing new).
    pub new_chunks: u64,
    pub new_bytes: u64,
}

/// One profile in `list_profiles`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProfileInfo {
    pub name: String,
    pub description: String,
    pub mode: phantom_api::choice::Mode,
    pub network: phantom_api::choice::NetworkMode,
    pub memory_bytes: u64,
    pub pids: u64,
    pub timeout_ms: u64,
    /// The languages (and `run_command`) that run on it when the call names none.
    pub default_for: Vec<String>,
    /// This server keeps warm sandboxes of it.
    pub warm: bool,
}

/// `list_profiles`' result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Profiles {
    pub profiles: Vec<ProfileInfo>,
}

/// `get_metrics`' result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct MetricsResult {
    #[serde(flatten)]
    pub runs: crate::metrics::Snapshot,
    /// `zygote` (warm pools) or `cold`.
    pub mode: String,
    pub pools: Vec<PoolInfo>,
    /// The engine: `running`, or why it does not answer.
    pub engine: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<T: DeserializeOwned + JsonSchema>(v: serde_json::Value) -> Result<T, String> {
        serde_json::from_value::<Args<T>>(v).unwrap().0
    }

    #[test]
    fn wrong_arguments_say_what_to_send() {
        let e = args::<CodeRun>(serde_json::json!({"language": "python"})).unwrap_err();
        assert!(
            e.contains("`code` is missing") && e.contains("print(1)"),
            "{e}"
        );
        let e = args::<CommandRun>(serde_json::json!({"argv": "ls -l"})).unwrap_err();
        assert!(e.contains(r#"["sh", "-c", "ls -l"]"#), "{e}");
        let e = args::<CodeRun>(serde_json::json!({"language": "cobol", "code": "x"})).unwrap_err();
        assert!(e.contains("\"python\"") || e.contains("python"), "{e}");
        assert!(e.contains("run_command"), "{e}");
        let e = args::<CodeRun>(serde_json::json!({"language": "sh", "code": "x", "timout": 1}))
            .unwrap_err();
        assert!(e.contains("did you mean `timeout`"), "{e}");
        let ok = args::<CodeRun>(serde_json::json!({"language": "py", "code": "1", "timeout": 2}))
            .unwrap();
        assert_eq!(ok.options.limits.timeout.unwrap().as_str(), "2");
    }

    #[test]
    fn schemas_come_from_the_types_and_are_closed() {
        let schema = rmcp::handler::server::common::schema_for_input::<Args<CodeRun>>().unwrap();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"], false);
        for field in [
            "language", "code", "files", "stdin", "timeout", "memory", "profile",
        ] {
            assert!(
                schema["properties"].get(field).is_some(),
                "{field}: {schema:?}"
            );
        }
        let out = rmcp::handler::server::common::schema_for_output::<RunResult>();
        assert_eq!(out["type"], "object");
        for field in [
            "stdout",
            "exit_code",
            "timed_out",
            "output_truncated",
            "notes",
        ] {
            assert!(out["properties"].get(field).is_some(), "{field}");
        }
    }
}

/// `run_code`: a program in a fresh sandbox — or, with `sandbox`, python code in a
/// code context of that persistent sandbox, whose variables persist between calls.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct CodeCall {
    #[serde(flatten)]
    pub run: CodeRun,
    /// A persistent sandbox's name (create_sandbox): run the code in a code context
    /// there instead of a fresh sandbox — `context`, or the sandbox's default python
    /// context (started at its first use). Only `language: python`, `code`, `env` and
    /// `timeout` apply then; a call's timeout interrupts the code (KeyboardInterrupt)
    /// and the context keeps its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// A context's id (create_context); needs `sandbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// `create_context`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextCreate {
    /// The persistent sandbox's name.
    pub sandbox: String,
    /// The interpreter (default: python).
    #[serde(default)]
    pub language: Option<phantom_api::context::ContextLanguage>,
    /// Its working directory inside the sandbox (default: /workspace).
    #[serde(default)]
    pub cwd: Option<String>,
}

/// `restart_context`, `delete_context`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextRef {
    /// The persistent sandbox's name.
    pub sandbox: String,
    /// The context's id (create_context, list_contexts).
    pub context: String,
}

/// `list_contexts`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextsOf {
    /// The persistent sandbox's name.
    pub sandbox: String,
}

/// `list_contexts`' result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ContextList {
    pub contexts: Vec<phantom_api::context::ContextInfo>,
}

/// `run_code` in a context: the context's id and what the call returned. Figures
/// come as MCP image content (image/png) after the text, not as `png` here.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ContextCodeResult {
    pub context: String,
    /// How many figures (PNG) follow as image content, in the order of `results`.
    pub images: usize,
    #[serde(flatten)]
    pub result: phantom_api::context::CodeResult,
}
