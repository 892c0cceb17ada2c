//! Phantom's state database: one SQLite file (WAL mode) in the state directory,
//! `<state>/state.db`, shared by every `phantom` process of the user. It holds the
//! persistent sandboxes' records (here), API keys (`keys.rs`) and the audit log
//! (`audit.rs`).
//!
//! A record belongs to an owner (`local`, or `key:<id>` for an API key) and is keyed by
//! its owner and name (unique: two concurrent `create` of one name give one sandbox
//! and one clear error — the second INSERT fails on the constraint); it is updated by
//! its id (a name can be reused after `destroy`; an old sandbox's keeper must never
//! touch the new one's record). Lookups always name the owner: no query reaches
//! another owner's sandbox.

use std::path::{Path, PathBuf};
use std::time::Duration;

use phantom_api::access::Owner;
use phantom_api::choice::{Mode, SandboxStatus};
use phantom_api::request::CreateRequest;
use phantom_api::SandboxInfo;
use rusqlite::{params, Connection, OptionalExtension};

use crate::{store_dir, StateError};

/// How long a writer waits for another one (SQLite's busy timeout).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    owner          TEXT NOT NULL,
    name           TEXT NOT NULL,
    id             TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    reason         TEXT,
    request        TEXT NOT NULL,
    profile        TEXT NOT NULL,
    mode           TEXT NOT NULL,
    plan_hash      TEXT NOT NULL,
    dir            TEXT NOT NULL,
    init_pid       INTEGER NOT NULL DEFAULT 0,
    init_start     INTEGER NOT NULL DEFAULT 0,
    keeper_pid     INTEGER NOT NULL DEFAULT 0,
    keeper_start   INTEGER NOT NULL DEFAULT 0,
    socket         TEXT NOT NULL DEFAULT '',
    created        INTEGER NOT NULL,
    last_used      INTEGER NOT NULL,
    idle_timeout_s INTEGER NOT NULL,
    max_lifetime_s INTEGER NOT NULL,
    UNIQUE (owner, name)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    hash           TEXT NOT NULL,
    created        INTEGER NOT NULL,
    revoked        INTEGER,
    last_used      INTEGER,
    rate_per_min   INTEGER NOT NULL,
    burst          INTEGER NOT NULL,
    max_concurrent INTEGER NOT NULL,
    grants         TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   INTEGER NOT NULL,
    key_id  TEXT,
    action  TEXT NOT NULL,
    target  TEXT,
    result  TEXT NOT NULL,
    detail  TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms);
";

/// Written to `PRAGMA user_version` once the schema is in place. Version 3 gave
/// sandboxes an owner (and API keys their grants); [`migrate_v2`] brings a version-2
/// database over.
const SCHEMA_VERSION: i64 = 3;

/// One persistent sandbox's record.
#[derive(Debug, Clone)]
pub struct Record {
    pub owner: Owner,
    pub name: String,
    pub id: String,
    /// `starting` (its keeper is starting it), `running` (its init is up; see
    /// [`Record::effective_status`]), `dead` (its init is gone; the record says why) or
    /// `destroying` (its keeper only cleans up).
    pub status: SandboxStatus,
    pub reason: Option<String>,
    pub request: CreateRequest,
    pub profile: String,
    pub mode: Mode,
    /// Fingerprint of the compiled plan at create: `exec` refuses a policy that
    /// changed since (its fences would differ from the sandbox's mounts).
    pub plan_hash: String,
    /// `<state>/sandboxes/<id>`: holds `workspace/` and `exec.lock`.
    pub dir: PathBuf,
    pub init_pid: i32,
    pub init_start: u64,
    pub keeper_pid: i32,
    pub keeper_start: u64,
    /// The keeper's socket, which hands the sandbox's namespaces to `exec`.
    pub socket: PathBuf,
    pub created: u64,
    pub last_used: u64,
    pub idle_timeout_s: u64,
    pub max_lifetime_s: u64,
}

impl Record {
    /// `<dir>/workspace`: the sandbox's workspace on the host.
    pub fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }

    /// Whether its init is the process recorded (pid and start time both match).
    pub fn init_alive(&self) -> bool {
        self.init_pid > 0
            && phantom_linux::process::start_time(self.init_pid) == Some(self.init_start)
    }

    /// Whether its keeper is the process recorded.
    pub fn keeper_alive(&self) -> bool {
        self.keeper_pid > 0
            && phantom_linux::process::start_time(self.keeper_pid) == Some(self.keeper_start)
    }

    /// The status a user should see: a `running` record whose init is gone is dead.
    pub fn effective_status(&self) -> (SandboxStatus, Option<String>) {
        match self.status {
            SandboxStatus::Running if !self.init_alive() => (
                SandboxStatus::Dead,
                Some("its init exited (killed, or the host rebooted)".into()),
            ),
            SandboxStatus::Starting if !self.keeper_alive() => (
                SandboxStatus::Dead,
                Some("it was never started: the process creating it died".into()),
            ),
            other => (other, self.reason.clone()),
        }
    }

    /// The record as the local user sees it (with its effective status, its init's
    /// pid and its host workspace; [`SandboxInfo::redacted`] for remote callers).
    pub fn info(&self) -> SandboxInfo {
        let (status, reason) = self.effective_status();
        SandboxInfo {
            name: self.name.clone(),
            id: self.id.clone(),
            owner: self.owner.clone(),
            status,
            reason,
            profile: self.profile.clone(),
            mode: self.mode,
            image: self.request.image.clone(),
            init_pid: (self.init_pid > 0).then_some(self.init_pid),
            workspace: Some(self.workspace().display().to_string()),
            created: self.created,
            last_used: self.last_used,
            idle_timeout_s: self.idle_timeout_s,
            max_lifetime_s: self.max_lifetime_s,
        }
    }
}

/// An open connection to the database.
pub struct State {
    conn: Connection,
    dir: PathBuf,
}

/// Maps a SQLite error to [`StateError::Database`], prefixed with what was being done.
pub(crate) fn db_error(what: &str) -> impl FnOnce(rusqlite::Error) -> StateError + '_ {
    move |e| StateError::Database(format!("{what}: {e}"))
}

impl State {
    /// The database in the default state directory, created on first use.
    pub fn open_default() -> Result<State, StateError> {
        let dir = store_dir::state_dir()
            .map_err(|e| StateError::Database(format!("cannot resolve the state directory: {e}")))?
            .ok_or_else(|| {
                StateError::Usage(format!(
                    "no place for phantom's state: set HOME, XDG_STATE_HOME or {}",
                    store_dir::STATE_DIR_ENV
                ))
            })?;
        State::open(&dir)
    }

    /// The database in `dir` (created 0700, refused when it is not the caller's).
    pub fn open(dir: &Path) -> Result<State, StateError> {
        store_dir::prepare(dir, &["sandboxes"]).map_err(|e| match e {
            store_dir::StoreDirError::Io { what, path, source } => StateError::Io {
                what,
                path: path.display().to_string(),
                source,
            },
            store_dir::StoreDirError::NotYours { uid } => StateError::Unsupported {
                what: format!("state directory {}", dir.display()),
                why: "it is not a private directory owned by you".into(),
                hint: format!("it must be a directory owned by uid {uid} that others cannot write"),
            },
        })?;
        let path = dir.join("state.db");
        let conn = Connection::open(&path).map_err(db_error("open state.db"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(db_error("configure state.db"))?;
        // NORMAL sync in WAL mode is durable across a crash of phantom, which is what
        // these records must survive (a per-connection setting).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_error("configure state.db"))?;
        // The schema and WAL mode (kept in the file) once per database, not on every
        // open: `exec` opens it on its start-up path.
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_error("read state.db"))?;
        if version != SCHEMA_VERSION {
            // One process at a time: switching to WAL needs the database to itself, and
            // SQLite answers "database is locked" at once, without its busy timeout,
            // when another connection is in the middle of the same switch.
            let lock_path = dir.join("lock");
            let lock = std::fs::File::open(&lock_path).map_err(|e| StateError::Io {
                what: "open",
                path: lock_path.display().to_string(),
                source: e,
            })?;
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
                StateError::Io {
                    what: "lock",
                    path: lock_path.display().to_string(),
                    source: e.into(),
                }
            })?;
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(db_error("read state.db"))?;
            if version != SCHEMA_VERSION {
                // WAL: readers (list, exec) never wait for a writer.
                conn.pragma_update(None, "journal_mode", "WAL")
                    .map_err(db_error("configure state.db"))?;
                if version == 2 {
                    migrate_v2(&conn)?;
                }
                conn.execute_batch(SCHEMA)
                    .map_err(db_error("create the sandboxes table"))?;
                conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(db_error("configure state.db"))?;
            }
            drop(lock);
        }
        Ok(State {
            conn,
            dir: dir.to_path_buf(),
        })
    }

    /// The connection, for the other tables' modules.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record a new sandbox as `starting`. A name its owner uses already is a usage
    /// error naming it.
    pub fn insert(&self, r: &Record) -> Result<(), StateError> {
        let request = serde_json::to_string(&r.request).expect("a CreateRequest serializes");
        let inserted = self.conn.execute(
            "INSERT INTO sandboxes (owner, name, id, status, reason, request, profile, mode,
                 plan_hash, dir, init_pid, init_start, keeper_pid, keeper_start, created,
                 last_used, idle_timeout_s, max_lifetime_s)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                 ?17, ?18)",
            params![
                r.owner.as_string(),
                r.name,
                r.id,
                r.status.as_str(),
                r.reason,
                request,
                r.profile,
                r.mode.as_str(),
                r.plan_hash,
                r.dir.display().to_string(),
                r.init_pid,
                r.init_start as i64,
                r.keeper_pid,
                r.keeper_start as i64,
                r.created as i64,
                r.last_used as i64,
                r.idle_timeout_s as i64,
                r.max_lifetime_s as i64,
            ],
        );
        match inserted {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StateError::NameTaken(r.name.clone()))
            }
            Err(e) => Err(db_error("record the sandbox")(e)),
        }
    }

    /// Give the running spare sandbox `id` (owner [`Owner::Spare`]) to `owner` as
    /// `name`, as if `request` had made it now: its lifetime and idle clocks start
    /// over. False when it is no longer a running spare (retired, destroyed, or
    /// adopted already); a name `owner` uses already is [`StateError::NameTaken`].
    #[allow(clippy::too_many_arguments)]
    pub fn adopt(
        &self,
        id: &str,
        owner: &Owner,
        name: &str,
        request: &CreateRequest,
        now: u64,
        idle_timeout_s: u64,
        max_lifetime_s: u64,
    ) -> Result<bool, StateError> {
        let request = serde_json::to_string(request).expect("a CreateRequest serializes");
        let updated = self.conn.execute(
            "UPDATE sandboxes SET owner = ?2, name = ?3, request = ?4, created = ?5,
                 last_used = ?5, idle_timeout_s = ?6, max_lifetime_s = ?7
             WHERE id = ?1 AND owner = ?8 AND status = ?9",
            params![
                id,
                owner.as_string(),
                name,
                request,
                now as i64,
                idle_timeout_s as i64,
                max_lifetime_s as i64,
                Owner::Spare.as_string(),
                SandboxStatus::Running.as_str(),
            ],
        );
        match updated {
            Ok(n) => Ok(n == 1),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StateError::NameTaken(name.to_string()))
            }
            Err(e) => Err(db_error("give the spare sandbox to its owner")(e)),
        }
    }

    /// The keeper started the init: record both processes and mark it running.
    pub fn set_running(
        &self,
        id: &str,
        init: (i32, u64),
        keeper: (i32, u64),
        socket: &Path,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE sandboxes SET status = ?2, init_pid = ?3, init_start = ?4,
                     keeper_pid = ?5, keeper_start = ?6, socket = ?8
                 WHERE id = ?1 AND status = ?7",
                params![
                    id,
                    SandboxStatus::Running.as_str(),
                    init.0,
                    init.1 as i64,
                    keeper.0,
                    keeper.1 as i64,
                    SandboxStatus::Starting.as_str(),
                    socket.display().to_string(),
                ],
            )
            .map_err(db_error("record the sandbox's processes"))?;
        Ok(())
    }

    /// Record the keeper of a sandbox being started (before its init exists), so
    /// that a creation whose processes died shows as dead, not forever starting.
    pub fn set_keeper(&self, id: &str, keeper: (i32, u64)) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE sandboxes SET keeper_pid = ?2, keeper_start = ?3 WHERE id = ?1",
                params![id, keeper.0, keeper.1 as i64],
            )
            .map_err(db_error("record the sandbox's keeper"))?;
        Ok(())
    }

    /// Set the status (and why), unless the record is being destroyed.
    pub fn set_status(
        &self,
        id: &str,
        status: SandboxStatus,
        reason: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE sandboxes SET status = ?2, reason = ?3 WHERE id = ?1 AND status != ?4",
                params![
                    id,
                    status.as_str(),
                    reason,
                    SandboxStatus::Destroying.as_str()
                ],
            )
            .map_err(db_error("update the sandbox's status"))?;
        Ok(())
    }

    /// Mark the record as being destroyed (its keeper then only cleans up).
    pub fn set_destroying(&self, id: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE sandboxes SET status = ?2 WHERE id = ?1",
                params![id, SandboxStatus::Destroying.as_str()],
            )
            .map_err(db_error("mark the sandbox destroyed"))?;
        Ok(())
    }

    /// An `exec` started or ended now.
    pub fn touch(&self, id: &str, now: u64) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE sandboxes SET last_used = max(last_used, ?2) WHERE id = ?1",
                params![id, now as i64],
            )
            .map_err(db_error("record the sandbox's use"))?;
        Ok(())
    }

    /// Remove the record with id `id`.
    pub fn delete(&self, id: &str) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id])
            .map_err(db_error("remove the sandbox's record"))?;
        Ok(())
    }

    /// `owner`'s record named `name`.
    pub fn get(&self, owner: &Owner, name: &str) -> Result<Option<Record>, StateError> {
        let sql = format!("{SELECT} WHERE owner = ?1 AND name = ?2");
        self.conn
            .query_row(&sql, params![owner.as_string(), name], row_to_record)
            .optional()
            .map_err(db_error("read the sandbox's record"))?
            .transpose()
    }

    /// The record with id `id` (for the sandbox's own keeper).
    pub fn get_by_id(&self, id: &str) -> Result<Option<Record>, StateError> {
        let sql = format!("{SELECT} WHERE id = ?1");
        self.conn
            .query_row(&sql, params![id], row_to_record)
            .optional()
            .map_err(db_error("read the sandbox's record"))?
            .transpose()
    }

    /// `owner`'s records by name; every owner's with `None` (an operator's view).
    pub fn list(&self, owner: Option<&Owner>) -> Result<Vec<Record>, StateError> {
        let mut stmt;
        let rows = match owner {
            Some(owner) => {
                stmt = self
                    .conn
                    .prepare(&format!("{SELECT} WHERE owner = ?1 ORDER BY name"))
                    .map_err(db_error("list the sandboxes"))?;
                stmt.query_map(params![owner.as_string()], row_to_record)
            }
            None => {
                stmt = self
                    .conn
                    .prepare(&format!("{SELECT} ORDER BY owner, name"))
                    .map_err(db_error("list the sandboxes"))?;
                stmt.query_map([], row_to_record)
            }
        }
        .map_err(db_error("list the sandboxes"))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(db_error("list the sandboxes"))??);
        }
        Ok(out)
    }

    /// How many sandboxes `owner` has (every owner's with `None`).
    pub fn count(&self, owner: Option<&Owner>) -> Result<usize, StateError> {
        let n: i64 = match owner {
            Some(owner) => self.conn.query_row(
                "SELECT count(*) FROM sandboxes WHERE owner = ?1",
                params![owner.as_string()],
                |r| r.get(0),
            ),
            None => self
                .conn
                .query_row("SELECT count(*) FROM sandboxes", [], |r| r.get(0)),
        }
        .map_err(db_error("count the sandboxes"))?;
        Ok(n.max(0) as usize)
    }
}

const SELECT: &str = "SELECT owner, name, id, status, reason, request, profile, mode,
    plan_hash, dir, init_pid, init_start, keeper_pid, keeper_start, created, last_used,
    idle_timeout_s, max_lifetime_s, socket FROM sandboxes";

/// A row of [`SELECT`]; a request, status or mode that does not parse is a corrupt
/// record.
fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record, StateError>> {
    let name: String = row.get(1)?;
    let corrupt = |what: &str| {
        StateError::Database(format!(
            "the record of sandbox `{name}` is corrupt ({what}); `phantom destroy {name}` removes it"
        ))
    };
    let owner: String = row.get(0)?;
    let Some(owner) = Owner::parse(&owner) else {
        return Ok(Err(corrupt(&format!("owner `{owner}`"))));
    };
    let request: String = row.get(5)?;
    let request = match serde_json::from_str::<CreateRequest>(&request) {
        Ok(r) => r,
        Err(e) => return Ok(Err(corrupt(&e.to_string()))),
    };
    let status: String = row.get(3)?;
    let Ok(status) = status.parse::<SandboxStatus>() else {
        return Ok(Err(corrupt(&format!("status `{status}`"))));
    };
    let mode: String = row.get(7)?;
    let Ok(mode) = mode.parse::<Mode>() else {
        return Ok(Err(corrupt(&format!("mode `{mode}`"))));
    };
    let int = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(Ok(Record {
        owner,
        id: row.get(2)?,
        status,
        reason: row.get(4)?,
        request,
        profile: row.get(6)?,
        mode,
        plan_hash: row.get(8)?,
        dir: PathBuf::from(row.get::<_, String>(9)?),
        init_pid: row.get(10)?,
        init_start: int(11)?,
        keeper_pid: row.get(12)?,
        keeper_start: int(13)?,
        created: int(14)?,
        last_used: int(15)?,
        idle_timeout_s: int(16)?,
        max_lifetime_s: int(17)?,
        socket: PathBuf::from(row.get::<_, String>(18)?),
        name,
    }))
}

/// Bring a version-2 database over: its sandboxes gain an owner — the API key of the
/// `api-<key id>-<name>` names the HTTP API used to give them, else the local user —
/// and their create requests the current shape; API keys gain a grants column (empty:
/// a key made before grants existed gets the default ones).
fn migrate_v2(conn: &Connection) -> Result<(), StateError> {
    let tx = conn
        .unchecked_transaction()
        .map_err(db_error("migrate state.db"))?;
    let old: Vec<(String, String, String)> = {
        let mut stmt = tx
            .prepare("SELECT id, name, request FROM sandboxes")
            .map_err(db_error("migrate state.db"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db_error("migrate state.db"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db_error("migrate state.db"))?
    };
    tx.execute_batch(
        "ALTER TABLE sandboxes RENAME TO sandboxes_v2;
         ALTER TABLE api_keys ADD COLUMN grants TEXT;",
    )
    .map_err(db_error("migrate state.db"))?;
    tx.execute_batch(SCHEMA)
        .map_err(db_error("migrate state.db"))?;
    for (id, name, request) in old {
        let (owner, name) = match name
            .strip_prefix("api-")
            .and_then(|rest| rest.split_once('-'))
        {
            Some((key, rest)) => (Owner::Key(key.to_string()), rest.to_string()),
            None => (Owner::Local, name),
        };
        let request = upgrade_request(&request, &name);
        tx.execute(
            "INSERT INTO sandboxes (owner, name, id, status, reason, request, profile, mode,
                 plan_hash, dir, init_pid, init_start, keeper_pid, keeper_start, socket,
                 created, last_used, idle_timeout_s, max_lifetime_s)
             SELECT ?1, ?2, id, status, reason, ?3, profile, mode, plan_hash, dir, init_pid,
                 init_start, keeper_pid, keeper_start, socket, created, last_used,
                 idle_timeout_s, max_lifetime_s FROM sandboxes_v2 WHERE id = ?4",
            params![owner.as_string(), name, request, id],
        )
        .map_err(db_error("migrate state.db from version 2"))?;
    }
    tx.execute_batch("DROP TABLE sandboxes_v2;")
        .map_err(db_error("migrate state.db"))?;
    tx.commit().map_err(db_error("migrate state.db"))
}

/// A version-2 create request (`{"policy": {"profile": P}, "overrides": {...},
/// "idle_timeout": ...}`) in the current shape.
fn upgrade_request(text: &str, name: &str) -> String {
    let Ok(serde_json::Value::Object(old)) = serde_json::from_str::<serde_json::Value>(text) else {
        return text.to_string();
    };
    let mut new = serde_json::Map::new();
    new.insert("name".into(), name.into());
    if let Some(serde_json::Value::Object(p)) = old.get("policy") {
        if let Some(v) = p.get("profile") {
            new.insert("profile".into(), v.clone());
        }
        if let Some(v) = p.get("file") {
            new.insert("policy_file".into(), v.clone());
        }
    }
    if let Some(serde_json::Value::Object(o)) = old.get("overrides") {
        for (k, v) in o {
            if !v.is_null() {
                new.insert(k.clone(), v.clone());
            }
        }
    }
    for (from, to) in [
        ("image", "image"),
        ("idle_timeout", "timeout_idle"),
        ("max_lifetime", "max_lifetime"),
        ("from_snapshot", "from_snapshot"),
    ] {
        if let Some(v) = old.get(from).filter(|v| !v.is_null()) {
            new.insert(to.into(), v.clone());
        }
    }
    serde_json::Value::Object(new).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Scratch;

    fn record_of(owner: Owner, name: &str, id: &str) -> Record {
        Record {
            owner,
            name: name.into(),
            id: id.into(),
            status: SandboxStatus::Starting,
            reason: None,
            request: CreateRequest {
                name: name.into(),
                ..CreateRequest::default()
            },
            profile: "default".into(),
            mode: Mode::Sandbox,
            plan_hash: "h".into(),
            dir: PathBuf::from(format!("/nonexistent/{id}")),
            init_pid: 0,
            init_start: 0,
            keeper_pid: 0,
            keeper_start: 0,
            socket: PathBuf::new(),
            created: 100,
            last_used: 100,
            idle_timeout_s: 900,
            max_lifetime_s: 86400,
        }
    }

    fn record(name: &str, id: &str) -> Record {
        record_of(Owner::Local, name, id)
    }

    #[test]
    fn concurrent_inserts_of_one_name_give_one_record_and_one_clear_error() {
        let scratch = Scratch::new("state-race");
        let dir = scratch.0.clone();
        // Eight writers, each with its own connection, race for one name.
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let dir = dir.clone();
                    s.spawn(move || {
                        let state = State::open(&dir).map_err(|e| e.to_string())?;
                        state
                            .insert(&record("box", &format!("id{i}")))
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        for err in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                err.contains("a sandbox named `box` exists already"),
                "{err}"
            );
        }
        let state = State::open(&dir).unwrap();
        assert_eq!(state.list(None).unwrap().len(), 1);
    }

    #[test]
    fn owners_see_only_their_own_sandboxes_and_may_reuse_each_others_names() {
        let scratch = Scratch::new("state-owners");
        let state = State::open(&scratch.0).unwrap();
        let (a, b) = (Owner::Key("aaaa".into()), Owner::Key("bbbb".into()));
        state.insert(&record_of(a.clone(), "box", "ia")).unwrap();
        state.insert(&record_of(b.clone(), "box", "ib")).unwrap();
        state.insert(&record("box", "il")).unwrap();
        assert_eq!(state.get(&a, "box").unwrap().unwrap().id, "ia");
        assert_eq!(state.get(&b, "box").unwrap().unwrap().id, "ib");
        assert_eq!(state.get(&Owner::Local, "box").unwrap().unwrap().id, "il");
        assert!(state.get(&a, "other").unwrap().is_none());
        let names = |o: &Owner| -> Vec<String> {
            state
                .list(Some(o))
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(names(&a), ["ia"]);
        assert_eq!(names(&Owner::Local), ["il"]);
        assert_eq!(state.count(Some(&b)).unwrap(), 1);
        assert_eq!(state.count(None).unwrap(), 3);
    }

    /// Regression: concurrent first opens of a new database raced to switch it to WAL
    /// and one failed with "database is locked" (SQLite does not wait for that).
    #[test]
    fn concurrent_first_opens_of_a_new_database_all_succeed() {
        for round in 0..10 {
            let scratch = Scratch::new(&format!("state-first-open-{round}"));
            let dir = scratch.0.clone();
            let results: Vec<Result<(), String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        let dir = dir.clone();
                        s.spawn(move || State::open(&dir).map(|_| ()).map_err(|e| e.to_string()))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(
                results.iter().all(|r| r.is_ok()),
                "round {round}: {results:?}"
            );
        }
    }

    #[test]
    fn updates_go_by_id_so_a_reused_name_is_never_touched_by_the_old_sandbox() {
        let scratch = Scratch::new("state-ids");
        let state = State::open(&scratch.0).unwrap();
        state.insert(&record("box", "old")).unwrap();
        state.delete("old").unwrap();
        state.insert(&record("box", "new")).unwrap();
        // The old sandbox's keeper reports late: nothing happens to the new one.
        state
            .set_status("old", SandboxStatus::Dead, Some("gone"))
            .unwrap();
        state
            .set_running("old", (1, 1), (1, 1), Path::new("/s"))
            .unwrap();
        let r = state.get(&Owner::Local, "box").unwrap().unwrap();
        assert_eq!((r.id.as_str(), r.status), ("new", SandboxStatus::Starting));
        // A record being destroyed keeps that status whatever its keeper says.
        state.set_destroying("new").unwrap();
        state
            .set_status("new", SandboxStatus::Dead, Some("init exited"))
            .unwrap();
        let r = state.get(&Owner::Local, "box").unwrap().unwrap();
        assert_eq!(r.status, SandboxStatus::Destroying);
    }

    #[test]
    fn only_a_running_spare_is_adopted_and_a_taken_name_leaves_it_a_spare() {
        let scratch = Scratch::new("state-adopt");
        let state = State::open(&scratch.0).unwrap();
        let key = Owner::Key("k1".into());
        let asked = CreateRequest {
            name: "mine".into(),
            ..CreateRequest::default()
        };
        state
            .insert(&record_of(Owner::Spare, "spare-1-1", "s1"))
            .unwrap();
        // Still starting: not adoptable.
        assert!(!state
            .adopt("s1", &key, "mine", &asked, 5000, 60, 600)
            .unwrap());
        state
            .set_running("s1", (1, 1), (1, 1), Path::new("/s"))
            .unwrap();
        state
            .insert(&record_of(key.clone(), "taken", "t1"))
            .unwrap();
        let e = state
            .adopt("s1", &key, "taken", &asked, 5000, 60, 600)
            .unwrap_err();
        assert!(
            matches!(e, StateError::NameTaken(ref n) if n == "taken"),
            "{e}"
        );
        assert_eq!(state.get_by_id("s1").unwrap().unwrap().owner, Owner::Spare);
        assert!(state
            .adopt("s1", &key, "mine", &asked, 5000, 60, 600)
            .unwrap());
        let r = state.get(&key, "mine").unwrap().unwrap();
        assert_eq!(
            (
                r.id.as_str(),
                r.created,
                r.last_used,
                r.idle_timeout_s,
                r.max_lifetime_s
            ),
            ("s1", 5000, 5000, 60, 600)
        );
        assert_eq!(r.request.name, "mine");
        // Once adopted it is no spare: nobody adopts it again.
        assert!(!state
            .adopt("s1", &Owner::Local, "other", &asked, 6000, 60, 600)
            .unwrap());
        // A record that was never a spare is never adopted.
        assert!(!state
            .adopt("t1", &Owner::Local, "t", &asked, 6000, 60, 600)
            .unwrap());
    }

    #[test]
    fn a_running_record_whose_init_is_gone_shows_dead() {
        let scratch = Scratch::new("state-dead");
        let state = State::open(&scratch.0).unwrap();
        state.insert(&record("box", "i1")).unwrap();
        // This test process is alive: record it as the init, then a start time that
        // does not match (a reused pid).
        let me = phantom_linux::process::getpid();
        let start = phantom_linux::process::start_time(me).unwrap();
        state
            .set_running("i1", (me, start), (me, start), Path::new("/s"))
            .unwrap();
        let r = state.get(&Owner::Local, "box").unwrap().unwrap();
        assert_eq!(r.effective_status().0, SandboxStatus::Running);
        state.delete("i1").unwrap();
        state.insert(&record("box", "i2")).unwrap();
        state
            .set_running("i2", (me, start + 1), (me, start), Path::new("/s"))
            .unwrap();
        let r = state.get(&Owner::Local, "box").unwrap().unwrap();
        let (status, reason) = r.effective_status();
        assert_eq!(status, SandboxStatus::Dead);
        assert!(reason.unwrap().contains("init exited"));
        assert_eq!(r.info().status, SandboxStatus::Dead);
    }

    #[test]
    fn a_corrupt_request_is_a_clear_error_not_a_panic() {
        let scratch = Scratch::new("state-corrupt");
        let state = State::open(&scratch.0).unwrap();
        state.insert(&record("box", "c1")).unwrap();
        state
            .conn
            .execute("UPDATE sandboxes SET request = '{' WHERE id = 'c1'", [])
            .unwrap();
        let err = state.get(&Owner::Local, "box").unwrap_err().to_string();
        assert!(err.contains("record of sandbox `box` is corrupt"), "{err}");
        assert!(state.get_by_id("c1").is_err());
    }

    #[test]
    fn a_version_2_database_gets_owners_from_the_old_api_names() {
        let scratch = Scratch::new("state-v2");
        std::fs::create_dir_all(&scratch.0).unwrap();
        {
            let conn = Connection::open(scratch.0.join("state.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE sandboxes (name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE,
                    status TEXT NOT NULL, reason TEXT, request TEXT NOT NULL,
                    profile TEXT NOT NULL, mode TEXT NOT NULL, plan_hash TEXT NOT NULL,
                    dir TEXT NOT NULL, init_pid INTEGER NOT NULL DEFAULT 0,
                    init_start INTEGER NOT NULL DEFAULT 0, keeper_pid INTEGER NOT NULL DEFAULT 0,
                    keeper_start INTEGER NOT NULL DEFAULT 0, socket TEXT NOT NULL DEFAULT '',
                    created INTEGER NOT NULL, last_used INTEGER NOT NULL,
                    idle_timeout_s INTEGER NOT NULL, max_lifetime_s INTEGER NOT NULL);
                 CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL,
                    hash TEXT NOT NULL, created INTEGER NOT NULL, revoked INTEGER,
                    last_used INTEGER, rate_per_min INTEGER NOT NULL, burst INTEGER NOT NULL,
                    max_concurrent INTEGER NOT NULL);
                 INSERT INTO sandboxes VALUES ('api-0123456789ab-secretbox', 'x1', 'dead', NULL,
                    '{\"name\":\"api-0123456789ab-secretbox\",\"policy\":{\"profile\":\"default\"},\"overrides\":{\"mode\":null,\"memory\":\"64MB\",\"cpus\":null,\"pids\":null,\"timeout\":null,\"network\":null},\"idle_timeout\":\"5m\"}',
                    'default', 'sandbox', 'h', '/nonexistent/x1', 0, 0, 0, 0, '', 1, 1, 300, 86400);
                 INSERT INTO sandboxes VALUES ('mine', 'x2', 'dead', NULL,
                    '{\"name\":\"mine\",\"policy\":{\"file\":\"/p.yaml\"},\"overrides\":{}}',
                    'p', 'sandbox', 'h', '/nonexistent/x2', 0, 0, 0, 0, '', 1, 1, 300, 86400);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let state = State::open(&scratch.0).unwrap();
        let key = Owner::Key("0123456789ab".into());
        let theirs = state.get(&key, "secretbox").unwrap().unwrap();
        assert_eq!(theirs.request.limits.memory.unwrap().as_str(), "64MB");
        assert_eq!(theirs.request.timeout_idle.unwrap().as_str(), "5m");
        assert_eq!(theirs.request.profile.as_deref(), Some("default"));
        assert!(state
            .get(&Owner::Local, "api-0123456789ab-secretbox")
            .unwrap()
            .is_none());
        let mine = state.get(&Owner::Local, "mine").unwrap().unwrap();
        assert_eq!(mine.request.policy_file.as_deref(), Some("/p.yaml"));
    }
}
