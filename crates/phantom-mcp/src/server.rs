//! The MCP side: rmcp's tool router over typed parameters ([`crate::params`]). Each
//! tool is one function; rmcp generates its input schema from the parameter type and
//! its output schema from the result type.

use std::sync::Arc;

use phantom_api::engine::Failure;
use phantom_api::SandboxInfo;
use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use serde::Serialize;

use crate::engine::{Acting, Engine, Job, Mode, Progress};
use crate::params::*;
use phantom_api::access::{Owner, Principal};

/// The largest file `read_file` returns.
pub const MAX_READ_BYTES: u64 = 16 << 20;

/// One MCP server instance (one per stdio connection or HTTP session); they share the
/// engine glue (its client, principal and metrics).
#[derive(Clone)]
pub struct PhantomMcp {
    engine: Arc<Engine>,
    tool_router: ToolRouter<PhantomMcp>,
    /// With [`Acting::PerRequest`]: the owner of this session's first call. Each
    /// session is its own instance (the HTTP transport's factory makes one per
    /// session), so a session id presented with another key is refused.
    session_owner: Arc<std::sync::OnceLock<Owner>>,
}

/// The `progress` of a notification sent `elapsed_s` seconds into a run. It must
/// increase with each notification: the elapsed time in milliseconds does (whole
/// seconds could repeat when the ticker catches up on a late tick).
pub fn progress_of(elapsed_s: f64) -> f64 {
    (elapsed_s * 1000.0).round() / 1000.0
}

pub const INSTRUCTIONS: &str = "Phantom Fragment runs code in isolated Linux sandboxes that \
start in milliseconds. Use run_code for a program in python, node, bash or sh (add `files` \
for more source or data; they appear in the working directory /workspace), run_command \
for any command line as an argv. Each call gets a fresh sandbox that is thrown away \
afterwards; create_sandbox makes one that lives between calls (exec_in_sandbox, \
write_file, read_file, list_files, snapshot_sandbox, destroy_sandbox). run_code with \
`sandbox` runs python in a code context there whose variables persist between calls \
(create_context for more than the default one). A program's \
failure is a normal result with isError set: read stderr and exit_code.";

/// A result the model reads: structured, and an error when `is_error`.
fn structured(value: &impl Serialize, is_error: bool) -> CallToolResult {
    let value = serde_json::to_value(value).expect("results serialize");
    if is_error {
        CallToolResult::structured_error(value)
    } else {
        CallToolResult::structured(value)
    }
}

/// A tool error in words.
fn error_text(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// Arguments that did not parse.
fn bad_args(message: String) -> CallToolResult {
    error_text(format!("bad arguments: {message}"))
}

/// What the engine refused or could not do.
fn failed(f: Failure) -> CallToolResult {
    error_text(match f.kind.exit_code() {
        2 => format!("bad arguments: {}", f.for_api()),
        _ => format!("failed: {}", f.for_api()),
    })
}

/// A run's or a command's result; a failing program is an error result, not a protocol
/// error.
fn run_result(report: phantom_api::RunReport, max_output: u64) -> CallToolResult {
    let is_error =
        report.exit_code != 0 || report.timed_out || report.oom_killed || report.cancelled;
    let notes = report.notes(max_output);
    structured(
        &RunResult {
            report,
            max_output_bytes: max_output,
            notes,
        },
        is_error,
    )
}

/// Whom the call acts for, or the call ends with the refusal.
macro_rules! caller {
    ($self:expr, $context:expr) => {
        match $self.caller(&$context) {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        }
    };
}

/// Parsed arguments, or the call ends with what to send.
macro_rules! args {
    ($args:expr) => {
        match $args.0 {
            Ok(a) => a,
            Err(message) => return Ok(bad_args(message)),
        }
    };
}

/// A result, or the engine's failure.
fn answer<T: Serialize>(r: Result<T, Failure>) -> Result<CallToolResult, ErrorData> {
    Ok(match r {
        Ok(v) => structured(&v, false),
        Err(f) => failed(f),
    })
}

#[tool_router]
impl PhantomMcp {
    pub fn new(engine: Arc<Engine>) -> PhantomMcp {
        let mut tool_router = Self::tool_router();
        // Descriptions that say this server's output cap.
        for route in tool_router.map.values_mut() {
            if let Some(d) = &route.attr.description {
                let d = d.replace("{max_output}", &engine.max_output.to_string());
                route.attr.description = Some(d.into());
            }
        }
        PhantomMcp {
            engine,
            tool_router,
            session_owner: Default::default(),
        }
    }

    /// A fresh instance for a new session, sharing the engine and the tools.
    pub fn for_new_session(&self) -> PhantomMcp {
        PhantomMcp {
            session_owner: Default::default(),
            ..self.clone()
        }
    }

    /// Whom a call acts for: the server's principal, or the one the HTTP front end
    /// authenticated for this request — the same for every call of a session.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<Principal, CallToolResult> {
        match &self.engine.acting {
            Acting::As(p) => Ok(p.clone()),
            Acting::PerRequest => {
                let Some(principal) = context
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|parts| parts.extensions.get::<Principal>())
                else {
                    return Err(error_text(
                        "failed: this call carries no authenticated API key".into(),
                    ));
                };
                let owner = self.session_owner.get_or_init(|| principal.owner.clone());
                if *owner != principal.owner {
                    return Err(error_text(
                        "failed: this MCP session belongs to another API key: open a session of your own (initialize)".into(),
                    ));
                }
                Ok(principal.clone())
            }
        }
    }

    /// notifications/progress while the run lasts, when the client asked for them.
    fn progress(context: &RequestContext<RoleServer>) -> Progress {
        match context.meta.get_progress_token() {
            Some(token) => {
                let peer = context.peer.clone();
                Box::new(move |elapsed_s: f64| {
                    let peer = peer.clone();
                    let param =
                        ProgressNotificationParam::new(token.clone(), progress_of(elapsed_s))
                            .with_message(format!("running for {:.0} s", elapsed_s));
                    tokio::spawn(async move {
                        let _ = peer.notify_progress(param).await;
                    });
                })
            }
            None => Box::new(|_| {}),
        }
    }

    async fn job(&self, job: Job, context: &RequestContext<RoleServer>) -> CallToolResult {
        let principal = match self.caller(context) {
            Ok(p) => p,
            Err(refused) => return refused,
        };
        match self
            .engine
            .run(principal, job, context.ct.clone(), Self::progress(context))
            .await
        {
            Ok((report, cap)) => run_result(report, cap),
            Err(f) => failed(f),
        }
    }

    #[tool(
        name = "run_code",
        title = "Run code in a fresh sandbox or a code context",
        description = "Run a program in a fresh, isolated Linux sandbox that is thrown away afterwards (no network but loopback unless the profile allows more, a private /tmp, the working directory /workspace holds `files`). language: python (python3 -c), node (node -e), bash or sh (-c); the profile defaults to the language's (python-dev, node-dev, default). Returns stdout, stderr, exit_code, timed_out, oom_killed, disk_limit_hit, output_truncated, wall_ms and notes. Output is capped at {max_output} bytes (stdout and stderr together); a program that fails is a normal result with isError set. With `sandbox` (a persistent sandbox's name) python or node code runs in a code context there instead — `context` (create_context) or the sandbox's default one — whose variables and imports persist between calls, like a notebook: returns stdout, stderr, results (the last expression's value as text/html/..., matplotlib figures as png, also sent as image content), error (name, value, traceback) and execution_count; `timeout` (default 60s) interrupts the code and the context keeps its state.",
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false),
        output_schema = code_output_schema()
    )]
    async fn run_code(
        &self,
        Parameters(args): Parameters<Args<CodeCall>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let CodeCall {
            run,
            sandbox,
            context: context_id,
        } = args!(args);
        let Some(sandbox) = sandbox else {
            if context_id.is_some() {
                return Ok(bad_args(
                    "`context` needs `sandbox`: the persistent sandbox the context runs in".into(),
                ));
            }
            return Ok(self.job(Job::Run(Box::new(run.into())), &context).await);
        };
        let principal = caller!(self, context);
        Ok(self
            .run_in_context(principal, sandbox, context_id, run, context.ct.clone())
            .await)
    }

    #[tool(
        name = "run_command",
        title = "Run a command in a fresh sandbox",
        description = "Run one command (argv, no shell unless you call one: [\"sh\", \"-c\", \"...\"]) in a fresh, isolated Linux sandbox that is thrown away afterwards. The host's /usr is visible read-only; /workspace and /tmp are empty and writable. Returns stdout, stderr, exit_code, timed_out, oom_killed, disk_limit_hit, output_truncated, wall_ms; output is capped at {max_output} bytes. A non-zero exit is a normal result with isError set.",
        annotations(read_only_hint = true, destructive_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<RunResult>()
    )]
    async fn run_command(
        &self,
        Parameters(args): Parameters<Args<CommandRun>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let run = args!(args);
        Ok(self.job(Job::Run(Box::new(run.into())), &context).await)
    }

    #[tool(
        name = "list_profiles",
        title = "List sandbox profiles",
        description = "The built-in sandbox profiles: isolation mode, network, limits, the languages they are the default for, and whether this server keeps warm sandboxes for them.",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<Profiles>()
    )]
    async fn list_profiles(
        &self,
        Parameters(args): Parameters<Args<NoParams>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        args!(args);
        let engine = self.engine.clone();
        answer(
            engine
                .blocking(caller!(self, context), |client, _| profiles(client))
                .await,
        )
    }

    #[tool(
        name = "get_metrics",
        title = "Server metrics",
        description = "Runs served (warm, pre-started, cold), failures, cancellations, timeouts, end-to-end latency percentiles, and the warm pools.",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<MetricsResult>()
    )]
    async fn get_metrics(
        &self,
        Parameters(args): Parameters<Args<NoParams>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        args!(args);
        let engine = self.engine.clone();
        let runs = engine.metrics.snapshot();
        let mode = match engine.mode {
            Mode::Zygote => "zygote",
            Mode::Cold => "cold",
        };
        let pools = engine
            .blocking(caller!(self, context), |client, _| client.pools())
            .await;
        let (pools, status) = match pools {
            Ok(p) => (p.pools, "running".to_string()),
            Err(f) => (Vec::new(), f.message),
        };
        answer(Ok::<_, Failure>(MetricsResult {
            runs,
            mode: mode.into(),
            pools,
            engine: status,
        }))
    }

    #[tool(
        name = "create_sandbox",
        title = "Create a persistent sandbox",
        description = "Create a named sandbox that lives between calls (until destroy_sandbox, its idle timeout — 15m by default — or its maximum lifetime). Run commands in it with exec_in_sandbox; move files with write_file and read_file; its /workspace persists.",
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<SandboxInfo>()
    )]
    async fn create_sandbox(
        &self,
        Parameters(args): Parameters<Args<CreateParams>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let request = args!(args);
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    Ok(client.create(principal.clone(), request)?.info.redacted())
                })
                .await,
        )
    }

    #[tool(
        name = "exec_in_sandbox",
        title = "Run a command in a persistent sandbox",
        description = "Run a command (argv, or language and code) in a sandbox made by create_sandbox, with its working directory /workspace by default. Returns stdout, stderr, exit_code, timed_out, oom_killed, disk_limit_hit, output_truncated; output is capped at {max_output} bytes. A non-zero exit is a normal result with isError set.",
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<RunResult>()
    )]
    async fn exec_in_sandbox(
        &self,
        Parameters(args): Parameters<Args<NamedExec>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let NamedExec { name, exec } = args!(args);
        if exec.background {
            return Ok(bad_args(
                "background: exec_in_sandbox waits for its command; start a background one with start_process".into(),
            ));
        }
        Ok(self.job(Job::Exec(name, Box::new(exec)), &context).await)
    }

    #[tool(
        name = "write_file",
        title = "Write a file into a sandbox",
        description = "Write text to a file of a sandbox's /workspace (created or replaced; missing directories are made).",
        annotations(read_only_hint = false, destructive_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<Written>()
    )]
    async fn write_file(
        &self,
        Parameters(args): Parameters<Args<FileWrite>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let FileWrite {
            name,
            path,
            content,
        } = args!(args);
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    let ws = client.workspace(principal.clone(), &name)?;
                    phantom_engine::sandbox::files::write_file(
                        &ws,
                        &name,
                        &path,
                        content.as_bytes(),
                        true,
                    )
                    .map_err(|e| e.to_failure())?;
                    Ok(Written {
                        path,
                        bytes: content.len(),
                    })
                })
                .await,
        )
    }

    #[tool(
        name = "read_file",
        title = "Read a file of a sandbox",
        description = "Read a file of a sandbox's /workspace (up to 16 MiB; binary content is marked and shown lossily).",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<FileContent>()
    )]
    async fn read_file(
        &self,
        Parameters(args): Parameters<Args<FilePath>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let FilePath { name, path } = args!(args);
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    let ws = client.workspace(principal.clone(), &name)?;
                    let data = phantom_engine::sandbox::files::read_file(
                        &ws,
                        &name,
                        &path,
                        MAX_READ_BYTES,
                    )
                    .map_err(|e| e.to_failure())?;
                    let text = String::from_utf8(data.clone());
                    Ok(FileContent {
                        path,
                        bytes: data.len(),
                        binary: text.is_err(),
                        content: text
                            .unwrap_or_else(|_| String::from_utf8_lossy(&data).into_owned()),
                    })
                })
                .await,
        )
    }

    #[tool(
        name = "list_files",
        title = "List a sandbox directory",
        description = "The entries of a directory of a sandbox's /workspace (symlinks are shown, never followed).",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<Listing>()
    )]
    async fn list_files(
        &self,
        Parameters(args): Parameters<Args<DirPath>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let DirPath { name, path } = args!(args);
        let path = path.unwrap_or_else(|| "/workspace".into());
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    let ws = client.workspace(principal.clone(), &name)?;
                    let entries = phantom_engine::sandbox::files::list_files(&ws, &name, &path)
                        .map_err(|e| e.to_failure())?;
                    Ok(Listing { path, entries })
                })
                .await,
        )
    }

    #[tool(
        name = "destroy_sandbox",
        title = "Destroy a sandbox",
        description = "Kill everything in a persistent sandbox and remove it with its workspace.",
        annotations(read_only_hint = false, destructive_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<SandboxInfo>()
    )]
    async fn destroy_sandbox(
        &self,
        Parameters(args): Parameters<Args<SandboxName>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let SandboxName { name } = args!(args);
        let contexts = self.engine.contexts.clone();
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    let info = client.destroy(principal.clone(), &name)?.redacted();
                    // Its interpreters died with it.
                    contexts.remove_sandbox(&principal.owner, &name);
                    Ok(info)
                })
                .await,
        )
    }

    #[tool(
        name = "list_sandboxes",
        title = "List persistent sandboxes",
        description = "The persistent sandboxes of this server's user: name, status (running, or dead with why), profile, last use.",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<Sandboxes>()
    )]
    async fn list_sandboxes(
        &self,
        Parameters(args): Parameters<Args<NoParams>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        args!(args);
        answer(
            self.engine
                .blocking(caller!(self, context), |client, principal| {
                    let list = client.list(principal.clone(), false)?;
                    Ok(Sandboxes {
                        sandboxes: list.into_iter().map(SandboxInfo::redacted).collect(),
                    })
                })
                .await,
        )
    }

    #[tool(
        name = "start_process",
        title = "Start a background process in a sandbox",
        description = "Start a command (argv, or language and code) in a persistent sandbox and return at once with its pid inside the sandbox. It runs on without a time limit, with stdin, stdout and stderr on /dev/null (redirect its output into a file in /workspace to read it later), until it exits, kill_process ends it or the sandbox goes. list_processes shows it.",
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<phantom_api::Spawned>()
    )]
    async fn start_process(
        &self,
        Parameters(args): Parameters<Args<NamedExec>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let NamedExec { name, exec } = args!(args);
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    let pid = client.exec_background(principal.clone(), &name, exec)?;
                    Ok(phantom_api::Spawned { pid })
                })
                .await,
        )
    }

    #[tool(
        name = "list_processes",
        title = "List a sandbox's processes",
        description = "The processes in a persistent sandbox: commands still running and what commands left running in the background (`server &`), with pid (inside the sandbox), command line, start (unix seconds) and state.",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<Processes>()
    )]
    async fn list_processes(
        &self,
        Parameters(args): Parameters<Args<SandboxName>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let SandboxName { name } = args!(args);
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    Ok(Processes {
                        processes: client.list_processes(principal.clone(), &name)?,
                    })
                })
                .await,
        )
    }

    #[tool(
        name = "kill_process",
        title = "Signal a process in a sandbox",
        description = "Send a signal (default term; kill, int, hup, quit, usr1, usr2, stop, cont) to a process of a persistent sandbox, by the pid list_processes shows.",
        annotations(read_only_hint = false, destructive_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<Signalled>()
    )]
    async fn kill_process(
        &self,
        Parameters(args): Parameters<Args<KillParams>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let KillParams { name, pid, signal } = args!(args);
        let signal = signal.unwrap_or(phantom_api::choice::ProcessSignal::Term);
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    client.kill_process(principal.clone(), &name, pid, signal)?;
                    Ok(Signalled { pid, signal })
                })
                .await,
        )
    }

    #[tool(
        name = "create_context",
        title = "Start a code context in a sandbox",
        description = "Start a code context — a long-lived python interpreter — in a persistent sandbox (create_sandbox). run_code with `sandbox` and this `context` runs code in it; variables, imports and open files persist between calls, like a notebook. Returns its id. It lives until delete_context, the sandbox's end, its command timeout (the sandbox's `timeout`) or this server's end.",
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<phantom_api::context::ContextInfo>()
    )]
    async fn create_context(
        &self,
        Parameters(args): Parameters<Args<ContextCreate>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let ContextCreate {
            sandbox,
            language,
            cwd,
        } = args!(args);
        let contexts = self.engine.contexts.clone();
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    let spec = phantom_engine::contexts::ContextSpec {
                        id: phantom_engine::contexts::new_id(),
                        language: language.unwrap_or_default(),
                        cwd: cwd.unwrap_or_else(|| "/workspace".into()),
                        env: Default::default(),
                    };
                    Ok(contexts
                        .start(client, principal.clone(), &sandbox, spec)?
                        .info())
                })
                .await,
        )
    }

    #[tool(
        name = "list_contexts",
        title = "List a sandbox's code contexts",
        description = "The code contexts of a persistent sandbox that this server holds: id, language, working directory, and whether its interpreter is alive (restart_context one that is not).",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<ContextList>()
    )]
    async fn list_contexts(
        &self,
        Parameters(args): Parameters<Args<ContextsOf>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let ContextsOf { sandbox } = args!(args);
        let contexts = self.engine.contexts.clone();
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    // Another owner's sandbox is "not found", as everywhere.
                    client.get(principal.clone(), &sandbox)?;
                    Ok(ContextList {
                        contexts: contexts
                            .list(&principal.owner, &sandbox)
                            .iter()
                            .map(|c| c.info())
                            .collect(),
                    })
                })
                .await,
        )
    }

    #[tool(
        name = "restart_context",
        title = "Restart a code context",
        description = "Start a code context's interpreter afresh under the same id: its variables and imports are gone (use it when a call hangs or the interpreter died).",
        annotations(read_only_hint = false, destructive_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<phantom_api::context::ContextInfo>()
    )]
    async fn restart_context(
        &self,
        Parameters(args): Parameters<Args<ContextRef>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let ContextRef {
            sandbox,
            context: id,
        } = args!(args);
        let contexts = self.engine.contexts.clone();
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    Ok(contexts
                        .restart(client, principal.clone(), &sandbox, &id)?
                        .info())
                })
                .await,
        )
    }

    #[tool(
        name = "delete_context",
        title = "Stop a code context",
        description = "Stop a code context's interpreter and forget it.",
        annotations(read_only_hint = false, destructive_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<phantom_api::context::ContextInfo>()
    )]
    async fn delete_context(
        &self,
        Parameters(args): Parameters<Args<ContextRef>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let ContextRef {
            sandbox,
            context: id,
        } = args!(args);
        let principal = caller!(self, context);
        answer(
            self.engine
                .contexts
                .remove(&principal.owner, &sandbox, &id)
                .map(|c| c.info()),
        )
    }

    #[tool(
        name = "snapshot_sandbox",
        title = "Snapshot a sandbox's workspace",
        description = "Store a sandbox's /workspace in the content-addressed snapshot store (unchanged files cost nothing); create_sandbox can start from it (from_snapshot).",
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<SnapshotResult>()
    )]
    async fn snapshot_sandbox(
        &self,
        Parameters(args): Parameters<Args<SnapshotParams>>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let SnapshotParams { name, tag } = args!(args);
        answer(
            self.engine
                .blocking(caller!(self, context), move |client, principal| {
                    use std::os::fd::AsFd;
                    let ws = client.workspace(principal.clone(), &name)?;
                    let tag = tag.unwrap_or_else(|| {
                        format!(
                            "{name}-{}",
                            phantom_engine::sandbox::utc_stamp(phantom_engine::sandbox::now_s())
                        )
                    });
                    let store = phantom_store::SnapshotStore::open_default()
                        .map_err(|e| phantom_engine::EngineError::from(e).to_failure())?;
                    let dir = phantom_engine::sandbox::files::readable_dir(&ws)
                        .map_err(|e| e.to_failure())?;
                    let info = store
                        .snapshot_at(
                            dir.as_fd(),
                            &format!("{name}:/workspace"),
                            &principal.owner,
                            &tag,
                            &Default::default(),
                            &mut |_| {},
                        )
                        .map_err(|e| phantom_engine::EngineError::from(e).to_failure())?;
                    Ok(SnapshotResult {
                        tag: info.tag,
                        files: info.files,
                        bytes: info.bytes,
                        new_chunks: info.new_chunks,
                        new_bytes: info.new_bytes,
                    })
                })
                .await,
        )
    }
}

impl PhantomMcp {
    /// `run_code` with a `sandbox`: `run.code` in the context `id` (or the sandbox's
    /// default python context, started at its first use).
    async fn run_in_context(
        &self,
        principal: Principal,
        sandbox: String,
        id: Option<String>,
        run: CodeRun,
        ct: tokio_util::sync::CancellationToken,
    ) -> CallToolResult {
        use phantom_api::context::{CodeResult, ContextLanguage, ContextRun};
        use phantom_engine::contexts::{call_timeout, ContextSpec};
        let CodeRun {
            language,
            code,
            options,
        } = run;
        let language = match language {
            phantom_api::choice::Language::Python => ContextLanguage::Python,
            phantom_api::choice::Language::Node => ContextLanguage::Javascript,
            other => {
                return bad_args(format!(
                    "language {other}: a code context runs python or node; run {other} in the sandbox with exec_in_sandbox"
                ))
            }
        };
        let mut rest = options.clone();
        rest.env = Default::default();
        rest.limits.timeout = None;
        if rest != phantom_api::request::RunOptions::default() {
            return bad_args(
                "with `sandbox`, run_code takes language, code, env and timeout only (the sandbox's own profile, limits and files apply): leave out the others".into(),
            );
        }
        let timeout = match call_timeout(&ContextRun {
            timeout: options.limits.timeout.clone(),
            ..ContextRun::default()
        }) {
            Ok(t) => t,
            Err(f) => return failed(f),
        };
        let (engine, env) = (self.engine.clone(), options.env);
        let r = self
            .engine
            .blocking(principal, move |client, principal| {
                let contexts = &engine.contexts;
                let context = match id {
                    Some(id) => contexts.get(&principal.owner, &sandbox, &id)?,
                    None => {
                        match contexts.get(&principal.owner, &sandbox, &language.default_context())
                        {
                            Ok(c) => c,
                            Err(_) => contexts.start(
                                client,
                                principal.clone(),
                                &sandbox,
                                ContextSpec {
                                    id: language.default_context(),
                                    language,
                                    cwd: "/workspace".into(),
                                    env: Default::default(),
                                },
                            )?,
                        }
                    }
                };
                let mut result = CodeResult::default();
                context.execute(
                    &code,
                    &env,
                    timeout,
                    engine.max_output,
                    &mut |e| {
                        result.add(e);
                        true
                    },
                    &|| ct.is_cancelled() || engine.stopping(),
                )?;
                Ok(ContextCodeResult {
                    context: context.id.clone(),
                    images: 0,
                    result,
                })
            })
            .await;
        match r {
            Ok(result) => context_result(result),
            Err(f) => failed(f),
        }
    }
}

/// A context call's result: structured, with its figures as image content instead of
/// base64 text in `results` (a model reads images, not 50 kB of base64); an error when
/// the code raised or timed out.
fn context_result(mut result: ContextCodeResult) -> CallToolResult {
    let is_error = result.result.error.is_some() || result.result.timed_out;
    let mut images = Vec::new();
    for r in &mut result.result.results {
        if let Some(png) = r.png.take() {
            images.push(ContentBlock::image(png, "image/png"));
        }
    }
    result.images = images.len();
    let mut answer = structured(&result, is_error);
    answer.content.extend(images);
    answer
}

/// `run_code`'s output schema: a fresh sandbox's [`RunResult`] or a context's
/// [`ContextCodeResult`] (an object either way).
fn code_output_schema() -> Arc<rmcp::model::JsonObject> {
    let mut defs = serde_json::Map::new();
    let mut defs_key = "$defs";
    let mut branches = Vec::new();
    for schema in [
        schema_for_output::<RunResult>(),
        schema_for_output::<ContextCodeResult>(),
    ] {
        let mut schema = (*schema).clone();
        for key in ["$defs", "definitions"] {
            if let Some(serde_json::Value::Object(d)) = schema.remove(key) {
                defs_key = key;
                defs.extend(d);
            }
        }
        schema.remove("$schema");
        branches.push(serde_json::Value::Object(schema));
    }
    let mut out = serde_json::Map::new();
    out.insert("type".into(), "object".into());
    out.insert("anyOf".into(), branches.into());
    if !defs.is_empty() {
        out.insert(defs_key.into(), defs.into());
    }
    Arc::new(out)
}

/// The built-in profiles, as `list_profiles` shows them.
fn profiles(client: &phantom_engine::EngineClient) -> Result<Profiles, Failure> {
    use phantom_api::choice::Language;
    let warm: Vec<String> = client
        .pools()
        .map(|s| {
            s.pools
                .into_iter()
                .filter(|p| p.image.is_none())
                .map(|p| p.profile)
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for name in phantom_policy::builtin_names() {
        let compiled = phantom_policy::load_builtin(name).and_then(|p| {
            let plan = phantom_policy::compile(&p, &phantom_policy::Overrides::default())?;
            Ok((p, plan))
        });
        let (profile, plan) = compiled.map_err(|e| {
            Failure::new(
                phantom_api::engine::FailureKind::Failed,
                format!("built-in profile {name}: {e}"),
            )
        })?;
        let default_for: Vec<String> = Language::ALL
            .iter()
            .filter(|l| l.default_profile() == *name)
            .map(|l| l.to_string())
            .chain((*name == phantom_policy::DEFAULT_PROFILE).then(|| "run_command".to_string()))
            .collect();
        out.push(ProfileInfo {
            name: name.to_string(),
            description: profile.description.clone().unwrap_or_default(),
            mode: plan
                .mode
                .as_str()
                .parse()
                .expect("the policy's modes are the API's"),
            network: plan
                .network
                .as_str()
                .parse()
                .expect("the policy's networks are the API's"),
            memory_bytes: plan.limits.memory_bytes,
            pids: plan.limits.pids,
            timeout_ms: plan.limits.wall_timeout_ms,
            default_for,
            warm: warm.iter().any(|w| w == name),
        });
    }
    Ok(Profiles { profiles: out })
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PhantomMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "phantom-fragment",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }

    /// The router's, except that an unknown tool's error names the tools there are
    /// (a model that guessed a name learns the right one).
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        if !self.tool_router.has_route(&request.name) {
            let mut names: Vec<String> = self
                .tool_router
                .list_all()
                .into_iter()
                .map(|t| t.name.to_string())
                .collect();
            names.sort();
            return Err(ErrorData::invalid_params(
                format!(
                    "no tool named `{}`; the tools are: {}",
                    request.name,
                    names.join(", ")
                ),
                None,
            ));
        }
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        self.tool_router.call(call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_increases_between_ticks_in_the_same_second() {
        assert!(progress_of(1.0004) < progress_of(1.9));
        assert!(progress_of(2.0) > progress_of(1.998));
    }

    #[test]
    fn a_failing_program_is_an_error_result_not_a_protocol_error() {
        let report = |exit_code| phantom_api::RunReport {
            sandbox_id: "x".into(),
            profile: "default".into(),
            mode: phantom_api::choice::Mode::Sandbox,
            start: phantom_api::choice::StartKind::Cold,
            exit_code,
            signal: None,
            timed_out: false,
            oom_killed: false,
            disk_limit_hit: false,
            full_filesystems: Vec::new(),
            output_truncated: exit_code == 0,
            cancelled: false,
            wall_ms: 1.0,
            user_ms: 0.0,
            sys_ms: 0.0,
            max_rss_kb: 0,
            stdout: Some("out".into()),
            stderr: Some(String::new()),
            isolation: Default::default(),
            warnings: Vec::new(),
            network: None,
            wasm: None,
        };
        let r = run_result(report(3), 1024);
        assert_eq!(r.is_error, Some(true));
        let v = r.structured_content.unwrap();
        assert_eq!(v["exit_code"], 3);
        assert_eq!(v["stdout"], "out");
        let r = run_result(report(0), 1024);
        assert_eq!(r.is_error, Some(false));
        let notes = r.structured_content.unwrap()["notes"].clone();
        assert!(
            notes.to_string().contains("truncated at 1024 bytes"),
            "{notes}"
        );
    }
}
