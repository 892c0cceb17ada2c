//! Read-only facts about the running kernel, for `phantom doctor` and reports.

/// The kernel release (uname -r).
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// The machine architecture (uname -m).
pub fn machine() -> String {
    rustix::system::uname()
        .machine()
        .to_string_lossy()
        .into_owned()
}
