//! The egress proxy of `network.mode: limited`.
//!
//! The sandbox's network namespace has only `lo`. Its init listens on
//! 127.0.0.1:[`PROXY_PORT`] there and hands the listening socket to the front end
//! (`PROXY` + SCM_RIGHTS, see phantom-engine's init.rs); the front end forks a helper
//! process, `phantom:proxy`, that accepts on it from the host's side. Connections the
//! payload makes to the proxy thus arrive in a process that lives in the host's
//! network namespace, outside every fence of the sandbox, and that connects onward
//! only where the plan's [`Egress`] rules allow.
//!
//! Why a helper process: the front end is the spawner, and DESIGN.md forbids forking
//! from a multi-threaded process. The helper is forked while the front end is
//! single-threaded (clone_child refuses otherwise); the helper itself never forks, so
//! it may use a thread per connection and blocking name resolution.
//!
//! The helper speaks, on the one port:
//! * HTTP `CONNECT host:port` (HTTPS and anything else tunnelled);
//! * plain HTTP with an absolute URI (`GET http://host/path HTTP/1.1`): one request per
//!   connection, forwarded with `Connection: close`;
//! * SOCKS5 (no authentication, CONNECT, names or addresses).
//!
//! It resolves names itself (there is no DNS inside). Each decision is one JSON line
//! in a memfd shared with the front end, which reads them into the run's report once
//! the sandbox is gone, and kills the helper then.
//!
//! * [`ProxyHelper`] — the running helper: [`ProxyHelper::start`] forks it for a
//!   listening socket and a [`ProxyConfig`] (the sandbox, its profile's [`Egress`]
//!   rules); [`ProxyHelper::finish`] stops it and returns the run's
//!   [`NetworkReport`].
//! * [`test_resolve_from_env`] — the test-only resolver override
//!   ([`TEST_RESOLVE_VAR`]); [`test_resolve_warning`], the warning it earns.
//! * [`EgressError`] — why the helper could not start.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phantom_api::choice::{NetworkDecision, NetworkMode, ProxyProtocol};
use phantom_api::{ConnectionRecord, NetworkReport};
use phantom_linux::process::{self, Forked, Namespaces};
use phantom_linux::SysError;
use phantom_policy::egress::{normalize, Egress, Verdict, PROXY_PORT};

/// Why the egress proxy helper could not start.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// A kernel operation failed (memfd_create, fork).
    #[error("{0}")]
    Sys(#[from] SysError),
}

/// The test-only resolver override: `PHANTOM_TEST_RESOLVE=name=ADDR:PORT[,...]`.
pub const TEST_RESOLVE_VAR: &str = "PHANTOM_TEST_RESOLVE";

/// Connections served at once; more are refused (a payload cannot exhaust the
/// helper's threads).
const MAX_ACTIVE: usize = 256;
/// How long a client may take to send its request.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting onward may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request head (request line and headers) accepted.
#[doc(hidden)]
pub const MAX_HEAD: usize = 16 * 1024;
/// Decisions kept in full in the report; beyond, they are only counted.
pub const MAX_RECORDS: usize = 1000;

/// What the helper needs to decide.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The sandbox served (named in refusals and in every logged decision).
    pub sandbox_id: String,
    /// The profile whose rules apply (named in every refusal).
    pub profile: String,
    pub egress: Egress,
    /// Names mapped by the test-only resolver override.
    pub resolve: Vec<(String, SocketAddr)>,
    /// Also log each decision on stderr with this prefix (phantom-supervisor's log;
    /// a cold run prints them with --verbose from the report instead).
    pub log_prefix: Option<String>,
}

/// Parses `PHANTOM_TEST_RESOLVE`: `name=ADDR:PORT` entries separated by commas.
pub(crate) fn parse_test_resolve(text: &str) -> Result<Vec<(String, SocketAddr)>, String> {
    text.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let (name, addr) = entry
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("{TEST_RESOLVE_VAR}: `{entry}`: write NAME=ADDRESS:PORT"))?;
            let addr: SocketAddr = addr.parse().map_err(|_| {
                format!("{TEST_RESOLVE_VAR}: `{addr}` is not ADDRESS:PORT (e.g. 127.0.0.1:8080)")
            })?;
            Ok((normalize(name), addr))
        })
        .collect()
}

/// The resolver override from the environment, when it is set.
pub fn test_resolve_from_env() -> Result<Option<Vec<(String, SocketAddr)>>, String> {
    match std::env::var_os(TEST_RESOLVE_VAR) {
        None => Ok(None),
        Some(text) => parse_test_resolve(&text.to_string_lossy()).map(Some),
    }
}

/// The warning a set override earns (it is never silent).
pub fn test_resolve_warning(entries: &[(String, SocketAddr)]) -> String {
    format!(
        "{TEST_RESOLVE_VAR}: the egress proxy maps {} (a test hook: names resolve there, even to internal addresses)",
        entries
            .iter()
            .map(|(n, a)| format!("{n} to {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The running helper, as the front end holds it.
#[derive(Debug)]
pub struct ProxyHelper {
    pid: i32,
    pidfd: OwnedFd,
    log: OwnedFd,
    done: bool,
}

impl ProxyHelper {
    /// Fork the helper serving `listener`. Call only while single-threaded (the
    /// cold front end; phantom-supervisor; a persistent sandbox's keeper).
    pub fn start(listener: OwnedFd, config: ProxyConfig) -> Result<ProxyHelper, EgressError> {
        let sys = |op: &'static str, e: rustix::io::Errno| {
            EgressError::Sys(SysError::new(op, "egress proxy", e.into()))
        };
        let log = rustix::fs::memfd_create("phantom-proxy-log", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| sys("memfd_create", e))?;
        match process::clone_child(Namespaces::default(), None)? {
            Forked::Child => {
                // Only the listener, the log and stdio survive; our parent's other fds
                // (the sandbox's channel, output pipes, signalfd) are not ours.
                if process::close_all_except(&[listener.as_raw_fd(), log.as_raw_fd()]).is_err()
                    || process::set_parent_death_signal_kill().is_err()
                {
                    process::exit_now(1);
                }
                process::set_name("phantom:proxy");
                serve(listener, log, config)
            }
            Forked::Parent { pid, pidfd } => {
                drop(listener);
                Ok(ProxyHelper {
                    pid,
                    pidfd,
                    log,
                    done: false,
                })
            }
        }
    }

    /// Stop the helper (the sandbox is gone, so nothing is left to serve) and read
    /// its decisions.
    pub fn finish(mut self) -> NetworkReport {
        self.stop();
        self.decisions()
    }

    /// The decisions logged so far (the helper may still be running).
    pub fn decisions(&self) -> NetworkReport {
        let mut text = Vec::new();
        let mut at = 0u64;
        let mut buf = [0u8; 16384];
        while let Ok(n) = rustix::io::pread(&self.log, &mut buf, at) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            at += n as u64;
        }
        report_from_log(&text)
    }

    fn stop(&mut self) {
        if !self.done {
            self.done = true;
            let _ = process::pidfd_kill(self.pidfd.as_fd(), libc::SIGKILL);
            let _ = process::wait4(self.pid, false);
        }
    }
}

impl Drop for ProxyHelper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The report's network section from the helper's log: full records, then `+`
/// (allowed), `-` (refused) and `!` (failed) lines past [`MAX_RECORDS`].
/// The report of a `limited` sandbox whose proxy never had to start: nothing
/// connected.
pub fn no_connections() -> NetworkReport {
    report_from_log(&[])
}

pub(crate) fn report_from_log(text: &[u8]) -> NetworkReport {
    let mut report = NetworkReport {
        mode: NetworkMode::Limited,
        proxy: Some(format!("127.0.0.1:{PROXY_PORT}")),
        allowed: 0,
        refused: 0,
        failed: 0,
        connections: Vec::new(),
    };
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let decision = match line {
            b"+" => NetworkDecision::Allowed,
            b"-" => NetworkDecision::Refused,
            b"!" => NetworkDecision::Failed,
            json => match serde_json::from_slice::<ConnectionRecord>(json) {
                Ok(record) => {
                    let d = record.decision;
                    report.connections.push(record);
                    d
                }
                Err(_) => continue,
            },
        };
        match decision {
            NetworkDecision::Allowed => report.allowed += 1,
            NetworkDecision::Refused => report.refused += 1,
            NetworkDecision::Failed => report.failed += 1,
        }
    }
    report
}

struct Shared {
    config: ProxyConfig,
    active: AtomicUsize,
    log: Mutex<(std::fs::File, usize)>,
}

impl Shared {
    fn record(&self, record: ConnectionRecord) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        // The first MAX_RECORDS decisions are logged in full, then only counted: a
        // payload opening connections in a loop cannot flood the log.
        let full = log.1 < MAX_RECORDS;
        match &self.config.log_prefix {
            Some(prefix) if full => eprintln!(
                "{prefix}: proxy [{}]: {} {} {}:{}{}",
                self.config.sandbox_id,
                record.decision,
                record.protocol,
                record.host,
                record.port,
                record
                    .reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            Some(prefix) if log.1 == MAX_RECORDS => eprintln!(
                "{prefix}: proxy [{}]: {MAX_RECORDS} decisions logged; the rest are only counted",
                self.config.sandbox_id
            ),
            _ => {}
        }
        let line = if full {
            serde_json::to_string(&record).expect("records serialize")
        } else {
            match record.decision.as_str() {
                "allowed" => "+",
                "refused" => "-",
                _ => "!",
            }
            .to_string()
        };
        log.1 += 1;
        let _ = log.0.write_all(format!("{line}\n").as_bytes());
    }
}

fn serve(listener: OwnedFd, log: OwnedFd, config: ProxyConfig) -> ! {
    let listener = TcpListener::from(listener);
    let shared = Arc::new(Shared {
        config,
        active: AtomicUsize::new(0),
        log: Mutex::new((std::fs::File::from(log), 0)),
    });
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            // The namespace is gone (or the fd is): nothing left to serve.
            Err(_) => process::exit_now(0),
        };
        if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_ACTIVE {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            shared.record(ConnectionRecord {
                protocol: ProxyProtocol::Tcp,
                host: String::new(),
                port: 0,
                decision: NetworkDecision::Refused,
                address: None,
                reason: Some(format!("more than {MAX_ACTIVE} connections at once")),
            });
            continue;
        }
        let s = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                handle(stream, &s);
                s.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn handle(mut client: TcpStream, shared: &Shared) {
    let _ = client.set_read_timeout(Some(HEAD_TIMEOUT));
    let _ = client.set_nodelay(true);
    let mut first = [0u8; 1];
    if client.read_exact(&mut first).is_err() {
        return;
    }
    if first[0] == 5 {
        socks5(client, shared);
    } else {
        http(client, first[0], shared);
    }
}

/// Why a connection was not made.
enum Refusal {
    /// The policy said no (403, SOCKS5 0x02).
    Policy(String),
    /// Allowed, but resolving or connecting failed (502, SOCKS5 0x04).
    Failed(String),
}

/// Decide and connect to `host:port` for `protocol`, recording the decision.
fn connect(
    shared: &Shared,
    protocol: ProxyProtocol,
    host: &str,
    port: u16,
) -> Result<TcpStream, Refusal> {
    let result = connect_inner(shared, host, port);
    let (decision, address, reason) = match &result {
        Ok((_, addr)) => (NetworkDecision::Allowed, Some(addr.to_string()), None),
        Err(Refusal::Policy(r)) => (NetworkDecision::Refused, None, Some(r.clone())),
        Err(Refusal::Failed(r)) => (NetworkDecision::Failed, None, Some(r.clone())),
    };
    shared.record(ConnectionRecord {
        protocol,
        host: normalize(host),
        port,
        decision,
        address,
        reason,
    });
    result.map(|(s, _)| s)
}

fn connect_inner(
    shared: &Shared,
    host: &str,
    port: u16,
) -> Result<(TcpStream, SocketAddr), Refusal> {
    let egress = &shared.config.egress;
    if let Verdict::Refuse(why) = egress.decide_name(host, port) {
        return Err(Refusal::Policy(why));
    }
    let name = normalize(host);
    let (addrs, trusted): (Vec<SocketAddr>, bool) =
        match shared.config.resolve.iter().find(|(n, _)| *n == name) {
            Some((_, addr)) => (vec![*addr], true),
            None => match name.parse::<IpAddr>() {
                Ok(ip) => (vec![SocketAddr::new(ip, port)], false),
                Err(_) => match (name.as_str(), port).to_socket_addrs() {
                    Ok(a) => (a.collect(), false),
                    Err(e) => return Err(Refusal::Failed(format!("cannot resolve {name}: {e}"))),
                },
            },
        };
    let mut refusal = None;
    let mut failure = None;
    for addr in addrs {
        match egress.decide_ip(&name, addr.ip(), addr.port(), trusted) {
            Verdict::Refuse(why) => {
                refusal.get_or_insert(why);
            }
            Verdict::Allow => match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => return Ok((s, addr)),
                Err(e) => failure = Some(format!("cannot connect to {addr}: {e}")),
            },
        }
    }
    // A name whose every address is refused is a policy refusal, even if another
    // address also failed to connect.
    match (refusal, failure) {
        (Some(why), None) => Err(Refusal::Policy(why)),
        (_, Some(why)) => Err(Refusal::Failed(why)),
        (None, None) => Err(Refusal::Failed(format!("{name} has no address"))),
    }
}

/// Copy both ways until both sides are done.
fn splice(client: TcpStream, upstream: TcpStream) {
    let _ = client.set_read_timeout(None);
    let _ = upstream.set_nodelay(true);
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut client = client;
            let mut upstream = upstream;
            let _ = std::io::copy(&mut client, &mut upstream);
            let _ = upstream.shutdown(Shutdown::Write);
        });
    let _ = std::io::copy(&mut u2, &mut c2);
    let _ = c2.shutdown(Shutdown::Write);
    if let Ok(t) = up {
        let _ = t.join();
    }
}

// ---------------------------------------------------------------------------------
// HTTP: the request head is parsed by `httparse`; this proxy only decides what the
// parsed request asks for and rewrites a plain-HTTP request for its origin server.

/// Most header fields in one request head; more is a 431.
const MAX_HEADERS: usize = 128;

/// A parsed request head.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum HttpRequest {
    Connect {
        host: String,
        port: u16,
    },
    /// A plain-HTTP request with an absolute URI, rewritten for the origin server.
    Forward {
        host: String,
        port: u16,
        head: Vec<u8>,
    },
}

/// Why no request came out of a head.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The client closed the connection, failed or timed out before its head was
    /// complete: there is no one to answer.
    Gone,
    /// Answer with this status and message.
    Refuse(u16, String),
}

impl HeadError {
    fn bad(message: impl Into<String>) -> HeadError {
        HeadError::Refuse(400, message.into())
    }
}

/// Reads one request head from `client`, whose first byte (`first`) was already read,
/// and parses it. Returns the request and the bytes that came after the head (a
/// tunnel's or a body's first bytes). At most [`MAX_HEAD`] bytes of head are read.
#[doc(hidden)]
pub fn read_http<R: Read>(client: &mut R, first: u8) -> Result<(HttpRequest, Vec<u8>), HeadError> {
    let mut head = vec![first];
    let mut buf = [0u8; 4096];
    let mut scanned = 0usize;
    loop {
        // Parse only once a blank line may have arrived: parsing after every read
        // would cost a client that sends a byte at a time quadratic time.
        let from = scanned.saturating_sub(2);
        if head[from..].windows(2).any(|w| w == b"\n\n")
            || head[from..].windows(3).any(|w| w == b"\n\r\n")
        {
            if let Some((request, len)) = parse_http(&head)? {
                return Ok((request, head.split_off(len)));
            }
        }
        if head.len() > MAX_HEAD {
            return Err(too_large());
        }
        scanned = head.len();
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

fn too_large() -> HeadError {
    HeadError::Refuse(
        431,
        format!(
            "request head too large (at most {MAX_HEAD} bytes and {MAX_HEADERS} header fields)"
        ),
    )
}

/// Parses the request head at the start of `bytes`: `None` while it is incomplete,
/// else the request and the head's length (through its blank line).
#[doc(hidden)]
pub fn parse_http(bytes: &[u8]) -> Result<Option<(HttpRequest, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(httparse::Error::Version) => {
            // What httparse finds where the version should be: also a target with a
            // space in it.
            return Err(HeadError::bad(
                "malformed request line: send `GET http://host/path HTTP/1.1` or `CONNECT host:port HTTP/1.1` (only HTTP/1.x is proxied)",
            ));
        }
        Err(e) => return Err(HeadError::bad(format!("malformed request head: {e}"))),
    };
    if len > MAX_HEAD {
        return Err(too_large());
    }
    // A complete request always has all three; httparse fills them before the headers.
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HeadError::bad("malformed request line"));
    };
    let request = if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(target, None)
            .ok_or_else(|| HeadError::bad("CONNECT needs HOST:PORT"))?;
        HttpRequest::Connect { host, port }
    } else {
        forward(method, target, version, parsed.headers)?
    };
    Ok(Some((request, len)))
}

/// Headers that concern only the hop between the client and this proxy.
const HOP_BY_HOP: [&str; 4] = [
    "proxy-connection",
    "proxy-authorization",
    "connection",
    "keep-alive",
];

/// A plain-HTTP request with an absolute URI, rewritten in origin form for the server.
fn forward(
    method: &str,
    target: &str,
    version: u8,
    headers: &[httparse::Header<'_>],
) -> Result<HttpRequest, HeadError> {
    let Some(rest) = strip_prefix_ci(target, "http://") else {
        return Err(if strip_prefix_ci(target, "https://").is_some() {
            HeadError::bad("https:// URLs go through CONNECT (set HTTPS_PROXY)")
        } else {
            HeadError::bad("this is a proxy: send an absolute URI (http://host/path) or CONNECT")
        });
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // The fragment is the client's own business (RFC 9110 §4.2.5): never sent.
    let path = path.split('#').next().unwrap_or("");
    let path = if path.is_empty() || path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if authority.contains('@') {
        return Err(HeadError::bad("user information in the URL is not proxied"));
    }
    let (host, port) =
        split_authority(authority, Some(80)).ok_or_else(|| HeadError::bad("bad host in URL"))?;
    // Host names the server the policy allowed, whatever the client wrote: a proxy
    // replaces the Host of an absolute-form request (RFC 9112 §3.2.2), so a Host
    // header cannot pick another site on an allowed address.
    let mut out = format!("{method} {path} HTTP/1.{version}\r\nHost: {authority}\r\n").into_bytes();
    for header in headers {
        if header.name.eq_ignore_ascii_case("host")
            || HOP_BY_HOP
                .iter()
                .any(|h| header.name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(HttpRequest::Forward {
        host,
        port,
        head: out,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &s[prefix.len()..])
}

/// `host:port`, `[v6]:port`, or (with a default port) `host` / `[v6]`.
#[doc(hidden)]
pub fn split_authority(a: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return None,
            None => (a, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
    {
        return None;
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0)?,
        None => default_port?,
    };
    Some((host.to_string(), port))
}

fn respond(client: &mut TcpStream, status: u16, body: &str) {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        431 => "Request Header Fields Too Large",
        _ => "Bad Gateway",
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(text.as_bytes());
}

fn http(mut client: TcpStream, first: u8, shared: &Shared) {
    let (request, rest) = match read_http(&mut client, first) {
        Ok(r) => r,
        Err(HeadError::Gone) => return,
        Err(HeadError::Refuse(status, msg)) => {
            respond(&mut client, status, &format!("phantom proxy: {msg}\n"));
            return;
        }
    };
    let (protocol, host, port) = match &request {
        HttpRequest::Connect { host, port } => (ProxyProtocol::Connect, host.clone(), *port),
        HttpRequest::Forward { host, port, .. } => (ProxyProtocol::Http, host.clone(), *port),
    };
    let mut upstream = match connect(shared, protocol, &host, port) {
        Ok(s) => s,
        Err(Refusal::Policy(why)) => {
            let body = format!(
                "phantom: {} {host}:{port} refused by the network policy of profile `{}` (sandbox {}): {why}\n",
                if protocol == ProxyProtocol::Connect { "CONNECT" } else { "request to" },
                shared.config.profile,
                shared.config.sandbox_id
            );
            respond(&mut client, 403, &body);
            return;
        }
        Err(Refusal::Failed(why)) => {
            respond(&mut client, 502, &format!("phantom proxy: {why}\n"));
            return;
        }
    };
    match request {
        HttpRequest::Connect { .. } => {
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .is_err()
            {
                return;
            }
            if !rest.is_empty() && upstream.write_all(&rest).is_err() {
                return;
            }
        }
        HttpRequest::Forward { head, .. } => {
            if upstream.write_all(&head).is_err() || upstream.write_all(&rest).is_err() {
                return;
            }
        }
    }
    splice(client, upstream);
}

// ---------------------------------------------------------------------------------
// SOCKS5 (RFC 1928), after the version byte.

/// A SOCKS5 CONNECT request's destination: (host, port) from ATYP + address + port.
#[doc(hidden)]
pub fn parse_socks5_target(atyp: u8, addr: &[u8], port: [u8; 2]) -> Option<(String, u16)> {
    let host = match atyp {
        1 if addr.len() == 4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?).to_string(),
        4 if addr.len() == 16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?).to_string(),
        3 => {
            let name = std::str::from_utf8(addr).ok()?;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
            {
                return None;
            }
            name.to_string()
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(port);
    (port != 0).then_some((host, port))
}

/// A SOCKS5 reply carrying only `code` (the bound address is not disclosed).
#[doc(hidden)]
pub fn socks5_reply(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// What a SOCKS5 client asked for.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum Socks5Ask {
    /// CONNECT to this host and port.
    Connect { host: String, port: u16 },
    /// Answer with this reply code and close: 7 (only CONNECT is served) or 8 (an
    /// address type or name that is not accepted).
    Refuse(u8),
    /// The client went away mid-request, or offered no method this proxy speaks (it
    /// has been told): nothing more to say.
    Gone,
}

/// Reads a SOCKS5 greeting and request from `client` (its version byte already read),
/// answering the method selection, and says what the client asks for.
#[doc(hidden)]
pub fn socks5_request<S: Read + Write>(client: &mut S) -> Socks5Ask {
    socks5_read(client).unwrap_or(Socks5Ask::Gone)
}

fn socks5_read<S: Read + Write>(client: &mut S) -> Option<Socks5Ask> {
    let mut n = [0u8; 1];
    client.read_exact(&mut n).ok()?;
    let mut methods = vec![0u8; n[0] as usize];
    client.read_exact(&mut methods).ok()?;
    if !methods.contains(&0) {
        let _ = client.write_all(&[5, 0xff]);
        return None;
    }
    client.write_all(&[5, 0]).ok()?;
    let mut req = [0u8; 4];
    client.read_exact(&mut req).ok()?;
    if req[0] != 5 {
        return None;
    }
    let addr = match req[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).ok()?;
            len[0] as usize
        }
        _ => return Some(Socks5Ask::Refuse(8)), // address type not supported
    };
    let mut addr_bytes = vec![0u8; addr];
    let mut port = [0u8; 2];
    client.read_exact(&mut addr_bytes).ok()?;
    client.read_exact(&mut port).ok()?;
    if req[1] != 1 {
        return Some(Socks5Ask::Refuse(7)); // only CONNECT
    }
    Some(match parse_socks5_target(req[3], &addr_bytes, port) {
        Some((host, port)) => Socks5Ask::Connect { host, port },
        None => Socks5Ask::Refuse(8),
    })
}

fn socks5(mut client: TcpStream, shared: &Shared) {
    let (host, port) = match socks5_request(&mut client) {
        Socks5Ask::Gone => return,
        Socks5Ask::Refuse(code) => {
            let _ = client.write_all(&socks5_reply(code));
            return;
        }
        Socks5Ask::Connect { host, port } => (host, port),
    };
    let code = match connect(shared, ProxyProtocol::Socks5, &host, port) {
        Ok(upstream) => {
            if client.write_all(&socks5_reply(0)).is_ok() {
                splice(client, upstream);
            }
            return;
        }
        Err(Refusal::Policy(_)) => 2, // not allowed by ruleset
        Err(Refusal::Failed(_)) => 4, // host unreachable
    };
    let _ = client.write_all(&socks5_reply(code));
}

/// The parsers, for the fuzz targets in `fuzz/` (not an API).
#[doc(hidden)]
pub mod fuzzing {
    pub use super::{
        parse_http, parse_socks5_target, read_http, socks5_reply, socks5_request, split_authority,
        HeadError, HttpRequest, Socks5Ask, MAX_HEAD,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `head` with its blank line, parsed whole.
    fn parse(head: &str) -> Result<HttpRequest, (u16, String)> {
        match parse_http(format!("{head}\r\n\r\n").as_bytes()) {
            Ok(Some((request, _))) => Ok(request),
            Ok(None) => panic!("a complete head: {head:?}"),
            Err(HeadError::Refuse(status, msg)) => Err((status, msg)),
            Err(HeadError::Gone) => panic!("nothing was read"),
        }
    }

    #[test]
    fn connect_requests_name_host_and_port() {
        assert_eq!(
            parse("CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443"),
            Ok(HttpRequest::Connect {
                host: "pypi.org".into(),
                port: 443
            })
        );
        assert_eq!(
            parse("CONNECT [::1]:8443 HTTP/1.1"),
            Ok(HttpRequest::Connect {
                host: "::1".into(),
                port: 8443
            })
        );
        for bad in [
            "CONNECT pypi.org HTTP/1.1",
            "CONNECT pypi.org:0 HTTP/1.1",
            "CONNECT pypi.org:99999 HTTP/1.1",
            "CONNECT a b:1 HTTP/1.1",
            "CONNECT pypi.org:443 SPDY/3",
            "CONNECT pypi.org:443",
            "CONNECT ev/il:443 HTTP/1.1",
        ] {
            assert_eq!(parse(bad).map_err(|e| e.0), Err(400), "{bad}");
        }
    }

    #[test]
    fn absolute_uri_requests_are_rewritten_for_the_origin() {
        let Ok(HttpRequest::Forward { host, port, head }) = parse(
            "GET http://Example.com:8080/a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nAccept: */*",
        ) else {
            panic!("a forward request")
        };
        assert_eq!((host.as_str(), port), ("Example.com", 8080));
        let head = String::from_utf8(head).unwrap();
        assert_eq!(
            head,
            "GET /a/b?c=1 HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let Ok(HttpRequest::Forward { port, head, .. }) = parse("GET http://example.com HTTP/1.0")
        else {
            panic!("a forward request")
        };
        assert_eq!(port, 80);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET / HTTP/1.0\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        );
        let err = parse("GET /index.html HTTP/1.1").unwrap_err();
        assert!(err.1.contains("absolute URI"), "{}", err.1);
        let err = parse("GET https://pypi.org/ HTTP/1.1").unwrap_err();
        assert!(err.1.contains("CONNECT"), "{}", err.1);
        let err = parse("GET http://user@pypi.org/ HTTP/1.1").unwrap_err();
        assert!(err.1.contains("user information"), "{}", err.1);
    }

    #[test]
    fn socks5_targets_parse_by_address_type() {
        assert_eq!(
            parse_socks5_target(1, &[127, 0, 0, 1], [0x1f, 0x90]),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(
            parse_socks5_target(3, b"pypi.org", [1, 187]),
            Some(("pypi.org".into(), 443))
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(
            parse_socks5_target(4, &v6, [0, 80]),
            Some(("::1".into(), 80))
        );
        assert_eq!(parse_socks5_target(3, b"", [0, 80]), None);
        assert_eq!(parse_socks5_target(3, b"a b", [0, 80]), None);
        assert_eq!(parse_socks5_target(3, b"pypi.org", [0, 0]), None);
        assert_eq!(parse_socks5_target(1, &[1, 2, 3], [0, 80]), None);
        assert_eq!(parse_socks5_target(9, b"x", [0, 80]), None);
    }

    #[test]
    fn test_resolver_entries_parse() {
        assert_eq!(
            parse_test_resolve("Pypi.org=127.0.0.1:8080, x.test=[::1]:9").unwrap(),
            vec![
                ("pypi.org".to_string(), "127.0.0.1:8080".parse().unwrap()),
                ("x.test".to_string(), "[::1]:9".parse().unwrap())
            ]
        );
        assert!(parse_test_resolve("pypi.org")
            .unwrap_err()
            .contains("NAME=ADDRESS:PORT"));
        assert!(parse_test_resolve("a=localhost:1")
            .unwrap_err()
            .contains("not ADDRESS:PORT"));
    }

    #[test]
    fn decisions_past_the_cap_are_counted_not_logged() {
        let memfd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let shared = Shared {
            config: ProxyConfig {
                sandbox_id: "t".into(),
                profile: "p".into(),
                egress: Egress::default(),
                resolve: Vec::new(),
                log_prefix: None,
            },
            active: AtomicUsize::new(0),
            log: Mutex::new((std::fs::File::from(memfd.try_clone().unwrap()), 0)),
        };
        let extra = 7;
        for i in 0..MAX_RECORDS + extra {
            shared.record(ConnectionRecord {
                protocol: ProxyProtocol::Connect,
                host: format!("h{i}.test"),
                port: 443,
                decision: if i % 2 == 0 {
                    NetworkDecision::Refused
                } else {
                    NetworkDecision::Allowed
                },
                address: None,
                reason: None,
            });
        }
        let helper = ProxyHelper {
            pid: 0,
            pidfd: memfd.try_clone().unwrap(),
            log: memfd,
            done: true,
        };
        let report = helper.decisions();
        assert_eq!(report.connections.len(), MAX_RECORDS);
        assert_eq!(
            report.allowed + report.refused,
            (MAX_RECORDS + extra) as u64
        );
        assert_eq!(report.refused, (MAX_RECORDS + extra).div_ceil(2) as u64);
    }

    #[test]
    fn the_log_becomes_counts_and_records() {
        let rec = |d: &str| {
            serde_json::to_string(&ConnectionRecord {
                protocol: ProxyProtocol::Connect,
                host: "pypi.org".into(),
                port: 443,
                decision: d.parse().unwrap(),
                address: None,
                reason: None,
            })
            .unwrap()
        };
        let log = format!(
            "{}\n{}\n{}\n+\n-\n-\n!\n",
            rec("allowed"),
            rec("refused"),
            rec("failed")
        );
        let report = report_from_log(log.as_bytes());
        assert_eq!((report.allowed, report.refused, report.failed), (2, 3, 2));
        assert_eq!(report.connections.len(), 3);
        assert_eq!(report.connections[1].decision, NetworkDecision::Refused);
    }
}
