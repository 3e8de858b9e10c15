//! Sandboxed command execution for kiln.
//!
//! Every command an agent runs goes through a [`Sandbox`]: a workspace plus a
//! [`SandboxPolicy`] saying what the command may see (the workspace, read-only
//! system directories, the toolchains on `PATH`, a private `/tmp` and `$HOME`),
//! whether it may use the network, and which limits apply (memory, processes,
//! CPU, time, output). [`create`] checks that the chosen [`Backend`] works on
//! this machine and returns a sandbox; [`Sandbox::exec`] runs one command in
//! it, streaming [`OutputChunk`]s while keeping only a bounded head and tail of
//! the output in memory; [`Sandbox::run_setup`] runs an environment's setup
//! script with network access and setup-only secrets, which the agent phase
//! never sees. The default backend is bubblewrap (Linux namespaces, seccomp,
//! cgroups); podman runs environments that name an OCI image; `none` isolates
//! nothing and exists only for explicit opt-in.
//!
//! ```no_run
//! use std::time::Duration;
//! use kiln_sandbox::{Backend, ExecRequest, SandboxPolicy};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), kiln_sandbox::SandboxError> {
//! let mut policy = SandboxPolicy::for_workspace("/srv/checkouts/attempt-1");
//! policy.backend = Backend::Bwrap;
//! policy.limits.memory_bytes = Some(2 << 30);
//! let sandbox = kiln_sandbox::create(policy)?;
//!
//! let request = ExecRequest::new(["cargo", "test", "--offline"], "/srv/checkouts/attempt-1")
//!     .with_timeout(Duration::from_secs(600));
//! let outcome = sandbox.exec(request, None, CancellationToken::new()).await?;
//! println!("exit {:?}, killed by {:?}", outcome.exit_code, outcome.killed_by);
//! print!("{}", outcome.output);
//! # Ok(())
//! # }
//! ```

mod bwrap;
mod capture;
mod cgroup;
mod common;
mod devices;
mod environment;
mod error;
mod filesystem;
mod none;
mod podman;
mod policy;
mod protected;
mod runner;
mod seccomp;
mod size;
mod slirp;
mod state_dir;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::ExecStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use error::SandboxError;
pub use policy::{Backend, Limits, SandboxPolicy};
pub use size::{format_bytes, parse_bytes};

/// One command to run inside a sandbox.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The program and its arguments; the program is looked up on the
    /// sandbox's `PATH`.
    pub argv: Vec<String>,
    /// Working directory; must lie inside the workspace.
    pub cwd: PathBuf,
    /// Wall-clock limit for this command.
    pub timeout: Duration,
    /// Variables on top of the policy's environment.
    pub env: BTreeMap<String, String>,
}

impl ExecRequest {
    /// A request with the default timeout of ten minutes and no extra variables.
    pub fn new<I, S>(argv: I, cwd: impl Into<PathBuf>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: cwd.into(),
            timeout: Duration::from_secs(600),
            env: BTreeMap::new(),
        }
    }

    /// `sh -c SCRIPT`, for commands given as one shell line.
    pub fn shell(script: impl Into<String>, cwd: impl Into<PathBuf>) -> Self {
        ExecRequest::new(
            ["/bin/sh".to_string(), "-c".to_string(), script.into()],
            cwd,
        )
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
}

/// A piece of output, streamed while the command runs.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: ExecStream,
    pub data: bytes::Bytes,
    /// Position of `data` in the command's combined output (stdout and
    /// stderr interleaved in arrival order), counted from 0.
    pub offset: u64,
}

/// How a command ended.
#[derive(Debug, Clone, Default)]
pub struct ExecOutcome {
    /// Exit status; `None` when kiln killed the command (timeout, deadline,
    /// cancellation) or a signal ended it.
    pub exit_code: Option<i32>,
    /// The per-command timeout or the sandbox's overall deadline fired.
    pub timed_out: bool,
    /// The command was cancelled through its [`CancellationToken`].
    pub cancelled: bool,
    /// What killed the command, described for people ("memory limit 2 GiB",
    /// "timeout 10s"); `None` when it ended on its own.
    pub killed_by: Option<String>,
    /// Every limit the command ran into, even those that did not kill it
    /// ("process limit 256" when a fork was refused).
    pub limits_reached: Vec<String>,
    pub duration: Duration,
    /// Combined output: the head and the tail, with a marker in place of the
    /// middle when the output was larger than the in-memory budget.
    pub output: String,
    /// Total bytes the command printed on both streams.
    pub total_bytes: u64,
    /// Bytes printed but missing from `output` (the middle).
    pub omitted_bytes: u64,
    /// The omitted middle as far as it fit under [`Limits::output_spill_bytes`];
    /// deleted with the sandbox, so copy it out to keep it.
    pub spill_file: Option<PathBuf>,
}

impl ExecOutcome {
    /// True when the command exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.killed_by.is_none()
    }
}

/// Runs commands under one policy, in one workspace.
///
/// Dropping the last reference tears the sandbox down: its private home,
/// `/tmp` and spilled output are deleted; running commands are killed.
#[async_trait::async_trait]
pub trait Sandbox: Send + Sync {
    /// Run one command. Output is streamed to `output` (if given) as it
    /// arrives; `cancel` kills the command's whole process tree.
    ///
    /// Drain `output` while this runs: a full channel pauses reading, and
    /// the command then waits on its pipe (its timeout still applies).
    /// Several commands may run in one sandbox at once.
    ///
    /// A command that fails, times out or hits a limit is an `Ok` outcome;
    /// `Err` means the command could not be run at all.
    async fn exec(
        &self,
        request: ExecRequest,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError>;

    /// Run an environment's setup script (`bash -e`, or `sh -e` where bash is
    /// missing) in the workspace, with network access and `secrets` in its
    /// environment. Secrets are passed to this one process only; the agent
    /// phase's commands run under the policy as given and never see them.
    async fn run_setup(
        &self,
        script: &str,
        secrets: &BTreeMap<String, String>,
        output: Option<mpsc::Sender<OutputChunk>>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, SandboxError>;

    /// The policy this sandbox enforces.
    fn policy(&self) -> &SandboxPolicy;

    /// One line for people: backend, and what is and is not enforced
    /// ("bwrap: no network, workspace read-write, memory 2 GiB via cgroup v1").
    fn describe(&self) -> String;

    /// Kill every command running in this sandbox now and refuse new ones
    /// (they end at once as cancelled). For an attempt that is being
    /// stopped while other holders of the sandbox still exist.
    fn shutdown(&self) {}
}

/// Create a sandbox for `policy.workspace`, after checking that the backend
/// can run on this machine (bubblewrap installed and able to create
/// namespaces, podman present with the policy's image, ...).
pub fn create(policy: SandboxPolicy) -> Result<Arc<dyn Sandbox>, SandboxError> {
    policy.validate()?;
    match policy.backend {
        Backend::Bwrap => Ok(Arc::new(bwrap::BwrapSandbox::new(policy)?)),
        Backend::Podman => Ok(Arc::new(podman::PodmanSandbox::new(policy)?)),
        Backend::None => Ok(Arc::new(none::UnsandboxedRunner::new(policy)?)),
    }
}

/// For each resource limit kiln can set (`memory`, `pids`, `cpu`), the
/// cgroup version that enforces it on this machine, or `None` when kiln
/// falls back to an rlimit (memory, processes) or cannot limit it (cpu).
/// For `kiln doctor`; probes the cgroup hierarchy once per process.
pub fn limit_enforcement() -> [(&'static str, Option<&'static str>); 3] {
    cgroup::controller_versions()
}

/// Whether the seccomp filter every sandboxed command gets can be built for
/// this machine's architecture. (The kernel applies it when bubblewrap
/// starts a command: starting one proves the rest.)
pub fn seccomp_filter_builds() -> Result<(), SandboxError> {
    seccomp::CompiledFilters::build().map(|_| ())
}
