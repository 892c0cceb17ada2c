//! Moving bytes between the caller and a sandbox: the payload's stdout and stderr
//! (relayed through pipes, so that the output cap holds and `--json` can capture them)
//! and, when the caller's stdin is a terminal, its stdin.

use std::os::fd::OwnedFd;

use phantom_linux::process;
use rustix::event::{PollFd, PollFlags};

use crate::EngineError;

/// The payload's stdin. The payload is given only a pipe, a regular file or /dev/null:
/// any other handle could be a door out of its root (a directory — `phantom run < /` —
/// lists and, without Landlock, opens host files through it; a socket or a device is
/// the host's). A terminal is never handed over either: through it the payload could
/// write to the screen past the output cap, change the terminal's modes (echo off, raw)
/// for after the run, or inject input. So a terminal — only while phantom is in the
/// terminal's foreground, so that a background run is not stopped by SIGTTIN: it gets
/// an empty stdin — and anything else that can be read (a socket, a character device)
/// are relayed through a pipe; a directory is refused.
pub(crate) struct StdinRelay {
    /// Write end of the payload's stdin pipe, while relaying.
    to_payload: Option<OwnedFd>,
    pending: Vec<u8>,
}

/// What phantom's own stdin is, for the payload.
enum StdinKind {
    /// A pipe, a regular file or /dev/null: handed over as is.
    Pass,
    /// A terminal: relayed while in the foreground.
    Terminal,
    /// Anything else that can be read: relayed.
    Relay,
}

fn stdin_kind() -> Result<StdinKind, EngineError> {
    use rustix::fs::FileType;
    let stdin = rustix::stdio::stdin();
    if rustix::termios::isatty(stdin) {
        return Ok(StdinKind::Terminal);
    }
    let stat = rustix::fs::fstat(stdin)
        .map_err(|e| EngineError::Sys(phantom_linux::SysError::new("fstat", "stdin", e.into())))?;
    Ok(match FileType::from_raw_mode(stat.st_mode) {
        FileType::Fifo | FileType::RegularFile => StdinKind::Pass,
        FileType::CharacterDevice if is_dev_null(&stat) => StdinKind::Pass,
        FileType::Directory => {
            return Err(EngineError::Usage(
                "stdin is a directory: the payload's stdin may be a pipe, a terminal or a \
                 file, never a handle to a host directory (give it `< FILE` or `< /dev/null`)"
                    .into(),
            ))
        }
        _ => StdinKind::Relay,
    })
}

/// Whether `stat` is the null device (1:3), which hands the payload nothing.
pub(crate) fn is_dev_null(stat: &rustix::fs::Stat) -> bool {
    let rdev = stat.st_rdev;
    rustix::fs::major(rdev) == 1 && rustix::fs::minor(rdev) == 3
}

impl StdinRelay {
    /// No relay: the payload's stdin was given explicitly.
    pub(crate) fn none() -> StdinRelay {
        StdinRelay {
            to_payload: None,
            pending: Vec::new(),
        }
    }

    /// The relay, and the fd to give the payload as stdin (None: inherit ours).
    pub(crate) fn new() -> Result<(StdinRelay, Option<OwnedFd>), EngineError> {
        let stdin = rustix::stdio::stdin();
        let mut relay = StdinRelay {
            to_payload: None,
            pending: Vec::new(),
        };
        let relayed = match stdin_kind()? {
            StdinKind::Pass => return Ok((relay, None)),
            StdinKind::Terminal => {
                rustix::termios::tcgetpgrp(stdin).ok() == Some(rustix::process::getpgrp())
            }
            StdinKind::Relay => true,
        };
        let (read, write) = process::pipe()?;
        if relayed {
            rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK).map_err(|e| {
                EngineError::Sys(phantom_linux::SysError::new(
                    "fcntl",
                    "stdin pipe",
                    e.into(),
                ))
            })?;
            relay.to_payload = Some(write);
        }
        Ok((relay, Some(read)))
    }

    /// What to poll: our stdin while nothing is pending, else the pipe for room.
    pub(crate) fn poll_fd(&self) -> Option<PollFd<'_>> {
        let pipe = self.to_payload.as_ref()?;
        Some(if self.pending.is_empty() {
            PollFd::from_borrowed_fd(rustix::stdio::stdin(), PollFlags::IN)
        } else {
            PollFd::new(pipe, PollFlags::OUT)
        })
    }

    /// Move what is ready one step: read our stdin, then write what is pending.
    pub(crate) fn pump(&mut self) {
        if self.to_payload.is_none() {
            return;
        }
        if self.pending.is_empty() {
            let mut buf = [0u8; 4096];
            match rustix::io::read(rustix::stdio::stdin(), &mut buf) {
                // End of input (or the terminal went away): closing the pipe gives the
                // payload EOF.
                Ok(0) => self.to_payload = None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                Err(_) => self.to_payload = None,
            }
        }
        let Some(pipe) = self.to_payload.as_ref() else {
            return;
        };
        if self.pending.is_empty() {
            return;
        }
        match rustix::io::write(pipe, &self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // The payload closed its stdin: stop relaying.
                self.to_payload = None;
                self.pending.clear();
            }
        }
    }
}

/// Which of the program's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where a program's output goes.
pub enum Output<'a> {
    /// To our own stdout and stderr, as it comes.
    Inherit,
    /// Into the report (`stdout`, `stderr`).
    Capture(Vec<u8>, Vec<u8>),
    /// To a callback, as it comes (an HTTP event stream).
    Stream(&'a mut (dyn FnMut(Stream, &[u8]) + Send)),
    /// To a callback, as it comes, without the run's output cap: the output of a
    /// long-lived session (a code context's interpreter), which serves many requests;
    /// the front end caps what each request returns.
    Session(&'a mut (dyn FnMut(Stream, &[u8]) + Send)),
}

impl Output<'_> {
    /// Capture into the report.
    pub fn capture<'a>() -> Output<'a> {
        Output::Capture(Vec::new(), Vec::new())
    }

    fn take(&mut self, stream: Stream, data: &[u8]) {
        match self {
            Output::Inherit => write_all(stream, data),
            Output::Capture(out, err) => match stream {
                Stream::Stdout => out.extend_from_slice(data),
                Stream::Stderr => err.extend_from_slice(data),
            },
            Output::Stream(f) | Output::Session(f) => f(stream, data),
        }
    }

    /// Whether the run's output cap applies (all but [`Output::Session`]).
    pub(crate) fn capped(&self) -> bool {
        !matches!(self, Output::Session(_))
    }

    /// The captured output (lossy UTF-8), as (stdout, stderr), when capturing.
    pub(crate) fn captured(&mut self) -> (Option<String>, Option<String>) {
        match self {
            Output::Capture(out, err) => (
                Some(String::from_utf8_lossy(&std::mem::take(out)).into_owned()),
                Some(String::from_utf8_lossy(&std::mem::take(err)).into_owned()),
            ),
            _ => (None, None),
        }
    }
}

/// stdout and stderr of one run, with the shared output cap.
pub(crate) struct Relay {
    /// The read ends of the payload's pipes, until EOF.
    pipes: [Option<OwnedFd>; 2],
    /// Bytes still kept; beyond, output is read and dropped (so a payload never
    /// blocks on a full pipe).
    pub budget: u64,
    pub truncated: bool,
}

fn write_all(stream: Stream, mut data: &[u8]) {
    let out = match stream {
        Stream::Stdout => rustix::stdio::stdout(),
        Stream::Stderr => rustix::stdio::stderr(),
    };
    while !data.is_empty() {
        match rustix::io::write(out, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return, // reader went away (EPIPE): drop the rest
        }
    }
}

/// Where a relay's fds sit in a poll set (see [`Relay::poll_fds`]).
pub(crate) struct Polled {
    pipes: [Option<usize>; 2],
    stdin: Option<usize>,
}

/// Which of a relay's fds a poll found ready.
pub(crate) struct Ready {
    pipes: [bool; 2],
    stdin: bool,
}

impl Polled {
    pub(crate) fn ready(&self, fds: &[PollFd<'_>]) -> Ready {
        let ready = |i: Option<usize>| i.is_some_and(|i| !fds[i].revents().is_empty());
        Ready {
            pipes: [ready(self.pipes[0]), ready(self.pipes[1])],
            stdin: ready(self.stdin),
        }
    }
}

impl Relay {
    /// The relay of the pipes `out` and `err`, keeping `budget` bytes in all.
    pub(crate) fn new(out: OwnedFd, err: OwnedFd, budget: u64) -> Relay {
        Relay {
            pipes: [Some(out), Some(err)],
            budget,
            truncated: false,
        }
    }

    /// Read what is available on pipe `i` into `output`; false at EOF.
    fn pump(&mut self, i: usize, output: &mut Output<'_>) -> bool {
        let mut buf = [0u8; 65536];
        let Some(pipe) = self.pipes[i].as_ref() else {
            return false;
        };
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => {
                self.pipes[i] = None;
                false
            }
            Ok(n) => {
                let keep = (n as u64).min(self.budget) as usize;
                if keep < n {
                    self.truncated = true;
                }
                self.budget -= keep as u64;
                if keep > 0 {
                    let stream = if i == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    output.take(stream, &buf[..keep]);
                }
                true
            }
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => true,
            Err(_) => {
                self.pipes[i] = None;
                false
            }
        }
    }

    /// Add the output pipes still open, and what the stdin relay waits on, to `fds`.
    pub(crate) fn poll_fds<'a>(
        &'a self,
        stdin: &'a StdinRelay,
        fds: &mut Vec<PollFd<'a>>,
    ) -> Polled {
        let mut polled = Polled {
            pipes: [None, None],
            stdin: None,
        };
        for (i, pipe) in self.pipes.iter().enumerate() {
            if let Some(p) = pipe {
                fds.push(PollFd::new(p, PollFlags::IN));
                polled.pipes[i] = Some(fds.len() - 1);
            }
        }
        if let Some(fd) = stdin.poll_fd() {
            fds.push(fd);
            polled.stdin = Some(fds.len() - 1);
        }
        polled
    }

    /// Move what a poll found ready.
    pub(crate) fn pump_ready(
        &mut self,
        stdin: &mut StdinRelay,
        output: &mut Output<'_>,
        ready: Ready,
    ) {
        if ready.stdin {
            stdin.pump();
        }
        for (i, r) in ready.pipes.into_iter().enumerate() {
            if r {
                self.pump(i, output);
            }
        }
    }

    /// Read what is left once the program is gone, waiting at most `grace` for the
    /// pipes' end; return the pipes still open. What the program wrote before it
    /// exited is in the pipes already and is read; a pipe stays open past that only
    /// while a process the program left behind (`cmd &`) holds it, and the run does not
    /// wait for that process.
    pub(crate) fn drain_for(
        &mut self,
        output: &mut Output<'_>,
        grace: std::time::Duration,
    ) -> Vec<OwnedFd> {
        let deadline = std::time::Instant::now() + grace;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let open: Vec<usize> = (0..2).filter(|&i| self.pipes[i].is_some()).collect();
            if open.is_empty() {
                return Vec::new();
            }
            let ts = rustix::event::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as i64,
            };
            let ready: Vec<usize> = {
                let mut fds: Vec<PollFd<'_>> = open
                    .iter()
                    .map(|&i| PollFd::new(self.pipes[i].as_ref().expect("open"), PollFlags::IN))
                    .collect();
                match rustix::event::poll(&mut fds, Some(&ts)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(_) => break,
                }
                open.iter()
                    .zip(&fds)
                    .filter(|(_, f)| !f.revents().is_empty())
                    .map(|(&i, _)| i)
                    .collect()
            };
            for i in &ready {
                self.pump(*i, output);
            }
            if ready.is_empty() && left.is_zero() {
                break;
            }
        }
        self.pipes.iter_mut().filter_map(Option::take).collect()
    }
}
