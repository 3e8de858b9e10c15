use super::*;

fn frame(id: Option<&str>, event: &str, data: &str) -> SseFrame {
    SseFrame {
        id: id.map(str::to_string),
        event: event.to_string(),
        data: data.to_string(),
        retry: None,
    }
}

fn parse(stream: &[u8]) -> Vec<SseFrame> {
    SseParser::new().feed(stream).unwrap()
}

/// What kiln's server sends, with every kind of line end and a comment.
const STREAM: &[u8] = b": keep-alive\n\nid: 7\nevent: exec.begin\ndata: {\"a\":1}\n\n\
    id: 8\r\nevent: message\r\ndata: line one\r\ndata: line two\r\n\r\n\
    id: 9\revent: task.status\rdata: {}\r\r";

fn expected() -> Vec<SseFrame> {
    vec![
        frame(Some("7"), "exec.begin", "{\"a\":1}"),
        frame(Some("8"), "message", "line one\nline two"),
        frame(Some("9"), "task.status", "{}"),
    ]
}

#[test]
fn a_stream_split_at_any_byte_gives_the_same_frames() {
    for cut in 0..=STREAM.len() {
        let mut parser = SseParser::new();
        let mut frames = parser.feed(&STREAM[..cut]).unwrap();
        frames.extend(parser.feed(&STREAM[cut..]).unwrap());
        assert_eq!(frames, expected(), "cut at byte {cut}");
    }
}

#[test]
fn a_stream_fed_one_byte_at_a_time_gives_the_same_frames() {
    let mut parser = SseParser::new();
    let mut frames = Vec::new();
    for byte in STREAM {
        parser
            .feed_into(std::slice::from_ref(byte), &mut frames)
            .unwrap();
    }
    assert_eq!(frames, expected());
}

#[test]
fn a_frame_is_delivered_only_once_its_blank_line_arrives() {
    let mut parser = SseParser::new();
    assert!(parser.feed(b"event: x\ndata: {}\n").unwrap().is_empty());
    assert_eq!(parser.feed(b"\n").unwrap().len(), 1);
}

#[test]
fn a_crlf_split_between_chunks_is_one_line_end() {
    let mut parser = SseParser::new();
    assert!(parser.feed(b"data: a\r").unwrap().is_empty());
    // The LF completes the CR's line end; the next blank line dispatches.
    assert!(parser.feed(b"\ndata: b\r").unwrap().is_empty());
    let frames = parser.feed(b"\n\r\n").unwrap();
    assert_eq!(frames, [frame(None, "message", "a\nb")]);
}

#[test]
fn a_leading_bom_is_skipped_once_and_only_at_the_start() {
    let frames = parse(b"\xEF\xBB\xBFdata: one\n\n\xEF\xBB\xBFdata: two\n\n");
    // The second BOM starts a line whose field name is not `data`.
    assert_eq!(frames, [frame(None, "message", "one")]);
    let mut parser = SseParser::new();
    assert!(parser.feed(b"\xEF\xBB").unwrap().is_empty());
    assert_eq!(
        parser.feed(b"\xBFdata: x\n\n").unwrap(),
        [frame(None, "message", "x")]
    );
}

#[test]
fn fields_follow_the_standard() {
    let frames = parse(
        b": a comment\n\
          data\n\n\
          data:no space\ndata:  two spaces\n\n\
          event\ndata: x\n\n\
          unknown: field\nid: 5\n\n\
          data: after an id without data\n\n\
          id: bad\0id\ndata: y\n\n\
          id\ndata: z\n\n\
          event: only an event\n\n\
          data: last\n",
    );
    assert_eq!(
        frames,
        [
            // `data` without a colon is an empty data line: dispatched.
            frame(None, "message", ""),
            frame(None, "message", "no space\n two spaces"),
            frame(None, "message", "x"),
            // The id sticks across frames...
            frame(Some("5"), "message", "after an id without data"),
            // ...an id with NUL is ignored...
            frame(Some("5"), "message", "y"),
            // ...and an empty one resets it.
            frame(None, "message", "z"),
            // A frame without data is not dispatched, and an unterminated
            // one at the end of the stream is dropped.
        ]
    );
}

#[test]
fn retry_takes_digits_only() {
    let frames = parse(b"retry: 1500\ndata: a\n\nretry: 15x\ndata: b\n\nretry\ndata: c\n\n");
    assert_eq!(frames[0].retry, Some(1500));
    assert_eq!(frames[1].retry, None);
    assert_eq!(frames[2].retry, None);
    let huge = parse(b"retry: 99999999999999999999999\ndata: a\n\n");
    assert_eq!(huge[0].retry, Some(u64::MAX));
}

#[test]
fn invalid_utf8_becomes_replacement_characters_not_an_error() {
    let frames = parse(b"data: a\xFFb\n\n");
    assert_eq!(frames[0].data, "a\u{FFFD}b");
}

#[test]
fn a_utf8_character_split_between_chunks_stays_whole() {
    let text = "data: é\n\n".as_bytes();
    let mut parser = SseParser::new();
    let mut frames = parser.feed(&text[..7]).unwrap();
    frames.extend(parser.feed(&text[7..]).unwrap());
    assert_eq!(frames[0].data, "é");
}

#[test]
fn a_line_that_never_ends_is_refused_at_the_limit_without_buffering_more() {
    let mut parser = SseParser::with_max_frame_bytes(1024);
    let chunk = [b'a'; 100];
    let mut fed = 0;
    let error = loop {
        match parser.feed(&chunk) {
            Ok(frames) => assert!(frames.is_empty()),
            Err(error) => break error,
        }
        fed += chunk.len();
        assert!(fed <= 1024, "still accepting after {fed} bytes");
    };
    assert_eq!(error, SseError::FrameTooLarge { limit: 1024 });
    assert!(parser.line.capacity() <= 1024 + chunk.len());
    // It stays failed: the stream cannot be resynchronised.
    assert_eq!(parser.feed(b"\n\ndata: x\n\n"), Err(error.clone()));
    assert!(error.to_string().contains("1024 bytes"));
}

#[test]
fn many_short_data_lines_are_bounded_like_one_long_one() {
    let mut parser = SseParser::with_max_frame_bytes(1024);
    let result = (0..1000).try_for_each(|_| parser.feed(b"data: 0123456789\n").map(drop));
    assert_eq!(result, Err(SseError::FrameTooLarge { limit: 1024 }));
}

#[test]
fn the_limit_is_per_frame_not_per_stream() {
    let mut parser = SseParser::with_max_frame_bytes(64);
    let mut total = 0;
    for _ in 0..1000 {
        total += parser
            .feed(b"id: 1\nevent: e\ndata: 0123456789\n\n")
            .unwrap()
            .len();
    }
    assert_eq!(total, 1000);
}

#[test]
fn endless_comments_cost_nothing_and_are_not_refused() {
    let mut parser = SseParser::with_max_frame_bytes(64);
    for _ in 0..1000 {
        assert!(parser.feed(b": keep-alive\n").unwrap().is_empty());
    }
    assert_eq!(parser.feed(b"data: x\n\n").unwrap().len(), 1);
}

#[test]
fn the_last_event_id_is_kept_for_reconnecting() {
    let mut parser = SseParser::new();
    parser.feed(b"id: 41\ndata: a\n\nid: 42\n\n").unwrap();
    assert_eq!(parser.last_event_id(), Some("42"));
}
