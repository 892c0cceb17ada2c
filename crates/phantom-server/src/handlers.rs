//! The API's handlers. Each: authenticate (X-API-Key or Authorization: Bearer),
//! rate-limit, admit (concurrency, pressure), do the work, audit mutating calls.
//! Errors are JSON `{"error": "..."}` with the status that fits.

use std::collections::BTreeMap;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use phantom_api::{
    ApiCreateSandbox, ApiError, ApiExecRequest, ApiHealth, ApiLimits, ApiRunRequest, ApiRunResult,
    ApiSnapshot, ApiSnapshotRequest, PolicySource, RunOverrides, RunReport, RunRequest,
    SandboxInfo,
};
use phantom_state::keys::{ApiKey, AuthError};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::limits::{take_slot, Refusal, Slot};
use crate::metrics::{
    DecisionLabel, KindLabel, ProfileLabel, ReasonLabel, RequestLabels, SandboxLabel,
};
use crate::{runner, App};

/// An error answer.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiFailure {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::NOT_FOUND, m)
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

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(ApiError {
                error: self.message,
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

/// A runtime error as an answer: the caller's mistakes are 400 (404 for an unknown
/// sandbox), the rest 500.
fn runtime_failure(e: phantom_engine::EngineError) -> ApiFailure {
    let msg = e.to_string();
    if msg.contains("no sandbox named") {
        ApiFailure::not_found(msg)
    } else if e.exit_code() == 2 {
        ApiFailure::bad_request(msg)
    } else {
        ApiFailure::internal(msg)
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

/// Run blocking runtime work (SQLite, file I/O) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, phantom_engine::EngineError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiFailure::internal(format!("worker failed: {e}")))?
        .map_err(runtime_failure)
}

pub(crate) fn audit(
    key: Option<&str>,
    action: &str,
    target: Option<&str>,
    result: &str,
    detail: Option<&str>,
) {
    let (key, action, target, result, detail) = (
        key.map(str::to_string),
        action.to_string(),
        target.map(str::to_string),
        result.to_string(),
        detail.map(str::to_string),
    );
    // Best effort, off the request's path; a failure is logged, never silently lost.
    tokio::task::spawn_blocking(move || {
        let r = phantom_state::audit::Audit::open_default().and_then(|a| {
            a.record(
                key.as_deref(),
                &action,
                target.as_deref(),
                &result,
                detail.as_deref(),
            )
        });
        if let Err(e) = r {
            eprintln!("phantom-supervisor: audit log: {e}");
        }
    });
}

/// Audit a mutating call by what it returned: `ok`, or `error` with the message.
fn audit_result<T>(key: &ApiKey, action: &str, target: Option<&str>, r: &ApiResult<T>) {
    match r {
        Ok(_) => audit(Some(&key.id), action, target, "ok", None),
        Err(e) => audit(Some(&key.id), action, target, "error", Some(&e.message)),
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
/// limits.
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
    })
}

/// Authenticate and rate-limit a request; `action` and `target` name it in the audit
/// log when it is refused.
async fn authenticate(
    app: &App,
    headers: &HeaderMap,
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
        audit(None, action, target, "denied", Some("no API key"));
        return Err(ApiFailure::unauthorized(
            "an API key is required: send X-API-Key: phk_... or Authorization: Bearer phk_... (make one with `phantom keys add NAME`)",
        ));
    };
    let from_file = file_key(app, &presented);
    let verdict = match from_file {
        Some(key) => Ok(key),
        None => {
            blocking(move || Ok(phantom_state::keys::Keys::open_default()?.verify(&presented)?))
                .await?
        }
    };
    let key = match verdict {
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
            audit(key_id, action, target, "denied", Some(&e.to_string()));
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

/// Current pressure, when the server watches it.
fn pressure(app: &App) -> Option<phantom_engine::warm::pressure::Pressure> {
    use phantom_engine::warm::pressure::{DirPressure, PressureSource};
    let (dir, _, _) = app.config.psi.as_ref()?;
    DirPressure(dir.clone()).sample()
}

/// Admit one more sandbox for `key`: pressure, then the key's and the server's limits.
async fn admit(app: &App, key: &ApiKey) -> ApiResult<Slot> {
    if let (Some((_, cpu, mem)), Some(p)) = (&app.config.psi, pressure(app)) {
        let t = phantom_engine::warm::pressure::Thresholds {
            cpu: *cpu,
            memory: *mem,
        };
        if let Some(why) = t.exceeded(p) {
            return Err(refused(app, Refusal::Pressure { why }));
        }
    }
    let persistent = blocking(|| Ok(phantom_engine::sandbox::list()?.len())).await?;
    take_slot(
        &app.inflight,
        &key.id,
        key.max_concurrent,
        app.config.max_sandboxes,
        persistent,
    )
    .map_err(|r| refused(app, r))
}

fn refused(app: &App, r: Refusal) -> ApiFailure {
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
    };
    app.metrics
        .admission_refusals
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .inc();
    failure
}

/// Parse a JSON body into `T`, with a message that says what to send instead.
fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>, max: usize) -> ApiResult<T> {
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
    serde_json::from_slice(&body).map_err(|e| {
        let hint = if e.to_string().contains("unknown field") {
            "; /api/v2/openapi.json lists the fields"
        } else {
            ""
        };
        ApiFailure::bad_request(format!("invalid JSON body: {e}{hint}"))
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
    // Gauges read at scrape time.
    let socket = app.config.pool_socket.clone();
    let pools = tokio::task::spawn_blocking(move || {
        socket.and_then(|s| phantom_engine::warm::client::status_at(&s).ok())
    })
    .await
    .ok()
    .flatten();
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
        use phantom_engine::warm::pressure::{PressureSource, ProcPressure};
        ProcPressure.sample()
    };
    if let Some(p) = sample {
        app.metrics.psi_cpu.set(p.cpu / 100.0);
        app.metrics.psi_memory.set(p.memory / 100.0);
    }
    let memory = tokio::task::spawn_blocking(|| {
        let list = phantom_engine::sandbox::list().unwrap_or_default();
        list.into_iter()
            .filter(|s| s.status == "running")
            .filter_map(|s| {
                let m = phantom_engine::sandbox::monitor(&s.name, None).ok()?;
                Some((s.name, m.memory_bytes?))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    app.metrics.sandbox_memory.clear();
    for (name, bytes) in memory {
        app.metrics
            .sandbox_memory
            .get_or_create(&SandboxLabel { sandbox: name })
            .set(bytes as i64);
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
// Runs
// ---------------------------------------------------------------------------------------

/// The command for `language` + `code`.
fn language_argv(language: &str, code: &str) -> ApiResult<Vec<String>> {
    let (interp, flag) = match language {
        "python" | "python3" => ("python3", "-c"),
        "node" | "javascript" | "js" => ("node", "-e"),
        "bash" => ("bash", "-c"),
        "sh" => ("sh", "-c"),
        other => {
            return Err(ApiFailure::bad_request(format!(
                "unknown language `{other}`: use python, node, bash or sh, or send argv instead"
            )))
        }
    };
    Ok(vec![interp.into(), flag.into(), code.into()])
}

fn overrides(limits: &ApiLimits) -> RunOverrides {
    RunOverrides {
        mode: None,
        memory: limits.memory.clone(),
        cpus: limits.cpus.clone(),
        pids: limits.pids,
        timeout: limits.timeout.clone(),
        network: limits.network.clone(),
    }
}

fn limit_args(limits: &ApiLimits) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, value) in [
        ("--timeout", &limits.timeout),
        ("--memory", &limits.memory),
        ("--cpus", &limits.cpus),
        ("--network", &limits.network),
    ] {
        if let Some(v) = value {
            args.push(flag.to_string());
            args.push(v.clone());
        }
    }
    if let Some(p) = limits.pids {
        args.push("--pids".into());
        args.push(p.to_string());
    }
    args
}

fn env_args(env: &BTreeMap<String, String>) -> ApiResult<Vec<String>> {
    let mut args = Vec::new();
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ApiFailure::bad_request(format!(
                "env `{k}`: names must be non-empty, without `=` or NUL"
            )));
        }
        args.push("--env".into());
        args.push(format!("{k}={v}"));
    }
    Ok(args)
}

/// A temporary workspace with the request's files, removed on drop.
pub(crate) struct TempWorkspace(PathBuf);

impl Drop for TempWorkspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_files(files: &[phantom_api::ApiFile]) -> ApiResult<Option<TempWorkspace>> {
    if files.is_empty() {
        return Ok(None);
    }
    for f in files {
        let p = FsPath::new(&f.path);
        if f.path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(ApiFailure::bad_request(format!(
                "files: `{}`: give a relative path inside the workspace without `..`, e.g. src/main.py",
                f.path
            )));
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "phantom-api-{}-{}",
        std::process::id(),
        phantom_state::ids::new_sandbox_id()
    ));
    std::fs::create_dir(&dir)
        .map_err(|e| ApiFailure::internal(format!("{}: {e}", dir.display())))?;
    let ws = TempWorkspace(dir);
    for f in files {
        let path = ws.0.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ApiFailure::internal(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(&path, &f.content)
            .map_err(|e| ApiFailure::internal(format!("{}: {e}", path.display())))?;
    }
    Ok(Some(ws))
}

pub(crate) fn finish_run(app: &App, report: RunReport, kind: &str) -> ApiRunResult {
    app.metrics
        .spawned(&report.profile, &report.start, report.wall_ms);
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

pub(crate) async fn run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, "run", None).await?;
    let req: ApiRunRequest = json_body(body, app.config.max_body)?;
    let argv = match (&req.language, &req.code, &req.argv) {
        (Some(lang), Some(code), None) => language_argv(lang, code)?,
        (None, None, Some(argv)) if !argv.is_empty() && !argv[0].is_empty() => argv.clone(),
        _ => {
            return Err(ApiFailure::bad_request(
                "send either language and code (e.g. {\"language\": \"python\", \"code\": \"print(1)\"}) or argv (e.g. {\"argv\": [\"echo\", \"hi\"]})",
            ))
        }
    };
    let profile = req
        .profile
        .clone()
        .unwrap_or_else(|| phantom_policy::DEFAULT_PROFILE.to_string());
    // The policy is checked here first: a bad profile or limit is a 400 before any
    // process starts, and the compile time is measured.
    let check = RunRequest {
        policy: PolicySource::Profile(profile.clone()),
        overrides: overrides(&req.limits),
        argv: argv.clone(),
        env: Vec::new(),
        cwd: None,
        workspace: None,
        capture_output: true,
        image: None,
    };
    let started = Instant::now();
    blocking(move || phantom_engine::prepare(&check).map(|_| ())).await?;
    app.metrics
        .policy_compile
        .observe(started.elapsed().as_secs_f64());
    let _slot = admit(&app, &key).await?;
    let workspace = write_files(&req.files)?;
    let mut args: Vec<String> = vec!["run".into(), "--profile".into(), profile];
    if !req.stream {
        args.push("--json".into());
    }
    args.extend(limit_args(&req.limits));
    args.extend(env_args(&req.env)?);
    if let Some(ws) = &workspace {
        args.push("--workspace".into());
        args.push(ws.0.display().to_string());
    }
    args.push("--".into());
    args.extend(argv);
    if req.stream {
        return runner::stream(
            app.clone(),
            args,
            req.stdin,
            workspace,
            key.id.clone(),
            _slot,
        )
        .await;
    }
    let out = runner::phantom(&app, &args, req.stdin.as_deref()).await?;
    drop(workspace);
    let result = runner::report(&out);
    audit_result(&key, "run", None, &result);
    Ok(axum::Json(finish_run(&app, result?, "run")).into_response())
}

// ---------------------------------------------------------------------------------------
// Persistent sandboxes: an API key sees only its own, named `api-<key id>-<name>`
// underneath.
// ---------------------------------------------------------------------------------------

fn internal_name(key: &ApiKey, name: &str) -> ApiResult<String> {
    if let Err(e) = phantom_engine::sandbox::validate_name(name) {
        return Err(ApiFailure::bad_request(e.to_string()));
    }
    let internal = format!("api-{}-{name}", key.id);
    if internal.len() > 63 {
        return Err(ApiFailure::bad_request(format!(
            "sandbox name `{name}`: at most {} characters over the API",
            63 - (internal.len() - name.len())
        )));
    }
    Ok(internal)
}

fn external(key: &ApiKey, mut info: SandboxInfo) -> SandboxInfo {
    let prefix = format!("api-{}-", key.id);
    if let Some(n) = info.name.strip_prefix(&prefix) {
        info.name = n.to_string();
    }
    info
}

pub(crate) async fn create_sandbox(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, "sandbox.create", None).await?;
    let req: ApiCreateSandbox = json_body(body, app.config.max_body)?;
    let name = internal_name(&key, &req.name)?;
    let prefix = format!("api-{}-", key.id);
    let mine = blocking(move || {
        Ok(phantom_engine::sandbox::list()?
            .into_iter()
            .filter(|s| s.name.starts_with(&prefix))
            .count())
    })
    .await?;
    if mine >= key.max_concurrent as usize {
        return Err(refused(
            &app,
            Refusal::KeyBusy {
                limit: key.max_concurrent,
            },
        ));
    }
    let slot = admit(&app, &key).await?;
    let mut args: Vec<String> = vec![
        "create".into(),
        "--json".into(),
        "--name".into(),
        name.clone(),
    ];
    for (flag, value) in [
        ("--profile", &req.profile),
        ("--image", &req.image),
        ("--timeout-idle", &req.timeout_idle),
        ("--max-lifetime", &req.max_lifetime),
        ("--from-snapshot", &req.from_snapshot),
    ] {
        if let Some(v) = value {
            args.push(flag.into());
            args.push(v.clone());
        }
    }
    args.extend(limit_args(&req.limits));
    let out = runner::phantom(&app, &args, None).await?;
    drop(slot); // from now on it counts as a persistent sandbox
    if out.code != Some(0) {
        let failure = runner::refusal(&out);
        audit(
            Some(&key.id),
            "sandbox.create",
            Some(&req.name),
            "error",
            Some(&failure.message),
        );
        return Err(failure);
    }
    let info: SandboxInfo = serde_json::from_slice(&out.stdout)
        .map_err(|e| ApiFailure::internal(format!("phantom create printed no record: {e}")))?;
    app.metrics
        .sandbox_starts
        .get_or_create(&KindLabel {
            kind: "persistent".into(),
        })
        .inc();
    audit(Some(&key.id), "sandbox.create", Some(&req.name), "ok", None);
    Ok((StatusCode::CREATED, axum::Json(external(&key, info))).into_response())
}

pub(crate) async fn list_sandboxes(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<Vec<SandboxInfo>>> {
    let key = authenticate(&app, &headers, "sandbox.list", None).await?;
    let prefix = format!("api-{}-", key.id);
    let list = blocking(move || {
        Ok(phantom_engine::sandbox::list()?
            .into_iter()
            .filter(|s| s.name.starts_with(&prefix))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(axum::Json(
        list.into_iter().map(|i| external(&key, i)).collect(),
    ))
}

pub(crate) async fn get_sandbox(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    let key = authenticate(&app, &headers, "sandbox.get", Some(&name)).await?;
    let internal = internal_name(&key, &name)?;
    let info = blocking(move || phantom_engine::sandbox::info(&internal)).await;
    Ok(axum::Json(external(
        &key,
        info.map_err(|e| rename(e, &key, &name))?,
    )))
}

/// Messages name the sandbox as the caller does, not by its internal name.
fn rename(mut e: ApiFailure, key: &ApiKey, name: &str) -> ApiFailure {
    e.message = e.message.replace(&format!("api-{}-{name}", key.id), name);
    e
}

pub(crate) async fn delete_sandbox(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    let key = authenticate(&app, &headers, "sandbox.delete", Some(&name)).await?;
    let internal = internal_name(&key, &name)?;
    let r = blocking(move || phantom_engine::sandbox::destroy(&internal)).await;
    audit_result(&key, "sandbox.delete", Some(&name), &r);
    Ok(axum::Json(external(
        &key,
        r.map_err(|e| rename(e, &key, &name))?,
    )))
}

pub(crate) async fn exec(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<ApiRunResult>> {
    let key = authenticate(&app, &headers, "sandbox.exec", Some(&name)).await?;
    let req: ApiExecRequest = json_body(body, app.config.max_body)?;
    if req.argv.first().is_none_or(|a| a.is_empty()) {
        return Err(ApiFailure::bad_request(
            "argv: give the command and its arguments, e.g. {\"argv\": [\"python3\", \"main.py\"]}",
        ));
    }
    let internal = internal_name(&key, &name)?;
    let _slot = admit(&app, &key).await?;
    let mut args: Vec<String> = vec!["exec".into(), internal, "--json".into()];
    if let Some(t) = &req.timeout {
        args.extend(["--timeout".into(), t.clone()]);
    }
    if let Some(c) = &req.cwd {
        args.extend(["--cwd".into(), c.clone()]);
    }
    args.extend(env_args(&req.env)?);
    args.push("--".into());
    args.extend(req.argv.iter().cloned());
    let out = runner::phantom(&app, &args, req.stdin.as_deref()).await?;
    let result = runner::report(&out).map_err(|e| rename(e, &key, &name));
    audit_result(&key, "sandbox.exec", Some(&name), &result);
    Ok(axum::Json(finish_run(&app, result?, "exec")))
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

pub(crate) async fn list_files(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<PathQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Vec<phantom_api::FileEntry>>> {
    let key = authenticate(&app, &headers, "files.list", Some(&name)).await?;
    let path = query(q)?.path.unwrap_or_else(|| "/workspace".into());
    let internal = internal_name(&key, &name)?;
    let entries = blocking(move || phantom_engine::sandbox::list_files(&internal, &path))
        .await
        .map_err(|e| rename(e, &key, &name))?;
    Ok(axum::Json(entries))
}

pub(crate) async fn read_file(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<PathQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, "files.read", Some(&name)).await?;
    let path = query(q)?.path.ok_or_else(|| {
        ApiFailure::bad_request("path: which file, e.g. ?path=/workspace/main.py")
    })?;
    let internal = internal_name(&key, &name)?;
    let max = app.config.max_body as u64;
    let data = blocking(move || phantom_engine::sandbox::read_file(&internal, &path, max))
        .await
        .map_err(|e| rename(e, &key, &name))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

pub(crate) async fn write_file(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<PathQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let key = authenticate(&app, &headers, "files.write", Some(&name)).await?;
    let path = query(q)?.path.ok_or_else(|| {
        ApiFailure::bad_request("path: which file, e.g. ?path=/workspace/main.py")
    })?;
    let body = body.map_err(|e| {
        ApiFailure::new(
            e.status(),
            format!("the file is larger than {} bytes", app.config.max_body),
        )
    })?;
    let internal = internal_name(&key, &name)?;
    let target = format!("{name}:{path}");
    let r = blocking(move || phantom_engine::sandbox::write_file(&internal, &path, &body, true))
        .await
        .map_err(|e| rename(e, &key, &name));
    audit_result(&key, "files.write", Some(&target), &r);
    r.map(|()| StatusCode::NO_CONTENT)
}

fn api_snapshot(i: phantom_store::SnapshotInfo) -> ApiSnapshot {
    ApiSnapshot {
        tag: i.tag,
        manifest: i.manifest,
        files: i.files,
        bytes: i.bytes,
        new_chunks: i.new_chunks,
        created: i.created,
    }
}

pub(crate) async fn snapshot(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = authenticate(&app, &headers, "sandbox.snapshot", Some(&name)).await?;
    let bytes = body.as_ref().map(|b| b.len()).unwrap_or(1);
    let req: ApiSnapshotRequest = if bytes == 0 {
        ApiSnapshotRequest::default()
    } else {
        json_body(body, app.config.max_body)?
    };
    let internal = internal_name(&key, &name)?;
    let r = blocking(move || {
        phantom_engine::sandbox::snapshot(
            &internal,
            req.tag.as_deref(),
            &Default::default(),
            &mut |_| {},
        )
    })
    .await
    .map_err(|e| rename(e, &key, &name));
    audit_result(&key, "sandbox.snapshot", Some(&name), &r);
    Ok((StatusCode::CREATED, axum::Json(api_snapshot(r?))).into_response())
}

pub(crate) async fn list_snapshots(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Vec<ApiSnapshot>>> {
    let key = authenticate(&app, &headers, "sandbox.snapshots", Some(&name)).await?;
    let source = format!("{}:/workspace", internal_name(&key, &name)?);
    let list = blocking(move || {
        Ok(phantom_store::SnapshotStore::open_default()?
            .list()?
            .into_iter()
            .filter(|s| s.source == source)
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(axum::Json(list.into_iter().map(api_snapshot).collect()))
}

// ---------------------------------------------------------------------------------------
// System
// ---------------------------------------------------------------------------------------

pub(crate) async fn pools(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    authenticate(&app, &headers, "pools", None).await?;
    let socket = app.config.pool_socket.clone();
    let status = tokio::task::spawn_blocking(move || {
        socket.map(|s| phantom_engine::warm::client::status_at(&s))
    })
    .await
    .map_err(|e| ApiFailure::internal(e.to_string()))?;
    Ok(axum::Json(match status {
        Some(Ok(s)) => serde_json::to_value(s).unwrap_or_default(),
        Some(Err(e)) => serde_json::json!({ "pools": [], "error": e.to_string() }),
        None => {
            serde_json::json!({ "pools": [], "error": "this server keeps no warm pools (start it with --zygote-pools N)" })
        }
    }))
}

pub(crate) async fn psi(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    authenticate(&app, &headers, "psi", None).await?;
    let sample = match &app.config.psi {
        Some(_) => pressure(&app),
        None => {
            use phantom_engine::warm::pressure::{PressureSource, ProcPressure};
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
    headers: HeaderMap,
) -> ApiResult<axum::Json<serde_json::Value>> {
    authenticate(&app, &headers, "performance", None).await?;
    let (n, p50, p95, p99) = app.metrics.recent_percentiles();
    let by_path = app.metrics.by_path();
    Ok(axum::Json(serde_json::json!({
        "recent_runs": n,
        "wall_ms": { "p50": p50, "p95": p95, "p99": p99 },
        "by_profile_and_path": by_path,
    })))
}
