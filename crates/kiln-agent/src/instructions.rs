//! Finding repository guidance: `AGENTS.md` files from kiln's home, the
//! project root and every directory down to the working directory.

use std::path::{Path, PathBuf};

use crate::workspace_file::{self, WorkspaceFile, WorkspaceFileError};
use crate::InstructionsConfig;

/// Names tried first in every directory, before the configured fallbacks.
const PRIMARY_FILENAMES: [&str; 2] = ["AGENTS.override.md", "AGENTS.md"];

const GITDIR_PREFIX: &[u8] = b"gitdir:";

/// The guidance in effect for an attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instructions {
    /// The guidance as the model receives it: each file's content, delimited and
    /// labelled with its path, global file first, then project root → cwd.
    /// Empty when no file was found.
    pub text: String,
    /// The files read, in the order they appear in `text`.
    pub sources: Vec<PathBuf>,
    /// Problems worth telling the user (budget exceeded, unreadable file).
    pub warnings: Vec<String>,
}

/// The nearest ancestor of `cwd` (itself included) that holds a `.git` file or
/// directory, i.e. the repository root; `None` outside a repository.
///
/// An empty `.git` directory does not count: sandboxes (Codex's among them)
/// leave such mount points behind in writable directories like `/tmp`, and
/// taking one for a repository would pull unrelated AGENTS.md files in.
pub fn project_root(cwd: &Path) -> Option<PathBuf> {
    cwd.ancestors()
        .find(|dir| is_git_marker(&dir.join(".git")))
        .map(Path::to_path_buf)
}

/// A repository's `.git`: a directory with `HEAD`, or a worktree's or
/// submodule's `.git` file (`gitdir: …`).
fn is_git_marker(path: &Path) -> bool {
    match path.metadata() {
        Ok(meta) if meta.is_dir() => path.join("HEAD").exists(),
        // Only the marker's first bytes matter: a `.git` symlinked to a huge
        // file or a FIFO must not make kiln read it whole or wait.
        Ok(meta) if meta.is_file() => workspace_file::read_own_file(path, GITDIR_PREFIX.len())
            .is_ok_and(|file| file.bytes == GITDIR_PREFIX),
        _ => false,
    }
}

/// Find and read the guidance for work in `cwd`.
///
/// Rules, as Codex users know them: the project root is the nearest ancestor
/// with `.git` (without one, only `cwd` itself is searched). Each directory from
/// the root down to `cwd` contributes its first *regular file* among
/// `AGENTS.override.md`, `AGENTS.md` and the configured fallback names, so a
/// directory named `AGENTS.md` is passed over. A global file in `kiln_home`
/// (`AGENTS.override.md`, else `AGENTS.md`) comes first. Files are
/// concatenated in that order (deeper files later, so they read as more
/// specific) until `byte_budget` bytes of content are used; the file that
/// crosses the budget is cut at a line boundary and later ones are left out,
/// each reported in `warnings`. Empty files are skipped.
///
/// Project files are repository content, so they are read through
/// [`workspace_file`](crate::workspace_file), confined to the project root: a
/// symlink that stays inside the project works, one that leads out (to
/// `/proc/self/environ`, to `../secret`, through a directory link) or to
/// anything but a regular file is not read, with a warning; no file is read
/// past the budget. The global file is the user's own and may be a symlink
/// anywhere, but it too must be a regular file and is read only up to the
/// budget.
pub fn discover_instructions(
    cwd: &Path,
    config: &InstructionsConfig,
    kiln_home: Option<&Path>,
) -> Instructions {
    discover_instructions_within(cwd, None, config, kiln_home)
}

/// [`discover_instructions`] for a workspace whose root the caller knows (a
/// server's checkout): nothing above `workspace_root` is searched or read,
/// even when the project root found from `cwd` lies above it (a checkout
/// whose `.git` the agent deleted, inside a directory that is a repository).
/// `None` takes the project root found from `cwd`.
pub fn discover_instructions_within(
    cwd: &Path,
    workspace_root: Option<&Path>,
    config: &InstructionsConfig,
    kiln_home: Option<&Path>,
) -> Instructions {
    let cwd = absolute(cwd);
    let root = match workspace_root {
        Some(root) => absolute(root),
        None => project_root(&cwd).unwrap_or_else(|| cwd.clone()),
    };
    let mut found = Instructions::default();
    let mut reader = BudgetedReader {
        config,
        budget_left: config.byte_budget,
        skipped_for_budget: Vec::new(),
    };
    if let Some(home) = kiln_home {
        let home = absolute(home);
        let global = PRIMARY_FILENAMES
            .iter()
            .map(|name| home.join(name))
            .find_map(|path| {
                let file = workspace_file::read_own_file(&path, reader.budget_left);
                match file {
                    Err(err) if err.is_not_found() || err.is_directory() => None,
                    other => Some((path, other)),
                }
            });
        if let Some((path, file)) = global {
            reader.add(&mut found, path, file);
        }
    }
    for dir in directories_root_to_cwd(&cwd, &root) {
        let Ok(inside) = dir.strip_prefix(&root) else {
            continue;
        };
        let names = PRIMARY_FILENAMES
            .iter()
            .copied()
            .chain(config.fallback_filenames.iter().map(String::as_str))
            .filter(|name| !name.is_empty());
        let first = names.into_iter().find_map(|name| {
            match workspace_file::read(&root, inside.join(name), reader.budget_left) {
                Err(err) if err.is_not_found() || err.is_directory() => None,
                other => Some((dir.join(name), other)),
            }
        });
        if let Some((path, file)) = first {
            reader.add(&mut found, path, file);
        }
    }
    if !reader.skipped_for_budget.is_empty() {
        let names: Vec<String> = reader
            .skipped_for_budget
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        found.warnings.push(format!(
            "instructions files left out because the AGENTS.md budget of {} bytes is used up: {} \
             (raise instructions.byte_budget)",
            config.byte_budget,
            names.join(", ")
        ));
    }
    found
}

/// Adds files to the guidance while the byte budget lasts.
struct BudgetedReader<'a> {
    config: &'a InstructionsConfig,
    budget_left: usize,
    skipped_for_budget: Vec<PathBuf>,
}

impl BudgetedReader<'_> {
    fn add(
        &mut self,
        found: &mut Instructions,
        path: PathBuf,
        file: Result<WorkspaceFile, WorkspaceFileError>,
    ) {
        let file = match file {
            Ok(file) => file,
            Err(err) => {
                found.warnings.push(format!(
                    "instructions file {} was left out: {err}",
                    path.display()
                ));
                return;
            }
        };
        if self.budget_left == 0 {
            if file.size > 0 {
                self.skipped_for_budget.push(path);
            }
            return;
        }
        let content = String::from_utf8_lossy(&file.bytes);
        if content.trim().is_empty() && !file.is_truncated() {
            return;
        }
        let kept = if file.is_truncated() || content.len() > self.budget_left {
            let cut = cut_at_line_boundary(&content, self.budget_left);
            found.warnings.push(format!(
                "instructions file {} was cut to {} of its {} bytes: the AGENTS.md budget of {} bytes \
                 is used up (raise instructions.byte_budget or shorten the file)",
                path.display(),
                cut.len(),
                file.size,
                self.config.byte_budget
            ));
            self.budget_left = 0;
            cut
        } else {
            self.budget_left -= content.len();
            &content
        };
        if kept.trim().is_empty() {
            return;
        }
        push_section(&mut found.text, &path, kept);
        found.sources.push(path);
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The directories from `root` down to `cwd`, root first; none when `cwd`
/// is outside `root`.
fn directories_root_to_cwd(cwd: &Path, root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = cwd
        .ancestors()
        .take_while(|dir| dir.starts_with(root))
        .map(Path::to_path_buf)
        .collect();
    dirs.reverse();
    dirs
}

/// The longest prefix of `text` of at most `max` bytes that ends at a line
/// boundary, or at a character boundary when the first line alone is longer.
fn cut_at_line_boundary(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let prefix = &text[..end];
    match prefix.rfind('\n') {
        Some(newline) => &prefix[..=newline],
        None => prefix,
    }
}

fn push_section(text: &mut String, path: &Path, content: &str) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&format!("<instructions source=\"{}\">\n", path.display()));
    text.push_str(content);
    if !content.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("</instructions>\n");
}

#[cfg(test)]
#[path = "instructions_tests.rs"]
mod tests;
