use super::*;
use crate::parser::{parse, Hunk};

fn chunks_of(body: &str) -> Vec<Chunk> {
    let text = format!("*** Begin Patch\n*** Update File: f\n{body}*** End Patch\n");
    match parse(&text).expect("valid patch").hunks.remove(0) {
        Hunk::Update { chunks, .. } => chunks,
        other => panic!("expected an update hunk, got {other:?}"),
    }
}

fn updated(original: &str, body: &str) -> String {
    let chunks = chunks_of(body);
    let updated = apply_chunks("f", original, &chunks).expect("chunks apply");
    // The diff built from the changed regions must equal a whole-file diff.
    // (The diff shows lines without their `\r`.)
    let (old, new) = (
        original.replace("\r\n", "\n"),
        updated.text.replace("\r\n", "\n"),
    );
    let whole = crate::diff::unified_diff("f", "f", old.as_bytes(), new.as_bytes());
    assert_eq!(updated.diff("f", "f"), whole);
    updated.text
}

#[test]
fn crlf_file_gets_crlf_new_lines() {
    assert_eq!(
        updated("a\r\nb\r\nc\r\n", "@@\n a\n-b\n+B\n+B2\n"),
        "a\r\nB\r\nB2\r\nc\r\n"
    );
}

#[test]
fn missing_final_newline_is_kept_when_last_line_is_untouched() {
    assert_eq!(updated("a\nb\nc", "@@\n-a\n+A\n"), "A\nb\nc");
}

#[test]
fn touching_the_last_line_adds_the_final_newline() {
    assert_eq!(updated("a\nb\nc", "@@\n b\n-c\n+C\n"), "a\nb\nC\n");
}

#[test]
fn append_only_chunk_goes_to_the_end() {
    assert_eq!(updated("a\nb", "@@\n+c\n"), "a\nb\nc\n");
    assert_eq!(updated("a\n\n", "@@\n+c\n"), "a\nc\n\n");
}

#[test]
fn context_lines_keep_the_file_text_on_loose_match() {
    assert_eq!(
        updated("    x = 1  \ny\n", "@@\n x = 1\n-y\n+z\n"),
        "    x = 1  \nz\n"
    );
}

#[test]
fn context_marker_seeks_before_the_chunk() {
    let original = "fn a() {\n    ret\n}\nfn b() {\n    ret\n}\n";
    let result = updated(original, "@@ fn b() {\n-    ret\n+    done\n");
    assert_eq!(result, "fn a() {\n    ret\n}\nfn b() {\n    done\n}\n");
}

#[test]
fn trailing_empty_context_line_the_file_lacks_is_dropped() {
    assert_eq!(updated("a\nb", "@@\n-b\n+c\n\n"), "a\nc\n");
}

#[test]
fn chunks_apply_in_file_order() {
    let result = updated("1\n2\n3\n4\n", "@@\n-1\n+one\n@@\n-3\n+three\n");
    assert_eq!(result, "one\n2\nthree\n4\n");
}

#[test]
fn chunk_before_the_previous_one_is_not_found_and_says_so() {
    let chunks = chunks_of("@@\n-3\n+c\n@@\n-1\n+a\n");
    let Err(error) = apply_chunks("f", "1\n2\n3\n", &chunks) else {
        panic!("out of order chunks should fail");
    };
    let message = error.to_string();
    assert!(message.contains("chunk 2 of `f`"), "{message}");
    assert!(
        message.contains("chunks must follow the file's order"),
        "{message}"
    );
}

#[test]
fn not_found_error_shows_near_miss_with_line_numbers() {
    let chunks = chunks_of("@@\n-let x = 2;\n+y\n");
    let Err(error) = apply_chunks("f", "a\nlet x = 1;\nb\n", &chunks) else {
        panic!("mismatch should fail");
    };
    let message = error.to_string();
    assert!(message.contains("     2 | let x = 1;"), "{message}");
    assert!(
        message.contains("re-read the file and regenerate the chunk"),
        "{message}"
    );
}

#[test]
fn missing_context_line_is_named() {
    let chunks = chunks_of("@@ fn nowhere()\n-a\n+b\n");
    let Err(error) = apply_chunks("f", "a\n", &chunks) else {
        panic!("missing context should fail");
    };
    assert!(
        error
            .to_string()
            .contains("`@@` context line `fn nowhere()`"),
        "{error}"
    );
}

#[test]
fn deleting_every_line_leaves_an_empty_file() {
    assert_eq!(updated("a\nb\n", "@@\n-a\n-b\n"), "");
}

#[test]
fn context_marker_repeated_as_first_context_line_still_applies() {
    let original = "def a():\n    pass\n\ndef b():\n    pass\n";
    let result = updated(
        original,
        "@@ def b():\n def b():\n-    pass\n+    return 2\n",
    );
    assert_eq!(result, "def a():\n    pass\n\ndef b():\n    return 2\n");
}
