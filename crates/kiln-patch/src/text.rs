//! A file's text split into lines without copying, remembering each line's ending.

/// The line ending new lines get: the one the file already uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    Lf,
    CrLf,
}

impl LineEnding {
    pub fn as_str(self) -> &'static str {
        match self {
            LineEnding::Lf => "\n",
            LineEnding::CrLf => "\r\n",
        }
    }
}

/// Lines borrowed from the file text: one `&str` per line and no per-line allocation,
/// which matters on files of hundreds of megabytes.
pub struct SourceText<'a> {
    text: &'a str,
    /// Line contents without their `\n` or `\r\n`.
    lines: Vec<&'a str>,
    ending: LineEnding,
}

impl<'a> SourceText<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut lines: Vec<&str> = text.split('\n').collect();
        // A final `\n` leaves an empty piece that is not a line.
        if lines.last() == Some(&"") {
            lines.pop();
        }
        let terminated = if text.ends_with('\n') {
            lines.len()
        } else {
            lines.len().saturating_sub(1)
        };
        for line in &mut lines[..terminated] {
            if let Some(content) = line.strip_suffix('\r') {
                *line = content;
            }
        }
        let ending = match lines.first() {
            Some(first) if text.as_bytes().get(first.len()) == Some(&b'\r') => LineEnding::CrLf,
            _ => LineEnding::Lf,
        };
        SourceText {
            text,
            lines,
            ending,
        }
    }

    pub fn lines(&self) -> &[&'a str] {
        &self.lines
    }

    pub fn ending(&self) -> LineEnding {
        self.ending
    }

    /// The text is empty or ends with a line ending.
    pub fn ends_with_newline(&self) -> bool {
        self.text.is_empty() || self.text.ends_with('\n')
    }

    /// Byte offset where line `index` starts; `lines().len()` gives the text's length.
    pub fn offset_of_line(&self, index: usize) -> usize {
        match self.lines.get(index) {
            // Every line is a subslice of `text`, so the pointer difference is its offset.
            Some(line) => line.as_ptr() as usize - self.text.as_ptr() as usize,
            None => self.text.len(),
        }
    }

    /// The text of lines `start..end` exactly as in the file, endings included.
    pub fn verbatim(&self, start: usize, end: usize) -> &'a str {
        &self.text[self.offset_of_line(start)..self.offset_of_line(end)]
    }

    /// The ending of line `index` in the file: `\n`, `\r\n`, or empty for a last
    /// line without one.
    pub fn ending_of_line(&self, index: usize) -> &'a str {
        let line = self.lines[index];
        let end = self.offset_of_line(index) + line.len();
        let rest = &self.text.as_bytes()[end..];
        if rest.starts_with(b"\r\n") {
            &self.text[end..end + 2]
        } else if rest.starts_with(b"\n") {
            &self.text[end..end + 1]
        } else {
            ""
        }
    }
}

#[cfg(test)]
#[path = "text_tests.rs"]
mod tests;
