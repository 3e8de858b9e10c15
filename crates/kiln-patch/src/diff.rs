//! The unified diff of one file's change, as the event log and the UI show it.

use std::time::Duration;

use similar::TextDiff;

/// Bounds the diff's running time on pathological inputs; past it, `similar` falls
/// back to a coarser (still correct) diff.
const DIFF_TIMEOUT: Duration = Duration::from_secs(2);

/// A unified diff (`--- a/old`, `+++ b/new`, hunks with three lines of context),
/// or a one-line note when either side is not text.
pub fn unified_diff(old_path: &str, new_path: &str, old: &[u8], new: &[u8]) -> String {
    let (Some(old_text), Some(new_text)) = (as_text(old), as_text(new)) else {
        return format!("Binary files a/{old_path} and b/{new_path} differ\n");
    };
    TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old_text, new_text)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{old_path}"), &format!("b/{new_path}"))
        .to_string()
}

fn as_text(bytes: &[u8]) -> Option<&str> {
    if bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changed_line_with_headers() {
        let diff = unified_diff("f.txt", "f.txt", b"a\nb\nc\n", b"a\nB\nc\n");
        assert!(diff.starts_with("--- a/f.txt\n+++ b/f.txt\n"), "{diff}");
        assert!(diff.contains("-b\n+B\n"), "{diff}");
    }

    #[test]
    fn binary_side_gives_a_note() {
        let diff = unified_diff("x.bin", "x.bin", b"\0\x01", b"");
        assert_eq!(diff, "Binary files a/x.bin and b/x.bin differ\n");
    }
}
