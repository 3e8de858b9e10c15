use super::*;

fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut out);
    }
    parser.finish(&mut out);
    out
}

fn event(name: Option<&str>, data: &str) -> SseEvent {
    SseEvent {
        event: name.map(str::to_string),
        data: data.to_string(),
    }
}

#[test]
fn event_and_data_lines_make_one_event() {
    let events = parse_chunks(&[b"event: response.created\ndata: {\"a\":1}\n\n"]);
    assert_eq!(events, vec![event(Some("response.created"), "{\"a\":1}")]);
}

#[test]
fn data_split_across_chunks_at_every_position_parses_the_same() {
    let text =
        "event: x\r\ndata: {\"delta\":\"h\u{e9}llo\"}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n";
    let whole = parse_chunks(&[text.as_bytes()]);
    assert_eq!(
        whole,
        vec![
            event(Some("x"), "{\"delta\":\"h\u{e9}llo\"}"),
            event(None, "[DONE]")
        ]
    );
    let bytes = text.as_bytes();
    for cut in 0..=bytes.len() {
        assert_eq!(
            parse_chunks(&[&bytes[..cut], &bytes[cut..]]),
            whole,
            "cut at {cut}"
        );
    }
    let one_byte_chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(parse_chunks(&one_byte_chunks), whole);
}

#[test]
fn multi_line_data_is_joined_with_newlines() {
    let events = parse_chunks(&[b"data: first\ndata:second\ndata\n\n"]);
    assert_eq!(events, vec![event(None, "first\nsecond\n")]);
}

#[test]
fn comments_and_unknown_fields_are_ignored() {
    let events = parse_chunks(&[b": ping\nid: 7\nretry: 100\ndata: x\n\n:\n\n"]);
    assert_eq!(events, vec![event(None, "x")]);
}

#[test]
fn lone_cr_ends_lines_even_across_chunks() {
    assert_eq!(parse_chunks(&[b"data: a\r\r"]), vec![event(None, "a")]);
    assert_eq!(
        parse_chunks(&[b"data: a\r", b"\r", b"data: b\r", b"\n\r\n"]),
        vec![event(None, "a"), event(None, "b")]
    );
}

#[test]
fn event_without_data_is_not_dispatched_and_its_name_is_dropped() {
    let events = parse_chunks(&[b"event: ping\n\ndata: x\n\n"]);
    assert_eq!(events, vec![event(None, "x")]);
}

#[test]
fn unterminated_last_event_is_delivered_at_end_of_stream() {
    assert_eq!(
        parse_chunks(&[b"data: [DONE]"]),
        vec![event(None, "[DONE]")]
    );
    assert_eq!(
        parse_chunks(&[b"data: [DONE]\n"]),
        vec![event(None, "[DONE]")]
    );
}

#[test]
fn byte_order_mark_at_start_is_skipped() {
    assert_eq!(
        parse_chunks(&[b"\xEF\xBB\xBFdata: x\n\n"]),
        vec![event(None, "x")]
    );
}

#[test]
fn utf8_split_inside_a_character_survives() {
    let text = "data: \u{1F980} crab\n\n".as_bytes();
    assert_eq!(
        parse_chunks(&[&text[..8], &text[8..]]),
        vec![event(None, "\u{1F980} crab")]
    );
}
