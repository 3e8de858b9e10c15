use super::*;

#[test]
fn diff_shows_changed_line_with_headers() {
    let diff = unified_diff("f.txt", "f.txt", b"a\nb\nc\n", b"a\nB\nc\n");
    assert!(diff.starts_with("--- a/f.txt\n+++ b/f.txt\n"), "{diff}");
    assert!(diff.contains("-b\n+B\n"), "{diff}");
}

#[test]
fn region_diff_equals_a_whole_file_diff() {
    let old_text = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\nl\n";
    let new_text = "a\nB\nc\nd\ne\nf\ng\nh\ni\nj\nk\nL\nm\n";
    let old_lines: Vec<&str> = old_text.lines().collect();
    let regions = [
        ChangedRegion {
            old_start: 0,
            old_len: 3,
            new_start: 0,
            new_lines: vec!["a", "B", "c"],
        },
        ChangedRegion {
            old_start: 11,
            old_len: 1,
            new_start: 11,
            new_lines: vec!["L", "m"],
        },
    ];
    let sides = UpdateSides {
        old_lines: &old_lines,
        old_ends_with_newline: true,
        new_line_count: 13,
        new_ends_with_newline: true,
    };
    let ours = regions_diff("f", "f", &sides, &regions);
    let whole = unified_diff("f", "f", old_text.as_bytes(), new_text.as_bytes());
    assert_eq!(ours, whole);
}

#[test]
fn missing_final_newline_is_marked() {
    let old_lines = ["a", "b"];
    let regions = [ChangedRegion {
        old_start: 1,
        old_len: 1,
        new_start: 1,
        new_lines: vec!["c"],
    }];
    let sides = UpdateSides {
        old_lines: &old_lines,
        old_ends_with_newline: false,
        new_line_count: 2,
        new_ends_with_newline: true,
    };
    let ours = regions_diff("f", "f", &sides, &regions);
    let whole = unified_diff("f", "f", b"a\nb", b"a\nc\n");
    assert_eq!(ours, whole);
}

#[test]
fn binary_side_gives_a_note() {
    let diff = unified_diff("x.bin", "x.bin", b"\0\x01", b"");
    assert_eq!(diff, "Binary files a/x.bin and b/x.bin differ\n");
}
