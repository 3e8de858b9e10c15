//! A sandbox's private files on the host: its `$HOME`, its `/tmp`, spilled
//! output and the generated account files. Deleted with the sandbox.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::SandboxError;

#[derive(Debug)]
pub(crate) struct StateDir {
    dir: tempfile::TempDir,
    next_spill: AtomicU64,
}

impl StateDir {
    /// A fresh directory inside `parent` (the system temp dir when `None`).
    pub fn create(parent: Option<&Path>) -> Result<Self, SandboxError> {
        let parent = parent
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .map_err(|e| SandboxError::io("creating the sandbox state directory", &parent, e))?;
        let dir = tempfile::Builder::new()
            .prefix("kiln-sandbox-")
            .tempdir_in(&parent)
            .map_err(|e| SandboxError::io("creating the sandbox state directory", &parent, e))?;
        for sub in ["home", "tmp", "output"] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path)
                .map_err(|e| SandboxError::io("creating the sandbox state directory", &path, e))?;
        }
        Ok(StateDir {
            dir,
            next_spill: AtomicU64::new(0),
        })
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// A new, unused path for one command's spilled output.
    pub fn next_spill_path(&self) -> PathBuf {
        let n = self.next_spill.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join("output").join(format!("exec-{n}.log"))
    }

    /// Write a generated file (e.g. `passwd`) and return its path.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<PathBuf, SandboxError> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)
            .map_err(|e| SandboxError::io("writing a sandbox file", &path, e))?;
        Ok(path)
    }
}
