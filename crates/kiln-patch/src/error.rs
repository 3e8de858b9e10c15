//! Why a patch did not apply, worded for the model that wrote it.

use std::fmt;
use std::io;

use crate::near_miss::NearMiss;
use crate::parser::ParseError;

/// A patch that could not be applied. Applying is atomic, so whenever this is
/// returned no file has changed.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The text is not a valid patch; nothing was looked up on disk.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A path is absolute, escapes the root with `..`, or goes through a symlink that
    /// leads outside the root.
    #[error(
        "refused path `{path}`: {reason}; patch paths must be relative to the workspace root \
         and stay inside it"
    )]
    PathOutsideRoot { path: String, reason: String },
    #[error(
        "cannot {action} `{path}`: no such file; check the path against the directory listing \
         (use `*** Add File:` to create a file)"
    )]
    MissingFile { path: String, action: &'static str },
    #[error("cannot {action} `{path}`: it is a directory, and patches operate on files")]
    IsDirectory { path: String, action: &'static str },
    /// The file to update is binary or not UTF-8; patches edit text only.
    #[error(
        "cannot update `{path}`: {reason}; apply_patch edits UTF-8 text files only, so the \
         file was left untouched (replace it with `*** Delete File:` + `*** Add File:` if needed)"
    )]
    NotText { path: String, reason: String },
    /// A chunk's lines (or its `@@` context line) are not in the file.
    #[error("{0}")]
    ChunkNotFound(Box<ChunkNotFound>),
    /// Reading or writing a file failed.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

impl PatchError {
    /// True when the patch text itself is malformed (as opposed to not fitting the files).
    pub fn is_parse_error(&self) -> bool {
        matches!(self, PatchError::Parse(_))
    }

    pub(crate) fn io(path: &str, action: &'static str, source: io::Error) -> Self {
        PatchError::Io {
            path: path.to_string(),
            action,
            source,
        }
    }
}

/// Which part of a chunk could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// The text after `@@`.
    ContextLine(String),
    /// The chunk's context and removed lines, in order.
    OldLines(Vec<String>),
}

/// The details of a chunk that does not fit its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkNotFound {
    /// The file as the patch names it.
    pub path: String,
    /// 1-based number of the chunk within its `*** Update File:` hunk.
    pub chunk: usize,
    /// 1-based line of the chunk in the patch text.
    pub patch_line: usize,
    /// The chunk's first anchoring line (its `@@` text or first old line).
    pub label: String,
    /// 1-based file line from which the search started (after the previous chunk).
    pub searched_from: usize,
    pub end_of_file: bool,
    pub missing: Missing,
    /// The closest lines the file has, if any are close.
    pub near_miss: Option<NearMiss>,
}

impl fmt::Display for ChunkNotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chunk {} of `{}` (patch line {}, starting `{}`) does not match the file: ",
            self.chunk, self.path, self.patch_line, self.label
        )?;
        let place = if self.end_of_file {
            "at the end of the file".to_string()
        } else if self.searched_from > 1 {
            format!("at or after line {}", self.searched_from)
        } else {
            "anywhere in the file".to_string()
        };
        match &self.missing {
            Missing::ContextLine(line) => {
                writeln!(f, "its `@@` context line `{line}` is not {place}")?
            }
            Missing::OldLines(lines) => {
                writeln!(f, "these expected lines are not {place}:")?;
                for line in lines {
                    writeln!(f, "    {line}")?;
                }
            }
        }
        match &self.near_miss {
            Some(near) => {
                if near.matching > 0 {
                    writeln!(
                        f,
                        "Closest region in the file ({} of {} expected lines appear there):",
                        near.matching, near.expected
                    )?;
                } else {
                    writeln!(f, "Most similar line in the file:")?;
                }
                for (offset, line) in near.lines.iter().enumerate() {
                    writeln!(f, "{:>6} | {line}", near.first_line + offset)?;
                }
                if near.matching == near.expected && near.first_line < self.searched_from {
                    writeln!(
                        f,
                        "Those lines come before the previous chunk: chunks must follow the \
                         file's order."
                    )?;
                }
            }
            None => writeln!(f, "No similar lines exist in the file.")?,
        }
        write!(
            f,
            "The file does not say what the patch expects: re-read the file and regenerate the \
             chunk."
        )
    }
}
