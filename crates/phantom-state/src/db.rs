//! Phantom's state database: one SQLite file (WAL mode) in the state directory,
//! `<state>/state.db`, shared by every `phantom` process of the user. It holds the
//! persistent sandboxes' records (here), API keys (`keys.rs`) and the audit log
//! (`audit.rs`).
//!
//! A record is keyed by its name (unique: two concurrent `create` of one name give
//! one sandbox and one clear error — the second INSERT fails on the constraint) and
//! updated by its id (a name can be reused after `destroy`; an old sandbox's keeper
//! must never touch the new one's record).

use std::path::{Path, PathBuf};
use std::time::Duration;

use phantom_api::{CreateRequest, SandboxInfo};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{store_dir, StateError};

/// How long a writer waits for another one (SQLite's busy timeout).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    name           TEXT PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
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
    max_lifetime_s INTEGER NOT NULL
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
    max_concurrent INTEGER NOT NULL
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

/// Written to `PRAGMA user_version` once the schema is in place.
const SCHEMA_VERSION: i64 = 2;

/// Status of a sandbox whose keeper is starting it (no init yet).
pub const STARTING: &str = "starting";
/// Status of a sandbox whose init is up (see [`Record::effective_status`]).
pub const RUNNING: &str = "running";
/// Status of a sandbox whose init is gone; the record says why.
pub const DEAD: &str = "dead";
/// Status of a sandbox being destroyed: its keeper only cleans up.
pub const DESTROYING: &str = "destroying";

/// One persistent sandbox's record.
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    pub id: String,
    pub status: String,
    pub reason: Option<String>,
    pub request: CreateRequest,
    pub profile: String,
    pub mode: String,
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
    pub fn effective_status(&self) -> (&str, Option<String>) {
        match self.status.as_str() {
            RUNNING if !self.init_alive() => (
                DEAD,
                Some("its init exited (killed, or the host rebooted)".into()),
            ),
            STARTING if !self.keeper_alive() => (
                DEAD,
                Some("it was never started: the process creating it died".into()),
            ),
            other => (other, self.reason.clone()),
        }
    }

    /// The record as the API shows it (with its effective status).
    pub fn info(&self) -> SandboxInfo {
        let (status, reason) = self.effective_status();
        SandboxInfo {
            name: self.name.clone(),
            id: self.id.clone(),
            status: status.to_string(),
            reason,
            profile: self.profile.clone(),
            mode: self.mode.clone(),
            image: self.request.image.clone(),
            init_pid: self.init_pid,
            workspace: self.workspace().display().to_string(),
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

    /// Record a new sandbox as `starting`. A name in use is a usage error naming it.
    pub fn insert(&self, r: &Record) -> Result<(), StateError> {
        let request = serde_json::to_string(&r.request).expect("a CreateRequest serializes");
        let inserted = self.conn.execute(
            "INSERT INTO sandboxes (name, id, status, reason, request, profile, mode, plan_hash,
                 dir, init_pid, init_start, keeper_pid, keeper_start, created, last_used,
                 idle_timeout_s, max_lifetime_s)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                r.name,
                r.id,
                r.status,
                r.reason,
                request,
                r.profile,
                r.mode,
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
                Err(StateError::Usage(format!(
                    "a sandbox named `{}` exists already (`phantom list` shows it); pick another name or `phantom destroy {}` first",
                    r.name, r.name
                )))
            }
            Err(e) => Err(db_error("record the sandbox")(e)),
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
                    RUNNING,
                    init.0,
                    init.1 as i64,
                    keeper.0,
                    keeper.1 as i64,
                    STARTING,
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
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE sandboxes SET status = ?2, reason = ?3 WHERE id = ?1 AND status != ?4",
                params![id, status, reason, DESTROYING],
            )
            .map_err(db_error("update the sandbox's status"))?;
        Ok(())
    }

    /// Mark the record as being destroyed (its keeper then only cleans up).
    pub fn set_destroying(&self, id: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE sandboxes SET status = ?2 WHERE id = ?1",
                params![id, DESTROYING],
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

    /// The record named `name`.
    pub fn get(&self, name: &str) -> Result<Option<Record>, StateError> {
        self.query_one("WHERE name = ?1", name)
    }

    /// The record with id `id`.
    pub fn get_by_id(&self, id: &str) -> Result<Option<Record>, StateError> {
        self.query_one("WHERE id = ?1", id)
    }

    fn query_one(&self, filter: &str, key: &str) -> Result<Option<Record>, StateError> {
        let sql = format!("{SELECT} {filter}");
        self.conn
            .query_row(&sql, params![key], row_to_record)
            .optional()
            .map_err(db_error("read the sandbox's record"))?
            .transpose()
    }

    /// Every record, by name.
    pub fn list(&self) -> Result<Vec<Record>, StateError> {
        let sql = format!("{SELECT} ORDER BY name");
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(db_error("list the sandboxes"))?;
        let rows = stmt
            .query_map([], row_to_record)
            .map_err(db_error("list the sandboxes"))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(db_error("list the sandboxes"))??);
        }
        Ok(out)
    }
}

const SELECT: &str = "SELECT name, id, status, reason, request, profile, mode, plan_hash, dir,
    init_pid, init_start, keeper_pid, keeper_start, created, last_used, idle_timeout_s,
    max_lifetime_s, socket FROM sandboxes";

/// A row of [`SELECT`]; a request that does not parse is a corrupt record.
fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record, StateError>> {
    let name: String = row.get(0)?;
    let request: String = row.get(4)?;
    let request = match serde_json::from_str::<CreateRequest>(&request) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Err(StateError::Database(format!(
            "the record of sandbox `{name}` is corrupt ({e}); `phantom destroy {name}` removes it"
        ))))
        }
    };
    let int = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(Ok(Record {
        id: row.get(1)?,
        status: row.get(2)?,
        reason: row.get(3)?,
        request,
        profile: row.get(5)?,
        mode: row.get(6)?,
        plan_hash: row.get(7)?,
        dir: PathBuf::from(row.get::<_, String>(8)?),
        init_pid: row.get(9)?,
        init_start: int(10)?,
        keeper_pid: row.get(11)?,
        keeper_start: int(12)?,
        created: int(13)?,
        last_used: int(14)?,
        idle_timeout_s: int(15)?,
        max_lifetime_s: int(16)?,
        socket: PathBuf::from(row.get::<_, String>(17)?),
        name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Scratch;
    use phantom_api::{PolicySource, RunOverrides};

    fn record(name: &str, id: &str) -> Record {
        Record {
            name: name.into(),
            id: id.into(),
            status: STARTING.into(),
            reason: None,
            request: CreateRequest {
                name: name.into(),
                policy: PolicySource::Profile("default".into()),
                overrides: RunOverrides::default(),
                image: None,
                idle_timeout: None,
                max_lifetime: None,
                from_snapshot: None,
            },
            profile: "default".into(),
            mode: "sandbox".into(),
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
        assert_eq!(state.list().unwrap().len(), 1);
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
        state.set_status("old", DEAD, Some("gone")).unwrap();
        state
            .set_running("old", (1, 1), (1, 1), Path::new("/s"))
            .unwrap();
        let r = state.get("box").unwrap().unwrap();
        assert_eq!((r.id.as_str(), r.status.as_str()), ("new", STARTING));
        // A record being destroyed keeps that status whatever its keeper says.
        state.set_destroying("new").unwrap();
        state.set_status("new", DEAD, Some("init exited")).unwrap();
        assert_eq!(state.get("box").unwrap().unwrap().status, DESTROYING);
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
        let r = state.get("box").unwrap().unwrap();
        assert_eq!(r.effective_status().0, RUNNING);
        state.set_status("i1", RUNNING, None).unwrap();
        state.delete("i1").unwrap();
        state.insert(&record("box", "i2")).unwrap();
        state
            .set_running("i2", (me, start + 1), (me, start), Path::new("/s"))
            .unwrap();
        let r = state.get("box").unwrap().unwrap();
        let (status, reason) = r.effective_status();
        assert_eq!(status, DEAD);
        assert!(reason.unwrap().contains("init exited"));
        assert_eq!(r.info().status, "dead");
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
        let err = state.get("box").unwrap_err().to_string();
        assert!(err.contains("record of sandbox `box` is corrupt"), "{err}");
        assert!(state.get_by_id("c1").is_err());
    }
}
