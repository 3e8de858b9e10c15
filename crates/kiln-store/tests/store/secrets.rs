//! Environment secrets are sealed at rest under the store's key.

use std::collections::BTreeMap;

use base64::Engine;
use kiln_store::{NewEnvironment, SecretKey, StoreError};

use crate::support::test_key;

fn with_secrets(name: &str, secrets: &[(&str, &str)]) -> NewEnvironment {
    NewEnvironment {
        name: name.into(),
        repo: "/srv/git/app".into(),
        secrets: secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// The nonce of each sealed value in a raw `secrets_json` column.
fn nonces(raw: &str) -> Vec<Vec<u8>> {
    let body = raw
        .strip_prefix("v1:")
        .unwrap_or_else(|| panic!("not sealed: {raw}"));
    let sealed: serde_json::Value = serde_json::from_str(body).unwrap();
    sealed["values"]
        .as_object()
        .unwrap()
        .values()
        .map(|value| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap())
                .unwrap();
            bytes[..24].to_vec()
        })
        .collect()
}

fn other_key() -> SecretKey {
    SecretKey::from_bytes([9; 32])
        .with_recovery_hint("restore DATA/secret.key or set KILN_SECRET_KEY")
}

on_both_backends! {
    async fn the_database_row_holds_no_secret_value_yet_the_setup_gets_it_back(t) {
        let me = t.user("me").await;
        let env = t
            .store
            .create_environment(&me, &with_secrets("app", &[("DEPLOY_TOKEN", "tok-8f3a9c-plain")]))
            .await
            .unwrap();
        let raw = t.raw_secrets(&env.id).await;
        assert!(raw.starts_with("v1:"), "{raw}");
        assert!(!raw.contains("tok-8f3a9c-plain"), "{raw}");
        assert!(raw.contains("DEPLOY_TOKEN"), "names stay readable: {raw}");
        assert!(raw.contains(&test_key().id()), "{raw}");

        assert_eq!(env.secret_names, ["DEPLOY_TOKEN"]);
        let secrets = t.store.environment_secrets(&env.id).await.unwrap();
        assert_eq!(secrets, BTreeMap::from([("DEPLOY_TOKEN".to_string(), "tok-8f3a9c-plain".to_string())]));

        // A restarted store with the same key reads them too.
        let again = t.reopen_with_key(Some(test_key())).await.unwrap();
        assert_eq!(again.environment_secrets(&env.id).await.unwrap(), secrets);
    }

    async fn the_same_value_written_twice_gets_a_fresh_nonce(t) {
        let me = t.user("me").await;
        let same = [("A", "identical"), ("B", "identical")];
        let first = t.store.create_environment(&me, &with_secrets("one", &same)).await.unwrap();
        let second = t.store.create_environment(&me, &with_secrets("two", &same)).await.unwrap();
        let mut all = nonces(&t.raw_secrets(&first.id).await);
        all.extend(nonces(&t.raw_secrets(&second.id).await));
        assert_eq!(all.len(), 4);
        for (i, nonce) in all.iter().enumerate() {
            for other in &all[i + 1..] {
                assert_ne!(nonce, other, "a nonce was used twice");
            }
        }
    }

    async fn another_key_names_the_environment_and_the_fix(t) {
        let me = t.user("me").await;
        let env = t
            .store
            .create_environment(&me, &with_secrets("app", &[("TOKEN", "v")]))
            .await
            .unwrap();
        let wrong = t.reopen_with_key(Some(other_key())).await.unwrap();
        let err = wrong.environment_secrets(&env.id).await.unwrap_err();
        assert!(matches!(err, StoreError::SecretKeyMismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&env.id), "{message}");
        assert!(
            message.contains("the secret key does not match the one the secrets were stored with"),
            "{message}"
        );
        assert!(message.contains("restore DATA/secret.key or set KILN_SECRET_KEY"), "{message}");

        // Names and everything else still work; the start-up scan reports it.
        assert_eq!(wrong.environment(&me, "app").await.unwrap().secret_names, ["TOKEN"]);
        let report = wrong.seal_plaintext_secrets().await.unwrap();
        assert_eq!(report.other_key, vec![env.id.clone()]);
        // The wrong key did not touch the row: the right one still reads it.
        assert_eq!(t.store.environment_secrets(&env.id).await.unwrap()["TOKEN"], "v");
    }

    async fn a_sealed_value_copied_to_another_environment_is_refused(t) {
        let me = t.user("me").await;
        let victim = t
            .store
            .create_environment(&me, &with_secrets("victim", &[("TOKEN", "victim-secret")]))
            .await
            .unwrap();
        let attacker = t
            .store
            .create_environment(&me, &with_secrets("attacker", &[("TOKEN", "mine")]))
            .await
            .unwrap();
        let stolen = t.raw_secrets(&victim.id).await;
        t.set_raw_secrets(&attacker.id, &stolen).await;
        let err = t.store.environment_secrets(&attacker.id).await.unwrap_err();
        assert!(matches!(err, StoreError::SecretTampered { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&attacker.id) && message.contains("TOKEN"), "{message}");
        assert!(!message.contains("victim-secret"), "{message}");
    }

    async fn plaintext_secrets_from_before_encryption_still_read_and_are_sealed_at_open(t) {
        let me = t.user("me").await;
        let env = t.environment(&me, "legacy").await;
        let other = t.environment(&me, "no-secrets").await;
        // What a kiln from before encryption wrote.
        t.set_raw_secrets(&env.id, r#"{"OLD_TOKEN":"legacy-plain","SECOND":"two"}"#).await;
        assert_eq!(
            t.store.environment(&me, "legacy").await.unwrap().secret_names,
            ["OLD_TOKEN", "SECOND"]
        );
        let expected = BTreeMap::from([
            ("OLD_TOKEN".to_string(), "legacy-plain".to_string()),
            ("SECOND".to_string(), "two".to_string()),
        ]);
        assert_eq!(t.store.environment_secrets(&env.id).await.unwrap(), expected);

        // A store opened without a key reads them as before and leaves them.
        let keyless = t.reopen_with_key(None).await.unwrap();
        assert_eq!(keyless.environment_secrets(&env.id).await.unwrap(), expected);
        assert!(t.raw_secrets(&env.id).await.starts_with('{'));

        // Opening with a key seals them; nothing is lost.
        let restarted = t.reopen_with_key(Some(test_key())).await.unwrap();
        let raw = t.raw_secrets(&env.id).await;
        assert!(raw.starts_with("v1:"), "{raw}");
        assert!(!raw.contains("legacy-plain"), "{raw}");
        assert_eq!(restarted.environment_secrets(&env.id).await.unwrap(), expected);
        assert_eq!(t.raw_secrets(&other.id).await, "{}");

        // Sealing again finds nothing left to do.
        let report = restarted.seal_plaintext_secrets().await.unwrap();
        assert!(report.sealed.is_empty() && report.other_key.is_empty(), "{report:?}");
    }

    async fn a_store_without_a_key_takes_environments_but_not_secrets(t) {
        let me = t.user("me").await;
        let keyless = t.reopen_with_key(None).await.unwrap();
        let plain = keyless
            .create_environment(&me, &with_secrets("plain", &[]))
            .await
            .unwrap();
        assert!(keyless.environment_secrets(&plain.id).await.unwrap().is_empty());
        let err = keyless
            .create_environment(&me, &with_secrets("secretive", &[("TOKEN", "v")]))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NoSecretKey), "{err}");
        assert!(err.to_string().contains("StoreOptions::secret_key"), "{err}");
        assert!(keyless.environment(&me, "secretive").await.is_err());

        let sealed = t
            .store
            .create_environment(&me, &with_secrets("sealed", &[("TOKEN", "v")]))
            .await
            .unwrap();
        let err = keyless.environment_secrets(&sealed.id).await.unwrap_err();
        assert!(matches!(err, StoreError::NoSecretKey), "{err}");
    }
}
