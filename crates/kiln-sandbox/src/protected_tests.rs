use std::process::Command;

use super::*;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository with files, a submodule at `libs/sub`, an embedded
/// repository added without `.gitmodules` at `nested`, and an
/// intent-to-add entry (which needs the extended flags of version 3).
fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let upstream = root.join("upstream");
    std::fs::create_dir_all(&upstream).unwrap();
    git(&upstream, &["init", "-q"]);
    git(&upstream, &["commit", "-q", "--allow-empty", "-m", "u"]);

    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("src/deep")).unwrap();
    git(&repo, &["init", "-q"]);
    for name in ["a.txt", "src/b.txt", "src/deep/c.txt"] {
        std::fs::write(repo.join(name), name).unwrap();
    }
    git(&repo, &["add", "."]);
    git(
        &repo,
        &[
            "submodule",
            "add",
            "-q",
            upstream.to_str().unwrap(),
            "libs/sub",
        ],
    );
    std::fs::create_dir_all(repo.join("nested")).unwrap();
    git(&repo.join("nested"), &["init", "-q"]);
    git(
        &repo.join("nested"),
        &["commit", "-q", "--allow-empty", "-m", "n"],
    );
    git(&repo, &["add", "nested"]);
    std::fs::write(repo.join("later.txt"), "x").unwrap();
    git(&repo, &["add", "-N", "later.txt"]);
    dir
}

fn sorted(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths
}

#[test]
fn gitlinks_are_read_from_every_index_version() {
    let dir = repository();
    let repo = dir.path().join("repo");
    let expected = vec![PathBuf::from("libs/sub"), PathBuf::from("nested")];
    for version in ["2", "3", "4"] {
        git(&repo, &["update-index", "--index-version", version]);
        let bytes = std::fs::read(repo.join(".git/index")).unwrap();
        let parsed = parse_gitlinks(&bytes).unwrap_or_else(|| panic!("version {version}"));
        assert_eq!(sorted(parsed), expected, "version {version}");
        assert_eq!(sorted(gitlinks_from_git(&repo)), expected);
    }
}

#[test]
fn a_split_index_is_left_to_git() {
    let dir = repository();
    let repo = dir.path().join("repo");
    git(&repo, &["update-index", "--split-index"]);
    let bytes = std::fs::read(repo.join(".git/index")).unwrap();
    assert_eq!(parse_gitlinks(&bytes), None);
    assert_eq!(
        sorted(gitlinks(&repo, &repo.join(".git"))),
        vec![PathBuf::from("libs/sub"), PathBuf::from("nested")]
    );
}

#[test]
fn garbage_is_not_an_index() {
    assert_eq!(parse_gitlinks(b""), None);
    assert_eq!(parse_gitlinks(b"DIRC\0\0\0\x02\0\0\0\x05short"), None);
}

#[test]
fn git_kiln_and_populated_submodules_become_read_only_mounts() {
    let dir = repository();
    let repo = dir.path().join("repo");
    let mounts = repository_metadata_mounts(&repo);
    assert_eq!(
        mounts,
        vec![
            read_only(&repo.join(".git")),
            read_only(&repo.join("libs/sub/.git")),
            read_only(&repo.join("nested/.git")),
            Mount::HideDir(repo.join(".kiln")),
        ]
    );
    std::fs::create_dir(repo.join(".kiln")).unwrap();
    let mounts = repository_metadata_mounts(&repo);
    assert_eq!(mounts.last(), Some(&read_only(&repo.join(".kiln"))));
}

#[test]
fn a_workspace_without_a_repository_still_protects_kiln() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        repository_metadata_mounts(dir.path()),
        vec![Mount::HideDir(dir.path().join(".kiln"))]
    );
}
