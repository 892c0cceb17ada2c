//! Small OCI images built in the tests themselves: the host's own `/bin/sh` (dash),
//! `cat` and the libraries `ldd` lists for them, with an `/etc/os-release` of their
//! own, written as OCI image layouts and imported into a temporary store
//! ([`State`], `PHANTOM_STATE_DIR`). No network, no registry.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{phantom, PhantomOutput};

pub const OS_RELEASE: &str = "ID=phantom-test-image\nNAME=\"phantom test image\"\n";

/// A temporary state directory (so a temporary image store), removed on drop.
pub struct State(pub PathBuf);

impl State {
    pub fn new(tag: &str) -> State {
        let dir = std::env::temp_dir().join(format!(
            "phantom-image-test-{tag}-{}-{}",
            std::process::id(),
            super::unique()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Reachable by the sandbox's uid when the test runs as root (for --workspace).
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        State(dir)
    }

    /// `phantom ARGS` with this state directory.
    pub fn phantom(&self, args: &[&str]) -> PhantomOutput {
        let dir = self.0.clone();
        phantom(args, move |cmd| {
            cmd.env("PHANTOM_STATE_DIR", &dir);
        })
    }

    /// Import an image made of the shell, `cat` and their libraries plus `extra`
    /// entries, with `config` (Docker's `config` object) as its config.
    pub fn import(&self, name: &str, config: Value, extra: &[Entry]) {
        let mut entries = base_entries();
        entries.extend_from_slice(extra);
        self.import_entries(name, config, &entries);
    }

    /// Import `greeter`: an image whose Cmd prints $GREETING, the working directory,
    /// $PATH and $HOME, with Env and WorkingDir set — the config a run must apply as
    /// Docker does, cold or warm.
    pub fn import_greeter(&self) {
        self.import(
            "greeter",
            json!({
                "Cmd": ["sh", "-c", "echo $GREETING; pwd; echo $PATH; echo $HOME"],
                "Env": ["GREETING=hi", "PATH=/bin:/opt/bin"],
                "WorkingDir": "/srv",
            }),
            &[],
        );
    }

    /// Import an image of exactly `entries`, with `config` as its config.
    pub fn import_entries(&self, name: &str, config: Value, entries: &[Entry]) {
        let layout = self.0.join(format!("layout-{}", super::unique()));
        write_oci_layout(&layout, entries, config);
        let out = self.phantom(&["image", "import", layout.to_str().unwrap(), "--name", name]);
        assert_eq!(out.code, Some(0), "import failed\n{}", out.describe());
        fs::remove_dir_all(&layout).unwrap();
    }

    /// The store's images directory.
    pub fn store(&self) -> PathBuf {
        self.0.join("images")
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One entry of a test layer.
#[derive(Clone)]
pub enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    /// Its path in the layer (no leading `/`).
    pub fn path(&self) -> &str {
        match self {
            Entry::File { path, .. } | Entry::Symlink { path, .. } => path,
        }
    }
}

pub fn file(path: &str, data: &[u8], mode: u32) -> Entry {
    Entry::File {
        path: path.to_string(),
        data: data.to_vec(),
        mode,
    }
}

pub fn symlink(path: &str, target: &str) -> Entry {
    Entry::Symlink {
        path: path.to_string(),
        target: target.to_string(),
    }
}

/// `/bin/sh`, `/bin/cat`, the libraries ldd lists for them at their own paths, and an
/// os-release that is not the host's.
pub fn base_entries() -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut libraries = Vec::new();
    for (inside, host) in [("bin/sh", "/bin/sh"), ("bin/cat", "/bin/cat")] {
        let data = fs::read(host).unwrap_or_else(|e| panic!("read {host}: {e}"));
        entries.push(file(inside, &data, 0o755));
        libraries.extend(ldd(host));
    }
    libraries.sort();
    libraries.dedup();
    for library in libraries {
        let data = fs::read(&library).unwrap_or_else(|e| panic!("read {library}: {e}"));
        entries.push(file(library.trim_start_matches('/'), &data, 0o755));
    }
    entries.push(file("etc/os-release", OS_RELEASE.as_bytes(), 0o644));
    entries
}

/// The absolute paths of the shared libraries `ldd` lists for `binary`.
pub fn ldd(binary: &str) -> Vec<String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| panic!("run ldd {binary}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut paths = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no path.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            paths.push(path.to_string());
        }
    }
    assert!(!paths.is_empty(), "ldd {binary} listed nothing: {text}");
    paths
}

pub fn sha(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Write a one-layer OCI image layout into `dir`.
pub fn write_oci_layout(dir: &Path, entries: &[Entry], config: Value) {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        match entry {
            Entry::File { path, data, mode } => {
                header.set_size(data.len() as u64);
                header.set_mode(*mode);
                builder
                    .append_data(&mut header, path, data.as_slice())
                    .unwrap();
            }
            Entry::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    let layer = builder.into_inner().unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
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

pub fn json_report(out: &PhantomOutput) -> Value {
    out.report()
        .unwrap_or_else(|e| panic!("no report: {e}\n{}", out.describe()))
}

/// The captured stdout of a `--json` run that exited 0.
pub fn stdout_of(out: &PhantomOutput) -> String {
    let report = json_report(out);
    assert_eq!(report["exit_code"], 0, "{}", out.describe());
    report["stdout"].as_str().unwrap_or_default().to_string()
}
