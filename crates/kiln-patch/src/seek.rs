//! Finding a chunk's old lines in a file, with progressively looser matching.
//!
//! The search moves forward from a cursor and tries each [`Leniency`] level over the
//! whole remaining file before trying the next, so an exact match later in the file
//! wins over a loose match earlier. Every level compares lines through a key
//! (the line itself, trimmed, or normalised), which makes each level an equivalence
//! relation; that is what lets the search run Knuth–Morris–Pratt over lines and stay
//! linear in the file size even for repetitive files, where a naive scan is O(n·m).

/// How loosely two lines may differ and still match, from strictest to loosest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leniency {
    Exact,
    IgnoreTrailingWhitespace,
    IgnoreSurroundingWhitespace,
    /// Surrounding whitespace ignored and Unicode punctuation mapped to ASCII
    /// (dashes, curly quotes, unusual spaces), as models often type them differently.
    NormalisePunctuation,
}

impl Leniency {
    pub const ALL: [Leniency; 4] = [
        Leniency::Exact,
        Leniency::IgnoreTrailingWhitespace,
        Leniency::IgnoreSurroundingWhitespace,
        Leniency::NormalisePunctuation,
    ];

    /// Whether `a` and `b` are equal at this level.
    pub fn lines_match(self, a: &str, b: &str) -> bool {
        match self {
            Leniency::Exact => a == b,
            Leniency::IgnoreTrailingWhitespace => a.trim_end() == b.trim_end(),
            Leniency::IgnoreSurroundingWhitespace => a.trim() == b.trim(),
            Leniency::NormalisePunctuation => normalised_chars(a).eq(normalised_chars(b)),
        }
    }
}

/// The characters of `line` with surrounding whitespace removed and Unicode
/// punctuation mapped to its ASCII look-alike; lazy, so comparing allocates nothing.
pub fn normalised_chars(line: &str) -> impl Iterator<Item = char> + '_ {
    line.trim().chars().map(ascii_lookalike)
}

fn ascii_lookalike(c: char) -> char {
    match c {
        // hyphen, non-breaking hyphen, figure dash, en dash, em dash, horizontal bar, minus
        '\u{2010}'..='\u{2015}' | '\u{2212}' => '-',
        // left/right/low-9/reversed-9 single quotation marks
        '\u{2018}'..='\u{201B}' => '\'',
        // left/right/low-9/reversed-9 double quotation marks
        '\u{201C}'..='\u{201F}' => '"',
        // no-break space, en/em/thin/hair spaces, narrow no-break, math space, ideographic
        '\u{00A0}' | '\u{2002}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' => ' ',
        other => other,
    }
}

/// A place where a pattern was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Index of the file line where the pattern starts.
    pub start: usize,
    pub leniency: Leniency,
}

/// Finds `pattern` in `lines` at or after `from`, trying each leniency level in turn.
///
/// With `end_of_file`, the pattern must be the last lines of the file (and still start
/// at or after `from`). An empty pattern matches at `from`.
pub fn seek(lines: &[&str], pattern: &[&str], from: usize, end_of_file: bool) -> Option<Found> {
    if pattern.is_empty() {
        return Some(Found {
            start: from,
            leniency: Leniency::Exact,
        });
    }
    if pattern.len() > lines.len() {
        return None;
    }
    if end_of_file {
        let start = lines.len() - pattern.len();
        if start < from {
            return None;
        }
        let tail = &lines[start..];
        return Leniency::ALL
            .into_iter()
            .find(|level| {
                tail.iter()
                    .zip(pattern)
                    .all(|(line, wanted)| level.lines_match(line, wanted))
            })
            .map(|leniency| Found { start, leniency });
    }
    if from >= lines.len() {
        return None;
    }
    Leniency::ALL.into_iter().find_map(|leniency| {
        find_with(&lines[from..], pattern, leniency).map(|offset| Found {
            start: from + offset,
            leniency,
        })
    })
}

/// Knuth–Morris–Pratt over lines under one leniency level: O(lines + pattern)
/// line comparisons.
fn find_with(lines: &[&str], pattern: &[&str], level: Leniency) -> Option<usize> {
    let matches = |a: &str, b: &str| level.lines_match(a, b);
    // fallback[i]: length of the longest proper prefix of pattern[..=i] that is also
    // a suffix of it.
    let mut fallback = vec![0usize; pattern.len()];
    let mut matched = 0;
    for i in 1..pattern.len() {
        while matched > 0 && !matches(pattern[i], pattern[matched]) {
            matched = fallback[matched - 1];
        }
        if matches(pattern[i], pattern[matched]) {
            matched += 1;
        }
        fallback[i] = matched;
    }
    let mut matched = 0;
    for (index, line) in lines.iter().enumerate() {
        while matched > 0 && !matches(line, pattern[matched]) {
            matched = fallback[matched - 1];
        }
        if matches(line, pattern[matched]) {
            matched += 1;
            if matched == pattern.len() {
                return Some(index + 1 - pattern.len());
            }
        }
    }
    None
}

#[cfg(test)]
#[path = "seek_tests.rs"]
mod tests;
