//! The API's handlers. Each: authenticate (X-API-Key or Authorization: Bearer), rate-
//! limit, admit (concurrency, pressure), parse the body into the phantom-api model,
//! ask the engine for the work as the key's principal (its owner and grants), audit
//! mutating calls. Errors are JSON `{"error": "...", "field": ...}` with the status
//! that fits; they carry no host internals.
//!
//! No request holds a thread or a slot without a deadline: blocking work goes through
//! [`blocking`] (a worker permit of the key, then the deadline of its kind from
//! [`crate::limits::Deadlines`], 504 past it); runs and execs through [`RunClock`]
//! (until the engine says the run started, then its timeout plus a margin; past it the
//! run is killed and its slot given back).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use phantom_api::access::{Grants, Owner, Principal};
use phantom_api::engine::{Failure, FailureKind, Started};
use phantom_api::report::SnapshotInfo;
use phantom_api::request::{CreateRequest, ExecBody, ExecRequest, Field, RunRequest};
use phantom_api::{ApiError, ApiHealth, ApiRunResult, ApiSnapshotRequest, RunReport, SandboxInfo};
use phantom_engine::client::{Output, RunIo, Stdin, Stream, Wake};
use phantom_state::keys::{ApiKey, AuthError};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::audit::Entry;
use crate::limits::{take_slot, Refusal, Slot};
use crate::metrics::{
    DecisionLabel, KindLabel, ProfileLabel, ReasonLabel, RequestLabels, SandboxLabel,
};
use crate::App;

/// An error answer.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<Field>,
    pub retry_after: Option<Duration>,
}

impl ApiFailure {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::CONFLICT, m)
    }
    pub fn internal(m: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
    fn unauthorized(m: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::UNAUTHORIZED, m)
    }
    fn retry(status: StatusCode, m: impl Into<String>, after: Duration) -> ApiFailure {
        ApiFailure {
            retry_after: Some(after),
            ..ApiFailure::new(status, m)
        }
    }
}

/// The engine's failure as an answer. What the caller did wrong (400, 403, 404, 409)
/// is said as the engine said it, naming the field; what went wrong on the host (500,
/// 501) is logged here in full and answered without its details — host paths, pids
/// — under an id that finds it in the log.
impl From<Failure> for ApiFailure {
    fn from(f: Failure) -> ApiFailure {
        let status =
            StatusCode::from_u16(f.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let id = phantom_state::ids::new_sandbox_id();
        let message = match f.for_remote(&id) {
            Some(shown) => {
                eprintln!("phantom-supervisor: error {id}: {}", f.for_api());
                shown.message
            }
            None => f.for_api(),
        };
        ApiFailure {
            status,
            message,
            field: f.field,
            retry_after: (f.kind == FailureKind::Unavailable).then(|| Duration::from_secs(1)),
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(ApiError {
                error: self.message,
                field: self.field,
            }),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"phantom\""),
            );
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

/// The peer's address (when served over TCP with connect info): whom a refusal is
/// counted against.
pub(crate) struct Peer(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Whose worker threads blocking work counts against: key lookups of requests not yet
/// authenticated share one budget (no key id starts with a space).
const LOOKUPS: &str = " key lookups";

/// The answer to a request that ran past its deadline.
fn deadline_passed(what: &str, deadline: Duration) -> ApiFailure {
    ApiFailure::retry(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "{what} took longer than the server's deadline of {}s and was abandoned; retry later",
            deadline.as_secs_f64()
        ),
        Duration::from_secs(1),
    )
}

/// Run blocking work (the engine's socket, SQLite, file I/O) off the async threads:
/// on a worker thread of `who` (503 when none is free within the queue deadline),
/// answered 504 past `deadline` (`what` names it). The thread keeps `who`'s permit
/// until the work really ends.
pub(crate) async fn blocking<T: Send + 'static>(
    app: &App,
    who: &str,
    what: &str,
    deadline: Duration,
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> ApiResult<T> {
    let permit = app
        .workers
        .acquire(who, app.deadlines.queue)
        .await
        .map_err(|r| refused(app, r))?;
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    });
    match tokio::time::timeout(deadline, task).await {
        Ok(joined) => joined
            .map_err(|e| ApiFailure::internal(format!("worker failed: {e}")))?
            .map_err(ApiFailure::from),
        Err(_) => {
            app.metrics.deadlines_passed.inc();
            Err(deadline_passed(what, deadline))
        }
    }
}

/// The deadline of a run or an exec: [`Deadlines::start`](crate::limits::Deadlines)
/// until the engine says it started, then the run's own timeout plus the margin.
#[derive(Clone)]
struct RunClock {
    t0: Instant,
    /// Milliseconds after `t0`.
    deadline_ms: Arc<AtomicU64>,
    margin: Duration,
}

impl RunClock {
    fn new(app: &App) -> RunClock {
        RunClock {
            t0: Instant::now(),
            deadline_ms: Arc::new(AtomicU64::new(app.deadlines.start.as_millis() as u64)),
            margin: app.deadlines.run_margin,
        }
    }

    /// The engine started the run, with this timeout.
    fn started(&self, timeout_ms: u64) {
        let at = self.t0.elapsed() + Duration::from_millis(timeout_ms) + self.margin;
        self.deadline_ms
            .store(at.as_millis() as u64, Ordering::SeqCst);
    }

    fn deadline(&self) -> Instant {
        self.t0 + Duration::from_millis(self.deadline_ms.load(Ordering::SeqCst))
    }

    /// `work`'s output, or Err(how long it had) once the deadline passed.
    async fn wait<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, Duration> {
        tokio::pin!(work);
        loop {
            let deadline = self.deadline();
            tokio::select! {
                out = &mut work => return Ok(out),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    // The run may have started meanwhile, moving the deadline.
                    if self.deadline() <= deadline {
                        return Err(deadline - self.t0);
                    }
                }
            }
        }
    }
}

/// The engine's errors of file work, as failures.
fn engine_failure(e: phantom_engine::EngineError) -> Failure {
    e.to_failure()
}

pub(crate) fn audit(
    app: &App,
    key: Option<&str>,
    action: &str,
    target: Option<&str>,
    result: &str,
    detail: Option<&str>,
) {
    app.audit.record(Entry {
        key: key.map(str::to_string),
        action: action.to_string(),
        target: target.map(str::to_string),
        result: result.to_string(),
        detail: detail.map(str::to_string),
    });
}

/// Audit a refused call from `peer`: written within the source's budget, else counted
/// ([`crate::audit`]).
fn audit_refusal(
    app: &App,
    peer: &Peer,
    key: Option<&str>,
    action: &str,
    target: Option<&str>,
    detail: &str,
) {
    app.audit.refusal(
        peer.0,
        Entry {
            key: key.map(str::to_string),
            action: action.to_string(),
            target: target.map(str::to_string),
            result: "denied".into(),
            detail: Some(detail.to_string()),
        },
    );
}

/// Audit a mutating call by what it returned: `ok`, or `error` with the message.
fn audit_result<T>(app: &App, key: &ApiKey, action: &str, target: Option<&str>, r: &ApiResult<T>) {
    match r {
        Ok(_) => audit(app, Some(&key.id), action, target, "ok", None),
        Err(e) => audit(
            app,
            Some(&key.id),
            action,
            target,
            "error",
            Some(&e.message),
        ),
    }
}

/// The presented key, from `X-API-Key` or `Authorization: Bearer`.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// A key of `--api-keys FILE` (hash compared in constant time), with the default
/// limits and grants.
fn file_key(app: &App, presented: &str) -> Option<ApiKey> {
    let hash = blake3::hash(presented.as_bytes());
    let (id, _) = app.file_keys.iter().find(|(_, h)| *h == hash)?;
    let limits = phantom_state::keys::KeyLimits::default();
    Some(ApiKey {
        id: id.clone(),
        name: "--api-keys file".into(),
        created: 0,
        revoked: None,
        last_used: None,
        rate_per_min: limits.rate_per_min,
        burst: limits.burst,
        max_concurrent: limits.max_concurrent,
        grants: Grants::default_key(),
    })
}

/// How long a verified key is trusted without asking the database again, as long as no
/// key was revoked meanwhile (`Keys::generation`: one stat per request).
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);

/// The key `presented` names: from `--api-keys`, the cache, or the state database.
async fn verify(app: &Arc<App>, presented: String) -> ApiResult<Result<ApiKey, AuthError>> {
    if let Some(key) = file_key(app, &presented) {
        return Ok(Ok(key));
    }
    if let Err(e) = phantom_state::keys::well_formed(&presented) {
        return Ok(Err(e));
    }
    let hash = blake3::hash(presented.as_bytes());
    let generation = app
        .state_dir
        .as_deref()
        .and_then(phantom_state::keys::Keys::generation);
    if let Some((key, at, seen)) = app.key_cache.lock().expect("key cache").get(&hash) {
        if at.elapsed() < KEY_CACHE_TTL && *seen == generation {
            return Ok(Ok(key.clone()));
        }
    }
    let dir = app.state_dir.clone();
    let verdict = blocking(
        app,
        LOOKUPS,
        "the key lookup",
        app.deadlines.call,
        move || {
            let keys = match &dir {
                Some(dir) => phantom_state::keys::Keys::open(dir),
                None => phantom_state::keys::Keys::open_default(),
            };
            Ok(keys.and_then(|k| k.verify(&presented)))
        },
    )
    .await?
    .map_err(|e| {
        eprintln!("phantom-supervisor: the key database: {e}");
        ApiFailure::internal("the key database could not be read (the server's log has why)")
    })?;
    if let Ok(key) = &verdict {
        let mut cache = app.key_cache.lock().expect("key cache");
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(hash, (key.clone(), Instant::now(), generation));
    }
    Ok(verdict)
}

/// Authenticate and rate-limit a request; `action` and `target` name it in the audit
/// log when it is refused.
pub(crate) async fn authenticate(
    app: &Arc<App>,
    headers: &HeaderMap,
    peer: &Peer,
    action: &str,
    target: Option<&str>,
) -> ApiResult<ApiKey> {
    let Some(presented) = presented_key(headers) else {
        app.metrics
            .auth_failures
            .get_or_create(&ReasonLabel {
                reason: "missing".into(),
            })
            .inc();
        audit_refusal(app, peer, None, action, target, "no API key");
        return Err(ApiFailure::unauthorized(
            "an API key is required: send X-API-Key: phk_... or Authorization: Bearer phk_... (make one with `phantom keys add NAME`)",
        ));
    };
    let key = match verify(app, presented).await? {
        Ok(key) => key,
        Err(e) => {
            let reason = match &e {
                AuthError::Malformed => "malformed",
                AuthError::Unknown => "unknown",
                AuthError::Revoked(_) => "revoked",
            };
            app.metrics
                .auth_failures
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
            let key_id = match &e {
                AuthError::Revoked(id) => Some(id.as_str()),
                _ => None,
            };
            audit_refusal(app, peer, key_id, action, target, &e.to_string());
            return Err(ApiFailure::unauthorized(e.to_string()));
        }
    };
    let now = Instant::now();
    let limited = {
        let mut buckets = app.buckets.lock().expect("bucket lock");
        let bucket = buckets
            .entry(key.id.clone())
            .or_insert_with(|| crate::limits::TokenBucket::new(key.rate_per_min, key.burst, now));
        bucket.take(now)
    };
    if let Err(wait) = limited {
        app.metrics.rate_limit_hits.inc();
        return Err(ApiFailure::retry(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "rate limit of key {} reached ({}/min, burst {}); retry after the Retry-After seconds",
                key.id, key.rate_per_min, key.burst
            ),
            wait,
        ));
    }
    if app.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiFailure::retry(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
            Duration::from_secs(5),
        ));
    }
    Ok(key)
}

/// Whom a key's requests act for.
pub(crate) fn principal(key: &ApiKey) -> Principal {
    Principal {
        owner: Owner::Key(key.id.clone()),
        grants: key.grants.clone(),
    }
}

/// Current pressure, when the server watches it.
fn pressure(app: &App) -> Option<phantom_engine::pressure::Pressure> {
    use phantom_engine::pressure::{DirPressure, PressureSource};
    let (dir, _, _) = app.config.psi.as_ref()?;
    DirPressure(dir.clone()).sample()
}

/// How long the count of persistent sandboxes is reused for admission.
const CENSUS_TTL: Duration = Duration::from_secs(1);

/// Persistent sandboxes of every owner (each holds a slot of the server's maximum).
async fn persistent_count(app: &Arc<App>, key: &ApiKey) -> ApiResult<usize> {
    if let Some((n, at)) = *app.persistent.lock().expect("census") {
        if at.elapsed() < CENSUS_TTL {
            return Ok(n);
        }
    }
    let engine = app.engine.clone();
    let n = blocking(
        app,
        &key.id,
        "counting the sandboxes",
        app.deadlines.call,
        move || Ok(engine.census()?.len()),
    )
    .await?;
    *app.persistent.lock().expect("census") = Some((n, Instant::now()));
    Ok(n)
}

/// Admit one more sandbox for `key`: pressure, then the key's and the server's limits.
async fn admit(app: &Arc<App>, key: &ApiKey) -> ApiResult<Slot> {
    if let (Some((_, cpu, mem)), Some(p)) = (&app.config.psi, pressure(app)) {
        let t = phantom_engine::pressure::Thresholds {
            cpu: *cpu,
            memory: *mem,
        };
        if let Some(why) = t.exceeded(p) {
            return Err(refused(app, Refusal::Pressure { why }));
        }
    }
    let persistent = persistent_count(app, key).await?;
    take_slot(
        &app.inflight,
        &key.id,
        key.max_concurrent,
        app.config.max_sandboxes,
        persistent,
    )
    .map_err(|r| refused(app, r))
}

pub(crate) fn refused(app: &App, r: Refusal) -> ApiFailure {
    let (reason, failure) = match r {
        Refusal::Rate { retry_after } => (
            "rate",
            ApiFailure::retry(StatusCode::TOO_MANY_REQUESTS, "rate limit reached", retry_after),
        ),
        Refusal::KeyBusy { limit } => (
            "key_concurrency",
            ApiFailure::retry(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this key already has {limit} sandboxes running (its limit); retry when one ends"),
                Duration::from_secs(1),
            ),
        ),
        Refusal::Full { limit } => (
            "server_full",
            ApiFailure::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the server runs its maximum of {limit} sandboxes; retry shortly"),
                Duration::from_secs(1),
            ),
        ),
        Refusal::Pressure { why } => (
            "pressure",
            ApiFailure::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the host is under pressure ({why}); retry shortly"),
                Duration::from_secs(5),
            ),
        ),
        Refusal::Workers { limit } => (
            "workers",
            ApiFailure::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this key already has {limit} requests at work on the server's threads (its limit); retry when one ends"),
                Duration::from_secs(1),
            ),
        ),
    };
    app.metrics
        .admission_refusals
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .inc();
    failure
}

/// Parse a JSON body into `T`, refusing unknown fields, with a message that says what
/// to send instead.
fn json_body<T: DeserializeOwned + schemars::JsonSchema>(
    body: Result<Bytes, BytesRejection>,
    max: usize,
) -> ApiResult<T> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiFailure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {max} bytes"),
            )
        } else {
            ApiFailure::bad_request(format!("cannot read the request body: {e}"))
        }
    })?;
    phantom_api::strict::from_slice(&body).map_err(|e| {
        ApiFailure::bad_request(format!(
            "invalid JSON body: {e}; /api/v2/openapi.json describes the fields"
        ))
    })
}

// ---------------------------------------------------------------------------------------
// Middleware
// ---------------------------------------------------------------------------------------

/// Count connections and time every request by route and status.
pub(crate) async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    app.metrics.active_connections.inc();
    let started = Instant::now();
    let resp = next.run(req).await;
    app.metrics.active_connections.dec();
    app.metrics
        .request_duration
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16().to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// `/mcp/v1/`: every request (a JSON-RPC message, the SSE stream, a session's end)
/// is authenticated and rate-limited like a REST request, and carries the key's
/// principal to the MCP tools, which act for it (tenancy and grants are the engine's,
/// as for REST; phantom-mcp keeps each session with the key that opened it).
pub(crate) async fn mcp_auth(
    State(app): State<Arc<App>>,
    peer: Peer,
    mut request: Request,
    next: Next,
) -> Response {
    match authenticate(&app, request.headers(), &peer, "mcp", None).await {
        Ok(key) => {
            request.extensions_mut().insert(principal(&key));
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// Unauthenticated
// ---------------------------------------------------------------------------------------

pub(crate) async fn health() -> axum::Json<ApiHealth> {
    axum::Json(ApiHealth {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

pub(crate) async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !app.config.metrics {
        return ApiFailure::not_found(
            "/metrics is off on this server (phantom-supervisor --metrics-mode none)",
        )
        .into_response();
    }
    // Gauges read at scrape time.
    let engine = app.engine.clone();
    let (pools, census) = blocking(
        &app,
        LOOKUPS,
        "reading the pools",
        app.deadlines.call,
        move || Ok((engine.pools().ok(), engine.census().ok())),
    )
    .await
    .unwrap_or((None, None));
    if let Some(status) = pools {
        for p in status.pools {
            app.metrics
                .pool_size
                .get_or_create(&ProfileLabel {
                    profile: p.profile.clone(),
                })
                .set(p.ready as i64);
        }
    }
    let sample = if app.config.psi.is_some() {
        pressure(&app)
    } else {
        use phantom_engine::pressure::{PressureSource, ProcPressure};
        ProcPressure.sample()
    };
    if let Some(p) = sample {
        app.metrics.psi_cpu.set(p.cpu / 100.0);
        app.metrics.psi_memory.set(p.memory / 100.0);
    }
    app.metrics.sandbox_memory.clear();
    // By id: /metrics needs no key, and owners (key ids) and names are the tenants'
    // business (`phantom list --every-owner` maps ids to them for the operator).
    for s in census.unwrap_or_default() {
        if let Some(bytes) = s.memory_bytes {
            app.metrics
                .sandbox_memory
                .get_or_create(&SandboxLabel { sandbox: s.id })
                .set(bytes as i64);
        }
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        return (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            app.metrics.encode_openmetrics(),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

pub(crate) async fn not_found(method: Method, uri: axum::http::Uri) -> ApiFailure {
    ApiFailure::not_found(format!(
        "no such endpoint: {method} {uri} (see /api/v2/openapi.json)"
    ))
}

pub(crate) async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi::document())
}

// ---------------------------------------------------------------------------------------
// Runs and commands
// ---------------------------------------------------------------------------------------

/// The blocking side of a run holds this end; when the request goes away (the client
/// disconnected), its future drops the other end, this one becomes readable, and the
/// engine kills the sandbox.
pub(crate) struct Cancel {
    /// Closed when the request is dropped, or by a [`Stopper`] (never duplicated: the
    /// one fd closing is what cancels).
    pub(crate) request_side: Arc<std::sync::Mutex<Option<UnixStream>>>,
    pub(crate) run_side: OwnedFd,
}

/// Cancels a run whose request still holds its [`Cancel`] (a streamed run past its
/// deadline).
pub(crate) struct Stopper(Arc<std::sync::Mutex<Option<UnixStream>>>);

impl Stopper {
    pub(crate) fn stop(&self) {
        drop(self.0.lock().expect("cancel lock").take());
    }
}

impl Cancel {
    pub(crate) fn new() -> ApiResult<Cancel> {
        let (a, b) =
            UnixStream::pair().map_err(|e| ApiFailure::internal(format!("socketpair: {e}")))?;
        Ok(Cancel {
            request_side: Arc::new(std::sync::Mutex::new(Some(a))),
            run_side: b.into(),
        })
    }

    pub(crate) fn stopper(&self) -> Stopper {
        Stopper(self.request_side.clone())
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        self.stopper().stop();
    }
}

pub(crate) fn finish_run(app: &App, report: RunReport, kind: &str) -> ApiRunResult {
    app.metrics
        .spawned(&report.profile, report.start.as_str(), report.wall_ms);
    app.metrics
        .sandbox_starts
        .get_or_create(&KindLabel { kind: kind.into() })
        .inc();
    if report.signal == Some(31) {
        app.metrics.seccomp_violations.inc();
    }
    if let Some(net) = &report.network {
        for (decision, n) in [
            ("allowed", net.allowed),
            ("refused", net.refused),
            ("failed", net.failed),
        ] {
            app.metrics
                .proxy_connections
                .get_or_create(&DecisionLabel {
                    decision: decision.into(),
                })
                .inc_by(n);
        }
    }
    ApiRunResult {
        cpu_ms: report.user_ms + report.sys_ms,
        report,
    }
}

/// What a run or an exec asks of the engine.
enum Job {
    Run(Box<RunRequest>),
    Exec(String, Box<ExecRequest>),
}

/// What a run past its deadline is answered.
fn run_deadline_passed(app: &App, had: Duration) -> ApiFailure {
    app.metrics.deadlines_passed.inc();
    ApiFailure::retry(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "the run did not finish within its deadline ({:.0}s: its timeout plus {}s, or {}s to start); it was killed and its slot given back — retry later",
            had.as_secs_f64(),
            app.deadlines.run_margin.as_secs(),
            app.deadlines.start.as_secs()
        ),
        Duration::from_secs(1),
    )
}

/// Run `job` as `principal` with its output captured; killed if the request goes or
/// its deadline passes (the cancel end is dropped either way).
async fn run_captured(
    app: &Arc<App>,
    key: &ApiKey,
    principal: Principal,
    job: Job,
) -> ApiResult<RunReport> {
    let cancel = Cancel::new()?;
    let engine = app.engine.clone();
    let run_side = cancel
        .run_side
        .try_clone()
        .map_err(|e| ApiFailure::internal(e.to_string()))?;
    let compile = app.metrics.policy_compile.clone();
    let clock = RunClock::new(app);
    let started = clock.clone();
    let permit = app
        .workers
        .acquire(&key.id, app.deadlines.queue)
        .await
        .map_err(|r| refused(app, r))?;
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut on_started = |s: &Started| {
            started.started(s.timeout_ms);
            compile.observe(s.compile_ms / 1000.0)
        };
        let io = RunIo {
            stdin: Stdin::Null,
            output: Output::capture(),
            wake: Wake::Cancel(run_side.as_fd()),
            on_started: Some(&mut on_started),
        };
        match job {
            Job::Run(req) => engine.run(principal, *req, false, io),
            Job::Exec(name, req) => engine.exec(principal, &name, *req, io),
        }
    });
    let result = clock.wait(task).await;
    // Past the deadline this kills the run (the engine sees the cancel end close).
    drop(cancel);
    match result {
        Ok(joined) => joined
            .map_err(|e| ApiFailure::internal(format!("worker failed: {e}")))?
            .map_err(ApiFailure::from),
        Err(had) => Err(run_deadline_passed(app, had)),
    }
}

/// A run or an exec whose output streams as Server-Sent Events:
///
/// * `event: stdout` / `event: stderr`, `data: {"data": "<text>"}` — output as it
///   comes (lossy UTF-8);
/// * `event: result`, `data: <ApiRunResult>` — once, at the end;
/// * `event: error`, `data: {"error": "..."}` — instead of `result` when the
///   sandbox could not run.
///
/// The client going away kills the run.
async fn run_streamed(
    app: Arc<App>,
    principal: Principal,
    job: Job,
    key_id: String,
    slot: Slot,
) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let cancel = Cancel::new()?;
    let stop = cancel.stopper();
    let run_side = cancel
        .run_side
        .try_clone()
        .map_err(|e| ApiFailure::internal(e.to_string()))?;
    let engine = app.engine.clone();
    let (kind, target) = match &job {
        Job::Run(_) => ("run", None),
        Job::Exec(name, _) => ("sandbox.exec", Some(name.clone())),
    };
    let events = tx.clone();
    let compile = app.metrics.policy_compile.clone();
    let clock = RunClock::new(&app);
    let started = clock.clone();
    let permit = app
        .workers
        .acquire(&key_id, app.deadlines.queue)
        .await
        .map_err(|r| refused(&app, r))?;
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut on_started = |s: &Started| {
            started.started(s.timeout_ms);
            compile.observe(s.compile_ms / 1000.0)
        };
        let mut late = false;
        let mut send = |stream: Stream, data: &[u8]| {
            let name = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            let event = Event::default()
                .event(name)
                .data(serde_json::json!({ "data": String::from_utf8_lossy(data) }).to_string());
            // A client that went away dropped the receiver (and the cancel end with it:
            // the run is being killed); nothing to send to. A client that stopped
            // reading holds this thread only until the run's deadline: output after
            // it is dropped (the run is being killed then).
            if !late {
                let deadline = tokio::time::Instant::from_std(started.deadline());
                late = runtime
                    .block_on(tokio::time::timeout_at(deadline, events.send(event)))
                    .is_err();
            }
        };
        let io = RunIo {
            stdin: Stdin::Null,
            output: Output::Stream(&mut send),
            wake: Wake::Cancel(run_side.as_fd()),
            on_started: Some(&mut on_started),
        };
        match job {
            Job::Run(req) => engine.run(principal, *req, false, io),
            Job::Exec(name, req) => engine.exec(principal, &name, *req, io),
        }
    });
    tokio::spawn(async move {
        let result = clock.wait(task).await;
        let event = match result {
            Ok(Ok(Ok(report))) => {
                audit(
                    &app,
                    Some(&key_id),
                    kind,
                    target.as_deref(),
                    "ok",
                    Some("streamed"),
                );
                let result = finish_run(&app, report, if kind == "run" { "run" } else { "exec" });
                Event::default()
                    .event("result")
                    .data(serde_json::to_string(&result).expect("serializes"))
            }
            Ok(Ok(Err(failure))) => {
                let failure = ApiFailure::from(failure);
                audit(
                    &app,
                    Some(&key_id),
                    kind,
                    target.as_deref(),
                    "error",
                    Some(&failure.message),
                );
                Event::default().event("error").data(
                    serde_json::json!({ "error": failure.message, "field": failure.field })
                        .to_string(),
                )
            }
            Ok(Err(e)) => Event::default()
                .event("error")
                .data(serde_json::json!({ "error": format!("worker failed: {e}") }).to_string()),
            Err(had) => {
                // Kills the run; the response keeps its end of the pair meanwhile.
                stop.stop();
                let failure = run_deadline_passed(&app, had);
                audit(
                    &app,
                    Some(&key_id),
                    kind,
                    target.as_deref(),
                    "error",
                    Some(&failure.message),
                );
                Event::default()
                    .event("error")
                    .data(serde_json::json!({ "error": failure.message }).to_string())
            }
        };
        // The slot is given back before the last event, which a client that stopped
        // reading may never take.
        drop(slot);
        let _ = tokio::time::timeout(app.deadlines.run_margin, tx.send(event)).await;
    });
    // The cancel end lives as long as the response body: a client that goes away drops
    // the body, the engine sees its end of the pair close and kills the run.
    let events = futures_util::stream::unfold((rx, cancel), |(mut rx, cancel)| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), (rx, cancel)))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

pub(crate) async fn run(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, &peer, "run", None).await?;
    let req: RunRequest = json_body(body, app.config.max_body)?;
    // The request's shape is checked before a slot is taken.
    req.program()
        .map_err(|e| ApiFailure::from(Failure::from(e)))?;
    let slot = admit(&app, &key).await?;
    let principal = principal(&key);
    if req.stream {
        return run_streamed(
            app.clone(),
            principal,
            Job::Run(Box::new(req)),
            key.id.clone(),
            slot,
        )
        .await;
    }
    let result = run_captured(&app, &key, principal, Job::Run(Box::new(req))).await;
    drop(slot);
    audit_result(&app, &key, "run", None, &result);
    Ok(axum::Json(finish_run(&app, result?, "run")).into_response())
}

// ---------------------------------------------------------------------------------------
// Persistent sandboxes: an API key sees only its own (the engine looks them up by the
// key's owner: another key's sandbox is "not found").
// ---------------------------------------------------------------------------------------

pub(crate) async fn create_sandbox(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, &peer, "sandbox.create", None).await?;
    let req: CreateRequest = json_body(body, app.config.max_body)?;
    let name = req.name.clone();
    let principal = principal(&key);
    let slot = admit_persistent(&app, &key).await?;
    let engine = app.engine.clone();
    let created = blocking(
        &app,
        &key.id,
        "creating the sandbox",
        app.deadlines.lifecycle,
        move || engine.create(principal, req),
    )
    .await;
    drop(slot); // from now on it counts as a persistent sandbox
    *app.persistent.lock().expect("census") = None;
    audit_result(&app, &key, "sandbox.create", Some(&name), &created);
    let created = created?;
    app.metrics
        .sandbox_starts
        .get_or_create(&KindLabel {
            kind: "persistent".into(),
        })
        .inc();
    Ok((StatusCode::CREATED, axum::Json(created.info.redacted())).into_response())
}

/// Admission of a new persistent sandbox for `key` (REST and E2B alike): at most the
/// key's `max_concurrent` sandboxes, then the server's slots and pressure. The slot
/// is held until the sandbox exists; from then on it counts as a persistent one.
pub(crate) async fn admit_persistent(app: &Arc<App>, key: &ApiKey) -> ApiResult<Slot> {
    let (engine, p) = (app.engine.clone(), principal(key));
    let mine = blocking(
        app,
        &key.id,
        "listing the key's sandboxes",
        app.deadlines.call,
        move || Ok(engine.list(p, false)?.len()),
    )
    .await?;
    if mine >= key.max_concurrent as usize {
        return Err(refused(
            app,
            Refusal::KeyBusy {
                limit: key.max_concurrent,
            },
        ));
    }
    admit(app, key).await
}

pub(crate) async fn list_sandboxes(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult<axum::Json<Vec<SandboxInfo>>> {
    let key = authenticate(&app, &headers, &peer, "sandbox.list", None).await?;
    let engine = app.engine.clone();
    let principal = principal(&key);
    let list = blocking(
        &app,
        &key.id,
        "listing the sandboxes",
        app.deadlines.call,
        move || engine.list(principal, false),
    )
    .await?;
    Ok(axum::Json(
        list.into_iter().map(SandboxInfo::redacted).collect(),
    ))
}

pub(crate) async fn get_sandbox(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    let key = authenticate(&app, &headers, &peer, "sandbox.get", Some(&name)).await?;
    let engine = app.engine.clone();
    let principal = principal(&key);
    let info = blocking(
        &app,
        &key.id,
        "looking the sandbox up",
        app.deadlines.call,
        move || engine.get(principal, &name),
    )
    .await?;
    Ok(axum::Json(info.redacted()))
}

pub(crate) async fn delete_sandbox(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    let key = authenticate(&app, &headers, &peer, "sandbox.delete", Some(&name)).await?;
    let engine = app.engine.clone();
    let principal = principal(&key);
    let target = name.clone();
    let r = blocking(
        &app,
        &key.id,
        "destroying the sandbox",
        app.deadlines.lifecycle,
        move || engine.destroy(principal, &target),
    )
    .await;
    *app.persistent.lock().expect("census") = None;
    audit_result(&app, &key, "sandbox.delete", Some(&name), &r);
    if r.is_ok() {
        // Its interpreters died with it.
        app.contexts
            .all
            .remove_sandbox(&Owner::Key(key.id.clone()), &name);
    }
    Ok(axum::Json(r?.redacted()))
}

pub(crate) async fn exec(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, &peer, "sandbox.exec", Some(&name)).await?;
    let ExecBody {
        request: req,
        stream,
    } = json_body(body, app.config.max_body)?;
    req.program()
        .map_err(|e| ApiFailure::from(Failure::from(e)))?;
    if req.background {
        return exec_background(app, key, name, req).await;
    }
    let slot = admit(&app, &key).await?;
    let principal = principal(&key);
    if stream {
        return run_streamed(
            app.clone(),
            principal,
            Job::Exec(name, Box::new(req)),
            key.id.clone(),
            slot,
        )
        .await;
    }
    let result = run_captured(
        &app,
        &key,
        principal,
        Job::Exec(name.clone(), Box::new(req)),
    )
    .await;
    drop(slot);
    audit_result(&app, &key, "sandbox.exec", Some(&name), &result);
    Ok(axum::Json(finish_run(&app, result?, "exec")).into_response())
}

/// An exec with `background: true`: started, answered at once with its pid (201). It
/// takes no run slot: it is a process of the sandbox, bounded by the sandbox's pids and
/// memory limits and its lifetime, listed and killed through `.../processes`.
async fn exec_background(
    app: Arc<App>,
    key: ApiKey,
    name: String,
    req: phantom_api::request::ExecRequest,
) -> ApiResult<Response> {
    let engine = app.engine.clone();
    let principal = principal(&key);
    let target = name.clone();
    let r = blocking(
        &app,
        &key.id,
        "starting the background command",
        app.deadlines.call,
        move || engine.exec_background(principal, &target, req),
    )
    .await;
    audit_result(&app, &key, "sandbox.exec", Some(&name), &r);
    let pid = r?;
    Ok((
        axum::http::StatusCode::CREATED,
        axum::Json(phantom_api::Spawned { pid }),
    )
        .into_response())
}

/// `GET /api/v2/sandboxes/{name}/processes`: what commands still run in the sandbox
/// and what they left running, by their pid inside it.
pub(crate) async fn list_processes(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Vec<phantom_api::ProcessInfo>>> {
    let key = authenticate(&app, &headers, &peer, "sandbox.processes", Some(&name)).await?;
    let engine = app.engine.clone();
    let principal = principal(&key);
    let list = blocking(
        &app,
        &key.id,
        "listing the sandbox's processes",
        app.deadlines.call,
        move || engine.list_processes(principal, &name),
    )
    .await?;
    Ok(axum::Json(list))
}

/// `?signal=` of `DELETE /api/v2/sandboxes/{name}/processes/{pid}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignalQuery {
    /// term (the default), kill, int, hup, quit, usr1, usr2, stop, cont.
    signal: Option<phantom_api::choice::ProcessSignal>,
}

/// `DELETE /api/v2/sandboxes/{name}/processes/{pid}[?signal=kill]`: signal a process
/// of the sandbox (SIGTERM by default); 204 once sent.
pub(crate) async fn kill_process(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path((name, pid)): Path<(String, String)>,
    signal: Result<Query<SignalQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, &peer, "sandbox.kill", Some(&name)).await?;
    let pid: i32 = pid.parse().map_err(|_| {
        ApiFailure::bad_request(format!(
            "pid `{pid}`: a process's pid inside the sandbox, a number as GET .../processes lists it"
        ))
    })?;
    let Query(SignalQuery { signal }) = signal.map_err(|e| {
        ApiFailure::bad_request(format!(
            "query: {e}; expected ?signal=term (or kill, int, hup, quit, usr1, usr2, stop, cont)"
        ))
    })?;
    let engine = app.engine.clone();
    let principal = principal(&key);
    let target = name.clone();
    let r = blocking(
        &app,
        &key.id,
        "signalling the process",
        app.deadlines.call,
        move || {
            engine.kill_process(
                principal,
                &target,
                pid,
                signal.unwrap_or(phantom_api::choice::ProcessSignal::Term),
            )
        },
    )
    .await;
    audit_result(&app, &key, "sandbox.kill", Some(&name), &r);
    r?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathQuery {
    /// `/workspace/...`.
    path: Option<String>,
}

fn query(q: Result<Query<PathQuery>, QueryRejection>) -> ApiResult<PathQuery> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiFailure::bad_request(format!("query: {e}; expected ?path=/workspace/...")))
}

/// Work on sandbox `name`'s workspace (as `principal`), off the async threads: the
/// engine hands out the workspace's fd only to its owner.
async fn in_workspace<T: Send + 'static>(
    app: &Arc<App>,
    key: &ApiKey,
    (what, deadline): (&str, Duration),
    name: String,
    work: impl FnOnce(&OwnedFd, &str) -> Result<T, phantom_engine::EngineError> + Send + 'static,
) -> ApiResult<T> {
    let engine = app.engine.clone();
    let principal = principal(key);
    blocking(app, &key.id, what, deadline, move || {
        let workspace = engine.workspace(principal, &name)?;
        work(&workspace, &name).map_err(engine_failure)
    })
    .await
}

pub(crate) async fn list_files(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<PathQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Vec<phantom_api::FileEntry>>> {
    let key = authenticate(&app, &headers, &peer, "files.list", Some(&name)).await?;
    let path = query(q)?.path.unwrap_or_else(|| "/workspace".into());
    let files = ("listing the files", app.deadlines.files);
    let entries = in_workspace(&app, &key, files, name, move |ws, name| {
        phantom_engine::sandbox::files::list_files(ws, name, &path)
    })
    .await?;
    Ok(axum::Json(entries))
}

pub(crate) async fn read_file(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<PathQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, &peer, "files.read", Some(&name)).await?;
    let path = query(q)?.path.ok_or_else(|| {
        ApiFailure::bad_request("path: which file, e.g. ?path=/workspace/main.py")
    })?;
    let max = app.config.max_body as u64;
    let files = ("reading the file", app.deadlines.files);
    let data = in_workspace(&app, &key, files, name, move |ws, name| {
        phantom_engine::sandbox::files::read_file(ws, name, &path, max)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

pub(crate) async fn write_file(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<PathQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let key = authenticate(&app, &headers, &peer, "files.write", Some(&name)).await?;
    let path = query(q)?.path.ok_or_else(|| {
        ApiFailure::bad_request("path: which file, e.g. ?path=/workspace/main.py")
    })?;
    let body = body.map_err(|e| {
        ApiFailure::new(
            e.status(),
            format!("the file is larger than {} bytes", app.config.max_body),
        )
    })?;
    let target = format!("{name}:{path}");
    let files = ("writing the file", app.deadlines.files);
    let r = in_workspace(&app, &key, files, name, move |ws, name| {
        phantom_engine::sandbox::files::write_file(ws, name, &path, &body, true)
    })
    .await;
    audit_result(&app, &key, "files.write", Some(&target), &r);
    r.map(|()| StatusCode::NO_CONTENT)
}

pub(crate) async fn snapshot(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, &peer, "sandbox.snapshot", Some(&name)).await?;
    let bytes = body.as_ref().map(|b| b.len()).unwrap_or(1);
    let req: ApiSnapshotRequest = if bytes == 0 {
        ApiSnapshotRequest::default()
    } else {
        json_body(body, app.config.max_body)?
    };
    let owner = Owner::Key(key.id.clone());
    let target = name.clone();
    let snapshot = ("the snapshot", app.deadlines.snapshot);
    let r = in_workspace(&app, &key, snapshot, name, move |ws, name| {
        let tag = req.tag.unwrap_or_else(|| {
            format!(
                "{name}-{}",
                phantom_engine::sandbox::utc_stamp(phantom_engine::sandbox::now_s())
            )
        });
        let store = phantom_store::SnapshotStore::open_default()?;
        let dir = phantom_engine::sandbox::files::readable_dir(ws)?;
        let info = store.snapshot_at(
            dir.as_fd(),
            &format!("{name}:/workspace"),
            &owner,
            &tag,
            &Default::default(),
            &mut |_| {},
        )?;
        Ok(api_snapshot(info))
    })
    .await;
    audit_result(&app, &key, "sandbox.snapshot", Some(&target), &r);
    Ok((StatusCode::CREATED, axum::Json(r?)).into_response())
}

fn api_snapshot(i: phantom_store::SnapshotInfo) -> SnapshotInfo {
    SnapshotInfo {
        tag: i.tag,
        manifest: i.manifest,
        files: i.files,
        bytes: i.bytes,
        new_chunks: i.new_chunks,
        created: i.created,
        source: None,
    }
}

pub(crate) async fn list_snapshots(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Vec<SnapshotInfo>>> {
    let key = authenticate(&app, &headers, &peer, "sandbox.snapshots", Some(&name)).await?;
    let owner = Owner::Key(key.id.clone());
    let source = format!("{name}:/workspace");
    let list = blocking(
        &app,
        &key.id,
        "listing the snapshots",
        app.deadlines.call,
        move || {
            let store = phantom_store::SnapshotStore::open_default()
                .map_err(|e| engine_failure(e.into()))?;
            Ok(store
                .list(Some(&owner))
                .map_err(|e| engine_failure(e.into()))?
                .into_iter()
                .filter(|s| s.source == source)
                .map(api_snapshot)
                .collect::<Vec<_>>())
        },
    )
    .await?;
    Ok(axum::Json(list))
}

// ---------------------------------------------------------------------------------------
// System
// ---------------------------------------------------------------------------------------

pub(crate) async fn pools(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult<axum::Json<phantom_api::engine::PoolStatus>> {
    let key = authenticate(&app, &headers, &peer, "pools", None).await?;
    let engine = app.engine.clone();
    Ok(axum::Json(
        blocking(
            &app,
            &key.id,
            "reading the pools",
            app.deadlines.call,
            move || engine.pools(),
        )
        .await?,
    ))
}

pub(crate) async fn psi(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    authenticate(&app, &headers, &peer, "psi", None).await?;
    let sample = match &app.config.psi {
        Some(_) => pressure(&app),
        None => {
            use phantom_engine::pressure::{PressureSource, ProcPressure};
            ProcPressure.sample()
        }
    };
    let thresholds = app
        .config
        .psi
        .as_ref()
        .map(|(_, c, m)| serde_json::json!({ "cpu": c, "memory": m }));
    Ok(axum::Json(serde_json::json!({
        "available": sample.is_some(),
        "cpu_some_avg10": sample.map(|p| p.cpu),
        "memory_some_avg10": sample.map(|p| p.memory),
        "admission_thresholds": thresholds,
        "in_flight": crate::limits::in_flight(&app.inflight),
    })))
}

pub(crate) async fn performance(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    authenticate(&app, &headers, &peer, "performance", None).await?;
    let (n, p50, p95, p99) = app.metrics.recent_percentiles();
    let by_path = app.metrics.by_path();
    Ok(axum::Json(serde_json::json!({
        "recent_runs": n,
        "wall_ms": { "p50": p50, "p95": p95, "p99": p99 },
        "by_profile_and_path": by_path,
    })))
}

// ---------------------------------------------------------------------------------------
// Code contexts: long-lived interpreters in a key's persistent sandbox
// (phantom_engine::contexts), kept by owner and sandbox — another key's context is
// "not found".
// ---------------------------------------------------------------------------------------

/// The most stdout and stderr one context call returns.
const CONTEXT_MAX_OUTPUT: u64 = 16 << 20;

/// Whether `name` is `key`'s sandbox (404 otherwise, as for every sandbox route).
async fn own_sandbox(app: &Arc<App>, key: &ApiKey, name: &str) -> ApiResult<()> {
    let engine = app.engine.clone();
    let (principal, name) = (principal(key), name.to_string());
    blocking(
        app,
        &key.id,
        "looking the sandbox up",
        app.deadlines.call,
        move || engine.get(principal, &name).map(drop),
    )
    .await
}

/// `POST /api/v2/sandboxes/{name}/contexts` (`{language?, cwd?}`): start an interpreter
/// in the sandbox; 201 with its id.
pub(crate) async fn create_context(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    use phantom_api::context::NewContext;
    let key = authenticate(&app, &headers, &peer, "sandbox.context.create", Some(&name)).await?;
    let new: NewContext = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => NewContext::default(),
        _ => json_body(body, app.config.max_body)?,
    };
    let spec = phantom_engine::contexts::ContextSpec {
        id: phantom_engine::contexts::new_id(),
        language: new.language.unwrap_or_default(),
        cwd: new.cwd.unwrap_or_else(|| "/workspace".into()),
        env: Default::default(),
    };
    let (contexts, engine, principal, target) = (
        app.contexts.all.clone(),
        app.engine.clone(),
        principal(&key),
        name.clone(),
    );
    let r = blocking(
        &app,
        &key.id,
        "starting the context",
        app.deadlines.lifecycle,
        move || Ok(contexts.start(&engine, principal, &target, spec)?.info()),
    )
    .await;
    audit_result(&app, &key, "sandbox.context.create", Some(&name), &r);
    Ok((StatusCode::CREATED, axum::Json(r?)).into_response())
}

/// `GET /api/v2/sandboxes/{name}/contexts`.
pub(crate) async fn list_contexts(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Vec<phantom_api::context::ContextInfo>>> {
    let key = authenticate(&app, &headers, &peer, "sandbox.context.list", Some(&name)).await?;
    own_sandbox(&app, &key, &name).await?;
    let owner = principal(&key).owner;
    Ok(axum::Json(
        app.contexts
            .all
            .list(&owner, &name)
            .iter()
            .map(|c| c.info())
            .collect(),
    ))
}

/// `DELETE /api/v2/sandboxes/{name}/contexts/{id}`: stop it; 204.
pub(crate) async fn delete_context(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, &peer, "sandbox.context.delete", Some(&name)).await?;
    let r = app
        .contexts
        .all
        .remove(&principal(&key).owner, &name, &id)
        .map(drop)
        .map_err(ApiFailure::from);
    audit_result(&app, &key, "sandbox.context.delete", Some(&name), &r);
    r?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v2/sandboxes/{name}/contexts/{id}/restart`: a fresh interpreter under
/// the same id (its state is gone); 204.
pub(crate) async fn restart_context(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let key = authenticate(
        &app,
        &headers,
        &peer,
        "sandbox.context.restart",
        Some(&name),
    )
    .await?;
    let (contexts, engine, principal, target) = (
        app.contexts.all.clone(),
        app.engine.clone(),
        principal(&key),
        name.clone(),
    );
    let r = blocking(
        &app,
        &key.id,
        "restarting the context",
        app.deadlines.lifecycle,
        move || contexts.restart(&engine, principal, &target, &id).map(drop),
    )
    .await;
    audit_result(&app, &key, "sandbox.context.restart", Some(&name), &r);
    r?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v2/sandboxes/{name}/contexts/{id}/run` (`{code, env?, timeout?,
/// stream?}`): the [`phantom_api::context::CodeResult`], or with `stream` Server-Sent
/// Events:
///
/// * `stdout` / `stderr`, `data: {"data": "<text>"}` — output as it comes;
/// * `result`, `data: <CellResult>` — a display result (a figure, the value);
/// * `error`, `data: <CellError>` — the exception that ended the code; or
///   `data: {"error": "..."}` when the call could not run;
/// * `done`, `data: {"execution_count", "timed_out", "output_truncated"}` — last.
///
/// Past its timeout the code is interrupted (KeyboardInterrupt) and `timed_out` says
/// so; the context keeps its state. The client going away interrupts it too. The call
/// holds a worker thread of the key until its timeout plus the interrupt's grace and
/// the server's run margin, at most.
pub(crate) async fn run_context(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use phantom_api::context::{CodeResult, ContextEvent, ContextRun};
    let key = authenticate(&app, &headers, &peer, "sandbox.context.run", Some(&name)).await?;
    let run: ContextRun = json_body(body, app.config.max_body)?;
    let timeout = phantom_engine::contexts::call_timeout(&run).map_err(ApiFailure::from)?;
    let context = app
        .contexts
        .all
        .get(&principal(&key).owner, &name, &id)
        .map_err(ApiFailure::from)?;
    let permit = app
        .workers
        .acquire(&key.id, app.deadlines.queue)
        .await
        .map_err(|r| refused(&app, r))?;
    let had = timeout + phantom_engine::contexts::INTERRUPT_GRACE + app.deadlines.run_margin;
    let deadline = tokio::time::Instant::now() + had;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ContextEvent>(64);
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let gone = tx.clone();
        context.execute(
            &run.code,
            &run.env,
            timeout,
            CONTEXT_MAX_OUTPUT,
            // A client that stopped reading holds this thread until the deadline only.
            &mut |e| {
                runtime
                    .block_on(tokio::time::timeout_at(deadline, tx.send(e)))
                    .is_ok_and(|sent| sent.is_ok())
            },
            &|| gone.is_closed(),
        )
    });
    if !run.stream {
        let collect = async {
            let mut result = CodeResult::default();
            while let Some(e) = rx.recv().await {
                result.add(e);
            }
            result
        };
        let r = match tokio::time::timeout_at(deadline, async { (collect.await, task.await) }).await
        {
            Ok((result, Ok(Ok(())))) => Ok(result),
            Ok((_, Ok(Err(f)))) => Err(ApiFailure::from(f)),
            Ok((_, Err(e))) => Err(ApiFailure::internal(format!("worker failed: {e}"))),
            Err(_) => Err(run_deadline_passed(&app, had)),
        };
        audit_result(&app, &key, "sandbox.context.run", Some(&name), &r);
        return Ok(axum::Json(r?).into_response());
    }
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let data = |v: serde_json::Value| v.to_string();
        loop {
            // A client that went away while the code prints nothing is noticed too.
            let e = tokio::select! {
                e = rx.recv() => e,
                () = out_tx.closed() => return,
            };
            let Some(e) = e else { break };
            let event = match e {
                ContextEvent::Stdout { text } => Event::default()
                    .event("stdout")
                    .data(data(serde_json::json!({ "data": text }))),
                ContextEvent::Stderr { text } => Event::default()
                    .event("stderr")
                    .data(data(serde_json::json!({ "data": text }))),
                ContextEvent::Result(r) => Event::default()
                    .event("result")
                    .data(serde_json::to_string(&r).expect("serializes")),
                ContextEvent::Error(e) => Event::default()
                    .event("error")
                    .data(serde_json::to_string(&e).expect("serializes")),
                ContextEvent::Done {
                    execution_count,
                    timed_out,
                    output_truncated,
                } => Event::default().event("done").data(data(serde_json::json!({
                    "execution_count": execution_count,
                    "timed_out": timed_out,
                    "output_truncated": output_truncated,
                }))),
            };
            // The client went away: dropping `rx` tells the call, which interrupts
            // the cell.
            if out_tx.send(event).await.is_err() {
                return;
            }
        }
        let r = match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(f))) => Err(ApiFailure::from(f)),
            Ok(Err(e)) => Err(ApiFailure::internal(format!("worker failed: {e}"))),
            Err(_) => Err(run_deadline_passed(&app, had)),
        };
        audit_result(&app, &key, "sandbox.context.run", Some(&name), &r);
        if let Err(f) = r {
            let _ = out_tx
                .send(
                    Event::default()
                        .event("error")
                        .data(serde_json::json!({ "error": f.message }).to_string()),
                )
                .await;
        }
    });
    let events = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
