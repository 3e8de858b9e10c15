use super::*;

fn write_of(real: PathBuf, contents: Option<&str>, existed: bool) -> FileWrite {
    FileWrite {
        shown: real.display().to_string(),
        real,
        existed,
        permissions: None,
        contents: contents.map(|text| text.as_bytes().to_vec()),
    }
}

#[test]
fn writes_replace_and_remove_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kept = dir.path().join("kept.txt");
    let removed = dir.path().join("removed.txt");
    fs::write(&kept, "old").expect("write");
    fs::write(&removed, "bye").expect("write");
    let writes = [
        write_of(kept.clone(), Some("new"), true),
        write_of(removed.clone(), None, true),
        write_of(dir.path().join("deep/er/added.txt"), Some("hi"), false),
    ];
    commit(&writes).expect("commit");
    assert_eq!(fs::read_to_string(&kept).expect("read"), "new");
    assert!(!removed.exists());
    assert_eq!(
        fs::read_to_string(dir.path().join("deep/er/added.txt")).expect("read"),
        "hi"
    );
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn failure_midway_restores_files_already_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = dir.path().join("first.txt");
    fs::write(&first, "original").expect("write");
    // The second file is claimed to exist but does not, so its swap fails after the
    // first file has already been replaced.
    let writes = [
        write_of(first.clone(), Some("changed"), true),
        write_of(dir.path().join("new/vanished.txt"), Some("x"), true),
    ];
    let error = commit(&writes).expect_err("second swap fails");
    assert!(error.to_string().contains("vanished.txt"), "{error}");
    assert_eq!(fs::read_to_string(&first).expect("read"), "original");
    assert!(
        !dir.path().join("new").exists(),
        "created directory is removed"
    );
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("first.txt")]);
}

#[test]
fn written_file_keeps_the_original_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("run.sh");
    fs::write(&script, "echo a\n").expect("write");
    fs::set_permissions(&script, Permissions::from_mode(0o755)).expect("chmod");
    let mut write = write_of(script.clone(), Some("echo b\n"), true);
    write.permissions = Some(fs::metadata(&script).expect("stat").permissions());
    commit(&[write]).expect("commit");
    let mode = fs::metadata(&script).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
}
