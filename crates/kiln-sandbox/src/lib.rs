//! Sandboxed command execution (issue 4). Interface sketch: the agent and the
//! server only see [`Sandbox`], [`SandboxPolicy`], [`ExecRequest`] and [`ExecOutcome`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kiln_protocol::ExecStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which isolation mechanism runs commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// bubblewrap namespaces (default on Linux).
    Bwrap,
    /// No isolation at all; only when asked for explicitly.
    None,
}

/// What a sandbox lets its commands see and do.
#[derive(Debug, Clone)]
pub struct SandboxPolicy {
    pub backend: Backend,
    /// The workspace (repository checkout).
    pub workspace: PathBuf,
    /// Read-only workspace (Ask mode).
    pub read_only: bool,
    /// Network access (setup phase, or an environment that enables it).
    pub network: bool,
    /// Variables for every command, on top of the allow-listed base environment.
    pub env: BTreeMap<String, String>,
}

/// One command to run inside a sandbox.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Working directory; must lie inside the workspace.
    pub cwd: PathBuf,
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
}

/// A piece of output, streamed while the command runs.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: ExecStream,
    pub data: bytes::Bytes,
}

/// How a command ended.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// Exit status; `None` when killed by a signal.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// A limit that killed the command, described for people ("memory limit 2 GiB").
    pub killed_by: Option<String>,
    pub duration: Duration,
    /// Combined output with the middle dropped past the in-memory cap.
    pub output: String,
    pub omitted_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Other(String),
}

#[async_trait::async_trait]
pub trait Sandbox: Send + Sync {
    /// Run one command. Output is streamed to `output` (if given) as it
    /// arrives; `cancel` kills the command's whole process tree.
    async fn exec(
        &self,
        request: ExecRequest,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError>;
}
