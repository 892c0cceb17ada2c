//! `phantom benchmark zygote`: Python forked from a supervisor's zygote, side by side
//! with bare python3 (and bwrap) in the same process: latency of `print(1)` through
//! the engine client (no CLI process) and through `phantom run`, sustained runs/s at a
//! concurrency, `import pandas` on python-data's zygote, and what a fork costs in
//! memory (PSS).

use std::path::Path;
use std::time::{Duration, Instant};

use phantom_api::access::Principal;
use phantom_api::request::{RunOptions, RunRequest};
use phantom_engine::client::{Output, RunIo, Stdin, Wake};
use phantom_engine::EngineClient;

use crate::bench::{
    bwrap_argv, bwrap_peer, current_exe, print_load_rows, print_stats, quiet, BenchArgs,
    BenchError, BenchSupervisor, Load, Stats,
};

/// One way to run a Python snippet, measured.
enum How<'p> {
    /// `/usr/bin/python3 -c CODE`.
    Bare,
    /// The engine client of this process, on `profile`'s pool.
    Client(&'p str),
    /// `phantom run --profile P -- python3 -c CODE` through the supervisor.
    Cli(&'p str),
    /// `bwrap ... python3 -c CODE`.
    Bwrap(String),
}

struct Row<'p> {
    name: String,
    how: How<'p>,
    code: &'static str,
    samples: Vec<f64>,
    failures: usize,
}

const PRINT: &str = "print(1)";
const PANDAS: &str = "import pandas; print(pandas.__version__)";

pub(crate) fn zygote(args: &BenchArgs) -> Result<serde_json::Value, BenchError> {
    let me = current_exe()?;
    let python = "/usr/bin/python3";
    if !Path::new(python).exists() {
        return Err((1, format!("benchmark zygote needs {python}")));
    }
    let concurrency = if args.concurrency == 100 {
        4
    } else {
        args.concurrency.max(1)
    };
    // `--profile P`: the print(1) rows fork P's zygote (a python profile).
    let forked = args.profile.as_deref().unwrap_or("python-dev");
    let profiles = if ["python-dev", "python-data"].contains(&forked) {
        "python-dev,python-data".to_string()
    } else {
        format!("python-dev,python-data,{forked}")
    };
    let sup = BenchSupervisor::start_with(&me, &["--profiles", &profiles, "--zygote-pools", "1"])
        .map_err(|e| (1, e))?;
    let mut notes = Vec::new();
    let status = sup
        .status()
        .ok_or((1, "the supervisor does not answer".to_string()))?;
    for p in &status.pools {
        if p.zygote.as_deref() != Some("ready") {
            notes.push(format!(
                "pool {}: zygote {} — its rows measure pre-built sandboxes",
                p.profile,
                p.zygote.as_deref().unwrap_or("none")
            ));
        }
    }
    let pandas = quiet(&[python.into(), "-c".into(), "import pandas".into()], &[]);
    if !pandas {
        notes.push(
            "pandas is not installed (apt-get install python3-pandas): no pandas rows".into(),
        );
    }
    let bwrap = bwrap_peer(args, &mut notes, "no bwrap rows");
    let client = EngineClient::at(sup.socket.clone());
    let me_s = me.display().to_string();
    let run_once = |how: &How, code: &str| -> bool {
        match how {
            How::Bare => quiet(&[python.into(), "-c".into(), code.into()], &[]),
            How::Client(profile) => {
                run_python(&client, profile, code).is_ok_and(|r| r.exit_code == 0)
            }
            How::Cli(profile) => quiet(
                &[
                    me_s.clone(),
                    "run".into(),
                    "--profile".into(),
                    profile.to_string(),
                    "--".into(),
                    "python3".into(),
                    "-c".into(),
                    code.into(),
                ],
                &[("PHANTOM_SUPERVISOR_SOCKET", &sup.socket)],
            ),
            How::Bwrap(bwrap) => quiet(&bwrap_argv(bwrap, &["python3", "-c", code]), &[]),
        }
    };
    let mut rows = vec![
        row("bare python print(1)", How::Bare, PRINT),
        row("client forked print(1)", How::Client(forked), PRINT),
        row("phantom run forked print(1)", How::Cli(forked), PRINT),
    ];
    if let Some(b) = &bwrap {
        rows.push(row("bwrap python print(1)", How::Bwrap(b.clone()), PRINT));
    }
    if pandas {
        rows.push(row("bare python import pandas", How::Bare, PANDAS));
        rows.push(row(
            "client forked import pandas",
            How::Client("python-data"),
            PANDAS,
        ));
    }
    // Warm-up, then interleaved rounds: every contender sees the same machine.
    for r in &rows {
        run_once(&r.how, r.code);
    }
    for _ in 0..args.iterations {
        for r in rows.iter_mut() {
            let t = Instant::now();
            if run_once(&r.how, r.code) {
                r.samples.push(t.elapsed().as_secs_f64() * 1000.0);
            } else {
                r.failures += 1;
            }
        }
    }
    let latency: Vec<Stats> = rows
        .iter()
        .map(|r| {
            Stats::of(
                &r.name,
                format!("python3 -c {:?}", r.code),
                &r.samples,
                r.failures,
            )
        })
        .collect();
    let p50 = |name: &str| latency.iter().find(|r| r.name == name).map(|r| r.p50_ms);
    let ratio = |a: &str, b: &str| p50(a).zip(p50(b)).map(|(a, b)| a / b);
    let ratios = serde_json::json!({
        "client_forked_to_bare_print": ratio("client forked print(1)", "bare python print(1)"),
        "cli_forked_to_bare_print": ratio("phantom run forked print(1)", "bare python print(1)"),
        "client_forked_to_bare_pandas": ratio("client forked import pandas", "bare python import pandas"),
    });

    // Sustained: `print(1)` at `concurrency`, interleaved rounds.
    let mut loads = vec![
        (
            Load::new(&format!("bare python c={concurrency}")),
            How::Bare,
        ),
        (
            Load::new(&format!("client forked c={concurrency}")),
            How::Client(forked),
        ),
        (
            Load::new(&format!("phantom run forked c={concurrency}")),
            How::Cli(forked),
        ),
    ];
    if let Some(b) = &bwrap {
        loads.push((
            Load::new(&format!("bwrap python c={concurrency}")),
            How::Bwrap(b.clone()),
        ));
    }
    let rounds = 4;
    let per_round = args.iterations.div_ceil(rounds).max(concurrency);
    for _ in 0..rounds {
        for (load, how) in loads.iter_mut() {
            load.round(per_round, concurrency, &|| run_once(how, PRINT));
        }
    }
    let load_rows: Vec<serde_json::Value> = loads.iter().map(|(l, _)| l.row()).collect();
    let rps = |i: usize| load_rows[i]["runs_per_second"].as_f64().unwrap_or(f64::NAN);
    let sustained_ratio = rps(1) / rps(0);

    // Memory: the zygotes, and a fork in flight (a run that sleeps while we look).
    let memory = fork_memory(&client, &sup, forked);

    if !args.json {
        println!(
            "zygote: python3 -c CODE forked from phantom-supervisor's zygotes ({forked}; python-data with pandas preloaded), {} runs per row, interleaved",
            args.iterations
        );
        print_stats(&latency, 30);
        let show = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |x| format!("{x:.3}x"));
        println!(
            "p50 ratios: client forked / bare print {}; phantom run forked / bare print {}; client forked / bare import pandas {}",
            show(&ratios["client_forked_to_bare_print"]),
            show(&ratios["cli_forked_to_bare_print"]),
            show(&ratios["client_forked_to_bare_pandas"]),
        );
        println!();
        println!(
            "sustained: print(1), {} runs per row in {rounds} interleaved rounds",
            per_round * rounds
        );
        print_load_rows(&load_rows);
        println!("runs/s ratio client forked / bare python: {sustained_ratio:.2}x");
        println!();
        println!("memory: {memory}");
        for n in &notes {
            println!("note: {n}");
        }
    }
    Ok(serde_json::json!({
        "benchmark": "zygote",
        "profile": forked,
        "latency": latency,
        "ratios": ratios,
        "sustained": load_rows,
        "sustained_ratio_client_forked_to_bare": sustained_ratio,
        "memory": memory,
        "notes": notes,
    }))
}

fn row<'p>(name: &str, how: How<'p>, code: &'static str) -> Row<'p> {
    Row {
        name: name.into(),
        how,
        code,
        samples: Vec::new(),
        failures: 0,
    }
}

/// `python3 -c CODE` on `profile` through the engine client of this process, its
/// output captured.
fn run_python(
    client: &EngineClient,
    profile: &str,
    code: &str,
) -> Result<phantom_api::RunReport, phantom_api::engine::Failure> {
    let request = RunRequest {
        argv: Some(vec!["python3".into(), "-c".into(), code.into()]),
        options: RunOptions {
            profile: Some(profile.to_string()),
            ..RunOptions::default()
        },
        ..RunRequest::default()
    };
    let io = RunIo {
        stdin: Stdin::Null,
        output: Output::capture(),
        wake: Wake::Nothing,
        on_started: None,
    };
    client.run(Principal::local(), request, false, io)
}

/// The zygotes' PSS, and the PSS per `print(1)` fork while 1, 4 and 8 of them are in
/// flight (runs that print, then sleep long enough to be looked at), from `phantom
/// pool status`. PSS splits the pages a fork shares with the zygote among all who map
/// them, so it falls as more forks are in flight; their private pages do not.
fn fork_memory(client: &EngineClient, sup: &BenchSupervisor, forked: &str) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for in_flight in [1usize, 4, 8] {
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..in_flight)
                .map(|_| {
                    s.spawn(|| run_python(client, forked, "print(1); import time; time.sleep(2)"))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(1200));
            if let Some(status) = sup.status() {
                for p in &status.pools {
                    if p.profile == forked {
                        out.insert(
                            format!("pss_kb_per_fork_{in_flight}_in_flight"),
                            p.pss_kb_per_fork.into(),
                        );
                        out.insert(
                            format!("{forked}_zygote_pss_kb_{in_flight}_in_flight"),
                            p.zygote_pss_kb.into(),
                        );
                    }
                }
            }
            for r in runs {
                let _ = r.join();
            }
        });
    }
    if let Some(status) = sup.status() {
        for p in &status.pools {
            out.insert(
                format!("{}_zygote_pss_kb_idle", p.profile),
                p.zygote_pss_kb.into(),
            );
        }
    }
    serde_json::Value::Object(out)
}
