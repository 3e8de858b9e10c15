use super::*;

fn numbered_lines(count: usize) -> String {
    (1..=count).map(|n| format!("line {n}\n")).collect()
}

fn capture(text: &str, head_cap: usize, tail_cap: usize) -> CapturedOutput {
    let mut output = CapturedOutput::new(head_cap, tail_cap);
    // Feed in uneven pieces, as a pipe would deliver them.
    let mut rest = text;
    let mut piece = 1;
    while !rest.is_empty() {
        let end = ceil_char_boundary(rest, piece.min(rest.len()));
        output.push(&rest[..end]);
        rest = &rest[end..];
        piece = piece * 3 % 97 + 1;
    }
    output
}

#[test]
fn short_output_is_sent_whole() {
    let output = capture("ok\nall good\n", 1024, 1024);
    assert_eq!(output.view_for_model(100), "ok\nall good\n");
    assert_eq!(output.total_lines(), 2);
    assert!(!output.is_partial());
}

#[test]
fn long_output_keeps_head_and_tail_and_names_omitted_lines() {
    let text = numbered_lines(1000);
    let output = capture(&text, 1 << 20, 1 << 20);
    let view = output.view_for_model(200);
    assert!(view.len() <= 200 + 100, "view too long: {}", view.len());
    assert!(view.starts_with("line 1\nline 2\n"));
    assert!(view.ends_with("line 1000\n"));
    let marker = view.lines().find(|l| l.starts_with("[…")).unwrap();
    // The tail's first line must be the one the marker announces.
    let after_marker = view.split(marker).nth(1).unwrap().trim_start_matches('\n');
    let next_line: u64 = marker
        .split("the next line is line ")
        .nth(1)
        .unwrap()
        .trim_end_matches(" …]")
        .parse()
        .unwrap();
    assert_eq!(
        after_marker.lines().next().unwrap(),
        format!("line {next_line}")
    );
    let kept_head = view.split(marker).next().unwrap();
    let first_omitted = kept_head.lines().count() + 1;
    assert!(marker.contains(&format!("lines {first_omitted}-{}", next_line - 1)));
    let omitted: usize = marker
        .trim_start_matches("[… ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        omitted,
        text.len() - kept_head.len() - after_marker.len(),
        "{marker}"
    );
}

#[test]
fn bounded_capture_counts_every_line_and_keeps_line_numbers_right() {
    let text = numbered_lines(5000);
    let output = capture(&text, 300, 300);
    assert!(output.is_partial());
    assert_eq!(output.total_lines(), 5000);
    assert_eq!(output.total_bytes(), text.len() as u64);
    let kept = output.text();
    assert!(kept.len() < 1000);
    assert!(kept.starts_with("line 1\n"));
    assert!(kept.ends_with("line 5000\n"));
    let view = output.view_for_model(200);
    let marker = view.lines().find(|l| l.starts_with("[…")).unwrap();
    let after = view.split(marker).nth(1).unwrap().trim_start_matches('\n');
    let first_tail_line = after.lines().next().unwrap();
    assert!(
        marker.ends_with(&format!(
            "the next line is line {} …]",
            first_tail_line.trim_start_matches("line ")
        )),
        "{marker} / {first_tail_line}"
    );
}

#[test]
fn a_single_huge_line_is_cut_at_character_boundaries() {
    let text = "é".repeat(5000);
    let output = capture(&text, 1 << 20, 1 << 20);
    let view = output.view_for_model(101);
    assert!(view.len() < 300);
    assert!(view.contains("bytes omitted (line 1)"));
    assert_eq!(output.total_lines(), 1);
}

#[test]
fn last_line_without_newline_counts() {
    let output = capture("a\nb", 10, 10);
    assert_eq!(output.total_lines(), 2);
    assert_eq!(CapturedOutput::new(1, 1).total_lines(), 0);
}

#[test]
fn decoder_joins_characters_split_across_reads() {
    let bytes = "héllo wörld €".as_bytes();
    let mut decoder = Utf8Decoder::default();
    let mut text = String::new();
    for byte in bytes {
        text.push_str(&decoder.push(std::slice::from_ref(byte)));
    }
    text.push_str(&decoder.finish());
    assert_eq!(text, "héllo wörld €");
}

#[test]
fn decoder_replaces_invalid_bytes_and_keeps_going() {
    let mut decoder = Utf8Decoder::default();
    let mut text = decoder.push(b"ok \xff then \xe2");
    text.push_str(&decoder.push(b"\x82\xac end"));
    text.push_str(&decoder.finish());
    assert_eq!(text, "ok \u{fffd} then € end");
}

#[test]
fn line_boundary_cuts_prefer_whole_lines() {
    assert_eq!(prefix_at_line_boundary("ab\ncd\nef", 7), "ab\ncd\n");
    assert_eq!(prefix_at_line_boundary("abcdef", 3), "abc");
    assert_eq!(suffix_at_line_boundary("ab\ncd\nef\n", 6), "cd\nef\n");
    assert_eq!(suffix_at_line_boundary("ab\ncd\nef\n", 5), "ef\n");
    assert_eq!(suffix_at_line_boundary("ab\ncd\nef\n", 3), "ef\n");
    assert_eq!(suffix_at_line_boundary("abcdef", 2), "ef");
}
