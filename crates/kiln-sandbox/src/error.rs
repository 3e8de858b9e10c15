//! The one error type of this crate.

use std::path::PathBuf;

/// Why a sandbox could not be created or a command could not be started.
///
/// A command that runs and fails is not an error; see [`crate::ExecOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The backend cannot run here; `fix` says what to do about it.
    #[error("sandbox backend {backend} is not usable: {reason}; {fix}")]
    BackendUnavailable {
        backend: &'static str,
        reason: String,
        fix: String,
    },
    #[error("invalid sandbox policy: {0}")]
    InvalidPolicy(String),
    #[error("invalid command: {0}")]
    InvalidRequest(String),
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not build the seccomp filter: {0}")]
    Seccomp(String),
    /// Only for compatibility with early callers; new code uses the variants above.
    #[error("{0}")]
    Other(String),
}

impl SandboxError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SandboxError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
