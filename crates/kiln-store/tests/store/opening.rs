use kiln_store::{Store, StoreError, StoreOptions};

#[tokio::test]
async fn refused_postgres_connection_says_what_to_check_without_the_password() {
    // Port 1 on loopback: nothing listens there, the connection is refused.
    let options = StoreOptions::from_url("postgres://kiln:hunter2@127.0.0.1:1/kiln").unwrap();
    let err = Store::open(options).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{message}");
    assert!(
        message.contains("postgres://kiln:***@127.0.0.1:1/kiln"),
        "{message}"
    );
    assert!(message.contains("is PostgreSQL running"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"));
}

#[tokio::test]
async fn sqlite_file_and_its_directory_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let store = Store::open(StoreOptions::sqlite_in_dir(&data_dir))
        .await
        .unwrap();
    assert!(data_dir.join("kiln.db").exists());
    assert_eq!(store.backend(), kiln_store::Backend::Sqlite);
    store.close().await;
}

#[tokio::test]
async fn unwritable_sqlite_location_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let err = Store::open(StoreOptions::sqlite_in_dir(file.join("data")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DataDir { .. }), "{err}");
    assert!(err.to_string().contains("a-file"), "{err}");
}
