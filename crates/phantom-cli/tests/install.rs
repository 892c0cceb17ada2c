//! Installing phantom: `phantom completions SHELL`, `phantom man [--dir]` and
//! scripts/install.sh into a temporary prefix, run from there, then uninstalled.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{not_applicable, phantom, phantom_bin, run_with_deadline, sandbox_available};

/// A temporary directory removed when dropped, even when the test panics.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "phantom-it-{what}-{}-{}",
            std::process::id(),
            common::unique()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = phantom(&["completions", shell], |_| {});
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert!(!out.stdout.trim().is_empty(), "{shell}: empty script");
        for sub in ["run", "create", "exec", "completions"] {
            assert!(
                out.stdout.contains(sub),
                "{shell} completions do not mention `{sub}`: {}",
                out.describe()
            );
        }
    }
}

/// `phantom-supervisor` and `phantom-mcp` had no completions or man pages.
#[test]
fn the_supervisor_and_the_mcp_server_print_their_own_completions_and_man_pages() {
    for (bin, flag) in [
        (common::api::supervisor_bin(), "zygote-pools"),
        (common::mcp::mcp_bin(), "transport"),
    ] {
        let name = bin.file_name().unwrap().to_string_lossy().into_owned();
        for shell in ["bash", "zsh", "fish"] {
            let out = Command::new(&bin)
                .args(["--completions", shell])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{name} {shell}: {out:?}");
            assert!(text.contains(flag), "{name} {shell}: {text}");
        }
        let out = Command::new(&bin).arg("--man").output().unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        assert_man_page(&String::from_utf8_lossy(&out.stdout), &name);
    }
}

#[test]
fn completions_for_an_unknown_shell_is_a_usage_error() {
    let out = phantom(&["completions", "tcsh"], |_| {});
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("tcsh"), "{}", out.describe());
}

/// Whether `text` is a roff man page with a `.TH` title line naming `title`.
fn assert_man_page(text: &str, title: &str) {
    let th = text
        .lines()
        .find(|l| l.starts_with(".TH "))
        .unwrap_or_else(|| panic!("no .TH header in {title}:\n{text}"));
    assert!(th.contains(title), "{title}: header is {th:?}");
    assert!(text.contains(".SH NAME"), "{title}: no NAME section");
}

#[test]
fn man_writes_a_page_for_phantom_and_for_each_subcommand() {
    let dir = TempDir::new("man");
    let out = phantom(&["man", "--dir", &dir.0.to_string_lossy()], |_| {});
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for (file, title) in [
        ("phantom.1", "phantom"),
        ("phantom-run.1", "phantom-run"),
        ("phantom-create.1", "phantom-create"),
    ] {
        let text = fs::read_to_string(dir.0.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}; {}", out.describe()));
        assert_man_page(&text, title);
    }
    // The run page documents run's own flags.
    let run = fs::read_to_string(dir.0.join("phantom-run.1")).expect("phantom-run.1");
    assert!(run.contains("timeout"), "phantom-run.1 lacks --timeout");
}

#[test]
fn man_without_dir_prints_phantom_1() {
    let out = phantom(&["man"], |_| {});
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_man_page(&out.stdout, "phantom");
}

fn install_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install.sh")
}

fn install(args: &[&str], from: &Path) -> common::PhantomOutput {
    let mut command = Command::new("bash");
    command
        .arg(install_script())
        .args(args)
        .env("PHANTOM_SKIP_BUILD", "1")
        .env("PHANTOM_INSTALL_FROM", from);
    run_with_deadline(command, Duration::from_secs(60))
}

#[test]
fn install_sh_installs_into_a_prefix_that_runs_and_uninstalls_cleanly() {
    let bin = phantom_bin();
    let from = bin.parent().expect("binary directory").to_path_buf();
    let wanted = [
        "phantom",
        "phantom-supervisor",
        "phantom-mcp",
        "libphantom_zygote.so",
    ];
    if let Some(missing) = wanted.iter().find(|f| !from.join(f).is_file()) {
        not_applicable(&format!(
            "{} is not built (`cargo build` of the workspace builds it)",
            from.join(missing).display()
        ));
        return;
    }
    if !install_script().is_file() {
        not_applicable("scripts/install.sh is not reachable from this test binary");
        return;
    }
    let prefix = TempDir::new("prefix");
    let p = prefix.0.to_string_lossy().into_owned();

    let out = install(&[&p], &from);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let installed = [
        "bin/phantom",
        "bin/phantom-supervisor",
        "bin/phantom-mcp",
        "lib/phantom/libphantom_zygote.so",
        "share/man/man1/phantom.1",
        "share/man/man1/phantom-run.1",
        "share/bash-completion/completions/phantom",
        "share/zsh/site-functions/_phantom",
        "share/fish/vendor_completions.d/phantom.fish",
        "share/man/man1/phantom-supervisor.1",
        "share/man/man1/phantom-mcp.1",
        "share/bash-completion/completions/phantom-supervisor",
        "share/bash-completion/completions/phantom-mcp",
        "share/zsh/site-functions/_phantom-mcp",
        "share/fish/vendor_completions.d/phantom-supervisor.fish",
    ];
    for file in installed {
        assert!(
            prefix.0.join(file).is_file(),
            "{file} not installed: {}",
            out.describe()
        );
    }
    // Idempotent: a second install succeeds over the first.
    let again = install(&[&p], &from);
    assert_eq!(again.code, Some(0), "{}", again.describe());

    if sandbox_available() {
        let mut run = Command::new(prefix.0.join("bin/phantom"));
        run.args(["run", "--", "true"]);
        let out = run_with_deadline(run, Duration::from_secs(60));
        assert_eq!(out.code, Some(0), "installed phantom: {}", out.describe());
    }

    let out = install(&["--uninstall", &p], &from);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for file in installed.iter().chain(&["lib/phantom/install-manifest"]) {
        assert!(
            !prefix.0.join(file).exists(),
            "{file} left after --uninstall: {}",
            out.describe()
        );
    }
    let files: Vec<_> = walk(&prefix.0);
    assert!(files.is_empty(), "left after --uninstall: {files:?}");
}

/// Every non-directory under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
