//! phantom-oci under containerd's own shim (containerd-shim-runc-v2), driven with
//! `ctr --runc-binary`. scripts/test-oci.sh starts a private containerd, imports a
//! busybox image and sets:
//!
//! * `PHANTOM_OCI_CTR_SOCKET` — containerd's socket;
//! * `PHANTOM_OCI_IMAGE` — the image reference;
//! * `PHANTOM_OCI_BINARY` — target/debug/phantom-oci.
//!
//! Without them every test reports `skipped: …`. Each test uses its own container
//! ids in the namespace `phantom-oci-test` and checks afterwards that nothing of its
//! containers is left: no process in their cgroups, no cgroup directory, no state
//! directory under the shim's --root, no mount.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const NS: &str = "phantom-oci-test";

struct Env {
    socket: String,
    image: String,
    binary: String,
}

fn env() -> Option<Env> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("PHANTOM_OCI_CTR_SOCKET"),
        get("PHANTOM_OCI_IMAGE"),
        get("PHANTOM_OCI_BINARY"),
    ) {
        (Some(socket), Some(image), Some(binary)) => Some(Env {
            socket,
            image,
            binary,
        }),
        _ => {
            let why = "no containerd in this pass: scripts/test-oci.sh runs it against one (it sets PHANTOM_OCI_CTR_SOCKET)";
            println!("skipped: {why}");
            if let Some(log) = std::env::var_os("PHANTOM_SKIP_LOG") {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
                    // One write per line: tests run in parallel threads, and two
                    // writes (text, then newline) interleave with theirs.
                    let _ = f.write_all(format!("{why}\n").as_bytes());
                }
            }
            None
        }
    }
}

fn new_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

impl Env {
    fn ctr(&self, args: &[&str]) -> Output {
        let out = Command::new("ctr")
            .args(["-a", &self.socket, "-n", NS])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr runs");
        out
    }

    /// `ctr run --rm` with phantom-oci; `extra` go before the image.
    fn run(&self, extra: &[&str], id: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["run", "--rm", "--runc-binary", &self.binary];
        args.extend_from_slice(extra);
        args.push(&self.image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Start a detached container running `cmd`; returns its init's host pid.
    fn start_detached(&self, extra: &[&str], id: &str, cmd: &[&str]) -> i32 {
        let mut args = vec!["run", "-d", "--runc-binary", &self.binary];
        args.extend_from_slice(extra);
        args.push(&self.image);
        args.push(id);
        args.extend_from_slice(cmd);
        let out = self.ctr(&args);
        assert!(out.status.success(), "ctr run -d: {}", text(&out.stderr));
        self.task_pid(id).expect("the task has a pid")
    }

    fn task_pid(&self, id: &str) -> Option<i32> {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    }

    fn task_status(&self, id: &str) -> String {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            .unwrap_or_default()
    }

    /// Kill, delete the task and the container (for detached ones).
    fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
        for _ in 0..200 {
            if self.task_status(id) != "RUNNING" && self.task_status(id) != "PAUSED" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.ctr(&["task", "delete", id]);
        let _ = self.ctr(&["container", "delete", id]);
    }
}

/// Removes the container `.1` when dropped: a failing test leaves nothing either.
struct Cleanup<'a>(&'a Env, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.remove(&self.1);
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What a container could leave on the host: a cgroup directory, a process in it,
/// phantom-oci's state directory under the shim's --root, a mount naming it.
fn leftovers(id: &str) -> Vec<String> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = entry.path().join(NS).join(id);
        if dir.exists() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            left.push(format!(
                "cgroup {} (processes: {})",
                dir.display(),
                procs.trim()
            ));
        }
    }
    let state = PathBuf::from("/run/containerd/runc").join(NS).join(id);
    if state.exists() {
        left.push(format!("state directory {}", state.display()));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for m in mounts.lines().filter(|l| l.contains(&format!("/{id}/"))) {
        left.push(format!("mount {m}"));
    }
    left
}

fn assert_clean(id: &str) {
    // The shim deletes asynchronously after ctr returns; give it a moment.
    for _ in 0..100 {
        if leftovers(id).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("left behind by {id}: {:?}", leftovers(id));
}

#[test]
fn run_rm_gives_the_output_and_the_exit_code() {
    let Some(env) = env() else { return };
    let id = new_id("exit");
    let _cleanup_id = Cleanup(&env, id.clone());
    let out = env.run(&[], &id, &["sh", "-c", "echo hi; echo err >&2; exit 3"]);
    assert_eq!(text(&out.stdout), "hi\n", "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3));
    assert_clean(&id);
}

#[test]
fn a_signal_ends_the_container_with_128_plus_its_number() {
    let Some(env) = env() else { return };
    let id = new_id("signal");
    let _cleanup_id = Cleanup(&env, id.clone());
    // ctr run --rm waits for the task; `ctr task kill` from outside ends it.
    let run = Command::new("ctr")
        .args([
            "-a",
            &env.socket,
            "-n",
            NS,
            "run",
            "--rm",
            "--runc-binary",
            &env.binary,
            &env.image,
            &id,
            "sleep",
            "300",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if env.task_status(&id) == "RUNNING" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = env.ctr(&["task", "kill", "-s", "KILL", &id]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert_clean(&id);
}

#[test]
fn a_missing_program_fails_with_a_message_that_names_it() {
    let Some(env) = env() else { return };
    let id = new_id("missing");
    let _cleanup_id = Cleanup(&env, id.clone());
    let out = env.run(&[], &id, &["/no/such/program"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("/no/such/program"), "{err}");
    assert_clean(&id);
}

#[test]
fn task_start_exec_ps_pause_resume_kill_delete() {
    let Some(env) = env() else { return };
    let id = new_id("lifecycle");
    let _cleanup_id = Cleanup(&env, id.clone());
    // create + start as two steps. `ctr container create` has no --runc-binary:
    // scripts/test-oci.sh puts phantom-oci first on containerd's PATH as `runc`.
    let out = env.ctr(&["container", "create", &env.image, &id, "sleep", "300"]);
    assert!(
        out.status.success(),
        "container create: {}",
        text(&out.stderr)
    );
    let out = env.ctr(&["task", "start", "-d", &id]);
    assert!(out.status.success(), "task start: {}", text(&out.stderr));
    assert_eq!(env.task_status(&id), "RUNNING");
    let pid = env.task_pid(&id).unwrap();
    // It is phantom-oci's state (runc's has no start_time).
    let state =
        std::fs::read_to_string(format!("/run/containerd/runc/{NS}/{id}/state.json")).unwrap();
    assert!(
        state.contains("\"start_time\""),
        "not phantom-oci's state: {state}"
    );
    // The init sits in exactly the cgroup containerd named, in every hierarchy.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        assert!(
            line.ends_with(&format!(":/{NS}/{id}")),
            "init's cgroup is not /{NS}/{id}: {line}"
        );
    }

    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo from-exec; exit 5",
    ]);
    assert_eq!(text(&out.stdout), "from-exec\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(5));
    // The exec'd process joined the init's namespaces.
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        &id,
        "sh",
        "-c",
        "for n in pid mnt net; do readlink /proc/self/ns/$n; done",
    ]);
    let inside = text(&out.stdout);
    let mut host = String::new();
    for ns in ["pid", "mnt", "net"] {
        host.push_str(
            &std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
                .unwrap()
                .to_string_lossy(),
        );
        host.push('\n');
    }
    assert_eq!(inside, host, "{}", text(&out.stderr));

    let out = env.ctr(&["task", "ps", &id]);
    assert!(
        text(&out.stdout).contains(&pid.to_string()),
        "task ps: {}",
        text(&out.stdout)
    );

    let out = env.ctr(&["task", "pause", &id]);
    assert!(out.status.success(), "pause: {}", text(&out.stderr));
    assert_eq!(env.task_status(&id), "PAUSED");
    let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(state
        .lines()
        .any(|l| l.starts_with("State:") && (l.contains("S") || l.contains("D"))));
    let out = env.ctr(&["task", "resume", &id]);
    assert!(out.status.success(), "resume: {}", text(&out.stderr));
    assert_eq!(env.task_status(&id), "RUNNING");

    // (TERM would be ignored: the init is pid 1 of its namespace, and sleep
    // installs no handler.) --all: every process of the container.
    let out = env.ctr(&["task", "kill", "--all", "-s", "KILL", &id]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    for _ in 0..200 {
        if env.task_status(&id) == "STOPPED" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(env.task_status(&id), "STOPPED");
    let out = env.ctr(&["task", "delete", &id]);
    assert!(out.status.success(), "task delete: {}", text(&out.stderr));
    let _ = env.ctr(&["container", "delete", &id]);
    assert_clean(&id);
}

/// The container's cgroup file `file` of controller `controller` (v1), or the v2 one.
fn cgroup_file(id: &str, controller: &str, v1: &str, v2: &str) -> String {
    let v1_path = format!("/sys/fs/cgroup/{controller}/{NS}/{id}/{v1}");
    let v2_path = format!("/sys/fs/cgroup/{NS}/{id}/{v2}");
    std::fs::read_to_string(&v1_path)
        .or_else(|_| std::fs::read_to_string(&v2_path))
        .unwrap_or_else(|e| panic!("neither {v1_path} nor {v2_path}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn limits_land_in_the_containers_cgroup_and_update_changes_them() {
    let Some(env) = env() else { return };
    let id = new_id("update");
    let _cleanup_id = Cleanup(&env, id.clone());
    env.start_detached(&["--memory-limit", "67108864"], &id, &["sleep", "300"]);
    assert_eq!(
        cgroup_file(&id, "memory", "memory.limit_in_bytes", "memory.max"),
        "67108864"
    );
    // `ctr` has no update command: call phantom-oci as the shim does, with the
    // resources on stdin.
    let mut update = Command::new(&env.binary)
        .args([
            "--root",
            &format!("/run/containerd/runc/{NS}"),
            "update",
            "--resources",
            "-",
            &id,
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    update
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"memory": {"limit": 134217728}, "pids": {"limit": 50}}"#)
        .unwrap();
    let out = update.wait_with_output().unwrap();
    assert!(out.status.success(), "update: {}", text(&out.stderr));
    assert_eq!(
        cgroup_file(&id, "memory", "memory.limit_in_bytes", "memory.max"),
        "134217728"
    );
    assert_eq!(cgroup_file(&id, "pids", "pids.max", "pids.max"), "50");
    // A field phantom-oci does not support is refused by name, not ignored.
    let mut update = Command::new(&env.binary)
        .args([
            "--root",
            &format!("/run/containerd/runc/{NS}"),
            "update",
            "--resources",
            "-",
            &id,
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    update
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}"#)
        .unwrap();
    let out = update.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("hugepageLimits"),
        "{}",
        text(&out.stderr)
    );
    env.remove(&id);
    assert_clean(&id);
}

/// Run shell command `cmd` on a terminal of its own (`ctr -t` needs one), given by
/// script(1).
fn in_terminal(cmd: &str) -> Output {
    Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn tty_gives_the_container_a_terminal() {
    let Some(env) = env() else { return };
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped: script(1) is needed to give ctr a terminal");
        return;
    }
    let id = new_id("tty");
    let _cleanup_id = Cleanup(&env, id.clone());
    // ctr -t needs a terminal of its own: script(1) gives it one.
    let cmd = format!(
        "ctr -a {} -n {NS} run --rm -t --runc-binary {} {} {id} sh -c 'tty; test -t 0 && echo stdin-is-a-tty'",
        env.socket, env.binary, env.image
    );
    let out = in_terminal(&cmd);
    let got = text(&out.stdout);
    assert!(got.contains("/dev/pts/0"), "{got} {}", text(&out.stderr));
    assert!(got.contains("stdin-is-a-tty"), "{got}");
    assert!(out.status.success(), "{got} {}", text(&out.stderr));
    assert_clean(&id);

    // exec -t into a running container gets a terminal of its own.
    let id2 = new_id("tty-exec");
    let _cleanup_id2 = Cleanup(&env, id2.clone());
    env.start_detached(&[], &id2, &["sleep", "300"]);
    let cmd = format!(
        "ctr -a {} -n {NS} task exec -t --exec-id t1 {id2} sh -c 'test -t 0 && test -t 1 && echo exec-has-a-tty'",
        env.socket
    );
    let out = in_terminal(&cmd);
    assert!(
        text(&out.stdout).contains("exec-has-a-tty"),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    env.remove(&id2);
    assert_clean(&id2);
}

#[test]
fn a_second_container_joins_the_first_ones_network_namespace() {
    let Some(env) = env() else { return };
    let first = new_id("pod-a");
    let _cleanup_first = Cleanup(&env, first.clone());
    let second = new_id("pod-b");
    let _cleanup_second = Cleanup(&env, second.clone());
    let pid = env.start_detached(&[], &first, &["sleep", "300"]);
    let netns = format!("/proc/{pid}/ns/net");
    let want = std::fs::read_link(&netns)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let with = format!("network:{netns}");
    let out = env.run(
        &["--with-ns", &with],
        &second,
        &["readlink", "/proc/self/ns/net"],
    );
    assert_eq!(text(&out.stdout).trim(), want, "{}", text(&out.stderr));
    // Its own pid namespace all the same.
    let out = env.run(&["--with-ns", &with], &second, &["sh", "-c", "echo $$"]);
    assert_eq!(text(&out.stdout).trim(), "1", "{}", text(&out.stderr));
    env.remove(&first);
    assert_clean(&first);
    assert_clean(&second);
}

#[test]
fn host_processes_are_invisible() {
    let Some(env) = env() else { return };
    let id = new_id("procs");
    let _cleanup_id = Cleanup(&env, id.clone());
    let me = std::process::id();
    let out = env.run(
        &[],
        &id,
        &[
            "sh",
            "-c",
            &format!("ls /proc | grep -x {me} || echo unseen; ls -d /proc/[0-9]* | wc -l"),
        ],
    );
    let got = text(&out.stdout);
    let mut lines = got.lines();
    assert_eq!(lines.next(), Some("unseen"), "{got} {}", text(&out.stderr));
    let n: u32 = lines.next().unwrap_or("99").trim().parse().unwrap();
    assert!(n <= 4, "the container sees {n} processes");
    assert_clean(&id);
}

#[test]
fn a_read_only_root_cannot_be_written() {
    let Some(env) = env() else { return };
    let id = new_id("ro");
    let _cleanup_id = Cleanup(&env, id.clone());
    let out = env.run(
        &["--read-only"],
        &id,
        &[
            "sh",
            "-c",
            "touch /x && echo wrote; touch /tmp/x && echo wrote-tmp; echo done",
        ],
    );
    let got = text(&out.stdout);
    assert!(!got.contains("wrote"), "{got}");
    assert!(got.contains("done"), "{got} {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert_clean(&id);
}

#[test]
fn no_mount_and_no_new_namespaces_without_the_capability() {
    let Some(env) = env() else { return };
    let id = new_id("caps");
    let _cleanup_id = Cleanup(&env, id.clone());
    let out = env.run(
        &[],
        &id,
        &["sh", "-c", "mount -t tmpfs none /mnt && echo mounted; unshare -n true && echo unshared; grep CapEff /proc/self/status"],
    );
    let got = text(&out.stdout);
    assert!(
        !got.contains("mounted") && !got.contains("unshared"),
        "{got}"
    );
    // CAP_SYS_ADMIN (21) is not in the effective set.
    let eff = got
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    let eff = u64::from_str_radix(eff, 16).unwrap();
    assert_eq!(eff & (1 << 21), 0, "CapEff {eff:#x}");
    assert_clean(&id);
}

#[test]
fn the_specs_seccomp_profile_is_enforced() {
    let Some(env) = env() else { return };
    // containerd's default profile: installed, one filter, no_new_privs.
    let id1 = new_id("seccomp-default");
    let _cleanup_id1 = Cleanup(&env, id1.clone());
    let out = env.run(
        &["--seccomp"],
        &id1,
        &[
            "grep",
            "-E",
            "^(Seccomp|Seccomp_filters|NoNewPrivs):",
            "/proc/self/status",
        ],
    );
    let got = text(&out.stdout);
    assert!(got.contains("Seccomp:\t2"), "{got} {}", text(&out.stderr));
    assert!(got.contains("NoNewPrivs:\t1"), "{got}");
    assert_clean(&id1);
    // A profile of our own that denies mkdir: the container's mkdir fails, and
    // the same command without it succeeds (the test can fail).
    let dir = std::env::var("PHANTOM_OCI_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let profile = dir.join(format!("deny-mkdir-{}.json", std::process::id()));
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let id2 = new_id("seccomp-custom");
    let _cleanup_id2 = Cleanup(&env, id2.clone());
    let p = profile.to_string_lossy().into_owned();
    let out = env.run(
        &["--seccomp", "--seccomp-profile", &p],
        &id2,
        &["sh", "-c", "mkdir /tmp/d && echo made"],
    );
    assert!(!text(&out.stdout).contains("made"), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "{}",
        text(&out.stderr)
    );
    assert_clean(&id2);
    let id3 = new_id("seccomp-none");
    let _cleanup_id3 = Cleanup(&env, id3.clone());
    let out = env.run(&[], &id3, &["sh", "-c", "mkdir /tmp/d && echo made"]);
    assert_eq!(text(&out.stdout), "made\n", "{}", text(&out.stderr));
    assert_clean(&id3);
    std::fs::remove_file(profile).unwrap();
}

#[test]
fn a_user_namespace_maps_root_to_an_unprivileged_host_uid() {
    let Some(env) = env() else { return };
    let id = new_id("userns");
    let _cleanup_id = Cleanup(&env, id.clone());
    let out = env.run(
        &["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"],
        &id,
        &["sh", "-c", "id -u; cat /proc/self/uid_map"],
    );
    let got = text(&out.stdout);
    let mut lines = got.lines();
    assert_eq!(lines.next(), Some("0"), "{got} {}", text(&out.stderr));
    let map: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"], "{got}");
    assert_clean(&id);
}

#[test]
fn an_unsupported_field_is_refused_by_name_and_nothing_is_left() {
    let Some(env) = env() else { return };
    let id = new_id("refused");
    let _cleanup_id = Cleanup(&env, id.clone());
    // --rdt-class sets linux.intelRdt, which phantom-oci does not support.
    let out = env.run(&["--rdt-class", "gold"], &id, &["true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("linux.intelRdt: not supported"), "{err}");
    let _ = env.ctr(&["container", "delete", &id]);
    assert_clean(&id);
}

#[test]
fn strict_policy_adds_landlock_seccomp_and_drops_capabilities() {
    let Some(env) = env() else { return };
    let script = "grep -E '^(CapEff|Seccomp):' /proc/self/status; \
                  touch /x && echo wrote-root; touch /run/x && echo wrote-run; \
                  unshare -U true && echo unshared; echo end";
    // The same container without the annotation: runc's behaviour (the root is
    // writable, a user namespace can be made), so the assertions below can fail.
    let plain = new_id("plain");
    let _cleanup_plain = Cleanup(&env, plain.clone());
    let out = env.run(&[], &plain, &["sh", "-c", script]);
    let got = text(&out.stdout);
    assert!(
        got.contains("wrote-root") && got.contains("unshared"),
        "{got} {}",
        text(&out.stderr)
    );
    assert_clean(&plain);

    let sid = new_id("strict");
    let _cleanup_sid = Cleanup(&env, sid.clone());
    let out = env.run(
        &["--annotation", "run.phantom.policy=strict"],
        &sid,
        &["sh", "-c", script],
    );
    let got = text(&out.stdout);
    let err = text(&out.stderr);
    assert!(got.contains("end"), "{got} {err}");
    assert!(
        !got.contains("wrote-root"),
        "Landlock let the root be written: {got}"
    );
    assert!(
        got.contains("wrote-run"),
        "a writable mount must stay writable: {got} {err}"
    );
    assert!(
        !got.contains("unshared"),
        "the strict filter let unshare through: {got}"
    );
    assert!(got.contains("Seccomp:\t2"), "{got}");
    let eff = got
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    let eff = u64::from_str_radix(eff, 16).unwrap();
    assert_eq!(eff & (1 << 13), 0, "CAP_NET_RAW kept: {eff:#x}");
    assert_eq!(eff & (1 << 27), 0, "CAP_MKNOD kept: {eff:#x}");
    // An exec'd process gets the same fences.
    assert_clean(&sid);
    let id2 = new_id("strict-exec");
    let _cleanup_id2 = Cleanup(&env, id2.clone());
    env.start_detached(
        &["--annotation", "run.phantom.policy=strict"],
        &id2,
        &["sleep", "300"],
    );
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "s1",
        &id2,
        "sh",
        "-c",
        "touch /y && echo wrote-root; grep Seccomp: /proc/self/status",
    ]);
    let got = text(&out.stdout);
    assert!(
        !got.contains("wrote-root") && got.contains("Seccomp:\t2"),
        "{got} {}",
        text(&out.stderr)
    );
    env.remove(&id2);
    assert_clean(&id2);
}

/// The real uid of `pid` as the host sees it (`Uid:` of /proc/PID/status).
fn host_uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no Uid line for {pid}: {status}"))
}

#[test]
fn strict_policy_runs_the_containers_root_as_an_unprivileged_host_uid() {
    let Some(env) = env() else { return };
    // A host directory owned by host root, bound writable into the container (a
    // volume), and one of the image's files owned by root.
    let vol = TempDir::new("vol");
    let vol = &vol.0;
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display());
    let script = "id -u; stat -c %u /bin/busybox; cat /etc/passwd >/dev/null && echo read-image; \
                  echo hi > /data/f && echo wrote-volume; echo x > /run/x && echo wrote-run; \
                  readlink /proc/self/ns/user";

    // Without the annotation the container's root is host root (runc's
    // behaviour), so the assertions below can fail.
    let plain = new_id("hostuid-plain");
    let _cleanup_plain = Cleanup(&env, plain.clone());
    let pid = env.start_detached(&["--mount", &mount], &plain, &["sleep", "300"]);
    assert_eq!(host_uid(pid), 0, "the plain container's init");
    env.remove(&plain);
    assert_clean(&plain);

    let sid = new_id("hostuid-strict");
    let _cleanup_sid = Cleanup(&env, sid.clone());
    let pid = env.start_detached(
        &[
            "--annotation",
            "run.phantom.policy=strict",
            "--mount",
            &mount,
        ],
        &sid,
        &["sleep", "300"],
    );
    let uid = host_uid(pid);
    assert_ne!(uid, 0, "the strict container's init runs as host root");
    // Its uid 0 is that host uid, and the whole range is above the host's own ids.
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let map: Vec<u32> = map.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(map.len(), 3, "one uid_map line: {map:?}");
    assert_eq!((map[0], map[1]), (0, uid), "uid_map {map:?}");
    assert!(
        map[1] >= 65536,
        "the host range overlaps the host's ids: {map:?}"
    );
    // Still in exactly the cgroup containerd named.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        assert!(
            line.ends_with(&format!(":/{NS}/{sid}")),
            "init's cgroup is not /{NS}/{sid}: {line}"
        );
    }
    // Inside, it is root; the image's files are its own (idmapped: not nobody's);
    // the volume and /run are writable.
    let out = env.ctr(&["task", "exec", "--exec-id", "u1", &sid, "sh", "-c", script]);
    let got = text(&out.stdout);
    // An exec'd process joins the init's user namespace.
    let userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_eq!(
        got,
        format!(
            "0\n0\nread-image\nwrote-volume\nwrote-run\n{}\n",
            userns.display()
        ),
        "{}",
        text(&out.stderr)
    );
    // What the container's root wrote is host root's on disk (the idmapped volume
    // maps it back), not the unprivileged uid's.
    use std::os::unix::fs::MetadataExt;
    let written = std::fs::metadata(vol.join("f")).unwrap();
    assert_eq!(
        written.uid(),
        0,
        "the volume's file is owned by {}",
        written.uid()
    );
    env.remove(&sid);
    assert_clean(&sid);
}

/// A directory of the test's own under the temp dir, removed (after unmounting
/// anything the test mounted on it) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("phantom-oci-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn strict_policy_refuses_a_writable_mount_it_cannot_idmap() {
    let Some(env) = env() else { return };
    // ramfs cannot be idmapped: bound writable, the container's unprivileged root
    // could not write it, so the container is refused, naming the mount; bound
    // read-only, it is a plain bind.
    let dir = TempDir::new("ramfs");
    let ok = Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&dir.0)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("skipped: cannot mount a ramfs");
        return;
    }
    std::fs::write(dir.0.join("f"), "in-ramfs\n").unwrap();
    let id = new_id("strict-ramfs");
    let _cleanup_id = Cleanup(&env, id.clone());
    let rw = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        dir.0.display()
    );
    let out = env.run(
        &["--annotation", "run.phantom.policy=strict", "--mount", &rw],
        &id,
        &["cat", "/data/f"],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        err.contains("mounts /data:") && err.contains("cannot idmap"),
        "{err}"
    );
    let _ = env.ctr(&["container", "delete", &id]);
    assert_clean(&id);
    let id2 = new_id("strict-ramfs-ro");
    let _cleanup_id2 = Cleanup(&env, id2.clone());
    let ro = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        dir.0.display()
    );
    let out = env.run(
        &["--annotation", "run.phantom.policy=strict", "--mount", &ro],
        &id2,
        &["cat", "/data/f"],
    );
    assert_eq!(text(&out.stdout), "in-ramfs\n", "{}", text(&out.stderr));
    assert_clean(&id2);
}

#[test]
fn an_unknown_policy_is_refused_by_name() {
    let Some(env) = env() else { return };
    let id = new_id("bogus-policy");
    let _cleanup_id = Cleanup(&env, id.clone());
    let out = env.run(
        &["--annotation", "run.phantom.policy=bogus"],
        &id,
        &["true"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("annotations.run.phantom.policy"),
        "{}",
        text(&out.stderr)
    );
    let _ = env.ctr(&["container", "delete", &id]);
    assert_clean(&id);
}

#[test]
fn the_container_has_a_session_keyring_of_its_own() {
    let Some(env) = env() else { return };
    // Keyrings are not namespaced: without a new session keyring the container
    // would share the shim's. runc names it after the container; so do we.
    let id = new_id("keyring");
    let _cleanup_id = Cleanup(&env, id.clone());
    env.start_detached(&[], &id, &["sleep", "300"]);
    let keys = std::fs::read_to_string("/proc/keys").unwrap();
    assert!(
        keys.lines()
            .any(|l| l.contains(" keyring ") && l.contains(&format!(" {id}: "))),
        "no session keyring named {id} in /proc/keys"
    );
    env.remove(&id);
    assert_clean(&id);
}

#[test]
fn no_pivot_runs_the_container_in_its_rootfs() {
    let Some(env) = env() else { return };
    let id = new_id("nopivot");
    let _cleanup_id = Cleanup(&env, id.clone());
    let me = std::process::id();
    let out = env.run(
        &["--no-pivot"],
        &id,
        &[
            "sh",
            "-c",
            &format!("ls /proc | grep -x {me} || echo unseen; test -d /root && ls /bin/busybox"),
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "unseen\n/bin/busybox\n",
        "{}",
        text(&out.stderr)
    );
    assert_clean(&id);
}

/// strict's user namespace with the paths that set up the init differently: a
/// terminal (the pty comes from the container's own devpts, owned by its root) and
/// --no-pivot (MS_MOVE and chroot instead of pivot_root), and an exec -t into it.
#[test]
fn strict_policy_holds_with_a_tty_no_pivot_and_exec_tty() {
    let Some(env) = env() else { return };
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped: script(1) is needed to give ctr a terminal");
        return;
    }
    let id = new_id("strict-tty");
    let _cleanup_id = Cleanup(&env, id.clone());
    let report = r#"tr -s " " < /proc/self/uid_map; test -t 0 && echo stdin-is-a-tty"#;
    let cmd = format!(
        "ctr -a {} -n {NS} run --rm -t --annotation run.phantom.policy=strict --runc-binary {} {} {id} sh -c '{report}'",
        env.socket, env.binary, env.image
    );
    let out = in_terminal(&cmd);
    let got = text(&out.stdout);
    assert!(
        got.contains(" 0 100000 65536"),
        "{got} {}",
        text(&out.stderr)
    );
    assert!(got.contains("stdin-is-a-tty"), "{got}");
    assert!(out.status.success(), "{got} {}", text(&out.stderr));
    assert_clean(&id);

    let id2 = new_id("strict-nopivot");
    let _cleanup_id2 = Cleanup(&env, id2.clone());
    let out = env.run(
        &["--no-pivot", "--annotation", "run.phantom.policy=strict"],
        &id2,
        &[
            "sh",
            "-c",
            "tr -s ' ' < /proc/self/uid_map; stat -c %u /bin/busybox; touch /x 2>/dev/null || echo root-read-only",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        " 0 100000 65536\n0\nroot-read-only\n",
        "{}",
        text(&out.stderr)
    );
    assert_clean(&id2);

    let id3 = new_id("strict-exec-tty");
    let _cleanup_id3 = Cleanup(&env, id3.clone());
    env.start_detached(
        &["--annotation", "run.phantom.policy=strict"],
        &id3,
        &["sleep", "300"],
    );
    let cmd = format!(
        "ctr -a {} -n {NS} task exec -t --exec-id t1 {id3} sh -c 'test -t 0 && tr -s \" \" < /proc/self/uid_map'",
        env.socket
    );
    let out = in_terminal(&cmd);
    assert!(
        text(&out.stdout).contains(" 0 100000 65536"),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    env.remove(&id3);
    assert_clean(&id3);
}

#[test]
fn a_memory_hog_is_killed_by_the_containers_memory_limit() {
    let Some(env) = env() else { return };
    let id = new_id("oom");
    let _cleanup_id = Cleanup(&env, id.clone());
    // 32 MiB; `tail /dev/zero` keeps one ever-growing line in memory.
    let out = env.run(
        &["--memory-limit", "33554432"],
        &id,
        &["sh", "-c", "tail /dev/zero"],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert_clean(&id);
}

#[test]
fn no_fd_beyond_stdio_and_no_block_device_reaches_the_container() {
    let Some(env) = env() else { return };
    let id = new_id("fds");
    let _cleanup_id = Cleanup(&env, id.clone());
    // The init's own fds (the start socket, the sync channel, the console socket)
    // must not survive execve: seen from the host, the container's process has
    // stdio only.
    let pid = env.start_detached(&[], &id, &["sleep", "300"]);
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);
    env.remove(&id);
    assert_clean(&id);
    // /dev has only the default character devices; the root is the image's.
    let id2 = new_id("devs");
    let _cleanup_id2 = Cleanup(&env, id2.clone());
    let out = env.run(&[], &id2, &["sh", "-c", "find /dev -type b | wc -l; ls /"]);
    let got = text(&out.stdout);
    let mut lines = got.lines();
    assert_eq!(
        lines.next(),
        Some("0"),
        "block devices in /dev: {got} {}",
        text(&out.stderr)
    );
    let root: Vec<&str> = lines.collect();
    assert!(!root.contains(&"home") && root.contains(&"bin"), "{root:?}");
    assert_clean(&id2);
}

#[test]
fn an_apparmor_profile_is_applied_or_refused_never_ignored() {
    let Some(env) = env() else { return };
    let id = new_id("apparmor");
    let _cleanup_id = Cleanup(&env, id.clone());
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y");
    let out = env.run(
        &["--apparmor-profile", "unconfined"],
        &id,
        &["cat", "/proc/self/attr/current"],
    );
    if enabled {
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("unconfined"),
            "{}",
            text(&out.stdout)
        );
    } else {
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains("process.apparmorProfile: AppArmor is not enabled"),
            "{err}"
        );
        let _ = env.ctr(&["container", "delete", &id]);
    }
    assert_clean(&id);
}
