//! Command output: decoding streamed bytes, keeping a bounded head + tail of
//! it, and the shortened view the model receives.

/// Turns a byte stream into text without splitting a character that arrives
/// in two pieces; bytes that are not UTF-8 become U+FFFD.
#[derive(Debug, Default)]
pub(crate) struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid_up_to = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the very end waits for more bytes;
            // anything else invalid is replaced now.
            Err(err) if err.error_len().is_none() => err.valid_up_to(),
            Err(_) => incomplete_suffix_start(&self.pending),
        };
        let rest = self.pending.split_off(valid_up_to);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    /// Whatever is left at the end of the stream.
    pub(crate) fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Where a trailing, possibly incomplete UTF-8 sequence begins (at most three
/// bytes back), so it can wait for its continuation.
fn incomplete_suffix_start(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let start = bytes.len() - back;
        let lead = bytes[start];
        let needed = match lead {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => continue,
        };
        return if needed > back { start } else { bytes.len() };
    }
    bytes.len()
}

/// The output of one command, kept within a memory bound: the first
/// `head_cap` bytes and the last `tail_cap` bytes, with exact byte and line
/// counts of the whole so that line numbers stay meaningful after the middle
/// is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedOutput {
    head: String,
    tail: String,
    head_cap: usize,
    tail_cap: usize,
    /// 1-based line number of the first character of `tail`.
    tail_first_line: u64,
    /// Whether `tail` begins at the start of a line.
    tail_starts_line: bool,
    total_bytes: u64,
    total_newlines: u64,
    ends_with_newline: bool,
}

impl CapturedOutput {
    pub(crate) fn new(head_cap: usize, tail_cap: usize) -> Self {
        CapturedOutput {
            head: String::new(),
            tail: String::new(),
            head_cap,
            tail_cap,
            tail_first_line: 1,
            tail_starts_line: true,
            total_bytes: 0,
            total_newlines: 0,
            ends_with_newline: false,
        }
    }

    pub(crate) fn push(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.total_bytes += text.len() as u64;
        self.total_newlines += count_newlines(text);
        self.ends_with_newline = text.ends_with('\n');

        let mut rest = text;
        if self.tail.is_empty() && self.head.len() < self.head_cap {
            let room = floor_char_boundary(rest, self.head_cap - self.head.len());
            self.head.push_str(&rest[..room]);
            rest = &rest[room..];
        }
        if rest.is_empty() {
            return;
        }
        if self.tail.is_empty() && self.total_bytes == (self.head.len() + rest.len()) as u64 {
            // The tail begins right after the head: nothing dropped yet.
            self.tail_first_line = count_newlines(&self.head) + 1;
            self.tail_starts_line = self.head.is_empty() || self.head.ends_with('\n');
        }
        self.tail.push_str(rest);
        // Trim lazily (at twice the cap) so that appending stays amortised O(n).
        if self.tail.len() > 2 * self.tail_cap.max(1) {
            self.trim_tail();
        }
    }

    fn trim_tail(&mut self) {
        if self.tail.len() <= self.tail_cap {
            return;
        }
        let cut = ceil_char_boundary(&self.tail, self.tail.len() - self.tail_cap);
        self.tail_first_line += count_newlines(&self.tail[..cut]);
        self.tail_starts_line = self.tail[..cut].ends_with('\n');
        self.tail.drain(..cut);
    }

    /// Bytes of output seen, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Lines of the whole output; a last line without a newline counts.
    pub fn total_lines(&self) -> u64 {
        if self.total_bytes == 0 {
            0
        } else if self.ends_with_newline {
            self.total_newlines
        } else {
            self.total_newlines + 1
        }
    }

    /// Whether the middle of the output was dropped to stay within the bound.
    pub fn is_partial(&self) -> bool {
        self.kept_bytes() < self.total_bytes
    }

    fn kept_bytes(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64
    }

    /// The kept text: everything when nothing was dropped, otherwise the head
    /// and the tail around a marker.
    pub fn text(&self) -> String {
        let mut copy = self.clone();
        copy.trim_tail();
        if !copy.is_partial() {
            return format!("{}{}", copy.head, copy.tail);
        }
        compose(
            &copy.head,
            (&copy.tail, copy.tail_first_line, copy.tail_starts_line),
            copy.total_bytes,
            usize::MAX,
        )
    }

    /// The output shortened to about `max_bytes` for the model: the first and
    /// last halves cut at line boundaries, and a marker in between that says
    /// which lines were left out, so the model can still cite line numbers.
    pub fn view_for_model(&self, max_bytes: usize) -> String {
        let mut copy = self.clone();
        copy.trim_tail();
        if !copy.is_partial() {
            let full = format!("{}{}", copy.head, copy.tail);
            if full.len() <= max_bytes {
                return full;
            }
            return compose(&full, (&full, 1, true), copy.total_bytes, max_bytes);
        }
        compose(
            &copy.head,
            (&copy.tail, copy.tail_first_line, copy.tail_starts_line),
            copy.total_bytes,
            max_bytes,
        )
    }
}

/// Join a prefix taken from `head_src` and a suffix taken from `tail_src`
/// (each at most half of `max_bytes`) with a marker naming what lies between.
/// `tail` is the tail source with the line number of its first character and
/// whether that character starts a line.
fn compose(head_src: &str, tail: (&str, u64, bool), total_bytes: u64, max_bytes: usize) -> String {
    let (tail_src, tail_src_first_line, tail_src_starts_line) = tail;
    let half = max_bytes / 2;
    let prefix = prefix_at_line_boundary(head_src, half);
    let suffix = suffix_at_line_boundary(tail_src, half);
    let suffix_first_line =
        tail_src_first_line + count_newlines(&tail_src[..tail_src.len() - suffix.len()]);
    let first_omitted = count_newlines(prefix) + 1;
    let suffix_starts_line = if tail_src.len() == suffix.len() {
        tail_src_starts_line
    } else {
        tail_src.as_bytes()[tail_src.len() - suffix.len() - 1] == b'\n'
    };
    let last_omitted = if suffix_starts_line {
        suffix_first_line.saturating_sub(1)
    } else {
        suffix_first_line
    };
    let omitted_bytes = total_bytes.saturating_sub((prefix.len() + suffix.len()) as u64);

    let mut out = String::with_capacity(prefix.len() + suffix.len() + 120);
    out.push_str(prefix);
    if !prefix.is_empty() && !prefix.ends_with('\n') {
        out.push('\n');
    }
    let lines = if last_omitted > first_omitted {
        format!("lines {first_omitted}-{last_omitted}")
    } else {
        format!("line {first_omitted}")
    };
    out.push_str(&format!(
        "[… {omitted_bytes} bytes omitted ({lines}); the next line is line {suffix_first_line} …]\n"
    ));
    out.push_str(suffix);
    out
}

/// The longest prefix of at most `max` bytes ending just after a newline;
/// a plain character-boundary cut when the first line alone is longer.
pub(crate) fn prefix_at_line_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = floor_char_boundary(text, max);
    match text[..end].rfind('\n') {
        Some(newline) => &text[..=newline],
        None => &text[..end],
    }
}

/// The longest suffix of at most `max` bytes that starts a line; a plain
/// character-boundary cut when the last line alone is longer.
pub(crate) fn suffix_at_line_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let start = ceil_char_boundary(text, text.len() - max);
    // A newline just before `start` means `start` already begins a line.
    let search_from = start.saturating_sub(1);
    // Searching bytes: `search_from` may sit inside a character, and a
    // newline byte is always a whole character.
    match text.as_bytes()[search_from..]
        .iter()
        .position(|&b| b == b'\n')
    {
        Some(offset) if search_from + offset + 1 < text.len() => &text[search_from + offset + 1..],
        _ => &text[start..],
    }
}

pub(crate) fn count_newlines(text: &str) -> u64 {
    text.bytes().filter(|&b| b == b'\n').count() as u64
}

pub(crate) fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

pub(crate) fn ceil_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

#[cfg(test)]
#[path = "output_tests.rs"]
mod tests;
