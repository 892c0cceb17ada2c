//! `phantom pool status`.

use clap::Subcommand;

use crate::{error_line, print_json};

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Show the supervisor's warm pools (PROFILE, or PROFILE:IMAGE for a pool on an
    /// image): sizes, hits and misses, refill rate, pressure.
    Status {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn pool(cmd: PoolCommand) -> i32 {
    let PoolCommand::Status { json } = cmd;
    let engine = phantom_engine::EngineClient::at(phantom_engine::client::socket_path());
    let status = match engine.pools() {
        Ok(s) => s,
        Err(e) => {
            error_line(format!(
                "{} (start one with `phantom-supervisor --profiles default --zygote-pools 4`)",
                e.for_cli()
            ));
            return 1;
        }
    };
    if json {
        return print_json(&status);
    }
    println!("supervisor pid {}", status.pid);
    // A pool on an image shows as PROFILE:IMAGE.
    let names: Vec<String> = status
        .pools
        .iter()
        .map(|p| match &p.image {
            Some(image) => format!("{}:{image}", p.profile),
            None => p.profile.clone(),
        })
        .collect();
    let width = names.iter().map(String::len).max().unwrap_or(0).max(12);
    println!(
        "{:<width$} {:>6} {:>6} {:>8} {:>6} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>10}",
        "PROFILE",
        "TARGET",
        "READY",
        "STARTING",
        "ACTIVE",
        "HITS",
        "PREWARMED",
        "MISSES",
        "CREATED",
        "FAILURES",
        "REFILL/S",
        "PSS/READY"
    );
    for (p, name) in status.pools.iter().zip(&names) {
        println!(
            "{:<width$} {:>6} {:>6} {:>8} {:>6} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9.2} {:>10}",
            name,
            p.target,
            p.ready,
            p.starting,
            p.active,
            p.hits,
            p.prewarmed_hits,
            p.misses,
            p.created,
            p.failures,
            p.refill_per_second,
            p.pss_kb_per_ready
                .map_or("-".to_string(), |k| format!("{:.1}MB", k as f64 / 1024.0))
        );
    }
    for (p, name) in status.pools.iter().zip(&names) {
        if p.zygote.as_deref() != Some("ready") {
            println!(
                "{name}: asked for {:.2} times/s (averaged, half-life 10 s): keeps {} of at most {} ready",
                p.arrivals_per_second, p.target, p.ceiling
            );
        }
        if p.proxy_allowed + p.proxy_refused + p.proxy_failed > 0 {
            println!(
                "{name}: egress proxy: {} connections made, {} refused by the policy, {} failed",
                p.proxy_allowed, p.proxy_refused, p.proxy_failed
            );
        }
        if let Some(zygote) = &p.zygote {
            let mb = |kb: Option<u64>| {
                kb.map_or("-".to_string(), |k| format!("{:.1}MB", k as f64 / 1024.0))
            };
            println!(
                "{name}: zygote {zygote}; preloaded: {}; {} runs forked ({:.2}/s last minute); zygote PSS {}, PSS per run in flight {}",
                if p.preload.is_empty() { "nothing".to_string() } else { p.preload.join(", ") },
                p.forked_hits,
                p.forks_per_second,
                mb(p.zygote_pss_kb),
                mb(p.pss_kb_per_fork),
            );
            println!(
                "{name}: runs served by fork {}, by a pre-built sandbox {}, cold {}",
                p.forked_hits,
                p.hits.saturating_sub(p.forked_hits),
                p.misses
            );
        }
        if let Some(root) = &p.image_root_id {
            println!(
                "{name}: image root {root}; {} stale sandboxes dropped (image re-imported)",
                p.stale
            );
        }
    }
    let merged: u64 = status.pools.iter().map(|p| p.ksm_merging_pages).sum();
    let ksm = std::fs::read_to_string("/sys/kernel/mm/ksm/run").is_ok_and(|s| s.trim() == "1");
    println!(
        "ksm: {} ({merged} pages of ready sandboxes merged)",
        if ksm { "on" } else { "off" }
    );
    match (status.cpu_pressure, status.memory_pressure) {
        (Some(c), Some(m)) => println!("pressure: cpu {c:.1}%  memory {m:.1}%  (some avg10)"),
        _ => println!("pressure: not watched (start the supervisor with --psi-aware)"),
    }
    if let Some(why) = &status.refill_paused {
        println!("refill PAUSED: {why}");
    }
    println!("refill pauses so far: {}", status.refill_pauses);
    0
}
