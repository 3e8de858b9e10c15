//! Property: the patch generated from random edits of a random file applies back to
//! exactly the edited file (LF and CRLF, with and without a final newline).

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
        prop_assert_eq!(result, case.expected, "patch:\n{}", case.patch);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in "(\\*\\*\\* [A-Za-z ]{0,20}: ?[a-z]{0,3}\n|[ +\\-@]{0,3}[a-z]{0,3}\n|\n){0,12}") {
        let _ = kiln_patch::parse(&format!("*** Begin Patch\n{text}*** End Patch"));
    }
}
