//! strict's user namespace (docs/KUBERNETES.md §5): the container's root is an
//! unprivileged host uid, so its rootfs and bind mounts are handed to it idmapped
//! through that namespace — files owned by host uid 0 are its root's, and what it
//! writes is host uid 0's on disk. Only host root may idmap a host filesystem, so
//! `create` makes the mounts here and sends them to the init, which attaches them.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use phantom_linux::process::{self, Forked, Namespaces};
use phantom_linux::{mount, oci as sys};

use super::channel::{self, Order};
use super::spec::MountIdmap;
use super::{spec, strict, OciError};

/// Send the init of `pid` (in strict's user namespace, its maps written) an
/// idmapped copy of the rootfs and of each bind mount's source (by its index in
/// `plan.mounts`), one [`Order::Idmapped`] each, before [`Order::Go`].
///
/// A writable mount that cannot be idmapped fails `create`, naming it: its files
/// would be unwritable for the container's root. A read-only bind falls back to a
/// plain bind (its files then show as owned by nobody).
pub(super) fn send(pid: i32, plan: &spec::Plan, chan: &OwnedFd) -> Result<(), OciError> {
    let userns = mount::open_userns(pid)?;
    let idmapped = |path: &Path, recursive: bool| {
        let tree = mount::clone_mount(path, recursive)?;
        mount::set_idmap(tree.as_fd(), userns.as_fd())?;
        Ok::<_, phantom_linux::SysError>(tree)
    };
    let policy = format!("{} strict", strict::ANNOTATION);
    let root_err = |e: String| {
        OciError(format!(
            "root.path {}: {policy} cannot idmap the root filesystem for the container's unprivileged root ({e}); use a filesystem with idmapped mounts, give the spec a user namespace with mappings, or remove the annotation",
            plan.rootfs.display()
        ))
    };
    let root = match overlay_options(&plan.rootfs) {
        Some(options) => {
            let (uid, gid) = (host_root(&plan.uid_maps), host_root(&plan.gid_maps));
            idmapped_overlay(&options, &idmapped, uid, gid).map_err(root_err)?
        }
        None => idmapped(&plan.rootfs, true).map_err(|e| root_err(e.to_string()))?,
    };
    channel::send(chan, &Order::Idmapped { mount: None }, Some(root.as_fd()))?;
    for (i, m) in plan.mounts.iter().enumerate() {
        let Some(source) = m.source.as_deref().filter(|_| m.bind) else {
            continue;
        };
        match idmapped(Path::new(source), m.flags & libc::MS_REC != 0) {
            Ok(tree) => channel::send(chan, &Order::Idmapped { mount: Some(i) }, Some(tree.as_fd()))?,
            Err(_) if m.flags & libc::MS_RDONLY != 0 => {}
            Err(e) => {
                return Err(OciError(format!(
                    "mounts {}: {policy} cannot idmap {source} for the container's unprivileged root ({e}); make the mount read-only, put it on a filesystem with idmapped mounts, or remove the annotation",
                    m.destination.display()
                )))
            }
        }
    }
    Ok(())
}

/// Send the init of `pid` (its user namespace set up) an idmapped copy of the
/// source of each bind mount the spec asks to idmap: through the init's user
/// namespace (the `idmap` option) or through one made with the mount's own
/// mappings. A mount that cannot be idmapped fails `create`, naming it.
pub(super) fn send_spec_mounts(
    pid: i32,
    plan: &spec::Plan,
    chan: &OwnedFd,
) -> Result<(), OciError> {
    let mut made: Vec<(&MountIdmap, OwnedFd)> = Vec::new();
    for (i, m) in plan.mounts.iter().enumerate() {
        let Some(how) = &m.idmap else { continue };
        let source = m.source.as_deref().unwrap_or("");
        let what = |e: String| {
            OciError(format!(
                "mounts {}: cannot idmap {source} ({e}); put it on a filesystem with idmapped mounts or remove the mappings",
                m.destination.display()
            ))
        };
        let userns = match made.iter().find(|(h, _)| *h == how) {
            Some((_, fd)) => fd.try_clone().map_err(|e| what(e.to_string()))?,
            None => {
                let fd = match how {
                    MountIdmap::Container => mount::open_userns(pid).map_err(OciError::from),
                    MountIdmap::Maps { uid, gid } => user_namespace_with(uid, gid),
                }
                .map_err(|e| what(e.to_string()))?;
                made.push((how, fd.try_clone().map_err(|e| what(e.to_string()))?));
                fd
            }
        };
        let tree = mount::clone_mount(Path::new(source), m.flags & libc::MS_REC != 0)
            .and_then(|tree| mount::set_idmap(tree.as_fd(), userns.as_fd()).map(|()| tree))
            .map_err(|e| what(e.to_string()))?;
        channel::send(
            chan,
            &Order::Idmapped { mount: Some(i) },
            Some(tree.as_fd()),
        )?;
    }
    Ok(())
}

/// A user namespace with these maps, to idmap mounts through: made by a child that
/// waits, its maps written from here; the child is gone when this returns, the
/// namespace lives on in the returned fd.
fn user_namespace_with(
    uid: &[(u32, u32, u32)],
    gid: &[(u32, u32, u32)],
) -> Result<OwnedFd, OciError> {
    let (parent_end, child_end) = phantom_linux::fdpass::channel()?;
    let ns = Namespaces {
        user: true,
        ..Namespaces::default()
    };
    match process::clone_child(ns, None)? {
        Forked::Child => {
            // Wait until the parent has opened our namespace (it closes its end).
            drop(parent_end);
            let _ = channel::recv::<Order>(&child_end, "create");
            process::exit_now(0)
        }
        Forked::Parent { pid, pidfd: _pidfd } => {
            drop(child_end);
            let opened =
                super::write_id_maps(pid, uid, gid).and_then(|()| Ok(mount::open_userns(pid)?));
            drop(parent_end);
            let _ = process::wait4(pid, false);
            opened
        }
    }
}

/// The host id of the container's id 0.
fn host_root(maps: &[(u32, u32, u32)]) -> u32 {
    maps.iter()
        .find(|(inside, _, _)| *inside == 0)
        .map_or(strict::HOST_ID_BASE, |(_, host, _)| *host)
}

/// The options of the overlay mounted at `dir` (containerd's overlayfs snapshotter
/// mounts the rootfs so), from /proc/self/mountinfo; `None` if it is not one.
fn overlay_options(dir: &Path) -> Option<Vec<(String, Option<String>)>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    overlay_options_in(&info, dir)
}

fn overlay_options_in(info: &str, dir: &Path) -> Option<Vec<(String, Option<String>)>> {
    // The last mount at `dir` is the one a path lookup finds.
    let line = info.lines().rev().find(|l| {
        let mut fields = l.split(' ');
        fields.nth(4).map(unescape).as_deref() == Some(&dir.to_string_lossy())
    })?;
    let (_, after) = line.split_once(" - ")?;
    let mut fields = after.split(' ');
    if fields.next()? != "overlay" {
        return None;
    }
    let supers = fields.nth(1)?;
    Some(
        supers
            .split(',')
            .filter(|o| *o != "rw")
            .map(|o| match o.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(unescape(v))),
                None => (o.to_string(), None),
            })
            .collect(),
    )
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// overlayfs cannot itself be idmapped (the kernel says EINVAL): a new overlay of
/// the same layers, each one an idmapped copy, made with the container root's
/// host ids as its creator's filesystem ids (which the idmapped upper layer maps
/// back to the ids on disk). The index is off: the snapshotter's own overlay on
/// the same upper layer stays mounted at the rootfs path on the host.
fn idmapped_overlay(
    options: &[(String, Option<String>)],
    idmapped: &dyn Fn(&Path, bool) -> Result<OwnedFd, phantom_linux::SysError>,
    uid: u32,
    gid: u32,
) -> Result<OwnedFd, String> {
    let get = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    };
    let fd_path = |fd: &OwnedFd, rest: &str| format!("/proc/self/fd/{}{rest}", fd.as_raw_fd());
    let lower = get("lowerdir").ok_or("an overlay without lowerdir")?;
    if lower.contains("::") || lower.contains('\\') {
        return Err(format!(
            "lowerdir {lower:?}: data-only layers and escaped names are not supported"
        ));
    }
    let mut keep = Vec::new();
    let mut lowers = Vec::new();
    for dir in lower.split(':') {
        let tree = idmapped(Path::new(dir), false).map_err(|e| e.to_string())?;
        lowers.push(fd_path(&tree, ""));
        keep.push(tree);
    }
    let mut new: Vec<(String, Option<String>)> = vec![("lowerdir".into(), Some(lowers.join(":")))];
    // The upper and work directories must be on one mount: their common parent
    //    (the snapshot's directory), idmapped once.
    if let (Some(upper), Some(work)) = (get("upperdir"), get("workdir")) {
        let (upper, work) = (PathBuf::from(upper), PathBuf::from(work));
        let parent = upper
            .parent()
            .filter(|p| work.parent() == Some(*p))
            .ok_or_else(|| {
                format!(
                    "upperdir {} and workdir {} are not in one directory",
                    upper.display(),
                    work.display()
                )
            })?;
        let tree = idmapped(parent, false).map_err(|e| e.to_string())?;
        let name = |p: &Path| format!("/{}", p.file_name().unwrap_or_default().to_string_lossy());
        new.push(("upperdir".into(), Some(fd_path(&tree, &name(&upper)))));
        new.push(("workdir".into(), Some(fd_path(&tree, &name(&work)))));
        keep.push(tree);
    }
    new.push(("index".into(), Some("off".into())));
    for (k, v) in options {
        if !matches!(
            k.as_str(),
            "lowerdir" | "upperdir" | "workdir" | "index" | "nfs_export"
        ) {
            new.push((k.clone(), v.clone()));
        }
    }
    let made = sys::overlay_as(uid, gid, &new).map_err(|e| e.to_string());
    drop(keep);
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rootfs_overlay_options_come_from_its_mountinfo_line() {
        let info = "\
30 1 0:1 / / rw - ext4 /dev/vda rw
41 30 0:41 / /b/rootfs rw,relatime - ext4 /dev/vda rw
42 41 0:42 / /b/rootfs rw,relatime - overlay overlay rw,lowerdir=/s/2/fs:/s/1/fs,upperdir=/s/3/fs,workdir=/s/3/work,index=off,userxattr
43 30 0:43 / /b\\040x/rootfs rw - overlay overlay ro,lowerdir=/s/1/fs
";
        let opts = overlay_options_in(info, Path::new("/b/rootfs")).unwrap();
        let want: Vec<(String, Option<String>)> = [
            ("lowerdir", Some("/s/2/fs:/s/1/fs")),
            ("upperdir", Some("/s/3/fs")),
            ("workdir", Some("/s/3/work")),
            ("index", Some("off")),
            ("userxattr", None),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect();
        assert_eq!(opts, want);
        let ro = overlay_options_in(info, Path::new("/b x/rootfs")).unwrap();
        assert_eq!(ro[0], ("ro".to_string(), None));
        assert_eq!(overlay_options_in(info, Path::new("/")), None);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/plain\x"), r"/plain\x");
    }
}
