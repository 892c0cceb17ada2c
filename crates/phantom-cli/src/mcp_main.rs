//! `phantom-mcp`: the MCP server for agents (the same as `phantom mcp`).
#![forbid(unsafe_code)]

use clap::Parser;

#[path = "mcp_cmd.rs"]
mod mcp_cmd;

/// Serve Phantom Fragment's sandboxes to MCP clients (agents) over stdio or
/// Streamable HTTP.
#[derive(Parser, Debug)]
#[command(name = "phantom-mcp", version, after_help = mcp_cmd::AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    args: mcp_cmd::McpArgs,
}

fn main() {
    // No thread may exist before this: the server forks its engine first.
    let cli = Cli::parse();
    std::process::exit(mcp_cmd::mcp(cli.args));
}
