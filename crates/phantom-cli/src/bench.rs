//! `phantom benchmark`: start-up latency of phantom against the peers installed on
//! this host, measured side by side in one run (interleaved, so that machine noise
//! hits every contender alike). A benchmark prints figures; it never fails on time.

use std::io::IsTerminal;
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Args, Debug)]
#[command(after_help = "Example:
  phantom benchmark cold --iterations 200 --compare bwrap

Each iteration runs every contender once, in turn: phantom run -- true, the same under
`bwrap --unshare-all` (when bubblewrap is installed), a bare host /bin/true, and the same
three for `python3 -c pass`. Times are wall-clock from spawn to exit, as a user sees them.")]
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
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum BenchKind {
    /// Cold start: a fresh sandbox per run.
    Cold,
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
    samples: Vec<f64>,
    failures: usize,
}

fn which(name: &str) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| std::path::Path::new(d).join(name))
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

pub fn benchmark(args: BenchArgs) -> i32 {
    let BenchKind::Cold = args.what;
    let me = match std::env::current_exe() {
        Ok(p) => p.display().to_string(),
        Err(e) => {
            crate::error_line(format!("cannot find the phantom binary: {e}"));
            return 1;
        }
    };
    let python = "/usr/bin/python3";
    let mut notes = Vec::new();
    let mut contenders = vec![
        Contender {
            name: "phantom true".into(),
            argv: vec![me.clone(), "run".into(), "--".into(), "true".into()],
            samples: vec![],
            failures: 0,
        },
        Contender {
            name: "host true".into(),
            argv: vec!["/bin/true".into()],
            samples: vec![],
            failures: 0,
        },
    ];
    let have_python = std::path::Path::new(python).exists();
    if have_python {
        contenders.push(Contender {
            name: "phantom python".into(),
            argv: vec![
                me.clone(),
                "run".into(),
                "--".into(),
                "python3".into(),
                "-c".into(),
                "pass".into(),
            ],
            samples: vec![],
            failures: 0,
        });
        contenders.push(Contender {
            name: "host python".into(),
            argv: vec![python.into(), "-c".into(), "pass".into()],
            samples: vec![],
            failures: 0,
        });
    } else {
        notes.push(format!("{python} not found: python rows skipped"));
    }
    for peer in &args.compare {
        match (peer.as_str(), which(peer)) {
            ("bwrap", Some(bwrap)) => {
                contenders.push(Contender {
                    name: "bwrap true".into(),
                    argv: bwrap_argv(&bwrap, &["true"]),
                    samples: vec![],
                    failures: 0,
                });
                if have_python {
                    contenders.push(Contender {
                        name: "bwrap python".into(),
                        argv: bwrap_argv(&bwrap, &["python3", "-c", "pass"]),
                        samples: vec![],
                        failures: 0,
                    });
                }
            }
            ("bwrap", None) => {
                notes.push("bwrap not installed (apt-get install bubblewrap): no comparison".into())
            }
            (other, _) => notes.push(format!("unknown peer `{other}`: supported peers are bwrap")),
        }
    }
    let progress = std::io::stderr().is_terminal() && !args.json;
    // One warm-up round so that page cache and binaries are hot for everyone.
    for c in &contenders {
        let _ = Command::new(&c.argv[0])
            .args(&c.argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for i in 0..args.iterations {
        for c in contenders.iter_mut() {
            let t = Instant::now();
            let ok = Command::new(&c.argv[0])
                .args(&c.argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
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
    let mut ratios = Vec::new();
    for (a, b) in [
        ("phantom true", "bwrap true"),
        ("phantom python", "bwrap python"),
        ("phantom python", "host python"),
        ("phantom true", "host true"),
    ] {
        if let (Some(x), Some(y)) = (find(a), find(b)) {
            ratios.push(Ratio {
                what: format!("{a} / {b}"),
                p50: x.p50_ms / y.p50_ms,
                p95: x.p95_ms / y.p95_ms,
            });
        }
    }
    if args.json {
        let out = serde_json::json!({ "benchmark": "cold", "iterations": args.iterations, "results": stats, "ratios": ratios, "notes": notes });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
    } else {
        println!(
            "cold start, {} iterations per contender, interleaved",
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
