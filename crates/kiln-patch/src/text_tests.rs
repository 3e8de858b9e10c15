use super::*;

#[test]
fn lines_exclude_their_endings() {
    let text = SourceText::new("a\r\nb\nc");
    assert_eq!(text.lines(), ["a", "b", "c"]);
    assert_eq!(text.ending(), LineEnding::CrLf);
    assert_eq!(text.ending_of_line(0), "\r\n");
    assert_eq!(text.ending_of_line(1), "\n");
    assert_eq!(text.ending_of_line(2), "");
    assert_eq!(text.verbatim(1, 3), "b\nc");
}

#[test]
fn final_newline_does_not_make_an_extra_line() {
    let text = SourceText::new("a\n\n");
    assert_eq!(text.lines(), ["a", ""]);
    assert_eq!(text.ending(), LineEnding::Lf);
    assert_eq!(text.verbatim(0, 2), "a\n\n");
}

#[test]
fn carriage_return_without_newline_stays_in_the_line() {
    let text = SourceText::new("a\r");
    assert_eq!(text.lines(), ["a\r"]);
    assert_eq!(text.ending_of_line(0), "");
}

#[test]
fn empty_text_has_no_lines() {
    assert!(SourceText::new("").lines().is_empty());
}
