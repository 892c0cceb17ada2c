//! uid/gid maps of a child's user namespace, written by its parent.

use crate::{SysError, SysResult};

/// Map uid 0 and gid 0 inside `pid`'s user namespace onto `host_uid`/`host_gid`
/// (one id each). `deny_setgroups`: an unprivileged writer must deny setgroups before
/// it may write a gid map; a privileged one leaves it allowed so that the child can
/// drop the supplementary groups it inherited (see [`become_root`]).
pub fn map_root_to(pid: i32, host_uid: u32, host_gid: u32, deny_setgroups: bool) -> SysResult<()> {
    let write = |file: &str, text: String| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, text.as_bytes()).map_err(|e| SysError::new("write", path, e))
    };
    if deny_setgroups {
        write("setgroups", "deny".into())?;
    }
    write("uid_map", format!("0 {host_uid} 1\n"))?;
    write("gid_map", format!("0 {host_gid} 1\n"))?;
    Ok(())
}

/// In the child, once its maps are written: take uid/gid 0 of the namespace for real
/// (a cloned process keeps its parent's host ids until it sets them), and drop every
/// supplementary group when setgroups is allowed.
pub fn become_root() -> SysResult<()> {
    // SAFETY: setresgid/setgroups/setresuid take integers and a null list of length 0.
    unsafe {
        if libc::setresgid(0, 0, 0) < 0 {
            return Err(SysError::last("setresgid", "0"));
        }
        if libc::setgroups(0, std::ptr::null()) < 0
            && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
        {
            return Err(SysError::last("setgroups", "[]"));
        }
        if libc::setresuid(0, 0, 0) < 0 {
            return Err(SysError::last("setresuid", "0"));
        }
    }
    Ok(())
}
