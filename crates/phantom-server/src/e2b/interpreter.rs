//! E2B's code interpreter (port 49999) over our code contexts ([`crate::contexts`]):
//! `POST /execute` streams NDJSON — `stdout`, `stderr`, `result` (text, html, png,
//! ...), `error` (name, value, traceback) and `number_of_executions` — and
//! `/contexts` creates, lists, restarts and deletes contexts. A call without a
//! context runs in the sandbox's default Python context, started at its first use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use phantom_api::access::Principal;
use phantom_api::context::{ContextEvent, ContextInfo, ContextLanguage};
use phantom_api::engine::Failure;
use phantom_engine::contexts::{CodeContext, ContextSpec};
use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::Record;
use super::SandboxId;
use crate::App;

/// The code interpreter's port (the SDKs send it in `E2b-Sandbox-Port`).
pub const PORT: u16 = 49999;
/// The most stdout and stderr one execution returns.
const MAX_OUTPUT: u64 = 16 << 20;
/// The longest one execution runs (the SDK's own `timeout` is a client-side one: it
/// closes the stream, which interrupts the cell).
const LONGEST_EXECUTION: Duration = Duration::from_secs(3600);

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/execute", post(execute))
        .route("/contexts", post(create).get(list))
        .route("/contexts/{id}", delete(remove))
        .route("/contexts/{id}/restart", post(restart))
}

/// The code interpreter's errors: plain text with the status the SDK maps (404: not
/// found; others: its SandboxException).
fn error(status: u16, message: impl Into<String>) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        message.into(),
    )
        .into_response()
}

fn from_failure(f: Failure) -> Response {
    error(f.kind.http_status(), f.message)
}

async fn sandbox(
    app: &Arc<App>,
    id: &SandboxId,
    headers: &HeaderMap,
) -> Result<(Record, Principal), Response> {
    super::envd::sandbox(app, id, headers)
        .await
        .map_err(|e| error(e.code.http_status().as_u16(), e.message))
}

/// What processes of the sandbox start with (E2B's conventions, its envVars).
fn base_env(record: &Record) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("HOME".to_string(), super::envd::HOME.to_string()),
        ("USER".to_string(), "user".to_string()),
    ]
    .into();
    env.extend(record.env_vars.clone());
    env
}

/// E2B's context: its id, language and working directory.
fn context_json(c: &ContextInfo) -> Value {
    json!({ "id": c.id, "language": c.language.as_str(), "cwd": c.cwd })
}

#[derive(Debug, Deserialize)]
struct NewContext {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

/// The language asked for, or the refusal (400).
fn language(asked: Option<&str>) -> Result<ContextLanguage, String> {
    match asked.unwrap_or("python") {
        "" | "python" | "python3" => Ok(ContextLanguage::Python),
        "js" | "javascript" => Ok(ContextLanguage::Javascript),
        other => Err(format!(
            "language {other:?}: this server's contexts run python and javascript"
        )),
    }
}

/// Start a context in the E2B sandbox `record` (blocking work off the async threads).
async fn start(
    app: &Arc<App>,
    record: &Record,
    principal: Principal,
    spec: ContextSpec,
) -> Result<Arc<CodeContext>, Failure> {
    let (contexts, client, sandbox) = (
        app.contexts.all.clone(),
        app.engine.clone(),
        record.id.clone(),
    );
    tokio::task::spawn_blocking(move || contexts.start(&client, principal, &sandbox, spec))
        .await
        .map_err(|e| {
            Failure::new(
                phantom_api::engine::FailureKind::Failed,
                format!("worker failed: {e}"),
            )
        })?
}

fn spec(record: &Record, id: String, language: ContextLanguage, cwd: String) -> ContextSpec {
    ContextSpec {
        id,
        language,
        cwd,
        env: base_env(record),
    }
}

async fn create(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (record, principal) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let new: NewContext = match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body })
    {
        Ok(n) => n,
        Err(e) => return error(400, format!("the context: {e}")),
    };
    let lang = match language(new.language.as_deref()) {
        Ok(l) => l,
        Err(why) => return error(400, why),
    };
    let cwd = new.cwd.unwrap_or_else(|| super::envd::HOME.to_string());
    let spec = spec(&record, phantom_engine::contexts::new_id(), lang, cwd);
    match start(&app, &record, principal, spec).await {
        Ok(c) => axum::Json(context_json(&c.info())).into_response(),
        Err(f) => from_failure(f),
    }
}

async fn list(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    headers: HeaderMap,
) -> Response {
    let (record, principal) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let all: Vec<Value> = app
        .contexts
        .all
        .list(&principal.owner, &record.id)
        .iter()
        .map(|c| context_json(&c.info()))
        .collect();
    axum::Json(all).into_response()
}

async fn remove(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    Path(context): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (record, principal) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    match app
        .contexts
        .all
        .remove(&principal.owner, &record.id, &context)
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(f) => from_failure(f),
    }
}

async fn restart(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    Path(context): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (record, principal) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let (contexts, client, sandbox) = (
        app.contexts.all.clone(),
        app.engine.clone(),
        record.id.clone(),
    );
    let restarted = tokio::task::spawn_blocking(move || {
        contexts.restart(&client, principal, &sandbox, &context)
    })
    .await;
    match restarted {
        Ok(Ok(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(f)) => from_failure(f),
        Err(e) => error(500, format!("worker failed: {e}")),
    }
}

#[derive(Debug, Deserialize)]
struct ExecuteRequest {
    code: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:06}Z",
        super::rfc3339(now.as_secs()).trim_end_matches('Z'),
        now.subsec_micros()
    )
}

/// One NDJSON line of E2B's execution stream.
fn line(event: &ContextEvent) -> Bytes {
    let v = match event {
        ContextEvent::Stdout { text } => {
            json!({"type": "stdout", "text": text, "timestamp": timestamp()})
        }
        ContextEvent::Stderr { text } => {
            json!({"type": "stderr", "text": text, "timestamp": timestamp()})
        }
        ContextEvent::Result(formats) => {
            let mut v = serde_json::to_value(formats).unwrap_or_default();
            v["type"] = json!("result");
            v
        }
        ContextEvent::Error(e) => {
            json!({"type": "error", "name": e.name, "value": e.value, "traceback": e.traceback})
        }
        ContextEvent::Done {
            execution_count, ..
        } => {
            json!({"type": "number_of_executions", "execution_count": execution_count})
        }
    };
    Bytes::from(format!("{v}\n"))
}

async fn execute(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (record, principal) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let request: ExecuteRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(400, format!("the execution request: {e}")),
    };
    if request.context_id.is_some() && request.language.is_some() {
        return error(400, "give context_id or language, not both");
    }
    let context = match &request.context_id {
        Some(cid) => match app.contexts.all.get(&principal.owner, &record.id, cid) {
            Ok(c) => c,
            Err(f) => return from_failure(f),
        },
        None => {
            let lang = match language(request.language.as_deref()) {
                Ok(l) => l,
                Err(why) => return error(400, why),
            };
            match app
                .contexts
                .all
                .get(&principal.owner, &record.id, &lang.default_context())
            {
                Ok(c) => c,
                Err(_) => {
                    let spec = spec(
                        &record,
                        lang.default_context(),
                        lang,
                        super::envd::HOME.into(),
                    );
                    match start(&app, &record, principal, spec).await {
                        Ok(c) => c,
                        Err(f) => return from_failure(f),
                    }
                }
            }
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<ContextEvent>(64);
    let env = request.env_vars.unwrap_or_default();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Option<Failure>>();
    tokio::task::spawn_blocking(move || {
        let gone = tx.clone();
        let result = context.execute(
            &request.code,
            &env,
            LONGEST_EXECUTION,
            MAX_OUTPUT,
            &mut |e| tx.blocking_send(e).is_ok(),
            &|| gone.is_closed(),
        );
        let _ = done_tx.send(result.err());
    });
    // The response body owns the receiver: a client that goes away drops it, and
    // the cell is interrupted.
    let stream = futures_util::stream::unfold((rx, Some(done_rx)), |(mut rx, done)| async move {
        if let Some(event) = rx.recv().await {
            return Some((Ok::<_, std::convert::Infallible>(line(&event)), (rx, done)));
        }
        // The call ended without Done: say why (the interpreter is gone).
        match done?.await {
            Ok(Some(e)) => Some((
                Ok(Bytes::from(format!(
                    "{}\n",
                    json!({"type": "error", "name": "ContextError", "value": e.message, "traceback": ""})
                ))),
                (rx, None),
            )),
            _ => None,
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}
