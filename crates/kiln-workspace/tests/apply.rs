//! An attempt's commit applied in a user's clone: clean, conflicting,
//! onto a moved base, over the user's own changes, and as a branch.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::path::Path;

use kiln_workspace::{
    apply, create_branch, preflight, ApplyError, BranchOutcome, ConflictKind, Repo,
};
use support::git;

/// A clone on `main` with `a.txt`, `b.txt`, `c.txt`, and the attempt's
/// commit made on top of it on branch `kiln/t/1` (a.txt changed, c.txt
/// deleted, new.txt added). Returns (clone, base, commit).
fn clone_with_attempt() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q"]);
    std::fs::write(root.join("a.txt"), "one\ntwo\nthree\nfour\nfive\n").unwrap();
    std::fs::write(root.join("b.txt"), "bee\n").unwrap();
    std::fs::write(root.join("c.txt"), "sea\n").unwrap();
    git(root, &["add", "."]);
    git(root, &["commit", "-qm", "base"]);
    let base = git(root, &["rev-parse", "HEAD"]).trim().to_string();
    git(root, &["checkout", "-qb", "kiln/t/1"]);
    std::fs::write(root.join("a.txt"), "one\nTWO\nthree\nfour\nfive\n").unwrap();
    std::fs::write(root.join("new.txt"), "fresh\n").unwrap();
    git(root, &["rm", "-q", "c.txt"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-qm", "attempt"]);
    let commit = git(root, &["rev-parse", "HEAD"]).trim().to_string();
    git(root, &["checkout", "-q", "main"]);
    (dir, base, commit)
}

/// Everything a user could see change: status, HEAD, the branches, the
/// index, and every file's content.
fn observable(root: &Path) -> String {
    let mut out = git(root, &["status", "--porcelain=v1", "--untracked-files=all"]);
    out.push_str(&git(root, &["rev-parse", "HEAD"]));
    out.push_str(&git(root, &["for-each-ref"]));
    out.push_str(&git(root, &["ls-files", "--stage"]));
    let mut files: Vec<_> = walk(root);
    files.sort();
    for file in files {
        out.push_str(&format!(
            "{}={:?}\n",
            file.strip_prefix(root).unwrap().display(),
            std::fs::read(&file).unwrap()
        ));
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == ".git") {
            continue;
        }
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn read(root: &Path, name: &str) -> String {
    std::fs::read_to_string(root.join(name)).unwrap()
}

#[test]
fn on_its_own_base_the_change_is_applied_and_staged() {
    let (dir, base, commit) = clone_with_attempt();
    let repo = Repo::discover(dir.path()).unwrap();
    let applied = apply(&repo, &base, &commit).unwrap();
    assert!(!applied.preflight.base_moved);
    assert_eq!(applied.preflight.files, ["a.txt", "c.txt", "new.txt"]);
    assert_eq!(read(dir.path(), "a.txt"), "one\nTWO\nthree\nfour\nfive\n");
    assert_eq!(read(dir.path(), "new.txt"), "fresh\n");
    assert!(!dir.path().join("c.txt").exists());
    // Staged, as `git cherry-pick --no-commit` leaves it; nothing committed.
    let status = git(dir.path(), &["status", "--porcelain=v1"]);
    assert_eq!(status, "M  a.txt\nD  c.txt\nA  new.txt\n", "{status}");
    assert_eq!(git(dir.path(), &["rev-parse", "HEAD"]).trim(), base);
    let staged = git(dir.path(), &["diff", "--cached", "--stat", &commit]);
    assert!(
        staged.is_empty(),
        "the index is the attempt's tree: {staged}"
    );
}

#[test]
fn onto_a_moved_base_the_change_is_merged_three_way() {
    let (dir, base, commit) = clone_with_attempt();
    let root = dir.path();
    // Upstream moved on: another line of a.txt and b.txt changed.
    std::fs::write(
        root.join("a.txt"),
        "one\ntwo\nthree\nfour\nfive, upstream\n",
    )
    .unwrap();
    std::fs::write(root.join("b.txt"), "bee, upstream\n").unwrap();
    git(root, &["commit", "-qam", "upstream"]);
    let head = git(root, &["rev-parse", "HEAD"]).trim().to_string();

    let repo = Repo::discover(root).unwrap();
    let applied = apply(&repo, &base, &commit).unwrap();
    assert!(applied.preflight.base_moved);
    assert_eq!(
        read(root, "a.txt"),
        "one\nTWO\nthree\nfour\nfive, upstream\n"
    );
    assert_eq!(read(root, "b.txt"), "bee, upstream\n");
    assert_eq!(read(root, "new.txt"), "fresh\n");
    assert!(!root.join("c.txt").exists());
    assert_eq!(git(root, &["rev-parse", "HEAD"]).trim(), head);
    assert_eq!(
        git(root, &["status", "--porcelain=v1"]),
        "M  a.txt\nD  c.txt\nA  new.txt\n"
    );
}

#[test]
fn conflicts_are_all_named_and_nothing_changes() {
    let (dir, base, commit) = clone_with_attempt();
    let root = dir.path();
    std::fs::write(root.join("a.txt"), "one\nzwei\nthree\nfour\nfive\n").unwrap();
    std::fs::write(root.join("c.txt"), "sea, changed upstream\n").unwrap();
    std::fs::write(root.join("new.txt"), "another new file\n").unwrap();
    git(root, &["add", "."]);
    git(root, &["commit", "-qm", "upstream"]);
    // An unrelated local change must survive the refusal too.
    std::fs::write(root.join("b.txt"), "bee, mine\n").unwrap();
    let before = observable(root);

    let repo = Repo::discover(root).unwrap();
    let check = preflight(&repo, &base, &commit).unwrap();
    let named: Vec<&str> = check.conflicts.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(named, ["a.txt", "c.txt", "new.txt"]);
    assert!(check
        .conflicts
        .iter()
        .all(|c| matches!(&c.kind, ConflictKind::Merge(m) if m.starts_with("CONFLICT"))));
    assert_eq!(observable(root), before, "the preflight changed something");

    let err = apply(&repo, &base, &commit).unwrap_err();
    let text = err.to_string();
    for name in ["a.txt", "c.txt", "new.txt", "nothing was changed"] {
        assert!(text.contains(name), "{text}");
    }
    assert_eq!(
        observable(root),
        before,
        "a refused apply changed something"
    );
}

#[test]
fn a_dirty_file_the_attempt_changes_is_refused_and_named() {
    let (dir, base, commit) = clone_with_attempt();
    let root = dir.path();
    std::fs::write(root.join("a.txt"), "one\ntwo\nthree\nfour\nfive\nmine\n").unwrap();
    // Staged but uncommitted counts as well; an untracked file where the
    // attempt writes, too.
    std::fs::write(root.join("c.txt"), "sea, staged\n").unwrap();
    git(root, &["add", "c.txt"]);
    std::fs::write(root.join("new.txt"), "my own new file\n").unwrap();
    let before = observable(root);

    let repo = Repo::discover(root).unwrap();
    let err = apply(&repo, &base, &commit).unwrap_err();
    let ApplyError::Conflicts(conflicts) = &err else {
        panic!("{err}");
    };
    let kinds: Vec<(&str, &ConflictKind)> = conflicts
        .iter()
        .map(|c| (c.path.as_str(), &c.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "a.txt",
                &ConflictKind::Uncommitted {
                    changed_by_attempt: None
                }
            ),
            (
                "c.txt",
                &ConflictKind::Uncommitted {
                    changed_by_attempt: None
                }
            ),
            (
                "new.txt",
                &ConflictKind::Untracked {
                    changed_by_attempt: None
                }
            ),
        ]
    );
    assert!(err.to_string().contains("commit or stash"), "{err}");
    assert_eq!(observable(root), before);
}

#[test]
fn an_ignored_file_where_the_attempt_writes_is_refused() {
    let (dir, base, commit) = clone_with_attempt();
    let root = dir.path();
    std::fs::write(root.join(".git/info/exclude"), "new.txt\n").unwrap();
    std::fs::write(root.join("new.txt"), "ignored, but mine\n").unwrap();
    let before = observable(root);
    let repo = Repo::discover(root).unwrap();
    let err = apply(&repo, &base, &commit).unwrap_err();
    let ApplyError::Conflicts(conflicts) = &err else {
        panic!("{err}");
    };
    assert_eq!(conflicts.len(), 1, "{err}");
    assert_eq!(
        (conflicts[0].path.as_str(), &conflicts[0].kind),
        ("new.txt", &ConflictKind::InTheWay)
    );
    assert_eq!(observable(root), before);
}

#[test]
fn local_changes_to_other_files_are_kept() {
    let (dir, base, commit) = clone_with_attempt();
    let root = dir.path();
    std::fs::write(root.join("b.txt"), "bee, mine\n").unwrap();
    std::fs::write(root.join("notes.txt"), "scratch\n").unwrap();
    let repo = Repo::discover(root).unwrap();
    apply(&repo, &base, &commit).unwrap();
    assert_eq!(read(root, "b.txt"), "bee, mine\n");
    assert_eq!(read(root, "notes.txt"), "scratch\n");
    assert_eq!(read(root, "a.txt"), "one\nTWO\nthree\nfour\nfive\n");
}

#[test]
fn applying_twice_finds_the_change_already_there() {
    let (dir, base, commit) = clone_with_attempt();
    let root = dir.path();
    git(root, &["merge", "-q", "--ff-only", &commit]);
    let repo = Repo::discover(root).unwrap();
    let applied = apply(&repo, &base, &commit).unwrap();
    assert!(applied.was_already_there());
    assert_eq!(git(root, &["status", "--porcelain=v1"]), "");
}

#[test]
fn a_missing_base_says_how_to_fetch_it() {
    let (dir, _base, commit) = clone_with_attempt();
    let repo = Repo::discover(dir.path()).unwrap();
    let unknown = "1".repeat(40);
    let err = preflight(&repo, &unknown, &commit).unwrap_err();
    assert!(matches!(err, ApplyError::MissingCommit { .. }), "{err}");
    assert!(err.to_string().contains("git fetch origin"), "{err}");
    assert!(err.to_string().contains(&unknown), "{err}");
}

#[test]
fn revision_expressions_are_not_commit_ids() {
    let (dir, base, _commit) = clone_with_attempt();
    let repo = Repo::discover(dir.path()).unwrap();
    let err = preflight(&repo, &base, "HEAD~1").unwrap_err();
    assert!(matches!(err, ApplyError::NotACommitId { .. }), "{err}");
}

#[test]
fn an_attempt_that_writes_into_dot_git_is_refused_before_anything_changes() {
    let (dir, base, _commit) = clone_with_attempt();
    let root = dir.path();
    // A commit a hostile attempt could hand over: a tree with `.git/hooks/`.
    let blob = git_stdin(
        root,
        &["hash-object", "-w", "--stdin"],
        "#!/bin/sh\ntouch pwned\n",
    );
    let hooks = git_stdin(
        root,
        &["mktree"],
        &format!("100755 blob {blob}\tpost-checkout\n"),
    );
    let dot_git = git_stdin(root, &["mktree"], &format!("040000 tree {hooks}\thooks\n"));
    let a = git(root, &["rev-parse", &format!("{base}:a.txt")]);
    let top = git_stdin(
        root,
        &["mktree"],
        &format!(
            "100644 blob {}\ta.txt\n040000 tree {dot_git}\t.git\n",
            a.trim()
        ),
    );
    let evil = git(root, &["commit-tree", &top, "-p", &base, "-m", "evil"])
        .trim()
        .to_string();
    let before = observable(root);
    let repo = Repo::discover(root).unwrap();
    let err = apply(&repo, &base, &evil).unwrap_err();
    let ApplyError::Conflicts(conflicts) = &err else {
        panic!("{err}");
    };
    assert!(
        conflicts
            .iter()
            .any(|c| c.kind == ConflictKind::Unsafe && c.path == ".git/hooks/post-checkout"),
        "{err}"
    );
    assert!(!root.join(".git/hooks/post-checkout").exists());
    assert_eq!(observable(root), before);
}

fn git_stdin(dir: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_branch_is_created_at_the_commit_and_never_moved() {
    let (dir, _base, commit) = clone_with_attempt();
    let root = dir.path();
    let before = git(root, &["status", "--porcelain=v1"]);
    let repo = Repo::discover(root).unwrap();
    assert_eq!(
        create_branch(&repo, "review/attempt", &commit).unwrap(),
        BranchOutcome::Created
    );
    assert_eq!(
        git(root, &["rev-parse", "refs/heads/review/attempt"]).trim(),
        commit
    );
    // The checkout stays on its branch, untouched.
    assert_eq!(git(root, &["branch", "--show-current"]).trim(), "main");
    assert_eq!(git(root, &["status", "--porcelain=v1"]), before);
    // Again at the same commit: nothing to do.
    assert_eq!(
        create_branch(&repo, "review/attempt", &commit).unwrap(),
        BranchOutcome::AlreadyThere
    );
    // An existing branch elsewhere is not overwritten.
    let err = create_branch(&repo, "main", &commit).unwrap_err();
    assert!(matches!(err, ApplyError::BranchExists { .. }), "{err}");
    assert_ne!(git(root, &["rev-parse", "main"]).trim(), commit);
    for bad in ["-f", "a..b", "x y", "end.lock"] {
        let err = create_branch(&repo, bad, &commit).unwrap_err();
        assert!(
            matches!(err, ApplyError::BadBranchName { .. }),
            "{bad}: {err}"
        );
    }
}
