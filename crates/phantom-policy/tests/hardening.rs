//! The policy layer's part of the hardening round (issue 16): every mistake in one
//! report (item 15), keys that weaken hardened mode refused or named (item 8),
//! toolchains found on the host and binds the sandbox cannot reach (item 13), and
//! reserved addresses allowed by name (item 14). The host is a fake ([`FakeHost`]), so
//! what these tests assert does not depend on the machine.

use std::collections::{BTreeMap, BTreeSet};

use phantom_policy::egress::{EgressRule, Verdict};
use phantom_policy::host::{Barrier, Host, PathKind};
use phantom_policy::{
    compile_on, load_builtin, load_str, Mode, Mount, NetworkMode, Overrides, Plan, PolicyError,
    Profile, Toolchain,
};

// ---------------------------------------------------------------------------------------
// A host made of strings.

#[derive(Default)]
struct FakeHost {
    vars: BTreeMap<String, String>,
    /// Directories and files that exist (a file's parents exist too).
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
    sockets: BTreeSet<String>,
    /// Symlinks: path -> what it resolves to.
    links: BTreeMap<String, String>,
    /// Directories the sandbox's user cannot enter.
    closed: BTreeMap<String, Barrier>,
}

impl FakeHost {
    fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }
    fn dir(mut self, path: &str) -> Self {
        self.dirs.insert(path.into());
        self
    }
    fn file(mut self, path: &str) -> Self {
        self.files.insert(path.into());
        self
    }
    fn socket(mut self, path: &str) -> Self {
        self.sockets.insert(path.into());
        self
    }
    fn link(mut self, path: &str, to: &str) -> Self {
        self.links.insert(path.into(), to.into());
        self
    }
    fn closed(mut self, dir: &str, mode: u32) -> Self {
        self.closed.insert(
            dir.into(),
            Barrier {
                dir: dir.into(),
                mode,
                uid: 0,
            },
        );
        self
    }
}

fn below(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

impl Host for FakeHost {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn kind(&self, path: &str) -> PathKind {
        if self.files.contains(path) {
            PathKind::File
        } else if self.sockets.contains(path) {
            PathKind::Socket
        } else if self.dirs.contains(path)
            || self
                .dirs
                .iter()
                .chain(&self.files)
                .chain(&self.sockets)
                .any(|p| below(p, path))
        {
            PathKind::Dir
        } else {
            PathKind::Missing
        }
    }
    fn list(&self, path: &str) -> Vec<String> {
        let names: BTreeSet<String> = self
            .dirs
            .iter()
            .chain(&self.files)
            .chain(&self.sockets)
            .filter_map(|p| {
                let rest = p.strip_prefix(path)?.strip_prefix('/')?;
                Some(rest.split('/').next()?.to_string())
            })
            .collect();
        names.into_iter().collect()
    }
    fn real_path(&self, path: &str) -> Option<String> {
        self.links.get(path).cloned()
    }
    fn barrier(&self, path: &str) -> Option<Barrier> {
        self.closed
            .iter()
            .find(|(dir, _)| below(path, dir))
            .map(|(_, b)| b.clone())
    }
}

fn load(text: &str) -> Result<Profile, PolicyError> {
    load_str(text, "policy.yaml")
}

fn compile_with(text: &str, mode: Option<Mode>, host: &FakeHost) -> Result<Plan, PolicyError> {
    let overrides = Overrides {
        mode,
        ..Overrides::default()
    };
    compile_on(&load(text).unwrap(), &overrides, host)
}

fn plan_on(text: &str, host: &FakeHost) -> Plan {
    compile_with(text, None, host).unwrap_or_else(|e| panic!("{e}"))
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> u64 {
    let offset = text.find(needle).unwrap_or_else(|| panic!("{needle:?}"));
    text[..offset].matches('\n').count() as u64 + 1
}

fn binds(plan: &Plan) -> Vec<(&str, &str, bool)> {
    plan.mounts
        .iter()
        .filter_map(|m| match m {
            Mount::Bind {
                source,
                target,
                read_only,
                ..
            } => Some((source.as_str(), target.as_str(), *read_only)),
            _ => None,
        })
        .collect()
}

fn env<'p>(plan: &'p Plan, key: &str) -> Option<&'p str> {
    plan.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------
// Item 15: every independent mistake in one round.

#[test]
fn a_policy_with_three_mistakes_reports_all_three_at_their_places() {
    let text = "profile: x\nresources:\n  memory: 12QB\n  cpu: abc\nbogus: 1\n";
    let err = load(text).unwrap_err();
    let lines: Vec<u64> = err
        .errors()
        .iter()
        .map(|e| e.position().expect("a place").line)
        .collect();
    assert_eq!(lines, [3, 4, 5], "{err}");
    let shown = err.to_string();
    let shown: Vec<&str> = shown.lines().collect();
    assert_eq!(shown.len(), 3, "{err}");
    assert!(
        shown[0].starts_with("policy.yaml:3:11: resources.memory: "),
        "{err}"
    );
    assert!(
        shown[1].starts_with("policy.yaml:4:8: resources.cpu: "),
        "{err}"
    );
    assert!(
        shown[2].starts_with("policy.yaml:5:1: unknown key `bogus`"),
        "{err}"
    );
    // A caller that wants one error gets the first, whole.
    assert_eq!(err.first().to_string(), shown[0]);
    assert_eq!(err.position().unwrap().line, 3);
}

#[test]
fn mistakes_in_lists_and_sections_are_all_collected() {
    let text = "\
profile: x
mode: hardend
security:
  seccomp:
    allow: [read, notasyscall, clone3]
network:
  mode: limited
  allow: [pypi.org, \"https://x.org/\"]
filesystem:
  etc: [passwd]
  binds:
    - {source: relative, target: /opt/a}
    - {source: /opt/b, target: /tmp/b}
  workspace: /workspace
performance:
  preload: [\"not a module\"]
";
    let err = load(text).unwrap_err();
    let found: Vec<(u64, String)> = err
        .errors()
        .iter()
        .map(|e| (e.position().unwrap().line, e.to_string()))
        .collect();
    for (needle, says) in [
        ("mode: hardend", "did you mean `hardened`"),
        ("notasyscall", "not a syscall"),
        ("clone3", "ENOSYS"),
        ("\"https://x.org/\"", "is a URL"),
        ("passwd", "generated by phantom"),
        ("relative", "not an absolute path"),
        ("/tmp/b", "under /tmp"),
        ("\"not a module\"", "not a module name"),
    ] {
        let line = line_of(text, needle);
        assert!(
            found.iter().any(|(l, m)| *l == line && m.contains(says)),
            "{needle}: {found:#?}"
        );
    }
    assert_eq!(found.len(), 8, "{found:#?}");
    // In file order.
    let lines: Vec<u64> = found.iter().map(|(l, _)| *l).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn one_mistake_is_still_one_plain_error() {
    let err = load("profile: x\nresources:\n  memroy: 1\n").unwrap_err();
    assert!(matches!(err, PolicyError::UnknownKey { .. }), "{err}");
    assert_eq!(err.errors().len(), 1);
    // A misspelt `profile:` is one mistake, not also a missing name.
    let err = load("profil: x\n").unwrap_err();
    assert_eq!(err.errors().len(), 1, "{err}");
    assert!(err.to_string().contains("did you mean `profile`"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Item 8: what weakens hardened mode.

/// The policy of issue 16 item 8: passed `policy check` silently, and `unshare -U
/// true` worked inside.
const WEAKENED: &str = include_str!("fixtures/weakened.yaml");
#[test]
fn hardened_mode_refuses_every_key_that_weakens_it_at_its_place() {
    let err = compile_with(WEAKENED, None, &FakeHost::default()).unwrap_err();
    let found: Vec<(u64, u64, String)> = err
        .errors()
        .iter()
        .map(|e| {
            let at = e.position().expect("a place");
            (at.line, at.column, e.to_string())
        })
        .collect();
    assert_eq!(found.len(), 6, "{err}");
    let allow_line = line_of(WEAKENED, "allow: [mount");
    for (column_of, says) in [
        (
            "mount",
            "security.seccomp.allow[0]: `mount` changes the sandbox's mounts",
        ),
        (
            "unshare",
            "security.seccomp.allow[1]: `unshare` creates or joins namespaces",
        ),
        (
            "setns",
            "security.seccomp.allow[2]: `setns` creates or joins namespaces",
        ),
    ] {
        let column = WEAKENED
            .lines()
            .nth(allow_line as usize - 1)
            .unwrap()
            .find(column_of)
            .unwrap() as u64
            + 1;
        assert!(
            found
                .iter()
                .any(|(l, c, m)| *l == allow_line && *c == column && m.contains(says)),
            "{says}: {found:#?}"
        );
    }
    let landlock = line_of(WEAKENED, "enabled: false");
    assert!(found.iter().any(|(l, _, m)| *l == landlock
        && m.contains("security.landlock.enabled: false turns Landlock off")));
    let root = line_of(WEAKENED, "source: /,");
    assert!(found.iter().any(|(l, _, m)| *l == root
        && m.contains("filesystem.binds[0].source: `/` shows the sandbox the host's /proc (every host process and")
        && m.contains("/run")
        && m.contains("/dev")
        && m.contains("/sys")));
    let run = line_of(WEAKENED, "source: /run");
    assert!(found.iter().any(|(l, _, m)| *l == run
        && m.contains("filesystem.binds[1].source: `/run` shows the sandbox the host's /run")));
    for (_, _, m) in &found {
        assert!(
            m.contains("which mode hardened forbids; remove it or use mode: sandbox"),
            "{m}"
        );
    }
}

#[test]
fn the_same_keys_are_named_in_warnings_in_sandbox_mode() {
    let sandbox = WEAKENED.replace("mode: hardened", "mode: sandbox");
    let plan = plan_on(&sandbox, &FakeHost::default());
    let warned = |start: &str| plan.warnings.iter().any(|w| w.starts_with(start));
    for key in [
        "security.seccomp.allow[0]: `mount`",
        "security.seccomp.allow[1]: `unshare`",
        "security.seccomp.allow[2]: `setns`",
        "security.landlock.enabled: false turns Landlock off",
        "filesystem.binds[0].source: `/` shows the sandbox the host's /proc",
        "filesystem.binds[1].source: `/run` shows the sandbox the host's /run",
    ] {
        assert!(warned(key), "{key}: {:#?}", plan.warnings);
    }
    // ... and that a read-only bind does not stop connect() to the sockets in them.
    for key in [
        "filesystem.binds[0].source: `/` holds /run, /tmp, /dev,",
        "filesystem.binds[1].source: `/run` holds /run,",
    ] {
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.starts_with(key) && w.contains("does not stop connect()")),
            "{key}: {:#?}",
            plan.warnings
        );
    }
}

#[test]
fn mode_hardened_on_the_command_line_refuses_a_weakening_policy_too() {
    let text =
        "profile: x\nsecurity:\n  seccomp:\n    allow: [ptrace, io_uring_setup, bpf, keyctl]\n";
    assert!(compile_with(text, None, &FakeHost::default()).is_ok());
    let err = compile_with(text, Some(Mode::Hardened), &FakeHost::default()).unwrap_err();
    assert_eq!(err.errors().len(), 4, "{err}");
    for e in err.errors() {
        assert_eq!(e.position().unwrap().line, 4, "{e}");
    }
    // security.level: low turns Landlock off as surely as landlock.enabled: false.
    let low = "profile: x\nmode: hardened\nsecurity:\n  level: low\n";
    let err = compile_with(low, None, &FakeHost::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("policy.yaml:4:10: security.level: low turns Landlock off"),
        "{err}"
    );
}

#[test]
fn syscalls_that_break_no_fence_are_still_allowed_in_hardened_mode() {
    let text =
        "profile: x\nmode: hardened\nsecurity:\n  seccomp:\n    allow: [mbind, sched_setattr]\n";
    let plan = plan_on(text, &FakeHost::default());
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    // The built-in hardened profile passes untouched.
    let strict = load_builtin("strict").unwrap();
    compile_on(&strict, &Overrides::default(), &FakeHost::default()).unwrap();
}

#[test]
fn a_bind_reaching_host_state_through_a_symlink_is_caught() {
    let text = "profile: x\nmode: hardened\nfilesystem:\n  binds:\n    - {source: /opt/p, target: /opt/p}\n";
    let host = FakeHost::default().link("/opt/p", "/proc");
    let err = compile_with(text, None, &host).unwrap_err();
    assert!(
        err.to_string()
            .contains("`/opt/p` (that is /proc) shows the sandbox the host's /proc"),
        "{err}"
    );
    // Something below /sys or /dev is host state too.
    let text = "profile: x\nmode: hardened\nfilesystem:\n  binds:\n    - {source: /dev/kvm, target: /opt/kvm}\n";
    let err = compile_with(text, None, &FakeHost::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("the host's /dev (the host's devices)"),
        "{err}"
    );
}

#[test]
fn a_bind_of_a_socket_directory_says_connect_is_not_stopped() {
    let host = FakeHost::default()
        .socket("/tmp/.X11-unix/X0")
        .dir("/tmp/build")
        .socket("/var/lib/app/app.sock");
    for (source, holds) in [
        ("/tmp/.X11-unix", "holds the socket X0"),
        ("/run/user/1000", "holds /run"),
        ("/var", "holds /var/run"),
    ] {
        let text = format!(
            "profile: x\nfilesystem:\n  binds:\n    - {{source: {source}, target: /opt/b}}\n"
        );
        let plan = compile_with(&text, None, &host).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            plan.warnings.iter().any(|w| w.starts_with(&format!(
                "filesystem.binds[0].source: `{source}` {holds}, where unix sockets live: a read-only bind does not stop connect()"
            ))),
            "{source}: {:?}",
            plan.warnings
        );
    }
    // In hardened mode too (the bind itself is allowed there).
    let text = "profile: x\nmode: hardened\nfilesystem:\n  binds:\n    - {source: /tmp/.X11-unix, target: /opt/x11}\n";
    assert_eq!(plan_on(text, &host).warnings.len(), 1);
    // A socket itself is a door to the host service behind it: refused in hardened.
    let text = "profile: x\nmode: hardened\nfilesystem:\n  binds:\n    - {source: /var/lib/app/app.sock, target: /opt/app.sock}\n";
    let err = compile_with(text, None, &host).unwrap_err();
    assert!(
        err.to_string().contains(
            "`/var/lib/app/app.sock` is a unix socket: the sandbox can connect() to the host service behind it"
        ),
        "{err}"
    );
    // A plain directory, or one below /tmp without sockets, is not named.
    for source in ["/opt/tool", "/tmp/build"] {
        let text = format!(
            "profile: x\nfilesystem:\n  binds:\n    - {{source: {source}, target: /opt/t}}\n"
        );
        assert!(plan_on(&text, &host).warnings.is_empty(), "{source}");
    }
}

// ---------------------------------------------------------------------------------------
// Item 13: toolchains, and binds the sandbox cannot reach.

#[test]
fn the_dev_profiles_look_for_their_toolchains() {
    for (name, toolchain) in [
        ("rust-dev", Toolchain::Rustup),
        ("go-dev", Toolchain::Go),
        ("node-dev", Toolchain::Nvm),
    ] {
        let profile = load_builtin(name).unwrap();
        assert_eq!(profile.filesystem.toolchains, [toolchain], "{name}");
    }
}

fn rustup_host(home: &str) -> FakeHost {
    FakeHost::default()
        .var("HOME", home)
        .dir(&format!("{home}/.cargo/bin"))
        .dir(&format!(
            "{home}/.rustup/toolchains/stable-x86_64-unknown-linux-gnu"
        ))
}

const RUSTUP: &str = "profile: x\nfilesystem:\n  toolchains: [rustup]\n";

#[test]
fn rustup_is_found_in_the_invoking_users_home_and_bound_read_only() {
    let plan = plan_on(RUSTUP, &rustup_host("/home/u"));
    let b = binds(&plan);
    assert!(
        b.contains(&("/home/u/.cargo/bin", "/home/u/.cargo/bin", true)),
        "{b:?}"
    );
    assert!(
        b.contains(&("/home/u/.rustup", "/home/u/.rustup", true)),
        "{b:?}"
    );
    assert!(env(&plan, "PATH")
        .unwrap()
        .starts_with("/home/u/.cargo/bin:/usr/local/sbin:"));
    assert_eq!(env(&plan, "RUSTUP_HOME"), Some("/home/u/.rustup"));
    // cargo's own home stays writable under HOME.
    assert_eq!(env(&plan, "CARGO_HOME"), None);
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    // RUSTUP_HOME and CARGO_HOME win over the home.
    let host = FakeHost::default()
        .var("HOME", "/home/u")
        .var("RUSTUP_HOME", "/opt/rustup")
        .var("CARGO_HOME", "/opt/cargo")
        .dir("/opt/cargo/bin")
        .dir("/opt/rustup/toolchains");
    let plan = plan_on(RUSTUP, &host);
    assert!(binds(&plan).contains(&("/opt/rustup", "/opt/rustup", true)));
    assert!(env(&plan, "PATH").unwrap().starts_with("/opt/cargo/bin:"));
    // Mode direct runs on the host's own filesystem: PATH and RUSTUP_HOME, no bind.
    let plan = compile_with(
        RUSTUP,
        Some(Mode::Direct),
        &rustup_host("/root").closed("/root", 0o700),
    )
    .unwrap();
    assert!(plan.mounts.is_empty());
    assert!(env(&plan, "PATH").unwrap().starts_with("/root/.cargo/bin:"));
    assert_eq!(env(&plan, "RUSTUP_HOME"), Some("/root/.rustup"));
    // Not installed: nothing changes, nothing is said.
    let plan = plan_on(RUSTUP, &FakeHost::default().var("HOME", "/home/u"));
    assert_eq!(plan.env, plan_on("profile: x\n", &FakeHost::default()).env);
    assert!(plan.warnings.is_empty());
}

#[test]
fn a_toolchain_the_sandbox_cannot_reach_is_left_out_with_what_to_do() {
    let host = rustup_host("/root").closed("/root", 0o700);
    let plan = plan_on(RUSTUP, &host);
    assert!(!binds(&plan).iter().any(|(s, _, _)| s.starts_with("/root")));
    assert!(!env(&plan, "PATH").unwrap().contains("/root"));
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    let w = &plan.warnings[0];
    assert!(w.starts_with("filesystem.toolchains: rustup at /root/.cargo/bin and /root/.rustup is left out: the sandbox's user cannot enter /root (mode 0700, owner uid 0)"), "{w}");
    assert!(w.contains("chmod o+x /root") && w.contains("/opt"), "{w}");
}

#[test]
fn go_and_nvm_are_found_where_their_installers_put_them() {
    let go = "profile: x\nfilesystem:\n  toolchains: [go]\n";
    let host = FakeHost::default().file("/usr/local/go/bin/go");
    let plan = plan_on(go, &host);
    // /usr/local/go is visible through /usr already: PATH only.
    assert!(!binds(&plan).iter().any(|(s, _, _)| *s == "/usr/local/go"));
    assert!(env(&plan, "PATH")
        .unwrap()
        .starts_with("/usr/local/go/bin:"));
    let host = FakeHost::default()
        .var("GOROOT", "/opt/go")
        .file("/opt/go/bin/go");
    assert!(binds(&plan_on(go, &host)).contains(&("/opt/go", "/opt/go", true)));

    let nvm = "profile: x\nfilesystem:\n  toolchains: [nvm]\n";
    let versions = "/home/u/.nvm/versions/node";
    let host = || {
        FakeHost::default()
            .var("HOME", "/home/u")
            .file(&format!("{versions}/v9.11.2/bin/node"))
            .file(&format!("{versions}/v20.11.1/bin/node"))
            .file(&format!("{versions}/v18.19.0/bin/node"))
    };
    // The newest, when the invoking PATH names none.
    let plan = plan_on(nvm, &host());
    let newest = format!("{versions}/v20.11.1");
    assert!(binds(&plan).contains(&(newest.as_str(), newest.as_str(), true)));
    assert!(env(&plan, "PATH")
        .unwrap()
        .starts_with(&format!("{newest}/bin:")));
    // The one nvm put in the invoking PATH.
    let plan = plan_on(
        nvm,
        &host().var("PATH", &format!("/usr/bin:{versions}/v18.19.0/bin:/bin")),
    );
    assert!(env(&plan, "PATH")
        .unwrap()
        .starts_with(&format!("{versions}/v18.19.0/bin:")));
}

#[test]
fn a_bind_below_a_directory_the_sandbox_cannot_enter_is_refused_at_check_time() {
    let text = "profile: x\nfilesystem:\n  binds:\n    - {source: /root/.cargo/bin, target: /opt/cargo}\n    - {source: /root/data, target: /opt/data}\n";
    let host = FakeHost::default().closed("/root", 0o700);
    let err = compile_with(text, None, &host).unwrap_err();
    assert_eq!(err.errors().len(), 2, "{err}");
    let first = err.first();
    assert_eq!(first.position().unwrap().line, 4);
    let line = first.to_string();
    assert!(
        line.contains("filesystem.binds[0].source: `/root/.cargo/bin` is below /root (mode 0700, owner uid 0), which the sandbox's user cannot enter, so the bind would fail with EACCES"),
        "{line}"
    );
    assert!(
        line.contains("chmod o+x /root") && line.contains("under /opt"),
        "{line}"
    );
    // Direct mode binds nothing: no refusal.
    assert!(compile_with(text, Some(Mode::Direct), &host).is_ok());
}

// ---------------------------------------------------------------------------------------
// Item 14: a mirror at a reserved address, allowed by name.

#[test]
fn allow_reserved_names_a_mirror_and_reaches_the_proxy() {
    let text = "profile: x\nnetwork:\n  mode: limited\n  allow: [pypi.mirror.test, pypi.org]\n  allow_reserved: [pypi.mirror.test]\n";
    let plan = plan_on(text, &FakeHost::default());
    assert_eq!(plan.network, NetworkMode::Limited);
    assert_eq!(
        plan.egress.allow_reserved,
        [EgressRule::parse("pypi.mirror.test").unwrap()]
    );
    let benchmarking = "198.18.0.9".parse().unwrap();
    assert_eq!(
        plan.egress
            .decide_ip("pypi.mirror.test", benchmarking, 443, false),
        Verdict::Allow
    );
    let Verdict::Refuse(why) = plan.egress.decide_ip("pypi.org", benchmarking, 443, false) else {
        panic!("pypi.org is not a mirror")
    };
    assert!(
        why.contains("198.18.0.0/15 (benchmarking, RFC 2544)"),
        "{why}"
    );
    // The default refuses: nothing is allowed by name unless listed.
    let plain = plan_on(
        "profile: x\nnetwork:\n  mode: limited\n  allow: [pypi.mirror.test]\n",
        &FakeHost::default(),
    );
    assert!(matches!(
        plain
            .egress
            .decide_ip("pypi.mirror.test", benchmarking, 443, false),
        Verdict::Refuse(_)
    ));
}

#[test]
fn allow_reserved_entries_must_be_names_that_allow_lets_through() {
    let text = "profile: x\nnetwork:\n  mode: limited\n  allow: [pypi.org]\n  allow_reserved: [10.0.0.1, other.test]\n";
    let err = load(text).unwrap_err();
    assert_eq!(err.errors().len(), 2, "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains(
            "network.allow_reserved[0]: `10.0.0.1` is an address: write it in network.allow"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("network.allow_reserved[1]: `other.test` is not in network.allow"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------------------
// Issue 17: `python` is Python 3 in the python profiles.

fn python_file(plan: &Plan) -> Option<String> {
    plan.mounts.iter().find_map(|m| match m {
        Mount::File {
            target, contents, ..
        } if target == "/opt/phantom/bin/python" => Some(contents.clone()),
        _ => None,
    })
}

fn path_of(plan: &Plan) -> String {
    plan.env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[test]
fn a_python_profile_names_python3_python_on_a_host_with_only_python3() {
    let python_dev = "profile: p\nextends: python-dev\n";
    let only3 = FakeHost::default().file("/usr/bin/python3");
    let plan = plan_on(python_dev, &only3);
    let shim = python_file(&plan).expect("a `python` for python-dev");
    assert!(shim.contains("exec python3 \"$@\""), "{shim}");
    assert!(
        path_of(&plan).starts_with("/opt/phantom/bin:"),
        "{}",
        path_of(&plan)
    );
    // Not where the host has its own `python`, nor in a profile of another runtime,
    // nor with no python3 at all.
    let both = FakeHost::default()
        .file("/usr/bin/python3")
        .file("/usr/bin/python");
    assert!(python_file(&plan_on(python_dev, &both)).is_none());
    let default = plan_on("profile: d\nextends: default\n", &only3);
    assert!(python_file(&default).is_none());
    assert!(!path_of(&default).contains("/opt/phantom"));
    assert!(python_file(&plan_on(python_dev, &FakeHost::default())).is_none());
}
