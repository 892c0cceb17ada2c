//! The OpenAPI document served at /api/v2/openapi.json: paths written here, every
//! body's schema generated from the phantom-api types themselves (schemars), so the
//! document cannot drift from what the server parses and returns.

use phantom_api::engine::PoolStatus;
use phantom_api::report::SnapshotInfo;
use phantom_api::request::{CreateRequest, ExecBody, RunRequest};
use phantom_api::{ApiError, ApiHealth, ApiRunResult, ApiSnapshotRequest, FileEntry, SandboxInfo};
use schemars::generate::{Contract, SchemaSettings};
use serde_json::{json, Map, Value};

fn schemas() -> Map<String, Value> {
    let mut requests = SchemaSettings::openapi3();
    requests.contract = Contract::Deserialize;
    let mut gen = requests.into_generator();
    gen.subschema_for::<RunRequest>();
    gen.subschema_for::<CreateRequest>();
    gen.subschema_for::<ExecBody>();
    gen.subschema_for::<ApiSnapshotRequest>();
    gen.subschema_for::<phantom_api::context::NewContext>();
    gen.subschema_for::<phantom_api::context::ContextRun>();
    let mut all = gen.take_definitions(true);
    // Bodies refuse unknown fields (phantom_api::strict): said so in their schemas.
    for name in [
        "RunRequest",
        "CreateRequest",
        "ExecBody",
        "ApiSnapshotRequest",
        "NewContext",
        "ContextRun",
    ] {
        if let Some(Value::Object(schema)) = all.get_mut(name) {
            schema.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    let mut responses = SchemaSettings::openapi3();
    responses.contract = Contract::Serialize;
    let mut gen = responses.into_generator();
    gen.subschema_for::<ApiRunResult>();
    gen.subschema_for::<SandboxInfo>();
    gen.subschema_for::<SnapshotInfo>();
    gen.subschema_for::<PoolStatus>();
    gen.subschema_for::<FileEntry>();
    gen.subschema_for::<ApiError>();
    gen.subschema_for::<ApiHealth>();
    gen.subschema_for::<phantom_api::ProcessInfo>();
    gen.subschema_for::<phantom_api::Spawned>();
    gen.subschema_for::<phantom_api::choice::ProcessSignal>();
    gen.subschema_for::<phantom_api::context::ContextInfo>();
    gen.subschema_for::<phantom_api::context::CodeResult>();
    all.extend(gen.take_definitions(true));
    all
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn body(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": r(name) } } })
}

fn ok(status: &str, desc: &str, schema: Value) -> (String, Value) {
    (
        status.to_string(),
        json!({ "description": desc, "content": { "application/json": { "schema": schema } } }),
    )
}

/// The error answers every authenticated operation can give.
fn errors(extra: &[(&str, &str)]) -> Vec<(String, Value)> {
    let mut out = vec![
        ok(
            "400",
            "Bad input: the message says what to send instead",
            r("ApiError"),
        ),
        ok("401", "Missing, unknown or revoked API key", r("ApiError")),
        ok(
            "403",
            "Not granted to this key (a profile, network, mode, limit or capability)",
            r("ApiError"),
        ),
        ok(
            "429",
            "Rate limit or the key's concurrency limit (Retry-After)",
            r("ApiError"),
        ),
    ];
    for (status, desc) in extra {
        out.push(ok(status, desc, r("ApiError")));
    }
    out
}

fn op(summary: &str, request: Option<Value>, responses: Vec<(String, Value)>) -> Value {
    let mut o = json!({
        "summary": summary,
        "security": [{ "apiKey": [] }, { "bearer": [] }],
        "responses": responses.into_iter().collect::<Map<_, _>>(),
    });
    if let Some(b) = request {
        o["requestBody"] = b;
    }
    o
}

fn name_param() -> Value {
    json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,45}$" } })
}

fn path_param(required: bool) -> Value {
    json!({ "name": "path", "in": "query", "required": required, "schema": { "type": "string", "pattern": "^/workspace(/.*)?$" } })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    paths.insert("/health".into(), json!({ "get": {
        "summary": "Liveness (no key needed)",
        "security": [],
        "responses": { "200": { "description": "Up", "content": { "application/json": { "schema": r("ApiHealth") } } } }
    }}));
    paths.insert("/metrics".into(), json!({ "get": {
        "summary": "Prometheus metrics, text format (no key needed)",
        "security": [],
        "responses": { "200": { "description": "Metrics", "content": { "text/plain": { "schema": { "type": "string" } } } } }
    }}));
    let mut run_responses = vec![ok(
        "200",
        "The run's result (the command's failure is a normal result)",
        r("ApiRunResult"),
    )];
    run_responses.extend(errors(&[
        ("413", "Body too large"),
        ("500", "The sandbox could not start"),
        ("503", "Server full or host under pressure (Retry-After)"),
    ]));
    paths.insert("/api/v2/run".into(), json!({ "post": op("One command in a fresh sandbox", Some(body("RunRequest")), run_responses) }));

    let mut create = vec![ok("201", "Created", r("SandboxInfo"))];
    create.extend(errors(&[
        ("409", "This key has a sandbox of that name"),
        ("413", "Body too large"),
        ("500", "The sandbox could not start"),
        ("503", "Server full or host under pressure (Retry-After)"),
    ]));
    let mut list = vec![ok(
        "200",
        "This key's sandboxes",
        json!({ "type": "array", "items": r("SandboxInfo") }),
    )];
    list.extend(errors(&[]));
    paths.insert(
        "/api/v2/sandboxes".into(),
        json!({
            "post": op("Create a persistent sandbox", Some(body("CreateRequest")), create),
            "get": op("List this key's sandboxes", None, list),
        }),
    );
    let mut one = vec![ok("200", "The sandbox", r("SandboxInfo"))];
    one.extend(errors(&[("404", "No such sandbox")]));
    let mut get = op("A sandbox", None, one.clone());
    get["parameters"] = json!([name_param()]);
    let mut del = op("Destroy a sandbox (also a dead one)", None, one);
    del["parameters"] = json!([name_param()]);
    paths.insert(
        "/api/v2/sandboxes/{name}".into(),
        json!({ "get": get, "delete": del }),
    );

    let mut exec_r = vec![
        ok("200", "The command's result", r("ApiRunResult")),
        ok(
            "201",
            "`background: true`: started; its pid inside the sandbox",
            r("Spawned"),
        ),
    ];
    exec_r.extend(errors(&[
        ("404", "No such sandbox"),
        ("413", "Body too large"),
        ("500", "Could not join the sandbox"),
        ("503", "Server full or host under pressure (Retry-After)"),
    ]));
    let mut exec = op("Run a command in a sandbox", Some(body("ExecBody")), exec_r);
    exec["parameters"] = json!([name_param()]);
    paths.insert(
        "/api/v2/sandboxes/{name}/exec".into(),
        json!({ "post": exec }),
    );

    let mut ps_r = vec![ok(
        "200",
        "Commands still running and what commands left running, by pid inside the sandbox",
        json!({ "type": "array", "items": r("ProcessInfo") }),
    )];
    ps_r.extend(errors(&[("404", "No such sandbox")]));
    let mut ps = op("List a sandbox's processes", None, ps_r);
    ps["parameters"] = json!([name_param()]);
    paths.insert(
        "/api/v2/sandboxes/{name}/processes".into(),
        json!({ "get": ps }),
    );
    let mut kill_r = vec![(
        "204".to_string(),
        json!({ "description": "The signal was sent" }),
    )];
    kill_r.extend(errors(&[("404", "No such sandbox or process")]));
    let mut kill = op("Signal a process of a sandbox", None, kill_r);
    kill["parameters"] = json!([
        name_param(),
        { "name": "pid", "in": "path", "required": true, "schema": { "type": "integer", "minimum": 2 } },
        { "name": "signal", "in": "query", "required": false, "schema": r("ProcessSignal") }
    ]);
    paths.insert(
        "/api/v2/sandboxes/{name}/processes/{pid}".into(),
        json!({ "delete": kill }),
    );

    let context_param = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1 } });
    let mut ctx_new = vec![ok(
        "201",
        "The context, its interpreter ready",
        r("ContextInfo"),
    )];
    ctx_new.extend(errors(&[
        ("404", "No such sandbox"),
        (
            "409",
            "The sandbox holds its most code contexts: delete one",
        ),
        ("413", "Body too large"),
        ("500", "The interpreter could not start"),
    ]));
    let mut ctx_create = op(
        "Start a code context (a long-lived interpreter) in a sandbox",
        Some(
            json!({ "required": false, "content": { "application/json": { "schema": r("NewContext") } } }),
        ),
        ctx_new,
    );
    ctx_create["parameters"] = json!([name_param()]);
    let mut ctx_list_r = vec![ok(
        "200",
        "This key's contexts of the sandbox",
        json!({ "type": "array", "items": r("ContextInfo") }),
    )];
    ctx_list_r.extend(errors(&[("404", "No such sandbox")]));
    let mut ctx_list = op("List a sandbox's code contexts", None, ctx_list_r);
    ctx_list["parameters"] = json!([name_param()]);
    paths.insert(
        "/api/v2/sandboxes/{name}/contexts".into(),
        json!({ "post": ctx_create, "get": ctx_list }),
    );
    let mut ctx_del_r = vec![(
        "204".to_string(),
        json!({ "description": "Stopped and forgotten" }),
    )];
    ctx_del_r.extend(errors(&[("404", "No such sandbox or context")]));
    let mut ctx_del = op("Stop a code context", None, ctx_del_r);
    ctx_del["parameters"] = json!([name_param(), context_param.clone()]);
    paths.insert(
        "/api/v2/sandboxes/{name}/contexts/{id}".into(),
        json!({ "delete": ctx_del }),
    );
    let mut ctx_restart_r = vec![(
        "204".to_string(),
        json!({ "description": "A fresh interpreter under the same id" }),
    )];
    ctx_restart_r.extend(errors(&[
        ("404", "No such sandbox or context"),
        ("500", "The interpreter could not start"),
    ]));
    let mut ctx_restart = op(
        "Restart a code context (its state is gone)",
        None,
        ctx_restart_r,
    );
    ctx_restart["parameters"] = json!([name_param(), context_param.clone()]);
    paths.insert(
        "/api/v2/sandboxes/{name}/contexts/{id}/restart".into(),
        json!({ "post": ctx_restart }),
    );
    let mut ctx_run_r: Vec<(String, Value)> = vec![(
        "200".into(),
        json!({ "description": "The call's result (an exception is a normal result); with `stream`, Server-Sent Events: stdout, stderr, result, error, done", "content": {
            "application/json": { "schema": r("CodeResult") },
            "text/event-stream": { "schema": { "type": "string" } }
        } }),
    )];
    ctx_run_r.extend(errors(&[
        ("404", "No such sandbox or context"),
        ("409", "The context's interpreter ended: restart it"),
        ("413", "Body too large"),
        ("503", "The context runs another call (Retry-After)"),
    ]));
    let mut ctx_run = op(
        "Run code in a code context",
        Some(body("ContextRun")),
        ctx_run_r,
    );
    ctx_run["parameters"] = json!([name_param(), context_param]);
    paths.insert(
        "/api/v2/sandboxes/{name}/contexts/{id}/run".into(),
        json!({ "post": ctx_run }),
    );

    let mut files_r = vec![ok(
        "200",
        "Entries",
        json!({ "type": "array", "items": r("FileEntry") }),
    )];
    files_r.extend(errors(&[("404", "No such sandbox")]));
    let mut files = op("List a directory of the workspace", None, files_r);
    files["parameters"] = json!([name_param(), path_param(false)]);
    paths.insert(
        "/api/v2/sandboxes/{name}/files".into(),
        json!({ "get": files }),
    );

    let mut read_r: Vec<(String, Value)> = vec![(
        "200".into(),
        json!({ "description": "The file's bytes", "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } }),
    )];
    read_r.extend(errors(&[("404", "No such sandbox")]));
    let mut read = op("Read a file of the workspace", None, read_r);
    read["parameters"] = json!([name_param(), path_param(true)]);
    let mut write_r: Vec<(String, Value)> =
        vec![("204".into(), json!({ "description": "Written" }))];
    write_r.extend(errors(&[
        ("404", "No such sandbox"),
        ("413", "Body too large"),
    ]));
    let mut write = op(
        "Write a file of the workspace (parents created)",
        Some(
            json!({ "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } }),
        ),
        write_r,
    );
    write["parameters"] = json!([name_param(), path_param(true)]);
    paths.insert(
        "/api/v2/sandboxes/{name}/files/content".into(),
        json!({ "get": read, "put": write }),
    );

    let mut snap_r = vec![ok("201", "The snapshot", r("SnapshotInfo"))];
    snap_r.extend(errors(&[("404", "No such sandbox")]));
    let mut snap = op(
        "Snapshot the workspace into the content-addressed store",
        Some(
            json!({ "required": false, "content": { "application/json": { "schema": r("ApiSnapshotRequest") } } }),
        ),
        snap_r,
    );
    snap["parameters"] = json!([name_param()]);
    let mut snaps_r = vec![ok(
        "200",
        "This sandbox's snapshots",
        json!({ "type": "array", "items": r("SnapshotInfo") }),
    )];
    snaps_r.extend(errors(&[]));
    let mut snaps = op("List the sandbox's snapshots", None, snaps_r);
    snaps["parameters"] = json!([name_param()]);
    paths.insert(
        "/api/v2/sandboxes/{name}/snapshots".into(),
        json!({ "post": snap, "get": snaps }),
    );

    let mut pools_r = vec![ok(
        "200",
        "Warm pools: ready sandboxes, hits and misses per profile",
        r("PoolStatus"),
    )];
    pools_r.extend(errors(&[("503", "No engine answers")]));
    paths.insert(
        "/api/v2/zygotes/pools".into(),
        json!({ "get": op("The engine's warm pools", None, pools_r) }),
    );
    for (path, summary) in [
        (
            "/api/v2/system/psi",
            "Host pressure (PSI) and the admission thresholds",
        ),
        (
            "/api/v2/fragments/performance",
            "Spawn latency percentiles of the recent runs, by profile and path",
        ),
    ] {
        let mut resp = vec![ok("200", summary, json!({ "type": "object" }))];
        resp.extend(errors(&[]));
        paths.insert(path.into(), json!({ "get": op(summary, None, resp) }));
    }
    paths.insert("/api/v2/openapi.json".into(), json!({ "get": {
        "summary": "This document",
        "security": [],
        "responses": { "200": { "description": "OpenAPI 3.0", "content": { "application/json": { "schema": { "type": "object" } } } } }
    }}));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Phantom Fragment supervisor API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Sandboxed runs, persistent sandboxes, files and snapshots. Send an API key (`phantom keys add NAME`) as X-API-Key or Authorization: Bearer."
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
                "bearer": { "type": "http", "scheme": "bearer" }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reference_resolves() {
        let doc = super::document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "unresolved $ref {name}");
        }
        for name in ["RunRequest", "ApiRunResult", "SandboxInfo", "ApiError"] {
            assert!(schemas.contains_key(name), "{name} missing");
        }
        // Flattened fields appear in the request's own schema.
        let run = &schemas["RunRequest"]["properties"];
        for field in [
            "language",
            "code",
            "argv",
            "timeout",
            "memory",
            "stream",
            "max_output",
        ] {
            assert!(
                run.get(field).is_some(),
                "RunRequest.{field} missing: {run}"
            );
        }
        assert_eq!(schemas["RunRequest"]["additionalProperties"], false);
        let result = &schemas["ApiRunResult"]["properties"];
        for field in ["stdout", "exit_code", "cpu_ms", "wall_ms", "timed_out"] {
            assert!(
                result.get(field).is_some(),
                "ApiRunResult.{field} missing: {result}"
            );
        }
    }
}
