use std::os::unix::fs::PermissionsExt;

use kiln_store::{AdminBootstrap, NewEnvironment, Store, StoreError, StoreOptions};

use super::*;

const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn the_first_start_creates_a_private_key_file_that_later_starts_read() {
    let dir = tempfile::tempdir().unwrap();
    let (created, origin) = load_or_create_secret_key(dir.path(), None).unwrap();
    let path = dir.path().join(SECRET_KEY_FILE);
    assert_eq!(origin, KeyOrigin::CreatedFile(path.clone()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        created.to_hex()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, [std::ffi::OsString::from(SECRET_KEY_FILE)]);

    let (read, origin) = load_or_create_secret_key(dir.path(), None).unwrap();
    assert_eq!(origin, KeyOrigin::File(path));
    assert_eq!(read.id(), created.id());
}

#[test]
fn the_environment_variable_wins_and_writes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (key, origin) = load_or_create_secret_key(dir.path(), Some(HEX_KEY)).unwrap();
    assert_eq!(origin, KeyOrigin::Environment);
    assert_eq!(key.to_hex(), HEX_KEY);
    assert!(!dir.path().join(SECRET_KEY_FILE).exists());

    // An empty variable counts as unset.
    let (_, origin) = load_or_create_secret_key(dir.path(), Some("")).unwrap();
    assert!(matches!(origin, KeyOrigin::CreatedFile(_)), "{origin:?}");
}

#[test]
fn a_malformed_key_names_where_it_came_from_and_the_accepted_forms() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_or_create_secret_key(dir.path(), Some("0123abcd")).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("KILN_SECRET_KEY is not a secret key"),
        "{message}"
    );
    assert!(message.contains("64 hex digits or as base64"), "{message}");

    let path = dir.path().join(SECRET_KEY_FILE);
    std::fs::write(&path, "not a key at all\n").unwrap();
    let err = load_or_create_secret_key(dir.path(), None).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("64 hex digits or as base64"), "{message}");
    // The broken file is left for the operator to look at.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "not a key at all\n"
    );
}

#[tokio::test]
async fn a_replaced_key_file_makes_reading_secrets_name_the_file_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = load_or_create_secret_key(dir.path(), None).unwrap();
    let store = Store::open(StoreOptions::sqlite_in_dir(dir.path()).secret_key(key))
        .await
        .unwrap();
    let AdminBootstrap::Created(admin) = store.ensure_admin_token(None).await.unwrap() else {
        panic!("a fresh database has no admin token");
    };
    let env = NewEnvironment {
        name: "app".into(),
        repo: "/srv/git/app".into(),
        secrets: [("TOKEN".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    let admin = store.verify_token(&admin.secret).await.unwrap().unwrap();
    let env = store.create_environment(&admin, &env).await.unwrap();
    store.close().await;

    let path = dir.path().join(SECRET_KEY_FILE);
    std::fs::remove_file(&path).unwrap();
    let (new_key, origin) = load_or_create_secret_key(dir.path(), None).unwrap();
    assert_eq!(origin, KeyOrigin::CreatedFile(path.clone()));
    let store = Store::open(StoreOptions::sqlite_in_dir(dir.path()).secret_key(new_key))
        .await
        .unwrap();
    let err = store.environment_secrets(&env.id).await.unwrap_err();
    assert!(matches!(err, StoreError::SecretKeyMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&env.id), "{message}");
    assert!(
        message.contains("the secret key does not match the one the secrets were stored with"),
        "{message}"
    );
    assert!(
        message.contains(&format!("restore {}", path.display())),
        "{message}"
    );
    assert!(message.contains("set KILN_SECRET_KEY"), "{message}");
}
