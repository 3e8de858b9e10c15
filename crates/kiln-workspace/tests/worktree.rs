#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use kiln_workspace::{BaseCheckouts, GitError, Repo};
use support::repo_with_one_commit;

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

#[test]
fn without_copy_on_write_a_checkout_is_a_full_worktree_and_says_why() {
    // This test binary never called `overlay::enable`, as a process that
    // cannot mount would not.
    let origin = repo_with_one_commit();
    let repo = Repo::discover(origin.path()).unwrap();
    let place = tempfile::tempdir().unwrap();
    let bases = BaseCheckouts::new(place.path().join("bases"));
    let (wt, reason) = repo
        .add_checkout(&bases, "HEAD", "kiln/test/3", &place.path().join("wt"))
        .unwrap();
    assert!(!wt.is_copy_on_write());
    let reason = reason.expect("a reason for the full checkout");
    assert!(reason.contains("not enabled"), "{reason}");
    assert_eq!(
        std::fs::read_to_string(wt.path().join("a.txt")).unwrap(),
        "one\n"
    );
    assert!(!place.path().join("bases").exists(), "no base was built");
}

/// `len` bytes that do not compress and are not text (a xorshift stream).
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn a_diff_larger_than_the_cap_is_cut_there_and_says_so() {
    let origin = repo_with_one_commit();
    let repo = Repo::discover(origin.path()).unwrap();
    let place = tempfile::tempdir().unwrap();
    let wt = repo
        .add_worktree("HEAD", "kiln/test/big", &place.path().join("wt"))
        .unwrap();
    std::fs::write(wt.path().join("big.bin"), noise(4 * 1024 * 1024)).unwrap();
    let cap = 64 * 1024;

    let diff = wt.diff_against(wt.base_commit(), cap).unwrap();

    assert!(diff.cut, "a 4 MiB binary diff is more than {cap} bytes");
    assert!(diff.text.len() <= cap, "{} bytes kept", diff.text.len());
    assert!(
        diff.text.starts_with("diff --git a/big.bin"),
        "{}",
        &diff.text[..80]
    );
    assert_eq!(diff.files_changed, 1);

    std::fs::remove_file(wt.path().join("big.bin")).unwrap();
    std::fs::write(wt.path().join("a.txt"), "two\n").unwrap();
    let small = wt.diff_against(wt.base_commit(), cap).unwrap();
    assert!(!small.cut, "{}", small.text);
    assert!(small.text.contains("+two"), "{}", small.text);
    assert_eq!((small.insertions, small.deletions), (1, 1));
}
