//! `linux.resources.devices` on cgroup v2: the rules compiled to an eBPF cgroup
//! device program (v2 has no devices.allow; phantom-linux loads and attaches it).
//!
//! The rules keep their cgroup v1 meaning: they apply in order, a later rule
//! overriding an earlier one, starting from "everything allowed" (what a new v1
//! cgroup inherits). So the program tries the rules from the last to the first and
//! the first that matches decides; a rule for every device (`a`, no major or minor,
//! `rwm`) ends the search with its answer, as it overrides everything before it.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use phantom_linux::bpfdev::Insn;

// eBPF opcodes (linux/bpf.h, linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JMP32_JNE_K: u8 = 0x56;
const EXIT: u8 = 0x95;

// struct bpf_cgroup_dev_ctx: access_type (type | access << 16), major, minor.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

fn access_bits(access: Option<&str>) -> i32 {
    let a = access.unwrap_or("rwm");
    let mut bits = 0;
    for c in a.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        };
    }
    if bits == 0 {
        ACC_READ | ACC_WRITE | ACC_MKNOD
    } else {
        bits
    }
}

/// The rules runc appends to every container's: mknod of any device node (the
/// node is useless without an allow rule), the default devices, /dev/console,
/// the container's ptys and /dev/net/tun.
pub fn default_allowed() -> Vec<LinuxDeviceCgroup> {
    serde_json::from_str(
        r#"[{"allow": true, "type": "c", "access": "m"},
            {"allow": true, "type": "b", "access": "m"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
            {"allow": true, "type": "c", "major": 136, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]"#,
    )
    .expect("static device rules")
}

/// Whether `rule` names every device with every access.
fn is_wildcard(rule: &LinuxDeviceCgroup) -> bool {
    matches!(rule.typ(), None | Some(LinuxDeviceType::A))
        && rule.major().is_none_or(|m| m < 0)
        && rule.minor().is_none_or(|m| m < 0)
        && access_bits(rule.access().as_deref()) == 7
}

/// The program for `rules`.
pub fn program(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    // r1 = ctx; r2 = device type, r3 = access asked, r4 = major, r5 = minor.
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    // Everything before the last rule for every device is overridden by it.
    let start = rules.iter().rposition(is_wildcard);
    let default = start.is_none_or(|i| rules[i].allow());
    let considered = &rules[start.map_or(0, |i| i + 1)..];
    for rule in considered.iter().rev() {
        let typ = match rule.typ() {
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
            Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
            // A FIFO is not a device the cgroup decides on.
            Some(LinuxDeviceType::P) => continue,
            _ => None,
        };
        // Conditions, each jumping past the rule (patched below) when unmet.
        let mut block = Vec::new();
        if let Some(t) = typ {
            block.push(insn(JMP32_JNE_K, 2, 0, i16::MAX, t));
        }
        let acc = access_bits(rule.access().as_deref());
        if acc != 7 {
            // Every access asked must be among the rule's: (asked & !rule) == 0.
            block.push(insn(ALU32_MOV_X, 6, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 6, 0, 0, !acc & 7));
            block.push(insn(JMP32_JNE_K, 6, 0, i16::MAX, 0));
        }
        if let Some(major) = rule.major().filter(|m| *m >= 0) {
            block.push(insn(JMP32_JNE_K, 4, 0, i16::MAX, major as i32));
        }
        if let Some(minor) = rule.minor().filter(|m| *m >= 0) {
            block.push(insn(JMP32_JNE_K, 5, 0, i16::MAX, minor as i32));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, rule.allow() as i32));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP32_JNE_K {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, default as i32));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on (type, access, major, minor): the subset of eBPF it emits.
    fn run(p: &[Insn], typ: i32, acc: i32, major: u32, minor: u32) -> i64 {
        let mut r = [0u64; 11];
        let ctx = [(typ as u32) | ((acc as u32) << 16), major, minor];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                ALU32_AND_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
                ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                ALU32_MOV_X => r[dst] = u64::from(r[src] as u32),
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JMP32_JNE_K => {
                    if r[dst] as u32 != i.imm as u32 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0] as i64,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn rules(json: &str) -> Vec<LinuxDeviceCgroup> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_cri_device_rules_allow_the_default_devices_and_nothing_else() {
        let p = program(&rules(
            r#"[{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                {"allow": true, "type": "c", "major": 136, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rw"}]"#,
        ));
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, DEV_CHAR, rw, 136, 7), 1, "any pty");
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 5), 1, "/dev/zero");
        assert_eq!(
            run(&p, DEV_CHAR, ACC_MKNOD, 1, 5),
            0,
            "mknod of zero is not in rw"
        );
        assert_eq!(run(&p, DEV_BLOCK, rw, 8, 0), 0, "a disk");
        assert_eq!(run(&p, DEV_BLOCK, rw, 1, 3), 0, "block 1:3 is not char 1:3");
        assert_eq!(run(&p, DEV_CHAR, rw, 10, 200), 0, "/dev/net/tun");
    }

    #[test]
    fn a_later_rule_overrides_an_earlier_one() {
        // Everything allowed but one device (what a v1 cgroup would do).
        let p = program(&rules(
            r#"[{"allow": false, "type": "b", "major": 8, "minor": 0}]"#,
        ));
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 0);
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 1), 1);
        // A final "allow everything" overrides the denials before it.
        let p = program(&rules(
            r#"[{"allow": false, "access": "rwm"}, {"allow": true, "type": "a", "access": "rwm"}]"#,
        ));
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 1);
    }

    /// The kernel's verifier accepts the program and it decides real opens: a shell
    /// moved into a v2 cgroup with "deny all, allow /dev/zero" cannot open
    /// /dev/null. Needs root and a cgroup v2 hierarchy (hybrid hosts have one at
    /// /sys/fs/cgroup/unified).
    #[test]
    fn the_kernel_enforces_the_device_program_on_a_v2_cgroup() {
        let v2_root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(std::path::Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists());
        let (Some(v2_root), true) = (v2_root, phantom_linux::process::euid() == 0) else {
            println!("skipped: needs root and a cgroup v2 hierarchy");
            return;
        };
        let dir = v2_root.join(format!("phantom-oci-devtest-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let p = program(&rules(
            r#"[{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"}]"#,
        ));
        let attached = phantom_linux::bpfdev::attach_device_filter(&dir, &p);
        let out = attached.as_ref().ok().map(|()| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && head -c1 /dev/zero | wc -c && cat /dev/null; echo rc=$?",
                    dir.display()
                ))
                .output()
                .unwrap()
        });
        let _ = std::fs::remove_dir(&dir);
        attached.unwrap();
        let out = out.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.starts_with("1\n"),
            "/dev/zero must stay readable: {stdout} {stderr}"
        );
        assert!(
            stdout.contains("rc=1"),
            "/dev/null must be denied: {stdout} {stderr}"
        );
        assert!(stderr.contains("Operation not permitted"), "{stderr}");
    }
}
