//! Applying the chunks of one `*** Update File:` hunk to a file's text.
//!
//! All chunks are located first (each search starts where the previous chunk
//! ended), then the new text is assembled in one pass: untouched stretches are
//! copied as whole byte ranges, so a one-line change to a huge file costs one
//! copy of it, not one allocation per line.

use crate::diff::{regions_diff, ChangedRegion, UpdateSides};
use crate::error::{ChunkNotFound, Missing, PatchError};
use crate::near_miss::find_near_miss;
use crate::parser::{Chunk, ChunkLine};
use crate::seek::seek;
use crate::text::SourceText;

/// Where one chunk goes in the file.
struct Replacement<'c> {
    /// First file line replaced.
    start: usize,
    /// Number of file lines replaced.
    old_len: usize,
    chunk: &'c Chunk,
    /// A trailing empty old line of the chunk that the file does not have (see
    /// [`locate`]); it is neither matched nor written.
    skipped_line: Option<usize>,
}

/// Returns `text` with `chunks` applied.
///
/// Lines the chunk keeps as context are written as the file has them (a loose match
/// never rewrites them), new lines get the file's line ending, and a missing final
/// newline stays missing unless a chunk touches the last line.
pub fn apply_chunks<'a>(
    path: &str,
    text: &'a str,
    chunks: &'a [Chunk],
) -> Result<Updated<'a>, PatchError> {
    let source = SourceText::new(text);
    let replacements = locate(path, &source, chunks)?;
    let lines = source.lines();
    let ending = source.ending().as_str();
    let added: usize = chunks
        .iter()
        .flat_map(|chunk| chunk.new_lines())
        .map(|line| line.len() + ending.len())
        .sum();
    let mut out = Output {
        text: String::with_capacity(text.len() + added),
        ending,
        open_line: false,
    };
    let mut position = 0;
    let mut new_position = 0;
    let mut regions = Vec::with_capacity(replacements.len());
    for replacement in &replacements {
        out.push_verbatim(source.verbatim(position, replacement.start));
        new_position += replacement.start - position;
        let mut region = ChangedRegion {
            old_start: replacement.start,
            old_len: replacement.old_len,
            new_start: new_position,
            new_lines: Vec::new(),
        };
        let mut old_index = 0;
        for (index, line) in replacement.chunk.lines.iter().enumerate() {
            if replacement.skipped_line == Some(index) {
                continue;
            }
            let written = match line {
                ChunkLine::Context(_) => {
                    let at = replacement.start + old_index;
                    out.push_line(lines[at], source.ending_of_line(at));
                    old_index += 1;
                    lines[at]
                }
                ChunkLine::Remove(_) => {
                    old_index += 1;
                    continue;
                }
                ChunkLine::Add(added) => {
                    out.push_line(added, ending);
                    added.as_str()
                }
            };
            region.new_lines.push(written);
        }
        new_position += region.new_lines.len();
        position = replacement.start + replacement.old_len;
        regions.push(region);
    }
    out.push_verbatim(source.verbatim(position, lines.len()));
    new_position += lines.len() - position;
    Ok(Updated {
        text: out.text,
        new_line_count: new_position,
        source,
        regions,
    })
}

/// A file's text after its chunks were applied, and what changed, for the diff.
pub struct Updated<'a> {
    pub text: String,
    new_line_count: usize,
    source: SourceText<'a>,
    regions: Vec<ChangedRegion<'a>>,
}

impl Updated<'_> {
    /// The unified diff from the old text to the new one.
    pub fn diff(&self, old_path: &str, new_path: &str) -> String {
        let sides = UpdateSides {
            old_lines: self.source.lines(),
            old_ends_with_newline: self.source.ends_with_newline(),
            new_line_count: self.new_line_count,
            new_ends_with_newline: self.text.is_empty() || self.text.ends_with('\n'),
        };
        regions_diff(old_path, new_path, &sides, &self.regions)
    }
}

/// Finds every chunk's place, in order, each search starting after the previous chunk.
fn locate<'c>(
    path: &str,
    source: &SourceText<'_>,
    chunks: &'c [Chunk],
) -> Result<Vec<Replacement<'c>>, PatchError> {
    let lines = source.lines();
    let mut cursor = 0;
    let mut replacements = Vec::with_capacity(chunks.len());
    for (index, chunk) in chunks.iter().enumerate() {
        let not_found = |cursor: usize, missing: Missing, pattern: &[&str]| {
            PatchError::ChunkNotFound(Box::new(ChunkNotFound {
                path: path.to_string(),
                chunk: index + 1,
                patch_line: chunk.line,
                label: chunk.label().to_string(),
                searched_from: cursor + 1,
                end_of_file: chunk.end_of_file && matches!(missing, Missing::OldLines(_)),
                missing,
                near_miss: find_near_miss(lines, pattern),
            }))
        };
        // Where the `@@` line was found, for the retry below.
        let mut context_at = None;
        if let Some(context) = &chunk.context {
            match seek(lines, &[context.as_str()], cursor, false) {
                Some(found) => {
                    context_at = Some(found.start);
                    cursor = found.start + 1;
                }
                None => {
                    let missing = Missing::ContextLine(context.clone());
                    return Err(not_found(cursor, missing, &[context.as_str()]));
                }
            }
        }
        let old: Vec<&str> = chunk.old_lines().collect();
        if old.is_empty() {
            // Only added lines: they go at the end of the file, before a trailing
            // blank line if there is one.
            let mut at = lines.len();
            if lines.last() == Some(&"") {
                at -= 1;
            }
            let at = at.max(cursor);
            replacements.push(Replacement {
                start: at,
                old_len: 0,
                chunk,
                skipped_line: None,
            });
            cursor = at;
            continue;
        }
        let mut found = find_old_lines(chunk, &old, lines, cursor);
        if found.is_none() {
            if let Some(context_at) = context_at {
                // Models often repeat the `@@` line as the chunk's first context line;
                // the chunk then starts at the `@@` line itself, not after it.
                found = find_old_lines(chunk, &old, lines, context_at);
            }
        }
        let Some((start, old_len, skipped_line)) = found else {
            let missing = Missing::OldLines(old.iter().map(|line| line.to_string()).collect());
            return Err(not_found(cursor, missing, &old));
        };
        replacements.push(Replacement {
            start,
            old_len,
            chunk,
            skipped_line,
        });
        cursor = start + old_len;
    }
    Ok(replacements)
}

/// Seeks a chunk's old lines from `from`: (start, number of file lines, skipped
/// chunk line).
fn find_old_lines(
    chunk: &Chunk,
    old: &[&str],
    lines: &[&str],
    from: usize,
) -> Option<(usize, usize, Option<usize>)> {
    if let Some(found) = seek(lines, old, from, chunk.end_of_file) {
        return Some((found.start, old.len(), None));
    }
    if old.last() != Some(&"") {
        return None;
    }
    // A blank line before the next hunk header reads as an empty context line that
    // the file need not have; retry without it.
    let shorter = &old[..old.len() - 1];
    let skipped = chunk
        .lines
        .iter()
        .rposition(|line| matches!(line, ChunkLine::Context(_) | ChunkLine::Remove(_)));
    seek(lines, shorter, from, chunk.end_of_file).map(|found| (found.start, shorter.len(), skipped))
}

/// The new text under construction.
struct Output {
    text: String,
    ending: &'static str,
    /// The text ends in a line without an ending (the file's unterminated last line).
    open_line: bool,
}

impl Output {
    fn push_verbatim(&mut self, verbatim: &str) {
        if verbatim.is_empty() {
            return;
        }
        self.close_open_line();
        self.text.push_str(verbatim);
        self.open_line = !verbatim.ends_with('\n');
    }

    /// Pushes one line; an empty `line_ending` (the file's last line had none) becomes
    /// the file's ending, since a chunk touching the last line leaves a final newline.
    fn push_line(&mut self, line: &str, line_ending: &str) {
        self.close_open_line();
        self.text.push_str(line);
        self.text.push_str(if line_ending.is_empty() {
            self.ending
        } else {
            line_ending
        });
    }

    fn close_open_line(&mut self) {
        if self.open_line {
            self.text.push_str(self.ending);
            self.open_line = false;
        }
    }
}

#[cfg(test)]
#[path = "update_tests.rs"]
mod tests;
