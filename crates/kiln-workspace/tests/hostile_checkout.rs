//! An agent writes every file of its checkout, `.git` included, and kiln's
//! own git then runs on the host: these are the attacks on that git.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kiln_workspace::Repo;
use support::{git, plant_hostile_repositories, repo_with_one_commit, tripwire};

#[test]
fn diff_and_commit_run_nothing_the_agent_planted_in_the_checkout() {
    let origin = repo_with_one_commit();
    let repo = Repo::discover(origin.path()).unwrap();
    let place = tempfile::tempdir().unwrap();
    let wt = repo
        .add_worktree("HEAD", "kiln/hostile/1", &place.path().join("wt"))
        .unwrap();
    let marker = place.path().join("host-code-ran");
    std::fs::write(wt.path().join("a.txt"), "the agent's edit\n").unwrap();
    let script = tripwire(wt.path(), "payload.sh", &marker);
    plant_hostile_repositories(wt.path(), &script);

    let diff = wt.diff();
    let stat = wt.diff_stat();
    let commit = wt.commit_all("kiln: hostile");

    assert!(
        !marker.exists(),
        "kiln's git ran a command the agent configured in its checkout"
    );
    let (diff, stat, commit) = (diff.unwrap(), stat.unwrap(), commit.unwrap());
    assert!(diff.contains("+the agent's edit"), "{diff}");
    assert!(stat.contains("a.txt"), "{stat}");
    let commit = commit.expect("the agent's edit is committed");
    assert_eq!(repo.resolve("kiln/hostile/1").unwrap(), commit);
    let files = git(origin.path(), &["ls-tree", "-r", "--name-only", &commit]);
    assert!(files.lines().any(|f| f == "a.txt"), "{files}");
    assert!(files.lines().any(|f| f == "new/kept.txt"), "{files}");
    assert!(!files.contains("new/empty"), "{files}");
    // A nested repository is never entered, nor recorded as a gitlink.
    assert!(!diff.contains("sub"), "{diff}");
    let entries = git(origin.path(), &["ls-tree", "-r", &commit]);
    assert!(!entries.contains("160000"), "{entries}");
}

#[test]
fn discarding_a_checkout_never_deletes_where_its_git_file_points() {
    let origin = repo_with_one_commit();
    let repo = Repo::discover(origin.path()).unwrap();
    let place = tempfile::tempdir().unwrap();
    let dest = place.path().join("checkouts").join("wt");
    let wt = repo.add_worktree("HEAD", "kiln/hostile/2", &dest).unwrap();
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("precious"), "keep me\n").unwrap();
    std::fs::write(
        wt.path().join(".git"),
        format!("gitdir: {}\n", victim.path().display()),
    )
    .unwrap();

    let _ = repo.discard_checkout(&dest);

    assert!(
        victim.path().join("precious").exists(),
        "discarding the checkout deleted the directory its .git file named"
    );
}

#[test]
fn diff_still_works_when_the_git_file_points_elsewhere() {
    let origin = repo_with_one_commit();
    let repo = Repo::discover(origin.path()).unwrap();
    let place = tempfile::tempdir().unwrap();
    let wt = repo
        .add_worktree("HEAD", "kiln/hostile/3", &place.path().join("wt"))
        .unwrap();
    let elsewhere = repo_with_one_commit();
    std::fs::write(
        wt.path().join(".git"),
        format!("gitdir: {}\n", elsewhere.path().join(".git").display()),
    )
    .unwrap();
    std::fs::write(wt.path().join("a.txt"), "two\n").unwrap();

    let commit = wt.commit_all("kiln: change").unwrap().expect("a commit");

    assert_eq!(repo.resolve("kiln/hostile/3").unwrap(), commit);
    // The repository the `.git` file names is untouched.
    let log = git(elsewhere.path(), &["log", "--oneline"]);
    assert_eq!(log.lines().count(), 1, "{log}");
}
