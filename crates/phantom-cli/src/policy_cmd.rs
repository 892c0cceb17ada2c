//! `phantom profile list|show` and `phantom policy check|compile`.

use std::path::Path;

use clap::{Args, Subcommand};
use phantom_policy::{Mount, Overrides, Plan};

use crate::error_line;

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// List the profiles (built-in, then config.yaml's) with their mode, network and
    /// limits.
    #[command(after_help = "Examples:
  phantom profile list
  phantom profile list --performance        # zygote, pool size, preloads, io_mode, allocator
  phantom profile list --benchmark          # measure each profile's cold and warm start
  phantom profile list --benchmark --iterations 50 --json")]
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Show each profile's performance settings instead of its limits: warm pool
        /// (zygote), pool size, preloaded modules, io_mode, memory allocator, and how
        /// its warm runs start (forked from a zygote or a pre-built sandbox).
        #[arg(long, conflicts_with = "benchmark")]
        performance: bool,
        /// Measure each profile's cold and warm start (`true`, interleaved; starts a
        /// private supervisor with a pool of every profile; takes a few seconds).
        #[arg(long)]
        benchmark: bool,
        /// With --benchmark: runs per profile and start kind.
        #[arg(long, value_name = "N", default_value_t = 10, requires = "benchmark")]
        iterations: usize,
    },
    /// Print a built-in profile's source in the policy DSL (a good start for your own),
    /// or a config.yaml profile's entry.
    Show {
        /// Profile name, e.g. python-dev.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file: exit 0 when it is valid, else print file:line:column and
    /// exit 2.
    Check(FileArg),
    /// Compile a policy file and print the plan: mounts, seccomp programs, Landlock
    /// rules, limits.
    Compile {
        #[command(flatten)]
        file: FileArg,
        /// Print the whole plan as JSON (including the seccomp BPF instructions).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct FileArg {
    /// The policy file (YAML, the DSL shown by `phantom profile show default`).
    #[arg(value_name = "FILE.yaml")]
    file: String,
}

fn compile_builtin(name: &str) -> Result<Plan, String> {
    let profile = crate::config_cmd::load_profile(name).map_err(|e| e.to_string())?;
    phantom_policy::compile(&profile, &Overrides::default()).map_err(|e| e.to_string())
}

pub fn profile(cmd: ProfileCommand) -> i32 {
    match cmd {
        ProfileCommand::List {
            json,
            benchmark: true,
            iterations,
            ..
        } => crate::bench::profiles(iterations.max(1), json),
        ProfileCommand::List {
            json,
            performance: true,
            ..
        } => performance(json),
        ProfileCommand::List { json, .. } => {
            let mut rows = Vec::new();
            for name in &crate::config_cmd::profile_names() {
                let profile = match crate::config_cmd::load_profile(name) {
                    Ok(p) => p,
                    Err(e) => {
                        error_line(e);
                        return 1;
                    }
                };
                let plan = match compile_builtin(name) {
                    Ok(p) => p,
                    Err(e) => {
                        error_line(e);
                        return 1;
                    }
                };
                rows.push((
                    name.to_string(),
                    profile.description.clone().unwrap_or_default(),
                    plan,
                ));
            }
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|(name, description, plan)| {
                        serde_json::json!({
                            "name": name,
                            "description": description,
                            "mode": plan.mode.as_str(),
                            "network": plan.network.as_str(),
                            "limits": plan.limits,
                            "default": *name == phantom_policy::DEFAULT_PROFILE,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("serializes")
                );
            } else {
                println!(
                    "{:<11} {:<9} {:<14} {:>8} {:>5} {:>5} {:>7}  DESCRIPTION",
                    "NAME", "MODE", "NETWORK", "MEMORY", "CPUS", "PIDS", "TIMEOUT"
                );
                for (name, description, plan) in &rows {
                    let l = &plan.limits;
                    let marker = if *name == phantom_policy::DEFAULT_PROFILE {
                        " (default)"
                    } else {
                        ""
                    };
                    println!(
                        "{:<11} {:<9} {:<14} {:>8} {:>5} {:>5} {:>7}  {}{}",
                        name,
                        plan.mode.as_str(),
                        plan.network.as_str(),
                        human_bytes(l.memory_bytes),
                        format!("{:.2}", f64::from(l.cpu_millis) / 1000.0)
                            .trim_end_matches('0')
                            .trim_end_matches('.'),
                        l.pids,
                        format!("{}s", l.wall_timeout_ms as f64 / 1000.0),
                        description,
                        marker
                    );
                }
            }
            0
        }
        ProfileCommand::Show { name } => match phantom_policy::builtin_source(&name)
            .map(str::to_string)
            .or_else(|| crate::config_cmd::config_source(&name))
        {
            Some(src) => {
                print!("{src}");
                0
            }
            None => {
                error_line(format!(
                    "unknown profile `{name}`; profiles: {}",
                    crate::config_cmd::profile_names().join(", ")
                ));
                2
            }
        },
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)];
    for (unit, size) in UNITS {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    format!("{b}B")
}

fn load_and_compile(file: &str) -> Result<Plan, i32> {
    // Every mistake of the file, one `phantom: error:` line each.
    let report = |e: phantom_policy::PolicyError| {
        e.errors().iter().for_each(error_line);
        2
    };
    let profile = phantom_policy::load_file(Path::new(file)).map_err(report)?;
    phantom_policy::compile(&profile, &Overrides::default()).map_err(report)
}

pub fn policy(cmd: PolicyCommand) -> i32 {
    match cmd {
        PolicyCommand::Check(FileArg { file }) => match load_and_compile(&file) {
            Ok(plan) => {
                for w in &plan.warnings {
                    eprintln!("phantom: warning: {file}: {w}");
                }
                println!(
                    "{file}: ok (profile {}, mode {}, network {}, {} mounts, {} seccomp programs)",
                    plan.profile,
                    plan.mode.as_str(),
                    plan.network.as_str(),
                    plan.mounts.len(),
                    plan.seccomp.len()
                );
                0
            }
            Err(code) => code,
        },
        PolicyCommand::Compile {
            file: FileArg { file },
            json,
        } => match load_and_compile(&file) {
            Ok(plan) if json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plan serializes")
                );
                0
            }
            Ok(plan) => {
                print_plan(&plan);
                0
            }
            Err(code) => code,
        },
    }
}

fn print_plan(plan: &Plan) {
    println!("profile  {}", plan.profile);
    println!("mode     {}", plan.mode.as_str());
    println!("network  {}", plan.network.as_str());
    if plan.network == phantom_policy::NetworkMode::Limited {
        let list = |rules: &[phantom_policy::egress::EgressRule]| {
            if rules.is_empty() {
                "(none)".to_string()
            } else {
                rules
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        println!(
            "  proxy  127.0.0.1:{} inside",
            phantom_policy::egress::PROXY_PORT
        );
        println!("  allow  {}", list(&plan.egress.allow));
        println!("  deny   {}", list(&plan.egress.deny));
    }
    println!("hostname {}", plan.hostname);
    println!("rootfs   {}", plan.rootfs);
    let l = &plan.limits;
    println!(
        "limits   memory {}  cpus {}  pids {}  timeout {} ms  output {}  /tmp {}  nofile {}  fsize {}",
        human_bytes(l.memory_bytes),
        f64::from(l.cpu_millis) / 1000.0,
        l.pids,
        l.wall_timeout_ms,
        human_bytes(l.output_limit_bytes),
        human_bytes(l.tmp_size_bytes),
        l.nofile,
        human_bytes(l.fsize_bytes)
    );
    println!("mounts ({}):", plan.mounts.len());
    for m in &plan.mounts {
        let line = match m {
            Mount::Bind {
                source,
                target,
                read_only,
                optional,
            } => format!(
                "bind     {target} <- {source} ({}{})",
                if *read_only { "ro" } else { "rw" },
                if *optional { ", optional" } else { "" }
            ),
            Mount::Tmpfs {
                target,
                size_bytes,
                read_only,
                noexec,
                ..
            } => format!(
                "tmpfs    {target} ({}, {}{})",
                human_bytes(*size_bytes),
                if *read_only { "ro" } else { "rw" },
                if *noexec { ", noexec" } else { "" }
            ),
            Mount::File { target, .. } => format!("file     {target} (generated)"),
            Mount::Proc { target } => format!("proc     {target}"),
            Mount::Dev { target, nodes, .. } => {
                format!("dev      {target} ({}, pts, shm)", nodes.join(", "))
            }
            Mount::Workspace { target, noexec } => format!(
                "workspace {target}{}",
                if *noexec { " (noexec)" } else { "" }
            ),
            Mount::Mask { target } => format!("mask     {target}"),
            Mount::ReadOnly { target } => format!("readonly {target}"),
        };
        println!("  {line}");
    }
    println!("seccomp ({} programs):", plan.seccomp.len());
    for p in &plan.seccomp {
        println!(
            "  {:<14} {} rules, {} BPF instructions",
            p.name,
            p.rule_count,
            p.instructions.len()
        );
    }
    println!(
        "landlock {} ({} rules; scopes: abstract unix {}, signals {})",
        if plan.landlock.enabled { "on" } else { "off" },
        plan.landlock.rules.len(),
        plan.landlock.scope_abstract_unix,
        plan.landlock.scope_signals
    );
    for r in &plan.landlock.rules {
        println!("  {:<10} {}", format!("{:?}", r.access), r.path);
    }
    if let Some(tcp) = &plan.landlock.tcp {
        let ports = |p: &[u16]| {
            if p.is_empty() {
                "none".to_string()
            } else {
                p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
            }
        };
        println!(
            "  tcp        connect to ports: {}; bind ports: {} (ABI 4)",
            ports(&tcp.connect_ports),
            ports(&tcp.bind_ports)
        );
    }
    for w in &plan.warnings {
        println!("warning: {w}");
    }
}

/// `phantom profile list --performance`: each built-in profile's `performance:` section
/// and how its warm runs start.
fn performance(json: bool) -> i32 {
    let mut rows = Vec::new();
    for name in phantom_policy::builtin_names() {
        let profile = match phantom_policy::load_builtin(name) {
            Ok(p) => p,
            Err(e) => {
                error_line(e);
                return 1;
            }
        };
        let p = &profile.performance;
        // A python profile's pool keeps a zygote (its runs are forked); every other
        // pool keeps pre-built sandboxes.
        let warm = match (p.zygote, profile.runtime == phantom_policy::Runtime::Python) {
            (false, _) => "cold (no pool unless named)",
            (true, true) => "forked from a zygote",
            (true, false) => "pre-built sandbox",
        };
        rows.push(serde_json::json!({
            "name": name,
            "zygote": p.zygote,
            "pool_size": p.pool_size,
            "preload": p.preload,
            "io_mode": p.io_mode,
            "memory_allocator": p.memory_allocator,
            "runtime": profile.runtime,
            "warm_start": warm,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serializes")
        );
        return 0;
    }
    println!(
        "{:<11} {:<7} {:>5} {:<6} {:<9} {:<27} PRELOAD",
        "NAME", "ZYGOTE", "POOL", "IO", "ALLOC", "WARM START"
    );
    for r in &rows {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        let preload: Vec<String> = r["preload"]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        println!(
            "{:<11} {:<7} {:>5} {:<6} {:<9} {:<27} {}",
            text(&r["name"]),
            if r["zygote"] == true { "yes" } else { "no" },
            text(&r["pool_size"]),
            text(&r["io_mode"]),
            text(&r["memory_allocator"]),
            text(&r["warm_start"]),
            if preload.is_empty() {
                "-".into()
            } else {
                preload.join(", ")
            },
        );
    }
    0
}
