//! The container's cgroup: exactly the one `linux.cgroupsPath` names, in every
//! cgroup v1 hierarchy mounted on the host (and the v2 one beside them, in hybrid
//! mode), or in the v2 hierarchy alone. containerd reads its stats and OOM events
//! there, so the path is taken as given, relative to each hierarchy's root.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::OciError;

/// One mounted hierarchy: where it is mounted and whether it is v2.
#[derive(Debug, Clone)]
struct Hierarchy {
    mount: PathBuf,
    /// The controllers of a v1 hierarchy (`memory`, `cpu,cpuacct`, `name=systemd`).
    controllers: Vec<String>,
    v2: bool,
}

fn hierarchies() -> Vec<Hierarchy> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if fields.len() < 5 || right.len() < 3 {
            continue;
        }
        let mount = PathBuf::from(fields[4]);
        match right[0] {
            "cgroup2" => out.push(Hierarchy {
                mount,
                controllers: Vec::new(),
                v2: true,
            }),
            "cgroup" => out.push(Hierarchy {
                mount,
                controllers: right[2]
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent"))
                    .map(str::to_string)
                    .collect(),
                v2: false,
            }),
            _ => {}
        }
    }
    out
}

/// The container's cgroup directories.
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// (controllers, directory) per v1 hierarchy.
    v1: Vec<(Vec<String>, PathBuf)>,
    /// The v2 directory: the only one on a v2 host, a member-only one in hybrid mode.
    v2: Option<PathBuf>,
    /// Whether controllers live in v1 (false: pure v2).
    legacy: bool,
    /// Where the v2 hierarchy is mounted.
    v2_root: Option<PathBuf>,
    /// `linux.cgroupsPath` as given (for the in-container cgroup mount).
    pub path: String,
}

/// The cgroup path to use: `linux.cgroupsPath`, or `/phantom-oci/<id>` when absent.
/// The systemd form (`slice:prefix:name`) is refused: only cgroupfs paths are
/// supported.
pub fn path_for(cgroups_path: Option<&Path>, id: &str) -> Result<String, OciError> {
    // An empty path (`ctr run --cgroup ""`) or the root itself would put the
    // container's limits, device rules and cleanup on a hierarchy's root cgroup:
    // it gets a cgroup of its own instead.
    let p = match cgroups_path.map(|p| p.to_string_lossy().into_owned()) {
        Some(p) if !p.trim_matches('/').is_empty() => p,
        _ => format!("/phantom-oci/{id}"),
    };
    if p.contains(':') {
        return Err(OciError::refused(
            "linux.cgroupsPath",
            &format!(
                "{p:?} is a systemd slice path; use the cgroupfs driver (SystemdCgroup = false)"
            ),
        ));
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        return Err(OciError::refused(
            "linux.cgroupsPath",
            &format!("{p:?} contains `..`"),
        ));
    }
    Ok(p)
}

/// `PHANTOM_OCI_CGROUP`: `v2` puts containers in the cgroup v2 hierarchy only, on a
/// hybrid host too (where runc uses the v1 controllers); unset or `auto`: the host's
/// layout. Read by `create`; every later command uses what `create` recorded.
pub fn v2_only_from_env() -> Result<bool, OciError> {
    match std::env::var("PHANTOM_OCI_CGROUP").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(false),
        Ok("v2") => Ok(true),
        Ok(other) => Err(OciError(format!(
            "PHANTOM_OCI_CGROUP={other:?}: use v2 or auto"
        ))),
    }
}

impl Cgroup {
    /// The directories of `path` (not created); `v2_only`: ignore v1 hierarchies.
    pub fn at(path: &str, v2_only: bool) -> Cgroup {
        let rel = path.trim_start_matches('/');
        let mut all = hierarchies();
        if v2_only {
            all.retain(|h| h.v2);
        }
        let legacy = all.iter().any(|h| !h.v2);
        let mut v1 = Vec::new();
        let mut v2 = None;
        let mut v2_root = None;
        for h in all {
            if h.v2 {
                v2 = Some(h.mount.join(rel));
                v2_root = Some(h.mount.clone());
            } else {
                v1.push((h.controllers, h.mount.join(rel)));
            }
        }
        Cgroup {
            v1,
            v2,
            legacy,
            v2_root,
            path: path.to_string(),
        }
    }

    /// Every directory of this cgroup.
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.v1.iter().map(|(_, d)| d).chain(self.v2.iter())
    }

    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
            .map(|(_, d)| d.as_path())
    }

    /// The v1 directories by hierarchy mount name relative to the host's cgroup root
    /// (e.g. `memory`, `cpu,cpuacct`), for the container's /sys/fs/cgroup.
    pub fn v1_dirs(&self) -> Vec<(String, PathBuf)> {
        self.v1
            .iter()
            .filter_map(|(_, d)| {
                let rel = d.strip_prefix("/sys/fs/cgroup").ok()?;
                let name = rel
                    .components()
                    .next()?
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned();
                Some((name, d.clone()))
            })
            .collect()
    }

    /// Whether the host's controllers are in v1 hierarchies.
    pub fn legacy(&self) -> bool {
        self.legacy
    }

    /// The v2 directory, if any.
    pub fn v2_dir(&self) -> Option<&Path> {
        self.v2.as_deref()
    }

    /// Create every directory (and missing parents), then apply `resources`.
    pub fn create(&self, resources: Option<&LinuxResources>) -> Result<(), OciError> {
        for dir in self.dirs() {
            std::fs::create_dir_all(dir).map_err(|e| OciError::io("create cgroup", dir, e))?;
        }
        // cgroup v2: a controller's files exist in a cgroup only when its parent
        // enables it in cgroup.subtree_control; enable every available one on the
        // way down (as runc does). Best effort per controller: one the parent
        // cannot delegate is missing below, and a limit that needs it fails then
        // with the file's name.
        if !self.legacy {
            if let (Some(leaf), Some(root)) = (self.v2.as_deref(), self.v2_root.as_deref()) {
                let mut chain: Vec<&Path> = leaf
                    .ancestors()
                    .skip(1)
                    .take_while(|d| d.starts_with(root))
                    .collect();
                chain.reverse();
                for dir in chain {
                    let available =
                        std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                    for c in available.split_whitespace() {
                        let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
                    }
                }
            }
        }
        // A new cpuset cgroup starts with no cpus and no mems, and no task may join
        // it: copy them down from the nearest ancestor that has them.
        if let Some(dir) = self.v1_dir("cpuset") {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                inherit_down(dir, file)?;
            }
        }
        if let Some(r) = resources {
            self.apply_with(r, true)?;
        }
        Ok(())
    }

    /// Write `value` to `file` in the directory of `controller` (v1) or the v2 one.
    fn write(&self, controller: &str, file: &str, value: &str) -> Result<(), OciError> {
        let dir = if self.legacy {
            self.v1_dir(controller)
        } else {
            self.v2.as_deref()
        };
        let Some(dir) = dir else {
            return Err(OciError(format!(
                "linux.resources: the {controller} cgroup controller is not mounted on this host; remove the {controller} limits"
            )));
        };
        let path = dir.join(file);
        std::fs::write(&path, value).map_err(|e| OciError::io("write", &path, e))
    }

    /// Apply `resources` to a running container (`update`).
    pub fn apply(&self, r: &LinuxResources) -> Result<(), OciError> {
        self.apply_with(r, false)
    }

    fn apply_with(&self, r: &LinuxResources, creating: bool) -> Result<(), OciError> {
        refuse_unsupported_resources(r)?;
        if let Some(m) = r.memory() {
            if let Some(limit) = m.limit() {
                if self.legacy {
                    self.write("memory", "memory.limit_in_bytes", &limit.to_string())?;
                } else {
                    self.write("memory", "memory.max", &max_or(limit))?;
                }
            }
            if let Some(res) = m.reservation() {
                if self.legacy {
                    self.write("memory", "memory.soft_limit_in_bytes", &res.to_string())?;
                } else {
                    self.write("memory", "memory.low", &max_or(res))?;
                }
            }
            if let Some(swap) = m.swap() {
                if self.legacy {
                    let dir = self.v1_dir("memory");
                    // Without swap accounting the file does not exist; a swap limit
                    // equal to the memory limit (no swap at all) is then what the
                    // host gives anyway.
                    if dir.is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists()) {
                        self.write("memory", "memory.memsw.limit_in_bytes", &swap.to_string())?;
                    } else if Some(swap) != m.limit() && swap != -1 && swap != 0 {
                        return Err(OciError::refused(
                            "linux.resources.memory.swap",
                            "this host has no swap accounting (memory.memsw.*); remove the swap limit",
                        ));
                    }
                } else {
                    // v2 counts swap alone; OCI's swap is memory + swap.
                    let v = match (swap, m.limit()) {
                        (-1, _) => "max".to_string(),
                        (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                        (s, _) => s.to_string(),
                    };
                    self.write("memory", "memory.swap.max", &v)?;
                }
            }
            if m.swappiness().is_some() && self.legacy {
                self.write(
                    "memory",
                    "memory.swappiness",
                    &m.swappiness().unwrap_or(60).to_string(),
                )?;
            }
            if m.disable_oom_killer() == Some(true) {
                return Err(OciError::refused(
                    "linux.resources.memory.disableOOMKiller",
                    "disabling the OOM killer is not supported; remove it",
                ));
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() <= 0 {
                "max".to_string()
            } else {
                p.limit().to_string()
            };
            self.write("pids", "pids.max", &v)?;
        }
        if let Some(c) = r.cpu() {
            if self.legacy {
                if let Some(s) = c.shares() {
                    self.write("cpu", "cpu.shares", &s.to_string())?;
                }
                if let Some(p) = c.period() {
                    self.write("cpu", "cpu.cfs_period_us", &p.to_string())?;
                }
                if let Some(q) = c.quota() {
                    self.write("cpu", "cpu.cfs_quota_us", &q.to_string())?;
                }
            } else {
                if let Some(s) = c.shares() {
                    // The conversion runc and crun use: [2, 262144] → [1, 10000].
                    let w = 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142;
                    self.write("cpu", "cpu.weight", &w.to_string())?;
                }
                if c.quota().is_some() || c.period().is_some() {
                    let q = c
                        .quota()
                        .filter(|q| *q > 0)
                        .map_or("max".to_string(), |q| q.to_string());
                    let p = c.period().unwrap_or(100_000);
                    self.write("cpu", "cpu.max", &format!("{q} {p}"))?;
                }
            }
            if let Some(cpus) = c.cpus().as_ref().filter(|s| !s.is_empty()) {
                self.write("cpuset", "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = c.mems().as_ref().filter(|s| !s.is_empty()) {
                self.write("cpuset", "cpuset.mems", mems)?;
            }
            if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
                return Err(OciError::refused(
                    "linux.resources.cpu.realtimeRuntime",
                    "real-time CPU limits are not supported; remove them",
                ));
            }
            if c.idle().is_some_and(|i| i != 0) || c.burst().is_some_and(|b| b != 0) {
                return Err(OciError::refused(
                    "linux.resources.cpu.idle",
                    "cpu idle and burst are not supported; remove them",
                ));
            }
        }
        // Huge pages: the kubelet sends a limit (often 0) for every page size the
        // node has. Written where the hugetlb controller is; without it, a zero
        // limit is what the node gives anyway (runc skips it too) and a non-zero
        // one is refused.
        for h in r.hugepage_limits().iter().flatten() {
            let size = h.page_size();
            if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(OciError::refused(
                    "linux.resources.hugepageLimits.pageSize",
                    &format!("{size:?} is not a page size such as 2MB"),
                ));
            }
            let (dir, file) = if self.legacy {
                (
                    self.v1_dir("hugetlb").map(Path::to_path_buf),
                    format!("hugetlb.{size}.limit_in_bytes"),
                )
            } else {
                (self.v2.clone(), format!("hugetlb.{size}.max"))
            };
            match dir.map(|d| d.join(&file)).filter(|p| p.exists()) {
                Some(path) => std::fs::write(&path, h.limit().to_string())
                    .map_err(|e| OciError::io("write", &path, e))?,
                None if h.limit() == 0 => {}
                None => {
                    return Err(OciError::refused(
                        "linux.resources.hugepageLimits",
                        &format!("no hugetlb cgroup controller for {size} pages on this host; remove the limit"),
                    ))
                }
            }
        }
        // Raw cgroup v2 files (the kubelet sets memory.oom.group this way).
        for (key, value) in r.unified().iter().flatten() {
            let valid = key.split_once('.').is_some_and(|(c, f)| {
                !c.is_empty() && !f.is_empty() && !key.contains('/') && !key.contains("..")
            });
            if !valid {
                return Err(OciError::refused(
                    "linux.resources.unified",
                    &format!("{key:?} is not a cgroup v2 file name such as memory.oom.group"),
                ));
            }
            if self.legacy {
                return Err(OciError::refused(
                    "linux.resources.unified",
                    &format!(
                        "{key} is a cgroup v2 file, but this host's controllers are in cgroup v1"
                    ),
                ));
            }
            let dir = self.v2.as_deref().expect("a v2 host has a v2 directory");
            let path = dir.join(key);
            std::fs::write(&path, value).map_err(|e| OciError::io("write", &path, e))?;
        }
        if let Some(spec_rules) = r.devices() {
            // The devices every container gets (§ Default Devices) stay usable
            // whatever the rules deny: appended after them, as runc does (the CRI
            // sends only "deny everything").
            let mut devices = spec_rules.clone();
            if creating {
                devices.extend(super::devices::default_allowed());
            }
            if self.legacy {
                let Some(dir) = self.v1_dir("devices") else {
                    return Err(OciError::refused(
                        "linux.resources.devices",
                        "the devices cgroup controller is not mounted on this host; remove the device rules",
                    ));
                };
                for rule in &devices {
                    let file = if rule.allow() {
                        "devices.allow"
                    } else {
                        "devices.deny"
                    };
                    let path = dir.join(file);
                    std::fs::write(&path, device_rule(rule))
                        .map_err(|e| OciError::io("write", &path, e))?;
                }
            } else if !spec_rules.is_empty() {
                if !creating {
                    return Err(OciError::refused(
                        "linux.resources.devices",
                        "changing the device rules of a running container is not supported on cgroup v2",
                    ));
                }
                let dir = self.v2.as_deref().expect("a v2 host has a v2 directory");
                phantom_linux::bpfdev::attach_device_filter(
                    dir,
                    &super::devices::program(&devices),
                )?;
            }
        }
        Ok(())
    }

    /// Put process `pid` into every directory of this cgroup.
    pub fn add(&self, pid: i32) -> Result<(), OciError> {
        for dir in self.dirs() {
            let path = dir.join("cgroup.procs");
            std::fs::write(&path, pid.to_string()).map_err(|e| OciError::io("write", &path, e))?;
        }
        Ok(())
    }

    /// The processes in this cgroup (the pids or memory v1 hierarchy, else v2).
    pub fn pids(&self) -> Vec<i32> {
        let dir = if self.legacy {
            self.v1_dir("pids")
                .or_else(|| self.v1_dir("memory"))
                .or_else(|| self.v1.first().map(|(_, d)| d.as_path()))
        } else {
            self.v2.as_deref()
        };
        let Some(dir) = dir else { return Vec::new() };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Freeze (`true`) or thaw the cgroup, waiting until the kernel says it is done.
    pub fn freeze(&self, frozen: bool) -> Result<(), OciError> {
        if self.legacy {
            let Some(dir) = self.v1_dir("freezer") else {
                return Err(OciError(
                    "pause: the freezer cgroup controller is not mounted on this host".into(),
                ));
            };
            let path = dir.join("freezer.state");
            let want = if frozen { "FROZEN" } else { "THAWED" };
            for _ in 0..1000 {
                std::fs::write(&path, want).map_err(|e| OciError::io("write", &path, e))?;
                let now = std::fs::read_to_string(&path).unwrap_or_default();
                if now.trim() == want {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(OciError(format!(
                "{}: did not reach {want}",
                path.display()
            )))
        } else {
            let dir = self
                .v2
                .as_deref()
                .ok_or_else(|| OciError("no cgroup v2 directory".into()))?;
            let path = dir.join("cgroup.freeze");
            std::fs::write(&path, if frozen { "1" } else { "0" })
                .map_err(|e| OciError::io("write", &path, e))?;
            let events = dir.join("cgroup.events");
            let want = if frozen { "frozen 1" } else { "frozen 0" };
            for _ in 0..1000 {
                if std::fs::read_to_string(&events)
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l == want)
                {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(OciError(format!(
                "{}: did not reach {want}",
                events.display()
            )))
        }
    }

    /// Whether the cgroup is frozen.
    pub fn frozen(&self) -> bool {
        if self.legacy {
            self.v1_dir("freezer").is_some_and(|d| {
                std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            })
        } else {
            self.v2.as_deref().is_some_and(|d| {
                std::fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
            })
        }
    }

    /// Remove every directory (the leaf only: parents such as containerd's
    /// namespace directory are shared). Retries briefly while the last processes
    /// leave. Returns the directories that could not be removed.
    pub fn remove(&self) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for dir in self.dirs() {
            let mut gone = false;
            for _ in 0..200 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => {
                        gone = true;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        gone = true;
                        break;
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
            if !gone {
                left.push(dir.clone());
            }
        }
        left
    }
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// `devices.allow`/`devices.deny` syntax: `TYPE MAJOR:MINOR ACCESS`.
fn device_rule(rule: &oci_spec::runtime::LinuxDeviceCgroup) -> String {
    let typ = match rule.typ() {
        Some(oci_spec::runtime::LinuxDeviceType::C)
        | Some(oci_spec::runtime::LinuxDeviceType::U) => "c",
        Some(oci_spec::runtime::LinuxDeviceType::B) => "b",
        Some(oci_spec::runtime::LinuxDeviceType::P) => "p",
        _ => "a",
    };
    let num = |n: Option<i64>| {
        n.filter(|n| *n >= 0)
            .map_or("*".to_string(), |n| n.to_string())
    };
    let access = rule.access().clone().unwrap_or_else(|| "rwm".into());
    format!("{typ} {}:{} {access}", num(rule.major()), num(rule.minor()))
}

fn inherit_down(dir: &Path, file: &str) -> Result<(), OciError> {
    // Walk from the top of the hierarchy down, filling every empty value.
    let mut chain: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| d.join(file).exists())
        .collect();
    chain.reverse();
    let mut value = String::new();
    for d in chain {
        let path = d.join(file);
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.trim().is_empty() {
            std::fs::write(&path, &value).map_err(|e| OciError::io("write", &path, e))?;
        } else {
            value = now.trim().to_string();
        }
    }
    Ok(())
}

fn refuse_unsupported_resources(r: &LinuxResources) -> Result<(), OciError> {
    if let Some(b) = r.block_io() {
        if b.weight().is_some()
            || b.leaf_weight().is_some()
            || [
                b.weight_device().as_ref().map(Vec::len),
                b.throttle_read_bps_device().as_ref().map(Vec::len),
                b.throttle_write_bps_device().as_ref().map(Vec::len),
                b.throttle_read_iops_device().as_ref().map(Vec::len),
                b.throttle_write_iops_device().as_ref().map(Vec::len),
            ]
            .iter()
            .any(|n| n.unwrap_or(0) > 0)
        {
            return Err(OciError::refused(
                "linux.resources.blockIO",
                "block I/O limits are not supported; remove them",
            ));
        }
    }
    if r.network().is_some() {
        return Err(OciError::refused(
            "linux.resources.network",
            "net_cls/net_prio are not supported; remove them",
        ));
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(OciError::refused(
            "linux.resources.rdma",
            "rdma limits are not supported; remove them",
        ));
    }
    if let Some(m) = r.memory() {
        if m.kernel().is_some() || m.kernel_tcp().is_some() {
            return Err(OciError::refused(
                "linux.resources.memory.kernel",
                "kernel memory limits are deprecated and not supported; remove them",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_root_cgroup_path_never_names_a_hierarchys_root() {
        for p in ["", "/", "//"] {
            assert_eq!(
                path_for(Some(Path::new(p)), "c1").unwrap(),
                "/phantom-oci/c1",
                "{p:?}"
            );
        }
        assert_eq!(path_for(None, "c1").unwrap(), "/phantom-oci/c1");
        assert_eq!(
            path_for(Some(Path::new("/k/pod1/c1")), "c1").unwrap(),
            "/k/pod1/c1"
        );
        assert!(path_for(Some(Path::new("/k/../../etc")), "c1").is_err());
        assert!(path_for(Some(Path::new("system.slice:cri:c1")), "c1").is_err());
    }
}
