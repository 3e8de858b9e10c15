use super::*;

fn change(path: &str, kind: FileChangeKind) -> FileChange {
    FileChange {
        path: path.into(),
        kind,
        moved_from: None,
        diff: String::new(),
    }
}

#[test]
fn summary_groups_added_then_modified_then_deleted() {
    let report = ApplyReport {
        changes: vec![
            change("gone.txt", FileChangeKind::Delete),
            change("edited.txt", FileChangeKind::Modify),
            change("new.txt", FileChangeKind::Add),
        ],
    };
    assert_eq!(
        report.summary(),
        "Success. Updated the following files:\nA new.txt\nM edited.txt\nD gone.txt\n"
    );
}
