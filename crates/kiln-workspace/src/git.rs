use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::Worktree;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git is not installed or not on PATH ({0}): install git to use this feature")]
    Missing(std::io::Error),
    #[error("{path} is not inside a git repository: run `git init` there, or drop --worktree")]
    NotARepository { path: PathBuf },
    #[error("`git {args}` failed in {dir}: {stderr}")]
    Failed {
        args: String,
        dir: PathBuf,
        stderr: String,
    },
    #[error("cannot use {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("copy-on-write checkout: {0}")]
    Overlay(String),
}

impl GitError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        GitError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A git repository on disk, addressed by its top-level directory.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    /// The repository that contains `path`.
    pub fn discover(path: &Path) -> Result<Self, GitError> {
        let output = git_output(path, ["rev-parse", "--show-toplevel"])?;
        if !output.status.success() {
            return Err(GitError::NotARepository {
                path: path.to_path_buf(),
            });
        }
        let root = String::from_utf8_lossy(&output.stdout).trim().to_string();
        Ok(Repo {
            root: PathBuf::from(root),
        })
    }

    /// The repository whose top-level directory is `root`, without asking
    /// git (for a repository kiln made itself, such as a server's mirror).
    pub fn at(root: &Path) -> Self {
        Repo {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolve a revision (`HEAD`, a branch, a sha) to a commit id.
    pub fn resolve(&self, rev: &str) -> Result<String, GitError> {
        let spec = format!("{rev}^{{commit}}");
        run_git(&self.root, ["rev-parse", "--verify", &spec]).map(|s| s.trim().to_string())
    }

    /// The directory shared by all of the repository's worktrees (`.git`).
    pub fn common_dir(&self) -> Result<PathBuf, GitError> {
        let dir = run_git(&self.root, ["rev-parse", "--git-common-dir"])?;
        Ok(self.root.join(dir.trim()))
    }

    /// Drop git's record of any worktree at `path` whose directory is gone,
    /// locked or not (kiln locks its base checkouts, and a locked,
    /// missing worktree would block a new one at the same path).
    pub(crate) fn forget_worktree_at(&self, path: &Path) -> Result<(), GitError> {
        let worktrees = self.common_dir()?.join("worktrees");
        let Ok(entries) = std::fs::read_dir(&worktrees) else {
            return Ok(());
        };
        let dot_git = path.join(".git");
        if dot_git.exists() {
            return Ok(());
        }
        // git records the real path; `path` may go through a symlink.
        let real = path
            .parent()
            .and_then(|parent| parent.canonicalize().ok())
            .zip(path.file_name())
            .map(|(parent, name)| parent.join(name).join(".git"));
        for entry in entries.filter_map(Result::ok) {
            let recorded = std::fs::read_to_string(entry.path().join("gitdir")).unwrap_or_default();
            let recorded = Path::new(recorded.trim());
            if recorded == dot_git || Some(recorded) == real.as_deref() {
                std::fs::remove_dir_all(entry.path())
                    .map_err(|e| GitError::io(&entry.path(), e))?;
            }
        }
        Ok(())
    }

    /// Check out `base` into a new worktree at `dest` on a new branch.
    pub fn add_worktree(
        &self,
        base: &str,
        branch: &str,
        dest: &Path,
    ) -> Result<Worktree, GitError> {
        let base_commit = self.resolve(base)?;
        let dest_str = dest.to_string_lossy();
        run_git(
            &self.root,
            [
                "worktree",
                "add",
                "--quiet",
                "-b",
                branch,
                &dest_str,
                &base_commit,
            ],
        )?;
        Ok(Worktree::new(
            self.clone(),
            dest.to_path_buf(),
            branch.to_string(),
            base_commit,
        ))
    }
}

fn git_output<I, S>(dir: &Path, args: I) -> Result<Output, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new("git")
        .current_dir(dir)
        // kiln's commits must not depend on hooks or prompts of the user's setup.
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(args)
        .output()
        .map_err(GitError::Missing)
}

/// Run git in `dir` and return its stdout, or an error carrying its stderr.
/// Prompts are off: kiln's git never waits for a terminal.
pub fn run_git<I, S>(dir: &Path, args: I) -> Result<String, GitError>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    let output = git_output(dir, args.clone())?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let args = args
        .into_iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Err(GitError::Failed {
        args,
        dir: dir.to_path_buf(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}
