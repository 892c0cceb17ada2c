//! Tool arguments: parsed from the JSON a model sends, checked, and — when wrong —
//! answered with a message that says what to send instead. No I/O here.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

/// Longest inline `code` (bytes): a program passed as one argument (`python3 -c`) must
/// stay under the kernel's 128 KiB per-argument limit.
pub const MAX_CODE_BYTES: usize = 100 * 1024;
/// Most `stdin` a call may carry (bytes).
pub const MAX_STDIN_BYTES: usize = 16 << 20;
/// Most files one call may write into the workspace, and their total size.
pub const MAX_FILES: usize = 1000;
pub const MAX_FILES_BYTES: usize = 64 << 20;
/// Longest allowed `timeout_s`.
pub const MAX_TIMEOUT_S: f64 = 600.0;
/// Most argv entries and env entries of `run_command`.
pub const MAX_ARGV: usize = 4096;

/// A bad argument: the text goes back to the model as a tool error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError(pub String);

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ArgError> {
    Err(ArgError(msg.into()))
}

/// The languages `run_code` runs, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Node,
    Bash,
    Sh,
}

impl Language {
    /// Names as the schema lists them, in the order of [`Language::VARIANTS`].
    pub const ALL: [&'static str; 4] = ["python", "node", "bash", "sh"];
    pub const VARIANTS: [Language; 4] = [
        Language::Python,
        Language::Node,
        Language::Bash,
        Language::Sh,
    ];

    fn parse(s: &str) -> Result<Language, ArgError> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Ok(Language::Python),
            "node" | "nodejs" | "javascript" | "js" => Ok(Language::Node),
            "bash" => Ok(Language::Bash),
            "sh" | "shell" => Ok(Language::Sh),
            _ => err(format!(
                "`language` {s:?} is not supported: send one of \"python\", \"node\", \"bash\", \"sh\" \
                 (for anything else use run_command with an argv)"
            )),
        }
    }

    /// The command line that runs `code` (it is passed as one argument, never through
    /// a shell of ours).
    pub fn argv(self, code: &str) -> Vec<String> {
        let (prog, flag) = match self {
            // `python3 -c CODE` is what a pre-started interpreter takes over.
            Language::Python => ("python3", "-c"),
            Language::Node => ("node", "-e"),
            Language::Bash => ("bash", "-c"),
            Language::Sh => ("sh", "-c"),
        };
        vec![prog.into(), flag.into(), code.into()]
    }

    /// The built-in profile a language runs under when the call names none.
    pub fn default_profile(self) -> &'static str {
        match self {
            Language::Python => "python-dev",
            Language::Node => "node-dev",
            Language::Bash | Language::Sh => phantom_policy::DEFAULT_PROFILE,
        }
    }
}

/// One file to write into the run's workspace before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceFile {
    /// Relative to the workspace; only normal components.
    pub path: PathBuf,
    pub content: String,
}

/// `run_code`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCode {
    pub language: Language,
    pub code: String,
    pub stdin: Option<String>,
    pub files: Vec<WorkspaceFile>,
    pub timeout_s: Option<f64>,
    pub profile: String,
}

/// `run_command`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCommand {
    pub argv: Vec<String>,
    pub stdin: Option<String>,
    pub env: Vec<(String, String)>,
    pub timeout_s: Option<f64>,
    pub profile: String,
}

fn check_known(tool: &str, args: &Map<String, Value>, known: &[&str]) -> Result<(), ArgError> {
    for key in args.keys() {
        if !known.contains(&key.as_str()) {
            return err(format!(
                "unknown argument `{key}`: {tool} takes {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

fn string<'a>(
    args: &'a Map<String, Value>,
    key: &str,
    hint: &str,
) -> Result<Option<&'a str>, ArgError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => err(format!(
            "`{key}` must be a string ({hint}); got {}",
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn stdin(args: &Map<String, Value>) -> Result<Option<String>, ArgError> {
    let s = string(
        args,
        "stdin",
        "the text given to the program's standard input",
    )?;
    if let Some(s) = s {
        if s.len() > MAX_STDIN_BYTES {
            return err(format!(
                "`stdin` is {} bytes; at most {MAX_STDIN_BYTES} are accepted: send less, or \
                 pass the data as a file in `files` (run_code)",
                s.len()
            ));
        }
    }
    Ok(s.map(str::to_string))
}

fn timeout(args: &Map<String, Value>) -> Result<Option<f64>, ArgError> {
    match args.get("timeout_s") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let t = n.as_f64().unwrap_or(f64::NAN);
            if !(t > 0.0 && t <= MAX_TIMEOUT_S) {
                return err(format!(
                    "`timeout_s` {n} is out of range: send a number of seconds greater than 0 \
                     and at most {MAX_TIMEOUT_S}, e.g. 10"
                ));
            }
            Ok(Some(t))
        }
        Some(other) => err(format!(
            "`timeout_s` must be a number of seconds (greater than 0, at most {MAX_TIMEOUT_S}), \
             e.g. 10; got {}",
            kind(other)
        )),
    }
}

/// A built-in profile by name; `python`, `node`, ... stand for `python-dev`, ...
pub fn profile_name(name: &str) -> Result<String, ArgError> {
    let names = phantom_policy::builtin_names();
    if names.contains(&name) {
        return Ok(name.to_string());
    }
    let dev = format!("{name}-dev");
    if names.contains(&dev.as_str()) {
        return Ok(dev);
    }
    err(format!(
        "`profile` {name:?} is not a built-in profile: send one of {} (list_profiles describes \
         them), or leave it out for the language's default",
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn profile(args: &Map<String, Value>, default: &str) -> Result<String, ArgError> {
    match string(
        args,
        "profile",
        "a built-in profile name, e.g. \"python-dev\"",
    )? {
        None => Ok(default.to_string()),
        Some(name) => profile_name(name),
    }
}

/// Check a workspace path: relative, normal components only, so that it can only
/// name something inside the (fresh, symlink-free) workspace directory.
pub fn workspace_path(i: usize, path: &str) -> Result<PathBuf, ArgError> {
    let what = format!("files[{i}].path {path:?}");
    let fix = "send a path relative to the workspace (/workspace), e.g. \"src/main.py\"";
    if path.is_empty() || path.len() > 1024 || path.contains('\0') {
        return err(format!("{what}: {fix} (1 to 1024 bytes, no NUL)"));
    }
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return err(format!("{what}: absolute paths are refused; {fix}"))
            }
            Component::ParentDir => {
                return err(format!(
                    "{what}: `..` is refused (the file must stay inside the workspace); {fix}"
                ))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return err(format!("{what}: names no file; {fix}"));
    }
    Ok(out)
}

fn files(args: &Map<String, Value>) -> Result<Vec<WorkspaceFile>, ArgError> {
    let shape = "an array of {\"path\": \"relative/path\", \"content\": \"text\"}";
    let list = match args.get("files") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => return err(format!("`files` must be {shape}; got {}", kind(other))),
    };
    if list.len() > MAX_FILES {
        return err(format!(
            "`files` has {} entries; at most {MAX_FILES} are accepted",
            list.len()
        ));
    }
    let mut out: Vec<WorkspaceFile> = Vec::with_capacity(list.len());
    let mut total = 0usize;
    for (i, item) in list.iter().enumerate() {
        let Value::Object(obj) = item else {
            return err(format!(
                "files[{i}] must be {{\"path\": \"relative/path\", \"content\": \"text\"}}; got {}",
                kind(item)
            ));
        };
        for key in obj.keys() {
            if key != "path" && key != "content" {
                return err(format!(
                    "files[{i}]: unknown key `{key}`: each file is {{\"path\", \"content\"}}"
                ));
            }
        }
        let (Some(Value::String(path)), Some(Value::String(content))) =
            (obj.get("path"), obj.get("content"))
        else {
            return err(format!(
                "files[{i}] needs a string `path` and a string `content`, e.g. \
                 {{\"path\": \"data.csv\", \"content\": \"a,b\\n1,2\\n\"}}"
            ));
        };
        let path = workspace_path(i, path)?;
        if let Some(prev) = out.iter().position(|f| f.path == path) {
            return err(format!(
                "files[{i}].path {:?} names the same file as files[{prev}]: send each path once",
                path.display()
            ));
        }
        // A file cannot also be a directory of another one.
        if let Some(prev) = out
            .iter()
            .position(|f| f.path.starts_with(&path) || path.starts_with(&f.path))
        {
            return err(format!(
                "files[{i}].path {:?} and files[{prev}].path {:?}: one would be a directory of \
                 the other",
                path.display(),
                out[prev].path.display()
            ));
        }
        total += content.len();
        if total > MAX_FILES_BYTES {
            return err(format!(
                "`files` hold more than {MAX_FILES_BYTES} bytes in all: send less"
            ));
        }
        out.push(WorkspaceFile {
            path,
            content: content.clone(),
        });
    }
    Ok(out)
}

/// Parse `run_code`'s arguments.
pub fn run_code(args: &Map<String, Value>) -> Result<RunCode, ArgError> {
    check_known(
        "run_code",
        args,
        &["language", "code", "stdin", "files", "timeout_s", "profile"],
    )?;
    let language = match string(
        args,
        "language",
        "one of \"python\", \"node\", \"bash\", \"sh\"",
    )? {
        Some(l) => Language::parse(l)?,
        None => {
            return err(
                "`language` is missing: send one of \"python\", \"node\", \"bash\", \"sh\", \
                 e.g. {\"language\": \"python\", \"code\": \"print(1)\"}",
            )
        }
    };
    let Some(code) = string(args, "code", "the program's source text")? else {
        return err(
            "`code` is missing: send the program's source as a string, e.g. \
             {\"language\": \"python\", \"code\": \"print(1)\"}",
        );
    };
    if code.len() > MAX_CODE_BYTES {
        return err(format!(
            "`code` is {} bytes; at most {MAX_CODE_BYTES} are accepted inline: put the program \
             in `files` (e.g. {{\"path\": \"main.py\", \"content\": ...}}) and send a short \
             `code` that runs it (e.g. \"import runpy; runpy.run_path('main.py')\")",
            code.len()
        ));
    }
    if code.contains('\0') {
        return err("`code` contains a NUL character, which no interpreter accepts: remove it");
    }
    Ok(RunCode {
        language,
        code: code.to_string(),
        stdin: stdin(args)?,
        files: files(args)?,
        timeout_s: timeout(args)?,
        profile: profile(args, language.default_profile())?,
    })
}

/// Parse `run_command`'s arguments.
pub fn run_command(args: &Map<String, Value>) -> Result<RunCommand, ArgError> {
    check_known(
        "run_command",
        args,
        &["argv", "stdin", "env", "timeout_s", "profile"],
    )?;
    let example = "e.g. {\"argv\": [\"ls\", \"-l\", \"/\"]}";
    let argv = match args.get("argv") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return err(format!(
                "`argv` is empty: send the command and its arguments, {example}"
            ))
        }
        Some(Value::String(s)) => {
            return err(format!(
                "`argv` must be an array of strings, not one string: split the command line, \
                 e.g. {{\"argv\": [\"sh\", \"-c\", {s:?}]}} to run it through a shell"
            ))
        }
        None | Some(Value::Null) => {
            return err(format!(
                "`argv` is missing: send the command as an array, {example}"
            ))
        }
        Some(other) => {
            return err(format!(
                "`argv` must be an array of strings, {example}; got {}",
                kind(other)
            ))
        }
    };
    if argv.len() > MAX_ARGV {
        return err(format!("`argv` has more than {MAX_ARGV} entries"));
    }
    let mut out = Vec::with_capacity(argv.len());
    for (i, a) in argv.iter().enumerate() {
        match a {
            Value::String(s) if s.contains('\0') => {
                return err(format!("argv[{i}] contains a NUL character: remove it"))
            }
            Value::String(s) if i == 0 && s.is_empty() => {
                return err(format!("argv[0] is empty: it names the program, {example}"))
            }
            Value::String(s) => out.push(s.clone()),
            other => {
                return err(format!(
                    "argv[{i}] must be a string; got {} (quote numbers: \"1\")",
                    kind(other)
                ))
            }
        }
    }
    let env = match args.get("env") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => {
            let mut env = Vec::with_capacity(map.len());
            for (k, v) in map {
                let valid_name = !k.is_empty()
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid_name {
                    return err(format!(
                        "env name {k:?} is not a valid variable name: use letters, digits and _, \
                         not starting with a digit, e.g. {{\"DEBUG\": \"1\"}}"
                    ));
                }
                match v {
                    Value::String(s) if !s.contains('\0') => env.push((k.clone(), s.clone())),
                    Value::String(_) => {
                        return err(format!("env {k}: the value contains a NUL character"))
                    }
                    other => {
                        return err(format!(
                            "env {k}: values must be strings (quote numbers: \"1\"); got {}",
                            kind(other)
                        ))
                    }
                }
            }
            env
        }
        Some(other) => {
            return err(format!(
                "`env` must be an object of NAME: value strings, e.g. {{\"DEBUG\": \"1\"}}; got {}",
                kind(other)
            ))
        }
    };
    Ok(RunCommand {
        argv: out,
        stdin: stdin(args)?,
        env,
        timeout_s: timeout(args)?,
        profile: profile(args, phantom_policy::DEFAULT_PROFILE)?,
    })
}

/// Tools without arguments still refuse unknown ones (a model that sends some expects
/// them to mean something).
pub fn no_arguments(tool: &str, args: &Map<String, Value>) -> Result<(), ArgError> {
    if let Some(key) = args.keys().next() {
        return err(format!(
            "unknown argument `{key}`: {tool} takes no arguments"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Persistent-sandbox tools
// ---------------------------------------------------------------------------------------

/// Most bytes `write_file` writes and `read_file` returns.
pub const MAX_FILE_BYTES: usize = 8 << 20;

/// `create_sandbox`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSandbox {
    pub name: String,
    pub profile: String,
    pub idle_timeout_s: Option<f64>,
}

/// `exec_in_sandbox`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecInSandbox {
    pub name: String,
    pub command: RunCommand,
    pub cwd: Option<String>,
}

/// A sandbox and a path in it (`write_file`, `read_file`, `list_files`).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxPath {
    pub name: String,
    /// `/workspace/...` (a relative path is taken relative to /workspace).
    pub path: String,
}

/// The sandbox's `name`: required, a valid name.
fn sandbox_name(tool: &str, args: &Map<String, Value>) -> Result<String, ArgError> {
    let example = "e.g. {\"name\": \"work\"}";
    let Some(name) = string(args, "name", "the sandbox's name")? else {
        return err(format!(
            "`name` is missing: {tool} needs the sandbox's name ({example}; list_sandboxes shows them)"
        ));
    };
    phantom_engine::sandbox::validate_name(name).map_err(|e| ArgError(format!("`name`: {e}")))?;
    Ok(name.to_string())
}

/// A path inside the sandbox: `/workspace/...`, or relative to /workspace.
fn sandbox_path(args: &Map<String, Value>, required: bool) -> Result<String, ArgError> {
    let hint = "a path in the sandbox's workspace, e.g. \"/workspace/main.py\" or \"main.py\"";
    let path = match string(args, "path", hint)? {
        Some(p) => p,
        None if required => return err(format!("`path` is missing: send {hint}")),
        None => return Ok("/workspace".into()),
    };
    if path.is_empty() || path.len() > 4096 || path.contains('\0') {
        return err(format!("`path`: send {hint} (1 to 4096 bytes, no NUL)"));
    }
    if path.starts_with('/') {
        if path != "/workspace" && !path.starts_with("/workspace/") {
            return err(format!(
                "`path` {path:?} is outside the workspace: only /workspace is reachable; send {hint}"
            ));
        }
        return Ok(path.to_string());
    }
    Ok(format!("/workspace/{path}"))
}

/// Parse `create_sandbox`'s arguments.
pub fn create_sandbox(args: &Map<String, Value>) -> Result<CreateSandbox, ArgError> {
    check_known(
        "create_sandbox",
        args,
        &["name", "profile", "idle_timeout_s"],
    )?;
    let idle_timeout_s = match args.get("idle_timeout_s") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if (1.0..=86400.0).contains(&t) => Some(t),
            _ => return err("`idle_timeout_s` must be 1 to 86400 seconds, e.g. 900 (the default)"),
        },
        Some(other) => {
            return err(format!(
                "`idle_timeout_s` must be a number of seconds, e.g. 900; got {}",
                kind(other)
            ))
        }
    };
    Ok(CreateSandbox {
        name: sandbox_name("create_sandbox", args)?,
        profile: profile(args, phantom_policy::DEFAULT_PROFILE)?,
        idle_timeout_s,
    })
}

/// Parse `exec_in_sandbox`'s arguments (as `run_command`'s, plus `name` and `cwd`).
pub fn exec_in_sandbox(args: &Map<String, Value>) -> Result<ExecInSandbox, ArgError> {
    check_known(
        "exec_in_sandbox",
        args,
        &["name", "argv", "stdin", "env", "timeout_s", "cwd"],
    )?;
    let name = sandbox_name("exec_in_sandbox", args)?;
    let cwd = match string(
        args,
        "cwd",
        "an absolute directory in the sandbox, e.g. \"/workspace/src\"",
    )? {
        Some(c) if c.starts_with('/') && !c.contains('\0') => Some(c.to_string()),
        Some(c) => {
            return err(format!(
                "`cwd` {c:?} must be an absolute directory in the sandbox, e.g. \"/workspace/src\""
            ))
        }
        None => None,
    };
    let mut rest = args.clone();
    rest.remove("name");
    rest.remove("cwd");
    let command =
        run_command(&rest).map_err(|e| ArgError(e.0.replace("run_command", "exec_in_sandbox")))?;
    Ok(ExecInSandbox { name, command, cwd })
}

/// Parse `write_file`'s arguments: the sandbox, the path and the content.
pub fn write_file(args: &Map<String, Value>) -> Result<(SandboxPath, String), ArgError> {
    check_known("write_file", args, &["name", "path", "content"])?;
    let target = SandboxPath {
        name: sandbox_name("write_file", args)?,
        path: sandbox_path(args, true)?,
    };
    let Some(content) = string(args, "content", "the file's text")? else {
        return err(
            "`content` is missing: send the file's text, e.g. {\"content\": \"print(1)\\n\"}",
        );
    };
    if content.len() > MAX_FILE_BYTES {
        return err(format!("`content` is larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok((target, content.to_string()))
}

/// Parse `read_file`'s or `list_files`'s arguments.
pub fn sandbox_path_args(
    tool: &str,
    args: &Map<String, Value>,
    required: bool,
) -> Result<SandboxPath, ArgError> {
    check_known(tool, args, &["name", "path"])?;
    Ok(SandboxPath {
        name: sandbox_name(tool, args)?,
        path: sandbox_path(args, required)?,
    })
}

/// Parse `destroy_sandbox`'s arguments.
pub fn destroy_sandbox(args: &Map<String, Value>) -> Result<String, ArgError> {
    check_known("destroy_sandbox", args, &["name"])?;
    sandbox_name("destroy_sandbox", args)
}

/// Parse `snapshot_sandbox`'s arguments: the sandbox and an optional tag.
pub fn snapshot_sandbox(args: &Map<String, Value>) -> Result<(String, Option<String>), ArgError> {
    check_known("snapshot_sandbox", args, &["name", "tag"])?;
    let name = sandbox_name("snapshot_sandbox", args)?;
    let tag = string(args, "tag", "a snapshot tag, e.g. \"before-refactor\"")?;
    if let Some(t) = tag {
        phantom_store::validate_tag(t).map_err(|e| ArgError(format!("`tag`: {e}")))?;
    }
    Ok((name, tag.map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().expect("test arguments are objects").clone()
    }

    #[test]
    fn run_code_minimal_python_gets_the_python_profile() {
        let a = run_code(&obj(json!({"language": "python", "code": "print(1)"}))).unwrap();
        assert_eq!(a.language, Language::Python);
        assert_eq!(a.profile, "python-dev");
        assert_eq!(a.language.argv(&a.code), ["python3", "-c", "print(1)"]);
        assert!(a.files.is_empty() && a.stdin.is_none() && a.timeout_s.is_none());
    }

    #[test]
    fn run_code_bash_and_sh_use_the_default_profile() {
        for lang in ["bash", "sh"] {
            let a = run_code(&obj(json!({"language": lang, "code": "echo hi"}))).unwrap();
            assert_eq!(a.profile, phantom_policy::DEFAULT_PROFILE);
            assert_eq!(a.language.argv("echo hi")[0], lang);
        }
    }

    #[test]
    fn run_code_unknown_language_lists_the_supported_ones() {
        let e = run_code(&obj(json!({"language": "cobol", "code": "x"}))).unwrap_err();
        assert!(e.0.contains("\"cobol\""), "{e}");
        for l in Language::ALL {
            assert!(e.0.contains(&format!("\"{l}\"")), "{e}");
        }
        assert!(e.0.contains("run_command"), "{e}");
    }

    #[test]
    fn run_code_missing_code_shows_an_example() {
        let e = run_code(&obj(json!({"language": "python"}))).unwrap_err();
        assert!(e.0.contains("`code` is missing"), "{e}");
        assert!(e.0.contains("print(1)"), "{e}");
        let e = run_code(&obj(json!({"code": "print(1)"}))).unwrap_err();
        assert!(e.0.contains("`language` is missing"), "{e}");
    }

    #[test]
    fn run_code_wrong_types_name_the_expected_type() {
        let e = run_code(&obj(json!({"language": "python", "code": 5}))).unwrap_err();
        assert!(
            e.0.contains("`code` must be a string") && e.0.contains("a number"),
            "{e}"
        );
        let e = run_code(&obj(
            json!({"language": "sh", "code": "x", "timeout_s": "10"}),
        ))
        .unwrap_err();
        assert!(e.0.contains("`timeout_s` must be a number"), "{e}");
    }

    #[test]
    fn run_code_unknown_argument_lists_the_known_ones() {
        let e = run_code(&obj(json!({"language": "sh", "code": "x", "timeout": 3}))).unwrap_err();
        assert!(e.0.contains("unknown argument `timeout`"), "{e}");
        assert!(e.0.contains("`timeout_s`"), "{e}");
    }

    #[test]
    fn timeout_range_is_checked() {
        for bad in [json!(0), json!(-1), json!(601), json!(1e9)] {
            let e = run_code(&obj(
                json!({"language": "sh", "code": "x", "timeout_s": bad}),
            ))
            .unwrap_err();
            assert!(e.0.contains("out of range"), "{e}");
        }
        let a = run_code(&obj(
            json!({"language": "sh", "code": "x", "timeout_s": 0.5}),
        ))
        .unwrap();
        assert_eq!(a.timeout_s, Some(0.5));
    }

    #[test]
    fn oversized_code_points_at_files() {
        let code = "#".repeat(MAX_CODE_BYTES + 1);
        let e = run_code(&obj(json!({"language": "python", "code": code}))).unwrap_err();
        assert!(e.0.contains("`files`"), "{e}");
        let code = "#".repeat(MAX_CODE_BYTES);
        assert!(run_code(&obj(json!({"language": "python", "code": code}))).is_ok());
    }

    #[test]
    fn profile_aliases_and_unknown_profiles() {
        assert_eq!(profile_name("python").unwrap(), "python-dev");
        assert_eq!(profile_name("strict").unwrap(), "strict");
        let e = profile_name("nope").unwrap_err();
        assert!(
            e.0.contains("\"nope\"") && e.0.contains("\"strict\""),
            "{e}"
        );
        let a = run_code(&obj(
            json!({"language": "python", "code": "1", "profile": "strict"}),
        ))
        .unwrap();
        assert_eq!(a.profile, "strict");
    }

    #[test]
    fn workspace_paths_stay_inside() {
        assert_eq!(
            workspace_path(0, "src/main.py").unwrap(),
            PathBuf::from("src/main.py")
        );
        assert_eq!(workspace_path(0, "./a//b").unwrap(), PathBuf::from("a/b"));
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "",
            ".",
            "./",
            "a\0b",
        ] {
            let e = workspace_path(3, bad).unwrap_err();
            assert!(e.0.starts_with("files[3].path"), "{bad:?}: {e}");
            assert!(e.0.contains("relative to the workspace"), "{bad:?}: {e}");
        }
        // `..` anywhere is refused, even when it would end up inside.
        assert!(workspace_path(0, "a/../b").is_err());
    }

    #[test]
    fn files_shape_duplicates_and_prefixes() {
        let a = run_code(&obj(json!({"language": "python", "code": "1",
            "files": [{"path": "a/b.py", "content": "x"}, {"path": "c.txt", "content": ""}]})))
        .unwrap();
        assert_eq!(a.files.len(), 2);
        let e = run_code(&obj(json!({"language": "python", "code": "1",
            "files": [{"path": "a", "content": "x"}, {"path": "./a", "content": "y"}]})))
        .unwrap_err();
        assert!(e.0.contains("same file"), "{e}");
        let e = run_code(&obj(json!({"language": "python", "code": "1",
            "files": [{"path": "a", "content": "x"}, {"path": "a/b", "content": "y"}]})))
        .unwrap_err();
        assert!(e.0.contains("directory of"), "{e}");
        let e = run_code(&obj(json!({"language": "python", "code": "1",
            "files": [{"name": "a", "content": "x"}]})))
        .unwrap_err();
        assert!(e.0.contains("unknown key `name`"), "{e}");
        let e = run_code(&obj(
            json!({"language": "python", "code": "1", "files": "a.py"}),
        ))
        .unwrap_err();
        assert!(e.0.contains("must be an array"), "{e}");
    }

    #[test]
    fn run_command_argv_shapes() {
        let a = run_command(&obj(json!({"argv": ["ls", "-l"]}))).unwrap();
        assert_eq!(a.argv, ["ls", "-l"]);
        assert_eq!(a.profile, phantom_policy::DEFAULT_PROFILE);
        let e = run_command(&obj(json!({"argv": "ls -l"}))).unwrap_err();
        assert!(
            e.0.contains("not one string") && e.0.contains("\"sh\", \"-c\""),
            "{e}"
        );
        let e = run_command(&obj(json!({"argv": []}))).unwrap_err();
        assert!(e.0.contains("`argv` is empty"), "{e}");
        let e = run_command(&obj(json!({"argv": ["echo", 1]}))).unwrap_err();
        assert!(e.0.contains("argv[1] must be a string"), "{e}");
        let e = run_command(&obj(json!({}))).unwrap_err();
        assert!(e.0.contains("`argv` is missing"), "{e}");
    }

    #[test]
    fn run_command_env_names_and_values() {
        let a = run_command(&obj(json!({"argv": ["env"], "env": {"A_1": "x"}}))).unwrap();
        assert_eq!(a.env, [("A_1".to_string(), "x".to_string())]);
        for bad in [json!({"1A": "x"}), json!({"A=B": "x"}), json!({"": "x"})] {
            let e = run_command(&obj(json!({"argv": ["env"], "env": bad}))).unwrap_err();
            assert!(e.0.contains("not a valid variable name"), "{e}");
        }
        let e = run_command(&obj(json!({"argv": ["env"], "env": {"A": 1}}))).unwrap_err();
        assert!(e.0.contains("values must be strings"), "{e}");
        let e = run_command(&obj(json!({"argv": ["env"], "env": ["A=1"]}))).unwrap_err();
        assert!(e.0.contains("must be an object"), "{e}");
    }

    #[test]
    fn no_argument_tools_refuse_arguments() {
        assert!(no_arguments("list_profiles", &Map::new()).is_ok());
        let e = no_arguments("get_metrics", &obj(json!({"x": 1}))).unwrap_err();
        assert!(e.0.contains("takes no arguments"), "{e}");
    }

    #[test]
    fn sandbox_tools_check_names_paths_and_say_what_to_send() {
        let e = create_sandbox(&obj(serde_json::json!({}))).unwrap_err().0;
        assert!(e.contains("`name` is missing"), "{e}");
        let e = create_sandbox(&obj(serde_json::json!({"name": "../x"})))
            .unwrap_err()
            .0;
        assert!(e.contains("invalid sandbox name"), "{e}");
        let c =
            create_sandbox(&obj(serde_json::json!({"name": "w", "profile": "python"}))).unwrap();
        assert_eq!((c.name.as_str(), c.profile.as_str()), ("w", "python-dev"));
        let e = create_sandbox(&obj(serde_json::json!({"name": "w", "idle_timeout_s": 0})))
            .unwrap_err()
            .0;
        assert!(e.contains("1 to 86400"), "{e}");

        let (p, content) = write_file(&obj(
            serde_json::json!({"name": "w", "path": "src/a.py", "content": "x"}),
        ))
        .unwrap();
        assert_eq!(
            (p.path.as_str(), content.as_str()),
            ("/workspace/src/a.py", "x")
        );
        let e = write_file(&obj(
            serde_json::json!({"name": "w", "path": "/etc/passwd", "content": "x"}),
        ))
        .unwrap_err()
        .0;
        assert!(e.contains("outside the workspace"), "{e}");
        let e = write_file(&obj(serde_json::json!({"name": "w", "path": "a"})))
            .unwrap_err()
            .0;
        assert!(e.contains("`content` is missing"), "{e}");
        let e = sandbox_path_args("read_file", &obj(serde_json::json!({"name": "w"})), true)
            .unwrap_err()
            .0;
        assert!(e.contains("`path` is missing"), "{e}");
        let p =
            sandbox_path_args("list_files", &obj(serde_json::json!({"name": "w"})), false).unwrap();
        assert_eq!(p.path, "/workspace");
        let e = sandbox_path_args(
            "read_file",
            &obj(serde_json::json!({"name": "w", "path": "a", "mode": "r"})),
            true,
        )
        .unwrap_err()
        .0;
        assert!(e.contains("unknown argument `mode`"), "{e}");

        let x = exec_in_sandbox(&obj(
            serde_json::json!({"name": "w", "argv": ["ls"], "cwd": "/workspace"}),
        ))
        .unwrap();
        assert_eq!(
            (x.command.argv.clone(), x.cwd.as_deref()),
            (vec!["ls".to_string()], Some("/workspace"))
        );
        let e = exec_in_sandbox(&obj(serde_json::json!({"name": "w", "argv": "ls -l"})))
            .unwrap_err()
            .0;
        assert!(e.contains("array of strings"), "{e}");
        let e = exec_in_sandbox(&obj(
            serde_json::json!({"name": "w", "argv": ["ls"], "cwd": "src"}),
        ))
        .unwrap_err()
        .0;
        assert!(e.contains("absolute directory"), "{e}");
        let e = exec_in_sandbox(&obj(
            serde_json::json!({"name": "w", "argv": ["ls"], "profile": "x"}),
        ))
        .unwrap_err()
        .0;
        assert!(e.contains("unknown argument `profile`"), "{e}");
        assert!(snapshot_sandbox(&obj(serde_json::json!({"name": "w", "tag": "../t"}))).is_err());
        assert_eq!(
            destroy_sandbox(&obj(serde_json::json!({"name": "w"}))).unwrap(),
            "w"
        );
    }
}
