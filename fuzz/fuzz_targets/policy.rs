//! The policy DSL: YAML text → Profile (parse, `extends:`, schema) → Plan (compile).
//!
//! Holds: no panic, no hang, bounded memory (libFuzzer's -timeout and -rss_limit_mb);
//! errors are one line; loading and compiling are deterministic; every plan keeps
//! what DESIGN.md promises of any sandbox (every limit set, mount targets absolute
//! without `..`, seccomp programs the kernel accepts) and hardened plans what
//! hardened promises (no network, no read-write bind).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_policy::{compile, load_str, Mode, Mount, NetworkMode, Overrides, Plan};

// A directory that does not exist: relative `extends:` paths find nothing.
const ORIGIN: &str = "/nonexistent/phantom-fuzz/policy.yaml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let profile = match load_str(text, ORIGIN) {
        Ok(p) => p,
        Err(e) => {
            // Every mistake of the file is reported: one line each.
            for one in e.errors() {
                let line = one.to_string();
                assert!(!line.contains('\n'), "a policy error spans lines: {line:?}");
            }
            assert_eq!(
                e.to_string().lines().count(),
                e.errors().len(),
                "one line per mistake: {e}"
            );
            assert_eq!(
                load_str(text, ORIGIN).unwrap_err().to_string(),
                e.to_string(),
                "loading is deterministic"
            );
            return;
        }
    };
    let again = load_str(text, ORIGIN).expect("loading is deterministic");
    assert_eq!(
        serde_json::to_string(&profile).unwrap(),
        serde_json::to_string(&again).unwrap()
    );
    for mode in [None, Some(Mode::Hardened), Some(Mode::Direct)] {
        let overrides = Overrides {
            mode,
            ..Overrides::default()
        };
        match compile(&profile, &overrides) {
            Ok(plan) => {
                check(&plan);
                let again = compile(&profile, &overrides).expect("compiling is deterministic");
                assert_eq!(
                    serde_json::to_string(&plan).unwrap(),
                    serde_json::to_string(&again).unwrap(),
                    "compiling is deterministic"
                );
            }
            Err(e) => {
                for one in e.errors() {
                    let line = one.to_string();
                    assert!(
                        !line.contains('\n'),
                        "a compile error spans lines: {line:?}"
                    );
                }
            }
        }
    }
});

fn check(plan: &Plan) {
    serde_json::to_string(plan).expect("plans serialize");
    let l = &plan.limits;
    assert!(
        l.memory_bytes > 0
            && l.cpu_millis > 0
            && l.pids > 0
            && l.wall_timeout_ms > 0
            && l.output_limit_bytes > 0
            && l.nofile > 0
            && l.fsize_bytes > 0,
        "a limit is off: {:?}",
        l
    );
    for m in &plan.mounts {
        let target = match m {
            Mount::Tmpfs { target, .. }
            | Mount::Bind { target, .. }
            | Mount::File { target, .. }
            | Mount::Proc { target }
            | Mount::Dev { target, .. }
            | Mount::Workspace { target, .. }
            | Mount::Mask { target }
            | Mount::ReadOnly { target } => target,
        };
        assert!(
            target.starts_with('/') && !target.split('/').any(|c| c == ".."),
            "mount target {target:?} is not an absolute path without `..`"
        );
    }
    if plan.mode == Mode::Hardened {
        assert_eq!(plan.network, NetworkMode::None, "hardened with a network");
        assert!(!plan.seccomp.is_empty(), "hardened without seccomp");
        for m in &plan.mounts {
            if let Mount::Bind {
                read_only: false,
                target,
                ..
            } = m
            {
                panic!("hardened with a read-write bind at {target}");
            }
        }
    }
    for program in &plan.seccomp {
        let insns = &program.instructions;
        assert!(
            !insns.is_empty() && insns.len() <= 4096,
            "seccomp program {} has {} instructions",
            program.name,
            insns.len()
        );
        for (i, insn) in insns.iter().enumerate() {
            // BPF_JMP: every branch lands inside the program.
            if insn.code & 0x07 == 0x05 {
                let far = if insn.code & 0xf0 == 0x00 {
                    insn.k as usize
                } else {
                    insn.jt.max(insn.jf) as usize
                };
                assert!(
                    i + 1 + far < insns.len(),
                    "seccomp program {}: instruction {i} jumps out",
                    program.name
                );
            }
        }
        assert_eq!(
            insns.last().map(|i| i.code & 0x07),
            Some(0x06),
            "seccomp program {} does not end in a return",
            program.name
        );
    }
}
