//! The snapshot store: round trips that compare every byte, mode, mtime and symlink
//! target; deduplication measured on disk; corruption found and traced to the tags it
//! breaks; gc freeing exactly what no tag shares; restores that refuse non-empty
//! destinations and hand-made manifests; walks that never leave the tree, even while a
//! symlink is being swapped into it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use phantom_api::access::Owner;
use phantom_store::{
    ObjectKind, RestoreMode, SnapshotError, SnapshotInfo, SnapshotLimits, SnapshotOptions,
    SnapshotStore,
};

// ---------------------------------------------------------------------------------------
// Scratch space and helpers
// ---------------------------------------------------------------------------------------

/// `store/` (the snapshot store), `src/` (trees to snapshot), `out/` (restores) and
/// `outside/` (a canary nothing may write to). Removed on drop.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "phantom-snapshot-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        for sub in ["src", "out", "outside"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::write(root.join("outside/canary"), "canary").unwrap();
        Scratch { root }
    }

    fn store(&self) -> SnapshotStore {
        SnapshotStore::open(self.root.join("store")).unwrap()
    }

    fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    fn src(&self, name: &str) -> PathBuf {
        self.root.join("src").join(name)
    }

    fn out(&self, name: &str) -> PathBuf {
        self.root.join("out").join(name)
    }

    /// The canary is there and alone.
    fn assert_outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(self.root.join("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsStr::new("canary").to_os_string()]);
        assert_eq!(
            fs::read_to_string(self.root.join("outside/canary")).unwrap(),
            "canary"
        );
    }

    /// (files, bytes) below `store/<sub>`.
    fn usage(&self, sub: &str) -> (u64, u64) {
        let files = files_below(&self.store_dir().join(sub));
        (files.len() as u64, files.values().sum())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Hard-linked restores and read-only directories: make everything writable.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwX"])
            .arg(&self.root)
            .status();
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn snap(store: &SnapshotStore, dir: &Path, tag: &str) -> SnapshotInfo {
    store
        .snapshot(
            dir,
            &Owner::Local,
            tag,
            &SnapshotOptions::default(),
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("snapshot {tag}: {e}"))
}

/// Every file below `dir` (not following symlinks) with its size, by path.
fn files_below(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            out.extend(files_below(&entry.path()));
        } else {
            out.insert(entry.path(), meta.len());
        }
    }
    out
}

/// Deterministic incompressible bytes (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What a tree is, entry by entry: kind, mode, mtime (s, ns) and content (file bytes
/// hashed, symlink target). Never follows a symlink.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
}

fn describe(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let (kind, content) = if meta.file_type().is_symlink() {
                (
                    "symlink",
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else if meta.is_dir() {
                walk(root, &path, out);
                ("dir", Vec::new())
            } else if meta.is_file() {
                (
                    "file",
                    blake3::hash(&fs::read(&path).unwrap()).as_bytes().to_vec(),
                )
            } else {
                ("special", Vec::new())
            };
            let mode = if kind == "symlink" {
                0
            } else {
                meta.mode() & 0o7777
            };
            out.insert(
                rel,
                Node {
                    kind,
                    mode,
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    content,
                },
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn set_mtime(path: &Path, secs: u64, nanos: u32) {
    let when = UNIX_EPOCH + Duration::new(secs, nanos);
    fs::File::open(path).unwrap().set_modified(when).unwrap();
}

fn set_symlink_mtime(path: &Path, secs: i64, nanos: i64) {
    let when = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: when,
            last_modification: when,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with files of several sizes, nested directories, modes, mtimes with
/// nanoseconds, symlinks of every kind, a non-UTF-8 name, a fifo and a socket.
fn build_rich_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("one"), b"1").unwrap();
    // 6 MiB of a repeated 1000-byte pattern: compresses and dedups within itself.
    let pattern: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(
        root.join("a/repeated.bin"),
        pattern.repeat(6 * 1024 * 1024 / 1000),
    )
    .unwrap();
    fs::write(root.join("a/b/noise.bin"), noise(3 * 1024 * 1024 + 17, 1)).unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep\n").unwrap();
    fs::write(root.join("a/b/c/copy-of-one"), b"1").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name").unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    chmod(&root.join("run.sh"), 0o755);
    fs::write(root.join("secret"), b"s").unwrap();
    chmod(&root.join("secret"), 0o600);
    fs::write(root.join("readonly"), b"r").unwrap();
    chmod(&root.join("readonly"), 0o444);
    fs::write(root.join("setuid"), b"x").unwrap();
    chmod(&root.join("setuid"), 0o4755);
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("a/b/up-link")).unwrap();
    std::os::unix::fs::symlink("b/c", root.join("a/dir-link")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    // Times last, innermost first (writing into a directory changes its mtime).
    for (i, path) in [
        "empty",
        "one",
        "a/repeated.bin",
        "a/b/noise.bin",
        "a/b/c/deep.txt",
        "a/b/c/copy-of-one",
        "run.sh",
        "secret",
        "readonly",
        "setuid",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&root.join(path), 1_600_000_000 + i as u64, 123_456_789);
    }
    set_symlink_mtime(&root.join("abs-link"), 1_500_000_000, 42);
    set_symlink_mtime(&root.join("a/b/up-link"), 1_500_000_001, 0);
    chmod(&root.join("a/b/c"), 0o750);
    for (i, dir) in ["a/b/c", "a/b", "a", "empty-dir"].iter().enumerate() {
        set_mtime(&root.join(dir), 1_400_000_000 + i as u64, 999_999_999);
    }
}

// ---------------------------------------------------------------------------------------
// Round trip
// ---------------------------------------------------------------------------------------

#[test]
fn round_trip_keeps_every_byte_mode_mtime_and_symlink() {
    let s = Scratch::new("roundtrip");
    let src = s.src("tree");
    build_rich_tree(&src);
    let store = s.store();
    let mut events = 0;
    let info = store
        .snapshot(
            &src,
            &Owner::Local,
            "rich",
            &SnapshotOptions::default(),
            &mut |_| events += 1,
        )
        .unwrap();
    assert!(events > 0, "progress is reported");
    assert_eq!(info.files, 11, "{info:?}");
    assert_eq!(info.dirs, 4);
    assert_eq!(info.symlinks, 4);
    assert_eq!(info.special_skipped, 2, "the fifo and the socket");
    assert_eq!(info.setid_stripped, 1);
    assert_eq!(info.source, src.display().to_string());

    let dest = s.out("rich");
    let restored = store
        .restore(&Owner::Local, "rich", &dest, RestoreMode::Copy)
        .unwrap();
    assert_eq!(
        (restored.files, restored.dirs, restored.symlinks),
        (11, 4, 4)
    );
    assert_eq!(restored.copied, 11);
    assert_eq!(restored.bytes, info.bytes);

    let mut expected = describe(&src);
    expected.remove(&b"fifo"[..]).unwrap();
    expected.remove(&b"socket"[..]).unwrap();
    expected.get_mut(&b"setuid"[..]).unwrap().mode = 0o755;
    let actual = describe(&dest);
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (path, node) in &expected {
        assert_eq!(&actual[path], node, "{}", String::from_utf8_lossy(path));
    }
    // The root too.
    let (root_src, root_dest) = (fs::metadata(&src).unwrap(), fs::metadata(&dest).unwrap());
    assert_eq!(root_src.mode() & 0o7777, root_dest.mode() & 0o7777);
    assert_eq!(root_src.mtime(), root_dest.mtime());
    // Symlinks are kept as written and were not followed on either side.
    assert_eq!(
        fs::read_link(dest.join("abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(dest.join("a/b/up-link")).unwrap(),
        Path::new("../../outside")
    );
    s.assert_outside_untouched();
}

#[test]
fn a_restore_into_an_existing_empty_directory_works() {
    let s = Scratch::new("empty-dest");
    fs::write(s.src("f"), b"hello").unwrap();
    let store = s.store();
    snap(&store, &s.root.join("src"), "t");
    let dest = s.out("existing");
    fs::create_dir(&dest).unwrap();
    store
        .restore(&Owner::Local, "t", &dest, RestoreMode::Copy)
        .unwrap();
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"hello");
}

// ---------------------------------------------------------------------------------------
// Deduplication
// ---------------------------------------------------------------------------------------

#[test]
fn a_second_snapshot_of_an_unchanged_tree_stores_nothing_new() {
    let s = Scratch::new("dedup");
    let src = s.src("tree");
    build_rich_tree(&src);
    let store = s.store();
    let first = snap(&store, &src, "first");
    assert!(first.new_chunks > 0);
    let chunks = s.usage("chunks");
    let manifests = s.usage("manifests");
    assert_eq!(chunks.0, first.new_chunks);

    let second = snap(&store, &src, "second");
    assert_eq!(second.new_chunks, 0, "{second:?}");
    assert_eq!(second.new_bytes, 0);
    assert_eq!(second.manifest, first.manifest, "same tree, same manifest");
    assert_eq!(s.usage("chunks"), chunks, "no chunk file and no byte added");
    assert_eq!(s.usage("manifests"), manifests);
    assert_eq!(s.usage("tmp"), (0, 0));
    assert_eq!(store.list(None).unwrap().len(), 2);
}

#[test]
fn a_one_byte_change_in_a_10_mb_file_adds_only_a_few_chunks() {
    let s = Scratch::new("cdc");
    let src = s.src("tree");
    fs::create_dir(&src).unwrap();
    let size = 10 * 1024 * 1024;
    let mut data = noise(size, 7);
    fs::write(src.join("big.bin"), &data).unwrap();
    let store = s.store();
    let first = snap(&store, &src, "v1");
    assert!(first.chunks >= 100, "about 64 KiB chunks: {first:?}");

    // Overwrite one byte in the middle.
    data[size / 2] ^= 0xff;
    fs::write(src.join("big.bin"), &data).unwrap();
    let before = s.usage("chunks");
    let second = snap(&store, &src, "v2");
    let after = s.usage("chunks");
    assert!(second.new_chunks <= 2, "{second:?}");
    assert!(
        after.1 - before.1 < (size / 20) as u64,
        "{} new bytes for a one-byte change",
        after.1 - before.1
    );

    // Insert one byte near the start: content-defined cut points re-synchronize, so
    // the shift does not change every chunk after it (fixed-size blocks would).
    data.insert(1000, b'!');
    fs::write(src.join("big.bin"), &data).unwrap();
    let before = s.usage("chunks");
    let third = snap(&store, &src, "v3");
    let after = s.usage("chunks");
    assert!(third.new_chunks <= 3, "{third:?}");
    assert!(after.1 - before.1 < (size / 20) as u64);

    // And every version still restores byte for byte.
    store
        .restore(&Owner::Local, "v3", &s.out("v3"), RestoreMode::Copy)
        .unwrap();
    assert_eq!(fs::read(s.out("v3").join("big.bin")).unwrap(), data);
}

// ---------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------

/// Snapshot `b` (tree B), then `a1`, `a2` (tree A, which shares a file with B); the
/// chunks only A has.
fn two_trees(s: &Scratch, store: &SnapshotStore) -> BTreeSet<PathBuf> {
    let (a, b) = (s.src("A"), s.src("B"));
    for dir in [&a, &b] {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("shared.bin"), noise(300_000, 3)).unwrap();
    }
    fs::write(a.join("only-a.bin"), noise(200_000, 4)).unwrap();
    fs::write(b.join("only-b.bin"), noise(200_000, 5)).unwrap();
    snap(store, &b, "b");
    let with_b: BTreeSet<_> = files_below(&s.store_dir().join("chunks"))
        .into_keys()
        .collect();
    snap(store, &a, "a1");
    snap(store, &a, "a2");
    let with_a: BTreeSet<_> = files_below(&s.store_dir().join("chunks"))
        .into_keys()
        .collect();
    with_a.difference(&with_b).cloned().collect()
}

#[test]
fn verify_finds_a_flipped_byte_and_names_the_snapshots_it_breaks() {
    let s = Scratch::new("verify");
    let store = s.store();
    let only_a = two_trees(&s, &store);
    assert!(!only_a.is_empty());
    let clean = store.verify().unwrap();
    assert!(clean.is_ok(), "{clean:?}");
    assert_eq!(clean.tags, 3);
    assert_eq!(clean.chunks, s.usage("chunks").0);

    // Flip one byte of one chunk only tree A uses.
    let victim = only_a.iter().next().unwrap();
    let mut bytes = fs::read(victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(victim, &bytes).unwrap();

    let report = store.verify().unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.problems.len(), 1, "{report:?}");
    let problem = &report.problems[0];
    assert_eq!(problem.kind, ObjectKind::Chunk);
    assert_eq!(problem.path, *victim);
    assert_eq!(problem.id, victim.file_name().unwrap().to_str().unwrap());
    assert_eq!(problem.breaks, ["a1", "a2"]);
    assert_eq!(report.broken_tags, ["a1", "a2"]);

    // A restore of a broken snapshot fails and leaves nothing; the others still work.
    let err = store
        .restore(&Owner::Local, "a1", &s.out("a1"), RestoreMode::Copy)
        .unwrap_err();
    assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&problem.id), "{err}");
    assert!(
        !s.out("a1").exists(),
        "a failed restore removes what it created"
    );
    store
        .restore(&Owner::Local, "b", &s.out("b"), RestoreMode::Copy)
        .unwrap();

    // A missing chunk is named too.
    fs::remove_file(victim).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].what, "missing");
    assert_eq!(report.broken_tags, ["a1", "a2"]);
}

#[test]
fn verify_finds_a_corrupt_manifest() {
    let s = Scratch::new("verify-manifest");
    let store = s.store();
    two_trees(&s, &store);
    let a1 = store.info(&Owner::Local, "a1").unwrap();
    let path = s
        .store_dir()
        .join("manifests")
        .join(&a1.manifest[..2])
        .join(&a1.manifest);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x80;
    fs::write(&path, &bytes).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].kind, ObjectKind::Manifest);
    assert_eq!(report.broken_tags, ["a1", "a2"]);
    // gc refuses to guess which chunks those snapshots needed.
    let err = store.gc().unwrap_err();
    assert!(err.to_string().contains("removes nothing"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Tags, rm and gc
// ---------------------------------------------------------------------------------------

#[test]
fn gc_after_rm_frees_exactly_the_unshared_chunks() {
    let s = Scratch::new("gc");
    let store = s.store();
    let (a, b) = (s.src("A"), s.src("B"));
    for dir in [&a, &b] {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("shared.bin"), noise(1_000_000, 11)).unwrap();
    }
    fs::write(b.join("only-b.bin"), noise(700_000, 12)).unwrap();
    snap(&store, &a, "a");
    let after_a = files_below(&s.store_dir().join("chunks"));
    snap(&store, &b, "b");
    let after_b = files_below(&s.store_dir().join("chunks"));
    let only_b: BTreeMap<_, _> = after_b
        .iter()
        .filter(|(path, _)| !after_a.contains_key(*path))
        .map(|(p, n)| (p.clone(), *n))
        .collect();
    assert!(!only_b.is_empty());

    // rm alone frees nothing.
    store.remove(&Owner::Local, "b").unwrap();
    assert_eq!(files_below(&s.store_dir().join("chunks")), after_b);
    let report = store.gc().unwrap();
    assert_eq!(report.chunks_removed, only_b.len() as u64, "{report:?}");
    assert_eq!(report.chunk_bytes_freed, only_b.values().sum::<u64>());
    assert_eq!(report.manifests_removed, 1);
    assert_eq!(files_below(&s.store_dir().join("chunks")), after_a);
    // What is left is whole, and a second gc finds nothing.
    assert!(store.verify().unwrap().is_ok());
    store
        .restore(&Owner::Local, "a", &s.out("a"), RestoreMode::Copy)
        .unwrap();
    assert_eq!(
        fs::read(s.out("a").join("shared.bin")).unwrap(),
        fs::read(a.join("shared.bin")).unwrap()
    );
    assert_eq!(store.gc().unwrap(), Default::default());
}

#[test]
fn tags_are_checked_and_never_overwritten_unless_asked() {
    let s = Scratch::new("tags");
    fs::write(s.src("f"), b"1").unwrap();
    let store = s.store();
    for bad in ["", "a/b", "..", "../x", &"x".repeat(129)] {
        let err = store
            .snapshot(
                &s.root.join("src"),
                &Owner::Local,
                bad,
                &SnapshotOptions::default(),
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
    }
    let first = snap(&store, &s.root.join("src"), "t");
    fs::write(s.src("f"), b"2").unwrap();
    let err = store
        .snapshot(
            &s.root.join("src"),
            &Owner::Local,
            "t",
            &SnapshotOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, SnapshotError::TagExists(_)), "{err}");
    assert_eq!(
        store.info(&Owner::Local, "t").unwrap().manifest,
        first.manifest
    );
    let replaced = store
        .snapshot(
            &s.root.join("src"),
            &Owner::Local,
            "t",
            &SnapshotOptions { replace: true },
            &mut |_| {},
        )
        .unwrap();
    assert_ne!(replaced.manifest, first.manifest);
    assert_eq!(
        store.info(&Owner::Local, "t").unwrap().manifest,
        replaced.manifest
    );

    assert!(matches!(
        store.remove(&Owner::Local, "nope"),
        Err(SnapshotError::NotFound(_))
    ));
    assert!(matches!(
        store.restore(&Owner::Local, "nope", &s.out("x"), RestoreMode::Copy),
        Err(SnapshotError::NotFound(_))
    ));
    assert!(!s.out("x").exists());
    let err = store
        .snapshot(
            &s.src("f"),
            &Owner::Local,
            "file",
            &SnapshotOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
}

#[test]
fn two_concurrent_snapshots_of_one_tag_give_one_snapshot_and_one_error() {
    let s = Scratch::new("race-tag");
    fs::write(s.src("f"), noise(2_000_000, 9)).unwrap();
    let store = s.store();
    let src = s.root.join("src");
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    store.snapshot(
                        &src,
                        &Owner::Local,
                        "same",
                        &SnapshotOptions::default(),
                        &mut |_| {},
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(SnapshotError::TagExists(_)))));
    assert_eq!(s.usage("tmp"), (0, 0));
}

#[test]
fn limits_are_errors_and_a_failed_snapshot_leaves_nothing() {
    let s = Scratch::new("limits");
    for i in 0..10 {
        fs::write(s.src(&format!("f{i}")), noise(100_000, i)).unwrap();
    }
    let src = s.root.join("src");
    let few = s.store().with_limits(SnapshotLimits {
        max_bytes: u64::MAX,
        max_entries: 5,
    });
    let err = few
        .snapshot(
            &src,
            &Owner::Local,
            "t",
            &SnapshotOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("--max-files"), "{err}");
    let small = s.store().with_limits(SnapshotLimits {
        max_bytes: 450_000,
        max_entries: 1000,
    });
    let err = small
        .snapshot(
            &src,
            &Owner::Local,
            "t",
            &SnapshotOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(err.to_string().contains("--max-size"), "{err}");
    // Chunks were written before the limit hit, but only to tmp/, and removed.
    assert_eq!(s.usage("chunks"), (0, 0));
    assert_eq!(s.usage("tmp"), (0, 0));
    assert!(s.store().list(None).unwrap().is_empty());

    // Nesting deeper than 256 directories is refused, not cut off.
    let deep = s.src("deep");
    let mut path = deep.clone();
    for _ in 0..257 {
        path.push("d");
    }
    fs::create_dir_all(&path).unwrap();
    let err = s
        .store()
        .snapshot(
            &deep,
            &Owner::Local,
            "deep",
            &SnapshotOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(err.to_string().contains("deeper than 256"), "{err}");
    fs::remove_dir_all(&deep).unwrap();

    // A store with lower limits refuses to restore a larger snapshot.
    snap(&s.store(), &src, "t");
    let err = few
        .restore(&Owner::Local, "t", &s.out("t"), RestoreMode::Copy)
        .unwrap_err();
    assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err}");
    assert!(!s.out("t").exists());
}

// ---------------------------------------------------------------------------------------
// Restore safety
// ---------------------------------------------------------------------------------------

#[test]
fn restore_refuses_a_non_empty_destination_and_a_symlink() {
    let s = Scratch::new("dest");
    fs::write(s.src("f"), b"data").unwrap();
    let store = s.store();
    snap(&store, &s.root.join("src"), "t");

    let busy = s.out("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("mine"), b"keep me").unwrap();
    let err = store
        .restore(&Owner::Local, "t", &busy, RestoreMode::Copy)
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(fs::read_dir(&busy).unwrap().count(), 1);
    assert_eq!(fs::read(busy.join("mine")).unwrap(), b"keep me");

    // A symlink as the destination is not followed.
    let link = s.out("link");
    std::os::unix::fs::symlink(s.root.join("outside"), &link).unwrap();
    let err = store
        .restore(&Owner::Local, "t", &link, RestoreMode::Copy)
        .unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    s.assert_outside_untouched();

    // A file as the destination.
    let err = store
        .restore(&Owner::Local, "t", &busy.join("mine"), RestoreMode::Copy)
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
}

/// Replace the manifest of `tag` with `edit` applied to its JSON, stored the way the
/// store stores manifests (so its hash is right): what someone with write access to
/// the store could do.
fn tamper(s: &Scratch, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let tag_path = s.store_dir().join("tags").join(tag);
    let mut record: serde_json::Value =
        serde_json::from_slice(&fs::read(&tag_path).unwrap()).unwrap();
    let hex = record["manifest"].as_str().unwrap().to_string();
    let stored = fs::read(s.store_dir().join("manifests").join(&hex[..2]).join(&hex)).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&zstd::decode_all(&stored[..]).unwrap()).unwrap();
    edit(&mut manifest);
    let json = serde_json::to_vec(&manifest).unwrap();
    let hash = blake3::hash(&json).to_hex().to_string();
    let dir = s.store_dir().join("manifests").join(&hash[..2]);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&hash), zstd::encode_all(&json[..], 3).unwrap()).unwrap();
    record["manifest"] = serde_json::json!(hash);
    fs::write(&tag_path, serde_json::to_vec(&record).unwrap()).unwrap();
}

#[test]
fn restore_refuses_a_tampered_manifest() {
    let s = Scratch::new("tamper");
    let src = s.src("tree");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"payload").unwrap();
    fs::write(src.join("g"), b"other").unwrap();
    std::os::unix::fs::symlink(s.root.join("outside"), src.join("l")).unwrap();
    let store = s.store();
    snap(&store, &src, "good");
    // Entries: d (dir), d/f, g, l (symlink to outside/).
    type Edit<'a> = Box<dyn Fn(&mut serde_json::Value) + 'a>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "dotdot",
            Box::new(|m| m["entries"][2]["path"] = "../../outside/pwned".into()),
        ),
        (
            "absolute",
            Box::new(|m| {
                let abs = format!("{}/pwned", s.root.join("outside").display());
                m["entries"][2]["path"] = abs.into();
            }),
        ),
        (
            "inner-dotdot",
            Box::new(|m| m["entries"][1]["path"] = "d/../../pwned".into()),
        ),
        // A file "through" the symlink l: l is not a directory of the restore.
        (
            "through-symlink",
            Box::new(|m| {
                let mut file = m["entries"][2].clone();
                file["path"] = "l/pwned".into();
                m["entries"].as_array_mut().unwrap().push(file);
            }),
        ),
        (
            "twice",
            Box::new(|m| {
                let file = m["entries"][2].clone();
                m["entries"].as_array_mut().unwrap().push(file);
            }),
        ),
        (
            "chunk-path",
            Box::new(|m| {
                m["entries"][2]["chunks"][0][0] = "../../../../outside/canary".into();
            }),
        ),
    ];
    for (name, edit) in &cases {
        let tag = format!("evil-{name}");
        snap(&store, &src, &tag);
        tamper(&s, &tag, edit);
        let dest = s.out(&tag);
        let err = store
            .restore(&Owner::Local, &tag, &dest, RestoreMode::Copy)
            .unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::UnsafeManifest { .. } | SnapshotError::Corrupt { .. }
            ),
            "{name}: {err}"
        );
        assert_eq!(err.exit_code(), 1);
        assert!(!dest.exists(), "{name}: nothing is created");
        assert!(!s.root.join("pwned").exists());
        s.assert_outside_untouched();
    }
    // The untouched snapshot still restores.
    store
        .restore(&Owner::Local, "good", &s.out("good"), RestoreMode::Copy)
        .unwrap();
    assert_eq!(fs::read(s.out("good/d/f")).unwrap(), b"payload");

    // Bytes flipped in a stored manifest: it no longer hashes to its name.
    let good = store.info(&Owner::Local, "good").unwrap();
    let path = s
        .store_dir()
        .join("manifests")
        .join(&good.manifest[..2])
        .join(&good.manifest);
    let json = zstd::decode_all(&fs::read(&path).unwrap()[..]).unwrap();
    let edited = String::from_utf8(json)
        .unwrap()
        .replace("\"d/f\"", "\"d/F\"");
    fs::write(&path, zstd::encode_all(edited.as_bytes(), 3).unwrap()).unwrap();
    let err = store
        .restore(&Owner::Local, "good", &s.out("good2"), RestoreMode::Copy)
        .unwrap_err();
    assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("hashes to"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The walk stays in the tree
// ---------------------------------------------------------------------------------------

#[test]
fn the_walk_never_follows_a_symlink_out_of_the_tree() {
    let s = Scratch::new("symlinks");
    let src = s.src("tree");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/real"), b"real").unwrap();
    std::os::unix::fs::symlink("/etc", src.join("etc")).unwrap();
    std::os::unix::fs::symlink("..", src.join("sub/parent")).unwrap();
    std::os::unix::fs::symlink(".", src.join("self")).unwrap();
    std::os::unix::fs::symlink(s.root.join("outside"), src.join("outside")).unwrap();
    let store = s.store();
    let info = snap(&store, &src, "t");
    assert_eq!(
        (info.files, info.dirs, info.symlinks),
        (1, 1, 4),
        "{info:?}"
    );
    assert_eq!(info.bytes, 4, "/etc was not read");
    store
        .restore(&Owner::Local, "t", &s.out("t"), RestoreMode::Copy)
        .unwrap();
    assert_eq!(fs::read_link(s.out("t/etc")).unwrap(), Path::new("/etc"));
    assert!(fs::symlink_metadata(s.out("t/etc"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_symlink_swapped_in_during_the_walk_does_not_lead_outside() {
    let s = Scratch::new("swap");
    let src = s.src("tree");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..50 {
        fs::write(src.join(format!("d/f{i}")), [i as u8]).unwrap();
    }
    // A twin that is a symlink to /etc; a thread swaps the two names atomically.
    std::os::unix::fs::symlink("/etc", src.join("twin")).unwrap();
    let etc_files = fs::read_dir("/etc").unwrap().count();
    assert!(etc_files > 100, "/etc is big enough to be noticed");
    let stop = Arc::new(AtomicBool::new(false));
    /// Stops the swapper however the test ends.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let guard = Stop(stop.clone());
    let swapper = {
        let src = src.clone();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let swapped = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    src.join("d"),
                    rustix::fs::CWD,
                    src.join("twin"),
                    rustix::fs::RenameFlags::EXCHANGE,
                );
                if swapped.is_err() {
                    break;
                }
                swaps += 1;
            }
            swaps
        })
    };
    let store = s.store();
    let started = Instant::now();
    let (mut taken, mut changed) = (0, 0);
    while started.elapsed() < Duration::from_secs(2) {
        let tag = format!("race-{taken}");
        match store.snapshot(
            &src,
            &Owner::Local,
            &tag,
            &SnapshotOptions::default(),
            &mut |_| {},
        ) {
            Ok(info) => {
                taken += 1;
                // The walk may meet the directory under both names while they swap
                // (both are inside the tree): at most its 50 one-byte files twice, and
                // nothing of /etc.
                assert!(
                    info.files <= 100 && info.bytes == info.files && info.dirs <= 2,
                    "{info:?}"
                );
            }
            Err(SnapshotError::Changed { .. }) => changed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    drop(guard);
    let swaps = swapper.join().unwrap();
    assert!(
        swaps > 100 && taken > 10,
        "swaps {swaps}, snapshots {taken}, changed {changed}"
    );
    // What was recorded, by name: only f0..f49 in d or twin, and twin as a symlink.
    for i in 0..taken {
        let dest = s.out(&format!("race-{i}"));
        store
            .restore(
                &Owner::Local,
                &format!("race-{i}"),
                &dest,
                RestoreMode::Copy,
            )
            .unwrap();
        for (path, node) in describe(&dest) {
            let path = String::from_utf8(path).unwrap();
            let ok = match node.kind {
                "dir" => path == "d" || path == "twin",
                "symlink" => node.content == b"/etc" && (path == "d" || path == "twin"),
                "file" => {
                    let (dir, name) = path.split_once('/').unwrap();
                    (dir == "d" || dir == "twin")
                        && name
                            .strip_prefix('f')
                            .and_then(|n| n.parse::<u32>().ok())
                            .is_some_and(|n| n < 50)
                }
                _ => false,
            };
            assert!(ok, "race-{i}: {path} ({})", node.kind);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hard links and reflinks
// ---------------------------------------------------------------------------------------

#[test]
fn hardlink_restore_links_read_only_files_from_the_cache() {
    let s = Scratch::new("hardlink");
    let src = s.src("tree");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/a.bin"), noise(500_000, 21)).unwrap();
    fs::write(src.join("b.txt"), b"text").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    chmod(&src.join("b.txt"), 0o755);
    set_mtime(&src.join("b.txt"), 1_234_567_890, 5);
    let store = s.store();
    snap(&store, &src, "t");

    let first = store
        .restore(&Owner::Local, "t", &s.out("one"), RestoreMode::Hardlink)
        .unwrap();
    // The store and the destination share a filesystem here, which allows hard links.
    assert_eq!(first.hardlinked, 3, "{first:?}");
    assert_eq!((first.copied, first.fallback.clone()), (0, None));
    let cache = s.usage("files");
    assert_eq!(cache.0, 3);

    let second = store
        .restore(&Owner::Local, "t", &s.out("two"), RestoreMode::Hardlink)
        .unwrap();
    assert_eq!(second.hardlinked, 3);
    assert_eq!(
        s.usage("files"),
        cache,
        "the second restore reuses the cache"
    );
    let (one, two) = (
        fs::metadata(s.out("one/b.txt")).unwrap(),
        fs::metadata(s.out("two/b.txt")).unwrap(),
    );
    assert_eq!(one.ino(), two.ino(), "the same inode");
    assert_eq!(one.mode() & 0o7777, 0o555, "read-only: write bits cleared");
    assert_eq!((one.mtime(), one.mtime_nsec()), (1_234_567_890, 5));
    assert_eq!(
        fs::read(s.out("two/d/a.bin")).unwrap(),
        fs::read(src.join("d/a.bin")).unwrap()
    );
    assert!(store.verify().unwrap().is_ok());

    // Someone makes a linked file writable and changes it: verify says so, and the
    // next restore does not hand out the changed content.
    let linked = s.out("one/b.txt");
    chmod(&linked, 0o755);
    fs::OpenOptions::new()
        .write(true)
        .open(&linked)
        .unwrap()
        .write_all(b"TEXT")
        .unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].kind, ObjectKind::CacheFile);
    assert!(report.broken_tags.is_empty(), "the chunks are intact");
    store
        .restore(&Owner::Local, "t", &s.out("three"), RestoreMode::Hardlink)
        .unwrap();
    assert_eq!(fs::read(s.out("three/b.txt")).unwrap(), b"text");
    assert!(store.verify().unwrap().is_ok());

    // Made writable through a link (`chmod -R u+w` on a restored tree): verify says
    // so, and gc drops those cached files; the next restore rebuilds them.
    chmod(&s.out("two/d/a.bin"), 0o644);
    let report = store.verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(report.problems[0].what.contains("gc"), "{report:?}");
    let gc = store.gc().unwrap();
    assert_eq!(gc.cache_files_removed, 1, "{gc:?}");
    assert!(store.verify().unwrap().is_ok());
    store
        .restore(&Owner::Local, "t", &s.out("four"), RestoreMode::Hardlink)
        .unwrap();
    assert_eq!(
        fs::metadata(s.out("four/d/a.bin")).unwrap().mode() & 0o777,
        0o444
    );
}

/// Whether the filesystem of `dir` clones files (FICLONE between two files in it).
fn reflinks_work(dir: &Path) -> bool {
    let (a, b) = (dir.join("probe-a"), dir.join("probe-b"));
    fs::write(&a, b"probe").unwrap();
    let cloned =
        rustix::fs::ioctl_ficlone(fs::File::create(&b).unwrap(), fs::File::open(&a).unwrap())
            .is_ok();
    let _ = (fs::remove_file(a), fs::remove_file(b));
    cloned
}

#[test]
fn reflink_restore_clones_or_says_why_it_copied() {
    let s = Scratch::new("reflink");
    let src = s.src("tree");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a.bin"), noise(300_000, 31)).unwrap();
    fs::write(src.join("b.txt"), b"text").unwrap();
    chmod(&src.join("b.txt"), 0o640);
    let store = s.store();
    snap(&store, &src, "t");
    let info = store
        .restore(&Owner::Local, "t", &s.out("r"), RestoreMode::Reflink)
        .unwrap();
    assert_eq!(info.reflinked + info.copied, 2, "{info:?}");
    if reflinks_work(&s.root) {
        // XFS, btrfs: every file cloned.
        assert_eq!(
            (info.reflinked, info.fallback.clone()),
            (2, None),
            "{info:?}"
        );
    } else {
        // ext4, tmpfs: copied, and the result says why.
        assert_eq!(info.copied, 2);
        let why = info.fallback.as_deref().expect("a copy is explained");
        assert!(why.contains("reflinks refused"), "{why}");
    }
    // Either way: own inodes with their own modes, the right bytes.
    let meta = fs::metadata(s.out("r/b.txt")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.nlink(), 1);
    assert_eq!(
        fs::read(s.out("r/a.bin")).unwrap(),
        fs::read(src.join("a.bin")).unwrap()
    );
    let copy = store
        .restore(&Owner::Local, "t", &s.out("c"), RestoreMode::Copy)
        .unwrap();
    assert_eq!((copy.copied, copy.reflinked, copy.fallback), (2, 0, None));
}

#[test]
fn read_only_directories_get_their_mode_after_their_contents() {
    let s = Scratch::new("readonly");
    let src = s.src("tree");
    fs::create_dir_all(src.join("ro")).unwrap();
    fs::write(src.join("ro/f"), b"x").unwrap();
    chmod(&src.join("ro"), 0o555);
    let store = s.store();
    snap(&store, &src, "t");
    chmod(&src.join("ro"), 0o755);
    store
        .restore(&Owner::Local, "t", &s.out("t"), RestoreMode::Copy)
        .unwrap();
    assert_eq!(fs::metadata(s.out("t/ro")).unwrap().mode() & 0o777, 0o555);
    assert_eq!(fs::read(s.out("t/ro/f")).unwrap(), b"x");
}

/// Snapshots belong to whoever took them: another owner can neither see, restore nor
/// remove one, and its "not found" is the one a missing tag gets.
#[test]
fn snapshots_are_their_owners_and_not_found_looks_the_same_for_others() {
    let s = Scratch::new("owners");
    let store = s.store();
    fs::create_dir_all(s.src("a")).unwrap();
    fs::write(s.src("a/secret.txt"), "tenant a").unwrap();
    let (a, b) = (
        Owner::Key("aaaa11112222".into()),
        Owner::Key("bbbb33334444".into()),
    );
    let opts = SnapshotOptions::default();
    store
        .snapshot(&s.src("a"), &a, "shared-name", &opts, &mut |_| {})
        .unwrap();
    // The same tag for another owner is another snapshot.
    store
        .snapshot(
            &s.src("a"),
            &Owner::Local,
            "shared-name",
            &opts,
            &mut |_| {},
        )
        .unwrap();
    let missing = store.info(&b, "never-made").unwrap_err().to_string();
    let theirs = store.info(&b, "shared-name").unwrap_err().to_string();
    assert_eq!(
        missing.replace("never-made", "X"),
        theirs.replace("shared-name", "X")
    );
    assert!(matches!(
        store.restore(&b, "shared-name", &s.out("b"), RestoreMode::Copy),
        Err(SnapshotError::NotFound(_))
    ));
    assert!(!s.out("b").exists());
    assert!(matches!(
        store.remove(&b, "shared-name"),
        Err(SnapshotError::NotFound(_))
    ));
    let tags = |o: Option<&Owner>| -> Vec<(Owner, String)> {
        store
            .list(o)
            .unwrap()
            .into_iter()
            .map(|i| (i.owner, i.tag))
            .collect()
    };
    assert_eq!(tags(Some(&a)), [(a.clone(), "shared-name".to_string())]);
    assert!(tags(Some(&b)).is_empty());
    assert_eq!(tags(None).len(), 2);
    store
        .restore(&a, "shared-name", &s.out("a"), RestoreMode::Copy)
        .unwrap();
    assert_eq!(
        fs::read_to_string(s.out("a/secret.txt")).unwrap(),
        "tenant a"
    );
    store.remove(&a, "shared-name").unwrap();
    assert_eq!(tags(None), [(Owner::Local, "shared-name".to_string())]);
}
