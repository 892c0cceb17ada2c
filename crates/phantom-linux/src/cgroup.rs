//! cgroup v1 and v2: one cgroup per sandbox with memory, pids and cpu limits.
//!
//! Hosts differ: a pure v2 host has every controller in the unified hierarchy; a
//! hybrid host (like Debian with systemd in legacy mode) has the controllers in v1
//! hierarchies and an empty v2 tree. [`Layout::detect`] finds, per controller, where
//! it is enabled, and [`SandboxCgroup`] creates `phantom/<id>` there.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The controllers phantom limits.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// v1 controllers that only count (CPU time, block I/O): a persistent sandbox joins
/// them too, so that `phantom monitor` can report what it used (on v2, the one
/// directory counts both already).
pub const ACCOUNTING: [&str; 2] = ["cpuacct", "blkio"];

/// Errors creating or using a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy has the {0} controller enabled")]
    NoController(&'static str),
    /// Names the directory the cgroup would go in, not the sandbox's own (one
    /// message for every sandbox, so that a warm run's warning equals a cold one's).
    #[error("cannot create a cgroup in {dir}: {1}", dir = .0.parent().unwrap_or(.0).display())]
    Create(PathBuf, #[source] std::io::Error),
    #[error("cannot write {1:?} to {0}: {2}")]
    Write(PathBuf, String, #[source] std::io::Error),
    #[error("no cgroup at {0} (the sandbox is gone, or was started without cgroups)")]
    NotFound(PathBuf),
}

/// Where a controller lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    V1(PathBuf),
    V2(PathBuf),
}

/// The cgroup hierarchies of this host.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Mount point of the unified (v2) hierarchy, if mounted.
    pub v2_mount: Option<PathBuf>,
    /// Controllers enabled in the v2 root (`cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// v1 hierarchies by controller name.
    pub v1_mounts: BTreeMap<String, PathBuf>,
}

impl Layout {
    /// [`Layout::detect`] once per process: the hierarchies do not move under a running
    /// engine, and reading /proc/self/mountinfo for every sandbox cost about 0.1 ms of
    /// its start. `phantom doctor` detects anew.
    pub fn cached() -> &'static Layout {
        static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
        LAYOUT.get_or_init(Layout::detect)
    }

    /// Read /proc/self/mountinfo and the v2 root's controller list.
    pub fn detect() -> Layout {
        let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
            return Layout::default();
        };
        // The controller list lives in the unified root, so find that mount first.
        let controllers = cgroup_mounts(&info)
            .find(|m| m.fstype == "cgroup2")
            .and_then(|m| {
                fs::read_to_string(Path::new(m.mount_point).join("cgroup.controllers")).ok()
            });
        Layout::from_mountinfo(&info, controllers.as_deref())
    }

    /// The layout described by a `/proc/self/mountinfo` text; `v2_controllers` is the
    /// text of the unified root's `cgroup.controllers` (`None` when it was not read).
    /// The first `cgroup2` mount is the unified hierarchy; a v1 controller mounted twice
    /// is taken from its last mount. Pure, for tests.
    pub fn from_mountinfo(mountinfo: &str, v2_controllers: Option<&str>) -> Layout {
        let mut layout = Layout::default();
        for mount in cgroup_mounts(mountinfo) {
            match mount.fstype {
                "cgroup2" if layout.v2_mount.is_none() => {
                    layout.v2_mount = Some(PathBuf::from(mount.mount_point))
                }
                "cgroup" => {
                    // Comounted controllers share one mount: `rw,cpu,cpuacct` at
                    // /sys/fs/cgroup/cpu,cpuacct holds `cpu`.
                    for opt in mount.super_options.split(',') {
                        if CONTROLLERS.contains(&opt) || ACCOUNTING.contains(&opt) {
                            layout
                                .v1_mounts
                                .insert(opt.to_string(), PathBuf::from(mount.mount_point));
                        }
                    }
                }
                _ => {}
            }
        }
        if layout.v2_mount.is_some() {
            if let Some(c) = v2_controllers {
                layout.v2_controllers = c.split_whitespace().map(str::to_string).collect();
            }
        }
        layout
    }

    /// Where `controller` can be used: v2 when the unified root offers it, else v1.
    pub fn hierarchy(&self, controller: &str) -> Option<Hierarchy> {
        if let Some(v2) = &self.v2_mount {
            if self.v2_controllers.iter().any(|c| c == controller) {
                return Some(Hierarchy::V2(v2.clone()));
            }
        }
        self.v1_mounts
            .get(controller)
            .map(|p| Hierarchy::V1(p.clone()))
    }

    /// "v1", "v2", "v1+v2" or "none", for the controllers phantom needs.
    pub fn describe(&self) -> &'static str {
        let (mut v1, mut v2) = (false, false);
        for c in CONTROLLERS {
            match self.hierarchy(c) {
                Some(Hierarchy::V1(_)) => v1 = true,
                Some(Hierarchy::V2(_)) => v2 = true,
                None => {}
            }
        }
        match (v1, v2) {
            (true, true) => "v1+v2",
            (true, false) => "v1",
            (false, true) => "v2",
            (false, false) => "none",
        }
    }
}

/// One line of mountinfo, the fields [`Layout`] needs.
struct MountLine<'a> {
    mount_point: &'a str,
    fstype: &'a str,
    super_options: &'a str,
}

/// The `cgroup` and `cgroup2` mounts of a mountinfo text, in order.
fn cgroup_mounts(mountinfo: &str) -> impl Iterator<Item = MountLine<'_>> {
    mountinfo.lines().filter_map(|line| {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        let mount = MountLine {
            mount_point: left.split(' ').nth(4).unwrap_or(""),
            fstype: r.next().unwrap_or(""),
            super_options: r.nth(1).unwrap_or(""),
        };
        matches!(mount.fstype, "cgroup" | "cgroup2").then_some(mount)
    })
}

/// Limits for one sandbox's cgroup.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpu_millis: u32,
    pub pids: u64,
}

/// The cgroup(s) of one sandbox: a `phantom/<id>` directory in every hierarchy that
/// holds one of the controllers. Removed by [`SandboxCgroup::remove`].
#[derive(Debug)]
pub struct SandboxCgroup {
    /// Directory per controller (several controllers may share one directory).
    dirs: Vec<(&'static str, PathBuf)>,
    version: &'static str,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|e| CgroupError::Write(path.to_path_buf(), value.to_string(), e))
}

/// Write a control file that only some kernels or configurations have.
fn write_if_present(path: &Path, value: &str) -> Result<(), CgroupError> {
    match fs::OpenOptions::new().write(true).open(path) {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(value.as_bytes())
                .map_err(|e| CgroupError::Write(path.to_path_buf(), value.to_string(), e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CgroupError::Write(path.to_path_buf(), value.to_string(), e)),
    }
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::Create(path.to_path_buf(), e)),
    }
}

impl SandboxCgroup {
    /// Create `phantom/<id>` wherever the controllers live and apply `limits`.
    /// On error nothing is left behind.
    pub fn create(layout: &Layout, id: &str, limits: Limits) -> Result<SandboxCgroup, CgroupError> {
        let mut cg = SandboxCgroup {
            dirs: Vec::new(),
            version: layout.describe(),
        };
        let result = cg.create_inner(layout, id, limits);
        if let Err(e) = result {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn create_inner(
        &mut self,
        layout: &Layout,
        id: &str,
        limits: Limits,
    ) -> Result<(), CgroupError> {
        for controller in CONTROLLERS {
            let hierarchy = layout
                .hierarchy(controller)
                .ok_or(CgroupError::NoController(controller))?;
            let (root, v2) = match &hierarchy {
                Hierarchy::V1(p) => (p.clone(), false),
                Hierarchy::V2(p) => (p.clone(), true),
            };
            let base = root.join("phantom");
            let dir = base.join(id);
            if !base.exists() {
                mkdir(&base)?;
            }
            if v2 {
                // A v2 child only gets a controller its parent delegates.
                let _ = fs::write(
                    root.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
                let _ = fs::write(
                    base.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
            }
            // `phantom/` is removed by the last sandbox to leave it (see `remove`): a
            // concurrent run may remove it between our two mkdirs, so retry.
            let mut made = mkdir(&dir);
            for _ in 0..5 {
                match &made {
                    Err(CgroupError::Create(_, e)) if e.kind() == std::io::ErrorKind::NotFound => {
                        mkdir(&base)?;
                        made = mkdir(&dir);
                    }
                    _ => break,
                }
            }
            made?;
            if !self.dirs.iter().any(|(_, d)| d == &dir) {
                self.dirs.push((controller, dir.clone()));
            }
            match (controller, v2) {
                ("memory", false) => {
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                    // No swap either (the file exists only with swap accounting).
                    write_if_present(
                        &dir.join("memory.memsw.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                }
                ("memory", true) => {
                    write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                    write_if_present(&dir.join("memory.swap.max"), "0")?;
                }
                ("pids", _) => write(&dir.join("pids.max"), &limits.pids.to_string())?,
                ("cpu", false) => {
                    // cpu.cfs_period_us starts at the kernel default, 100000 us.
                    write(
                        &dir.join("cpu.cfs_quota_us"),
                        &(u64::from(limits.cpu_millis) * 100).to_string(),
                    )?;
                }
                ("cpu", true) => write(
                    &dir.join("cpu.max"),
                    &format!("{} 100000", u64::from(limits.cpu_millis) * 100),
                )?,
                _ => unreachable!("CONTROLLERS lists only memory, pids and cpu"),
            }
        }
        Ok(())
    }

    /// Change the limits of a cgroup that may already have processes (a pooled
    /// sandbox taking a request with its own limits).
    pub fn set_limits(&self, limits: Limits) -> Result<(), CgroupError> {
        for (controller, dir) in &self.dirs {
            let v1 = dir.join("tasks").exists();
            match (*controller, v1) {
                ("memory", true) => {
                    // memsw must stay >= the memory limit at every step: order the writes.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    let value = limits.memory_bytes.to_string();
                    if memsw.exists() {
                        let _ = fs::write(&memsw, &value);
                    }
                    write(&dir.join("memory.limit_in_bytes"), &value)?;
                    write_if_present(&memsw, &value)?;
                }
                ("pids", true) => write(&dir.join("pids.max"), &limits.pids.to_string())?,
                ("cpu", true) => write(
                    &dir.join("cpu.cfs_quota_us"),
                    &(u64::from(limits.cpu_millis) * 100).to_string(),
                )?,
                // One v2 directory holds every controller (it is listed once).
                (_, false) => {
                    for (file, value) in [
                        ("memory.max", limits.memory_bytes.to_string()),
                        ("pids.max", limits.pids.to_string()),
                        (
                            "cpu.max",
                            format!("{} 100000", u64::from(limits.cpu_millis) * 100),
                        ),
                    ] {
                        write_if_present(&dir.join(file), &value)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// "v1", "v2" or "v1+v2".
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// A directory fd of the v2 cgroup, when every controller is in v2 (for
    /// CLONE_INTO_CGROUP, which places the child before it runs a single instruction).
    pub fn v2_dir_fd(&self) -> Option<OwnedFd> {
        if self.version != "v2" {
            return None;
        }
        let dir = &self.dirs.first()?.1;
        fs::File::open(dir).ok().map(OwnedFd::from)
    }

    /// Move process `pid` into every v2 directory of this cgroup (for v1 see
    /// [`SandboxCgroup::v1_task_files`]).
    pub fn add_v2(&self, pid: i32) -> Result<(), CgroupError> {
        for (_, dir) in self.dirs.iter().filter(|(_, d)| !self.is_v1(d)) {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn is_v1(&self, dir: &Path) -> bool {
        // v1 directories have a `tasks` file; v2 directories do not.
        dir.join("tasks").exists()
    }

    /// Open, for writing, the file of every directory that a process writes "0" to
    /// to join it: `tasks` (v1) or `cgroup.procs` (v2). The kernel checks the opener's
    /// credentials, so a process with other ids (a zygote's child) can join with them.
    pub fn join_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.open_join_files(true)
    }

    /// Open, for writing, `tasks` of every v1 directory, or also `cgroup.procs` of every
    /// v2 one (`all`).
    fn open_join_files(&self, all: bool) -> Result<Vec<OwnedFd>, CgroupError> {
        let mut files = Vec::new();
        for (_, dir) in &self.dirs {
            let path = match self.is_v1(dir) {
                true => dir.join("tasks"),
                false if all => dir.join("cgroup.procs"),
                false => continue,
            };
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| CgroupError::Write(path.clone(), "open".into(), e))?;
            files.push(OwnedFd::from(f));
        }
        Ok(files)
    }

    /// Open the `tasks` file of every v1 directory, for the sandbox to join by itself
    /// with [`join_self`] right after clone.
    ///
    /// Why not write the child's pid into `cgroup.procs` from the parent: that takes
    /// the kernel's global cgroup_threadgroup_rwsem for writing, whose slow path waits
    /// for an RCU grace period (several ms) whenever no other writer ran recently. A
    /// single-threaded process writing "0" (itself) to `tasks` skips that lock.
    pub fn v1_task_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.open_join_files(false)
    }

    /// Whether the kernel OOM-killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills() > 0
    }

    /// How many processes of this cgroup the kernel OOM-killed so far.
    pub fn oom_kills(&self) -> u64 {
        let mut kills = 0;
        for (controller, dir) in &self.dirs {
            if *controller != "memory" {
                continue;
            }
            for file in ["memory.events", "memory.oom_control"] {
                if let Ok(text) = fs::read_to_string(dir.join(file)) {
                    kills += keyed(&text, "oom_kill").unwrap_or(0);
                }
            }
        }
        kills
    }

    /// The cgroup of a sandbox that exists already (a persistent sandbox, created by
    /// another process): its `phantom/<id>` directories, none created. Errors when
    /// the controllers have no such directory.
    pub fn open(layout: &Layout, id: &str) -> Result<SandboxCgroup, CgroupError> {
        if id.is_empty() || id.contains('/') || id.contains("..") {
            return Err(CgroupError::NotFound(PathBuf::from(id)));
        }
        let mut cg = SandboxCgroup {
            dirs: Vec::new(),
            version: layout.describe(),
        };
        for controller in CONTROLLERS {
            let hierarchy = layout
                .hierarchy(controller)
                .ok_or(CgroupError::NoController(controller))?;
            let (Hierarchy::V1(root) | Hierarchy::V2(root)) = hierarchy;
            let dir = root.join("phantom").join(id);
            if !dir.is_dir() {
                return Err(CgroupError::NotFound(dir));
            }
            if !cg.dirs.iter().any(|(_, d)| d == &dir) {
                cg.dirs.push((controller, dir));
            }
        }
        for controller in ACCOUNTING {
            if let Some(Hierarchy::V1(root)) = layout.hierarchy(controller) {
                let dir = root.join("phantom").join(id);
                if dir.is_dir() && !cg.dirs.iter().any(|(_, d)| d == &dir) {
                    cg.dirs.push((controller, dir));
                }
            }
        }
        Ok(cg)
    }

    /// Add the v1 accounting controllers ([`ACCOUNTING`]) that have their own mount
    /// and put process `pid` (the sandbox's init; its future children follow) in
    /// them. Nothing to do on v2 or where they are comounted with a limited one.
    pub fn add_accounting(
        &mut self,
        layout: &Layout,
        id: &str,
        pid: i32,
    ) -> Result<(), CgroupError> {
        for controller in ACCOUNTING {
            let Some(Hierarchy::V1(root)) = layout.hierarchy(controller) else {
                continue;
            };
            let base = root.join("phantom");
            let dir = base.join(id);
            if self.dirs.iter().any(|(_, d)| d == &dir) {
                continue;
            }
            mkdir(&base)?;
            mkdir(&dir)?;
            self.dirs.push((controller, dir.clone()));
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Move the calling process into this cgroup (every directory: `tasks` on v1,
    /// `cgroup.procs` on v2; "0" names the writer).
    pub fn join_self(&self) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            let file = if self.is_v1(dir) {
                "tasks"
            } else {
                "cgroup.procs"
            };
            write(&dir.join(file), "0")?;
        }
        Ok(())
    }

    /// What the sandbox uses now, read from its controllers' files (v1 or v2).
    pub fn stats(&self) -> Stats {
        let mut st = Stats::default();
        let read = |dir: &Path, file: &str| fs::read_to_string(dir.join(file)).ok();
        let num =
            |dir: &Path, file: &str| read(dir, file).and_then(|t| t.trim().parse::<u64>().ok());
        for (controller, dir) in &self.dirs {
            if !self.is_v1(dir) {
                // v2: one directory holds every controller's files.
                st.memory_bytes = num(dir, "memory.current");
                st.memory_peak_bytes = num(dir, "memory.peak");
                st.memory_limit_bytes = num(dir, "memory.max");
                st.pids = num(dir, "pids.current");
                st.pids_limit = num(dir, "pids.max");
                st.cpu_usage_ns = read(dir, "cpu.stat")
                    .and_then(|t| keyed(&t, "usage_usec"))
                    .map(|us| us * 1000);
                if let Some(text) = read(dir, "io.stat") {
                    let (r, w) = io_stat_v2(&text);
                    st.io_read_bytes = Some(r);
                    st.io_write_bytes = Some(w);
                }
                continue;
            }
            match *controller {
                "memory" => {
                    st.memory_bytes = num(dir, "memory.usage_in_bytes");
                    st.memory_peak_bytes = num(dir, "memory.max_usage_in_bytes");
                    st.memory_limit_bytes = num(dir, "memory.limit_in_bytes");
                }
                "pids" => {
                    st.pids = num(dir, "pids.current");
                    st.pids_limit = num(dir, "pids.max");
                }
                // v1 keeps CPU time in the cpuacct controller, often co-mounted with
                // cpu (`cpu,cpuacct`); cpuacct.usage is in nanoseconds.
                "cpu" | "cpuacct" => {
                    st.cpu_usage_ns = st.cpu_usage_ns.or(num(dir, "cpuacct.usage"));
                }
                "blkio" => {
                    if let Some(text) = read(dir, "blkio.throttle.io_service_bytes") {
                        let (r, w) = io_service_bytes_v1(&text);
                        st.io_read_bytes = Some(r);
                        st.io_write_bytes = Some(w);
                    }
                }
                _ => {}
            }
        }
        st.oom_kills = self.oom_kills();
        st
    }

    /// SIGKILL every process in the cgroup (cgroup.kill on v2, a sweep on v1).
    pub fn kill_all(&self) {
        for (_, dir) in &self.dirs {
            if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            for _ in 0..100 {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = crate::process::kill(pid, libc::SIGKILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Remove the cgroup directories (retrying while the kernel finishes tearing
    /// down exited tasks). Errors are ignored: a busy cgroup cannot be removed, and
    /// the next `phantom` run collects it (see [`collect_stale`]).
    pub fn remove(&mut self) {
        for (_, dir) in self.dirs.drain(..) {
            for attempt in 0..50 {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) if attempt < 49 => {
                        std::thread::sleep(std::time::Duration::from_micros(200))
                    }
                    Err(_) => {}
                }
            }
            // The last sandbox out removes `phantom/` too, so that nothing of phantom's
            // stays in the host's cgroup tree (it fails while other sandboxes live).
            if let Some(base) = dir.parent() {
                let _ = fs::remove_dir(base);
            }
        }
    }
}

/// A sandbox's resource use as its cgroup counts it. `None`: this host's controllers
/// do not report it (e.g. CPU time without cpuacct, I/O bytes on v1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub pids_limit: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub oom_kills: u64,
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Bytes read and written, summed over the devices of a v1
/// `blkio.throttle.io_service_bytes` (`8:0 Read 4096` per line, then `Total N`).
fn io_service_bytes_v1(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let n = n.parse::<u64>().unwrap_or(0);
        match op {
            "Read" => r += n,
            "Write" => w += n,
            _ => {}
        }
    }
    (r, w)
}

/// Bytes read and written, summed over the devices of a v2 `io.stat`
/// (`8:0 rbytes=1 wbytes=2 rios=3 ...` per line).
fn io_stat_v2(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for field in text.split_whitespace() {
        if let Some(n) = field.strip_prefix("rbytes=") {
            r += n.parse::<u64>().unwrap_or(0);
        } else if let Some(n) = field.strip_prefix("wbytes=") {
            w += n.parse::<u64>().unwrap_or(0);
        }
    }
    (r, w)
}

/// Move the calling thread (a single-threaded process) into the cgroups whose `tasks`
/// files are given (see [`SandboxCgroup::v1_task_files`]).
pub fn join_self(task_files: &[OwnedFd]) -> Result<(), CgroupError> {
    for f in task_files {
        rustix::io::write(f, b"0")
            .map_err(|e| CgroupError::Write(PathBuf::from("tasks"), "0".into(), e.into()))?;
    }
    Ok(())
}

/// Remove the cgroup directories of sandbox `id` (after its front end was killed).
/// Returns true when none is left. A cgroup that still has processes cannot be
/// removed, so this never disturbs a live sandbox; a process that is still exiting
/// (its files, and so its run directory lock, are released before it leaves its
/// cgroup) is waited for briefly.
pub fn remove_sandbox(layout: &Layout, id: &str) -> bool {
    if id.is_empty() || id.contains('/') || id.contains("..") {
        return false;
    }
    let mut roots: Vec<PathBuf> = layout.v1_mounts.values().cloned().collect();
    roots.extend(layout.v2_mount.clone());
    roots.sort();
    roots.dedup();
    let mut all_gone = true;
    for root in roots {
        let dir = root.join("phantom").join(id);
        let mut gone = !dir.is_dir();
        for _ in 0..100 {
            if gone {
                break;
            }
            match fs::remove_dir(&dir) {
                Ok(()) => gone = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone = true,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        all_gone &= gone;
    }
    all_gone
}

/// The `phantom/<id>` directories that exist now (for leak checks in tests).
pub fn list_sandbox_cgroups(layout: &Layout) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = layout.v1_mounts.values().cloned().collect();
    roots.extend(layout.v2_mount.clone());
    let mut out = Vec::new();
    for root in roots {
        if let Ok(entries) = fs::read_dir(root.join("phantom")) {
            out.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mountinfo of a hybrid (systemd "legacy") host: controllers in v1, an empty
    /// unified tree. `cpu` and `cpuacct` are comounted, next to `cpuset`, whose name
    /// starts with "cpu" but is another controller.
    const HYBRID: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 22 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
34 31 0:31 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
36 31 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
";

    /// Mountinfo of a pure v2 host, plus a second cgroup2 mount further down (a
    /// container runtime's bind), which is not the unified root.
    const PURE_V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
90 22 0:27 /system.slice /run/some-runtime/cgroup rw,relatime shared:4 - cgroup2 cgroup2 rw
";

    const PURE_V2_CONTROLLERS: &str = "cpuset cpu io memory hugetlb pids rdma misc\n";

    /// No cgroup filesystem mounted at all.
    const NO_CGROUPS: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
24 22 0:6 / /sys rw,nosuid,nodev,noexec,relatime shared:3 - sysfs sysfs rw
";

    fn v1(path: &str) -> Option<Hierarchy> {
        Some(Hierarchy::V1(PathBuf::from(path)))
    }

    fn v2(path: &str) -> Option<Hierarchy> {
        Some(Hierarchy::V2(PathBuf::from(path)))
    }

    #[test]
    fn hybrid_host_uses_v1_and_maps_comounted_cpu() {
        // The unified root of a hybrid host offers no controller: its file is empty.
        let layout = Layout::from_mountinfo(HYBRID, Some("\n"));
        assert_eq!(
            layout.v2_mount,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(layout.v2_controllers.is_empty(), "{layout:?}");
        assert_eq!(layout.hierarchy("memory"), v1("/sys/fs/cgroup/memory"));
        assert_eq!(layout.hierarchy("pids"), v1("/sys/fs/cgroup/pids"));
        assert_eq!(layout.hierarchy("cpu"), v1("/sys/fs/cgroup/cpu,cpuacct"));
        // Only the controllers phantom limits are recorded; cpuset is not cpu.
        let names: Vec<&str> = layout.v1_mounts.keys().map(String::as_str).collect();
        assert_eq!(names, ["cpu", "cpuacct", "memory", "pids"]);
        assert_eq!(
            layout.hierarchy("cpuacct"),
            v1("/sys/fs/cgroup/cpu,cpuacct"),
            "comounted with cpu: one directory counts and limits"
        );
        assert_eq!(layout.describe(), "v1");
    }

    #[test]
    fn hybrid_host_with_separate_cpu_and_cpuacct() {
        // Like this test suite's own host.
        let mut text: String = HYBRID
            .lines()
            .filter(|l| !l.ends_with("rw,cpu,cpuacct"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str("35 31 0:32 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n");
        text.push_str(
            "38 31 0:35 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n",
        );
        let layout = Layout::from_mountinfo(&text, Some(""));
        assert_eq!(layout.hierarchy("cpu"), v1("/sys/fs/cgroup/cpu"));
        assert_eq!(layout.hierarchy("memory"), v1("/sys/fs/cgroup/memory"));
        assert_eq!(layout.describe(), "v1");
    }

    #[test]
    fn hybrid_host_with_a_controller_left_to_v2() {
        // systemd leaves a controller no v1 hierarchy took in the unified tree.
        let text: String = HYBRID
            .lines()
            .filter(|l| !l.ends_with("rw,pids"))
            .map(|l| format!("{l}\n"))
            .collect();
        let layout = Layout::from_mountinfo(&text, Some("pids\n"));
        assert_eq!(layout.hierarchy("pids"), v2("/sys/fs/cgroup/unified"));
        assert_eq!(layout.hierarchy("memory"), v1("/sys/fs/cgroup/memory"));
        assert_eq!(layout.describe(), "v1+v2");
    }

    #[test]
    fn pure_v2_host_uses_the_unified_root() {
        let layout = Layout::from_mountinfo(PURE_V2, Some(PURE_V2_CONTROLLERS));
        assert_eq!(layout.v2_mount, Some(PathBuf::from("/sys/fs/cgroup")));
        assert!(layout.v1_mounts.is_empty(), "{layout:?}");
        for controller in CONTROLLERS {
            assert_eq!(
                layout.hierarchy(controller),
                v2("/sys/fs/cgroup"),
                "{controller}"
            );
        }
        assert_eq!(layout.hierarchy("blkio"), None);
        assert_eq!(layout.describe(), "v2");
    }

    #[test]
    fn unread_v2_controllers_mean_no_v2_controller() {
        let layout = Layout::from_mountinfo(PURE_V2, None);
        assert_eq!(layout.v2_mount, Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(layout.hierarchy("memory"), None);
        assert_eq!(layout.describe(), "none");
    }

    #[test]
    fn host_without_cgroups_has_no_hierarchy() {
        // Controllers given without a unified mount belong to no hierarchy.
        let layout = Layout::from_mountinfo(NO_CGROUPS, Some(PURE_V2_CONTROLLERS));
        assert_eq!(layout.v2_mount, None);
        assert!(layout.v2_controllers.is_empty(), "{layout:?}");
        assert!(layout.v1_mounts.is_empty(), "{layout:?}");
        assert_eq!(layout.hierarchy("memory"), None);
        assert_eq!(layout.describe(), "none");
        assert_eq!(Layout::from_mountinfo("", None).describe(), "none");
    }

    /// A scratch directory removed on drop (tests only).
    struct Tree(PathBuf);
    impl Tree {
        fn new(tag: &str) -> Tree {
            let dir = std::env::temp_dir().join(format!(
                "phantom-cgtest-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }
        fn file(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    }
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn stats_read_v1_controller_files() {
        let t = Tree::new("v1");
        let root = t.0.display().to_string();
        let mountinfo = format!(
            "36 31 0:33 / {root}/memory rw - cgroup cgroup rw,memory\n\
             37 31 0:34 / {root}/pids rw - cgroup cgroup rw,pids\n\
             35 31 0:32 / {root}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        );
        let layout = Layout::from_mountinfo(&mountinfo, None);
        t.file("memory/phantom/abc/tasks", "");
        t.file("memory/phantom/abc/memory.usage_in_bytes", "4096\n");
        t.file("memory/phantom/abc/memory.max_usage_in_bytes", "8192\n");
        t.file("memory/phantom/abc/memory.limit_in_bytes", "536870912\n");
        t.file(
            "memory/phantom/abc/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        t.file("pids/phantom/abc/tasks", "");
        t.file("pids/phantom/abc/pids.current", "3\n");
        t.file("pids/phantom/abc/pids.max", "256\n");
        t.file("cpu,cpuacct/phantom/abc/tasks", "");
        t.file("cpu,cpuacct/phantom/abc/cpuacct.usage", "123456789\n");
        let cg = SandboxCgroup::open(&layout, "abc").unwrap();
        let st = cg.stats();
        assert_eq!(st.memory_bytes, Some(4096));
        assert_eq!(st.memory_peak_bytes, Some(8192));
        assert_eq!(st.memory_limit_bytes, Some(536870912));
        assert_eq!(st.pids, Some(3));
        assert_eq!(st.pids_limit, Some(256));
        assert_eq!(st.cpu_usage_ns, Some(123456789));
        assert_eq!(st.io_read_bytes, None, "v1 without blkio reports no I/O");
        assert_eq!(st.oom_kills, 2);
        assert!(cg.oom_killed());
        // A sandbox without directories is not found (and nothing is created).
        assert!(matches!(
            SandboxCgroup::open(&layout, "gone"),
            Err(CgroupError::NotFound(_))
        ));
        assert!(!t.0.join("memory/phantom/gone").exists());
        assert!(SandboxCgroup::open(&layout, "../abc").is_err());
    }

    #[test]
    fn stats_read_v2_controller_files() {
        let t = Tree::new("v2");
        let root = t.0.display().to_string();
        let mountinfo = format!("30 22 0:27 / {root} rw - cgroup2 cgroup2 rw\n");
        let layout = Layout::from_mountinfo(&mountinfo, Some("cpu io memory pids\n"));
        t.file("phantom/abc/memory.current", "1000\n");
        t.file("phantom/abc/memory.peak", "2000\n");
        t.file("phantom/abc/memory.max", "max\n");
        t.file(
            "phantom/abc/memory.events",
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        );
        t.file("phantom/abc/pids.current", "2\n");
        t.file("phantom/abc/cpu.stat", "usage_usec 1500\nuser_usec 1000\n");
        t.file(
            "phantom/abc/io.stat",
            "8:0 rbytes=100 wbytes=20 rios=1 wios=1\n8:16 rbytes=5 wbytes=1 rios=1 wios=1\n",
        );
        let st = SandboxCgroup::open(&layout, "abc").unwrap().stats();
        assert_eq!(st.memory_bytes, Some(1000));
        assert_eq!(st.memory_peak_bytes, Some(2000));
        assert_eq!(st.memory_limit_bytes, None, "`max` is no number");
        assert_eq!(st.pids, Some(2));
        assert_eq!(st.cpu_usage_ns, Some(1_500_000));
        assert_eq!((st.io_read_bytes, st.io_write_bytes), (Some(105), Some(21)));
        assert_eq!(st.oom_kills, 1);
    }

    #[test]
    fn stats_read_separately_mounted_v1_accounting_controllers() {
        let t = Tree::new("v1acct");
        let root = t.0.display().to_string();
        let mountinfo = format!(
            "32 31 0:29 / {root}/cpu rw - cgroup cgroup rw,cpu\n\
             33 31 0:30 / {root}/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             35 31 0:32 / {root}/memory rw - cgroup cgroup rw,memory\n\
             38 31 0:35 / {root}/blkio rw - cgroup cgroup rw,blkio\n\
             39 31 0:36 / {root}/pids rw - cgroup cgroup rw,pids\n"
        );
        let layout = Layout::from_mountinfo(&mountinfo, None);
        for c in ["cpu", "memory", "pids"] {
            t.file(&format!("{c}/phantom/abc/tasks"), "");
        }
        // Without the accounting directories: no CPU time, no I/O.
        let st = SandboxCgroup::open(&layout, "abc").unwrap().stats();
        assert_eq!((st.cpu_usage_ns, st.io_read_bytes), (None, None));
        t.file("cpuacct/phantom/abc/tasks", "");
        t.file("cpuacct/phantom/abc/cpuacct.usage", "42000\n");
        t.file("blkio/phantom/abc/tasks", "");
        t.file(
            "blkio/phantom/abc/blkio.throttle.io_service_bytes",
            "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n8:16 Read 4\n8:16 Write 1\nTotal 4613\n",
        );
        let st = SandboxCgroup::open(&layout, "abc").unwrap().stats();
        assert_eq!(st.cpu_usage_ns, Some(42000));
        assert_eq!(
            (st.io_read_bytes, st.io_write_bytes),
            (Some(4100), Some(513))
        );
    }
}
