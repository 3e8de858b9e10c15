//! Writing a plan to disk all-or-nothing.
//!
//! 1. Stage: every new content goes to a temporary file beside its target (missing
//!    parent directories are created and remembered).
//! 2. Swap: per file, the original (if any) is renamed aside to a backup, then the
//!    staged file is renamed into place. Renames within one directory are atomic,
//!    so each file is always either wholly old or wholly new.
//! 3. Finish: backups are removed.
//!
//! A failure in 1 or 2 undoes everything done so far: placed files are removed,
//! backups renamed back, temporary files and created directories removed.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::PatchError;

/// The final state of one file touched by a plan.
pub struct FileWrite {
    /// Where the file really is (inside the root, symlinks resolved).
    pub real: PathBuf,
    /// The path as the patch names it, for messages.
    pub shown: String,
    /// A file exists there now and must be replaced or removed.
    pub existed: bool,
    /// Permissions the written file gets (the original file's); default when `None`.
    pub permissions: Option<Permissions>,
    /// The new contents, or `None` to remove the file.
    pub contents: Option<Vec<u8>>,
}

impl fmt::Debug for FileWrite {
    /// Sizes instead of contents: a plan may hold files of hundreds of megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileWrite")
            .field("real", &self.real)
            .field("existed", &self.existed)
            .field("bytes", &self.contents.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// Writes every file or, on failure, leaves the disk as it was.
pub fn commit(writes: &[FileWrite]) -> Result<(), PatchError> {
    let mut transaction = Transaction::default();
    match transaction.run(writes) {
        Ok(()) => {
            transaction.finish();
            Ok(())
        }
        Err(error) => {
            transaction.roll_back();
            Err(error)
        }
    }
}

/// Everything done so far, so it can be undone.
#[derive(Default)]
struct Transaction {
    created_dirs: Vec<PathBuf>,
    /// Staged temporary file per write (same index as `writes`).
    staged: Vec<Option<PathBuf>>,
    /// (backup, original location) of files renamed aside.
    backups: Vec<(PathBuf, PathBuf)>,
    /// Targets where a staged file now sits.
    placed: Vec<PathBuf>,
}

impl Transaction {
    fn run(&mut self, writes: &[FileWrite]) -> Result<(), PatchError> {
        for write in writes {
            let staged = match &write.contents {
                Some(contents) => Some(self.stage(write, contents)?),
                None => None,
            };
            self.staged.push(staged);
        }
        for (index, write) in writes.iter().enumerate() {
            if write.existed {
                let backup = sibling_name(&write.real, "backup");
                fs::rename(&write.real, &backup)
                    .map_err(|error| PatchError::io(&write.shown, "replace", error))?;
                self.backups.push((backup, write.real.clone()));
            }
            if let Some(staged) = self.staged[index].take() {
                if let Err(error) = fs::rename(&staged, &write.real) {
                    self.staged[index] = Some(staged);
                    return Err(PatchError::io(&write.shown, "write", error));
                }
                self.placed.push(write.real.clone());
            }
        }
        Ok(())
    }

    fn stage(&mut self, write: &FileWrite, contents: &[u8]) -> Result<PathBuf, PatchError> {
        let io_error = |error| PatchError::io(&write.shown, "write", error);
        if let Some(parent) = write.real.parent() {
            self.create_dirs(parent).map_err(io_error)?;
        }
        let temp = sibling_name(&write.real, "tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_error)?;
        let result = file
            .write_all(contents)
            .and_then(|()| match &write.permissions {
                Some(permissions) => file.set_permissions(permissions.clone()),
                None => Ok(()),
            });
        if let Err(error) = result {
            let _ = fs::remove_file(&temp);
            return Err(io_error(error));
        }
        Ok(temp)
    }

    /// Creates `dir` and its missing ancestors, remembering each one created.
    fn create_dirs(&mut self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut current = Some(dir);
        while let Some(path) = current {
            match fs::symlink_metadata(path) {
                Ok(_) => break,
                Err(error) if error.kind() == io::ErrorKind::NotFound => missing.push(path),
                Err(error) => return Err(error),
            }
            current = path.parent();
        }
        for path in missing.into_iter().rev() {
            fs::create_dir(path)?;
            self.created_dirs.push(path.to_path_buf());
        }
        Ok(())
    }

    /// Undoes everything, newest first. Errors are ignored: each step is attempted
    /// regardless, since a partial undo is still better than none.
    fn roll_back(self) {
        for target in self.placed.iter().rev() {
            let _ = fs::remove_file(target);
        }
        for (backup, original) in self.backups.iter().rev() {
            let _ = fs::rename(backup, original);
        }
        for staged in self.staged.iter().flatten() {
            let _ = fs::remove_file(staged);
        }
        for dir in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }

    /// Removes the backups. The patch has landed by now; a backup that cannot be
    /// removed stays behind as a hidden sibling file rather than failing the apply.
    fn finish(self) {
        for (backup, _) in &self.backups {
            let _ = fs::remove_file(backup);
        }
    }
}

/// A hidden, unique name beside `path`: `.NAME.kiln-PID-N.KIND`.
fn sibling_name(path: &Path, kind: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".kiln-{}-{unique}.{kind}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
#[path = "commit_tests.rs"]
mod tests;
