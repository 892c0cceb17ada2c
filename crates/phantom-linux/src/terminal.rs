//! Pseudo-terminals for sandboxed processes that ask for one (E2B's PTY): a pair whose
//! slave becomes the process's stdin, stdout, stderr and controlling terminal, while
//! the front end keeps the master. The pair is new and the sandbox's alone: no
//! terminal of the user's ever reaches a payload (the CLI relays one through a pipe).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcsetwinsize, Winsize};

use crate::{SysError, SysResult};

fn sys(op: &'static str) -> impl Fn(rustix::io::Errno) -> SysError {
    move |e| SysError::new(op, "pty", e.into())
}

/// A new pseudo-terminal of `cols` x `rows`: (master, slave), both close-on-exec; the
/// master is non-blocking (for an event loop).
pub fn open_pty(cols: u16, rows: u16) -> SysResult<(OwnedFd, OwnedFd)> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(sys("posix_openpt"))?;
    let flags = rustix::fs::fcntl_getfl(&master).map_err(sys("fcntl"))?;
    rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK).map_err(sys("fcntl"))?;
    grantpt(&master).map_err(sys("grantpt"))?;
    unlockpt(&master).map_err(sys("unlockpt"))?;
    let name = ptsname(&master, Vec::new()).map_err(sys("ptsname"))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open the pty's slave"))?;
    resize(master.as_fd(), cols, rows)?;
    Ok((master, slave))
}

/// Tell the terminal (and the process group in its foreground) its new size.
pub fn resize(master: BorrowedFd<'_>, cols: u16, rows: u16) -> SysResult<()> {
    tcsetwinsize(
        master,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .map_err(sys("TIOCSWINSZ"))
}

/// Read what the terminal's process wrote, waiting at most `timeout`: Ok(None) when
/// nothing came, Ok(Some(0)) once every slave is closed (the kernel's EIO).
pub fn read_master(
    master: BorrowedFd<'_>,
    buf: &mut [u8],
    timeout: std::time::Duration,
) -> SysResult<Option<usize>> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&master, PollFlags::IN)];
    let ts = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    match poll(&mut fds, Some(&ts)) {
        Ok(0) | Err(rustix::io::Errno::INTR) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(sys("poll")(e)),
    }
    match rustix::io::read(master, buf) {
        Ok(n) => Ok(Some(n)),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(None),
        Err(rustix::io::Errno::IO) => Ok(Some(0)),
        Err(e) => Err(sys("read the terminal")(e)),
    }
}

/// Write all of `data` to the terminal (its process's input), waiting while the
/// terminal is full, at most until `deadline`.
pub fn write_master(
    master: BorrowedFd<'_>,
    mut data: &[u8],
    deadline: std::time::Instant,
) -> SysResult<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    while !data.is_empty() {
        match rustix::io::write(master, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(sys("write the terminal")(rustix::io::Errno::TIMEDOUT));
                }
                let mut fds = [PollFd::new(&master, PollFlags::OUT)];
                let ts = Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: left.subsec_nanos() as i64,
                };
                let _ = poll(&mut fds, Some(&ts));
            }
            Err(e) => return Err(sys("write the terminal")(e)),
        }
    }
    Ok(())
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    rustix::termios::isatty(fd)
}

/// Make `fd` (a terminal) the controlling terminal of the calling session leader.
pub fn take_controlling_terminal(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::process::ioctl_tiocsctty(fd).map_err(sys("TIOCSCTTY"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_carries_bytes_both_ways_and_its_size() {
        let (master, slave) = open_pty(100, 30).unwrap();
        assert!(is_terminal(slave.as_fd()));
        let size = rustix::termios::tcgetwinsize(&slave).unwrap();
        assert_eq!((size.ws_col, size.ws_row), (100, 30));
        resize(master.as_fd(), 120, 40).unwrap();
        let size = rustix::termios::tcgetwinsize(&slave).unwrap();
        assert_eq!((size.ws_col, size.ws_row), (120, 40));
        let mut buf = [0u8; 16];
        assert_eq!(
            rustix::io::read(&master, &mut buf),
            Err(rustix::io::Errno::AGAIN),
            "the master does not block"
        );
        let wait = std::time::Duration::from_millis(50);
        assert_eq!(read_master(master.as_fd(), &mut buf, wait).unwrap(), None);
        rustix::io::write(&slave, b"out\n").unwrap();
        let n = read_master(master.as_fd(), &mut buf, wait)
            .unwrap()
            .unwrap();
        // The line discipline turns \n into \r\n on the way out.
        assert_eq!(&buf[..n], b"out\r\n");
        let deadline = std::time::Instant::now() + wait;
        write_master(master.as_fd(), b"in\n", deadline).unwrap();
        let n = rustix::io::read(&slave, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"in\n");
        // What is left (the terminal echoes the input), then the end once no slave
        // is open.
        drop(slave);
        let mut ends = None;
        for _ in 0..10 {
            if let Some(0) = read_master(master.as_fd(), &mut buf, wait).unwrap() {
                ends = Some(0);
                break;
            }
        }
        assert_eq!(ends, Some(0));
    }
}
