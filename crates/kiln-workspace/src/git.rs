use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
    #[error(
        "refusing to delete {}: it is outside {}, the only place kiln deletes from; \
         something planted that path (remove it by hand if it really is kiln's)",
        path.display(),
        allowed.display()
    )]
    OutsideData { path: PathBuf, allowed: PathBuf },
    #[error(
        "{} has no git worktree record in {}: kiln only runs git on checkouts it made; \
         remove the checkout and start again",
        checkout.display(),
        repo.display()
    )]
    UnknownCheckout { checkout: PathBuf, repo: PathBuf },
}

impl GitError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        GitError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A git repository on disk: its top-level directory, and the git
/// directory kiln names explicitly in every command it runs on it.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
    git_dir: PathBuf,
}

impl Repo {
    /// The repository that contains `path` (the user's own checkout: the
    /// one place kiln lets git discover a repository).
    pub fn discover(path: &Path) -> Result<Self, GitError> {
        let mut command = isolated_command(path);
        command.args(["rev-parse", "--show-toplevel", "--absolute-git-dir"]);
        let output = output_of(command)?;
        if !output.status.success() {
            return Err(GitError::NotARepository {
                path: path.to_path_buf(),
            });
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        let (Some(root), Some(git_dir)) = (lines.next(), lines.next()) else {
            return Err(GitError::NotARepository {
                path: path.to_path_buf(),
            });
        };
        Ok(Repo {
            root: PathBuf::from(root),
            git_dir: PathBuf::from(git_dir),
        })
    }

    /// The repository whose top-level directory is `root` and git directory
    /// `root/.git`, without asking git (for a repository kiln made itself,
    /// such as a server's mirror).
    pub fn at(root: &Path) -> Self {
        Repo {
            root: root.to_path_buf(),
            git_dir: root.join(".git"),
        }
    }

    /// The repository at `root` whose git directory is `git_dir`.
    pub(crate) fn with_git_dir(root: &Path, git_dir: &Path) -> Self {
        Repo {
            root: root.to_path_buf(),
            git_dir: git_dir.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The git directory kiln's commands on this repository name.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// Run git on the repository (no work tree) and return its stdout.
    pub fn git<I, S>(&self, args: I) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        run(git_command(&self.git_dir, None), &self.git_dir, args)
    }

    /// [`Repo::git`] with `env` set and `remove` unset: a fetch from an
    /// untrusted location, which must not be offered the host's credentials.
    pub fn git_with_env<I, S>(&self, args: I, env: &GitEnv) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        let mut command = git_command(&self.git_dir, None);
        env.apply(&mut command);
        run(command, &self.git_dir, args)
    }

    /// Resolve a revision (`HEAD`, a branch, a sha) to a commit id.
    pub fn resolve(&self, rev: &str) -> Result<String, GitError> {
        let spec = format!("{rev}^{{commit}}");
        self.git(["rev-parse", "--verify", "--end-of-options", &spec])
            .map(|s| s.trim().to_string())
    }

    /// The directory shared by all of the repository's worktrees (`.git`).
    pub fn common_dir(&self) -> Result<PathBuf, GitError> {
        let dir = self.git(["rev-parse", "--path-format=absolute", "--git-common-dir"])?;
        Ok(PathBuf::from(dir.trim()))
    }

    /// The repository's record of the worktree at `checkout`
    /// (`.git/worktrees/<name>`), found from the repository's side: the
    /// `.git` file in a checkout is the agent's to rewrite, so kiln never
    /// reads where it points.
    pub fn worktree_admin_dir(&self, checkout: &Path) -> Result<PathBuf, GitError> {
        let worktrees = self.common_dir()?.join("worktrees");
        self.admin_dirs_for(&worktrees, checkout)
            .into_iter()
            .next()
            .ok_or_else(|| GitError::UnknownCheckout {
                checkout: checkout.to_path_buf(),
                repo: self.root.clone(),
            })
    }

    /// The entries of `worktrees` that record `checkout` as their worktree.
    pub(crate) fn admin_dirs_for(&self, worktrees: &Path, checkout: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(worktrees) else {
            return Vec::new();
        };
        let dot_git = checkout.join(".git");
        // git records the real path; `checkout` may go through a symlink.
        let real = checkout
            .parent()
            .and_then(|parent| parent.canonicalize().ok())
            .zip(checkout.file_name())
            .map(|(parent, name)| parent.join(name).join(".git"));
        entries
            .filter_map(Result::ok)
            .filter(|entry| {
                let recorded =
                    std::fs::read_to_string(entry.path().join("gitdir")).unwrap_or_default();
                let recorded = Path::new(recorded.trim());
                recorded == dot_git || Some(recorded) == real.as_deref()
            })
            .map(|entry| entry.path())
            .collect()
    }

    /// Drop git's record of any worktree at `path` whose directory is gone,
    /// locked or not (kiln locks its base checkouts, and a locked,
    /// missing worktree would block a new one at the same path).
    pub(crate) fn forget_worktree_at(&self, path: &Path) -> Result<(), GitError> {
        if path.join(".git").exists() {
            return Ok(());
        }
        let worktrees = self.common_dir()?.join("worktrees");
        for admin in self.admin_dirs_for(&worktrees, path) {
            remove_dir_within(&admin, &worktrees)?;
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
        let dest = absolute(dest)?;
        let dest_str = dest.to_string_lossy();
        self.git([
            "worktree",
            "add",
            "--quiet",
            "-b",
            branch,
            "--end-of-options",
            &dest_str,
            &base_commit,
        ])?;
        let git_dir = self.worktree_admin_dir(&dest)?;
        Ok(Worktree::new(
            self.clone(),
            dest.to_path_buf(),
            git_dir,
            branch.to_string(),
            base_commit,
        ))
    }
}

/// `path` made absolute against the current directory (git records
/// worktrees by absolute path, and kiln finds them by it).
pub(crate) fn absolute(path: &Path) -> Result<PathBuf, GitError> {
    std::path::absolute(path).map_err(|e| GitError::io(path, e))
}

/// git with nothing from kiln's environment that could change what it
/// runs: no `GIT_*` variable of the caller's, no system or global
/// configuration, no prompts.
fn isolated_command(dir: &Path) -> Command {
    let mut command = Command::new("git");
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"GIT_") {
            command.env_remove(key);
        }
    }
    command
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0");
    command
}

/// The one way kiln runs git on a repository or a checkout. The agent can
/// rewrite every file in a checkout, its `.git` file and any nested
/// repository included, and this git runs on the host with kiln's rights,
/// so it must take nothing from there but file contents: the repository
/// is named (`--git-dir`, never discovered from the checkout), fsmonitor,
/// hooks, external diff and textconv are off, and submodules and nested
/// repositories are never entered.
pub fn git_command(git_dir: &Path, work_tree: Option<&Path>) -> Command {
    let mut command = isolated_command(work_tree.unwrap_or(git_dir));
    command.args([
        "-c",
        "core.fsmonitor=false",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "submodule.recurse=false",
        "-c",
        "diff.ignoreSubmodules=all",
        "-c",
        "status.submoduleSummary=false",
        "-c",
        "advice.addEmbeddedRepo=false",
    ]);
    command.arg(prefixed("--git-dir=", git_dir));
    if let Some(work_tree) = work_tree {
        command.arg(prefixed("--work-tree=", work_tree));
    }
    command
}

fn prefixed(flag: &str, path: &Path) -> std::ffi::OsString {
    let mut arg = std::ffi::OsString::from(flag);
    arg.push(path.as_os_str());
    arg
}

pub(crate) fn output_of(mut command: Command) -> Result<Output, GitError> {
    command.output().map_err(GitError::Missing)
}

/// Run `command` with `args` and return its stdout, or an error carrying
/// its stderr.
pub(crate) fn run<I, S>(mut command: Command, dir: &Path, args: I) -> Result<String, GitError>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    command.args(args.clone());
    let output = output_of(command)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(failed(dir, args, &output.stderr))
}

pub(crate) fn failed<I, S>(dir: &Path, args: I, stderr: &[u8]) -> GitError
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args = args
        .into_iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    GitError::Failed {
        args,
        dir: dir.to_path_buf(),
        stderr: String::from_utf8_lossy(stderr).trim().to_string(),
    }
}

/// At most `cap` bytes of what `command` with `args` writes, and whether
/// it wrote more (git is stopped then, so a huge output is never held).
pub(crate) fn run_capped<I, S>(
    mut command: Command,
    dir: &Path,
    args: I,
    cap: usize,
) -> Result<(Vec<u8>, bool), GitError>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    command
        .args(args.clone())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(GitError::Missing)?;
    let stderr = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            // Only the start is kept for the error; the rest is drained so
            // that git never blocks on a full pipe.
            let mut kept = Vec::new();
            let mut stderr = stderr;
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut kept);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            kept
        })
    });
    let mut out = Vec::new();
    let mut cut = false;
    if let Some(stdout) = child.stdout.take() {
        let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
        let mut limited = stdout.take(limit);
        limited
            .read_to_end(&mut out)
            .map_err(|e| GitError::io(dir, e))?;
        if out.len() > cap {
            out.truncate(cap);
            cut = true;
            let _ = child.kill();
        }
    }
    let status = child.wait().map_err(|e| GitError::io(dir, e))?;
    let stderr = stderr
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    if cut || status.success() {
        return Ok((out, cut));
    }
    Err(failed(dir, args, &stderr))
}

/// Run git in `dir` and return its stdout, or an error carrying its stderr,
/// with system and global configuration and the caller's `GIT_*`
/// variables left out. For commands outside any checkout (a clone); on a
/// repository or a checkout use [`Repo::git`], which never discovers one.
pub fn run_git<I, S>(dir: &Path, args: I) -> Result<String, GitError>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    run(isolated_command(dir), dir, args)
}

/// [`run_git`] with `env` set and removed (a clone of an untrusted location).
pub fn run_git_with_env<I, S>(dir: &Path, args: I, env: &GitEnv) -> Result<String, GitError>
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<OsStr>,
{
    let mut command = isolated_command(dir);
    env.apply(&mut command);
    run(command, dir, args)
}

/// Variables to set and to remove for one git command, beyond the
/// isolation every kiln git command has.
#[derive(Debug, Clone, Default)]
pub struct GitEnv {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl GitEnv {
    fn apply(&self, command: &mut Command) {
        for name in &self.remove {
            command.env_remove(name);
        }
        for (name, value) in &self.set {
            command.env(name, value);
        }
    }
}

/// Delete the directory tree at `path`, which must lie inside `allowed`
/// (both resolved through symlinks first). Missing is fine.
pub(crate) fn remove_dir_within(path: &Path, allowed: &Path) -> Result<(), GitError> {
    let real = match path.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(GitError::io(path, e)),
    };
    let allowed_real = allowed
        .canonicalize()
        .map_err(|e| GitError::io(allowed, e))?;
    if real == allowed_real || !real.starts_with(&allowed_real) {
        return Err(GitError::OutsideData {
            path: path.to_path_buf(),
            allowed: allowed.to_path_buf(),
        });
    }
    match std::fs::remove_dir_all(&real) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GitError::io(path, e)),
    }
}
