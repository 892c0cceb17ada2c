//! Errors of the state directory and the state database. Each says what went wrong
//! and, where the user can act, how to fix it.

/// Why the state database could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A value the caller gave is wrong (a name in use, a bad key name); exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The owner has a sandbox of that name already; exit code 2.
    #[error("a sandbox named `{0}` exists already; pick another name or destroy that one first")]
    NameTaken(String),
    /// The database failed or holds a corrupt record.
    #[error("state database: {0}")]
    Database(String),
    /// The state directory is not one phantom may use.
    #[error("{what}: {why}\n  hint: {hint}")]
    Unsupported {
        what: String,
        why: String,
        hint: String,
    },
    /// Host filesystem work (the state directory, its lock) failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    /// The process exit code a CLI should use for this error: 2 for usage errors,
    /// 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StateError::Usage(_) | StateError::NameTaken(_) => 2,
            _ => 1,
        }
    }
}
