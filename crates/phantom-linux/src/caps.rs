//! Dropping every capability: bounding set, ambient set, then effective, permitted
//! and inheritable through capset.

use crate::{check, SysError, SysResult};

/// Drop every capability of the calling thread for good. Must run while the thread
/// still has CAP_SETPCAP (needed to shrink the bounding set).
pub fn drop_all() -> SysResult<()> {
    // Bounding set first: capset would remove CAP_SETPCAP, which PR_CAPBSET_DROP needs.
    let mut cap = 0;
    loop {
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(SysError::new(
                "prctl",
                format!("PR_CAPBSET_DROP {cap}"),
                err,
            ));
        }
        cap += 1;
    }
    clear_ambient()?;
    capset(0, 0, 0)
}

/// Empty the ambient set.
pub(crate) fn clear_ambient() -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(ret as _, "prctl", || "PR_CAP_AMBIENT_CLEAR_ALL".into()).map(|_| ())
}

/// Set the effective, permitted and inheritable sets of the calling thread (capset,
/// version 3: two 32-bit words per set).
pub(crate) fn capset(effective: u64, permitted: u64, inheritable: u64) -> SysResult<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let word = |set: u64, i: u32| (set >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(effective, i),
        permitted: word(permitted, i),
        inheritable: word(inheritable, i),
    });
    // SAFETY: header and data match the kernel's v3 layout (two data words) and
    // outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    check(ret, "capset", || {
        format!("effective={effective:#x} permitted={permitted:#x} inheritable={inheritable:#x}")
    })
    .map(|_| ())
}
