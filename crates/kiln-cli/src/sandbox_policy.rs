//! The sandbox an agent's commands run in, from the `[sandbox]` configuration.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_sandbox::{Backend, SandboxPolicy};

use crate::config::Config;

/// The sandbox keeps the agent from creating `.kiln/` by mounting an empty
/// read-only directory there, whose mount point stays behind in the
/// workspace. Noted before the sandbox exists; when dropped, after the last
/// command, that empty directory is removed if `.kiln` did not exist before.
pub struct KilnMountPoint {
    created_by_the_sandbox: Option<PathBuf>,
}

impl KilnMountPoint {
    pub fn note(workspace: &Path) -> Self {
        let path = workspace.join(".kiln");
        let absent = std::fs::symlink_metadata(&path)
            .is_err_and(|err| err.kind() == std::io::ErrorKind::NotFound);
        KilnMountPoint {
            created_by_the_sandbox: absent.then_some(path),
        }
    }
}

impl Drop for KilnMountPoint {
    fn drop(&mut self) {
        if let Some(path) = &self.created_by_the_sandbox {
            // remove_dir removes only an empty directory: never anything in it.
            let _ = std::fs::remove_dir(path);
        }
    }
}

/// The base policy `[sandbox]` describes (backend, network, paths,
/// limits), for every attempt of `kiln exec`, `kiln serve` and `kiln
/// worker` and for `kiln sandbox`: `kiln_agent::sandbox_policy` makes it
/// an attempt's policy (workspace, mode, git directory).
pub fn base_policy(config: &Config) -> Result<SandboxPolicy> {
    let backend: Backend = config
        .sandbox
        .backend
        .parse()
        .context("fix sandbox.backend in config.toml or --sandbox")?;
    // The workspace is the attempt's, set by `kiln_agent::sandbox_policy`.
    let mut policy = SandboxPolicy::for_workspace(Path::new("/nonexistent"));
    policy.backend = backend;
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
