//! The unified diff of one file's change, as the event log and the UI show it.
//!
//! For an update the changed regions are already known from applying the chunks,
//! so only those regions are diffed (with `similar`) and the stretches between them
//! are equal by construction. Diffing the whole of a 100 MB file instead would
//! tokenise and hash millions of lines to find a change we already know.

use std::fmt::Write as _;
use std::time::Duration;

use similar::{capture_diff_slices, group_diff_ops, Algorithm, DiffOp, TextDiff};

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

/// A stretch of a file a chunk replaced: `old_len` lines from `old_start` became
/// `new_lines`, which start at line `new_start` of the new file.
#[derive(Debug, Clone)]
pub struct ChangedRegion<'a> {
    pub old_start: usize,
    pub old_len: usize,
    pub new_start: usize,
    pub new_lines: Vec<&'a str>,
}

/// Both sides of an update, as lines without endings.
pub struct UpdateSides<'a, 'b> {
    pub old_lines: &'b [&'a str],
    pub old_ends_with_newline: bool,
    pub new_line_count: usize,
    pub new_ends_with_newline: bool,
}

/// The unified diff of an update whose only differences lie in `regions` (sorted,
/// non-overlapping). Equivalent to diffing the whole files, in time proportional to
/// the regions plus the number of lines.
pub fn regions_diff(
    old_path: &str,
    new_path: &str,
    sides: &UpdateSides<'_, '_>,
    regions: &[ChangedRegion<'_>],
) -> String {
    let old_count = sides.old_lines.len();
    let old_open = |index: usize| index + 1 == old_count && !sides.old_ends_with_newline;
    let new_open = |index: usize| index + 1 == sides.new_line_count && !sides.new_ends_with_newline;
    let regions = with_final_newline_change(sides, regions);
    let mut ops = Vec::new();
    let (mut old_position, mut new_position) = (0, 0);
    for region in &regions {
        push_op(
            &mut ops,
            DiffOp::Equal {
                old_index: old_position,
                new_index: new_position,
                len: region.old_start - old_position,
            },
        );
        // A line compares with whether it lacks its final newline: gaining one is a change.
        let old: Vec<(&str, bool)> = (region.old_start..region.old_start + region.old_len)
            .map(|index| (sides.old_lines[index], old_open(index)))
            .collect();
        let new: Vec<(&str, bool)> = region
            .new_lines
            .iter()
            .enumerate()
            .map(|(offset, line)| (*line, new_open(region.new_start + offset)))
            .collect();
        for op in capture_diff_slices(Algorithm::Myers, &old, &new) {
            push_op(&mut ops, shifted(op, region.old_start, region.new_start));
        }
        old_position = region.old_start + region.old_len;
        new_position = region.new_start + region.new_lines.len();
    }
    push_op(
        &mut ops,
        DiffOp::Equal {
            old_index: old_position,
            new_index: new_position,
            len: old_count - old_position,
        },
    );
    let new_line = |index: usize| -> &str {
        // Inserted lines only occur inside regions, so one region holds `index`.
        regions
            .iter()
            .find(|region| {
                (region.new_start..region.new_start + region.new_lines.len()).contains(&index)
            })
            .map_or("", |region| region.new_lines[index - region.new_start])
    };
    let groups = group_diff_ops(ops, 3);
    if groups.is_empty() {
        return String::new();
    }
    let mut out = format!("--- a/{old_path}\n+++ b/{new_path}\n");
    for group in groups {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let old_range = first.old_range().start..last.old_range().end;
        let new_range = first.new_range().start..last.new_range().end;
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            hunk_range(old_range.start, old_range.len()),
            hunk_range(new_range.start, new_range.len())
        );
        for op in group {
            let (_, old_lines, new_lines) = op.as_tag_tuple();
            if let DiffOp::Equal { .. } = op {
                for index in old_lines {
                    push_line(&mut out, ' ', sides.old_lines[index], old_open(index));
                }
                continue;
            }
            for index in old_lines {
                push_line(&mut out, '-', sides.old_lines[index], old_open(index));
            }
            for index in new_lines {
                push_line(&mut out, '+', new_line(index), new_open(index));
            }
        }
    }
    out
}

/// Appends `op`, merging it into the previous op when both are equal stretches (so
/// that context trimming sees one stretch) and dropping empty equal stretches.
fn push_op(ops: &mut Vec<DiffOp>, op: DiffOp) {
    if let DiffOp::Equal { len, .. } = op {
        if len == 0 {
            return;
        }
        if let Some(DiffOp::Equal { len: previous, .. }) = ops.last_mut() {
            *previous += len;
            return;
        }
    }
    ops.push(op);
}

/// A file whose unterminated last line gains a newline because lines were appended
/// after it: that line changed too, so the region is widened to include it.
fn with_final_newline_change<'a>(
    sides: &UpdateSides<'a, '_>,
    regions: &[ChangedRegion<'a>],
) -> Vec<ChangedRegion<'a>> {
    let mut regions = regions.to_vec();
    let old_count = sides.old_lines.len();
    let covered = |regions: &[ChangedRegion<'_>]| {
        regions.iter().any(|region| {
            (region.old_start..region.old_start + region.old_len).contains(&(old_count - 1))
        })
    };
    if old_count == 0 || sides.old_ends_with_newline || covered(&regions) {
        return regions;
    }
    if let Some(last) = regions.last_mut() {
        if last.old_start == old_count && last.new_start > 0 {
            last.old_start -= 1;
            last.old_len += 1;
            last.new_start -= 1;
            last.new_lines.insert(0, sides.old_lines[old_count - 1]);
        }
    }
    regions
}

fn shifted(op: DiffOp, old_offset: usize, new_offset: usize) -> DiffOp {
    match op {
        DiffOp::Equal {
            old_index,
            new_index,
            len,
        } => DiffOp::Equal {
            old_index: old_index + old_offset,
            new_index: new_index + new_offset,
            len,
        },
        DiffOp::Delete {
            old_index,
            old_len,
            new_index,
        } => DiffOp::Delete {
            old_index: old_index + old_offset,
            old_len,
            new_index: new_index + new_offset,
        },
        DiffOp::Insert {
            old_index,
            new_index,
            new_len,
        } => DiffOp::Insert {
            old_index: old_index + old_offset,
            new_index: new_index + new_offset,
            new_len,
        },
        DiffOp::Replace {
            old_index,
            old_len,
            new_index,
            new_len,
        } => DiffOp::Replace {
            old_index: old_index + old_offset,
            old_len,
            new_index: new_index + new_offset,
            new_len,
        },
    }
}

/// `start,len` as unified diffs write it: 1-based, `,len` omitted for one line, and
/// an empty range named by the line before it.
fn hunk_range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        _ => format!("{},{len}", start + 1),
    }
}

fn push_line(out: &mut String, tag: char, line: &str, without_newline: bool) {
    out.push(tag);
    out.push_str(line);
    out.push('\n');
    if without_newline {
        out.push_str("\\ No newline at end of file\n");
    }
}

fn as_text(bytes: &[u8]) -> Option<&str> {
    if bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
