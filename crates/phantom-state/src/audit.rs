//! The audit log: every mutating call of the HTTP API and every refused key, with
//! who (key id), what (action, target), the result and when — in the state database,
//! read back with `phantom audit`.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::db::db_error;
use crate::{State, StateError};

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The key used, when one was recognised.
    pub key_id: Option<String>,
    /// e.g. `run`, `sandbox.create`, `auth`.
    pub action: String,
    /// e.g. a sandbox name, a path.
    pub target: Option<String>,
    /// e.g. `ok`, `denied`, `error`, an HTTP status.
    pub result: String,
    pub detail: Option<String>,
}

/// The audit log of the state database.
pub struct Audit {
    state: State,
}

impl Audit {
    pub fn open_default() -> Result<Audit, StateError> {
        Ok(Audit {
            state: State::open_default()?,
        })
    }

    pub fn open(dir: &std::path::Path) -> Result<Audit, StateError> {
        Ok(Audit {
            state: State::open(dir)?,
        })
    }

    /// Append one record, now.
    pub fn record(
        &self,
        key_id: Option<&str>,
        action: &str,
        target: Option<&str>,
        result: &str,
        detail: Option<&str>,
    ) -> Result<(), StateError> {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        self.state
            .conn()
            .execute(
                "INSERT INTO audit (at_ms, key_id, action, target, result, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![at_ms, key_id, action, target, result, detail],
            )
            .map_err(db_error("append to the audit log"))?;
        Ok(())
    }

    /// Records at or after `since_ms` (unix milliseconds), oldest first, at most
    /// `limit` of the newest.
    pub fn since(&self, since_ms: u64, limit: usize) -> Result<Vec<AuditEntry>, StateError> {
        let mut stmt = self
            .state
            .conn()
            .prepare(
                "SELECT seq, at_ms, key_id, action, target, result, detail FROM (
                     SELECT * FROM audit WHERE at_ms >= ?1 ORDER BY seq DESC LIMIT ?2
                 ) ORDER BY seq",
            )
            .map_err(db_error("read the audit log"))?;
        let rows = stmt
            .query_map(params![since_ms as i64, limit as i64], |r| {
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    at_ms: r.get::<_, i64>(1)?.max(0) as u64,
                    key_id: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    result: r.get(5)?,
                    detail: r.get(6)?,
                })
            })
            .map_err(db_error("read the audit log"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db_error("read the audit log"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Scratch;

    #[test]
    fn records_come_back_in_order_filtered_by_time_and_limit() {
        let scratch = Scratch::new("audit");
        let audit = Audit::open(&scratch.0).unwrap();
        audit
            .record(None, "auth", None, "denied", Some("unknown API key"))
            .unwrap();
        audit
            .record(Some("abc"), "sandbox.create", Some("box"), "ok", None)
            .unwrap();
        audit.record(Some("abc"), "run", None, "ok", None).unwrap();
        let all = audit.since(0, 100).unwrap();
        let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["auth", "sandbox.create", "run"]);
        assert_eq!(all[1].target.as_deref(), Some("box"));
        assert_eq!(all[0].key_id, None);
        // The newest two, still oldest first.
        let last = audit.since(0, 2).unwrap();
        assert_eq!(last[0].action, "sandbox.create");
        assert_eq!(last[1].action, "run");
        let future = all[2].at_ms + 60_000;
        assert!(audit.since(future, 100).unwrap().is_empty());
    }
}
