//! Installing a classic-BPF seccomp filter. The programs themselves are compiled in
//! phantom-policy; this module only hands them to the kernel.

use crate::{check, SysError, SysResult};

/// One BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// The kernel's limit on instructions in one program (BPF_MAXINSNS).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// Install `program` for the calling thread. no_new_privs must be set already (or the
/// caller hold CAP_SYS_ADMIN). The size is checked first so that an oversized program
/// gives a clear error instead of a bare EINVAL.
pub fn install(name: &str, program: &[Instruction]) -> SysResult<()> {
    if program.is_empty() || program.len() > MAX_INSTRUCTIONS {
        return Err(SysError::new(
            "seccomp",
            name.to_string(),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "program has {} instructions; the kernel takes 1 to {MAX_INSTRUCTIONS}",
                    program.len()
                ),
            ),
        ));
    }
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `Instruction` has the layout of sock_filter; `prog` points at
    // `program`, which outlives the call; the kernel copies the program.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    check(ret, "seccomp", || name.to_string()).map(|_| ())
}
