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

/// The UTC calendar date and time of `secs` Unix seconds: (year, month, day, hour,
/// minute, second). Days to a civil date after Howard Hinnant's algorithm.
pub fn utc(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m as u32,
        d as u32,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// RFC 3339 in UTC (`2026-12-06T19:30:00Z`), with nanoseconds when given.
pub fn rfc3339(secs: i64, nanos: Option<u32>) -> String {
    let (y, m, d, h, mi, s) = utc(secs);
    match nanos {
        Some(n) => format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{n:09}Z"),
        None => format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
    }
}

/// Unix seconds now: the time stamps of records, keys, images and snapshots.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(super::rfc3339(0, None), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century divisible by 400), 12:34:56.
        assert_eq!(
            super::rfc3339(951_827_696, Some(5)),
            "2000-02-29T12:34:56.000000005Z"
        );
        assert_eq!(super::utc(-1), (1969, 12, 31, 23, 59, 59));
    }
}
