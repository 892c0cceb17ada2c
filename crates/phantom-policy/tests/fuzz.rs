//! Hostile input never panics and never takes long: arbitrary text, and YAML-shaped
//! text built from the DSL's own vocabulary with nesting, anchors, aliases, merge keys,
//! huge numbers and odd scalars, through `load_str` and `compile`.

use std::time::{Duration, Instant};

use phantom_policy::{compile, load_str, Overrides};
use proptest::prelude::*;

const BOUND: Duration = Duration::from_secs(2);

/// Loads (and, if that works, compiles) `text`; fails the case if it takes too long.
fn check(text: &str) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let result = load_str(text, "fuzz.yaml");
    if let Ok(profile) = &result {
        let _ = compile(profile, &Overrides::default());
    }
    if let Err(err) = &result {
        // Several mistakes are one line each.
        for one in err.errors() {
            let line = one.to_string();
            prop_assert!(!line.contains('\n'), "multi-line error: {line:?}");
        }
        let all = err.to_string();
        prop_assert_eq!(all.lines().count(), err.errors().len(), "{}", all);
    }
    let took = start.elapsed();
    prop_assert!(
        took < BOUND,
        "took {took:?} on {:?}",
        text.chars().take(200).collect::<String>()
    );
    Ok(())
}

/// Keys the DSL knows, a few near-misses, and the YAML merge key.
const KEYS: &[&str] = &[
    "profile",
    "description",
    "extends",
    "mode",
    "runtime",
    "security",
    "level",
    "seccomp",
    "default",
    "allow",
    "deny",
    "landlock",
    "enabled",
    "paths",
    "path",
    "access",
    "performance",
    "zygote",
    "pool_size",
    "io_mode",
    "memory_allocator",
    "resources",
    "memory",
    "cpu",
    "pids",
    "timeout",
    "output",
    "tmp",
    "nofile",
    "fsize",
    "network",
    "filesystem",
    "rootfs",
    "system",
    "etc",
    "binds",
    "source",
    "target",
    "workspace",
    "memroy",
    "<<",
    "x",
];

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("sandbox".to_string()),
        Just("hardened".to_string()),
        Just("read-write".to_string()),
        Just("loopback-only".to_string()),
        Just("/workspace".to_string()),
        Just("/tmp/x".to_string()),
        Just("../etc".to_string()),
        Just("512MB".to_string()),
        Just("1e999".to_string()),
        Just(".inf".to_string()),
        Just(".nan".to_string()),
        Just("-0x8000000000000000".to_string()),
        Just("~".to_string()),
        Just("''".to_string()),
        Just("\"\\u0000\\n\"".to_string()),
        Just("true".to_string()),
        Just("!!binary aGVsbG8=".to_string()),
        Just("!foo bar".to_string()),
        "[0-9]{1,60}".prop_map(|s| s),
        "-?[0-9]{1,5}\\.[0-9]{1,30}(e[+-]?[0-9]{1,4})?".prop_map(|s| s),
        "[0-9]{1,4}(KB|MB|GB|TB|ms|s|m|h|XB)".prop_map(|s| s),
        "[a-z_]{1,12}".prop_map(|s| s),
        "\"[ -~]{0,20}\"".prop_map(|s| s.replace('\\', "\\\\")),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-z]{1,8}".prop_map(|s| s),
    ]
}

/// A YAML value in flow style, possibly anchored; aliases refer to anchors `a0..a7`.
fn flow_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => scalar(),
        1 => (0..8u8).prop_map(|i| format!("*a{i}")),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            proptest::collection::vec((key(), inner.clone()), 0..6).prop_map(|entries| {
                let body: Vec<String> = entries
                    .into_iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                format!("{{{}}}", body.join(", "))
            }),
            ((0..8u8), inner).prop_map(|(i, v)| format!("&a{i} {v}")),
        ]
    })
}

/// A block-style document: `profile:` first (usually), then top-level keys.
fn document() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        proptest::collection::vec((key(), flow_value(), 0..3usize), 0..10),
    )
        .prop_map(|(named, entries)| {
            let mut text = if named {
                "profile: fuzz\n".to_string()
            } else {
                String::new()
            };
            for (k, v, style) in entries {
                match style {
                    0 => text.push_str(&format!("{k}: {v}\n")),
                    1 => text.push_str(&format!("{k}:\n  {v}\n")),
                    _ => text.push_str(&format!("{k}:\n  - {v}\n  - {v}\n")),
                }
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn arbitrary_bytes_as_text_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn yaml_shaped_documents_never_panic(text in document()) {
        check(&text)?;
    }

    #[test]
    fn documents_with_every_section_never_panic(
        security in flow_value(),
        resources in flow_value(),
        filesystem in flow_value(),
        network in flow_value(),
        performance in flow_value(),
    ) {
        let text = format!(
            "profile: fuzz\nsecurity: {security}\nresources: {resources}\nfilesystem: {filesystem}\nnetwork: {network}\nperformance: {performance}\n"
        );
        check(&text)?;
    }

    #[test]
    fn deep_nesting_is_refused_quickly(depth in 1usize..5000, flow in any::<bool>(), map in any::<bool>()) {
        let text = if flow {
            let (open, close) = if map { ("{a: ", "}") } else { ("[", "]") };
            format!("profile: x\nresources: {}1{}\n", open.repeat(depth), close.repeat(depth))
        } else {
            let mut text = String::from("profile: x\n");
            for level in 0..depth.min(400) {
                text.push_str(&" ".repeat(level));
                text.push_str(if map { "k:\n" } else { "- \n" });
            }
            text
        };
        check(&text)?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn alias_bombs_are_refused_quickly(levels in 1usize..12, width in 1usize..30) {
        let mut text = String::from("profile: x\nb0: &b0 [lol, lol, lol]\n");
        for level in 1..levels {
            let refs = vec![format!("*b{}", level - 1); width].join(", ");
            text.push_str(&format!("b{level}: &b{level} [{refs}]\n"));
        }
        check(&text)?;
    }

    #[test]
    fn huge_numbers_are_errors_not_panics(digits in "[1-9][0-9]{0,400}", key in proptest::sample::select(&["memory", "cpu", "pids", "timeout", "nofile", "fsize", "tmp", "output"][..])) {
        check(&format!("profile: x\nresources:\n  {key}: {digits}\n"))?;
        check(&format!("profile: x\nresources:\n  {key}: {digits}.5e300\n"))?;
        check(&format!("profile: x\nresources:\n  {key}: \"{digits}GB\"\n"))?;
    }
}

#[test]
fn a_megabyte_of_yaml_is_refused_or_read_quickly() {
    let line = "# padding padding padding padding padding padding padding padding\n";
    let mut text = String::from("profile: x\n");
    while text.len() < phantom_policy::MAX_POLICY_BYTES + 10 {
        text.push_str(line);
    }
    let start = Instant::now();
    assert!(load_str(&text, "big.yaml").is_err());
    assert!(start.elapsed() < BOUND);
}
