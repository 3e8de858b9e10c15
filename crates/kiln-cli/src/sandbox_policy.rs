//! The sandbox an agent's commands run in, from the `[sandbox]` configuration.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use kiln_protocol::Mode;
use kiln_sandbox::{Backend, Sandbox, SandboxPolicy};

use crate::config::Config;

pub fn build(config: &Config, workspace: &Path, mode: Mode) -> Result<Arc<dyn Sandbox>> {
    let policy = policy(config, workspace, mode)?;
    if policy.backend == Backend::None {
        eprintln!("warning: --sandbox none: commands run with NO isolation, as you, with your network and files");
    }
    kiln_sandbox::create(policy).map_err(|err| anyhow::anyhow!("{err}"))
}

/// The policy `[sandbox]` describes, for `workspace` in `mode`.
pub fn policy(config: &Config, workspace: &Path, mode: Mode) -> Result<SandboxPolicy> {
    let backend: Backend = config
        .sandbox
        .backend
        .parse()
        .context("fix sandbox.backend in config.toml or --sandbox")?;
    let mut policy = SandboxPolicy::for_workspace(workspace);
    policy.backend = backend;
    policy.read_only = mode.is_read_only();
    policy.network = config.sandbox.network;
    policy.extra_read_only = config.sandbox.readable_paths.clone();
    policy.extra_writable = config.sandbox.writable_paths.clone();
    if let Some(memory) = &config.sandbox.memory {
        policy.limits.memory_bytes = Some(
            kiln_sandbox::parse_bytes(memory)
                .context("fix sandbox.memory (for example \"4GiB\")")?,
        );
    }
    if let Some(processes) = config.sandbox.max_processes {
        policy.limits.max_processes = Some(processes);
    }
    Ok(policy)
}
