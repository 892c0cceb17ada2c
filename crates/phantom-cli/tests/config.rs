//! config.yaml and the AISBX_*/PHANTOM_* variables, against the real binaries: a config
//! profile's keys take effect inside the sandbox, the file is found in the documented
//! order, mistakes are one line with file:line:column, `phantom config show` says where
//! each value came from, the supervisor and phantom-mcp read their variables.
//!
//! Every command gets its environment explicitly: HOME and XDG_CONFIG_HOME point into
//! the test's own directory (never the host's ~/.config), and PHANTOM_SUPERVISOR_SOCKET
//! at a socket nobody listens on, so that runs start a private engine that reads the
//! test's config (a supervisor of the suite's warm pass would not know its profiles).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{http, supervisor_bin};
use common::mcp::McpServer;
use common::{
    is_root, phantom, run_probe_at, sandbox_available, skip, PhantomOutput, Workspace, EROFS,
};
use serde_json::{json, Value};

/// A directory of the test's own, removed on drop, with an empty HOME and XDG dir.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "phantom-config-it-{tag}-{}-{}",
            std::process::id(),
            common::unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::create_dir_all(dir.join("xdg")).unwrap();
        // The sandbox's user reaches mount sources below it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Dir(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The environment every command of the test gets (plus `vars`): nothing of the
    /// host's configuration, no supervisor.
    fn env(&self, cmd: &mut Command, vars: &[(&str, &str)]) {
        for var in [
            "AISBX_CONFIG_PATH",
            "PHANTOM_CONFIG_PATH",
            "PHANTOM_CONFIG",
            "AISBX_DEFAULT_PROFILE",
            "PHANTOM_DEFAULT_PROFILE",
            "AISBX_DEBUG",
            "PHANTOM_DEBUG",
            "AISBX_API_PORT",
            "PHANTOM_API_PORT",
            "AISBX_API_KEY",
            "PHANTOM_API_KEY",
            "PHANTOM_PERFORMANCE_MODE",
            "PHANTOM_ZYGOTE_POOL_SIZE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg"))
            .env("PHANTOM_SUPERVISOR_SOCKET", self.path("nobody.sock"));
        for (k, v) in vars {
            cmd.env(k, v);
        }
    }

    fn phantom(&self, args: &[&str], vars: &[(&str, &str)]) -> PhantomOutput {
        phantom(args, |c| self.env(c, vars))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The seed README's profile, with a data directory beside the file.
fn seed_config(dir: &Dir) -> PathBuf {
    dir.write("data/hello.txt", "from the host\n");
    std::fs::set_permissions(dir.path("data"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.path("data/hello.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    dir.write(
        "conf/config.yaml",
        "profiles:
  - name: my-python
    driver: native
    cpu: 1.0
    memory: 64MB
    network:
      enabled: false
    mounts:
      - source: ../data
        target: /data
        mode: ro
    environment:
      FOO: bar-from-config
",
    )
}

fn config_var(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_config_profile_takes_effect_in_phantom_run() {
    if !sandbox_available() {
        return;
    }
    let dir = Dir::new("effect");
    let config = config_var(&seed_config(&dir));
    let vars = [("AISBX_CONFIG_PATH", config.as_str())];
    let workspace = Workspace::new();
    let probe = |args: &[&str]| {
        run_probe_at(
            &workspace,
            common::PROBE_IN_WORKSPACE,
            args,
            &["--profile", "my-python"],
            |c| dir.env(c, &vars),
        )
    };
    let run = probe(&["report"]);
    assert_eq!(run.report["profile"], "my-python", "{}", run.describe());
    let p = &run.probe;
    assert_eq!(p["env"]["FOO"], "bar-from-config", "{}", run.describe());
    let data = p["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["target"] == "/data")
        .unwrap_or_else(|| panic!("no mount at /data: {}", p["mounts"]));
    assert!(
        data["options"]
            .as_str()
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "/data must be read-only: {data}"
    );
    let interfaces = p["interfaces"].as_array().unwrap();
    assert!(
        interfaces
            .iter()
            .all(|i| i["name"] == "lo" && i["up"] == false),
        "network.enabled false: no interface up; saw {interfaces:?}"
    );
    let read = probe(&["read", "/data/hello.txt"]);
    assert_eq!(
        read.probe["results"]["/data/hello.txt"]["ok"],
        true,
        "the mount's file is readable: {}",
        read.describe()
    );
    let write = probe(&["write", "/data/new.txt"]);
    assert_eq!(
        common::errno(&write.probe["results"]["/data/new.txt"]),
        EROFS,
        "mode ro: {}",
        write.describe()
    );
    assert!(!dir.path("data/new.txt").exists());

    // memory: 64MB is the cgroup's limit (a cgroup needs root).
    if !is_root() {
        return skip("the memory limit needs a cgroup; run as root");
    }
    let hog = probe(&["memhog", "512"]);
    if hog.report["isolation"]["cgroup"] == "none" {
        return skip("no cgroup on this host");
    }
    assert_eq!(hog.report["oom_killed"], true, "{}", hog.describe());
}

#[test]
fn the_config_file_is_aisbx_config_path_then_phantom_config_then_xdg() {
    let dir = Dir::new("find");
    let named = |rel: &str, name: &str| {
        config_var(&dir.write(
            &format!("{rel}/config.yaml"),
            &format!("profiles:\n  - name: from-{name}\n"),
        ))
    };
    let aisbx = named("aisbx", "aisbx");
    let phantom_config = named("phantom", "phantom");
    let xdg = named("xdg/phantom", "xdg");
    let path = |vars: &[(&str, &str)]| {
        let out = dir.phantom(&["config", "path"], vars);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        out.stdout.trim().to_string()
    };
    assert_eq!(
        path(&[
            ("AISBX_CONFIG_PATH", &aisbx),
            ("PHANTOM_CONFIG", &phantom_config)
        ]),
        aisbx
    );
    assert_eq!(path(&[("PHANTOM_CONFIG", &phantom_config)]), phantom_config);
    assert_eq!(path(&[]), xdg);
    // PHANTOM_CONFIG_PATH is AISBX_CONFIG_PATH's other name; the two may not disagree.
    assert_eq!(path(&[("PHANTOM_CONFIG_PATH", &aisbx)]), aisbx);
    let out = dir.phantom(
        &["config", "path"],
        &[
            ("AISBX_CONFIG_PATH", &aisbx),
            ("PHANTOM_CONFIG_PATH", &phantom_config),
        ],
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert_eq!(
        out.stderr.trim(),
        "phantom: error: AISBX_CONFIG_PATH and PHANTOM_CONFIG_PATH: both are set, to different values; unset one of them"
    );
    // The profile of the file in effect is the one `profile list` shows.
    let out = dir.phantom(&["profile", "list"], &[("PHANTOM_CONFIG", &phantom_config)]);
    assert!(out.stdout.contains("from-phantom"), "{}", out.describe());
    assert!(!out.stdout.contains("from-xdg"), "{}", out.describe());
    // A missing XDG file is no config; a missing file a variable names is an error.
    std::fs::remove_file(&xdg).unwrap();
    assert_eq!(path(&[]), "none");
    let missing = config_var(&dir.path("nowhere.yaml"));
    let out = dir.phantom(&["run", "--", "true"], &[("PHANTOM_CONFIG", &missing)]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert_eq!(
        out.stderr.trim(),
        format!("phantom: error: PHANTOM_CONFIG: `{missing}` does not exist; point it at a config.yaml or unset it")
    );
}

#[test]
fn aisbx_default_profile_is_the_profile_without_a_profile_flag() {
    if !sandbox_available() {
        return;
    }
    let dir = Dir::new("default");
    let config = config_var(&dir.write(
        "config.yaml",
        "default_profile: from-file\nprofiles:\n  - name: from-file\n    environment: {WHO: file}\n  - name: from-env\n    environment: {WHO: env}\n",
    ));
    let run = |flags: &[&str], vars: &[(&str, &str)]| {
        let mut args = vec!["run", "--json"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "sh", "-c", "echo $WHO"]);
        let mut all = vec![("AISBX_CONFIG_PATH", config.as_str())];
        all.extend_from_slice(vars);
        let out = dir.phantom(&args, &all);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let report: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        (
            report["profile"].as_str().unwrap().to_string(),
            report["stdout"].as_str().unwrap().trim().to_string(),
        )
    };
    assert_eq!(run(&[], &[]), ("from-file".into(), "file".into()));
    assert_eq!(
        run(&[], &[("AISBX_DEFAULT_PROFILE", "from-env")]),
        ("from-env".into(), "env".into())
    );
    assert_eq!(
        run(&[], &[("PHANTOM_DEFAULT_PROFILE", "from-env")]),
        ("from-env".into(), "env".into())
    );
    // The flag wins over both.
    assert_eq!(
        run(
            &["--profile", "default"],
            &[("AISBX_DEFAULT_PROFILE", "from-env")]
        ),
        ("default".into(), "".into())
    );
    let out = dir.phantom(
        &["run", "--", "true"],
        &[
            ("AISBX_CONFIG_PATH", &config),
            ("AISBX_DEFAULT_PROFILE", "from-evn"),
        ],
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    let line = out.stderr.trim();
    assert!(
        line.starts_with("phantom: error: AISBX_DEFAULT_PROFILE: `from-evn` is not a profile (did you mean `from-env`?)"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
}

#[test]
fn a_bad_config_file_fails_with_file_line_column() {
    let dir = Dir::new("bad");
    dir.write(
        "profiles/custom.json",
        "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n \"syscalls\": [{\"names\": [\"ptrace\"], \"action\": \"SCMP_ACT_LOG\"}]}\n",
    );
    for (text, want) in [
        (
            "profiles:\n  - name: a\n    memroy: 1GB\n",
            ":3:5: unknown key `memroy` in `profiles[0]` (did you mean `memory`?)",
        ),
        (
            "profiles:\n  - name: a\n    driver: bwrap\n",
            ":3:13: profiles[0].driver: `bwrap` is not a driver of phantom: its native engine is the Linux driver",
        ),
        (
            "profiles:\n  - name: a\n    mounts:\n      - {source: ./x, target: /x, mode: rx}\n",
            ":4:41: profiles[0].mounts[0].mode: expected ro or rw",
        ),
        (
            "profiles:\n  - name: a\n    seccomp: \"profiles/custom.json\"\n",
            "custom.json:2:47: syscalls[0].action: `SCMP_ACT_LOG`: phantom cannot log, trace or notify a syscall",
        ),
    ] {
        let config = config_var(&dir.write("config.yaml", text));
        for args in [&["run", "--", "true"][..], &["profile", "list"][..]] {
            let out = dir.phantom(args, &[("AISBX_CONFIG_PATH", &config)]);
            assert_eq!(out.code, Some(2), "{}", out.describe());
            let line = out.stderr.trim();
            assert!(line.starts_with("phantom: error: /"), "{line}");
            assert!(line.contains(want), "wanted {want}\ngot {line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
    }
}

#[test]
fn config_show_says_where_each_value_came_from_and_never_prints_the_key() {
    let dir = Dir::new("show");
    let config = config_var(&dir.write(
        "config.yaml",
        "default_profile: mine\napi_port: 8099\nprofiles:\n  - name: mine\n    memory: 128MB\n",
    ));
    let secret = format!("phk_0123456789ab_{}", "5".repeat(64));
    let vars = [
        ("AISBX_CONFIG_PATH", config.as_str()),
        ("AISBX_DEBUG", "1"),
        ("AISBX_API_KEY", secret.as_str()),
        ("PHANTOM_PERFORMANCE_MODE", "cold"),
    ];
    let out = dir.phantom(&["config", "show", "--json"], &vars);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(!out.stdout.contains(&secret), "{}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["config_file"], config.as_str());
    assert_eq!(v["found_by"], "AISBX_CONFIG_PATH");
    assert_eq!(v["profiles"][0]["name"], "mine");
    assert_eq!(v["profiles"][0]["limits"]["memory_bytes"], 128 << 20);
    let s = &v["settings"];
    assert_eq!(
        s["default_profile"],
        json!({"value": "mine", "source": format!("config {config}:1:18")})
    );
    assert_eq!(
        s["api_port"],
        json!({"value": "8099", "source": format!("config {config}:2:11")})
    );
    assert_eq!(
        s["debug"],
        json!({"value": "true", "source": "env AISBX_DEBUG"})
    );
    assert_eq!(
        s["api_key"],
        json!({"value": "set", "source": "env AISBX_API_KEY"})
    );
    assert_eq!(
        s["performance_mode"],
        json!({"value": "cold", "source": "env PHANTOM_PERFORMANCE_MODE"})
    );
    assert_eq!(
        s["zygote_pool_size"],
        json!({"value": "4", "source": "default"})
    );
    let text = dir.phantom(&["config", "show"], &vars);
    assert_eq!(text.code, Some(0), "{}", text.describe());
    assert!(!text.stdout.contains(&secret), "{}", text.stdout);
    assert!(text.stdout.contains("env AISBX_DEBUG"), "{}", text.stdout);
    // Nothing set: "none" and defaults.
    let bare = dir.phantom(&["config", "show", "--json"], &[]);
    let v: Value = serde_json::from_str(&bare.stdout).unwrap();
    assert_eq!(v["config_file"], Value::Null, "{}", bare.describe());
    assert_eq!(v["settings"]["debug"]["source"], "default");
    assert_eq!(v["settings"]["api_key"]["value"], Value::Null);
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_supervisor_listens_on_aisbx_api_port_and_accepts_aisbx_api_key() {
    if !sandbox_available() {
        return;
    }
    let dir = Dir::new("supervisor");
    std::fs::create_dir_all(dir.path("state")).unwrap();
    let config = config_var(&dir.write(
        "config.yaml",
        "profiles:\n  - name: operator-only\n    environment: {X: y}\n",
    ));
    let key = format!("phk_0123456789ab_{}", "7".repeat(64));
    let port = free_port();
    let mut cmd = Command::new(supervisor_bin());
    cmd.args([
        "--profiles",
        "default,operator-only",
        "--zygote-pools",
        "1",
        "--socket",
    ])
    .arg(dir.path("pool.sock"));
    dir.env(
        &mut cmd,
        &[
            ("AISBX_CONFIG_PATH", &config),
            ("AISBX_API_PORT", &port.to_string()),
            ("AISBX_API_KEY", &key),
            ("AISBX_DEBUG", "1"),
        ],
    );
    cmd.env("PHANTOM_STATE_DIR", dir.path("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start phantom-supervisor");
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let listening = format!("HTTP API on http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log.lock().unwrap().contains(&listening) {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no `{listening}`:\n{}", log.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let anonymous = http(port, "GET", "/api/v2/sandboxes", None, b"");
    let with_key = http(port, "GET", "/api/v2/sandboxes", Some(&key), b"");
    // A key reaches a config.yaml profile only when its grants name it.
    let config_profile = http(
        port,
        "POST",
        "/api/v2/run",
        Some(&key),
        json!({"argv": ["true"], "profile": "operator-only"})
            .to_string()
            .as_bytes(),
    );
    // The supervisor pools config profiles too: the local user's run of one is warm.
    let socket = dir.path("pool.sock");
    let state = dir.path("state");
    let local = phantom(
        &[
            "run",
            "--json",
            "--profile",
            "operator-only",
            "--",
            "sh",
            "-c",
            "echo $X",
        ],
        |c| {
            dir.env(c, &[("AISBX_CONFIG_PATH", &config)]);
            c.env("PHANTOM_SUPERVISOR_SOCKET", &socket)
                .env("PHANTOM_STATE_DIR", &state);
        },
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopped = common::wait_timeout(&mut child, Duration::from_secs(20));
    if stopped.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(with_key.status, 200, "{}\n{log}", with_key.text());
    assert_eq!(config_profile.status, 403, "{}", config_profile.text());
    assert!(
        config_profile.text().contains("config.yaml"),
        "{}",
        config_profile.text()
    );
    assert_eq!(local.code, Some(0), "{}", local.describe());
    let report: Value = serde_json::from_str(local.stdout.trim()).unwrap();
    assert_eq!(report["stdout"], "y\n", "{report}");
    assert_eq!(report["start"], "warm", "{report}\n{log}");
    assert!(log.contains("debug: list request"), "AISBX_DEBUG: {log}");
    assert!(!log.contains(&key), "the key is never logged: {log}");
    assert!(stopped.is_some(), "the supervisor did not stop on SIGTERM");

    // A value that is not a key stops the start, naming the variable, not the value.
    let mut cmd = Command::new(supervisor_bin());
    cmd.arg("--socket").arg(dir.path("other.sock"));
    dir.env(
        &mut cmd,
        &[
            ("AISBX_API_PORT", &free_port().to_string()),
            ("PHANTOM_API_KEY", "hunter2-hunter2"),
        ],
    );
    let out = common::run_with_deadline(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert_eq!(
        out.stderr.trim(),
        "phantom-supervisor: error: PHANTOM_API_KEY: not a key (expected phk_<12 hex>_<64 hex> or e2b_<40 hex>, as `phantom keys add [--e2b]` prints)"
    );
}

#[test]
fn phantom_mcp_takes_its_mode_and_pool_size_from_the_environment() {
    if !sandbox_available() {
        return;
    }
    let dir = Dir::new("mcp");
    let home = dir.path("home");
    let xdg = dir.path("xdg");
    let tmp = dir.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let base = [("HOME", home.as_path()), ("XDG_CONFIG_HOME", xdg.as_path())];
    let metrics = |args: &[&str], vars: &[(&str, &Path)]| {
        let mut env = base.to_vec();
        env.extend_from_slice(vars);
        let mut server = McpServer::start_with_env(args, &tmp, &env);
        let m = server.call("get_metrics", json!({}));
        assert!(server.finish().success());
        m["structuredContent"].clone()
    };
    let m = metrics(
        &["--profiles", "default"],
        &[("PHANTOM_PERFORMANCE_MODE", Path::new("cold"))],
    );
    assert_eq!(m["mode"], "cold", "{m}");
    assert_eq!(m["pools"], json!([]), "{m}");
    let m = metrics(
        &["--profiles", "default"],
        &[("PHANTOM_ZYGOTE_POOL_SIZE", Path::new("2"))],
    );
    assert_eq!(m["mode"], "zygote", "{m}");
    assert_eq!(m["pools"][0]["ceiling"], 2, "{m}");
    // A flag wins over its variable.
    let m = metrics(
        &[
            "--profiles",
            "default",
            "--mode",
            "zygote",
            "--pool-size",
            "1",
        ],
        &[
            ("PHANTOM_PERFORMANCE_MODE", Path::new("cold")),
            ("PHANTOM_ZYGOTE_POOL_SIZE", Path::new("3")),
        ],
    );
    assert_eq!(m["mode"], "zygote", "{m}");
    assert_eq!(m["pools"][0]["ceiling"], 1, "{m}");
    // A bad value: one error line that names the variable.
    for (var, value) in [
        ("PHANTOM_PERFORMANCE_MODE", "fast"),
        ("PHANTOM_ZYGOTE_POOL_SIZE", "0"),
    ] {
        let mut cmd = Command::new(common::mcp::mcp_bin());
        dir.env(&mut cmd, &[(var, value)]);
        let out = common::run_with_deadline(cmd, Duration::from_secs(30));
        assert_eq!(out.code, Some(2), "{}", out.describe());
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid value") && first.contains(var),
            "{var}={value}: {}",
            out.stderr
        );
    }
}

/// Regression: a line of `--api-keys FILE` (and so AISBX_API_KEY) was checked only for
/// its prefix and byte length; a non-ASCII one of the right length passed, and the
/// server then cut its id out at a byte that was not a character boundary and
/// panicked at start. Keys now take the key store's own shape check.
#[test]
fn a_non_ascii_key_of_the_right_length_is_refused_not_a_panic() {
    let dir = Dir::new("keyshape");
    let key = format!("phk_a{}€_{}", "é".repeat(5), "0".repeat(62));
    assert_eq!(key.len(), 81, "the length the old check wanted");
    let file = dir.write("keys", &format!("{key}\n"));
    let mut cmd = Command::new(supervisor_bin());
    cmd.args(["--bind", "127.0.0.1:0", "--socket"])
        .arg(dir.path("pool.sock"))
        .arg("--api-keys")
        .arg(&file)
        .env("PHANTOM_STATE_DIR", dir.path("state"));
    dir.env(&mut cmd, &[]);
    let out = common::run_with_deadline(cmd, Duration::from_secs(60));
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert_eq!(
        out.stderr.trim(),
        format!(
            "phantom-supervisor: error: --api-keys {}:1: not a key (expected phk_<12 hex>_<64 hex> or e2b_<40 hex>, as `phantom keys add [--e2b]` prints)",
            file.display()
        )
    );
    let mut cmd = Command::new(supervisor_bin());
    cmd.args(["--socket"]).arg(dir.path("pool2.sock"));
    dir.env(
        &mut cmd,
        &[("AISBX_API_PORT", "0"), ("AISBX_API_KEY", key.as_str())],
    );
    let out = common::run_with_deadline(cmd, Duration::from_secs(60));
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(!out.stderr.contains(&key), "{}", out.stderr);
    assert!(
        out.stderr.contains("AISBX_API_KEY: not a key"),
        "{}",
        out.stderr
    );
}
