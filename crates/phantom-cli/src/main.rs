//! `phantom`: run untrusted code in a Linux sandbox that starts in milliseconds.
//!
//! Each subcommand maps its flags onto `phantom-api` types and sends them to the engine (`phantom_engine::EngineClient`);
//! nothing here touches the kernel directly.
#![forbid(unsafe_code)]

mod bench;
mod bench_zygote;
mod completions;
mod config_cmd;
mod doctor;
mod image_cmd;
mod keys_cmd;
mod mcp_cmd;
mod policy_cmd;
mod pool_cmd;
mod run;
mod sandbox_cmd;
mod store_cmd;

use clap::{CommandFactory, Parser, Subcommand};
use phantom_api::access::{Owner, Principal};

/// Run untrusted code — above all code written by LLM agents — in a Linux sandbox
/// that starts in milliseconds and lets nothing out that its policy does not allow.
#[derive(Parser, Debug)]
#[command(name = "phantom", version, about, long_about = None)]
#[command(after_help = "Examples:
  phantom run -- python3 -c 'print(\"Hello Fragment!\")'
  phantom run --profile strict --timeout 5s --json -- sh -c 'id; hostname'
  phantom run --workspace ./proj --memory 1GB -- python3 /workspace/main.py
  phantom create --name agent-1 --profile python-dev
  phantom cp main.py agent-1:/workspace/ && phantom exec agent-1 -- python3 main.py
  phantom-supervisor --bind 127.0.0.1:8080     # warm pools and the HTTP API
  phantom-mcp --transport stdio                # for MCP clients (Claude Desktop, ...)
  phantom profile list
  phantom doctor")]
struct Cli {
    /// Act for this owner: `local` (you, the default) or `key:<id>` (an API key's
    /// sandboxes and snapshots, for an operator; `phantom keys list` shows the ids).
    #[arg(long, global = true, value_name = "OWNER", default_value = "local", value_parser = parse_owner)]
    owner: Owner,
    #[command(subcommand)]
    command: Command,
}

fn parse_owner(text: &str) -> Result<Owner, String> {
    Owner::parse(text).ok_or_else(|| format!("`{text}`: expected `local` or `key:<id>`"))
}

/// Whom this invocation acts for (`--owner`), with every grant: the local user could
/// run the same programs without phantom.
static OWNER: std::sync::OnceLock<Owner> = std::sync::OnceLock::new();

pub(crate) fn principal() -> Principal {
    Principal {
        owner: OWNER.get().cloned().unwrap_or(Owner::Local),
        grants: phantom_api::access::Grants::local(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a command in a fresh sandbox and remove it afterwards.
    Run(Box<run::RunArgs>),
    /// Built-in profiles: list them or show one in the policy DSL.
    #[command(subcommand)]
    Profile(policy_cmd::ProfileCommand),
    /// config.yaml and the AISBX_*/PHANTOM_* variables: show the effective
    /// configuration and where each value came from.
    #[command(subcommand, after_help = config_cmd::AFTER_HELP)]
    Config(config_cmd::ConfigCommand),
    /// Check or compile a policy file written in the DSL.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Warm pools of a running phantom-supervisor.
    #[command(subcommand)]
    Pool(pool_cmd::PoolCommand),
    /// Report what this host supports (namespaces, seccomp, Landlock, cgroups, PSI).
    Doctor(doctor::DoctorArgs),
    /// Measure start-up latency against peers installed on this host.
    Benchmark(bench::BenchArgs),
    /// Images: import OCI images and docker-save archives, list, inspect, remove.
    #[command(subcommand, after_help = image_cmd::EXAMPLES)]
    Image(image_cmd::ImageCommand),
    /// Snapshots: a content-addressed store of directory trees (snapshot, restore,
    /// list, rm, gc, verify).
    #[command(subcommand, after_help = store_cmd::EXAMPLES)]
    Store(store_cmd::StoreCommand),
    /// Create a persistent sandbox that lives between commands.
    Create(sandbox_cmd::CreateArgs),
    /// Run a command in a persistent sandbox.
    Exec(sandbox_cmd::ExecArgs),
    /// List the processes in a persistent sandbox (what commands left running too).
    Ps(sandbox_cmd::PsArgs),
    /// Send a signal to a process in a persistent sandbox.
    Kill(sandbox_cmd::KillArgs),
    /// Destroy a persistent sandbox (or all of them).
    Destroy(sandbox_cmd::DestroyArgs),
    /// List the persistent sandboxes.
    #[command(visible_alias = "ls")]
    List(sandbox_cmd::ListArgs),
    /// Show a persistent sandbox's CPU, memory, processes and I/O, live.
    Monitor(sandbox_cmd::MonitorArgs),
    /// Copy files and directories into or out of a persistent sandbox's workspace.
    Cp(sandbox_cmd::CpArgs),
    /// Snapshot a persistent sandbox's workspace; list or remove snapshots.
    Snapshot(sandbox_cmd::SnapshotArgs),
    /// API keys of the supervisor's HTTP API: add, list, revoke.
    #[command(subcommand, after_help = keys_cmd::EXAMPLES)]
    Keys(keys_cmd::KeysCommand),
    /// The HTTP API's audit log: mutating calls and refused keys.
    Audit(keys_cmd::AuditArgs),
    /// Serve sandboxes to agents over MCP (stdio or Streamable HTTP); the same as
    /// `phantom-mcp`.
    #[command(after_help = mcp_cmd::AFTER_HELP)]
    Mcp(mcp_cmd::McpArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = completions::COMPLETIONS_AFTER_HELP)]
    Completions(completions::CompletionsArgs),
    /// Print phantom.1, or write every man page (phantom.1, phantom-run.1, ...) into
    /// `--dir`.
    Man(completions::ManArgs),
}

fn main() {
    let cli = Cli::parse();
    let _ = OWNER.set(cli.owner.clone());
    if !matches!(cli.command, Command::Mcp(_)) {
        phantom_engine::client::end_quietly_on_closed_stdout();
    }
    // A mistake in config.yaml or the AISBX_*/PHANTOM_* variables is said once, here,
    // before any engine starts (which reads them too).
    if !matches!(cli.command, Command::Completions(_) | Command::Man(_)) {
        if let Err(code) = config_cmd::load() {
            std::process::exit(code);
        }
    }
    let code = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Profile(cmd) => policy_cmd::profile(cmd),
        Command::Config(cmd) => config_cmd::config(cmd),
        Command::Policy(cmd) => policy_cmd::policy(cmd),
        Command::Pool(cmd) => pool_cmd::pool(cmd),
        Command::Doctor(args) => doctor::doctor(args),
        Command::Benchmark(args) => bench::benchmark(args),
        Command::Image(cmd) => image_cmd::image(cmd),
        Command::Store(cmd) => store_cmd::store(cmd),
        Command::Create(args) => sandbox_cmd::create(args),
        Command::Exec(args) => sandbox_cmd::exec(args),
        Command::Ps(args) => sandbox_cmd::ps(args),
        Command::Kill(args) => sandbox_cmd::kill(args),
        Command::Destroy(args) => sandbox_cmd::destroy(args),
        Command::List(args) => sandbox_cmd::list(args),
        Command::Monitor(args) => sandbox_cmd::monitor(args),
        Command::Cp(args) => sandbox_cmd::cp(args),
        Command::Snapshot(args) => sandbox_cmd::snapshot(args),
        Command::Keys(cmd) => keys_cmd::keys(cmd),
        Command::Audit(args) => keys_cmd::audit(args),
        Command::Mcp(args) => mcp_cmd::mcp(args),
        Command::Completions(args) => completions::completions(args, Cli::command()),
        Command::Man(args) => completions::man(args, Cli::command()),
    };
    std::process::exit(code);
}

/// Print a one-line error the way every subcommand does.
pub(crate) fn error_line(msg: impl std::fmt::Display) {
    eprintln!("phantom: error: {msg}");
}

/// Print the engine's refusal or failure as the command line names things (`--memory`
/// rather than `memory`), with a hint for a sandbox that is not found; its exit code:
/// 2 for the caller's mistakes, 125 for phantom's own failures.
pub(crate) fn fail(f: phantom_api::engine::Failure) -> i32 {
    use phantom_api::engine::FailureKind;
    let mut line = f.for_cli();
    if f.kind == FailureKind::NotFound && line.starts_with("no sandbox named") {
        line.push_str(" (`phantom list` shows them; `phantom create --name NAME` makes one)");
    }
    // A policy with several mistakes: one `phantom: error:` line each.
    line.lines().for_each(error_line);
    f.kind.exit_code()
}

/// How long ago `when` (seconds since the epoch) was, for humans: "3 minutes ago".
pub(crate) fn age(when: u64) -> String {
    let secs = phantom_state::now_s().saturating_sub(when);
    match secs {
        0..=59 => format!("{secs} seconds ago"),
        60..=3599 => format!("{} minutes ago", secs / 60),
        3600..=86399 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

/// Print `value` as pretty JSON on stdout (every `--json` output); exit code 0.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> i32 {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("our records serialize to JSON")
    );
    0
}
