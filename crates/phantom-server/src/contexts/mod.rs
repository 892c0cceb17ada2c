//! Stateful code contexts: a long-lived Python interpreter ([`KERNEL`]) inside a
//! persistent sandbox, fenced like any command there (it is an exec of the sandbox),
//! whose globals persist between calls. This process holds the interpreter's stdin
//! (requests, one JSON line each) and reads its stdout (events, one JSON line each)
//! for as long as the context lives; a call streams its events; a call whose client
//! goes away is interrupted (KeyboardInterrupt in the cell); restart starts a fresh
//! interpreter; delete or the sandbox's end stops it.
//!
//! The E2B surface serves these as E2B's code interpreter (port 49999).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use phantom_api::access::Principal;
use phantom_api::request::ExecRequest;
use phantom_engine::client::{Output, RunIo, Stdin, Stream, Wake};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::handlers::{Cancel, Stopper};
use crate::App;

/// The interpreter, run as `python3 -c KERNEL`.
pub const KERNEL: &str = include_str!("kernel.py");

/// How long a new interpreter has to say it is ready.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a call could not run.
#[derive(Debug, Clone)]
pub struct ContextError {
    /// 400 (the request), 404 (no such context), 500 (the interpreter).
    pub status: u16,
    pub message: String,
}

impl ContextError {
    fn new(status: u16, message: impl Into<String>) -> ContextError {
        ContextError {
            status,
            message: message.into(),
        }
    }
}

/// One context: its interpreter and the call it serves.
pub struct Context {
    pub id: String,
    pub sandbox: String,
    pub language: String,
    pub cwd: String,
    /// The interpreter's stdin (None once it ended).
    stdin: Mutex<Option<std::io::PipeWriter>>,
    /// Where the running call's events go.
    sink: Arc<Mutex<Option<mpsc::UnboundedSender<Value>>>>,
    /// One call at a time.
    busy: tokio::sync::Mutex<()>,
    alive: Arc<AtomicBool>,
    next_call: AtomicU64,
    kill: Stopper,
    /// Keeps the interpreter's exec alive: dropping it kills the interpreter.
    _cancel: Cancel,
}

impl Drop for Context {
    fn drop(&mut self) {
        self.kill.stop();
    }
}

/// The contexts of every sandbox, by sandbox then id.
#[derive(Default)]
pub struct Contexts {
    by_sandbox: Mutex<BTreeMap<String, BTreeMap<String, Arc<Context>>>>,
}

impl Contexts {
    pub fn get(&self, sandbox: &str, id: &str) -> Option<Arc<Context>> {
        self.lock().get(sandbox)?.get(id).cloned()
    }

    pub fn list(&self, sandbox: &str) -> Vec<Arc<Context>> {
        self.lock()
            .get(sandbox)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn insert(&self, context: Arc<Context>) {
        self.lock()
            .entry(context.sandbox.clone())
            .or_default()
            .insert(context.id.clone(), context);
    }

    /// Stop and forget context `id` (its interpreter is killed).
    pub fn remove(&self, sandbox: &str, id: &str) -> Option<Arc<Context>> {
        let mut all = self.lock();
        let removed = all.get_mut(sandbox)?.remove(id);
        if all.get(sandbox).is_some_and(BTreeMap::is_empty) {
            all.remove(sandbox);
        }
        removed
    }

    /// Stop every context of a sandbox (it is going away).
    pub fn remove_sandbox(&self, sandbox: &str) {
        self.lock().remove(sandbox);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Arc<Context>>>> {
        self.by_sandbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a new context runs with.
pub struct Spec {
    pub id: String,
    pub sandbox: String,
    pub language: String,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
}

/// Start an interpreter in `spec.sandbox` as `principal`, and wait until it is ready.
pub async fn start(
    app: &Arc<App>,
    principal: Principal,
    spec: Spec,
) -> Result<Arc<Context>, ContextError> {
    if spec.language != "python" {
        return Err(ContextError::new(
            400,
            format!(
                "language {:?}: this server's contexts run python (javascript is not served yet)",
                spec.language
            ),
        ));
    }
    let (reader, writer) =
        std::io::pipe().map_err(|e| ContextError::new(500, format!("pipe: {e}")))?;
    let reader: OwnedFd = reader.into();
    let cancel = Cancel::new().map_err(|e| ContextError::new(500, e.message))?;
    let run_side = cancel
        .run_side
        .try_clone()
        .map_err(|e| ContextError::new(500, e.to_string()))?;
    let sink: Arc<Mutex<Option<mpsc::UnboundedSender<Value>>>> = Default::default();
    let alive = Arc::new(AtomicBool::new(true));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let exec = ExecRequest {
        argv: Some(vec!["python3".into(), "-c".into(), KERNEL.into()]),
        env: spec.env.clone(),
        cwd: Some(spec.cwd.clone()),
        ..ExecRequest::default()
    };
    let engine = app.engine.clone();
    let (events, lived, name) = (sink.clone(), alive.clone(), spec.sandbox.clone());
    tokio::task::spawn_blocking(move || {
        let mut ready = Some(ready_tx);
        let mut line = Vec::new();
        let mut errors = Vec::new();
        let mut take = |stream: Stream, data: &[u8]| match stream {
            Stream::Stderr => {
                // The interpreter's own messages (before its fds are redirected, or a
                // crash); kept for the reason it ended.
                errors.extend_from_slice(data);
                let len = errors.len();
                if len > 8192 {
                    errors.drain(..len - 8192);
                }
            }
            Stream::Stdout => {
                line.extend_from_slice(data);
                while let Some(end) = line.iter().position(|b| *b == b'\n') {
                    let raw: Vec<u8> = line.drain(..=end).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&raw) else {
                        continue;
                    };
                    if event["type"] == "ready" {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Ok(()));
                        }
                        continue;
                    }
                    if let Some(tx) = events.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        let _ = tx.send(event);
                    }
                }
            }
        };
        let io = RunIo {
            stdin: Stdin::Pipe(reader),
            output: Output::Session(&mut take),
            wake: Wake::Cancel(run_side.as_fd()),
            on_started: None,
        };
        let result = engine.exec(principal, &name, exec, io);
        lived.store(false, Ordering::SeqCst);
        let why = match &result {
            Ok(report) if report.timed_out => {
                "the context's interpreter ran past the sandbox's timeout and was stopped"
                    .to_string()
            }
            Ok(report) => format!(
                "the context's interpreter ended (exit code {}){}",
                report.exit_code,
                match String::from_utf8_lossy(&errors).trim() {
                    "" => String::new(),
                    e => format!(": {}", e.lines().last().unwrap_or(e)),
                }
            ),
            Err(f) => format!("the context's interpreter could not start: {}", f.for_api()),
        };
        if let Some(tx) = ready.take() {
            let _ = tx.send(Err(why.clone()));
        }
        // The call in flight, if any, ends with why.
        if let Some(tx) = events.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(json!({"type": "ended", "message": why}));
        }
    });
    match tokio::time::timeout(READY_WITHIN, ready_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(why))) => return Err(ContextError::new(500, why)),
        Ok(Err(_)) => return Err(ContextError::new(500, "the context's interpreter ended")),
        Err(_) => {
            cancel.stopper().stop();
            return Err(ContextError::new(
                500,
                format!(
                    "the context's interpreter was not ready within {}s",
                    READY_WITHIN.as_secs()
                ),
            ));
        }
    }
    let context = Arc::new(Context {
        id: spec.id,
        sandbox: spec.sandbox,
        language: spec.language,
        cwd: spec.cwd,
        stdin: Mutex::new(Some(writer)),
        sink,
        busy: tokio::sync::Mutex::new(()),
        alive,
        next_call: AtomicU64::new(1),
        kill: cancel.stopper(),
        _cancel: cancel,
    });
    app.contexts.insert(context.clone());
    Ok(context)
}

/// One event of a call, as the caller sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Stdout(String),
    Stderr(String),
    /// A display result: the interpreter's formats (`text`, `html`, `png`, ...) and
    /// whether it is the cell's value (`is_main_result`).
    Result(serde_json::Map<String, Value>),
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    /// The call ended; the context's execution count.
    Done {
        execution_count: u64,
    },
}

/// Run `code` in `context`, sending its events to `out` until [`Event::Done`] (or
/// an error, when the interpreter is gone). At most `max_output` bytes of stdout and
/// stderr are sent; a note on stderr says what was dropped. When `out` closes (the
/// caller went away) the cell is interrupted, and the context serves the next call
/// once it has stopped.
pub async fn execute(
    context: Arc<Context>,
    code: String,
    env: BTreeMap<String, String>,
    max_output: u64,
    out: mpsc::Sender<Event>,
) -> Result<(), ContextError> {
    let _busy = context.busy.lock().await;
    if !context.alive.load(Ordering::SeqCst) {
        return Err(ContextError::new(
            500,
            "the context's interpreter has ended: restart the context",
        ));
    }
    let call = context.next_call.fetch_add(1, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    *context.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    let request = json!({"id": call, "code": code, "env": env});
    let written = {
        let mut stdin = context.stdin.lock().unwrap_or_else(|e| e.into_inner());
        match stdin.as_mut() {
            Some(w) => writeln!(w, "{request}").and_then(|()| w.flush()),
            None => Err(std::io::Error::other("closed")),
        }
    };
    if let Err(e) = written {
        context.alive.store(false, Ordering::SeqCst);
        return Err(ContextError::new(
            500,
            format!("the context's interpreter does not take requests ({e}): restart the context"),
        ));
    }
    let mut sent: u64 = 0;
    let mut dropped: u64 = 0;
    let mut interrupted = false;
    let result = loop {
        let next = tokio::select! {
            event = rx.recv() => event,
            () = out.closed(), if !interrupted => {
                // The caller went away: stop the cell, then wait for its end so that
                // the next call starts on an idle interpreter.
                interrupted = true;
                interrupt(&context);
                continue;
            }
        };
        let Some(event) = next else {
            break Err(ContextError::new(500, "the context's interpreter ended"));
        };
        if event["type"] == "ended" {
            break Err(ContextError::new(
                500,
                event["message"].as_str().unwrap_or("ended").to_string(),
            ));
        }
        if event["id"].as_u64() != Some(call) {
            continue;
        }
        let kind = event["type"].as_str().unwrap_or("");
        let converted = match kind {
            "stdout" | "stderr" => {
                let text = event["text"].as_str().unwrap_or("").to_string();
                if sent + text.len() as u64 > max_output {
                    dropped += text.len() as u64;
                    continue;
                }
                sent += text.len() as u64;
                if kind == "stdout" {
                    Event::Stdout(text)
                } else {
                    Event::Stderr(text)
                }
            }
            "result" => {
                let mut formats = event.as_object().cloned().unwrap_or_default();
                formats.remove("id");
                formats.remove("type");
                Event::Result(formats)
            }
            "error" => Event::Error {
                name: event["name"].as_str().unwrap_or("").into(),
                value: event["value"].as_str().unwrap_or("").into(),
                traceback: event["traceback"].as_str().unwrap_or("").into(),
            },
            "done" => {
                if dropped > 0 && !interrupted {
                    let _ = out
                        .send(Event::Stderr(format!(
                            "\n[phantom: {dropped} bytes of output dropped: a call returns at most {max_output} bytes]\n"
                        )))
                        .await;
                }
                let _ = out
                    .send(Event::Done {
                        execution_count: event["execution_count"].as_u64().unwrap_or(0),
                    })
                    .await;
                break Ok(());
            }
            _ => continue,
        };
        if !interrupted && out.send(converted).await.is_err() {
            interrupted = true;
            interrupt(&context);
        }
    };
    *context.sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
    result
}

/// Raise KeyboardInterrupt in the running cell.
pub fn interrupt(context: &Context) {
    let mut stdin = context.stdin.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = stdin.as_mut() {
        let _ = writeln!(w, "{}", json!({"interrupt": true})).and_then(|()| w.flush());
    }
}

/// A new context id: 16 random bytes, hex.
pub fn new_id() -> String {
    crate::e2b::registry::new_token()[..32].to_string()
}
