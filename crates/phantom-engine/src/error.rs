//! Errors of the engine. Each says what went wrong and, where the user can act,
//! how to fix it.

use phantom_api::engine::{Failure, FailureKind};
use phantom_linux::SysError;

/// Why a run could not start or complete.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The policy did not load or compile (message carries file:line:column).
    #[error("{0}")]
    Policy(#[from] phantom_policy::PolicyError),
    /// A value the caller gave is wrong; exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The request was refused, with a typed reason (a field that is wrong, a grant
    /// that is missing, a sandbox that is not found).
    #[error("{0}")]
    Request(Failure),
    /// The host lacks something this run needs.
    #[error("{what}: {why}\n  hint: {hint}")]
    Unsupported {
        what: String,
        why: String,
        hint: String,
    },
    /// The image store refused: a corrupt record, a store that is not the caller's.
    /// (A missing image is an [`EngineError::Usage`].)
    #[error("{0}")]
    Image(#[from] phantom_image::ImageError),
    /// A kernel operation failed in the front end.
    #[error("{0}")]
    Sys(#[from] SysError),
    /// Setting up the sandbox failed inside the child; the message names the step.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The persistent sandboxes' database failed, holds a corrupt record, or refused
    /// a value (a name in use: exit code 2).
    #[error(transparent)]
    State(#[from] phantom_state::StateError),
    /// The snapshot store refused (a missing tag, a damaged store, ...).
    #[error("{0}")]
    Snapshot(#[from] phantom_store::SnapshotError),
    /// The egress proxy helper could not start.
    #[error(transparent)]
    Egress(#[from] phantom_egress::EgressError),
    /// Host filesystem work (workspace, state) failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A request value that is wrong: the caller's mistake, naming the field.
impl From<phantom_api::request::FieldError> for EngineError {
    fn from(e: phantom_api::request::FieldError) -> EngineError {
        EngineError::Request(e.into())
    }
}

impl EngineError {
    /// The process exit code a CLI should use for this error: 2 for usage errors
    /// (bad flags, bad policy, a bad image), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::Policy(_) | EngineError::Usage(_) => 2,
            EngineError::Request(f) => f.kind.exit_code(),
            EngineError::Image(e) => e.exit_code(),
            EngineError::Snapshot(e) => e.exit_code(),
            EngineError::State(e) => e.exit_code(),
            _ => 1,
        }
    }

    /// The error as the engine protocol carries it.
    pub fn to_failure(&self) -> Failure {
        let kind = match self {
            EngineError::Request(f) => return f.clone(),
            EngineError::Policy(_) | EngineError::Usage(_) => FailureKind::Invalid,
            EngineError::Unsupported { .. } => FailureKind::Unsupported,
            EngineError::State(phantom_state::StateError::NameTaken(name)) => {
                return Failure {
                    kind: FailureKind::Conflict,
                    field: Some(phantom_api::request::Field::Name),
                    value: Some(name.clone()),
                    message: self.to_string(),
                }
            }
            EngineError::Snapshot(phantom_store::SnapshotError::NotFound(_)) => {
                FailureKind::NotFound
            }
            EngineError::Image(phantom_image::ImageError::NotFound(name)) => {
                return Failure {
                    kind: FailureKind::NotFound,
                    field: Some(phantom_api::request::Field::Image),
                    value: Some(name.clone()),
                    message: self.to_string(),
                }
            }
            e if e.exit_code() == 2 => FailureKind::Invalid,
            _ => FailureKind::Failed,
        };
        Failure::new(kind, self.to_string())
    }
}

/// A sandbox, snapshot or image that does not exist — or is another owner's: the two
/// look the same.
pub(crate) fn not_found(message: String) -> EngineError {
    EngineError::Request(Failure::new(FailureKind::NotFound, message))
}
