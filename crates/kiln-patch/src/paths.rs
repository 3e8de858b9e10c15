//! Confining patch paths to the root.
//!
//! A patch path is resolved lexically first (`.` dropped, `..` popping a component,
//! never past the root), so the operating system never interprets a `..` after a
//! symlink. Then every component that exists is checked: a symlink is followed
//! (canonicalised) and must land inside the canonical root. Components that do not
//! exist yet are created later as plain directories, so they cannot escape.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::PatchError;

/// The canonical root under which every patch path must stay.
#[derive(Debug, Clone)]
pub struct Root {
    canonical: PathBuf,
}

impl Root {
    pub fn new(root: &Path) -> Result<Self, PatchError> {
        let canonical = root.canonicalize().map_err(|source| {
            PatchError::io(
                &root.display().to_string(),
                "open the root directory",
                source,
            )
        })?;
        Ok(Root { canonical })
    }

    pub fn path(&self) -> &Path {
        &self.canonical
    }

    /// The real location of the patch path `raw`: inside the root, with symlinks
    /// among its existing components resolved.
    pub fn resolve(&self, raw: &str) -> Result<PathBuf, PatchError> {
        self.resolve_with(raw, true)
    }

    /// Like [`Root::resolve`], but a symlink as the last component is kept as the
    /// path itself (still only if it points inside the root): deleting a link
    /// removes the link, as `rm` does, not its target.
    pub fn resolve_entry(&self, raw: &str) -> Result<PathBuf, PatchError> {
        self.resolve_with(raw, false)
    }

    fn resolve_with(&self, raw: &str, follow_last: bool) -> Result<PathBuf, PatchError> {
        let refuse = |reason: String| PatchError::PathOutsideRoot {
            path: raw.to_string(),
            reason,
        };
        let path = Path::new(raw);
        if path.has_root() || path.is_absolute() {
            return Err(refuse("it is an absolute path".into()));
        }
        let mut relative: Vec<&OsStr> = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(name) => relative.push(name),
                Component::CurDir => {}
                Component::ParentDir => {
                    if relative.pop().is_none() {
                        return Err(refuse("its `..` leads above the root".into()));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(refuse("it is an absolute path".into()));
                }
            }
        }
        if relative.is_empty() {
            return Err(refuse("it names the root itself, not a file".into()));
        }
        let mut real = self.canonical.clone();
        for (index, name) in relative.iter().enumerate() {
            real.push(name);
            let metadata = match std::fs::symlink_metadata(&real) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    // The rest does not exist yet: it will be created as plain
                    // directories and a file, which cannot lead anywhere else.
                    real.extend(&relative[index + 1..]);
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::NotADirectory => {
                    let parent = shown_prefix(&relative[..index]);
                    let problem = format!("`{parent}` is a file, not a directory");
                    return Err(PatchError::io(raw, "use", io::Error::other(problem)));
                }
                Err(error) => return Err(PatchError::io(raw, "inspect", error)),
            };
            if !metadata.file_type().is_symlink() {
                continue;
            }
            let shown = shown_prefix(&relative[..=index]);
            let target = real.canonicalize().map_err(|_| {
                refuse(format!(
                    "`{shown}` is a symlink whose target does not exist or cannot be followed"
                ))
            })?;
            if !target.starts_with(&self.canonical) {
                return Err(refuse(format!(
                    "`{shown}` is a symlink to `{}`, outside the root",
                    target.display()
                )));
            }
            if follow_last || index + 1 < relative.len() {
                real = target;
            }
        }
        Ok(real)
    }
}

/// The first components of a patch path, for messages.
fn shown_prefix(components: &[&OsStr]) -> String {
    components
        .iter()
        .map(|name| name.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
#[path = "paths_tests.rs"]
mod tests;
