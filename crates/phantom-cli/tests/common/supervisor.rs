//! A `phantom-supervisor` of one test, on a private socket (PHANTOM_SUPERVISOR_SOCKET),
//! so that tests neither see each other's pools nor a supervisor running on the host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{phantom, PhantomOutput};

/// A supervisor for one test; killed (and its socket removed) on drop.
pub struct Supervisor {
    child: Option<Child>,
    /// Its private directory: the socket and the log.
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// PHANTOM_STATE_DIR (the image store) it runs with, given to `phantom` too.
    state: Option<PathBuf>,
}

pub fn supervisor_bin() -> PathBuf {
    super::phantom_bin().with_file_name("phantom-supervisor")
}

impl Supervisor {
    /// Start with `pool` sandboxes for each of `profiles` and wait until they are ready.
    pub fn start(profiles: &str, pool: usize) -> Supervisor {
        Supervisor::start_with(
            &["--profiles", profiles, "--zygote-pools", &pool.to_string()],
            None,
        )
    }

    /// Start with `args` (the pools; the socket is added) and, when given,
    /// PHANTOM_STATE_DIR=`state` — where it finds the images of `--pool PROFILE:IMAGE`,
    /// and what [`Supervisor::phantom`] passes on. Waits until every pool is full.
    pub fn start_with(args: &[&str], state: Option<&Path>) -> Supervisor {
        Supervisor::start_with_env(args, state, &[])
    }

    /// [`Supervisor::start_with`], with `env` set for the supervisor.
    pub fn start_with_env(args: &[&str], state: Option<&Path>, env: &[(&str, &str)]) -> Supervisor {
        let dir = std::env::temp_dir().join(format!(
            "phantom-warm-test-{}-{}",
            std::process::id(),
            super::unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("supervisor.sock");
        let log = std::fs::File::create(dir.join("supervisor.log")).unwrap();
        let mut command = Command::new(supervisor_bin());
        command
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(state) = state {
            command.env("PHANTOM_STATE_DIR", state);
        }
        command.envs(env.iter().copied());
        let child = command.spawn().expect("start phantom-supervisor");
        let sup = Supervisor {
            child: Some(child),
            dir,
            socket,
            state: state.map(Path::to_path_buf),
        };
        sup.wait_ready(Duration::from_secs(20));
        sup
    }

    /// The socket it listens on (PHANTOM_SUPERVISOR_SOCKET for a client).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("supervisor.log")).unwrap_or_default()
    }

    /// `phantom ARGS` talking to this supervisor (with its PHANTOM_STATE_DIR).
    pub fn phantom(&self, args: &[&str]) -> PhantomOutput {
        let socket = self.socket.clone();
        let state = self.state.clone();
        phantom(args, move |c| {
            c.env("PHANTOM_SUPERVISOR_SOCKET", &socket);
            if let Some(state) = state {
                c.env("PHANTOM_STATE_DIR", state);
            }
        })
    }

    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `phantom pool status --json`, or what went wrong.
    fn try_status(&self) -> Result<Value, String> {
        let out = self.phantom(&["pool", "status", "--json"]);
        if out.code != Some(0) {
            return Err(format!(
                "{}\nsupervisor log:\n{}",
                out.describe(),
                self.log()
            ));
        }
        serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout))
    }

    /// Wait until every pool is full.
    pub fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            // A supervisor that refused its arguments never listens: say why at once.
            assert!(
                !self.exited(),
                "the supervisor exited\nlog:\n{}",
                self.log()
            );
            // The socket's file exists a moment before it listens: until the limit,
            // a refused `pool status` is tried again.
            let status = match self.socket.exists() {
                true => self.try_status(),
                false => Err("no socket yet".to_string()),
            };
            if let Ok(status) = &status {
                // The engine's own rule: a target reached, or a ready zygote.
                let status: phantom_api::engine::PoolStatus =
                    serde_json::from_value(status.clone()).expect("pool status parses");
                if status.pools.iter().all(|p| p.is_full()) {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "pools not ready in {limit:?} (last status: {status:?})\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the supervisor is gone (a zombie not yet waited for counts).
    pub fn exited(&self) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        // "pid (comm) STATE ...": comm may hold spaces, so read after the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X")
    }

    /// Pids of the supervisor's children (its pooled and active sandboxes' inits).
    pub fn sandbox_pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let pid = self.pid();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<u32>().ok()),
                );
            }
        }
        out
    }

    pub fn kill(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill("-TERM");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
