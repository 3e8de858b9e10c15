use std::os::unix::fs::PermissionsExt;

use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn loose_modes_of_the_data_dir_and_its_private_files_are_tightened() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["kiln.db", "secret.key"] {
        std::fs::write(dir.join(name), "x").unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    std::fs::set_permissions(
        dir.join("notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    assert_eq!(secure_data_dir(&dir).unwrap(), std::slice::from_ref(&dir));
    let changed = secure_data_files(&dir).unwrap();
    assert_eq!(changed, [dir.join("secret.key"), dir.join("kiln.db")]);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("kiln.db")), 0o600);
    assert_eq!(mode(&dir.join("secret.key")), 0o600);
    assert_eq!(
        mode(&dir.join("notes.txt")),
        0o644,
        "not a file the server owns"
    );
    assert!(
        secure_data_files(&dir).unwrap().is_empty(),
        "nothing left to fix"
    );
}

#[test]
fn the_lock_file_is_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let lock = DataDirLock::acquire(dir.path()).unwrap();
    assert_eq!(mode(lock.path()), 0o600);
}
