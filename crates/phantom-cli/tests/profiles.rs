//! Every built-in profile runs a hello world in its language, as a new user would try
//! it first — when the host has the language's toolchain (the suite installs Debian's
//! default-jdk-headless, golang-go and nodejs as root; elsewhere a missing toolchain
//! is a `skipped:` line, never a pass). Each program is compiled inside the sandbox
//! where the language compiles.

mod common;

use std::path::Path;

use common::{phantom, sandbox_available, Workspace};

/// Where a toolchain's command is on the host, among the places the profiles bind.
fn host_has(command: &str) -> bool {
    let home = std::env::var("HOME").unwrap_or_default();
    ["/usr/bin", "/bin", "/usr/local/bin", "/usr/local/go/bin"]
        .iter()
        .map(|d| Path::new(d).join(command))
        .chain([Path::new(&home).join(".cargo/bin").join(command)])
        .any(|p| p.exists())
}

/// `phantom run --profile PROFILE -- sh -c SCRIPT` in a workspace holding `files`;
/// asserts exit 0 and that stdout is `expected`.
fn hello(profile: &str, files: &[(&str, &str)], script: &str, expected: &str) {
    let _ = hello_or_unreachable(profile, files, script, expected);
}

/// As [`hello`], but a toolchain the profile found and left out because the sandbox
/// cannot reach it (its warning says why and what to do) is returned, not a failure.
fn hello_or_unreachable(
    profile: &str,
    files: &[(&str, &str)],
    script: &str,
    expected: &str,
) -> Option<String> {
    let ws = Workspace::new();
    for (name, text) in files {
        std::fs::write(ws.dir.join(name), text).unwrap();
    }
    let dir = ws.dir.display().to_string();
    let out = phantom(
        &[
            "run",
            "--profile",
            profile,
            "--workspace",
            &dir,
            "--",
            "sh",
            "-c",
            script,
        ],
        |_| {},
    );
    if let Some(warning) = out
        .stderr
        .lines()
        .find(|l| l.contains("filesystem.toolchains:") && l.contains("is left out"))
    {
        assert_eq!(out.code, Some(127), "{}", out.describe());
        return Some(warning.to_string());
    }
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, expected, "{}", out.describe());
    None
}

#[test]
fn default_minimal_and_strict_run_a_shell() {
    if !sandbox_available() {
        return;
    }
    for profile in ["default", "minimal", "strict"] {
        hello(profile, &[], "echo hello from $0", "hello from sh\n");
    }
}

#[test]
fn python_dev_and_python_data_run_python() {
    if !sandbox_available() {
        return;
    }
    if !host_has("python3") {
        return common::not_applicable("no python3 on this host");
    }
    for profile in ["python-dev", "python-data"] {
        hello(
            profile,
            &[("hello.py", "print('hello from python')\n")],
            "python3 hello.py",
            "hello from python\n",
        );
    }
}

#[test]
fn node_dev_runs_node() {
    if !sandbox_available() {
        return;
    }
    if !host_has("node") {
        return common::not_applicable("no node on this host (apt-get install nodejs)");
    }
    hello(
        "node-dev",
        &[("hello.js", "console.log('hello from node')\n")],
        "node hello.js",
        "hello from node\n",
    );
}

#[test]
fn java_dev_compiles_and_runs_java() {
    if !sandbox_available() {
        return;
    }
    if !host_has("javac") {
        return common::not_applicable(
            "no javac on this host (apt-get install default-jdk-headless)",
        );
    }
    // Debian's JDK reads its configuration through symlinks into /etc/java-N-openjdk:
    // without them javac and java died with "Error loading java.security file".
    hello(
        "java-dev",
        &[(
            "Hello.java",
            "public class Hello { public static void main(String[] a) { System.out.println(\"hello from java\"); } }\n",
        )],
        "javac -d /tmp Hello.java && java -cp /tmp Hello",
        "hello from java\n",
    );
}

#[test]
fn go_dev_builds_and_runs_go() {
    if !sandbox_available() {
        return;
    }
    if !host_has("go") {
        return common::not_applicable("no go on this host (apt-get install golang-go)");
    }
    hello(
        "go-dev",
        &[(
            "hello.go",
            "package main\nimport \"fmt\"\nfunc main() { fmt.Println(\"hello from go\") }\n",
        )],
        "go build -o /tmp/hello hello.go && /tmp/hello",
        "hello from go\n",
    );
}

#[test]
fn rust_dev_builds_and_runs_rust() {
    if !sandbox_available() {
        return;
    }
    if !host_has("rustc") {
        return common::not_applicable("no rustc on this host");
    }
    // rustup under root's 0700 home is passed in by the root engine; an unprivileged
    // user's toolchain under a home it cannot enter is left out with a warning
    // naming the fix (policy_hardening.rs checks that warning).
    if let Some(why) = hello_or_unreachable(
        "rust-dev",
        &[("hello.rs", "fn main() { println!(\"hello from rust\"); }\n")],
        "rustc -o /tmp/hello hello.rs && /tmp/hello",
        "hello from rust\n",
    ) {
        common::not_applicable(&format!("the host's rust toolchain is unreachable: {why}"));
    }
}
