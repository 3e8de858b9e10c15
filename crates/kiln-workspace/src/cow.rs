//! Copy-on-write checkouts: git metadata of a worktree of its own (branch,
//! HEAD, index), files from an overlay over a shared base checkout.
//!
//! Beside a checkout at `DEST` lives `DEST.layers/` with `upper/` (what the
//! attempt changed, plus the worktree's `.git` file), overlay's `work/`, and
//! `lower` naming the base commit. The worktree's index starts as a copy of
//! the base checkout's: the files seen through the overlay keep their inode,
//! size and times, so git trusts the copied stat data and `git status` does
//! not re-read 100k files.

use std::path::{Path, PathBuf};

use crate::bases::{BaseCheckouts, BaseLease};
use crate::git::{absolute, remove_dir_within, GitError, Repo};
use crate::overlay;
use crate::Worktree;

/// What a copy-on-write checkout holds on to while it exists. Dropping the
/// last handle parks the checkout (unmounts it, keeping its changes), so an
/// attempt that ends early never leaves a mount behind.
#[derive(Debug)]
pub(crate) struct Layers {
    /// Where the overlay is mounted.
    target: PathBuf,
    dir: PathBuf,
    /// `.git/worktrees/<name>` of the checkout.
    git_dir: PathBuf,
    /// The repository's `.git/worktrees`, the only place `git_dir` may be deleted from.
    worktrees: PathBuf,
    _base: BaseLease,
}

impl Layers {
    pub(crate) fn park(&self) -> Result<(), GitError> {
        overlay::unmount(&self.target).map_err(GitError::Overlay)
    }

    pub(crate) fn remove(&self) -> Result<(), GitError> {
        self.park()?;
        remove_dir_within(&self.git_dir, &self.worktrees)?;
        discard_layers(&self.dir, &self.target)
    }
}

impl Drop for Layers {
    fn drop(&mut self) {
        if let Err(err) = self.park() {
            tracing::warn!("{err}");
        }
    }
}

impl Repo {
    /// A checkout of `base` at `dest` on a new `branch`: copy-on-write when
    /// this process can mount overlays (see [`crate::overlay::enable`]),
    /// otherwise a full git worktree. The second value says why the checkout
    /// is not copy-on-write, for a warning.
    pub fn add_checkout(
        &self,
        bases: &BaseCheckouts,
        base: &str,
        branch: &str,
        dest: &Path,
    ) -> Result<(Worktree, Option<String>), GitError> {
        let reason = match overlay::unavailable_reason() {
            Some(reason) => reason,
            None => match self.add_overlay_worktree(bases, base, branch, dest) {
                Ok(worktree) => return Ok((worktree, None)),
                Err(err) => err.to_string(),
            },
        };
        let worktree = self.add_worktree(base, branch, dest)?;
        Ok((worktree, Some(reason)))
    }

    /// A copy-on-write checkout of `base` at `dest` on a new `branch`.
    pub fn add_overlay_worktree(
        &self,
        bases: &BaseCheckouts,
        base: &str,
        branch: &str,
        dest: &Path,
    ) -> Result<Worktree, GitError> {
        if let Some(reason) = overlay::unavailable_reason() {
            return Err(GitError::Overlay(reason));
        }
        let dest = absolute(dest)?;
        let parent = dest
            .parent()
            .ok_or_else(|| GitError::Overlay(format!("{} has no parent", dest.display())))?;
        std::fs::create_dir_all(parent).map_err(|e| GitError::io(parent, e))?;
        overlay::check_upper_dir(parent).map_err(GitError::Overlay)?;
        // A full commit id (what the server passes) needs no `rev-parse`.
        let commit = if base.len() == 40 && base.bytes().all(|b| b.is_ascii_hexdigit()) {
            base.to_ascii_lowercase()
        } else {
            self.resolve(base)?
        };
        let lease = bases.lease(self, &commit)?;
        let dir = layers_dir(&dest);
        if dir.exists() || dest.exists() {
            return Err(GitError::Overlay(format!(
                "{} already exists; remove it first",
                if dest.exists() { &dest } else { &dir }.display()
            )));
        }
        let upper = dir.join("upper");
        let work = dir.join("work");
        for path in [&upper, &work] {
            std::fs::create_dir_all(path).map_err(|e| GitError::io(path, e))?;
        }
        let dest_str = dest.to_string_lossy().into_owned();
        if let Err(err) = self.git([
            "worktree",
            "add",
            "--no-checkout",
            "--quiet",
            "-b",
            branch,
            "--end-of-options",
            &dest_str,
            &commit,
        ]) {
            let _ = remove_dir_within(&dir, parent);
            return Err(err);
        }
        let attached = self.worktree_admin_dir(&dest).and_then(|git_dir| {
            let result = self.attach_layers(&lease, &dir, &git_dir, &commit, &dest);
            result.map(|()| git_dir)
        });
        match attached {
            Ok(git_dir) => Ok(Worktree::new(
                self.clone(),
                dest.clone(),
                git_dir.clone(),
                branch.to_string(),
                commit,
            )
            .with_layers(Layers {
                target: dest.clone(),
                dir,
                git_dir,
                worktrees: self.common_dir()?.join("worktrees"),
                _base: lease,
            })),
            Err(err) => {
                let _ = overlay::unmount(&dest);
                let _ = self.discard_checkout(&dest);
                let _ = self.git(["branch", "-D", "--end-of-options", branch]);
                Err(err)
            }
        }
    }

    /// Remove whatever checkout an earlier run left at `dest`, full or
    /// copy-on-write (mounted or parked). The branch is left alone. What
    /// is deleted is found from kiln's side (the repository's worktree
    /// records, the layers beside `dest`), never from the checkout's `.git`
    /// file, and only inside the repository's `worktrees` directory and
    /// `dest`'s parent.
    pub fn discard_checkout(&self, dest: &Path) -> Result<(), GitError> {
        overlay::unmount(dest).map_err(GitError::Overlay)?;
        let dest = absolute(dest)?;
        let parent = dest
            .parent()
            .ok_or_else(|| GitError::Overlay(format!("{} has no parent", dest.display())))?;
        let worktrees = self.common_dir()?.join("worktrees");
        for admin in self.admin_dirs_for(&worktrees, &dest) {
            remove_dir_within(&admin, &worktrees)?;
        }
        let dir = layers_dir(&dest);
        if dir.exists() {
            discard_layers(&dir, &dest)?;
        }
        remove_dir_within(&dest, parent)?;
        let _ = self.git(["worktree", "prune"]);
        Ok(())
    }

    /// Put a copy of the worktree's `.git` file into the upper layer (the
    /// original stays in the mount point, under the mount, so that a parked
    /// checkout is still a worktree git recognises: `git worktree prune`
    /// keeps it and `git worktree remove` removes it), give it the base's
    /// index and mount the overlay.
    fn attach_layers(
        &self,
        lease: &BaseLease,
        dir: &Path,
        git_dir: &Path,
        commit: &str,
        dest: &Path,
    ) -> Result<(), GitError> {
        let upper = dir.join("upper");
        let dot_git = upper.join(".git");
        std::fs::copy(dest.join(".git"), &dot_git).map_err(|e| GitError::io(&dot_git, e))?;
        let index = git_dir.join("index");
        std::fs::copy(&lease.index, &index).map_err(|e| GitError::io(&lease.index, e))?;
        let lower = dir.join("lower");
        std::fs::write(&lower, commit).map_err(|e| GitError::io(&lower, e))?;
        let record = dir.join(GIT_DIR_RECORD);
        std::fs::write(&record, git_dir.as_os_str().as_encoded_bytes())
            .map_err(|e| GitError::io(&record, e))?;
        overlay::mount_overlay(&lease.path, &upper, &dir.join("work"), dest)
            .map_err(GitError::Overlay)
    }
}

impl Worktree {
    /// Mount again the copy-on-write checkout parked at `dest`, with
    /// everything it held (committed or not), on the branch it was on. `None`
    /// when there is none to mount: it was removed, or `dest` is a full
    /// worktree, or this process cannot mount overlays.
    pub fn reattach(bases: &BaseCheckouts, dest: &Path) -> Result<Option<Worktree>, GitError> {
        if overlay::unavailable_reason().is_some() {
            return Ok(None);
        }
        let dir = layers_dir(dest);
        let Ok(lower) = std::fs::read_to_string(dir.join("lower")) else {
            return Ok(None);
        };
        let commit = lower.trim().to_string();
        // kiln's record of the checkout's git directory, beside the layers
        // (out of the agent's reach), confirmed by the repository's own
        // record of the worktree: the `.git` file in the upper layer is the
        // agent's and is never read.
        let Ok(recorded) = std::fs::read(dir.join(GIT_DIR_RECORD)) else {
            return Ok(None);
        };
        let git_dir = PathBuf::from(String::from_utf8_lossy(&recorded).into_owned());
        let Some(worktrees) = git_dir.parent().filter(|p| p.ends_with("worktrees")) else {
            return Ok(None);
        };
        let Some(common) = worktrees.parent() else {
            return Ok(None);
        };
        let repo = Repo::with_git_dir(common.parent().unwrap_or(common), common);
        let dest = absolute(dest)?;
        let confirmed = repo
            .worktree_admin_dir(&dest)
            .ok()
            .and_then(|found| found.canonicalize().ok());
        if confirmed.is_none() || confirmed != git_dir.canonicalize().ok() {
            return Ok(None);
        }
        let Some(branch) = std::fs::read_to_string(git_dir.join("HEAD"))
            .ok()
            .and_then(|head| Some(head.trim().strip_prefix("ref: refs/heads/")?.to_string()))
        else {
            return Ok(None);
        };
        if repo.resolve(&branch).is_err() {
            return Ok(None);
        }
        let lease = bases.lease(&repo, &commit)?;
        overlay::unmount(&dest).map_err(GitError::Overlay)?;
        std::fs::create_dir_all(&dest).map_err(|e| GitError::io(&dest, e))?;
        overlay::mount_overlay(&lease.path, &dir.join("upper"), &dir.join("work"), &dest)
            .map_err(GitError::Overlay)?;
        let worktrees = worktrees.to_path_buf();
        Ok(Some(
            Worktree::new(repo, dest.clone(), git_dir.clone(), branch, commit).with_layers(
                Layers {
                    target: dest,
                    dir,
                    git_dir,
                    worktrees,
                    _base: lease,
                },
            ),
        ))
    }
}

/// Delete the layers of checkouts under `dir` whose mount point is gone
/// (removed with `git worktree remove`, or by hand). Returns what it deleted.
pub fn sweep_orphan_layers(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(checkout) = name.strip_suffix(".layers") else {
            continue;
        };
        if !dir.join(checkout).exists() && std::fs::remove_dir_all(&path).is_ok() {
            swept.push(path);
        }
    }
    swept
}

/// `DEST.layers`, beside the checkout.
fn layers_dir(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".layers");
    dest.with_file_name(name)
}

/// The file in `DEST.layers` naming the checkout's git directory.
const GIT_DIR_RECORD: &str = "gitdir";

fn discard_layers(dir: &Path, dest: &Path) -> Result<(), GitError> {
    remove_dir_within(dir, dest.parent().unwrap_or(dest))?;
    // Only the unmounted mount point with its `.git` file is left; never
    // delete through a mount.
    match std::fs::remove_file(dest.join(".git")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(GitError::io(dest, e)),
    }
    match std::fs::remove_dir(dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GitError::io(dest, e)),
    }
}
