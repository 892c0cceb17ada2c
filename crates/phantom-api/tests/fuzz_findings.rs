//! What the `api_request` fuzz target found, one test each.

use phantom_api::request::{Field, FieldError, RunRequest};
use phantom_api::strict;

/// A body's unknown field was echoed raw in the refusal: a name with a newline or an
/// escape sequence made a 400 (and what front ends print of it) span lines or drive
/// the terminal.
#[test]
fn an_unknown_field_with_control_characters_is_refused_on_one_line() {
    let e = strict::from_slice::<RunRequest>(b"{\"argv\": [\"true\"], \"a\\nb\\u001b[2J\": 1}")
        .unwrap_err();
    assert!(!e.message.chars().any(char::is_control), "{:?}", e.message);
    assert!(e.message.contains("a\\nb\\u{1b}[2J"), "{}", e.message);
    assert!(!e.field.unwrap().chars().any(char::is_control));
}

/// ... and serde's own refusals quote the value they refuse (`unknown variant`).
#[test]
fn a_refused_value_with_control_characters_is_quoted_on_one_line() {
    let e = strict::from_slice::<RunRequest>(b"{\"argv\": [\"true\"], \"network\": \"x\\ny\"}")
        .unwrap_err();
    assert!(!e.message.chars().any(char::is_control), "{:?}", e.message);
    assert!(e.message.contains("x\\ny"), "{}", e.message);
}

/// An unknown field of a megabyte was compared with every known name character by
/// character (seconds of CPU per request) and echoed whole.
#[test]
fn a_huge_unknown_field_is_refused_quickly_and_briefly() {
    let body = format!("{{\"{}\": 1}}", "x".repeat(1 << 20));
    let started = std::time::Instant::now();
    let e = strict::from_slice::<RunRequest>(body.as_bytes()).unwrap_err();
    assert!(
        started.elapsed().as_secs_f64() < 1.0,
        "{:?}",
        started.elapsed()
    );
    assert!(e.message.len() < 1024, "{} bytes", e.message.len());
    assert!(e.message.contains("known fields"), "{}", e.message);
}

/// A file path with a newline came back raw in the engine's refusal.
#[test]
fn a_bad_file_path_is_refused_on_one_line() {
    let req = strict::from_slice::<RunRequest>(
        b"{\"argv\": [\"true\"], \"files\": [{\"path\": \"../a\\nb\", \"content\": \"\"}]}",
    )
    .unwrap();
    let e = req.options.check_files().unwrap_err();
    for text in [e.for_cli(), e.to_string(), e.value.clone().unwrap()] {
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    let long = FieldError::with_value(Field::Memory, "9".repeat(10_000), "cannot parse");
    assert!(long.for_cli().len() < 1024);
}

/// The escaping above turned a policy file's several mistakes (one line each) into
/// one line with `\n` in it: a list of mistakes stays one line per mistake, and a
/// quoted value still cannot add a line.
#[test]
fn a_policy_files_mistakes_stay_one_per_line() {
    let e = FieldError::lines(
        Field::PolicyFile,
        ["p.yaml:3:11: bad `12QB`", "p.yaml:5:1: unknown key `a\nb`"],
    );
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].contains("`a\\nb`"), "{text}");
}
