//! The Landlock fence: which files the payload may read or write, and (ABI 6) that
//! abstract unix sockets and signals do not cross the sandbox boundary. Best effort:
//! a kernel without Landlock, or with an older ABI, gets what it supports and the
//! caller reports the ABI achieved.

use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::{SysError, SysResult};

/// The newest ABI whose rights phantom asks for.
const TARGET_ABI: ABI = ABI::V6;

/// One rule: everything below `path` may be read (and executed), or also written.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct Rule {
    pub path: PathBuf,
    pub write: bool,
}

/// The Landlock ABI the running kernel offers (0 when Landlock is unavailable).
pub fn kernel_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: with a null attr, size 0 and the VERSION flag the call only returns the
    // ABI number; nothing is read or written.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        0
    } else {
        v as u32
    }
}

/// Restrict the calling thread (and its future children) to `rules`. Paths that do
/// not exist are skipped. Returns the ABI enforced (0 when nothing was enforced).
/// TCP ports the payload may `connect` to and `bind` (Landlock ABI 4). Every other
/// TCP connect and bind fails with EACCES. Kernels before ABI 4 skip it (best effort:
/// the namespace is the first fence; the reported ABI says which applied).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpPorts {
    pub connect: Vec<u16>,
    pub bind: Vec<u16>,
}

pub fn restrict(
    rules: &[Rule],
    scope_abstract_unix: bool,
    scope_signals: bool,
    tcp: Option<&TcpPorts>,
) -> SysResult<u32> {
    let kernel = kernel_abi();
    if kernel == 0 {
        return Ok(0);
    }
    let err = |e: landlock::RulesetError| {
        SysError::new("landlock", "ruleset", std::io::Error::other(e.to_string()))
    };
    let mut scopes = enumflags_scopes(scope_abstract_unix, scope_signals);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(err)?;
    if let Some(s) = scopes.take() {
        ruleset = ruleset.scope(s).map_err(err)?;
    }
    if tcp.is_some() {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(TARGET_ABI))
            .map_err(err)?;
    }
    let mut created = ruleset.create().map_err(err)?;
    if let Some(tcp) = tcp {
        for &port in &tcp.connect {
            created = created
                .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
                .map_err(err)?;
        }
        for &port in &tcp.bind {
            created = created
                .add_rule(NetPort::new(port, AccessNet::BindTcp))
                .map_err(err)?;
        }
    }
    for rule in rules {
        let Ok(fd) = PathFd::new(&rule.path) else {
            continue;
        };
        let access = if rule.write {
            AccessFs::from_all(TARGET_ABI)
        } else {
            AccessFs::from_read(TARGET_ABI)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(err)?;
    }
    let status = created.restrict_self().map_err(err)?;
    Ok(match status.ruleset {
        RulesetStatus::NotEnforced => 0,
        _ => kernel.min(TARGET_ABI as u32),
    })
}

fn enumflags_scopes(unix: bool, signals: bool) -> Option<landlock::BitFlags<Scope>> {
    match (unix, signals) {
        (true, true) => Some(Scope::AbstractUnixSocket | Scope::Signal),
        (true, false) => Some(Scope::AbstractUnixSocket.into()),
        (false, true) => Some(Scope::Signal.into()),
        (false, false) => None,
    }
}
