//! cgroup v2 device rules: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE
//! loaded with bpf(2) and attached to a cgroup directory. (cgroup v2 has no
//! devices.allow file; the program decides every open and mknod of a device node
//! by the processes in the cgroup.) The program itself is built by the caller.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::{check, SysError, SysResult};

/// One eBPF instruction (`struct bpf_insn`): opcode, dst and src registers, offset,
/// immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The head of `union bpf_attr` for BPF_PROG_LOAD (the kernel zero-fills the rest
/// of the size we pass).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn load(program: &[Insn], log_level: u32, log: &mut [u8]) -> Result<OwnedFd, std::io::Error> {
    let license = c"Apache-2.0";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        ..Default::default()
    };
    // SAFETY: `attr` is a valid bpf_attr head of the size passed; the instruction
    // array, license and log buffer it points to outlive the call, and the kernel
    // writes at most log_size bytes into the log.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success BPF_PROG_LOAD returns a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Load `program` as a cgroup device program and attach it to the cgroup v2
/// directory `cgroup` (with BPF_F_ALLOW_MULTI: programs of ancestors still apply).
pub fn attach_device_filter(cgroup: &Path, program: &[Insn]) -> SysResult<()> {
    // Without a log first (a verbose log that does not fit fails the load with
    // ENOSPC); on failure again with one, for the verifier's reason.
    let prog = match load(program, 0, &mut []) {
        Ok(fd) => fd,
        Err(err) => {
            let mut log = vec![0u8; 1 << 20];
            let _ = load(program, 1, &mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(0);
            let tail: String = String::from_utf8_lossy(&log[..end])
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(SysError::new(
                "bpf",
                format!("BPF_PROG_LOAD cgroup device program ({tail})"),
                err,
            ));
        }
    };
    let dir = std::fs::File::open(cgroup)
        .map_err(|e| SysError::new("open", cgroup.display().to_string(), e))?;
    let attach = ProgAttach {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: `attach` is a valid bpf_attr of the size passed; both fds are open.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    check(ret, "bpf", || {
        format!("BPF_PROG_ATTACH {}", cgroup.display())
    })
    .map(|_| ())
}
