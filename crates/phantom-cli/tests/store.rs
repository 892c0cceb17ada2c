//! `phantom store` as a user meets it: snapshot a directory, see it in `list --json`,
//! restore it byte for byte, snapshot it again for nothing new, rm + gc, verify a
//! healthy and a corrupted store (exit 1, naming the chunk and the broken snapshots);
//! bad input is one line and exit 2. The store is a temporary one
//! (`PHANTOM_STATE_DIR`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{phantom, PhantomOutput};
use serde_json::Value;

/// A temporary state directory and a scratch area, removed on drop.
struct State(PathBuf);

impl State {
    fn new(tag: &str) -> State {
        let dir =
            std::env::temp_dir().join(format!("phantom-store-cli-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("state")).unwrap();
        fs::create_dir_all(dir.join("src/sub")).unwrap();
        fs::write(dir.join("src/hello.txt"), b"hello\n").unwrap();
        fs::write(dir.join("src/sub/data.bin"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("src/sub/link")).unwrap();
        State(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn store(&self, args: &[&str]) -> PhantomOutput {
        let mut all = vec!["store"];
        all.extend_from_slice(args);
        phantom(&all, |cmd| {
            cmd.env("PHANTOM_STATE_DIR", self.0.join("state"));
        })
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.store(args);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwX"])
            .arg(&self.0)
            .status();
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A one-line error with exit code 2.
fn assert_usage_error(out: &PhantomOutput, needle: &str) {
    assert_eq!(out.code, Some(2), "{}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(
        lines[0].starts_with("phantom: error: "),
        "{}",
        out.describe()
    );
    assert!(lines[0].contains(needle), "{}", out.describe());
}

fn same_file(a: &Path, b: &Path) {
    assert_eq!(
        fs::read(a).unwrap(),
        fs::read(b).unwrap(),
        "{}",
        b.display()
    );
}

#[test]
fn snapshot_list_restore_gc_verify() {
    let st = State::new("flow");
    let src = st.path("src");
    let src_arg = src.to_str().unwrap();
    let info = st.json(&["snapshot", src_arg, "--tag", "one", "--json"]);
    assert_eq!(info["files"], 2);
    assert_eq!(info["symlinks"], 1);
    assert!(info["new_chunks"].as_u64().unwrap() > 0);
    assert!(st.path("state/snapshots/tags/one").is_file());

    // Again, unchanged: nothing new stored.
    let out = st.store(&["snapshot", src_arg, "--tag", "two"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("nothing new stored"),
        "{}",
        out.describe()
    );

    let list = st.json(&["list", "--json"]);
    let tags: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["one", "two"]);
    assert_eq!(list[0]["manifest"], list[1]["manifest"]);
    let table = st.store(&["list"]);
    assert!(table.stdout.starts_with("TAG"), "{}", table.describe());

    let dest = st.path("restored");
    let restored = st.json(&["restore", "one", dest.to_str().unwrap(), "--json"]);
    assert_eq!(restored["copied"], 2);
    same_file(&src.join("hello.txt"), &dest.join("hello.txt"));
    same_file(&src.join("sub/data.bin"), &dest.join("sub/data.bin"));
    assert_eq!(
        fs::read_link(dest.join("sub/link")).unwrap(),
        Path::new("/etc/passwd")
    );

    let linked = st.store(&[
        "restore",
        "one",
        st.path("linked").to_str().unwrap(),
        "--link",
        "hardlink",
    ]);
    assert_eq!(linked.code, Some(0), "{}", linked.describe());
    assert!(
        linked.stdout.contains("hard-linked"),
        "{}",
        linked.describe()
    );
    same_file(&src.join("sub/data.bin"), &st.path("linked/sub/data.bin"));

    let out = st.store(&["rm", "two"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let gc = st.json(&["gc", "--json"]);
    assert_eq!(gc["chunks_removed"], 0, "`one` still uses every chunk");

    let verify = st.store(&["verify"]);
    assert_eq!(verify.code, Some(0), "{}", verify.describe());
    assert!(
        verify.stdout.starts_with("ok: 1 snapshots"),
        "{}",
        verify.describe()
    );

    let out = st.store(&["rm", "one"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let gc = st.json(&["gc", "--json"]);
    assert!(gc["chunks_removed"].as_u64().unwrap() > 0, "{gc}");
    assert!(gc["bytes_freed"].as_u64().unwrap() > 0, "{gc}");
    assert!(st.json(&["list", "--json"]).as_array().unwrap().is_empty());
}

#[test]
fn verify_exits_1_and_names_the_chunk_and_the_broken_snapshots() {
    let st = State::new("verify");
    let src = st.path("src");
    let src_arg = src.to_str().unwrap();
    st.json(&["snapshot", src_arg, "--tag", "a", "--json"]);
    st.json(&["snapshot", src_arg, "--tag", "b", "--json"]);
    // Corrupt every chunk (there are only a few): both tags break.
    let chunks = st.path("state/snapshots/chunks");
    let mut flipped = Vec::new();
    for fan in fs::read_dir(&chunks).unwrap() {
        for chunk in fs::read_dir(fan.unwrap().path()).unwrap() {
            let path = chunk.unwrap().path();
            let mut bytes = fs::read(&path).unwrap();
            let i = bytes.len() / 2;
            bytes[i] ^= 0x10;
            fs::write(&path, bytes).unwrap();
            flipped.push(path.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    assert!(!flipped.is_empty());

    let out = st.store(&["verify"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    for hash in &flipped {
        assert!(out.stdout.contains(hash), "{}", out.describe());
    }
    assert!(
        out.stdout.contains("broken snapshots: a, b"),
        "{}",
        out.describe()
    );

    let out = st.store(&["verify", "--json"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["broken_tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        report["problems"].as_array().unwrap().len(),
        flipped.len(),
        "{report}"
    );

    // A restore of a broken snapshot fails (exit 1) and leaves nothing behind.
    let dest = st.path("broken");
    let out = st.store(&["restore", "a", dest.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.starts_with("phantom: error: "),
        "{}",
        out.describe()
    );
    assert!(!dest.exists());
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let st = State::new("bad");
    let src = st.path("src");
    let src_arg = src.to_str().unwrap();
    assert_usage_error(
        &st.store(&["snapshot", src_arg, "--tag", "a/b"]),
        "invalid snapshot tag",
    );
    assert_usage_error(
        &st.store(&["snapshot", src_arg, "--tag", ".."]),
        "invalid snapshot tag",
    );
    assert_usage_error(
        &st.store(&["snapshot", st.path("nope").to_str().unwrap(), "--tag", "x"]),
        "no such directory",
    );
    assert_usage_error(
        &st.store(&["snapshot", src_arg, "--tag", "big", "--max-files", "2"]),
        "--max-files",
    );
    st.json(&["snapshot", src_arg, "--tag", "t", "--json"]);
    assert_usage_error(
        &st.store(&["snapshot", src_arg, "--tag", "t"]),
        "exists already",
    );
    let replaced = st.store(&["snapshot", src_arg, "--tag", "t", "--replace"]);
    assert_eq!(replaced.code, Some(0), "{}", replaced.describe());
    assert_usage_error(
        &st.store(&["restore", "missing", st.path("x").to_str().unwrap()]),
        "no snapshot tagged `missing`",
    );
    assert!(!st.path("x").exists());
    // A non-empty destination: refused, and its content kept.
    let busy = st.path("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("mine"), b"keep").unwrap();
    assert_usage_error(
        &st.store(&["restore", "t", busy.to_str().unwrap()]),
        "not empty",
    );
    assert_eq!(fs::read(busy.join("mine")).unwrap(), b"keep");
    assert_usage_error(&st.store(&["rm", "missing"]), "no snapshot tagged");
    let out = st.store(&[
        "restore",
        "t",
        st.path("y").to_str().unwrap(),
        "--link",
        "bogus",
    ]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
}
