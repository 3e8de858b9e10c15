//! Citations in the final message: `【F:path†L3-L9】` for workspace files and
//! `【t7†L3-L9】` for terminal chunks, found and checked against the evidence.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path};

use kiln_protocol::CitationCheck;

use crate::chunks::{parse_chunk_id, ChunkStore};
use crate::workspace_file::{self, WorkspaceFileError};

const OPEN: char = '【';
const CLOSE: char = '】';
const DAGGER: char = '†';

/// What a citation points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CitationTarget {
    /// A file, by its path relative to the workspace root.
    File(String),
    /// A terminal chunk, by id (`t7`).
    Chunk(String),
}

/// One citation as written in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citation {
    /// The citation exactly as written, brackets included.
    pub raw: String,
    /// What it points at and which lines (1-based, inclusive), or why it
    /// cannot be understood.
    pub parsed: Result<(CitationTarget, LineRange), String>,
}

/// Lines `start..=end`, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRange {
    pub start: u64,
    pub end: u64,
}

/// Every `【…】` span of `text`, in order. Spans that are not in kiln's
/// citation format are returned too, with the reason, so that they can be
/// flagged rather than silently ignored.
pub fn parse_citations(text: &str) -> Vec<Citation> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(OPEN) {
        let after_open = &rest[open + OPEN.len_utf8()..];
        // A second opening bracket before the closing one starts a new span.
        let close = after_open.find(CLOSE);
        let reopen = after_open.find(OPEN);
        match close {
            Some(close) if reopen.is_none_or(|r| r > close) => {
                let inner = &after_open[..close];
                found.push(Citation {
                    raw: format!("{OPEN}{inner}{CLOSE}"),
                    parsed: parse_inner(inner),
                });
                rest = &after_open[close + CLOSE.len_utf8()..];
            }
            _ => rest = after_open,
        }
    }
    found
}

fn parse_inner(inner: &str) -> Result<(CitationTarget, LineRange), String> {
    let Some((target, lines)) = inner.split_once(DAGGER) else {
        return Err(
            "not a kiln citation: expected 【F:path†Lstart-Lend】 or 【tN†Lstart-Lend】"
                .to_string(),
        );
    };
    let target = target.trim();
    let target = if let Some(path) = target.strip_prefix("F:") {
        let path = path.trim();
        if path.is_empty() {
            return Err("the file path is empty".to_string());
        }
        CitationTarget::File(path.to_string())
    } else if parse_chunk_id(target).is_some() {
        CitationTarget::Chunk(target.to_string())
    } else {
        return Err(format!(
            "unknown citation target `{target}`: use F:path for files or tN for terminal chunks"
        ));
    };
    Ok((target, parse_lines(lines.trim())?))
}

/// `L10-L24`, `L10-24` or `L10`.
fn parse_lines(lines: &str) -> Result<LineRange, String> {
    let malformed = || format!("line range `{lines}` is not of the form L10-L24 or L10");
    let body = lines.strip_prefix('L').ok_or_else(malformed)?;
    let (start, end) = match body.split_once('-') {
        Some((start, end)) => (start, end.strip_prefix('L').unwrap_or(end)),
        None => (body, body),
    };
    let start: u64 = start.trim().parse().map_err(|_| malformed())?;
    let end: u64 = end.trim().parse().map_err(|_| malformed())?;
    if start == 0 {
        return Err("line numbers start at 1".to_string());
    }
    if end < start {
        return Err(format!("line range L{start}-L{end} ends before it starts"));
    }
    Ok(LineRange { start, end })
}

/// Check every citation in `final_message`.
///
/// A file citation is valid when the path, relative to `workspace_root`,
/// names a regular file that stays inside the workspace (no `..`, no absolute
/// path, no symlink leading out; see [`workspace_file`]) and has at least
/// `end` lines. Only the first 32 MiB of a file are read: a
/// citation past them is refused with that reason. A chunk
/// citation is valid when the chunk exists and has at least `end` lines; lines
/// are those of the whole command output, which a chunk counts even when it
/// keeps only the head and tail of a very long output.
pub fn check_citations(
    final_message: &str,
    workspace_root: &Path,
    chunks: &ChunkStore,
) -> Vec<CitationCheck> {
    let root = workspace_root
        .canonicalize()
        .unwrap_or_else(|_| workspace_root.to_path_buf());
    let mut line_counts: HashMap<String, Result<LineCount, String>> = HashMap::new();
    parse_citations(final_message)
        .into_iter()
        .map(|citation| {
            let verdict = citation.parsed.and_then(|(target, range)| match target {
                CitationTarget::File(path) => check_file(&root, &path, range, &mut line_counts),
                CitationTarget::Chunk(id) => check_chunk(chunks, &id, range),
            });
            CitationCheck {
                citation: citation.raw,
                valid: verdict.is_ok(),
                reason: verdict.err(),
            }
        })
        .collect()
}

/// Bytes of a cited file kiln reads to count its lines. A file is workspace
/// content the model may have made huge (a sparse 4 GB file costs nothing to
/// create); past this, a citation of lines not yet seen is refused.
pub(crate) const MAX_CITED_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// The lines of a cited file, counted up to [`MAX_CITED_FILE_BYTES`].
#[derive(Debug, Clone, Copy)]
struct LineCount {
    lines: u64,
    /// False when the count stopped at the cap.
    complete: bool,
}

fn check_file(
    root: &Path,
    path: &str,
    range: LineRange,
    line_counts: &mut HashMap<String, Result<LineCount, String>>,
) -> Result<(), String> {
    let relative = Path::new(path);
    if relative.is_absolute() {
        return Err(format!(
            "`{path}` is absolute; cite files by their path relative to the repository root"
        ));
    }
    if relative
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(format!("`{path}` leaves the workspace"));
    }
    let count = line_counts
        .entry(path.to_string())
        .or_insert_with(|| count_file_lines(root, path))
        .clone()?;
    if !count.complete && range.end > count.lines {
        return Err(format!(
            "`{path}` is larger than the {} MiB kiln reads to check a citation and its first {} \
             lines end there; cite a smaller file or a line in its first part",
            MAX_CITED_FILE_BYTES / (1024 * 1024),
            count.lines
        ));
    }
    check_range(
        range,
        count.lines,
        &format!("{path} has {} lines", count.lines),
    )
}

/// Count lines (a last line without a newline counts) reading at most
/// [`MAX_CITED_FILE_BYTES`], through the confined reader.
fn count_file_lines(root: &Path, path: &str) -> Result<LineCount, String> {
    let file = workspace_file::open(root, path).map_err(|err| match err {
        WorkspaceFileError::NotFound { .. } => format!("no file `{path}` in the workspace"),
        other => other.to_string(),
    })?;
    let mut reader = file.take(MAX_CITED_FILE_BYTES);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut newlines = 0u64;
    let mut last_byte = None;
    let mut read_total = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(format!("cannot read `{path}`: {err}")),
        };
        read_total += read as u64;
        newlines += buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64;
        last_byte = buffer[..read].last().copied();
    }
    let unterminated_last_line = last_byte.is_some_and(|b| b != b'\n');
    let complete = read_total < MAX_CITED_FILE_BYTES || {
        // Exactly at the cap: complete only if nothing follows.
        let mut probe = [0u8; 1];
        reader.into_inner().read(&mut probe).is_ok_and(|n| n == 0)
    };
    Ok(LineCount {
        // Bytes after the last newline are a line, even when the cap cut it.
        lines: newlines + u64::from(unterminated_last_line),
        complete,
    })
}

fn check_chunk(chunks: &ChunkStore, id: &str, range: LineRange) -> Result<(), String> {
    let chunk = chunks
        .get(id)
        .ok_or_else(|| format!("no terminal chunk {id} in this attempt"))?;
    let lines = chunk.total_lines();
    check_range(range, lines, &format!("chunk {id} has {lines} lines"))
}

fn check_range(range: LineRange, lines: u64, what: &str) -> Result<(), String> {
    if range.end > lines {
        let cited = if range.start == range.end {
            format!("L{}", range.start)
        } else {
            format!("L{}-L{}", range.start, range.end)
        };
        return Err(format!("{cited} is out of range: {what}"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "citations_tests.rs"]
mod tests;
