//! Repositories for the workspace tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Run git in `dir` with a fixed identity; panics (failing the test) when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
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
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A repository whose one commit holds `a.txt` = "one\n".
pub fn repo_with_one_commit() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    std::fs::write(dir.path().join("a.txt"), "one\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-qm", "init"]);
    dir
}

/// A trap for kiln's host-side git: an executable script in `dir` that, if
/// anything ever runs it, creates `marker` (which lies outside the checkout).
/// Returns the script's path.
pub fn tripwire(dir: &Path, name: &str, marker: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\nexit 0\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// What a hostile agent plants in `checkout`: its `.git` file replaced by a
/// repository of its own, and a nested repository `sub/`, each configured
/// to run `script` from every hook point git offers (fsmonitor, hooks,
/// clean/smudge filters, external diff, textconv), with a `.gitattributes`
/// that sends every file through them.
pub fn plant_hostile_repositories(checkout: &Path, script: &Path) {
    let script = script.display();
    let config = format!(
        "[core]\n\tfsmonitor = {script}\n\thooksPath = {hooks}\n\
         [filter \"evil\"]\n\tclean = {script}\n\tsmudge = {script}\n\trequired = true\n\
         [diff \"evil\"]\n\tcommand = {script}\n\ttextconv = {script}\n\
         [diff]\n\texternal = {script}\n",
        hooks = checkout.join("hooks").display()
    );
    std::fs::create_dir_all(checkout.join("hooks")).unwrap();
    for hook in [
        "pre-commit",
        "post-commit",
        "commit-msg",
        "post-index-change",
    ] {
        std::fs::copy(script.to_string(), checkout.join("hooks").join(hook)).unwrap();
    }
    std::fs::write(checkout.join(".gitattributes"), "* filter=evil diff=evil\n").unwrap();

    let dot_git = checkout.join(".git");
    if dot_git.is_dir() {
        std::fs::remove_dir_all(&dot_git).unwrap();
    } else {
        std::fs::remove_file(&dot_git).unwrap();
    }
    git(
        checkout.parent().unwrap(),
        &["init", "-q", &checkout.display().to_string()],
    );
    std::fs::write(dot_git.join("config"), &config).unwrap();

    let sub = checkout.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    git(&sub, &["init", "-q"]);
    std::fs::write(sub.join("inner.txt"), "inner\n").unwrap();
    git(&sub, &["add", "inner.txt"]);
    git(&sub, &["commit", "-qm", "inner"]);
    std::fs::write(sub.join(".git/config"), &config).unwrap();
    std::fs::write(sub.join("inner.txt"), "inner, changed\n").unwrap();

    // One without a commit, deeper in a new directory: `git add` fails on it.
    let empty = checkout.join("new").join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    git(&empty, &["init", "-q"]);
    std::fs::write(empty.join(".git/config"), &config).unwrap();
    std::fs::write(empty.join("file.txt"), "in an empty repository\n").unwrap();
    std::fs::write(checkout.join("new").join("kept.txt"), "kept\n").unwrap();
}
