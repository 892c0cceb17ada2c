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

/// What the kubelet and the CRI plugin prepare on the host for a pod, in DIR/host.
fn kubelet_files(dir: &Path) -> PathBuf {
    let host = dir.join("host");
    std::fs::create_dir_all(host.join("shm")).unwrap();
    std::fs::create_dir_all(host.join("serviceaccount")).unwrap();
    std::fs::write(host.join("hosts"), "127.0.0.1 localhost\n10.0.0.7 pod-a\n").unwrap();
    std::fs::write(host.join("hostname"), "pod-a\n").unwrap();
    std::fs::write(host.join("resolv.conf"), "nameserver 10.96.0.10\n").unwrap();
    std::fs::write(host.join("termination-log"), "").unwrap();
    std::fs::write(host.join("serviceaccount/token"), "secret-token").unwrap();
    host
}

/// A network namespace in the host's user namespace, as the CRI plugin makes a
/// pod's: held by a `sleep` that util-linux's unshare(1) (Essential on Debian)
/// started in it, killed on drop.
struct PodNetns(std::process::Child);

impl PodNetns {
    fn add() -> PodNetns {
        let child = Command::new("unshare")
            .args(["--net", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare(1) (util-linux) makes the pod's network namespace");
        let netns = PodNetns(child);
        // Until unshare has made it, the child is in ours.
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        for _ in 0..500 {
            if std::fs::read_link(netns.path()).is_ok_and(|theirs| theirs != ours) {
                return netns;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("unshare --net made no network namespace in 5 s");
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory with a busybox rootfs and the kubelet's files (the second
/// value), a state root and a pod cgroup; `None` (with the reason printed) when
/// the host cannot have them.
fn pod_scratch(tag: &str) -> Option<(Scratch, PathBuf)> {
    if !is_root() {
        println!("skipped: needs root (namespaces, cgroups)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("phantom-oci-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch {
        root: dir.join("state"),
        cgroup_parent: format!("/phantom-oci-{tag}-test/pod{}", std::process::id()),
        dir: dir.clone(),
    };
    if !rootfs(&dir.join("rootfs")) {
        println!("skipped: no static /bin/busybox to build a root filesystem from");
        return None;
    }
    let host = kubelet_files(&dir);
    Some((scratch, host))
}

/// [`pod_scratch`] and the pod's network namespace, made as the CRI makes it.
fn pod_scratch_with_netns(tag: &str) -> Option<(Scratch, PathBuf, PodNetns)> {
    let (scratch, host) = pod_scratch(tag)?;
    Some((scratch, host, PodNetns::add()))
}

/// Create and start the pause container of `spec`; its pid.
fn start_pause(scratch: &Scratch, spec: &serde_json::Value) -> i64 {
    let bundle = scratch.dir.join("pause");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let (created, log) = oci_create(
        &scratch.root,
        &bundle,
        "pause",
        &scratch.dir.join("pause.log"),
    );
    assert!(created, "create pause: {log}");
    let out = oci(&scratch.root, &["start", "pause"]);
    assert!(
        out.status.success(),
        "start pause: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value =
        serde_json::from_slice(&oci(&scratch.root, &["state", "pause"]).stdout).unwrap();
    assert_eq!(state["status"], "running", "{state}");
    state["pid"].as_i64().unwrap()
}

/// `run` the app container of `spec`; its stdout (the run must succeed).
fn run_app(scratch: &Scratch, spec: &serde_json::Value) -> String {
    let bundle = scratch.dir.join("app");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let out = oci(
        &scratch.root,
        &["run", "--bundle", &bundle.to_string_lossy(), "app"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "run app: {stdout} {stderr}");
    stdout
}

/// The binds the CRI gives an application container, from the kubelet's files in
/// `host`: /etc/hosts, hostname and resolv.conf, the termination log, /dev/shm
/// (the sandbox's), and a read-only service-account volume.
fn kubelet_binds(host: &Path) -> Vec<serde_json::Value> {
    vec![
        bind("/etc/hosts", host.join("hosts"), "rw"),
        bind("/dev/termination-log", host.join("termination-log"), "rw"),
        bind("/etc/hostname", host.join("hostname"), "rw"),
        bind("/etc/resolv.conf", host.join("resolv.conf"), "rw"),
        bind("/dev/shm", host.join("shm"), "rw"),
        bind(
            "/var/run/secrets/kubernetes.io/serviceaccount",
            host.join("serviceaccount"),
            "ro",
        ),
    ]
}

fn bind(dst: &str, src: PathBuf, mode: &str) -> serde_json::Value {
    serde_json::json!({"destination": dst, "type": "bind", "source": src,
                       "options": ["rbind", "rprivate", mode]})
}

/// Owner and group of everything below `dir` set to `id` (symlinks themselves).
fn chown_tree(dir: &Path, id: u32) {
    std::os::unix::fs::lchown(dir, Some(id), Some(id)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.symlink_metadata().unwrap().is_dir() {
            chown_tree(&path, id);
        } else {
            std::os::unix::fs::lchown(&path, Some(id), Some(id)).unwrap();
        }
    }
}

fn inode(path: &str) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

fn owner(path: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).unwrap())
}

/// The first (real) id of the `Uid:` line of /proc/PID/status: the host's view.
fn host_uid(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap()
}

/// The script an app container runs to report what it sees.
const REPORT: &str = r#"
    echo "uid_map=$(tr -s ' ' < /proc/self/uid_map | sed 's/^ //')"
    echo "user=$(readlink /proc/self/ns/user)"
    echo "net=$(readlink /proc/self/ns/net)"
    echo "ipc=$(readlink /proc/self/ns/ipc)"
    echo "hostname=$(hostname)"
    hostname other 2>/dev/null && echo hostname-changed
    echo "busybox_owner=$(stat -c %u /bin/busybox)"
    echo "hosts_owner=$(stat -c %u /etc/hosts)"
    grep -q 10.0.0.7 /etc/hosts && echo hosts-ok
    echo finished > /dev/termination-log && echo termination-ok
    echo shared > /dev/shm/from-app && echo shm-ok
    echo "netdevs=$(ls /sys/class/net)"
    grep -q ' /dev/mqueue mqueue ' /proc/mounts && echo mqueue-ok
    echo done
"#;

/// What every app container of a pod reports (`REPORT`) when its root is host
/// uid `host_id` and it shares the pause container's (`pause_pid`) network, ipc
/// and uts namespaces; and what it wrote in the kubelet's files in `host`.
fn check_app_report(stdout: &str, pause_pid: i64, host_id: u32, host: &Path) {
    let link = |n: &str| ns_link(pause_pid, n);
    want(stdout, &format!("uid_map=0 {host_id} 65536"));
    want(stdout, &format!("net={}", link("net")));
    want(stdout, &format!("ipc={}", link("ipc")));
    want(stdout, "hostname=pod-a");
    // The image (idmapped by strict, shifted by containerd) and the idmapped
    // binds are the container root's.
    want(stdout, "busybox_owner=0");
    want(stdout, "hosts_owner=0");
    want(stdout, "hosts-ok");
    want(stdout, "termination-ok");
    want(stdout, "shm-ok");
    // sysfs and mqueue are the pod's (made by the helper in its namespaces).
    want(stdout, "netdevs=lo");
    want(stdout, "mqueue-ok");
    want(stdout, "done");
    // What it wrote is host uid 0's on disk, as with runc.
    assert_eq!(
        std::fs::read_to_string(host.join("termination-log")).unwrap(),
        "finished\n"
    );
    assert_eq!(owner(&host.join("shm/from-app")), 0);
}

/// An application container's namespaces, as the CRI writes them: the pause
/// container's (`pause_pid`) ipc, uts and network by path, its own pid and mount.
fn app_namespaces(pause_pid: i64) -> serde_json::Value {
    let ns = |n: &str| format!("/proc/{pause_pid}/ns/{n}");
    serde_json::json!([
        {"type": "pid"},
        {"type": "ipc", "path": ns("ipc")},
        {"type": "uts", "path": ns("uts")},
        {"type": "mount"},
        {"type": "network", "path": ns("net")}
    ])
}

/// Where /proc/PID/ns/NAME points (`net:[4026531840]`).
fn ns_link(pid: i64, name: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn want(stdout: &str, line: &str) {
    assert!(
        stdout.lines().any(|l| l == line),
        "want {line:?} in:\n{stdout}"
    );
}

/// `run.phantom.policy: strict` on a pod: each container, the pause container
/// included, runs as an unprivileged host uid in a user namespace of its own,
/// while sharing the pod's network (made by the CRI, owned by the host's user
/// namespace), ipc and uts namespaces — where its root has no capabilities.
#[test]
fn a_strict_pods_containers_run_as_unprivileged_host_uids_in_the_pods_namespaces() {
    let Some((scratch, host, netns)) = pod_scratch_with_netns("strict-pod") else {
        return;
    };
    let strict = serde_json::json!({"run.phantom.policy": "strict",
                                    "io.kubernetes.cri.container-type": "sandbox"});
    let mut pause_mounts = base_mounts();
    pause_mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
    let pause = spec(
        &["sleep", "300"],
        Some("pod-a"),
        pause_mounts,
        serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "network", "path": netns.path()}]),
        &format!("{}/pause", scratch.cgroup_parent),
        serde_json::json!({"cpu": {"shares": 2}}),
        strict.clone(),
    );
    let pause_pid = start_pause(&scratch, &pause);
    assert_eq!(host_uid(pause_pid), "100000", "the pause container's root");
    assert_eq!(
        inode(&format!("/proc/{pause_pid}/ns/net")),
        inode(&netns.path()),
        "the pause container is in the CRI's network namespace"
    );
    let mut mounts = base_mounts();
    mounts.extend(kubelet_binds(&host));
    let app = spec(
        &["sh", "-c", REPORT],
        None,
        mounts,
        app_namespaces(pause_pid),
        &format!("{}/app", scratch.cgroup_parent),
        serde_json::json!({"memory": {"limit": 134217728}}),
        serde_json::json!({"run.phantom.policy": "strict",
                           "io.kubernetes.cri.container-type": "container"}),
    );
    let stdout = run_app(&scratch, &app);
    check_app_report(&stdout, pause_pid, 100000, &host);
    let link = |n: &str| ns_link(pause_pid, n);
    // No capability in the pod's uts namespace, which the host's user namespace owns.
    assert!(!stdout.contains("hostname-changed"), "{stdout}");
    assert_ne!(
        link("user"),
        std::fs::read_link("/proc/self/ns/user")
            .unwrap()
            .to_string_lossy()
    );
    // `kubectl exec` into the pause container: its user namespace is joined last,
    // after the pod's network namespace, which its root could not join.
    let out = exec_in(
        &scratch,
        "pause",
        r#"tr -s " " < /proc/self/uid_map; readlink /proc/self/ns/net; hostname"#,
    );
    assert_eq!(out, format!(" 0 100000 65536\n{}\npod-a\n", link("net")));
    drop(netns);
}

/// A pod with `hostUsers: false`, as containerd writes it: the pause container
/// gets a new user namespace with the pod's mappings (and joins the CRI's network
/// namespace), the app container joins that user namespace by path, and its binds
/// are idmapped — by the mount's own mappings, or by the `idmap` option.
#[test]
fn a_pod_without_host_users_shares_the_pause_containers_user_namespace() {
    let Some((scratch, host, netns)) = pod_scratch_with_netns("userns-pod") else {
        return;
    };
    let maps = serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    // containerd shifts the image's owners into the pod's range (a chown of the
    // snapshot, or an idmapped one): the pod's root owns its rootfs.
    chown_tree(&scratch.dir.join("rootfs"), 200000);
    let mut pause_mounts = base_mounts();
    pause_mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
    let mut pause = spec(
        &["sleep", "300"],
        Some("pod-a"),
        pause_mounts,
        serde_json::json!([{"type": "user"}, {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}, {"type": "network", "path": netns.path()}]),
        &format!("{}/pause", scratch.cgroup_parent),
        serde_json::json!({"cpu": {"shares": 2}}),
        serde_json::json!({"io.kubernetes.cri.container-type": "sandbox"}),
    );
    pause["linux"]["uidMappings"] = maps.clone();
    pause["linux"]["gidMappings"] = maps.clone();
    let pause_pid = start_pause(&scratch, &pause);
    assert_eq!(host_uid(pause_pid), "200000", "the pause container's root");
    let ns = |n: &str| format!("/proc/{pause_pid}/ns/{n}");
    let mut mounts = base_mounts();
    let idmapped = |dst: &str, src: PathBuf| {
        let mut m = bind(dst, src, "rw");
        m["uidMappings"] = maps.clone();
        m["gidMappings"] = maps.clone();
        m
    };
    mounts.push(idmapped("/etc/hosts", host.join("hosts")));
    mounts.push(idmapped("/dev/shm", host.join("shm")));
    mounts.push(
        serde_json::json!({"destination": "/dev/termination-log", "type": "bind",
        "source": host.join("termination-log"), "options": ["rbind", "rw", "idmap"]}),
    );
    let mut app = spec(
        &["sh", "-c", REPORT],
        None,
        mounts,
        {
            let mut namespaces = app_namespaces(pause_pid);
            let user = serde_json::json!({"type": "user", "path": ns("user")});
            namespaces.as_array_mut().unwrap().insert(0, user);
            namespaces
        },
        &format!("{}/app", scratch.cgroup_parent),
        serde_json::json!({"memory": {"limit": 134217728}}),
        serde_json::json!({"io.kubernetes.cri.container-type": "container"}),
    );
    app["linux"]["uidMappings"] = maps.clone();
    app["linux"]["gidMappings"] = maps;
    let stdout = run_app(&scratch, &app);
    check_app_report(&stdout, pause_pid, 200000, &host);
    let link = |n: &str| ns_link(pause_pid, n);
    want(&stdout, &format!("user={}", link("user")));
    let out = exec_in(
        &scratch,
        "pause",
        r#"tr -s " " < /proc/self/uid_map; readlink /proc/self/ns/user"#,
    );
    assert_eq!(out, format!(" 0 200000 65536\n{}\n", link("user")));
    drop(netns);
}

/// `phantom-oci exec` of `sh -c SCRIPT` in container `id`, as root; its stdout.
fn exec_in(scratch: &Scratch, id: &str, script: &str) -> String {
    let process = serde_json::json!({"cwd": "/", "args": ["sh", "-c", script],
                                     "user": {"uid": 0, "gid": 0},
                                     "env": ["PATH=/bin"]});
    let mut child = Command::new(binary())
        .arg("--root")
        .arg(&scratch.root)
        .args(["exec", "--process", "-", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        process.to_string().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exec in {id}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Regression: a strict container with `process.oomScoreAdj` (the CRI sets one for
/// every container) failed to start with EACCES. Its init wrote its own
/// /proc/self/oom_score_adj after becoming root of its user namespace, when its
/// /proc files are host root's; `create` now writes it, as host root.
#[test]
fn strict_oom_score_adj_is_set_though_the_inits_proc_files_are_not_its_roots() {
    let Some((scratch, _host)) = pod_scratch("strict-oom") else {
        return;
    };
    let mut mounts = base_mounts();
    mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
    let standalone = spec(
        &[
            "sh",
            "-c",
            "cat /proc/self/oom_score_adj; tr -s ' ' < /proc/self/uid_map",
        ],
        None,
        mounts,
        serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "network"}]),
        &format!("{}/app", scratch.cgroup_parent),
        serde_json::json!({}),
        serde_json::json!({"run.phantom.policy": "strict"}),
    );
    assert_eq!(standalone["process"]["oomScoreAdj"], 1000);
    let stdout = run_app(&scratch, &standalone);
    assert_eq!(stdout, "1000\n 0 100000 65536\n");
}

#[test]
fn a_pod_as_the_cri_writes_it_runs_with_every_field_honoured() {
    let Some((scratch, host)) = pod_scratch("cri") else {
        return;
    };
    let dir = scratch.dir.clone();
    let no_devices = serde_json::json!([{"allow": false, "access": "rwm"}]);

    // The pause container: new namespaces, the pod's hostname.
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
    let root = scratch.root.clone();
    let pause_pid = start_pause(&scratch, &pause);
    let ns = |n: &str| format!("/proc/{pause_pid}/ns/{n}");

    // The application container, joining the pause container's namespaces.
    let app_bundle = dir.join("app");
    std::fs::create_dir_all(&app_bundle).unwrap();
    let mut mounts = base_mounts();
    mounts.extend(kubelet_binds(&host));
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
        app_namespaces(pause_pid),
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
