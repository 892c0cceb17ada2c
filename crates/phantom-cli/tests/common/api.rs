//! A phantom-supervisor with the HTTP API on loopback, for the api tests: its own
//! state directory and pool socket, a plain HTTP/1.1 client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::phantom;

pub fn supervisor_bin() -> PathBuf {
    match std::env::var_os("PHANTOM_BIN") {
        Some(p) => PathBuf::from(p).with_file_name("phantom-supervisor"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_phantom-supervisor")),
    }
}

/// A running server with its own state directory; stopped and cleaned on drop.
pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start(tag: &str, extra: &[&str]) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "phantom-api-it-{tag}-{}-{}",
            std::process::id(),
            super::unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let mut cmd = Command::new(supervisor_bin());
        cmd.args([
            "--bind",
            "127.0.0.1:0",
            "--zygote-pools",
            "2",
            "--profiles",
            "default",
            "--socket",
        ])
        .arg(dir.join("pool.sock"))
        .args(extra)
        .env("PHANTOM_STATE_DIR", dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start phantom-supervisor");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("HTTP API on http://127.0.0.1:").nth(1) {
                    let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                    let _ = tx.send(port);
                }
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server did not start: {}", log.lock().unwrap()));
        Server {
            child: Some(child),
            dir,
            port,
            log,
        }
    }

    /// The server's pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn phantom(&self, args: &[&str]) -> super::PhantomOutput {
        let state = self.dir.join("state");
        phantom(args, move |c| {
            c.env("PHANTOM_STATE_DIR", state);
        })
    }

    /// A new API key (`phantom keys add`), with extra flags.
    pub fn key(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["keys", "add", name, "--json"];
        args.extend_from_slice(extra);
        let out = self.phantom(&args);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        v["key"].as_str().unwrap().to_string()
    }

    pub fn request(&self, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Reply {
        http(self.port, method, path, key, body)
    }

    pub fn json(&self, method: &str, path: &str, key: &str, body: Value) -> Reply {
        self.request(method, path, Some(key), body.to_string().as_bytes())
    }

    /// SIGTERM, and wait for the server to exit (within `limit`).
    pub fn stop(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
        let _ = self.phantom(&["destroy", "--all", "--every-owner"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.1 exchange (Connection: close).
pub struct Reply {
    pub status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn http(port: u16, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
        body.len()
    );
    if let Some(k) = key {
        head.push_str(&format!("X-API-Key: {k}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}
