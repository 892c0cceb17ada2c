//! Image import: every format gives the same verified root, identical layers are stored
//! once, and a table of malicious inputs is refused — each with a clear error, the
//! store exactly as it was, and nothing written outside it.
//!
//! Images are built here, from tar entries written byte by byte (so the tests can
//! write what no well-behaved tool would): OCI layouts as directories and tars,
//! `docker save` archives (legacy and Docker 25 style), layers uncompressed, gzip or
//! zstd. No network.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use phantom_image::{ImageError, ImageStore, ImportOptions, ImportProgress, SourceFormat};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Scratch space
// ---------------------------------------------------------------------------------------

/// A scratch directory: `store/` (the image store), `outside/` (a canary the store must
/// never touch, with a file `canary`), `src/` (images the test writes). Removed on drop.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "phantom-image-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("outside")).unwrap();
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("outside/canary"), "canary").unwrap();
        Scratch { root }
    }

    fn store(&self) -> ImageStore {
        ImageStore::open(self.root.join("store")).unwrap()
    }

    fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    fn outside(&self) -> PathBuf {
        self.root.join("outside")
    }

    fn src(&self, name: &str) -> PathBuf {
        self.root.join("src").join(name)
    }

    /// Every path below the scratch root except the store and the sources, with what
    /// it is: what an import must never change.
    fn outside_snapshot(&self) -> BTreeMap<String, String> {
        let mut all = tree(&self.root);
        all.retain(|path, _| !path.starts_with("store") && !path.starts_with("src"));
        all
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Every entry below `dir`: path -> kind, mode, and content or link target. Symlinks are
/// never followed.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_symlink() {
                out.insert(
                    rel,
                    format!("l -> {}", fs::read_link(&path).unwrap().display()),
                );
            } else if ft.is_dir() {
                out.insert(rel, format!("d {mode:o}"));
                walk(base, &path, out);
            } else if ft.is_file() {
                let content = fs::read(&path).unwrap();
                let shown = if content.len() <= 64 {
                    String::from_utf8_lossy(&content).into_owned()
                } else {
                    format!("<{} bytes, {}>", content.len(), sha(&content))
                };
                out.insert(rel, format!("f {mode:o} {shown}"));
            } else {
                out.insert(rel, "special".into());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The store's files, with sizes and modes (what "untouched" compares).
fn store_snapshot(store: &Path) -> BTreeMap<String, String> {
    tree(store)
}

fn expect(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Layers: tar entries written byte by byte
// ---------------------------------------------------------------------------------------

fn sha(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

#[derive(Clone)]
enum Entry {
    Dir(&'static str, u32),
    File(String, u32, Vec<u8>),
    Symlink(String, String),
    Hardlink(String, String),
    Char(&'static str),
    Fifo(&'static str),
    /// An extension header ('x', 'L', ...) with this much data.
    Extension(u8, usize),
}

fn file(path: &str, content: &str) -> Entry {
    Entry::File(path.into(), 0o644, content.as_bytes().to_vec())
}

fn exe(path: &str, mode: u32, content: &str) -> Entry {
    Entry::File(path.into(), mode, content.as_bytes().to_vec())
}

fn symlink(path: &str, target: &str) -> Entry {
    Entry::Symlink(path.into(), target.into())
}

fn hardlink(path: &str, target: &str) -> Entry {
    Entry::Hardlink(path.into(), target.into())
}

fn raw_header(kind: u8, name: &[u8], link: &[u8], mode: u32, size: u64) -> tar::Header {
    assert!(
        name.len() <= 100 && link.len() <= 100,
        "test names fit a ustar header"
    );
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(1_700_000_000);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_cksum();
    header
}

/// An uncompressed layer tar.
fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (header, data): (tar::Header, Vec<u8>) = match entry {
            Entry::Dir(path, mode) => (raw_header(b'5', path.as_bytes(), b"", *mode, 0), vec![]),
            Entry::File(path, mode, data) => (
                raw_header(b'0', path.as_bytes(), b"", *mode, data.len() as u64),
                data.clone(),
            ),
            Entry::Symlink(path, target) => (
                raw_header(b'2', path.as_bytes(), target.as_bytes(), 0o777, 0),
                vec![],
            ),
            Entry::Hardlink(path, target) => (
                raw_header(b'1', path.as_bytes(), target.as_bytes(), 0o644, 0),
                vec![],
            ),
            Entry::Char(path) => (raw_header(b'3', path.as_bytes(), b"", 0o666, 0), vec![]),
            Entry::Fifo(path) => (raw_header(b'6', path.as_bytes(), b"", 0o644, 0), vec![]),
            Entry::Extension(kind, size) => (
                raw_header(*kind, b"././@PaxHeader", b"", 0o644, *size as u64),
                vec![b'\n'; *size],
            ),
        };
        builder.append(&header, &data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Comp {
    None,
    Gzip,
    Zstd,
}

fn compress(tar: &[u8], comp: Comp) -> Vec<u8> {
    match comp {
        Comp::None => tar.to_vec(),
        Comp::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(tar).unwrap();
            enc.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(tar, 1).unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// Images: OCI layouts and docker-save archives
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Layer {
    blob: Vec<u8>,
    diff_id: String,
    media_type: &'static str,
}

impl Layer {
    fn new(tar: Vec<u8>, comp: Comp) -> Layer {
        Layer {
            blob: compress(&tar, comp),
            diff_id: sha(&tar),
            media_type: match comp {
                Comp::None => "application/vnd.oci.image.layer.v1.tar",
                Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            },
        }
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn foreign_arch() -> &'static str {
    if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

#[derive(Clone)]
struct Image {
    layers: Vec<Layer>,
    arch: String,
    /// The `config` object of the image config.
    config: serde_json::Value,
    /// Platform in index.json's descriptor, if any.
    index_platform: Option<String>,
    ref_name: Option<String>,
}

/// Files of an image source, path -> content; tests may tamper with them.
type Files = BTreeMap<String, Vec<u8>>;

impl Image {
    fn new(layers: Vec<Layer>) -> Image {
        Image {
            layers,
            arch: host_arch().to_string(),
            config: serde_json::json!({
                "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
                "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["echo hello"],
                "WorkingDir": "/srv",
                "User": "1000:1000"
            }),
            index_platform: None,
            ref_name: Some("test/image:1".into()),
        }
    }

    fn of(layers: &[Vec<u8>], comp: Comp) -> Image {
        Image::new(layers.iter().map(|t| Layer::new(t.clone(), comp)).collect())
    }

    fn config_json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": self.arch,
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": self.config,
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    fn oci_files(&self) -> Files {
        let mut files = Files::new();
        let config = self.config_json();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(&config),
                "size": config.len(),
            },
            "layers": self.layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type,
                "digest": sha(&l.blob),
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        let mut descriptor = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest),
            "size": manifest.len(),
        });
        if let Some(name) = &self.ref_name {
            descriptor["annotations"] =
                serde_json::json!({ "org.opencontainers.image.ref.name": name });
        }
        if let Some(arch) = &self.index_platform {
            descriptor["platform"] = serde_json::json!({ "architecture": arch, "os": "linux" });
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [descriptor],
        }))
        .unwrap();
        files.insert(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        files.insert("index.json".into(), index);
        files.insert(format!("blobs/sha256/{}", hex(&sha(&config))), config);
        files.insert(format!("blobs/sha256/{}", hex(&sha(&manifest))), manifest);
        for l in &self.layers {
            files.insert(
                format!("blobs/sha256/{}", hex(&sha(&l.blob))),
                l.blob.clone(),
            );
        }
        files
    }

    /// A `docker save` archive: legacy (`<id>/layer.tar`, `<hex>.json`) or Docker 25
    /// style without the OCI files (`blobs/sha256/...`).
    fn docker_files(&self, legacy: bool) -> Files {
        let mut files = Files::new();
        let config = self.config_json();
        let config_path = if legacy {
            format!("{}.json", hex(&sha(&config)))
        } else {
            format!("blobs/sha256/{}", hex(&sha(&config)))
        };
        let mut layer_paths = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let path = if legacy {
                format!("{:064x}/layer.tar", i + 1)
            } else {
                format!("blobs/sha256/{}", hex(&sha(&l.blob)))
            };
            files.insert(path.clone(), l.blob.clone());
            layer_paths.push(path);
        }
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_path,
            "RepoTags": self.ref_name.iter().collect::<Vec<_>>(),
            "Layers": layer_paths,
        }]))
        .unwrap();
        files.insert(config_path, config);
        files.insert("manifest.json".into(), manifest);
        files
    }
}

fn write_dir(files: &Files, dir: &Path) -> PathBuf {
    for (path, data) in files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    dir.to_path_buf()
}

fn archive(files: &Files) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, &data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn write_tar(files: &Files, path: &Path) -> PathBuf {
    fs::write(path, archive(files)).unwrap();
    path.to_path_buf()
}

fn import(
    store: &ImageStore,
    source: &Path,
    name: &str,
) -> Result<phantom_image::ImageInfo, ImageError> {
    store.import(source, Some(name), &ImportOptions::default(), &mut |_| {})
}

fn rootfs(store: &ImageStore, name: &str) -> PathBuf {
    let root = store.rootfs(name).unwrap();
    assert_eq!(root.layers.len(), 1);
    root.layers[0].clone()
}

fn root_count(store: &Path) -> usize {
    fs::read_dir(store.join("roots/sha256")).unwrap().count()
}

// ---------------------------------------------------------------------------------------
// The layers most tests use
// ---------------------------------------------------------------------------------------

fn base_layer() -> Vec<u8> {
    layer(&[
        Entry::Dir("bin/", 0o755),
        exe("bin/sh", 0o755, "#!shell"),
        symlink("bin/ash", "sh"),
        Entry::Dir("etc/", 0o755),
        file("etc/hostname", "one"),
        symlink("etc/absolute", "/etc/passwd"),
        symlink("etc/upward", "../../../../../../etc"),
        Entry::Dir("data/", 0o750),
        file("data/keep", "keep"),
        file("data/drop", "drop"),
        Entry::Dir("data/gone/", 0o755),
        file("data/gone/deep", "deep"),
        Entry::Dir("opq/", 0o755),
        file("opq/a", "a"),
        Entry::Dir("opq/sub/", 0o755),
        file("opq/sub/b", "b"),
        Entry::Dir("srv/", 0o755),
    ])
}

fn upper_layer() -> Vec<u8> {
    layer(&[
        file("etc/hostname", "two"),
        file("data/.wh.drop", ""),
        file("data/.wh.gone", ""),
        // Opaque marker after a sibling of the same layer: the sibling stays.
        file("opq/new", "new"),
        file("opq/.wh..wh..opq", ""),
        Entry::Dir("opq/sub/", 0o700),
        file("opq/sub/c", "c"),
        hardlink("bin/hard", "bin/sh"),
        // A symlink replaced by a file, a file by a directory.
        file("bin/ash", "now a file"),
        Entry::Dir("etc/hostname.d/", 0o755),
        file("implied/parent/file", "x"),
    ])
}

fn expected_root() -> BTreeMap<String, String> {
    expect(&[
        ("bin", "d 755"),
        ("bin/ash", "f 644 now a file"),
        ("bin/hard", "f 755 #!shell"),
        ("bin/sh", "f 755 #!shell"),
        ("data", "d 750"),
        ("data/keep", "f 644 keep"),
        ("etc", "d 755"),
        ("etc/absolute", "l -> /etc/passwd"),
        ("etc/hostname", "f 644 two"),
        ("etc/hostname.d", "d 755"),
        ("etc/upward", "l -> ../../../../../../etc"),
        ("implied", "d 755"),
        ("implied/parent", "d 755"),
        ("implied/parent/file", "f 644 x"),
        ("opq", "d 755"),
        ("opq/new", "f 644 new"),
        ("opq/sub", "d 700"),
        ("opq/sub/c", "f 644 c"),
        ("srv", "d 755"),
    ])
}

// ---------------------------------------------------------------------------------------
// What a good import gives
// ---------------------------------------------------------------------------------------

#[test]
fn layers_are_flattened_with_whiteouts_and_opaque_directories_applied() {
    let s = Scratch::new("flatten");
    let store = s.store();
    let image = Image::of(&[base_layer(), upper_layer()], Comp::Gzip);
    let src = write_dir(&image.oci_files(), &s.src("oci"));
    let info = import(&store, &src, "flat").unwrap();
    let root = rootfs(&store, "flat");
    assert_eq!(tree(&root), expected_root());
    // The hard link is one inode; the absolute and `..` symlinks were stored, not followed.
    let sh = fs::metadata(root.join("bin/sh")).unwrap();
    assert_eq!(sh.ino(), fs::metadata(root.join("bin/hard")).unwrap().ino());
    assert_eq!(info.format, SourceFormat::OciLayout);
    assert_eq!(info.layers.len(), 2);
    assert_eq!(info.import.devices_skipped, 0);
    assert_eq!(info.files, 8 - 1, "bin/hard and bin/sh count once");
    assert!(fs::read_dir(s.store_dir().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn entries_replace_symlinks_instead_of_writing_through_them() {
    let s = Scratch::new("replace-links");
    let store = s.store();
    let canary = s.outside().join("canary");
    let lower = layer(&[
        symlink("file", &canary.display().to_string()),
        symlink("link", &canary.display().to_string()),
        symlink("dir", &s.outside().display().to_string()),
        file("target", "target"),
    ]);
    let upper = layer(&[
        file("file", "pwned"),
        hardlink("link", "target"),
        Entry::Dir("dir/", 0o755),
        file("dir/canary", "pwned"),
    ]);
    let src = write_dir(
        &Image::of(&[lower, upper], Comp::None).oci_files(),
        &s.src("oci"),
    );
    let before = s.outside_snapshot();
    import(&store, &src, "replaced").unwrap();
    assert_eq!(s.outside_snapshot(), before, "nothing outside changed");
    assert_eq!(fs::read_to_string(&canary).unwrap(), "canary");
    assert_eq!(
        tree(&rootfs(&store, "replaced")),
        expect(&[
            ("dir", "d 755"),
            ("dir/canary", "f 644 pwned"),
            ("file", "f 644 pwned"),
            ("link", "f 644 target"),
            ("target", "f 644 target"),
        ])
    );
}

#[test]
fn inspect_and_rootfs_expose_the_image_config() {
    let s = Scratch::new("config");
    let store = s.store();
    let image = Image::of(&[base_layer()], Comp::None);
    let src = write_tar(&image.oci_files(), &s.src("img.tar"));
    // No --name: the ref annotation names it.
    let imported = store
        .import(&src, None, &ImportOptions::default(), &mut |_| {})
        .unwrap();
    assert_eq!(imported.name, "test/image:1");
    let info = store.inspect("test/image:1").unwrap();
    assert_eq!(info, imported);
    assert_eq!(info.format, SourceFormat::OciArchive);
    assert_eq!(info.architecture, host_arch());
    assert_eq!(info.os, "linux");
    assert_eq!(info.config.env, vec!["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]);
    assert_eq!(
        info.config.entrypoint,
        Some(vec!["/bin/sh".to_string(), "-c".into()])
    );
    assert_eq!(info.config.cmd, Some(vec!["echo hello".to_string()]));
    assert_eq!(info.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(info.config.user.as_deref(), Some("1000:1000"));
    assert!(info.digest.as_deref().unwrap().starts_with("sha256:"));
    assert_eq!(info.layers[0].diff_id, sha(&base_layer()));
    let root = store.rootfs("test/image:1").unwrap();
    assert_eq!(root.config, info.config);
    assert!(root.layers[0].join("bin/sh").is_file());
    assert_eq!(store.list().unwrap(), vec![info]);
    assert!(matches!(
        store.inspect("nope"),
        Err(ImageError::NotFound(_))
    ));
}

/// Writes an image source into a scratch directory.
type MakeSource<'a> = Box<dyn Fn(&Scratch) -> PathBuf + 'a>;

#[test]
fn every_format_and_compression_gives_the_same_root() {
    let layers = [base_layer(), upper_layer()];
    let mut trees = Vec::new();
    let mut root_ids = BTreeSet::new();
    let cases: Vec<(&str, MakeSource)> = vec![
        (
            "oci dir, gzip",
            Box::new(|s| write_dir(&Image::of(&layers, Comp::Gzip).oci_files(), &s.src("a"))),
        ),
        (
            "oci tar, zstd",
            Box::new(|s| write_tar(&Image::of(&layers, Comp::Zstd).oci_files(), &s.src("b.tar"))),
        ),
        (
            "oci tar, plain",
            Box::new(|s| write_tar(&Image::of(&layers, Comp::None).oci_files(), &s.src("c.tar"))),
        ),
        (
            "docker save, legacy",
            Box::new(|s| {
                write_tar(
                    &Image::of(&layers, Comp::None).docker_files(true),
                    &s.src("d.tar"),
                )
            }),
        ),
        (
            "docker save, docker 25, gzip layers",
            Box::new(|s| {
                write_tar(
                    &Image::of(&layers, Comp::Gzip).docker_files(false),
                    &s.src("e.tar"),
                )
            }),
        ),
        (
            "docker save | gzip",
            Box::new(|s| {
                let path = s.src("f.tar.gz");
                let tar = archive(&Image::of(&layers, Comp::None).docker_files(true));
                fs::write(&path, compress(&tar, Comp::Gzip)).unwrap();
                path
            }),
        ),
        (
            "docker save, unpacked",
            Box::new(|s| {
                write_dir(
                    &Image::of(&layers, Comp::None).docker_files(true),
                    &s.src("g"),
                )
            }),
        ),
    ];
    for (what, make) in &cases {
        let s = Scratch::new("formats");
        let store = s.store();
        let info = import(&store, &make(&s), "same").unwrap_or_else(|e| panic!("{what}: {e}"));
        trees.push((what, tree(&rootfs(&store, "same"))));
        root_ids.insert(info.root_id);
    }
    for (what, t) in &trees {
        assert_eq!(t, &expected_root(), "{what}");
    }
    assert_eq!(
        root_ids.len(),
        1,
        "one chain id whatever the format: {root_ids:?}"
    );
}

#[test]
fn identical_layers_are_stored_once_and_shared_bases_are_linked() {
    let s = Scratch::new("dedup");
    let store = s.store();
    let base = Image::of(&[base_layer(), upper_layer()], Comp::Gzip);
    let a = write_dir(&base.oci_files(), &s.src("a"));
    let b = write_tar(
        &Image::of(&[base_layer(), upper_layer()], Comp::None).docker_files(true),
        &s.src("b.tar"),
    );
    let first = import(&store, &a, "a").unwrap();
    assert!(!first.import.reused_root);
    let second = import(&store, &b, "b").unwrap();
    assert!(second.import.reused_root);
    assert_eq!(second.import.reused_layers, 2);
    assert_eq!(second.import.bytes_written, 0);
    assert_eq!(first.root_id, second.root_id);
    assert_eq!(root_count(&s.store_dir()), 1);

    // An image built on it: its root reuses the stored files through hard links.
    let child_layer = layer(&[file("etc/child", "child"), file("bin/.wh.sh", "")]);
    let child = Image::of(&[base_layer(), upper_layer(), child_layer], Comp::Zstd);
    let c = write_tar(&child.oci_files(), &s.src("c.tar"));
    let third = import(&store, &c, "c").unwrap();
    assert_eq!(third.import.reused_layers, 2);
    assert_eq!(root_count(&s.store_dir()), 2);
    let (root_a, root_c) = (rootfs(&store, "a"), rootfs(&store, "c"));
    assert_eq!(
        fs::metadata(root_a.join("etc/hostname")).unwrap().ino(),
        fs::metadata(root_c.join("etc/hostname")).unwrap().ino(),
        "unchanged files are shared"
    );
    // The child's whiteout removed bin/sh from its root only.
    assert!(root_a.join("bin/sh").exists());
    assert!(!root_c.join("bin/sh").exists());
    assert_eq!(
        fs::read_to_string(root_c.join("bin/hard")).unwrap(),
        "#!shell"
    );
    let mut expected = expected_root();
    expected.remove("bin/sh");
    expected.insert("etc/child".into(), "f 644 child".into());
    assert_eq!(tree(&root_c), expected);

    // Removing one of two images that share a root keeps it; removing both frees it;
    // the child built on it is unaffected.
    let removed = store.remove("a").unwrap();
    assert!(!removed.root_removed);
    assert_eq!(removed.root_shared_with, vec!["b".to_string()]);
    assert_eq!(root_count(&s.store_dir()), 2);
    assert!(store.remove("b").unwrap().root_removed);
    assert_eq!(root_count(&s.store_dir()), 1);
    assert_eq!(tree(&rootfs(&store, "c")), expected);
    assert!(matches!(store.remove("b"), Err(ImageError::NotFound(_))));
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn reimporting_a_name_replaces_the_image_and_collects_its_old_root() {
    let s = Scratch::new("replace");
    let store = s.store();
    let one = write_dir(
        &Image::of(&[base_layer()], Comp::None).oci_files(),
        &s.src("one"),
    );
    let two = write_dir(
        &Image::of(&[layer(&[file("x", "x")])], Comp::None).oci_files(),
        &s.src("two"),
    );
    import(&store, &one, "img").unwrap();
    let info = import(&store, &two, "img").unwrap();
    assert_eq!(root_count(&s.store_dir()), 1);
    assert_eq!(store.list().unwrap(), vec![info]);
    assert_eq!(tree(&rootfs(&store, "img")), expect(&[("x", "f 644 x")]));
}

#[test]
fn setuid_bits_are_stripped_unless_kept() {
    let s = Scratch::new("setuid");
    let store = s.store();
    let tar = layer(&[
        exe("su", 0o4755, "su"),
        exe("wall", 0o2755, "wall"),
        Entry::Dir("mail/", 0o2775),
        Entry::Dir("tmp/", 0o1777),
    ]);
    let src = write_dir(&Image::of(&[tar], Comp::Gzip).oci_files(), &s.src("oci"));
    let stripped = import(&store, &src, "stripped").unwrap();
    assert_eq!(stripped.import.setid_stripped, 3);
    assert_eq!(
        tree(&rootfs(&store, "stripped")),
        expect(&[
            ("mail", "d 775"),
            ("su", "f 755 su"),
            ("tmp", "d 1777"),
            ("wall", "f 755 wall")
        ])
    );
    let keep = ImportOptions {
        keep_setuid: true,
        ..ImportOptions::default()
    };
    let kept = store
        .import(&src, Some("kept"), &keep, &mut |_| {})
        .unwrap();
    assert_eq!(kept.import.setid_stripped, 0);
    assert_ne!(
        kept.root_id, stripped.root_id,
        "a different content is a different root"
    );
    assert_eq!(
        tree(&rootfs(&store, "kept")),
        expect(&[
            ("mail", "d 2775"),
            ("su", "f 4755 su"),
            ("tmp", "d 1777"),
            ("wall", "f 2755 wall")
        ])
    );
}

#[test]
fn device_nodes_and_fifos_are_skipped_and_counted() {
    let s = Scratch::new("devices");
    let store = s.store();
    let lower = layer(&[file("dev-was-here", "x")]);
    let tar = layer(&[
        Entry::Dir("dev/", 0o755),
        Entry::Char("dev/null"),
        Entry::Fifo("dev/initctl"),
        hardlink("dev/null-again", "dev/null"),
        // A device over a lower file hides it.
        Entry::Char("dev-was-here"),
        file("dev/real", "real"),
    ]);
    let src = write_dir(
        &Image::of(&[lower, tar], Comp::None).oci_files(),
        &s.src("oci"),
    );
    let info = import(&store, &src, "dev").unwrap();
    assert_eq!(info.import.devices_skipped, 4);
    assert_eq!(
        tree(&rootfs(&store, "dev")),
        expect(&[("dev", "d 755"), ("dev/real", "f 644 real")])
    );
}

#[test]
fn progress_reports_layers_and_bytes() {
    let s = Scratch::new("progress");
    let store = s.store();
    let big = layer(&[Entry::File("big".into(), 0o644, vec![7u8; 3 << 20])]);
    let src = write_dir(
        &Image::of(&[base_layer(), big], Comp::None).oci_files(),
        &s.src("oci"),
    );
    let mut events = Vec::new();
    store
        .import(&src, Some("p"), &ImportOptions::default(), &mut |e| {
            events.push(e)
        })
        .unwrap();
    let total = match &events[0] {
        ImportProgress::Resolved {
            layers: 2,
            unpack: 2,
            bytes,
        } => *bytes,
        other => panic!("first event: {other:?}"),
    };
    let layers = events
        .iter()
        .filter(|e| matches!(e, ImportProgress::Layer { .. }))
        .count();
    assert_eq!(layers, 2);
    let last_bytes = events
        .iter()
        .rev()
        .find_map(|e| match e {
            ImportProgress::Bytes { done, total } => Some((*done, *total)),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_bytes, (total, Some(total)));
    assert_eq!(events.last(), Some(&ImportProgress::Finishing));
}

#[test]
fn a_killed_imports_work_directory_is_collected_by_the_next_import() {
    let s = Scratch::new("stale");
    let store = s.store();
    let stale = s.store_dir().join("tmp/import-deadbeef0000");
    fs::create_dir_all(stale.join("root/rootfs/etc")).unwrap();
    fs::create_dir_all(s.store_dir().join("roots/sha256").join("ab".repeat(32))).unwrap();
    let src = write_dir(
        &Image::of(&[base_layer()], Comp::None).oci_files(),
        &s.src("oci"),
    );
    import(&store, &src, "next").unwrap();
    assert!(!stale.exists());
    assert_eq!(
        root_count(&s.store_dir()),
        1,
        "the unreferenced root went too"
    );
}

// ---------------------------------------------------------------------------------------
// import_dir
// ---------------------------------------------------------------------------------------

#[test]
fn import_dir_copies_a_tree_without_following_its_symlinks() {
    let s = Scratch::new("dir");
    let store = s.store();
    let dir = s.src("rootdir");
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::write(dir.join("etc/os-release"), "ID=test").unwrap();
    fs::write(dir.join("bin/busybox"), "bb").unwrap();
    fs::hard_link(dir.join("bin/busybox"), dir.join("bin/sh")).unwrap();
    fs::write(dir.join("bin/su"), "su").unwrap();
    fs::set_permissions(dir.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink(s.outside(), dir.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", dir.join("etc/shadow-link")).unwrap();
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());

    let before = s.outside_snapshot();
    let info = store
        .import_dir(&dir, "plain", &ImportOptions::default(), &mut |_| {})
        .unwrap();
    assert_eq!(info.format, SourceFormat::Directory);
    assert_eq!(info.import.devices_skipped, 1, "{info:#?}");
    assert_eq!(info.import.setid_stripped, 1);
    let root = rootfs(&store, "plain");
    let mut got = tree(&root);
    for mode in got.values_mut() {
        // Directory modes follow the umask of whoever made the source.
        if mode.starts_with("d ") {
            *mode = "d".into();
        }
    }
    let file_mode = |p: &str| {
        format!(
            "{:o}",
            fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777
        )
    };
    assert_eq!(
        got,
        expect(&[
            ("bin", "d"),
            ("bin/busybox", &format!("f {} bb", file_mode("bin/busybox"))),
            ("bin/sh", &format!("f {} bb", file_mode("bin/busybox"))),
            ("bin/su", "f 755 su"),
            ("escape", &format!("l -> {}", s.outside().display())),
            ("etc", "d"),
            (
                "etc/os-release",
                &format!("f {} ID=test", file_mode("etc/os-release"))
            ),
            ("etc/shadow-link", "l -> /etc/shadow"),
        ])
    );
    assert_eq!(
        fs::metadata(root.join("bin/sh")).unwrap().ino(),
        fs::metadata(root.join("bin/busybox")).unwrap().ino()
    );
    assert_eq!(s.outside_snapshot(), before);
    // The same tree again is the same root.
    let again = store
        .import_dir(&dir, "again", &ImportOptions::default(), &mut |_| {})
        .unwrap();
    assert!(again.import.reused_root);
    assert_eq!(again.root_id, info.root_id);
    assert_eq!(root_count(&s.store_dir()), 1);
}

// ---------------------------------------------------------------------------------------
// Malicious and broken inputs
// ---------------------------------------------------------------------------------------

/// How a malicious case is written to disk.
enum Source {
    OciDir(Files),
    Tar(Files),
    Path(PathBuf),
}

fn oci(image: Image) -> Source {
    Source::OciDir(image.oci_files())
}

fn layers(tars: &[Vec<u8>]) -> Source {
    oci(Image::of(tars, Comp::None))
}

/// One layer blob replaced by `blob`, with every digest made to match it again (so
/// the only fault is in the blob itself).
fn with_blob(blob: Vec<u8>, diff_id_of: &[u8]) -> Source {
    let mut image = Image::of(&[layer(&[file("a", "a")])], Comp::None);
    image.layers[0] = Layer {
        diff_id: sha(diff_id_of),
        blob,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
    };
    oci(image)
}

fn cut(bytes: &[u8], keep: usize) -> Vec<u8> {
    bytes[..keep].to_vec()
}

fn malicious_cases(s: &Scratch) -> Vec<(&'static str, Source, &'static str)> {
    let outside = s.outside().display().to_string();
    let absolute_evil = symlink("evil", &outside);
    let big_file = layer(&[Entry::File("big".into(), 0o644, vec![0u8; 3 << 19])]);
    let plain = layer(&[Entry::Dir("d/", 0o755), file("d/file", &"x".repeat(3000))]);
    let gz = compress(&plain, Comp::Gzip);
    let zst = compress(&plain, Comp::Zstd);
    let no_end_blocks = plain[..plain.len() - 1024].to_vec();
    let mut cases = vec![
        (
            "`..` path",
            layers(&[layer(&[file("../outside/pwned", "x")])]),
            "`..`",
        ),
        (
            "`..` inside a path",
            layers(&[layer(&[file("a/../../outside/pwned", "x")])]),
            "`..`",
        ),
        (
            "absolute path to the canary",
            layers(&[layer(&[Entry::File(
                format!("{outside}/pwned"),
                0o644,
                b"x".to_vec(),
            )])]),
            "absolute path",
        ),
        (
            "absolute symlink, then a file through it",
            layers(&[layer(&[absolute_evil.clone(), file("evil/pwned", "x")])]),
            "symbolic link",
        ),
        (
            "relative symlink up and out, then a file through it",
            layers(&[layer(&[
                symlink("up", "../../../../../../../../.."),
                Entry::File(format!("up{outside}/pwned"), 0o644, b"x".to_vec()),
            ])]),
            "symbolic link",
        ),
        (
            "symlink in a lower layer, file through it in an upper one",
            layers(&[
                layer(std::slice::from_ref(&absolute_evil)),
                layer(&[file("evil/pwned", "x")]),
            ]),
            "symbolic link",
        ),
        (
            "symlink, then a directory through it",
            layers(&[layer(&[
                absolute_evil.clone(),
                Entry::Dir("evil/sub/", 0o755),
            ])]),
            "symbolic link",
        ),
        (
            "hard link to an absolute path",
            layers(&[layer(&[hardlink("shadow", "/etc/shadow")])]),
            "absolute path",
        ),
        (
            "hard link up and out",
            layers(&[layer(&[hardlink(
                "canary",
                "../../../../../../outside/canary",
            )])]),
            "`..`",
        ),
        (
            "hard link to a file that is not in the image",
            layers(&[layer(&[hardlink("shadow", "etc/shadow")])]),
            "not in the image",
        ),
        (
            "hard link through a symlink to the canary",
            layers(&[layer(&[
                absolute_evil.clone(),
                hardlink("stolen", "evil/canary"),
            ])]),
            "symbolic link",
        ),
        (
            "whiteout of `.` at the root",
            layers(&[layer(&[file(".wh..", "")])]),
            "whiteout",
        ),
        (
            "whiteout of `..`",
            layers(&[layer(&[file("a/.wh...", "")])]),
            "whiteout",
        ),
        (
            "whiteout of nothing",
            layers(&[layer(&[file("./.wh.", "")])]),
            "whiteout",
        ),
        (
            "whiteout through a symlink",
            layers(&[
                layer(std::slice::from_ref(&absolute_evil)),
                layer(&[file("evil/.wh.canary", "")]),
            ]),
            "symbolic link",
        ),
        (
            "opaque directory through a symlink",
            layers(&[
                layer(std::slice::from_ref(&absolute_evil)),
                layer(&[file("evil/.wh..wh..opq", "")]),
            ]),
            "symbolic link",
        ),
        (
            "truncated tar (inside a file)",
            with_blob(cut(&plain, 1500), &cut(&plain, 1500)),
            "cut short",
        ),
        (
            "truncated tar (no end blocks)",
            with_blob(no_end_blocks.clone(), &no_end_blocks),
            "cut short",
        ),
        (
            "truncated gzip",
            with_blob(cut(&gz, gz.len() - 10), &plain),
            "cut short",
        ),
        (
            "truncated zstd",
            with_blob(cut(&zst, zst.len() / 2), &plain),
            "cut short",
        ),
        (
            "not a tar",
            with_blob(b"hello, I am not a tar archive".repeat(40), b"x"),
            "not a valid tar",
        ),
        (
            "huge PAX header",
            layers(&[layer(&[Entry::Extension(b'x', 2 << 20), file("a", "a")])]),
            "extension header",
        ),
        (
            "unsupported entry type",
            layers(&[layer(&[Entry::Extension(b'V', 0)])]),
            "not supported",
        ),
    ];

    // Digests.
    let mut image = Image::of(std::slice::from_ref(&plain), Comp::None);
    let mut files = image.oci_files();
    let blob = files
        .get_mut(&format!("blobs/sha256/{}", hex(&sha(&plain))))
        .unwrap();
    let last = blob.len() - 2000;
    blob[last] ^= 1; // inside the file's data: still a valid tar
    cases.push(("layer digest mismatch", Source::OciDir(files), "tampered"));

    // A gzip header field changed: the same uncompressed tar (diff_id still right),
    // but not the blob the manifest names.
    let mut files = Image::of(std::slice::from_ref(&plain), Comp::Gzip).oci_files();
    let blob = files
        .get_mut(&format!("blobs/sha256/{}", hex(&sha(&gz))))
        .unwrap();
    blob[4] ^= 0x55; // MTIME
    cases.push((
        "compressed layer digest mismatch",
        Source::OciDir(files),
        "the manifest says",
    ));

    image.layers[0].diff_id = sha(b"something else");
    cases.push(("diff_id mismatch", oci(image.clone()), "diff_ids"));

    let mut files = Image::of(std::slice::from_ref(&plain), Comp::None).oci_files();
    for (path, data) in files.iter_mut() {
        let text = String::from_utf8_lossy(data);
        if path.starts_with("blobs/")
            && text.contains("\"layers\"")
            && text.contains("\"schemaVersion\":2")
        {
            let text = String::from_utf8(data.clone())
                .unwrap()
                .replace("\"schemaVersion\":2", "\"schemaVersion\":3");
            *data = text.into_bytes();
        }
    }
    cases.push((
        "manifest digest mismatch",
        Source::OciDir(files),
        "tampered",
    ));

    let mut files = Image::of(std::slice::from_ref(&plain), Comp::None).docker_files(true);
    let config_path = files
        .keys()
        .find(|k| k.ends_with(".json") && *k != "manifest.json")
        .unwrap()
        .clone();
    let config = files.get_mut(&config_path).unwrap();
    *config = String::from_utf8(config.clone())
        .unwrap()
        .replace("C.UTF-8", "C.UTF-9")
        .into_bytes();
    cases.push((
        "docker config digest mismatch",
        Source::Tar(files),
        "tampered",
    ));

    let mut files = Image::of(std::slice::from_ref(&plain), Comp::None).oci_files();
    files.remove(&format!("blobs/sha256/{}", hex(&sha(&plain))));
    cases.push(("missing layer blob", Source::OciDir(files), "is missing"));

    // Platform.
    let mut foreign = Image::of(std::slice::from_ref(&plain), Comp::None);
    foreign.arch = foreign_arch().into();
    cases.push((
        "config for another architecture",
        oci(foreign),
        "this host is linux/",
    ));
    let mut foreign = Image::of(std::slice::from_ref(&plain), Comp::None);
    foreign.index_platform = Some(foreign_arch().into());
    cases.push((
        "index entry for another architecture",
        oci(foreign),
        "this host is linux/",
    ));

    // Sizes.
    cases.push((
        "size bomb",
        oci(Image::of(&[big_file], Comp::Gzip)),
        "exceeds the limit",
    ));
    // Zeros after the tar's end blocks: no file is large, the stream is.
    let mut padded = plain.clone();
    padded.resize(plain.len() + (4 << 20), 0);
    cases.push((
        "decompression bomb after the tar's end",
        oci(Image::new(vec![Layer::new(padded, Comp::Gzip)])),
        "the uncompressed layer stream exceeds the limit",
    ));
    let many: Vec<Entry> = (0..300).map(|i| file(&format!("f{i}"), "")).collect();
    cases.push((
        "entry-count bomb",
        layers(&[layer(&many)]),
        "number of entries",
    ));

    // A truncated outer archive.
    let files = Image::of(&[base_layer()], Comp::None).oci_files();
    let whole = archive(&files);
    let path = s.src("cut.tar");
    fs::write(&path, &whole[..whole.len() - 3000]).unwrap();
    cases.push(("truncated OCI archive", Source::Path(path), "cut short"));
    cases
}

#[test]
fn malicious_and_broken_images_are_refused_and_leave_no_trace() {
    let s = Scratch::new("evil");
    let store = s.store();
    // A store with an image in it, so "untouched" means something.
    let good = write_dir(
        &Image::of(&[base_layer()], Comp::Gzip).oci_files(),
        &s.src("good"),
    );
    import(&store, &good, "good").unwrap();
    let options = ImportOptions {
        max_bytes: 1 << 20,
        max_entries: 200,
        ..ImportOptions::default()
    };
    for (i, (what, source, mentions)) in malicious_cases(&s).into_iter().enumerate() {
        let path = match source {
            Source::OciDir(files) => write_dir(&files, &s.src(&format!("case{i}"))),
            Source::Tar(files) => write_tar(&files, &s.src(&format!("case{i}.tar"))),
            Source::Path(path) => path,
        };
        let store_before = store_snapshot(&s.store_dir());
        let outside_before = s.outside_snapshot();
        let result = store.import(&path, Some("evil"), &options, &mut |_| {});
        let error = match result {
            Ok(_) => panic!("{what}: imported, must be refused"),
            Err(e) => e,
        };
        let message = error.to_string();
        assert!(
            message.contains(mentions),
            "{what}: error should mention {mentions:?}: {message}"
        );
        assert!(!message.contains('\n'), "{what}: one line: {message}");
        assert_eq!(
            error.exit_code(),
            2,
            "{what}: bad input is exit code 2: {message}"
        );
        assert_eq!(
            store_snapshot(&s.store_dir()),
            store_before,
            "{what}: the store changed"
        );
        assert_eq!(
            s.outside_snapshot(),
            outside_before,
            "{what}: something was written outside"
        );
        assert_eq!(
            fs::metadata(s.outside().join("canary")).unwrap().nlink(),
            1,
            "{what}"
        );
        assert!(
            matches!(store.inspect("evil"), Err(ImageError::NotFound(_))),
            "{what}"
        );
        eprintln!("refused as expected: {what}: {message}");
    }
    assert_eq!(tree(&rootfs(&store, "good")).len(), 17);
}

#[test]
fn sources_that_are_not_images_get_a_clear_error() {
    let s = Scratch::new("notimage");
    let store = s.store();
    let missing = store.import(
        &s.src("nope.tar"),
        None,
        &ImportOptions::default(),
        &mut |_| {},
    );
    assert!(
        matches!(missing, Err(ImageError::Usage(ref m)) if m.contains("nope.tar")),
        "{missing:?}"
    );
    let empty_dir = s.src("empty");
    fs::create_dir_all(&empty_dir).unwrap();
    let e = import(&store, &empty_dir, "x").unwrap_err().to_string();
    assert!(e.contains("import-dir"), "{e}");
    let text = s.src("notes.txt");
    fs::write(
        &text,
        "just text, not an archive at all, long enough to fill a tar header block ".repeat(10),
    )
    .unwrap();
    let e = import(&store, &text, "x").unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let e = import(&store, &empty_dir, "../bad")
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid image name"), "{e}");
}
