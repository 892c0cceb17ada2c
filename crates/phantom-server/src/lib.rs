//! The supervisor's HTTP API (`phantom-supervisor --bind ADDR`): REST over the
//! engine, with API keys (each with its grants and its own sandboxes and snapshots),
//! per-key rate limits, concurrency limits, pressure-aware admission, an audit log and
//! Prometheus metrics.
//!
//! Process model: this server is multi-threaded (tokio), so it never forks. Every
//! request that needs a sandbox goes to the engine (`phantom_engine::EngineClient`, on
//! a blocking thread): bodies are parsed into the phantom-api model and sent as they
//! are, for the key's principal; the engine decides warm or cold, enforces the grants
//! and ownership, and the client relays the output. Files and snapshots move in this
//! process through a workspace fd the engine hands to the sandbox's owner only.
//!
//! No request holds a thread or a slot without a deadline ([`limits::Deadlines`]; 504
//! past it), one key holds at most [`limits::WORKERS_PER_KEY`] blocking threads, and
//! refused requests reach the audit log within a per-source budget ([`audit`]).
#![forbid(unsafe_code)]

pub mod audit;
pub mod contexts;
pub mod e2b;
mod handlers;
pub mod limits;
pub mod metrics;
pub mod openapi;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub use handlers::ApiFailure;

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The engine's socket.
    pub engine_socket: PathBuf,
    /// Sandboxes at once, runs and persistent ones together.
    pub max_sandboxes: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// PSI admission: where pressure files are (`/proc/pressure`), and the
    /// thresholds in percent; None: no pressure check.
    pub psi: Option<(PathBuf, f64, f64)>,
    /// How long in-flight requests get after SIGTERM.
    pub grace: Duration,
    /// Keys accepted besides the state database's (`--api-keys FILE`).
    pub file_keys: Vec<String>,
    /// Serve /metrics (Prometheus text); false: /metrics answers 404
    /// (`--metrics-mode none`).
    pub metrics: bool,
    /// Serve MCP (Streamable HTTP) at `/mcp/v1/`; the largest output of a tool call.
    pub mcp_max_output: Option<u64>,
}

/// Verified keys by the hash of what was presented, when, and the keys' generation then.
type KeyCache = std::collections::HashMap<
    blake3::Hash,
    (
        phantom_state::keys::ApiKey,
        Instant,
        Option<std::time::SystemTime>,
    ),
>;

/// What every handler shares.
pub struct App {
    pub config: Config,
    pub metrics: metrics::Metrics,
    /// The engine every request goes to.
    pub(crate) engine: phantom_engine::EngineClient,
    pub(crate) buckets: Mutex<std::collections::HashMap<String, limits::TokenBucket>>,
    pub(crate) inflight: Arc<Mutex<limits::Inflight>>,
    pub(crate) shutting_down: AtomicBool,
    /// `--api-keys FILE`: each key's id and hash.
    pub(crate) file_keys: Vec<(String, blake3::Hash)>,
    pub(crate) key_cache: Mutex<KeyCache>,
    /// The state directory (where a key revocation is marked).
    pub(crate) state_dir: Option<PathBuf>,
    /// Persistent sandboxes of every owner, and when they were counted.
    pub(crate) persistent: Mutex<Option<(usize, Instant)>>,
    pub(crate) audit: audit::AuditLog,
    pub(crate) deadlines: limits::Deadlines,
    /// Blocking threads per key and in all.
    pub(crate) workers: limits::Workers,
    /// `/mcp/v1/`: the tools' engine glue (acting for each request's key), and what
    /// ends its sessions when the server stops.
    pub(crate) mcp: Option<Arc<phantom_mcp::engine::Engine>>,
    pub(crate) mcp_stop: tokio_util::sync::CancellationToken,
    /// The E2B surface (`--e2b-bind`): its sandboxes' records and running processes.
    pub(crate) e2b: e2b::E2b,
    pub(crate) e2b_processes: e2b::envd::Processes,
    /// Code contexts (interpreters in persistent sandboxes) this server holds.
    pub(crate) contexts: contexts::Contexts,
}

impl App {
    /// The server for `config`, with the default deadlines, keeping its keys and audit
    /// log in the state directory of the environment.
    pub fn new(config: Config) -> Arc<App> {
        let state_dir = phantom_state::store_dir::state_dir().ok().flatten();
        App::with(config, limits::Deadlines::default(), state_dir)
    }

    /// The server for `config` with `deadlines`, its keys and audit log in `state_dir`.
    pub fn with(
        config: Config,
        deadlines: limits::Deadlines,
        state_dir: Option<PathBuf>,
    ) -> Arc<App> {
        let file_keys = config
            .file_keys
            .iter()
            .map(|k| (k[4..16].to_string(), blake3::hash(k.as_bytes())))
            .collect();
        let engine = phantom_engine::EngineClient::at(config.engine_socket.clone());
        let contexts = contexts::Contexts::default();
        let mcp = config.mcp_max_output.map(|max_output| {
            Arc::new(
                phantom_mcp::engine::Engine::new(
                    phantom_mcp::Mode::Zygote,
                    engine.clone(),
                    phantom_mcp::engine::Acting::PerRequest,
                    max_output,
                )
                // A key's contexts are the same over /api/v2 and /mcp/v1/.
                .with_contexts(contexts.all.clone()),
            )
        });
        Arc::new(App {
            file_keys,
            engine,
            mcp,
            mcp_stop: Default::default(),
            e2b: e2b::E2b::new(state_dir.clone()),
            e2b_processes: Default::default(),
            contexts,
            config,
            key_cache: Mutex::new(Default::default()),
            audit: audit::AuditLog::start(state_dir.clone()),
            state_dir,
            persistent: Mutex::new(None),
            deadlines,
            workers: limits::Workers::new(limits::WORKERS_PER_KEY, limits::WORKERS),
            metrics: metrics::Metrics::new(),
            buckets: Mutex::new(Default::default()),
            inflight: Arc::new(Mutex::new(limits::Inflight::default())),
            shutting_down: AtomicBool::new(false),
        })
    }
}

/// The router: every route of the API.
pub fn router(app: Arc<App>) -> Router {
    let max_body = app.config.max_body;
    let api = Router::new()
        .route("/run", post(handlers::run))
        .route(
            "/sandboxes",
            post(handlers::create_sandbox).get(handlers::list_sandboxes),
        )
        .route(
            "/sandboxes/{name}",
            get(handlers::get_sandbox).delete(handlers::delete_sandbox),
        )
        .route("/sandboxes/{name}/exec", post(handlers::exec))
        .route("/sandboxes/{name}/processes", get(handlers::list_processes))
        .route(
            "/sandboxes/{name}/processes/{pid}",
            axum::routing::delete(handlers::kill_process),
        )
        .route(
            "/sandboxes/{name}/contexts",
            post(handlers::create_context).get(handlers::list_contexts),
        )
        .route(
            "/sandboxes/{name}/contexts/{id}",
            axum::routing::delete(handlers::delete_context),
        )
        .route(
            "/sandboxes/{name}/contexts/{id}/restart",
            post(handlers::restart_context),
        )
        .route(
            "/sandboxes/{name}/contexts/{id}/run",
            post(handlers::run_context),
        )
        .route("/sandboxes/{name}/files", get(handlers::list_files))
        .route(
            "/sandboxes/{name}/files/content",
            get(handlers::read_file).put(handlers::write_file),
        )
        .route(
            "/sandboxes/{name}/snapshots",
            post(handlers::snapshot).get(handlers::list_snapshots),
        )
        .route("/zygotes/pools", get(handlers::pools))
        .route("/system/psi", get(handlers::psi))
        .route("/fragments/performance", get(handlers::performance))
        .route("/openapi.json", get(handlers::openapi));
    let mut root = Router::new()
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .nest("/api/v2", api);
    if let Some(mcp) = mcp_service(&app) {
        // The README's URL ends in a slash; clients that drop it are served too.
        let mcp = Router::new()
            .route_service("/mcp/v1", mcp.clone())
            .route_service("/mcp/v1/", mcp)
            .route_layer(axum::middleware::from_fn_with_state(
                app.clone(),
                handlers::mcp_auth,
            ));
        root = root.merge(mcp);
    }
    root.fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            handlers::observe,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

/// MCP's Streamable HTTP transport over the same engine, acting for the key each
/// request authenticated (`handlers::mcp_auth`). The `Host` check rmcp does against
/// DNS rebinding is off (every request needs an API key, which a rebinding page does
/// not have); browser `Origin`s other than loopback ones are refused.
fn mcp_service(
    app: &Arc<App>,
) -> Option<
    rmcp::transport::StreamableHttpService<
        phantom_mcp::server::PhantomMcp,
        rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
    >,
> {
    Some(phantom_mcp::http::service(
        app.mcp.clone()?,
        rmcp::transport::StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_allowed_origins(phantom_mcp::http::loopback_origins())
            .enforce_origin_validation()
            .with_cancellation_token(app.mcp_stop.clone()),
    ))
}

/// Serve on `listener` until SIGTERM or SIGINT; then stop accepting, give in-flight
/// requests the grace period, and return.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    eprintln!(
        "phantom-supervisor: HTTP API on http://{addr}/api/v2 (health: /health, metrics: /metrics)"
    );
    if app.mcp.is_some() {
        eprintln!("phantom-supervisor: MCP (Streamable HTTP) on http://{addr}/mcp/v1/");
    }
    let grace = app.config.grace;
    let shutdown_app = app.clone();
    // With each connection's peer address: refusals are budgeted per source.
    let router = router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(no_delay(listener), router).with_graceful_shutdown(async move {
        shutdown_signal().await;
        shutdown_app.shutting_down.store(true, Ordering::SeqCst);
        eprintln!(
            "phantom-supervisor: stopping: no new requests; in-flight ones get {}s",
            grace.as_secs()
        );
        // MCP sessions hold their event streams open: once their tool calls in flight
        // have ended (or the grace period has), the sessions end, so that the server's
        // connections can drain.
        let app = shutdown_app.clone();
        tokio::spawn(async move {
            if let Some(mcp) = &app.mcp {
                let deadline = Instant::now() + grace;
                while mcp.in_flight() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                mcp.shut_down(Duration::from_secs(5)).await;
            }
            app.mcp_stop.cancel();
        });
    });
    let server = tokio::spawn(async move { server.await });
    // After the signal, the server drains; past the grace period its runs are killed
    // (a request future that is dropped cancels its run in the engine).
    let done = server;
    tokio::pin!(done);
    let finished = loop {
        tokio::select! {
            r = &mut done => break Some(r.unwrap_or_else(|e| Err(std::io::Error::other(e)))),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if app.shutting_down.load(Ordering::SeqCst) {
                    break None;
                }
            }
        }
    };
    let r = match finished {
        Some(r) => r,
        None => match tokio::time::timeout(grace, &mut done).await {
            Ok(r) => r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(_) => {
                eprintln!(
                    "phantom-supervisor: grace period over: killing the runs still in flight"
                );
                done.abort();
                Ok(())
            }
        },
    };
    // What is still queued for the audit log, and the refusals only counted so far.
    let audit_app = app.clone();
    let _ =
        tokio::task::spawn_blocking(move || audit_app.audit.flush(Duration::from_secs(5))).await;
    r
}

/// `listener` with TCP_NODELAY on every connection: a streamed answer's small writes
/// (a chunk, an event) otherwise wait for the client's delayed ACK — 40 ms each.
pub(crate) fn no_delay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn set(tcp: &mut tokio::net::TcpStream) {
        let _ = tcp.set_nodelay(true);
    }
    listener.tap_io(set as fn(&mut tokio::net::TcpStream))
}

/// SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
