//! What phantom-oci's processes say to each other while a container is set up,
//! started and entered: `create` and the init it forks (a socketpair), the helper
//! that forks an init into namespaces joined by path, `start` and the init waiting
//! for it (the start socket), `exec` and the process it forks. One JSON message per
//! SOCK_SEQPACKET packet ([`crate::channel`]), an fd attached where a message says.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use super::OciError;

/// Sent to an init (or to the process `exec` forks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Order {
    /// The attached fd is a detached, idmapped copy of the rootfs (`mount: None`) or
    /// of the source of `mounts[N]`, to attach instead of binding the host's.
    Idmapped { mount: Option<usize> },
    /// Set up: the init is in its cgroup (and its user namespace has its maps);
    /// `pid` is its pid as the host sees it.
    Go { pid: i32 },
    /// The createRuntime hooks ran: go on.
    Continue,
    /// A createRuntime hook failed: give up.
    Abort,
    /// `start`: exec the container's process.
    Start,
}

/// Sent by an init (or by the helper that forked it, or by `exec`'s child).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Answer {
    /// The process was forked into the namespaces it joins: its pid as the host
    /// sees it.
    Forked { pid: i32 },
    /// The namespaces and mounts exist: run the createRuntime hooks, then say
    /// [`Order::Continue`].
    Hooks,
    /// Set up, waiting for [`Order::Start`].
    Ready,
    /// The container's process is about to exec.
    Started,
    /// What went wrong; the sender exits.
    Failed { error: String },
}

/// The longest message: an error text, bounded by the senders.
const MAX_LEN: usize = 64 * 1024;

/// Send `message` on `chan`, with `fd` attached.
pub(super) fn send<M: Serialize>(
    chan: &impl AsFd,
    message: &M,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), OciError> {
    crate::channel::send(chan.as_fd(), message, fd.as_slice()).map_err(|e| OciError(e.to_string()))
}

/// Receive one message and its fd; `None` when `peer` closed its end (exited).
pub(super) fn recv<M: serde::de::DeserializeOwned>(
    chan: &impl AsFd,
    peer: &'static str,
) -> Result<Option<(M, Option<OwnedFd>)>, OciError> {
    match crate::channel::recv(chan.as_fd(), MAX_LEN, 1, peer) {
        Ok((message, mut fds)) => Ok(Some((message, fds.pop()))),
        Err(crate::channel::ChannelError::Closed { .. }) => Ok(None),
        Err(e) => Err(OciError(e.to_string())),
    }
}

/// Tell `chan` what failed (best effort: the sender exits next).
pub(super) fn fail(chan: &impl AsFd, error: &OciError) {
    let _ = send(
        chan,
        &Answer::Failed {
            error: error.0.clone(),
        },
        None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_their_fds_cross_a_socketpair() {
        let (a, b) = phantom_linux::fdpass::channel().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        send(&a, &Order::Idmapped { mount: Some(3) }, Some(file.as_fd())).unwrap();
        send(&a, &Order::Go { pid: 42 }, None).unwrap();
        let (first, fd) = recv::<Order>(&b, "create").unwrap().unwrap();
        assert_eq!(first, Order::Idmapped { mount: Some(3) });
        assert!(fd.is_some());
        let (second, fd) = recv::<Order>(&b, "create").unwrap().unwrap();
        assert_eq!(second, Order::Go { pid: 42 });
        assert!(fd.is_none());
        fail(&b, &OciError("no".into()));
        let (answer, _) = recv::<Answer>(&a, "init").unwrap().unwrap();
        assert_eq!(answer, Answer::Failed { error: "no".into() });
        drop(b);
        assert!(recv::<Answer>(&a, "init").unwrap().is_none());
    }

    #[test]
    fn a_message_of_the_other_direction_is_refused_not_misread() {
        let (a, b) = phantom_linux::fdpass::channel().unwrap();
        send(&a, &Order::Start, None).unwrap();
        let err = recv::<Answer>(&b, "start").unwrap_err();
        assert!(err.0.contains("malformed"), "{err}");
    }
}
