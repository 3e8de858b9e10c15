//! Reading a file of the workspace on the host without letting the workspace
//! point kiln anywhere else.
//!
//! Everything in a workspace may have been written by a stranger (a committed
//! file) or by the model (a command it ran). kiln reads some of those files
//! in its own process, with its own rights: `AGENTS.md`, `.kiln/config.toml`,
//! the files a final message cites. A symlink `AGENTS.md -> /proc/self/environ`
//! would hand kiln's environment (tokens, model keys) to the model, a FIFO
//! would block kiln forever and a sparse 4 GB file would fill its memory. So
//! every such read goes through [`open`] or [`read`]:
//!
//! - the path is relative and stays inside the root after every symlink is
//!   resolved (a symlink from one workspace file to another keeps working;
//!   one that leads out, directly or through a directory, is refused);
//! - the file is then opened from the root one component at a time with
//!   `O_NOFOLLOW`, so a component swapped for a symlink between the check and
//!   the open makes the open fail instead of leaving the workspace;
//! - only regular files are accepted (no devices, FIFOs, sockets,
//!   directories), and opening never blocks (`O_NONBLOCK`);
//! - [`read`] reads at most `max_bytes`.
//!
//! ```
//! let workspace = tempfile::tempdir().unwrap();
//! std::fs::write(workspace.path().join("AGENTS.md"), "Run the tests.\n").unwrap();
//! std::os::unix::fs::symlink("/proc/self/environ", workspace.path().join("env.md")).unwrap();
//!
//! let guidance = kiln_agent::workspace_file::read(workspace.path(), "AGENTS.md", 1024).unwrap();
//! assert_eq!(guidance.bytes, b"Run the tests.\n");
//! assert!(kiln_agent::workspace_file::read(workspace.path(), "env.md", 1024).is_err());
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

/// Why a workspace file was not read. Every message names the file and says
/// what would make it readable.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceFileError {
    #[error(
        "`{path}` is not a path relative to the workspace root; name files inside the workspace"
    )]
    NotRelative { path: String },
    #[error("no file `{path}` in the workspace")]
    NotFound { path: String },
    #[error(
        "`{path}` leads outside the workspace (through a symlink or `..`); kiln reads only files \
         inside the workspace: replace the link with the file itself"
    )]
    OutsideWorkspace { path: String },
    #[error(
        "`{path}` is {kind}, not a regular file; kiln reads only regular files from the workspace"
    )]
    NotRegularFile { path: String, kind: &'static str },
    #[error("`{path}` changed while kiln was opening it (a component became a symlink); it was not read")]
    Changed { path: String },
    #[error("the workspace root {root} cannot be opened: {source}")]
    Root {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl WorkspaceFileError {
    /// True when the file simply does not exist (as opposed to being refused).
    pub fn is_not_found(&self) -> bool {
        matches!(self, WorkspaceFileError::NotFound { .. })
    }

    /// True when the path names a directory (callers looking for a file by
    /// name pass over directories of that name).
    pub fn is_directory(&self) -> bool {
        matches!(
            self,
            WorkspaceFileError::NotRegularFile {
                kind: "a directory",
                ..
            }
        )
    }
}

/// The start of a workspace file, as [`read`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceFile {
    /// At most `max_bytes` bytes from the start of the file.
    pub bytes: Vec<u8>,
    /// The file's size when it was opened; larger than `bytes.len()` when the
    /// file was cut at `max_bytes`.
    pub size: u64,
}

impl WorkspaceFile {
    pub fn is_truncated(&self) -> bool {
        self.size > self.bytes.len() as u64
    }
}

/// Read at most `max_bytes` of the regular file `relative` inside `root`
/// (see the module documentation for what is refused).
pub fn read(
    root: &Path,
    relative: impl AsRef<Path>,
    max_bytes: usize,
) -> Result<WorkspaceFile, WorkspaceFileError> {
    let relative = relative.as_ref();
    let (file, size) = open_with_size(root, relative)?;
    read_capped(file, size, max_bytes, &shown(relative))
}

fn read_capped(
    file: File,
    size: u64,
    max_bytes: usize,
    path: &str,
) -> Result<WorkspaceFile, WorkspaceFileError> {
    // The file may grow after fstat: `take` bounds the read whatever happens.
    let mut bytes = Vec::with_capacity(max_bytes.min(usize::try_from(size).unwrap_or(max_bytes)));
    file.take(max_bytes as u64)
        .read_to_end(&mut bytes)
        .map_err(|source| WorkspaceFileError::Io {
            path: path.to_string(),
            source,
        })?;
    Ok(WorkspaceFile {
        size: size.max(bytes.len() as u64),
        bytes,
    })
}

/// Read at most `max_bytes` of a file that is not workspace content (the
/// user's own global `AGENTS.md`, whose symlinks are the user's choice): it is
/// followed wherever it leads, but must still be a regular file, and opening
/// it never blocks.
pub(crate) fn read_own_file(
    path: &Path,
    max_bytes: usize,
) -> Result<WorkspaceFile, WorkspaceFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown_path = path.display().to_string();
    let io_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            WorkspaceFileError::NotFound {
                path: shown_path.clone(),
            }
        } else {
            WorkspaceFileError::Io {
                path: shown_path.clone(),
                source,
            }
        }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.file_type().is_file() {
        return Err(WorkspaceFileError::NotRegularFile {
            path: shown_path,
            kind: file_kind(&metadata.file_type()),
        });
    }
    read_capped(file, metadata.len(), max_bytes, &shown_path)
}

/// Open the regular file `relative` inside `root` for reading; the caller
/// bounds what it reads (see the module documentation for what is refused).
pub fn open(root: &Path, relative: impl AsRef<Path>) -> Result<File, WorkspaceFileError> {
    open_with_size(root, relative.as_ref()).map(|(file, _)| file)
}

fn open_with_size(root: &Path, relative: &Path) -> Result<(File, u64), WorkspaceFileError> {
    let path = shown(relative);
    if relative.as_os_str().is_empty()
        || relative
            .components()
            .any(|c| matches!(c, Component::RootDir | Component::Prefix(_)))
    {
        return Err(WorkspaceFileError::NotRelative { path });
    }
    let root_error = |source| WorkspaceFileError::Root {
        root: root.to_path_buf(),
        source,
    };
    let canonical_root = root.canonicalize().map_err(root_error)?;
    let resolved = match canonical_root.join(relative).canonicalize() {
        Ok(resolved) => resolved,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(not_found_or_outside(&canonical_root, relative, path));
        }
        Err(source) => return Err(WorkspaceFileError::Io { path, source }),
    };
    let Ok(inside) = resolved.strip_prefix(&canonical_root) else {
        return Err(WorkspaceFileError::OutsideWorkspace { path });
    };
    let names: Vec<&OsStr> = inside
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let Some((file_name, directories)) = names.split_last() else {
        return Err(WorkspaceFileError::NotRegularFile {
            path,
            kind: "the workspace root",
        });
    };

    let nofollow = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir: OwnedFd = File::open(&canonical_root).map_err(root_error)?.into();
    for name in directories {
        dir = openat(
            dir.as_fd(),
            *name,
            nofollow | OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .map_err(|errno| open_error(errno, &path))?;
    }
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let fd = openat(
        dir.as_fd(),
        *file_name,
        nofollow | OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|errno| open_error(errno, &path))?;
    let file = File::from(fd);
    let metadata = file.metadata().map_err(|source| WorkspaceFileError::Io {
        path: path.clone(),
        source,
    })?;
    if !metadata.file_type().is_file() {
        return Err(WorkspaceFileError::NotRegularFile {
            path,
            kind: file_kind(&metadata.file_type()),
        });
    }
    Ok((file, metadata.len()))
}

/// A missing file is "not found" unless one of its existing components
/// already leads out of the workspace (a dangling link out is still a link out).
fn not_found_or_outside(
    canonical_root: &Path,
    relative: &Path,
    path: String,
) -> WorkspaceFileError {
    let mut prefix = canonical_root.to_path_buf();
    for component in relative.components() {
        prefix.push(component);
        let Ok(meta) = prefix.symlink_metadata() else {
            break;
        };
        if meta.file_type().is_symlink() || matches!(component, Component::ParentDir) {
            match prefix.canonicalize() {
                Ok(resolved) if resolved.starts_with(canonical_root) => {}
                _ => return WorkspaceFileError::OutsideWorkspace { path },
            }
        }
    }
    WorkspaceFileError::NotFound { path }
}

fn open_error(errno: Errno, path: &str) -> WorkspaceFileError {
    let path = path.to_string();
    match errno {
        // A component that was a directory or file a moment ago is now a symlink.
        Errno::ELOOP | Errno::ENOTDIR => WorkspaceFileError::Changed { path },
        Errno::ENOENT => WorkspaceFileError::NotFound { path },
        other => WorkspaceFileError::Io {
            path,
            source: io::Error::from_raw_os_error(other as i32),
        },
    }
}

fn file_kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

fn shown(relative: &Path) -> String {
    relative.display().to_string()
}

#[cfg(test)]
#[path = "workspace_file_tests.rs"]
mod tests;
