//! `phantom run --image NAME` (and `filesystem.rootfs: image:NAME`): sandboxes on an
//! image root. Each test builds its images itself (`common::image`: the host's own
//! `/bin/sh`, `cat` and their libraries, with an `/etc/os-release` of its own), imports
//! them into a temporary store (`PHANTOM_STATE_DIR`) and runs on them. No network, no
//! registry. Runs on an image served from a warm pool: `warm_image.rs`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::image::{json_report, sha, stdout_of, symlink, State, OS_RELEASE};
use common::sandbox_available;
use serde_json::json;

/// Every path below `dir` with what it is: type, mode, size, content hash or link
/// target. Equal before and after a run means the run changed nothing there.
fn tree_digest(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(dir).unwrap().display().to_string();
        let what = if meta.file_type().is_symlink() {
            format!("link {}", fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
            "dir".to_string()
        } else {
            format!("file {}", sha(&fs::read(&path).unwrap()))
        };
        out.insert(
            rel,
            format!(
                "{what} mode {:o} uid {} size {}",
                meta.mode(),
                meta.uid(),
                meta.len()
            ),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------

#[test]
fn the_sandbox_sees_the_image_not_the_host() {
    if !sandbox_available() {
        return;
    }
    let state = State::new("root");
    state.import("tiny:1", json!({}), &[]);
    let out = state.phantom(&[
        "run",
        "--json",
        "--image",
        "tiny:1",
        "--",
        "sh",
        "-c",
        "cat /etc/os-release; for p in /usr /usr/bin/env /etc/passwd; do [ -e $p ] && echo \"host path $p\"; done; cat /etc/hostname",
    ]);
    let stdout = stdout_of(&out);
    assert!(
        stdout.starts_with(OS_RELEASE),
        "not the image's os-release\n{}",
        out.describe()
    );
    // The host's /usr and /etc files are not bound in: the image has none of them.
    assert!(!stdout.contains("host path"), "{}", out.describe());
    // ... but the sandbox is still named as usual.
    assert!(stdout.ends_with("phantom\n"), "{}", out.describe());
    let report = json_report(&out);
    assert_eq!(report["start"], "cold");
    assert!(
        !report["warnings"].to_string().contains("image"),
        "{}",
        out.describe()
    );

    // The same from a policy file.
    let policy = state.0.join("on-image.yaml");
    fs::write(
        &policy,
        "profile: on-image\nextends: default\nfilesystem:\n  rootfs: image:tiny:1\n",
    )
    .unwrap();
    let out = state.phantom(&[
        "run",
        "--json",
        "--policy",
        policy.to_str().unwrap(),
        "--",
        "cat",
        "/etc/os-release",
    ]);
    assert_eq!(stdout_of(&out), OS_RELEASE, "{}", out.describe());
}

#[test]
fn writes_outside_tmp_and_workspace_fail_and_never_reach_the_store() {
    if !sandbox_available() {
        return;
    }
    let state = State::new("writes");
    state.import("tiny:1", json!({}), &[]);
    let workspace = state.0.join("ws");
    fs::create_dir(&workspace).unwrap();
    fs::set_permissions(&workspace, fs::Permissions::from_mode(0o777)).unwrap();
    let before = tree_digest(&state.store());

    let script = "for f in /etc/x /etc/os-release /bin/sh /x; do if echo changed > $f; then echo \"wrote $f\"; fi; done; \
                  echo t > /tmp/t && cat /tmp/t; echo w > /workspace/w && cat /workspace/w";
    let out = state.phantom(&[
        "run",
        "--json",
        "--image",
        "tiny:1",
        "--workspace",
        workspace.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    let report = json_report(&out);
    assert_eq!(report["exit_code"], 0, "{}", out.describe());
    assert_eq!(report["stdout"], "t\nw\n", "{}", out.describe());
    let stderr = report["stderr"].as_str().unwrap();
    assert_eq!(
        stderr.matches("Read-only file system").count(),
        4,
        "every write to the image root fails with EROFS\n{}",
        out.describe()
    );
    // The workspace is the caller's, as on the host root.
    assert_eq!(fs::read_to_string(workspace.join("w")).unwrap(), "w\n");
    assert_eq!(
        common::owner(&workspace.join("w")).0,
        common::host_ids().0,
        "files written to the workspace belong to the caller"
    );
    assert_eq!(
        before,
        tree_digest(&state.store()),
        "the run changed the image store"
    );

    // Again, and the image is as it was: nothing of the last run stayed.
    let out = state.phantom(&[
        "run",
        "--json",
        "--image",
        "tiny:1",
        "--",
        "sh",
        "-c",
        "cat /etc/os-release; [ -e /tmp/t ] || echo clean",
    ]);
    assert_eq!(
        stdout_of(&out),
        format!("{OS_RELEASE}clean\n"),
        "{}",
        out.describe()
    );
}

#[test]
fn entrypoint_cmd_env_and_working_dir_apply_as_in_docker() {
    if !sandbox_available() {
        return;
    }
    let state = State::new("config");
    state.import_greeter();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--json", "--image", "greeter"];
        args.extend_from_slice(extra);
        state.phantom(&args)
    };

    // No command: the image's Cmd, its Env (PATH included; HOME stays phantom's), in
    // its WorkingDir, which the image lacks and the sandbox gets anyway.
    let out = run(&[]);
    assert_eq!(
        stdout_of(&out),
        "hi\n/srv\n/bin:/opt/bin\n/tmp\n",
        "{}",
        out.describe()
    );
    // A command replaces Cmd; --env wins over the image's Env; --cwd over WorkingDir.
    let out = run(&[
        "--env",
        "GREETING=yo",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(stdout_of(&out), "yo\n/tmp\n", "{}", out.describe());

    // An Entrypoint stays first; Cmd is only its default argument.
    state.import(
        "entry",
        json!({"Entrypoint": ["sh", "-c", "echo entry:$1", "sh"], "Cmd": ["default"], "User": "1000"}),
        &[],
    );
    let out = state.phantom(&["run", "--json", "--image", "entry"]);
    assert_eq!(stdout_of(&out), "entry:default\n", "{}", out.describe());
    let out = state.phantom(&["run", "--json", "--image", "entry", "--", "given"]);
    assert_eq!(stdout_of(&out), "entry:given\n", "{}", out.describe());
    // User is not honoured yet, and says so.
    let warnings = json_report(&out)["warnings"].to_string();
    assert!(
        warnings.contains("User `1000`") && warnings.contains("does not honour"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_missing_image_or_command_is_a_usage_error() {
    let state = State::new("usage");
    let out = state.phantom(&["run", "--image", "nope:1", "--", "true"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("no image named `nope:1`") && out.stderr.contains("phantom image list"),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());

    let out = state.phantom(&["run", "--image", "../etc", "--", "true"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("not a valid image name"),
        "{}",
        out.describe()
    );

    // Neither a command nor Entrypoint/Cmd: nothing to run.
    state.import("bare", json!({}), &[]);
    let out = state.phantom(&["run", "--image", "bare"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("no command given") && out.stderr.contains("no Entrypoint or Cmd"),
        "{}",
        out.describe()
    );
    // Without an image, a command is still required.
    let out = state.phantom(&["run"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("no command given"),
        "{}",
        out.describe()
    );
}

#[test]
fn isolation_holds_on_an_image_root() {
    if !sandbox_available() {
        return;
    }
    let state = State::new("isolation");
    state.import("tiny:1", json!({}), &[]);
    let out = state.phantom(&[
        "run",
        "--json",
        "--image",
        "tiny:1",
        "--",
        "sh",
        "-c",
        "cat /proc/self/uid_map; echo ==; cat /proc/self/status; echo ==; cat /proc/net/dev; echo ==; cat /proc/sys/kernel/hostname",
    ]);
    let report = json_report(&out);
    let stdout = stdout_of(&out);
    let parts: Vec<&str> = stdout.split("==\n").collect();
    assert_eq!(parts.len(), 4, "{}", out.describe());
    let (uid_map, status, net, hostname) = (parts[0], parts[1], parts[2], parts[3]);

    // uid 0 inside is not host root.
    let map: Vec<u64> = uid_map
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(map.len(), 3, "one mapping: {uid_map}");
    assert_eq!(map[0], 0);
    assert_ne!(map[1], 0, "the sandbox's root is host root: {uid_map}");
    assert_eq!(map[1], report["isolation"]["host_uid"].as_u64().unwrap());

    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in {status}"))
    };
    assert_eq!(field("Seccomp:"), "2", "seccomp filter mode");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapBnd:"), "0000000000000000");

    // Only lo.
    let interfaces: Vec<&str> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "{net}");
    assert_eq!(hostname, "phantom\n");
    assert_eq!(report["isolation"]["seccomp_programs"].as_u64(), Some(2));
}

#[test]
fn symlinks_in_an_image_never_lead_phantom_out_of_its_root() {
    if !sandbox_available() {
        return;
    }
    let state = State::new("symlinks");
    // Host places an image points its mount points at: phantom must neither write to
    // them nor mount over them, and the sandbox must not see them. Not below /tmp:
    // phantom builds the root there, which hides the host's /tmp from its own steps.
    let shm = Path::new("/dev/shm");
    let base = if fs::metadata(shm).is_ok_and(|m| m.is_dir() && m.mode() & 0o1777 == 0o1777) {
        shm.to_path_buf()
    } else {
        state.0.clone()
    };
    let outside = Scratch(base.join(format!(
        "phantom-image-run-outside-{}-{}",
        std::process::id(),
        common::unique()
    )));
    let outside = &outside.0;
    fs::create_dir(outside).unwrap();
    fs::set_permissions(outside, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(outside.join("marker"), "host file\n").unwrap();
    fs::set_permissions(outside.join("marker"), fs::Permissions::from_mode(0o666)).unwrap();
    let out_dir = outside.to_str().unwrap();
    state.import(
        "evil",
        json!({"WorkingDir": "/work/../../srv"}),
        &[
            symlink("etc/hosts", &format!("{out_dir}/hosts")),
            symlink("etc/hostname", &format!("{out_dir}/marker")),
            symlink("workspace", out_dir),
            symlink("tmp", out_dir),
            symlink("dev", out_dir),
            symlink("proc", out_dir),
            symlink("srv", out_dir),
        ],
    );
    let before = tree_digest(outside);
    let out = state.phantom(&[
        "run",
        "--json",
        "--image",
        "evil",
        "--",
        "sh",
        "-c",
        "pwd; cat /etc/hostname; [ -e /marker ] || [ -e /workspace/marker ] || [ -e /tmp/marker ] || echo unseen; [ -L /tmp ] || echo real-tmp",
    ]);
    assert_eq!(
        before,
        tree_digest(outside),
        "phantom wrote to a host directory an image symlink pointed at\n{}",
        out.describe()
    );
    assert_eq!(
        stdout_of(&out),
        "/srv\nphantom\nunseen\nreal-tmp\n",
        "{}",
        out.describe()
    );
}

/// A host directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
