//! Streamable HTTP at `/mcp` (rmcp's tower service under axum): `Host` and `Origin`
//! validated against DNS rebinding (rmcp's allow-lists), and a Bearer API key checked
//! before rmcp sees a request when `--api-key-file` is given.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::server::PhantomMcp;
use crate::{failure, Config, StartError};

/// Hosts accepted in `Host` (DNS rebinding protection): loopback names, the bind
/// address, and what `--allowed-host` adds. rmcp compares hostnames, and `host:port`
/// entries with the port.
pub fn allowed_hosts(config: &Config) -> Vec<String> {
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let bind = config.bind.to_string();
    if !config.bind.is_unspecified() && !hosts.contains(&bind) {
        hosts.push(bind);
    }
    hosts.extend(config.allowed_hosts.iter().cloned());
    hosts
}

/// Browser origins accepted in `Origin` (requests without one — every non-browser
/// client — pass): loopback origins on any port, and what `--allowed-origin` adds.
pub fn allowed_origins(config: &Config) -> Vec<String> {
    let mut origins = loopback_origins();
    origins.extend(config.allowed_origins.iter().cloned());
    origins
}

/// Loopback browser origins, on any port.
pub fn loopback_origins() -> Vec<String> {
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .flat_map(|h| [format!("http://{h}:*"), format!("https://{h}:*")])
        .collect()
}

/// The tools as a Streamable HTTP service (one [`PhantomMcp`] per session), for this
/// server's own listener or another's router (the supervisor's `/mcp/v1/`).
pub fn service(
    engine: Arc<Engine>,
    http_config: StreamableHttpServerConfig,
) -> StreamableHttpService<PhantomMcp, LocalSessionManager> {
    let server = PhantomMcp::new(engine);
    StreamableHttpService::new(
        move || Ok(server.for_new_session()),
        LocalSessionManager::default().into(),
        http_config,
    )
}

/// Equal without an early exit on the first differing byte (API keys here, the E2B
/// surface's access tokens).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_key(State(key): State<Arc<String>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if same_secret(token.trim().as_bytes(), key.as_bytes()) => {
            next.run(request).await
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong API key: send `Authorization: Bearer <the key in --api-key-file>`\n",
        )
            .into_response(),
    }
}

pub async fn serve(
    config: &Config,
    engine: Arc<Engine>,
    api_key: Option<String>,
    stop: CancellationToken,
) -> Result<(), StartError> {
    let http_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts(config))
        .with_allowed_origins(allowed_origins(config))
        .enforce_origin_validation()
        .with_cancellation_token(stop.child_token());
    let service = service(engine, http_config);
    let mut router = axum::Router::new().nest_service("/mcp", service);
    if let Some(key) = api_key {
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(key),
            require_key,
        ));
    }
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| failure(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| failure(format!("listening socket: {e}")))?;
    let host = match local {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V4(a) => a.to_string(),
    };
    // Scripts (and the test suite with --port 0) read the address from this line.
    eprintln!("phantom-mcp: listening on http://{host}/mcp");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(|e| failure(format!("HTTP server: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bind: &str) -> Config {
        Config {
            transport: crate::Transport::Http,
            bind: bind.parse().unwrap(),
            port: 0,
            mode: crate::Mode::Cold,
            profiles: vec![],
            pool_size: 1,
            max_output: 1 << 20,
            api_key_file: None,
            allowed_hosts: vec![],
            allowed_origins: vec![],
        }
    }

    #[test]
    fn non_loopback_bind_without_a_key_is_refused() {
        let e = crate::check_config(&config("0.0.0.0")).unwrap_err();
        assert_eq!(e.exit_code, 2);
        assert!(e.message.contains("--api-key-file"), "{}", e.message);
        assert!(crate::check_config(&config("127.0.0.1")).is_ok());
        assert!(crate::check_config(&config("::1")).is_ok());
        let mut with_key = config("10.1.2.3");
        with_key.api_key_file = Some("/k".into());
        assert!(crate::check_config(&with_key).is_ok());
        // stdio never listens.
        let mut stdio = config("0.0.0.0");
        stdio.transport = crate::Transport::Stdio;
        assert!(crate::check_config(&stdio).is_ok());
    }

    #[test]
    fn hosts_and_origins_are_loopback_plus_what_is_named() {
        let mut c = config("10.1.2.3");
        c.allowed_hosts = vec!["box.example".into()];
        let hosts = allowed_hosts(&c);
        assert!(hosts.contains(&"10.1.2.3".to_string()));
        assert!(hosts.contains(&"box.example".to_string()));
        assert!(!allowed_hosts(&config("0.0.0.0")).contains(&"0.0.0.0".to_string()));
        let origins = allowed_origins(&config("127.0.0.1"));
        assert!(origins.contains(&"http://localhost:*".to_string()));
        assert!(!origins.iter().any(|o| o.contains("example")));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!same_secret(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn short_api_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("phantom-mcp-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k");
        std::fs::write(&f, "short\n").unwrap();
        assert!(crate::read_api_key(&f).is_err());
        std::fs::write(&f, "0123456789abcdef0123\nignored\n").unwrap();
        assert_eq!(crate::read_api_key(&f).unwrap(), "0123456789abcdef0123");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
