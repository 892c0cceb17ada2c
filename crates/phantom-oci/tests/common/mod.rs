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
    // Copied into the root filesystem: it must not need a dynamic loader.
    if std::fs::read(busybox).map_or(true, |b| has_interpreter(&b)) {
        return false;
    }
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

/// Whether an ELF64 file asks for a program interpreter (PT_INTERP): a dynamic
/// executable, which would not run in a root filesystem without its libraries.
pub fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..count).any(|i| {
        elf.get(phoff + i * size..phoff + i * size + 4)
            .is_none_or(|t| u32::from_le_bytes(t.try_into().unwrap()) == 3)
    })
}
