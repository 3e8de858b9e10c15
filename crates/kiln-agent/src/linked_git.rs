//! The git directory a linked worktree's `.git` file points to, which the
//! sandbox must show (read-only) for git to work inside it.

use std::path::{Path, PathBuf};

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
pub(crate) fn linked_git_common_dir(workspace: &Path) -> Option<PathBuf> {
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
