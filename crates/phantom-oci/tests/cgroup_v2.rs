//! The cgroup v2 code paths (device rules as an eBPF program, cgroup.freeze, the
//! container's cgroup directory bound at /sys/fs/cgroup), on a hybrid host too:
//! `PHANTOM_OCI_CGROUP=v2` makes phantom-oci use the v2 hierarchy only. Root only,
//! no containerd.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{binary, is_root, rootfs};

fn v2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4).map(PathBuf::from))
}

fn oci(root: &Path, args: &[&str], log: &Path) -> (bool, String) {
    let file = std::fs::File::create(log).unwrap();
    let status = Command::new(binary())
        .env("PHANTOM_OCI_CGROUP", "v2")
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

struct Cleanup(PathBuf, PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(binary())
            .args([
                "--root",
                &self.0.join("state").to_string_lossy(),
                "delete",
                "--force",
                "v2",
            ])
            .output();
        let _ = std::fs::remove_dir(&self.1);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn v2_device_rules_freeze_and_cgroup_mount_work() {
    let Some(v2) = v2_root() else {
        println!("skipped: no cgroup v2 hierarchy");
        return;
    };
    if !is_root() {
        println!("skipped: needs root (namespaces, cgroups, bpf)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("phantom-oci-v2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let parent = format!("phantom-oci-v2-test-{}", std::process::id());
    let _cleanup = Cleanup(dir.clone(), v2.join(&parent));
    if !rootfs(&dir.join("rootfs")) {
        println!("skipped: no static /bin/busybox to build a root filesystem from");
        return;
    }
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.2.0",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sleep", "300"], "cwd": "/",
                    "env": ["PATH=/bin"],
                    "capabilities": {"bounding": ["CAP_MKNOD"], "effective": ["CAP_MKNOD"], "permitted": ["CAP_MKNOD"]}},
        "root": {"path": dir.join("rootfs")},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "nodev", "noexec"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
            "cgroupsPath": format!("/{parent}/v2"),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]}
        }
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    let root = dir.join("state");
    let (ok, log) = oci(
        &root,
        &["create", "--bundle", &bundle.to_string_lossy(), "v2"],
        &dir.join("create.log"),
    );
    assert!(ok, "create: {log}");
    let (ok, log) = oci(&root, &["start", "v2"], &dir.join("start.log"));
    assert!(ok, "start: {log}");
    let state: serde_json::Value = serde_json::from_slice(
        &Command::new(binary())
            .arg("--root")
            .arg(&root)
            .args(["state", "v2"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let pid = state["pid"].as_i64().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups.lines().any(|l| l == format!("0::/{parent}/v2")),
        "{cgroups}"
    );

    // Device rules: the default devices work, a disk can be made (mknod is
    // allowed for every node, as runc allows it) but not opened.
    let process = serde_json::json!({
        "user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
        "capabilities": {"bounding": ["CAP_MKNOD"], "effective": ["CAP_MKNOD"], "permitted": ["CAP_MKNOD"]},
        "args": ["sh", "-c", "echo x > /dev/null && echo null-ok; head -c 2 /dev/zero | wc -c; \
                 mknod /tmp/disk b 8 0 && echo made; head -c 1 /tmp/disk > /dev/null || echo disk-denied; \
                 ls /sys/fs/cgroup/cgroup.procs"]
    });
    std::fs::write(dir.join("process.json"), process.to_string()).unwrap();
    let out = Command::new(binary())
        .arg("--root")
        .arg(&root)
        .args([
            "exec",
            "--process",
            &dir.join("process.json").to_string_lossy(),
            "v2",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        got.contains("null-ok") && got.contains("2\n"),
        "{got} {err}"
    );
    assert!(
        got.contains("made") && got.contains("disk-denied"),
        "{got} {err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(
        got.contains("/sys/fs/cgroup/cgroup.procs"),
        "the container's cgroup is not mounted: {got} {err}"
    );

    // pause / resume through cgroup.freeze.
    let (ok, log) = oci(&root, &["pause", "v2"], &dir.join("pause.log"));
    assert!(ok, "pause: {log}");
    let events = std::fs::read_to_string(v2.join(&parent).join("v2/cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let state: serde_json::Value = serde_json::from_slice(
        &Command::new(binary())
            .arg("--root")
            .arg(&root)
            .args(["state", "v2"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(state["status"], "paused");
    let (ok, log) = oci(&root, &["resume", "v2"], &dir.join("resume.log"));
    assert!(ok, "resume: {log}");
    let (ok, log) = oci(&root, &["delete", "--force", "v2"], &dir.join("delete.log"));
    assert!(ok, "delete: {log}");
    assert!(!v2.join(&parent).join("v2").exists(), "cgroup left behind");
}
