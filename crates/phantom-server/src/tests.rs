//! The server against a fake engine that takes requests and never answers them: what
//! a stalled request does with its slot, its thread and its client.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phantom_api::engine::{Reply, Request};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::limits::{in_flight, Deadlines};
use crate::{router, App, Config};

/// Answers `census` (admission counts the persistent sandboxes), takes every other
/// request and holds it unanswered until [`StalledEngine::release`].
struct StalledEngine {
    held: Arc<Mutex<Vec<OwnedFd>>>,
}

impl StalledEngine {
    fn start(socket: &Path) -> StalledEngine {
        let listener =
            rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(socket).unwrap()).unwrap();
        rustix::net::listen(&listener, 1024).unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let hold = held.clone();
        std::thread::spawn(move || {
            while let Ok(conn) = rustix::net::accept(&listener) {
                let mut buf = vec![0u8; 1 << 16];
                let Ok((n, _)) = rustix::net::recv(&conn, &mut buf, RecvFlags::empty()) else {
                    continue;
                };
                match serde_json::from_slice::<Request>(&buf[..n]) {
                    Ok(Request::Census) => {
                        let reply = serde_json::to_vec(&Reply::Census(Vec::new())).unwrap();
                        let _ = rustix::net::send(&conn, &reply, SendFlags::empty());
                    }
                    _ => hold.lock().unwrap().push(conn),
                }
            }
        });
        StalledEngine { held }
    }

    /// Close every request held: their clients see the engine go.
    fn release(&self) {
        self.held.lock().unwrap().clear();
    }
}

const KEY: &str =
    "phk_0123456789ab_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const KEY_ID: &str = "0123456789ab";

struct Fixture {
    app: Arc<App>,
    addr: SocketAddr,
    engine: StalledEngine,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.engine.release();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn serve(tag: &str, deadlines: Deadlines) -> Fixture {
    let dir = std::env::temp_dir().join(format!(
        "phantom-server-{tag}-{}-{}",
        std::process::id(),
        phantom_state::ids::new_sandbox_id()
    ));
    std::fs::create_dir_all(dir.join("engine")).unwrap();
    let socket = dir.join("engine/engine.sock");
    let engine = StalledEngine::start(&socket);
    let config = Config {
        engine_socket: socket,
        max_sandboxes: 1,
        max_body: 1 << 20,
        psi: None,
        grace: Duration::from_secs(1),
        file_keys: vec![KEY.to_string()],
        metrics: true,
        mcp_max_output: Some(1 << 20),
    };
    let app = App::with(config, deadlines, Some(dir.join("state")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    Fixture {
        app,
        addr,
        engine,
        dir,
    }
}

/// Send one request; read the answer until `until` is in it, or to its end.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    until: Option<&str>,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if until.is_some_and(|u| String::from_utf8_lossy(&raw).contains(u)) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer within 20s");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Regression (issue 16, item 2): a request whose blocking work hung held its slot and
/// its thread forever. Now a run the engine never starts is answered 504 at its
/// deadline and gives its slot back (the server's only one here: the next run is
/// admitted, not refused as "the server runs its maximum"); the thread it could not
/// take back stays counted against its key until the engine lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_answers_504_and_gives_its_slot_back() {
    let deadlines = Deadlines {
        start: Duration::from_millis(500),
        files: Duration::from_millis(500),
        call: Duration::from_secs(5),
        ..Deadlines::default()
    };
    let f = serve("stalled", deadlines).await;
    let run = r#"{"argv": ["true"]}"#;
    for _ in 0..2 {
        let started = Instant::now();
        let (status, text) = request(f.addr, "POST", "/api/v2/run", run, None).await;
        assert_eq!(status, 504, "{text}");
        assert!(text.contains("deadline"), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The slot came back with the answer.
        assert_eq!(in_flight(&f.app.inflight), 0);
    }
    // A streamed run: the deadline ends the stream with an error event, and the slot.
    let (status, text) = request(
        f.addr,
        "POST",
        "/api/v2/run",
        r#"{"argv": ["true"], "stream": true}"#,
        Some("event: error"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("deadline"), "{text}");
    eventually("the streamed run's slot", || {
        in_flight(&f.app.inflight) == 0
    })
    .await;
    // A file write whose engine call stalls: 504 too.
    let (status, text) = request(
        f.addr,
        "PUT",
        "/api/v2/sandboxes/box/files/content?path=/workspace/x",
        "data",
        None,
    )
    .await;
    assert_eq!(status, 504, "{text}");
    // The stalled calls still hold their threads, counted against the key.
    assert!(
        f.app.workers.held(KEY_ID) >= 3,
        "{}",
        f.app.workers.held(KEY_ID)
    );
    // The engine lets go: every thread comes back.
    f.engine.release();
    eventually("the key's worker threads", || {
        f.app.workers.held(KEY_ID) == 0
    })
    .await;
}

/// Regression: streamed answers (an E2B execution's NDJSON, /run's events) waited for
/// the client's delayed ACK, 40 ms per call, because the listeners left Nagle on.
#[tokio::test]
async fn streamed_answers_do_not_wait_for_delayed_acks_nodelay_is_set() {
    use axum::serve::Listener;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listener = crate::no_delay(listener);
    let client = tokio::net::TcpStream::connect(addr);
    let ((accepted, _), _client) = tokio::join!(listener.accept(), client);
    assert!(accepted.nodelay().unwrap());
}
