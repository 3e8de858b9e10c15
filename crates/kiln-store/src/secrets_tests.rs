use std::collections::BTreeMap;

use super::*;

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes([byte; SECRET_KEY_LEN])
}

fn one_secret(value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("API_TOKEN".to_string(), value.to_string())])
}

#[test]
fn hex_and_base64_spell_the_same_key() {
    let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let from_hex = SecretKey::parse(&format!("  {}\n", hex.to_uppercase()), "test").unwrap();
    let from_base64 = SecretKey::parse(&STANDARD.encode(bytes), "test").unwrap();
    let from_unpadded = SecretKey::parse(&STANDARD_NO_PAD.encode(bytes), "test").unwrap();
    assert_eq!(from_hex.to_hex(), hex);
    assert_eq!(from_base64.to_hex(), hex);
    assert_eq!(from_unpadded.to_hex(), hex);
    assert_eq!(from_hex.id(), SecretKey::from_bytes(bytes).id());
}

#[test]
fn malformed_keys_name_their_origin_and_both_accepted_forms() {
    for (text, detail) in [
        ("", "empty"),
        ("zz-not-a-key!", "neither 64 hex digits nor base64"),
        (&STANDARD.encode([1u8; 16]) as &str, "base64 of 16 bytes"),
        (&"ab".repeat(30) as &str, "base64 of 45 bytes"),
    ] {
        let err = SecretKey::parse(text, "KILN_SECRET_KEY").unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("KILN_SECRET_KEY is not a secret key"),
            "{message}"
        );
        assert!(message.contains(detail), "{text:?}: {message}");
        assert!(message.contains("64 hex digits or as base64"), "{message}");
    }
}

#[test]
fn debug_shows_the_key_id_not_the_key() {
    let key = key(0xab);
    let shown = format!("{key:?}");
    assert!(shown.contains(&key.id()), "{shown}");
    assert!(!shown.contains("abab"), "{shown}");
    assert!(!shown.contains("171"), "{shown}");
}

#[test]
fn sealed_values_open_with_the_same_key_and_environment() {
    let key = key(1);
    let stored = seal(Some(&key), "env_a", &one_secret("hunter2")).unwrap();
    assert!(stored.starts_with("v1:"), "{stored}");
    assert!(!stored.contains("hunter2"), "{stored}");
    assert_eq!(names(&stored).unwrap(), ["API_TOKEN"]);
    assert_eq!(key_id(&stored).unwrap(), Some(key.id()));
    assert_eq!(
        open(Some(&key), "env_a", &stored).unwrap(),
        one_secret("hunter2")
    );
}

#[test]
fn the_same_value_sealed_twice_differs() {
    let key = key(1);
    let first = seal(Some(&key), "env_a", &one_secret("same")).unwrap();
    let second = seal(Some(&key), "env_a", &one_secret("same")).unwrap();
    assert_ne!(first, second);
    let nonce_of = |stored: &str| {
        let sealed = parse_v1(stored.strip_prefix(V1_PREFIX).unwrap()).unwrap();
        STANDARD.decode(&sealed.values["API_TOKEN"]).unwrap()[..NONCE_LEN].to_vec()
    };
    assert_ne!(nonce_of(&first), nonce_of(&second));
}

#[test]
fn another_key_is_named_as_the_problem_with_the_fix() {
    let stored = seal(Some(&key(1)), "env_a", &one_secret("v")).unwrap();
    let other = key(2).with_recovery_hint("restore DATA/secret.key or set KILN_SECRET_KEY");
    let err = open(Some(&other), "env_a", &stored).unwrap_err();
    assert!(matches!(err, StoreError::SecretKeyMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("env_a"), "{message}");
    assert!(
        message.contains("the secret key does not match the one the secrets were stored with"),
        "{message}"
    );
    assert!(
        message.contains("restore DATA/secret.key or set KILN_SECRET_KEY"),
        "{message}"
    );
}

#[test]
fn a_value_moved_to_another_environment_or_name_is_refused() {
    let key = key(1);
    let stored = seal(Some(&key), "env_a", &one_secret("v")).unwrap();
    let err = open(Some(&key), "env_b", &stored).unwrap_err();
    assert!(matches!(err, StoreError::SecretTampered { .. }), "{err}");
    assert!(err.to_string().contains("env_b"), "{err}");

    let renamed = stored.replace("\"API_TOKEN\"", "\"OTHER\"");
    let err = open(Some(&key), "env_a", &renamed).unwrap_err();
    assert!(
        matches!(&err, StoreError::SecretTampered { name, .. } if name == "OTHER"),
        "{err}"
    );
}

#[test]
fn plaintext_columns_read_as_they_are_with_or_without_a_key() {
    let legacy = r#"{"API_TOKEN":"plain"}"#;
    assert_eq!(open(None, "env_a", legacy).unwrap(), one_secret("plain"));
    assert_eq!(
        open(Some(&key(1)), "env_a", legacy).unwrap(),
        one_secret("plain")
    );
    assert_eq!(key_id(legacy).unwrap(), None);
}

#[test]
fn no_key_refuses_to_seal_or_open_but_empty_secrets_need_none() {
    assert_eq!(seal(None, "env_a", &BTreeMap::new()).unwrap(), "{}");
    let err = seal(None, "env_a", &one_secret("v")).unwrap_err();
    assert!(matches!(err, StoreError::NoSecretKey), "{err}");
    let stored = seal(Some(&key(1)), "env_a", &one_secret("v")).unwrap();
    let err = open(None, "env_a", &stored).unwrap_err();
    assert!(matches!(err, StoreError::NoSecretKey), "{err}");
}

#[test]
fn generated_keys_differ() {
    let first = SecretKey::generate().unwrap();
    let second = SecretKey::generate().unwrap();
    assert_ne!(first.to_hex(), second.to_hex());
    assert_eq!(first.to_hex().len(), 64);
}

#[test]
fn a_repository_credential_never_opens_as_a_setup_secret() {
    let key = key(1);
    let stored = seal_as(
        Sealed::RepoCredential,
        Some(&key),
        "env_a",
        &one_secret("tok-1234"),
    )
    .unwrap();
    assert!(!stored.contains("tok-1234"), "{stored}");
    let err = open(Some(&key), "env_a", &stored).unwrap_err();
    assert!(matches!(err, StoreError::SecretTampered { .. }), "{err}");
    assert_eq!(
        open_as(Sealed::RepoCredential, Some(&key), "env_a", &stored).unwrap(),
        one_secret("tok-1234")
    );
}
