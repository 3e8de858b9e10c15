//! What an applied patch changed.

use kiln_protocol::{FileChange, FileChangeKind};

/// The result of a successful apply: one change per hunk, in patch order.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyReport {
    pub changes: Vec<FileChange>,
}

impl ApplyReport {
    /// The summary apply_patch prints: `Success. Updated the following files:`, then
    /// `A path` lines, `M path` lines (a moved file under its destination) and
    /// `D path` lines, each group in patch order.
    pub fn summary(&self) -> String {
        let mut summary = String::from("Success. Updated the following files:\n");
        for (kind, letter) in [
            (FileChangeKind::Add, 'A'),
            (FileChangeKind::Modify, 'M'),
            (FileChangeKind::Delete, 'D'),
        ] {
            for change in self.changes.iter().filter(|change| change.kind == kind) {
                summary.push(letter);
                summary.push(' ');
                summary.push_str(&change.path);
                summary.push('\n');
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
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
}
