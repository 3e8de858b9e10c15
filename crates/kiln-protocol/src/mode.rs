use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a task may do to its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Change the repository: the workspace is writable and `apply_patch` is offered.
    #[default]
    Code,
    /// Answer a question: the workspace is read-only (enforced) and no patch tool is offered.
    Ask,
}

impl Mode {
    pub fn is_read_only(self) -> bool {
        matches!(self, Mode::Ask)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Code => "code",
            Mode::Ask => "ask",
        })
    }
}
