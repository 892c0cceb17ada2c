//! E2B's code interpreter (port 49999) over our code contexts ([`crate::contexts`]):
//! `POST /execute` streams NDJSON — `stdout`, `stderr`, `result` (text, html, png,
//! ...), `error` (name, value, traceback) and `number_of_executions` — and
//! `/contexts` creates, lists, restarts and deletes contexts. A call without a
//! context runs in the sandbox's default Python context, started at its first use.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use phantom_api::access::Principal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::Record;
use super::SandboxId;
use crate::contexts::{self, ContextError, Event};
use crate::App;

/// The code interpreter's port (the SDKs send it in `E2b-Sandbox-Port`).
pub const PORT: u16 = 49999;
/// The id of a sandbox's default context.
const DEFAULT_CONTEXT: &str = "default-python";
/// The most stdout and stderr one execution returns.
const MAX_OUTPUT: u64 = 16 << 20;

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

fn from_context_error(e: ContextError) -> Response {
    error(e.status, e.message)
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

fn context_json(c: &contexts::Context) -> Value {
    json!({ "id": c.id, "language": c.language, "cwd": c.cwd })
}

#[derive(Debug, Deserialize)]
struct NewContext {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

fn language(asked: Option<&str>) -> String {
    match asked.unwrap_or("python") {
        "" | "python" | "python3" => "python".into(),
        other => other.to_string(),
    }
}

async fn start(
    app: &Arc<App>,
    record: &Record,
    principal: Principal,
    id: String,
    language: String,
    cwd: String,
) -> Result<Arc<contexts::Context>, ContextError> {
    contexts::start(
        app,
        principal,
        contexts::Spec {
            id,
            sandbox: record.id.clone(),
            language,
            cwd,
            env: base_env(record),
        },
    )
    .await
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
    let cwd = new.cwd.unwrap_or_else(|| super::envd::HOME.to_string());
    match start(
        &app,
        &record,
        principal,
        contexts::new_id(),
        language(new.language.as_deref()),
        cwd,
    )
    .await
    {
        Ok(c) => axum::Json(context_json(&c)).into_response(),
        Err(e) => from_context_error(e),
    }
}

async fn list(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    headers: HeaderMap,
) -> Response {
    let (record, _) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let all: Vec<Value> = app
        .contexts
        .list(&record.id)
        .iter()
        .map(|c| context_json(c))
        .collect();
    axum::Json(all).into_response()
}

async fn remove(
    State(app): State<Arc<App>>,
    Extension(id): Extension<SandboxId>,
    Path(context): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (record, _) = match sandbox(&app, &id, &headers).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    match app.contexts.remove(&record.id, &context) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(404, format!("context {context} not found")),
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
    let Some(old) = app.contexts.remove(&record.id, &context) else {
        return error(404, format!("context {context} not found"));
    };
    let (language, cwd) = (old.language.clone(), old.cwd.clone());
    drop(old);
    match start(&app, &record, principal, context, language, cwd).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => from_context_error(e),
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
fn line(event: &Event) -> Bytes {
    let v = match event {
        Event::Stdout(text) => json!({"type": "stdout", "text": text, "timestamp": timestamp()}),
        Event::Stderr(text) => json!({"type": "stderr", "text": text, "timestamp": timestamp()}),
        Event::Result(formats) => {
            let mut v = Value::Object(formats.clone());
            v["type"] = json!("result");
            v
        }
        Event::Error {
            name,
            value,
            traceback,
        } => json!({"type": "error", "name": name, "value": value, "traceback": traceback}),
        Event::Done { execution_count } => {
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
        Some(cid) => match app.contexts.get(&record.id, cid) {
            Some(c) => c,
            None => return error(404, format!("context {cid} not found")),
        },
        None => {
            let lang = language(request.language.as_deref());
            if lang != "python" {
                return error(
                    400,
                    format!("language {lang:?}: this server's contexts run python (javascript is not served yet)"),
                );
            }
            match app.contexts.get(&record.id, DEFAULT_CONTEXT) {
                Some(c) => c,
                None => match start(
                    &app,
                    &record,
                    principal,
                    DEFAULT_CONTEXT.into(),
                    lang,
                    super::envd::HOME.into(),
                )
                .await
                {
                    Ok(c) => c,
                    Err(e) => return from_context_error(e),
                },
            }
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let env = request.env_vars.unwrap_or_default();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Option<ContextError>>();
    tokio::spawn(async move {
        let result = contexts::execute(context, request.code, env, MAX_OUTPUT, tx).await;
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
