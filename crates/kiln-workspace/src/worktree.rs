use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cow::Layers;
use crate::git::{git_command, run, run_capped, GitError, Repo};

/// A private checkout on its own branch, sharing the repository's objects:
/// either a full git worktree or a copy-on-write overlay over a shared base
/// checkout (see [`Repo::add_checkout`]).
#[derive(Debug, Clone)]
pub struct Worktree {
    repo: Repo,
    path: PathBuf,
    /// `.git/worktrees/<name>` in the repository, as kiln found it when it
    /// made the checkout: every git command on the checkout names it, so
    /// the `.git` file in the checkout (the agent's to rewrite) is never read.
    git_dir: PathBuf,
    branch: String,
    base_commit: String,
    layers: Option<Arc<Layers>>,
}

/// A diff as kiln keeps it: at most the cap it was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// The unified diff (binary files as git's binary patches), or its
    /// first `cap` bytes when `cut`.
    pub text: String,
    /// git had more to say than the cap; the commit holds the whole change.
    pub cut: bool,
    pub files_changed: u64,
    pub insertions: u64,
    pub deletions: u64,
}

impl Worktree {
    pub(crate) fn new(
        repo: Repo,
        path: PathBuf,
        git_dir: PathBuf,
        branch: String,
        base_commit: String,
    ) -> Self {
        Worktree {
            repo,
            path,
            git_dir,
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

    /// The repository's directory for this checkout (`.git/worktrees/<name>`).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// Run git on the checkout, with the repository named explicitly (see
    /// `git_command`), and return its stdout.
    pub fn git<I, S>(&self, args: I) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        run(self.command(), &self.path, args)
    }

    fn command(&self) -> std::process::Command {
        git_command(&self.git_dir, Some(&self.path))
    }

    /// git on the checkout with `index` as its index instead of the checkout's own.
    fn git_with_index<I, S>(&self, index: &Path, args: I) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        let mut command = self.command();
        command.env("GIT_INDEX_FILE", index);
        run(command, &self.path, args)
    }

    /// A scratch index in the checkout's git directory (out of the agent's
    /// reach), deleted when the guard is dropped.
    fn scratch_index(&self, name: &str) -> ScratchFile {
        ScratchFile(self.git_dir.join(format!("kiln-{name}.index")))
    }

    /// The checkout as it is now, every file as `git add --all` would stage
    /// it (nested repositories left out), as a tree id; the checkout's own
    /// index is left alone. Taken after setup, it is the base the agent's
    /// changes are measured against.
    pub fn snapshot_tree(&self) -> Result<String, GitError> {
        let index = self.scratch_index("snapshot");
        let real_index = self.git_dir.join("index");
        if real_index.exists() {
            // Its stat data spare git re-reading every unchanged file.
            std::fs::copy(&real_index, &index.0).map_err(|e| GitError::io(&index.0, e))?;
        }
        self.stage_all_in(Some(&index.0))?;
        self.git_with_index(&index.0, ["write-tree"])
            .map(|tree| tree.trim().to_string())
    }

    /// Commit on the branch what changed since `snapshot` (see
    /// [`Worktree::snapshot_tree`]) and nothing else: a file that only
    /// the snapshot added or changed (a setup product) keeps the branch's
    /// version, unless the agent changed it afterwards. `None` when that
    /// leaves the branch's tree as it is.
    pub fn commit_changes_since(
        &self,
        snapshot: &str,
        message: &str,
    ) -> Result<Option<String>, GitError> {
        self.stage_all()?;
        let current = self.git(["write-tree"])?;
        let current = current.trim();
        let head = self.git(["rev-parse", "--verify", "HEAD^{tree}"])?;
        let head = head.trim();
        let names = |from: &str, to: &str| {
            self.git([
                "diff-tree",
                "-r",
                "--name-only",
                "-z",
                "--no-renames",
                from,
                to,
            ])
            .map(|text| {
                text.split('\0')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect::<std::collections::BTreeSet<_>>()
            })
        };
        let changed_by_setup = names(head, snapshot)?;
        let changed_by_agent = names(snapshot, current)?;
        let setup_only: Vec<&str> = changed_by_setup
            .difference(&changed_by_agent)
            .map(String::as_str)
            .collect();
        if setup_only.is_empty() {
            return self.commit_tree(current, message);
        }
        let index = self.scratch_index("commit");
        self.git_with_index(&index.0, ["read-tree", current])?;
        self.reset_paths(Some(&index.0), &setup_only)?;
        let tree = self.git_with_index(&index.0, ["write-tree"])?;
        self.commit_tree(tree.trim(), message)
    }

    /// Everything that changed against the base commit, untracked files
    /// included, as a unified diff (binary files as git's binary patches).
    pub fn diff(&self) -> Result<String, GitError> {
        self.diff_against(&self.base_commit.clone(), usize::MAX)
            .map(|diff| diff.text)
    }

    /// Everything that changed against `base`, untracked files included,
    /// reading at most `cap` bytes of git's output (the rest is never held).
    pub fn diff_against(&self, base: &str, cap: usize) -> Result<Diff, GitError> {
        self.stage_all()?;
        let (text, cut) = run_capped(
            self.command(),
            &self.path,
            [
                "diff",
                "--cached",
                "--binary",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--ignore-submodules=all",
                base,
                "--",
            ],
            cap,
        )?;
        let numstat = self.git([
            "diff",
            "--cached",
            "--numstat",
            "--no-ext-diff",
            "--no-textconv",
            "--ignore-submodules=all",
            base,
            "--",
        ])?;
        let mut diff = Diff {
            text: String::from_utf8_lossy(&text).into_owned(),
            cut,
            ..Diff::default()
        };
        // `added<TAB>deleted<TAB>path`, `-` for binary files.
        for line in numstat.lines().filter(|l| !l.trim().is_empty()) {
            let mut fields = line.split('\t');
            diff.files_changed += 1;
            diff.insertions += fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            diff.deletions += fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
        Ok(diff)
    }

    /// `git diff --stat` against the base, for people.
    pub fn diff_stat(&self) -> Result<String, GitError> {
        self.stage_all()?;
        self.git([
            "diff",
            "--cached",
            "--stat",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--ignore-submodules=all",
            &self.base_commit,
            "--",
        ])
    }

    /// Commit every change on the worktree's branch. `None` when nothing changed.
    pub fn commit_all(&self, message: &str) -> Result<Option<String>, GitError> {
        self.stage_all()?;
        let tree = self.git(["write-tree"])?;
        self.commit_tree(tree.trim(), message)
    }

    /// A commit of `tree` on the branch, after its current head; `None`
    /// when the tree is the head's.
    pub(crate) fn commit_tree(
        &self,
        tree: &str,
        message: &str,
    ) -> Result<Option<String>, GitError> {
        let head = self.git(["rev-parse", "--verify", "HEAD^{commit}"])?;
        let head = head.trim();
        let head_tree = self.git(["rev-parse", "--verify", "HEAD^{tree}"])?;
        if head_tree.trim() == tree {
            return Ok(None);
        }
        let commit = self.git([
            "-c",
            "user.name=kiln",
            "-c",
            "user.email=kiln@localhost",
            "commit-tree",
            "-p",
            head,
            "-m",
            message,
            tree,
        ])?;
        let commit = commit.trim().to_string();
        let branch_ref = format!("refs/heads/{}", self.branch);
        self.git([
            "update-ref",
            "-m",
            "kiln: commit",
            &branch_ref,
            &commit,
            head,
        ])?;
        // The index already holds `tree`; HEAD follows the branch.
        Ok(Some(commit))
    }

    /// Remove the checkout; the branch and its commit stay in the repository.
    pub fn remove(self) -> Result<(), GitError> {
        if let Some(layers) = &self.layers {
            return layers.remove();
        }
        self.repo.discard_checkout(&self.path)
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

    /// Stage every file of the checkout, except nested repositories: git
    /// would record one as a gitlink (a commit id nobody else has), fail
    /// on one without a commit, and looking into one is what its own
    /// configuration could hijack. git lists an untracked nested repository
    /// as `path/` without entering it; each is excluded by name.
    pub(crate) fn stage_all(&self) -> Result<(), GitError> {
        self.stage_all_in(None)
    }

    fn stage_all_in(&self, index: Option<&Path>) -> Result<(), GitError> {
        let git = |args: &[&str]| match index {
            Some(index) => self.git_with_index(index, args),
            None => self.git(args),
        };
        let untracked = git(&["ls-files", "--others", "--exclude-standard", "-z"])?;
        let mut pathspecs = vec![".".to_string()];
        pathspecs.extend(
            untracked
                .split('\0')
                .filter(|path| path.ends_with('/'))
                .map(|repo| format!(":(exclude,literal){repo}")),
        );
        let list = ScratchFile(self.git_dir.join("kiln-add-paths"));
        std::fs::write(&list.0, pathspecs.join("\0")).map_err(|e| GitError::io(&list.0, e))?;
        let list_arg = format!("--pathspec-from-file={}", list.0.display());
        git(&["add", "--all", &list_arg, "--pathspec-file-nul"]).map(|_| ())
    }

    /// Put `paths` back to the branch's version (gone if it has none) in
    /// `index` (the checkout's own when `None`).
    fn reset_paths(&self, index: Option<&Path>, paths: &[&str]) -> Result<(), GitError> {
        let list = ScratchFile(self.git_dir.join("kiln-reset-paths"));
        std::fs::write(&list.0, paths.join("\0")).map_err(|e| GitError::io(&list.0, e))?;
        let list_arg = format!("--pathspec-from-file={}", list.0.display());
        let args = [
            "--literal-pathspecs",
            "reset",
            "--quiet",
            "--no-refresh",
            &list_arg,
            "--pathspec-file-nul",
            "HEAD",
        ];
        match index {
            Some(index) => self.git_with_index(index, args),
            None => self.git(args),
        }
        .map(|_| ())
    }
}

/// A file kiln writes for one git step, removed afterwards.
struct ScratchFile(PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
