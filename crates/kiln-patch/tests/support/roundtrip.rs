//! Round-trip cases: a file, a set of non-overlapping edits, the patch that
//! describes them, and the file the edits produce. Shared by the property tests of
//! the library (inputs from proptest) and of the CLI (inputs from a seeded generator).
//!
//! The expected file is computed by splicing the edits into the line list directly,
//! never through kiln-patch. To keep that oracle sound the builder gives each chunk
//! up to three lines of context and drops an edit whose old lines would first be
//! found (by a naive exact search from where the previous chunk ended) somewhere
//! other than where the edit is.
#![allow(dead_code)]

/// One requested edit before it is fitted to the file.
#[derive(Debug, Clone)]
pub struct RawEdit {
    /// Reduced modulo the number of lines + 1.
    pub start: usize,
    /// Clamped to the lines left after `start`.
    pub delete: usize,
    pub insert: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RoundTrip {
    pub original: String,
    pub patch: String,
    pub expected: String,
}

/// Builds the case for `lines` (no `\n`/`\r` inside) joined with CRLF or LF and
/// with or without a final newline; `None` when no edit survives.
pub fn build(
    lines: &[String],
    raw: &[RawEdit],
    crlf: bool,
    final_newline: bool,
) -> Option<RoundTrip> {
    // An empty last line without a final newline is the same text as the lines
    // before it with a final newline; use the latter form.
    let mut lines = lines.to_vec();
    let mut final_newline = final_newline;
    if !final_newline && lines.last().is_some_and(String::is_empty) {
        lines.pop();
        final_newline = true;
    }
    let lines = &lines[..];
    let n = lines.len();
    // A file reveals CRLF only through a line ending; without one, new lines get LF.
    let eol = if crlf && (n > 1 || (n == 1 && final_newline)) {
        "\r\n"
    } else {
        "\n"
    };
    let mut edits: Vec<(usize, usize, Vec<String>)> = raw
        .iter()
        .map(|edit| {
            let start = edit.start % (n + 1);
            (start, edit.delete.min(n - start), edit.insert.clone())
        })
        .filter(|(_, delete, insert)| *delete > 0 || !insert.is_empty())
        .collect();
    edits.sort_by_key(|(start, _, _)| *start);
    let mut chosen: Vec<(usize, usize, Vec<String>)> = Vec::new();
    let mut chunks = String::new();
    // End of the previous chunk's old lines: where the next search starts.
    let mut cursor = 0;
    let mut previous_end = 0;
    let mut touches_last_line = false;
    for (index, (start, delete, insert)) in edits.iter().enumerate() {
        let (start, delete) = (*start, *delete);
        if start < previous_end {
            continue;
        }
        let next_start = edits[index + 1..]
            .iter()
            .map(|(next, _, _)| *next)
            .find(|next| *next >= start + delete)
            .unwrap_or(n);
        let before = 3.min(start - cursor);
        let after = 3.min(next_start.saturating_sub(start + delete));
        let window_start = start - before;
        let window_end = start + delete + after;
        let old: Vec<&String> = lines[window_start..window_end].iter().collect();
        if old.is_empty() && n > 0 {
            // Would be an append-only chunk, which goes to the end of the file.
            continue;
        }
        if !old.is_empty() && first_exact_match(lines, &old, cursor) != Some(window_start) {
            continue;
        }
        chunks.push_str("@@\n");
        for line in &lines[window_start..start] {
            chunks.push_str(&format!(" {line}\n"));
        }
        for line in &lines[start..start + delete] {
            chunks.push_str(&format!("-{line}\n"));
        }
        for line in insert {
            chunks.push_str(&format!("+{line}\n"));
        }
        for line in &lines[start + delete..window_end] {
            chunks.push_str(&format!(" {line}\n"));
        }
        touches_last_line |= window_end == n;
        cursor = window_end;
        previous_end = start + delete;
        chosen.push((start, delete, insert.clone()));
    }
    if chosen.is_empty() {
        return None;
    }
    let mut result: Vec<String> = lines.to_vec();
    for (start, delete, insert) in chosen.iter().rev() {
        result.splice(*start..*start + *delete, insert.iter().cloned());
    }
    let original = join(lines, eol, final_newline);
    let expected = join(&result, eol, final_newline || touches_last_line);
    let patch = format!("*** Begin Patch\n*** Update File: f.txt\n{chunks}*** End Patch\n");
    Some(RoundTrip {
        original,
        patch,
        expected,
    })
}

fn first_exact_match(lines: &[String], pattern: &[&String], from: usize) -> Option<usize> {
    (from..=lines.len().checked_sub(pattern.len())?).find(|&start| {
        pattern
            .iter()
            .enumerate()
            .all(|(i, line)| lines[start + i] == **line)
    })
}

fn join(lines: &[String], eol: &str, final_newline: bool) -> String {
    let mut text = lines.join(eol);
    if final_newline && !lines.is_empty() {
        text.push_str(eol);
    }
    text
}

/// A small deterministic generator (SplitMix64) for callers without proptest.
pub struct Seeded(u64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Seeded(seed)
    }

    pub fn below(&mut self, bound: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % bound.max(1) as u64) as usize
    }

    pub fn line(&mut self) -> String {
        const WORDS: [&str; 8] = [
            "a",
            "b",
            "fn x() {",
            "}",
            "",
            "  let y = 1;",
            "c d",
            "\u{201C}q\u{201D}",
        ];
        WORDS[self.below(WORDS.len())].to_string()
    }

    /// A whole case: a file of up to 30 lines and up to 5 edits.
    pub fn case(&mut self) -> Option<RoundTrip> {
        let lines: Vec<String> = (0..self.below(31)).map(|_| self.line()).collect();
        let edits: Vec<RawEdit> = (0..1 + self.below(5))
            .map(|_| RawEdit {
                start: self.below(64),
                delete: self.below(4),
                insert: (0..self.below(4)).map(|_| self.line()).collect(),
            })
            .collect();
        let crlf = self.below(2) == 0;
        let final_newline = self.below(4) != 0;
        build(&lines, &edits, crlf, final_newline)
    }
}
