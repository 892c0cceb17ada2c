//! What the `policy` fuzz target found, one test each.

use phantom_policy::load_str;

/// A `performance.preload` module name with newlines came back raw in the error, so
/// `phantom policy check` printed a message over many lines (and a policy could write
/// escape sequences to the operator's terminal). Every quoted value of an invalid
/// value is escaped and cut short now.
#[test]
fn a_bad_value_with_control_characters_is_reported_on_one_line() {
    let long = "v".repeat(500);
    for value in [
        "\"pan\\n\\n\\nvvv das?\"",
        "\"a\\u001b[2J\"",
        &format!("\"{long}\\nx\""),
    ] {
        let text =
            format!("profile: p\nruntime: python\nperformance:\n  preload: [numpy, {value}]\n");
        let e = load_str(&text, "p.yaml").unwrap_err().to_string();
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert!(e.starts_with("p.yaml:4:"), "{e}");
        assert!(e.len() < 600, "{} bytes: {e}", e.len());
    }
    // A syscall name too.
    let e = load_str(
        "profile: p\nsecurity:\n  seccomp:\n    allow: [\"re\\nad\"]\n",
        "p.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(!e.chars().any(char::is_control), "{e:?}");
}
