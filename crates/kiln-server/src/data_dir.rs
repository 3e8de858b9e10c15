//! One server per data directory: an exclusive `flock` on `DATA/serve.lock`
//! held for the life of the process (the kernel drops it when the process
//! dies, even by SIGKILL, so a crash never leaves a stale lock).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
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
