//! Citations in the final message: `【F:path†L3-L9】` for workspace files and
//! `【t7†L3-L9】` for terminal chunks, found and checked against the evidence.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use kiln_protocol::CitationCheck;

use crate::chunks::{parse_chunk_id, ChunkStore};

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
/// path, no symlink leading out) and has at least `end` lines. A chunk
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
    let mut line_counts: HashMap<PathBuf, Result<u64, String>> = HashMap::new();
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

fn check_file(
    root: &Path,
    path: &str,
    range: LineRange,
    line_counts: &mut HashMap<PathBuf, Result<u64, String>>,
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
    let full = root.join(relative);
    let lines = line_counts
        .entry(full.clone())
        .or_insert_with(|| count_file_lines(root, &full, path))
        .clone()?;
    check_range(range, lines, &format!("{path} has {lines} lines"))
}

fn count_file_lines(root: &Path, full: &Path, path: &str) -> Result<u64, String> {
    let canonical = full
        .canonicalize()
        .map_err(|_| format!("no file `{path}` in the workspace"))?;
    if !canonical.starts_with(root) {
        return Err(format!("`{path}` leads outside the workspace"));
    }
    if !canonical.is_file() {
        return Err(format!("`{path}` is not a regular file"));
    }
    let bytes = std::fs::read(&canonical).map_err(|err| format!("cannot read `{path}`: {err}"))?;
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    Ok(if bytes.is_empty() || bytes.ends_with(b"\n") {
        newlines
    } else {
        newlines + 1
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
