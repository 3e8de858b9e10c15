//! The apply_patch format (issue 3). Interface sketch.
use std::path::Path;

use kiln_protocol::FileChange;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(String),
}

/// The result of a successful apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyReport {
    pub changes: Vec<FileChange>,
}

impl ApplyReport {
    /// `Success. Updated the following files:` then `A/M/D path` lines.
    pub fn summary(&self) -> String {
        String::new()
    }
}

/// Parse `patch` and apply it under `root`, atomically.
pub fn apply(_root: &Path, _patch: &str) -> Result<ApplyReport, PatchError> {
    Err(PatchError::Invalid("not implemented yet".into()))
}
