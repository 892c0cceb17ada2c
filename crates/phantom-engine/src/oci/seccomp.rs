//! The OCI seccomp JSON (`linux.seccomp`) compiled to a classic-BPF program.
//!
//! Layout: the architecture check (a foreign `AUDIT_ARCH` is killed), the syscall
//! number loaded once, then one block per syscall number named by the profile:
//!
//! ```text
//!   jeq NR, 0, 1        ; not this syscall: skip the jump into its block
//!   ja  block_NR
//!   ...                 ; (next syscall)
//!   ret defaultAction
//! block_NR:
//!   rule 1: argument checks (each jumps past the rule on mismatch); ret action
//!   rule 2: ...
//!   ret defaultAction
//! ```
//!
//! Rules of one syscall are tried in the order the profile lists them; the first
//! whose argument conditions all hold decides (libseccomp's behaviour for the
//! profiles containerd and Docker ship). Names this architecture does not have are
//! skipped, as runc does: the same profile serves every architecture. On x86_64 the
//! x32 syscall numbers (≥ 0x4000_0000) get the default action when it denies, and
//! `ERRNO(ENOSYS)` when the default allows, so a denylist cannot be sidestepped
//! through the x32 ABI.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use phantom_linux::seccomp::Instruction;

use super::OciError;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const ENOSYS: u32 = 38;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// This build's architecture: its syscall table and `AUDIT_ARCH` (phantom-policy's,
/// which the profiles' programs use too).
fn arch() -> &'static phantom_policy::Arch {
    phantom_policy::build_arch().expect("phantom builds only for x86_64 and aarch64")
}

fn number(name: &str) -> Option<u32> {
    arch().number(name).map(|n| n as u32)
}

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Instruction {
    Instruction { code, jt, jf, k }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, OciError> {
    match a {
        LinuxSeccompAction::ScmpActNotify => Err(OciError::refused(
            "linux.seccomp",
            "SCMP_ACT_NOTIFY (a seccomp agent) is not supported; use SCMP_ACT_ERRNO",
        )),
        LinuxSeccompAction::ScmpActTrace => Err(OciError::refused(
            "linux.seccomp",
            "SCMP_ACT_TRACE is not supported; use SCMP_ACT_ERRNO",
        )),
        other => Ok(other.as_u32(errno)),
    }
}

/// One argument condition: instructions that fall through when it holds and jump
/// to `FAIL` (patched later to the end of the rule) when it does not.
const FAIL: u8 = 0xff;

fn condition(index: usize, op: LinuxSeccompOperator, value: u64, two: u64) -> Vec<Instruction> {
    // struct seccomp_data: nr (4), arch (4), ip (8), args[6] (8 each), little-endian.
    let lo = 16 + 8 * index as u32;
    let hi = lo + 4;
    let (vh, vl) = ((value >> 32) as u32, value as u32);
    let ld = |off| ins(BPF_LD_W_ABS, 0, 0, off);
    match op {
        LinuxSeccompOperator::ScmpCmpEq => vec![
            ld(hi),
            ins(BPF_JEQ_K, 0, FAIL, vh),
            ld(lo),
            ins(BPF_JEQ_K, 0, FAIL, vl),
        ],
        LinuxSeccompOperator::ScmpCmpNe => vec![
            ld(hi),
            ins(BPF_JEQ_K, 0, 2, vh), // high words differ: holds
            ld(lo),
            ins(BPF_JEQ_K, FAIL, 0, vl),
        ],
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let (th, tl) = ((two >> 32) as u32, two as u32);
            vec![
                ld(hi),
                ins(BPF_ALU_AND_K, 0, 0, vh),
                ins(BPF_JEQ_K, 0, FAIL, th),
                ld(lo),
                ins(BPF_ALU_AND_K, 0, 0, vl),
                ins(BPF_JEQ_K, 0, FAIL, tl),
            ]
        }
        // arg >= value: high word greater → holds; equal → compare low words.
        LinuxSeccompOperator::ScmpCmpGe => vec![
            ld(hi),
            ins(BPF_JGT_K, 3, 0, vh),
            ins(BPF_JEQ_K, 0, FAIL, vh),
            ld(lo),
            ins(BPF_JGE_K, 0, FAIL, vl),
        ],
        LinuxSeccompOperator::ScmpCmpGt => vec![
            ld(hi),
            ins(BPF_JGT_K, 3, 0, vh),
            ins(BPF_JEQ_K, 0, FAIL, vh),
            ld(lo),
            ins(BPF_JGT_K, 0, FAIL, vl),
        ],
        // arg < value is !(arg >= value).
        LinuxSeccompOperator::ScmpCmpLt => vec![
            ld(hi),
            ins(BPF_JGT_K, FAIL, 0, vh),
            ins(BPF_JEQ_K, 0, 2, vh), // high word smaller: holds
            ld(lo),
            ins(BPF_JGE_K, FAIL, 0, vl),
        ],
        LinuxSeccompOperator::ScmpCmpLe => vec![
            ld(hi),
            ins(BPF_JGT_K, FAIL, 0, vh),
            ins(BPF_JEQ_K, 0, 2, vh),
            ld(lo),
            ins(BPF_JGT_K, FAIL, 0, vl),
        ],
    }
}

/// Compile `profile` for the architecture phantom-oci was built for.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Instruction>, OciError> {
    if profile.listener_path().is_some() {
        return Err(OciError::refused(
            "linux.seccomp.listenerPath",
            "seccomp agents are not supported; remove listenerPath",
        ));
    }
    if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(OciError::refused(
            "linux.seccomp.flags",
            "filter flags are not supported; remove them",
        ));
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    // Rules per syscall number, in profile order.
    let mut rules: BTreeMap<u32, Vec<Vec<Instruction>>> = BTreeMap::new();
    for syscall in profile.syscalls().iter().flatten() {
        let ret = action(syscall.action(), syscall.errno_ret())?;
        let mut body = Vec::new();
        for arg in syscall.args().iter().flatten() {
            if arg.index() > 5 {
                return Err(OciError::refused(
                    "linux.seccomp.syscalls.args.index",
                    &format!("argument index {} is out of range 0..5", arg.index()),
                ));
            }
            body.extend(condition(
                arg.index(),
                arg.op(),
                arg.value(),
                arg.value_two().unwrap_or(0),
            ));
        }
        body.push(ins(BPF_RET_K, 0, 0, ret));
        // Patch FAIL jumps to just past this rule.
        let len = body.len();
        for (i, insn) in body.iter_mut().enumerate() {
            if insn.code == BPF_JEQ_K || insn.code == BPF_JGT_K || insn.code == BPF_JGE_K {
                let past = (len - i - 1) as u8;
                if insn.jt == FAIL {
                    insn.jt = past;
                }
                if insn.jf == FAIL {
                    insn.jf = past;
                }
            }
        }
        for name in syscall.names() {
            if let Some(nr) = number(name) {
                rules.entry(nr).or_default().push(body.clone());
            }
        }
    }

    let mut prog = vec![
        ins(BPF_LD_W_ABS, 0, 0, 4), // arch
        ins(BPF_JEQ_K, 1, 0, arch().audit_arch),
        ins(BPF_RET_K, 0, 0, RET_KILL_PROCESS),
        ins(BPF_LD_W_ABS, 0, 0, 0), // nr
    ];
    if cfg!(target_arch = "x86_64") {
        let x32 = if default == RET_ALLOW || default == RET_LOG {
            RET_ERRNO | ENOSYS
        } else {
            default
        };
        prog.push(ins(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT));
        prog.push(ins(BPF_RET_K, 0, 0, x32));
    }
    // The dispatch table, then the blocks: each dispatch entry is 2 instructions.
    let dispatch_start = prog.len();
    let dispatch_len = rules.len() * 2 + 1;
    let mut blocks: Vec<Instruction> = Vec::new();
    let mut dispatch = Vec::new();
    for (i, (nr, rs)) in rules.iter().enumerate() {
        let ja_at = dispatch_start + 2 * i + 1;
        let block_at = dispatch_start + dispatch_len + blocks.len();
        dispatch.push(ins(BPF_JEQ_K, 0, 1, *nr));
        dispatch.push(ins(BPF_JMP_JA, 0, 0, (block_at - ja_at - 1) as u32));
        for r in rs {
            blocks.extend(r.iter().copied());
        }
        blocks.push(ins(BPF_RET_K, 0, 0, default));
    }
    dispatch.push(ins(BPF_RET_K, 0, 0, default));
    prog.extend(dispatch);
    prog.extend(blocks);
    if prog.len() > phantom_linux::seccomp::MAX_INSTRUCTIONS {
        return Err(OciError::refused(
            "linux.seccomp",
            &format!(
                "the profile compiles to {} BPF instructions; the kernel takes at most {}",
                prog.len(),
                phantom_linux::seccomp::MAX_INSTRUCTIONS
            ),
        ));
    }
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the instructions this module emits.
    fn run(prog: &[Instruction], nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch().audit_arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_ALU_AND_K => acc &= i.k,
                BPF_JMP_JA => pc += i.k as usize,
                BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K => {
                    let hit = match i.code {
                        BPF_JEQ_K => acc == i.k,
                        BPF_JGT_K => acc > i.k,
                        _ => acc >= i.k,
                    };
                    pc += if hit { i.jt } else { i.jf } as usize;
                }
                BPF_RET_K => return i.k,
                c => panic!("unknown opcode {c:#x}"),
            }
        }
    }

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_allowlist_allows_what_it_names_and_answers_the_rest_with_its_errno() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "syscalls":[{"names":["getpid","read","no_such_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        let prog = compile(&p).unwrap();
        let getpid = number("getpid").unwrap();
        let mkdir = number("mkdirat").unwrap();
        assert_eq!(run(&prog, getpid, [0; 6]), RET_ALLOW);
        assert_eq!(run(&prog, mkdir, [0; 6]), RET_ERRNO | 1);
        assert_eq!(
            run(&prog, X32_SYSCALL_BIT | getpid, [0; 6]) & 0xffff_0000,
            RET_ERRNO
        );
    }

    #[test]
    fn argument_conditions_compare_all_64_bits() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":13,
                 "args":[{"index":0,"value":4294967297,"op":"SCMP_CMP_NE"}]},
                {"names":["clone"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                {"names":["dup3"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":1,"value":4294967296,"op":"SCMP_CMP_GE"}]},
                {"names":["dup2"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":1,"value":10,"op":"SCMP_CMP_LT"}]}]}"#,
        );
        let prog = compile(&p).unwrap();
        let personality = number("personality").unwrap();
        assert_eq!(
            run(&prog, personality, [0x1_0000_0001, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(run(&prog, personality, [1, 0, 0, 0, 0, 0]), RET_ERRNO | 13);
        let clone = number("clone").unwrap();
        // No namespace flag: the masked value is 0, the rule (deny) applies.
        assert_eq!(run(&prog, clone, [0x11, 0, 0, 0, 0, 0]), RET_ERRNO | 1);
        assert_eq!(run(&prog, clone, [0x1000_0000, 0, 0, 0, 0, 0]), RET_ALLOW);
        let dup3 = number("dup3").unwrap();
        assert_eq!(run(&prog, dup3, [0, 0xffff_ffff, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            run(&prog, dup3, [0, 0x1_0000_0000, 0, 0, 0, 0]),
            RET_ERRNO | 1
        );
        let dup2 = number("dup2").unwrap();
        assert_eq!(run(&prog, dup2, [0, 9, 0, 0, 0, 0]), RET_ERRNO | 1);
        assert_eq!(run(&prog, dup2, [0, 10, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&prog, dup2, [0, 0x1_0000_0000, 0, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn a_seccomp_agent_is_refused_by_name() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        let err = compile(&p).unwrap_err().to_string();
        assert!(err.contains("SCMP_ACT_NOTIFY"), "{err}");
    }

    #[test]
    fn the_strict_filter_denies_new_namespaces_and_tiocsti_and_allows_the_rest() {
        let prog = crate::oci::strict::seccomp().unwrap();
        let nr = |n| number(n).unwrap();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        assert_eq!(
            run(&prog, nr("unshare"), [0x1000_0000, 0, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            run(&prog, nr("clone"), [0x1000_0000 | 0x11, 0, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            run(&prog, nr("clone"), [0x01_20_00_11, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(run(&prog, nr("clone3"), [0; 6]), RET_ERRNO | ENOSYS);
        // TIOCSTI with junk in the high bits is the same request to the kernel.
        assert_eq!(
            run(&prog, nr("ioctl"), [0, 0x1_0000_5412, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(run(&prog, nr("ioctl"), [0, 0x5413, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&prog, nr("io_uring_setup"), [0; 6]), eperm);
        assert_eq!(run(&prog, nr("getpid"), [0; 6]), RET_ALLOW);
    }
}
