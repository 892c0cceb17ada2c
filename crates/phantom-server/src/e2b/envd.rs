//! E2B's in-sandbox daemon, envd (port 49983), over the sandbox's engine: the process
//! service of `spec/envd/process/process.proto` (Connect, JSON codec) and `/health`.
//!
//! A process is an exec in the persistent sandbox: `Start` streams its start (a pid
//! of ours), its output as it comes and its end; `Connect` attaches to a running one
//! and streams what comes from then on; `SendInput`, `StreamInput` and `CloseStdin`
//! write to and close its stdin (a pipe, unless it was started with `stdin: false`);
//! `SendSignal` (SIGTERM, SIGKILL) kills it; `List` shows the ones running. As in
//! E2B, a process outlives the stream that started it (the SDK's `disconnect()`),
//! bounded by the timeout its `Start` asked for and by the sandbox's life. Every call
//! needs the sandbox's `X-Access-Token` and acts for the sandbox's owner, whose key
//! must still be valid.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use phantom_api::access::{Owner, Principal};
use phantom_api::request::{ExecRequest, Quantity};
use phantom_engine::client::{Output, RunIo, Stdin, Stream, Wake};
use phantom_engine::sandbox::watch::{Change, Watch, WatchEvent};
use serde::Deserialize;
use serde_json::{json, Value};

use super::connect::{self, Code, Error};
use super::registry::{same_token, Record};
use super::SandboxId;
use crate::handlers::{self, Cancel};
use crate::App;

/// Processes started through envd and still running: by sandbox, then pid; and the
/// directory watchers of `CreateWatcher`, by id (with their sandbox).
#[derive(Default)]
pub struct Processes {
    running: Mutex<BTreeMap<(String, u32), Running>>,
    watchers: Mutex<BTreeMap<String, (String, Watch)>>,
}

/// The most `CreateWatcher` watchers a sandbox keeps at once.
const MAX_WATCHERS: usize = 64;

/// A running process: what `List` shows, what kills it, its stdin and its events.
struct Running {
    config: Value,
    tag: Option<String>,
    kill: handlers::Stopper,
    /// The write end of its stdin; None once closed (or when started without one).
    stdin: Option<Arc<Mutex<Option<std::io::PipeWriter>>>>,
    /// The master of its pseudo-terminal, when it was started with one.
    pty: Option<Arc<OwnedFd>>,
    /// Its events as they come, for `Connect` (a late subscriber sees what follows).
    events: tokio::sync::broadcast::Sender<Bytes>,
}

impl Processes {
    /// `f` of the process of `sandbox` that `selector` names.
    fn with<T>(
        &self,
        sandbox: &str,
        selector: &Selector,
        f: impl FnOnce(u32, &Running) -> T,
    ) -> Result<T, Error> {
        let running = self.running.lock().expect("processes");
        running
            .iter()
            .find(|((id, pid), r)| {
                id == sandbox
                    && (selector.pid == Some(*pid)
                        || (selector.tag.is_some() && r.tag == selector.tag))
            })
            .map(|((_, pid), r)| f(*pid, r))
            .ok_or_else(|| {
                Error::new(
                    Code::NotFound,
                    format!(
                        "process {} not found",
                        selector
                            .pid
                            .map(|p| p.to_string())
                            .or(selector.tag.clone())
                            .unwrap_or_default()
                    ),
                )
            })
    }
}

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/health", get(health))
        .route("/process.Process/StreamInput", post(stream_input))
        .route("/process.Process/{method}", post(process))
        .route("/filesystem.Filesystem/{method}", post(filesystem))
        .route("/files", get(download).post(upload))
}

async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The sandbox a request is for, checked: its token (`X-Access-Token`, or
/// `E2B-Traffic-Access-Token`, which the code interpreter's SDK sends on some calls),
/// and its owner's key.
pub(super) async fn sandbox(
    app: &Arc<App>,
    id: &SandboxId,
    headers: &HeaderMap,
) -> Result<(Record, Principal), Error> {
    let gone = || Error::new(Code::NotFound, format!("sandbox \"{}\" not found", id.0));
    let record = app.e2b.registry.get(&id.0).ok_or_else(gone)?;
    let token = headers
        .get("x-access-token")
        .or_else(|| headers.get("e2b-traffic-access-token"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !same_token(token, &record.token) {
        // A wrong token and an unknown sandbox look the same.
        return Err(gone());
    }
    if record.paused {
        return Err(Error::new(
            Code::FailedPrecondition,
            format!(
                "sandbox \"{}\" is paused: connect to it (Sandbox.connect) to resume it",
                id.0
            ),
        ));
    }
    let principal = owner(app, &record.owner).await?;
    Ok((record, principal))
}

/// The principal of key `id`, when it is still valid.
async fn owner(app: &Arc<App>, id: &str) -> Result<Principal, Error> {
    if let Some(grants) = app.e2b.owner_cached(id, app.state_dir.as_deref()) {
        return Ok(Principal {
            owner: Owner::Key(id.to_string()),
            grants,
        });
    }
    let dir = app.state_dir.clone();
    let key_id = id.to_string();
    let file_key = app.file_keys.iter().any(|(k, _)| k == id);
    let key = tokio::task::spawn_blocking(move || {
        let keys = match &dir {
            Some(dir) => phantom_state::keys::Keys::open(dir),
            None => phantom_state::keys::Keys::open_default(),
        };
        keys.and_then(|k| k.find(&key_id))
    })
    .await
    .map_err(|e| Error::new(Code::Internal, format!("worker failed: {e}")))?
    .map_err(|e| {
        eprintln!("phantom-supervisor: the key database: {e}");
        Error::new(Code::Internal, "the key database could not be read")
    })?;
    let grants = match key {
        Some(k) if k.revoked.is_none() => k.grants,
        Some(_) => {
            return Err(Error::new(
                Code::Unauthenticated,
                format!("the API key {id} that made this sandbox was revoked"),
            ))
        }
        None if file_key => phantom_api::access::Grants::default_key(),
        None => {
            return Err(Error::new(
                Code::Unauthenticated,
                format!("the API key {id} that made this sandbox is unknown"),
            ))
        }
    };
    app.e2b
        .remember_owner(id, grants.clone(), app.state_dir.as_deref());
    Ok(Principal {
        owner: Owner::Key(id.to_string()),
        grants,
    })
}

/// `process.Process/METHOD`.
async fn process(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (record, principal) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(e) if method == "Start" || method == "Connect" => return stream_error(e),
        Err(e) => return e.into_response(),
    };
    let result = match method.as_str() {
        "Start" => return start(app, record, principal, &headers, &body).await,
        "Connect" => return attach(&app, &record, &headers, &body),
        "List" => list(&app, &record),
        "SendSignal" => send_signal(&app, &record, &body).await,
        "SendInput" => send_input(&app, &record, &body).await,
        "CloseStdin" => close_stdin(&app, &record, &body),
        "Update" => update(&app, &record, &body),
        other => Err(Error::new(
            Code::NotFound,
            format!("process.Process has no method {other}"),
        )),
    };
    match result {
        Ok(message) => connect::unary_ok(message),
        Err(e) => e.into_response(),
    }
}

/// A streaming call that fails before it starts: HTTP 200, no message, the error at
/// the end of the stream (as the protocol says).
fn stream_error(e: Error) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, connect::STREAM_JSON)],
        connect::end_stream(Some(&e)),
    )
        .into_response()
}

/// `ProcessConfig` and `StartRequest` as the JSON codec writes them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRequest {
    process: ProcessConfig,
    #[serde(default)]
    pty: Option<PtyConfig>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    stdin: Option<bool>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ProcessConfig {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
}

/// `PTY`: the terminal's size.
#[derive(Debug, Deserialize, Default)]
struct PtyConfig {
    #[serde(default)]
    size: Option<PtySize>,
}

#[derive(Debug, Deserialize, Default)]
struct PtySize {
    #[serde(default)]
    cols: u16,
    #[serde(default)]
    rows: u16,
}

impl PtyConfig {
    /// Columns and rows (80 x 24 for what is absent or zero).
    fn size(&self) -> (u16, u16) {
        let (cols, rows) = self.size.as_ref().map_or((0, 0), |s| (s.cols, s.rows));
        (
            if cols == 0 { 80 } else { cols },
            if rows == 0 { 24 } else { rows },
        )
    }
}

/// How often a stream says it is alive when the client asked for it
/// (`Keepalive-Ping-Interval`, seconds).
fn keepalive(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s.min(3600)))
}

fn event(e: Value) -> Bytes {
    connect::envelope(&json!({ "event": e }))
}

/// `Start`: run the process as an exec of the sandbox and stream its events.
async fn start(
    app: Arc<App>,
    record: Record,
    principal: Principal,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let request: StartRequest = match connect::single_message(headers, body) {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let config = request.process;
    if config.cmd.is_empty() {
        return stream_error(Error::new(Code::InvalidArgument, "process.cmd is empty"));
    }
    // A terminal when asked for one (its slave is stdin, stdout and stderr); else a
    // pipe unless the call says `stdin: false` (absent means true, the proto's default
    // for older SDKs; today's send false unless told `stdin=True`).
    let mut terminal = None;
    let (stdin, stdin_writer) = if let Some(pty) = &request.pty {
        let (cols, rows) = pty.size();
        match phantom_engine::terminal::open_pty(cols, rows) {
            Ok((master, slave)) => {
                terminal = Some(Arc::new(master));
                (Stdin::Terminal(slave), None)
            }
            Err(e) => return stream_error(Error::new(Code::Internal, format!("a terminal: {e}"))),
        }
    } else if request.stdin == Some(false) {
        (Stdin::Null, None)
    } else {
        match std::io::pipe() {
            Ok((read, write)) => (
                Stdin::Pipe(OwnedFd::from(read)),
                Some(Arc::new(Mutex::new(Some(write)))),
            ),
            Err(e) => return stream_error(Error::new(Code::Internal, format!("pipe: {e}"))),
        }
    };
    // E2B's template conventions: HOME and USER of its user; the sandbox's envVars,
    // then the call's.
    let mut env: BTreeMap<String, String> = [
        ("HOME".to_string(), "/home/user".to_string()),
        ("USER".to_string(), "user".to_string()),
    ]
    .into();
    env.extend(record.env_vars.clone());
    env.extend(config.envs.clone());
    let mut argv = vec![config.cmd.clone()];
    argv.extend(config.args.iter().cloned());
    let exec = ExecRequest {
        argv: Some(argv),
        env,
        cwd: config.cwd.clone(),
        // The client's deadline bounds the stream; the process ends with it.
        timeout: connect::timeout_ms(headers).map(|ms| Quantity(format!("{ms}ms"))),
        ..ExecRequest::default()
    };
    let pid = app.e2b.next_pid.fetch_add(1, Ordering::SeqCst);
    let cancel = match Cancel::new() {
        Ok(c) => c,
        Err(e) => return stream_error(Error::new(Code::Internal, e.message)),
    };
    let run_side = match cancel.run_side.try_clone() {
        Ok(fd) => fd,
        Err(e) => return stream_error(Error::new(Code::Internal, e.to_string())),
    };
    let key = (record.id.clone(), pid);
    let (watchers, _) = tokio::sync::broadcast::channel::<Bytes>(256);
    app.e2b_processes.running.lock().expect("processes").insert(
        key.clone(),
        Running {
            config: serde_json::to_value(&config).unwrap_or(Value::Null),
            tag: request.tag.clone(),
            kill: cancel.stopper(),
            stdin: stdin_writer,
            pty: terminal.clone(),
            events: watchers.clone(),
        },
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let engine = app.engine.clone();
    let name = record.id.clone();
    let runtime = tokio::runtime::Handle::current();
    // Every event goes to the starting stream (which may be gone: then only to
    // `Connect`ed ones) and to whoever attached with `Connect`.
    let emit = {
        let (tx, watchers, runtime) = (tx.clone(), watchers.clone(), runtime.clone());
        move |e: Bytes| {
            let _ = watchers.send(e.clone());
            let _ = runtime.block_on(tx.send(e));
        }
    };
    let permit = match app
        .workers
        .acquire(&record.owner, app.deadlines.queue)
        .await
    {
        Ok(p) => p,
        Err(r) => {
            app.e2b_processes
                .running
                .lock()
                .expect("processes")
                .remove(&key);
            let f = handlers::refused(&app, r);
            return stream_error(Error::new(Code::of_status(f.status), f.message));
        }
    };
    // A terminal's output is read from its master by a thread of its own, from the
    // process's start until it is over and the terminal has gone quiet.
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (pumped_tx, pumped) = tokio::sync::oneshot::channel::<()>();
    let mut pump = terminal
        .clone()
        .map(|master| (master, emit.clone(), over.clone(), pumped_tx));
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut started = false;
        let mut on_started = |_: &phantom_api::engine::Started| {
            started = true;
            emit(event(json!({ "start": { "pid": pid } })));
            if let Some((master, emit, over, pumped)) = pump.take() {
                std::thread::spawn(move || {
                    pump_terminal(&master, &emit, &over);
                    let _ = pumped.send(());
                });
            }
        };
        let emit_data = emit.clone();
        let mut send = move |stream: Stream, data: &[u8]| {
            let which = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(data);
            emit_data(event(json!({ "data": { which: encoded } })));
        };
        let io = RunIo {
            stdin,
            output: Output::Stream(&mut send),
            wake: Wake::Cancel(run_side.as_fd()),
            on_started: Some(&mut on_started),
        };
        engine.exec(principal, &name, exec, io)
    });
    let keep = keepalive(headers);
    let done_app = app.clone();
    tokio::spawn(async move {
        let result = task.await;
        // The process is over: nothing can kill it any more; what its terminal still
        // holds comes before its end.
        drop(cancel);
        over.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(2), pumped).await;
        let (end, error) = match result {
            Ok(Ok(report)) => {
                let (status, exit_code) = match report.signal {
                    Some(sig) => (format!("signal: {}", signal_name(sig)), -1),
                    None => (
                        format!("exit status {}", report.exit_code),
                        report.exit_code,
                    ),
                };
                let mut end = json!({
                    "exitCode": exit_code,
                    "exited": report.signal.is_none(),
                    "status": status,
                });
                if report.timed_out {
                    end["error"] = json!("the process ran past its timeout and was killed");
                }
                (Some(end), None)
            }
            Ok(Err(failure)) => {
                let f = crate::handlers::ApiFailure::from(failure);
                (None, Some(Error::new(Code::of_status(f.status), f.message)))
            }
            Err(e) => (
                None,
                Some(Error::new(Code::Internal, format!("worker failed: {e}"))),
            ),
        };
        if let Some(end) = end {
            let end = event(json!({ "end": end }));
            let _ = watchers.send(end.clone());
            let _ = tx.send(end).await;
        }
        // Gone from `List`; its stdin closes, and `Connect`ed streams end (the last
        // sender of their events goes with it).
        done_app
            .e2b_processes
            .running
            .lock()
            .expect("processes")
            .remove(&key);
        drop(watchers);
        let _ = tx.send(connect::end_stream(error.as_ref())).await;
    });
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        let next = match keep {
            // Quiet for the interval: a keepalive event, so that the client's idle
            // timers do not fire while the process works.
            Some(k) => match tokio::time::timeout(k, rx.recv()).await {
                Ok(m) => m,
                Err(_) => Some(event(json!({ "keepalive": {} }))),
            },
            None => rx.recv().await,
        };
        next.map(|m| (Ok::<_, std::convert::Infallible>(m), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, connect::STREAM_JSON)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Send what the process writes to its terminal as `pty` data events until every
/// slave is closed, or the process is `over` and the terminal stays quiet.
fn pump_terminal(master: &OwnedFd, emit: &impl Fn(Bytes), over: &std::sync::atomic::AtomicBool) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut quiet = 0;
    loop {
        match phantom_engine::terminal::read_master(
            master.as_fd(),
            &mut buf,
            Duration::from_millis(100),
        ) {
            Ok(Some(0)) | Err(_) => return,
            Ok(Some(n)) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                emit(event(json!({ "data": { "pty": encoded } })));
            }
            Ok(None) if over.load(Ordering::SeqCst) => {
                quiet += 1;
                if quiet >= 3 {
                    return;
                }
            }
            Ok(None) => {}
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        9 => "killed",
        15 => "terminated",
        2 => "interrupt",
        6 => "aborted",
        11 => "segmentation fault",
        _ => "signal",
    }
}

/// `List`: the processes started through envd that still run.
fn list(app: &App, record: &Record) -> Result<Value, Error> {
    let running = app.e2b_processes.running.lock().expect("processes");
    let processes: Vec<Value> = running
        .iter()
        .filter(|((sandbox, _), _)| *sandbox == record.id)
        .map(|((_, pid), r)| {
            let mut info = json!({ "config": r.config, "pid": pid });
            if let Some(tag) = &r.tag {
                info["tag"] = json!(tag);
            }
            info
        })
        .collect();
    Ok(json!({ "processes": processes }))
}

#[derive(Debug, Deserialize)]
struct Selector {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SignalRequest {
    process: Selector,
    #[serde(default)]
    signal: Option<Value>,
}

/// `SendSignal`: SIGTERM and SIGKILL both end the process (the engine kills an
/// exec's processes); answered once it has ended (2 s at most), so that a `List`
/// right after no longer shows it.
async fn send_signal(app: &App, record: &Record, body: &[u8]) -> Result<Value, Error> {
    let request: SignalRequest = connect::unary_message(body)?;
    match &request.signal {
        Some(Value::String(s)) if s == "SIGNAL_SIGTERM" || s == "SIGNAL_SIGKILL" => {}
        Some(Value::Number(n)) if n.as_u64() == Some(9) || n.as_u64() == Some(15) => {}
        other => {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("signal {other:?}: SIGNAL_SIGTERM or SIGNAL_SIGKILL"),
            ))
        }
    }
    let key = app
        .e2b_processes
        .with(&record.id, &request.process, |pid, r| {
            r.kill.stop();
            (record.id.clone(), pid)
        })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline
        && app
            .e2b_processes
            .running
            .lock()
            .expect("processes")
            .contains_key(&key)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(json!({}))
}

#[derive(Debug, Deserialize)]
struct ProcessOnly {
    process: Selector,
}

/// `ProcessInput`: stdin bytes (base64 in the JSON codec); a PTY's are refused.
#[derive(Debug, Deserialize, Default)]
struct Input {
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    pty: Option<String>,
}

/// Where input goes.
enum Sink {
    Stdin(Arc<Mutex<Option<std::io::PipeWriter>>>),
    Terminal(Arc<OwnedFd>),
}

impl Input {
    /// The bytes, and whether they are for a terminal.
    fn bytes(self) -> Result<(Vec<u8>, bool), Error> {
        let (data, pty, field) = match (self.stdin, self.pty) {
            (Some(d), _) => (d, false, "input.stdin"),
            (None, Some(d)) => (d, true, "input.pty"),
            (None, None) => return Ok((Vec::new(), false)),
        };
        base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map(|b| (b, pty))
            .map_err(|e| Error::new(Code::InvalidArgument, format!("{field}: {e}")))
    }
}

#[derive(Debug, Deserialize)]
struct InputRequest {
    process: Selector,
    #[serde(default)]
    input: Input,
}

/// The stdin of the process `selector` names, or why there is none.
fn stdin_of(
    app: &App,
    record: &Record,
    selector: &Selector,
) -> Result<Arc<Mutex<Option<std::io::PipeWriter>>>, Error> {
    app.e2b_processes
        .with(&record.id, selector, |_, r| r.stdin.clone())?
        .ok_or_else(|| {
            Error::new(
                Code::FailedPrecondition,
                "the process was started without stdin: start it with stdin=True (or write to its PTY)",
            )
        })
}

/// The terminal of the process `selector` names, or why there is none.
fn terminal_of(app: &App, record: &Record, selector: &Selector) -> Result<Arc<OwnedFd>, Error> {
    app.e2b_processes
        .with(&record.id, selector, |_, r| r.pty.clone())?
        .ok_or_else(|| {
            Error::new(
                Code::FailedPrecondition,
                "the process was started without a PTY: send its input as stdin",
            )
        })
}

fn sink_of(app: &App, record: &Record, selector: &Selector, pty: bool) -> Result<Sink, Error> {
    if pty {
        terminal_of(app, record, selector).map(Sink::Terminal)
    } else {
        stdin_of(app, record, selector).map(Sink::Stdin)
    }
}

/// Write `data` where it goes (from a blocking thread: a process that does not read
/// fills its pipe or terminal).
async fn write_input(sink: Sink, data: Vec<u8>) -> Result<(), Error> {
    match sink {
        Sink::Stdin(pipe) => write_stdin(pipe, data).await,
        Sink::Terminal(master) => tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            phantom_engine::terminal::write_master(master.as_fd(), &data, deadline).map_err(|e| {
                Error::new(
                    Code::FailedPrecondition,
                    format!("the process's terminal does not take input: {e}"),
                )
            })
        })
        .await
        .map_err(|e| Error::new(Code::Internal, format!("worker failed: {e}")))?,
    }
}

/// Write `data` to a process's stdin (from a blocking thread: a process that does not
/// read fills the pipe).
async fn write_stdin(
    pipe: Arc<Mutex<Option<std::io::PipeWriter>>>,
    data: Vec<u8>,
) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || {
        let mut pipe = pipe.lock().expect("stdin");
        let Some(writer) = pipe.as_mut() else {
            return Err(Error::new(
                Code::FailedPrecondition,
                "the process's stdin is closed (CloseStdin)",
            ));
        };
        writer.write_all(&data).map_err(|e| {
            Error::new(
                Code::FailedPrecondition,
                format!("the process no longer reads its stdin: {e}"),
            )
        })
    })
    .await
    .map_err(|e| Error::new(Code::Internal, format!("worker failed: {e}")))?
}

/// `SendInput`: bytes to the process's stdin.
async fn send_input(app: &App, record: &Record, body: &[u8]) -> Result<Value, Error> {
    let request: InputRequest = connect::unary_message(body)?;
    let (data, pty) = request.input.bytes()?;
    let sink = sink_of(app, record, &request.process, pty)?;
    write_input(sink, data).await?;
    Ok(json!({}))
}

#[derive(Debug, Deserialize)]
struct UpdateRequest {
    process: Selector,
    #[serde(default)]
    pty: Option<PtyConfig>,
}

/// `Update`: a new size for the process's terminal.
fn update(app: &App, record: &Record, body: &[u8]) -> Result<Value, Error> {
    let request: UpdateRequest = connect::unary_message(body)?;
    let master = terminal_of(app, record, &request.process)?;
    if let Some(pty) = request.pty {
        let (cols, rows) = pty.size();
        phantom_engine::terminal::resize(master.as_fd(), cols, rows)
            .map_err(|e| Error::new(Code::Internal, e.to_string()))?;
    }
    Ok(json!({}))
}

/// `CloseStdin`: end of file on the process's stdin.
fn close_stdin(app: &App, record: &Record, body: &[u8]) -> Result<Value, Error> {
    let request: ProcessOnly = connect::unary_message(body)?;
    if terminal_of(app, record, &request.process).is_ok() {
        return Err(Error::new(
            Code::FailedPrecondition,
            "a PTY has no stdin to close: send Ctrl-D (0x04) to it instead",
        ));
    }
    let pipe = stdin_of(app, record, &request.process)?;
    drop(pipe.lock().expect("stdin").take());
    Ok(json!({}))
}

/// `StreamInput` (client streaming): a `start` naming the process, then `data`
/// messages written to its stdin as they arrive, in order; answered when the client
/// ends its stream.
pub(super) async fn stream_input(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let (record, _) = sandbox(&app, &id, &headers).await?;
        connect::check_stream_type(&headers)?;
        let mut frames = body.into_data_stream();
        let mut buf = Vec::new();
        let mut process = None;
        loop {
            while let Some(message) = connect::next_message::<StreamInputRequest>(&mut buf)? {
                match message {
                    StreamInputRequest {
                        start: Some(start), ..
                    } => process = Some(start.process),
                    StreamInputRequest { data: Some(d), .. } => {
                        let selector = process.as_ref().ok_or_else(|| {
                            Error::new(
                                Code::InvalidArgument,
                                "a data message before the start message that names the process",
                            )
                        })?;
                        let (data, pty) = d.input.bytes()?;
                        write_input(sink_of(&app, &record, selector, pty)?, data).await?;
                    }
                    _ => {} // keepalive
                }
            }
            match futures_util::StreamExt::next(&mut frames).await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(Error::new(
                        Code::InvalidArgument,
                        format!("the request: {e}"),
                    ))
                }
                None if buf.is_empty() => return Ok(()),
                None => {
                    return Err(Error::new(
                        Code::InvalidArgument,
                        "the stream ended inside a message",
                    ))
                }
            }
        }
    }
    .await;
    let mut out = result
        .as_ref()
        .map_or_else(|_| Vec::new(), |()| connect::envelope(&json!({})).to_vec());
    out.extend_from_slice(&connect::end_stream(result.err().as_ref()));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, connect::STREAM_JSON)],
        out,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct StreamInputRequest {
    #[serde(default)]
    start: Option<ProcessOnly>,
    #[serde(default)]
    data: Option<StreamData>,
}

#[derive(Debug, Deserialize)]
struct StreamData {
    #[serde(default)]
    input: Input,
}

/// `Connect`: attach to a running process; its events from now on, then its end.
fn attach(app: &App, record: &Record, headers: &HeaderMap, body: &[u8]) -> Response {
    let request: ProcessOnly = match connect::single_message(headers, body) {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let (pid, events) = match app
        .e2b_processes
        .with(&record.id, &request.process, |pid, r| {
            (pid, r.events.subscribe())
        }) {
        Ok(found) => found,
        Err(e) => return stream_error(e),
    };
    use tokio::sync::broadcast::error::RecvError;
    let keep = keepalive(headers);
    let first = event(json!({ "start": { "pid": pid } }));
    let stream = futures_util::stream::unfold(
        (Some(first), Some(events)),
        move |(first, events)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, std::convert::Infallible>(first), (None, events)));
            }
            let mut events = events?;
            loop {
                let next = match keep {
                    Some(k) => match tokio::time::timeout(k, events.recv()).await {
                        Ok(m) => m,
                        Err(_) => Ok(event(json!({ "keepalive": {} }))),
                    },
                    None => events.recv().await,
                };
                match next {
                    Ok(m) => return Some((Ok(m), (None, Some(events)))),
                    // A slow reader misses what it could not take, as a late one does.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => {
                        return Some((Ok(connect::end_stream(None)), (None, None)))
                    }
                }
            }
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, connect::STREAM_JSON)],
        Body::from_stream(stream),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Files: the filesystem service and /files
// ---------------------------------------------------------------------------------------

/// E2B's home, which is our workspace in the `e2b` profile.
pub const HOME: &str = "/home/user";

/// An E2B path (absolute, or relative to the home) as a workspace path of ours; only
/// the home is reachable.
fn workspace_path(path: &str) -> Result<String, Error> {
    let path = path.trim();
    let rel = if path.is_empty() || path == "~" {
        ""
    } else if let Some(rest) = path.strip_prefix("~/") {
        rest
    } else if path == HOME {
        ""
    } else if let Some(rest) = path.strip_prefix(&format!("{HOME}/")) {
        rest
    } else if !path.starts_with('/') {
        path
    } else {
        return Err(Error::new(
            Code::InvalidArgument,
            format!("path '{path}': only {HOME} (the sandbox's workspace) is reachable through the file API; use a path below it, or a command for other places"),
        ));
    };
    Ok(format!("/workspace/{}", rel.trim_start_matches('/')))
}

/// How E2B shows a workspace path.
fn shown_path(workspace_path: &str) -> String {
    let rel = workspace_path
        .trim_start_matches("/workspace")
        .trim_matches('/');
    if rel.is_empty() {
        HOME.to_string()
    } else {
        format!("{HOME}/{rel}")
    }
}

/// An engine failure about a path as a Connect error (not found stays not found),
/// naming paths as E2B does (`/home/user/...`).
fn path_error(name: &str, e: phantom_engine::EngineError) -> Error {
    let f = e.to_failure();
    let text = f
        .for_api()
        .replace(&format!("{name}:/workspace"), HOME)
        .replace("/workspace", HOME);
    let code = if text.contains("no such file or directory") {
        Code::NotFound
    } else if matches!(f.kind.exit_code(), 2) {
        Code::InvalidArgument
    } else {
        Code::Internal
    };
    Error::new(code, text)
}

/// `rwxr-xr-x` of a mode, with the type's letter first.
fn permissions(kind: phantom_api::choice::FileKind, mode: u32) -> String {
    use phantom_api::choice::FileKind;
    let mut s = String::from(match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// E2B's `EntryInfo` (the JSON codec: int64 as a string, enums by name).
fn entry_info(path: &str, info: &phantom_engine::sandbox::fsops::PathInfo) -> Value {
    use phantom_api::choice::FileKind;
    let kind = match info.entry.kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        _ => "FILE_TYPE_UNSPECIFIED",
    };
    let name = path.rsplit('/').next().unwrap_or(path);
    let (secs, nanos) = info.modified;
    let mut v = json!({
        "name": name,
        "type": kind,
        "path": path,
        "size": info.entry.size.to_string(),
        "mode": info.entry.mode,
        "permissions": permissions(info.entry.kind, info.entry.mode),
        "owner": "user",
        "group": "user",
        "modifiedTime": format!("{}.{nanos:09}Z", super::rfc3339(secs.max(0) as u64).trim_end_matches('Z')),
    });
    if let Some(t) = &info.entry.target {
        v["symlinkTarget"] = json!(t);
    }
    v
}

/// Blocking file work on the sandbox's workspace, as its owner.
async fn on_workspace<T: Send + 'static>(
    app: &Arc<App>,
    record: &Record,
    principal: Principal,
    f: impl FnOnce(&std::os::fd::OwnedFd, &str) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let engine = app.engine.clone();
    let name = record.id.clone();
    let permit = app
        .workers
        .acquire(&record.owner, app.deadlines.queue)
        .await
        .map_err(|r| {
            let f = handlers::refused(app, r);
            Error::new(Code::of_status(f.status), f.message)
        })?;
    let work = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let ws = engine.workspace(principal, &name).map_err(|f| {
            let f = crate::handlers::ApiFailure::from(f);
            Error::new(Code::of_status(f.status), f.message)
        })?;
        f(&ws, &name)
    });
    match tokio::time::timeout(app.deadlines.files, work).await {
        Ok(joined) => {
            joined.map_err(|e| Error::new(Code::Internal, format!("worker failed: {e}")))?
        }
        Err(_) => Err(Error::new(
            Code::DeadlineExceeded,
            "the file operation took longer than the server's deadline",
        )),
    }
}

#[derive(Debug, Deserialize)]
struct PathRequest {
    #[serde(default)]
    path: String,
    #[serde(default)]
    depth: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct MoveRequest {
    source: String,
    destination: String,
}

/// `filesystem.Filesystem/METHOD`.
pub(super) async fn filesystem(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (record, principal) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(e) if method == "WatchDir" => return stream_error(e),
        Err(e) => return e.into_response(),
    };
    use phantom_engine::sandbox::fsops;
    let result = match method.as_str() {
        "Stat" | "MakeDir" | "Remove" | "ListDir" => {
            let request: PathRequest = match connect::unary_message(&body) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
            let path = match workspace_path(&request.path) {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            let method = method.clone();
            on_workspace(&app, &record, principal, move |ws, name| {
                let shown = shown_path(&path);
                match method.as_str() {
                    "Stat" => fsops::stat(ws, name, &path)
                        .map(|info| json!({ "entry": entry_info(&shown, &info) })),
                    "MakeDir" => match fsops::make_dir(ws, name, &path) {
                        Ok(true) => fsops::stat(ws, name, &path)
                            .map(|info| json!({ "entry": entry_info(&shown, &info) })),
                        Ok(false) => {
                            return Err(Error::new(
                                Code::FailedPrecondition,
                                format!("directory '{shown}' already exists"),
                            ))
                        }
                        Err(e) => Err(e),
                    },
                    "Remove" => fsops::remove(ws, name, &path).map(|()| json!({})),
                    _ => {
                        let depth = request.depth.unwrap_or(1).max(1) as usize;
                        fsops::walk(ws, name, &path, depth).map(|entries| {
                            let entries: Vec<Value> = entries
                                .iter()
                                .map(|(rel, info)| {
                                    let p = format!(
                                        "{}/{}",
                                        shown.trim_end_matches('/'),
                                        rel.display()
                                    );
                                    entry_info(&p, info)
                                })
                                .collect();
                            json!({ "entries": entries })
                        })
                    }
                }
                .map_err(|e| path_error(name, e))
            })
            .await
        }
        "Move" => {
            let request: MoveRequest = match connect::unary_message(&body) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
            let (from, to) = match (
                workspace_path(&request.source),
                workspace_path(&request.destination),
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => return e.into_response(),
            };
            on_workspace(&app, &record, principal, move |ws, name| {
                fsops::rename(ws, name, &from, &to)
                    .map(|info| json!({ "entry": entry_info(&shown_path(&to), &info) }))
                    .map_err(|e| path_error(name, e))
            })
            .await
        }
        "WatchDir" => return watch_dir(app, record, principal, &headers, &body).await,
        "CreateWatcher" => create_watcher(&app, record, principal, &body).await,
        "GetWatcherEvents" => watcher_events(&app, &record, &body),
        "RemoveWatcher" => {
            let request: WatcherId = match connect::unary_message(&body) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
            let mut watchers = app.e2b_processes.watchers.lock().expect("watchers");
            match watchers.get(&request.watcher_id) {
                Some((sandbox, _)) if *sandbox == record.id => {
                    watchers.remove(&request.watcher_id);
                    Ok(json!({}))
                }
                _ => Err(no_watcher(&request.watcher_id)),
            }
        }
        other => Err(Error::new(
            Code::NotFound,
            format!("filesystem.Filesystem has no method {other}"),
        )),
    };
    match result {
        Ok(message) => connect::unary_ok(message),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchRequest {
    #[serde(default)]
    path: String,
    #[serde(default)]
    recursive: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatcherId {
    #[serde(default)]
    watcher_id: String,
}

fn no_watcher(id: &str) -> Error {
    Error::new(Code::NotFound, format!("watcher {id} not found"))
}

/// A `FilesystemEvent`: the entry's path relative to the watched directory.
fn fs_event(e: &WatchEvent) -> Value {
    let kind = match e.change {
        Change::Create => "EVENT_TYPE_CREATE",
        Change::Write => "EVENT_TYPE_WRITE",
        Change::Remove => "EVENT_TYPE_REMOVE",
        Change::Rename => "EVENT_TYPE_RENAME",
        Change::Chmod => "EVENT_TYPE_CHMOD",
    };
    json!({ "name": e.name.to_string_lossy(), "type": kind })
}

/// A watch on the request's directory, made in a worker (the workspace fd comes from
/// the engine).
async fn open_watch(
    app: &Arc<App>,
    record: &Record,
    principal: Principal,
    request: WatchRequest,
) -> Result<Watch, Error> {
    let path = workspace_path(&request.path)?;
    on_workspace(app, record, principal, move |ws, name| {
        Watch::new(ws, name, &path, request.recursive).map_err(|e| path_error(name, e))
    })
    .await
}

/// `WatchDir` (server streaming): a start event, then the changes as they come, until
/// the client goes away or the sandbox does.
async fn watch_dir(
    app: Arc<App>,
    record: Record,
    principal: Principal,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let request: WatchRequest = match connect::single_message(headers, body) {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let mut watch = match open_watch(&app, &record, principal, request).await {
        Ok(w) => w,
        Err(e) => return stream_error(e),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let _ = tx.try_send(connect::envelope(&json!({ "start": {} })));
    let keep = keepalive(headers).unwrap_or(Duration::from_secs(30));
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut quiet = Duration::ZERO;
        let step = Duration::from_millis(500);
        let error = loop {
            if tx.is_closed() || app.e2b.registry.get(&record.id).is_none() {
                break None;
            }
            let events = match watch.wait(step) {
                Ok(events) => events,
                Err(e) => break Some(Error::new(Code::Internal, e.to_string())),
            };
            quiet = if events.is_empty() {
                quiet + step
            } else {
                Duration::ZERO
            };
            for e in &events {
                let m = connect::envelope(&json!({ "filesystem": fs_event(e) }));
                if runtime.block_on(tx.send(m)).is_err() {
                    return;
                }
            }
            if quiet >= keep {
                quiet = Duration::ZERO;
                let _ = runtime.block_on(tx.send(connect::envelope(&json!({ "keepalive": {} }))));
            }
        };
        let _ = runtime.block_on(tx.send(connect::end_stream(error.as_ref())));
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|m| (Ok::<_, std::convert::Infallible>(m), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, connect::STREAM_JSON)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `CreateWatcher`: a watch whose changes `GetWatcherEvents` collects.
async fn create_watcher(
    app: &Arc<App>,
    record: Record,
    principal: Principal,
    body: &[u8],
) -> Result<Value, Error> {
    let request: WatchRequest = connect::unary_message(body)?;
    {
        // Watchers of sandboxes that are gone go first.
        let mut watchers = app.e2b_processes.watchers.lock().expect("watchers");
        watchers.retain(|_, (sandbox, _)| app.e2b.registry.get(sandbox).is_some());
        if watchers.values().filter(|(s, _)| *s == record.id).count() >= MAX_WATCHERS {
            return Err(Error::new(
                Code::ResourceExhausted,
                format!("{MAX_WATCHERS} watchers in this sandbox already: remove one first"),
            ));
        }
    }
    let watch = open_watch(app, &record, principal, request).await?;
    let id = super::registry::new_token();
    app.e2b_processes
        .watchers
        .lock()
        .expect("watchers")
        .insert(id.clone(), (record.id.clone(), watch));
    Ok(json!({ "watcherId": id }))
}

/// `GetWatcherEvents`: the changes since the last call.
fn watcher_events(app: &App, record: &Record, body: &[u8]) -> Result<Value, Error> {
    let request: WatcherId = connect::unary_message(body)?;
    let mut watchers = app.e2b_processes.watchers.lock().expect("watchers");
    let Some((sandbox, watch)) = watchers.get_mut(&request.watcher_id) else {
        return Err(no_watcher(&request.watcher_id));
    };
    if *sandbox != record.id {
        return Err(no_watcher(&request.watcher_id));
    }
    let events = watch
        .read()
        .map_err(|e| Error::new(Code::Internal, e.to_string()))?;
    Ok(json!({ "events": events.iter().map(fs_event).collect::<Vec<_>>() }))
}

/// E2B's REST errors on /files: `{"code": STATUS, "message"}`.
fn files_error(e: Error) -> Response {
    let status = e.code.http_status();
    (
        status,
        axum::Json(json!({ "code": status.as_u16(), "message": e.message })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct FilesQuery {
    #[serde(default)]
    path: Option<String>,
}

/// The largest file `GET /files` returns.
const MAX_DOWNLOAD: u64 = 256 << 20;

/// `GET /files?path=`: the file's bytes.
pub(super) async fn download(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<FilesQuery>,
) -> Response {
    let (record, principal) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(e) => return files_error(e),
    };
    let path = match workspace_path(query.path.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return files_error(e),
    };
    let result = on_workspace(&app, &record, principal, move |ws, name| {
        phantom_engine::sandbox::files::read_file(ws, name, &path, MAX_DOWNLOAD)
            .map_err(|e| path_error(name, e))
    })
    .await;
    match result {
        Ok(data) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            data,
        )
            .into_response(),
        Err(e) => files_error(e),
    }
}

/// `POST /files?path=`: an `application/octet-stream` body, or `multipart/form-data`
/// parts named `file` whose file names are their paths; parent directories are
/// made. Answers the written files' `EntryInfo`s.
pub(super) async fn upload(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<FilesQuery>,
    request: axum::extract::Request,
) -> Response {
    let (record, principal) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(e) => return files_error(e),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if headers.contains_key(header::CONTENT_ENCODING) {
        return files_error(Error::new(
            Code::InvalidArgument,
            "compressed uploads are not accepted: upload without gzip",
        ));
    }
    let mut files: Vec<(String, Bytes)> = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        use axum::extract::FromRequest;
        let mut form = match axum::extract::Multipart::from_request(request, &()).await {
            Ok(f) => f,
            Err(e) => return files_error(Error::new(Code::InvalidArgument, e.body_text())),
        };
        loop {
            match form.next_field().await {
                Ok(Some(field)) => {
                    let name = field
                        .file_name()
                        .map(str::to_string)
                        .or_else(|| query.path.clone());
                    let Some(name) = name else {
                        return files_error(Error::new(
                            Code::InvalidArgument,
                            "a part without a file name: name each part's file by its path",
                        ));
                    };
                    match field.bytes().await {
                        Ok(data) => files.push((name, data)),
                        Err(e) => {
                            return files_error(Error::new(Code::InvalidArgument, e.body_text()))
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => return files_error(Error::new(Code::InvalidArgument, e.body_text())),
            }
        }
        // One part and a `path`: the path wins (the SDK sends both).
        if let (Some(path), [one]) = (&query.path, files.as_mut_slice()) {
            one.0 = path.clone();
        }
    } else {
        let Some(path) = query.path.clone() else {
            return files_error(Error::new(Code::InvalidArgument, "?path= is required"));
        };
        match axum::body::to_bytes(request.into_body(), app.config.max_body).await {
            Ok(data) => files.push((path, data)),
            Err(e) => {
                return files_error(Error::new(
                    Code::InvalidArgument,
                    format!("the body: {e} (at most {} bytes)", app.config.max_body),
                ))
            }
        }
    }
    let mut targets = Vec::new();
    for (path, data) in files {
        match workspace_path(&path) {
            Ok(p) => targets.push((p, data)),
            Err(e) => return files_error(e),
        }
    }
    let result = on_workspace(&app, &record, principal, move |ws, name| {
        let mut written = Vec::new();
        for (path, data) in targets {
            phantom_engine::sandbox::files::write_file(ws, name, &path, &data, true)
                .map_err(|e| path_error(name, e))?;
            let shown = shown_path(&path);
            written.push(json!({
                "path": shown,
                "name": shown.rsplit('/').next().unwrap_or(""),
                "type": "file",
            }));
        }
        Ok(Value::Array(written))
    })
    .await;
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => files_error(e),
    }
}
