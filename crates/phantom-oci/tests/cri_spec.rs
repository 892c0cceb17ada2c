//! A pod as containerd's CRI plugin writes it, run by phantom-oci directly (no
//! containerd needed, only root): a pause container with new namespaces, then an
//! application container whose config.json has what the CRI sets for an ordinary
//! pod — ipc, uts and network namespaces joined by path, file binds (/etc/hosts,
//! /etc/hostname, /etc/resolv.conf, /dev/termination-log), /dev/shm bound from the
//! sandbox, a read-only service-account volume, a cgroup mount, device rules that
//! deny everything, zero huge-page limits, oomScoreAdj, masked and read-only
//! /proc paths, a cgroup path below a pod cgroup.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{binary, is_root, rootfs};

struct Scratch {
    dir: PathBuf,
    root: PathBuf,
    cgroup_parent: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for id in ["pause", "app"] {
            let _ = Command::new(binary())
                .args([
                    "--root",
                    &self.root.to_string_lossy(),
                    "delete",
                    "--force",
                    id,
                ])
                .output();
        }
        // The pod cgroup and its parent, as the kubelet would remove them.
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let pod = entry
                .path()
                .join(self.cgroup_parent.trim_start_matches('/'));
            let _ = std::fs::remove_dir(&pod);
            if let Some(parent) = pod.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn oci(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `create`: the init it leaves behind keeps its stdio, so they go to a file
/// (not a pipe `output()` would wait on until the container ends).
fn oci_create(root: &Path, bundle: &Path, id: &str, log: &Path) -> (bool, String) {
    let file = std::fs::File::create(log).unwrap();
    let status = Command::new(binary())
        .arg("--root")
        .arg(root)
        .args(["create", "--bundle"])
        .arg(bundle)
        .arg(id)
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

fn base_mounts() -> Vec<serde_json::Value> {
    serde_json::from_str(
        r#"[
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ]"#,
    )
    .unwrap()
}

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[allow(clippy::too_many_arguments)]
fn spec(
    args: &[&str],
    hostname: Option<&str>,
    mounts: Vec<serde_json::Value>,
    namespaces: serde_json::Value,
    cgroups_path: &str,
    resources: serde_json::Value,
    annotations: serde_json::Value,
) -> serde_json::Value {
    let mut s = serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [0, 1, 2, 3, 4, 6, 10, 11, 20, 26, 27]},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=pod-a"],
            "cwd": "/",
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "noNewPrivileges": false,
            "oomScoreAdj": 1000
        },
        "root": {"path": "../rootfs", "readonly": false},
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "resources": resources,
            "cgroupsPath": cgroups_path,
            "namespaces": namespaces,
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                            "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                              "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if let Some(h) = hostname {
        s["hostname"] = h.into();
    }
    s
}

#[test]
fn a_pod_as_the_cri_writes_it_runs_with_every_field_honoured() {
    if !is_root() {
        println!("skipped: needs root (namespaces, cgroups)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("phantom-oci-cri-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch {
        root: dir.join("state"),
        cgroup_parent: format!("/phantom-oci-cri-test/pod{}", std::process::id()),
        dir: dir.clone(),
    };
    if !rootfs(&dir.join("rootfs")) {
        println!("skipped: no static /bin/busybox to build a root filesystem from");
        return;
    }
    // What the kubelet and the CRI plugin prepare on the host.
    let host = dir.join("host");
    std::fs::create_dir_all(host.join("shm")).unwrap();
    std::fs::create_dir_all(host.join("serviceaccount")).unwrap();
    std::fs::write(host.join("hosts"), "127.0.0.1 localhost\n10.0.0.7 pod-a\n").unwrap();
    std::fs::write(host.join("hostname"), "pod-a\n").unwrap();
    std::fs::write(host.join("resolv.conf"), "nameserver 10.96.0.10\n").unwrap();
    std::fs::write(host.join("termination-log"), "").unwrap();
    std::fs::write(host.join("serviceaccount/token"), "secret-token").unwrap();
    let no_devices = serde_json::json!([{"allow": false, "access": "rwm"}]);

    // The pause container: new namespaces, the pod's hostname.
    let pause_bundle = dir.join("pause");
    std::fs::create_dir_all(&pause_bundle).unwrap();
    let mut pause_mounts = base_mounts();
    pause_mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
    let pause = spec(
        &["sleep", "300"],
        Some("pod-a"),
        pause_mounts,
        serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]),
        &format!("{}/pause", scratch.cgroup_parent),
        serde_json::json!({"devices": no_devices, "cpu": {"shares": 2}}),
        serde_json::json!({"io.kubernetes.cri.container-type": "sandbox"}),
    );
    std::fs::write(pause_bundle.join("config.json"), pause.to_string()).unwrap();
    let root = scratch.root.clone();
    let (created, log) = oci_create(&root, &pause_bundle, "pause", &dir.join("pause.log"));
    assert!(created, "create pause: {log}");
    let out = oci(&root, &["start", "pause"]);
    assert!(
        out.status.success(),
        "start pause: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value =
        serde_json::from_slice(&oci(&root, &["state", "pause"]).stdout).unwrap();
    assert_eq!(state["status"], "running", "{state}");
    let pause_pid = state["pid"].as_i64().unwrap();
    let ns = |n: &str| format!("/proc/{pause_pid}/ns/{n}");

    // The application container, joining the pause container's namespaces.
    let app_bundle = dir.join("app");
    std::fs::create_dir_all(&app_bundle).unwrap();
    let mut mounts = base_mounts();
    let bind = |dst: &str, src: PathBuf, mode: &str| {
        serde_json::json!({"destination": dst, "type": "bind", "source": src,
                           "options": ["rbind", "rprivate", mode]})
    };
    mounts.push(bind("/etc/hosts", host.join("hosts"), "rw"));
    mounts.push(bind(
        "/dev/termination-log",
        host.join("termination-log"),
        "rw",
    ));
    mounts.push(bind("/etc/hostname", host.join("hostname"), "rw"));
    mounts.push(bind("/etc/resolv.conf", host.join("resolv.conf"), "rw"));
    mounts.push(bind("/dev/shm", host.join("shm"), "rw"));
    mounts.push(bind(
        "/var/run/secrets/kubernetes.io/serviceaccount",
        host.join("serviceaccount"),
        "ro",
    ));
    let script = r#"
        echo "hostname=$(hostname)"
        echo "net=$(readlink /proc/self/ns/net)"
        echo "ipc=$(readlink /proc/self/ns/ipc)"
        echo "pid1=$(cat /proc/1/comm)"
        grep -q 10.0.0.7 /etc/hosts && echo hosts-ok
        grep -q 10.96.0.10 /etc/resolv.conf && echo resolv-ok
        echo x > /dev/null && echo null-ok
        echo "zero=$(head -c 3 /dev/zero | wc -c)"
        echo finished > /dev/termination-log
        echo shared > /dev/shm/from-app
        cat /var/run/secrets/kubernetes.io/serviceaccount/token && echo
        touch /var/run/secrets/kubernetes.io/serviceaccount/x 2>/dev/null && echo secrets-writable
        echo "limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
        echo "oom=$(cat /proc/self/oom_score_adj)"
        echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo proc-sys-writable
        head -c 1 /proc/kcore 2>/dev/null | wc -c | sed 's/^/kcore=/'
        echo done
    "#;
    let app = spec(
        &["sh", "-c", script],
        None,
        mounts,
        serde_json::json!([
            {"type": "pid"},
            {"type": "ipc", "path": ns("ipc")},
            {"type": "uts", "path": ns("uts")},
            {"type": "mount"},
            {"type": "network", "path": ns("net")}
        ]),
        &format!("{}/app", scratch.cgroup_parent),
        serde_json::json!({
            "devices": no_devices,
            "memory": {"limit": 134217728},
            "cpu": {"shares": 102, "quota": 50000, "period": 100000},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}, {"pageSize": "1GB", "limit": 0}]
        }),
        serde_json::json!({"io.kubernetes.cri.container-type": "container",
                           "io.kubernetes.cri.sandbox-id": "pause"}),
    );
    std::fs::write(app_bundle.join("config.json"), app.to_string()).unwrap();
    let out = oci(
        &root,
        &["run", "--bundle", &app_bundle.to_string_lossy(), "app"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "run app: {stdout} {stderr}");
    let want = |line: &str| {
        assert!(
            stdout.lines().any(|l| l == line),
            "want {line:?} in:\n{stdout}\n{stderr}"
        )
    };
    want("hostname=pod-a");
    let link = |n: &str| {
        std::fs::read_link(ns(n))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    want(&format!("net={}", link("net")));
    want(&format!("ipc={}", link("ipc")));
    want("pid1=sh"); // its own pid namespace
    want("hosts-ok");
    want("resolv-ok");
    want("null-ok");
    want("zero=3");
    want("secret-token");
    want("limit=134217728");
    want("oom=1000");
    want("kcore=0");
    want("done");
    assert!(!stdout.contains("secrets-writable"), "{stdout}");
    assert!(!stdout.contains("proc-sys-writable"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(host.join("termination-log")).unwrap(),
        "finished\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("shm/from-app")).unwrap(),
        "shared\n"
    );
    // run deleted the app container: no state, no cgroup.
    assert!(!root.join("app").exists());
    let app_cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            e.path()
                .join(scratch.cgroup_parent.trim_start_matches('/'))
                .join("app")
        })
        .filter(|p| p.exists())
        .collect();
    assert!(app_cgroups.is_empty(), "left: {app_cgroups:?}");

    let out = oci(&root, &["kill", "pause", "KILL"]);
    assert!(
        out.status.success(),
        "kill pause: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = oci(&root, &["delete", "--force", "pause"]);
    assert!(
        out.status.success(),
        "delete pause: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.join("pause").exists());
}
