//! Code contexts: a long-lived interpreter ([`KERNEL`], `python3 -c KERNEL`; for
//! JavaScript [`KERNEL_JS`], `node -e KERNEL_JS`) inside a persistent sandbox, fenced like any command there (it is an exec of the sandbox),
//! whose globals persist between calls.
//!
//! The protocol with the interpreter (described in full at the top of
//! `context_kernel.py`):
//!
//! 1. The front end execs `python3 -c KERNEL` in the sandbox with `Stdin::Pipe` and
//!    `Output::Session`; a thread of this process ([`CodeContexts::start`]) relays the
//!    exec for as long as the context lives.
//! 2. The interpreter says `{"type": "ready"}` on stdout once it serves requests.
//! 3. Each call writes one JSON line `{"id", "code", "env"}` to its stdin; the
//!    interpreter answers with `stdout`, `stderr`, `result` and `error` events and ends
//!    with `done` (the execution count), all tagged with the call's id.
//! 4. `{"interrupt": true}` raises KeyboardInterrupt in the running cell (a call's
//!    timeout, a caller that went away).
//! 5. Dropping the context (delete, restart, the registry's end) kills the exec.
//!
//! The API is blocking (std threads and channels): async front ends call it from
//! `spawn_blocking`. Contexts are kept per owner and sandbox in [`CodeContexts`]: an
//! owner never reaches another owner's contexts ("not found" alike).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phantom_api::access::{Owner, Principal};
use phantom_api::context::{
    CellError, CellResult, ContextEvent, ContextInfo, ContextLanguage, ContextRun,
};
use phantom_api::engine::{Failure, FailureKind};
use phantom_api::request::ExecRequest;
use serde_json::{json, Value};

use crate::client::{Output, RunIo, Stdin, Stream, Wake};
use crate::EngineClient;

/// The interpreter, run as `python3 -c KERNEL`.
pub const KERNEL: &str = include_str!("context_kernel.py");
/// The JavaScript interpreter, run as `node -e KERNEL_JS` (the same protocol).
pub const KERNEL_JS: &str = include_str!("context_kernel.js");

/// How long a new interpreter has to say it is ready.
pub const READY_WITHIN: Duration = Duration::from_secs(30);
/// A call's timeout when it names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an interrupted cell has to stop before its interpreter is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(5);
/// The most live contexts one owner keeps in one sandbox: each is an interpreter with
/// its threads and memory inside the sandbox's limits, and past a few dozen the
/// sandbox's pids limit would refuse every exec there.
pub const MAX_PER_SANDBOX: usize = 16;
/// How often a waiting call looks whether its caller went away.
const POLL: Duration = Duration::from_millis(50);

fn failure(kind: FailureKind, message: impl Into<String>) -> Failure {
    Failure::new(kind, message)
}

/// The one answer for a context that does not exist or is not the caller's.
pub fn not_found(sandbox: &str, id: &str) -> Failure {
    failure(
        FailureKind::NotFound,
        format!("context {id} of sandbox {sandbox} not found: GET .../contexts lists them (list_contexts over MCP)"),
    )
}

/// One context: its interpreter and the call it serves.
pub struct CodeContext {
    pub id: String,
    pub sandbox: String,
    pub language: ContextLanguage,
    pub cwd: String,
    owner: Owner,
    /// What it was started with (a restart starts the same).
    env: BTreeMap<String, String>,
    /// The interpreter's stdin (None once it ended).
    stdin: Mutex<Option<std::fs::File>>,
    /// Where the running call's raw events go.
    sink: Arc<Mutex<Option<mpsc::Sender<Value>>>>,
    /// One call at a time.
    busy: Mutex<()>,
    alive: Arc<AtomicBool>,
    next_call: AtomicU64,
    /// Closing it has the engine kill the interpreter.
    kill: Mutex<Option<UnixStream>>,
}

impl Drop for CodeContext {
    fn drop(&mut self) {
        self.stop();
    }
}

impl CodeContext {
    /// Kill the interpreter (the exec's relay sees the cancel end close).
    pub fn stop(&self) {
        drop(self.kill.lock().unwrap_or_else(|e| e.into_inner()).take());
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    pub fn info(&self) -> ContextInfo {
        ContextInfo {
            id: self.id.clone(),
            language: self.language,
            cwd: self.cwd.clone(),
            alive: self.is_alive(),
        }
    }

    /// Raise KeyboardInterrupt in the running cell.
    pub fn interrupt(&self) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = stdin.as_mut() {
            let _ = writeln!(w, "{}", json!({"interrupt": true})).and_then(|()| w.flush());
        }
    }

    /// Run `code` in this context, handing its events to `out` in order until
    /// [`ContextEvent::Done`]. At most `max_output` bytes of stdout and stderr are
    /// handed over; a note on stderr says what was dropped. Past `timeout` the cell
    /// is interrupted and `Done` says `timed_out`. When `gone()` turns true or `out`
    /// returns false (the caller went away) the cell is interrupted and its end
    /// awaited, so that the next call starts on an idle interpreter. A cell that does
    /// not stop within [`INTERRUPT_GRACE`] of its interrupt has its interpreter killed
    /// (the context must then be restarted).
    pub fn execute(
        &self,
        code: &str,
        env: &BTreeMap<String, String>,
        timeout: Duration,
        max_output: u64,
        out: &mut dyn FnMut(ContextEvent) -> bool,
        gone: &dyn Fn() -> bool,
    ) -> Result<(), Failure> {
        let deadline = Instant::now() + timeout;
        // Wait for the call before (one that is being interrupted, say) until this
        // call's own deadline.
        let _busy = loop {
            match self.busy.try_lock() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline || gone() {
                        return Err(failure(
                            FailureKind::Unavailable,
                            format!(
                                "context {} is still running another call; retry when it ends",
                                self.id
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        if !self.is_alive() {
            return Err(self.ended());
        }
        let call = self.next_call.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel::<Value>();
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let result = self.serve(
            call, code, env, timeout, deadline, max_output, rx, out, gone,
        );
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
        result
    }

    fn ended(&self) -> Failure {
        failure(
            FailureKind::Conflict,
            format!(
                "context {}: its interpreter has ended: restart the context",
                self.id
            ),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn serve(
        &self,
        call: u64,
        code: &str,
        env: &BTreeMap<String, String>,
        timeout: Duration,
        deadline: Instant,
        max_output: u64,
        rx: mpsc::Receiver<Value>,
        out: &mut dyn FnMut(ContextEvent) -> bool,
        gone: &dyn Fn() -> bool,
    ) -> Result<(), Failure> {
        let request = json!({"id": call, "code": code, "env": env});
        let written = {
            let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
            match stdin.as_mut() {
                Some(w) => writeln!(w, "{request}").and_then(|()| w.flush()),
                None => Err(std::io::Error::other("closed")),
            }
        };
        if written.is_err() {
            self.alive.store(false, Ordering::SeqCst);
            return Err(self.ended());
        }
        let (mut sent, mut dropped) = (0u64, 0u64);
        // Why the cell was interrupted, and until when it has to stop.
        let mut interrupted: Option<(bool, Instant)> = None;
        let mut caller_gone = false;
        loop {
            let now = Instant::now();
            if interrupted.is_none() && (now >= deadline || gone()) {
                caller_gone = now < deadline;
                interrupted = Some((!caller_gone, now + INTERRUPT_GRACE));
                self.interrupt();
            }
            if let Some((_, until)) = interrupted {
                if now >= until {
                    self.stop();
                    self.alive.store(false, Ordering::SeqCst);
                    return Err(failure(
                        FailureKind::Conflict,
                        format!(
                            "context {}: the code did not stop within {}s of its interrupt; its interpreter was killed: restart the context",
                            self.id,
                            INTERRUPT_GRACE.as_secs()
                        ),
                    ));
                }
            }
            let wait = match interrupted {
                Some((_, until)) => until.saturating_duration_since(now),
                None => deadline.saturating_duration_since(now),
            }
            .min(POLL);
            let event = match rx.recv_timeout(wait) {
                Ok(e) => e,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(self.ended()),
            };
            if event["type"] == "ended" {
                return Err(failure(
                    FailureKind::Conflict,
                    format!(
                        "context {}: {}: restart the context",
                        self.id,
                        event["message"].as_str().unwrap_or("its interpreter ended")
                    ),
                ));
            }
            if event["id"].as_u64() != Some(call) {
                continue;
            }
            let text = |key: &str| event[key].as_str().unwrap_or("").to_string();
            let converted = match event["type"].as_str().unwrap_or("") {
                kind @ ("stdout" | "stderr") => {
                    let text = text("text");
                    if sent + text.len() as u64 > max_output {
                        dropped += text.len() as u64;
                        continue;
                    }
                    sent += text.len() as u64;
                    if kind == "stdout" {
                        ContextEvent::Stdout { text }
                    } else {
                        ContextEvent::Stderr { text }
                    }
                }
                "result" => {
                    let mut formats = event.clone();
                    if let Some(m) = formats.as_object_mut() {
                        m.remove("id");
                        m.remove("type");
                    }
                    ContextEvent::Result(
                        serde_json::from_value::<CellResult>(formats).unwrap_or_default(),
                    )
                }
                "error" => ContextEvent::Error(CellError {
                    name: text("name"),
                    value: text("value"),
                    traceback: text("traceback"),
                }),
                "done" => {
                    if caller_gone {
                        return Ok(());
                    }
                    let timed_out = interrupted.is_some_and(|(timeout, _)| timeout);
                    if dropped > 0 {
                        out(ContextEvent::Stderr {
                            text: format!(
                                "\n[phantom: {dropped} bytes of output dropped: a call returns at most {max_output} bytes]\n"
                            ),
                        });
                    }
                    if timed_out {
                        out(ContextEvent::Stderr {
                            text: format!(
                                "\n[phantom: the call ran past its timeout of {:.1}s and was interrupted (KeyboardInterrupt); the context keeps its state]\n",
                                timeout.as_secs_f64()
                            ),
                        });
                    }
                    out(ContextEvent::Done {
                        execution_count: event["execution_count"].as_u64().unwrap_or(0),
                        timed_out,
                        output_truncated: dropped > 0,
                    });
                    return Ok(());
                }
                _ => continue,
            };
            if !caller_gone && !out(converted) && interrupted.is_none() {
                caller_gone = true;
                interrupted = Some((false, Instant::now() + INTERRUPT_GRACE));
                self.interrupt();
            }
        }
    }
}

/// A call's timeout: what it asked for (`"30s"`, seconds), else [`DEFAULT_TIMEOUT`].
pub fn call_timeout(run: &ContextRun) -> Result<Duration, Failure> {
    match &run.timeout {
        None => Ok(DEFAULT_TIMEOUT),
        Some(q) => match phantom_policy::units::parse_duration_ms(q.as_str()) {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(Failure {
                field: Some(phantom_api::request::Field::Timeout),
                ..failure(
                    FailureKind::Invalid,
                    format!(
                        "timeout {:?}: a positive duration such as \"30s\" or 30 (seconds)",
                        q.as_str()
                    ),
                )
            }),
        },
    }
}

/// What a new context runs with.
#[derive(Debug, Clone)]
pub struct ContextSpec {
    pub id: String,
    pub language: ContextLanguage,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
}

type ByKey = BTreeMap<(String, String), BTreeMap<String, Arc<CodeContext>>>;

/// The contexts a front end holds, by owner and sandbox, then id. Dropping it (or
/// [`CodeContexts::clear`]) ends every interpreter.
#[derive(Default)]
pub struct CodeContexts {
    by_key: Mutex<ByKey>,
}

fn key(owner: &Owner, sandbox: &str) -> (String, String) {
    (owner.as_string(), sandbox.to_string())
}

impl CodeContexts {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByKey> {
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `owner`'s context `id` of `sandbox`, or "not found".
    pub fn get(&self, owner: &Owner, sandbox: &str, id: &str) -> Result<Arc<CodeContext>, Failure> {
        self.lock()
            .get(&key(owner, sandbox))
            .and_then(|m| m.get(id))
            .cloned()
            .ok_or_else(|| not_found(sandbox, id))
    }

    /// `owner`'s contexts of `sandbox`.
    pub fn list(&self, owner: &Owner, sandbox: &str) -> Vec<Arc<CodeContext>> {
        self.lock()
            .get(&key(owner, sandbox))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn insert(&self, context: Arc<CodeContext>) {
        self.lock()
            .entry(key(&context.owner, &context.sandbox))
            .or_default()
            .insert(context.id.clone(), context);
    }

    /// Stop and forget `owner`'s context `id` of `sandbox`.
    pub fn remove(
        &self,
        owner: &Owner,
        sandbox: &str,
        id: &str,
    ) -> Result<Arc<CodeContext>, Failure> {
        let mut all = self.lock();
        let k = key(owner, sandbox);
        let removed = all.get_mut(&k).and_then(|m| m.remove(id));
        if all.get(&k).is_some_and(BTreeMap::is_empty) {
            all.remove(&k);
        }
        let removed = removed.ok_or_else(|| not_found(sandbox, id))?;
        removed.stop();
        Ok(removed)
    }

    /// Stop every context of `owner`'s `sandbox` (it is going away).
    pub fn remove_sandbox(&self, owner: &Owner, sandbox: &str) {
        let gone = self.lock().remove(&key(owner, sandbox));
        for c in gone.into_iter().flat_map(|m| m.into_values()) {
            c.stop();
        }
    }

    /// Stop every context of every owner named `sandbox` — for sandboxes whose names
    /// are unique across owners (the E2B surface's random ids).
    pub fn remove_sandbox_named(&self, sandbox: &str) {
        let mut all = self.lock();
        let keys: Vec<_> = all.keys().filter(|(_, s)| s == sandbox).cloned().collect();
        for k in keys {
            for c in all.remove(&k).into_iter().flat_map(|m| m.into_values()) {
                c.stop();
            }
        }
    }

    /// Stop every context (the front end stops).
    pub fn clear(&self) {
        let all = std::mem::take(&mut *self.lock());
        for c in all.into_values().flat_map(|m| m.into_values()) {
            c.stop();
        }
    }

    /// Start an interpreter in `principal`'s `sandbox`, wait until it is ready (at most
    /// [`READY_WITHIN`]) and keep it under `spec.id` (replacing a context of that id).
    /// Blocking.
    pub fn start(
        &self,
        client: &EngineClient,
        principal: Principal,
        sandbox: &str,
        spec: ContextSpec,
    ) -> Result<Arc<CodeContext>, Failure> {
        let live = self
            .list(&principal.owner, sandbox)
            .iter()
            .filter(|c| c.is_alive() && c.id != spec.id)
            .count();
        if live >= MAX_PER_SANDBOX {
            return Err(failure(
                FailureKind::Conflict,
                format!(
                    "sandbox {sandbox} already has {live} code contexts, the most one sandbox holds: delete one (DELETE .../contexts/{{id}}, delete_context over MCP) or run code in one of them"
                ),
            ));
        }
        let sys =
            |what: &str, e: std::io::Error| failure(FailureKind::Failed, format!("{what}: {e}"));
        let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| sys("pipe", e.into()))?;
        let writer = std::fs::File::from(writer);
        let (kill, run_side) = UnixStream::pair().map_err(|e| sys("socketpair", e))?;
        let run_side: OwnedFd = run_side.into();
        let sink: Arc<Mutex<Option<mpsc::Sender<Value>>>> = Default::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), Failure>>();
        let mut env = spec.env.clone();
        env.entry("MPLBACKEND".into())
            .or_insert_with(|| "Agg".into());
        let exec = ExecRequest {
            argv: Some(match spec.language {
                ContextLanguage::Python => vec!["python3".into(), "-c".into(), KERNEL.into()],
                ContextLanguage::Javascript => vec!["node".into(), "-e".into(), KERNEL_JS.into()],
            }),
            env,
            cwd: Some(spec.cwd.clone()),
            // No timeout of its own: the interpreter lives at most the sandbox's
            // command timeout (its `timeout`; the e2b profile's is 24h). Each call has
            // its own.
            ..ExecRequest::default()
        };
        let client = client.clone();
        let (events, lived, name, owner) = (
            sink.clone(),
            alive.clone(),
            sandbox.to_string(),
            principal.owner.clone(),
        );
        std::thread::Builder::new()
            .name(format!("context-{}", spec.id))
            .spawn(move || {
                relay(
                    client, principal, name, exec, reader, run_side, events, lived, ready_tx,
                )
            })
            .map_err(|e| sys("thread", e))?;
        let context = Arc::new(CodeContext {
            id: spec.id,
            sandbox: sandbox.to_string(),
            language: spec.language,
            cwd: spec.cwd,
            owner,
            env: spec.env,
            stdin: Mutex::new(Some(writer)),
            sink,
            busy: Mutex::new(()),
            alive,
            next_call: AtomicU64::new(1),
            kill: Mutex::new(Some(kill)),
        });
        match ready_rx.recv_timeout(READY_WITHIN) {
            Ok(Ok(())) => {}
            Ok(Err(f)) => return Err(f),
            Err(_) => {
                context.stop();
                return Err(failure(
                    FailureKind::Failed,
                    format!(
                        "the context's interpreter was not ready within {}s",
                        READY_WITHIN.as_secs()
                    ),
                ));
            }
        }
        self.insert(context.clone());
        Ok(context)
    }

    /// Start `owner`'s context `id` of `sandbox` afresh: same id, language, working
    /// directory and environment; its state is gone.
    pub fn restart(
        &self,
        client: &EngineClient,
        principal: Principal,
        sandbox: &str,
        id: &str,
    ) -> Result<Arc<CodeContext>, Failure> {
        let old = self.remove(&principal.owner, sandbox, id)?;
        let spec = ContextSpec {
            id: old.id.clone(),
            language: old.language,
            cwd: old.cwd.clone(),
            env: old.env.clone(),
        };
        drop(old);
        self.start(client, principal, sandbox, spec)
    }
}

/// The thread of a context: the interpreter's exec, its stdout parsed into events for
/// the call in flight, until the interpreter ends.
#[allow(clippy::too_many_arguments)]
fn relay(
    client: EngineClient,
    principal: Principal,
    sandbox: String,
    exec: ExecRequest,
    stdin: OwnedFd,
    cancel: OwnedFd,
    events: Arc<Mutex<Option<mpsc::Sender<Value>>>>,
    alive: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<(), Failure>>,
) {
    let mut ready = Some(ready);
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
        stdin: Stdin::Pipe(stdin),
        output: Output::Session(&mut take),
        wake: Wake::Cancel(cancel.as_fd()),
        on_started: None,
    };
    let result = client.exec(principal, &sandbox, exec, io);
    alive.store(false, Ordering::SeqCst);
    let why = match &result {
        Ok(report) if report.timed_out => failure(
            FailureKind::Failed,
            "the context's interpreter ran past the sandbox's timeout and was stopped",
        ),
        // What ends the interpreter is the sandbox's (its limits, its python3, a
        // cell's os._exit): the caller's to see, not a host failure.
        Ok(report) => failure(
            FailureKind::Conflict,
            format!(
                "the context's interpreter ended (exit code {}){}{}",
                report.exit_code,
                match String::from_utf8_lossy(&errors).trim() {
                    "" => String::new(),
                    e => format!(": {}", e.lines().last().unwrap_or(e)),
                },
                if ready.is_some() {
                    " before it was ready; check the sandbox's limits (pids, memory) and that its root has the interpreter (python3, or node for javascript)"
                } else {
                    ""
                }
            ),
        ),
        Err(f) => f.clone(),
    };
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err(why.clone()));
    }
    // The call in flight, if any, ends with why.
    if let Some(tx) = events.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = tx.send(json!({"type": "ended", "message": why.message}));
    }
}

/// A new context id: 16 random bytes, hex.
pub fn new_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(q: Option<&str>) -> Result<Duration, Failure> {
        call_timeout(&ContextRun {
            timeout: q.map(Into::into),
            ..ContextRun::default()
        })
    }

    #[test]
    fn a_calls_timeout_is_a_positive_duration_named_in_its_refusal() {
        assert_eq!(timeout(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(timeout(Some("1.5s")).unwrap(), Duration::from_millis(1500));
        assert_eq!(timeout(Some("2")).unwrap(), Duration::from_secs(2));
        for bad in ["0", "soon"] {
            let f = timeout(Some(bad)).unwrap_err();
            assert_eq!(f.kind, FailureKind::Invalid);
            assert_eq!(f.field, Some(phantom_api::request::Field::Timeout));
            assert!(f.message.contains(bad), "{}", f.message);
        }
    }

    #[test]
    fn a_missing_context_is_not_found_alike_by_get_and_remove() {
        let contexts = CodeContexts::default();
        let a = contexts
            .get(&Owner::Key("a".into()), "s", "x")
            .err()
            .unwrap();
        let b = contexts.remove(&Owner::Local, "s", "x").err().unwrap();
        assert_eq!(a.kind, FailureKind::NotFound);
        assert_eq!(a.message, b.message);
    }
}
