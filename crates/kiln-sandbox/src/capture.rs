//! Bounded capture of a command's output.
//!
//! However much a command prints, memory use stays at `head + tail` bytes:
//! the first `head` bytes are kept, the last `tail` bytes live in a ring, and
//! what falls out of the ring is appended to a spill file until the spill
//! cap, after which it is only counted.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

pub(crate) struct OutputCapture {
    head: Vec<u8>,
    head_cap: usize,
    tail: VecDeque<u8>,
    tail_cap: usize,
    spill_path: PathBuf,
    spill: Option<File>,
    spill_cap: u64,
    spilled: u64,
    spill_error: Option<String>,
    total: u64,
}

/// What was captured, ready for [`crate::ExecOutcome`].
pub(crate) struct CapturedOutput {
    pub text: String,
    pub total_bytes: u64,
    pub omitted_bytes: u64,
    pub spill_file: Option<PathBuf>,
}

impl OutputCapture {
    /// `spill_path` is created only when the output outgrows head and tail.
    pub fn new(head_cap: usize, tail_cap: usize, spill_path: PathBuf, spill_cap: u64) -> Self {
        OutputCapture {
            head: Vec::with_capacity(head_cap.min(8192)),
            head_cap,
            tail: VecDeque::new(),
            tail_cap,
            spill_path,
            spill: None,
            spill_cap,
            spilled: 0,
            spill_error: None,
            total: 0,
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < self.head_cap {
            let take = (self.head_cap - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        if data.is_empty() {
            return;
        }
        // Bytes that cannot stay in the tail go straight to the spill file
        // in one write instead of passing through the ring byte by byte.
        let overflow_from_new = data.len().saturating_sub(self.tail_cap);
        let evicted_from_ring =
            (self.tail.len() + data.len() - overflow_from_new).saturating_sub(self.tail_cap);
        if evicted_from_ring > 0 {
            // Taken out for the duration so its slices can be written
            // without copying while `self` is borrowed mutably.
            let mut ring = std::mem::take(&mut self.tail);
            let (front, back) = ring.as_slices();
            let from_front = evicted_from_ring.min(front.len());
            self.spill_bytes(&front[..from_front]);
            self.spill_bytes(&back[..evicted_from_ring - from_front]);
            ring.drain(..evicted_from_ring);
            self.tail = ring;
        }
        if overflow_from_new > 0 {
            self.spill_bytes(&data[..overflow_from_new]);
            data = &data[overflow_from_new..];
        }
        self.tail.extend(data);
    }

    fn spill_bytes(&mut self, data: &[u8]) {
        if data.is_empty() || self.spill_error.is_some() {
            return;
        }
        let room = self.spill_cap.saturating_sub(self.spilled);
        let take = (room.min(data.len() as u64)) as usize;
        if take == 0 {
            return;
        }
        if self.spill.is_none() {
            match File::create(&self.spill_path) {
                Ok(file) => self.spill = Some(file),
                Err(err) => {
                    self.spill_error = Some(err.to_string());
                    return;
                }
            }
        }
        if let Some(file) = self.spill.as_mut() {
            match file.write_all(&data[..take]) {
                Ok(()) => self.spilled += take as u64,
                Err(err) => self.spill_error = Some(err.to_string()),
            }
        }
    }

    pub fn finish(mut self) -> CapturedOutput {
        if let Some(file) = self.spill.as_mut() {
            let _ = file.flush();
        }
        let kept = self.head.len() as u64 + self.tail.len() as u64;
        let omitted = self.total - kept;
        let mut bytes = self.head;
        if omitted > 0 {
            // No host path in the text: the command's reader (a model, a
            // person) may be inside the sandbox where that path means nothing.
            let mut marker = format!("\n[… {omitted} bytes omitted");
            if let Some(err) = &self.spill_error {
                marker.push_str(&format!("; spill file failed: {err}"));
            }
            marker.push_str(" …]\n");
            bytes.extend_from_slice(marker.as_bytes());
        }
        bytes.extend(self.tail);
        CapturedOutput {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            total_bytes: self.total,
            omitted_bytes: omitted,
            spill_file: (self.spilled > 0).then_some(self.spill_path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(dir: &tempfile::TempDir, head: usize, tail: usize, cap: u64) -> OutputCapture {
        OutputCapture::new(head, tail, dir.path().join("spill"), cap)
    }

    #[test]
    fn small_output_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = capture(&dir, 8, 8, 100);
        c.push(b"hello ");
        c.push(b"world");
        let out = c.finish();
        assert_eq!(out.text, "hello world");
        assert_eq!(out.omitted_bytes, 0);
        assert!(out.spill_file.is_none());
        assert!(!dir.path().join("spill").exists());
    }

    #[test]
    fn middle_goes_to_spill_file_and_head_and_tail_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = capture(&dir, 4, 4, 100);
        for piece in [&b"0123"[..], b"45", b"6789ab", b"cdef"] {
            c.push(piece);
        }
        let out = c.finish();
        assert_eq!(out.total_bytes, 16);
        assert_eq!(out.omitted_bytes, 8);
        assert!(
            out.text.starts_with("0123\n[… 8 bytes omitted"),
            "{}",
            out.text
        );
        assert!(out.text.ends_with("…]\ncdef"), "{}", out.text);
        let spill = out.spill_file.unwrap();
        assert_eq!(std::fs::read(spill).unwrap(), b"456789ab");
    }

    #[test]
    fn spill_file_stops_at_its_cap_and_the_rest_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = capture(&dir, 2, 2, 5);
        c.push(&[b'x'; 1000]);
        c.push(b"end");
        let out = c.finish();
        assert_eq!(out.total_bytes, 1003);
        assert_eq!(out.omitted_bytes, 999);
        assert_eq!(std::fs::read(out.spill_file.unwrap()).unwrap().len(), 5);
        assert!(out.text.ends_with("nd"));
    }
}
