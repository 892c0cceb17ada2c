//! Helpers for unit tests (this crate's, and phantom-engine's through the `test-util`
//! feature of its dev-dependency).

use std::path::PathBuf;

/// A scratch directory under the temp dir, unique to this test, removed on drop
/// (also when an assertion fails).
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh path `phantom-<what>-<pid>-<random id>` under the temp dir (not created).
    pub fn new(what: &str) -> Scratch {
        Scratch(std::env::temp_dir().join(format!(
            "phantom-{what}-{}-{}",
            std::process::id(),
            crate::ids::new_sandbox_id()
        )))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
