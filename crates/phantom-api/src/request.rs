//! What callers ask for: one model for the CLI, MCP and HTTP front ends.
//!
//! * [`RunRequest`] — one program in a fresh sandbox (`phantom run`, `POST /api/v2/run`,
//!   MCP `run_code` / `run_command`): the program as [`Language`] + code or as argv,
//!   files, stdin, environment, the profile (or a policy file), [`Limits`] (the output
//!   cap and the network mode included), an image, a workspace, a working directory.
//! * [`CreateRequest`], [`ExecRequest`] — a persistent sandbox and a command in it.
//! * [`FileSpec`] — a file written into the workspace before a program starts.
//!
//! Sizes, durations and CPU counts are kept as the caller wrote them ([`Quantity`]:
//! `"512MB"`, `"30s"`, or a plain number) and parsed once, by the engine, into a
//! [`FieldError`] that names the field when they are wrong — each front end then
//! shows the name its callers use (`--memory` on the command line, `memory` in JSON).
//!
//! Request structs do not use serde's `deny_unknown_fields` (it does not work with the
//! flattened [`Limits`]); front ends parse them with [`crate::strict`], which refuses
//! unknown fields by the JSON Schema and suggests the nearest known one.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::choice::{Language, Mode, NetworkMode};

/// A size, duration or CPU count as the caller wrote it: text such as `"512MB"`,
/// `"30s"`, `"0.5"`, or a plain number — bytes for sizes, seconds for durations, CPUs
/// for CPU counts. The engine parses it (see `phantom_policy::units`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quantity(pub String);

impl Quantity {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Quantity {
        Quantity(s.to_string())
    }
}

/// A plain number: bytes for sizes, seconds for durations, CPUs for CPU counts.
impl From<u64> for Quantity {
    fn from(n: u64) -> Quantity {
        Quantity(n.to_string())
    }
}

impl From<String> for Quantity {
    fn from(s: String) -> Quantity {
        Quantity(s)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(u64),
            Float(f64),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a string such as \"512MB\" or \"30s\", or a number")
        })? {
            Raw::Text(t) => Ok(Quantity(t)),
            Raw::Int(n) => Ok(Quantity(n.to_string())),
            Raw::Float(x) if x.is_finite() && x >= 0.0 => Ok(Quantity(format!("{x}"))),
            Raw::Float(x) => Err(serde::de::Error::custom(format!(
                "{x} is not a quantity (expected a non-negative number or a string such as \"30s\")"
            ))),
        }
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Text such as \"512MB\", \"30s\" or \"0.5\", or a plain number (bytes for sizes, seconds for durations, CPUs for CPU counts).",
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 64},
                {"type": "number", "minimum": 0}
            ]
        })
    }
}

/// Limits and settings over the profile's; each absent one is the profile's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Limits {
    /// Wall-clock limit; the whole process tree is killed when it fires (e.g. `"30s"`,
    /// `"500ms"`, or seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Quantity>,
    /// Memory limit (e.g. `"512MB"`, `"1GiB"`, or bytes); exceeding it gets the program
    /// OOM-killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// CPU quota in CPUs (e.g. `"0.5"` or `2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Quantity>,
    /// Most processes and threads at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pids: Option<u64>,
    /// Output cap: bytes of stdout and stderr together kept before the output is cut
    /// (and reported as truncated), e.g. `"1MiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output: Option<Quantity>,
    /// The network the sandbox sees (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    /// Isolation mode (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The hosts the sandbox's egress proxy may connect to, instead of the profile's
    /// `network.allow` (entries as there: `pypi.org`, `*.pythonhosted.org`,
    /// `api.example.com:443`, `10.0.0.5`); the network is then `limited`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allow_hosts: Vec<String>,
    /// Hosts refused even when `allow_hosts` lets them through (instead of the
    /// profile's `network.deny`; only with `allow_hosts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub deny_hosts: Vec<String>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// A file written into the workspace before the program starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Relative to /workspace, e.g. `src/main.py` (no `..`, not absolute).
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// UTF-8 text.
    pub content: String,
}

/// What a run executes: code in a language, or a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    Code {
        language: Language,
        code: String,
    },
    Argv(Vec<String>),
    /// Nothing given: only valid on an image, whose Entrypoint and Cmd then apply.
    ImageDefault,
}

impl Program {
    /// From the optional `language`, `code` and `argv` fields of a request: either
    /// language and code, or argv. `image`: an empty argv falls back to the image's Cmd.
    pub fn from_fields(
        language: Option<Language>,
        code: Option<&str>,
        argv: Option<&[String]>,
        image: bool,
    ) -> Result<Program, FieldError> {
        let example = "send either language and code (e.g. {\"language\": \"python\", \"code\": \"print(1)\"}) or argv (e.g. {\"argv\": [\"echo\", \"hi\"]})";
        match (language, code, argv) {
            (Some(language), Some(code), None) => Ok(Program::Code {
                language,
                code: code.to_string(),
            }),
            (None, None, Some(argv)) if argv.first().is_some_and(|a| !a.is_empty()) => {
                Ok(Program::Argv(argv.to_vec()))
            }
            (None, None, Some(argv)) if argv.is_empty() && image => Ok(Program::ImageDefault),
            (None, None, None) if image => Ok(Program::ImageDefault),
            (Some(_), None, _) => Err(FieldError::new(
                Field::Code,
                format!("missing: give the program's source with `language`; {example}"),
            )),
            (None, Some(_), _) => Err(FieldError::new(
                Field::Language,
                format!(
                    "missing: say which language `code` is in ({}); {example}",
                    Language::NAMES.join(", ")
                ),
            )),
            (None, None, Some(_)) => Err(FieldError::new(
                Field::Argv,
                "empty: give the command and its arguments, e.g. [\"python3\", \"main.py\"]",
            )),
            (Some(_), Some(_), Some(_)) => Err(FieldError::new(
                Field::Argv,
                format!("give argv or language and code, not both; {example}"),
            )),
            (None, None, None) => Err(FieldError::new(
                Field::Argv,
                format!("no program: {example}"),
            )),
        }
    }

    /// The command line: a language's interpreter with the code, or argv as given
    /// (empty for the image's default).
    pub fn argv(&self) -> Vec<String> {
        match self {
            Program::Code { language, code } => language.argv(code),
            Program::Argv(argv) => argv.clone(),
            Program::ImageDefault => Vec::new(),
        }
    }

    /// The profile a program runs on when the request names none.
    pub fn default_profile(&self) -> &'static str {
        match self {
            Program::Code { language, .. } => language.default_profile(),
            _ => crate::DEFAULT_PROFILE,
        }
    }
}

/// Everything about a run but its program: files, stdin, environment, policy, limits,
/// image, workspace, working directory. Shared by [`RunRequest`] and the MCP tools'
/// [`CodeRun`] and [`CommandRun`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunOptions {
    /// Files written into /workspace (the working directory) before the program starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub files: Vec<FileSpec>,
    /// Text for the program's standard input (default: empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Environment variables on top of the profile's (PATH, HOME, LANG, ...); nothing of
    /// the host's environment is passed in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A built-in profile (default: the language's — python-dev for python, node-dev for
    /// node — else `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// A policy file in the DSL on the engine's host, instead of a profile (needs the
    /// `policy-files` grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<String>,
    #[serde(flatten)]
    pub limits: Limits,
    /// Run on this image of the store instead of the host's system directories (its
    /// Env, WorkingDir, Entrypoint and Cmd apply as in Docker; needs the `images` grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A host directory bound at /workspace (default: a fresh one, removed afterwards;
    /// needs the `host-workspace` grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Working directory inside the sandbox (default: the image's WorkingDir, else
    /// /workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Most files one run may write into its workspace, and their total size.
pub const MAX_FILES: usize = 1000;
pub const MAX_FILES_BYTES: usize = 64 << 20;

impl RunOptions {
    /// Check the files: relative paths without `..`, within [`MAX_FILES`] and
    /// [`MAX_FILES_BYTES`].
    pub fn check_files(&self) -> Result<(), FieldError> {
        if self.files.len() > MAX_FILES {
            return Err(FieldError::new(
                Field::Files,
                format!("{} files; at most {MAX_FILES}", self.files.len()),
            ));
        }
        let total: usize = self.files.iter().map(|f| f.content.len()).sum();
        if total > MAX_FILES_BYTES {
            return Err(FieldError::new(
                Field::Files,
                format!("{total} bytes in all; at most {MAX_FILES_BYTES}"),
            ));
        }
        for f in &self.files {
            let path = std::path::Path::new(&f.path);
            let why = if f.path.is_empty() {
                Some("an empty path")
            } else if path.is_absolute() {
                Some("an absolute path")
            } else if !path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            {
                Some("a path with `..` (or `.`)")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(FieldError::with_value(
                    Field::Files,
                    f.path.clone(),
                    format!("`{}` is {why}: give a path relative to /workspace without `..`, e.g. src/main.py", f.path),
                ));
            }
        }
        Ok(())
    }
}

/// One program in a fresh sandbox (warm when a pool serves it). Give `language` and
/// `code`, or `argv`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunRequest {
    /// Runs `code` with this language's interpreter (python: `python3 -c`, node:
    /// `node -e`, bash and sh: `-c`), on its default profile (python-dev, node-dev,
    /// default) unless `profile` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    /// The program's source, with `language`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The command and its arguments (instead of language and code); `argv[0]` is looked
    /// up on the sandbox's PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(flatten)]
    pub options: RunOptions,
    /// HTTP only: stream the output as Server-Sent Events (`stdout`, `stderr`, then
    /// `result`) instead of returning it in the report.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl RunRequest {
    /// The program this request runs.
    pub fn program(&self) -> Result<Program, FieldError> {
        Program::from_fields(
            self.language,
            self.code.as_deref(),
            self.argv.as_deref(),
            self.options.image.is_some(),
        )
    }
}

/// MCP `run_code`: a program in one of the languages, in a fresh sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CodeRun {
    /// python (`python3 -c`), node (`node -e`), bash or sh (`-c`).
    pub language: Language,
    /// The program's source; longer programs go in `files`.
    #[schemars(length(max = 102400))]
    pub code: String,
    #[serde(flatten)]
    pub options: RunOptions,
}

/// MCP `run_command`: one command line in a fresh sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandRun {
    /// The program (looked up on PATH) and its arguments; no shell unless you call one:
    /// `["sh", "-c", "..."]`.
    #[schemars(length(min = 1, max = 4096))]
    pub argv: Vec<String>,
    #[serde(flatten)]
    pub options: RunOptions,
}

impl From<CodeRun> for RunRequest {
    fn from(r: CodeRun) -> RunRequest {
        RunRequest {
            language: Some(r.language),
            code: Some(r.code),
            argv: None,
            options: r.options,
            stream: false,
        }
    }
}

impl From<CommandRun> for RunRequest {
    fn from(r: CommandRun) -> RunRequest {
        RunRequest {
            language: None,
            code: None,
            argv: Some(r.argv),
            options: r.options,
            stream: false,
        }
    }
}

/// A named sandbox that lives between commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreateRequest {
    /// Letters, digits, `-`, `_` and `.`; starts with a letter or digit; at most 63
    /// characters; unique per owner.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub name: String,
    /// A built-in profile (default: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// A policy file in the DSL on the engine's host, instead of a profile (needs the
    /// `policy-files` grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<String>,
    /// Limits of the sandbox; `timeout` is the default of each command run in it.
    #[serde(flatten)]
    pub limits: Limits,
    /// Run on this image of the store instead of the host's system directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Destroyed after this long without a running command (default `"15m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_idle: Option<Quantity>,
    /// Destroyed this long after creation, busy or not (default `"24h"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Quantity>,
    /// Start with the workspace of this snapshot (one of the caller's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
}

/// A command run in a persistent sandbox. Give `language` and `code`, or `argv`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecRequest {
    /// Runs `code` with this language's interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The command and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Text for standard input (default: empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Environment variables on top of the sandbox's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (default: the image's WorkingDir, else
    /// /workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Wall-clock limit of this command (default: the sandbox's `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Quantity>,
    /// Output cap of this command (default: the sandbox's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output: Option<Quantity>,
    /// Start the command and return at once with its pid (inside the sandbox): it runs
    /// on with stdin, stdout and stderr on /dev/null (redirect its output into a file
    /// to keep it), without a wall-clock limit, until it exits, is killed
    /// (`KillProcess`) or the sandbox goes. Its exit status is not kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
}

/// The HTTP API's exec body: the command, and whether its output streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecBody {
    #[serde(flatten)]
    pub request: ExecRequest,
    /// Stream the output as Server-Sent Events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl ExecRequest {
    /// The program this request runs (a persistent sandbox has no default command).
    pub fn program(&self) -> Result<Program, FieldError> {
        Program::from_fields(
            self.language,
            self.code.as_deref(),
            self.argv.as_deref(),
            false,
        )
    }
}

/// A field of a request, by the name JSON bodies and MCP arguments use; the command
/// line spells it as a flag ([`Field::flag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Language,
    Code,
    Argv,
    Files,
    Stdin,
    Env,
    Profile,
    PolicyFile,
    Timeout,
    Memory,
    Cpus,
    Pids,
    MaxOutput,
    Network,
    Mode,
    Image,
    Workspace,
    Cwd,
    Name,
    TimeoutIdle,
    MaxLifetime,
    FromSnapshot,
    Path,
    Tag,
    AllowHosts,
    DenyHosts,
}

impl Field {
    /// The name in JSON (`max_output`).
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Language => "language",
            Field::Code => "code",
            Field::Argv => "argv",
            Field::Files => "files",
            Field::Stdin => "stdin",
            Field::Env => "env",
            Field::Profile => "profile",
            Field::PolicyFile => "policy_file",
            Field::Timeout => "timeout",
            Field::Memory => "memory",
            Field::Cpus => "cpus",
            Field::Pids => "pids",
            Field::MaxOutput => "max_output",
            Field::Network => "network",
            Field::Mode => "mode",
            Field::Image => "image",
            Field::Workspace => "workspace",
            Field::Cwd => "cwd",
            Field::Name => "name",
            Field::TimeoutIdle => "timeout_idle",
            Field::MaxLifetime => "max_lifetime",
            Field::FromSnapshot => "from_snapshot",
            Field::Path => "path",
            Field::Tag => "tag",
            Field::AllowHosts => "allow_hosts",
            Field::DenyHosts => "deny_hosts",
        }
    }

    /// The command line's flag for it (`--max-output`; `--policy` for a policy file,
    /// `--from-snapshot`, ...). Fields the CLI takes positionally have none.
    pub fn flag(self) -> Option<String> {
        match self {
            Field::Argv | Field::Code | Field::Language | Field::Path | Field::Files => None,
            Field::PolicyFile => Some("--policy".into()),
            Field::AllowHosts => Some("--allow-host".into()),
            Field::DenyHosts => Some("--deny-host".into()),
            other => Some(format!("--{}", other.as_str().replace('_', "-"))),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A wrong value in a request: which field, the value when it helps, and what is
/// wrong with it in words that say what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    pub field: Field,
    /// The value as given (sizes, durations, names); absent for long or structured
    /// values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub message: String,
}

impl FieldError {
    /// `message` is kept on one line, the values it quotes in backticks cut short
    /// ([`crate::strict::one_line`]): they come from the request.
    pub fn new(field: Field, message: impl Into<String>) -> FieldError {
        FieldError {
            field,
            value: None,
            message: crate::strict::one_line(&message.into()),
        }
    }

    /// Several mistakes in what `field` names (a policy file with three wrong keys):
    /// one line each, each kept on one line like [`FieldError::new`]'s message.
    pub fn lines<S: AsRef<str>>(field: Field, lines: impl IntoIterator<Item = S>) -> FieldError {
        FieldError {
            field,
            value: None,
            message: lines
                .into_iter()
                .map(|l| crate::strict::one_line(l.as_ref()))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// As [`FieldError::new`], with the value shown on one line and cut short.
    pub fn with_value(
        field: Field,
        value: impl Into<String>,
        message: impl Into<String>,
    ) -> FieldError {
        FieldError {
            field,
            value: Some(crate::strict::shown(&value.into(), 256)),
            message: crate::strict::one_line(&message.into()),
        }
    }

    /// As the command line shows it: `--memory 12XB: cannot parse ...`.
    pub fn for_cli(&self) -> String {
        match (self.field.flag(), &self.value) {
            (Some(flag), Some(value)) => format!("{flag} {value}: {}", self.message),
            (Some(flag), None) => format!("{flag}: {}", self.message),
            (None, _) => match self.field {
                Field::Argv | Field::Code | Field::Language => {
                    format!("the command: {}", self.message)
                }
                other => format!("{other}: {}", self.message),
            },
        }
    }
}

/// As JSON callers see it: `memory: cannot parse "12XB" as a size (...)`.
impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_language_and_code_or_argv_never_both() {
        let req: RunRequest =
            serde_json::from_str(r#"{"language": "python3", "code": "print(1)"}"#).unwrap();
        let program = req.program().unwrap();
        assert_eq!(program.argv(), ["python3", "-c", "print(1)"]);
        assert_eq!(program.default_profile(), "python-dev");

        let req: RunRequest = serde_json::from_str(r#"{"argv": ["true"]}"#).unwrap();
        assert_eq!(req.program().unwrap().default_profile(), "default");

        for bad in [
            r#"{}"#,
            r#"{"argv": []}"#,
            r#"{"argv": [""]}"#,
            r#"{"code": "x"}"#,
            r#"{"language": "sh"}"#,
            r#"{"language": "sh", "code": "x", "argv": ["y"]}"#,
        ] {
            let req: RunRequest = serde_json::from_str(bad).unwrap();
            assert!(req.program().is_err(), "{bad}");
        }
        // On an image, no program means the image's Cmd.
        let req: RunRequest = serde_json::from_str(r#"{"image": "alpine"}"#).unwrap();
        assert_eq!(req.program().unwrap(), Program::ImageDefault);
    }

    #[test]
    fn limits_take_text_or_numbers_and_flatten_into_requests() {
        let req: RunRequest = serde_json::from_str(
            r#"{"argv": ["true"], "timeout": 2, "memory": "256MB", "cpus": 0.5, "network": "loopback-only"}"#,
        )
        .unwrap();
        let limits = &req.options.limits;
        assert_eq!(limits.timeout, Some(Quantity("2".into())));
        assert_eq!(limits.memory, Some(Quantity("256MB".into())));
        assert_eq!(limits.cpus, Some(Quantity("0.5".into())));
        assert_eq!(limits.network, Some(NetworkMode::LoopbackOnly));
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(back["memory"], "256MB");
        assert!(serde_json::from_str::<RunRequest>(r#"{"timeout": -1}"#).is_err());
        assert!(serde_json::from_str::<RunRequest>(r#"{"network": "wifi"}"#).is_err());
    }

    #[test]
    fn file_paths_stay_inside_the_workspace() {
        let with = |path: &str| RunOptions {
            files: vec![FileSpec {
                path: path.into(),
                content: String::new(),
            }],
            ..RunOptions::default()
        };
        with("src/main.py").check_files().unwrap();
        for bad in ["/etc/passwd", "../x", "a/../../x", "", "./a"] {
            let e = with(bad).check_files().unwrap_err();
            assert_eq!(e.field, Field::Files, "{bad}");
        }
    }

    #[test]
    fn field_errors_name_the_field_as_each_front_end_spells_it() {
        let e = FieldError::with_value(Field::MaxOutput, "12XB", "cannot parse \"12XB\" as a size");
        assert_eq!(e.to_string(), "max_output: cannot parse \"12XB\" as a size");
        assert_eq!(
            e.for_cli(),
            "--max-output 12XB: cannot parse \"12XB\" as a size"
        );
        let e = FieldError::new(Field::PolicyFile, "not readable");
        assert_eq!(e.for_cli(), "--policy: not readable");
    }
}
