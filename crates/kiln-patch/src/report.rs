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
#[path = "report_tests.rs"]
mod tests;
