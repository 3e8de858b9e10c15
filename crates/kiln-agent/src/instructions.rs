//! Finding repository guidance: `AGENTS.md` files from kiln's home, the
//! project root and every directory down to the working directory.

use std::path::{Path, PathBuf};

use crate::InstructionsConfig;

/// Names tried first in every directory, before the configured fallbacks.
const PRIMARY_FILENAMES: [&str; 2] = ["AGENTS.override.md", "AGENTS.md"];

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
        Ok(meta) if meta.is_file() => std::fs::read(path)
            .map(|text| text.starts_with(b"gitdir:"))
            .unwrap_or(false),
        _ => false,
    }
}

/// Find and read the guidance for work in `cwd`.
///
/// Rules, as Codex users know them: the project root is the nearest ancestor
/// with `.git` (without one, only `cwd` itself is searched). Each directory from
/// the root down to `cwd` contributes its first *regular file* (symlinks to
/// files count) among `AGENTS.override.md`, `AGENTS.md` and the configured
/// fallback names, so a directory named `AGENTS.md` is passed over. A global
/// file in `kiln_home` (`AGENTS.override.md`, else `AGENTS.md`) comes first.
/// Files are concatenated in that order (deeper files later, so they read as
/// more specific) until `byte_budget` bytes of content are used; the file that
/// crosses the budget is cut at a line boundary and later ones are left out,
/// each reported in `warnings`. Empty files are skipped.
pub fn discover_instructions(
    cwd: &Path,
    config: &InstructionsConfig,
    kiln_home: Option<&Path>,
) -> Instructions {
    let cwd = absolute(cwd);
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(home) = kiln_home {
        candidates.extend(first_regular_file(&absolute(home), &PRIMARY_FILENAMES, &[]));
    }
    for dir in directories_root_to_cwd(&cwd) {
        candidates.extend(first_regular_file(
            &dir,
            &PRIMARY_FILENAMES,
            &config.fallback_filenames,
        ));
    }

    let mut found = Instructions::default();
    let mut budget_left = config.byte_budget;
    let mut skipped_for_budget: Vec<PathBuf> = Vec::new();
    for path in candidates {
        if budget_left == 0 {
            skipped_for_budget.push(path);
            continue;
        }
        let content = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(err) => {
                found.warnings.push(format!(
                    "could not read instructions file {}: {err}; it was left out",
                    path.display()
                ));
                continue;
            }
        };
        if content.trim().is_empty() {
            continue;
        }
        let kept = if content.len() > budget_left {
            let cut = cut_at_line_boundary(&content, budget_left);
            found.warnings.push(format!(
                "instructions file {} was cut to {} of its {} bytes: the AGENTS.md budget of {} bytes \
                 is used up (raise instructions.byte_budget or shorten the file)",
                path.display(),
                cut.len(),
                content.len(),
                config.byte_budget
            ));
            budget_left = 0;
            cut
        } else {
            budget_left -= content.len();
            content.as_str()
        };
        if kept.trim().is_empty() {
            continue;
        }
        push_section(&mut found.text, &path, kept);
        found.sources.push(path);
    }
    if !skipped_for_budget.is_empty() {
        let names: Vec<String> = skipped_for_budget
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

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The directories from the project root down to `cwd`, root first; just
/// `cwd` when it is not inside a repository.
fn directories_root_to_cwd(cwd: &Path) -> Vec<PathBuf> {
    let Some(root) = project_root(cwd) else {
        return vec![cwd.to_path_buf()];
    };
    let mut dirs: Vec<PathBuf> = cwd
        .ancestors()
        .take_while(|dir| dir.starts_with(&root))
        .map(Path::to_path_buf)
        .collect();
    dirs.reverse();
    dirs
}

fn first_regular_file(dir: &Path, primary: &[&str], fallbacks: &[String]) -> Option<PathBuf> {
    primary
        .iter()
        .copied()
        .chain(fallbacks.iter().map(String::as_str))
        .filter(|name| !name.is_empty())
        .map(|name| dir.join(name))
        .find(|path| std::fs::metadata(path).is_ok_and(|meta| meta.is_file()))
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
