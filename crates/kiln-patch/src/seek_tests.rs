use super::*;

#[test]
fn exact_match_is_found_after_the_cursor() {
    let lines = ["a", "b", "a", "b"];
    assert_eq!(
        seek(&lines, &["a", "b"], 1, false).map(|f| f.start),
        Some(2)
    );
}

#[test]
fn later_exact_match_beats_earlier_loose_match() {
    let lines = ["x  ", "y", "x", "y"];
    let found = seek(&lines, &["x", "y"], 0, false).expect("found");
    assert_eq!((found.start, found.leniency), (2, Leniency::Exact));
}

#[test]
fn trailing_whitespace_is_ignored_second() {
    let lines = ["fn a() {  ", "}"];
    let found = seek(&lines, &["fn a() {", "}"], 0, false).expect("found");
    assert_eq!(found.leniency, Leniency::IgnoreTrailingWhitespace);
}

#[test]
fn surrounding_whitespace_is_ignored_third() {
    let lines = ["    return x;"];
    let found = seek(&lines, &["return x;"], 0, false).expect("found");
    assert_eq!(found.leniency, Leniency::IgnoreSurroundingWhitespace);
}

#[test]
fn unicode_punctuation_is_normalised_last() {
    let lines = ["let s = \u{201C}a\u{2014}b\u{201D};\u{00A0}// it\u{2019}s"];
    let found = seek(&lines, &["let s = \"a-b\"; // it's"], 0, false).expect("found");
    assert_eq!(found.leniency, Leniency::NormalisePunctuation);
}

#[test]
fn end_of_file_only_matches_the_last_lines() {
    let lines = ["a", "b", "a"];
    assert_eq!(seek(&lines, &["a"], 0, true).map(|f| f.start), Some(2));
    assert_eq!(seek(&lines, &["b"], 0, true), None);
}

#[test]
fn repetitive_file_uses_failure_links_correctly() {
    // "a a b" inside "a a a b": a naive restart would be needed after the third "a".
    let lines = ["a", "a", "a", "b"];
    assert_eq!(
        seek(&lines, &["a", "a", "b"], 0, false).map(|f| f.start),
        Some(1)
    );
}

#[test]
fn pattern_longer_than_file_is_not_found() {
    assert_eq!(seek(&["a"], &["a", "b"], 0, false), None);
}

#[test]
fn empty_pattern_matches_at_cursor() {
    assert_eq!(seek(&["a", "b"], &[], 1, false).map(|f| f.start), Some(1));
}

#[test]
fn cursor_past_end_finds_nothing() {
    assert_eq!(seek(&["a"], &["a"], 1, false), None);
}
