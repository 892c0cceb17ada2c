//! The warm path: `phantom run` served from a `phantom-supervisor` pool. Each test
//! starts its own supervisor on a private socket (PHANTOM_SUPERVISOR_SOCKET), so tests
//! neither see each other's pools nor a supervisor running on the host.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::supervisor::Supervisor;
use common::{phantom, sandbox_available, PhantomOutput};
use serde_json::Value;

fn report(out: &PhantomOutput) -> Value {
    out.report()
        .unwrap_or_else(|e| panic!("{e}\n{}", out.describe()))
}

#[test]
fn warm_run_is_served_from_the_pool() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 2);
    let warm = sup.phantom(&[
        "run",
        "--json",
        "--",
        "sh",
        "-c",
        "echo hi; grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; hostname",
    ]);
    let r = report(&warm);
    assert_eq!(
        r["start"],
        "warm",
        "{}\nlog:\n{}",
        warm.describe(),
        sup.log()
    );
    assert_eq!(r["exit_code"], 0);
    let stdout = r["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("hi\n"), "{stdout}");
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.ends_with("phantom\n"), "{stdout}");
    let cold = sup.phantom(&["run", "--cold", "--json", "--", "true"]);
    assert_eq!(report(&cold)["start"], "cold");
    let status = sup.status();
    assert_eq!(status["pools"][0]["hits"], 1, "{status}");
}

/// One case of the cold/warm comparison: phantom args after `run --json`, and stdin.
struct Case {
    args: &'static [&'static str],
    stdin: Option<&'static str>,
}

fn run_case(sup: &Supervisor, case: &Case, cold: bool) -> (Option<i32>, Value) {
    let mut args = vec!["run", "--json"];
    if cold {
        args.push("--cold");
    }
    args.extend(case.args);
    run_json(sup, &args, case.stdin)
}

/// `phantom ARGS` against `sup` with `stdin` written to it: exit code and the report
/// (its last stdout line).
fn run_json(sup: &Supervisor, args: &[&str], stdin: Option<&str>) -> (Option<i32>, Value) {
    let mut cmd = Command::new(common::phantom_bin());
    cmd.args(args)
        .env("PHANTOM_SUPERVISOR_SOCKET", &sup.socket)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report =
        serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or(Value::Null);
    (out.status.code(), report)
}

#[test]
fn warm_runs_behave_like_cold_runs() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 3);
    let cases = [
        Case {
            args: &["--", "sh", "-c", "exit 3"],
            stdin: None,
        },
        Case {
            args: &["--", "sh", "-c", "kill -9 $$"],
            stdin: None,
        },
        Case {
            args: &["--", "tr", "a-z", "A-Z"],
            stdin: Some("hello stdin\n"),
        },
        Case {
            args: &[
                "--env",
                "GREETING=hi there",
                "--",
                "sh",
                "-c",
                "echo \"$GREETING\"; env | sort | cut -d= -f1",
            ],
            stdin: None,
        },
        Case {
            args: &["--cwd", "/tmp", "--", "pwd"],
            stdin: None,
        },
        Case {
            args: &["--", "no-such-command-xyz"],
            stdin: None,
        },
        Case {
            args: &["--timeout", "1s", "--", "sh", "-c", "sleep 10"],
            stdin: None,
        },
        Case {
            args: &[
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; ls /workspace | wc -l",
            ],
            stdin: None,
        },
        Case {
            args: &["--", "sh", "-c", "head -c 2000000 /dev/zero | tr '\\0' x"],
            stdin: None,
        },
    ];
    for case in &cases {
        sup.wait_ready(Duration::from_secs(20));
        let (warm_code, warm) = run_case(&sup, case, false);
        let (cold_code, cold) = run_case(&sup, case, true);
        let what = format!(
            "case {:?}\nwarm: {warm}\ncold: {cold}\nlog:\n{}",
            case.args,
            sup.log()
        );
        assert_eq!(warm["start"], "warm", "{what}");
        assert_eq!(cold["start"], "cold", "{what}");
        assert_eq!(warm_code, cold_code, "{what}");
        for key in [
            "exit_code",
            "signal",
            "timed_out",
            "oom_killed",
            "output_truncated",
            "stdout",
            "stderr",
            "mode",
            "profile",
            // Regression: a warm run did not report its sandbox's warnings (e.g. no
            // cgroup limits, unprivileged); only the supervisor's log had them.
            "warnings",
        ] {
            assert_eq!(warm[key], cold[key], "{key} differs: {what}");
        }
    }
}

#[test]
fn a_missing_cwd_is_a_usage_error_warm_too() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 1);
    let out = sup.phantom(&["run", "--cwd", "/nonexistent", "--", "pwd"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("/nonexistent"), "{}", out.describe());
}

#[test]
fn a_pooled_sandbox_is_never_used_twice() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 1);
    let write = sup.phantom(&[
        "run",
        "--json",
        "--",
        "sh",
        "-c",
        "echo secret > /tmp/mark; echo secret > /workspace/mark; echo secret > /dev/shm/mark; sleep 30 & echo $! > /tmp/pid",
    ]);
    assert_eq!(report(&write)["start"], "warm", "{}", write.describe());
    sup.wait_ready(Duration::from_secs(20));
    let read = sup.phantom(&[
        "run",
        "--json",
        "--",
        "sh",
        "-c",
        "ls /tmp /workspace /dev/shm; cat /tmp/mark /workspace/mark /dev/shm/mark 2>/dev/null; ps -e 2>/dev/null | grep -c sleep || true",
    ]);
    let r = report(&read);
    assert_eq!(r["start"], "warm", "{}", read.describe());
    let seen = r["stdout"].as_str().unwrap();
    assert!(
        !seen.contains("mark") && !seen.contains("secret"),
        "run 2 saw run 1's files: {seen}"
    );
}

#[test]
fn the_pool_refills_after_exhaustion() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 2);
    // Six at once against a pool of two: every run succeeds, warm while the pool lasts
    // (it refills as it goes) and cold otherwise; the counters agree with what the
    // clients saw, and every sandbox taken is replaced.
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(common::phantom_bin())
                .args(["run", "--json", "--", "sh", "-c", "sleep 0.5"])
                .env("PHANTOM_SUPERVISOR_SOCKET", &sup.socket)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut warm = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        if r["start"] == "warm" {
            warm += 1;
        } else {
            assert_eq!(r["start"], "cold", "{r}");
        }
    }
    assert!(warm >= 2, "the pool's two sandboxes were not used");
    let status = sup.status();
    let pool = &status["pools"][0];
    assert_eq!(pool["hits"].as_u64(), Some(warm), "{status}");
    assert_eq!(pool["misses"].as_u64(), Some(6 - warm), "{status}");
    sup.wait_ready(Duration::from_secs(20));
    let pool = sup.status()["pools"][0].clone();
    assert_eq!(pool["created"].as_u64(), Some(2 + warm), "{pool}");
    assert_eq!(pool["failures"], 0, "{pool}");
}

#[test]
fn many_concurrent_warm_runs_all_succeed() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 8);
    let children: Vec<_> = (0..30)
        .map(|i| {
            Command::new(common::phantom_bin())
                .args(["run", "--", "sh", "-c", &format!("echo run-{i}")])
                .env("PHANTOM_SUPERVISOR_SOCKET", &sup.socket)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("run-{i}\n"));
    }
}

/// Whether process `pid` still exists (zombies count as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn killing_the_supervisor_takes_its_sandboxes_down() {
    if !sandbox_available() {
        return;
    }
    let mut sup = Supervisor::start("default", 2);
    let marker = format!("warm-kill-{}", std::process::id());
    let mut run = Command::new(common::phantom_bin())
        .args(["run", "--", "sh", "-c", &format!("sleep 300; : {marker}")])
        .env("PHANTOM_SUPERVISOR_SOCKET", &sup.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !common::host_processes_containing(&marker)
        .iter()
        .any(|(_, c)| c.starts_with("sh -c"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "warm run did not start\n{}",
            sup.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let inits = sup.sandbox_pids();
    assert!(
        inits.len() >= 2,
        "expected pooled and active sandboxes, found {inits:?}"
    );
    sup.kill("-KILL");
    // The client learns it at once and says so.
    let waited = Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "phantom run outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(125));
    // Every sandbox dies with the supervisor.
    let killed = Instant::now();
    loop {
        let left: Vec<u32> = inits.iter().copied().filter(|p| alive(*p)).collect();
        let payload = common::host_processes_containing(&marker);
        if left.is_empty() && payload.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "left behind: inits {left:?}, payload {payload:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next run (cold: no supervisor now) collects their run directories.
    let next = sup.phantom(&["run", "--", "true"]);
    assert_eq!(next.code, Some(0), "{}", next.describe());
}

#[test]
fn an_unserved_profile_falls_back_to_cold_and_says_why() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 1);
    let out = sup.phantom(&[
        "run",
        "--verbose",
        "--json",
        "--profile",
        "minimal",
        "--",
        "true",
    ]);
    assert_eq!(report(&out)["start"], "cold", "{}", out.describe());
    assert!(
        out.stderr.contains("no pool for profile minimal"),
        "{}",
        out.describe()
    );
    let none = phantom(&["run", "--verbose", "--", "true"], |c| {
        c.env(
            "PHANTOM_SUPERVISOR_SOCKET",
            Path::new("/nonexistent/phantom.sock"),
        );
    });
    assert_eq!(none.code, Some(0));
    assert!(
        none.stderr
            .contains("no supervisor at /nonexistent/phantom.sock"),
        "{}",
        none.describe()
    );
}

/// `phantom run --profile python-dev --json ARGS` through `sup`, with `stdin`.
fn python_case(
    sup: &Supervisor,
    args: &[&str],
    stdin: Option<&str>,
    cold: bool,
) -> (Option<i32>, Value) {
    let mut argv = vec!["run", "--json", "--profile", "python-dev"];
    if cold {
        argv.push("--cold");
    }
    argv.extend(args);
    run_json(sup, &argv, stdin)
}

/// python-dev's pool forks its runs from a zygote: each case goes on in the zygote's
/// interpreter (counted with the pre-started ones) and must behave exactly as a cold
/// `python3` does.
#[test]
fn the_forked_python_behaves_like_python3() {
    if !sandbox_available() {
        return;
    }
    if !Path::new("/usr/bin/python3").exists() {
        common::skip("no /usr/bin/python3 on this host");
        return;
    }
    let sup = Supervisor::start("python-dev", 2);
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["--", "python3", "-c", "print(1)"], None),
        (
            &[
                "--",
                "python3",
                "-c",
                "import sys; print(sys.argv)",
                "a",
                "b c",
            ],
            None,
        ),
        (
            &[
                "--",
                "python3",
                "-c",
                "import sys; print(repr(sys.path[0]), __name__)",
            ],
            None,
        ),
        (&["--", "python3", "-c", "import sys; sys.exit(3)"], None),
        (
            &["--", "python3", "-c", "import sys; sys.exit('bye')"],
            None,
        ),
        (
            &[
                "--",
                "python3",
                "-c",
                "def f():\n    raise ValueError('boom')\nf()",
            ],
            None,
        ),
        (&["--", "python3", "-c", "x ="], None),
        (&["--", "python3", "-c", "raise KeyboardInterrupt"], None),
        (
            &[
                "--",
                "python3",
                "-c",
                "import sys; print(sys.stdin.read().upper(), end='')",
            ],
            Some("hello stdin\n"),
        ),
        (
            &[
                "--cwd",
                "/tmp",
                "--env",
                "A=1",
                "--",
                "python3",
                "-c",
                "import os; print(os.getcwd(), os.environ['A'], sorted(os.environ))",
            ],
            None,
        ),
        (
            &[
                "--",
                "python3",
                "-c",
                "import atexit; atexit.register(print, 'at exit'); print('main')",
            ],
            None,
        ),
        (&["--", "python3", "/usr/lib/python3.11/this.py"], None),
        (&["--", "python3", "/nonexistent/script.py"], None),
        (
            &[
                "--",
                "python3",
                "-c",
                "import sys; print('out'); print('err', file=sys.stderr); sys.stdout.flush()",
            ],
            None,
        ),
    ];
    for (args, stdin) in cases {
        sup.wait_ready(Duration::from_secs(30));
        let (warm_code, warm) = python_case(&sup, args, *stdin, false);
        let (cold_code, cold) = python_case(&sup, args, *stdin, true);
        let what = format!(
            "case {args:?}\nwarm: {warm}\ncold: {cold}\nlog:\n{}",
            sup.log()
        );
        assert_eq!(warm["start"], "forked", "{what}");
        assert_eq!(cold["start"], "cold", "{what}");
        assert_eq!(warm_code, cold_code, "{what}");
        for key in ["exit_code", "signal", "timed_out", "stdout", "stderr"] {
            assert_eq!(warm[key], cold[key], "{key} differs: {what}");
        }
    }
    // Every case is `python3 -c ...` or `python3 SCRIPT`: all of them went on in the
    // zygote's interpreter.
    let status = sup.status();
    assert_eq!(
        status["pools"][0]["prewarmed_hits"].as_u64(),
        Some(cases.len() as u64),
        "{status}"
    );
}

#[test]
fn a_pooled_python_sandbox_still_runs_other_commands() {
    if !sandbox_available() {
        return;
    }
    if !Path::new("/usr/bin/python3").exists() {
        common::skip("no /usr/bin/python3 on this host");
        return;
    }
    let sup = Supervisor::start("python-dev", 1);
    // Not `python3 -c`/`python3 SCRIPT`: the zygote's child execs the command as a
    // cold payload would.
    for args in [
        &["--", "sh", "-c", "echo from sh"][..],
        &["--", "python3", "-u", "-c", "print('unbuffered')"][..],
        &[
            "--env",
            "PYTHONHASHSEED=1",
            "--",
            "python3",
            "-c",
            "print('seeded')",
        ][..],
    ] {
        sup.wait_ready(Duration::from_secs(30));
        let (code, r) = python_case(&sup, args, None, false);
        assert_eq!(code, Some(0), "{args:?}: {r}\n{}", sup.log());
        assert_eq!(r["start"], "forked", "{args:?}: {r}");
    }
}

/// A supervisor serves only its own uid: as root, a client run as the unprivileged
/// test user is not served (it cannot reach the 0600 socket; SO_PEERCRED would refuse
/// it too) and starts cold.
#[test]
fn another_users_client_is_not_served() {
    if !sandbox_available() {
        return;
    }
    if !common::is_root() {
        common::skip("needs root to run a client as another user");
        return;
    }
    let user = "phantom-test";
    if !Command::new("id")
        .arg(user)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        common::skip("no phantom-test user (scripts/test.sh creates it)");
        return;
    }
    let sup = Supervisor::start("default", 1);
    // A copy of phantom the other user can execute.
    let stage = sup.dir.join("stage");
    std::fs::create_dir(&stage).unwrap();
    let bin = stage.join("phantom");
    std::fs::copy(common::phantom_bin(), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&sup.dir, &stage, &bin] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("runuser")
        .args([
            "-u",
            user,
            "--",
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            "HOME=/tmp",
            "TMPDIR=/tmp",
        ])
        .arg(format!(
            "PHANTOM_SUPERVISOR_SOCKET={}",
            sup.socket.display()
        ))
        .arg(&bin)
        .args(["run", "--verbose", "--json", "--", "true"])
        .current_dir("/tmp")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        r["start"], "cold",
        "another user's run was served warm: {stdout}\n{stderr}"
    );
    assert_eq!(sup.status()["pools"][0]["hits"], 0);
}

/// `phantom pool status | head -1` used to panic on the closed pipe.
#[test]
fn pool_status_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 1);
    // The read end is closed before phantom starts: closing it after the spawn raced
    // with a phantom fast enough to write its table into the pipe's buffer and exit 0.
    let (read, write) = std::io::pipe().unwrap();
    drop(read);
    let child = Command::new(common::phantom_bin())
        .args(["pool", "status"])
        .env("PHANTOM_SUPERVISOR_SOCKET", &sup.socket)
        .stdin(Stdio::null())
        .stdout(write)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?} {stderr}", out.status);
}

/// A second supervisor used to take over the socket of a running one silently (the
/// first kept its pools, unreachable).
#[test]
fn a_second_supervisor_on_a_running_ones_socket_is_refused() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 1);
    // Also with --bind, whose HTTP front end used to serve on the first one's engine.
    for bind in [&[][..], &["--bind", "127.0.0.1:0"][..]] {
        let out = common::run_with_deadline(
            {
                let mut c = Command::new(common::supervisor::supervisor_bin());
                c.args(["--profiles", "default", "--zygote-pools", "1"])
                    .args(bind)
                    .arg("--socket")
                    .arg(&sup.socket);
                c
            },
            Duration::from_secs(30),
        );
        assert_ne!(out.code, Some(0), "{}", out.describe());
        assert!(
            out.stderr
                .contains(&format!("already running, pid {}", sup.pid())),
            "{}",
            out.describe()
        );
    }
    // The first one still serves, warm.
    let status = sup.status();
    assert_eq!(status["pid"], sup.pid(), "{status}");
    let out = sup.phantom(&["run", "--json", "--", "true"]);
    let report: Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["start"], "warm", "{}", out.describe());
}

/// With a supervisor running, a relative `--workspace ws` used to be refused ("not an
/// existing absolute directory") although it worked cold.
#[test]
fn a_relative_workspace_works_with_a_supervisor() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default", 1);
    let dir = sup.dir.join("cwd");
    std::fs::create_dir_all(dir.join("ws")).unwrap();
    // The sandbox's uid must be able to write it (an idmapped mount as root; else the
    // cold path's user namespace maps us).
    std::fs::set_permissions(
        dir.join("ws"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket = sup.socket.clone();
    let cwd = dir.clone();
    let out = phantom(
        &[
            "run",
            "--workspace",
            "ws",
            "--",
            "sh",
            "-c",
            "echo made > /workspace/f",
        ],
        move |c| {
            c.current_dir(&cwd)
                .env("PHANTOM_SUPERVISOR_SOCKET", &socket);
        },
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(std::fs::read_to_string(dir.join("ws/f")).unwrap(), "made\n");
}

/// A warm run whose argv and environment passed 256 KiB failed ("cannot hand the run
/// to the pooled sandbox: Message too long"); a pre-started interpreter that cannot
/// take such a request in one packet gives way to a plain exec.
#[test]
fn a_warm_run_with_a_large_environment_is_served() {
    if !sandbox_available() {
        return;
    }
    let sup = Supervisor::start("default,python-dev", 1);
    let value = "a".repeat(100_000);
    let envs: Vec<String> = ["A", "B", "C"]
        .iter()
        .map(|k| format!("{k}={value}"))
        .collect();
    for (profile, cmd) in [
        ("default", vec!["sh", "-c", "echo ${#A} ${#B} ${#C}"]),
        (
            "python-dev",
            vec![
                "python3",
                "-c",
                "import os; print(*(len(os.environ[k]) for k in 'ABC'))",
            ],
        ),
    ] {
        let mut args = vec!["run", "--json", "--profile", profile];
        for e in &envs {
            args.extend(["--env", e.as_str()]);
        }
        args.push("--");
        args.extend(cmd);
        let out = sup.phantom(&args);
        assert_eq!(out.code, Some(0), "{profile}: {}", out.describe());
        let report: Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
        assert_eq!(
            report["stdout"], "100000 100000 100000\n",
            "{profile}: {report}"
        );
        let how = if profile == "python-dev" {
            "forked"
        } else {
            "warm"
        };
        assert_eq!(report["start"], how, "{profile}: {report}");
    }
}
