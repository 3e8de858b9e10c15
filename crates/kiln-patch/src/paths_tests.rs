use super::*;

fn root() -> (tempfile::TempDir, Root) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = Root::new(dir.path()).expect("root");
    (dir, root)
}

#[test]
fn relative_path_resolves_under_root() {
    let (_dir, root) = root();
    let resolved = root.resolve("a/./b/../c.txt").expect("inside");
    assert_eq!(resolved, root.path().join("a/c.txt"));
}

#[test]
fn absolute_path_is_refused() {
    let (_dir, root) = root();
    let error = root.resolve("/etc/passwd").expect_err("absolute");
    assert!(error.to_string().contains("absolute path"), "{error}");
}

#[test]
fn parent_escape_is_refused() {
    let (_dir, root) = root();
    let error = root.resolve("a/../../x").expect_err("escape");
    assert!(error.to_string().contains("above the root"), "{error}");
}

#[test]
fn symlink_leading_outside_is_refused() {
    let (dir, root) = root();
    let outside = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).expect("symlink");
    let error = root.resolve("out/file.txt").expect_err("symlink escape");
    assert!(error.to_string().contains("outside the root"), "{error}");
}

#[test]
fn symlink_inside_root_is_followed() {
    let (dir, root) = root();
    std::fs::create_dir(dir.path().join("real")).expect("dir");
    std::os::unix::fs::symlink("real", dir.path().join("alias")).expect("symlink");
    let resolved = root.resolve("alias/f.txt").expect("inside");
    assert_eq!(resolved, root.path().join("real/f.txt"));
}
