//! One server per data directory: an exclusive `flock` on `DATA/serve.lock`
//! held for the life of the process (the kernel drops it when the process
//! dies, even by SIGKILL, so a crash never leaves a stale lock).
//!
//! The directory holds the database (token digests, sealed secrets, every
//! task's prompts and diffs), `secret.key` and every mirror: it is 0700 and
//! the files the server keeps at its top are 0600, whatever they were.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ServerError;

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Locks `dir` for this process, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, ServerError> {
        let path = dir.join("serve.lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(ServerError::DataDirBusy {
                dir: dir.to_path_buf(),
                holder: holder.trim().to_string(),
            });
        }
        file.set_len(0)?;
        writeln!(file, "pid {}", std::process::id())?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The files at the top of the data directory that only the server may read.
const PRIVATE_FILES: &[&str] = &[
    "serve.lock",
    "secret.key",
    "kiln.db",
    "kiln.db-wal",
    "kiln.db-shm",
    "kiln.db-journal",
];

/// Makes `dir` 0700 (other users could otherwise list and read mirrors,
/// checkouts and the database) and logs each mode it had to tighten.
/// Returns the paths it changed.
pub fn secure_data_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    tighten(dir, 0o700, &mut changed)?;
    Ok(changed)
}

/// Makes the server's own files in `dir` (lock, key, SQLite database and
/// its journals) 0600 where they exist; run it after the store is open,
/// since SQLite creates its files with the process's umask. Returns the
/// paths it changed.
pub fn secure_data_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for name in PRIVATE_FILES {
        tighten(&dir.join(name), 0o600, &mut changed)?;
    }
    Ok(changed)
}

fn tighten(path: &Path, mode: u32, changed: &mut Vec<PathBuf>) -> std::io::Result<()> {
    // symlink_metadata: a link planted in the data directory is not followed.
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let had = metadata.permissions().mode() & 0o7777;
    if metadata.file_type().is_symlink() || had == mode {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    tracing::warn!(
        "{} had mode {had:o}, which let other users read the server's data: set it to {mode:o}",
        path.display()
    );
    changed.push(path.to_path_buf());
    Ok(())
}

#[cfg(test)]
#[path = "data_dir_tests.rs"]
mod tests;
