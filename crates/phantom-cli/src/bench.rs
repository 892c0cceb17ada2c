//! `phantom benchmark`: start-up latency of phantom against the peers installed on
//! this host, measured side by side in one run (interleaved, so that machine noise
//! hits every contender alike). A benchmark prints figures; it never fails on time.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  phantom benchmark cold --iterations 200 --compare bwrap
  phantom benchmark --all --iterations 1000          # every kind below, in turn
  phantom benchmark --compare docker                 # cold, with Docker when one answers
  phantom benchmark --fragment zygote --profile python-dev
  phantom benchmark warm --iterations 200
  phantom benchmark image --image debian:bookworm --iterations 100

cold: each iteration runs every contender once, in turn: `phantom run -- true`, the same
under `bwrap --unshare-all` (when bubblewrap is installed), a bare host /bin/true, and
the same three for `python3 -c pass`.

warm: starts its own phantom-supervisor (pools of default and python-dev, on a private
socket) and compares `phantom run -- true` served from the pool with a cold run and a
bare host /bin/true, and `python3 -c 'print(1)'` warm (default profile), pre-started
(python-dev) and bare; it reports how many runs were actually served from the pools.

net: a server on the host's loopback; a python3 client connects to it directly (on the
host) and from a `network: limited` sandbox through phantom's egress proxy (CONNECT),
and measures connection set-up, 1-byte round trips and a bulk transfer (--io-size).

image: `phantom run --cold -- true` on the host root against the same on an image's root
(`--image NAME`, which needs `true` on its PATH), and a bare host /bin/true.

http: starts phantom-supervisor --bind on loopback (pools of default, --pool N sandboxes)
and sends --iterations runs of `true`, --concurrency at a time (default 8 here), through
POST /api/v2/run, interleaved in rounds with a pool of as many threads each starting
`bwrap ... true` (--compare bwrap); then python3 print(1); then `true` from one client
on one kept-alive connection: runs per second and latency.

load: a supervisor with a pool of --pool default sandboxes; `phantom run -- true`
through it against `phantom run --cold -- true`, --concurrency at a time (default 4
here), interleaved in rounds: runs per second, latency, and how many pooled runs were
served warm.

sandbox: creates a persistent sandbox (in a temporary state directory) and compares
`phantom exec NAME -- true` (and python3 -c pass) with a cold `phantom run`, then copies
a file of --io-size into it with `phantom cp` against a plain cp on the same filesystem
(median of up to 5 rounds).

Times are wall-clock from spawn to exit, as a user sees them.")]
pub struct BenchArgs {
    /// What to measure (default: cold).
    #[arg(value_enum)]
    what: Option<BenchKind>,
    /// Every kind, one after the other (as `all`).
    #[arg(long, conflicts_with_all = ["what", "fragment"])]
    all: bool,
    /// The start path ("fragment") to measure: a kind by another name, e.g. zygote,
    /// warm, cold.
    #[arg(long, value_enum, value_name = "KIND", conflicts_with = "what")]
    fragment: Option<BenchKind>,
    /// The profile phantom's runs use (cold, warm, sandbox: `--profile P` on each run;
    /// zygote: the python profile whose zygote is forked). Default: the built-in
    /// defaults (default, python-dev).
    #[arg(long, value_name = "PROFILE")]
    pub(crate) profile: Option<String>,
    /// Runs per contender.
    #[arg(long, default_value_t = 100)]
    pub(crate) iterations: usize,
    /// Peer to compare with: bwrap, or docker (cold: `docker run --rm` of the same
    /// command, when a Docker engine answers; a note says so when none does). Skipped
    /// with a note when not installed.
    #[arg(long, value_name = "PEER", default_value = "bwrap")]
    pub(crate) compare: Vec<String>,
    /// Sandboxes in the warm benchmark's pool.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pool: usize,
    /// The image the `image` benchmark runs on (see `phantom image list`).
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// Warm runs started at once after the warm latency runs (0: none).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) concurrency: usize,
    /// Bytes the `io` benchmark writes and reads (e.g. 1GiB, 256MB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    io_size: String,
    /// `memory`: also measure with KSM switched on for the measurement (root; KSM is
    /// restored to its previous state afterwards).
    #[arg(long)]
    ksm: bool,
    /// The image `--compare docker` runs (it must be in Docker's local store and have
    /// `true`; python rows also need python3).
    #[arg(long, value_name = "IMAGE", default_value = "python:3-slim")]
    docker_image: String,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

impl BenchArgs {
    /// The kind asked for: the positional, `--fragment`, `--all`, else cold.
    fn kind(&self) -> BenchKind {
        if self.all {
            return BenchKind::All;
        }
        self.what.or(self.fragment).unwrap_or(BenchKind::Cold)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BenchKind {
    /// Cold start: a fresh sandbox per run.
    Cold,
    /// Warm start: a sandbox from a phantom-supervisor pool per run.
    Warm,
    /// Cold start on an image's root against the host root.
    Image,
    /// Memory per pooled sandbox (PSS), with the supervisor's share, and KSM.
    Memory,
    /// Write and read throughput in /workspace against the host filesystem.
    Io,
    /// `phantom exec` into a persistent sandbox against a cold `phantom run`, and
    /// `phantom cp` into it against a plain cp.
    Sandbox,
    /// Sustained one-shot runs per second through the HTTP API (phantom-supervisor
    /// --bind), with latency percentiles under that load.
    Http,
    /// Latency and throughput through the egress proxy (network limited) against a
    /// direct loopback connection.
    Net,
    /// Sustained `phantom run -- true` at --concurrency (default 4 here) through a
    /// supervisor's pool against `phantom run --cold`: is pooled ever slower?
    Load,
    /// Python forked from a zygote (python-dev, python-data) against bare python3 and
    /// bwrap: `print(1)` latency through the engine client and `phantom run`, runs/s
    /// at --concurrency (default 4 here), `import pandas`, and the PSS of a fork.
    Zygote,
    /// cold, warm, memory, io, sandbox and net (and image with --image), one after
    /// the other.
    All,
}

#[derive(Serialize, Debug)]
pub(crate) struct Stats {
    pub(crate) name: String,
    command: String,
    runs: usize,
    failures: usize,
    pub(crate) p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

impl Stats {
    /// Percentiles and mean of one contender's `samples` (ms).
    pub(crate) fn of(name: &str, command: String, samples: &[f64], failures: usize) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Stats {
            name: name.to_string(),
            command,
            runs: s.len(),
            failures,
            p50_ms: percentile(&s, 50.0),
            p95_ms: percentile(&s, 95.0),
            p99_ms: percentile(&s, 99.0),
            mean_ms: if s.is_empty() {
                f64::NAN
            } else {
                s.iter().sum::<f64>() / s.len() as f64
            },
        }
    }
}

/// Print latency rows as a table, names `width` wide.
pub(crate) fn print_stats(stats: &[Stats], width: usize) {
    println!(
        "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "contender", "p50 ms", "p95 ms", "p99 ms", "mean ms", "fail"
    );
    for s in stats {
        println!(
            "{:<width$} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>5}",
            s.name, s.p50_ms, s.p95_ms, s.p99_ms, s.mean_ms, s.failures
        );
    }
}

/// bwrap's path when `--compare` names it and it is installed; else a note saying so
/// (`missing`: what the benchmark does without it).
pub(crate) fn bwrap_peer(
    args: &BenchArgs,
    notes: &mut Vec<String>,
    missing: &str,
) -> Option<String> {
    let bwrap = args
        .compare
        .iter()
        .any(|p| p == "bwrap")
        .then(|| which("bwrap"))
        .flatten();
    if bwrap.is_none() {
        notes.push(format!(
            "bwrap not installed (apt-get install bubblewrap): {missing}"
        ));
    }
    bwrap
}

#[derive(Serialize, Debug)]
struct Ratio {
    what: String,
    p50: f64,
    p95: f64,
}

struct Contender {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, PathBuf)>,
    samples: Vec<f64>,
    failures: usize,
}

impl Contender {
    fn new(name: &str, argv: &[&str]) -> Contender {
        Contender {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            samples: Vec::new(),
            failures: 0,
        }
    }

    fn with_socket(mut self, socket: &Path) -> Contender {
        self.env
            .push(("PHANTOM_SUPERVISOR_SOCKET".into(), socket.to_path_buf()));
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

pub(crate) fn which(name: &str) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) fn bwrap_argv(bwrap: &str, cmd: &[&str]) -> Vec<String> {
    // The same shape of sandbox as phantom's default profile: all namespaces, a
    // read-only /usr with the merged-/usr symlinks, fresh /proc, /dev and /tmp.
    let mut v: Vec<String> = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--ro-bind",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--dir",
        "/workspace",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(cmd.iter().map(|s| s.to_string()));
    v
}

/// A phantom-supervisor on a private socket, stopped on drop.
pub(crate) struct BenchSupervisor {
    child: Child,
    dir: PathBuf,
    pub(crate) socket: PathBuf,
}

impl BenchSupervisor {
    /// Pools of default and python-dev, and of `profile` when it is another built-in.
    fn start(me: &Path, pool: usize, profile: Option<&str>) -> Result<BenchSupervisor, String> {
        let pool = pool.to_string();
        let mut profiles = "default,python-dev".to_string();
        if let Some(p) = profile.filter(|p| !["default", "python-dev"].contains(p)) {
            if phantom_policy::builtin_names().contains(&p) {
                profiles = format!("{profiles},{p}");
            }
        }
        BenchSupervisor::start_with(me, &["--profiles", &profiles, "--zygote-pools", &pool])
    }

    /// A supervisor with `args` (its pools); waits until they are full or their
    /// zygotes ready.
    pub(crate) fn start_with(me: &Path, args: &[&str]) -> Result<BenchSupervisor, String> {
        let bin = me.with_file_name("phantom-supervisor");
        if !bin.exists() {
            return Err(format!(
                "{} not found (build it with `cargo build --release`)",
                bin.display()
            ));
        }
        let dir = std::env::temp_dir().join(format!("phantom-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let socket = dir.join("supervisor.sock");
        let child = Command::new(&bin)
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let sup = BenchSupervisor { child, dir, socket };
        sup.wait_full(Duration::from_secs(30))?;
        Ok(sup)
    }

    pub(crate) fn status(&self) -> Option<phantom_api::engine::PoolStatus> {
        phantom_engine::EngineClient::at(self.socket.clone())
            .pools()
            .ok()
    }

    /// Wait until the pool is full again (so that every measured run can be warm).
    pub(crate) fn wait_full(&self, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(s) = self.status() {
                if s.pools.iter().all(|p| p.is_full()) {
                    return Ok(());
                }
            }
            if started.elapsed() > limit {
                return Err("the supervisor's pool did not fill in time".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for BenchSupervisor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn benchmark(args: BenchArgs) -> i32 {
    if let Some(p) = &args.profile {
        if let Err(e) = check_profile(p) {
            crate::error_line(e);
            return 2;
        }
    }
    let kinds: Vec<BenchKind> = match args.kind() {
        BenchKind::All => {
            let mut k = vec![
                BenchKind::Cold,
                BenchKind::Warm,
                BenchKind::Memory,
                BenchKind::Io,
                BenchKind::Sandbox,
                BenchKind::Net,
            ];
            if args.image.is_some() {
                k.push(BenchKind::Image);
            }
            k
        }
        k => vec![k],
    };
    let mut results = serde_json::Map::new();
    for kind in kinds {
        let result = match kind {
            BenchKind::Memory => memory(&args),
            BenchKind::Io => io(&args),
            BenchKind::Http => http(&args),
            BenchKind::Net => net(&args),
            BenchKind::Load => load(&args),
            BenchKind::Zygote => crate::bench_zygote::zygote(&args),
            _ => latency(&args, kind),
        };
        match result {
            Ok(v) => {
                results.insert(kind_name(kind).to_string(), v);
            }
            Err((code, msg)) => {
                crate::error_line(msg);
                return code;
            }
        }
        if !args.json {
            println!();
        }
    }
    if args.json {
        let out = if results.len() == 1 {
            results
                .into_iter()
                .next()
                .map(|(_, v)| v)
                .unwrap_or_default()
        } else {
            serde_json::Value::Object(results)
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
    }
    0
}

/// `--profile`: a profile phantom knows (built-in, or a file path).
fn check_profile(name: &str) -> Result<(), String> {
    if phantom_policy::builtin_names().contains(&name) || Path::new(name).is_file() {
        return Ok(());
    }
    Err(format!(
        "--profile {name}: unknown profile; built-in profiles: {}",
        phantom_policy::builtin_names().join(", ")
    ))
}

/// `phantom run` with the benchmark's `--profile`, if any, before `rest`.
fn run_argv(me: &str, profile: Option<&str>, rest: &[&str]) -> Vec<String> {
    let mut argv = vec![me.to_string(), "run".to_string()];
    if let Some(p) = profile {
        argv.extend(["--profile".to_string(), p.to_string()]);
    }
    argv.extend(rest.iter().map(|s| s.to_string()));
    argv
}

/// Whether a Docker engine answers (`docker info`, 10 s at most): Ok, or why not.
fn docker_answers() -> Result<String, String> {
    let Some(docker) = which("docker") else {
        return Err("docker is not installed".into());
    };
    let mut child = Command::new(&docker)
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{docker}: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("`docker info` did not answer in 10 s".into());
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(docker);
    }
    let why = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "no Docker engine answers (`docker info`: {})",
        why.lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed")
            .trim()
    ))
}

fn kind_name(kind: BenchKind) -> &'static str {
    match kind {
        BenchKind::Cold => "cold",
        BenchKind::Warm => "warm",
        BenchKind::Image => "image",
        BenchKind::Memory => "memory",
        BenchKind::Io => "io",
        BenchKind::Sandbox => "sandbox",
        BenchKind::Http => "http",
        BenchKind::Net => "net",
        BenchKind::Load => "load",
        BenchKind::Zygote => "zygote",
        BenchKind::All => "all",
    }
}

pub(crate) fn current_exe() -> Result<PathBuf, (i32, String)> {
    std::env::current_exe().map_err(|e| (1, format!("cannot find the phantom binary: {e}")))
}

/// A failed benchmark: exit code and message.
pub(crate) type BenchError = (i32, String);

/// cold, warm and image: start-up latency of interleaved contenders.
fn latency(args: &BenchArgs, kind: BenchKind) -> Result<serde_json::Value, BenchError> {
    let me = current_exe()?;
    let me_s = me.display().to_string();
    let python = "/usr/bin/python3";
    let have_python = Path::new(python).exists();
    let mut notes = Vec::new();
    if !have_python {
        notes.push(format!("{python} not found: python rows skipped"));
    }
    let mut contenders = Vec::new();
    let mut supervisor = None;
    let mut sandbox: Option<BenchSandbox> = None;
    match kind {
        BenchKind::Cold => {
            let profile = args.profile.as_deref();
            let phantom = |rest: &[&str]| Contender {
                argv: run_argv(&me_s, profile, rest),
                ..Contender::new("", &[])
            };
            contenders.push(Contender {
                name: "phantom true".into(),
                ..phantom(&["--cold", "--", "true"])
            });
            contenders.push(Contender::new("host true", &["/bin/true"]));
            if have_python {
                contenders.push(Contender {
                    name: "phantom python".into(),
                    ..phantom(&["--cold", "--", "python3", "-c", "pass"])
                });
                contenders.push(Contender::new("host python", &[python, "-c", "pass"]));
            }
            for peer in &args.compare {
                match (peer.as_str(), which(peer)) {
                    ("bwrap", Some(bwrap)) => {
                        let argv = bwrap_argv(&bwrap, &["true"]);
                        let mut c = Contender::new("bwrap true", &[]);
                        c.argv = argv;
                        contenders.push(c);
                        if have_python {
                            let mut c = Contender::new("bwrap python", &[]);
                            c.argv = bwrap_argv(&bwrap, &["python3", "-c", "pass"]);
                            contenders.push(c);
                        }
                    }
                    ("bwrap", None) => notes.push(
                        "bwrap not installed (apt-get install bubblewrap): no comparison".into(),
                    ),
                    ("docker", _) => match docker_answers() {
                        Ok(docker) => {
                            let image = args.docker_image.as_str();
                            let run = |cmd: &[&str]| {
                                let mut argv = vec![
                                    docker.as_str(),
                                    "run",
                                    "--rm",
                                    "--network",
                                    "none",
                                    image,
                                ];
                                argv.extend_from_slice(cmd);
                                argv.iter().map(|s| s.to_string()).collect()
                            };
                            let mut c = Contender::new("docker true", &[]);
                            c.argv = run(&["true"]);
                            contenders.push(c);
                            if have_python {
                                let mut c = Contender::new("docker python", &[]);
                                c.argv = run(&["python3", "-c", "pass"]);
                                contenders.push(c);
                            }
                        }
                        Err(why) => notes.push(format!("docker: {why}: no comparison")),
                    },
                    (other, _) => notes.push(format!(
                        "unknown peer `{other}`: supported peers are bwrap and docker"
                    )),
                }
            }
        }
        BenchKind::Warm => {
            let sup = match BenchSupervisor::start(&me, args.pool, args.profile.as_deref()) {
                Ok(s) => s,
                Err(e) => return Err((1, e)),
            };
            contenders.push(
                Contender {
                    name: "warm true".into(),
                    argv: run_argv(&me_s, args.profile.as_deref(), &["--", "true"]),
                    ..Contender::new("", &[])
                }
                .with_socket(&sup.socket),
            );
            contenders.push(Contender::new(
                "cold true",
                &[&me_s, "run", "--cold", "--", "true"],
            ));
            contenders.push(Contender::new("host true", &["/bin/true"]));
            if have_python {
                contenders.push(
                    Contender::new(
                        "warm python",
                        &[&me_s, "run", "--", "python3", "-c", "print(1)"],
                    )
                    .with_socket(&sup.socket),
                );
                contenders.push(
                    Contender::new(
                        "prewarmed python",
                        &[
                            &me_s,
                            "run",
                            "--profile",
                            "python-dev",
                            "--",
                            "python3",
                            "-c",
                            "print(1)",
                        ],
                    )
                    .with_socket(&sup.socket),
                );
                contenders.push(Contender::new("host python", &[python, "-c", "print(1)"]));
            }
            supervisor = Some(sup);
        }
        BenchKind::Memory
        | BenchKind::Io
        | BenchKind::Http
        | BenchKind::Net
        | BenchKind::Load
        | BenchKind::Zygote
        | BenchKind::All => {
            unreachable!("not a latency benchmark")
        }
        BenchKind::Sandbox => {
            let sb = BenchSandbox::create(&me).map_err(|e| (1, e))?;
            let exec = |name: &str, cmd: &[&str]| {
                let mut argv = vec![me_s.as_str(), "exec", "bench", "--"];
                argv.extend_from_slice(cmd);
                let mut c = Contender::new(name, &argv);
                c.env.push(("PHANTOM_STATE_DIR".into(), sb.state.clone()));
                c
            };
            contenders.push(exec("exec true", &["true"]));
            contenders.push(Contender::new(
                "cold true",
                &[&me_s, "run", "--cold", "--", "true"],
            ));
            contenders.push(Contender::new("host true", &["/bin/true"]));
            if have_python {
                contenders.push(exec("exec python", &["python3", "-c", "pass"]));
                contenders.push(Contender::new(
                    "cold python",
                    &[&me_s, "run", "--cold", "--", "python3", "-c", "pass"],
                ));
            }
            sandbox = Some(sb);
        }
        BenchKind::Image => {
            let Some(image) = args.image.as_deref() else {
                return Err((
                    2,
                    "benchmark image needs --image NAME (see `phantom image list`)".into(),
                ));
            };
            contenders.push(Contender::new(
                "host root true",
                &[&me_s, "run", "--cold", "--", "true"],
            ));
            contenders.push(Contender::new(
                "image true",
                &[&me_s, "run", "--cold", "--image", image, "--", "true"],
            ));
            contenders.push(Contender::new("host true", &["/bin/true"]));
        }
    }
    let progress = std::io::stderr().is_terminal() && !args.json;
    // One warm-up round so that page cache and binaries are hot for everyone.
    for c in &contenders {
        let _ = c.command().status();
    }
    let counts = |sup: &BenchSupervisor| {
        sup.status().map(|s| {
            let sum =
                |f: fn(&phantom_api::engine::PoolInfo) -> u64| s.pools.iter().map(f).sum::<u64>();
            (
                sum(|p| p.hits),
                sum(|p| p.misses),
                sum(|p| p.prewarmed_hits),
            )
        })
    };
    let before = supervisor.as_ref().and_then(counts);
    let existing = leftovers();
    for i in 0..args.iterations {
        for c in contenders.iter_mut() {
            if let Some(sup) = &supervisor {
                if !c.env.is_empty() {
                    // Measure a warm start, not a refill race: the pool refills between runs.
                    let _ = sup.wait_full(Duration::from_secs(10));
                }
            }
            let t = Instant::now();
            let ok = c.command().status().map(|s| s.success()).unwrap_or(false);
            let elapsed = t.elapsed().as_secs_f64() * 1000.0;
            if ok {
                c.samples.push(elapsed);
            } else {
                c.failures += 1;
            }
        }
        if progress && (i + 1) % 10 == 0 {
            eprint!("\r[{}/{}]", i + 1, args.iterations);
        }
    }
    if progress {
        eprintln!();
    }
    if let (Some(sup), true) = (&supervisor, args.concurrency > 0) {
        notes.push(burst(&me_s, sup, args.concurrency));
    }
    if let (Some(sup), Some((h0, m0, p0))) = (&supervisor, before) {
        if let Some((h, m, p)) = counts(sup) {
            notes.push(format!(
                "runs served from the pools: {} of {} ({} by a pre-started interpreter)",
                h - h0,
                h - h0 + m - m0,
                p - p0
            ));
        }
    }
    let mut cp = serde_json::Value::Null;
    if let Some(sb) = &sandbox {
        let (note, value) = sb.cp_throughput(args)?;
        notes.push(note);
        cp = value;
    }
    drop(sandbox);
    let burst_done = supervisor.is_some() && args.concurrency > 0;
    drop(supervisor);
    if burst_done {
        // The supervisor is gone with its pools: nothing of any run may be left.
        let left: Vec<PathBuf> = leftovers().difference(&existing).cloned().collect();
        let runs = left.iter().filter(|p| !p.starts_with("/sys")).count();
        notes.push(format!(
            "after the supervisor stopped: {runs} run directories and {} sandbox cgroups of this benchmark left",
            left.len() - runs
        ));
    }
    let stats: Vec<Stats> = contenders
        .iter()
        .map(|c| Stats::of(&c.name, c.argv.join(" "), &c.samples, c.failures))
        .collect();
    let find = |n: &str| stats.iter().find(|s| s.name == n);
    let pairs: &[(&str, &str)] = match kind {
        BenchKind::Cold => &[
            ("phantom true", "bwrap true"),
            ("phantom python", "bwrap python"),
            ("phantom python", "host python"),
            ("phantom true", "host true"),
        ],
        BenchKind::Warm => &[
            ("warm true", "host true"),
            ("warm python", "host python"),
            ("prewarmed python", "host python"),
            ("warm true", "cold true"),
        ],
        BenchKind::Image => &[("image true", "host root true")],
        BenchKind::Sandbox => &[
            ("exec true", "cold true"),
            ("exec python", "cold python"),
            ("exec true", "host true"),
        ],
        _ => &[],
    };
    let ratios: Vec<Ratio> = pairs
        .iter()
        .filter_map(|(a, b)| {
            let (x, y) = (find(a)?, find(b)?);
            Some(Ratio {
                what: format!("{a} / {b}"),
                p50: x.p50_ms / y.p50_ms,
                p95: x.p95_ms / y.p95_ms,
            })
        })
        .collect();
    let kind = kind_name(kind);
    let mut out = serde_json::json!({ "benchmark": kind, "profile": args.profile, "iterations": args.iterations, "results": stats, "ratios": ratios, "notes": notes });
    if !cp.is_null() {
        out["cp"] = cp;
    }
    if !args.json {
        println!(
            "{kind} start, {} iterations per contender, interleaved",
            args.iterations
        );
        print_stats(&stats, 16);
        for r in &ratios {
            println!("ratio {:<32} p50 {:.2}x  p95 {:.2}x", r.what, r.p50, r.p95);
        }
        for n in &notes {
            println!("note: {n}");
        }
    }
    Ok(out)
}

/// One POST over a fresh loopback connection; the status code.
fn post(port: u16, path: &str, key: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// http: sustained runs through the API.
fn http(args: &BenchArgs) -> Result<serde_json::Value, BenchError> {
    use std::io::BufRead;
    let me = current_exe()?;
    let dir = std::env::temp_dir().join(format!("phantom-http-bench-{}", std::process::id()));
    let state = dir.join("state");
    std::fs::create_dir_all(&state).map_err(|e| (1, format!("{}: {e}", state.display())))?;
    struct Cleanup(PathBuf, PathBuf, Option<Child>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(mut c) = self.2.take() {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let _ = c.wait();
            }
            let _ = Command::new(&self.1)
                .args(["destroy", "--all"])
                .env("PHANTOM_STATE_DIR", self.0.join("state"))
                .output();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let mut cleanup = Cleanup(dir.clone(), me.clone(), None);
    let key_out = Command::new(&me)
        .args([
            "keys",
            "add",
            "bench",
            "--rate",
            "10000000",
            "--burst",
            "1000000",
            "--max-concurrent",
            "256",
        ])
        .env("PHANTOM_STATE_DIR", &state)
        .output()
        .map_err(|e| (1, e.to_string()))?;
    let key = String::from_utf8_lossy(&key_out.stdout).trim().to_string();
    let concurrency = if args.concurrency == 100 {
        8
    } else {
        args.concurrency.max(1)
    };
    let mut child = Command::new(me.with_file_name("phantom-supervisor"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--profiles",
            "default",
            "--zygote-pools",
        ])
        .arg(args.pool.to_string())
        .arg("--max-sandboxes")
        .arg((concurrency * 2).to_string())
        .arg("--socket")
        .arg(dir.join("pool.sock"))
        .env("PHANTOM_STATE_DIR", &state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (1, format!("start phantom-supervisor: {e}")))?;
    let stderr = child.stderr.take().expect("piped");
    cleanup.2 = Some(child);
    let mut port = 0u16;
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        if let Some(rest) = line.split("HTTP API on http://127.0.0.1:").nth(1) {
            port = rest
                .split('/')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            break;
        }
    }
    if port == 0 {
        return Err((1, "phantom-supervisor did not start its HTTP API".into()));
    }
    let mut notes = Vec::new();
    let rows = http_rows(args, port, &key, concurrency, &mut notes);
    let find = |run: &str| {
        rows.iter()
            .find(|r| r["run"].as_str().is_some_and(|n| n.starts_with(run)))
            .and_then(|r| r["runs_per_second"].as_f64())
    };
    if let (Some(api), Some(peer)) = (find("api true c="), find("bwrap pool true")) {
        notes.push(format!(
            "api true / bwrap pool true, runs/s at {concurrency} at a time: {:.2}x",
            api / peer
        ));
    }
    if let Some(r) = rows.first() {
        let (p50, p99) = (
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
        );
        notes.push(format!(
            "api true p99 / p50 under that load: {:.2}x",
            p99 / p50
        ));
    }
    if !args.json {
        println!(
            "http: POST /api/v2/run on loopback, {} requests per row, {concurrency} at a time unless the row says (pool of {} default sandboxes; api and bwrap rows interleaved in rounds)",
            args.iterations, args.pool
        );
        print_load_rows(&rows);
        for n in &notes {
            println!("note: {n}");
        }
    }
    Ok(serde_json::json!({ "benchmark": "http", "results": rows, "notes": notes }))
}

/// One load contender: a job run `concurrency` at a time until `n` ran.
pub(crate) struct Load {
    name: String,
    samples: Vec<f64>,
    failures: usize,
    /// Seconds spent in its rounds (the rounds of the others excluded).
    busy_s: f64,
}

impl Load {
    pub(crate) fn new(name: &str) -> Load {
        Load {
            name: name.into(),
            samples: Vec::new(),
            failures: 0,
            busy_s: 0.0,
        }
    }

    /// `n` runs of `job`, `concurrency` at a time; the round's time counts to this
    /// contender.
    pub(crate) fn round(&mut self, n: usize, concurrency: usize, job: &(dyn Fn() -> bool + Sync)) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        let results: Vec<(f64, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..concurrency)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                            let t = Instant::now();
                            let ok = job();
                            mine.push((t.elapsed().as_secs_f64() * 1000.0, ok));
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        self.busy_s += started.elapsed().as_secs_f64();
        for (ms, ok) in results {
            if ok {
                self.samples.push(ms);
            } else {
                self.failures += 1;
            }
        }
    }

    pub(crate) fn row(&self) -> serde_json::Value {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let runs = s.len() + self.failures;
        serde_json::json!({
            "run": self.name,
            "requests": runs,
            "errors": self.failures,
            "runs_per_second": if self.busy_s > 0.0 { runs as f64 / self.busy_s } else { 0.0 },
            "p50_ms": percentile(&s, 50.0),
            "p95_ms": percentile(&s, 95.0),
            "p99_ms": percentile(&s, 99.0),
        })
    }
}

/// Print load rows as a table.
pub(crate) fn print_load_rows(rows: &[serde_json::Value]) {
    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "run", "runs/s", "p50 ms", "p95 ms", "p99 ms", "errors"
    );
    for r in rows {
        println!(
            "{:<28} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            r["run"].as_str().unwrap_or(""),
            r["runs_per_second"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p95_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["errors"].as_u64().unwrap_or(0)
        );
    }
}

/// A command run to completion with its output discarded; whether it succeeded.
pub(crate) fn quiet(argv: &[String], env: &[(&str, &Path)]) -> bool {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.status().map(|s| s.success()).unwrap_or(false)
}

/// An HTTP/1.1 client on one kept-alive loopback connection.
struct KeepAlive {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl KeepAlive {
    fn connect(port: u16) -> std::io::Result<KeepAlive> {
        let writer = std::net::TcpStream::connect(("127.0.0.1", port))?;
        writer.set_nodelay(true)?;
        Ok(KeepAlive {
            reader: std::io::BufReader::new(writer.try_clone()?),
            writer,
        })
    }

    /// One POST; its status (0: the exchange failed).
    fn post(&mut self, path: &str, key: &str, body: &str) -> u16 {
        use std::io::{BufRead, Read, Write};
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if self.writer.write_all(req.as_bytes()).is_err() {
            return 0;
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).is_err() {
            return 0;
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return 0;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if self.reader.read_exact(&mut body).is_err() {
            return 0;
        }
        status
    }
}

/// The rows of the http benchmark: `true` through the API and, with `--compare bwrap`,
/// a pool of threads each starting `bwrap ... true`, interleaved in rounds; python;
/// one kept-alive connection.
fn http_rows(
    args: &BenchArgs,
    port: u16,
    key: &str,
    concurrency: usize,
    notes: &mut Vec<String>,
) -> Vec<serde_json::Value> {
    let bwrap = bwrap_peer(args, notes, "no process-pool peer");
    let api = |body: &'static str| move || post(port, "/api/v2/run", key, body) == 200;
    let mut rows = Vec::new();
    // `true` through the API and the peer, interleaved in rounds so that noise on the
    // machine hits both alike.
    let mut api_true = Load::new(&format!("api true c={concurrency}"));
    let mut peer = Load::new(&format!("bwrap pool true c={concurrency}"));
    let rounds = 4;
    let per_round = args.iterations.div_ceil(rounds);
    let true_job = api(r#"{"argv":["true"]}"#);
    for _ in 0..rounds {
        api_true.round(per_round, concurrency, &true_job);
        if let Some(b) = &bwrap {
            let argv = bwrap_argv(b, &["true"]);
            peer.round(per_round, concurrency, &|| quiet(&argv, &[]));
        }
    }
    rows.push(api_true.row());
    if bwrap.is_some() {
        rows.push(peer.row());
    }
    let mut python = Load::new(&format!("api python print(1) c={concurrency}"));
    python.round(
        args.iterations,
        concurrency,
        &api(r#"{"language":"python","code":"print(1)"}"#),
    );
    rows.push(python.row());
    // One client, one kept-alive connection, one run at a time.
    let mut kept = Load::new("api true keep-alive c=1");
    match KeepAlive::connect(port) {
        Ok(conn) => {
            let conn = std::sync::Mutex::new(conn);
            kept.round(args.iterations, 1, &|| {
                conn.lock()
                    .map(|mut c| c.post("/api/v2/run", key, r#"{"argv":["true"]}"#) == 200)
                    .unwrap_or(false)
            });
            rows.push(kept.row());
        }
        Err(e) => notes.push(format!("keep-alive connection: {e}")),
    }
    rows
}

/// load: sustained `phantom run -- true` at --concurrency through a supervisor's pool
/// against `phantom run --cold`, interleaved in rounds.
fn load(args: &BenchArgs) -> Result<serde_json::Value, BenchError> {
    let me = current_exe()?;
    let me_s = me.display().to_string();
    let concurrency = if args.concurrency == 100 {
        4
    } else {
        args.concurrency.max(1)
    };
    let sup = BenchSupervisor::start(&me, args.pool, None).map_err(|e| (1, e))?;
    let socket = sup.socket.clone();
    let env: [(&str, &Path); 1] = [("PHANTOM_SUPERVISOR_SOCKET", &socket)];
    let pooled_argv: Vec<String> = [me_s.as_str(), "run", "--", "true"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cold_argv: Vec<String> = [me_s.as_str(), "run", "--cold", "--", "true"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let counts = || {
        sup.status().map(|s| {
            let p = s
                .pools
                .iter()
                .find(|p| p.profile == "default" && p.image.is_none());
            p.map_or((0, 0), |p| (p.hits, p.misses))
        })
    };
    let mut pooled = Load::new(&format!("pooled true c={concurrency}"));
    let mut cold = Load::new(&format!("cold true c={concurrency}"));
    let rounds = 4;
    let per_round = args.iterations.div_ceil(rounds);
    let (mut hits, mut misses) = (0, 0);
    for _ in 0..rounds {
        let _ = sup.wait_full(Duration::from_secs(30));
        let before = counts();
        pooled.round(per_round, concurrency, &|| quiet(&pooled_argv, &env));
        if let (Some((h0, m0)), Some((h1, m1))) = (before, counts()) {
            hits += h1 - h0;
            misses += m1 - m0;
        }
        cold.round(per_round, concurrency, &|| quiet(&cold_argv, &env));
    }
    let rows = vec![pooled.row(), cold.row()];
    let ratio = rows[0]["runs_per_second"].as_f64().unwrap_or(0.0)
        / rows[1]["runs_per_second"].as_f64().unwrap_or(f64::NAN);
    let notes = vec![format!(
        "pooled runs served warm: {hits} of {} (the rest started cold when the pool of {} was empty)",
        hits + misses,
        args.pool
    )];
    if !args.json {
        println!(
            "load: `phantom run -- true`, {} runs each, {concurrency} at a time, pooled (a supervisor with a pool of {}) and --cold, interleaved in {rounds} rounds",
            args.iterations, args.pool
        );
        print_load_rows(&rows);
        println!("ratio pooled / cold runs/s {ratio:.2}x");
        for n in &notes {
            println!("note: {n}");
        }
    }
    Ok(
        serde_json::json!({ "benchmark": "load", "results": rows, "ratio_pooled_to_cold": ratio, "notes": notes }),
    )
}

/// A benchmark's scratch directory, removed however the benchmark ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Scratch, BenchError> {
        let dir = std::env::temp_dir().join(format!("phantom-{tag}-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| (1, format!("{}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A persistent sandbox `bench` in a temporary state directory, destroyed on drop.
struct BenchSandbox {
    me: PathBuf,
    dir: PathBuf,
    state: PathBuf,
}

impl BenchSandbox {
    fn create(me: &Path) -> Result<BenchSandbox, String> {
        let dir =
            std::env::temp_dir().join(format!("phantom-sandbox-bench-{}", std::process::id()));
        let state = dir.join("state");
        std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let sb = BenchSandbox {
            me: me.to_path_buf(),
            dir,
            state,
        };
        let out = sb
            .phantom()
            .args(["create", "--name", "bench", "--timeout-idle", "1h"])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "phantom create failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(sb)
    }

    fn phantom(&self) -> Command {
        let mut c = Command::new(&self.me);
        c.env("PHANTOM_STATE_DIR", &self.state).stdin(Stdio::null());
        c
    }

    /// `phantom cp FILE bench:/workspace/` against `cp FILE DIR` on the same
    /// filesystem: median MB/s of up to 5 rounds, alternating who goes first.
    fn cp_throughput(&self, args: &BenchArgs) -> Result<(String, serde_json::Value), BenchError> {
        let bytes = phantom_policy::units::parse_bytes(&args.io_size)
            .map_err(|e| (2, format!("--io-size {}: {e}", args.io_size)))?;
        let src = self.dir.join("cp-src.bin");
        let plain = self.dir.join("plain");
        std::fs::create_dir_all(&plain).map_err(|e| (1, e.to_string()))?;
        // Incompressible, so that no layer can cheat (and written once, outside the
        // timing).
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&src).map_err(|e| (1, e.to_string()))?;
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut block = vec![0u8; 1 << 20];
            for _ in 0..(bytes >> 20).max(1) {
                for chunk in block.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
                }
                f.write_all(&block).map_err(|e| (1, e.to_string()))?;
            }
            f.sync_all().map_err(|e| (1, e.to_string()))?;
        }
        let size = std::fs::metadata(&src).map(|m| m.len()).unwrap_or(bytes) as f64;
        let time = |c: &mut Command| -> Result<f64, BenchError> {
            let t = Instant::now();
            let out = c.output().map_err(|e| (1, e.to_string()))?;
            if !out.status.success() {
                return Err((
                    1,
                    format!(
                        "{c:?} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ));
            }
            Ok(size / t.elapsed().as_secs_f64() / 1e6)
        };
        let rounds = args.iterations.clamp(1, 5);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for first in [round % 2 == 0, round % 2 == 1] {
                if first {
                    ours.push(time(
                        self.phantom()
                            .arg("cp")
                            .arg(&src)
                            .arg("bench:/workspace/cp.bin"),
                    )?);
                } else {
                    theirs.push(time(
                        Command::new("cp").arg(&src).arg(plain.join("cp.bin")),
                    )?);
                }
            }
            let _ = std::fs::remove_file(plain.join("cp.bin"));
            let _ = self
                .phantom()
                .args(["exec", "bench", "--", "rm", "-f", "/workspace/cp.bin"])
                .output();
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            v[v.len() / 2]
        };
        let (a, b) = (median(&mut ours), median(&mut theirs));
        let mib = size as u64 >> 20;
        Ok((
            format!("cp of {mib} MiB: phantom cp {a:.0} MB/s, plain cp {b:.0} MB/s on the same filesystem: {:.2}x (median of {rounds})", a / b),
            serde_json::json!({"bytes": size as u64, "phantom_cp_mb_s": a, "plain_cp_mb_s": b, "ratio": a / b, "rounds": rounds}),
        ))
    }
}

impl Drop for BenchSandbox {
    fn drop(&mut self) {
        let _ = self.phantom().args(["destroy", "--all"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` warm `phantom run -- true` at once: how many succeed, how long the burst takes,
/// and whether any run directory or cgroup outlives it.
fn burst(me: &str, sup: &BenchSupervisor, n: usize) -> String {
    let _ = sup.wait_full(Duration::from_secs(30));
    let started = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new(me)
                .args(["run", "--json", "--", "true"])
                .env("PHANTOM_SUPERVISOR_SOCKET", &sup.socket)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect();
    let (mut ok, mut warm, mut failed) = (0, 0, 0);
    for child in children {
        match child.and_then(|c| c.wait_with_output()) {
            Ok(out) if out.status.success() => {
                ok += 1;
                if String::from_utf8_lossy(&out.stdout).contains("\"start\":\"warm\"") {
                    warm += 1;
                }
            }
            _ => failed += 1,
        }
    }
    let took = started.elapsed();
    format!(
        "{n} concurrent warm runs: {ok} ok, {failed} failed, {warm} served warm (the rest cold once the pool ran dry), all done in {:.0} ms",
        took.as_secs_f64() * 1000.0
    )
}

/// Memory per pooled sandbox: a supervisor with `--pool` sandboxes of default and
/// python-dev; PSS per ready sandbox plus its share of the supervisor.
fn memory(args: &BenchArgs) -> Result<serde_json::Value, BenchError> {
    let me = current_exe()?;
    let ksm_file = "/sys/kernel/mm/ksm/run";
    let ksm_before = std::fs::read_to_string(ksm_file)
        .ok()
        .map(|s| s.trim().to_string());
    let mut rows = Vec::new();
    let phases: &[bool] = if args.ksm { &[false, true] } else { &[false] };
    for &with_ksm in phases {
        if args.ksm {
            std::fs::write(ksm_file, if with_ksm { "1" } else { "0" }).map_err(|e| {
                (
                    1,
                    format!("--ksm: cannot write {ksm_file} ({e}); it needs root"),
                )
            })?;
        }
        let sup = BenchSupervisor::start(&me, args.pool, None).map_err(|e| (1, e))?;
        if with_ksm {
            // Give KSM's scanner time to find the identical pages.
            std::thread::sleep(Duration::from_secs(60));
        }
        let status = sup
            .status()
            .ok_or((1, "the supervisor did not answer".to_string()))?;
        let sandboxes: usize = status.pools.iter().map(|p| p.ready).sum();
        let supervisor_pss =
            phantom_engine::doctor::proc_number(sup.child.id() as i32, "smaps_rollup", "Pss:");
        for p in &status.pools {
            let pss = p.pss_kb_per_ready.unwrap_or(0);
            let share = supervisor_pss / sandboxes.max(1) as u64;
            rows.push(serde_json::json!({
                "profile": p.profile,
                "ksm": with_ksm,
                "ready": p.ready,
                "pss_kb_per_sandbox": pss,
                "supervisor_share_kb": share,
                "total_kb_per_sandbox": pss + share,
                "ksm_merging_pages": p.ksm_merging_pages,
            }));
        }
    }
    if let (true, Some(before)) = (args.ksm, ksm_before) {
        let _ = std::fs::write(ksm_file, "2"); // unmerge what was merged for the test
        let _ = std::fs::write(ksm_file, before);
    }
    if !args.json {
        println!(
            "memory per pooled sandbox ({} ready per pool; PSS from /proc/PID/smaps_rollup)",
            args.pool
        );
        println!(
            "{:<12} {:>5} {:>12} {:>14} {:>12} {:>12}",
            "profile", "ksm", "PSS/sandbox", "+ supervisor", "= total", "KSM pages"
        );
        for r in &rows {
            println!(
                "{:<12} {:>5} {:>10.2}MB {:>12.2}MB {:>10.2}MB {:>12}",
                r["profile"].as_str().unwrap_or(""),
                if r["ksm"] == true { "on" } else { "off" },
                r["pss_kb_per_sandbox"].as_u64().unwrap_or(0) as f64 / 1024.0,
                r["supervisor_share_kb"].as_u64().unwrap_or(0) as f64 / 1024.0,
                r["total_kb_per_sandbox"].as_u64().unwrap_or(0) as f64 / 1024.0,
                r["ksm_merging_pages"]
            );
        }
        if !args.ksm {
            println!("note: run with --ksm (root) to measure with KSM switched on as well");
        }
    }
    Ok(serde_json::json!({ "benchmark": "memory", "pool": args.pool, "results": rows }))
}

/// Write and read `--io-size` bytes with dd in /workspace (a host directory bound in)
/// and directly on the host, in the same directory, and compare MB/s.
fn io(args: &BenchArgs) -> Result<serde_json::Value, BenchError> {
    let me = current_exe()?;
    let bytes = phantom_policy::units::parse_bytes(&args.io_size)
        .map_err(|e| (2, format!("--io-size {}: {e}", args.io_size)))?;
    let mib = (bytes / (1 << 20)).max(1);
    let scratch = Scratch::new("io")?;
    let dir = scratch.0.clone();
    // A policy with room for the file: the memory limit well above the data written,
    // or the cgroup's dirty-page throttling measures the limit, not the filesystem
    // path (with 2x the data: 0.32x the host's write speed; with 8 GB: 0.68x).
    let policy = dir.join("io.yaml");
    let room = format!("{}MB", mib * 4 + 512);
    std::fs::write(
        &policy,
        format!("profile: io-bench\nextends: default\nresources:\n  memory: {room}\n  fsize: {room}\n  timeout: 10m\n"),
    )
    .map_err(|e| (1, e.to_string()))?;
    let script = |target: &str| {
        format!(
            "dd if=/dev/zero of={target}/io.bin bs=1M count={mib} conv=fsync 2>&1 | tail -1; dd if={target}/io.bin of=/dev/null bs=1M 2>&1 | tail -1; rm -f {target}/io.bin"
        )
    };
    let run = |cmd: &mut Command| -> Result<Vec<f64>, BenchError> {
        let out = cmd.output().map_err(|e| (1, e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // dd's last line: "N bytes (...) copied, S s, R MB/s" — compute from bytes and seconds.
        let rates: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let copied = l.split_whitespace().next()?.parse::<f64>().ok()?;
                let secs = l
                    .split(" copied, ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()?;
                Some(copied / secs / 1e6)
            })
            .collect();
        if rates.len() != 2 {
            return Err((
                1,
                format!(
                    "unexpected dd output: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        Ok(rates)
    };
    let dir_s = dir.display().to_string();
    // Disks of VMs vary a lot from one write to the next: several rounds, alternating
    // which side goes first, and the median of each.
    let rounds = args.iterations.clamp(1, 5);
    let (mut inside_w, mut inside_r, mut host_w, mut host_r) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let mut sides: Vec<bool> = vec![true, false];
        if round % 2 == 1 {
            sides.reverse();
        }
        for in_sandbox in sides {
            let rates = if in_sandbox {
                let mut sandbox = Command::new(&me);
                sandbox
                    .args(["run", "--cold", "--policy"])
                    .arg(&policy)
                    .args([
                        "--workspace",
                        &dir_s,
                        "--",
                        "sh",
                        "-c",
                        &script("/workspace"),
                    ]);
                run(&mut sandbox)?
            } else {
                run(Command::new("sh").args(["-c", &script(&dir_s)]))?
            };
            let (w, r) = if in_sandbox {
                (&mut inside_w, &mut inside_r)
            } else {
                (&mut host_w, &mut host_r)
            };
            w.push(rates[0]);
            r.push(rates[1]);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    };
    let inside = [median(&mut inside_w), median(&mut inside_r)];
    let host = [median(&mut host_w), median(&mut host_r)];
    let rows = [("write", inside[0], host[0]), ("read", inside[1], host[1])];
    if !args.json {
        println!("io: {mib} MiB with dd (bs=1M; write with conv=fsync) in {dir_s}, median of {rounds} rounds");
        println!(
            "{:<8} {:>14} {:>14} {:>8}",
            "", "sandbox MB/s", "host MB/s", "ratio"
        );
        for (what, a, b) in &rows {
            println!("{what:<8} {a:>14.0} {b:>14.0} {:>7.2}x", a / b);
        }
        println!("note: the read follows the write, so it mostly comes from the page cache on both sides");
    }
    Ok(serde_json::json!({
        "benchmark": "io",
        "bytes": mib << 20,
        "results": rows.iter().map(|(w, a, b)| serde_json::json!({"op": w, "sandbox_mb_s": a, "host_mb_s": b, "ratio": a / b})).collect::<Vec<_>>(),
    }))
}

/// The python3 client of `net`: connects to the server directly or through the proxy
/// in HTTP_PROXY (CONNECT), then measures set-up, round trips and a bulk read.
const NET_CLIENT: &str = r#"
import json, os, socket, struct, sys, time
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
proxy = os.environ.get("HTTP_PROXY")
def connect():
    if not proxy:
        s = socket.create_connection((host, port))
    else:
        p = proxy.rsplit(":", 1)
        s = socket.create_connection((p[0].split("//")[-1], int(p[1])))
        s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        if b" 200 " not in head: raise SystemExit("proxy said: " + head.decode())
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
setup = []
for _ in range(max(n // 10, 10)):
    t = time.perf_counter(); s = connect(); s.sendall(b"P"); s.recv(1); setup.append((time.perf_counter() - t) * 1000); s.close()
s = connect(); s.sendall(b"P"); s.recv(1)
rtt = []
for _ in range(n):
    t = time.perf_counter(); s.sendall(b"x"); s.recv(1); rtt.append((time.perf_counter() - t) * 1000)
s.close()
s = connect(); s.sendall(b"T" + struct.pack(">Q", size))
t = time.perf_counter(); got = 0
while True:
    b = s.recv(1 << 20)
    if not b: break
    got += len(b)
secs = time.perf_counter() - t
print(json.dumps({"setup_ms": setup, "rtt_ms": rtt, "bytes": got, "mb_s": got / secs / 1e6}))
"#;

/// `net`: the egress proxy's added latency and its throughput, against a direct
/// loopback connection. Both clients are the same python3 script.
fn net(args: &BenchArgs) -> Result<serde_json::Value, BenchError> {
    use std::io::{Read, Write};
    let me = current_exe()?;
    if which("python3").is_none() {
        return Err((
            1,
            "net needs python3 on the host (the client on both sides)".into(),
        ));
    }
    let size = phantom_policy::units::parse_bytes(&args.io_size)
        .map_err(|e| (2, format!("--io-size {}: {e}", args.io_size)))?
        .min(4 << 30);
    // The server: `P` then echo each byte; `T` + u64 size: send that many bytes. Its
    // threads live in this process, which from here on only starts commands (fork and
    // exec at once, by std): it never forks to run code of its own.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| (1, e.to_string()))?;
    let port = listener
        .local_addr()
        .map_err(|e| (1, e.to_string()))?
        .port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let _ = s.set_nodelay(true);
                let mut kind = [0u8; 1];
                if s.read_exact(&mut kind).is_err() {
                    return;
                }
                if kind[0] == b'T' {
                    let mut len = [0u8; 8];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut left = u64::from_be_bytes(len);
                    let chunk = vec![0u8; 1 << 20];
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        if s.write_all(&chunk[..n]).is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    return;
                }
                let _ = s.write_all(b"P");
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
            });
        }
    });
    let scratch = Scratch::new("net")?;
    let dir = scratch.0.clone();
    // The server is on the host's loopback: only an address entry reaches it.
    let policy = dir.join("net.yaml");
    std::fs::write(
        &policy,
        format!("profile: net-bench\nextends: default\nresources:\n  timeout: 10m\nnetwork:\n  mode: limited\n  allow: [\"127.0.0.1:{port}\"]\n"),
    )
    .map_err(|e| (1, e.to_string()))?;
    let n = args.iterations.max(10).to_string();
    let (port_s, size_s) = (port.to_string(), size.to_string());
    let client = ["-c", NET_CLIENT, "127.0.0.1", &port_s, &n, &size_s];
    let parse = |out: std::process::Output, who: &str| -> Result<serde_json::Value, BenchError> {
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .ok_or_else(|| {
                (
                    1,
                    format!(
                        "the {who} client failed: {}{}",
                        text,
                        String::from_utf8_lossy(&out.stderr)
                    ),
                )
            })
    };
    let mut direct_cmd = Command::new("python3");
    direct_cmd.args(client).env_remove("HTTP_PROXY");
    let direct = parse(
        direct_cmd.output().map_err(|e| (1, e.to_string()))?,
        "direct",
    )?;
    let mut proxied_cmd = Command::new(&me);
    proxied_cmd
        .args(["run", "--cold", "--policy"])
        .arg(&policy)
        .args(["--", "python3"])
        .args(client);
    let proxied = parse(
        proxied_cmd.output().map_err(|e| (1, e.to_string()))?,
        "sandboxed",
    )?;
    let sorted = |v: &serde_json::Value, key: &str| -> Vec<f64> {
        let mut x: Vec<f64> = v[key]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f.as_f64()).collect())
            .unwrap_or_default();
        x.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        x
    };
    let mut rows = Vec::new();
    for (what, key) in [("connect", "setup_ms"), ("round trip", "rtt_ms")] {
        for (side, v) in [("direct", &direct), ("proxy", &proxied)] {
            let x = sorted(v, key);
            rows.push(serde_json::json!({
                "what": what, "path": side, "runs": x.len(),
                "p50_ms": percentile(&x, 50.0), "p95_ms": percentile(&x, 95.0), "p99_ms": percentile(&x, 99.0),
            }));
        }
    }
    let mb = |v: &serde_json::Value| v["mb_s"].as_f64().unwrap_or(f64::NAN);
    let (d_mb, p_mb) = (mb(&direct), mb(&proxied));
    if !args.json {
        println!(
            "net: python3 client -> server on 127.0.0.1, directly on the host and from a limited sandbox through the egress proxy (CONNECT); {n} round trips, {} MiB bulk",
            size >> 20
        );
        println!(
            "{:<24} {:>10} {:>10} {:>10}",
            "", "p50 ms", "p95 ms", "p99 ms"
        );
        for r in &rows {
            println!(
                "{:<24} {:>10.3} {:>10.3} {:>10.3}",
                format!(
                    "{} ({})",
                    r["what"].as_str().unwrap_or(""),
                    r["path"].as_str().unwrap_or("")
                ),
                r["p50_ms"].as_f64().unwrap_or(f64::NAN),
                r["p95_ms"].as_f64().unwrap_or(f64::NAN),
                r["p99_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
        let added = |i: usize| {
            rows[i + 1]["p50_ms"].as_f64().unwrap_or(f64::NAN)
                - rows[i]["p50_ms"].as_f64().unwrap_or(f64::NAN)
        };
        println!(
            "added by the proxy at p50: connect {:.3} ms, round trip {:.3} ms",
            added(0),
            added(2)
        );
        println!(
            "bulk: direct {d_mb:.0} MB/s, proxy {p_mb:.0} MB/s ({:.2}x)",
            p_mb / d_mb
        );
    }
    Ok(serde_json::json!({
        "benchmark": "net",
        "round_trips": n.parse::<u64>().unwrap_or(0),
        "bulk_bytes": size,
        "latency": rows,
        "throughput": {"direct_mb_s": d_mb, "proxy_mb_s": p_mb, "ratio": p_mb / d_mb},
    }))
}

/// Run directories (of this user) and sandbox cgroups that exist right now, by path:
/// the "no leftover" check after a burst counts only what appeared since the benchmark
/// started, never another run's or a persistent sandbox the user keeps.
fn leftovers() -> std::collections::BTreeSet<PathBuf> {
    let mut found = std::collections::BTreeSet::new();
    if let Ok(base) = phantom_engine::workspace::state_base() {
        if let Ok(entries) = std::fs::read_dir(base) {
            found.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
                    .map(|e| e.path()),
            );
        }
    }
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            if let Ok(entries) = std::fs::read_dir(h.path().join("phantom")) {
                found.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
    }
    found
}

/// `phantom profile list --benchmark`: each built-in profile's cold start
/// (`phantom run --cold --profile P -- true`) and warm start (the same through a
/// supervisor with a pool of every profile), interleaved, `iterations` runs each; and
/// how many warm runs the pools actually served.
pub(crate) fn profiles(iterations: usize, json: bool) -> i32 {
    let me = match current_exe() {
        Ok(me) => me,
        Err((code, e)) => {
            crate::error_line(e);
            return code;
        }
    };
    let me_s = me.display().to_string();
    let names = phantom_policy::builtin_names();
    eprintln!(
        "starting a supervisor with a pool of each of the {} built-in profiles…",
        names.len()
    );
    let sup = match BenchSupervisor::start_with(
        &me,
        &["--profiles", &names.join(","), "--zygote-pools", "1"],
    ) {
        Ok(s) => s,
        Err(e) => {
            crate::error_line(format!("profile list --benchmark: {e}"));
            return 1;
        }
    };
    let served = |sup: &BenchSupervisor| -> Vec<(String, u64)> {
        sup.status()
            .map(|s| s.pools.into_iter().map(|p| (p.profile, p.hits)).collect())
            .unwrap_or_default()
    };
    let mut rows: Vec<(Contender, Contender)> = names
        .iter()
        .map(|name| {
            let cold = Contender {
                name: format!("{name} cold"),
                argv: run_argv(&me_s, Some(name), &["--cold", "--", "true"]),
                ..Contender::new("", &[])
            };
            let warm = Contender {
                name: format!("{name} warm"),
                argv: run_argv(&me_s, Some(name), &["--", "true"]),
                ..Contender::new("", &[])
            }
            .with_socket(&sup.socket);
            (cold, warm)
        })
        .collect();
    // One warm-up round, then interleaved rounds: every profile sees the same machine.
    for (cold, warm) in &rows {
        let _ = cold.command().status();
        let _ = warm.command().status();
    }
    let before = served(&sup);
    let progress = std::io::stderr().is_terminal() && !json;
    for i in 0..iterations {
        for (cold, warm) in rows.iter_mut() {
            for c in [cold, warm] {
                let t = Instant::now();
                match c.command().status() {
                    Ok(s) if s.success() => c.samples.push(t.elapsed().as_secs_f64() * 1000.0),
                    _ => c.failures += 1,
                }
            }
        }
        if progress {
            eprint!("\r{}/{iterations} rounds", i + 1);
        }
    }
    if progress {
        eprintln!();
    }
    let after = served(&sup);
    drop(sup);
    let hits = |name: &str| {
        let of = |v: &[(String, u64)]| v.iter().find(|(p, _)| p == name).map_or(0, |(_, h)| *h);
        of(&after).saturating_sub(of(&before))
    };
    let mut out = Vec::new();
    for (name, (cold, warm)) in names.iter().zip(&rows) {
        let cold = Stats::of(
            &cold.name,
            cold.argv.join(" "),
            &cold.samples,
            cold.failures,
        );
        let warm = Stats::of(
            &warm.name,
            warm.argv.join(" "),
            &warm.samples,
            warm.failures,
        );
        out.push(serde_json::json!({
            "profile": name,
            "cold": cold,
            "warm": warm,
            "warm_runs_served_by_the_pool": hits(name),
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "iterations": iterations,
                "command": "true",
                "profiles": out,
            }))
            .expect("serializes")
        );
        return 0;
    }
    println!(
        "`true` in each profile, {iterations} runs each, interleaved (ms; warm: through a supervisor with a pool of every profile)"
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>12} {:>5}",
        "PROFILE", "COLD p50", "COLD p95", "WARM p50", "WARM p95", "SERVED WARM", "FAIL"
    );
    for row in &out {
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<12} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>5}",
            row["profile"].as_str().unwrap_or(""),
            f(&row["cold"]["p50_ms"]),
            f(&row["cold"]["p95_ms"]),
            f(&row["warm"]["p50_ms"]),
            f(&row["warm"]["p95_ms"]),
            format!("{}/{iterations}", row["warm_runs_served_by_the_pool"]),
            row["cold"]["failures"].as_u64().unwrap_or(0)
                + row["warm"]["failures"].as_u64().unwrap_or(0),
        );
    }
    0
}
