//! Tenancy and capabilities across the front ends (issue 12 §5): what an API key may
//! ask for, whose sandboxes and snapshots each front end reaches, and what a remote
//! caller is shown. The two security defects found in the CLI-driving front ends each
//! have a test named after them.

mod common;

use std::path::Path;

use common::api::Server;
use common::mcp::McpServer;
use common::sandbox_available;
use serde_json::{json, Value};

/// The id part of a key `phk_<id>_<secret>`.
fn key_id(key: &str) -> &str {
    key.split('_').nth(1).unwrap()
}

/// An API key used to get the host's network: `"network": "host"` went straight to
/// `phantom run --network host`, and a Python one-liner listed the host's eth0.
#[test]
fn any_api_key_got_the_hosts_network() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("hostnet", &[]);
    let key = server.key("agent", &[]);
    let read_net = json!({"language": "python",
        "code": "print(open('/proc/net/dev').read())", "network": "host"});
    let r = server.json("POST", "/api/v2/run", &key, read_net.clone());
    assert_eq!(r.status, 403, "{}", r.text());
    let body = r.json();
    assert_eq!(body["field"], "network", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("host-network"),
        "the refusal names the capability: {body}"
    );
    // The default network of that run is still served: only the host is refused.
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"language": "python", "code": "print(open('/proc/net/dev').read())"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let devices = interfaces(r.json()["stdout"].as_str().unwrap());
    assert_eq!(
        devices,
        ["lo"],
        "a fresh network namespace has a loopback only"
    );
    // A key made with the grant gets it: the host's devices, more than a loopback.
    let ops = server.key("ops", &["--allow", "host-network"]);
    let r = server.json("POST", "/api/v2/run", &ops, read_net);
    assert_eq!(r.status, 200, "{}", r.text());
    let host = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    let seen = interfaces(r.json()["stdout"].as_str().unwrap());
    assert_eq!(seen, host);
    assert!(host.len() > 1, "this host has only a loopback: {host:?}");
}

/// The interface names of a /proc/net/dev text.
fn interfaces(dev: &str) -> Vec<String> {
    let mut names: Vec<String> = dev
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect();
    names.sort();
    names
}

#[test]
fn a_default_key_gets_no_direct_mode_host_workspace_or_policy_file() {
    let server = Server::start("grants", &[]);
    let key = server.key("agent", &[]);
    for (body, field, capability) in [
        (
            json!({"argv": ["true"], "mode": "direct"}),
            "mode",
            "direct-mode",
        ),
        (
            json!({"argv": ["true"], "workspace": "/"}),
            "workspace",
            "host-workspace",
        ),
        (
            json!({"argv": ["true"], "policy_file": "/etc/hostname"}),
            "policy_file",
            "policy-files",
        ),
    ] {
        let r = server.json("POST", "/api/v2/run", &key, body.clone());
        assert_eq!(r.status, 403, "{body}: {}", r.text());
        let v = r.json();
        assert_eq!(v["field"], field, "{v}");
        assert!(v["error"].as_str().unwrap().contains(capability), "{v}");
    }
}

/// `{"memory":"900GB","pids":4194304,"timeout":"1000h"}` used to be accepted, and a run
/// allocated 1.5 GiB past the profile's 512MB.
#[test]
fn limits_beyond_the_profile_need_a_grant() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("limits", &[]);
    let key = server.key("agent", &[]);
    for (body, field) in [
        (json!({"argv": ["true"], "memory": "900GB"}), "memory"),
        (json!({"argv": ["true"], "pids": 4194304}), "pids"),
        (json!({"argv": ["true"], "timeout": "1000h"}), "timeout"),
    ] {
        let r = server.json("POST", "/api/v2/run", &key, body.clone());
        assert_eq!(r.status, 403, "{body}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{}", r.text());
    }
    // Within the profile's own: served.
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"argv": ["true"], "memory": "64MB", "timeout": 5}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A key granted more gets up to its ceiling, and no further.
    let big = server.key("big", &["--max-memory", "1GiB"]);
    let r = server.json(
        "POST",
        "/api/v2/run",
        &big,
        json!({"argv": ["true"], "memory": "1GiB"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = server.json(
        "POST",
        "/api/v2/run",
        &big,
        json!({"argv": ["true"], "memory": "2GiB"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("1GiB") || r.text().contains("1 GiB"),
        "{}",
        r.text()
    );
}

#[test]
fn a_key_limited_to_some_profiles_is_refused_the_others() {
    let server = Server::start("profiles", &[]);
    let key = server.key("narrow", &["--profiles", "minimal"]);
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"argv": ["true"], "profile": "default"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["field"], "profile", "{}", r.text());
    assert!(
        r.text().contains("minimal"),
        "it says what the key may use: {}",
        r.text()
    );
}

#[test]
fn errors_over_http_name_json_fields_not_cli_flags() {
    let server = Server::start("fields", &[]);
    let key = server.key("agent", &[]);
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"argv": ["true"], "memory": "12XB"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["field"], "memory", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.starts_with("memory: "), "{error}");
    assert!(!error.contains("--memory"), "{error}");
}

/// The language → interpreter → profile rule is one: `{"language":"python"}` ran on
/// `default` over REST and on `python-dev` over MCP.
#[test]
fn python_runs_on_python_dev_over_rest_and_mcp_alike() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("language", &[]);
    let key = server.key("agent", &[]);
    let r = server.json(
        "POST",
        "/api/v2/run",
        &key,
        json!({"language": "python", "code": "print(1)"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["profile"], "python-dev", "{}", r.text());
    let tmp = scratch("language");
    let mut mcp = McpServer::start(&["--mode", "cold"], &tmp);
    let r = mcp.call(
        "run_code",
        json!({"language": "python", "code": "print(1)"}),
    );
    assert_eq!(r["structuredContent"]["profile"], "python-dev", "{r}");
    assert!(mcp.finish().success());
    let _ = std::fs::remove_dir_all(&tmp);
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "phantom-tenancy-it-{tag}-{}-{}",
        std::process::id(),
        common::unique()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// MCP used to reach every persistent sandbox of the state directory: `read_file` on a
/// REST tenant's `api-<keyid>-secretbox` returned its file, and `list_sandboxes` listed
/// them.
#[test]
fn mcp_reached_every_rest_tenants_sandbox() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("mcp-tenant", &[]);
    let key = server.key("tenant", &[]);
    let r = server.json(
        "POST",
        "/api/v2/sandboxes",
        &key,
        json!({"name": "secretbox"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.request(
        "PUT",
        "/api/v2/sandboxes/secretbox/files/content?path=/workspace/secret.txt",
        Some(&key),
        b"the tenant's secret\n",
    );
    assert_eq!(r.status, 204, "{}", r.text());

    let state = server.dir.join("state");
    let tmp = scratch("mcp-tenant");
    let env: [(&str, &Path); 1] = [("PHANTOM_STATE_DIR", &state)];
    let mut local = McpServer::start_with_env(&["--mode", "cold"], &tmp, &env);
    let listed = local.call("list_sandboxes", json!({}));
    assert_eq!(
        listed["structuredContent"]["sandboxes"],
        json!([]),
        "{listed}"
    );
    for name in [
        "secretbox".to_string(),
        format!("api-{}-secretbox", key_id(&key)),
    ] {
        for (tool, args) in [
            ("read_file", json!({"name": name, "path": "secret.txt"})),
            ("list_files", json!({"name": name})),
            (
                "exec_in_sandbox",
                json!({"name": name, "argv": ["cat", "secret.txt"]}),
            ),
            ("snapshot_sandbox", json!({"name": name})),
            ("destroy_sandbox", json!({"name": name})),
        ] {
            let r = local.call(tool, args);
            let text = r.to_string();
            assert_eq!(r["isError"], true, "{tool} {name}: {r}");
            assert!(text.contains("no sandbox named"), "{tool} {name}: {r}");
            assert!(!text.contains("the tenant's secret"), "{tool} {name}: {r}");
        }
    }
    assert!(local.finish().success());

    // Started with the tenant's key, MCP acts as that tenant: the same sandbox.
    let key_file = tmp.join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let mut tenant = McpServer::start_with_env(
        &[
            "--mode",
            "cold",
            "--api-key-file",
            key_file.to_str().unwrap(),
        ],
        &tmp,
        &env,
    );
    let r = tenant.call(
        "read_file",
        json!({"name": "secretbox", "path": "secret.txt"}),
    );
    assert_eq!(
        r["structuredContent"]["content"], "the tenant's secret\n",
        "{r}"
    );
    assert!(tenant.finish().success());
    let _ = std::fs::remove_dir_all(&tmp);
    // The tenant's sandbox is untouched by the local MCP's attempts.
    let r = server.request("GET", "/api/v2/sandboxes/secretbox", Some(&key), b"");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("running"))
    );
}

#[test]
fn a_key_restores_only_its_own_snapshots() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("snapshots", &[]);
    let owner = server.key("owner", &[]);
    let other = server.key("other", &[]);
    let r = server.json("POST", "/api/v2/sandboxes", &owner, json!({"name": "box"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.request(
        "PUT",
        "/api/v2/sandboxes/box/files/content?path=/workspace/data.txt",
        Some(&owner),
        b"owner's data\n",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = server.request("POST", "/api/v2/sandboxes/box/snapshots", Some(&owner), b"");
    assert_eq!(r.status, 201, "{}", r.text());
    let tag = r.json()["tag"].as_str().unwrap().to_string();
    // Another key: the tag does not exist for it (the same 404 as a tag nobody has).
    let r = server.json(
        "POST",
        "/api/v2/sandboxes",
        &other,
        json!({"name": "copy", "from_snapshot": tag}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let unknown = server.json(
        "POST",
        "/api/v2/sandboxes",
        &other,
        json!({"name": "copy", "from_snapshot": "no-such-tag"}),
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    // The owner restores it.
    let r = server.json(
        "POST",
        "/api/v2/sandboxes",
        &owner,
        json!({"name": "copy", "from_snapshot": tag}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.request(
        "GET",
        "/api/v2/sandboxes/copy/files/content?path=/workspace/data.txt",
        Some(&owner),
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "owner's data\n"));
}

#[test]
fn api_records_and_errors_show_no_host_internals() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("internals", &[]);
    let key = server.key("agent", &["--allow", "images"]);
    let name = "box-of-a-tenant";
    let r = server.json("POST", "/api/v2/sandboxes", &key, json!({ "name": name }));
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let listed = server
        .request("GET", "/api/v2/sandboxes", Some(&key), b"")
        .json();
    let one = server
        .request("GET", &format!("/api/v2/sandboxes/{name}"), Some(&key), b"")
        .json();
    let state = server.dir.display().to_string();
    for v in [&created, &listed[0], &one] {
        assert!(v.get("init_pid").is_none(), "{v}");
        assert!(v.get("workspace").is_none(), "{v}");
        assert!(!v.to_string().contains(&state), "{v}");
    }
    // /metrics needs no key: it names sandboxes by id, never by owner or name.
    let metrics = server.request("GET", "/metrics", None, b"").text();
    assert!(!metrics.contains(name), "{metrics}");
    assert!(!metrics.contains(key_id(&key)), "{metrics}");
    if common::is_root() {
        let id = created["id"].as_str().unwrap();
        assert!(
            metrics.contains(&format!("aisbx_sandbox_memory_bytes{{sandbox=\"{id}\"}}")),
            "{metrics}"
        );
    }
    // Errors: a path that escapes, a missing sandbox, a missing image, a bad body.
    let errors = [
        server.request(
            "GET",
            &format!("/api/v2/sandboxes/{name}/files/content?path=/etc/passwd"),
            Some(&key),
            b"",
        ),
        server.request("GET", "/api/v2/sandboxes/nobox", Some(&key), b""),
        server.json(
            "POST",
            "/api/v2/run",
            &key,
            json!({"argv": ["true"], "image": "no-such-image"}),
        ),
        server.json(
            "POST",
            "/api/v2/run",
            &key,
            json!({"argv": ["true"], "nope": 1}),
        ),
    ];
    assert_eq!(
        errors[2].status,
        404,
        "a missing image: {}",
        errors[2].text()
    );
    for r in &errors {
        let e = r.json();
        let text = e.to_string();
        assert!(e["error"].is_string(), "{e}");
        assert!(
            !text.contains(&state) && !text.contains("/var/lib/phantom"),
            "{e}"
        );
    }
}

#[test]
fn only_the_local_operator_reaches_every_owners_sandboxes() {
    if !sandbox_available() {
        return;
    }
    let server = Server::start("operator", &[]);
    let key = server.key("tenant", &[]);
    let r = server.json("POST", "/api/v2/sandboxes", &key, json!({"name": "box"}));
    assert_eq!(r.status, 201, "{}", r.text());
    // The local user's own list is empty; --every-owner shows the tenant's, by owner.
    let mine = server.phantom(&["list", "--json"]);
    assert_eq!(mine.stdout.trim(), "[]", "{}", mine.describe());
    let all = server.phantom(&["list", "--json", "--every-owner"]);
    let all: Value = serde_json::from_str(&all.stdout).unwrap();
    assert_eq!(all[0]["name"], "box", "{all}");
    assert_eq!(all[0]["owner"], format!("key:{}", key_id(&key)), "{all}");
    // Acting as the key, the CLI sees it as the API does.
    let owner = format!("key:{}", key_id(&key));
    let as_key = server.phantom(&["--owner", &owner, "list", "--json"]);
    assert!(as_key.stdout.contains("\"box\""), "{}", as_key.describe());
    let out = server.phantom(&["destroy", "--all", "--every-owner", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = server.request("GET", "/api/v2/sandboxes/box", Some(&key), b"");
    assert_eq!(r.status, 404, "{}", r.text());
}
