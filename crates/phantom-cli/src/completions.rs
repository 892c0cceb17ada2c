//! `phantom completions SHELL` and `phantom man [--dir DIR]`: shell completion scripts
//! and man pages generated from the clap definitions, so they cannot drift from the
//! flags `phantom` really takes; `phantom-supervisor` and `phantom-mcp` include this
//! file for their own `--completions SHELL` and `--man`. `scripts/install.sh` installs
//! them all.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Command};
use clap_complete::Shell;

#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to generate the completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

#[allow(dead_code)] // used by `phantom` only
pub(crate) const COMPLETIONS_AFTER_HELP: &str = "Examples:
  phantom completions bash > ~/.local/share/bash-completion/completions/phantom
  phantom completions zsh  > ~/.zfunc/_phantom      # with fpath+=(~/.zfunc)
  phantom completions fish > ~/.config/fish/completions/phantom.fish
  phantom-supervisor --completions bash; phantom-mcp --completions bash   # theirs";

#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// Write phantom.1 and one page per subcommand (phantom-run.1, ...) into this
    /// directory (created if missing) instead of printing phantom.1 to stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` to stdout.
#[allow(dead_code)] // not every binary that includes this file has the subcommand
pub(crate) fn completions(args: CompletionsArgs, command: Command) -> i32 {
    completion_script(args.shell, command)
}

/// Prints `command`'s completion script for `shell` to stdout.
pub(crate) fn completion_script(shell: Shell, mut command: Command) -> i32 {
    let mut out = Vec::new();
    let name = command.get_name().to_string();
    clap_complete::generate(shell, &mut command, name, &mut out);
    write_stdout(&out)
}

/// Prints `command`'s man page (NAME.1) to stdout.
pub(crate) fn man_page(command: Command) -> i32 {
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(command).render(&mut out) {
        eprintln!("{name}: error: rendering {name}.1: {e}");
        return 1;
    }
    write_stdout(&out)
}

/// Prints phantom.1, or writes every page into `--dir`.
#[allow(dead_code)] // not every binary that includes this file has the subcommand
pub(crate) fn man(args: ManArgs, command: Command) -> i32 {
    let Some(dir) = args.dir else {
        return man_page(command);
    };
    match write_pages(&dir, command) {
        Ok(names) => {
            for name in names {
                println!("{}", dir.join(name).display());
            }
            0
        }
        Err(e) => {
            eprintln!("phantom: error: {e}");
            1
        }
    }
}

/// phantom.1 plus phantom-SUB.1 for each (non-hidden) subcommand; returns the file
/// names written.
#[allow(dead_code)] // not every binary that includes this file has the subcommand
fn write_pages(dir: &Path, mut command: Command) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    command.build();
    let mut pages = vec![("phantom".to_owned(), command.clone())];
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let name = format!("phantom-{}", sub.get_name());
        // clap takes names as `&'static str` (without its `string` feature); a handful
        // of short strings in a process that exits right after is fine to leak.
        let page_name: &'static str = Box::leak(name.clone().into_boxed_str());
        let bin_name = format!("phantom {}", sub.get_name());
        let page = sub
            .clone()
            .name(page_name)
            .bin_name(bin_name)
            .version(env!("CARGO_PKG_VERSION"));
        pages.push((name, page));
    }
    let mut written = Vec::new();
    for (name, page) in pages {
        let file = format!("{name}.1");
        let path = dir.join(&file);
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .map_err(|e| format!("rendering {file}: {e}"))?;
        std::fs::write(&path, out).map_err(|e| format!("writing {}: {e}", path.display()))?;
        written.push(file);
    }
    Ok(written)
}

fn write_stdout(bytes: &[u8]) -> i32 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            1
        }
    }
}
