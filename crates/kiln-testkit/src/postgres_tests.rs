use super::*;

fn fake_bin(root: &Path, version: &str) -> PathBuf {
    let bin = root.join(version).join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("initdb"), "").unwrap();
    bin
}

#[test]
fn without_binaries_the_error_names_the_package_to_install() {
    let empty = tempfile::tempdir().unwrap();
    let error = find_bin_dir_in(None, empty.path(), Some(OsString::new())).unwrap_err();
    assert!(matches!(error, PostgresError::NotInstalled));
    let message = error.to_string();
    assert!(
        message.contains("apt-get install -y postgresql"),
        "{message}"
    );
    assert!(message.contains("KILN_TEST_DATABASE_URL"), "{message}");
}

#[test]
fn the_highest_debian_version_with_an_initdb_wins() {
    let root = tempfile::tempdir().unwrap();
    fake_bin(root.path(), "13");
    let fifteen = fake_bin(root.path(), "15");
    std::fs::create_dir_all(root.path().join("16").join("bin")).unwrap();
    std::fs::create_dir_all(root.path().join("notes")).unwrap();
    let found = find_bin_dir_in(None, root.path(), None).unwrap();
    assert_eq!(found, fifteen);
}

#[test]
fn path_is_searched_when_debian_has_no_version() {
    let empty = tempfile::tempdir().unwrap();
    let on_path = tempfile::tempdir().unwrap();
    std::fs::write(on_path.path().join("initdb"), "").unwrap();
    std::fs::write(on_path.path().join("postgres"), "").unwrap();
    let path = std::env::join_paths([empty.path(), on_path.path()]).unwrap();
    let found = find_bin_dir_in(None, empty.path(), Some(path)).unwrap();
    assert_eq!(found, on_path.path());
}

#[test]
fn a_configured_bin_dir_overrides_debian_and_must_hold_initdb() {
    let root = tempfile::tempdir().unwrap();
    fake_bin(root.path(), "15");
    let configured = fake_bin(root.path(), "custom");
    let found = find_bin_dir_in(Some(configured.clone().into()), root.path(), None).unwrap();
    assert_eq!(found, configured);

    let missing = root.path().join("nowhere");
    let error = find_bin_dir_in(Some(missing.clone().into()), root.path(), None).unwrap_err();
    assert!(matches!(error, PostgresError::NoInitdbInBinDir(ref p) if *p == missing));
    assert!(error.to_string().contains("KILN_TEST_PG_BIN"), "{error}");
}

#[test]
fn an_empty_configured_bin_dir_counts_as_unset() {
    let root = tempfile::tempdir().unwrap();
    let fifteen = fake_bin(root.path(), "15");
    let found = find_bin_dir_in(Some(OsString::new()), root.path(), None).unwrap();
    assert_eq!(found, fifteen);
}

#[test]
fn with_database_replaces_only_the_database_name() {
    assert_eq!(
        with_database(
            "postgres://postgres@localhost:5432/postgres?host=/tmp/x",
            "kiln_1"
        ),
        "postgres://postgres@localhost:5432/kiln_1?host=/tmp/x"
    );
    assert_eq!(
        with_database("postgres://u:p@db.example:5432/admin", "kiln_2"),
        "postgres://u:p@db.example:5432/kiln_2"
    );
    assert_eq!(
        with_database("postgres://u@db.example", "kiln_3"),
        "postgres://u@db.example/kiln_3"
    );
    assert_eq!(
        with_database("postgres://u@db.example?sslmode=disable", "kiln_4"),
        "postgres://u@db.example/kiln_4?sslmode=disable"
    );
}
