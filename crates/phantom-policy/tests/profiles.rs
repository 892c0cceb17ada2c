//! Profiles in, plans out: built-ins, error messages, `extends:`, overrides, mounts.

use std::path::PathBuf;

use phantom_policy::host::{Barrier, Host, PathKind};
use phantom_policy::{
    builtin_names, builtin_source, compile, compile_on, load_builtin, load_file, load_str, units,
    Access, Mode, Mount, NetworkMode, Overrides, PolicyError, Profile, Rootfs,
};

/// A host with nothing installed and nothing out of reach, so that what a plan says
/// does not depend on the machine the tests run on.
struct NoHost;

impl Host for NoHost {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn kind(&self, _: &str) -> PathKind {
        PathKind::Missing
    }
    fn list(&self, _: &str) -> Vec<String> {
        Vec::new()
    }
    fn real_path(&self, _: &str) -> Option<String> {
        None
    }
    fn barrier(&self, _: &str) -> Option<Barrier> {
        None
    }
}

fn load(text: &str) -> Result<Profile, PolicyError> {
    load_str(text, "policy.yaml")
}

fn plan_of(text: &str) -> phantom_policy::Plan {
    compile(&load(text).unwrap(), &Overrides::default()).unwrap()
}

/// The 1-based (line, column) of the first occurrence of `needle` in `text`.
fn place(text: &str, needle: &str) -> (u64, u64) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() as u64 + 1;
    let column = before.rsplit('\n').next().unwrap().chars().count() as u64 + 1;
    (line, column)
}

fn assert_at(err: &PolicyError, text: &str, needle: &str) {
    let at = err
        .position()
        .unwrap_or_else(|| panic!("no position in {err}"));
    assert_eq!((at.line, at.column), place(text, needle), "{err}");
    assert_eq!(at.file, "policy.yaml");
    let (line, column) = place(text, needle);
    assert!(
        err.to_string()
            .starts_with(&format!("policy.yaml:{line}:{column}: ")),
        "{err}"
    );
}

/// A scratch directory for policy files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("phantom-policy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// Built-in profiles.

#[test]
fn every_builtin_parses_and_is_named_after_itself() {
    assert_eq!(builtin_names().len(), 10);
    for name in builtin_names() {
        let profile = load_builtin(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(profile.name, *name);
        assert!(profile.description.is_some(), "{name} has no description");
        assert!(builtin_source(name)
            .unwrap()
            .contains(&format!("profile: {name}")));
    }
}

#[test]
fn every_builtin_compiles_without_warnings() {
    for name in builtin_names() {
        let profile = load_builtin(name).unwrap();
        let plan = compile_on(&profile, &Overrides::default(), &NoHost)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(plan.warnings.is_empty(), "{name}: {:?}", plan.warnings);
        assert_eq!(plan.profile, *name);
        assert_eq!(plan.cwd, plan.workspace_target);
        assert!(!plan.seccomp.is_empty(), "{name} has no seccomp");
        for mount in &plan.mounts {
            let target = mount_target(mount);
            assert!(target.starts_with('/'), "{name}: {target}");
            assert!(
                !target.split('/').any(|c| c == ".." || c == "."),
                "{name}: {target}"
            );
        }
        let workspaces: Vec<&Mount> = plan
            .mounts
            .iter()
            .filter(|m| matches!(m, Mount::Workspace { .. }))
            .collect();
        assert_eq!(workspaces.len(), 1, "{name}");
        assert_eq!(mount_target(workspaces[0]), plan.workspace_target);
    }
}

fn mount_target(mount: &Mount) -> &str {
    match mount {
        Mount::Tmpfs { target, .. }
        | Mount::Bind { target, .. }
        | Mount::File { target, .. }
        | Mount::Proc { target }
        | Mount::Dev { target, .. }
        | Mount::Workspace { target, .. }
        | Mount::Mask { target }
        | Mount::ReadOnly { target } => target,
    }
}

#[test]
fn the_default_profile_states_the_code_defaults() {
    let written = compile(&load_builtin("default").unwrap(), &Overrides::default()).unwrap();
    let implied = plan_of("profile: default\n");
    assert_eq!(written.limits, implied.limits);
    assert_eq!(written.mounts, implied.mounts);
    assert_eq!(written.env, implied.env);
    assert_eq!(written.seccomp, implied.seccomp);
    assert_eq!(written.landlock, implied.landlock);
    assert_eq!(written.network, implied.network);
}

#[test]
fn default_limits_are_the_documented_ones() {
    let limits = plan_of("profile: x\n").limits;
    assert_eq!(limits.memory_bytes, units::parse_bytes("512MB").unwrap());
    assert_eq!(limits.cpu_millis, units::parse_cpus("1.0").unwrap());
    assert_eq!(limits.pids, 256);
    assert_eq!(
        limits.wall_timeout_ms,
        units::parse_duration_ms("30s").unwrap()
    );
    assert_eq!(
        limits.output_limit_bytes,
        units::parse_bytes("1MB").unwrap()
    );
    assert_eq!(limits.tmp_size_bytes, units::parse_bytes("64MB").unwrap());
    assert_eq!(limits.nofile, 1024);
    assert_eq!(limits.fsize_bytes, units::parse_bytes("1GB").unwrap());
}

#[test]
fn builtins_differ_where_they_say() {
    let strict = compile(&load_builtin("strict").unwrap(), &Overrides::default()).unwrap();
    assert_eq!(strict.mode, Mode::Hardened);
    assert_eq!(strict.network, NetworkMode::None);
    assert!(strict.noexec_writable);
    assert_eq!(strict.limits.pids, 64);
    assert_eq!(
        strict.limits.memory_bytes,
        units::parse_bytes("256MB").unwrap()
    );
    assert_eq!(
        strict.limits.wall_timeout_ms,
        units::parse_duration_ms("10s").unwrap()
    );
    assert!(strict.seccomp.iter().any(|p| p.name == "allowlist"));

    let minimal = compile(&load_builtin("minimal").unwrap(), &Overrides::default()).unwrap();
    assert_eq!(minimal.network, NetworkMode::None);
    assert_eq!(minimal.limits.pids, 32);
    let binds: Vec<&str> = minimal
        .mounts
        .iter()
        .filter_map(|m| match m {
            Mount::Bind { target, .. } => Some(target.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        binds,
        ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache"]
    );

    let java = compile(&load_builtin("java-dev").unwrap(), &Overrides::default()).unwrap();
    assert_eq!(java.limits.memory_bytes, units::parse_bytes("1GB").unwrap());
    let default = compile(&load_builtin("default").unwrap(), &Overrides::default()).unwrap();
    assert!(java.limits.pids > default.limits.pids);
    for name in ["python-dev", "node-dev", "go-dev", "rust-dev", "java-dev"] {
        let profile = load_builtin(name).unwrap();
        assert_eq!(profile.extends.as_deref(), Some("default"), "{name}");
        let plan = compile(&profile, &Overrides::default()).unwrap();
        assert_eq!(plan.mode, Mode::Sandbox, "{name}");
        // Everything mounted is readable already: language profiles need no extra
        // Landlock rules, and carry none.
        assert_eq!(plan.landlock.rules, default.landlock.rules, "{name}");
    }
}

#[test]
fn dev_profiles_allow_their_package_index_and_nothing_else() {
    use phantom_policy::egress::Verdict;
    for (name, index) in [
        ("python-dev", &["pypi.org", "files.pythonhosted.org"][..]),
        ("node-dev", &["registry.npmjs.org"]),
        ("go-dev", &["proxy.golang.org", "sum.golang.org"]),
        (
            "rust-dev",
            &["crates.io", "static.crates.io", "index.crates.io"],
        ),
        ("java-dev", &["repo.maven.apache.org", "repo1.maven.org"]),
    ] {
        let plan =
            compile_on(&load_builtin(name).unwrap(), &Overrides::default(), &NoHost).unwrap();
        assert_eq!(plan.network, NetworkMode::Limited, "{name}");
        for host in index {
            assert_eq!(
                plan.egress.decide_name(host, 443),
                Verdict::Allow,
                "{name} {host}"
            );
        }
        for host in ["evil.org", "github.com", "example.com", "localhost"] {
            assert!(
                matches!(plan.egress.decide_name(host, 443), Verdict::Refuse(_)),
                "{name} {host}"
            );
        }
        assert!(plan.warnings.is_empty(), "{name}: {:?}", plan.warnings);
    }
}

// ---------------------------------------------------------------------------------------
// Every key of the DSL.

const EVERY_KEY: &str = r#"
profile: python-ai-turbo
description: "every key"
extends: python-dev
mode: sandbox
runtime: auto
security:
  level: medium
  seccomp:
    default: deny
    allow: [read, write, openat, close, mmap, exit_group]
    deny: []
  landlock:
    enabled: true
    paths:
      - path: /tmp
        access: read-write
      - path: /usr/lib/python3*
        access: read-only
performance:
  zygote: true
  pool_size: 4
  io_mode: uring
  memory_allocator: jemalloc
resources:
  memory: 512MB
  cpu: 1.0
  pids: 256
  timeout: 30s
  output: 1MB
  tmp: 64MB
  nofile: 1024
  fsize: 1GB
network:
  mode: loopback-only
filesystem:
  system: [/usr, /bin, /sbin, /lib, /lib64, /lib32, /libx32]
  etc: [ld.so.cache, ld.so.conf, ld.so.conf.d, nsswitch.conf, localtime, ssl, ca-certificates, alternatives, os-release]
  binds:
    - {source: /opt/tool, target: /opt/tool, access: read-only}
  toolchains: [rustup]
  workspace: /workspace
"#;

#[test]
fn every_key_is_accepted_and_has_an_effect_or_a_warning() {
    let profile = load(EVERY_KEY).unwrap();
    let plan = compile_on(&profile, &Overrides::default(), &NoHost).unwrap();
    let warned = |key: &str| plan.warnings.iter().any(|w| w.starts_with(key));
    // performance.zygote and pool_size act in phantom-supervisor: no warning here.
    assert!(!warned("performance.zygote"), "{:?}", plan.warnings);
    assert!(!warned("performance.pool_size"), "{:?}", plan.warnings);
    assert!(
        warned("performance.io_mode: uring: io_uring stays blocked"),
        "{:?}",
        plan.warnings
    );
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    let preload = plan.env.iter().find(|(k, _)| k == "LD_PRELOAD").unwrap();
    assert!(preload.1.ends_with("libjemalloc.so.2"));
    assert!(plan.seccomp.iter().any(|p| p.name == "allowlist"));
    assert!(plan.mounts.contains(&Mount::Bind {
        source: "/opt/tool".into(),
        target: "/opt/tool".into(),
        read_only: true,
        optional: false,
    }));
    // A read-only Landlock entry is covered by `/` and says so.
    assert!(!plan
        .landlock
        .rules
        .iter()
        .any(|r| r.path == "/usr/lib/python3*"));
    assert!(
        warned("security.landlock.paths: `/usr/lib/python3*` read-only adds nothing"),
        "{:?}",
        plan.warnings
    );
    // extends: python-dev contributed what this file did not override.
    let python = load_builtin("python-dev").unwrap();
    assert_eq!(
        profile.resources.memory_bytes,
        units::parse_bytes("512MB").unwrap()
    );
    assert_ne!(
        python.resources.memory_bytes,
        profile.resources.memory_bytes
    );
    assert_eq!(profile.extends.as_deref(), Some("python-dev"));
}

#[test]
fn the_design_seed_profile_loads() {
    let seed = r#"
profile: python-ai-turbo
mode: sandbox
runtime: auto
security:
  level: medium
  seccomp:
    default: deny
    allow: [read, write, openat, close, mmap, exit_group]
  landlock:
    enabled: true
    paths:
      - path: /tmp
        access: read-write
      - path: /usr/lib/python3*
        access: read-only
performance:
  zygote: true
  io_mode: uring
  memory_allocator: jemalloc
resources:
  memory: 512MB
  cpu: 1.0
  pids: 256
network:
  mode: loopback-only
"#;
    let plan = plan_of(seed);
    // io_mode: uring, and the read-only Landlock entry that `/` already covers.
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
}

// ---------------------------------------------------------------------------------------
// Errors.

#[test]
fn unknown_key_points_at_the_key_and_suggests() {
    let text = "profile: x\nresources:\n  memroy: 512MB\n";
    let err = load(text).unwrap_err();
    assert!(matches!(err, PolicyError::UnknownKey { .. }), "{err}");
    assert_at(&err, text, "memroy");
    assert!(
        err.to_string()
            .ends_with("unknown key `memroy` in `resources` (did you mean `memory`?)"),
        "{err}"
    );

    let text = "profile: x\nmdoe: sandbox\n";
    let err = load(text).unwrap_err();
    assert_at(&err, text, "mdoe");
    assert!(
        err.to_string()
            .contains("at the top level (did you mean `mode`?)"),
        "{err}"
    );

    let text =
        "profile: x\nfilesystem:\n  binds:\n    - {source: /a, target: /b, acess: read-only}\n";
    let err = load(text).unwrap_err();
    assert_at(&err, text, "acess");
    assert!(
        err.to_string()
            .contains("in `filesystem.binds[0]` (did you mean `access`?)"),
        "{err}"
    );
}

#[test]
fn unknown_key_without_a_close_match_lists_the_valid_keys() {
    let text = "profile: x\nnetwork:\n  firewall: on\n";
    let err = load(text).unwrap_err();
    assert_at(&err, text, "firewall");
    assert!(
        err.to_string()
            .contains("(valid keys: mode, allow, deny, allow_reserved)"),
        "{err}"
    );
}

#[test]
fn wrong_types_name_the_key_and_what_was_expected() {
    for (text, needle, expected) in [
        (
            "profile: x\nresources:\n  pids: [1]\n",
            "[1]",
            "expected a whole number",
        ),
        (
            "profile: x\nperformance:\n  zygote: yes\n",
            "yes",
            "expected true or false",
        ),
        (
            "profile: x\nmode: 5\n",
            "5",
            "expected one of: direct, sandbox, hardened, wasm",
        ),
        (
            "profile: x\nsecurity: strict\n",
            "strict",
            "expected a mapping",
        ),
        (
            "profile: x\nfilesystem:\n  etc: ssl\n",
            "ssl",
            "expected a list",
        ),
        (
            "profile: x\nfilesystem:\n  etc:\n",
            "etc:",
            "write [] for an empty one",
        ),
        (
            "profile: 12\n",
            "12",
            "expected a string (put quotes around it)",
        ),
    ] {
        let err = load(text).unwrap_err();
        assert!(
            matches!(err, PolicyError::WrongType { .. }),
            "{text}: {err}"
        );
        assert!(err.to_string().contains(expected), "{err}");
        if needle != "etc:" {
            assert_at(&err, text, needle);
        }
    }
}

#[test]
fn bad_units_quote_the_value_and_show_an_example() {
    let text = "profile: x\nresources:\n  memory: 512XB\n";
    let err = load(text).unwrap_err();
    assert_at(&err, text, "512XB");
    assert!(
        err.to_string()
            .ends_with(r#"resources.memory: cannot parse "512XB" as a size (use e.g. 512MB, 1GiB, or 4096 for bytes)"#),
        "{err}"
    );
    for (text, needle, expected) in [
        (
            "profile: x\nresources:\n  timeout: soon\n",
            "soon",
            "as a duration",
        ),
        (
            "profile: x\nresources:\n  cpu: lots\n",
            "lots",
            "number of CPUs",
        ),
        (
            "profile: x\nresources:\n  cpu: -1\n",
            "-1",
            "more than 0 and at most 1024",
        ),
        (
            "profile: x\nresources:\n  cpu: 2000\n",
            "2000",
            "more than 0 and at most 1024",
        ),
    ] {
        let err = load(text).unwrap_err();
        assert_at(&err, text, needle);
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[test]
fn impossible_values_are_refused_at_their_place() {
    for (text, needle) in [
        ("profile: x\nresources:\n  pids: 0\n", "0"),
        ("profile: x\nresources:\n  memory: 0\n", "0"),
        ("profile: x\nresources:\n  cpu: 0\n", "0"),
        ("profile: x\nresources:\n  timeout: 0s\n", "0s"),
        ("profile: x\nresources:\n  tmp: 0\n", "0"),
        ("profile: x\nresources:\n  output: 0\n", "0"),
        ("profile: x\nresources:\n  nofile: 2\n", "2"),
        (
            "profile: x\nresources:\n  pids: 99999999999999999999999\n",
            "9999",
        ),
        ("profile: x\nperformance:\n  pool_size: 0\n", "0"),
        (
            "profile: x\nfilesystem:\n  workspace: workspace\n",
            "workspace\n",
        ),
        (
            "profile: x\nfilesystem:\n  workspace: /usr/src\n",
            "/usr/src",
        ),
        ("profile: x\nfilesystem:\n  workspace: /tmp/w\n", "/tmp/w"),
        (
            "profile: x\nfilesystem:\n  system: [/usr, relative]\n",
            "relative",
        ),
        ("profile: x\nfilesystem:\n  system: [/]\n", "/]"),
        (
            "profile: x\nfilesystem:\n  system: [/proc/self]\n",
            "/proc/self",
        ),
        ("profile: x\nfilesystem:\n  system: [/etc]\n", "/etc"),
        ("profile: x\nfilesystem:\n  etc: [passwd]\n", "passwd"),
        ("profile: x\nfilesystem:\n  etc: [shadow]\n", "shadow"),
        (
            "profile: x\nfilesystem:\n  binds: [{source: /a, target: /tmp/a}]\n",
            "/tmp/a",
        ),
        (
            "profile: x\nfilesystem:\n  binds: [{source: /a, target: /workspace/a}]\n",
            "/workspace/a",
        ),
        (
            "profile: x\nfilesystem:\n  binds: [{source: /a, target: /dev/sda}]\n",
            "/dev/sda",
        ),
        (
            "profile: x\nfilesystem:\n  binds: [{source: /a, target: /}]\n",
            "/}",
        ),
        ("profile: x\nfilesystem:\n  binds: [{source: /a, target: /etc}]\n", "/etc}"),
        ("profile: x\nfilesystem:\n  binds: [{source: /a, target: /usr}]\n", "/usr}"),
        ("profile: x\nfilesystem:\n  workspace: /w/s\n  binds: [{source: /a, target: /w}]\n", "/w}"),
        ("profile: x\nfilesystem:\n  binds: [{source: /a, target: /b}, {source: /c, target: /b}]\n", "/b}]"),
        (
            "profile: x\nfilesystem:\n  binds: [{source: /a, target: /opt/../etc}]\n",
            "/opt/../etc",
        ),
        (
            "profile: x\nfilesystem:\n  binds: [{source: a, target: /a}]\n",
            "a, target",
        ),
        (
            "profile: x\nsecurity:\n  landlock:\n    paths: [{path: tmp, access: read-only}]\n",
            "tmp,",
        ),
        ("profile: x\nnetwork:\n  mode: limted\n", "limted"),
        ("profile: x\nnetwork:\n  mode: hostt\n", "hostt"),
        ("profile: x\nmode: sandbx\n", "sandbx"),
        ("profile: \"has space\"\n", "\"has space\""),
    ] {
        let err = load(text).unwrap_err();
        assert_at(&err, text, needle);
    }
}

#[test]
fn malformed_egress_entries_are_errors_at_their_place() {
    for (entry, says) in [
        ("\"*.\"", "a wildcard needs a domain after `*.`"),
        ("\"pypi.org:0\"", "port 0 is out of range"),
        ("\"pypi.org:65536\"", "port 65536 is out of range"),
        (
            "\"https://pypi.org/simple\"",
            "is a URL; write only the host",
        ),
        ("\"*\"", "would allow every host"),
        ("\"10.0.0.0/8\"", "address ranges are not supported"),
    ] {
        for key in ["allow", "deny"] {
            let text =
                format!("profile: x\nnetwork:\n  mode: limited\n  {key}: [pypi.org, {entry}]\n");
            let err = load(&text).unwrap_err();
            assert_at(&err, &text, entry);
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("network.{key}[1]: ")) && msg.contains(says),
                "{msg}"
            );
        }
    }
    let text = "profile: x\nnetwork:\n  allow: pypi.org\n";
    let err = load(text).unwrap_err();
    assert!(
        err.to_string().contains("network.allow: expected a list"),
        "{err}"
    );
}

#[test]
fn limited_mode_carries_its_rules_and_the_proxy_environment() {
    let plan = plan_of(
        "profile: x\nnetwork:\n  mode: limited\n  allow: [pypi.org, \"*.pythonhosted.org\"]\n  deny: [evil.pythonhosted.org]\n",
    );
    assert_eq!(plan.network, NetworkMode::Limited);
    let shown: Vec<String> = plan.egress.allow.iter().map(|r| r.to_string()).collect();
    assert_eq!(shown, ["pypi.org", "*.pythonhosted.org"]);
    assert_eq!(plan.egress.deny[0].to_string(), "evil.pythonhosted.org");
    let env = |k: &str| {
        plan.env
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let port = phantom_policy::egress::PROXY_PORT;
    for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        assert_eq!(
            env(key),
            Some(format!("http://127.0.0.1:{port}").as_str()),
            "{key}"
        );
    }
    for key in ["ALL_PROXY", "all_proxy"] {
        assert_eq!(
            env(key),
            Some(format!("socks5h://127.0.0.1:{port}").as_str()),
            "{key}"
        );
    }
    // Landlock's TCP fence: connect only to the proxy, bind nothing.
    let tcp = plan.landlock.tcp.as_ref().expect("limited fences TCP");
    assert_eq!(tcp.connect_ports, [port]);
    assert!(tcp.bind_ports.is_empty());
    // Other modes: no proxy variables, no rules; the fence only where the mode has a use for it.
    let plain = plan_of("profile: x\nnetwork:\n  mode: none\n");
    assert!(plain
        .env
        .iter()
        .all(|(k, _)| !k.to_ascii_lowercase().ends_with("_proxy")));
    assert!(plain.egress.allow.is_empty());
    let none = plain.landlock.tcp.expect("none fences TCP");
    assert!(none.connect_ports.is_empty() && none.bind_ports.is_empty());
    assert_eq!(plan_of("profile: x\n").landlock.tcp, None);
}

#[test]
fn allow_rules_outside_limited_mode_warn() {
    let plan = plan_of("profile: x\nnetwork:\n  mode: loopback-only\n  allow: [pypi.org]\n");
    assert!(
        plan.warnings.iter().any(|w| w
            == "network.allow: has no effect with network.mode: loopback-only (only limited uses them)"),
        "{:?}",
        plan.warnings
    );
    assert!(plan.egress.allow.is_empty());
    // Every key written is named; hardened (no network at all) says so too.
    let plan = plan_of(
        "profile: x\nmode: hardened\nnetwork:\n  mode: none\n  allow: [a.test]\n  deny: [b.test]\n",
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w == "network.allow, network.deny: have no effect with mode hardened, which has no network"),
        "{:?}",
        plan.warnings
    );
    // Rules written over a parent's mode (`extends: default`, which says
    // loopback-only) are not silent either, nor are rules under no `mode:` at all.
    let plan = plan_of("profile: x\nextends: default\nnetwork:\n  allow: [a.test]\n");
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.starts_with("network.allow: has no effect")),
        "{:?}",
        plan.warnings
    );
    // A child that only turns a limited parent's mode off means it.
    let plan = plan_of("profile: x\nextends: python-dev\nnetwork:\n  mode: loopback-only\n");
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let plan = plan_of("profile: x\nnetwork:\n  allow: [a.test]\n");
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.starts_with("network.allow: has no effect")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn host_network_is_refused_in_hardened_mode_and_by_strict() {
    let err = compile(
        &load("profile: x\nmode: hardened\nnetwork:\n  mode: host\n").unwrap(),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("host conflicts with mode: hardened"),
        "{err}"
    );
    for network in [NetworkMode::Host, NetworkMode::Limited] {
        let err = compile(
            &load_builtin("strict").unwrap(),
            &Overrides {
                network: Some(network),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!(
                "override network: {} conflicts with mode hardened",
                network.as_str()
            )),
            "{err}"
        );
    }
    // A profile asking for the host's network is refused under --mode hardened too.
    let err = compile(
        &load("profile: x\nnetwork:\n  mode: host\n").unwrap(),
        &Overrides {
            mode: Some(Mode::Hardened),
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("host conflicts"), "{err}");
    // Elsewhere it is an explicit opt-in that says what it means.
    let plan = plan_of("profile: x\nnetwork:\n  mode: host\n");
    assert_eq!(plan.network, NetworkMode::Host);
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("shares the host's network")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn unknown_syscalls_are_refused_with_the_closest_name() {
    let text = "profile: x\nsecurity:\n  seccomp:\n    deny: [getpid, ptrce]\n";
    let err = load(text).unwrap_err();
    assert_at(&err, text, "ptrce");
    assert!(err.to_string().contains("did you mean `ptrace`"), "{err}");
    let text = "profile: x\nsecurity:\n  seccomp:\n    allow: [opne]\n";
    let err = load(text).unwrap_err();
    assert!(
        err.to_string().contains("`opne` is not a syscall on"),
        "{err}"
    );
}

#[test]
fn seccomp_lists_refuse_contradictions() {
    for (text, needle) in [
        (
            "profile: x\nsecurity:\n  seccomp:\n    allow: [ptrace]\n    deny: [ptrace]\n",
            "ptrace]\n    deny",
        ),
        (
            "profile: x\nsecurity:\n  seccomp:\n    deny: [execve]\n",
            "execve",
        ),
        (
            "profile: x\nsecurity:\n  seccomp:\n    deny: [exit_group]\n",
            "exit_group",
        ),
        (
            "profile: x\nsecurity:\n  seccomp:\n    allow: [clone3]\n",
            "clone3",
        ),
    ] {
        let err = load(text).unwrap_err();
        assert_at(&err, text, needle);
    }
}

#[test]
fn documents_that_are_not_a_mapping_get_a_clear_error() {
    for text in [
        "",
        "# only a comment\n",
        "- a\n- b\n",
        "just words\n",
        "42\n",
    ] {
        let err = load(text).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("policy.yaml"), "{message}");
        assert!(
            message.contains("expected a mapping with at least `profile: NAME`"),
            "{message}"
        );
    }
}

#[test]
fn a_missing_profile_name_is_an_error() {
    let err = load("mode: sandbox\n").unwrap_err();
    assert!(matches!(err, PolicyError::MissingKey { .. }), "{err}");
    assert!(err.to_string().contains("missing key `profile`"), "{err}");
}

#[test]
fn yaml_syntax_errors_have_a_place() {
    let text = "profile: x\nresources:\n  memory: 1GB\n  memory: 2GB\n";
    let err = load(text).unwrap_err();
    assert!(matches!(err, PolicyError::Yaml { .. }), "{err}");
    assert_eq!(err.position().unwrap().line, place(text, "  memory: 2GB").0);
    let err = load("profile: [x\n").unwrap_err();
    assert!(err.to_string().starts_with("policy.yaml:1:"), "{err}");
}

#[test]
fn every_error_is_one_line() {
    for text in [
        "profile: x\nresources:\n  memroy: 1\n",
        "profile: \"a\\nb\"\n",
        "profile: x\n\"bad\\nkey\": 1\n",
        "profile: x\nmode: \"sand\\nbox\"\n",
        "profile: x\nresources:\n  memory: \"5\\n12XB\"\n",
        "profile: x\nextends: \"nope\\nnope\"\n",
        "a: [\n",
    ] {
        let err = load(text).unwrap_err().to_string();
        assert!(!err.contains('\n') && !err.contains('\r'), "{err:?}");
    }
}

// ---------------------------------------------------------------------------------------
// extends.

#[test]
fn extends_chains_merge_mappings_and_replace_lists() {
    let dir = Scratch::new("chain");
    dir.write(
        "base.yaml",
        "profile: base\nextends: python-dev\nresources:\n  pids: 100\nfilesystem:\n  etc: [ssl]\n",
    );
    std::fs::create_dir_all(dir.0.join("sub")).unwrap();
    let child = dir.write(
        "sub/child.yaml",
        "profile: child\nextends: ../base.yaml\nresources:\n  memory: 300MB\nfilesystem:\n  etc: [localtime]\n",
    );
    let profile = load_file(&child).unwrap();
    let python = load_builtin("python-dev").unwrap();
    assert_eq!(profile.name, "child");
    assert_eq!(profile.description, None, "descriptions are not inherited");
    assert_eq!(
        profile.resources.memory_bytes,
        units::parse_bytes("300MB").unwrap()
    );
    assert_eq!(profile.resources.pids, 100);
    assert_eq!(profile.resources.timeout_ms, python.resources.timeout_ms);
    assert_eq!(profile.filesystem.etc, ["localtime"]);
    assert_eq!(
        profile.security.landlock.paths,
        python.security.landlock.paths
    );
}

#[test]
fn extends_cycles_are_refused() {
    let dir = Scratch::new("cycle");
    let a = dir.write("a.yaml", "profile: a\nextends: ./b.yaml\n");
    dir.write("b.yaml", "profile: b\nextends: a.yaml\n");
    let err = load_file(&a).unwrap_err();
    assert!(matches!(err, PolicyError::ExtendsCycle { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("a.yaml -> ") && message.contains("b.yaml -> "),
        "{message}"
    );
    assert_eq!(
        err.position().unwrap().file,
        dir.0.join("./b.yaml").display().to_string()
    );

    let selfish = dir.write("self.yaml", "profile: s\nextends: self.yaml\n");
    assert!(matches!(
        load_file(&selfish),
        Err(PolicyError::ExtendsCycle { .. })
    ));
}

#[test]
fn errors_in_a_parent_point_into_the_parent() {
    let dir = Scratch::new("parent-error");
    dir.write("base.yaml", "profile: base\nresources:\n  pids: 0\n");
    let child = dir.write(
        "child.yaml",
        "profile: child\nextends: base.yaml\nresources:\n  pids: 5\n",
    );
    let err = load_file(&child).unwrap_err();
    assert!(err.position().unwrap().file.ends_with("base.yaml"), "{err}");
}

#[test]
fn extends_names_unknown_builtins_and_missing_files_clearly() {
    let text = "profile: x\nextends: pyhton-dev\n";
    let err = load(text).unwrap_err();
    assert_at(&err, text, "pyhton-dev");
    assert!(
        err.to_string().contains("did you mean `python-dev`"),
        "{err}"
    );
    let text = "profile: x\nextends: ./does-not-exist.yaml\n";
    let err = load(text).unwrap_err();
    assert_at(&err, text, "./does-not-exist.yaml");
}

#[test]
fn load_file_refuses_what_is_not_a_policy_file() {
    let dir = Scratch::new("not-a-file");
    assert!(matches!(load_file(&dir.0), Err(PolicyError::Read { .. })));
    assert!(matches!(
        load_file(&dir.0.join("missing.yaml")),
        Err(PolicyError::Read { .. })
    ));
    let big = dir.write(
        "big.yaml",
        &"#".repeat(phantom_policy::MAX_POLICY_BYTES + 1),
    );
    assert!(matches!(load_file(&big), Err(PolicyError::TooLarge { .. })));
}

/// A FIFO named as a policy file: its type was checked on the path before the file was
/// opened (a FIFO swapped in between would block the open forever); now the open does
/// not block and the type is checked on what was opened.
#[test]
fn a_fifo_as_a_policy_file_is_refused_without_blocking() {
    let dir = Scratch::new("fifo-policy");
    let fifo = dir.0.join("policy.yaml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        println!("skipped: no mkfifo");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(load_file(&path).map(|_| ()).map_err(|e| e.to_string()));
    });
    let outcome = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("loading a FIFO as a policy file blocked");
    let e = outcome.unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Modes and overrides.

#[test]
fn hardened_forces_network_none() {
    let default = load_builtin("default").unwrap();
    let hardened = Overrides {
        mode: Some(Mode::Hardened),
        ..Overrides::default()
    };
    let plan = compile(&default, &hardened).unwrap();
    assert_eq!(default.network.mode, NetworkMode::LoopbackOnly);
    assert_eq!(plan.network, NetworkMode::None);
    assert!(plan.seccomp.iter().any(|p| p.name == "allowlist"));
    assert!(plan
        .mounts
        .iter()
        .any(|m| matches!(m, Mount::Tmpfs { target, read_only: true, .. } if target == "/tmp")));
    assert!(plan
        .env
        .contains(&("HOME".to_string(), plan.workspace_target.clone())));

    let loopback = Overrides {
        network: Some(NetworkMode::LoopbackOnly),
        ..hardened.clone()
    };
    let err = compile(&default, &loopback).unwrap_err();
    assert!(matches!(err, PolicyError::InvalidOverride { .. }), "{err}");

    // A child that asks for hardened inherits loopback-only from its parent: none.
    let child = load("profile: child\nextends: default\nmode: hardened\n").unwrap();
    assert_eq!(
        compile(&child, &Overrides::default()).unwrap().network,
        NetworkMode::None
    );

    // One file asking for both is a contradiction.
    let text = "profile: x\nmode: hardened\nnetwork:\n  mode: loopback-only\n";
    let err = compile(&load(text).unwrap(), &Overrides::default()).unwrap_err();
    assert_at(&err, text, "loopback-only");
}

#[test]
fn hardened_refuses_read_write_binds() {
    let text = "profile: x\nfilesystem:\n  binds:\n    - {source: /srv/data, target: /data, access: read-write}\n";
    let profile = load(text).unwrap();
    let sandbox = compile(&profile, &Overrides::default()).unwrap();
    assert!(sandbox
        .landlock
        .rules
        .iter()
        .any(|r| r.path == "/data" && r.access == Access::ReadWrite));
    let err = compile(
        &profile,
        &Overrides {
            mode: Some(Mode::Hardened),
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert_at(&err, text, "read-write");
}

#[test]
fn a_requests_hosts_replace_the_profiles_and_make_the_network_limited() {
    use phantom_policy::egress::EgressRule;
    let rule = |s: &str| EgressRule::parse(s).unwrap();
    let hosts = Overrides {
        egress: Some(phantom_policy::EgressOverride {
            allow: vec![rule("example.org"), rule("*.corp.test")],
            deny: vec![rule("secret.corp.test")],
        }),
        ..Overrides::default()
    };
    // python-dev is limited with pypi: the request's list replaces it.
    let plan = compile(&load_builtin("python-dev").unwrap(), &hosts).unwrap();
    assert_eq!(plan.network, NetworkMode::Limited);
    assert_eq!(
        plan.egress.allow,
        vec![rule("example.org"), rule("*.corp.test")]
    );
    assert_eq!(plan.egress.deny, vec![rule("secret.corp.test")]);
    // default is loopback-only: the hosts make it limited.
    let plan = compile(&load_builtin("default").unwrap(), &hosts).unwrap();
    assert_eq!(plan.network, NetworkMode::Limited);
    // A profile's trusted mirror stays trusted only while the request still allows it.
    let mirror = load_str(
        "profile: m\nnetwork:\n  mode: limited\n  allow: [mirror.internal]\n  allow_reserved: [mirror.internal]\n",
        "mirror.yaml",
    )
    .unwrap();
    assert!(compile(&mirror, &hosts)
        .unwrap()
        .egress
        .allow_reserved
        .is_empty());
    let keeps = Overrides {
        egress: Some(phantom_policy::EgressOverride {
            allow: vec![rule("mirror.internal")],
            deny: Vec::new(),
        }),
        ..Overrides::default()
    };
    assert_eq!(
        compile(&mirror, &keeps).unwrap().egress.allow_reserved,
        vec![rule("mirror.internal")]
    );
    // Another network, or hardened (no network at all): refused, saying why.
    let none = Overrides {
        network: Some(NetworkMode::None),
        ..hosts.clone()
    };
    let e = compile(&load_builtin("default").unwrap(), &none).unwrap_err();
    assert!(e.to_string().contains("no egress proxy"), "{e}");
    let hardened = Overrides {
        mode: Some(Mode::Hardened),
        ..hosts.clone()
    };
    let e = compile(&load_builtin("default").unwrap(), &hardened).unwrap_err();
    assert!(e.to_string().contains("hardened"), "{e}");
}

#[test]
fn overrides_replace_profile_values_and_are_checked() {
    let profile = load_builtin("python-dev").unwrap();
    let overrides = Overrides {
        mode: None,
        memory_bytes: Some(units::parse_bytes("2GB").unwrap()),
        cpu_millis: Some(units::parse_cpus("0.5").unwrap()),
        pids: Some(17),
        wall_timeout_ms: Some(units::parse_duration_ms("5s").unwrap()),
        network: Some(NetworkMode::None),
        image: None,
        egress: None,
    };
    let plan = compile(&profile, &overrides).unwrap();
    assert_eq!(plan.limits.memory_bytes, overrides.memory_bytes.unwrap());
    assert_eq!(plan.limits.cpu_millis, overrides.cpu_millis.unwrap());
    assert_eq!(plan.limits.pids, 17);
    assert_eq!(
        plan.limits.wall_timeout_ms,
        overrides.wall_timeout_ms.unwrap()
    );
    assert_eq!(plan.network, NetworkMode::None);
    assert_eq!(plan.limits.tmp_size_bytes, profile.resources.tmp_bytes);

    for bad in [
        Overrides {
            pids: Some(0),
            ..Overrides::default()
        },
        Overrides {
            memory_bytes: Some(0),
            ..Overrides::default()
        },
        Overrides {
            cpu_millis: Some(0),
            ..Overrides::default()
        },
        Overrides {
            wall_timeout_ms: Some(0),
            ..Overrides::default()
        },
    ] {
        let err = compile(&profile, &bad).unwrap_err();
        assert!(
            matches!(err, PolicyError::InvalidOverride { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn wasm_compiles_like_sandbox_with_the_denylist() {
    // The wasm runner replays the workspace, /tmp, the environment and the limits;
    // its process gets the sandbox's fences, with the seccomp denylist even where the
    // profile asks for an allowlist (wasmtime needs syscalls an allowlist forbids).
    let plan = plan_of("profile: x\nmode: wasm\nsecurity:\n  seccomp:\n    default: deny\n");
    assert_eq!(plan.mode, Mode::Wasm);
    let sandbox = plan_of("profile: x\nmode: sandbox\n");
    assert_eq!(plan.mounts, sandbox.mounts);
    assert_eq!(plan.seccomp, sandbox.seccomp);
    let plan = plan_of("profile: x\nruntime: wasm\nmode: wasm\n");
    assert_eq!(plan.mode, Mode::Wasm);
    // runtime wasm under another mode is a contradiction, named at its line.
    let text = "profile: x\nruntime: wasm\n";
    let err = compile(&load(text).unwrap(), &Overrides::default()).unwrap_err();
    assert_at(&err, text, "wasm");
    assert!(err.to_string().contains("write mode: wasm"), "{err}");
    // An image brings a root filesystem a module never sees.
    let err = compile(
        &load("profile: x\nmode: wasm\n").unwrap(),
        &Overrides {
            image: Some("alpine".into()),
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("mode wasm"), "{err}");
}

#[test]
fn direct_mode_has_no_isolation_and_says_so() {
    let plan = plan_of("profile: x\nmode: direct\n");
    assert!(plan.mounts.is_empty());
    assert!(plan.seccomp.is_empty());
    assert!(!plan.landlock.enabled);
    assert!(
        plan.warnings.iter().any(|w| w.starts_with("mode: direct")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn security_levels_change_landlock_and_noexec() {
    let low = plan_of("profile: x\nsecurity:\n  level: low\n");
    assert!(!low.landlock.enabled && low.landlock.rules.is_empty());
    assert!(!low.noexec_writable);
    let medium = plan_of("profile: x\n");
    assert!(
        medium.landlock.enabled
            && medium.landlock.scope_abstract_unix
            && medium.landlock.scope_signals
    );
    assert!(!medium.noexec_writable);
    let high = plan_of("profile: x\nsecurity:\n  level: high\n");
    assert!(high.noexec_writable);
    assert!(high
        .mounts
        .iter()
        .any(|m| matches!(m, Mount::Tmpfs { noexec: true, .. })));
    assert!(high
        .mounts
        .iter()
        .any(|m| matches!(m, Mount::Workspace { noexec: true, .. })));
    let off = plan_of("profile: x\nsecurity:\n  landlock:\n    enabled: false\n");
    assert!(!off.landlock.enabled);
    let ignored = plan_of("profile: x\nsecurity:\n  level: low\n  landlock:\n    enabled: true\n");
    assert!(
        ignored
            .warnings
            .iter()
            .any(|w| w.starts_with("security.landlock:")),
        "{:?}",
        ignored.warnings
    );
}

#[test]
fn mounts_come_in_replay_order() {
    let plan = plan_of("profile: x\nfilesystem:\n  binds: [{source: /opt/t, target: /opt/t}]\n");
    let kinds: Vec<&str> = plan
        .mounts
        .iter()
        .map(|m| match m {
            Mount::Bind { target, .. } if target.starts_with("/etc/") => "etc",
            Mount::Bind { target, .. } if target == "/opt/t" => "bind",
            Mount::Bind { .. } => "system",
            Mount::File { .. } => "file",
            Mount::Tmpfs { .. } => "tmp",
            Mount::Workspace { .. } => "workspace",
            Mount::Proc { .. } => "proc",
            Mount::Mask { .. } => "mask",
            Mount::ReadOnly { .. } => "read-only",
            Mount::Dev { .. } => "dev",
        })
        .collect();
    let mut order: Vec<&str> = kinds.clone();
    order.dedup();
    assert_eq!(
        order,
        [
            "system",
            "etc",
            "file",
            "bind",
            "tmp",
            "workspace",
            "proc",
            "mask",
            "read-only",
            "dev"
        ]
    );
    let files: Vec<&str> = plan
        .mounts
        .iter()
        .filter_map(|m| match m {
            Mount::File { target, .. } => Some(target.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        files,
        ["/etc/passwd", "/etc/group", "/etc/hosts", "/etc/hostname"]
    );
    assert!(plan.mounts.contains(&Mount::Mask {
        target: "/proc/kcore".into()
    }));
    assert!(plan.mounts.contains(&Mount::ReadOnly {
        target: "/proc/sys".into()
    }));
    assert!(!plan
        .mounts
        .iter()
        .any(|m| mount_target(m).starts_with("/sys")));
    let hosts = plan.mounts.iter().find_map(|m| match m {
        Mount::File {
            target, contents, ..
        } if target == "/etc/hosts" => Some(contents),
        _ => None,
    });
    assert!(hosts.unwrap().contains(&plan.hostname));
}

#[test]
fn environment_is_fixed_and_names_no_host_values() {
    let plan = plan_of("profile: x\n");
    let keys: Vec<&str> = plan.env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["PATH", "HOME", "LANG", "TERM"]);
    assert!(plan.env.contains(&("HOME".to_string(), "/tmp".to_string())));
}

#[test]
fn seccomp_allow_without_effect_is_a_warning() {
    let plan = plan_of("profile: x\nsecurity:\n  seccomp:\n    allow: [read, ptrace]\n");
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    assert!(plan.warnings[0].contains("`read`"));
    // ptrace takes effect, and weakens the sandbox: said too.
    assert!(plan.warnings[1].starts_with("security.seccomp.allow[1]: `ptrace`"));
}

#[test]
fn merge_keys_and_anchors_work_within_limits() {
    let text = "profile: x\nbase: &b\n  memory: 1GB\n";
    assert!(matches!(load(text), Err(PolicyError::UnknownKey { .. })));
    let text = "profile: x\nresources: &r\n  memory: 1GB\nfilesystem:\n  workspace: /w\n";
    assert!(load(text).is_ok());
    let text = "profile: x\nresources:\n  <<: {memory: 1GB, pids: 9}\n  pids: 10\n";
    let profile = load(text).unwrap();
    assert_eq!(profile.resources.pids, 10);
    assert_eq!(
        profile.resources.memory_bytes,
        units::parse_bytes("1GB").unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Image roots.

#[test]
fn rootfs_defaults_to_the_host_and_binds_its_system_directories() {
    let plan = plan_of("profile: x\n");
    assert_eq!(plan.rootfs, Rootfs::Host);
    assert!(plan
        .mounts
        .iter()
        .any(|m| matches!(m, Mount::Bind { target, .. } if target == "/usr")));
    assert_eq!(
        serde_json::to_value(&plan).unwrap()["rootfs"],
        serde_json::json!("host")
    );
}

#[test]
fn an_image_root_brings_its_own_system_and_etc() {
    let text = "profile: x\nfilesystem:\n  rootfs: image:python:3.11-slim\n";
    let plan = plan_of(text);
    assert_eq!(plan.rootfs, Rootfs::Image("python:3.11-slim".into()));
    assert_eq!(
        serde_json::to_value(&plan).unwrap()["rootfs"],
        serde_json::json!("image:python:3.11-slim")
    );
    // No host binds at all: neither filesystem.system nor filesystem.etc.
    assert!(
        !plan.mounts.iter().any(|m| matches!(m, Mount::Bind { .. })),
        "{:#?}",
        plan.mounts
    );
    let files: Vec<&str> = plan
        .mounts
        .iter()
        .filter_map(|m| match m {
            Mount::File { target, .. } => Some(target.as_str()),
            _ => None,
        })
        .collect();
    // The image's own passwd and group stay; hosts and hostname name the sandbox.
    assert_eq!(files, ["/etc/hosts", "/etc/hostname"]);
    for target in [
        "/tmp",
        "/workspace",
        "/proc",
        "/dev",
        "/proc/kcore",
        "/proc/sys",
    ] {
        assert!(
            plan.mounts.iter().any(|m| mount_target(m) == target),
            "{target} missing: {:#?}",
            plan.mounts
        );
    }
    // Landlock: everything readable, writes where they were.
    assert_eq!(plan.landlock.rules[0].path, "/");
    assert!(plan
        .landlock
        .rules
        .iter()
        .any(|r| r.path == "/workspace" && r.access == Access::ReadWrite));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
}

#[test]
fn the_image_override_wins_over_the_profile() {
    let profile = load_builtin("default").unwrap();
    let image = Overrides {
        image: Some("alpine:3.20".into()),
        ..Overrides::default()
    };
    let plan = compile(&profile, &image).unwrap();
    assert_eq!(plan.rootfs, Rootfs::Image("alpine:3.20".into()));
    assert!(!plan.mounts.iter().any(|m| matches!(m, Mount::Bind { .. })));
    // default.yaml writes filesystem.system and etc; --image is no reason to warn.
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);

    let from_file = load("profile: x\nfilesystem:\n  rootfs: image:a\n").unwrap();
    let plan = compile(
        &from_file,
        &Overrides {
            image: Some("b".into()),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(plan.rootfs, Rootfs::Image("b".into()));

    for bad in [
        "",
        "../x",
        "a/../b",
        "/abs",
        "a//b",
        "a/",
        "has space",
        "-x",
    ] {
        let err = compile(
            &profile,
            &Overrides {
                image: Some(bad.into()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(&err, PolicyError::InvalidOverride { field, .. } if field == "image"),
            "{bad:?}: {err}"
        );
    }
    let err = compile(
        &profile,
        &Overrides {
            image: Some("a".into()),
            mode: Some(Mode::Direct),
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("mode direct"), "{err}");
}

#[test]
fn bad_rootfs_values_are_refused_at_their_place() {
    for (text, needle, expected) in [
        (
            "profile: x\nfilesystem:\n  rootfs: docker\n",
            "docker",
            "`host` or `image:NAME`",
        ),
        (
            "profile: x\nfilesystem:\n  rootfs: \"image:\"\n",
            "\"image:\"",
            "no image name",
        ),
        (
            "profile: x\nfilesystem:\n  rootfs: image:../../etc\n",
            "image:../",
            "not a valid image name",
        ),
        (
            "profile: x\nfilesystem:\n  rootfs: image:/abs\n",
            "image:/abs",
            "not a valid image name",
        ),
        (
            "profile: x\nfilesystem:\n  rootfs: image:a//b\n",
            "image:a//b",
            "not a valid image name",
        ),
        ("profile: x\nfilesystem:\n  rootfs: 3\n", "3", "string"),
        (
            "profile: x\nfilesystem:\n  rootf: host\n",
            "rootf",
            "did you mean `rootfs`",
        ),
    ] {
        let err = load(text).unwrap_err();
        assert_at(&err, text, needle);
        assert!(err.to_string().contains(expected), "{err}");
    }
    // An image root cannot be had without namespaces.
    let text = "profile: x\nmode: direct\nfilesystem:\n  rootfs: image:a\n";
    let err = compile(&load(text).unwrap(), &Overrides::default()).unwrap_err();
    assert_at(&err, text, "image:a");
}

#[test]
fn host_keys_next_to_an_image_root_are_named_in_a_warning() {
    let plan =
        plan_of("profile: x\nfilesystem:\n  rootfs: image:a\n  system: [/usr]\n  etc: [ssl]\n");
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    assert!(plan.warnings[0].starts_with("filesystem.system: has no effect"));
    assert!(plan.warnings[1].starts_with("filesystem.etc: has no effect"));
}

#[test]
fn python_data_preloads_numpy_pandas_and_matplotlib_when_installed() {
    let profile = load_builtin("python-data").unwrap();
    assert_eq!(
        profile.performance.preload,
        ["numpy?", "pandas?", "matplotlib?", "matplotlib.pyplot?"]
    );
    let plan = phantom_policy::compile(&profile, &phantom_policy::Overrides::default()).unwrap();
    assert_eq!(plan.preload, profile.performance.preload);
    assert!(
        plan.prewarm.is_some(),
        "python-data runs python: its pool has a zygote"
    );
}

#[test]
fn a_preload_that_is_not_a_module_name_is_refused_at_its_place() {
    let s = Scratch::new("preload");
    let path = s.write(
        "p.yaml",
        "profile: p\nruntime: python\nperformance:\n  preload: [numpy, \"os; rm -rf /\"]\n",
    );
    let e = load_file(&path).unwrap_err().to_string();
    assert!(e.contains("performance.preload[1]"), "{e}");
    assert!(e.contains(":4:"), "{e}");
    assert!(e.contains("not a module name"), "{e}");
}
