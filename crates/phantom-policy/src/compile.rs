//! [`compile`]: a [`Profile`] and the command line's [`Overrides`] → a [`Plan`].
//!
//! Overrides are applied first, then everything is checked against the effective mode,
//! so `--mode hardened` gets hardened's rules (no network, no read-write binds, none of
//! the keys `weaken.rs` lists). The plan is built in the order the runtime replays it;
//! see [`Plan`] and, for seccomp, `seccomp.rs`.
//!
//! Two things depend on the host, which compile() sees through a [`Host`]
//! (`host.rs`): `filesystem.toolchains` (`toolchain.rs`), and whether the sandbox's
//! user can reach each bind's source.

use crate::egress::{Egress, PROXY_PORT};
use crate::error::{PolicyError, SourcePos};
use crate::host::{Host, LocalHost};
use crate::plan::{
    Access, LandlockPlan, LandlockRule, LandlockTcp, Limits, Mode, Mount, NetworkMode, Plan, Rootfs,
};
use crate::profile::{
    self, IoMode, MemoryAllocator, Profile, Runtime, SeccompDefault, SecurityLevel,
};
use crate::seccomp;

/// Values given on the command line (or in an API request) that take precedence over
/// the profile. Each is checked like the profile key it replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--mode`. `Hardened` brings hardened's rules: network `none` (a profile's
    /// `loopback-only` is overridden; an explicit `network: Some(LoopbackOnly)` here is
    /// an error), read-only `/tmp`, no read-write binds, the seccomp allowlist.
    pub mode: Option<Mode>,
    /// `--memory`, in bytes (at least 1MB).
    pub memory_bytes: Option<u64>,
    /// `--cpus`, in thousandths of a CPU (1..=1024000).
    pub cpu_millis: Option<u32>,
    /// `--pids` (1..=4194304).
    pub pids: Option<u64>,
    /// `--timeout`, in milliseconds (more than 0).
    pub wall_timeout_ms: Option<u64>,
    /// `--network`.
    pub network: Option<NetworkMode>,
    /// `--image NAME`: the sandbox's root is that image of the store (wins over
    /// `filesystem.rootfs`). Checked like an `image:NAME` there; whether the image
    /// exists is the runtime's business.
    pub image: Option<String>,
    /// `--allow-host` / `--deny-host`: the egress proxy's rules instead of the
    /// profile's `network.allow` and `network.deny`; the network is then `limited`
    /// (an explicit other network is an error).
    pub egress: Option<EgressOverride>,
}

/// A request's own egress rules (see [`Overrides::egress`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressOverride {
    pub allow: Vec<crate::egress::EgressRule>,
    pub deny: Vec<crate::egress::EgressRule>,
}

/// The sandbox's hostname, also in its /etc/hosts and /etc/hostname.
pub const HOSTNAME: &str = "phantom";
/// Where phantom puts command names a profile provides (`python` for Python 3), first
/// on `PATH`: a directory of the sandbox's own root, read-only like it.
pub const ALIAS_BIN: &str = "/opt/phantom/bin";

/// `PATH` inside the sandbox.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Size of the tmpfs at /dev/shm.
pub const SHM_SIZE_BYTES: u64 = 64 << 20;
/// Host device nodes bound into the sandbox's /dev.
pub const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// /proc entries hidden: Docker's masked paths, plus kallsyms.
pub const PROC_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/kallsyms",
];
/// /proc entries made read-only: Docker's read-only paths.
pub const PROC_READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// Device paths the payload may write to when Landlock is on.
const DEV_WRITABLE: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/pts",
    "/dev/shm",
];

/// Turns a profile plus overrides into the plan the runtime replays, on this machine
/// ([`LocalHost`]).
pub fn compile(profile: &Profile, overrides: &Overrides) -> Result<Plan, PolicyError> {
    compile_on(profile, overrides, &LocalHost)
}

/// [`compile`] against the given [`Host`] (tests pass a fake one).
///
/// Refusals that do not depend on each other (hardened's, binds the sandbox cannot
/// reach) come together as one [`PolicyError::Several`].
pub fn compile_on(
    profile: &Profile,
    overrides: &Overrides,
    host: &dyn Host,
) -> Result<Plan, PolicyError> {
    let at = |key: &str| {
        profile
            .position(key)
            .cloned()
            .unwrap_or_else(|| SourcePos::file_only(format!("profile {}", profile.name)))
    };
    let profile_error = |key: &str, message: String| PolicyError::InvalidValue {
        at: at(key),
        field: key.to_string(),
        message,
    };
    let override_error = |field: &str, message: String| PolicyError::InvalidOverride {
        field: field.to_string(),
        message,
    };

    // The mode. Mode wasm compiles like sandbox (mounts, Landlock, the seccomp
    // denylist): the wasm runner replays what applies to it (the workspace and /tmp
    // as preopens, the environment, the limits, the fences of its process).
    let mode = overrides.mode.unwrap_or(profile.mode);
    if profile.runtime == Runtime::Wasm && mode != Mode::Wasm {
        return Err(profile_error(
            "runtime",
            format!(
                "runtime wasm runs WebAssembly modules, which only mode wasm does (the mode here is {}); write mode: wasm, or runtime: auto",
                mode.as_str()
            ),
        ));
    }
    let hardened = mode == Mode::Hardened;
    let level = profile.security.level;
    let high = level == SecurityLevel::High;

    // Limits.
    let r = &profile.resources;
    let limits = Limits {
        memory_bytes: overrides.memory_bytes.unwrap_or(r.memory_bytes),
        cpu_millis: overrides.cpu_millis.unwrap_or(r.cpu_millis),
        pids: overrides.pids.unwrap_or(r.pids),
        wall_timeout_ms: overrides.wall_timeout_ms.unwrap_or(r.timeout_ms),
        output_limit_bytes: r.output_bytes,
        tmp_size_bytes: r.tmp_bytes,
        nofile: r.nofile,
        fsize_bytes: r.fsize_bytes,
    };
    if let Some(v) = overrides.memory_bytes {
        profile::check_memory(v).map_err(|m| override_error("memory", m))?;
    }
    if let Some(v) = overrides.cpu_millis {
        profile::check_cpu(v).map_err(|m| override_error("cpus", m))?;
    }
    if let Some(v) = overrides.pids {
        profile::check_pids(v).map_err(|m| override_error("pids", m))?;
    }
    if let Some(v) = overrides.wall_timeout_ms {
        profile::check_timeout(v).map_err(|m| override_error("timeout", m))?;
    }

    // Hosts of the request's own make the network limited.
    let asked_network = match (&overrides.egress, overrides.network) {
        (Some(_), None | Some(NetworkMode::Limited)) => Some(NetworkMode::Limited),
        (Some(_), Some(other)) => {
            return Err(override_error(
                "network",
                format!("{} has no egress proxy to apply allowed hosts to; use network limited, or give no hosts", other.as_str()),
            ))
        }
        (None, asked) => asked,
    };
    // Network: hardened has none, and never the host's.
    let network = match (asked_network, hardened) {
        (Some(NetworkMode::LoopbackOnly | NetworkMode::Limited | NetworkMode::Host), true) => {
            let asked = asked_network.map_or("", |n| n.as_str());
            return Err(override_error(
                "network",
                format!("{asked} conflicts with mode hardened, which has no network at all; use network none or mode sandbox"),
            ));
        }
        (Some(network), _) => network,
        (None, true) => {
            // The same file asking for both is a contradiction; a loopback-only or
            // limited inherited from a parent, or a --mode hardened, simply means
            // none. The host's network is never silently dropped or granted: it is
            // refused wherever it comes from.
            let same_file = matches!(
                (profile.position("mode"), profile.position("network.mode")),
                (Some(m), Some(n)) if m.file == n.file
            );
            let asked = profile.network.mode;
            if asked == NetworkMode::Host
                || (profile.mode == Mode::Hardened && asked != NetworkMode::None && same_file)
            {
                return Err(profile_error(
                    "network.mode",
                    format!("{} conflicts with mode: hardened, which has no network at all; write network.mode: none", asked.as_str()),
                ));
            }
            NetworkMode::None
        }
        (None, false) => profile.network.mode,
    };
    let egress = if network == NetworkMode::Limited {
        match &overrides.egress {
            Some(asked) => Egress {
                allow: asked.allow.clone(),
                deny: asked.deny.clone(),
                // The profile's trusted mirrors stay trusted only where still allowed.
                allow_reserved: profile
                    .network
                    .allow_reserved
                    .iter()
                    .filter(|r| asked.allow.iter().any(|a| a.covers(r)))
                    .cloned()
                    .collect(),
            },
            None => Egress {
                allow: profile.network.allow.clone(),
                deny: profile.network.deny.clone(),
                allow_reserved: profile.network.allow_reserved.clone(),
            },
        }
    } else {
        Egress::default()
    };

    // Refusals that do not depend on each other, reported together.
    let mut refusals = Vec::new();
    let mut weakening = Vec::new();
    // Hardened: read-only binds only.
    if hardened {
        for (i, bind) in profile.filesystem.binds.iter().enumerate() {
            if bind.access == Access::ReadWrite {
                let key = format!("filesystem.binds[{i}].access");
                let key = if profile.position(&key).is_some() {
                    key
                } else {
                    format!("filesystem.binds[{i}]")
                };
                refusals.push(profile_error(
                    &key,
                    format!(
                        "read-write bind of {} is not allowed in mode hardened (only the workspace is writable); use access: read-only or mode sandbox",
                        bind.target
                    ),
                ));
            }
        }
    }
    // What weakens the mode: refused in hardened, a warning in sandbox.
    crate::weaken::check(profile, mode, host, &mut refusals, &mut weakening);
    // A bind the sandbox's user cannot reach would fail at run time with EACCES.
    if mode != Mode::Direct {
        for (i, bind) in profile.filesystem.binds.iter().enumerate() {
            if let Some(barrier) = host.barrier(&bind.source) {
                refusals.push(profile_error(
                    &format!("filesystem.binds[{i}].source"),
                    format!(
                        "`{}` is below {}, which the sandbox's user cannot enter, so the bind would fail with EACCES; bind a path outside it (e.g. under /opt), or give other users search permission on it (chmod o+x {})",
                        bind.source,
                        barrier.describe(),
                        barrier.dir
                    ),
                ));
            }
        }
    }
    if let Some(error) = PolicyError::from_list(refusals) {
        return Err(error);
    }

    // The root: the host's system directories, or an image that brings its own.
    let rootfs = match &overrides.image {
        Some(name) => {
            profile::check_image_name(name).map_err(|m| override_error("image", m))?;
            Rootfs::Image(name.clone())
        }
        None => profile.filesystem.rootfs.clone(),
    };
    if matches!(mode, Mode::Direct | Mode::Wasm) {
        if let Rootfs::Image(name) = &rootfs {
            let message = if mode == Mode::Wasm {
                format!(
                    "mode wasm runs a WebAssembly module that sees only /workspace and /tmp, so it cannot run on image `{name}`; use mode sandbox or hardened for an image"
                )
            } else {
                format!(
                    "mode direct runs on the host's own filesystem, so it cannot run on image `{name}`; use mode sandbox or hardened"
                )
            };
            return Err(if overrides.mode.is_some() || overrides.image.is_some() {
                override_error(
                    if overrides.image.is_some() {
                        "image"
                    } else {
                        "mode"
                    },
                    message,
                )
            } else {
                profile_error("filesystem.rootfs", message)
            });
        }
    }

    // Toolchains of the host, for a run on the host's root (an image brings its own).
    let toolchains = if rootfs == Rootfs::Host {
        let bind = mode != Mode::Direct;
        crate::toolchain::resolve(&profile.filesystem, host, bind, &mut weakening)
    } else {
        Default::default()
    };

    let workspace = profile.filesystem.workspace.clone();
    let home = if hardened {
        workspace.clone()
    } else {
        "/tmp".to_string()
    };
    let arch = seccomp::build_arch();

    // `python` is Python 3 in a python profile, on a host that has only `python3`
    // (Debian's python3 without python-is-python3): what the seed README runs.
    let python_alias = rootfs == Rootfs::Host
        && profile.runtime == Runtime::Python
        && host.kind("/usr/bin/python") == crate::host::PathKind::Missing
        && host.kind("/usr/bin/python3") != crate::host::PathKind::Missing;
    let path = python_alias
        .then_some(ALIAS_BIN)
        .into_iter()
        .chain(toolchains.path.iter().map(String::as_str))
        .chain(std::iter::once(PATH))
        .collect::<Vec<_>>()
        .join(":");
    let mut env = vec![
        ("PATH".to_string(), path),
        ("HOME".to_string(), home.clone()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("TERM".to_string(), "xterm".to_string()),
    ];
    if hardened {
        // /tmp is read-only: temporary files go to the workspace.
        env.push(("TMPDIR".to_string(), workspace.clone()));
    }
    env.extend(toolchains.env.iter().cloned());
    if network == NetworkMode::Limited && mode != Mode::Direct {
        // Every common client honours one of these; ALL_PROXY as socks5h so that
        // names are resolved by the proxy, never inside (there is no DNS inside).
        let http = format!("http://127.0.0.1:{PROXY_PORT}");
        let socks = format!("socks5h://127.0.0.1:{PROXY_PORT}");
        for (key, value) in [
            ("HTTP_PROXY", &http),
            ("HTTPS_PROXY", &http),
            ("ALL_PROXY", &socks),
            ("NO_PROXY", &String::new()),
        ] {
            env.push((key.to_string(), value.clone()));
            env.push((key.to_ascii_lowercase(), value.clone()));
        }
    }
    if profile.performance.memory_allocator == MemoryAllocator::Jemalloc {
        let library = arch
            .as_ref()
            .map(|a| a.jemalloc)
            .unwrap_or("/usr/lib/libjemalloc.so.2");
        env.push(("LD_PRELOAD".to_string(), library.to_string()));
    }
    // The profile's `env:` last: a name it gives replaces phantom's own.
    for (key, value) in &profile.env {
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((key.clone(), value.clone())),
        }
    }

    let isolated = mode != Mode::Direct;
    let mounts = if isolated {
        mounts(
            profile,
            &rootfs,
            hardened,
            high,
            &home,
            &toolchains.binds,
            python_alias,
        )
    } else {
        Vec::new()
    };
    let mut landlock = landlock(
        profile,
        hardened,
        isolated && level != SecurityLevel::Low && profile.security.landlock.enabled,
    );
    if landlock.enabled {
        // Landlock's TCP fence (ABI 4) where the mode has a use for it: with no
        // interface but lo, `none` needs no TCP at all and `limited` only the proxy.
        // loopback-only needs every port on lo (local servers and their tests), and
        // host mode is not fenced by design.
        landlock.tcp = match network {
            NetworkMode::None => Some(LandlockTcp {
                connect_ports: Vec::new(),
                bind_ports: Vec::new(),
            }),
            NetworkMode::Limited => Some(LandlockTcp {
                connect_ports: vec![PROXY_PORT],
                bind_ports: Vec::new(),
            }),
            NetworkMode::LoopbackOnly | NetworkMode::Host => None,
        };
    }

    let seccomp = if isolated {
        let policy = &profile.security.seccomp;
        let spec = seccomp::Spec {
            kill: high,
            // wasmtime (its signal handlers, JIT code and runtime threads) needs
            // syscalls an allowlist forbids: mode wasm keeps the denylist.
            allowlist: mode != Mode::Wasm && (hardened || policy.default == SeccompDefault::Deny),
            allow: &policy.allow,
            deny: &policy.deny,
        };
        seccomp::programs(arch?, &spec)?
    } else {
        Vec::new()
    };

    let mut warnings = warnings(profile, mode);
    if mode == Mode::Wasm && profile.security.seccomp.default == SeccompDefault::Deny {
        warnings.push(
            "security.seccomp.default: deny has no effect in mode wasm: wasmtime needs syscalls an allowlist forbids, so the runner's process keeps the denylist (the module itself makes no syscalls, only WASI calls)".into(),
        );
    }
    warnings.extend(weakening);
    if isolated {
        if network == NetworkMode::Host {
            warnings.push(
                "network host: the sandbox shares the host's network (no network namespace): it can reach everything the host can, including services on the host's loopback".into(),
            );
        }
        // Rules the policy file itself wrote (or wrote beside the mode), under a mode
        // that ignores them. A child that only changes the mode of a limited parent
        // (python-dev -> loopback-only) means it; a mode chosen on the command line
        // (--network, --mode hardened) is the caller's word over the profile's rules.
        let mode_file = profile.position("network.mode").map(|p| &p.file);
        let own_file = profile.position("profile").map(|p| &p.file);
        let written: Vec<&str> = ["network.allow", "network.deny", "network.allow_reserved"]
            .into_iter()
            .filter(|key| {
                profile.position(key).is_some_and(|p| {
                    mode_file.is_none_or(|f| *f == p.file) || own_file == Some(&p.file)
                })
            })
            .collect();
        let rules = !profile.network.allow.is_empty()
            || !profile.network.deny.is_empty()
            || !profile.network.allow_reserved.is_empty();
        let chosen_here = overrides.network.is_none() && overrides.mode != Some(Mode::Hardened);
        if network != NetworkMode::Limited && !written.is_empty() && rules && chosen_here {
            let why = if hardened {
                "mode hardened, which has no network".to_string()
            } else {
                format!(
                    "network.mode: {} (only limited uses them)",
                    network.as_str()
                )
            };
            warnings.push(format!(
                "{}: {} no effect with {why}",
                written.join(", "),
                if written.len() == 1 { "has" } else { "have" }
            ));
        }
    }
    if let (Rootfs::Image(name), None) = (&rootfs, &overrides.image) {
        // Written next to `rootfs: image:...` in the same file, these keys suggest the
        // author expects them to apply. (A parent's host binds simply do not.)
        let rootfs_file = profile.position("filesystem.rootfs").map(|p| &p.file);
        for key in [
            "filesystem.system",
            "filesystem.etc",
            "filesystem.toolchains",
        ] {
            if matches!((profile.position(key), rootfs_file), (Some(k), Some(r)) if k.file == *r) {
                warnings.push(format!(
                    "{key}: has no effect with filesystem.rootfs: image:{name}, which brings its own /usr and /etc"
                ));
            }
        }
    }

    Ok(Plan {
        profile: profile.name.clone(),
        mode,
        prewarm: (profile.runtime == Runtime::Python).then_some(crate::plan::Interpreter::Python),
        preload: profile.performance.preload.clone(),
        hostname: HOSTNAME.to_string(),
        rootfs,
        mounts,
        workspace_target: workspace.clone(),
        network,
        egress,
        env,
        cwd: workspace,
        limits,
        seccomp,
        landlock,
        noexec_writable: high,
        warnings,
    })
}

/// The mount list, in replay order. See [`Plan::mounts`]. On an image root, the
/// host's system directories and `/etc` files are left out (the image has its own,
/// `passwd` and `group` included); `/etc/hosts` and `/etc/hostname` still name the
/// sandbox.
fn mounts(
    profile: &Profile,
    rootfs: &Rootfs,
    hardened: bool,
    high: bool,
    home: &str,
    toolchains: &[String],
    python_alias: bool,
) -> Vec<Mount> {
    let fs = &profile.filesystem;
    let host_root = *rootfs == Rootfs::Host;
    let mut mounts = Vec::new();
    let (system, etc): (&[String], &[String]) = if host_root {
        (&fs.system, &fs.etc)
    } else {
        (&[], &[])
    };
    for path in system {
        mounts.push(Mount::Bind {
            source: path.clone(),
            target: path.clone(),
            read_only: true,
            optional: true,
        });
    }
    for name in etc {
        mounts.push(Mount::Bind {
            source: format!("/etc/{name}"),
            target: format!("/etc/{name}"),
            read_only: true,
            optional: true,
        });
    }
    let file = |target: &str, contents: String| Mount::File {
        target: target.to_string(),
        contents,
        mode: 0o644,
    };
    if host_root {
        mounts.push(file(
            "/etc/passwd",
            format!("root:x:0:0:root:{home}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        ));
        mounts.push(file(
            "/etc/group",
            "root:x:0:\nnogroup:x:65534:\n".to_string(),
        ));
    }
    mounts.push(file(
        "/etc/hosts",
        format!("127.0.0.1 localhost {HOSTNAME}\n::1 localhost\n"),
    ));
    mounts.push(file("/etc/hostname", format!("{HOSTNAME}\n")));
    if python_alias {
        mounts.push(Mount::File {
            target: format!("{ALIAS_BIN}/python"),
            contents: "#!/bin/sh\nexec python3 \"$@\"\n".to_string(),
            mode: 0o755,
        });
    }
    for bind in &fs.binds {
        mounts.push(Mount::Bind {
            source: bind.source.clone(),
            target: bind.target.clone(),
            read_only: bind.access == Access::ReadOnly,
            optional: false,
        });
    }
    // Found on the host just now; a toolchain removed before the run is skipped.
    for dir in toolchains {
        mounts.push(Mount::Bind {
            source: dir.clone(),
            target: dir.clone(),
            read_only: true,
            optional: true,
        });
    }
    mounts.push(Mount::Tmpfs {
        target: "/tmp".to_string(),
        size_bytes: profile.resources.tmp_bytes,
        mode: 0o1777,
        read_only: hardened,
        noexec: high,
    });
    mounts.push(Mount::Workspace {
        target: fs.workspace.clone(),
        noexec: high,
    });
    mounts.push(Mount::Proc {
        target: "/proc".to_string(),
    });
    for path in PROC_MASKED {
        mounts.push(Mount::Mask {
            target: path.to_string(),
        });
    }
    for path in PROC_READ_ONLY {
        mounts.push(Mount::ReadOnly {
            target: path.to_string(),
        });
    }
    mounts.push(Mount::Dev {
        target: "/dev".to_string(),
        nodes: DEV_NODES.iter().map(|n| n.to_string()).collect(),
        shm_size_bytes: SHM_SIZE_BYTES,
        shm_read_only: hardened,
    });
    mounts
}

/// The Landlock rules. See [`crate::LandlockPolicy`].
fn landlock(profile: &Profile, hardened: bool, enabled: bool) -> LandlockPlan {
    if !enabled {
        return LandlockPlan {
            enabled: false,
            rules: Vec::new(),
            scope_abstract_unix: false,
            scope_signals: false,
            tcp: None,
        };
    }
    let fs = &profile.filesystem;
    let mut rules: Vec<LandlockRule> = Vec::new();
    let mut add = |path: &str, access: Access| {
        let rule = LandlockRule {
            path: path.to_string(),
            access,
        };
        // Read access below `/` already covers every other read-only rule; each rule
        // costs the payload an open and a syscall at start-up, so keep only `/`.
        let covered = access == Access::ReadOnly && rules.first().is_some_and(|r| r.path == "/");
        if !covered && !rules.contains(&rule) {
            rules.push(rule);
        }
    };
    // The root itself, so that `ls /` works: it holds only what this plan mounts, so
    // reading everything below it is "reading only what is mounted".
    add("/", Access::ReadOnly);
    for path in &fs.system {
        add(path, Access::ReadOnly);
    }
    for path in ["/etc", "/proc", "/dev"] {
        add(path, Access::ReadOnly);
    }
    add(&fs.workspace, Access::ReadWrite);
    // In hardened mode /tmp is a read-only tmpfs: readable, like the rest.
    add(
        "/tmp",
        if hardened {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        },
    );
    for path in DEV_WRITABLE {
        add(path, Access::ReadWrite);
    }
    for bind in &fs.binds {
        add(&bind.target, bind.access);
    }
    for extra in &profile.security.landlock.paths {
        add(&extra.path, extra.access);
    }
    LandlockPlan {
        enabled: true,
        rules,
        scope_abstract_unix: true,
        scope_signals: true,
        tcp: None,
    }
}

/// One line per key that has no (or less) effect than the user may think.
fn warnings(profile: &Profile, mode: Mode) -> Vec<String> {
    let mut warnings = Vec::new();
    let perf = &profile.performance;
    // zygote and pool_size act in phantom-supervisor, which pools built-in profiles;
    // the runtime warns when a policy *file* sets them (it cannot be pooled).
    if perf.io_mode == IoMode::Uring {
        warnings.push(
            "performance.io_mode: uring: io_uring stays blocked for the payload by seccomp; phantom's own file I/O uses read/write"
                .to_string(),
        );
    }
    if mode == Mode::Direct {
        warnings.push(
            "mode: direct runs without namespaces, seccomp or Landlock: the payload sees the host's filesystem and network (network.*, security.* and filesystem.* but toolchains have no effect; limits and the timeout apply)"
                .to_string(),
        );
        return warnings;
    }
    let landlock = &profile.security.landlock;
    let landlock_written = profile.position("security.landlock.enabled").is_some()
        && landlock.enabled
        || !landlock.paths.is_empty();
    if profile.security.level == SecurityLevel::Low && landlock_written {
        warnings.push(
            "security.landlock: has no effect at security.level: low, which turns Landlock off"
                .to_string(),
        );
    } else if landlock.enabled {
        for entry in landlock
            .paths
            .iter()
            .filter(|p| p.access == Access::ReadOnly)
        {
            warnings.push(format!(
                "security.landlock.paths: `{}` read-only adds nothing: everything mounted in the sandbox is readable already; only read-write entries widen the fence",
                entry.path
            ));
        }
    }
    let seccomp = &profile.security.seccomp;
    let allowlist = mode == Mode::Hardened || seccomp.default == SeccompDefault::Deny;
    if !allowlist {
        for name in &seccomp.allow {
            if !seccomp::DENYLIST.contains(&name.as_str()) {
                warnings.push(format!(
                    "security.seccomp.allow: `{name}` is not denied with seccomp.default: allow, so allowing it changes nothing"
                ));
            }
        }
    }
    warnings
}
