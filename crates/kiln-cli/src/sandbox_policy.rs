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
    // In a linked worktree (`kiln exec --worktree`, or a `git worktree` of
    // the user's), `.git` is a file naming a git directory outside the
    // workspace: without it `git status` fails inside the sandbox. Read-only:
    // the repository's refs and objects are not the agent's to rewrite.
    if let Some(common_dir) = linked_git_common_dir(workspace) {
        policy.extra_read_only.push(common_dir);
    }
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

/// The repository's common git directory when `workspace/.git` is a
/// `gitdir:` file pointing outside the workspace.
fn linked_git_common_dir(workspace: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(workspace.join(".git")).ok()?;
    let git_dir = workspace.join(text.trim().strip_prefix("gitdir:")?.trim());
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(relative) => git_dir.join(relative.trim()),
        Err(_) => git_dir,
    };
    let common = common.canonicalize().ok()?;
    let workspace = workspace.canonicalize().ok()?;
    (!common.starts_with(&workspace)).then_some(common)
}
