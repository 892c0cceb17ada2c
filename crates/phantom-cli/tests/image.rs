//! `phantom image` as a user meets it: import an OCI layout the test writes, see it in
//! `list --json`, its config in `inspect --json`, remove it; bad input is one line and
//! exit 2. The store is a temporary one (`PHANTOM_STATE_DIR`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{phantom, PhantomOutput};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A temporary state directory, removed on drop.
struct State(PathBuf);

impl State {
    fn new(tag: &str) -> State {
        let dir =
            std::env::temp_dir().join(format!("phantom-image-cli-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        State(dir)
    }

    fn image(&self, args: &[&str]) -> PhantomOutput {
        let mut all = vec!["image"];
        all.extend_from_slice(args);
        phantom(&all, |cmd| {
            cmd.env("PHANTOM_STATE_DIR", &self.0);
        })
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sha(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Write a one-layer OCI image layout into `dir`.
fn write_oci_layout(dir: &Path) {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in [
        ("bin/hello", &b"#!/bin/sh\necho hello\n"[..], 0o755),
        ("etc/motd", &b"from an image\n"[..], 0o644),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        builder.append_data(&mut header, path, data).unwrap();
    }
    let layer = builder.into_inner().unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["GREETING=hi"], "Cmd": ["/bin/hello"], "WorkingDir": "/etc"},
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest), "size": manifest.len()}],
    }))
    .unwrap();
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    for blob in [&layer, &config, &manifest] {
        fs::write(blobs.join(&sha(blob)["sha256:".len()..]), blob).unwrap();
    }
    fs::write(dir.join("index.json"), index).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn json(out: &PhantomOutput) -> Value {
    assert_eq!(out.code, Some(0), "{}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

#[test]
fn import_list_inspect_and_remove_an_oci_layout() {
    let state = State::new("cycle");
    let layout = state.0.join("layout");
    write_oci_layout(&layout);

    let imported = json(&state.image(&[
        "import",
        layout.to_str().unwrap(),
        "--name",
        "hello:1",
        "--json",
    ]));
    assert_eq!(imported["name"], "hello:1");
    assert_eq!(imported["format"], "oci-layout");

    let listed = json(&state.image(&["list", "--json"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["hello:1"]);

    let info = json(&state.image(&["inspect", "hello:1", "--json"]));
    assert_eq!(info["config"]["cmd"], serde_json::json!(["/bin/hello"]));
    assert_eq!(info["config"]["env"], serde_json::json!(["GREETING=hi"]));
    assert_eq!(info["config"]["working_dir"], "/etc");
    let rootfs = PathBuf::from(info["rootfs"].as_str().unwrap());
    assert!(
        rootfs.starts_with(&state.0),
        "the store is under PHANTOM_STATE_DIR: {rootfs:?}"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "from an image\n"
    );

    let human = state.image(&["list"]);
    assert!(human.stdout.contains("hello:1"), "{}", human.describe());

    let removed = state.image(&["rm", "hello:1"]);
    assert_eq!(removed.code, Some(0), "{}", removed.describe());
    assert_eq!(
        json(&state.image(&["list", "--json"])),
        serde_json::json!([])
    );
    assert!(!rootfs.exists(), "the root went with its only image");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let state = State::new("errors");
    let missing = state.0.join("missing.tar");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["import", missing.to_str().unwrap()], "missing.tar"),
        (
            vec!["import", state.0.to_str().unwrap(), "--name", "x"],
            "import-dir",
        ),
        (vec!["inspect", "nope"], "no image named `nope`"),
        (vec!["rm", "nope"], "no image named `nope`"),
        (
            vec!["import-dir", state.0.to_str().unwrap(), "--name", "../x"],
            "invalid image name",
        ),
    ];
    for (args, mentions) in cases {
        let out = state.image(&args);
        assert_eq!(out.code, Some(2), "{}", out.describe());
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", out.describe());
        assert!(
            lines[0].starts_with("phantom: error: "),
            "{}",
            out.describe()
        );
        assert!(
            lines[0].contains(mentions),
            "should mention {mentions:?}: {}",
            out.describe()
        );
    }
}
