//! `filesystem.toolchains`: finding a language toolchain where its usual installer put
//! it on the host (see [`Toolchain`]), so that a dev profile runs the same `rustc`,
//! `go` or `node` the user runs outside.
//!
//! A toolchain found is bound read-only at the same path (unless a system path already
//! shows it), its `bin` directory goes first in `PATH`, and the variables it needs are
//! set. One that is not installed is skipped without a word (the distribution's
//! package in /usr may serve). One that is installed but cannot be bound — below a
//! directory the sandbox's user cannot enter, or at a place the sandbox owns (/tmp,
//! the workspace) — is left out with a warning that says what to do.

use crate::host::{Host, PathKind};
use crate::profile::{Filesystem, Toolchain};
use crate::schema::{absolute_path, is_within, KERNEL_DIRS};

/// What a toolchain found on the host adds to a plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// Host directories bound read-only at the same path inside.
    pub binds: Vec<String>,
    /// Directories put first in `PATH`, in order.
    pub path: Vec<String>,
    /// Variables set inside.
    pub env: Vec<(String, String)>,
}

/// Every toolchain of `fs` that is installed and can be bound; the others that are
/// installed produce a warning. `bind: false` (mode direct, which runs on the host's
/// own filesystem as the invoking user): nothing to bind, only `PATH` and variables.
pub(crate) fn resolve(
    fs: &Filesystem,
    host: &dyn Host,
    bind: bool,
    warnings: &mut Vec<String>,
) -> Found {
    let mut all = Found::default();
    for toolchain in &fs.toolchains {
        let Some((found, location)) = locate(*toolchain, host) else {
            continue;
        };
        let binds = if bind {
            usable(&found, fs, host)
        } else {
            Ok(Vec::new())
        };
        match binds {
            Ok(binds) => {
                all.binds.extend(binds);
                all.path.extend(found.path);
                all.env.extend(found.env);
            }
            Err(why) => warnings.push(format!(
                "filesystem.toolchains: {} at {location} is left out: {why}",
                toolchain.as_str()
            )),
        }
    }
    all
}

/// Where `toolchain` is installed on the host, and what it needs; `None` when it is
/// not. The string names the place for messages.
fn locate(toolchain: Toolchain, host: &dyn Host) -> Option<(Found, String)> {
    let dir_var = |name: &str| {
        host.var(name)
            .and_then(|v| absolute_path(&v, false).ok())
            .filter(|p| p != "/")
    };
    let home = || dir_var("HOME");
    let in_home = |rest: &str| home().map(|h| format!("{h}/{rest}"));
    match toolchain {
        Toolchain::Rustup => {
            let cargo_home = dir_var("CARGO_HOME").or_else(|| in_home(".cargo"))?;
            let rustup_home = dir_var("RUSTUP_HOME").or_else(|| in_home(".rustup"))?;
            let bin = format!("{cargo_home}/bin");
            let installed = host.kind(&bin) == PathKind::Dir
                && host.kind(&format!("{rustup_home}/toolchains")) == PathKind::Dir;
            installed.then(|| {
                (
                    Found {
                        binds: vec![bin.clone(), rustup_home.clone()],
                        path: vec![bin.clone()],
                        env: vec![("RUSTUP_HOME".to_string(), rustup_home.clone())],
                    },
                    format!("{bin} and {rustup_home}"),
                )
            })
        }
        Toolchain::Go => {
            let root = dir_var("GOROOT").unwrap_or_else(|| "/usr/local/go".to_string());
            (host.kind(&format!("{root}/bin/go")) == PathKind::File).then(|| {
                (
                    Found {
                        binds: vec![root.clone()],
                        path: vec![format!("{root}/bin")],
                        env: Vec::new(),
                    },
                    root.clone(),
                )
            })
        }
        Toolchain::Nvm => {
            let nvm_dir = dir_var("NVM_DIR").or_else(|| in_home(".nvm"))?;
            let versions = format!("{nvm_dir}/versions/node");
            let installed: Vec<String> = host
                .list(&versions)
                .into_iter()
                .filter(|v| {
                    node_version(v).is_some()
                        && host.kind(&format!("{versions}/{v}/bin/node")) == PathKind::File
                })
                .collect();
            // The version the invoking shell uses (nvm puts its bin first in PATH),
            // else the newest.
            let in_path = host.var("PATH").and_then(|path| {
                path.split(':').find_map(|entry| {
                    let v = entry
                        .strip_prefix(&format!("{versions}/"))?
                        .strip_suffix("/bin")?;
                    installed.iter().find(|i| *i == v).cloned()
                })
            });
            let version =
                in_path.or_else(|| installed.iter().max_by_key(|v| node_version(v)).cloned())?;
            let dir = format!("{versions}/{version}");
            Some((
                Found {
                    binds: vec![dir.clone()],
                    path: vec![format!("{dir}/bin")],
                    env: Vec::new(),
                },
                dir,
            ))
        }
    }
}

/// `v20.11.1` → (20, 11, 1).
fn node_version(name: &str) -> Option<(u64, u64, u64)> {
    let mut parts = name.strip_prefix('v')?.split('.').map(|p| p.parse().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// The binds `found` needs in a sandbox of `fs` (those no system path shows already),
/// or why it cannot have them.
fn usable(found: &Found, fs: &Filesystem, host: &dyn Host) -> Result<Vec<String>, String> {
    let mut binds = Vec::new();
    for dir in &found.binds {
        if let Some(barrier) = host.barrier(dir) {
            return Err(format!(
                "the sandbox's user cannot enter {}, so {dir} cannot be bound; install the toolchain where other users can read it (e.g. under /opt or /usr/local), or let them enter the directory (chmod o+x {})",
                barrier.describe(),
                barrier.dir
            ));
        }
        let sandbox_owned = KERNEL_DIRS
            .iter()
            .chain(["/tmp", "/etc"].iter())
            .copied()
            .chain(std::iter::once(fs.workspace.as_str()))
            .find(|d| is_within(dir, d) || is_within(d, dir));
        if let Some(place) = sandbox_owned {
            return Err(format!(
                "{dir} cannot be bound at the same place inside, where the sandbox has its own {place}; install it elsewhere"
            ));
        }
        let shown = fs.system.iter().any(|s| is_within(dir, s))
            || fs.binds.iter().any(|b| is_within(dir, &b.target));
        if !shown {
            binds.push(dir.clone());
        }
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_versions_order_numerically() {
        assert!(node_version("v20.11.1") > node_version("v9.99.99"));
        assert_eq!(node_version("system"), None);
        assert_eq!(node_version("v20"), None);
    }
}
