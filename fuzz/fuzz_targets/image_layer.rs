//! Applying a layer (`unpack.rs`: whiteouts, opaque directories, hard links, symlinks,
//! modes, gzip and zstd) to a fresh directory, as an image import does.
//!
//! Holds: no panic, no hang, bounded memory and disk (the import's limits, set small
//! here); nothing is created, linked or changed outside the root: the scratch
//! directory holding the root keeps only the root and an untouched sentinel file.
#![no_main]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use phantom_image::fuzzing::apply_layer;
use phantom_image::ImportOptions;

const SENTINEL: &[u8] = b"outside the root\n";

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // scripts/fuzz.sh names a scratch directory it removes afterwards; else a tmpfs
        // when there is one (an iteration creates and removes a tree).
        let base = match std::env::var_os("PHANTOM_FUZZ_SCRATCH") {
            Some(dir) => PathBuf::from(dir),
            None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("phantom-fuzz-layer.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch directory");
        fs::write(dir.join("sentinel"), SENTINEL).unwrap();
        fs::set_permissions(dir.join("sentinel"), fs::Permissions::from_mode(0o644)).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir(&root).unwrap();
    let options = ImportOptions {
        keep_setuid: false,
        max_bytes: 1 << 20,
        max_entries: 512,
    };
    if let Ok(stats) = apply_layer(&root, data, &options) {
        assert!(stats.bytes_written <= options.max_bytes);
        assert!(stats.entries <= options.max_entries);
    }
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["root", "sentinel"],
        "something was created beside the root"
    );
    let sentinel = dir.join("sentinel");
    let meta = fs::symlink_metadata(&sentinel).unwrap();
    assert!(
        meta.is_file() && meta.nlink() == 1,
        "the sentinel was linked or replaced"
    );
    assert_eq!(
        fs::read(&sentinel).unwrap(),
        SENTINEL,
        "the sentinel was written"
    );
    assert_eq!(meta.mode() & 0o7777, 0o644, "the sentinel's mode changed");
    fs::remove_dir_all(&root).unwrap();
});
