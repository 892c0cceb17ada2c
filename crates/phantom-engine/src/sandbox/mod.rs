//! Persistent sandboxes: named sandboxes that live between commands, each owned by
//! the principal that created it.
//!
//! The engine (`server/sandboxes.rs`) records a sandbox (phantom-state, with its
//! owner), makes its workspace (`<state>/sandboxes/<id>/workspace`) and forks its
//! keeper ([`keeper`]), which restores a snapshot into the workspace when asked,
//! starts the init and watches it; commands join it from the engine ([`exec`]); files
//! move through a workspace fd the engine hands out, every sandbox-side path resolved
//! beneath it ([`files`], in the caller's process); the processes in it are found in
//! the host's /proc by its pid namespace ([`processes`]).

pub(crate) mod exec;
pub mod files;
pub mod fsops;
pub(crate) mod keeper;
pub(crate) mod processes;
pub mod watch;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use phantom_api::request::{Field, FieldError, Quantity};
use phantom_linux::fdpass;
use phantom_linux::process::{self, Forked, Namespaces};
use phantom_policy::Plan;

use crate::channel::{self, Report};
use crate::EngineError;

pub use files::{cp, CpEnd, CpLimits, CpReport};

/// Default idle timeout of a persistent sandbox.
pub const DEFAULT_IDLE_TIMEOUT: &str = "15m";
/// Default maximum lifetime of a persistent sandbox.
pub const DEFAULT_MAX_LIFETIME: &str = "24h";
/// How long `create` waits for the sandbox to be ready.
pub(crate) const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `destroy` waits for a keeper to clean up after its init.
pub(crate) const KEEPER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub use phantom_state::now_s;

/// "15m", "24h", "90s" for a number of seconds.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Check a sandbox name: letters, digits, `-`, `_`, `.`; starting with a letter or
/// digit; at most 63 characters. So it is never a path (`/`, `..`) nor an option.
pub fn validate_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(FieldError::with_value(
            Field::Name,
            name,
            "invalid sandbox name: use letters, digits, - _ and ., start with a letter or digit, no `..` or `/`, at most 63 characters (e.g. agent-1)",
        )
        .into())
    }
}

/// Fingerprint of what a sandbox's fences are made from: the plan without the
/// per-command wall timeout (which `exec --timeout` may change).
pub(crate) fn plan_hash(plan: &Plan) -> String {
    let mut plan = plan.clone();
    plan.limits.wall_timeout_ms = 0;
    blake3::hash(format!("{plan:?}").as_bytes()).to_hex()[..32].to_string()
}

/// A lifetime in whole seconds (at least 1), from the request's `field` or `default`.
pub(crate) fn seconds(
    field: Field,
    value: Option<&Quantity>,
    default: &str,
) -> Result<u64, EngineError> {
    let text = value.map_or(default, Quantity::as_str);
    let bad = |message: String| EngineError::from(FieldError::with_value(field, text, message));
    let ms = phantom_policy::units::parse_duration_ms(text).map_err(|e| bad(e.to_string()))?;
    if ms < 1000 {
        return Err(bad("at least 1s, e.g. 15m".into()));
    }
    Ok(ms / 1000)
}

/// Fork the keeper — twice, so that it is nobody's child here (the engine must not
/// collect a keeper that outlives it) — and return the channel it reports on
/// ([`keeper_report`]).
pub(crate) fn fork_keeper(keeper: keeper::Keeper) -> Result<std::os::fd::OwnedFd, EngineError> {
    let (report, report_child) = fdpass::channel()?;
    match process::clone_child(Namespaces::default(), None)? {
        Forked::Child => {
            use std::os::fd::AsRawFd;
            if process::close_all_except(&[report_child.as_raw_fd()]).is_err() {
                process::exit_now(1);
            }
            match process::clone_child(Namespaces::default(), None) {
                Ok(Forked::Child) => keeper::run(keeper, report_child),
                Ok(Forked::Parent { .. }) => process::exit_now(0),
                Err(e) => {
                    let message = e.to_string();
                    let _ = channel::send(report_child.as_fd(), &Report::Failed { message }, &[]);
                    process::exit_now(1)
                }
            }
        }
        Forked::Parent { pid, .. } => {
            drop(report_child);
            let _ = process::wait4(pid, false);
        }
    }
    // The engine waits for its report among its other events.
    Ok(report)
}

/// What a keeper reported: the warnings of a sandbox that runs, or why it failed.
pub(crate) fn keeper_report(report: &std::os::fd::OwnedFd) -> Result<Vec<String>, EngineError> {
    match channel::recv::<Report>(report.as_fd(), 64 * 1024, 0, "keeper") {
        Ok((Report::Ready { warnings }, _)) => Ok(warnings),
        Ok((Report::Failed { message }, _)) => Err(EngineError::Setup(message)),
        Ok((other, _)) => Err(EngineError::Setup(
            channel::ChannelError::UnexpectedMessage {
                peer: "keeper",
                expected: "ready or failed",
                received: other.name(),
            }
            .to_string(),
        )),
        Err(channel::ChannelError::Closed { .. }) => Err(EngineError::Setup(
            "the sandbox's keeper died while starting it".into(),
        )),
        Err(e) => Err(EngineError::Setup(e.to_string())),
    }
}

/// remove_dir_all that also removes what the sandbox made unwritable (a directory
/// it chmod'ed 0500 cannot lose its entries until it is writable again). Symlinks are
/// removed, never followed.
pub(crate) fn force_remove(dir: &Path) -> Result<(), EngineError> {
    // A root engine's sandbox has its workspace on a tmpfs of its own.
    let workspace = dir.join("workspace");
    if phantom_linux::mount::is_mount_point(&workspace) {
        phantom_linux::mount::detach(&workspace)?;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    fn open_up(dir: &Path) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&entry.path());
                }
            }
        }
    }
    open_up(dir);
    std::fs::remove_dir_all(dir).map_err(|source| EngineError::Io {
        what: "remove",
        path: dir.display().to_string(),
        source,
    })
}

/// `YYYYMMDD-HHMMSS` for unix seconds (UTC).
pub fn utc_stamp(secs: u64) -> String {
    let (y, m, d, h, mi, s) = phantom_state::utc(secs as i64);
    format!("{y:04}{m:02}{d:02}-{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_paths_or_options_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            "-rf",
            ".hidden",
            "a..b",
            &"x".repeat(64),
            "a b",
            "ä",
        ] {
            let err = validate_name(bad).unwrap_err().to_failure();
            assert_eq!(err.field, Some(Field::Name), "{bad}");
            assert!(
                err.message.contains("letters, digits"),
                "{bad}: {}",
                err.message
            );
        }
        for good in ["a", "agent-1", "A_b.c", &"x".repeat(63)] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_795_287_845), "20261121-190405");
    }

    #[test]
    fn lifetimes_parse_with_units_and_refuse_nonsense() {
        let q = |s: &str| Quantity(s.into());
        assert_eq!(seconds(Field::TimeoutIdle, None, "15m").unwrap(), 900);
        assert_eq!(
            seconds(Field::MaxLifetime, Some(&q("24h")), "1h").unwrap(),
            86400
        );
        let err = seconds(Field::TimeoutIdle, Some(&q("10ms")), "15m").unwrap_err();
        assert_eq!(
            err.to_failure().for_cli(),
            "--timeout-idle 10ms: at least 1s, e.g. 15m"
        );
        assert!(seconds(Field::TimeoutIdle, Some(&q("soon")), "15m").is_err());
    }
}
