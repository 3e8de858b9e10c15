//! Turns apply_patch text into a [`Patch`], leniently in the ways models rely on.
//!
//! Grammar (one marker per line):
//!
//! ```text
//! *** Begin Patch
//! *** Add File: <path>        followed by lines that each start with `+`
//! *** Delete File: <path>
//! *** Update File: <path>
//! *** Move to: <path>         optional, right after Update
//! @@ [context line]           starts a chunk (the first chunk may omit it)
//!  context / -old / +new      chunk lines
//! *** End of File             optional, anchors the chunk at the end of the file
//! *** End Patch
//! ```
//!
//! Leniency: marker lines may carry surrounding whitespace; the whole patch may be
//! wrapped in a heredoc (`<<'EOF'`, `<<EOF`, `<<"EOF"` … `EOF`, also preceded by
//! `apply_patch `); a completely
//! empty line inside a chunk is an empty context line; blank lines between hunks
//! and chunks are skipped; CRLF patch text is read like LF text.

use std::fmt;

const BEGIN_PATCH: &str = "*** Begin Patch";
const END_PATCH: &str = "*** End Patch";
const ADD_FILE: &str = "*** Add File: ";
const DELETE_FILE: &str = "*** Delete File: ";
const UPDATE_FILE: &str = "*** Update File: ";
const MOVE_TO: &str = "*** Move to: ";
const END_OF_FILE: &str = "*** End of File";
const CHUNK_MARKER: &str = "@@";

/// A parsed patch: its hunks in the order they appear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub hunks: Vec<Hunk>,
}

/// One file operation of a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hunk {
    /// Create `path` (overwriting it if present) with `contents`, every line ending in `\n`.
    Add {
        path: String,
        contents: String,
        /// 1-based line of the header in the patch text.
        line: usize,
    },
    /// Remove the file `path`.
    Delete { path: String, line: usize },
    /// Edit `path` chunk by chunk, then optionally move it to `move_to`.
    Update {
        path: String,
        move_to: Option<String>,
        chunks: Vec<Chunk>,
        line: usize,
    },
}

impl Hunk {
    /// The path the hunk names in its header (the source of a move).
    pub fn path(&self) -> &str {
        match self {
            Hunk::Add { path, .. } | Hunk::Delete { path, .. } | Hunk::Update { path, .. } => path,
        }
    }
}

/// A run of context, removed and added lines that replaces one place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The text after `@@ `: a line to seek to before seeking the chunk's old lines.
    pub context: Option<String>,
    pub lines: Vec<ChunkLine>,
    /// `*** End of File` closed the chunk: its old lines must be the file's last lines.
    pub end_of_file: bool,
    /// 1-based line in the patch text where the chunk starts.
    pub line: usize,
}

impl Chunk {
    /// The lines the chunk expects in the file, in order (context and removed lines).
    pub fn old_lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|line| match line {
            ChunkLine::Context(text) | ChunkLine::Remove(text) => Some(text.as_str()),
            ChunkLine::Add(_) => None,
        })
    }

    /// The lines the chunk leaves in the file, in order (context and added lines).
    pub fn new_lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|line| match line {
            ChunkLine::Context(text) | ChunkLine::Add(text) => Some(text.as_str()),
            ChunkLine::Remove(_) => None,
        })
    }

    /// The first line the chunk is anchored on, for error messages: the `@@` text,
    /// else the first old line, else the first added line.
    pub fn label(&self) -> &str {
        self.context
            .as_deref()
            .or_else(|| self.old_lines().next())
            .or_else(|| self.new_lines().next())
            .unwrap_or("")
    }
}

/// One line of a chunk, without its leading marker character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkLine {
    Context(String),
    Remove(String),
    Add(String),
}

/// The patch text is not in the apply_patch format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid patch, line {line}: {problem}")]
pub struct ParseError {
    /// 1-based line of the patch text where the problem was found.
    pub line: usize,
    /// What is wrong and how the patch should look instead.
    pub problem: String,
}

/// Parses apply_patch text. See the module documentation for the grammar and the
/// leniency; an empty patch (no hunks) is an error.
pub fn parse(text: &str) -> Result<Patch, ParseError> {
    let lines = PatchLines::new(text)?;
    let mut cursor = 0;
    let mut hunks = Vec::new();
    while cursor < lines.len() {
        if lines.text(cursor).trim().is_empty() {
            cursor += 1;
            continue;
        }
        let (hunk, consumed) = parse_hunk(&lines, cursor).map_err(|mut error| {
            if let Some(Hunk::Add { path, .. }) = hunks.last() {
                if error.line == lines.number(cursor) {
                    error.problem.push_str(&format!(
                        " (if this line belongs to `{path}`, every line of an added file \
                         starts with `+`)"
                    ));
                }
            }
            error
        })?;
        hunks.push(hunk);
        cursor += consumed;
    }
    if hunks.is_empty() {
        return Err(ParseError {
            line: lines.end_line,
            problem: "the patch has no hunks, so no file would change; add at least one \
                      `*** Add File:`, `*** Delete File:` or `*** Update File:` section"
                .into(),
        });
    }
    Ok(Patch { hunks })
}

/// The lines between `*** Begin Patch` and `*** End Patch`, with their patch line numbers.
struct PatchLines<'a> {
    body: Vec<&'a str>,
    /// 1-based patch line number of `body[0]`.
    first_line: usize,
    /// 1-based patch line number of `*** End Patch`.
    end_line: usize,
}

impl<'a> PatchLines<'a> {
    fn new(text: &'a str) -> Result<Self, ParseError> {
        // `str::lines` also strips a `\r` before each `\n`, so CRLF patches read like LF ones.
        let all: Vec<&str> = text.lines().collect();
        let Some(first) = all.iter().position(|line| !line.trim().is_empty()) else {
            return Err(ParseError {
                line: 1,
                problem: format!("the patch is empty; it must start with `{BEGIN_PATCH}`"),
            });
        };
        // `position` found a non-blank line, so `rposition` finds one too.
        let last = all
            .iter()
            .rposition(|line| !line.trim().is_empty())
            .unwrap_or(first);
        let (mut first, mut last) = (first, last);
        if all[first].trim() != BEGIN_PATCH && is_heredoc_start(all[first]) && last > first {
            if all[last].trim_end().ends_with("EOF") {
                first += 1;
                last -= 1;
            } else {
                return Err(ParseError {
                    line: last + 1,
                    problem: "the patch opens a heredoc (`<<'EOF'`) but does not close it \
                              with a final `EOF` line"
                        .into(),
                });
            }
        }
        if first > last || all[first].trim() != BEGIN_PATCH {
            return Err(ParseError {
                line: first + 1,
                problem: format!(
                    "the first line of the patch must be `{BEGIN_PATCH}`, found `{}`",
                    all.get(first).copied().unwrap_or("")
                ),
            });
        }
        if last == first || all[last].trim() != END_PATCH {
            return Err(ParseError {
                line: last + 1,
                problem: format!(
                    "the last line of the patch must be `{END_PATCH}`, found `{}`",
                    all[last]
                ),
            });
        }
        Ok(PatchLines {
            body: all[first + 1..last].to_vec(),
            first_line: first + 2,
            end_line: last + 1,
        })
    }

    fn len(&self) -> usize {
        self.body.len()
    }

    fn text(&self, index: usize) -> &'a str {
        self.body[index]
    }

    fn number(&self, index: usize) -> usize {
        self.first_line + index
    }
}

/// `<<'EOF'`, `<<EOF` or `<<"EOF"`, optionally after the command name, as when a
/// whole `apply_patch <<'EOF'` shell command is passed as the patch.
fn is_heredoc_start(line: &str) -> bool {
    let line = line.trim();
    let line = ["apply_patch", "applypatch"]
        .iter()
        .find_map(|command| line.strip_prefix(command))
        .map_or(line, str::trim_start);
    matches!(line, "<<EOF" | "<<'EOF'" | "<<\"EOF\"")
}

/// Parses the hunk whose header is at `start`; returns it and how many lines it used.
fn parse_hunk(lines: &PatchLines<'_>, start: usize) -> Result<(Hunk, usize), ParseError> {
    let header = lines.text(start).trim();
    let line = lines.number(start);
    if let Some(path) = header.strip_prefix(ADD_FILE.trim_end()) {
        let path = header_path(path, line, "Add File")?;
        let mut contents = String::new();
        let mut cursor = start + 1;
        while cursor < lines.len() {
            let Some(added) = lines.text(cursor).strip_prefix('+') else {
                break;
            };
            contents.push_str(added);
            contents.push('\n');
            cursor += 1;
        }
        return Ok((
            Hunk::Add {
                path,
                contents,
                line,
            },
            cursor - start,
        ));
    }
    if let Some(path) = header.strip_prefix(DELETE_FILE.trim_end()) {
        let path = header_path(path, line, "Delete File")?;
        return Ok((Hunk::Delete { path, line }, 1));
    }
    if let Some(path) = header.strip_prefix(UPDATE_FILE.trim_end()) {
        let path = header_path(path, line, "Update File")?;
        return parse_update(lines, start, path);
    }
    Err(ParseError {
        line,
        problem: format!(
            "`{header}` is not a valid hunk header; a hunk starts with `{ADD_FILE}<path>`, \
             `{DELETE_FILE}<path>` or `{UPDATE_FILE}<path>`"
        ),
    })
}

fn header_path(rest: &str, line: usize, marker: &str) -> Result<String, ParseError> {
    let path = rest.trim();
    if path.is_empty() {
        return Err(ParseError {
            line,
            problem: format!("`*** {marker}:` needs a path after the colon"),
        });
    }
    Ok(path.to_string())
}

fn parse_update(
    lines: &PatchLines<'_>,
    start: usize,
    path: String,
) -> Result<(Hunk, usize), ParseError> {
    let header_line = lines.number(start);
    let mut cursor = start + 1;
    let mut move_to = None;
    if cursor < lines.len() {
        if let Some(dest) = lines.text(cursor).trim().strip_prefix(MOVE_TO.trim_end()) {
            move_to = Some(header_path(dest, lines.number(cursor), "Move to")?);
            cursor += 1;
        }
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    while cursor < lines.len() {
        let text = lines.text(cursor);
        if text.trim().is_empty() {
            cursor += 1;
            continue;
        }
        // A hunk header ends the update; inside chunks only unindented markers count,
        // so a context line that happens to read like a marker stays a context line.
        if (text.starts_with("***") && !is_end_of_file(text)) || is_hunk_header(text.trim()) {
            break;
        }
        let (chunk, consumed) = parse_chunk(lines, cursor, chunks.is_empty())?;
        chunks.push(chunk);
        cursor += consumed;
    }
    if chunks.is_empty() {
        return Err(ParseError {
            line: header_line,
            problem: format!(
                "`{UPDATE_FILE}{path}` has no chunks; add `@@` followed by context, `-` and `+` \
                 lines, or remove the hunk"
            ),
        });
    }
    let hunk = Hunk::Update {
        path,
        move_to,
        chunks,
        line: header_line,
    };
    Ok((hunk, cursor - start))
}

fn is_end_of_file(line: &str) -> bool {
    line.trim_end() == END_OF_FILE
}

fn is_hunk_header(line: &str) -> bool {
    [ADD_FILE, DELETE_FILE, UPDATE_FILE]
        .iter()
        .any(|marker| line.starts_with(marker.trim_end()))
}

/// Parses one chunk starting at `start`; `first` allows the `@@` line to be missing.
fn parse_chunk(
    lines: &PatchLines<'_>,
    start: usize,
    first: bool,
) -> Result<(Chunk, usize), ParseError> {
    let marker = lines.text(start);
    let trimmed = marker.trim();
    let (context, mut cursor) = if trimmed == CHUNK_MARKER {
        (None, start + 1)
    } else if let Some(context) = marker.trim_start().strip_prefix("@@ ") {
        (Some(context.to_string()), start + 1)
    } else if first {
        (None, start)
    } else {
        return Err(ParseError {
            line: lines.number(start),
            problem: format!(
                "expected `@@` or `@@ <context line>` to start the next chunk, found `{marker}`"
            ),
        });
    };
    let mut chunk = Chunk {
        context,
        lines: Vec::new(),
        end_of_file: false,
        line: lines.number(start),
    };
    while cursor < lines.len() {
        let text = lines.text(cursor);
        if is_end_of_file(text) {
            if chunk.lines.is_empty() {
                return Err(chunk_without_lines(lines.number(cursor)));
            }
            chunk.end_of_file = true;
            cursor += 1;
            break;
        }
        let parsed = match text.chars().next() {
            None => ChunkLine::Context(String::new()),
            Some(' ') => ChunkLine::Context(text[1..].to_string()),
            Some('-') => ChunkLine::Remove(text[1..].to_string()),
            Some('+') => ChunkLine::Add(text[1..].to_string()),
            Some(_) if chunk.lines.is_empty() => {
                return Err(ParseError {
                    line: lines.number(cursor),
                    problem: format!(
                        "unexpected line `{text}` in a chunk; every chunk line starts with \
                         ' ' (context), '-' (removed) or '+' (added)"
                    ),
                });
            }
            // Any other line ends the chunk; the caller reads it as the next marker.
            Some(_) => break,
        };
        chunk.lines.push(parsed);
        cursor += 1;
    }
    if chunk.lines.is_empty() {
        return Err(chunk_without_lines(chunk.line));
    }
    Ok((chunk, cursor - start))
}

fn chunk_without_lines(line: usize) -> ParseError {
    ParseError {
        line,
        problem: "the chunk has no lines; give it context, `-` and `+` lines".into(),
    }
}

impl fmt::Display for ChunkLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkLine::Context(text) => write!(f, " {text}"),
            ChunkLine::Remove(text) => write!(f, "-{text}"),
            ChunkLine::Add(text) => write!(f, "+{text}"),
        }
    }
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
