//! `phantom doctor`.

use clap::Args;

use crate::print_json;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// One JSON array of checks instead of text.
    #[arg(long)]
    json: bool,
    /// Skip starting a real sandbox (only inspect the host).
    #[arg(long)]
    no_live: bool,
}

pub fn doctor(args: DoctorArgs) -> i32 {
    let checks = phantom_engine::doctor::run(!args.no_live);
    let failed = checks.iter().any(|c| c.status == "fail");
    if args.json {
        print_json(&checks);
    } else {
        for c in &checks {
            let mark = match c.status {
                "ok" => "ok  ",
                "warn" => "WARN",
                _ => "FAIL",
            };
            println!("[{mark}] {:<16} {}", c.name, c.detail);
            if let Some(h) = &c.hint {
                println!("       {:<16} fix: {h}", "");
            }
        }
    }
    if failed {
        1
    } else {
        0
    }
}
