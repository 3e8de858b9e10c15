use super::*;

fn patch(body: &str) -> String {
    format!("*** Begin Patch\n{body}*** End Patch\n")
}

fn error_of(text: &str) -> ParseError {
    parse(text).expect_err("the patch should be rejected")
}

#[test]
fn add_delete_and_update_hunks_are_parsed_in_order() {
    let text = patch(
        "*** Add File: new.txt\n+one\n+two\n*** Delete File: old.txt\n\
         *** Update File: src/lib.rs\n*** Move to: src/core.rs\n@@ fn main() {\n-a\n+b\n c\n",
    );
    let parsed = parse(&text).expect("valid patch");
    assert_eq!(parsed.hunks.len(), 3);
    assert_eq!(
        parsed.hunks[0],
        Hunk::Add {
            path: "new.txt".into(),
            contents: "one\ntwo\n".into(),
            line: 2
        }
    );
    assert_eq!(
        parsed.hunks[1],
        Hunk::Delete {
            path: "old.txt".into(),
            line: 5
        }
    );
    let Hunk::Update {
        path,
        move_to,
        chunks,
        ..
    } = &parsed.hunks[2]
    else {
        panic!("expected an update hunk");
    };
    assert_eq!(path, "src/lib.rs");
    assert_eq!(move_to.as_deref(), Some("src/core.rs"));
    assert_eq!(chunks[0].context.as_deref(), Some("fn main() {"));
    assert_eq!(
        chunks[0].lines,
        vec![
            ChunkLine::Remove("a".into()),
            ChunkLine::Add("b".into()),
            ChunkLine::Context("c".into())
        ]
    );
}

#[test]
fn first_chunk_may_omit_the_marker_but_later_ones_may_not() {
    let parsed = parse(&patch("*** Update File: f\n-a\n+b\n@@\n-c\n+d\n")).expect("valid");
    let Hunk::Update { chunks, .. } = &parsed.hunks[0] else {
        panic!("expected an update hunk");
    };
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].context, None);
}

#[test]
fn empty_line_in_chunk_is_empty_context() {
    let parsed = parse(&patch("*** Update File: f\n@@\n a\n\n-b\n")).expect("valid");
    let Hunk::Update { chunks, .. } = &parsed.hunks[0] else {
        panic!("expected an update hunk");
    };
    assert_eq!(chunks[0].lines[1], ChunkLine::Context(String::new()));
}

#[test]
fn end_of_file_marker_closes_the_chunk() {
    let parsed = parse(&patch("*** Update File: f\n@@\n-a\n+b\n*** End of File\n")).expect("ok");
    let Hunk::Update { chunks, .. } = &parsed.hunks[0] else {
        panic!("expected an update hunk");
    };
    assert!(chunks[0].end_of_file);
}

#[test]
fn markers_with_surrounding_whitespace_are_accepted() {
    let text = "  *** Begin Patch  \n  *** Add File: a.txt  \n+x\n*** End Patch   \n";
    let parsed = parse(text).expect("lenient markers");
    assert_eq!(parsed.hunks[0].path(), "a.txt");
}

#[test]
fn heredoc_wrapper_is_stripped_for_each_quoting() {
    for opener in ["<<EOF", "<<'EOF'", "<<\"EOF\""] {
        let text = format!("{opener}\n*** Begin Patch\n*** Delete File: a\n*** End Patch\nEOF\n");
        let parsed = parse(&text).unwrap_or_else(|error| panic!("{opener}: {error}"));
        assert_eq!(parsed.hunks[0].path(), "a");
    }
}

#[test]
fn whole_shell_heredoc_command_is_accepted() {
    let text = "apply_patch <<'EOF'\n*** Begin Patch\n*** Delete File: a\n*** End Patch\nEOF";
    assert_eq!(parse(text).expect("shell heredoc").hunks[0].path(), "a");
}

#[test]
fn crlf_patch_text_reads_like_lf() {
    let text = "*** Begin Patch\r\n*** Update File: f\r\n@@\r\n-a\r\n+b\r\n*** End Patch\r\n";
    let parsed = parse(text).expect("crlf patch");
    let Hunk::Update { chunks, .. } = &parsed.hunks[0] else {
        panic!("expected an update hunk");
    };
    assert_eq!(chunks[0].lines[0], ChunkLine::Remove("a".into()));
}

#[test]
fn empty_patch_is_an_error() {
    let error = error_of("*** Begin Patch\n*** End Patch\n");
    assert!(error.problem.contains("no hunks"), "{error}");
    assert_eq!(error.line, 2);
}

#[test]
fn blank_text_is_an_error() {
    assert!(error_of("  \n").problem.contains("empty"));
}

#[test]
fn missing_begin_marker_is_reported_on_its_line() {
    let error = error_of("\n\nhello\n*** End Patch\n");
    assert_eq!(error.line, 3);
    assert!(error.problem.contains("*** Begin Patch"), "{error}");
}

#[test]
fn missing_end_marker_is_an_error() {
    let error = error_of("*** Begin Patch\n*** Delete File: a\n");
    assert!(error.problem.contains("*** End Patch"), "{error}");
}

#[test]
fn unknown_hunk_header_names_the_valid_ones() {
    let error = error_of(&patch("*** Frobnicate File: a\n"));
    assert_eq!(error.line, 2);
    assert!(error.problem.contains("not a valid hunk header"), "{error}");
    assert!(error.problem.contains("*** Update File: "), "{error}");
}

#[test]
fn update_without_chunks_is_an_error() {
    let error = error_of(&patch("*** Update File: a\n*** Delete File: b\n"));
    assert!(error.problem.contains("has no chunks"), "{error}");
}

#[test]
fn second_chunk_without_marker_is_an_error() {
    let error = error_of(&patch("*** Update File: a\n@@\n-x\nstray\n"));
    assert_eq!(error.line, 5);
    assert!(error.problem.contains("expected `@@`"), "{error}");
}

#[test]
fn unexpected_line_at_chunk_start_is_an_error() {
    let error = error_of(&patch("*** Update File: a\n@@\nstray\n"));
    assert_eq!(error.line, 4);
    assert!(
        error.problem.contains("every chunk line starts with"),
        "{error}"
    );
}

#[test]
fn header_without_path_is_an_error() {
    let error = error_of(&patch("*** Delete File:   \n"));
    assert!(error.problem.contains("needs a path"), "{error}");
}

#[test]
fn indented_marker_inside_a_chunk_stays_context() {
    let parsed = parse(&patch("*** Update File: a\n@@\n *** End of File\n-x\n")).expect("ok");
    let Hunk::Update { chunks, .. } = &parsed.hunks[0] else {
        panic!("expected an update hunk");
    };
    assert!(!chunks[0].end_of_file);
    assert_eq!(
        chunks[0].lines[0],
        ChunkLine::Context("*** End of File".into())
    );
}

#[test]
fn unprefixed_line_after_add_file_hints_at_the_plus() {
    let error = error_of(&patch("*** Add File: a.txt\n+one\ntwo\n"));
    assert_eq!(error.line, 4);
    assert!(
        error
            .problem
            .contains("every line of an added file starts with `+`"),
        "{error}"
    );
}
