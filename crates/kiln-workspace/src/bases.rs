//! Clean checkouts of base commits, kept between attempts as the shared,
//! read-only lower layer of copy-on-write checkouts.
//!
//! Layout under the cache root: `<repo-key>/<commit>/` is a detached git
//! worktree of the commit, `<commit>.ready` marks it complete, and
//! `<commit>.lock` is held shared by every checkout mounted over it and
//! exclusively while it is created or deleted. A checkout interrupted half-way
//! has no `.ready` and is rebuilt by the next lease.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::git::{absolute, git_command, remove_dir_within, run, GitError, Repo};

/// Base checkouts a repository keeps beyond those in use.
const KEPT_IDLE_BASES: usize = 2;

/// The cache of base checkouts under one directory (e.g. `$KILN_HOME/bases`).
#[derive(Debug, Clone)]
pub struct BaseCheckouts {
    root: PathBuf,
}

/// A base checkout held for the life of the checkouts mounted over it.
#[derive(Debug)]
pub(crate) struct BaseLease {
    pub(crate) path: PathBuf,
    /// The index git wrote when it checked the base out: its stat data match
    /// the files seen through the overlay, so git need not re-read them.
    pub(crate) index: PathBuf,
    /// Held shared; a base is deleted only under an exclusive lock.
    _lock: File,
}

impl BaseCheckouts {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BaseCheckouts { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The base checkout of `commit` in `repo`, checked out first if no
    /// earlier attempt left one (the only slow path: one full checkout per
    /// base commit).
    pub(crate) fn lease(&self, repo: &Repo, commit: &str) -> Result<BaseLease, GitError> {
        let dir = absolute(&self.root)?.join(repo_key(repo));
        std::fs::create_dir_all(&dir).map_err(|e| GitError::io(&dir, e))?;
        let path = dir.join(commit);
        let ready = dir.join(format!("{commit}.ready"));
        let lock_path = dir.join(format!("{commit}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| GitError::io(&lock_path, e))?;

        lock.lock_shared()
            .map_err(|e| GitError::io(&lock_path, e))?;
        if !ready.exists() {
            lock.unlock().map_err(|e| GitError::io(&lock_path, e))?;
            lock.lock().map_err(|e| GitError::io(&lock_path, e))?;
            // Another process may have built it while we waited.
            if !ready.exists() {
                let recycled = match self.take_idle_base(&dir, commit) {
                    Some((idle, _idle_lock)) => recycle_base(repo, &idle, &path, commit)
                        .map_err(|err| tracing::warn!("cannot reuse {}: {err}", idle.display()))
                        .is_ok(),
                    None => false,
                };
                if !recycled {
                    create_base(repo, &path, commit)?;
                }
                std::fs::write(&ready, commit).map_err(|e| GitError::io(&ready, e))?;
            }
            lock.unlock().map_err(|e| GitError::io(&lock_path, e))?;
            lock.lock_shared()
                .map_err(|e| GitError::io(&lock_path, e))?;
            if !ready.exists() {
                return Err(GitError::Overlay(format!(
                    "the base checkout {} was deleted while it was being leased; retry",
                    path.display()
                )));
            }
        }
        // Recency for the clean-up below; failure only makes it less precise.
        let _ = File::options()
            .write(true)
            .open(&ready)
            .and_then(|f| f.set_modified(SystemTime::now()));
        let index = repo.worktree_admin_dir(&path)?.join("index");
        self.remove_idle_bases(repo, &dir, commit);
        Ok(BaseLease {
            path,
            index,
            _lock: lock,
        })
    }

    /// The most recently used base that no checkout uses, withdrawn from
    /// the cache (its `.ready` removed) so that it can become another
    /// commit's, with its lock: hold it until the base is moved, or a lease
    /// of its old commit could rebuild it in the middle of the move.
    fn take_idle_base(&self, dir: &Path, wanted: &str) -> Option<(PathBuf, File)> {
        let mut idle = ready_bases(dir, wanted);
        idle.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        idle.into_iter().find_map(|(_, commit)| {
            withdraw_idle(dir, &commit).map(|lock| (dir.join(commit), lock))
        })
    }

    /// Delete base checkouts beyond the newest few that no checkout uses.
    /// Files go to a trash directory and are deleted on a background thread,
    /// so an attempt does not wait for 100k unlinks.
    fn remove_idle_bases(&self, repo: &Repo, dir: &Path, keep: &str) {
        let mut bases = ready_bases(dir, keep);
        bases.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        let trash = dir.join(".trash");
        let mut removed = false;
        for (_, commit) in bases.into_iter().skip(KEPT_IDLE_BASES) {
            let Some(_lock) = withdraw_idle(dir, &commit) else {
                continue;
            };
            let path = dir.join(&commit);
            let git_dir = repo.worktree_admin_dir(&path).ok();
            let _ = std::fs::create_dir_all(&trash);
            let _ = std::fs::rename(&path, trash.join(&commit));
            if let Some(git_dir) = git_dir {
                if let Some(worktrees) = git_dir.parent() {
                    let _ = remove_dir_within(&git_dir, worktrees);
                }
            }
            removed = true;
        }
        if removed {
            let _ = repo.git(["worktree", "prune"]);
        }
        if trash.exists() {
            std::thread::spawn(move || {
                let _ = std::fs::remove_dir_all(trash);
            });
        }
    }
}

/// Take `commit`'s base out of the cache if no checkout uses it: its lock,
/// held exclusively, with `.ready` removed so that nobody leases it meanwhile.
fn withdraw_idle(dir: &Path, commit: &str) -> Option<File> {
    let lock = File::options()
        .write(true)
        .open(dir.join(format!("{commit}.lock")))
        .ok()?;
    lock.try_lock().ok()?; // fails while a checkout uses the base
    std::fs::remove_file(dir.join(format!("{commit}.ready"))).ok()?;
    Some(lock)
}

/// The complete bases in `dir` other than `except`'s, with when each was last leased.
fn ready_bases(dir: &Path, except: &str) -> Vec<(SystemTime, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let commit = name.strip_suffix(".ready")?.to_string();
            let modified = entry.metadata().ok()?.modified().ok()?;
            (commit != except).then_some((modified, commit))
        })
        .collect()
}

/// Turn the idle base at `idle` into the base of `commit` at `path`: move
/// it, then switch it to `commit`, rewriting only the files that differ. Commits near each other (a branch that moved on) share most files,
/// so this takes a fraction of a full checkout.
fn recycle_base(repo: &Repo, idle: &Path, path: &Path, commit: &str) -> Result<(), GitError> {
    let result = (|| {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| GitError::io(path, e))?;
        }
        repo.forget_worktree_at(path)?;
        let git_dir = repo.worktree_admin_dir(idle)?;
        let _ = std::fs::remove_file(git_dir.join("locked"));
        let from = idle.to_string_lossy().into_owned();
        let to = path.to_string_lossy().into_owned();
        repo.git(["worktree", "move", "--end-of-options", &from, &to])?;
        // A two-tree merge rewrites only the files that differ and, unlike
        // `git checkout`, does not first stat every file to refresh the index
        // (a base is never written, so its index is already up to date):
        // 170 instead of 300 ms on 100k files.
        let git_dir = repo.worktree_admin_dir(path)?;
        let in_base = || git_command(&git_dir, Some(path));
        run(in_base(), path, ["read-tree", "-m", "-u", "HEAD", commit])?;
        run(
            in_base(),
            path,
            ["update-ref", "--no-deref", "HEAD", commit],
        )?;
        let locked = git_dir.join("locked");
        std::fs::write(&locked, BASE_LOCK_REASON).map_err(|e| GitError::io(&locked, e))
    })();
    if result.is_err() {
        // Half moved or half checked out: neither base is trustworthy.
        for dir in [idle, path] {
            if let Ok(git_dir) = repo.worktree_admin_dir(dir) {
                if let Some(worktrees) = git_dir.parent() {
                    let _ = remove_dir_within(&git_dir, worktrees);
                }
            }
            if let Some(parent) = dir.parent() {
                let _ = remove_dir_within(dir, parent);
            }
        }
    }
    result
}

const BASE_LOCK_REASON: &str = "kiln base checkout (lower layer of copy-on-write checkouts)";

/// A detached worktree of `commit` at `path`, locked so that `git worktree
/// prune` never drops it.
fn create_base(repo: &Repo, path: &Path, commit: &str) -> Result<(), GitError> {
    if path.exists() {
        // Left by an interrupted build.
        if let Ok(git_dir) = repo.worktree_admin_dir(path) {
            if let Some(worktrees) = git_dir.parent() {
                let _ = remove_dir_within(&git_dir, worktrees);
            }
        }
        remove_dir_within(path, path.parent().unwrap_or(path))?;
    }
    // A base deleted by hand leaves git's locked record of it behind.
    repo.forget_worktree_at(path)?;
    let path_str = path.to_string_lossy().into_owned();
    repo.git([
        "worktree",
        "add",
        "--detach",
        "--quiet",
        "--end-of-options",
        &path_str,
        commit,
    ])?;
    let git_dir = repo.worktree_admin_dir(path)?;
    let locked = git_dir.join("locked");
    std::fs::write(
        &locked,
        "kiln base checkout (lower layer of copy-on-write checkouts)",
    )
    .map_err(|e| GitError::io(&locked, e))
}

/// A directory name per repository: its last path component and a hash of
/// its full path, stable across runs.
fn repo_key(repo: &Repo) -> String {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in repo.root().as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let name: String = repo
        .root()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    format!("{name}-{hash:016x}")
}
