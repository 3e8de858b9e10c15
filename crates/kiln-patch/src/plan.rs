//! Resolving every hunk of a patch against the files, without writing anything.
//!
//! Hunks apply in order, each one seeing the result of the previous ones (an
//! `Add` then an `Update` of the same file works), through an in-memory overlay of
//! the files the patch touches. The outcome is a [`Plan`]: the final contents of
//! every touched file and the per-hunk changes to report. Only [`Plan::commit`]
//! touches the disk.

use std::collections::HashMap;
use std::fs::{self, Permissions};
use std::io;
use std::path::{Path, PathBuf};

use kiln_protocol::{FileChange, FileChangeKind};

use crate::commit::{commit, FileWrite};
use crate::diff::unified_diff;
use crate::error::PatchError;
use crate::parser::{Hunk, Patch};
use crate::paths::Root;
use crate::report::ApplyReport;
use crate::update::apply_chunks;

/// A patch resolved against the files under a root: what every touched file will
/// contain. Nothing has been written yet; [`Plan::commit`] writes it atomically.
#[derive(Debug)]
pub struct Plan {
    writes: Vec<FileWrite>,
    changes: Vec<FileChange>,
}

impl Plan {
    /// The changes the commit will make, one per hunk, in patch order.
    pub fn changes(&self) -> &[FileChange] {
        &self.changes
    }

    /// Writes the plan: every file is replaced through a temporary file and a rename
    /// in its own directory, and if any step fails the files already replaced are
    /// restored, so either the whole patch lands or nothing changes.
    pub fn commit(self) -> Result<ApplyReport, PatchError> {
        commit(&self.writes)?;
        Ok(ApplyReport {
            changes: self.changes,
        })
    }
}

impl Patch {
    /// Resolves every hunk against the files under `root` (see [`Plan`]).
    pub fn plan(&self, root: &Path) -> Result<Plan, PatchError> {
        let root = Root::new(root)?;
        let mut overlay = Overlay::default();
        let mut changes = Vec::with_capacity(self.hunks.len());
        for hunk in &self.hunks {
            changes.push(plan_hunk(&root, &mut overlay, hunk)?);
        }
        Ok(Plan {
            writes: overlay.into_writes(),
            changes,
        })
    }
}

fn plan_hunk(root: &Root, overlay: &mut Overlay, hunk: &Hunk) -> Result<FileChange, PatchError> {
    match hunk {
        Hunk::Add { path, contents, .. } => {
            let real = root.resolve(path)?;
            check_parents_are_directories(root, &real, path, "add")?;
            let entry = overlay.entry(&real, path)?;
            let before = match &entry.current {
                State::Directory => return Err(is_directory(path, "add")),
                State::File(bytes) => bytes.clone(),
                State::Absent => Vec::new(),
            };
            entry.current = State::File(contents.clone().into_bytes());
            Ok(FileChange {
                path: path.clone(),
                kind: FileChangeKind::Add,
                moved_from: None,
                diff: unified_diff(path, path, &before, contents.as_bytes()),
            })
        }
        Hunk::Delete { path, .. } => {
            let real = root.resolve_entry(path)?;
            let entry = overlay.entry(&real, path)?;
            let before = match std::mem::replace(&mut entry.current, State::Absent) {
                State::File(bytes) => bytes,
                State::Directory => {
                    entry.current = State::Directory;
                    return Err(is_directory(path, "delete"));
                }
                State::Absent => return Err(missing(path, "delete")),
            };
            Ok(FileChange {
                path: path.clone(),
                kind: FileChangeKind::Delete,
                moved_from: None,
                diff: unified_diff(path, path, &before, b""),
            })
        }
        Hunk::Update {
            path,
            move_to,
            chunks,
            ..
        } => {
            let real = root.resolve(path)?;
            let entry = overlay.entry(&real, path)?;
            let before = match &entry.current {
                State::File(bytes) => text_of(path, bytes)?,
                State::Directory => return Err(is_directory(path, "update")),
                State::Absent => return Err(missing(path, "update")),
            };
            let updated = apply_chunks(path, before, chunks)?;
            let diff_target = move_to.as_deref().unwrap_or(path);
            let diff = updated.diff(path, diff_target);
            let after = updated.text;
            let permissions = entry.permissions.clone();
            let destination = match move_to {
                Some(dest) => {
                    let dest_real = root.resolve(dest)?;
                    (dest_real != real).then_some((dest, dest_real))
                }
                None => None,
            };
            match destination {
                None => entry.current = State::File(after.into_bytes()),
                Some((dest, dest_real)) => {
                    check_parents_are_directories(root, &dest_real, dest, "move to")?;
                    let target = overlay.entry(&dest_real, dest)?;
                    if matches!(target.current, State::Directory) {
                        return Err(is_directory(dest, "move to"));
                    }
                    target.current = State::File(after.into_bytes());
                    target.permissions = permissions;
                    overlay.entry(&real, path)?.current = State::Absent;
                }
            }
            Ok(FileChange {
                path: diff_target.to_string(),
                kind: FileChangeKind::Modify,
                moved_from: move_to.as_ref().map(|_| path.clone()),
                diff,
            })
        }
    }
}

/// The file's text, or why it cannot be edited as text.
fn text_of<'a>(path: &str, bytes: &'a [u8]) -> Result<&'a str, PatchError> {
    let not_text = |reason: String| PatchError::NotText {
        path: path.to_string(),
        reason,
    };
    // `contains` on bytes is a memchr; the position is only needed for the message.
    if bytes.contains(&0) {
        let offset = bytes.iter().position(|byte| *byte == 0).unwrap_or_default();
        return Err(not_text(format!(
            "it is a binary file (NUL byte at offset {offset})"
        )));
    }
    std::str::from_utf8(bytes).map_err(|error| {
        not_text(format!(
            "it is not valid UTF-8 (invalid byte at offset {})",
            error.valid_up_to()
        ))
    })
}

/// Every existing ancestor of `real` below the root must be a directory, or the
/// file could not be created there; caught now so that the commit does not fail.
fn check_parents_are_directories(
    root: &Root,
    real: &Path,
    shown: &str,
    action: &'static str,
) -> Result<(), PatchError> {
    let mut ancestor = real.parent();
    while let Some(dir) = ancestor {
        if dir == root.path() || !dir.starts_with(root.path()) {
            break;
        }
        match fs::metadata(dir) {
            Ok(metadata) if !metadata.is_dir() => {
                let shown_dir = dir.strip_prefix(root.path()).unwrap_or(dir);
                return Err(PatchError::io(
                    shown,
                    action,
                    io::Error::other(format!(
                        "`{}` is a file, not a directory",
                        shown_dir.display()
                    )),
                ));
            }
            _ => {}
        }
        ancestor = dir.parent();
    }
    Ok(())
}

fn missing(path: &str, action: &'static str) -> PatchError {
    PatchError::MissingFile {
        path: path.to_string(),
        action,
    }
}

fn is_directory(path: &str, action: &'static str) -> PatchError {
    PatchError::IsDirectory {
        path: path.to_string(),
        action,
    }
}

/// What a path holds at some point while the patch is being planned.
#[derive(Debug)]
enum State {
    Absent,
    Directory,
    File(Vec<u8>),
}

#[derive(Debug)]
struct Entry {
    real: PathBuf,
    shown: String,
    existed_as_file: bool,
    /// Permissions a written file gets: the original file's, or the moved source's.
    permissions: Option<Permissions>,
    current: State,
}

/// The files the patch touched so far, in first-touch order, read once from disk.
#[derive(Debug, Default)]
struct Overlay {
    entries: Vec<Entry>,
    by_path: HashMap<PathBuf, usize>,
}

impl Overlay {
    fn entry(&mut self, real: &Path, shown: &str) -> Result<&mut Entry, PatchError> {
        if let Some(&index) = self.by_path.get(real) {
            return Ok(&mut self.entries[index]);
        }
        let (current, permissions) = match fs::metadata(real) {
            Ok(metadata) if metadata.is_dir() => (State::Directory, None),
            Ok(metadata) => {
                let bytes = fs::read(real).map_err(|error| PatchError::io(shown, "read", error))?;
                (State::File(bytes), Some(metadata.permissions()))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => (State::Absent, None),
            Err(error) => return Err(PatchError::io(shown, "inspect", error)),
        };
        self.entries.push(Entry {
            real: real.to_path_buf(),
            shown: shown.to_string(),
            existed_as_file: matches!(current, State::File(_)),
            permissions,
            current,
        });
        self.by_path
            .insert(real.to_path_buf(), self.entries.len() - 1);
        let index = self.entries.len() - 1;
        Ok(&mut self.entries[index])
    }

    fn into_writes(self) -> Vec<FileWrite> {
        self.entries
            .into_iter()
            .filter_map(|entry| {
                let contents = match entry.current {
                    State::File(bytes) => Some(bytes),
                    State::Absent if entry.existed_as_file => None,
                    State::Absent | State::Directory => return None,
                };
                Some(FileWrite {
                    real: entry.real,
                    shown: entry.shown,
                    existed: entry.existed_as_file,
                    permissions: entry.permissions,
                    contents,
                })
            })
            .collect()
    }
}
