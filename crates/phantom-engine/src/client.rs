//! The engine's client: how every front end — the CLI, the MCP server, the HTTP API —
//! asks the engine for anything. Nothing here forks a sandbox; a private engine
//! (forked by [`EngineClient::supervisor_or_private`] when no supervisor runs, from a
//! process that has no thread yet) does.
//!
//! A run or an exec hands the engine the program's stdio: the payload writes straight
//! into pipes this client made, and the client relays them — to its own stdout and
//! stderr, into the report, or to a stream callback — under the output cap the engine
//! says. Stdin is the caller's (a terminal is relayed through a pipe), some bytes (a
//! memfd), or nothing. Signals the CLI receives, or a front end's cancellation, are
//! sent to the engine as messages; closing the connection cancels too.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use phantom_api::access::Principal;
use phantom_api::engine::{
    CreateCall, Created, EngineHello, ExecCall, Failure, FailureKind, PoolStatus, Reply, Request,
    RunCall, Started,
};
use phantom_api::request::{CreateRequest, ExecRequest, RunRequest};
use phantom_api::{RunReport, SandboxInfo, SandboxMetrics};
use phantom_linux::process::{self, Forked, Namespaces};
use phantom_linux::{fdpass, SysError};
use rustix::event::{poll, PollFd, PollFlags};

use crate::channel::{self, ChannelError};
pub use crate::relay::{Output, Stream};
use crate::relay::{Relay, StdinRelay};

/// Where the supervisor's engine listens: `/run/phantom/supervisor.sock` for root, else
/// `supervisor.sock` in the user's private directory ([`crate::workspace::state_base`]:
/// `$XDG_RUNTIME_DIR/phantom`, else `/dev/shm/phantom-<uid>`, or the private directory
/// beside it when another user squatted that name). `PHANTOM_SUPERVISOR_SOCKET`
/// overrides it.
pub fn socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PHANTOM_SUPERVISOR_SOCKET") {
        return PathBuf::from(p);
    }
    if process::euid() == 0 {
        return PathBuf::from("/run/phantom/supervisor.sock");
    }
    match crate::workspace::state_base() {
        Ok(dir) => dir.join("supervisor.sock"),
        // No private directory can be made: a path nobody listens on (the caller then
        // starts cold and says why, as with no supervisor).
        Err(_) => PathBuf::from(format!(
            "/dev/shm/phantom-{}/supervisor.sock",
            process::euid()
        )),
    }
}

/// How long an exec's output is read after its command exited, for what it wrote
/// last; past that the exec returns, and what the command left running writes on into
/// the sandbox's keeper, which discards it.
const EXEC_GRACE: Duration = Duration::from_millis(100);
/// The same for a run, whose sandbox goes with its payload: its pipes close as soon
/// as its last processes are killed.
const RUN_GRACE: Duration = Duration::from_secs(2);

fn failed(message: impl Into<String>) -> Failure {
    Failure::new(FailureKind::Failed, message)
}

fn sys(e: SysError) -> Failure {
    failed(e.to_string())
}

fn lost(e: ChannelError) -> Failure {
    match e {
        ChannelError::Closed { .. } => failed("the engine went away before it answered"),
        e => failed(format!("the engine's answer: {e}")),
    }
}

/// Connect to the engine at `socket`, refusing one that is not ours: the socket's
/// directory must be the caller's own (or root's), not writable by others, and the
/// process listening must run as the caller — a squatted path never receives a
/// request (its code, environment and stdin).
fn connect_checked(socket: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::fs::MetadataExt;
    let me = process::euid();
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("no engine at {} ({e})", socket.display()))?;
    if !meta.is_dir() || (meta.uid() != me && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "refusing the engine socket {}: its directory belongs to uid {} (mode {:o}), not to you",
            socket.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let conn = fdpass::connect_seqpacket(socket)
        .map_err(|e| format!("no engine at {} ({})", socket.display(), e.source))?;
    match fdpass::peer_uid(conn.as_fd()) {
        Ok(uid) if uid == me => Ok(conn),
        Ok(uid) => Err(format!(
            "refusing the engine at {}: it runs as uid {uid}, not as you (uid {me})",
            socket.display()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The pid of the engine answering on `socket`, if one does (a supervisor refuses to
/// start over a running one).
pub fn running_engine(socket: &Path) -> Option<u32> {
    if !socket.exists() {
        return None;
    }
    EngineClient::at(socket.to_path_buf())
        .hello()
        .ok()
        .map(|h| h.pid)
}

/// Whether two state directories are one (both absent counts as one).
fn same_dir(a: Option<&Path>, b: Option<&Path>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
        }
        _ => false,
    }
}

/// How to reach the engine.
#[derive(Debug, Clone)]
enum Target {
    /// An engine listening on a socket (a supervisor, or a front end's own).
    Socket(PathBuf),
    /// A private engine forked per request (the CLI with no supervisor running).
    Private,
}

/// The client every front end holds.
#[derive(Debug, Clone)]
pub struct EngineClient {
    target: Target,
    /// Why a supervisor's socket was not used (`phantom run --verbose`).
    pub note: Option<String>,
}

/// One connection to the engine; a private engine is waited for when it closes, so
/// that everything it cleans up after a run is gone before the caller goes on.
struct Connection {
    fd: Option<OwnedFd>,
    engine: Option<i32>,
}

impl Connection {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("open until dropped").as_fd()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Closing first: a private engine exits once its connection is gone and its
        // work is cleaned up.
        drop(self.fd.take());
        if let Some(pid) = self.engine {
            let _ = process::wait4(pid, false);
        }
    }
}

/// What a run's stdin is.
pub enum Stdin {
    /// The caller's own stdin (a terminal is relayed through a pipe; anything else is
    /// handed over as is).
    Inherit,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// Nothing (`/dev/null`).
    Null,
    /// This pipe's read end, handed to the process as it is: the caller keeps the
    /// write end and writes to it for as long as the process lives (a code context's
    /// requests).
    Pipe(OwnedFd),
    /// A pseudo-terminal's slave ([`phantom_linux::terminal::open_pty`]): the
    /// process's stdin, stdout and stderr, and its controlling terminal. The caller
    /// reads and writes the master; the run's own output is then empty.
    Terminal(OwnedFd),
}

/// What wakes a run's relay besides the engine and the output.
pub enum Wake<'a> {
    /// The CLI: forward the signals the process receives (a third SIGINT kills).
    Signals,
    /// A front end's cancellation: when this fd becomes readable, the run is killed
    /// (the report comes back as usual, with `cancelled`).
    Cancel(BorrowedFd<'a>),
    Nothing,
}

/// The I/O of a run or an exec.
pub struct RunIo<'a> {
    pub stdin: Stdin,
    pub output: Output<'a>,
    pub wake: Wake<'a>,
    /// Called with the engine's `Started` (warnings to show, why not warm, the caps).
    pub on_started: Option<&'a mut dyn FnMut(&Started)>,
}

impl EngineClient {
    /// The engine on `socket` (a supervisor, or a front end's own engine).
    pub fn at(socket: PathBuf) -> EngineClient {
        EngineClient {
            target: Target::Socket(socket),
            note: None,
        }
    }

    /// The supervisor's engine when one answers at [`socket_path`], else a private
    /// engine per request — forked, so call this only from a process with one thread.
    pub fn supervisor_or_private() -> EngineClient {
        let socket = socket_path();
        if !socket.exists() {
            return EngineClient {
                target: Target::Private,
                note: Some(format!("no supervisor at {}", socket.display())),
            };
        }
        let supervisor = EngineClient::at(socket.clone());
        let why = match supervisor.hello() {
            // Its sandboxes, images and snapshots must be the ones this caller means
            // (PHANTOM_STATE_DIR): else it would run another store's image, or list
            // another database's sandboxes.
            Ok(hello) => {
                let ours = phantom_state::store_dir::state_dir().ok().flatten();
                if same_dir(hello.state_dir.as_deref().map(Path::new), ours.as_deref()) {
                    return supervisor;
                }
                format!(
                    "the supervisor at {} keeps its state in {}, this command in {} (PHANTOM_STATE_DIR)",
                    socket.display(),
                    hello.state_dir.as_deref().unwrap_or("no directory"),
                    ours.as_deref().map_or("no directory".into(), |d| d.display().to_string()),
                )
            }
            Err(f) => f.message,
        };
        EngineClient {
            target: Target::Private,
            note: Some(why),
        }
    }

    /// Who answers ([`Request::Hello`]).
    pub fn hello(&self) -> Result<EngineHello, Failure> {
        match self.call(&Request::Hello)? {
            (Reply::Hello(hello), _) => Ok(hello),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// A private engine per request (`phantom run --cold` with no supervisor in the
    /// way; tests).
    pub fn private() -> EngineClient {
        EngineClient {
            target: Target::Private,
            note: None,
        }
    }

    /// Whether requests go to a private engine.
    pub fn is_private(&self) -> bool {
        matches!(self.target, Target::Private)
    }

    fn connect(&self) -> Result<Connection, Failure> {
        match &self.target {
            Target::Socket(path) => connect_checked(path)
                .map(|fd| Connection {
                    fd: Some(fd),
                    engine: None,
                })
                .map_err(|why| Failure::new(FailureKind::Unavailable, why)),
            Target::Private => {
                let (ours, theirs) = fdpass::channel().map_err(sys)?;
                match process::clone_child(Namespaces::default(), None).map_err(sys)? {
                    Forked::Child => {
                        drop(ours);
                        // The CLI may die by SIGPIPE (`phantom list | head -1`); the
                        // engine never: a client gone is an EPIPE it handles.
                        process::set_sigpipe_default(false);
                        // The engine keeps no hold on the caller's stdin or stdout (a
                        // pipe the caller's reader waits on); errors still reach stderr.
                        if let Ok(null) = std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open("/dev/null")
                        {
                            let _ = process::dup_onto(null.as_fd(), 0);
                            let _ = process::dup_onto(null.as_fd(), 1);
                        }
                        crate::server::serve_private(theirs)
                    }
                    Forked::Parent { pid, .. } => Ok(Connection {
                        fd: Some(ours),
                        engine: Some(pid),
                    }),
                }
            }
        }
    }

    /// Send `request` and wait for its one (final) reply.
    fn call(&self, request: &Request) -> Result<(Reply, Vec<OwnedFd>), Failure> {
        let conn = self.connect()?;
        channel::send_message(conn.fd(), request, &[], true).map_err(lost)?;
        let (reply, fds) = channel::recv_message::<Reply>(conn.fd(), fdpass::MAX_FDS - 1, "engine")
            .map_err(lost)?;
        match reply {
            Reply::Error(f) => Err(f),
            reply => Ok((reply, fds)),
        }
    }

    fn unexpected(reply: &Reply) -> Failure {
        failed(format!("unexpected answer from the engine: {reply:?}"))
    }

    /// Run `request` (its `stdin` and `files` included) to completion.
    pub fn run(
        &self,
        principal: Principal,
        mut request: RunRequest,
        cold: bool,
        io: RunIo<'_>,
    ) -> Result<RunReport, Failure> {
        request.options.check_files().map_err(Failure::from)?;
        let files = std::mem::take(&mut request.options.files);
        let mut io = io;
        if let Some(text) = request.options.stdin.take() {
            io.stdin = Stdin::Bytes(text.into_bytes());
        }
        let files_fd = if files.is_empty() {
            None
        } else {
            Some(memfd(
                "phantom-files",
                &serde_json::to_vec(&files).expect("files serialize"),
            )?)
        };
        let (files, term) = (files_fd.is_some(), term(&io));
        let call = |stdin: bool| {
            Request::Run(Box::new(RunCall {
                principal: principal.clone(),
                request: request.clone(),
                stdin,
                files,
                term: term.clone(),
                cold,
            }))
        };
        // Once the payload is gone its sandbox is too: the pipes close as soon as the
        // init's last processes die.
        let (report, _pipes) = self.relay(call, files_fd, io, RUN_GRACE)?;
        Ok(report)
    }

    /// Run `request` in `principal`'s sandbox `name` to completion.
    pub fn exec(
        &self,
        principal: Principal,
        name: &str,
        mut request: ExecRequest,
        io: RunIo<'_>,
    ) -> Result<RunReport, Failure> {
        if request.background {
            return Err(Failure::new(
                FailureKind::Invalid,
                "a background command has no output to relay: start it with exec_background",
            ));
        }
        let mut io = io;
        if let Some(text) = request.stdin.take() {
            io.stdin = Stdin::Bytes(text.into_bytes());
        }
        let term = term(&io);
        let call = |stdin: bool| {
            Request::Exec(Box::new(ExecCall {
                principal: principal.clone(),
                name: name.to_string(),
                request: request.clone(),
                stdin,
                term: term.clone(),
            }))
        };
        let (report, pipes) = self.relay(call, None, io, EXEC_GRACE)?;
        if !pipes.is_empty() {
            // Processes the command left behind hold its output: the sandbox's keeper
            // takes the pipes over. Should that fail, they are closed here, and what
            // writes into them gets SIGPIPE — the command's report stands either way.
            let _ = self.detach(principal, name, pipes);
        }
        Ok(report)
    }

    /// Start `request` in `principal`'s sandbox `name` in the background (see
    /// [`ExecRequest::background`]); its pid inside the sandbox.
    pub fn exec_background(
        &self,
        principal: Principal,
        name: &str,
        mut request: ExecRequest,
    ) -> Result<i32, Failure> {
        request.background = true;
        if request.stdin.is_some() {
            return Err(Failure::from(phantom_api::request::FieldError::new(
                phantom_api::request::Field::Stdin,
                "a background command reads /dev/null: give it no stdin (or write the input into a file first)",
            )));
        }
        match self.call(&Request::Exec(Box::new(ExecCall {
            principal,
            name: name.to_string(),
            request,
            stdin: false,
            term: None,
        })))? {
            (Reply::Spawned { pid }, _) => Ok(pid),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// Hand an exec's output pipes, still held by what its command left running, to
    /// the sandbox's keeper ([`Request::Detach`]).
    fn detach(&self, principal: Principal, name: &str, pipes: Vec<OwnedFd>) -> Result<(), Failure> {
        let conn = self.connect()?;
        let request = Request::Detach {
            principal,
            name: name.to_string(),
            count: pipes.len() as u8,
        };
        let fds: Vec<BorrowedFd<'_>> = pipes.iter().map(|p| p.as_fd()).collect();
        channel::send_message(conn.fd(), &request, &fds, true).map_err(lost)?;
        drop(pipes);
        match channel::recv_message::<Reply>(conn.fd(), 0, "engine").map_err(lost)? {
            (Reply::Done, _) => Ok(()),
            (Reply::Error(f), _) => Err(f),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// The processes in `principal`'s sandbox `name`: commands still running and what
    /// commands left running.
    pub fn list_processes(
        &self,
        principal: Principal,
        name: &str,
    ) -> Result<Vec<phantom_api::ProcessInfo>, Failure> {
        match self.call(&Request::ListProcesses {
            principal,
            name: name.to_string(),
        })? {
            (Reply::Processes(list), _) => Ok(list),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// Send `signal` to process `pid` (as the sandbox numbers it) in `principal`'s
    /// sandbox `name`.
    pub fn kill_process(
        &self,
        principal: Principal,
        name: &str,
        pid: i32,
        signal: phantom_api::choice::ProcessSignal,
    ) -> Result<(), Failure> {
        match self.call(&Request::KillProcess {
            principal,
            name: name.to_string(),
            pid,
            signal,
        })? {
            (Reply::Done, _) => Ok(()),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// Send a run or an exec with its stdio, relay the output until the report; then
    /// read what is left for at most `grace`. Returns the output pipes still open.
    fn relay(
        &self,
        make: impl Fn(bool) -> Request,
        files: Option<OwnedFd>,
        mut io: RunIo<'_>,
        grace: Duration,
    ) -> Result<(RunReport, Vec<OwnedFd>), Failure> {
        let conn = self.connect()?;
        let (mut stdin_relay, stdin_fd) = match &io.stdin {
            Stdin::Inherit => {
                let (relay, pipe) = StdinRelay::new().map_err(|e| e.to_failure())?;
                let fd = match pipe {
                    Some(pipe) => pipe,
                    None => rustix::io::dup(rustix::stdio::stdin())
                        .map_err(|e| failed(format!("dup stdin: {e}")))?,
                };
                (relay, Some(fd))
            }
            Stdin::Bytes(bytes) => (StdinRelay::none(), Some(memfd("phantom-stdin", bytes)?)),
            Stdin::Null => (StdinRelay::none(), None),
            Stdin::Pipe(fd) | Stdin::Terminal(fd) => (
                StdinRelay::none(),
                Some(
                    fd.try_clone()
                        .map_err(|e| failed(format!("dup stdin: {e}")))?,
                ),
            ),
        };
        let (out_r, mut out_w) = process::pipe().map_err(sys)?;
        let (err_r, mut err_w) = process::pipe().map_err(sys)?;
        if let Stdin::Terminal(slave) = &io.stdin {
            // The terminal is the output too; the pipes stay empty (and close).
            let dup = || {
                slave
                    .try_clone()
                    .map_err(|e| failed(format!("dup the terminal: {e}")))
            };
            (out_w, err_w) = (dup()?, dup()?);
        }
        let request = make(stdin_fd.is_some());
        {
            let mut fds: Vec<BorrowedFd<'_>> = stdin_fd.iter().map(|f| f.as_fd()).collect();
            fds.extend([out_w.as_fd(), err_w.as_fd()]);
            fds.extend(files.as_ref().map(|f| f.as_fd()));
            channel::send_message(conn.fd(), &request, &fds, true).map_err(lost)?;
        }
        // Our copies of the payload's ends must go, or the pipes never reach EOF.
        drop((stdin_fd, out_w, err_w, files));

        let signals = match io.wake {
            Wake::Signals => {
                let mut blocked = process::FORWARDED_SIGNALS.to_vec();
                blocked.push(libc::SIGCHLD);
                process::block_signals(&blocked).map_err(sys)?;
                Some(process::signalfd(&process::FORWARDED_SIGNALS).map_err(sys)?)
            }
            _ => None,
        };
        let result = relay_until_finished(
            &conn,
            &mut io,
            signals.as_ref(),
            &mut stdin_relay,
            Relay::new(out_r, err_r, u64::MAX),
            grace,
        );
        if signals.is_some() {
            let _ = process::reset_signals(&[]);
        }
        result
    }

    /// Create `request` as `principal`'s, and return once it runs.
    pub fn create(&self, principal: Principal, request: CreateRequest) -> Result<Created, Failure> {
        match self.call(&Request::Create(Box::new(CreateCall {
            principal,
            request,
        })))? {
            (Reply::Created(created), _) => Ok(*created),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// Destroy `principal`'s sandbox `name`.
    pub fn destroy(&self, principal: Principal, name: &str) -> Result<SandboxInfo, Failure> {
        match self.call(&Request::Destroy {
            principal,
            name: name.to_string(),
        })? {
            (Reply::Sandbox(info), _) => Ok(*info),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// Destroy every sandbox of `principal` (of every owner with `every_owner`, which
    /// only the local principal may ask); the names destroyed.
    pub fn destroy_all(
        &self,
        principal: Principal,
        every_owner: bool,
    ) -> Result<Vec<String>, Failure> {
        match self.call(&Request::DestroyAll {
            principal,
            every_owner,
        })? {
            (Reply::Destroyed(names), _) => Ok(names),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// `principal`'s sandboxes (every owner's with `every_owner`: local only).
    pub fn list(
        &self,
        principal: Principal,
        every_owner: bool,
    ) -> Result<Vec<SandboxInfo>, Failure> {
        match self.call(&Request::List {
            principal,
            every_owner,
        })? {
            (Reply::Sandboxes(list), _) => Ok(list),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// One of `principal`'s sandboxes.
    pub fn get(&self, principal: Principal, name: &str) -> Result<SandboxInfo, Failure> {
        match self.call(&Request::Get {
            principal,
            name: name.to_string(),
        })? {
            (Reply::Sandbox(info), _) => Ok(*info),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// A sample of a sandbox's resource use; with `previous`, its CPU rate since then.
    pub fn metrics(
        &self,
        principal: Principal,
        name: &str,
        previous: Option<&SandboxMetrics>,
    ) -> Result<SandboxMetrics, Failure> {
        match self.call(&Request::Metrics {
            principal,
            name: name.to_string(),
        })? {
            (Reply::Metrics(mut m), _) => {
                m.cpu_cores = match (previous, m.cpu_usage_ms) {
                    (Some(p), Some(now)) if m.at_ms > p.at_ms => p
                        .cpu_usage_ms
                        .map(|before| ((now - before) / (m.at_ms - p.at_ms) as f64).max(0.0)),
                    _ => None,
                };
                Ok(*m)
            }
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// `principal`'s sandbox `name`'s workspace directory (an `O_PATH` fd), for
    /// [`crate::sandbox::files`].
    pub fn workspace(&self, principal: Principal, name: &str) -> Result<OwnedFd, Failure> {
        match self.call(&Request::Workspace {
            principal,
            name: name.to_string(),
        })? {
            (Reply::Workspace, mut fds) if fds.len() == 1 => Ok(fds.pop().expect("one fd")),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// Every owner's sandboxes and their memory (a front end's operator view).
    pub fn census(&self) -> Result<Vec<phantom_api::engine::SandboxUsage>, Failure> {
        match self.call(&Request::Census)? {
            (Reply::Census(list), _) => Ok(list),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }

    /// The engine's warm pools (only an engine on a socket has any).
    pub fn pools(&self) -> Result<PoolStatus, Failure> {
        if self.is_private() {
            return Err(Failure::new(
                FailureKind::Unavailable,
                format!("no supervisor at {}", socket_path().display()),
            ));
        }
        match self.call(&Request::Pools)? {
            (Reply::Pools(status), _) => Ok(*status),
            (other, _) => Err(Self::unexpected(&other)),
        }
    }
}

/// The caller's TERM, passed in for the CLI (nothing else of its environment is).
fn term(io: &RunIo<'_>) -> Option<String> {
    match io.wake {
        Wake::Signals => std::env::var("TERM").ok(),
        _ => None,
    }
}

/// A memfd holding `bytes` (its offset stays at 0: the reader starts at the beginning).
fn memfd(name: &str, bytes: &[u8]) -> Result<OwnedFd, Failure> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| failed(format!("memfd_create: {e}")))?;
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::pwrite(&fd, &bytes[written..], written as u64)
            .map_err(|e| failed(format!("writing {name}: {e}")))?;
    }
    Ok(fd)
}

/// Wait for the engine's answers while relaying output, stdin and signals.
fn relay_until_finished(
    conn: &Connection,
    io: &mut RunIo<'_>,
    signals: Option<&OwnedFd>,
    stdin_relay: &mut StdinRelay,
    mut relay: Relay,
    grace: Duration,
) -> Result<(RunReport, Vec<OwnedFd>), Failure> {
    let mut started: Option<Started> = None;
    let mut give_up: Option<Instant> = None;
    let mut interrupts = 0;
    let mut cancelled = false;
    let report = loop {
        let wait = give_up.map(|t| t.saturating_duration_since(Instant::now()));
        if wait.is_some_and(|w| w.is_zero()) {
            return Err(failed("the engine stopped answering"));
        }
        let ts = wait.map(|w| rustix::event::Timespec {
            tv_sec: w.as_secs() as i64,
            tv_nsec: w.subsec_nanos() as i64,
        });
        let mut fds = vec![PollFd::from_borrowed_fd(conn.fd(), PollFlags::IN)];
        let wake_ix = match (&io.wake, signals) {
            (_, Some(sigfd)) => {
                fds.push(PollFd::new(sigfd, PollFlags::IN));
                Some(fds.len() - 1)
            }
            // A cancel fd stays readable once cancelled: poll it until the kill is sent.
            (Wake::Cancel(fd), None) if !cancelled => {
                fds.push(PollFd::from_borrowed_fd(*fd, PollFlags::IN));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        // The output is read once the engine said how much of it to keep.
        let polled = started
            .is_some()
            .then(|| relay.poll_fds(stdin_relay, &mut fds));
        match poll(&mut fds, ts.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(failed(format!("poll: {e}"))),
        }
        let ready = |i: usize| !fds[i].revents().is_empty();
        let conn_ready = ready(0);
        let wake_ready = wake_ix.is_some_and(ready);
        let relay_ready = polled.map(|p| p.ready(&fds));
        drop(fds);
        if conn_ready {
            match channel::recv_message::<Reply>(conn.fd(), 0, "engine") {
                Ok((Reply::Started(s), _)) => {
                    relay.budget = if io.output.capped() {
                        s.output_limit
                    } else {
                        u64::MAX
                    };
                    // The engine enforces the timeout; this only guards against an
                    // engine that stopped answering.
                    give_up = Some(
                        Instant::now()
                            + Duration::from_millis(s.timeout_ms)
                            + Duration::from_millis(s.load_allowance_ms)
                            + Duration::from_secs(10),
                    );
                    if let Some(f) = io.on_started.as_mut() {
                        f(&s);
                    }
                    started = Some(*s);
                    continue;
                }
                Ok((Reply::Finished(report), _)) => break *report,
                Ok((Reply::Error(failure), _)) => return Err(failure),
                Ok((other, _)) => {
                    return Err(failed(format!(
                        "unexpected answer from the engine: {other:?}"
                    )))
                }
                Err(e) => return Err(lost(e)),
            }
        }
        if let Some(ready) = relay_ready {
            relay.pump_ready(stdin_relay, &mut io.output, ready);
        }
        if wake_ready {
            match (&io.wake, signals) {
                (_, Some(sigfd)) => {
                    while let Some(sig) = process::read_signalfd(sigfd.as_fd()) {
                        if sig == libc::SIGINT {
                            interrupts += 1;
                        }
                        // A third Ctrl-C means "stop now", whatever the payload does.
                        let signal = if interrupts >= 3 { libc::SIGKILL } else { sig };
                        let _ = channel::send_message(
                            conn.fd(),
                            &Request::Signal { signal },
                            &[],
                            true,
                        );
                    }
                }
                (Wake::Cancel(_), _) => {
                    // The engine kills the sandbox and answers as usual once it has the
                    // payload's status.
                    cancelled = true;
                    let kill = Request::Signal {
                        signal: libc::SIGKILL,
                    };
                    let _ = channel::send_message(conn.fd(), &kill, &[], true);
                }
                _ => {}
            }
        }
    };
    // The command is gone: what it wrote is in the pipes. They reach their end now,
    // unless something it left running holds them — that is not waited for.
    let pipes = relay.drain_for(&mut io.output, grace);
    let mut report = report;
    report.output_truncated = relay.truncated;
    report.cancelled = cancelled;
    let (stdout, stderr) = io.output.captured();
    report.stdout = stdout;
    report.stderr = stderr;
    Ok((report, pipes))
}

/// For a command-line front end that prints and exits: a reader that closes its
/// stdout early (`phantom list | head -1`) ends it silently, as with any Unix tool,
/// instead of a panic on the failed write. Not for servers; engines started
/// afterwards ignore SIGPIPE again.
pub fn end_quietly_on_closed_stdout() {
    process::set_sigpipe_default(true);
}
