//! What E2B's API says about a sandbox that our persistent sandbox does not hold: the
//! template it was asked for, its metadata and environment, when it expires
//! (`timeout`, moved by set_timeout and connect), and the token of its in-sandbox
//! traffic. Kept in memory and in `e2b-sandboxes.json` of the state directory (0600),
//! so that a restarted supervisor still serves the sandboxes it made.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One E2B sandbox: our persistent sandbox of the same name, of `owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// E2B's `sandboxID`, also the name of our sandbox.
    pub id: String,
    /// The key it belongs to (our `Owner::Key` id).
    pub owner: String,
    /// `templateID` as asked, and the profile, image or snapshot it named.
    pub template: String,
    pub profile: String,
    pub metadata: BTreeMap<String, String>,
    /// Set in every process started in it.
    pub env_vars: BTreeMap<String, String>,
    /// Unix seconds.
    pub started_at: u64,
    pub end_at: u64,
    /// `X-Access-Token` of its in-sandbox traffic.
    pub token: String,
    pub allow_internet_access: Option<bool>,
    pub cpu_count: u32,
    pub memory_mb: u64,
    /// Paused: its processes are frozen; connect resumes it.
    #[serde(default)]
    pub paused: bool,
}

/// The records, by sandbox id.
pub struct Registry {
    file: Option<PathBuf>,
    records: Mutex<BTreeMap<String, Record>>,
}

impl Registry {
    /// The records of `state_dir` (none when there is no state directory or file).
    pub fn open(state_dir: Option<PathBuf>) -> Registry {
        let file = state_dir.map(|d| d.join("e2b-sandboxes.json"));
        let records = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice::<Vec<Record>>(&bytes).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        Registry {
            file,
            records: Mutex::new(records),
        }
    }

    pub fn get(&self, id: &str) -> Option<Record> {
        self.lock().get(id).cloned()
    }

    /// `id`'s record when `owner` owns it (else None: "not found" and "not yours" look
    /// the same).
    pub fn owned(&self, id: &str, owner: &str) -> Option<Record> {
        self.get(id).filter(|r| r.owner == owner)
    }

    pub fn of_owner(&self, owner: &str) -> Vec<Record> {
        self.lock()
            .values()
            .filter(|r| r.owner == owner)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Record> {
        self.lock().values().cloned().collect()
    }

    pub fn insert(&self, record: Record) {
        let mut records = self.lock();
        records.insert(record.id.clone(), record);
        self.save(&records);
    }

    /// Change `id`'s record; false when there is none.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Record)) -> bool {
        let mut records = self.lock();
        let Some(r) = records.get_mut(id) else {
            return false;
        };
        f(r);
        self.save(&records);
        true
    }

    pub fn remove(&self, id: &str) -> Option<Record> {
        let mut records = self.lock();
        let r = records.remove(id);
        if r.is_some() {
            self.save(&records);
        }
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Written whole to a temporary file and renamed over the old one.
    fn save(&self, records: &BTreeMap<String, Record>) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(file) = &self.file else {
            return;
        };
        let list: Vec<&Record> = records.values().collect();
        let tmp = file.with_extension(format!("json.{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&serde_json::to_vec(&list).expect("records serialize")))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            eprintln!(
                "phantom-supervisor: warning: cannot save the E2B sandboxes to {}: {e}",
                file.display()
            );
        }
    }
}

/// `n` random bytes.
fn random(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom is readable");
    buf
}

/// A new sandbox id in E2B's shape: `i` and 19 lowercase letters and digits.
pub fn new_sandbox_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut id = String::from("i");
    // 252 = 7 * 36: bytes at or above it are dropped so that each symbol is equally
    // likely.
    while id.len() < 20 {
        for b in random(32) {
            if b < 252 && id.len() < 20 {
                id.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
    }
    id
}

/// A new access token: 32 random bytes, hex.
pub fn new_token() -> String {
    random(32).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a presented token is `expected`, compared without an early exit.
pub fn same_token(presented: &str, expected: &str) -> bool {
    phantom_mcp::http::same_secret(presented.as_bytes(), expected.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_e2bs_shape_and_differ() {
        let a = new_sandbox_id();
        assert_eq!(a.len(), 20);
        assert!(a.starts_with('i'));
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(a, new_sandbox_id());
        assert_eq!(new_token().len(), 64);
    }

    #[test]
    fn records_survive_a_restart_and_only_their_owner_sees_them() {
        let dir = std::env::temp_dir().join(format!("phantom-e2b-reg-{}", new_sandbox_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let reg = Registry::open(Some(dir.clone()));
        let r = Record {
            id: "isandbox".into(),
            owner: "k1".into(),
            template: "base".into(),
            profile: "default".into(),
            metadata: [("user".to_string(), "abc".to_string())].into(),
            env_vars: Default::default(),
            started_at: 1,
            end_at: 2,
            token: new_token(),
            allow_internet_access: None,
            cpu_count: 1,
            memory_mb: 512,
            paused: false,
        };
        reg.insert(r.clone());
        assert!(reg.owned("isandbox", "k2").is_none());
        let again = Registry::open(Some(dir.clone()));
        assert_eq!(again.owned("isandbox", "k1"), Some(r));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("e2b-sandboxes.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        again.remove("isandbox");
        assert!(Registry::open(Some(dir.clone())).all().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
    }
}
