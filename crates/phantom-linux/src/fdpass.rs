//! A seqpacket channel between a parent and a child process that carries small
//! messages and, optionally, one file descriptor (SCM_RIGHTS).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use crate::{SysError, SysResult};

/// A connected pair of close-on-exec SOCK_SEQPACKET unix sockets.
pub fn channel() -> SysResult<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| SysError::new("socketpair", "AF_UNIX SOCK_SEQPACKET", e.into()))
}

/// Send one message, with `fd` attached when given.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> SysResult<()> {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    send_fds(sock, bytes, &fds)
}

/// The most fds one message carries.
pub const MAX_FDS: usize = 16;

/// Send one message with up to [`MAX_FDS`] fds attached.
pub fn send_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> SysResult<()> {
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} fds per message");
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        ancillary.push(SendAncillaryMessage::ScmRights(fds));
    }
    sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut ancillary,
        SendFlags::NOSIGNAL,
    )
    .map_err(|e| SysError::new("sendmsg", "channel", e.into()))?;
    Ok(())
}

/// Send one message with up to [`MAX_FDS`] fds attached, without waiting: a peer
/// whose receive buffer is full gets `EAGAIN` (an engine never blocks on a client
/// that stopped reading).
pub fn try_send_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> SysResult<()> {
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} fds per message");
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        ancillary.push(SendAncillaryMessage::ScmRights(fds));
    }
    sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut ancillary,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )
    .map_err(|e| SysError::new("sendmsg", "channel", e.into()))?;
    Ok(())
}

/// Receive one message (up to `buf.len()` bytes) and the fd attached to it, if any.
/// Returns 0 bytes when the peer has closed its end.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<(usize, Option<OwnedFd>)> {
    let (n, mut fds) = recv_fds(sock, buf, 1)?;
    Ok((n, fds.pop()))
}

/// Receive one message and the fds attached to it (more than `max` is an error: the
/// extra fds are closed). Returns 0 bytes when the peer has closed its end.
pub fn recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max: usize,
) -> SysResult<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(SysError::new("recvmsg", "channel", e.into())),
        }
    };
    let mut received = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            received.extend(fds);
        }
    }
    if received.len() > max {
        return Err(SysError::new(
            "recvmsg",
            "channel",
            std::io::Error::other(format!(
                "{} fds attached, at most {max} expected",
                received.len()
            )),
        ));
    }
    Ok((msg.bytes, received))
}

/// Convenience: send without an fd.
pub fn send_bytes(sock: impl AsFd, bytes: &[u8]) -> SysResult<()> {
    send(sock.as_fd(), bytes, None)
}

/// A listening SOCK_SEQPACKET unix socket at `path` (mode 0600: only its owner may
/// connect). An existing socket file at `path` is replaced.
pub fn listen_seqpacket(path: &std::path::Path) -> SysResult<OwnedFd> {
    use rustix::net::{bind, listen, socket_with, SocketAddrUnix};
    let err = |op: &'static str| {
        move |e: rustix::io::Errno| SysError::new(op, path.display().to_string(), e.into())
    };
    let sock = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(err("socket"))?;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SysError::new("unlink", path.display().to_string(), e)),
    }
    let addr = SocketAddrUnix::new(path).map_err(err("sockaddr"))?;
    // Created 0600 from the start: no window in which others could connect.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = bind(&sock, &addr);
    rustix::process::umask(old);
    bound.map_err(err("bind"))?;
    listen(&sock, 64).map_err(err("listen"))?;
    Ok(sock)
}

/// Accept a connection on a listening socket (None when none is pending).
pub fn accept(listener: BorrowedFd<'_>) -> SysResult<Option<OwnedFd>> {
    match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Ok(None),
        Err(e) => Err(SysError::new("accept", "listener", e.into())),
    }
}

/// Connect to a SOCK_SEQPACKET unix socket at `path`.
pub fn connect_seqpacket(path: &std::path::Path) -> SysResult<OwnedFd> {
    use rustix::net::{connect, socket_with, SocketAddrUnix};
    let err = |op: &'static str| {
        move |e: rustix::io::Errno| SysError::new(op, path.display().to_string(), e.into())
    };
    let sock = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(err("socket"))?;
    let addr = SocketAddrUnix::new(path).map_err(err("sockaddr"))?;
    connect(&sock, &addr).map_err(err("connect"))?;
    Ok(sock)
}

/// The uid of the process at the other end of a unix socket (SO_PEERCRED).
pub fn peer_uid(sock: BorrowedFd<'_>) -> SysResult<u32> {
    rustix::net::sockopt::socket_peercred(sock)
        .map(|c| c.uid.as_raw())
        .map_err(|e| SysError::new("getsockopt", "SO_PEERCRED", e.into()))
}
