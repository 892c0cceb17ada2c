//! API keys for the supervisor's HTTP API (`phantom keys add|list|revoke`).
//!
//! A key is `phk_<id>_<secret>`: the id (12 hex digits) finds the record, the secret
//! (32 random bytes, hex) proves it. A key for E2B's SDKs (`phantom keys add --e2b`)
//! has their shape, `e2b_<40 hex>`: its first 12 hex digits are the id, the other 28
//! (14 random bytes) the secret; it is the same kind of key otherwise. Only the BLAKE3 hash of the whole key is stored —
//! a key is high-entropy random, so a fast hash is enough — and it is compared in
//! constant time (`blake3::Hash` equality). The key itself is shown once, by `add`.

use phantom_api::access::Grants;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::db::db_error;
use crate::{State, StateError};

/// A key's record (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds, once revoked.
    pub revoked: Option<u64>,
    pub last_used: Option<u64>,
    /// Requests per minute (token bucket refill).
    pub rate_per_min: u32,
    /// Requests allowed at once above the rate (bucket size).
    pub burst: u32,
    /// Sandboxes (runs and persistent ones) at once.
    pub max_concurrent: u32,
    /// What requests made with it may ask for (profiles, networks, modes, limits,
    /// capabilities that reach the host).
    pub grants: Grants,
}

/// Limits a new key gets.
#[derive(Debug, Clone, Copy)]
pub struct KeyLimits {
    pub rate_per_min: u32,
    pub burst: u32,
    pub max_concurrent: u32,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            rate_per_min: 600,
            burst: 60,
            max_concurrent: 16,
        }
    }
}

/// Why a presented key was refused (the HTTP API answers 401 for each, and the
/// audit log records which).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed API key (expected phk_<id>_<secret> or e2b_<40 hex>)")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
    #[error("API key {0} was revoked")]
    Revoked(String),
}

/// Touched when a key is revoked (see [`Keys::generation`]).
const GENERATION_FILE: &str = "keys.changed";

fn random_hex(bytes: usize) -> Result<String, StateError> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| StateError::Io {
            what: "read",
            path: "/dev/urandom".into(),
            source: e,
        })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `text` has the shape of a key `phantom keys add` makes (`phk_<id>_<secret>`).
pub fn looks_like_key(text: &str) -> bool {
    key_id(text).is_ok()
}

/// Split `phk_<id>_<secret>` or `e2b_<id><secret>` into its id, checking the shape.
fn key_id(key: &str) -> Result<&str, AuthError> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = key.strip_prefix(E2B_PREFIX) {
        if !hex(rest, E2B_HEX) {
            return Err(AuthError::Malformed);
        }
        return Ok(&rest[..12]);
    }
    let rest = key.strip_prefix("phk_").ok_or(AuthError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    if !hex(id, 12) || !hex(secret, 64) {
        return Err(AuthError::Malformed);
    }
    Ok(id)
}

/// E2B's key shape: this prefix and [`E2B_HEX`] hex digits.
const E2B_PREFIX: &str = "e2b_";
const E2B_HEX: usize = 40;

/// The shape of a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyShape {
    /// `phk_<id>_<secret>`.
    #[default]
    Phantom,
    /// `e2b_<40 hex>`, what E2B's SDKs take as `E2B_API_KEY`.
    E2b,
}

/// Whether `presented` has the shape of a key (`phk_<12 hex>_<64 hex>`): checked before
/// any database lookup, so that garbage costs no lookup.
pub fn well_formed(presented: &str) -> Result<(), AuthError> {
    key_id(presented).map(|_| ())
}

const COLUMNS: &str =
    "id, name, created, revoked, last_used, rate_per_min, burst, max_concurrent, grants";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    let opt = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    Ok(ApiKey {
        id: r.get(0)?,
        name: r.get(1)?,
        created: r.get::<_, i64>(2)?.max(0) as u64,
        revoked: opt(3)?,
        last_used: opt(4)?,
        rate_per_min: r.get(5)?,
        burst: r.get(6)?,
        max_concurrent: r.get(7)?,
        // A key made before grants existed (no column value) gets the default ones; a
        // value that does not parse grants nothing beyond them either.
        grants: r
            .get::<_, Option<String>>(8)?
            .and_then(|g| serde_json::from_str(&g).ok())
            .unwrap_or_else(Grants::default_key),
    })
}

/// The keys of the state database.
pub struct Keys {
    state: State,
}

impl Keys {
    /// The keys in the default state directory.
    pub fn open_default() -> Result<Keys, StateError> {
        Ok(Keys {
            state: State::open_default()?,
        })
    }

    /// The keys in state directory `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Keys, StateError> {
        Ok(Keys {
            state: State::open(dir)?,
        })
    }

    /// Make a key named `name` with `grants`; returns its record and the key itself
    /// (shown once).
    pub fn add(
        &self,
        name: &str,
        limits: KeyLimits,
        grants: Grants,
    ) -> Result<(ApiKey, String), StateError> {
        self.add_shaped(name, limits, grants, KeyShape::Phantom)
    }

    /// [`Keys::add`], with the key in `shape`.
    pub fn add_shaped(
        &self,
        name: &str,
        limits: KeyLimits,
        grants: Grants,
        shape: KeyShape,
    ) -> Result<(ApiKey, String), StateError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(StateError::Usage(
                "a key's name: 1 to 64 printable characters, e.g. grader-prod".into(),
            ));
        }
        if limits.rate_per_min == 0 || limits.burst == 0 || limits.max_concurrent == 0 {
            return Err(StateError::Usage(
                "--rate, --burst and --max-concurrent must be at least 1".into(),
            ));
        }
        let id = random_hex(6)?;
        let secret = match shape {
            KeyShape::Phantom => format!("phk_{id}_{}", random_hex(32)?),
            KeyShape::E2b => format!("{E2B_PREFIX}{id}{}", random_hex((E2B_HEX - 12) / 2)?),
        };
        let key = ApiKey {
            id: id.clone(),
            name: name.to_string(),
            created: crate::now_s(),
            revoked: None,
            last_used: None,
            rate_per_min: limits.rate_per_min,
            burst: limits.burst,
            max_concurrent: limits.max_concurrent,
            grants,
        };
        self.state
            .conn()
            .execute(
                "INSERT INTO api_keys (id, name, hash, created, rate_per_min, burst,
                     max_concurrent, grants)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    key.id,
                    key.name,
                    blake3::hash(secret.as_bytes()).to_hex().to_string(),
                    key.created as i64,
                    key.rate_per_min,
                    key.burst,
                    key.max_concurrent,
                    serde_json::to_string(&key.grants).expect("grants serialize"),
                ],
            )
            .map_err(db_error("record the key"))?;
        Ok((key, secret))
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Result<Vec<ApiKey>, StateError> {
        let mut stmt = self
            .state
            .conn()
            .prepare(&format!(
                "SELECT {COLUMNS} FROM api_keys ORDER BY created, id"
            ))
            .map_err(db_error("list the keys"))?;
        let rows = stmt.query_map([], row).map_err(db_error("list the keys"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db_error("list the keys"))
    }

    /// The key with id `id` (revoked or not), if there is one.
    pub fn find(&self, id: &str) -> Result<Option<ApiKey>, StateError> {
        self.state
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()
            .map_err(db_error("read the key"))
    }

    /// When keys last changed (a revocation): servers that cache verified keys trust
    /// their cache only while this stays the same. `None` before any change.
    pub fn generation(dir: &std::path::Path) -> Option<std::time::SystemTime> {
        std::fs::metadata(dir.join(GENERATION_FILE))
            .and_then(|m| m.modified())
            .ok()
    }

    /// The state directory the keys live in.
    pub fn dir(&self) -> &std::path::Path {
        self.state.dir()
    }

    /// Revoke the key with id (or name) `which`; returns it. Revoking twice is fine.
    pub fn revoke(&self, which: &str) -> Result<ApiKey, StateError> {
        let matching: Vec<ApiKey> = self
            .list()?
            .into_iter()
            .filter(|k| k.id == which || k.name == which)
            .collect();
        let key = match matching.as_slice() {
            [k] => k.clone(),
            [] => {
                return Err(StateError::Usage(format!(
                    "no API key with id or name `{which}` (`phantom keys list` shows them)"
                )))
            }
            _ => {
                return Err(StateError::Usage(format!(
                    "{} keys are named `{which}`: revoke one by its id",
                    matching.len()
                )))
            }
        };
        self.state
            .conn()
            .execute(
                "UPDATE api_keys SET revoked = coalesce(revoked, ?2) WHERE id = ?1",
                params![key.id, crate::now_s() as i64],
            )
            .map_err(db_error("revoke the key"))?;
        // Servers that cache keys see the change now, not after their cache expires.
        let marker = self.state.dir().join(GENERATION_FILE);
        std::fs::write(&marker, crate::now_s().to_string()).map_err(|e| StateError::Io {
            what: "write",
            path: marker.display().to_string(),
            source: e,
        })?;
        self.get(&key.id)
    }

    fn get(&self, id: &str) -> Result<ApiKey, StateError> {
        self.state
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"),
                params![id],
                row,
            )
            .map_err(db_error("read the key"))
    }

    /// Check a presented key: its record when it is known and not revoked.
    pub fn verify(&self, presented: &str) -> Result<Result<ApiKey, AuthError>, StateError> {
        let id = match key_id(presented) {
            Ok(id) => id,
            Err(e) => return Ok(Err(e)),
        };
        let found: Option<(ApiKey, String)> = self
            .state
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS}, hash FROM api_keys WHERE id = ?1"),
                params![id],
                |r| Ok((row(r)?, r.get::<_, String>(9)?)),
            )
            .optional()
            .map_err(db_error("read the key"))?;
        let Some((key, stored)) = found else {
            return Ok(Err(AuthError::Unknown));
        };
        let Ok(stored) = blake3::Hash::from_hex(stored.as_bytes()) else {
            return Ok(Err(AuthError::Unknown));
        };
        // blake3::Hash's equality is constant-time.
        if blake3::hash(presented.as_bytes()) != stored {
            return Ok(Err(AuthError::Unknown));
        }
        if key.revoked.is_some() {
            return Ok(Err(AuthError::Revoked(key.id)));
        }
        let _ = self.state.conn().execute(
            "UPDATE api_keys SET last_used = ?2 WHERE id = ?1",
            params![key.id, crate::now_s() as i64],
        );
        Ok(Ok(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Scratch;

    #[test]
    fn an_e2b_shaped_key_is_a_key_like_any_other() {
        let scratch = Scratch::new("keys-e2b");
        let keys = Keys::open(&scratch.0).unwrap();
        let (key, secret) = keys
            .add_shaped(
                "sdk",
                KeyLimits::default(),
                Grants::default_key(),
                KeyShape::E2b,
            )
            .unwrap();
        let hex = secret.strip_prefix("e2b_").unwrap();
        assert_eq!(hex.len(), 40, "{secret}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
        assert!(hex.starts_with(&key.id));
        assert!(looks_like_key(&secret));
        assert_eq!(keys.verify(&secret).unwrap().unwrap().id, key.id);
        // Another secret under the same id, and malformed shapes, are refused.
        let forged = format!("e2b_{}{}", key.id, "0".repeat(28));
        assert_eq!(keys.verify(&forged).unwrap(), Err(AuthError::Unknown));
        for bad in ["e2b_", "e2b_abc", &format!("e2b_{}", "g".repeat(40))] {
            assert_eq!(
                keys.verify(bad).unwrap(),
                Err(AuthError::Malformed),
                "{bad}"
            );
        }
        keys.revoke(&key.id).unwrap();
        assert_eq!(
            keys.verify(&secret).unwrap(),
            Err(AuthError::Revoked(key.id.clone()))
        );
    }

    #[test]
    fn a_key_verifies_until_revoked_and_only_its_hash_is_stored() {
        let scratch = Scratch::new("keys");
        let keys = Keys::open(&scratch.0).unwrap();
        let (key, secret) = keys
            .add("grader", KeyLimits::default(), Grants::default_key())
            .unwrap();
        assert!(secret.starts_with(&format!("phk_{}_", key.id)));
        assert_eq!(keys.verify(&secret).unwrap().unwrap().name, "grader");
        // The secret is nowhere in the database file.
        let db = std::fs::read(scratch.0.join("state.db")).unwrap();
        let wal = std::fs::read(scratch.0.join("state.db-wal")).unwrap_or_default();
        let secret_part = secret.rsplit('_').next().unwrap().as_bytes();
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(secret_part.len()).any(|w| w == secret_part));
        }
        // One character off: unknown. Wrong shape: malformed.
        let mut wrong = secret.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(keys.verify(&wrong).unwrap(), Err(AuthError::Unknown));
        assert_eq!(keys.verify("Bearer x").unwrap(), Err(AuthError::Malformed));
        assert_eq!(
            keys.verify(&format!("phk_ffffffffffff_{}", "0".repeat(64)))
                .unwrap(),
            Err(AuthError::Unknown)
        );
        let revoked = keys.revoke("grader").unwrap();
        assert!(revoked.revoked.is_some());
        assert_eq!(
            keys.verify(&secret).unwrap(),
            Err(AuthError::Revoked(key.id.clone()))
        );
        assert!(keys.revoke("nobody").is_err());
        assert_eq!(key.grants, Grants::default_key());
        let (wide, _) = keys
            .add("wide", KeyLimits::default(), Grants::local())
            .unwrap();
        assert_eq!(keys.get(&wide.id).unwrap().grants, Grants::local());
        assert!(keys
            .add("", KeyLimits::default(), Grants::default_key())
            .is_err());
    }
}
