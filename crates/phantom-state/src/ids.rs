//! Sandbox ids: also the names of the image store's and the snapshot store's work
//! directories, so the one generator lives here, below all of them.

use std::io::Read;

/// A fresh sandbox id: 12 lower-case hex digits from the kernel's CSPRNG.
pub fn new_sandbox_id() -> String {
    let mut bytes = [0u8; 6];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !filled {
        // No /dev/urandom: fall back to time and pid, still unique per host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mixed = t ^ (u64::from(std::process::id()) << 32);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
