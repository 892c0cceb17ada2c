//! The host ids a sandbox's root maps to. (A sandbox's own id comes from
//! [`phantom_state::ids::new_sandbox_id`].)

/// The host uid and gid that uid/gid 0 inside a sandbox map to.
///
/// An unprivileged caller maps to itself (it can map nothing else). Root never maps
/// to root: the sandbox's root becomes an unprivileged host id — the start of root's
/// range in /etc/subuid and /etc/subgid when there is one, else [`DEFAULT_SANDBOX_ID`].
pub fn sandbox_host_ids() -> (u32, u32) {
    let (uid, gid) = phantom_linux::process::ids();
    if uid != 0 {
        return (uid, gid);
    }
    (
        subid_start("/etc/subuid").unwrap_or(DEFAULT_SANDBOX_ID),
        subid_start("/etc/subgid").unwrap_or(DEFAULT_SANDBOX_ID),
    )
}

/// Host uid/gid of a sandbox's root when phantom runs as root and /etc/subuid has no
/// range for root. High enough to belong to no real account.
pub const DEFAULT_SANDBOX_ID: u32 = 2_000_000_000;

fn subid_start(file: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split(':');
        let (name, start) = (parts.next()?, parts.next()?);
        (name == "root" || name == "0")
            .then(|| start.trim().parse::<u32>().ok())
            .flatten()
            .filter(|&s| s != 0)
    })
}
