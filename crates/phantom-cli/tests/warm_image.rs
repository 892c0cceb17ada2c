//! Warm pools on image roots: `phantom-supervisor --pool PROFILE:IMAGE` keeps sandboxes
//! built on an image's root, and `phantom run --image IMAGE` takes one. Each test builds
//! its images (`common::image`), imports them into a temporary store
//! (PHANTOM_STATE_DIR) and starts its own supervisor on that store and a private socket
//! (PHANTOM_SUPERVISOR_SOCKET).

mod common;

use std::time::Duration;

use common::image::{base_entries, file, json_report, stdout_of, State, OS_RELEASE};
use common::supervisor::Supervisor;
use common::{phantom, sandbox_available, PhantomOutput};
use serde_json::{json, Value};

/// A supervisor on `state`'s store with `pools` (`--pool` values), `size` each.
fn supervisor(state: &State, pools: &[&str], size: usize) -> Supervisor {
    let size = size.to_string();
    let mut args = vec!["--zygote-pools", size.as_str()];
    for pool in pools {
        args.extend(["--pool", pool]);
    }
    Supervisor::start_with(&args, Some(&state.0))
}

/// The pool `name` (`profile` or `profile:image`) in `phantom pool status --json`.
fn pool(sup: &Supervisor, name: &str) -> Value {
    let status = sup.status();
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            let shown = match p["image"].as_str() {
                Some(image) => format!("{}:{image}", p["profile"].as_str().unwrap()),
                None => p["profile"].as_str().unwrap().to_string(),
            };
            shown == name
        })
        .cloned()
        .unwrap_or_else(|| panic!("no pool {name} in {status}"))
}

/// `phantom image inspect --json NAME`'s root id.
fn root_id(state: &State, name: &str) -> String {
    let out = state.phantom(&["image", "inspect", "--json", name]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let record: Value = serde_json::from_str(&out.stdout).unwrap();
    record["root_id"].as_str().unwrap().to_string()
}

/// A report that says how the run started, with everything needed to see why.
fn started(out: &PhantomOutput, sup: &Supervisor) -> (Value, String) {
    let report = json_report(out);
    let what = format!("{}\nsupervisor log:\n{}", out.describe(), sup.log());
    (report, what)
}

#[test]
fn a_run_on_an_image_is_served_from_its_pool() {
    if !sandbox_available() {
        return;
    }
    let state = State::new("warm-pool");
    state.import("tiny:1", json!({}), &[]);
    let sup = supervisor(&state, &["default", "default:tiny:1"], 2);

    let out = sup.phantom(&[
        "run",
        "--json",
        "--image",
        "tiny:1",
        "--",
        "sh",
        "-c",
        "cat /etc/os-release; for p in /usr /usr/bin/env /etc/passwd; do [ -e $p ] && echo \"host path $p\"; done; \
         echo x > /etc/x || echo read-only; \
         while read -r l; do case $l in Seccomp:*|NoNewPrivs:*|CapEff:*) echo \"$l\";; esac; done < /proc/self/status; \
         cat /etc/hostname",
    ]);
    let (report, what) = started(&out, &sup);
    assert_eq!(report["start"], "warm", "{what}");
    assert_eq!(report["exit_code"], 0, "{what}");
    let stdout = report["stdout"].as_str().unwrap();
    // The image's root, read-only, not the host's /usr or /etc, fenced as usual.
    assert!(stdout.starts_with(OS_RELEASE), "{what}");
    assert!(!stdout.contains("host path"), "{what}");
    assert!(stdout.contains("read-only\n"), "{what}");
    assert!(stdout.contains("Seccomp:\t2"), "{what}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{what}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{what}");
    assert!(stdout.ends_with("phantom\n"), "{what}");
    assert_eq!(report["isolation"]["seccomp_programs"], 2, "{what}");

    // A run on the host root takes the host pool, and does not see the image.
    let out = sup.phantom(&["run", "--json", "--", "cat", "/etc/os-release"]);
    let (report, what) = started(&out, &sup);
    assert_eq!(report["start"], "warm", "{what}");
    assert_ne!(report["stdout"], OS_RELEASE, "{what}");

    let image_pool = pool(&sup, "default:tiny:1");
    assert_eq!(image_pool["hits"], 1, "{image_pool}");
    assert_eq!(image_pool["image"], "tiny:1");
    assert_eq!(image_pool["image_root_id"], root_id(&state, "tiny:1"));
    let host_pool = pool(&sup, "default");
    assert_eq!(host_pool["hits"], 1, "{host_pool}");
    assert_eq!(host_pool["image"], Value::Null);

    // The table shows the image next to the profile.
    let out = sup.phantom(&["pool", "status"]);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("default:tiny:1 ")),
        "{}",
        out.describe()
    );
}

/// One comparison: phantom args after `run --json [--cold]`.
fn warm_and_cold(sup: &Supervisor, args: &[&str]) -> [(Option<i32>, Value, String); 2] {
    [false, true].map(|cold| {
        sup.wait_ready(Duration::from_secs(20));
        let mut argv = vec!["run", "--json"];
        if cold {
            argv.push("--cold");
        }
        argv.extend_from_slice(args);
        let out = sup.phantom(&argv);
        (
            out.code,
            out.report().unwrap_or(Value::Null),
            out.describe(),
        )
    })
}

#[test]
fn warm_runs_on_an_image_behave_like_cold_ones() {
    if !sandbox_available() {
        return;
    }
    let state = State::new("warm-config");
    state.import_greeter();
    state.import(
        "entry",
        json!({"Entrypoint": ["sh", "-c", "echo entry:$1; pwd", "sh"], "Cmd": ["default"], "User": "1000"}),
        &[],
    );
    let sup = supervisor(&state, &["default:greeter", "default:entry"], 2);
    let list_env = "echo \"$GREETING\"; pwd; export -p";
    let cases: &[&[&str]] = &[
        // The image's Cmd, Env (its PATH wins over phantom's) and WorkingDir (which
        // the image lacks: the sandbox makes it).
        &["--image", "greeter"],
        // A command replaces Cmd; the rest of the config stays.
        &["--image", "greeter", "--", "sh", "-c", list_env],
        // --env over the image's Env, --cwd over its WorkingDir.
        &[
            "--image",
            "greeter",
            "--env",
            "GREETING=yo there",
            "--env",
            "PATH=/bin",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            list_env,
        ],
        // A --cwd the image does not have: a usage error on both paths.
        &["--image", "greeter", "--cwd", "/nonexistent", "--", "pwd"],
        // An Entrypoint stays first, Cmd is its default argument; User is warned about.
        &["--image", "entry"],
        &["--image", "entry", "--", "given"],
        &["--image", "entry", "--cwd", "/tmp", "--", "given"],
        // Exit codes, signals, writes to the read-only root.
        &["--image", "greeter", "--", "sh", "-c", "exit 3"],
        &["--image", "greeter", "--", "sh", "-c", "kill -9 $$"],
        &[
            "--image",
            "greeter",
            "--",
            "sh",
            "-c",
            "echo x > /srv/x; echo x > /workspace/x && cat /workspace/x",
        ],
    ];
    for args in cases {
        let [(warm_code, warm, warm_out), (cold_code, cold, cold_out)] = warm_and_cold(&sup, args);
        let what = format!(
            "case {args:?}\nwarm: {warm_out}\ncold: {cold_out}\nlog:\n{}",
            sup.log()
        );
        assert_eq!(warm_code, cold_code, "{what}");
        if cold.is_null() {
            // No report: refused before the payload ran (exit 2), on both paths.
            assert_eq!(cold_code, Some(2), "{what}");
            assert!(warm.is_null(), "{what}");
            assert!(
                warm_out.contains("/nonexistent") && cold_out.contains("/nonexistent"),
                "{what}"
            );
            continue;
        }
        assert_eq!(warm["start"], "warm", "{what}");
        assert_eq!(cold["start"], "cold", "{what}");
        for key in ["exit_code", "signal", "stdout", "stderr", "profile", "mode"] {
            assert_eq!(warm[key], cold[key], "{key} differs: {what}");
        }
        // The image's warnings (User) and, unprivileged, the cgroup fallback: a warm
        // run reports what its pooled sandbox was built with, as a cold one does.
        assert_eq!(warm["warnings"], cold["warnings"], "{what}");
    }
    // What the cases above compared is what the image says.
    let out = sup.phantom(&["run", "--json", "--image", "greeter"]);
    assert_eq!(
        stdout_of(&out),
        "hi\n/srv\n/bin:/opt/bin\n/tmp\n",
        "{}",
        out.describe()
    );
    assert_eq!(json_report(&out)["start"], "warm", "{}", out.describe());
    let out = sup.phantom(&["run", "--json", "--image", "entry", "--", "given"]);
    assert_eq!(stdout_of(&out), "entry:given\n/workspace\n");
    assert!(
        json_report(&out)["warnings"]
            .to_string()
            .contains("User `1000`"),
        "{}",
        out.describe()
    );
}

#[test]
fn an_image_without_a_pool_starts_cold_and_says_why() {
    if !sandbox_available() {
        return;
    }
    let state = State::new("warm-nopool");
    state.import("tiny:1", json!({}), &[]);
    state.import("other", json!({}), &[]);
    let sup = supervisor(&state, &["default", "minimal:other"], 1);
    let cases: &[(&[&str], &str)] = &[
        // A pool of the profile on the host root does not serve an image...
        (
            &["--image", "tiny:1"],
            "no pool for profile default on image `tiny:1` (serving: default, minimal:other)",
        ),
        // ... nor does a pool of another profile on the image.
        (
            &["--image", "other"],
            "no pool for profile default on image `other`",
        ),
        (
            &["--profile", "minimal", "--image", "tiny:1"],
            "no pool for profile minimal on image `tiny:1`",
        ),
    ];
    for (flags, why) in cases {
        let mut args = vec!["run", "--json", "--verbose"];
        args.extend_from_slice(flags);
        args.extend(["--", "cat", "/etc/os-release"]);
        let out = sup.phantom(&args);
        let (report, what) = started(&out, &sup);
        assert_eq!(report["start"], "cold", "{what}");
        assert_eq!(report["stdout"], OS_RELEASE, "{what}");
        assert!(
            out.stderr.contains(&format!("phantom: cold start: {why}")),
            "--verbose says why\n{what}"
        );
    }
    // A policy file on an image is never pooled, even with a pool of its base profile.
    let policy = state.0.join("on-image.yaml");
    std::fs::write(
        &policy,
        "profile: on-image\nextends: minimal\nfilesystem:\n  rootfs: image:other\n",
    )
    .unwrap();
    let out = sup.phantom(&[
        "run",
        "--json",
        "--verbose",
        "--policy",
        policy.to_str().unwrap(),
        "--",
        "cat",
        "/etc/os-release",
    ]);
    let (report, what) = started(&out, &sup);
    assert_eq!(report["start"], "cold", "{what}");
    assert!(out.stderr.contains("a policy file is not pooled"), "{what}");
    assert_eq!(pool(&sup, "minimal:other")["hits"], 0);
}

#[test]
fn a_pool_on_a_missing_image_is_refused_at_start() {
    let state = State::new("warm-missing");
    let out = common::run_with_deadline(
        {
            let mut c = std::process::Command::new(common::supervisor::supervisor_bin());
            c.args(["--pool", "default:nope:1", "--socket"])
                .arg(state.0.join("s.sock"))
                .env("PHANTOM_STATE_DIR", &state.0);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("--pool default:nope:1")
            && out.stderr.contains("no image named `nope:1`"),
        "{}",
        out.describe()
    );
    // --help shows how to ask for one.
    let out = common::run_with_deadline(
        {
            let mut c = std::process::Command::new(common::supervisor::supervisor_bin());
            c.arg("--help");
            c
        },
        Duration::from_secs(30),
    );
    assert!(
        out.stdout.contains("--pool <PROFILE[:IMAGE]>")
            && out.stdout.contains("--pool default --pool default:alpine"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_reimported_image_makes_its_pool_stale_and_it_refills_on_the_new_root() {
    if !sandbox_available() {
        return;
    }
    let state = State::new("warm-stale");
    state.import("tiny", json!({}), &[]);
    let first_root = root_id(&state, "tiny");
    let sup = supervisor(&state, &["default:tiny"], 2);
    let os_release = |sup: &Supervisor| {
        let out = sup.phantom(&[
            "run",
            "--json",
            "--verbose",
            "--image",
            "tiny",
            "--",
            "sh",
            "-c",
            "cat /etc/os-release; pwd",
        ]);
        let (report, what) = started(&out, sup);
        assert_eq!(report["exit_code"], 0, "{what}");
        (report, out.stderr, what)
    };
    let (report, _, what) = os_release(&sup);
    assert_eq!(report["start"], "warm", "{what}");
    assert_eq!(
        report["stdout"],
        format!("{OS_RELEASE}/workspace\n"),
        "{what}"
    );
    sup.wait_ready(Duration::from_secs(20));

    // The same name, another root.
    let second = "ID=phantom-test-image-2\n";
    let mut entries: Vec<_> = base_entries()
        .into_iter()
        .filter(|e| e.path() != "etc/os-release")
        .collect();
    entries.push(file("etc/os-release", second.as_bytes(), 0o644));
    state.import_entries("tiny", json!({}), &entries);
    let second_root = root_id(&state, "tiny");
    assert_ne!(first_root, second_root);

    // The next run must not get the old root: it starts cold, on the new one...
    let (report, stderr, what) = os_release(&sup);
    assert_eq!(report["start"], "cold", "{what}");
    assert_eq!(report["stdout"], format!("{second}/workspace\n"), "{what}");
    assert!(
        stderr.contains("pool default:tiny was built on an earlier import of image `tiny`"),
        "{what}"
    );
    // ... the pool dropped both unused sandboxes and refilled on the new root ...
    sup.wait_ready(Duration::from_secs(20));
    let status = pool(&sup, "default:tiny");
    assert_eq!(status["stale"], 2, "{status}");
    assert_eq!(status["image_root_id"], second_root.as_str(), "{status}");
    assert!(
        sup.log().contains("stale sandboxes dropped"),
        "{}",
        sup.log()
    );
    // ... and serves it warm.
    let (report, _, what) = os_release(&sup);
    assert_eq!(report["start"], "warm", "{what}");
    assert_eq!(report["stdout"], format!("{second}/workspace\n"), "{what}");

    // A new WorkingDir on the same root is a change too: the pooled sandboxes made the
    // old one (here: none) in their root.
    sup.wait_ready(Duration::from_secs(20));
    state.import_entries("tiny", json!({"WorkingDir": "/srv/app"}), &entries);
    assert_eq!(root_id(&state, "tiny"), second_root);
    let (report, _, what) = os_release(&sup);
    assert_eq!(report["start"], "cold", "{what}");
    assert_eq!(report["stdout"], format!("{second}/srv/app\n"), "{what}");
    sup.wait_ready(Duration::from_secs(20));
    let (report, _, what) = os_release(&sup);
    assert_eq!(report["start"], "warm", "{what}");
    assert_eq!(report["stdout"], format!("{second}/srv/app\n"), "{what}");
    assert_eq!(pool(&sup, "default:tiny")["stale"], 4);

    // A client whose state directory is not the supervisor's runs with its own
    // engine (its own store has another image under that name), and the pool, which
    // is what the supervisor's store has, is left alone.
    let elsewhere = State::new("warm-stale-elsewhere");
    elsewhere.import("tiny", json!({}), &[]);
    let socket = sup.socket.clone();
    let dir = elsewhere.0.clone();
    let out = phantom(
        &[
            "run",
            "--json",
            "--verbose",
            "--image",
            "tiny",
            "--",
            "cat",
            "/etc/os-release",
        ],
        move |c| {
            c.env("PHANTOM_SUPERVISOR_SOCKET", &socket)
                .env("PHANTOM_STATE_DIR", &dir);
        },
    );
    let (report, what) = started(&out, &sup);
    assert_eq!(report["start"], "cold", "{what}");
    assert_eq!(report["stdout"], OS_RELEASE, "{what}");
    assert!(
        out.stderr.contains("keeps its state in") && out.stderr.contains("PHANTOM_STATE_DIR"),
        "{what}"
    );
    let status = pool(&sup, "default:tiny");
    assert_eq!(status["stale"], 4, "{status}");
    assert_eq!(status["image_root_id"], second_root.as_str(), "{status}");
}

/// The files of an image holding the host's python3 with just the modules a zygote and
/// a `print` need (what the interpreter loads for them, with their cached bytecode and
/// extension modules), the libraries all of them link, and libphantom_zygote.so's.
fn python_image_entries() -> Vec<common::image::Entry> {
    let list = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import ctypes, gc, importlib, json, signal, socket, types, traceback, atexit, resource, runpy, sys, importlib.util as u\n\
             for m in list(sys.modules.values()):\n\
             \x20   f = getattr(m, '__file__', None)\n\
             \x20   if f:\n\
             \x20       print(f)\n\
             \x20       if f.endswith('.py'):\n\
             \x20           print(u.cache_from_source(f))\n\
             import encodings, os\n\
             d = os.path.dirname(encodings.__file__)\n\
             [print(os.path.join(r, n)) for r, _, ns in os.walk(d) for n in ns]",
        ])
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let mut files: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .filter(|f| std::path::Path::new(f).is_file())
        .collect();
    files.push("/usr/bin/python3.11".into());
    let zygote_lib = common::phantom_bin().with_file_name("libphantom_zygote.so");
    let mut linked: Vec<String> = [
        "/usr/bin/python3.11".to_string(),
        zygote_lib.display().to_string(),
    ]
    .iter()
    .chain(files.iter().filter(|f| f.ends_with(".so")))
    .flat_map(|f| linked_libraries(f))
    .collect();
    files.append(&mut linked);
    files.sort();
    files.dedup();
    let mut entries: Vec<common::image::Entry> = files
        .iter()
        .map(|f| {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("read {f}: {e}"));
            file(f.trim_start_matches('/'), &data, 0o755)
        })
        .collect();
    entries.push(common::image::symlink("usr/bin/python3", "python3.11"));
    entries.push(file("etc/os-release", b"ID=phantom-python-image\n", 0o644));
    entries
}

/// The libraries `ldd` lists for `object` (none for an extension module that links
/// nothing beyond the interpreter).
fn linked_libraries(object: &str) -> Vec<String> {
    let out = std::process::Command::new("ldd")
        .arg(object)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        })
        .filter(|p| p.starts_with('/'))
        .map(str::to_string)
        .collect()
}

/// A Python profile's pool on an image is a zygote made of the image's own python3:
/// runs on the image are forked from it, see the image's root, and go on in the
/// interpreter.
#[test]
fn a_python_pool_on_an_image_forks_runs_from_the_images_interpreter() {
    if !sandbox_available() || !std::path::Path::new("/usr/bin/python3.11").exists() {
        return;
    }
    let state = State::new("python-image");
    state.import_entries(
        "pyimg",
        json!({"Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]}),
        &python_image_entries(),
    );
    // greeter has no python3: its python-dev pool says so and keeps pre-built sandboxes.
    state.import_greeter();
    let sup = supervisor(&state, &["python-dev:pyimg", "python-dev:greeter"], 1);
    let status = pool(&sup, "python-dev:pyimg");
    assert_eq!(status["zygote"], "ready", "{status}\n{}", sup.log());
    let without = pool(&sup, "python-dev:greeter");
    assert!(
        without["zygote"]
            .as_str()
            .is_some_and(|z| z.starts_with("none: interpreter: a zygote needs python3")),
        "{without}\n{}",
        sup.log()
    );
    let out = sup.phantom(&[
        "run",
        "--json",
        "--profile",
        "python-dev",
        "--image",
        "greeter",
    ]);
    let (report, what) = started(&out, &sup);
    assert_eq!(report["start"], "warm", "{what}");
    let out = sup.phantom(&[
        "run",
        "--json",
        "--profile",
        "python-dev",
        "--image",
        "pyimg",
        "--",
        "python3",
        "-c",
        "print(open('/etc/os-release').read().strip())",
    ]);
    let (report, what) = started(&out, &sup);
    assert_eq!(report["start"], "forked", "{what}");
    assert_eq!(report["stdout"], "ID=phantom-python-image\n", "{what}");
    let status = pool(&sup, "python-dev:pyimg");
    assert_eq!(
        status["prewarmed_hits"], 1,
        "went on in the interpreter: {status}"
    );
}
