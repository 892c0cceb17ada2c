//! OCI hooks, run by phantom-oci directly (root only, no containerd): each hook
//! kind runs once, in order, in the namespaces the runtime-spec names, with the
//! state JSON on stdin; a failing createRuntime hook fails `create` and leaves
//! nothing behind.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{binary, is_root, rootfs};

fn oci(root: &Path, args: &[&str], log: &Path) -> (bool, String) {
    // The init keeps create's stdio: a file, not a pipe output() would wait on.
    let file = std::fs::File::create(log).unwrap();
    let status = Command::new(binary())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    (
        status.success(),
        std::fs::read_to_string(log).unwrap_or_default(),
    )
}

fn config(dir: &Path, id: &str, hooks: serde_json::Value, args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.2.0",
        "process": {"user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/",
                    "env": ["PATH=/bin"]},
        "root": {"path": dir.join("rootfs")},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
        ],
        "hooks": hooks,
        "annotations": {"test": "hooks"},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}],
            "cgroupsPath": format!("/phantom-oci-hooks-test-{}-{id}/c", std::process::id())
        }
    })
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in ["h1", "h2", "h3"] {
            let _ = Command::new(binary())
                .args([
                    "--root",
                    &self.0.join("state").to_string_lossy(),
                    "delete",
                    "--force",
                    id,
                ])
                .output();
        }
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for id in ["h1", "h2", "h3"] {
                let parent = format!("phantom-oci-hooks-test-{}-{id}", std::process::id());
                let _ = std::fs::remove_dir(entry.path().join(parent));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_hook_runs_once_in_order_with_the_state_on_stdin() {
    if !is_root() {
        println!("skipped: needs root (namespaces, cgroups)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("phantom-oci-hooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let _cleanup = Cleanup(dir.clone());
    if !rootfs(&dir.join("rootfs")) {
        println!("skipped: no static /bin/busybox to build a root filesystem from");
        return;
    }
    let out = dir.join("out");
    let o = out.display();
    // Host-side hooks append to out/log and keep their stdin; container-side ones
    // (startContainer) write where the user's process can read it.
    let host_hook = |name: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {o}/{name}.json; echo {name} $(readlink /proc/self/ns/mnt) >> {o}/log")],
        })
    };
    let hooks = serde_json::json!({
        "createRuntime": [host_hook("createRuntime")],
        "createContainer": [host_hook("createContainer")],
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/start.json; echo started > /tmp/started"]}],
        "poststart": [host_hook("poststart")],
        "poststop": [host_hook("poststop")]
    });
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        config(
            &dir,
            "h1",
            hooks,
            &[
                "sh",
                "-c",
                "cat /tmp/started; grep -o '\"status\":\"created\"' /tmp/start.json; sleep 300",
            ],
        )
        .to_string(),
    )
    .unwrap();
    let root = dir.join("state");
    let log = dir.join("h1.log");
    let (ok, msg) = oci(
        &root,
        &["create", "--bundle", &bundle.to_string_lossy(), "h1"],
        &log,
    );
    assert!(ok, "create: {msg}");
    let state: serde_json::Value = serde_json::from_slice(
        &Command::new(binary())
            .arg("--root")
            .arg(&root)
            .args(["state", "h1"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let pid = state["pid"].as_i64().unwrap();
    let (ok, msg) = oci(&root, &["start", "h1"], &dir.join("start.log"));
    assert!(ok, "start: {msg}");
    // The user's process saw what startContainer wrote, in its own /tmp.
    for _ in 0..200 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("\"status\":\"created\"")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(seen.contains("started"), "{seen}");
    assert!(
        seen.contains("\"status\":\"created\""),
        "startContainer's state: {seen}"
    );
    let (ok, msg) = oci(&root, &["delete", "--force", "h1"], &dir.join("delete.log"));
    assert!(ok, "delete: {msg}");

    let lines: Vec<String> = std::fs::read_to_string(out.join("log"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        ["createRuntime", "createContainer", "poststart", "poststop"],
        "{lines:?}"
    );
    // createRuntime runs in the runtime's mount namespace, createContainer in the
    // container's.
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(lines[0].ends_with(&host_mnt), "{lines:?}");
    assert!(!lines[1].ends_with(&host_mnt), "{lines:?}");
    for (name, status) in [
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let s: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(s["id"], "h1", "{name}: {s}");
        assert_eq!(s["status"], status, "{name}: {s}");
        assert_eq!(s["annotations"]["test"], "hooks", "{name}: {s}");
        if status != "stopped" {
            assert_eq!(s["pid"].as_i64(), Some(pid), "{name}: {s}");
        }
    }
}

#[test]
fn a_failing_create_runtime_hook_fails_create_and_leaves_nothing() {
    if !is_root() {
        println!("skipped: needs root (namespaces, cgroups)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("phantom-oci-hooks-fail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup(dir.clone());
    if !rootfs(&dir.join("rootfs")) {
        println!("skipped: no static /bin/busybox to build a root filesystem from");
        return;
    }
    let hooks = serde_json::json!({
        "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no-thanks >&2; exit 7"]}]
    });
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        config(&dir, "h2", hooks, &["true"]).to_string(),
    )
    .unwrap();
    let root = dir.join("state");
    let (ok, msg) = oci(
        &root,
        &["create", "--bundle", &bundle.to_string_lossy(), "h2"],
        &dir.join("h2.log"),
    );
    assert!(!ok, "create succeeded: {msg}");
    assert!(
        msg.contains("hooks.createRuntime[0]") && msg.contains("no-thanks"),
        "{msg}"
    );
    assert!(!root.join("h2").exists(), "state left behind");
    let cgroup_left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            e.path().join(format!(
                "phantom-oci-hooks-test-{}-h2/c",
                std::process::id()
            ))
        })
        .filter(|p| p.exists())
        .collect();
    assert!(cgroup_left.is_empty(), "{cgroup_left:?}");
}

#[test]
fn a_create_killed_half_way_leaves_no_init_and_delete_removes_its_cgroup() {
    if !is_root() {
        println!("skipped: needs root (namespaces, cgroups)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("phantom-oci-hooks-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup(dir.clone());
    if !rootfs(&dir.join("rootfs")) {
        println!("skipped: no static /bin/busybox to build a root filesystem from");
        return;
    }
    // The createContainer hook runs in the init (which waits for it): it records
    // the state (the init's pid), then holds the init up.
    let mark = dir.join("hook-ran");
    let state_file = dir.join("hook-state.json");
    let hooks = serde_json::json!({
        "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", format!(
            "cat > {}; echo $$ > {}; exec sleep 3", state_file.display(), mark.display())]}]
    });
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        config(&dir, "h3", hooks, &["true"]).to_string(),
    )
    .unwrap();
    let root = dir.join("state");
    let mut create = Command::new(binary())
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", &bundle.to_string_lossy(), "h3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if mark.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(mark.exists(), "the hook never ran");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let init = state["pid"].as_i64().unwrap();
    // The hook outlives the killed create (it is not the container's): end it.
    struct KillHook(std::path::PathBuf);
    impl Drop for KillHook {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).output();
            }
        }
    }
    let _kill_hook = KillHook(mark.clone());
    let cgroup = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| {
            e.path().join(format!(
                "phantom-oci-hooks-test-{}-h3/c",
                std::process::id()
            ))
        })
        .find(|p| p.join("cgroup.procs").exists())
        .expect("the container's cgroup exists while create runs");
    let alive = || {
        std::fs::read_to_string(format!("/proc/{init}/stat")).is_ok_and(|st| {
            !st.rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'))
        })
    };
    assert!(alive(), "the init is running its hook");
    create.kill().unwrap();
    create.wait().unwrap();
    // The init dies with its create (parent-death signal) instead of going on to
    // wait for a start that will never come.
    let mut gone = false;
    for _ in 0..100 {
        if !alive() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(gone, "the init {init} outlived its create");
    // The state create recorded first lets delete remove the cgroup.
    let (ok, msg) = oci(&root, &["delete", "--force", "h3"], &dir.join("delete.log"));
    assert!(ok, "delete: {msg}");
    assert!(!cgroup.exists(), "cgroup left behind: {}", cgroup.display());
    assert!(!root.join("h3").exists(), "state left behind");
}
