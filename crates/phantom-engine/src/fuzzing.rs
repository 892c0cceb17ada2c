//! The decoders of the engine's typed channels, for the fuzz targets in `fuzz/` (not an
//! API): each takes the bytes a peer could send and decodes them the way the receiver
//! does — over a real `SOCK_SEQPACKET` pair, a large message in a memfd — and returns
//! the decoded message as JSON (so that a target can check that it round-trips).

use std::os::fd::AsFd;

use phantom_api::engine::{Reply, Request, LARGE_MARKER};
use phantom_api::request::{FieldError, FileSpec, Limits};
use phantom_linux::fdpass;
use phantom_policy::Overrides;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::channel::{self, FromInit, Report, RunSpec, ToInit};
use crate::fork::ForkPlan;

/// A channel's message type, as its receiver reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The engine reading a client's [`Request`] (the engine protocol).
    EngineRequest,
    /// A client reading the engine's [`Reply`].
    EngineReply,
    /// A pooled init reading its run ([`ToInit`], possibly in a memfd).
    ToInitPooled,
    /// An init or a zygote reading [`ToInit`] from one packet.
    ToInit,
    /// The spawner reading [`FromInit`].
    FromInit,
    /// A front end reading a keeper's or an exec helper's [`Report`].
    Report,
    /// A zygote's child reading its [`RunSpec`] from a memfd.
    RunSpec,
    /// A zygote reading its [`ForkPlan`] from a memfd.
    ForkPlan,
    /// An init reading a request's files from a memfd.
    Files,
}

impl Message {
    pub const ALL: [Message; 9] = [
        Message::EngineRequest,
        Message::EngineReply,
        Message::ToInitPooled,
        Message::ToInit,
        Message::FromInit,
        Message::Report,
        Message::RunSpec,
        Message::ForkPlan,
        Message::Files,
    ];
}

/// Decode `bytes` as the receiver of `message` does. A packet that is the single
/// byte [`LARGE_MARKER`] followed by more bytes is sent as the marker with those bytes
/// in a memfd (the engine protocol's large messages).
pub fn decode(message: Message, bytes: &[u8]) -> Result<Value, String> {
    match message {
        Message::EngineRequest => {
            let request: Request = over_channel(bytes, |fd| {
                channel::recv_message(fd, fdpass::MAX_FDS - 1, "client")
            })?;
            // What the engine asks of every request before it serves it.
            let _ = (request.fd_names(), request.kind());
            json(&request)
        }
        Message::EngineReply => {
            let reply: Reply = over_channel(bytes, |fd| {
                channel::recv_message(fd, fdpass::MAX_FDS - 1, "engine")
            })?;
            let _ = reply.is_final();
            json(&reply)
        }
        Message::ToInitPooled => {
            let m: ToInit = over_channel(bytes, |fd| channel::recv_message(fd, 5, "spawner"))?;
            let _ = m.name();
            json(&m)
        }
        Message::ToInit => {
            let m: ToInit = over_channel(bytes, |fd| {
                channel::recv(fd, 4096, fdpass::MAX_FDS, "engine")
            })?;
            let _ = m.name();
            json(&m)
        }
        Message::FromInit => {
            let m: FromInit = over_channel(bytes, |fd| {
                channel::recv(fd, channel::FROM_INIT_MAX, fdpass::MAX_FDS, "sandbox")
            })?;
            let _ = m.name();
            json(&m)
        }
        Message::Report => {
            let m: Report = over_channel(bytes, |fd| channel::recv(fd, 64 * 1024, 0, "keeper"))?;
            let _ = m.name();
            json(&m)
        }
        Message::RunSpec => {
            let spec: RunSpec = from_memfd(bytes)?;
            let _ = spec.fd_count();
            json(&spec)
        }
        Message::ForkPlan => json(&from_memfd::<ForkPlan>(bytes)?),
        Message::Files => json(&from_memfd::<Vec<FileSpec>>(bytes)?),
    }
}

/// The engine's reading of a request's limits (`prepare.rs`): what the policy
/// compiler gets, and the output cap.
pub fn overrides(
    limits: &Limits,
    image: Option<&str>,
) -> Result<(Overrides, Option<u64>), FieldError> {
    crate::prepare::overrides(limits, image)
}

fn json<M: Serialize>(m: &M) -> Result<Value, String> {
    serde_json::to_value(m).map_err(|e| format!("a decoded message does not serialize: {e}"))
}

/// Send `bytes` on a fresh channel and receive them with `recv`.
fn over_channel<M>(
    bytes: &[u8],
    recv: impl FnOnce(
        std::os::fd::BorrowedFd<'_>,
    ) -> Result<(M, Vec<std::os::fd::OwnedFd>), channel::ChannelError>,
) -> Result<M, String> {
    let (a, b) = fdpass::channel().map_err(|e| e.to_string())?;
    match bytes.split_first() {
        Some((&LARGE_MARKER, rest)) if !rest.is_empty() => {
            let memfd = channel::memfd_with("fuzz", rest).map_err(|e| e.to_string())?;
            fdpass::send_fds(a.as_fd(), &[LARGE_MARKER], &[memfd.as_fd()])
        }
        _ => fdpass::send_fds(a.as_fd(), bytes, &[]),
    }
    .map_err(|e| e.to_string())?;
    drop(a);
    recv(b.as_fd()).map(|(m, _)| m).map_err(|e| e.to_string())
}

/// Read `bytes` back from a memfd as the zygote and its children do.
fn from_memfd<M: DeserializeOwned>(bytes: &[u8]) -> Result<M, String> {
    let memfd = channel::memfd_with("fuzz", bytes).map_err(|e| e.to_string())?;
    let read = channel::read_memfd(&memfd, "fuzz", bytes.len() + 1).map_err(|e| e.to_string())?;
    serde_json::from_slice(&read).map_err(|e| e.to_string())
}
