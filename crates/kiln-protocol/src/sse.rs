//! An incremental parser of Server-Sent Events (the `text/event-stream`
//! format of the WHATWG HTML standard, section 9.2), for everything that
//! reads kiln's own event streams: the CLI, kiln-bench and the tests.
//!
//! Feed it the bytes as they arrive, split anywhere; it hands back each
//! frame once its blank line has arrived. It follows the standard: lines end
//! in LF, CRLF or CR; one leading byte-order mark is skipped; lines starting
//! with `:` are comments; one space after a field's colon is dropped; the
//! `data:` lines of a frame are joined with LF; a frame without data is not
//! dispatched; `id` is remembered across frames (one containing NUL is
//! ignored) and `retry` takes only ASCII digits; an unknown field is
//! ignored; an unterminated frame at the end of the stream is dropped.
//!
//! The stream is untrusted: a frame (its lines and its data together) may
//! hold at most [`SseParser::max_frame_bytes`], so a server that never ends
//! a line cannot make the reader buffer without bound. Past that the parser
//! fails with [`SseError::FrameTooLarge`] and stays failed.
//!
//! ```
//! use kiln_protocol::sse::SseParser;
//! let mut parser = SseParser::new();
//! assert!(parser.feed(b"id: 7\nevent: exec.begin\nda").unwrap().is_empty());
//! let frames = parser.feed(b"ta: {\"a\":1}\r\n\r\n").unwrap();
//! assert_eq!(frames[0].id.as_deref(), Some("7"));
//! assert_eq!(frames[0].event, "exec.begin");
//! assert_eq!(frames[0].data, "{\"a\":1}");
//! ```

/// The default of [`SseParser::max_frame_bytes`]: above the largest event
/// kiln stores, far below what would hurt a client.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// The last event id as of this frame: set by this frame's `id:` field or
    /// carried over from an earlier one; `None` until a server sent one (or
    /// after an empty `id:`).
    pub id: Option<String>,
    /// The `event:` field, `message` when the frame had none.
    pub event: String,
    /// The `data:` lines joined with LF.
    pub data: String,
    /// The reconnection delay in milliseconds, when this frame set one.
    pub retry: Option<u64>,
}

/// Why the stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A frame grew past the limit before its blank line came.
    FrameTooLarge { limit: usize },
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::FrameTooLarge { limit } => write!(
                f,
                "an event of the stream is larger than {limit} bytes without its blank line: \
                 the server is not sending kiln events (check the URL) or is misbehaving"
            ),
        }
    }
}

impl std::error::Error for SseError {}

/// See the [module documentation](self).
#[derive(Debug)]
pub struct SseParser {
    max_frame_bytes: usize,
    /// Bytes of the current, unfinished line. Decoded only once complete, so
    /// a UTF-8 sequence split across chunks is never cut.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF first in the next one is part of
    /// that line end.
    after_cr: bool,
    /// The stream's first line was read (only it may start with a BOM).
    first_line_done: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    retry: Option<u64>,
    /// Bytes of the current frame's finished lines, for the limit.
    frame_bytes: usize,
    last_event_id: Option<String>,
    failed: Option<SseError>,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        SseParser::with_max_frame_bytes(DEFAULT_MAX_FRAME_BYTES)
    }

    /// A parser that refuses frames larger than `limit` bytes.
    pub fn with_max_frame_bytes(limit: usize) -> Self {
        SseParser {
            max_frame_bytes: limit,
            line: Vec::new(),
            after_cr: false,
            first_line_done: false,
            event: None,
            data: String::new(),
            has_data: false,
            retry: None,
            frame_bytes: 0,
            last_event_id: None,
            failed: None,
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The last event id the stream set, to send as `Last-Event-ID` when
    /// reconnecting.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Consumes one piece of the stream and returns the frames it completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseFrame>, SseError> {
        let mut frames = Vec::new();
        self.feed_into(bytes, &mut frames)?;
        Ok(frames)
    }

    /// [`SseParser::feed`] appending to `out`, to reuse one vector. Frames
    /// completed before an error are still appended.
    pub fn feed_into(&mut self, bytes: &[u8], out: &mut Vec<SseFrame>) -> Result<(), SseError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let mut rest = bytes;
        if self.after_cr {
            self.after_cr = false;
            if let Some(after_lf) = rest.strip_prefix(b"\n") {
                rest = after_lf;
            }
        }
        while let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.grow_line(&rest[..end])?;
            self.finish_line(out)?;
            let terminator = rest[end];
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.grow_line(rest)
    }

    fn grow_line(&mut self, piece: &[u8]) -> Result<(), SseError> {
        // Checked before copying: a never-ending line costs at most the limit.
        if self.frame_bytes + self.line.len() + piece.len() > self.max_frame_bytes {
            return Err(self.fail());
        }
        self.line.extend_from_slice(piece);
        Ok(())
    }

    fn fail(&mut self) -> SseError {
        let error = SseError::FrameTooLarge {
            limit: self.max_frame_bytes,
        };
        self.failed = Some(error.clone());
        self.line = Vec::new();
        self.data = String::new();
        error
    }

    fn finish_line(&mut self, out: &mut Vec<SseFrame>) -> Result<(), SseError> {
        let line = std::mem::take(&mut self.line);
        let mut text: &[u8] = &line;
        if !self.first_line_done {
            self.first_line_done = true;
            // A BOM is skipped only at the very start of the stream.
            text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
        }
        if text.is_empty() {
            self.dispatch(out);
        } else if text[0] != b':' {
            // Comments are dropped at once and cost nothing to keep.
            self.frame_bytes += text.len() + 1;
            self.field(text);
        }
        // Keep the allocation for the next line.
        self.line = line;
        self.line.clear();
        Ok(())
    }

    fn field(&mut self, line: &[u8]) {
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.last_event_id = if value.is_empty() {
                    None
                } else {
                    Some(String::from_utf8_lossy(value).into_owned())
                };
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Digits only, so the sole failure is overflow: saturate.
                self.retry = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(u64::MAX),
                );
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseFrame>) {
        let event = self.event.take();
        let retry = self.retry.take();
        self.frame_bytes = 0;
        if !self.has_data {
            self.data.clear();
            return;
        }
        self.has_data = false;
        out.push(SseFrame {
            id: self.last_event_id.clone(),
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".to_string()),
            data: std::mem::take(&mut self.data),
            retry,
        });
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
