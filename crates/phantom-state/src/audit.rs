//! The audit log: every mutating call of the HTTP API and every refused key, with
//! who (key id), what (action, target), the result and when — in the state database,
//! read back with `phantom audit`.
//!
//! What is stored is bounded, whoever sends it: each text field is cut to
//! [`MAX_FIELD_BYTES`] (or [`MAX_SHORT_BYTES`] for the key id, the action and the
//! result) with a marker saying how much was cut, and the log keeps the newest
//! [`MAX_ROWS`] records — older ones are deleted as new ones come (SQLite reuses their
//! pages, so the file stops growing). Values are stored as they came (cut, not
//! escaped): whoever prints them escapes them (`phantom audit`).

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::db::db_error;
use crate::{State, StateError};

/// The most bytes of a target or a detail that are stored (the cut marker included).
pub const MAX_FIELD_BYTES: usize = 512;
/// The most bytes of a key id, an action or a result that are stored.
pub const MAX_SHORT_BYTES: usize = 64;
/// The records kept: the newest this many; older ones are deleted.
pub const MAX_ROWS: u64 = 100_000;

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

/// A record to append (the time is taken when it is written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEntry {
    pub key_id: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub result: String,
    pub detail: Option<String>,
}

/// `text` cut to at most `max` bytes (on a character boundary), ending with
/// `…[+N bytes]` when anything was cut.
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    // The marker's length depends on N; N's digits are at most those of text.len().
    let marker_len = "…[+ bytes]".len() + text.len().to_string().len();
    let mut keep = max.saturating_sub(marker_len);
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}…[+{} bytes]", &text[..keep], text.len() - keep).into()
}

/// The audit log of the state database.
pub struct Audit {
    state: State,
    max_rows: u64,
}

impl Audit {
    pub fn open_default() -> Result<Audit, StateError> {
        Ok(Audit {
            state: State::open_default()?,
            max_rows: MAX_ROWS,
        })
    }

    pub fn open(dir: &std::path::Path) -> Result<Audit, StateError> {
        Ok(Audit {
            state: State::open(dir)?,
            max_rows: MAX_ROWS,
        })
    }

    /// Keep only the newest `max_rows` records from now on (tests; [`MAX_ROWS`] by
    /// default).
    pub fn keep(mut self, max_rows: u64) -> Audit {
        self.max_rows = max_rows.max(1);
        self
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
        self.record_all(&[NewEntry {
            key_id: key_id.map(str::to_string),
            action: action.to_string(),
            target: target.map(str::to_string),
            result: result.to_string(),
            detail: detail.map(str::to_string),
        }])
    }

    /// Append `entries`, now, in one transaction (one commit for a batch), each field
    /// cut to its bound; then delete what is beyond the newest `MAX_ROWS`.
    pub fn record_all(&self, entries: &[NewEntry]) -> Result<(), StateError> {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let conn = self.state.conn();
        let tx = conn
            .unchecked_transaction()
            .map_err(db_error("append to the audit log"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit (at_ms, key_id, action, target, result, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(db_error("append to the audit log"))?;
            let short = |s: &str| bounded(s, MAX_SHORT_BYTES).into_owned();
            let long = |s: &str| bounded(s, MAX_FIELD_BYTES).into_owned();
            for e in entries {
                insert
                    .execute(params![
                        at_ms,
                        e.key_id.as_deref().map(short),
                        short(&e.action),
                        e.target.as_deref().map(long),
                        short(&e.result),
                        e.detail.as_deref().map(long),
                    ])
                    .map_err(db_error("append to the audit log"))?;
            }
            // `seq` only grows (AUTOINCREMENT): the oldest are the lowest.
            tx.execute(
                "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?1",
                params![self.max_rows as i64],
            )
            .map_err(db_error("prune the audit log"))?;
        }
        tx.commit().map_err(db_error("append to the audit log"))
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

    /// Regression: a refused request's 8 KiB name was stored whole, so 2,000 of them
    /// grew state.db by 17 MB.
    #[test]
    fn long_fields_are_stored_cut_with_a_marker_that_says_how_much() {
        let scratch = Scratch::new("audit-cut");
        let audit = Audit::open(&scratch.0).unwrap();
        // Multi-byte characters across the cut: it must land on a boundary.
        let name = "é".repeat(4096);
        let action = "a".repeat(1000);
        audit
            .record(Some(&name), &action, Some(&name), &name, Some(&name))
            .unwrap();
        let e = &audit.since(0, 10).unwrap()[0];
        for (field, max) in [
            (e.target.as_deref().unwrap(), MAX_FIELD_BYTES),
            (e.detail.as_deref().unwrap(), MAX_FIELD_BYTES),
            (e.key_id.as_deref().unwrap(), MAX_SHORT_BYTES),
            (e.action.as_str(), MAX_SHORT_BYTES),
            (e.result.as_str(), MAX_SHORT_BYTES),
        ] {
            assert!(field.len() <= max, "{} > {max}: {field}", field.len());
            let (kept, marker) = field.rsplit_once("…[+").expect("a cut marker");
            let cut: usize = marker.strip_suffix(" bytes]").unwrap().parse().unwrap();
            let original = if field.starts_with('a') {
                action.len()
            } else {
                name.len()
            };
            assert_eq!(kept.len() + cut, original, "{field}");
        }
        // What fits is stored as it came.
        assert_eq!(bounded("box", 3), "box");
        assert_eq!(bounded("\u{1b}[2J\n", 64), "\u{1b}[2J\n");
    }

    /// The log keeps the newest records; the database stops growing.
    #[test]
    fn only_the_newest_records_are_kept() {
        let scratch = Scratch::new("audit-rows");
        let audit = Audit::open(&scratch.0).unwrap().keep(50);
        let batch: Vec<NewEntry> = (0..30)
            .map(|i| NewEntry {
                action: format!("call{i}"),
                result: "ok".into(),
                ..Default::default()
            })
            .collect();
        for _ in 0..10 {
            audit.record_all(&batch).unwrap();
        }
        let all = audit.since(0, 1000).unwrap();
        assert_eq!(all.len(), 50);
        // The newest: the last 50 appended, in order.
        let last = all.last().unwrap();
        assert_eq!(last.action, "call29");
        assert_eq!(all[0].seq, last.seq - 49);
    }
}
