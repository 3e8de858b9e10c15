//! A credential in an environment's repository URL
//! (`https://user:TOKEN@host/repo.git`) is split out when the environment is
//! created: the `repo` everyone sees is the URL without it, and the
//! credential is sealed like the setup secrets.

use kiln_store::{NewEnvironment, RepoCredential, StoreError};

use crate::support::test_key;

const TOKEN: &str = "ghp_url-token-7Qx9pL2m";
const USER: &str = "ci-bot-deployer";

fn with_repo(name: &str, repo: &str) -> NewEnvironment {
    NewEnvironment {
        name: name.into(),
        repo: repo.into(),
        ..Default::default()
    }
}

fn tokened_url() -> String {
    format!("https://{USER}:{TOKEN}@git.example.com/team/app.git")
}

on_both_backends! {
    async fn a_token_in_the_repository_url_is_neither_stored_in_plaintext_nor_shown(t) {
        let me = t.user("me").await;
        let env = t.store.create_environment(&me, &with_repo("private", &tokened_url())).await.unwrap();
        assert_eq!(env.repo, "https://git.example.com/team/app.git");

        let shown = serde_json::to_string(&[
            t.store.environment(&me, "private").await.unwrap(),
            t.store.environment(&me, &env.id).await.unwrap(),
        ]).unwrap() + &serde_json::to_string(&t.store.list_environments(&me).await.unwrap()).unwrap();
        assert!(!shown.contains(TOKEN) && !shown.contains(USER), "{shown}");

        let raw = t.raw_environment_row(&env.id).await.join("\n");
        assert!(raw.contains("repo=https://git.example.com/team/app.git"), "{raw}");
        assert!(!raw.contains(TOKEN), "the token is in the database row in plaintext:\n{raw}");
        assert!(!raw.contains(USER), "the user name is in the database row in plaintext:\n{raw}");
        assert!(raw.contains(&test_key().id()), "sealed under the store's key:\n{raw}");
        assert!(env.repo_has_credential);

        // Only the worker's read gives it back, also after a restart.
        let expected = RepoCredential::new(USER, Some(TOKEN.to_string()));
        assert_eq!(t.store.environment_repo_credential(&env.id).await.unwrap(), Some(expected.clone()));
        let again = t.reopen_with_key(Some(test_key())).await.unwrap();
        assert_eq!(again.environment_repo_credential(&env.id).await.unwrap(), Some(expected));
        // It is not a setup secret: the sandbox's setup never receives it.
        assert!(t.store.environment_secrets(&env.id).await.unwrap().is_empty());
        assert!(env.secret_names.is_empty());
    }

    async fn an_environment_without_a_credential_has_none_to_give(t) {
        let me = t.user("me").await;
        let env = t.store.create_environment(&me, &with_repo("open", "ssh://git@host/r.git")).await.unwrap();
        assert_eq!(env.repo, "ssh://git@host/r.git");
        assert!(!env.repo_has_credential);
        assert_eq!(t.store.environment_repo_credential(&env.id).await.unwrap(), None);
    }

    async fn a_credential_is_refused_where_it_would_travel_in_clear_and_errors_do_not_echo_it(t) {
        let me = t.user("me").await;
        for repo in [
            format!("http://{USER}:{TOKEN}@git.example.com/app.git"),
            format!("ssh://{USER}:{TOKEN}@git.example.com/app.git"),
        ] {
            let err = t.store.create_environment(&me, &with_repo("clear", &repo)).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidInput { field: "repo", .. }), "{err}");
            assert!(!err.to_string().contains(TOKEN), "{err}");
        }
        // To this machine, plain http is fine: the credential never leaves it.
        t.store
            .create_environment(&me, &with_repo("local", &format!("http://{USER}:{TOKEN}@127.0.0.1:8080/app.git")))
            .await
            .unwrap();
    }

    async fn a_sealed_credential_moved_into_the_setup_secrets_does_not_open(t) {
        let me = t.user("me").await;
        let env = t.store.create_environment(&me, &with_repo("private", &tokened_url())).await.unwrap();
        let raw = t.raw_environment_row(&env.id).await;
        let sealed = raw
            .iter()
            .find_map(|column| column.strip_prefix("repo_credential="))
            .unwrap_or_else(|| panic!("no repo_credential column: {raw:?}"));
        t.set_raw_secrets(&env.id, sealed).await;
        let err = t.store.environment_secrets(&env.id).await.unwrap_err();
        assert!(matches!(err, StoreError::SecretTampered { .. }), "{err}");
        assert!(!err.to_string().contains(TOKEN), "{err}");
    }

    async fn a_store_without_a_key_refuses_a_credential_it_cannot_seal(t) {
        let me = t.user("me").await;
        let keyless = t.reopen_with_key(None).await.unwrap();
        let err = keyless.create_environment(&me, &with_repo("private", &tokened_url())).await.unwrap_err();
        assert!(matches!(err, StoreError::NoSecretKey), "{err}");
        assert!(keyless.environment(&me, "private").await.is_err());
    }

    async fn urls_with_a_credential_stored_by_an_older_kiln_are_split_and_sealed_at_open(t) {
        let me = t.user("me").await;
        let env = t.environment(&me, "legacy").await;
        t.set_raw_repo(&env.id, &tokened_url()).await;

        let restarted = t.reopen_with_key(Some(test_key())).await.unwrap();
        let raw = t.raw_environment_row(&env.id).await.join("\n");
        assert!(!raw.contains(TOKEN), "the token is still in plaintext after open:\n{raw}");
        assert!(raw.contains("repo=https://git.example.com/team/app.git"), "{raw}");
        let shown = restarted.environment(&me, "legacy").await.unwrap();
        assert_eq!(shown.repo, "https://git.example.com/team/app.git");
        assert!(shown.repo_has_credential);
        assert_eq!(
            restarted.environment_repo_credential(&env.id).await.unwrap(),
            Some(RepoCredential::new(USER, Some(TOKEN.to_string())))
        );
        // Opening again finds nothing left to do.
        assert!(restarted.seal_repo_url_credentials().await.unwrap().is_empty());
    }

    async fn a_store_without_a_key_still_never_shows_a_legacy_credential(t) {
        let me = t.user("me").await;
        let env = t.environment(&me, "legacy").await;
        t.set_raw_repo(&env.id, &tokened_url()).await;
        let keyless = t.reopen_with_key(None).await.unwrap();
        let shown = serde_json::to_string(&keyless.list_environments(&me).await.unwrap()).unwrap();
        assert!(!shown.contains(TOKEN), "{shown}");
        // The worker can still clone with it until a key seals it.
        assert_eq!(
            keyless.environment_repo_credential(&env.id).await.unwrap(),
            Some(RepoCredential::new(USER, Some(TOKEN.to_string())))
        );
    }
}
