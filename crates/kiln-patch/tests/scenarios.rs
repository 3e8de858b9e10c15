//! Runs every case of the scenario suite (`tests/fixtures/scenarios`) through the library.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/scenarios.rs"]
mod scenarios;

use scenarios::{load_all, Scenario};

/// Applies one case; returns what went wrong, if anything.
fn run(scenario: &Scenario) -> Result<(), String> {
    let prepared = scenario.prepare();
    let outcome = kiln_patch::apply(&prepared.root, &scenario.patch);
    match (&scenario.expected_error, outcome) {
        (None, Ok(report)) => {
            if let Some(summary) = &scenario.expected_summary {
                if &report.summary() != summary {
                    return Err(format!("summary was\n{}", report.summary()));
                }
            }
            let modified = report
                .changes
                .iter()
                .filter(|change| change.kind == kiln_protocol::FileChangeKind::Modify);
            if let Some(change) = modified
                .into_iter()
                .find(|change| !change.diff.contains("\n@@ -"))
            {
                return Err(format!("a modification has no diff hunk: {change:?}"));
            }
        }
        (None, Err(error)) => return Err(format!("expected success, got: {error}")),
        (Some(expected), Ok(report)) => {
            return Err(format!(
                "expected error `{expected}`, got success:\n{}",
                report.summary()
            ))
        }
        (Some(expected), Err(error)) => {
            let message = error.to_string();
            if !message.contains(expected.as_str()) {
                return Err(format!("error does not contain `{expected}`:\n{message}"));
            }
        }
    }
    scenario.check_tree(&prepared)
}

#[test]
fn every_scenario_gives_the_expected_tree_through_the_library() {
    let scenarios = load_all();
    assert!(
        scenarios.len() >= 40,
        "only {} scenarios found",
        scenarios.len()
    );
    let failures: Vec<String> = scenarios
        .iter()
        .filter_map(|scenario| {
            run(scenario)
                .err()
                .map(|why| format!("[{}] {why}", scenario.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n\n")
    );
}

#[test]
fn plan_without_commit_changes_nothing() {
    for scenario in load_all().iter().filter(|s| s.expected_error.is_none()) {
        let prepared = scenario.prepare();
        let patch = kiln_patch::parse(&scenario.patch).expect("scenario patch parses");
        let plan = patch.plan(&prepared.root).expect("scenario plans");
        assert!(
            !plan.changes().is_empty(),
            "[{}] plan has no changes",
            scenario.name
        );
        // The tree must still be the input: compare by re-preparing a pristine copy.
        let pristine = scenario.prepare();
        assert_eq!(
            tree_listing(&prepared.root),
            tree_listing(&pristine.root),
            "[{}] planning wrote to disk",
            scenario.name
        );
    }
}

fn tree_listing(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let name = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let metadata = std::fs::symlink_metadata(&path).expect("metadata");
            if metadata.is_dir() {
                stack.push(path);
                entries.push((name, Vec::new()));
            } else if metadata.is_file() {
                entries.push((name, std::fs::read(&path).expect("read")));
            } else {
                entries.push((name, b"symlink".to_vec()));
            }
        }
    }
    entries.sort();
    entries
}
