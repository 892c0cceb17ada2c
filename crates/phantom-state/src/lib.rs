//! Phantom's state: the state directory and the state database in it.
//!
//! * [`store_dir`] — where the state lives ([`store_dir::state_dir`]:
//!   `$PHANTOM_STATE_DIR`, else `/var/lib/phantom` for root, else
//!   `$XDG_STATE_HOME/phantom` or `~/.local/state/phantom`) and how a private directory
//!   in it is made and checked ([`store_dir::prepare`]). The image store
//!   (phantom-image), the snapshot store (phantom-store) and `state.db` all live there.
//! * [`State`] — `<state>/state.db` (SQLite, WAL), shared by every `phantom` process of
//!   the user: the persistent sandboxes' table ([`Record`], one per sandbox, keyed by
//!   owner and name, updated by id), and the connection [`keys`] and [`audit`] use.
//! * [`keys::Keys`] — API keys of the HTTP API (only their BLAKE3 hash is stored);
//!   [`audit::Audit`] — the audit log of the HTTP API.
//! * [`ids::new_sandbox_id`] — fresh random ids (sandboxes, stores' work directories).
//! * [`StateError`] — why any of it failed; [`StateError::exit_code`] is 2 for the
//!   caller's mistakes.
#![forbid(unsafe_code)]

pub mod audit;
mod db;
mod error;
pub mod ids;
pub mod keys;
pub mod store_dir;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use db::{Record, State};
pub use error::StateError;

/// Unix seconds now: the time stamps of records, keys, images and snapshots.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
