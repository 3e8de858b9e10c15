//! Property: the patch generated from random edits of a random file applies back to
//! exactly the edited file (LF and CRLF, with and without a final newline).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/roundtrip.rs"]
mod roundtrip;

use proptest::prelude::*;
use roundtrip::{build, RawEdit};

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        // Few distinct short lines, so that files repeat themselves a lot.
        "[ab]{1,2}",
        Just(String::new()),
        "fn [a-c]\\(\\) \\{",
        "    [a-z ]{0,6}",
        "[a-z\u{2014}\u{201C}\u{201D} ]{1,12}",
    ]
}

fn raw_edit() -> impl Strategy<Value = RawEdit> {
    (0usize..200, 0usize..5, prop::collection::vec(line(), 0..4)).prop_map(
        |(start, delete, insert)| RawEdit {
            start,
            delete,
            insert,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Integration tests have no source directory for proptest's regression files.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_patch_applies_back_to_the_edited_file(
        lines in prop::collection::vec(line(), 0..60),
        edits in prop::collection::vec(raw_edit(), 1..8),
        crlf in any::<bool>(),
        final_newline in any::<bool>(),
    ) {
        let case = build(&lines, &edits, crlf, final_newline);
        prop_assume!(case.is_some());
        let case = case.expect("checked above");
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f.txt");
        std::fs::write(&file, &case.original).expect("write original");
        let report = kiln_patch::apply(dir.path(), &case.patch)
            .map_err(|error| TestCaseError::fail(format!("{error}\npatch:\n{}", case.patch)))?;
        prop_assert_eq!(report.changes.len(), 1);
        let result = std::fs::read_to_string(&file).expect("read result");
        prop_assert_eq!(&result, &case.expected, "patch:\n{}", case.patch);
        let diff = &report.changes[0].diff;
        let replayed = replay_unified_diff(&case.original.replace("\r\n", "\n"), diff)
            .map_err(|problem| TestCaseError::fail(format!("{problem}\ndiff:\n{diff}")))?;
        prop_assert_eq!(replayed, result.replace("\r\n", "\n"), "diff:\n{}", diff);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in "(\\*\\*\\* [A-Za-z ]{0,20}: ?[a-z]{0,3}\n|[ +\\-@]{0,3}[a-z]{0,3}\n|\n){0,12}") {
        let _ = kiln_patch::parse(&format!("*** Begin Patch\n{text}*** End Patch"));
    }
}

/// Applies a unified diff to `old` strictly (every context and removed line must be
/// where the hunk header says), as an independent check of the reported diff.
fn replay_unified_diff(old: &str, diff: &str) -> Result<String, String> {
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let mut out = String::new();
    let mut position = 0;
    let mut last_pushed_old: Option<bool> = None;
    for line in diff.lines() {
        if line.starts_with("--- ") || line.starts_with("+++ ") {
            continue;
        }
        let Some(header) = line.strip_prefix("@@ -") else {
            if line.starts_with("\\") {
                // The previous line had no newline: remove the one we added.
                if out.ends_with('\n') && last_pushed_old.is_some() {
                    out.pop();
                }
                continue;
            }
            let (tag, text) = line.split_at(1);
            match tag {
                " " | "-" => {
                    let expected = old_lines.get(position).ok_or("diff runs past the file")?;
                    if expected.trim_end_matches('\n') != text {
                        return Err(format!(
                            "line {} is `{expected}`, diff says `{text}`",
                            position + 1
                        ));
                    }
                    if tag == " " {
                        out.push_str(text);
                        out.push('\n');
                        last_pushed_old = Some(true);
                    } else {
                        last_pushed_old = None;
                    }
                    position += 1;
                }
                "+" => {
                    out.push_str(text);
                    out.push('\n');
                    last_pushed_old = Some(false);
                }
                _ => return Err(format!("unexpected diff line `{line}`")),
            }
            continue;
        };
        let range = header.split(' ').next().ok_or("bad hunk header")?;
        let (start, len) = range.split_once(',').unwrap_or((range, "1"));
        let start: usize = start.parse().map_err(|_| "bad hunk start")?;
        let len: usize = len.parse().map_err(|_| "bad hunk length")?;
        // 1-based, except that an empty range names the line before it.
        let start = if len == 0 { start } else { start - 1 };
        if start < position {
            return Err(format!(
                "hunk at line {} overlaps the previous one",
                start + 1
            ));
        }
        for line in &old_lines[position..start] {
            out.push_str(line);
        }
        position = start;
    }
    for line in &old_lines[position..] {
        out.push_str(line);
    }
    Ok(out)
}
