//! Network setup inside a fresh network namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{check, SysError, SysResult};

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// Bring the loopback interface up (a new network namespace starts with lo down).
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: socket takes integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd as _, "socket", || "AF_INET".into())?;
    // SAFETY: socket returned a new fd we now own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq_for("lo");
    // SAFETY: req is a valid ifreq for the duration of the ioctl.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    check(ret as _, "ioctl", || "SIOCGIFFLAGS lo".into())?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: req is a valid ifreq for the duration of the ioctl.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    check(ret as _, "ioctl", || "SIOCSIFFLAGS lo up".into()).map(|_| ())
}

/// Whether interface `name` is up (for probes and doctor).
pub fn is_up(name: &str) -> SysResult<bool> {
    // SAFETY: socket takes integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd as _, "socket", || "AF_INET".into())?;
    // SAFETY: socket returned a new fd we now own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq_for(name);
    // SAFETY: req is a valid ifreq for the duration of the ioctl.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    if ret < 0 {
        return Err(SysError::last("ioctl", format!("SIOCGIFFLAGS {name}")));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags } & libc::IFF_UP as libc::c_short != 0)
}

/// A TCP socket listening on 127.0.0.1:`port`, close-on-exec. The sandbox init makes
/// one inside its network namespace for the egress proxy and hands it to the front
/// end, which accepts on it from outside.
pub fn listen_loopback(port: u16) -> SysResult<OwnedFd> {
    use rustix::net::{bind, listen, socket_with, AddressFamily, SocketFlags, SocketType};
    let what = || format!("127.0.0.1:{port}");
    let sock = socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| SysError::new("socket", what(), e.into()))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    bind(&sock, &addr).map_err(|e| SysError::new("bind", what(), e.into()))?;
    listen(&sock, 128).map_err(|e| SysError::new("listen", what(), e.into()))?;
    Ok(sock)
}
