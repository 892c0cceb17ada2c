//! Typed messages between processes of one machine: a sandbox's spawner and its init,
//! an init and its payload or pre-started interpreter, a keeper and the process
//! creating it, and the engine and its clients (`phantom_api::engine`).
//!
//! Every channel is a `SOCK_SEQPACKET` unix socket: one packet is one message, encoded
//! as JSON, with file descriptors attached as `SCM_RIGHTS`. A receiver names the
//! messages it expects; anything else is an [`ChannelError::UnexpectedMessage`] that
//! says what was expected and what came — never silently ignored.
//!
//! The sandbox channel ([`ToInit`], [`FromInit`]), in the order things happen:
//!
//! 1. spawner → init: [`ToInit::Go`] once the uid/gid maps are written and the cgroup
//!    joined, with the idmapped mounts it names attached in order (when phantom runs as
//!    root: the workspace, an image's root);
//! 2. init → spawner while it builds the sandbox: [`FromInit::Proxy`] with the socket
//!    listening on 127.0.0.1:3128 inside (network `limited`), then
//!    [`FromInit::SetupFailed`] (the init exits), or — for a pooled sandbox —
//!    [`FromInit::Ready`], or — for a persistent one — [`FromInit::Namespaces`] with its
//!    seven namespace fds; a cold sandbox goes straight on to its payload;
//! 3. spawner → pooled init: [`ToInit::Run`] with the run's stdio (and the files memfd,
//!    and an idmapped workspace) attached;
//! 4. payload or init → spawner: [`FromInit::Landlock`] (the fence applied, with its
//!    ABI), [`FromInit::Prewarmed`] (a pre-started interpreter took the run),
//!    [`FromInit::Refused`] (a value of the request is wrong inside the sandbox, e.g. a
//!    working directory that does not exist there), and last [`FromInit::Exited`] with
//!    the payload's status and rusage.
//!
//! A pre-started interpreter (`zygote.py`) speaks the same [`FromInit`] to its
//! init on fd 3: `Landlock` from its fence, then `Ready` once Python has loaded.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use phantom_linux::process::{ExitStatus, Usage};
use phantom_linux::{fdpass, SysError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The other end closed the channel.
    #[error("the {peer} closed the channel")]
    Closed { peer: &'static str },
    /// A packet that is not a message of this channel (or longer than its buffer).
    #[error("malformed message from the {peer}: {detail}")]
    Malformed { peer: &'static str, detail: String },
    /// A well-formed message that the receiver was not waiting for.
    #[error("unexpected message from the {peer}: expected {expected}, received {received}")]
    UnexpectedMessage {
        peer: &'static str,
        expected: &'static str,
        received: String,
    },
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// Send `message` on `chan` with `fds` attached.
pub(crate) fn send<M: Serialize>(
    chan: BorrowedFd<'_>,
    message: &M,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ChannelError> {
    let bytes = serde_json::to_vec(message).expect("channel messages serialize");
    fdpass::send_fds(chan, &bytes, fds)?;
    Ok(())
}

/// Receive one message of type `M` (at most `max_len` bytes, `max_fds` fds). `peer`
/// names the other end in errors.
pub(crate) fn recv<M: DeserializeOwned>(
    chan: BorrowedFd<'_>,
    max_len: usize,
    max_fds: usize,
    peer: &'static str,
) -> Result<(M, Vec<OwnedFd>), ChannelError> {
    let mut buf = vec![0u8; max_len];
    let (n, fds) = fdpass::recv_fds(chan, &mut buf, max_fds)?;
    if n == 0 {
        return Err(ChannelError::Closed { peer });
    }
    if n == max_len {
        return Err(ChannelError::Malformed {
            peer,
            detail: format!("longer than {max_len} bytes"),
        });
    }
    let message = serde_json::from_slice(&buf[..n]).map_err(|e| ChannelError::Malformed {
        peer,
        detail: format!("{e}: {}", String::from_utf8_lossy(&buf[..n.min(200)])),
    })?;
    Ok((message, fds))
}

/// Whether a message is waiting on `chan` (or its peer closed it) within `timeout`.
pub(crate) fn readable(chan: BorrowedFd<'_>, timeout: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let ts = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    let mut fds = [PollFd::from_borrowed_fd(chan, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
}

/// The largest [`FromInit`] message.
pub(crate) const FROM_INIT_MAX: usize = 64 * 1024;

/// What the spawner sends a sandbox's init.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ToInit {
    /// Start building the sandbox; the mounts named are attached, in order.
    Go { mounts: Vec<GoMount> },
    /// A pooled sandbox's run.
    Run(Box<RunSpec>),
    /// Direct mode (no pid namespace): kill the payload and everything it started,
    /// then report and exit.
    Kill,
    /// To a zygote (fork.rs): fork a child for one run. The fds, in order: the run's
    /// [`RunSpec`] in a memfd (read by the child only: the zygote never holds a
    /// request's arguments or environment, which would be in every later child's
    /// memory), the run's channel, the run directory's lock, the fds the spec names,
    /// then the cgroup files the child writes itself into.
    Fork,
}

impl ToInit {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            ToInit::Go { .. } => "go",
            ToInit::Run(_) => "run",
            ToInit::Kill => "kill",
            ToInit::Fork => "fork",
        }
    }
}

/// The most binds GO brings as detached mounts ([`GoMount::Bind`]).
pub(crate) const GO_MAX_BRIDGED: usize = 32;

/// A mount attached to [`ToInit::Go`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GoMount {
    /// The workspace, idmapped through the sandbox's user namespace.
    Workspace,
    /// An image's root, idmapped likewise.
    Image,
    /// The source of bind step N, which the sandbox's user could not reach (below a
    /// directory it may not enter, e.g. a 0700 home): a detached copy of the mount,
    /// made by the root engine, attached instead of bound.
    Bind(usize),
}

/// The per-run part of a pooled sandbox's payload. Its fds ride along in the order
/// stdin (when `stdin_fd`), stdout, stderr, files (when `files_fd`), workspace (when
/// `workspace_fd`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunSpec {
    pub argv: Vec<String>,
    /// The complete environment (base plus the request's).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub rlimit_nproc: Option<u64>,
    pub rlimit_data: Option<u64>,
    pub stdin_fd: bool,
    #[serde(default)]
    pub files_fd: bool,
    pub workspace_fd: bool,
}

impl RunSpec {
    /// How many fds come with it.
    pub(crate) fn fd_count(&self) -> usize {
        2 + usize::from(self.stdin_fd) + usize::from(self.files_fd) + usize::from(self.workspace_fd)
    }
}

/// What a sandbox's init (or its payload, or a pre-started interpreter) tells its
/// spawner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum FromInit {
    /// Setup failed; the message names the step. The init exits.
    SetupFailed { message: String },
    /// A value of the request is wrong inside the sandbox (the caller's mistake): the
    /// field, the value and what is wrong with it.
    Refused {
        field: Option<phantom_api::request::Field>,
        value: Option<String>,
        message: String,
    },
    /// The egress proxy's listening socket is attached (network `limited`).
    Proxy,
    /// A pooled sandbox (or a pre-started interpreter) waits for its run.
    Ready,
    /// A persistent sandbox is up; its namespace fds are attached.
    Namespaces,
    /// The payload is fenced; Landlock enforces this ABI.
    Landlock { abi: u32 },
    /// A pooled sandbox's pre-started interpreter took the run.
    Prewarmed,
    /// A zygote imported these modules (`performance.preload`); `Ready` follows.
    Preloaded { modules: Vec<String> },
    /// A zygote's child (pid 1 of the run's namespaces) started; its pidfd is attached
    /// (the zygote is its parent, so the engine cannot wait for it).
    Forked,
    /// Mode wasm: the module is loaded (compiled now, or taken from the compile
    /// cache); its wall time starts.
    WasmLoaded { compiled: bool, load_ms: f64 },
    /// Mode wasm: the module ran out of wall time (epoch interruption); `Exited`
    /// follows.
    TimedOut,
    /// How the payload ended, with its own rusage.
    Exited {
        status: Status,
        user_us: u64,
        sys_us: u64,
        max_rss_kb: u64,
        /// The size-limited filesystems (tmpfs: the workspace, /tmp, /dev/shm) that
        /// were full when the payload ended.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        full: Vec<String>,
    },
}

impl FromInit {
    /// The message's name, for [`ChannelError::UnexpectedMessage`].
    pub(crate) fn name(&self) -> String {
        match self {
            FromInit::SetupFailed { message } => format!("setup_failed ({message})"),
            FromInit::Refused { message, .. } => format!("refused ({message})"),
            FromInit::Proxy => "proxy".into(),
            FromInit::Ready => "ready".into(),
            FromInit::Namespaces => "namespaces".into(),
            FromInit::Landlock { .. } => "landlock".into(),
            FromInit::Prewarmed => "prewarmed".into(),
            FromInit::Forked => "forked".into(),
            FromInit::Preloaded { .. } => "preloaded".into(),
            FromInit::WasmLoaded { .. } => "wasm_loaded".into(),
            FromInit::TimedOut => "timed_out".into(),
            FromInit::Exited { .. } => "exited".into(),
        }
    }

    /// The payload's exit message.
    pub(crate) fn exited(status: ExitStatus, usage: Usage, full: Vec<String>) -> FromInit {
        FromInit::Exited {
            status: status.into(),
            user_us: usage.user.as_micros() as u64,
            sys_us: usage.sys.as_micros() as u64,
            max_rss_kb: usage.max_rss_kb,
            full,
        }
    }
}

/// An [`ExitStatus`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Exited(i32),
    Signaled(i32),
}

impl From<ExitStatus> for Status {
    fn from(s: ExitStatus) -> Status {
        match s {
            ExitStatus::Exited(c) => Status::Exited(c),
            ExitStatus::Signaled(s) => Status::Signaled(s),
        }
    }
}

impl From<Status> for ExitStatus {
    fn from(s: Status) -> ExitStatus {
        match s {
            Status::Exited(c) => ExitStatus::Exited(c),
            Status::Signaled(s) => ExitStatus::Signaled(s),
        }
    }
}

/// What a helper process reports to the one that forked it: a persistent sandbox's
/// keeper to `create`, the helper that joins a sandbox to `exec`, and a keeper to an
/// `exec` asking for the sandbox's namespaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Report {
    /// The keeper's sandbox runs; the warnings its start produced.
    Ready { warnings: Vec<String> },
    /// The command joined the sandbox as this process (a child of the front end).
    Child { pid: i32 },
    /// A background command started as this process (its pid inside the sandbox).
    Background { pid: i32 },
    /// The sandbox's namespaces are attached.
    Namespaces,
    /// It failed; the message says why.
    Failed { message: String },
    /// To a keeper, from the engine: the attached read ends of an exec's output pipes,
    /// still held open by processes the command left behind; the keeper reads and
    /// discards what they write until they close them (see keeper.rs).
    Adopt,
}

impl Report {
    pub(crate) fn name(&self) -> String {
        match self {
            Report::Ready { .. } => "ready".into(),
            Report::Child { .. } => "child".into(),
            Report::Namespaces => "namespaces".into(),
            Report::Adopt => "adopt".into(),
            Report::Background { .. } => "background".into(),
            Report::Failed { message } => format!("failed ({message})"),
        }
    }
}

/// Send a message of the engine protocol (`phantom_api::engine`): inline when it is
/// small, else in a memfd (see the protocol's docs). `wait`: block while the peer's
/// buffer is full (a client sending its request); without it a peer that does not
/// read gets an error (the engine never waits for a client).
pub(crate) fn send_message<M: Serialize>(
    conn: BorrowedFd<'_>,
    message: &M,
    fds: &[BorrowedFd<'_>],
    wait: bool,
) -> Result<(), ChannelError> {
    use phantom_api::engine::{LARGE_MARKER, MAX_INLINE};
    let bytes = serde_json::to_vec(message).expect("protocol messages serialize");
    let send = |bytes: &[u8], fds: &[BorrowedFd<'_>]| {
        if wait {
            fdpass::send_fds(conn, bytes, fds)
        } else {
            fdpass::try_send_fds(conn, bytes, fds)
        }
    };
    if bytes.len() <= MAX_INLINE {
        send(&bytes, fds)?;
        return Ok(());
    }
    let memfd = memfd_with("phantom-message", &bytes)?;
    let mut all = vec![memfd.as_fd()];
    all.extend_from_slice(fds);
    send(&[LARGE_MARKER], &all)?;
    Ok(())
}

/// Receive a message of the engine protocol with up to `max_fds` fds (a large one is
/// read from its memfd). `peer` names the other end in errors.
pub(crate) fn recv_message<M: DeserializeOwned>(
    conn: BorrowedFd<'_>,
    max_fds: usize,
    peer: &'static str,
) -> Result<(M, Vec<OwnedFd>), ChannelError> {
    use phantom_api::engine::{LARGE_MARKER, MAX_INLINE, MAX_MESSAGE};
    let mut buf = vec![0u8; MAX_INLINE + 1];
    let (n, mut fds) = fdpass::recv_fds(conn, &mut buf, max_fds + 1)?;
    if n == 0 {
        return Err(ChannelError::Closed { peer });
    }
    let malformed = |detail: String| ChannelError::Malformed { peer, detail };
    let bytes = if n == 1 && buf[0] == LARGE_MARKER {
        if fds.is_empty() {
            return Err(malformed("a large message without its memfd".into()));
        }
        let memfd = fds.remove(0);
        let size = rustix::fs::fstat(&memfd)
            .map_err(|e| SysError::new("fstat", "phantom-message", e.into()))?
            .st_size
            .max(0) as u64;
        if size > MAX_MESSAGE {
            return Err(malformed(format!("{size} bytes, more than {MAX_MESSAGE}")));
        }
        read_memfd(&memfd, "phantom-message", size as usize)?
    } else if n > MAX_INLINE {
        return Err(malformed(format!(
            "an inline message longer than {MAX_INLINE} bytes"
        )));
    } else {
        buf.truncate(n);
        buf
    };
    if fds.len() > max_fds {
        return Err(malformed(format!("{} fds, at most {max_fds}", fds.len())));
    }
    let message = serde_json::from_slice(&bytes).map_err(|e| {
        malformed(format!(
            "{e}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ))
    })?;
    Ok((message, fds))
}

/// A memfd holding `bytes`.
pub(crate) fn memfd_with(name: &str, bytes: &[u8]) -> Result<OwnedFd, SysError> {
    let memfd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| SysError::new("memfd_create", name, e.into()))?;
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::pwrite(&memfd, &bytes[written..], written as u64)
            .map_err(|e| SysError::new("write", name, e.into()))?;
    }
    Ok(memfd)
}

/// Up to `max` bytes of `memfd`, from offset 0 whatever its file offset.
pub(crate) fn read_memfd(memfd: &OwnedFd, name: &str, max: usize) -> Result<Vec<u8>, SysError> {
    let mut bytes = vec![0u8; max];
    let mut read = 0;
    while read < bytes.len() {
        match rustix::io::pread(memfd, &mut bytes[read..], read as u64) {
            Ok(0) => break,
            Ok(k) => read += k,
            Err(e) => return Err(SysError::new("read", name, e.into())),
        }
    }
    bytes.truncate(read);
    Ok(bytes)
}

/// Send on a channel we hold as an `OwnedFd` (convenience for the init's side).
pub(crate) fn tell(chan: &OwnedFd, message: &FromInit) -> Result<(), ChannelError> {
    send(chan.as_fd(), message, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooled run whose argv and environment passed 256 KiB failed: "cannot hand the
    /// run to the pooled sandbox: Message too long". It travels in a memfd now.
    #[test]
    fn a_run_larger_than_a_packet_reaches_a_pooled_init() {
        let (a, b) = fdpass::channel().unwrap();
        let (stdout, _keep) = phantom_linux::process::pipe().unwrap();
        let big = "a".repeat(300 * 1024);
        let spec = RunSpec {
            argv: vec!["sh".into(), "-c".into(), "echo ${#BIG}".into()],
            env: vec![("BIG".into(), big.clone())],
            cwd: "/workspace".into(),
            rlimit_nproc: None,
            rlimit_data: None,
            stdin_fd: false,
            files_fd: false,
            workspace_fd: false,
        };
        // The peer reads while we send: the memfd, not the socket buffer, holds it.
        let reader = std::thread::spawn(move || recv_message::<ToInit>(b.as_fd(), 5, "spawner"));
        send_message(
            a.as_fd(),
            &ToInit::Run(Box::new(spec)),
            &[stdout.as_fd()],
            true,
        )
        .unwrap();
        let (msg, fds) = reader.join().unwrap().unwrap();
        let ToInit::Run(got) = msg else {
            panic!("not a run: {}", msg.name())
        };
        assert_eq!(got.env, [("BIG".to_string(), big)]);
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn messages_cross_a_socket_pair_with_their_fds() {
        let (a, b) = fdpass::channel().unwrap();
        let (pipe_r, _pipe_w) = phantom_linux::process::pipe().unwrap();
        send(
            a.as_fd(),
            &ToInit::Go {
                mounts: vec![GoMount::Workspace],
            },
            &[pipe_r.as_fd()],
        )
        .unwrap();
        let (msg, fds) = recv::<ToInit>(b.as_fd(), 4096, 2, "spawner").unwrap();
        assert!(matches!(msg, ToInit::Go { mounts } if mounts == [GoMount::Workspace]));
        assert_eq!(fds.len(), 1);

        tell(
            &b,
            &FromInit::exited(ExitStatus::Signaled(9), Usage::default(), Vec::new()),
        )
        .unwrap();
        let (msg, _) = recv::<FromInit>(a.as_fd(), FROM_INIT_MAX, 0, "init").unwrap();
        assert!(matches!(
            msg,
            FromInit::Exited {
                status: Status::Signaled(9),
                ..
            }
        ));
    }

    #[test]
    fn text_that_is_not_a_message_is_malformed_and_a_closed_peer_is_said() {
        let (a, b) = fdpass::channel().unwrap();
        fdpass::send_bytes(&a, b"EXIT 0").unwrap();
        let err = recv::<FromInit>(b.as_fd(), FROM_INIT_MAX, 0, "init").unwrap_err();
        assert!(matches!(err, ChannelError::Malformed { .. }), "{err}");
        drop(a);
        let err = recv::<FromInit>(b.as_fd(), FROM_INIT_MAX, 0, "init").unwrap_err();
        assert_eq!(err.to_string(), "the init closed the channel");
    }

    #[test]
    fn large_protocol_messages_travel_in_a_memfd_with_their_fds() {
        use phantom_api::engine::Reply;
        let (a, b) = fdpass::channel().unwrap();
        let big = Reply::Destroyed((0..20_000).map(|i| format!("sandbox-{i}")).collect());
        let (pipe_r, _pipe_w) = phantom_linux::process::pipe().unwrap();
        // The reader runs alongside: the marker packet is small, the memfd holds the rest.
        send_message(a.as_fd(), &big, &[pipe_r.as_fd()], true).unwrap();
        let (got, fds) = recv_message::<Reply>(b.as_fd(), 1, "engine").unwrap();
        assert_eq!(got, big);
        assert_eq!(fds.len(), 1);
        send_message(a.as_fd(), &Reply::Workspace, &[], false).unwrap();
        assert_eq!(
            recv_message::<Reply>(b.as_fd(), 0, "engine").unwrap().0,
            Reply::Workspace
        );
    }

    #[test]
    fn the_interpreters_ready_is_a_from_init_message() {
        // zygote.py sends exactly this text.
        let msg: FromInit = serde_json::from_str(r#"{"type": "ready"}"#).unwrap();
        assert!(matches!(msg, FromInit::Ready));
    }
}
