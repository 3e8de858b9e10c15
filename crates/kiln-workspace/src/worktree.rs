use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cow::Layers;
use crate::git::{run_git, GitError, Repo};

/// A private checkout on its own branch, sharing the repository's objects:
/// either a full git worktree or a copy-on-write overlay over a shared base
/// checkout (see [`Repo::add_checkout`]).
#[derive(Debug, Clone)]
pub struct Worktree {
    repo: Repo,
    path: PathBuf,
    branch: String,
    base_commit: String,
    layers: Option<Arc<Layers>>,
}

impl Worktree {
    pub(crate) fn new(repo: Repo, path: PathBuf, branch: String, base_commit: String) -> Self {
        Worktree {
            repo,
            path,
            branch,
            base_commit,
            layers: None,
        }
    }

    pub(crate) fn with_layers(mut self, layers: Layers) -> Self {
        self.layers = Some(Arc::new(layers));
        self
    }

    /// Whether the checkout is a copy-on-write overlay (mounted only in
    /// this process's mount namespace, and only until it is parked or removed).
    pub fn is_copy_on_write(&self) -> bool {
        self.layers.is_some()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub fn base_commit(&self) -> &str {
        &self.base_commit
    }

    /// Everything that changed against the base commit, untracked files
    /// included, as a unified diff (binary files as git's binary patches).
    pub fn diff(&self) -> Result<String, GitError> {
        self.stage_all()?;
        run_git(
            &self.path,
            [
                "diff",
                "--cached",
                "--binary",
                "--no-color",
                &self.base_commit,
            ],
        )
    }

    /// `git diff --stat` against the base, for people.
    pub fn diff_stat(&self) -> Result<String, GitError> {
        self.stage_all()?;
        run_git(
            &self.path,
            [
                "diff",
                "--cached",
                "--stat",
                "--no-color",
                &self.base_commit,
            ],
        )
    }

    /// Commit every change on the worktree's branch. `None` when nothing changed.
    pub fn commit_all(&self, message: &str) -> Result<Option<String>, GitError> {
        self.stage_all()?;
        let status = run_git(&self.path, ["status", "--porcelain"])?;
        if status.trim().is_empty() {
            return Ok(None);
        }
        run_git(
            &self.path,
            [
                "-c",
                "user.name=kiln",
                "-c",
                "user.email=kiln@localhost",
                "commit",
                "--quiet",
                "--no-verify",
                "-m",
                message,
            ],
        )?;
        run_git(&self.path, ["rev-parse", "HEAD"]).map(|s| Some(s.trim().to_string()))
    }

    /// Remove the checkout; the branch and its commit stay in the repository.
    pub fn remove(self) -> Result<(), GitError> {
        if let Some(layers) = &self.layers {
            return layers.remove();
        }
        let path = self.path.to_string_lossy().into_owned();
        run_git(self.repo.root(), ["worktree", "remove", "--force", &path]).map(|_| ())
    }

    /// Unmount a copy-on-write checkout but keep its changes, so that
    /// [`Worktree::reattach`] can mount it again later; a full worktree
    /// simply stays on disk.
    pub fn park(&self) -> Result<(), GitError> {
        match &self.layers {
            Some(layers) => layers.park(),
            None => Ok(()),
        }
    }

    fn stage_all(&self) -> Result<(), GitError> {
        run_git(&self.path, ["add", "--all"]).map(|_| ())
    }
}
