//! Helpers for the unit tests.

use std::path::PathBuf;

/// A scratch directory under the temp dir, unique to this test, removed on drop
/// (also when an assertion fails).
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(what: &str) -> Scratch {
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
