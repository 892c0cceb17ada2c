//! The E2B surface (`phantom-supervisor --e2b-bind ADDR`): E2B's control plane and its
//! in-sandbox daemon ("envd") on one plain-HTTP listener, so that E2B's unchanged SDKs
//! work with `E2B_API_URL=http://ADDR E2B_SANDBOX_URL=http://ADDR E2B_API_KEY=<key>`.
//!
//! * Control plane (E2B's OpenAPI, `spec/openapi.yml` of e2b-dev/E2B): `X-API-KEY`
//!   authenticates as on /api/v2 — the same keys, grants, rate limits, audit and
//!   tenancy (`phantom keys add NAME --e2b` makes one in E2B's shape). An E2B sandbox
//!   is a persistent sandbox of ours named by its id; what E2B adds (template,
//!   metadata, envs, expiry, access token) is in [`registry`].
//! * In-sandbox traffic: a request with `E2b-Sandbox-Id` and `E2b-Sandbox-Port`
//!   headers is for that sandbox's daemon on that port (49983: envd, see [`envd`]);
//!   `X-Access-Token` must be the sandbox's token, which only its creator received.
//!   It acts for the sandbox's owner, whose key must still be valid.
//!
//! Differences from E2B: a sandbox is a Linux sandbox of ours (namespaces, seccomp,
//! Landlock, cgroups), not a microVM; its processes run as the sandbox's root (named
//! `root`; HOME and USER say `/home/user` and `user`); see README's "E2B" section.

pub mod connect;
pub mod envd;
pub mod interpreter;
pub mod registry;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use phantom_api::access::{Owner, Principal};
use phantom_api::request::{CreateRequest, Limits, Quantity};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::handlers::{self, ApiFailure, Peer};
use crate::App;
use phantom_state::now_s;
use registry::{Record, Registry};

/// envd's port (the SDKs send it in `E2b-Sandbox-Port`).
pub const ENVD_PORT: u16 = 49983;
/// The envd version we answer with: the SDK turns features on by it (0.3.0 stdin,
/// 0.4.0 default user, 0.5.7 octet-stream uploads).
pub const ENVD_VERSION: &str = "0.5.7";
/// The template when none is named, as in E2B.
pub const DEFAULT_TEMPLATE: &str = "base";
/// The longest timeout a sandbox may have (E2B's Pro tier: 24 hours).
pub const MAX_TIMEOUT_S: u64 = 24 * 3600;
/// E2B's default sandbox timeout.
pub const DEFAULT_TIMEOUT_S: u64 = 300;
/// Where in-sandbox requests are routed after [`to_sandbox`] rewrites them.
const SANDBOX_PREFIX: &str = "/__sandbox";

/// Owners' grants by key id, when looked up, and the keys' generation then.
type OwnerCache = BTreeMap<
    String,
    (
        phantom_api::access::Grants,
        std::time::Instant,
        Option<std::time::SystemTime>,
    ),
>;

/// The E2B surface's shared state.
pub struct E2b {
    pub registry: Registry,
    /// Pids of processes started by envd calls (E2B's SDKs name processes by pid).
    pub next_pid: std::sync::atomic::AtomicU32,
    owners: std::sync::Mutex<OwnerCache>,
    /// The last metrics sample of each sandbox (E2B's CPU percentage is a rate).
    samples: Mutex<HashMap<String, phantom_api::SandboxMetrics>>,
}

/// How long a sandbox owner's key is trusted without asking the database again (while
/// no key was revoked meanwhile).
const OWNER_TTL: Duration = Duration::from_secs(30);

impl E2b {
    /// The sandbox is gone: its record and its last metrics sample.
    pub fn forget(&self, id: &str) -> Option<Record> {
        self.samples.lock().expect("samples").remove(id);
        self.registry.remove(id)
    }

    pub fn new(state_dir: Option<std::path::PathBuf>) -> E2b {
        E2b {
            registry: Registry::open(state_dir),
            next_pid: std::sync::atomic::AtomicU32::new(1000),
            owners: Default::default(),
            samples: Default::default(),
        }
    }

    /// Key `id`'s grants, when it was found valid recently and no key was revoked
    /// since.
    pub fn owner_cached(
        &self,
        id: &str,
        state_dir: Option<&std::path::Path>,
    ) -> Option<phantom_api::access::Grants> {
        let generation = state_dir.and_then(phantom_state::keys::Keys::generation);
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let (grants, at, seen) = owners.get(id)?;
        (at.elapsed() < OWNER_TTL && *seen == generation).then(|| grants.clone())
    }

    pub fn remember_owner(
        &self,
        id: &str,
        grants: phantom_api::access::Grants,
        state_dir: Option<&std::path::Path>,
    ) {
        let generation = state_dir.and_then(phantom_state::keys::Keys::generation);
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.len() > 10_000 {
            owners.clear();
        }
        owners.insert(
            id.to_string(),
            (grants, std::time::Instant::now(), generation),
        );
    }
}

/// An E2B API error: `{"code": STATUS, "message": "..."}`, E2B's `Error` schema.
#[derive(Debug)]
pub struct E2bError(pub ApiFailure);

impl From<ApiFailure> for E2bError {
    fn from(f: ApiFailure) -> E2bError {
        E2bError(f)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let status = self.0.status;
        let mut response = (
            status,
            axum::Json(json!({ "code": status.as_u16(), "message": self.0.message })),
        )
            .into_response();
        if let Some(after) = self.0.retry_after {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                response.headers_mut().insert("retry-after", v);
            }
        }
        response
    }
}

type E2bResult<T> = Result<T, E2bError>;

fn not_found(id: &str) -> E2bError {
    E2bError(ApiFailure::not_found(format!("sandbox \"{id}\" not found")))
}

/// The routes of the E2B listener (in-sandbox requests reach theirs through
/// [`to_sandbox`], which [`serve`] puts in front).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/connect", post(connect_sandbox))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/snapshots", post(snapshot))
        .route("/snapshots", get(list_snapshots))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/v2/sandboxes/{id}/connect", post(connect_sandbox))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .nest(&format!("{SANDBOX_PREFIX}/{ENVD_PORT}"), envd::router())
        .nest(
            &format!("{SANDBOX_PREFIX}/{}", interpreter::PORT),
            interpreter::router(),
        )
        .fallback(unknown)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            handlers::observe,
        ))
        .with_state(app)
}

/// A request with `E2b-Sandbox-Id` goes to that sandbox's daemon (its port's routes);
/// one without it never reaches them.
async fn to_sandbox(mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if path.starts_with(SANDBOX_PREFIX) {
        return unknown_path(&path).into_response();
    }
    let target = request
        .headers()
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(id) = target {
        let port = request
            .headers()
            .get("e2b-sandbox-port")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or(ENVD_PORT);
        let query = request
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let Ok(uri) = format!("{SANDBOX_PREFIX}/{port}{path}{query}").parse::<Uri>() else {
            return unknown_path(&path).into_response();
        };
        *request.uri_mut() = uri;
        request.extensions_mut().insert(SandboxId(id));
    }
    next.run(request).await
}

/// The sandbox an in-sandbox request is for (its `E2b-Sandbox-Id`).
#[derive(Debug, Clone)]
pub struct SandboxId(pub String);

fn unknown_path(path: &str) -> E2bError {
    E2bError(ApiFailure::not_found(format!(
        "no such endpoint: {path} (E2B's API: /sandboxes, /v2/sandboxes; in-sandbox calls carry E2b-Sandbox-Id and E2b-Sandbox-Port)"
    )))
}

async fn unknown(request: Request) -> E2bError {
    if request.extensions().get::<SandboxId>().is_some() {
        return E2bError(ApiFailure::not_found(format!(
            "no such endpoint in the sandbox: {} (served: envd on port {ENVD_PORT}, the code interpreter on port {})",
            request.uri().path(),
            interpreter::PORT
        )));
    }
    unknown_path(request.uri().path())
}

async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

// ---------------------------------------------------------------------------------------
// Control plane
// ---------------------------------------------------------------------------------------

/// E2B's NewSandbox (v1) and NewSandboxV2 bodies: what we act on, and the rest
/// accepted (so that a newer SDK's fields do not fail the call).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID", default)]
    template_id: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    #[serde(default)]
    auto_pause: Option<bool>,
    #[serde(default)]
    volume_mounts: Option<Vec<Value>>,
    #[serde(default)]
    network: Option<NetworkConfig>,
    #[serde(flatten)]
    _rest: BTreeMap<String, Value>,
}

/// `SandboxNetworkConfig`: the egress rules (the rest — public traffic, host masks,
/// rules per domain — concerns E2B's edge, which has no counterpart here).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NetworkConfig {
    #[serde(default)]
    allow_out: Vec<String>,
    #[serde(default)]
    deny_out: Vec<String>,
}

/// E2B's network settings as our limits: `allowOut` is the egress proxy's allow list
/// (the network is then `limited`: everything else is refused, so a `denyOut` of
/// `0.0.0.0/0` adds nothing), `denyOut` its deny list; without `allowOut`, denying
/// everything or `allow_internet_access: false` is no network at all. Address ranges
/// are served only as single addresses (`/32`, `/128`).
fn network_limits(
    allow_internet_access: Option<bool>,
    net: &NetworkConfig,
) -> E2bResult<(
    Option<phantom_api::choice::NetworkMode>,
    Vec<String>,
    Vec<String>,
)> {
    fn everything(e: &str) -> bool {
        matches!(e.trim(), "0.0.0.0/0" | "::/0")
    }
    fn host(field: &str, i: usize, e: &str) -> E2bResult<String> {
        let e = e.trim();
        match e.split_once('/') {
            None => Ok(e.to_string()),
            Some((addr, "32")) if addr.parse::<std::net::Ipv4Addr>().is_ok() => Ok(addr.into()),
            Some((addr, "128")) if addr.parse::<std::net::Ipv6Addr>().is_ok() => Ok(addr.into()),
            Some(_) => Err(E2bError(ApiFailure::bad_request(format!(
                "network.{field}[{i}]: `{e}` is an address range; this server's egress proxy takes names (`example.com`, `*.example.com`) and single addresses"
            )))),
        }
    }
    let allow = (net.allow_out.iter().enumerate())
        .map(|(i, e)| host("allowOut", i, e))
        .collect::<E2bResult<Vec<_>>>()?;
    let deny = (net.deny_out.iter().enumerate())
        .filter(|(_, e)| !everything(e))
        .map(|(i, e)| host("denyOut", i, e))
        .collect::<E2bResult<Vec<_>>>()?;
    use phantom_api::choice::NetworkMode;
    if !allow.is_empty() {
        return Ok((None, allow, deny));
    }
    if !deny.is_empty() {
        return Err(E2bError(ApiFailure::bad_request(
            "network.denyOut without allowOut: this server cannot take addresses out of open internet access; list what the sandbox may reach in allowOut",
        )));
    }
    let closed = allow_internet_access == Some(false) || net.deny_out.iter().any(|e| everything(e));
    Ok((closed.then_some(NetworkMode::None), Vec::new(), Vec::new()))
}

#[derive(Debug, Deserialize)]
struct TimeoutBody {
    timeout: u64,
}

/// connect's and resume's bodies: a timeout, E2B's default when absent.
#[derive(Debug, Deserialize)]
struct OptionalTimeout {
    timeout: Option<u64>,
}

/// A JSON body, or 400 naming what is wrong.
fn body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> E2bResult<T> {
    let bytes = body.map_err(|e| E2bError(ApiFailure::bad_request(e.body_text())))?;
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| E2bError(ApiFailure::bad_request(format!("{what}: {e}"))))
}

/// The caller's key (`X-API-KEY`, as the SDKs send it).
async fn caller(
    app: &Arc<App>,
    headers: &HeaderMap,
    peer: &Peer,
    action: &str,
    target: Option<&str>,
) -> E2bResult<(String, Principal)> {
    let key = handlers::authenticate(app, headers, peer, action, target).await?;
    Ok((key.id.clone(), handlers::principal(&key)))
}

/// RFC 3339 (UTC, seconds), as E2B's `date-time` fields.
fn rfc3339(unix_s: u64) -> String {
    phantom_state::rfc3339(unix_s as i64, None)
}

/// What a template names: an E2B template of ours, a built-in profile, or an image
/// of the store (`image:NAME`, or a name the store has).
fn resolve_template(template: &str) -> Result<(String, Option<String>), String> {
    let builtin = phantom_policy::builtin_names();
    match template {
        "base" | "code-interpreter-v1" | "code-interpreter" => Ok(("e2b".into(), None)),
        t if builtin.contains(&t) => Ok((t.to_string(), None)),
        t => match t.strip_prefix("image:") {
            Some(image) if !image.is_empty() => Ok(("e2b".into(), Some(image.to_string()))),
            _ => Err(format!(
                "template \"{t}\" not found: use base or code-interpreter-v1 (E2B's), a profile of ours ({}), or image:NAME of `phantom image list`",
                builtin.join(", ")
            )),
        },
    }
}

/// E2B's `Sandbox` (what create and connect answer).
fn sandbox_json(r: &Record) -> Value {
    json!({
        "templateID": r.template,
        "sandboxID": r.id,
        "clientID": "phantom",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": r.token,
        "trafficAccessToken": r.token,
        "domain": null,
    })
}

/// E2B's `ListedSandbox` / `SandboxDetail`.
fn detail_json(r: &Record) -> Value {
    json!({
        "templateID": r.template,
        "alias": r.template,
        "sandboxID": r.id,
        "clientID": "phantom",
        "startedAt": rfc3339(r.started_at),
        "endAt": rfc3339(r.end_at),
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": r.token,
        "allowInternetAccess": r.allow_internet_access,
        "domain": null,
        "cpuCount": r.cpu_count,
        "memoryMB": r.memory_mb,
        "diskSizeMB": r.memory_mb / 2,
        "metadata": r.metadata,
        "state": if r.paused { "paused" } else { "running" },
    })
}

/// A profile's CPUs (rounded up) and memory in MiB, as E2B reports them. Compiled
/// once per built-in profile (a compile costs milliseconds, on every create).
fn sizes(profile: &str) -> (u32, u64) {
    static KNOWN: std::sync::OnceLock<Mutex<HashMap<String, (u32, u64)>>> =
        std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    if let Some(s) = known.lock().expect("sizes").get(profile) {
        return *s;
    }
    let sizes = phantom_policy::load_builtin(profile)
        .ok()
        .and_then(|p| phantom_policy::compile(&p, &Default::default()).ok())
        .map(|plan| {
            (
                plan.limits.cpu_millis.div_ceil(1000).max(1),
                plan.limits.memory_bytes >> 20,
            )
        })
        .unwrap_or((1, 512));
    known
        .lock()
        .expect("sizes")
        .insert(profile.to_string(), sizes);
    sizes
}

fn timeout_of(asked: Option<u64>) -> E2bResult<u64> {
    let t = asked.unwrap_or(DEFAULT_TIMEOUT_S);
    if t > MAX_TIMEOUT_S {
        return Err(E2bError(ApiFailure::bad_request(format!(
            "timeout {t}s: at most {MAX_TIMEOUT_S}s (24 hours)"
        ))));
    }
    Ok(t)
}

async fn create(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> E2bResult<Response> {
    let key = handlers::authenticate(&app, &headers, &peer, "e2b.create", None).await?;
    let (key_id, principal) = (key.id.clone(), handlers::principal(&key));
    let new: NewSandbox = body(raw, "the NewSandbox body")?;
    let template = new
        .template_id
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TEMPLATE.into());
    // A snapshot of the caller's (E2B: a snapshot is a template) starts a sandbox of
    // the `e2b` profile with its files.
    let snapshot = own_snapshot(&app, &key_id, &template).await?;
    let (profile, image) = match &snapshot {
        Some(_) => ("e2b".to_string(), None),
        None => resolve_template(&template).map_err(|m| E2bError(ApiFailure::not_found(m)))?,
    };
    let timeout = timeout_of(new.timeout)?;
    if new.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(E2bError(ApiFailure::bad_request(
            "volumeMounts: E2B volumes are not served here; bind host directories with a policy instead",
        )));
    }
    if new.auto_pause == Some(true) {
        return Err(E2bError(ApiFailure::bad_request(
            "autoPause: not supported here; the sandbox is killed at its timeout (pause it explicitly)",
        )));
    }
    for k in new.env_vars.iter().flatten().map(|(k, _)| k) {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(E2bError(ApiFailure::bad_request(format!(
                "envVars: {k:?} is not a variable name"
            ))));
        }
    }
    let id = registry::new_sandbox_id();
    let (network, allow_hosts, deny_hosts) =
        network_limits(new.allow_internet_access, &new.network.unwrap_or_default())?;
    let limits = Limits {
        network,
        allow_hosts,
        deny_hosts,
        ..Limits::default()
    };
    let request = CreateRequest {
        name: id.clone(),
        profile: Some(profile.clone()),
        image,
        limits,
        // The E2B timeout decides when it goes (the reaper); ours only bound it.
        timeout_idle: Some(Quantity(format!("{MAX_TIMEOUT_S}s"))),
        max_lifetime: Some(Quantity(format!("{}s", MAX_TIMEOUT_S + 3600))),
        from_snapshot: snapshot,
        ..CreateRequest::default()
    };
    // The same admission as /api/v2's create: the key's sandboxes at once, the
    // server's slots, pressure.
    let slot = handlers::admit_persistent(&app, &key).await?;
    let engine = app.engine.clone();
    let as_owner = principal.clone();
    let created = handlers::blocking(
        &app,
        &key_id,
        "creating the sandbox",
        app.deadlines.lifecycle,
        move || engine.create(as_owner, request),
    )
    .await;
    drop(slot);
    *app.persistent.lock().expect("census") = None;
    created?;
    let (cpu_count, memory_mb) = sizes(&profile);
    let now = now_s();
    let record = Record {
        id: id.clone(),
        owner: key_id.clone(),
        template,
        profile,
        metadata: new.metadata.unwrap_or_default(),
        env_vars: new.env_vars.unwrap_or_default(),
        started_at: now,
        end_at: now + timeout,
        token: registry::new_token(),
        allow_internet_access: new.allow_internet_access,
        cpu_count,
        memory_mb,
        paused: false,
    };
    app.e2b.registry.insert(record.clone());
    handlers::audit(&app, Some(&key_id), "e2b.create", Some(&id), "ok", None);
    Ok((StatusCode::CREATED, axum::Json(sandbox_json(&record))).into_response())
}

/// The caller's record of `id`, checked against the engine (a sandbox that died or
/// was destroyed by other means is gone here too).
async fn owned(app: &Arc<App>, principal: &Principal, key_id: &str, id: &str) -> E2bResult<Record> {
    let record = app
        .e2b
        .registry
        .owned(id, key_id)
        .ok_or_else(|| not_found(id))?;
    let engine = app.engine.clone();
    let (p, name) = (principal.clone(), id.to_string());
    let alive = handlers::blocking(
        app,
        key_id,
        "reading the sandbox",
        app.deadlines.call,
        move || engine.get(p, &name),
    )
    .await;
    match alive {
        Ok(info) if info.status == phantom_api::choice::SandboxStatus::Running => Ok(record),
        Ok(_) | Err(_) => {
            app.e2b.forget(id);
            Err(not_found(id))
        }
    }
}

async fn detail(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> E2bResult<Response> {
    let (key_id, principal) = caller(&app, &headers, &peer, "e2b.get", Some(&id)).await?;
    let record = owned(&app, &principal, &key_id, &id).await?;
    Ok(axum::Json(detail_json(&record)).into_response())
}

/// `GET /v2/sandboxes` query: `metadata` (`k=v&k2=v2`, URL-encoded), `state`
/// (`running,paused`), `limit`, `nextToken`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// A URL-encoded component (`%XX`, `+` for a space).
fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v&k2=v2` (each part URL-encoded) as pairs.
fn metadata_filter(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

async fn listed(
    app: &Arc<App>,
    headers: &HeaderMap,
    peer: &Peer,
    query: &ListQuery,
) -> E2bResult<Vec<Record>> {
    let (key_id, principal) = caller(app, headers, peer, "e2b.list", None).await?;
    let engine = app.engine.clone();
    let p = principal.clone();
    let alive: Vec<String> = handlers::blocking(
        app,
        &key_id,
        "listing the sandboxes",
        app.deadlines.call,
        move || engine.list(p, false),
    )
    .await?
    .into_iter()
    .filter(|s| s.status == phantom_api::choice::SandboxStatus::Running)
    .map(|s| s.name)
    .collect();
    let wanted = query
        .metadata
        .as_deref()
        .map(metadata_filter)
        .unwrap_or_default();
    let states: Vec<String> = query
        .state
        .as_deref()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_default();
    let mut out: Vec<Record> = app
        .e2b
        .registry
        .of_owner(&key_id)
        .into_iter()
        .filter(|r| alive.contains(&r.id))
        .filter(|r| wanted.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
        .filter(|r| {
            states.is_empty()
                || states
                    .iter()
                    .any(|s| s == if r.paused { "paused" } else { "running" })
        })
        .collect();
    // Newest first, as E2B orders them; the id breaks ties so that paging is stable.
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(a.id.cmp(&b.id)));
    Ok(out)
}

async fn list_v1(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> E2bResult<Response> {
    let all = listed(&app, &headers, &peer, &query).await?;
    Ok(axum::Json(all.iter().map(detail_json).collect::<Vec<_>>()).into_response())
}

/// Paged: `limit` (default 100, at most 100), `nextToken` (the id to start after),
/// answered in the `X-Next-Token` header.
async fn list_v2(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> E2bResult<Response> {
    let all = listed(&app, &headers, &peer, &query).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 100);
    let start = match &query.next_token {
        Some(t) => all
            .iter()
            .position(|r| &r.id == t)
            .map(|i| i + 1)
            .ok_or_else(|| {
                E2bError(ApiFailure::bad_request(format!(
                    "nextToken {t:?}: not a token of this listing"
                )))
            })?,
        None => 0,
    };
    let page: Vec<&Record> = all.iter().skip(start).take(limit).collect();
    let mut response =
        axum::Json(page.iter().map(|r| detail_json(r)).collect::<Vec<_>>()).into_response();
    if start + page.len() < all.len() {
        if let Some(last) = page.last() {
            if let Ok(v) = HeaderValue::from_str(&last.id) {
                response.headers_mut().insert("x-next-token", v);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&all.len().to_string()) {
        response.headers_mut().insert("x-total-running", v);
    }
    Ok(response)
}

/// Destroy `id` in the engine and forget it.
async fn destroy(app: &Arc<App>, principal: Principal, key_id: &str, id: &str) -> E2bResult<()> {
    let engine = app.engine.clone();
    let name = id.to_string();
    let result = handlers::blocking(
        app,
        key_id,
        "destroying the sandbox",
        app.deadlines.call,
        move || engine.destroy(principal, &name),
    )
    .await;
    app.e2b.forget(id);
    app.contexts.remove_sandbox(id);
    match result {
        Ok(_) => Ok(()),
        Err(f) if f.status == StatusCode::NOT_FOUND => Err(not_found(id)),
        Err(f) => Err(f.into()),
    }
}

async fn kill(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    let (key_id, principal) = caller(&app, &headers, &peer, "e2b.kill", Some(&id)).await?;
    app.e2b
        .registry
        .owned(&id, &key_id)
        .ok_or_else(|| not_found(&id))?;
    destroy(&app, principal, &key_id, &id).await?;
    handlers::audit(&app, Some(&key_id), "e2b.kill", Some(&id), "ok", None);
    Ok(StatusCode::NO_CONTENT)
}

async fn set_timeout(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> E2bResult<StatusCode> {
    let (key_id, principal) = caller(&app, &headers, &peer, "e2b.timeout", Some(&id)).await?;
    let TimeoutBody { timeout } = body(raw, "the timeout body")?;
    let timeout = timeout_of(Some(timeout))?;
    owned(&app, &principal, &key_id, &id).await?;
    app.e2b
        .registry
        .update(&id, |r| r.end_at = now_s() + timeout);
    Ok(StatusCode::NO_CONTENT)
}

/// `refreshes`: extend by `duration` seconds (default E2B's 60), never shorten.
async fn refresh(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> E2bResult<StatusCode> {
    #[derive(Deserialize)]
    struct Refresh {
        duration: Option<u64>,
    }
    let (key_id, principal) = caller(&app, &headers, &peer, "e2b.refresh", Some(&id)).await?;
    let Refresh { duration } = body(raw, "the refresh body")?;
    let extend = timeout_of(Some(duration.unwrap_or(60)))?;
    owned(&app, &principal, &key_id, &id).await?;
    app.e2b
        .registry
        .update(&id, |r| r.end_at = r.end_at.max(now_s() + extend));
    Ok(StatusCode::NO_CONTENT)
}

/// `connect`: the sandbox's details for a new client; its timeout is only extended.
async fn connect_sandbox(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> E2bResult<Response> {
    let (key_id, principal) = caller(&app, &headers, &peer, "e2b.connect", Some(&id)).await?;
    let OptionalTimeout { timeout } = body(raw, "the connect body")?;
    let timeout = timeout_of(timeout)?;
    let record = owned(&app, &principal, &key_id, &id).await?;
    // A paused sandbox is resumed: 201, as E2B answers then.
    let status = if record.paused {
        freeze(&app, principal, &key_id, &id, false).await?;
        app.e2b.registry.update(&id, |r| r.paused = false);
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    app.e2b
        .registry
        .update(&id, |r| r.end_at = r.end_at.max(now_s() + timeout));
    let record = app.e2b.registry.get(&id).ok_or_else(|| not_found(&id))?;
    Ok((status, axum::Json(sandbox_json(&record))).into_response())
}

/// Stop (SIGSTOP) or continue (SIGCONT) every process of the sandbox but its init:
/// a paused sandbox keeps its memory and runs nothing. Processes forked meanwhile are
/// caught by the next round.
async fn freeze(
    app: &Arc<App>,
    principal: Principal,
    key_id: &str,
    id: &str,
    stop: bool,
) -> E2bResult<()> {
    use phantom_api::choice::{ProcessSignal, ProcessState};
    let engine = app.engine.clone();
    let name = id.to_string();
    handlers::blocking(
        app,
        key_id,
        "pausing the sandbox",
        app.deadlines.call,
        move || {
            for _ in 0..8 {
                let todo: Vec<i32> = engine
                    .list_processes(principal.clone(), &name)?
                    .into_iter()
                    .filter(|p| match stop {
                        true => !matches!(p.state, ProcessState::Stopped | ProcessState::Zombie),
                        false => p.state == ProcessState::Stopped,
                    })
                    .map(|p| p.pid)
                    .collect();
                if todo.is_empty() {
                    return Ok(());
                }
                let signal = if stop {
                    ProcessSignal::Stop
                } else {
                    ProcessSignal::Cont
                };
                for pid in todo {
                    // A process that exited meanwhile is fine.
                    let _ = engine.kill_process(principal.clone(), &name, pid, signal);
                }
            }
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// `pause`: every process of the sandbox stopped, its memory kept; it does not expire
/// while paused; connect (or the older resume) continues it.
async fn pause(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    let (key_id, principal) = caller(&app, &headers, &peer, "e2b.pause", Some(&id)).await?;
    let record = owned(&app, &principal, &key_id, &id).await?;
    if record.paused {
        return Err(E2bError(ApiFailure::conflict(format!(
            "sandbox \"{id}\" is already paused"
        ))));
    }
    freeze(&app, principal, &key_id, &id, true).await?;
    app.e2b.registry.update(&id, |r| r.paused = true);
    handlers::audit(&app, Some(&key_id), "e2b.pause", Some(&id), "ok", None);
    Ok(StatusCode::NO_CONTENT)
}

/// The older `resume` (E2B marks it deprecated; connect resumes too).
async fn resume(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> E2bResult<Response> {
    let (key_id, principal) = caller(&app, &headers, &peer, "e2b.resume", Some(&id)).await?;
    let OptionalTimeout { timeout } = body(raw, "the resume body")?;
    let timeout = timeout_of(timeout)?;
    let record = owned(&app, &principal, &key_id, &id).await?;
    if !record.paused {
        return Err(E2bError(ApiFailure::conflict(format!(
            "sandbox \"{id}\" is not paused"
        ))));
    }
    freeze(&app, principal, &key_id, &id, false).await?;
    app.e2b.registry.update(&id, |r| {
        r.paused = false;
        r.end_at = now_s() + timeout;
    });
    let record = app.e2b.registry.get(&id).ok_or_else(|| not_found(&id))?;
    Ok((StatusCode::CREATED, axum::Json(sandbox_json(&record))).into_response())
}

/// The tag of key `key_id`'s snapshot named `template` (E2B's `name:tag` forms
/// accepted: `name` and `name:default` are the same), if there is one.
async fn own_snapshot(app: &Arc<App>, key_id: &str, template: &str) -> E2bResult<Option<String>> {
    let tag = template
        .strip_suffix(":default")
        .unwrap_or(template)
        .to_string();
    if phantom_policy::builtin_names().contains(&tag.as_str())
        || ["base", "code-interpreter-v1", "code-interpreter"].contains(&tag.as_str())
    {
        return Ok(None);
    }
    let owner = Owner::Key(key_id.to_string());
    let found = handlers::blocking(
        app,
        key_id,
        "looking up the snapshot",
        app.deadlines.call,
        move || {
            let store = phantom_store::SnapshotStore::open_default()
                .map_err(|e| phantom_engine::EngineError::from(e).to_failure())?;
            Ok(store.info(&owner, &tag).ok().map(|i| i.tag))
        },
    )
    .await?;
    Ok(found)
}

/// `POST /sandboxes/{id}/snapshots`: the sandbox's /home/user into the snapshot store,
/// under `name` (replacing an older one of the same name, as E2B adds a build to an
/// existing template) or a generated name; a sandbox can then be created from it
/// (`templateID` = its `snapshotID`).
async fn snapshot(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> E2bResult<Response> {
    #[derive(Deserialize)]
    struct SnapshotBody {
        name: Option<String>,
    }
    let (key_id, principal) = caller(&app, &headers, &peer, "e2b.snapshot", Some(&id)).await?;
    let SnapshotBody { name } = body(raw, "the snapshot body")?;
    owned(&app, &principal, &key_id, &id).await?;
    let tag = name
        .map(|n| n.strip_suffix(":default").unwrap_or(&n).to_string())
        .unwrap_or_else(|| format!("{id}-{}", phantom_engine::sandbox::utc_stamp(now_s())));
    let engine = app.engine.clone();
    let owner = Owner::Key(key_id.clone());
    let name = id.clone();
    let info = handlers::blocking(
        app.as_ref(),
        &key_id,
        "the snapshot",
        app.deadlines.snapshot,
        move || {
            use std::os::fd::AsFd;
            let ws = engine.workspace(principal, &name)?;
            let store = phantom_store::SnapshotStore::open_default()
                .map_err(|e| phantom_engine::EngineError::from(e).to_failure())?;
            let dir =
                phantom_engine::sandbox::files::readable_dir(&ws).map_err(|e| e.to_failure())?;
            store
                .snapshot_at(
                    dir.as_fd(),
                    &format!("{name}:/home/user"),
                    &owner,
                    &tag,
                    &phantom_store::SnapshotOptions { replace: true },
                    &mut |_| {},
                )
                .map_err(|e| phantom_engine::EngineError::from(e).to_failure())
        },
    )
    .await?;
    handlers::audit(
        &app,
        Some(&key_id),
        "e2b.snapshot",
        Some(&id),
        "ok",
        Some(&info.tag),
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "snapshotID": info.tag, "names": [info.tag] })),
    )
        .into_response())
}

/// `GET /snapshots`: the caller's snapshots made through the E2B API (`sandboxID`
/// and `name` filters).
async fn list_snapshots(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> E2bResult<Response> {
    let (key_id, _) = caller(&app, &headers, &peer, "e2b.snapshots", None).await?;
    let owner = Owner::Key(key_id.clone());
    let all = handlers::blocking(
        &app,
        &key_id,
        "listing the snapshots",
        app.deadlines.call,
        move || {
            let store = phantom_store::SnapshotStore::open_default()
                .map_err(|e| phantom_engine::EngineError::from(e).to_failure())?;
            store
                .list(Some(&owner))
                .map_err(|e| phantom_engine::EngineError::from(e).to_failure())
        },
    )
    .await?;
    let sandbox = query.get("sandboxID");
    let name = query
        .get("name")
        .map(|n| n.strip_suffix(":default").unwrap_or(n).to_string());
    let out: Vec<Value> = all
        .into_iter()
        .filter(|s| s.source.ends_with(":/home/user"))
        .filter(|s| sandbox.is_none_or(|id| s.source == format!("{id}:/home/user")))
        .filter(|s| name.as_ref().is_none_or(|n| &s.tag == n))
        .map(|s| json!({ "snapshotID": s.tag, "names": [s.tag] }))
        .collect();
    Ok(axum::Json(out).into_response())
}

/// Metrics: one sample now (E2B's `SandboxMetric`), from the sandbox's cgroup as the
/// engine reports it.
async fn metrics(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> E2bResult<Response> {
    let (key_id, principal) = caller(&app, &headers, &peer, "e2b.metrics", Some(&id)).await?;
    let record = owned(&app, &principal, &key_id, &id).await?;
    // A sample from the sandbox's cgroup and its workspace; the CPU rate since the
    // previous sample (the first one: since the sandbox started).
    let previous = app.e2b.samples.lock().expect("samples").get(&id).cloned();
    let engine = app.engine.clone();
    let name = id.clone();
    let (sample, disk) = handlers::blocking(
        &app,
        &key_id,
        "reading the sandbox's metrics",
        app.deadlines.call,
        move || {
            let sample = engine.metrics(principal.clone(), &name, previous.as_ref())?;
            let disk = engine
                .workspace(principal, &name)
                .ok()
                .and_then(|ws| phantom_engine::sandbox::fsops::usage(&ws));
            Ok((sample, disk))
        },
    )
    .await?;
    let cores = sample.cpu_cores.or_else(|| {
        let lived_ms = (now_s().saturating_sub(record.started_at)).max(1) * 1000;
        sample.cpu_usage_ms.map(|ms| ms / lived_ms as f64)
    });
    app.e2b
        .samples
        .lock()
        .expect("samples")
        .insert(id.clone(), sample.clone());
    let (disk_used, disk_total) = disk.unwrap_or((0, record.memory_mb / 2 * 1024 * 1024));
    Ok(axum::Json(json!([{
        "timestamp": rfc3339(now_s()),
        "timestampUnix": now_s(),
        "cpuCount": record.cpu_count,
        "cpuUsedPct": cores.map_or(0.0, |c| (c / record.cpu_count as f64 * 100.0).min(100.0)),
        "memUsed": sample.memory_bytes.unwrap_or(0),
        "memCache": 0,
        "memTotal": sample.memory_limit_bytes.unwrap_or(record.memory_mb * 1024 * 1024),
        "diskUsed": disk_used,
        "diskTotal": disk_total,
    }]))
    .into_response())
}

/// Kill the sandboxes whose timeout passed, once a second, for as long as the server
/// runs.
pub async fn reaper(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = now_s();
        for r in app.e2b.registry.all() {
            if r.end_at > now || r.paused {
                continue;
            }
            let principal = Principal {
                owner: Owner::Key(r.owner.clone()),
                grants: phantom_api::access::Grants::default_key(),
            };
            let engine = app.engine.clone();
            let id = r.id.clone();
            let _ = tokio::task::spawn_blocking(move || engine.destroy(principal, &id)).await;
            app.e2b.forget(&r.id);
            app.contexts.remove_sandbox(&r.id);
            handlers::audit(&app, Some(&r.owner), "e2b.expire", Some(&r.id), "ok", None);
        }
    }
}

/// Serve the E2B surface on `listener` until `stop` is cancelled; then give in-flight
/// requests the server's grace period.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::ServiceExt;
    let addr: SocketAddr = listener.local_addr()?;
    eprintln!(
        "phantom-supervisor: E2B API on http://{addr} (E2B_API_URL=http://{addr} E2B_SANDBOX_URL=http://{addr}; keys: phantom keys add NAME --e2b)"
    );
    let reaper = tokio::spawn(reaper(app.clone()));
    let grace = app.config.grace;
    let service = tower_layer::Layer::layer(&axum::middleware::from_fn(to_sandbox), router(app));
    let stopped = stop.clone();
    let server = axum::serve(
        crate::no_delay(listener),
        ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(service),
    )
    .with_graceful_shutdown(async move { stopped.cancelled().await });
    let server = tokio::spawn(async move { server.await });
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            // Streams still open past the grace period are cut (their processes are
            // killed as their requests go).
            server.abort();
            Ok(())
        }
    };
    reaper.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_571_153), "2026-12-06T15:32:33Z");
    }

    #[test]
    fn templates_name_profiles_or_images_and_others_are_refused() {
        assert_eq!(resolve_template("base").unwrap().0, "e2b");
        assert_eq!(resolve_template("python-dev").unwrap().0, "python-dev");
        assert_eq!(
            resolve_template("image:alpine").unwrap().1.as_deref(),
            Some("alpine")
        );
        let e = resolve_template("nope").unwrap_err();
        assert!(e.contains("not found") && e.contains("base"), "{e}");
    }

    #[test]
    fn metadata_filters_are_url_decoded_pairs() {
        assert_eq!(
            metadata_filter("user=a%20b&app=prod"),
            vec![
                ("user".to_string(), "a b".to_string()),
                ("app".to_string(), "prod".to_string())
            ]
        );
    }
}
