//! How a server runs attempts: the model provider, the agent and sandbox
//! templates each attempt starts from, and the worker pool's knobs.

use std::path::PathBuf;
use std::time::Duration;

use kiln_agent::AgentConfig;
use kiln_model::ProviderConfig;
use kiln_sandbox::SandboxPolicy;

/// Largest request body the API accepts.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Everything [`crate::Server`] needs besides the store.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where mirrors (`mirrors/`) and per-attempt checkouts (`checkouts/`) live.
    pub data_dir: PathBuf,
    /// The model provider every attempt talks to.
    pub provider: ProviderConfig,
    /// The agent settings each attempt starts from; `cwd`, `mode` and (when
    /// the task names one) `model` are replaced per attempt.
    pub agent: AgentConfig,
    /// The sandbox each attempt starts from; workspace, read-only, network,
    /// variables and image are set per attempt from its task and environment.
    pub sandbox: SandboxPolicy,
    /// Attempts that run at once.
    pub max_parallel: usize,
    /// How long a claim lasts without a heartbeat (renewed every third of it).
    pub lease: Duration,
    /// Claims an attempt gets before an interruption fails it.
    pub max_tries: u32,
    pub body_limit: usize,
}

impl ServerConfig {
    /// Defaults for one machine: 4 parallel attempts, 60 s leases, 3 tries.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        provider: ProviderConfig,
        agent: AgentConfig,
        sandbox: SandboxPolicy,
    ) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            provider,
            agent,
            sandbox,
            max_parallel: 4,
            lease: Duration::from_secs(60),
            max_tries: 3,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}
