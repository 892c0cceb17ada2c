//! `phantom-mcp`: the MCP server for agents (the same as `phantom mcp`).
#![forbid(unsafe_code)]

use clap::{CommandFactory, Parser};

#[path = "completions.rs"]
mod completions;
#[path = "mcp_cmd.rs"]
mod mcp_cmd;

/// Serve Phantom Fragment's sandboxes to MCP clients (agents) over stdio or
/// Streamable HTTP.
#[derive(Parser, Debug)]
#[command(name = "phantom-mcp", version, after_help = mcp_cmd::AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    args: mcp_cmd::McpArgs,
    /// Print the shell completion script for phantom-mcp and exit (e.g.
    /// `phantom-mcp --completions bash > ~/.local/share/bash-completion/completions/phantom-mcp`).
    #[arg(long, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,
    /// Print the phantom-mcp(1) man page and exit.
    #[arg(long)]
    man: bool,
}

fn main() {
    // No thread may exist before this: the server forks its engine first.
    let cli = Cli::parse();
    if let Some(shell) = cli.completions {
        std::process::exit(completions::completion_script(shell, Cli::command()));
    }
    if cli.man {
        std::process::exit(completions::man_page(Cli::command()));
    }
    std::process::exit(mcp_cmd::mcp(cli.args));
}
