//! When a chunk cannot be found, the lines of the file that come closest, so the
//! error can show the model what the file really says there.
//!
//! This runs only on the failure path, yet it still has to stay linear on large
//! files: lines are compared through a hash of their normalised text rather than
//! pairwise, and the character-level similarity fallback looks at a bounded number
//! of lines.

use std::collections::HashSet;

use crate::seek::normalised_chars;

/// How many file lines a near miss shows at most.
const MAX_SHOWN_LINES: usize = 8;
/// How many file lines the character-similarity fallback examines at most.
const MAX_SIMILARITY_LINES: usize = 20_000;
/// Lines longer than this are skipped by the character-similarity fallback.
const MAX_SIMILARITY_LINE_LEN: usize = 400;
/// Below this similarity ratio a line is not worth showing.
const MIN_SIMILARITY: f32 = 0.6;

/// The file region most similar to what a chunk expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    /// 1-based number of the first shown line.
    pub first_line: usize,
    /// The file's lines from `first_line` on (at most a few).
    pub lines: Vec<String>,
    /// How many of the chunk's non-blank expected lines occur in the region
    /// (compared loosely), out of `expected`.
    pub matching: usize,
    pub expected: usize,
}

/// Finds the region of `lines` closest to `pattern`: the window with most lines
/// equal (loosely) to some pattern line, else the single most similar line.
pub fn find_near_miss(lines: &[&str], pattern: &[&str]) -> Option<NearMiss> {
    let mut scratch = String::new();
    let wanted: HashSet<u64> = pattern
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| loose_hash(line, &mut scratch))
        .collect();
    if wanted.is_empty() || lines.is_empty() {
        return None;
    }
    let window = pattern.len().clamp(1, lines.len());
    let hits: Vec<bool> = lines
        .iter()
        .map(|line| !line.trim().is_empty() && wanted.contains(&loose_hash(line, &mut scratch)))
        .collect();
    let mut in_window = hits[..window].iter().filter(|hit| **hit).count();
    let (mut best_start, mut best_count) = (0, in_window);
    for start in 1..=lines.len() - window {
        in_window =
            in_window + usize::from(hits[start + window - 1]) - usize::from(hits[start - 1]);
        if in_window > best_count {
            (best_start, best_count) = (start, in_window);
        }
    }
    if best_count > 0 {
        let shown = window.min(MAX_SHOWN_LINES);
        return Some(NearMiss {
            first_line: best_start + 1,
            lines: lines[best_start..best_start + shown]
                .iter()
                .map(|line| line.to_string())
                .collect(),
            matching: best_count,
            expected: wanted.len(),
        });
    }
    most_similar_line(lines, pattern).map(|index| NearMiss {
        first_line: index + 1,
        lines: vec![lines[index].to_string()],
        matching: 0,
        expected: wanted.len(),
    })
}

/// A hash of the line's normalised text. Collisions only make a region look a bit
/// closer than it is, so a fast multiplicative hash over 8-byte words (in the
/// manner of rustc's FxHash) does. ASCII lines, the common case, are hashed in
/// place; others are normalised into `scratch` first.
fn loose_hash(line: &str, scratch: &mut String) -> u64 {
    let trimmed = line.trim();
    let bytes = if trimmed.is_ascii() {
        trimmed.as_bytes()
    } else {
        scratch.clear();
        scratch.extend(normalised_chars(trimmed));
        scratch.as_bytes()
    };
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mix = |hash: u64, word: u64| (hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    let mut words = bytes.chunks_exact(8);
    let mut hash = bytes.len() as u64;
    for word in words.by_ref() {
        let mut array = [0u8; 8];
        array.copy_from_slice(word);
        hash = mix(hash, u64::from_le_bytes(array));
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    mix(hash, u64::from_le_bytes(tail))
}

/// The index of the line most similar (by characters) to the pattern's first
/// non-blank line, if any is similar enough to be useful.
fn most_similar_line(lines: &[&str], pattern: &[&str]) -> Option<usize> {
    let probe = pattern.iter().find(|line| !line.trim().is_empty())?.trim();
    if probe.len() > MAX_SIMILARITY_LINE_LEN {
        return None;
    }
    let probe_len = probe.chars().count();
    let mut best: Option<(usize, f32)> = None;
    for (index, line) in lines.iter().enumerate().take(MAX_SIMILARITY_LINES) {
        let line = line.trim();
        if line.is_empty() || line.len() > MAX_SIMILARITY_LINE_LEN {
            continue;
        }
        // The ratio is at most 2·min/(a+b); skip lines whose length alone rules it out.
        let line_len = line.chars().count();
        let bound = 2.0 * probe_len.min(line_len) as f32 / (probe_len + line_len) as f32;
        if bound < MIN_SIMILARITY {
            continue;
        }
        let ratio = similar::TextDiff::from_chars(probe, line).ratio();
        if ratio >= MIN_SIMILARITY && best.is_none_or(|(_, best_ratio)| ratio > best_ratio) {
            best = Some((index, ratio));
        }
    }
    best.map(|(index, _)| index)
}

#[cfg(test)]
#[path = "near_miss_tests.rs"]
mod tests;
