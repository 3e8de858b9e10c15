//! Library behaviour that the scenario data cannot express: file modes, the
//! two-step plan/commit, the structured report, and rollback during a commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use kiln_protocol::FileChangeKind;

fn mode_of(path: &std::path::Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn updated_file_keeps_its_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("run.sh");
    fs::write(&script, "echo a\n").expect("write");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o750)).expect("chmod");
    let patch = "*** Begin Patch\n*** Update File: run.sh\n@@\n-echo a\n+echo b\n*** End Patch";
    kiln_patch::apply(dir.path(), patch).expect("applies");
    assert_eq!(fs::read_to_string(&script).expect("read"), "echo b\n");
    assert_eq!(mode_of(&script), 0o750);
}

#[test]
fn moved_file_keeps_the_source_mode_and_reports_the_move() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("tool.sh");
    fs::write(&source, "v1\n").expect("write");
    fs::set_permissions(&source, fs::Permissions::from_mode(0o755)).expect("chmod");
    let patch = "*** Begin Patch\n*** Update File: tool.sh\n*** Move to: bin/tool\n@@\n-v1\n+v2\n*** End Patch";
    let report = kiln_patch::apply(dir.path(), patch).expect("applies");
    let moved = dir.path().join("bin/tool");
    assert!(!source.exists());
    assert_eq!(mode_of(&moved), 0o755);
    let change = &report.changes[0];
    assert_eq!(change.kind, FileChangeKind::Modify);
    assert_eq!(change.path, "bin/tool");
    assert_eq!(change.moved_from.as_deref(), Some("tool.sh"));
    assert!(
        change.diff.starts_with("--- a/tool.sh\n+++ b/bin/tool\n"),
        "{}",
        change.diff
    );
    assert!(change.diff.contains("-v1\n+v2\n"), "{}", change.diff);
}

#[test]
fn plan_validates_without_writing_and_commit_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("a.txt"), "a\n").expect("write");
    let patch = kiln_patch::parse(
        "*** Begin Patch\n*** Update File: a.txt\n@@\n-a\n+b\n*** Add File: c.txt\n+c\n*** End Patch",
    )
    .expect("parses");
    let plan = patch.plan(dir.path()).expect("plans");
    assert_eq!(plan.changes().len(), 2);
    assert_eq!(
        fs::read_to_string(dir.path().join("a.txt")).expect("read"),
        "a\n"
    );
    assert!(!dir.path().join("c.txt").exists());
    let report = plan.commit().expect("commits");
    assert_eq!(
        fs::read_to_string(dir.path().join("a.txt")).expect("read"),
        "b\n"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("c.txt")).expect("read"),
        "c\n"
    );
    assert_eq!(
        report.summary(),
        "Success. Updated the following files:\nA c.txt\nM a.txt\n"
    );
}

#[test]
fn commit_failing_midway_restores_the_files_it_already_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("a.txt"), "a\n").expect("write");
    fs::create_dir(dir.path().join("sub")).expect("mkdir");
    fs::write(dir.path().join("sub/b.txt"), "b\n").expect("write");
    let patch = kiln_patch::parse(
        "*** Begin Patch\n*** Update File: a.txt\n@@\n-a\n+A\n\
         *** Update File: sub/b.txt\n@@\n-b\n+B\n*** End Patch",
    )
    .expect("parses");
    let plan = patch.plan(dir.path()).expect("plans");
    // The second file disappears between planning and committing.
    fs::remove_dir_all(dir.path().join("sub")).expect("remove sub");
    let error = plan.commit().expect_err("commit must fail");
    assert!(error.to_string().contains("sub/b.txt"), "{error}");
    assert_eq!(
        fs::read_to_string(dir.path().join("a.txt")).expect("read"),
        "a\n"
    );
    let names: Vec<String> = fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        vec!["a.txt".to_string()],
        "no temporary files or directories left"
    );
}

#[test]
fn parse_errors_are_told_apart_from_apply_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parse_error = kiln_patch::apply(dir.path(), "nonsense").expect_err("invalid");
    assert!(parse_error.is_parse_error());
    let apply_error = kiln_patch::apply(
        dir.path(),
        "*** Begin Patch\n*** Delete File: missing.txt\n*** End Patch",
    )
    .expect_err("missing file");
    assert!(!apply_error.is_parse_error());
}

#[test]
fn add_reports_a_diff_of_the_new_contents() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = kiln_patch::apply(
        dir.path(),
        "*** Begin Patch\n*** Add File: n.txt\n+one\n+two\n*** End Patch",
    )
    .expect("applies");
    let change = &report.changes[0];
    assert_eq!(change.kind, FileChangeKind::Add);
    assert!(change.diff.contains("+one\n+two\n"), "{}", change.diff);
}
