//! The command line as containerd's shim uses it, without a container (no root
//! needed): the words the shim matches in errors, refusals, `features`.

use std::process::Command;

fn oci(args: &[&str]) -> (bool, String, String) {
    let root = std::env::temp_dir().join(format!("phantom-oci-cli-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_phantom-oci"))
        .arg("--root")
        .arg(&root)
        .args(args)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&root);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn delete_force_of_an_unknown_container_succeeds_as_with_runc() {
    // containerd's cleanup of a dead shim deletes what `ctr run --rm` deleted.
    let (ok, _, err) = oci(&["delete", "--force", "gone"]);
    assert!(ok, "{err}");
    let (ok, _, err) = oci(&["delete", "gone"]);
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn state_and_kill_of_an_unknown_container_say_does_not_exist() {
    for args in [
        &["state", "gone"][..],
        &["kill", "gone", "KILL"],
        &["start", "gone"],
    ] {
        let (ok, _, err) = oci(args);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("container gone does not exist"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn systemd_cgroup_is_refused_by_name_and_logged_as_json() {
    let log = std::env::temp_dir().join(format!("phantom-oci-cli-log-{}.json", std::process::id()));
    let (ok, _, err) = oci(&[
        "--systemd-cgroup",
        "--log",
        &log.to_string_lossy(),
        "--log-format",
        "json",
        "state",
        "x",
    ]);
    assert!(!ok);
    assert!(err.contains("--systemd-cgroup is not supported"), "{err}");
    let line = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["level"], "error");
    assert!(
        v["msg"].as_str().unwrap().contains("--systemd-cgroup"),
        "{v}"
    );
}

#[test]
fn features_lists_what_is_supported() {
    let (ok, out, err) = oci(&["features"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["linux"]["cgroup"]["systemd"], false);
    assert!(v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "user"));
    assert!(v["linux"]["seccomp"]["operators"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o == "SCMP_CMP_MASKED_EQ"));
}

#[test]
fn an_invalid_id_is_refused_before_anything_is_made() {
    let (ok, _, err) = oci(&["create", "--bundle", "/nonexistent", "../escape"]);
    assert!(!ok);
    assert!(err.contains("invalid container id"), "{err}");
}
