//! Helpers of the tests that run phantom-oci directly (no containerd).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_phantom-oci"))
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

/// A root filesystem from the host's static busybox.
pub fn rootfs(dir: &Path) -> bool {
    let busybox = Path::new("/bin/busybox");
    let Ok(list) = Command::new(busybox).arg("--list").output() else {
        return false;
    };
    if !list.status.success() {
        return false;
    }
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "var/run/secrets/kubernetes.io/serviceaccount",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    true
}
