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
  phantom benchmark warm --iterations 200
  phantom benchmark image --image debian:bookworm --iterations 100

cold: each iteration runs every contender once, in turn: `phantom run -- true`, the same
under `bwrap --unshare-all` (when bubblewrap is installed), a bare host /bin/true, and
the same three for `python3 -c pass`.

warm: starts its own phantom-supervisor (pools of default and python-dev, on a private
socket) and compares `phantom run -- true` served from the pool with a cold run and a
bare host /bin/true, and `python3 -c 'print(1)'` warm (default profile), pre-started
(python-dev) and bare; it reports how many runs were actually served from the pools.

image: `phantom run --cold -- true` on the host root against the same on an image's root
(`--image NAME`, which needs `true` on its PATH), and a bare host /bin/true.

Times are wall-clock from spawn to exit, as a user sees them.")]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    what: BenchKind,
    /// Runs per contender.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Peer to compare with (skipped with a note when not installed).
    #[arg(long, value_name = "PEER", default_value = "bwrap")]
    compare: Vec<String>,
    /// Sandboxes in the warm benchmark's pool.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pool: usize,
    /// The image the `image` benchmark runs on (see `phantom image list`).
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BenchKind {
    /// Cold start: a fresh sandbox per run.
    Cold,
    /// Warm start: a sandbox from a phantom-supervisor pool per run.
    Warm,
    /// Cold start on an image's root against the host root.
    Image,
}

#[derive(Serialize, Debug)]
struct Stats {
    name: String,
    command: String,
    runs: usize,
    failures: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
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

fn which(name: &str) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn bwrap_argv(bwrap: &str, cmd: &[&str]) -> Vec<String> {
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
struct BenchSupervisor {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl BenchSupervisor {
    fn start(me: &Path, pool: usize) -> Result<BenchSupervisor, String> {
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
            .args([
                "--profiles",
                "default,python-dev",
                "--zygote-pools",
                &pool.to_string(),
                "--socket",
            ])
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

    fn status(&self) -> Option<phantom_runtime::warm::protocol::PoolStatus> {
        phantom_runtime::warm::client::status_at(&self.socket).ok()
    }

    /// Wait until the pool is full again (so that every measured run can be warm).
    fn wait_full(&self, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(s) = self.status() {
                if s.pools.iter().all(|p| p.ready == p.target) {
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
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            crate::error_line(format!("cannot find the phantom binary: {e}"));
            return 1;
        }
    };
    let me_s = me.display().to_string();
    let python = "/usr/bin/python3";
    let have_python = Path::new(python).exists();
    let mut notes = Vec::new();
    if !have_python {
        notes.push(format!("{python} not found: python rows skipped"));
    }
    let mut contenders = Vec::new();
    let mut supervisor = None;
    match args.what {
        BenchKind::Cold => {
            contenders.push(Contender::new(
                "phantom true",
                &[&me_s, "run", "--cold", "--", "true"],
            ));
            contenders.push(Contender::new("host true", &["/bin/true"]));
            if have_python {
                contenders.push(Contender::new(
                    "phantom python",
                    &[&me_s, "run", "--cold", "--", "python3", "-c", "pass"],
                ));
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
                    (other, _) => {
                        notes.push(format!("unknown peer `{other}`: supported peers are bwrap"))
                    }
                }
            }
        }
        BenchKind::Warm => {
            let sup = match BenchSupervisor::start(&me, args.pool) {
                Ok(s) => s,
                Err(e) => {
                    crate::error_line(e);
                    return 1;
                }
            };
            contenders.push(
                Contender::new("warm true", &[&me_s, "run", "--", "true"]).with_socket(&sup.socket),
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
        BenchKind::Image => {
            let Some(image) = args.image.as_deref() else {
                crate::error_line("benchmark image needs --image NAME (see `phantom image list`)");
                return 2;
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
            let sum = |f: fn(&phantom_runtime::warm::protocol::PoolInfo) -> u64| {
                s.pools.iter().map(f).sum::<u64>()
            };
            (
                sum(|p| p.hits),
                sum(|p| p.misses),
                sum(|p| p.prewarmed_hits),
            )
        })
    };
    let before = supervisor.as_ref().and_then(counts);
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
    drop(supervisor);
    let stats: Vec<Stats> = contenders
        .iter()
        .map(|c| {
            let mut s = c.samples.clone();
            s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            Stats {
                name: c.name.clone(),
                command: c.argv.join(" "),
                runs: s.len(),
                failures: c.failures,
                p50_ms: percentile(&s, 50.0),
                p95_ms: percentile(&s, 95.0),
                p99_ms: percentile(&s, 99.0),
                mean_ms: if s.is_empty() {
                    f64::NAN
                } else {
                    s.iter().sum::<f64>() / s.len() as f64
                },
            }
        })
        .collect();
    let find = |n: &str| stats.iter().find(|s| s.name == n);
    let pairs: &[(&str, &str)] = match args.what {
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
    let kind = match args.what {
        BenchKind::Cold => "cold",
        BenchKind::Warm => "warm",
        BenchKind::Image => "image",
    };
    if args.json {
        let out = serde_json::json!({ "benchmark": kind, "iterations": args.iterations, "results": stats, "ratios": ratios, "notes": notes });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
    } else {
        println!(
            "{kind} start, {} iterations per contender, interleaved",
            args.iterations
        );
        println!(
            "{:<16} {:>9} {:>9} {:>9} {:>9} {:>5}",
            "contender", "p50 ms", "p95 ms", "p99 ms", "mean ms", "fail"
        );
        for s in &stats {
            println!(
                "{:<16} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>5}",
                s.name, s.p50_ms, s.p95_ms, s.p99_ms, s.mean_ms, s.failures
            );
        }
        for r in &ratios {
            println!("ratio {:<32} p50 {:.2}x  p95 {:.2}x", r.what, r.p50, r.p95);
        }
        for n in &notes {
            println!("note: {n}");
        }
    }
    0
}
