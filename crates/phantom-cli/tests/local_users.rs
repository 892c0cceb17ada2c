//! Other users of the same host: what one local user can do to another's runs through
//! the predictable paths phantom uses (an unprivileged user's private directory and
//! supervisor socket under the world-writable /dev/shm). Root is needed to play both
//! users; elsewhere these tests say `skipped`.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{is_root, sandbox_available};

/// A copy of `phantom` that any user can run, in a directory removed on drop.
struct Staged(PathBuf);

impl Staged {
    fn new() -> Staged {
        let dir = std::env::temp_dir().join(format!(
            "phantom-local-users-{}-{}",
            std::process::id(),
            common::unique()
        ));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(common::phantom_bin(), dir.join("phantom")).unwrap();
        fs::set_permissions(dir.join("phantom"), fs::Permissions::from_mode(0o755)).unwrap();
        Staged(dir)
    }

    fn phantom(&self) -> PathBuf {
        self.0.join("phantom")
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Every `/dev/shm/phantom-<uid>` and `phantom-<uid>.*` directory, removed on drop.
struct PrivateDirs(u32);

impl PrivateDirs {
    fn list(&self) -> Vec<PathBuf> {
        let name = format!("phantom-{}", self.0);
        let mut found: Vec<PathBuf> = fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n == name || n.starts_with(&format!("{name}."))
            })
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }
}

impl Drop for PrivateDirs {
    fn drop(&mut self) {
        for dir in self.list() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Two uids no account uses, different per test process.
fn two_uids() -> (u32, u32) {
    let base = 61_000 + (std::process::id() % 2_000) * 2;
    (base, base + 1)
}

#[test]
fn a_squatted_private_directory_never_receives_a_run_and_cold_runs_still_work() {
    if !sandbox_available() {
        return;
    }
    if !is_root() {
        return common::skip("needs root, to play the victim and the squatter");
    }
    if !Path::new("/dev/shm").is_dir() {
        return common::skip("no /dev/shm");
    }
    let (victim, squatter) = two_uids();
    let dirs = PrivateDirs(victim);
    let staged = Staged::new();
    // The squatter creates the victim's directory first, open to everyone, and listens
    // where the victim's `phantom run` looks for a supervisor.
    let squat = Path::new("/dev/shm").join(format!("phantom-{victim}"));
    let _ = fs::remove_dir_all(&squat);
    fs::create_dir(&squat).unwrap();
    fs::set_permissions(&squat, fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&squat, Some(squatter), Some(squatter)).unwrap();
    let listener = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
        s.bind(sys.argv[1]); s.listen(8); s.settimeout(30)\n\
        print('listening', flush=True)\n\
        try:\n    c, _ = s.accept(); print('GOT', c.recv(65536), flush=True)\n\
        except Exception as e:\n    print('none', e, flush=True)\n";
    let mut spy = Command::new("/usr/bin/python3")
        .args(["-c", listener])
        .arg(squat.join("supervisor.sock"))
        .uid(squatter)
        .gid(squatter)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut spy_out = BufReader::new(spy.stdout.take().unwrap());
    let mut line = String::new();
    spy_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");

    let run = |secret: &str| {
        let mut cmd = Command::new(staged.phantom());
        cmd.args(["run", "--env", &format!("SECRET={secret}"), "--"])
            .args(["sh", "-c", "echo \"ran with $SECRET\""])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/tmp")
            .current_dir("/")
            .uid(victim)
            .gid(victim);
        common::run_with_deadline(cmd, Duration::from_secs(60))
    };
    for secret in ["s3cret-1", "s3cret-2"] {
        let out = run(secret);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert_eq!(
            out.stdout,
            format!("ran with {secret}\n"),
            "{}",
            out.describe()
        );
        assert!(
            out.stderr.contains(&format!("belongs to uid {squatter}")),
            "the squat must be reported: {}",
            out.describe()
        );
    }
    // The squatter's socket never saw a connection.
    let _ = spy.kill();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut spy_out, &mut rest);
    let _ = spy.wait();
    assert!(
        !rest.contains("GOT"),
        "the squatter received a request: {rest}"
    );
    // The runs used one private directory of the victim's own beside the squat.
    let own: Vec<PathBuf> = dirs.list().into_iter().filter(|d| *d != squat).collect();
    assert_eq!(own.len(), 1, "{own:?}");
    let meta = fs::metadata(&own[0]).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (victim, 0o700));
}
