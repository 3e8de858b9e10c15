//! Fixture repositories are real git repositories with one commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use kiln_testkit::fixtures;

fn run(cwd: &std::path::Path, program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn calc_py_is_a_committed_repo_with_a_failing_test() {
    let repo = fixtures::repo("calc-py");
    let log = run(repo.path(), "git", &["log", "--format=%an <%ae>|%s"]);
    assert_eq!(
        String::from_utf8_lossy(&log.stdout).trim(),
        "kiln fixtures <fixtures@kiln.invalid>|fixture calc-py"
    );
    let status = run(repo.path(), "git", &["status", "--porcelain"]);
    assert!(status.stdout.is_empty(), "clean work tree");
    assert!(repo.path().join("AGENTS.md").is_file());

    let tests = run(repo.path(), "python3", &["-m", "unittest", "-q"]);
    assert!(
        !tests.status.success(),
        "the fixture's bug makes the tests fail"
    );
    let stderr = String::from_utf8_lossy(&tests.stderr);
    assert!(stderr.contains("test_median_of_even_length"), "{stderr}");
    let after = run(repo.path(), "git", &["status", "--porcelain"]);
    assert!(
        after.stdout.is_empty(),
        "byte-code caches are ignored: {}",
        String::from_utf8_lossy(&after.stdout)
    );
}

#[test]
fn fixture_commits_are_reproducible() {
    let head = |dir: &std::path::Path| run(dir, "git", &["rev-parse", "HEAD"]).stdout;
    let first = fixtures::repo("calc-py");
    let second = fixtures::repo("calc-py");
    assert_eq!(head(first.path()), head(second.path()));
}

#[test]
fn missing_fixture_is_an_error_naming_it() {
    let error = fixtures::try_repo("no-such-fixture").unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("no-such-fixture") && message.contains("add the fixture"),
        "{message}"
    );
}
