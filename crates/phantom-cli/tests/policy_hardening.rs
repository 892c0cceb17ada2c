//! The policy layer's hardening (issue 16) as a user meets it: `phantom policy check`
//! and `phantom run`.
//!
//! * item 15: every mistake of a file in one round, one `phantom: error:` line each;
//!   `network.allow` under a mode that ignores it is named, at check and at run;
//! * item 8: a policy that weakens hardened mode is refused before any sandbox exists,
//!   and in sandbox mode each weakening key is named;
//! * item 13: a bind below a directory the sandbox's user cannot enter is refused at
//!   check time with what to do, and `rust-dev` runs the host's rustup toolchain.
//!
//! The `policy check` tests need nothing; the run tests need user namespaces and print
//! `skipped: <why>` without them (a failure under `PHANTOM_REQUIRE_ISOLATION=1`).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

/// A scratch directory for policy files and bind sources, removed on drop (its
/// permissions restored first, so that removal works whatever a test closed).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "phantom-policy-it-{name}-{}-{}",
            std::process::id(),
            unique()
        ));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for entry in walk(&self.0) {
            let _ = fs::set_permissions(&entry, fs::Permissions::from_mode(0o755));
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `dir` and every directory below it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&entry.path()));
            }
        }
    }
    out
}

fn check(policy: &str) -> PhantomOutput {
    phantom(&["policy", "check", policy], |_| {})
}

/// `phantom: error:` lines of stderr.
fn error_lines(out: &PhantomOutput) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with("phantom: error: "))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Item 15

#[test]
fn policy_check_reports_every_mistake_in_one_round() {
    let scratch = Scratch::new("three");
    let policy = scratch.write(
        "three.yaml",
        "profile: x\nresources:\n  memory: 12QB\n  cpu: abc\nbogus: 1\n",
    );
    let out = check(&policy);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    let lines = error_lines(&out);
    assert_eq!(lines.len(), 3, "{}", out.describe());
    for (line, (place, says)) in lines.iter().zip([
        ("3:11", "resources.memory: cannot parse \"12QB\" as a size"),
        ("4:8", "resources.cpu: cannot parse \"abc\""),
        ("5:1", "unknown key `bogus` at the top level"),
    ]) {
        assert!(
            line.starts_with(&format!("phantom: error: {policy}:{place}: {says}")),
            "{line}\n{}",
            out.describe()
        );
    }
    // `phantom run` refuses the same file with the same lines, before any sandbox.
    let out = phantom(
        &["run", "--cold", "--policy", &policy, "--", "true"],
        |_| {},
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert_eq!(error_lines(&out).len(), 3, "{}", out.describe());
}

#[test]
fn network_allow_outside_limited_mode_is_named_at_check_and_at_run() {
    let scratch = Scratch::new("allow");
    // `extends: default` states loopback-only; the rules written here would do nothing.
    let policy = scratch.write(
        "allow.yaml",
        "profile: x\nextends: default\nnetwork:\n  allow: [pypi.org]\n",
    );
    let warning = "network.allow: has no effect with network.mode: loopback-only";
    let out = check(&policy);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr
            .contains(&format!("phantom: warning: {policy}: {warning}")),
        "{}",
        out.describe()
    );
    if !sandbox_available() {
        return;
    }
    let out = phantom(
        &["run", "--cold", "--policy", &policy, "--", "true"],
        |_| {},
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("phantom: warning: {warning}")),
        "{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------------
// Item 8

/// The policy of issue 16 item 8: it passed `policy check` silently, and `unshare -U
/// true` worked inside.
const WEAKENED: &str = include_str!("../../phantom-policy/tests/fixtures/weakened.yaml");
#[test]
fn a_policy_that_weakens_hardened_mode_is_refused_with_every_reason() {
    let scratch = Scratch::new("weak");
    let policy = scratch.write("weak.yaml", WEAKENED);
    let out = check(&policy);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    let lines = error_lines(&out);
    assert_eq!(lines.len(), 6, "{}", out.describe());
    for says in [
        ":5:13: security.seccomp.allow[0]: `mount`",
        ":5:20: security.seccomp.allow[1]: `unshare` creates or joins namespaces",
        ":5:29: security.seccomp.allow[2]: `setns`",
        ":7:14: security.landlock.enabled: false turns Landlock off",
        ":10:16: filesystem.binds[0].source: `/` shows the sandbox the host's /proc",
        ":11:16: filesystem.binds[1].source: `/run` shows the sandbox the host's /run",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(says)
                && l.ends_with("which mode hardened forbids; remove it or use mode: sandbox")),
            "{says}\n{}",
            out.describe()
        );
    }
    if !sandbox_available() {
        return;
    }
    // The run is refused the same way: no sandbox, so `unshare -U` never runs.
    let out = phantom(
        &[
            "run", "--cold", "--policy", &policy, "--", "unshare", "-U", "true",
        ],
        |_| {},
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert_eq!(error_lines(&out).len(), 6, "{}", out.describe());
}

#[test]
fn a_sandbox_policy_that_weakens_it_is_named_key_by_key_at_run() {
    if !sandbox_available() {
        return;
    }
    let scratch = Scratch::new("weak-sandbox");
    let policy = scratch.write(
        "weak.yaml",
        "profile: w\nsecurity:\n  seccomp:\n    allow: [unshare]\n  landlock:\n    enabled: false\n",
    );
    let out = phantom(
        &[
            "run", "--cold", "--policy", &policy, "--", "unshare", "-U", "true",
        ],
        |_| {},
    );
    // Allowed (the author is trusted), and said out loud.
    for says in [
        "phantom: warning: security.seccomp.allow[0]: `unshare` creates or joins namespaces",
        "phantom: warning: security.landlock.enabled: false turns Landlock off",
    ] {
        assert!(out.stderr.contains(says), "{says}\n{}", out.describe());
    }
    // The warning is not idle: the namespace the policy allows is really made.
    assert_eq!(out.code, Some(0), "{}", out.describe());
    // --mode hardened on the command line refuses the same file.
    let out = phantom(
        &[
            "run", "--cold", "--mode", "hardened", "--policy", &policy, "--", "true",
        ],
        |_| {},
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert_eq!(error_lines(&out).len(), 2, "{}", out.describe());
}

// ---------------------------------------------------------------------------------------
// Item 13

#[test]
fn a_bind_under_a_directory_the_sandbox_cannot_enter_is_passed_in_by_root_or_refused_at_check_time()
{
    let scratch = Scratch::new("closed");
    // Unprivileged, the sandbox has our own access: a directory we cannot enter
    // ourselves cannot be bound, and check says so. As root the sandbox's root is
    // another, unprivileged uid, and a 0700 directory of root's (like /root) is closed
    // to it: the engine passes such a source in itself, so the bind works.
    let closed = scratch.0.join("home");
    let tool = closed.join(".cargo/bin");
    fs::create_dir_all(&tool).unwrap();
    fs::write(tool.join("hello"), "hi\n").unwrap();
    let mode = if is_root() { 0o700 } else { 0o000 };
    let policy = scratch.write(
        "closed.yaml",
        &format!(
            "profile: closed\nfilesystem:\n  binds:\n    - {{source: {}, target: /opt/tool}}\n",
            tool.display()
        ),
    );
    fs::set_permissions(&closed, fs::Permissions::from_mode(mode)).unwrap();
    let run = || {
        phantom(
            &[
                "run",
                "--cold",
                "--policy",
                &policy,
                "--",
                "cat",
                "/opt/tool/hello",
            ],
            |_| {},
        )
    };
    if is_root() {
        let out = check(&policy);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        if sandbox_available() {
            // Regression: a bare EACCES at setup ("sandbox setup failed").
            let out = run();
            assert_eq!(out.code, Some(0), "{}", out.describe());
            assert_eq!(out.stdout, "hi\n", "{}", out.describe());
        }
        return;
    }
    let says = format!(
        "filesystem.binds[0].source: `{}` is below {} (mode {mode:04o}, owner uid {}), which the sandbox's user cannot enter, so the bind would fail with EACCES; bind a path outside it (e.g. under /opt), or give other users search permission on it (chmod o+x {})",
        tool.display(),
        closed.display(),
        fs::metadata(&closed).unwrap().uid(),
        closed.display()
    );
    let out = check(&policy);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr
            .contains(&format!("phantom: error: {policy}:4:16: {says}")),
        "{}",
        out.describe()
    );
    if !sandbox_available() {
        return;
    }
    let out = run();
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains(&says), "{}", out.describe());
    assert!(
        !out.stderr.contains("sandbox setup failed"),
        "{}",
        out.describe()
    );
    // Once the sandbox's user may enter, the same bind works: the refusal was the cause.
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o711)).unwrap();
    let out = run();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "hi\n", "{}", out.describe());
}

/// The host's rustup toolchain, where rustup put it for the user running the tests.
struct HostRustup {
    cargo_bin: PathBuf,
    home: PathBuf,
}

fn host_rustup() -> Option<HostRustup> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let user_home = var("HOME")?;
    let cargo_home = var("CARGO_HOME").unwrap_or_else(|| user_home.join(".cargo"));
    let home = var("RUSTUP_HOME").unwrap_or_else(|| user_home.join(".rustup"));
    let cargo_bin = cargo_home.join("bin");
    (cargo_bin.join("rustc").exists() && home.join("toolchains").is_dir())
        .then_some(HostRustup { cargo_bin, home })
}

/// The first directory on the way to `path` that the sandbox's user cannot enter:
/// without "others" search permission when we are root, else one we cannot enter.
fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    let root = is_root();
    path.ancestors()
        .skip(1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(|dir| {
            let closed = if root {
                fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 == 0)
            } else {
                fs::metadata(dir.join(".")).is_err()
            };
            closed.then(|| dir.to_path_buf())
        })
}

#[test]
fn rust_dev_runs_rustc_from_the_hosts_rustup_toolchain() {
    if !sandbox_available() {
        return;
    }
    let Some(rustup) = host_rustup() else {
        common::not_applicable("no rustup toolchain");
        return;
    };
    let rustc = [
        "run",
        "--cold",
        "--profile",
        "rust-dev",
        "--",
        "rustc",
        "--version",
    ];
    let out = phantom(&rustc, |_| {});
    let closed = closed_ancestor(&rustup.cargo_bin).or_else(|| closed_ancestor(&rustup.home));
    match closed {
        // Our own home, or root's 0700 /root, which a root engine passes in itself
        // (regression: rust-dev said "rustc: command not found" as root).
        None => {}
        Some(_) if is_root() => {}
        // Another user's home we cannot enter: the run says so, and what to do,
        // instead of a bare "command not found".
        Some(closed) => {
            let says = format!(
                "phantom: warning: filesystem.toolchains: rustup at {} and {} is left out: the sandbox's user cannot enter {}",
                rustup.cargo_bin.display(),
                rustup.home.display(),
                closed.display()
            );
            assert!(out.stderr.contains(&says), "{says}\n{}", out.describe());
            return;
        }
    }
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.stdout.starts_with("rustc "), "{}", out.describe());
    assert!(!out.stderr.contains("left out"), "{}", out.describe());
}
