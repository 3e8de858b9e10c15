//! The sandbox an agent's commands run in, from the `[sandbox]` configuration.

use std::path::{Path, PathBuf};
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

/// The repository's common git directory when the workspace is a linked
/// worktree or a submodule (its `.git` is a `gitdir:` file) and that
/// directory lies outside the workspace.
///
/// Found by git (`rev-parse`, which runs nothing the repository configures)
/// before the agent's first command, and believed only when git's own records
/// point back at this workspace: a worktree's admin directory names the
/// workspace's `.git` in its `gitdir` file (written by `git worktree add`), a
/// submodule's git directory names the workspace in `core.worktree`. A `.git`
/// file saying `gitdir: /home/me/.ssh` or naming some other repository then
/// exposes nothing. During the run `.git` is read-only in the sandbox, so
/// the agent cannot change what the next run finds.
fn linked_git_common_dir(workspace: &Path) -> Option<PathBuf> {
    let dot_git = workspace.join(".git");
    if !std::fs::symlink_metadata(&dot_git).is_ok_and(|meta| meta.is_file()) {
        return None;
    }
    let output = std::process::Command::new("git")
        .args([
            "-c",
            "core.fsmonitor=false",
            "rev-parse",
            "--path-format=absolute",
            "--git-dir",
            "--git-common-dir",
        ])
        .current_dir(workspace)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_COMMON_DIR")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let text = String::from_utf8(output.stdout).ok()?;
    let mut lines = text.lines();
    let git_dir = PathBuf::from(lines.next()?).canonicalize().ok()?;
    let common = PathBuf::from(lines.next()?).canonicalize().ok()?;
    let workspace = workspace.canonicalize().ok()?;
    let points_back = |path: PathBuf, expected: &Path| {
        let path = if path.is_absolute() {
            path
        } else {
            git_dir.join(path)
        };
        path.canonicalize().is_ok_and(|path| path == expected)
    };
    let worktree_backlink = std::fs::read_to_string(git_dir.join("gitdir"))
        .is_ok_and(|text| points_back(PathBuf::from(text.trim()), &workspace.join(".git")));
    let submodule_backlink = || {
        std::process::Command::new("git")
            .args(["config", "--file"])
            .arg(git_dir.join("config"))
            .args(["--get", "core.worktree"])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .is_some_and(|text| points_back(PathBuf::from(text.trim()), &workspace))
    };
    let belongs_here = worktree_backlink || submodule_backlink();
    (belongs_here && !common.starts_with(&workspace)).then_some(common)
}
