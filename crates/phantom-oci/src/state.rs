//! The state directory: `--root/ID/state.json` (what phantom-oci needs to find a
//! container again) and `--root/ID/start.sock` (where the created init waits).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use phantom_engine::oci::{self, Cgroup, OciError};
use serde::{Deserialize, Serialize};

/// What phantom-oci records about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub pid: i32,
    /// The init's start time (clock ticks after boot): a reused pid is not it.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub cgroup_path: String,
    /// The cgroup is in the v2 hierarchy only (`PHANTOM_OCI_CGROUP=v2` at create).
    #[serde(default)]
    pub cgroup_v2_only: bool,
    /// `start` has released the init.
    pub started: bool,
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

impl State {
    /// Make `root/id` (0700), refusing an id that exists.
    pub fn create_dir(root: &Path, id: &str) -> Result<PathBuf, OciError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(|e| OciError(format!("--root {}: {e}", root.display())))?;
        let dir = root.join(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(OciError(format!(
                "container {id} already exists in {}: delete it first",
                root.display()
            ))),
            Err(e) => Err(OciError(format!("{}: {e}", dir.display()))),
        }
    }

    pub fn load(root: &Path, id: &str) -> Result<State, OciError> {
        if id.contains('/') || id.starts_with('.') {
            return Err(OciError(format!("invalid container id {id:?}")));
        }
        let path = root.join(id).join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                OciError(format!("container {id} does not exist"))
            } else {
                OciError(format!("{}: {e}", path.display()))
            }
        })?;
        serde_json::from_str(&text).map_err(|e| OciError(format!("{}: {e}", path.display())))
    }

    pub fn save(&self, root: &Path) -> Result<(), OciError> {
        let dir = root.join(&self.id);
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_string(self).expect("json");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, dir.join("state.json")))
            .map_err(|e| OciError(format!("{}: {e}", dir.display())))
    }

    pub fn list(root: &Path) -> Vec<State> {
        let mut out: Vec<State> = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| State::load(root, &e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The container's cgroup, as `create` made it.
    pub fn cgroup(&self) -> Cgroup {
        Cgroup::at(&self.cgroup_path, self.cgroup_v2_only)
    }

    pub fn start_socket(&self, root: &Path) -> PathBuf {
        root.join(&self.id).join("start.sock")
    }

    /// creating | created | running | paused | stopped.
    pub fn status(&self) -> &'static str {
        if self.pid == 0 {
            "creating"
        } else if !oci::alive(self.pid, self.start_time) {
            "stopped"
        } else if !self.started {
            "created"
        } else if self.cgroup().frozen() {
            "paused"
        } else {
            "running"
        }
    }

    /// The runtime-spec state JSON.
    pub fn oci_state(&self, _root: &Path) -> serde_json::Value {
        let status = self.status();
        serde_json::json!({
            "ociVersion": "1.2.0",
            "id": self.id,
            "status": status,
            "pid": if status == "stopped" { 0 } else { self.pid },
            "bundle": self.bundle,
            "rootfs": self.bundle.join("rootfs"),
            "created": self.created,
            "annotations": self.annotations,
            "owner": "",
        })
    }
}

/// `phantom-oci features`: the runtime-spec "features" document.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": [],
        "mountOptions": [
            "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
            "dirsync", "remount", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime",
            "relatime", "norelatime", "strictatime", "nostrictatime", "bind", "rbind",
            "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable",
            "runbindable", "defaults"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": [
                "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
                "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
                "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
                "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
                "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
                "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
                "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
                "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
                "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"
            ],
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ],
                "archs": [if cfg!(target_arch = "aarch64") { "SCMP_ARCH_AARCH64" } else { "SCMP_ARCH_X86_64" }],
                "knownFlags": [],
                "supportedFlags": []
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {
            "run.phantom.runtime": "phantom-oci"
        }
    })
}

/// Now as RFC 3339 UTC with nanoseconds (what runc writes).
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    phantom_state::rfc3339(now.as_secs() as i64, Some(now.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_the_shape_containerd_parses() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-12-06T18:33:33.000000000Z".len(), "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
