use std::path::Path;
use std::process::Command;

use kiln_workspace::{GitError, Repo};

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

fn repo_with_one_commit() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    std::fs::write(dir.path().join("a.txt"), "one\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-qm", "init"]);
    dir
}

#[test]
fn worktree_changes_are_committed_on_their_own_branch() {
    let origin = repo_with_one_commit();
    let repo = Repo::discover(origin.path()).unwrap();
    let place = tempfile::tempdir().unwrap();
    let wt = repo
        .add_worktree("HEAD", "kiln/test/1", &place.path().join("wt"))
        .unwrap();
    std::fs::write(wt.path().join("a.txt"), "two\n").unwrap();
    std::fs::write(wt.path().join("new.txt"), "fresh\n").unwrap();

    let diff = wt.diff().unwrap();
    assert!(diff.contains("-one") && diff.contains("+two"), "{diff}");
    assert!(
        diff.contains("+++ b/new.txt"),
        "untracked files belong in the diff: {diff}"
    );

    let commit = wt.commit_all("kiln: change").unwrap().expect("a commit");
    let on_branch = repo.resolve("kiln/test/1").unwrap();
    assert_eq!(commit, on_branch);
    // The user's own checkout is untouched.
    assert_eq!(
        std::fs::read_to_string(origin.path().join("a.txt")).unwrap(),
        "one\n"
    );
}

#[test]
fn commit_without_changes_is_none() {
    let origin = repo_with_one_commit();
    let repo = Repo::discover(origin.path()).unwrap();
    let place = tempfile::tempdir().unwrap();
    let wt = repo
        .add_worktree("HEAD", "kiln/test/2", &place.path().join("wt"))
        .unwrap();
    assert_eq!(wt.commit_all("nothing").unwrap(), None);
    wt.remove().unwrap();
    assert!(!place.path().join("wt").exists());
}

#[test]
fn a_plain_directory_is_not_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    let err = Repo::discover(dir.path()).unwrap_err();
    assert!(matches!(err, GitError::NotARepository { .. }), "{err}");
    assert!(err.to_string().contains("git init"));
}
